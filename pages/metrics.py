import streamlit as st

st.title("Metrics")
st.info("This page is being built.")
