"""The film viewer: the film and its Grad-CAM map side by side in one plotly figure, with window/level.

The two panels share their axes, so zoom and pan move both and the map stays registered on the film. The
film is shown at the resolution it is kept at (``analysis.FILM_SIDE`` a side at most), and window/level is
applied to its float pixels (the full bit depth the reader kept: a 12-bit DICOM's levels, not 8-bit ones).
Pages with an upload box have the browser load the viewer's code (and a result's other elements') before the
first film comes (``preload_result_code``).
"""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path

import cv2
import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from .images import to_uint8

# Window presets as (level, width) in percent of the film's range (the reader maps it to [0, 1]).
PRESETS = {"Full range": (50, 100), "Lungs": (40, 60), "Mediastinum": (62, 45), "Bone": (75, 50)}
CONFIG = {"scrollZoom": True, "displaylogo": False, "doubleClick": "reset",
          "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
HEIGHT_PX = 460
DISPLAY_JPEG_QUALITY = 95

# Streamlit's browser fetches the code for each kind of element (a chart, a slider, a metric...) the first time
# a page shows one. A film's result brings several at once, plotly's chart above all (4.7 MB, whose code holds
# the browser's main thread for 1.0-1.5 s here): a session's first film waited that long for its viewer
# (docs/viewer-speed.md). The pages with an upload box have the browser load that code itself just after it
# has drawn the box, so the work is done while the user picks a file and the first paint is not held back.
# The cost: every tab that opens such a page fetches those files (about 4.8 MB that Streamlit serves as static
# files) and runs them (about 2 s of the browser's main thread here), whether or not it uploads. No script
# runs on the server, and when Streamlit later imports a file for its element it finds it loaded (one module
# per URL). Once per browser tab.
RESULT_CODE = ("PlotlyChart", "Metric", "Slider", "Selectbox", "DownloadButton")    # a film's result (Predict)
WORKLIST_CODE = ("Progress", "DataFrame", *RESULT_CODE)     # Triage: progress, worklist, then a film's detail
RESULT_CODE_WAIT_MS = 10_000                # load it anyway if no upload box has been drawn by then
_CODE_FILE = re.compile(r"[A-Za-z]+\.[\w-]+\.js")   # Streamlit's chunk names: <Element>.<hash>.js
# Streamlit's sanitiser drops a script whose text holds "<" and a letter, "/" or "!": keep such text out
# (test_app checks).
RESULT_CODE_SCRIPT = """<script>
(() => {
  if (window.__pneumoResultCode) return;
  window.__pneumoResultCode = true;
  const main = document.querySelector('script[type="module"][src*="/static/js/"]');
  const base = main ? main.src : new URL("static/js/", document.baseURI).href;
  // all at once; a file that fails is left to Streamlit, which fetches it again when its element comes
  const load = () => Promise.all(%s.map(name => import(new URL(name, base).href).catch(() => null)));
  const started = Date.now();
  const wait = () => {    // Streamlit draws the upload box from code of its own that it fetches first
    if (document.querySelector('[data-testid="stFileUploaderDropzone"]') || Date.now() - started > %d)
      requestAnimationFrame(() => setTimeout(load, 0));     // just after the next paint
    else setTimeout(wait, 50);
  };
  wait();
})();
</script>"""


@functools.cache
def result_code_files(elements: tuple[str, ...]) -> tuple[str, ...]:
    """The names of the Streamlit files (``static/js/<Element>.<hash>.js``) that hold the browser code of
    ``elements``; an element this Streamlit has no single such file for is left out."""
    folder = Path(st.__file__).parent / "static" / "static" / "js"
    found = [sorted(folder.glob(f"{element}.*.js")) for element in elements]
    return tuple(files[0].name for files in found if len(files) == 1 and _CODE_FILE.fullmatch(files[0].name))


def preload_result_code(elements: tuple[str, ...]) -> None:
    """Just after an upload box: the browser loads the code of ``elements`` once it has drawn the box (see
    RESULT_CODE_SCRIPT). Only a constant script naming files of Streamlit's own goes to the page, and its
    element takes no room (``frame.app_style``). Without such files, nothing is sent: each element then loads
    its code itself, as it would anyway."""
    names = result_code_files(elements)
    if names:
        st.html(RESULT_CODE_SCRIPT % (json.dumps(list(names)), RESULT_CODE_WAIT_MS), unsafe_allow_javascript=True)


def window(pixels: np.ndarray, level: float, width: float) -> np.ndarray:
    """Film pixels in [0, 1] -> uint8 through a window centred on ``level`` (percent) ``width`` (percent) wide."""
    lo, w = (level - width / 2) / 100, max(width, 0.5) / 100
    return to_uint8((pixels.astype(np.float32) - lo) / w)


def _apply_preset(key: str) -> None:
    level, width = PRESETS[st.session_state[f"wl_preset_{key}"]]
    st.session_state[f"wl_level_{key}"], st.session_state[f"wl_width_{key}"] = level, width


def windowing_ui(key: str, slots) -> tuple[float, float]:
    """A preset and its level and width sliders (percent of the film's range), in three ``slots``; (level, width)."""
    for name, value in (("level", 50), ("width", 100)):
        st.session_state.setdefault(f"wl_{name}_{key}", value)
    preset, level, width = slots
    preset.selectbox("Window", list(PRESETS), key=f"wl_preset_{key}", on_change=_apply_preset, args=(key,),
                     help="Window/level presets on the film's full bit depth. Lungs widens the grey levels of "
                          "the lung fields; Bone and Mediastinum those of the denser parts.")
    lvl = level.slider("Level", 0, 100, key=f"wl_level_{key}", help="Centre of the window, % of the film's range")
    wid = width.slider("Width", 1, 100, key=f"wl_width_{key}", help="Width of the window, % of the film's range")
    return float(lvl), float(wid)


def _uri(image: np.ndarray) -> str:
    """uint8 grey or RGB -> JPEG data URI at full resolution (plotly's image trace draws it at its own size).

    JPEG at quality 95 for the screen: about 150 KB for a 1024 px film against 400 KB (film) and 900 KB (map)
    as PNG, and 3 ms to encode against 35-100 ms, which shortens upload-to-overlay. The downloads (overlay
    PNG, PDF) stay lossless."""
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, DISPLAY_JPEG_QUALITY])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def viewer_figure(film_u8: np.ndarray, overlay_rgb: np.ndarray, map_title: str) -> go.Figure:
    """Film and map side by side, same size, shared axes (zoom and pan move both); drag pans, wheel zooms.

    The panels keep square pixels, so a panel is as tall as its width allows; they sit at the top of the
    figure with their titles just above them (placed on the panels' own domains, which follow the images),
    not at the top of a taller box with a gap between title and film."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.01)
    for col, image in ((1, film_u8), (2, overlay_rgb)):
        fig.add_trace(go.Image(source=_uri(image), hoverinfo="skip"), row=1, col=col)
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, autorange="reversed", constrain="domain", constraintoward="top")
    fig.update_yaxes(scaleanchor="x", row=1, col=1)          # square pixels
    fig.update_xaxes(matches="x", row=1, col=2)              # the map's axes are the film's: zoom and pan move both
    fig.update_yaxes(matches="y", row=1, col=2)
    for axis, title in (("", "Film"), ("2", map_title)):
        fig.add_annotation(text=title, xref=f"x{axis} domain", yref=f"y{axis} domain", x=0.5, y=1.0,
                           yanchor="bottom", yshift=3, showarrow=False, font=dict(size=12))
    fig.update_layout(height=HEIGHT_PX, margin=dict(l=0, r=0, t=24, b=0), dragmode="pan",
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="black", uirevision="film",
                      font=dict(size=12))
    return fig


def viewer_ui(film_u8: np.ndarray, overlay_rgb: np.ndarray, map_title: str, key: str) -> None:
    st.plotly_chart(viewer_figure(film_u8, overlay_rgb, map_title), key=f"viewer_{key}", config=CONFIG,
                    width="stretch")
