import streamlit as st

st.title("Triage")
st.info("This page is being built.")
