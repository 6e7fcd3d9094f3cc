"""What the evidence says about promoting a version: the paired comparison's verdict in words, and the
reasons it cannot support the decision (too few films compared, thresholds fitted on too few films, a
worse model, no comparison at all). Plain functions (no Streamlit), tested directly; the Retrain page
shows them and asks for a confirmation, written to the audit log, before promoting against them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from pneumo_core.model.evaluation import EVAL_DIR
from pneumo_core.model.metrics import MIN_FILMS_PER_CLASS, too_few_films


def decision(comparison: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """(split, paired comparison) the verdict to act on comes from; (None, {}) when there is none."""
    split = comparison.get("decision_split")
    paired = (((comparison.get("splits") or {}).get(split) or {}).get("paired") or {}) if split else {}
    return split, paired


def verdict_text(comparison: Mapping[str, Any]) -> tuple[str | None, str]:
    """(kind, one paragraph): the verdict ("better", "not distinguishable", "worse"), "too few" (a verdict on
    fewer than MIN_FILMS_PER_CLASS films of a class, which cannot support a decision) or None (no verdict)."""
    split, paired = decision(comparison)
    if comparison.get("active_error"):
        return None, f"No verdict: the active model could not be evaluated ({comparison['active_error']})."
    if not split:
        return None, ("No verdict: this version has no paired comparison with the active model on the same "
                      "films (it was made before comparisons were paired, or without an active model).")
    films = f"{paired.get('n_normal', '?')} normal and {paired.get('n_pneumonia', '?')} pneumonia films of {split}/"
    verdict = paired.get("verdict")
    if verdict is None:
        return None, f"No verdict on {films}: {paired.get('error') or 'a class has fewer than two films'}."
    lo, hi = paired["ci95"]
    diff = f"AUC difference (new − active) {paired['delta_auc']:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}"
    words = {"better": "the new model ranks these films better than the active one",
             "worse": "the new model ranks these films worse than the active one",
             "not distinguishable": "the two models cannot be told apart on these films"}[verdict]
    text = f"**{verdict.capitalize()}.** On {films}, {words} ({diff}; paired bootstrap over the same films)."
    if not paired.get("enough", True):
        verdict = "too few"
        text = (f"**This comparison cannot support a decision:** it rests on {films}, below "
                f"{MIN_FILMS_PER_CLASS} films per class, where intervals are too wide (or falsely narrow) to act "
                f"on. Measured: {words} ({diff}).")
    fitted = str(comparison.get("calibrated_on") or "").rstrip("/")
    if fitted == split:
        text += (f" {split}/ also chose the new model's epoch, temperature and thresholds, so this flatters the "
                 f"new model: no untouched split was available.")
    return verdict, text


def threshold_films(card: Mapping[str, Any], model_dir: str | Path | None = None, *,
                    evals: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """{"normal", "pneumonia", "split"}: how many films of each class the card's operating points were fitted
    on. From the card (jobs record it), else, for a card older than that record, from the saved evaluation of
    the split they were chosen on (``evals``, as loaded, or read from ``model_dir``); None when unknown."""
    points = list((card.get("operating_points") or {}).values())
    if not points:
        return None
    split = str(points[0].get("chosen_on") or "")
    films = points[0].get("films")
    if isinstance(films, Mapping) and {"normal", "pneumonia"} <= set(films):
        return {"normal": int(films["normal"]), "pneumonia": int(films["pneumonia"]), "split": split}
    if (model_dir is None and evals is None) or not split:
        return None
    try:
        saved = evals[split.rstrip("/")] if evals is not None else \
            json.loads((Path(model_dir) / EVAL_DIR / f"{split.rstrip('/')}.json").read_text())
        labels = list(saved["scores"]["label"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"normal": labels.count(0), "pneumonia": labels.count(1), "split": split}


def threshold_warning(card: Mapping[str, Any], model_dir: str | Path | None = None, *,
                      evals: Mapping[str, Any] | None = None) -> str | None:
    """Why this model's thresholds are too noisy to rely on, or None."""
    return _films_warning(threshold_films(card, model_dir, evals=evals))


def _films_warning(films: Mapping[str, Any] | None) -> str | None:
    if not films or not too_few_films(films["normal"], films["pneumonia"]):
        return None
    return (f"Its thresholds were fitted on {films['normal']} normal and {films['pneumonia']} pneumonia films of "
            f"{films['split'] or 'its calibration split'}: below {MIN_FILMS_PER_CLASS} films per class a fitted "
            f"threshold is too noisy to rely on.")


def concerns(comparison: Mapping[str, Any], card: Mapping[str, Any], model_dir: str | Path | None = None, *,
             active: str | None = None) -> list[tuple[str, str]]:
    """Why the evidence cannot support promoting this version, as (short words for the audit log, sentence for
    the page); empty: it can. ``active``: the version active now (a comparison with another one is stale).
    The page asks for an explicit confirmation, written to the audit log, before promoting against these."""
    out = []
    split, paired = decision(comparison)
    verdict, _ = verdict_text(comparison)
    compared_with = comparison.get("active_version")
    if verdict is None:
        out.append(("no paired comparison", "There is no paired comparison with the active model on the same films."))
    elif verdict == "too few":
        n0, n1 = paired["n_normal"], paired["n_pneumonia"]
        out.append((f"compared on {n0}+{n1} films", f"The comparison used {n0} normal and {n1} pneumonia films of "
                    f"{split}/: below {MIN_FILMS_PER_CLASS} films per class it cannot support a decision."))
    elif verdict == "worse":
        out.append((f"worse on {split}/", f"On {split}/ the new model is worse than the active model."))
    if verdict is not None and active and compared_with and compared_with != active:
        out.append((f"compared with {compared_with}, not {active}",
                    f"The comparison was made against {compared_with}, which is no longer the active model "
                    f"({active} is)."))
    films = threshold_films(card, model_dir)
    if why := _films_warning(films):
        out.append((f"thresholds fitted on {films['normal']}+{films['pneumonia']} films", why))
    return out
