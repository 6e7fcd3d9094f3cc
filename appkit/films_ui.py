"""Upload decoding and the result card for one film, shared by the Predict page and Triage's detail view."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Sequence

import streamlit as st

from pneumo_core.model.explain import METHODS, Explanation, default_method, overlay
from pneumo_core.model.predict import MODEL_ERRORS, Prediction, model_failure, outside_detail

from .analysis import FILM_SIDE, Film, Upload, decode, held_pixels, over_session_cap, session_pixel_cap
from .auth_ui import audit_once
from .client import client_key
from .images import png_bytes, shrink, to_uint8
from .limits import ClientRates, RateLimiter, UploadLimits, admit
from .model import ActiveModel
from .report import pdf_report
from .text import card_summary, fmt_pct, metadata_rows, op_details, op_meaning, op_plain, op_rule
from .viewer import RESULT_CODE, preload_result_code, viewer_ui, window, windowing_ui

ACCEPTED = "PNG, JPEG, DICOM (also without a file extension), BMP, TIFF, WebP"
RATE_KEY = "_rate_limiter"       # session: RateLimiter
SEEN_KEY = "_analysed"           # session: sha256 of films already analysed (counted once against the limit)
FOCUS_KEY = "film_focus"         # session: sha256 of the film shown first on Predict (the film selector's value)
UPLOADED_KEY = "_uploaded"       # session: sha256 of the films in the upload box at the last run, in order
# Keyboard: P and N step through films (Predict's film selector, Triage's detail); Streamlit shows the key on
# the button and ignores it while the user types in a field. C and R are Streamlit's own.
PREV_KEY, NEXT_KEY = "P", "N"
METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
                 "layercam": "LayerCAM", "eigencam": "EigenCAM"}


def uploads_ui(label: str, *, key: str, help: str | None = None,
               results: tuple[str, ...] = RESULT_CODE) -> list[Upload]:
    """Uploaded files as bytes in memory (type sniffed by the core, so no ``type=`` filter); duplicates once.
    Files past this server's size caps or the rate limit come back refused (with the reason). The browser
    loads the code of the ``results`` elements while the user picks files (``viewer.preload_result_code``)."""
    lim = UploadLimits.from_env()
    files = st.file_uploader(label, accept_multiple_files=True, key=key,
                             help=help or f"Accepted: {ACCEPTED}. Up to {lim.max_file_bytes // 2**20} MB per file "
                                          f"and {lim.max_files} films per batch.") or []
    preload_result_code(results)
    admission = admit([f.size for f in files], lim)
    for notice in admission.notices:
        st.warning(notice, icon=":material/block:")
    uploads: dict[str, Upload] = {}
    for i, f in enumerate(files):
        up = Upload.of(f.name, f.getvalue())
        uploads.setdefault(up.sha, up.refused(admission.refused[i]) if i in admission.refused else up)
    if len(uploads) < len(files):
        st.caption(f"{len(files) - len(uploads)} identical file(s) are shown once.")
    return rate_limited(list(uploads.values()), lim)


@st.cache_resource
def _client_rates() -> ClientRates:
    """One per server process: a client's films count across all its sessions (a reload starts no new quota)."""
    return ClientRates()


def rate_limited(uploads: list[Upload], lim: UploadLimits) -> list[Upload]:
    """Films this session has not had analysed yet count against its rate limit and its client's; those past
    either are held back for now ("limit reached") and analysed on a later run, once the window has room."""
    session = st.session_state.get(RATE_KEY)
    if session is None or (session.limit, session.window_s) != (lim.rate_films, lim.rate_window_s):
        session = st.session_state[RATE_KEY] = RateLimiter(lim.rate_films, lim.rate_window_s)
    client = _client_rates().get(client_key(), lim.client_films, lim.rate_window_s)
    seen: set[str] = st.session_state.setdefault(SEEN_KEY, set())
    new = [u for u in uploads if not u.refusal and u.sha not in seen]
    granted = session.take(client.take(min(len(new), session.room())))
    seen.update(u.sha for u in new[:granted])
    blocked = {u.sha for u in new[granted:]}
    if not blocked:
        return uploads
    wait = f"{max(1, round(max(session.retry_after(), client.retry_after())))} s"
    reason = f"Limit reached: held back for now ({_rate_text(lim)}). Try again in {wait}."
    st.warning(f"Limit reached: {len(blocked)} film(s) were held back, not analysed ({_rate_text(lim)}). They will "
               f"be analysed when you come back to this page in {wait}.", icon=":material/hourglass_top:")
    return [u.refused(reason, retry=True) if u.sha in blocked else u for u in uploads]


def _rate_text(lim: UploadLimits) -> str:
    window = f"{lim.rate_window_s // 60} min" if lim.rate_window_s >= 120 else f"{lim.rate_window_s} s"
    if lim.client_films == lim.rate_films:
        return f"this server analyses up to {lim.rate_films} films per {window} for one user"
    return (f"this server analyses up to {lim.rate_films} films per {window} for one session and "
            f"{lim.client_films} for one address")


def films_for(namespace: str, model: ActiveModel, uploads: Sequence[Upload]) -> list[Film]:
    """Decoded films for these uploads, kept in this session only while they stay uploaded (refused ones are
    not kept, so a film refused by the rate limit is analysed on a later run).

    Films are kept at most ``FILM_SIDE`` a side, and all namespaces of a session together at most
    ``session_pixel_cap()`` pixels: a new film is decoded only while there is room for one more at full
    ``FILM_SIDE``; the others get a message and are not kept (decoded on a later run once there is room)."""
    key = f"_films_{namespace}"
    model_key, cached = st.session_state.get(key) or (None, {})
    if model_key != model.key:
        cached = {}
    kept = {u.sha: cached[u.sha] for u in uploads if not u.retry and u.sha in cached}
    cap = session_pixel_cap()
    held = held_pixels(kept.values()) + sum(
        held_pixels(value[1].values()) for name, value in st.session_state.items()
        if name.startswith("_films_") and name != key and isinstance(value, tuple))
    films: dict[str, Film] = {}
    for u in uploads:
        if u.sha in films:
            continue
        film = kept.get(u.sha)
        if film is None and not u.refusal and held + FILM_SIDE * FILM_SIDE > cap:
            film = over_session_cap(u.name, u.sha, held, cap)
        elif film is None:
            film = decode(u, model.predictor)
            held += held_pixels([film])
            if not u.retry:
                kept[u.sha] = film
        films[u.sha] = film
    st.session_state[key] = (model.key, kept)
    return [films[u.sha] for u in uploads]


def _focus(shas: list[str], i: int) -> None:
    st.session_state[FOCUS_KEY] = shas[max(0, min(i, len(shas) - 1))]


def film_order_ui(uploads: Sequence[Upload]) -> list[Upload]:
    """The films in the order shown: the film in focus first, then the others newest first. A new upload takes
    the focus (so its result comes into view below the upload box); Previous, Next and the selector move it."""
    shas = [u.sha for u in uploads]
    new = [sha for sha in shas if sha not in st.session_state.get(UPLOADED_KEY, ())]
    st.session_state[UPLOADED_KEY] = shas
    if new or st.session_state.get(FOCUS_KEY) not in shas:
        st.session_state[FOCUS_KEY] = new[-1] if new else shas[-1]
    if len(uploads) > 1:
        names = {u.sha: f"{n}. {u.name}" for n, u in enumerate(uploads, 1)}
        i = shas.index(st.session_state[FOCUS_KEY])
        prev, pick, nxt = st.columns([1, 4, 1], vertical_alignment="bottom")
        prev.button("Previous", key="film_prev", icon=":material/arrow_back:", disabled=i == 0, width="stretch",
                    on_click=_focus, args=(shas, i - 1), shortcut=PREV_KEY)
        pick.selectbox(f"Film shown first ({len(uploads)} uploaded)", shas, key=FOCUS_KEY,
                       format_func=names.__getitem__)
        nxt.button("Next", key="film_next", icon=":material/arrow_forward:", disabled=i == len(shas) - 1,
                   width="stretch", on_click=_focus, args=(shas, i + 1), shortcut=NEXT_KEY)
    focus = st.session_state[FOCUS_KEY]
    return [u for u in uploads if u.sha == focus] + [u for u in reversed(uploads) if u.sha != focus]


def cam_controls_ui(key: str, default: str = "gradcam", slots=None) -> tuple[str, float]:
    left, right = slots or st.columns(2)
    method = left.selectbox("Map method", METHODS, key=f"cam_method_{key}",
                            index=METHODS.index(default) if default in METHODS else 0,
                            format_func=lambda m: METHOD_LABELS.get(m, m))
    alpha = right.slider("Map opacity", 0.0, 1.0, 0.4, 0.05, key=f"cam_alpha_{key}")
    return method, alpha


def film_ui(film: Film, model: ActiveModel, op: str, *, key: str) -> None:
    """Error | rejection (with 'analyse anyway') | film, Grad-CAM, probability, warnings, metadata, downloads."""
    with st.container(border=True):
        st.markdown(f"##### {_escape(film.name)}")
        if film.refused:            # a size cap or the rate limit: the file itself may be fine
            st.warning(f"**Not analysed.** {_escape(film.error)}", icon=":material/block:")
            audit_once(("predict", film.sha, "refused"), "predict", "refused", input_sha256=film.sha,
                       model_version=model.version)
            return
        if film.error:
            st.error(f"**This file could not be read.** {_escape(film.error)}", icon=":material/block:")
            audit_once(("predict", film.sha, "error"), "predict", "error", input_sha256=film.sha,
                       model_version=model.version)
            return
        outside = film.caution
        if film.rejection:
            st.error("**Rejected: this does not look like a chest film the model can assess.** "
                     + _escape(film.rejection), icon=":material/report:")
            audit_once(("predict", film.sha, "rejected"), "predict", "rejected", input_sha256=film.sha,
                       model_version=model.version)
            if not st.checkbox("Analyse anyway (outside validated use)", key=f"force_{key}"):
                st.image(to_uint8(shrink(film.image.pixels, 256)), caption="The uploaded image")
                return
            outside = film.rejection
        if outside:
            outside_ui(outside)
        col_view, col_result = st.columns([2.8, 1], gap="medium")
        with col_view:
            slots = st.columns([1.3, 1, 1, 1.3, 1])
            level, width = windowing_ui(key, slots[:3])
            method, alpha = cam_controls_ui(key, default_method(model.predictor.card), slots[3:])
        try:
            exp = film.explanation(model.predictor, method, op)
            pred = film.prediction(model.predictor, op)
        except MODEL_ERRORS as exc:
            st.error(model_failure(exc))
            return
        audit_once(("predict", film.sha, pred.operating_point, model.key, bool(outside)), "predict", pred.label,
                   input_sha256=film.sha, model_version=pred.model_version, probability=pred.probability,
                   operating_point=pred.operating_point, threshold=pred.threshold,
                   detail=outside_detail(film.film_type, analysed_anyway=bool(film.rejection)) if outside else None)
        with col_result:            # sent before the viewer: the browser shows the result while it draws the films
            result_ui(pred, model, outside)
            warnings_ui(pred.warnings)
        shown = window(film.image.pixels, level, width)      # the film as kept, windowed on its float pixels
        with col_view:
            viewer_ui(shown, overlay(shown / 255.0, exp.normalised, alpha=alpha),
                      f"{METHOD_LABELS.get(method, method)} for pneumonia", key)
            st.caption(f"{METHOD_LABELS.get(method, method)} for pneumonia: a relative map (red = strongest evidence "
                       "within this film), not a lesion outline. Drag to pan, scroll to zoom (both panels move "
                       "together), double-click to reset.")
        with col_result:
            metadata_ui(film)
            downloads_ui(film, exp, pred, model, alpha, outside, key)


def outside_ui(why: str) -> None:
    """The headline of a film analysed outside validated use (an analysed-anyway rejection, an adult film):
    first thing in the film's box, above the result."""
    st.warning("**Outside validated use.** " + _escape(why) + " The probability and label below are not "
               "validated for this film.", icon=":material/warning:")


def label_badges(label: str, outside: str | None) -> str:
    """A validated film's label in green or red; outside validated use, never a plain green or red label."""
    if outside:
        return f":orange-badge[Outside validated use] :gray-badge[{label} — not validated]"
    return f":{'red' if label == 'PNEUMONIA' else 'green'}-badge[{label}]"


def result_ui(pred: Prediction, model: ActiveModel, outside: str | None) -> None:
    st.metric("Probability of pneumonia", fmt_pct(pred.probability),
              help="Outside validated use: not validated for this film." if outside else None)
    st.markdown(label_badges(pred.label, outside))
    st.caption(f"Calibrated probability. Label at the {op_plain(pred.operating_point, pred.threshold)} operating "
               f"point. Model `{pred.model_version}`.")
    with st.popover("About this number", icon=":material/help:"):
        st.markdown(op_details(model.card, pred.operating_point, pred.threshold))
        st.caption("Calibrated: of films given 80%, about 80 in 100 had pneumonia on the model's held-out data. "
                   "The operating point is chosen in the sidebar and applies to every page.")


def warnings_ui(warnings: Sequence[str]) -> None:
    if warnings:
        st.warning("\n".join(f"- {_escape(w)}" for w in warnings), icon=":material/warning:")


def metadata_ui(film: Film) -> None:
    rows = metadata_rows(film.image.metadata)
    st.markdown("| Image metadata | Value |\n|---|---|\n" + "\n".join(f"| {k} | {_escape(v)} |" for k, v in rows))


def downloads_ui(film: Film, exp: Explanation, pred: Prediction, model: ActiveModel, alpha: float,
                 outside: str | None, key: str) -> None:
    """Overlay PNG and PDF report, built only when clicked (the film as kept: ``FILM_SIDE`` a side at most)."""
    stem = PurePath(film.name).stem or "film"
    full_overlay = lambda: overlay(film.image.pixels, exp.normalised, alpha=alpha)  # noqa: E731

    def report() -> bytes:
        return pdf_report(file_name=film.name, sha256=film.sha, film=film.image.pixels, overlay_rgb=full_overlay(),
                          probability=pred.probability, label=pred.label,
                          operating_point=op_meaning(pred.operating_point, pred.threshold),
                          operating_point_details=op_rule(model.card, pred.operating_point),
                          model_version=pred.model_version, card_line=card_summary(model.card),
                          method=METHOD_LABELS.get(exp.method, exp.method), warnings=pred.warnings,
                          metadata=metadata_rows(film.image.metadata), outside_validated_use=outside)

    # one above the other: side by side in the narrow result column, their labels were cut to "Overla…"
    st.download_button("PDF report", report, file_name=f"{stem}_report.pdf", mime="application/pdf",
                       on_click="ignore", key=f"dl_pdf_{key}", icon=":material/picture_as_pdf:", width="stretch")
    st.download_button("Overlay PNG", lambda: png_bytes(full_overlay()), file_name=f"{stem}_{exp.method}.png",
                       mime="image/png", on_click="ignore", key=f"dl_png_{key}", icon=":material/image:",
                       width="stretch")


# The browser's markdown turns URLs, www. names and e-mail addresses in plain text into links after parsing
# (GFM autolink literals), backslash escapes or not: an invisible word joiner breaks each such pattern.
_AUTOLINK = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)")
WORD_JOINER = "\u2060"


def _escape(text: str) -> str:
    """File names, header strings and decoder messages shown as text, never as markdown: every markdown
    character backslash-escaped, and no URL, www. name or e-mail address left for the browser to link."""
    text = _AUTOLINK.sub(WORD_JOINER, str(text))
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$:" else c for c in text)
