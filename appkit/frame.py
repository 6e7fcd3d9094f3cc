"""Pages run inside app.py's frame (set_page_config, navigation, sidebar).

Streamlit treats a ``pages/`` folder next to the entrypoint as a legacy multipage app until some
session has called ``st.navigation``: on a freshly started server, a first request for a page URL
(a bookmark of /metrics, say) runs ``pages/metrics.py`` alone, with no sidebar and the legacy menu.
A page detects that (app.py did not mark this run), leaves legacy mode through the public API
(``st.navigation``) and reruns, which goes through app.py and lands on the same page.
"""

from __future__ import annotations

import streamlit as st

FRAME_KEY = "_in_app_frame"
RETRIED_KEY = "_app_frame_retried"


def app_pages(admin: bool) -> list:
    """The app's pages (paths relative to app.py); app.py passes them to st.navigation. Admin pages are in the
    menu for admins only; for anyone else they are registered but hidden, so that a bookmark or a typed URL
    reaches the page, which refuses them itself with a "for administrators" page and an audit event (see
    ``auth_ui.require_admin_page``) instead of Streamlit's "Page not found"."""
    shown = "visible" if admin else "hidden"
    return [
        st.Page("pages/predict.py", title="Predict", icon=":material/radiology:", default=True),
        st.Page("pages/triage.py", title="Triage", icon=":material/format_list_numbered:"),
        st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:"),
        st.Page("pages/retrain.py", title="Retrain", icon=":material/model_training:", visibility=shown),
        st.Page("pages/audit.py", title="Audit log", icon=":material/policy:", visibility=shown),
    ]


# The upload box lists its files as chips, four to a row here, in a scrolling area that Streamlit sizes to
# 2.25 rows: the third row was cut through its middle. Exactly three rows (chips 2.53125rem high, rows 0.5rem
# apart) and scrolling that stops on a row, so no row is ever shown in part. Only on screens wide enough for
# Streamlit's usual layout: in a narrow one it lets the chips list grow and scrolls an inner list instead.
CHIP_ROWS_CSS = """
@media (min-width: 40rem) {
  [data-testid="stFileChips"] { max-height: calc(3 * 2.53125rem + 2 * 0.5rem) !important;
                                scroll-snap-type: y mandatory; }
  [data-testid="stFileChip"] { scroll-snap-align: start; }
}"""
# An HTML element that holds only a style or a script (these rules, ``viewer.preload_result_code``) shows
# nothing, but Streamlit still gave its container a gap of the page's column (1rem) above the next element.
BARE_HTML_CSS = """
[data-testid="stElementContainer"]:has(> [data-testid="stHtml"] > :is(style, script):only-child) { display: none; }"""


def app_style() -> None:
    """The app's few style rules (app.py, on every page)."""
    st.html(f"<style>{CHIP_ROWS_CSS}{BARE_HTML_CSS}\n</style>")


def mark_app_frame() -> None:
    """Called by app.py just before it runs the page."""
    st.session_state[FRAME_KEY] = True


def require_app_frame() -> None:
    """First call of every page. Reruns once through app.py when the page was run on its own."""
    if st.session_state.pop(FRAME_KEY, False):
        st.session_state.pop(RETRIED_KEY, None)
        return
    if st.session_state.get(RETRIED_KEY):      # still alone after a rerun (e.g. a page tested on its own)
        return
    st.session_state[RETRIED_KEY] = True
    st.navigation(app_pages(admin=True), position="hidden")     # only to reach app.py; it applies the role
    st.rerun()
