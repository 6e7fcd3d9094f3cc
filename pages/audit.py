"""Audit log (admins): who did what with which model, without patient data; filter and export as CSV."""

import streamlit as st

from appkit.audit_ui import chain_ui, export_ui, filters_ui, table_ui
from appkit.auth_ui import require_admin_page
from appkit.frame import require_app_frame

require_app_frame()
require_admin_page("audit")
st.title("Audit log")
st.caption("Sign-ins, predictions, triage, training jobs, promotions and rollbacks, from this app and the CLI.")
chain_ui()
filters = filters_ui()
rows = table_ui(filters)
export_ui(rows, filters)
