"""Predict: one or several films -> probability, label, Grad-CAM, warnings, metadata, PNG/PDF downloads."""

import streamlit as st

from appkit.films_ui import film_order_ui, film_ui, films_for, uploads_ui
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

films = dict(zip((u.sha for u in uploads), films_for("predict", model, uploads)))
for upload in film_order_ui(uploads):          # the film in focus first (a new upload takes it), then newest first
    film_ui(films[upload.sha], model, op, key=upload.sha[:16])
