"""Shared Streamlit helpers for the pages: model loading, sidebar, uploads, film results, triage,
charts, the PDF report and retraining.

Modules that import ``streamlit`` end in ``_ui`` or are ``model``/``sidebar``; the rest
(``analysis``, ``triage``, ``charts``, ``report``, ``text``, ``images``, ``retrain``) are plain Python
over ``pneumo_core`` so tests and benchmarks can use them without a Streamlit runtime.
"""
