"""Streamlit entry point: page config, sign-in, navigation over pages/ (by role), and the shared sidebar."""

from __future__ import annotations

import streamlit as st

from appkit.auth_ui import ADMIN, account_sidebar_ui, signin_gate
from appkit.frame import app_pages, app_style, mark_app_frame
from appkit.sidebar import sidebar_ui

st.set_page_config(page_title="Pneumonia decision support", page_icon=":material/pulmonology:", layout="wide")
app_style()

role = signin_gate()                                  # stops here until an OIDC sign-in, when OIDC is configured
nav = st.navigation(app_pages(admin=role == ADMIN))   # menu: Predict, Triage, Metrics; admins: + Retrain, Audit
                                                      # (a viewer's direct URL reaches the admin page's refusal)
sidebar_ui()                                          # before the page runs, so the operating point is set for it
account_sidebar_ui()
mark_app_frame()
nav.run()
