"""Metrics: the active model's saved evaluation (ROC, PR, confusion, calibration, sweep, training, card)."""

import streamlit as st

from appkit import charts
from appkit.frame import require_app_frame
from appkit.metrics_ui import (
    calibration_note_ui,
    card_ui,
    explain_ui,
    headline_ui,
    provenance_ui,
    splits_ui,
    sweep_ui,
    threshold_note_ui,
)
from appkit.model import evaluation, operating_point, require_model

require_app_frame()
st.title("Metrics")
model = require_model()
op = operating_point(model)
evals = evaluation(model)

if not evals:
    st.warning("This model has no saved evaluation artifacts (evaluation/*.json in its folder), so there is "
               "nothing to show. Calibrate it: `python -m pneumo_core calibrate --model DIR --data DIR`.")
    card_ui(model.card)
    st.stop()

splits = splits_ui(evals)
chosen = {s: evals[s] for s in splits}
provenance_ui(evals, splits, model.card)
headline_ui(evals, splits, op)
threshold_note_ui(model.card, evals)

roc_tab, cm_tab, cal_tab, sweep_tab, cam_tab, train_tab, card_tab = st.tabs(
    ["ROC and PR", "Confusion matrix", "Calibration", "Threshold sweep", "Grad-CAM", "Training", "Model card"])
with roc_tab:
    left, right = st.columns(2)
    left.plotly_chart(charts.roc_figure(chosen, op), width="stretch")
    right.plotly_chart(charts.pr_figure(chosen, op), width="stretch")
with cm_tab:
    for col, split in zip(st.columns(len(splits)), splits):
        rep = charts.report_at(evals[split], op)
        col.plotly_chart(charts.confusion_figure(rep, f"{split}/ at {op} (threshold {rep.get('threshold', 0):.3f})"),
                         width="stretch")
with cal_tab:
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.calibration_figure(chosen, op), width="stretch")
    right.markdown("Points on the diagonal mean that, among films given probability *p*, a fraction *p* had "
                   "pneumonia. Probabilities are after temperature scaling; bins with no film are left out. "
                   "ECE: mean gap between predicted and observed, weighted by films per bin.")
    calibration_note_ui(model.card, evals, op)
with sweep_tab:
    sweep_ui(evals, splits, model.predictor.operating_points())
with cam_tab:
    explain_ui(model.card)
with train_tab:
    history = model.card.get("history") or []
    if history:
        st.plotly_chart(charts.history_figure(history), width="stretch")
        selected = (model.card.get("training") or {}).get("selected") or {}
        which = (f"candidate {selected['candidate']}: {selected.get('description', '')}" if "candidate" in selected
                 else f"epoch {selected.get('epoch', '?')} ({selected.get('weights', '?')} weights)")
        st.caption(f"From the model card's training history. Shipped: {which}.")
    else:
        st.info("The model card has no training history.")
with card_tab:
    card_ui(model.card)
