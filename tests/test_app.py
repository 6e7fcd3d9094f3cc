"""Page tests with streamlit.testing.v1.AppTest: the real app.py, navigation, sidebar and pages over a
tiny trained model (conftest's ``tiny_model_dir``) made active in a temporary weights folder.

Uploads go through AppTest's own ``file_uploader`` element (this Streamlit supports it), so no test
seam is needed in the pages.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from conftest import synthetic_film
from conftest_io_helpers import make_dicom
from PIL import Image
from streamlit.testing.v1 import AppTest

from pneumo_core.model.store import write_card

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SECRETS = ("Doe^Jane", "Doe", "PID-123456", "St Elsewhere")


# --------------------------------------------------------------------------- films built in the test

def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def film(seed: int = 1, pneumonia: bool = True, size: int = 96) -> bytes:
    return png(synthetic_film(np.random.default_rng(seed), pneumonia, size))


def dicom(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", view: str = "PA", age: str = "003Y") -> bytes:
    """A 12-bit DX film carrying identifiers that must never reach the page."""
    values = np.clip(pixels, 0, 1) if photometric == "MONOCHROME2" else 1 - np.clip(pixels, 0, 1)
    return make_dicom((values * 4095).astype(np.uint16), photometric, 12, ViewPosition=view, PatientAge=age,
                      PatientSex="F", PatientName=SECRETS[0], PatientID=SECRETS[2], InstitutionName=SECRETS[3])


# --------------------------------------------------------------------------- app fixtures and helpers

def _clear_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture()
def weights(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    """A weights root whose ACTIVE names a link to the tiny model."""
    root = tmp_path / "weights"
    root.mkdir()
    (root / "tiny").symlink_to(tiny_model_dir, target_is_directory=True)
    (root / "ACTIVE").write_text("tiny\n")
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    _clear_caches()
    yield root
    _clear_caches()


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    at.file_uploader[0].set_value([(name, data, "application/octet-stream") for name, data in files]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


_DATA_URI = re.compile(r"data:image(?:/|\\+u002f)\w+;base64,[A-Za-z0-9+/=\\]+")   # "/" may be JSON-escaped


def texts(at: AppTest) -> str:
    """Every string the page sends to the browser (element protos, main area and sidebar)."""
    out = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    # Images drawn inline (the plotly viewer's PNG data URIs) are pixels, not text: their base64 can spell
    # anything ("Doe" among it).
    return _DATA_URI.sub("data:image", "\n".join(out))


def unescaped(markdown: str) -> str:
    """Markdown source as the reader sees it (file-derived text is backslash-escaped, ``films_ui._escape``)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def errors(at: AppTest) -> list[str]:
    return [unescaped(e.value) for e in at.error]


def overlays(at: AppTest) -> list:
    """The film viewers (film and map side by side in one plotly figure, ``appkit.viewer``)."""
    return [c for c in at.get("plotly_chart") if '"Film"' in c.proto.spec and "for pneumonia" in c.proto.spec]


# --------------------------------------------------------------------------- no model

@pytest.mark.parametrize("page", [None, "triage", "metrics"])
def test_no_model_is_a_clear_error_on_every_page(page, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(tmp_path / "empty"))
    _clear_caches()
    at = open_app(page)
    assert any("No model is available" in e for e in errors(at))
    assert any("weights/ACTIVE" in i.value for i in at.info)
    assert not at.file_uploader                           # the page stopped at its guard
    assert "Traceback" not in texts(at)


@pytest.fixture()
def broken_active_model(tmp_path, monkeypatch, tiny_model_dir) -> None:
    """The active version's weights file is not weights (its sha256 no longer matches the card)."""
    root = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, root / "broken")
    (root / "broken" / "model.safetensors").write_bytes(b"not weights")
    (root / "ACTIVE").write_text("broken\n")
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    _clear_caches()


def test_broken_model_folder_is_an_error_not_a_traceback(broken_active_model):
    at = open_app()
    assert any("No model is available" in e and "sha256" in e for e in errors(at))


def test_broken_model_warmed_at_start_still_gives_the_clear_refusal(broken_active_model):
    """Issue #16, item 7: appkit.serve loads the model as the server starts; a broken one is only noted in the
    log there, and the page still refuses with the reason, as without the warm-up."""
    import sys

    from appkit.serve import warm

    assert "sha256" in warm()
    assert "appkit.films_ui" in sys.modules          # the pages' modules are loaded even so
    at = open_app()
    assert any("No model is available" in e and "sha256" in e for e in errors(at))


def test_model_warmed_at_start_is_the_one_the_pages_use(weights, monkeypatch):
    """The warm-up fills the cache the pages read: the first visitor loads nothing."""
    from appkit import serve
    from pneumo_core.model.predict import Predictor

    warmed = []
    monkeypatch.setattr(serve, "warm_pages", lambda: warmed.append(1))
    assert serve.warm() is None and warmed == [1]
    loads = []
    original = Predictor.from_dir.__func__
    monkeypatch.setattr(Predictor, "from_dir", classmethod(lambda cls, *a, **k: loads.append(a) or original(cls, *a, **k)))
    at = upload(open_app(), ("a.png", film(3)))
    assert loads == [] and len(at.metric) == 1


def test_the_server_runs_the_network_on_one_thread_unless_told_and_warms_the_pages(monkeypatch):
    """appkit.serve: one CPU thread per film's network passes by default (two spin-waited for each other on the
    2-core machine while Chromium drew the page), PNEUMO_SERVE_THREADS to change it, nonsense ignored; and
    the pages' modules load before the first visitor."""
    import subprocess
    import sys

    from appkit import serve

    monkeypatch.delenv("PNEUMO_SERVE_THREADS", raising=False)
    assert serve.serve_threads() == 1
    monkeypatch.setenv("PNEUMO_SERVE_THREADS", "4")
    assert serve.serve_threads() == 4
    monkeypatch.setattr(serve, "SERVE_THREADS", 3)      # so that "ignored" is not mistaken for "clamped to 1"
    for bad in ("0", "-2", "two", "1.5"):
        monkeypatch.setenv("PNEUMO_SERVE_THREADS", bad)
        assert serve.serve_threads() == 3
    # in a fresh interpreter: this one has imported the pages' modules already
    code = ("import sys; from appkit import serve; before = [m for m in serve.PAGE_MODULES if m in sys.modules]; "
            "serve.warm_pages(); print(before, all(m in sys.modules for m in serve.PAGE_MODULES))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[0] == "[] True", out.stderr[-2000:]


# --------------------------------------------------------------------------- sidebar

def test_sidebar_shows_model_card_summary_and_operating_point(weights, tiny_model_dir):
    import json

    card = json.loads((tiny_model_dir / "card.json").read_text())
    at = open_app()
    sidebar = "\n".join(m.value for m in at.sidebar.markdown) + "\n".join(c.value for c in at.sidebar.caption)
    assert card["version"] in sidebar
    assert "Data: " in sidebar and "init: " in sidebar and "external AUC" in sidebar
    radio = at.sidebar.radio(key="operating_point")
    assert radio.value == card["default_operating_point"] == "high_sensitivity"
    assert [o.split(" · ")[0] for o in radio.options] == ["Balanced", "High sensitivity"]
    assert "Decision support, not a diagnosis." in sidebar


def test_promoted_model_is_picked_up_without_restart(weights, tiny_model_dir):
    import json

    at = open_app()
    promoted = weights / "promoted"
    shutil.copytree(tiny_model_dir, promoted)
    card = json.loads((promoted / "card.json").read_text())
    card["version"] = "promoted-v2"
    write_card(promoted, card)
    (weights / "ACTIVE").write_text("promoted\n")
    at.run()
    assert any("promoted-v2" in m.value for m in at.sidebar.markdown)


# --------------------------------------------------------------------------- landing

def test_landing_says_what_for_whom_and_its_limits_with_the_upload_below(weights):
    """Issue #16, item 1: the product's name, what it does, for whom, its limits and the way in, in one view;
    with films uploaded it shrinks to one line so the results stay in view."""
    at = open_app()
    assert [t.value for t in at.title] == ["Pneumonia decision support"]
    shown = "\n".join(m.value for m in at.main.markdown)
    for words in ("What it does", "probability of pneumonia", "For whom", "chest films of children", "frontal",
                  "Its limits", "Decision support, not a diagnosis.", "Upload a chest film below"):
        assert words in shown, words
    assert len(at.file_uploader) == 1
    at = upload(at, ("a.png", film(1)))
    assert "For whom" not in "\n".join(m.value for m in at.main.markdown)
    assert any("Intended use" in c.value for c in at.main.caption) and len(at.metric) == 1


def test_theme_follows_the_system_with_a_light_and_a_dark_palette():
    """Issue #16, item 8: the config no longer forces the light theme; both palettes are defined."""
    import tomllib

    theme = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["theme"]
    assert "base" not in theme
    assert {"light", "dark"} <= set(theme) and all("primaryColor" in theme[t] for t in ("light", "dark"))


# --------------------------------------------------------------------------- predict

def test_predict_png_shows_probability_label_overlay_metadata_downloads(weights):
    at = upload(open_app(), ("film.png", film()))
    assert not errors(at)
    [metric] = at.metric
    assert metric.label == "Probability of pneumonia" and metric.value.endswith("%")
    assert 0 <= float(metric.value.rstrip("%")) <= 100
    assert any(m.value in (":red-badge[PNEUMONIA]", ":green-badge[NORMAL]") for m in at.markdown)
    # The default operating point is the screening one (a second-opinion tool).
    assert any("High sensitivity" in c.value and "threshold" in c.value for c in at.caption)
    assert len(overlays(at)) == 1 and any("a relative map" in c.value for c in at.caption)
    assert any("| Format | PNG |" in m.value for m in at.markdown)
    assert at.selectbox(key=next(s.key for s in at.selectbox if s.key.startswith("cam_method_"))).value == "gradcam"
    labels = [d.label for d in at.get("download_button")]
    assert labels == ["PDF report", "Overlay PNG"]


def test_predict_main_view_in_plain_words_and_one_number_format(weights):
    """Issue #16, item 4: thresholds as percentages with one decimal, like probabilities; the operating point
    named in plain words, its rule ("max Youden J; chosen on external/") only in a help popover; no empty
    metadata header cell."""
    at = upload(open_app(), ("film.png", film()))
    main = [c.value for c in at.main.caption] + [m.value for m in at.main.markdown if not m.value.startswith("**")]
    pct = re.compile(r"threshold \d{1,3}\.\d%")
    assert any("High sensitivity (threshold" in c and pct.search(c) for c in main)
    assert not any(re.search(r"\b0\.\d{2,}", c) for c in main), main        # no 0.622-style thresholds
    assert not any("Youden" in c or "chosen on" in c for c in main)
    [popover] = at.get("popover")
    details = "\n".join(m.value for m in popover.markdown)
    assert "High sensitivity" in details and "Rule:" in details and re.search(r"\d{1,3}\.\d% or more", details)
    assert re.fullmatch(r"\d{1,3}\.\d%", at.metric[0].value)
    table = next(m.value for m in at.markdown if m.value.startswith("| Image metadata"))
    assert "| |" not in table.splitlines()[0] and table.splitlines()[0].count("|") == 3
    radio = at.sidebar.radio(key="operating_point")
    assert all(re.search(r"threshold \d{1,3}\.\d%$", o) for o in radio.options), radio.options


def test_viewer_shows_film_and_map_side_by_side_with_window_level(weights):
    """Issue #16, item 2: one plotly figure, film and map at the film's own resolution with shared (zoomable)
    axes; window/level presets and sliders change the film shown, from its float pixels."""
    import json

    from appkit.viewer import PRESETS, window

    at = upload(open_app(), ("film.png", film(size=320)))
    [chart] = overlays(at)
    spec = json.loads(chart.proto.spec)
    images = [t for t in spec["data"] if t["type"] == "image"]
    assert len(images) == 2 and spec["layout"]["dragmode"] == "pan"
    assert spec["layout"]["xaxis2"]["matches"] == "x" and spec["layout"]["yaxis2"]["matches"] == "y"
    before = images[0]["source"]
    preset = next(s for s in at.selectbox if s.key.startswith("wl_preset_"))
    preset.set_value("Lungs").run()
    level = next(s for s in at.slider if s.key.startswith("wl_level_"))
    assert (level.value, next(s for s in at.slider if s.key.startswith("wl_width_")).value) == PRESETS["Lungs"]
    after = [t for t in json.loads(overlays(at)[0].proto.spec)["data"] if t["type"] == "image"][0]["source"]
    assert after != before
    level.set_value(20).run()
    assert [t for t in json.loads(overlays(at)[0].proto.spec)["data"] if t["type"] == "image"][0]["source"] != after
    # the window works on float pixels: 12-bit steps that 8 bits would merge stay apart in a narrow window
    ramp = np.linspace(0.5, 0.5 + 8 / 4095, 9, dtype=np.float32)
    assert len(set(window(ramp, 50.1, 0.5).tolist())) > 4


def test_pages_with_an_upload_box_have_the_browser_load_a_results_code(weights, monkeypatch):
    """Predict and Triage send one small script naming the Streamlit files that hold the browser code of their
    results' elements (plotly's chart among them; files this Streamlit has), so the browser loads them while
    the user picks films; Metrics sends none, and with no such files neither does any page. That the browser
    runs it, and that the result then uses that code, is in test_browser.py."""
    import json

    from appkit import viewer

    folder = Path(st.__file__).parent / "static" / "static" / "js"
    for page, elements in ((None, viewer.RESULT_CODE), ("triage", viewer.WORKLIST_CODE)):
        names = viewer.result_code_files(elements)
        assert any(n.startswith("PlotlyChart.") for n in names) and all((folder / n).is_file() for n in names)
        scripts = [h.proto for h in open_app(page).html if "<script>" in h.proto.body]
        assert len(scripts) == 1 and scripts[0].unsafe_allow_javascript, page
        assert json.dumps(list(names)) in scripts[0].body, page
        code = scripts[0].body.removeprefix("<script>").removesuffix("</script>")
        assert "<" not in code, "Streamlit's sanitiser would drop the script"
    assert any(n.startswith("DataFrame.") for n in viewer.result_code_files(viewer.WORKLIST_CODE))
    assert not [h for h in open_app("metrics").html if "<script>" in h.proto.body]
    monkeypatch.setattr(viewer, "result_code_files", lambda elements: ())
    assert not [h for h in open_app().html if "<script>" in h.proto.body]


def test_viewer_draws_the_film_at_its_own_resolution_as_jpeg(weights):
    """The viewer's images are the kept film and its map at the film's own size (not a 224 px copy), as JPEG
    data URIs (a fraction of PNG's bytes and encoding time); the film panel is the film itself (full-range
    window), and each panel is titled, the map with its method."""
    import base64
    import json

    import cv2

    from pneumo_core.ingest.read import read_xray

    data = film(size=320)
    at = upload(open_app(), ("film.png", data))
    spec = json.loads(overlays(at)[0].proto.spec)
    titles = {a["text"]: (a["xref"], a["yref"]) for a in spec["layout"]["annotations"]}
    assert titles == {"Film": ("x domain", "y domain"), "Grad-CAM for pneumonia": ("x2 domain", "y2 domain")}
    sources = [t["source"] for t in spec["data"] if t["type"] == "image"]
    assert all(s.startswith("data:image/jpeg;base64,") for s in sources)
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(s.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
               for s in sources]
    assert [d.shape[:2] for d in decoded] == [(320, 320), (320, 320)]
    assert decoded[0].ndim == 2 and decoded[1].ndim == 3        # the grey film, the coloured map over it
    pixels = read_xray(data, name="film.png").pixels * 255
    assert np.abs(decoded[0].astype(np.float32) - pixels).mean() < 2      # JPEG at quality 95: the same film


def test_several_files_each_get_a_result(weights):
    at = upload(open_app(), ("a.png", film(1)), ("b.png", film(2, False)), ("same-as-a.png", film(1)))
    assert len(at.metric) == 2 and len(overlays(at)) == 2
    assert any("identical" in c.value for c in at.caption)


def test_newest_film_first_and_previous_next_move_the_focus(weights):
    """Issue #16, item 3: the newest upload's result comes first (in view below the upload box); Previous, Next
    and the film selector bring another film first; every film still gets its result below."""
    names = ["a.png", "b.png", "c.png"]
    files = [(n, film(60 + i, i != 1)) for i, n in enumerate(names)]
    at = upload(open_app(), *files)
    first = lambda: next(m.value for m in at.markdown if m.value.startswith("##### "))  # noqa: E731
    assert first() == "##### c\\.png" and len(at.metric) == 3 and len(overlays(at)) == 3
    assert at.button(key="film_next").disabled
    at.button(key="film_prev").click().run()
    assert first() == "##### b\\.png"
    at.button(key="film_prev").click().run()
    assert first() == "##### a\\.png" and at.button(key="film_prev").disabled
    at.button(key="film_next").click().run()
    assert first() == "##### b\\.png"
    at.selectbox(key="film_focus").set_value(at.selectbox(key="film_focus").options[0]).run()
    assert first() == "##### a\\.png"
    at = upload(at, *files, ("d.png", film(70)))                       # a new upload takes the focus
    assert first() == "##### d\\.png" and len(at.metric) == 4


def test_unreadable_files_are_error_messages_not_exceptions(weights):
    truncated = film()[:200]
    at = upload(open_app(), ("notes.txt", b"Patient notes, not an image.\n"), ("cut.png", truncated),
                ("empty.dcm", b""))
    errs = errors(at)
    assert len(errs) == 3
    assert any("text file" in e for e in errs)
    assert any("truncated or corrupt" in e for e in errs)
    assert any("empty" in e for e in errs)
    assert not at.metric and "Traceback" not in texts(at)


def test_rejected_blank_image_is_shown_then_can_be_analysed_anyway(weights):
    at = upload(open_app(), ("blank.png", png(np.full((128, 128), 0.5))))
    assert any("Rejected" in e and "blank" in e for e in errors(at)), errors(at)
    assert not at.metric
    at.checkbox[0].check().run()
    assert len(at.metric) == 1 and len(overlays(at)) == 1
    assert any("Outside validated use" in m.value for m in at.markdown)
    assert not any(m.value in (":red-badge[PNEUMONIA]", ":green-badge[NORMAL]") for m in at.markdown)
    assert any(unescaped(w.value).startswith("**Outside validated use.** The image is blank") for w in at.warning)


def test_dicom_warnings_and_metadata_without_identifiers(weights):
    pixels = synthetic_film(np.random.default_rng(5), True, 96)
    at = upload(open_app(), ("lateral", dicom(pixels, photometric="MONOCHROME1", view="LL", age="045Y")))
    assert any("Rejected" in e and "Lateral view (LL)" in e for e in errors(at)), errors(at)   # frontal films only
    at.checkbox[0].check().run()                                                             # analyse anyway
    assert len(at.metric) == 1
    warning = "\n".join(unescaped(w.value) for w in at.warning)
    assert "**Outside validated use.** Lateral view" in warning
    assert "older than the pediatric training population" in warning
    assert "MONOCHROME1" in warning
    table = next(m.value for m in at.markdown if "| Format |" in m.value)
    for expected in ("| Modality | DX |", "| View | LL |", "MONOCHROME1", "| Bits stored | 12 |", "| Age | 45 y |",
                     "| Sex | F |"):
        assert expected in table, table
    page = texts(at)
    assert not any(secret in page for secret in SECRETS)


def shown_markdown(at: AppTest) -> list[str]:
    """The markdown source of every text element the page renders as markdown."""
    return [e.value for kind in (at.markdown, at.error, at.warning, at.info, at.caption) for e in kind]


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")   # pydicom, writing the crafted file
def test_markdown_in_dicom_tags_never_reaches_the_page(weights):
    """Issue #19, item 1: a crafted Modality put a link and bold 'RESULT: NORMAL' into the rejection and the
    'outside validated use' messages; a URL in BodyPartExamined became a link in the metadata table."""
    pixels = np.clip(synthetic_film(np.random.default_rng(5), True, 96), 0, 1)
    crafted = [make_dicom((pixels * 4095).astype(np.uint16), "MONOCHROME2", 12, Modality=modality,
                          BodyPartExamined=body)
               for modality, body in (("[RESULT: NORMAL](http://evil.example)", "http://evil.example/chest"),
                                      ("**RESULT: NORMAL, NO PNEUMONIA**", "![x](http://evil.example/a.png)"))]
    at = upload(open_app(), ("one.dcm", crafted[0]), ("two.dcm", crafted[1]))
    for box in at.checkbox:                                  # analyse anyway, wherever a film was rejected
        box.check()
    at.run()
    assert not at.exception
    for value in shown_markdown(at):
        assert not re.search(r"(?<!\\)\]\(http", value) and "**RESULT" not in value, value
        assert "RESULT" not in unescaped(value) and "evil" not in value.lower(), value
    assert "evil" not in texts(at).lower()
    assert len(at.metric) == 2                                # both films were analysed: no tag to reject them
    tables = [m.value for m in at.markdown if "| Format |" in m.value]
    assert len(tables) == 2 and not any("| Modality |" in t or "| Body part" in t for t in tables), tables
    assert any("Modality value is not a valid code" in unescaped(w.value) for w in at.warning)


def test_file_names_are_text_not_links(weights):
    """A URL in a file name is escaped and also kept from the browser's automatic links."""
    name = "**RESULT: NORMAL** [x](http://evil.example) www.evil.example a@evil.example.png"
    at = upload(open_app(), (name, film()))
    heading = next(m.value for m in at.markdown if m.value.startswith("##### "))
    assert "**RESULT" not in heading and not re.search(r"(?<!\\)\]\(", heading)
    shown = unescaped(heading)
    assert "RESULT: NORMAL" in shown                          # shown as text
    assert not re.search(r"(?i)https?://|www\.|@[-\w]", shown), shown   # nothing GFM would link after parsing


def test_opacity_slider_and_operating_point_reuse_the_cached_cam(weights, monkeypatch):
    import appkit.analysis as analysis

    calls = []
    real = analysis.explain

    def counting(*args, **kwargs):
        calls.append(kwargs.get("method"))
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "explain", counting)
    at = upload(open_app(), ("film.png", film()))
    slider = next(s for s in at.slider if s.key.startswith("cam_alpha_"))
    slider.set_value(0.9).run()
    assert calls == ["gradcam"]                                   # the slider did not recompute the CAM
    assert len(overlays(at)) == 1
    at.sidebar.radio(key="operating_point").set_value("balanced").run()
    assert calls == ["gradcam"]
    assert any("Balanced" in c.value for c in at.caption)
    next(s for s in at.selectbox if s.key.startswith("cam_method_")).set_value("gradcam++").run()
    assert calls == ["gradcam", "gradcam++"] and len(overlays(at)) == 1
    assert "Grad-CAM++ for pneumonia" in overlays(at)[0].proto.spec


# --------------------------------------------------------------------------- triage

def test_triage_worklist_sorted_flagged_with_inline_errors(weights):
    at = open_app("triage")
    files = [(f"f{i}.png", film(10 + i, i % 2 == 0)) for i in range(6)]
    files += [("notes.txt", b"not an image"), ("blank.png", png(np.full((64, 64), 0.3))),
              ("study.dcm", dicom(synthetic_film(np.random.default_rng(3), False, 96)))]
    at = upload(at, *files)
    assert not errors(at)
    df = at.dataframe[0].value
    assert list(df.columns) == ["thumbnail", "flag", "outside", "file", "probability", "label", "film_type",
                                "status", "notes"]
    ok = df[df.status == "ok"]
    assert len(ok) == 7 and list(ok.probability) == sorted(ok.probability, reverse=True)
    assert list(df.status) == ["ok"] * 7 + ["rejected", "error"]            # problems listed last, inline
    assert "text file" in df.notes.iloc[-1] and "blank" in df.notes.iloc[-2]
    assert df.thumbnail.iloc[0].startswith("data:image/png;base64,")
    assert set(df.flag) <= {"Flagged", ""}       # words: a checkbox column looked like the row-select column
    assert {m.label: m.value for m in at.metric} == {"Analysed": "7", "Flagged": str(int((df.flag != "").sum())),
                                                     "Outside validated use": "0", "Rejected": "1",
                                                     "Unreadable": "1"}
    assert list(df.outside) == [""] * 7 + ["Outside", ""]     # the rejected film; no film-type check here
    assert [d.label for d in at.get("download_button")] == ["Worklist CSV"]
    assert not any(secret in texts(at) for secret in SECRETS)


def test_triage_detail_view_for_the_selected_row(weights):
    at = upload(open_app("triage"), ("a.png", film(1)), ("b.png", film(2, False)))
    assert any("Select a row" in c.value for c in at.caption) and not overlays(at)
    at.session_state["worklist"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    assert len(overlays(at)) == 1
    chosen = at.dataframe[0].value.file.iloc[1]
    assert any(m.value.startswith("##### ") and chosen.split(".")[0] in m.value for m in at.markdown)


def test_triage_detail_dialog_moves_along_the_worklist(weights):
    """Issue #16, item 5: the detail opens in a dialog (where the user looks), with Previous/Next in worklist
    order; every row shows without an inner scroll (the table is as tall as its rows)."""
    files = [(f"f{i:02d}.png", film(40 + i, i % 2 == 0)) for i in range(14)]
    at = upload(open_app("triage"), *files)
    from appkit.triage_ui import worklist_height

    assert worklist_height(14) >= 40 + 52 * 14 and worklist_height(50) >= 40 + 52 * 50    # was capped at 12 rows
    order = list(at.dataframe[0].value.file)
    at.session_state["worklist"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    heading = lambda: [m.value for m in at.markdown if m.value.startswith("##### ")]  # noqa: E731
    assert heading() == ["##### " + order[0].replace(".", "\\.")]
    assert at.button(key="detail_prev").disabled and any("Film 1 of 14" in m.value for m in at.markdown)
    at.button(key="detail_next").click().run()
    at.button(key="detail_next").click().run()
    assert heading() == ["##### " + order[2].replace(".", "\\.")] and len(overlays(at)) == 1
    at.button(key="detail_prev").click().run()
    assert heading() == ["##### " + order[1].replace(".", "\\.")]
    assert not at.exception


def test_triage_is_not_recomputed_on_a_rerun(weights, monkeypatch):
    import appkit.triage_ui as triage_ui

    calls = []
    real = triage_ui.triage
    monkeypatch.setattr(triage_ui, "triage", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = upload(open_app("triage"), ("a.png", film(1)))
    at.run()
    assert calls == [1]
    at.sidebar.radio(key="operating_point").set_value("balanced").run()
    assert calls == [1, 1]                      # labels depend on the operating point


# --------------------------------------------------------------------------- metrics

def test_metrics_page_renders_plotly_charts_from_saved_artifacts(weights, monkeypatch):
    import pneumo_core.model.predict as predict

    monkeypatch.setattr(predict.Predictor, "logits", lambda *a, **k: pytest.fail("metrics must not run the model"))
    at = open_app("metrics")
    assert not errors(at)
    charts = at.get("plotly_chart")
    assert len(charts) >= 7        # ROC, PR, 2 confusion matrices, calibration, sweep, training
    provenance = "\n".join(m.value for m in at.markdown)
    assert "**test/**" in provenance and "**external/**" in provenance and "Optimistic" in provenance
    headline = at.table[0].value
    assert list(headline.columns) == ["test/ (n=16)", "external/ (n=16)"]
    assert headline.loc["AUC"].str.match(r"^\d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\)$").all()
    assert at.multiselect[0].value == ["test", "external"]


def test_metrics_says_which_population_is_calibrated_and_how_faithful_the_map_is(tmp_path, monkeypatch,
                                                                                 tiny_model_dir):
    import json

    from conftest import active_weights_root

    root = active_weights_root(tmp_path, monkeypatch, tiny_model_dir)
    card_path = root / "base" / "card.json"
    card = json.loads(card_path.read_text())
    row = lambda layer, method, score, ok: {"layer": layer, "method": method, "grid": [8, 8],  # noqa: E731
                                            "road_combined": score, "ci95": [score - 0.1, score + 0.1],
                                            "eligible": ok}
    card["explain"] = {"layer": "denseblock3", "method": "layercam", "grid": [8, 8], "faithfulness": {
        "score": 0.42, "ci95": [0.32, 0.52], "percentiles": [20, 40, 60, 80],
        "films": "32 PNEUMONIA films of external/",
        "table": [row("denseblock3", "layercam", 0.42, True), row("random", "random map", 0.01, False)]}}
    write_card(card_path.parent, card)
    _clear_caches()
    at = open_app("metrics")
    assert not errors(at)
    info = "\n".join(i.value for i in at.info)
    assert "calibrated for films like the official Kermany test set" in info
    captions = "\n".join(c.value for c in at.caption)
    assert "ECE by split: " in captions and "test/ " in captions and "external/ " in captions
    text = "\n".join(m.value for m in at.markdown)
    assert "layercam on `denseblock3` (grid 8x8" in text and "+0.420 (95% CI +0.320 to +0.520)" in text
    faith = at.dataframe[-1].value
    assert list(faith["Method"]) == ["layercam", "random map"] and list(faith["ROAD combined"]) == ["+0.420", "+0.010"]


def test_metrics_prevalence_slider_and_split_choice(weights):
    at = open_app("metrics")
    at.multiselect[0].set_value(["test", "external", "val"]).run()
    assert list(at.table[0].value.columns)[-1].startswith("val/")
    slider = next(s for s in at.slider if s.key.startswith("prevalence_"))
    slider.set_value(0.05).run()
    assert not at.exception and not errors(at)


def test_metrics_without_artifacts_shows_a_warning_and_the_card(tmp_path, monkeypatch, tiny_model_dir):
    root = tmp_path / "weights"
    shutil.copytree(tiny_model_dir, root / "bare", ignore=shutil.ignore_patterns("evaluation"))
    (root / "ACTIVE").write_text("bare\n")
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    _clear_caches()
    at = open_app("metrics")
    assert any("no saved evaluation" in w.value for w in at.warning)
    assert at.table and not at.get("plotly_chart")
