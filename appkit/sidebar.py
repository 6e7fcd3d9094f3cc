"""The sidebar every page shares: active model, one-line card summary, operating point."""

from __future__ import annotations

import streamlit as st

from .model import OP_KEY, active_model_or_error
from .text import CAUTION, card_summary, fmt_pct, op_details, op_label


def sidebar_ui() -> str | None:
    """Render the sidebar; return the chosen operating point (None when no model is loaded)."""
    model, error = active_model_or_error()
    with st.sidebar:
        st.markdown("#### Model")
        if model is None:
            st.error(f"No model loaded. {error}")
            st.caption(CAUTION)
            return None
        st.markdown(f"Version `{model.version}`")
        st.caption(card_summary(model.card))
        points = model.predictor.operating_points()
        if st.session_state.get(OP_KEY) not in points:       # first run, or a model with other points
            st.session_state[OP_KEY] = model.predictor.default_operating_point()
        op = st.radio("Operating point", list(points), key=OP_KEY,
                      format_func=lambda n: f"{op_label(n)} · threshold {fmt_pct(points[n])}",
                      help="The probability at or above which a film is labelled PNEUMONIA. Applies to every "
                           "page.\n\n" + "\n\n".join(op_details(model.card, n, t) for n, t in points.items()))
        st.divider()
        st.caption(f"**{CAUTION}** Calibrated probabilities from a model trained on pediatric frontal films.")
    return op
