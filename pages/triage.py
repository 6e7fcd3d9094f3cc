"""Triage: many films at once -> a worklist sorted by probability, flags, CSV, and a detail view."""

import streamlit as st

from appkit.films_ui import film_ui, films_for, uploads_ui
from appkit.frame import require_app_frame
from appkit.model import operating_point, require_model
from appkit.triage_ui import csv_ui, summary_ui, triage_results, worklist_ui

require_app_frame()
st.title("Triage")
model = require_model()
op = operating_point(model)

uploads = uploads_ui("Films to triage", key="triage_upload")
if not uploads:
    st.info("Upload a batch of chest films. They are scored at the operating point chosen in the sidebar and "
            "listed highest probability first; films at or above the high-sensitivity threshold are flagged. "
            "Films outside validated use (e.g. adult films) are listed after them, tinted amber.")
    st.stop()

rows = triage_results(model, uploads, op)

summary_ui(rows, model, op)
selected = worklist_ui(rows, model, op)
csv_ui(rows)

st.subheader("Detail")
if selected is None:
    st.caption("Select a row in the worklist to see the film, its Grad-CAM map and its report.")
    st.stop()
upload = next(u for u in uploads if u.sha == selected.sha)
film_ui(films_for("triage", model, [upload])[0], model, op, key=upload.sha[:16])
