"""Triage: many films at once -> a worklist sorted by probability, flags, CSV, and a detail view."""

import streamlit as st

from appkit.films_ui import uploads_ui
from appkit.frame import require_app_frame
from appkit.model import operating_point, require_model
from appkit.triage_ui import csv_ui, detail_ui, summary_ui, triage_results, worklist_ui
from appkit.viewer import WORKLIST_CODE

require_app_frame()
st.title("Triage")
model = require_model()
op = operating_point(model)

uploads = uploads_ui("Films to triage", key="triage_upload", results=WORKLIST_CODE)
if not uploads:
    st.info("Upload a batch of chest films. They are scored at the operating point chosen in the sidebar and "
            "listed highest probability first; films at or above the high-sensitivity threshold are flagged. "
            "Films outside validated use (e.g. adult films) are listed after them, tinted amber.")
    st.stop()

rows = triage_results(model, uploads, op)

summary_ui(rows, model, op)
csv_ui(rows)
st.caption("Select a row to open its film, Grad-CAM map and report; Previous and Next move along the worklist.")
selected = worklist_ui(rows, model, op)
detail_ui(rows, uploads, model, op, selected)
