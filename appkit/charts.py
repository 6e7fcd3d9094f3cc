"""Plotly figures for the metrics page, built from saved evaluation artifacts (no model, no Streamlit)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .text import fmt_ci, op_label

COLOURS = {"test": "#1f4e79", "external": "#c0392b", "val": "#6c7a89", "train": "#8e9aa6"}
METRIC_COLOURS = {"sensitivity": "#c0392b", "specificity": "#1f4e79", "ppv": "#d68910", "npv": "#239b56"}


def _layout(fig: go.Figure, title: str, x: str, y: str, *, square: bool = False, height: int = 420) -> go.Figure:
    fig.update_layout(template="plotly_white", title=dict(text=title, x=0, font=dict(size=15)), height=height,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", yanchor="top", y=-0.18),
                      hovermode="closest")
    fig.update_xaxes(title=x, range=[0, 1] if square else None, gridcolor="#e5e8ec")
    fig.update_yaxes(title=y, range=[0, 1.02] if square else None, gridcolor="#e5e8ec")
    return fig


def colour(split: str) -> str:
    return COLOURS.get(split, "#34495e")


def report_at(artifact: Mapping[str, Any], op: str) -> Mapping[str, Any]:
    reports = artifact.get("operating_points") or {}
    return reports.get(op) or next(iter(reports.values()), {})


def ppv_npv(sensitivity, specificity, prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    """PPV = sens·π / (sens·π + (1−spec)(1−π)); NPV = spec(1−π) / (spec(1−π) + (1−sens)π). None -> NaN."""
    sens = np.asarray(sensitivity, dtype=float)
    spec = np.asarray(specificity, dtype=float)
    pi = float(prevalence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ppv = sens * pi / (sens * pi + (1 - spec) * (1 - pi))
        npv = spec * (1 - pi) / (spec * (1 - pi) + (1 - sens) * pi)
    return ppv, npv


def roc_figure(evals: Mapping[str, Mapping[str, Any]], op: str) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#b0b7c0", dash="dot"), name="chance",
                    hoverinfo="skip")
    for split, art in evals.items():
        roc, rep = (art.get("curves") or {}).get("roc"), report_at(art, op)
        if not roc:
            continue
        fig.add_scatter(x=roc["fpr"], y=roc["tpr"], customdata=roc["threshold"], mode="lines",
                        line=dict(color=colour(split), width=2.5),
                        name=f"{split}/ (n={art.get('n')}) AUC {fmt_ci(rep.get('auc'), (rep.get('ci95') or {}).get('auc'))}",
                        hovertemplate="1 − spec %{x:.3f}<br>sens %{y:.3f}<br>threshold %{customdata:.3f}<extra></extra>")
        if rep.get("sensitivity") is not None and rep.get("specificity") is not None:
            fig.add_scatter(x=[1 - rep["specificity"]], y=[rep["sensitivity"]], mode="markers", showlegend=False,
                            marker=dict(color=colour(split), size=12, symbol="circle-open", line=dict(width=3)),
                            hovertemplate=f"{split}/ at {op_label(op)} (threshold {rep.get('threshold', 0):.3f})"
                                          "<br>sens %{y:.3f}<br>1 − spec %{x:.3f}<extra></extra>")
    return _layout(fig, "ROC curve (circle: chosen operating point)", "1 − specificity (false-positive rate)",
                   "Sensitivity", square=True)


def pr_figure(evals: Mapping[str, Mapping[str, Any]], op: str) -> go.Figure:
    fig = go.Figure()
    for split, art in evals.items():
        pr, rep = (art.get("curves") or {}).get("pr"), report_at(art, op)
        if not pr:
            continue
        fig.add_scatter(x=pr["recall"], y=pr["precision"], mode="lines", line=dict(color=colour(split), width=2.5),
                        name=f"{split}/ PR-AUC {fmt_ci(rep.get('pr_auc'), (rep.get('ci95') or {}).get('pr_auc'))}",
                        hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<extra></extra>")
        prevalence = (art.get("curves") or {}).get("prevalence")
        if prevalence is not None:
            fig.add_scatter(x=[0, 1], y=[prevalence, prevalence], mode="lines", showlegend=False, hoverinfo="skip",
                            line=dict(color=colour(split), dash="dot", width=1))
        if rep.get("sensitivity") is not None and rep.get("precision") is not None:
            fig.add_scatter(x=[rep["sensitivity"]], y=[rep["precision"]], mode="markers", showlegend=False,
                            marker=dict(color=colour(split), size=12, symbol="circle-open", line=dict(width=3)),
                            hovertemplate=f"{split}/ at {op_label(op)}<br>recall %{{x:.3f}}<br>precision %{{y:.3f}}"
                                          "<extra></extra>")
    return _layout(fig, "Precision–recall (dotted: prevalence in that split)", "Recall (sensitivity)",
                   "Precision (PPV)", square=True)


def confusion_figure(report: Mapping[str, Any], title: str) -> go.Figure:
    c = report.get("confusion") or {}
    tp, fn, fp, tn = (int(c.get(k, 0)) for k in ("tp", "fn", "fp", "tn"))
    z = [[tp, fn], [fp, tn]]
    rows = [tp + fn or 1, fp + tn or 1]
    text = [[f"{v}<br>{v / rows[i]:.0%} of row" for v in z[i]] for i in range(2)]
    fig = go.Figure(go.Heatmap(z=[[v / rows[i] for v in z[i]] for i in range(2)], text=text,
                               texttemplate="%{text}", textfont=dict(size=15), colorscale="Blues", zmin=0, zmax=1,
                               showscale=False, x=["PNEUMONIA", "NORMAL"], y=["PNEUMONIA", "NORMAL"],
                               hovertemplate="actual %{y}<br>predicted %{x}<br>%{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, "Predicted", "Actual", height=340)


def calibration_figure(evals: Mapping[str, Mapping[str, Any]], op: str) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#b0b7c0", dash="dot"), name="perfect",
                    hoverinfo="skip")
    for split, art in evals.items():
        rel, rep = (art.get("curves") or {}).get("reliability"), report_at(art, op)
        if not rel:
            continue
        keep = [i for i, n in enumerate(rel["count"]) if n and rel["mean_predicted"][i] is not None]
        counts = np.array([rel["count"][i] for i in keep], dtype=float)
        size = 7 + 18 * np.sqrt(counts / counts.max()) if len(counts) else []
        ece = rep.get("ece")
        fig.add_scatter(x=[rel["mean_predicted"][i] for i in keep], y=[rel["observed"][i] for i in keep],
                        customdata=counts, mode="lines+markers", line=dict(color=colour(split), width=2),
                        marker=dict(size=size, color=colour(split)),
                        name=f"{split}/" + (f" ECE {ece:.3f}" if ece is not None else ""),
                        hovertemplate="predicted %{x:.2f}<br>observed %{y:.2f}<br>%{customdata:.0f} films<extra></extra>")
    return _layout(fig, "Calibration (marker size: films per bin)", "Mean predicted probability",
                   "Observed fraction with pneumonia", square=True)


def sweep_figure(artifact: Mapping[str, Any], prevalence: float, thresholds: Mapping[str, float]) -> go.Figure:
    sweep = (artifact.get("curves") or {}).get("sweep") or {}
    t = sweep.get("threshold") or []
    ppv, npv = ppv_npv(sweep.get("sensitivity", []), sweep.get("specificity", []), prevalence)
    fig = go.Figure()
    for key, values, name in (("sensitivity", sweep.get("sensitivity", []), "Sensitivity"),
                              ("specificity", sweep.get("specificity", []), "Specificity"),
                              ("ppv", ppv.tolist(), f"PPV at prevalence {prevalence:.0%}"),
                              ("npv", npv.tolist(), f"NPV at prevalence {prevalence:.0%}")):
        values = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
        fig.add_scatter(x=t, y=values, mode="lines", name=name,
                        line=dict(color=METRIC_COLOURS[key], width=2.5, dash="dash" if key in ("ppv", "npv") else None),
                        hovertemplate=f"{name}<br>threshold %{{x:.2f}}: %{{y:.3f}}<extra></extra>")
    for name, thr in thresholds.items():
        fig.add_vline(x=thr, line=dict(color="#34495e", width=1, dash="dot"),
                      annotation_text=op_label(name), annotation_position="top")
    fig = _layout(fig, "Metrics against the decision threshold", "Threshold on the calibrated probability", "Value")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def history_figure(history: Sequence[Mapping[str, Any]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "AUC by epoch"), horizontal_spacing=0.1)
    epochs = [h.get("epoch") for h in history]
    fig.add_scatter(x=epochs, y=[h.get("train_loss") for h in history], mode="lines+markers", name="train loss",
                    line=dict(color="#34495e"), row=1, col=1)
    for key, split, dash in (("val_auc", "val", None), ("external_auc", "external", None),
                             ("val_auc_ema", "val", "dot"), ("external_auc_ema", "external", "dot")):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            fig.add_scatter(x=epochs, y=values, mode="lines+markers", name=key.replace("_", " "),
                            line=dict(color=colour(split), dash=dash), row=1, col=2)
    fig = _layout(fig, "", "", "", height=380)
    # Fixed ranges: with one epoch plotly's autorange centres the lone point (an AUC axis from 0 to 2,
    # epochs 0.8 … 1.2). AUC stays inside [0, 1]; epochs are whole numbers.
    last = max([e for e in epochs if isinstance(e, (int, float))] or [1])
    fig.update_xaxes(title="Epoch", tickmode="linear", tick0=1, dtick=max(1, math.ceil(last / 10)),
                     tickformat="d", range=[0.5, last + 0.5])
    aucs = [v for tr in fig.data[1:] for v in tr.y if isinstance(v, (int, float)) and math.isfinite(v)]
    low = max(0.0, math.floor((min(aucs, default=0.5) - 0.05) * 10) / 10)
    fig.update_yaxes(range=[low, 1.0], row=1, col=2)
    losses = [v for v in fig.data[0].y if isinstance(v, (int, float)) and math.isfinite(v)]
    fig.update_yaxes(range=[0, max(losses, default=1.0) * 1.1 or 1.0], row=1, col=1)
    return fig
