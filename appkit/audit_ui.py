"""Audit log page widgets: chain check, filters, the table and the CSV export (admins only)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import pandas as pd
import streamlit as st

from pneumo_core import audit
from pneumo_core.auth import VIEWER

from .auth_ui import admin_credential, admin_refusal_now, current, session_id

SHOWN = ("time", "role", "actor", "action", "result", "model_version", "operating_point", "threshold",
         "probability", "input_sha256", "detail", "session", "id")
MAX_ROWS = 5000


def chain_ui() -> None:
    try:
        n, broken = audit.verify_chain()
    except audit.AuditError as exc:
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
    except audit.AuditError:
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
    except audit.AuditError as exc:
        st.error(str(exc))
        return []
    if not rows:
        st.info("No events match.")
        return rows
    df = pd.DataFrame(rows[:MAX_ROWS], columns=list(audit.COLUMNS))[list(SHOWN)]
    st.dataframe(df, hide_index=True, width="stretch",
                 column_config={"probability": st.column_config.NumberColumn(format="%.3f"),
                                "threshold": st.column_config.NumberColumn(format="%.3f")})
    more = f" (the newest {MAX_ROWS:,} shown; the export has all)" if len(rows) > MAX_ROWS else ""
    st.caption(f"{len(rows):,} events{more}, newest first. No patient names, IDs, dates or file names are "
               f"recorded: a film is identified only by the sha256 of its bytes.")
    return rows


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
