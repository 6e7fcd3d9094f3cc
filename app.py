"""Streamlit entry point: page config, navigation over pages/, and the shared sidebar."""

from __future__ import annotations

import streamlit as st

from appkit.frame import app_pages, mark_app_frame
from appkit.sidebar import sidebar_ui

st.set_page_config(page_title="Pneumonia decision support", page_icon="🫁", layout="wide")

nav = st.navigation(app_pages())   # Predict, Triage, Metrics, Retrain (pages/*.py)
sidebar_ui()                       # before the page runs, so the operating point is set for it
mark_app_frame()
nav.run()
