"""Triage page widgets: cached batch run with a progress bar, the worklist table, its CSV, and the detail dialog."""

from __future__ import annotations

from typing import Sequence

import streamlit as st

from pneumo_core.model.predict import outside_detail

from .analysis import Upload
from .auth_ui import audit_events
from .films_ui import NEXT_KEY, PREV_KEY, film_ui, films_for
from .model import ActiveModel
from .text import fmt_pct, op_label
from .triage import (
    FLAGGED,
    OUTSIDE,
    TriageRow,
    flag_threshold,
    triage,
    worklist_csv,
    worklist_frame,
)

FLAG_TINT = "background-color: #fbe9e7"       # flagged, validated film (pink)
OUTSIDE_TINT = "background-color: #fff3cd"    # analysed outside validated use, e.g. an adult film (amber)
TINTED_INK = "color: #1b1f24"                 # dark text on a tinted row: readable in the dark theme too
ROW_PX, HEADER_PX = 52, 40
ALL_ROWS = 100                 # the worklist shows this many rows without an inner scroll (at least 50)
DETAIL_KEY = "_triage_detail"  # session: worklist index shown in the detail dialog
OPENED_KEY = "_triage_opened"  # session: the selection the dialog was last opened for (closing it keeps it shut)
OPEN_KEY = "_triage_open"      # session: the dialog is open (until dismissed)


def triage_results(model: ActiveModel, uploads: Sequence[Upload], op: str) -> list[TriageRow]:
    """Run triage once per (model, operating point, set of files) in this session, with a progress bar."""
    key = (model.key, op, tuple(u.sha for u in uploads))
    cached = st.session_state.get("_triage")
    if cached and cached[0] == key:
        return cached[1]
    bar = st.progress(0.0, text=f"Analysing {len(uploads)} films…")
    rows = triage(model.predictor, uploads, op,
                  progress=lambda i, n: bar.progress(i / n, text=f"Analysed {i} of {n} films"))
    bar.empty()
    audit_events("triage", [{"input_sha256": r.sha, "result": r.record.label or r.record.status,
                             "probability": r.record.probability, "operating_point": op,
                             "threshold": r.record.threshold, "model_version": r.record.model_version or model.version,
                             "detail": outside_detail(r.record.film_type) if r.outside else None}
                            for r in rows])
    if not any(u.retry for u in uploads):      # films refused for now (rate limit) are analysed on a later run
        st.session_state["_triage"] = (key, rows)
    return rows


def summary_ui(rows: Sequence[TriageRow], model: ActiveModel, op: str) -> None:
    """Counts; films outside validated use are counted apart (they are never flagged)."""
    flag_name, flag_thr = flag_threshold(model.predictor, op)
    counts = {s: sum(r.status == s for r in rows) for s in ("ok", "rejected", "error", "not analysed")}
    cols = st.columns(6 if counts["not analysed"] else 5)
    cols[0].metric("Analysed", counts["ok"])
    cols[1].metric("Flagged", sum(r.flag for r in rows),
                   help=f"Films within validated use with a probability at or above the {op_label(flag_name)} "
                        f"threshold ({fmt_pct(flag_thr)}).")
    cols[2].metric("Outside validated use", sum(r.outside for r in rows),
                   help="Analysed, but not a film of the population the model was validated on (e.g. an adult "
                        "film). Listed after the validated films, tinted amber; never flagged.")
    cols[3].metric("Rejected", counts["rejected"], help="Readable, but not a chest film the model can assess.")
    cols[4].metric("Unreadable", counts["error"])
    if counts["not analysed"]:
        cols[5].metric("Not analysed", counts["not analysed"],
                       help="Held back by this server's limits (size caps, films per batch, or the rate limit): "
                            "the note says which, and when to try again.")


def row_tint(row) -> list[str]:
    """A worklist row's style: amber for a film analysed outside validated use, else pink when flagged."""
    if row["outside"] == OUTSIDE and row["status"] == "ok":
        tint = OUTSIDE_TINT
    else:
        tint = FLAG_TINT if row["flag"] == FLAGGED else ""
    return [tint] * len(row)


def row_ink(row) -> list[str]:
    """Dark text on a tinted row (the dark theme's light text would be unreadable on pink or amber)."""
    return [TINTED_INK if any(row_tint(row)) else ""] * len(row)


def worklist_height(n: int) -> int:
    """Pixels for a table showing all ``n`` rows (up to ``ALL_ROWS``) with no inner scroll."""
    return HEADER_PX + ROW_PX * min(max(n, 1), ALL_ROWS) + 2


def worklist_ui(rows: Sequence[TriageRow], model: ActiveModel, op: str) -> int | None:
    """The worklist (validated films highest probability first, flagged rows tinted pink, films outside
    validated use after them, tinted amber), every row in view up to ``ALL_ROWS``; the selected row's index."""
    flag_name, flag_thr = flag_threshold(model.predictor, op)
    df = worklist_frame(rows)
    styled = df.style.apply(row_tint, axis=1).apply(row_ink, axis=1)
    event = st.dataframe(
        styled, key="worklist", on_select="rerun", selection_mode="single-row", hide_index=True, row_height=ROW_PX,
        height=worklist_height(len(rows)),
        column_config={
            "thumbnail": st.column_config.ImageColumn("Film", width="small"),
            "flag": st.column_config.TextColumn(
                "Flag", width="small", help=f"At or above the {op_label(flag_name)} threshold ({fmt_pct(flag_thr)})"),
            "outside": st.column_config.TextColumn(
                "Outside validated use", width="small",
                help="Not a film of the population the model was validated on: analysed with a warning (e.g. an "
                     "adult film), or rejected"),
            "file": st.column_config.TextColumn("File", width="medium"),
            "probability": st.column_config.ProgressColumn("P(pneumonia)", format="%.1f%%", min_value=0.0,
                                                           max_value=100.0, width="medium"),
            "label": st.column_config.TextColumn("Label", help=f"At the {op_label(op)} operating point"),
            "film_type": st.column_config.TextColumn("Film type", width="small",
                                                     help="The model's film-type check, when it has one"),
            "status": st.column_config.TextColumn("Status", width="small"),
            "notes": st.column_config.TextColumn("Warnings / errors", width="large"),
        })
    selected = event.selection.rows if event else []
    return selected[0] if selected else None


def csv_ui(rows: Sequence[TriageRow]) -> None:
    """The worklist as CSV; file names only when the user ticks the box (they can hold patient names)."""
    left, right = st.columns([1, 3], vertical_alignment="center")
    names = right.checkbox("Include file names", key="csv_file_names",
                           help="File names can hold patient names: leave this off unless you need them. Without "
                                "them, each film is named by its sha256, as in the audit log.")
    left.download_button("Worklist CSV", worklist_csv(rows, file_names=names), file_name="worklist.csv",
                         mime="text/csv", on_click="ignore", icon=":material/download:",
                         help="sha256, status, probability, label, flag, warnings, model version, operating point, "
                              "threshold, film type, outside validated use, export time (UTC). No images, no "
                              "patient data" + (", but the file names you asked for." if names else "."))


def detail_ui(rows: Sequence[TriageRow], uploads: Sequence[Upload], model: ActiveModel, op: str,
              selected: int | None) -> None:
    """The detail dialog (where the user is looking, not far below the table): opened when a row is newly
    selected, open until dismissed; a dismissed dialog stays shut until another row is chosen."""
    if selected != st.session_state.get(OPENED_KEY):
        st.session_state[OPENED_KEY] = selected
        st.session_state[OPEN_KEY] = selected is not None
        if selected is not None:
            st.session_state[DETAIL_KEY] = selected
    if st.session_state.get(OPEN_KEY):
        _detail_dialog(rows, uploads, model, op)


def _close() -> None:
    st.session_state[OPEN_KEY] = False


def _step(by: int, n: int) -> None:
    st.session_state[DETAIL_KEY] = min(max(st.session_state.get(DETAIL_KEY, 0) + by, 0), n - 1)


@st.dialog("Film detail", width="large", on_dismiss=_close)
def _detail_dialog(rows: Sequence[TriageRow], uploads: Sequence[Upload], model: ActiveModel, op: str) -> None:
    """One worklist film (its film, map, result and report), with previous/next in worklist order."""
    i = min(st.session_state.get(DETAIL_KEY, 0), len(rows) - 1)
    prev, where, nxt = st.columns([1, 2, 1], vertical_alignment="center")
    prev.button("Previous", key="detail_prev", icon=":material/arrow_back:", disabled=i == 0,
                on_click=_step, args=(-1, len(rows)), width="stretch", shortcut=PREV_KEY)
    where.markdown(f"<div style='text-align:center'>Film {i + 1} of {len(rows)} in the worklist</div>",
                   unsafe_allow_html=True)
    nxt.button("Next", key="detail_next", icon=":material/arrow_forward:", disabled=i == len(rows) - 1,
               on_click=_step, args=(1, len(rows)), width="stretch", shortcut=NEXT_KEY)
    upload = next(u for u in uploads if u.sha == rows[i].sha)
    film_ui(films_for("triage", model, [upload])[0], model, op, key=upload.sha[:16])
