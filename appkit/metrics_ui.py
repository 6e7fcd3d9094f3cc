"""Metrics page widgets: split choice, provenance, headline table, threshold sweep, model card."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import streamlit as st

from pneumo_core.model import metrics as ev

from . import charts
from .promotion import threshold_warning
from .text import SPLIT_ORDER, film_type_rows, film_type_summary, fmt_ci, guard_summary, op_label, split_description

HEADLINE = (("auc", "AUC"), ("pr_auc", "PR-AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("precision", "PPV (precision)"), ("npv", "NPV"), ("accuracy", "Accuracy"), ("f1", "F1"),
            ("ece", "ECE (calibration error)"))


def splits_ui(evals: Mapping[str, Any]) -> list[str]:
    """Which splits to compare (default: internal test and external/ when both exist)."""
    ordered = sorted(evals, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
    default = [s for s in ("test", "external") if s in evals] or ordered[:2]
    return st.multiselect("Evaluation splits", ordered, default=default, format_func=lambda s: f"{s}/",
                          help="Each split's numbers come only from its own films (see 'Where the numbers come "
                               "from' below).") or default


def provenance_ui(evals: Mapping[str, Any], splits: list[str], card: Mapping[str, Any]) -> None:
    with st.container(border=True):
        st.markdown("**Where the numbers come from**")
        for split in splits:
            st.markdown("- " + split_description(split, evals[split], card))
        ci_method = charts.report_at(evals[splits[0]], "").get("ci_method")
        st.caption("Saved evaluation artifacts written when the model was calibrated; nothing is recomputed here. "
                   f"95% confidence intervals: {ci_method or 'bootstrap'}.")


# ECE does not depend on the operating point: one bootstrap per artifact, not one per rerun and point.
_ece_with_interval = st.cache_data(max_entries=8, show_spinner=False)(ev.ece_with_interval)


def ece_repaired(artifact: Mapping[str, Any], rep: Mapping[str, Any]) -> Mapping[str, Any]:
    """``rep`` with its ECE and interval recomputed (bias-corrected, ``ev.report``'s method) from the artifact's
    saved per-film scores when an artifact from before that method holds an ECE outside its own interval (a
    plug-in ECE with a percentile interval); anything else unchanged."""
    value, ci = rep.get("ece"), (rep.get("ci95") or {}).get("ece") or [None, None]
    scores = artifact.get("scores") or {}
    if "ece_method" in rep or value is None or None in ci or ci[0] <= value <= ci[1] or not scores.get("label"):
        return rep
    fixed, interval = _ece_with_interval(scores["label"], scores["probability"])
    return {**rep, "ece": fixed, "ci95": {**rep["ci95"], "ece": interval},
            "ece_method": ev.ECE_METHOD + "; recomputed here from the saved per-film scores"}


def headline_ui(evals: Mapping[str, Any], splits: list[str], op: str) -> None:
    table = {}
    repaired = []
    for split in splits:
        rep = charts.report_at(evals[split], op)
        if (fixed := ece_repaired(evals[split], rep)) is not rep:
            rep = fixed
            repaired.append(f"{split}/")
        ci = rep.get("ci95") or {}
        table[f"{split}/ (n={rep.get('n', evals[split].get('n'))})"] = [fmt_ci(rep.get(k), ci.get(k)) for k, _ in HEADLINE]
    threshold = charts.report_at(evals[splits[0]], op).get("threshold")
    st.markdown(f"**At the {op_label(op)} operating point** (threshold {threshold:.3f}); value (95% CI)"
                if threshold is not None else f"**At the {op_label(op)} operating point**")
    st.table(pd.DataFrame(table, index=[label for _, label in HEADLINE]))
    if repaired:
        st.caption(f"ECE on {', '.join(repaired)}: the saved value lay outside its own saved interval (an older, "
                   f"biased method), so value and interval are recomputed here from the saved per-film scores: "
                   f"{ev.ECE_METHOD}.")


def threshold_note_ui(card: Mapping[str, Any], evals: Mapping[str, Any]) -> None:
    """A warning when the operating points were fitted on too few films of a class to rely on."""
    if why := threshold_warning(card, evals=evals):
        st.warning(f"**These thresholds are unreliable.** {why} Treat the operating points as provisional, and "
                   f"recalibrate on more films: `python -m pneumo_core calibrate --model DIR --data DIR`.",
                   icon=":material/warning:")


def sweep_ui(evals: Mapping[str, Any], splits: list[str], thresholds: Mapping[str, float]) -> None:
    left, right = st.columns([1, 2])
    split = left.selectbox("Split", splits, format_func=lambda s: f"{s}/", key="sweep_split")
    observed = (evals[split].get("curves") or {}).get("prevalence") or 0.5
    prevalence = right.slider("Prevalence of pneumonia among the films read (π)", 0.01, 0.99,
                              round(float(observed), 2), 0.01, key=f"prevalence_{split}",
                              help=f"{split}/ has {observed:.0%}. PPV and NPV depend on prevalence; sensitivity "
                                   "and specificity do not.")
    st.plotly_chart(charts.sweep_figure(evals[split], prevalence, thresholds), width="stretch")
    st.caption(f"Sensitivity and specificity measured on {split}/; PPV = sens·π / (sens·π + (1−spec)(1−π)) and "
               "NPV = spec(1−π) / (spec(1−π) + (1−sens)π) at the prevalence π chosen above.")


CARD_FACTS = (("Version", ("version",)), ("Architecture", ("architecture",)), ("Task", ("task",)),
              ("Created", ("created",)), ("Code version", ("code_version",)), ("Input size", ("input", "size")),
              ("Temperature", ("temperature",)), ("Initialisation", ("initialisation", "kind")),
              ("Data source", ("data", "source")), ("Data fingerprint", ("data", "fingerprint")),
              ("Epochs", ("training", "epochs")), ("Trained on", ("training", "device")),
              ("Calibration", ("calibration", "method")), ("Calibrated on", ("calibration", "fitted_on")))


def _dig(card: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = card
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def card_ui(card: Mapping[str, Any]) -> None:
    facts = [(label, f"{v:.4g}" if isinstance(v, float) else str(v))
             for label, path in CARD_FACTS if (v := _dig(card, path)) not in (None, "")]
    for name, point in (card.get("operating_points") or {}).items():
        facts.append((f"Operating point: {op_label(name)}",
                      f"threshold {point.get('threshold', float('nan')):.4f}; {point.get('rule', '')}; chosen on "
                      f"{point.get('chosen_on', '?')}"))
    facts.append(("Out-of-distribution guard", guard_summary(card)))
    facts.append(("Film-type check", film_type_summary(card)))
    for split, counts in ((card.get("data") or {}).get("counts") or {}).items():
        facts.append((f"Films in {split}/", ", ".join(f"{k} {v}" for k, v in counts.items())))
    st.table(pd.DataFrame(facts, columns=["Field", "Value"]).set_index("Field"))
    if rows := film_type_rows(card):
        st.markdown("**Film-type check** on films of sources it was not fitted on (each source left out in turn; "
                    "the real laterals are never fitted on):")
        st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
            "accepted": st.column_config.NumberColumn(format="percent"),
            "warned adult": st.column_config.NumberColumn(format="percent")})
    if (card.get("calibration") or {}).get("note"):
        st.caption(f"Calibration note: {card['calibration']['note']}")
    with st.expander("Full model card (JSON)"):
        st.json({k: v for k, v in card.items() if k != "history"}, expanded=1)


def calibration_note_ui(card: Mapping[str, Any], evals: Mapping[str, Any], op: str) -> None:
    """Which population the probability is calibrated for, and ECE on every split (not only the chosen ones)."""
    calibration = card.get("calibration") or {}
    if calibration.get("population"):
        st.info(f"**The probability is calibrated for {calibration['population']}.** "
                f"{calibration.get('note', '')}", icon=":material/info:")
    rows = {f"{split}/": charts.report_at(evals[split], op).get("ece") for split in evals}
    st.caption("ECE by split: " + ", ".join(f"{k} {v:.3f}" for k, v in rows.items() if v is not None))


def explain_ui(card: Mapping[str, Any]) -> None:
    """The Grad-CAM layer and method this model uses, and how faithful each candidate map was (ROAD)."""
    choice = card.get("explain") or {}
    faith = choice.get("faithfulness") or {}
    if not faith:
        st.info("This model's card records no Grad-CAM faithfulness measurement; the map uses the last dense "
                "block, the network's coarsest grid.")
        return
    lo, hi = faith.get("ci95") or (None, None)
    st.markdown(f"**Map used:** {choice.get('method')} on `{choice.get('layer')}` "
                f"(grid {choice['grid'][0]}x{choice['grid'][1]}, upsampled to the film). "
                f"**Faithfulness (ROAD combined):** {faith.get('score', float('nan')):+.3f}"
                + (f" (95% CI {lo:+.3f} to {hi:+.3f})" if lo is not None else "")
                + f" on {faith.get('films', 'the evaluation films')}.")
    table = pd.DataFrame([{"Layer": r["layer"], "Method": r["method"], "Grid": f"{r['grid'][0]}x{r['grid'][1]}",
                           "ROAD combined": f"{r['road_combined']:+.3f}",
                           "95% CI": f"{r['ci95'][0]:+.3f} to {r['ci95'][1]:+.3f}",
                           "Eligible (grid >= 8x8)": "yes" if r.get("eligible") else "no"}
                          for r in faith.get("table") or []])
    if not table.empty:
        st.dataframe(table, hide_index=True, width="stretch")
    st.caption("ROAD (Rong et al. 2022) removes the pixels the map ranks most (or least) relevant, fills them in "
               "from their neighbours, and measures how the pneumonia logit changes; the combined score is "
               "(least-relevant-first change - most-relevant-first change) / 2, in logit units, averaged over "
               f"removing {', '.join(str(p) for p in faith.get('percentiles', []))}% of the film. Higher is more "
               "faithful; the random map shows what no information scores. The map is relative to each film and "
               "is not a lesion outline.")
