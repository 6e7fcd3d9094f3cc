"""Audit log page widgets: chain check, filters, the table and the CSV export (admins only)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import pandas as pd
import streamlit as st

from pneumo_core.errors import AuditError
from pneumo_core.ops import audit
from pneumo_core.ops.auth import VIEWER

from .auth_ui import admin_credential, admin_refusal_now, current, session_id

SHOWN = {"time": "Time (UTC)", "role": "Role", "actor": "Account", "action": "Action", "result": "Result",
         "model_version": "Model version", "operating_point": "Operating point", "threshold": "Threshold",
         "probability": "Probability", "input_sha256": "Input sha256", "detail": "Detail", "session": "Session",
         "id": "Event"}                          # the log's columns shown, with their headers
NUMBERS = ("threshold", "probability", "id")
TABLE_KEY = "audit_table"
MAX_ROWS = 5000


def chain_ui() -> None:
    try:
        n, broken = audit.verify_chain()
    except AuditError as exc:
        st.error(str(exc))
        return
    if broken is None:
        st.caption(f"Hash chain intact (keyed) over all {n:,} events: none was edited, inserted or deleted "
                   f"(removing the newest events is seen only against a head hash kept elsewhere: "
                   f"`python -m pneumo_core audit verify`).")
    else:
        st.error(f"**The hash chain breaks at event {broken}** (after {n:,} intact events): that event or the one "
                 f"before it was edited, inserted or deleted outside the app, or the log was written with another "
                 f"key.", icon=":material/gpp_bad:")


def filters_ui() -> dict[str, Any]:
    """Actions and a date range (UTC days, both ends included)."""
    left, right = st.columns([2, 1])
    try:
        known = audit.actions()
    except AuditError:
        known = []
    actions = left.multiselect("Actions", known, key="audit_actions", placeholder="all actions")
    today = datetime.now(timezone.utc).date()
    span = right.date_input("Days (UTC)", (today - timedelta(days=30), today), key="audit_days", max_value=today)
    start, end = (span if isinstance(span, tuple) and len(span) == 2 else (span[0] if span else today, today))
    return {"actions": actions or None, "since": _iso(start), "until": _iso(end + timedelta(days=1))}


def _iso(day: date) -> str:
    return datetime.combine(day, time.min, tzinfo=timezone.utc).isoformat(timespec="milliseconds")


def table_ui(filters: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        rows = audit.events(**filters)
    except AuditError as exc:
        st.error(str(exc))
        return []
    if not rows:
        st.info("No events match.")
        return rows
    df = table_frame(rows[:MAX_ROWS])
    # The table offers no CSV of its own (client.disableDataExport in .streamlit/config.toml): the export
    # below is the only one, and it is audited.
    event = st.dataframe(df, hide_index=True, width="stretch", key=TABLE_KEY, on_select="rerun",
                         selection_mode="single-row", placeholder="",
                         column_config={SHOWN["probability"]: st.column_config.NumberColumn(format="%.3f"),
                                        SHOWN["threshold"]: st.column_config.NumberColumn(format="%.3f"),
                                        SHOWN["id"]: st.column_config.NumberColumn(format="%d")})
    more = f" (the newest {MAX_ROWS:,} shown; the export has all)" if len(rows) > MAX_ROWS else ""
    st.caption(f"{len(rows):,} events{more}, newest first. Select a row for its full sha256 and detail. No "
               f"patient names, IDs, dates or file names are recorded: a film is identified only by the sha256 "
               f"of its bytes.")
    picked = event.selection.rows if event else []
    if picked and picked[0] < len(df):
        _event_detail_ui(rows[picked[0]])
    return rows


def table_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The shown columns under readable headers; times to the second; empty text cells blank, not "None"."""
    df = pd.DataFrame(rows, columns=list(audit.COLUMNS))[list(SHOWN)]
    df["time"] = df["time"].map(_to_second)
    text = [c for c in SHOWN if c not in NUMBERS]
    df[text] = df[text].astype(object).where(df[text].notna(), "")
    return df.rename(columns=SHOWN)


def _to_second(stamp: Any) -> str:
    """'2026-12-02T13:45:01.123+00:00' -> '2026-12-02 13:45:01' (the log's times are UTC)."""
    try:
        return datetime.fromisoformat(str(stamp)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(stamp or "")


def _event_detail_ui(row: dict[str, Any]) -> None:
    """The selected event's long fields in full (the table cuts them to the column width)."""
    st.markdown(f"##### Event {row['id']}: {row['action']}, {row['result']}, {_to_second(row['time'])} UTC")
    st.caption("Input sha256")
    st.code(row.get("input_sha256") or "(none)", language=None)
    st.caption("Detail")
    st.code(row.get("detail") or "(none)", language=None, wrap_lines=True)


def export_ui(rows: list[dict[str, Any]], filters: dict[str, Any]) -> None:
    role, actor = current()       # the page is admin-only; the callable below runs outside the script
    sid = session_id()
    credential = admin_credential()

    def data() -> bytes:        # runs when the button is clicked, on the server: the export itself is audited
        if why := admin_refusal_now(credential):        # the role is checked again now, not at page render
            audit.record("export_audit", role=VIEWER, actor=VIEWER, session=sid, result="denied", detail=why)
            raise PermissionError(f"The audit export needs the admin role ({why}). Sign in as admin again.")
        audit.record("export_audit", role=role, actor=actor, session=sid, result="succeeded",
                     detail=f"{len(rows)} events")
        return audit.to_csv(rows)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    st.download_button("Export CSV", data, file_name=f"audit-{stamp}.csv", mime="text/csv", on_click="ignore",
                       disabled=not rows, key="audit_export", icon=":material/download:",
                       help="Every event that matches the filters, with the hash-chain columns.")
