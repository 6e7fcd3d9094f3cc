"""Streamlit entry point: page config, navigation over pages/, and the shared sidebar."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Pneumonia decision support", page_icon="🫁", layout="wide")

PAGES = [
    st.Page("pages/predict.py", title="Predict", icon="🩻", default=True),
    st.Page("pages/triage.py", title="Triage", icon="📋"),
    st.Page("pages/metrics.py", title="Metrics", icon="📈"),
]

nav = st.navigation(PAGES)
with st.sidebar:
    st.caption("Decision support, not a diagnosis.")
nav.run()
