"""Predict: one or several films -> probability, label, Grad-CAM, warnings, metadata, PNG/PDF downloads."""

import streamlit as st

from appkit.films_ui import film_ui, films_for, uploads_ui
from appkit.frame import require_app_frame
from appkit.landing import landing_ui
from appkit.model import operating_point, require_model

require_app_frame()
landing_ui(compact=bool(st.session_state.get("predict_upload")))     # name, purpose, users, limits; then the way in
model = require_model()
op = operating_point(model)

uploads = uploads_ui("Chest films", key="predict_upload")
if not uploads:
    st.caption("One or several frontal chest radiographs: PNG, JPEG or DICOM (a file extension is not needed).")
    st.stop()

for upload, film in zip(uploads, films_for("predict", model, uploads)):
    film_ui(film, model, op, key=upload.sha[:16])
