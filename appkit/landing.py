"""The landing view (the Predict page before any upload): what the product is, what it does, for whom, its
limits, and the way in (the upload box right below), in one screen."""

from __future__ import annotations

import streamlit as st

from .text import CAUTION, INTENDED_USE, PRODUCT

FACTS = (
    (":material/radiology: What it does",
     "Reads a chest radiograph and gives a **calibrated probability of pneumonia**, a label at the operating "
     "point you choose, and a **Grad-CAM map** of where the model found its evidence. Many films at once: "
     "**Triage** lists them highest probability first."),
    (":material/child_care: For whom",
     "Radiologists and clinicians reading **frontal (PA/AP) chest films of children**. PNG, JPEG and DICOM; "
     "films stay in memory for your session only."),
    (":material/gpp_maybe: Its limits",
     f"**{CAUTION}** Not validated for adults, lateral films or other body parts: such films are refused or "
     "flagged as outside validated use. The reporting clinician makes the interpretation."),
)


def landing_ui(compact: bool) -> None:
    """The product's name and purpose; with films uploaded (``compact``), one line, so results stay in view."""
    st.title(PRODUCT, anchor=False)
    if compact:
        st.caption(f"{INTENDED_USE}")
        return
    st.markdown("Upload a chest film below to see the model's reading of it in a few seconds.")
    for col, (heading, body) in zip(st.columns(3, gap="medium"), FACTS):
        with col.container(border=True):
            st.markdown(f"**{heading}**")
            st.markdown(body)
