"""Metrics, confidence intervals, calibration and operating points (scikit-learn underneath).

Everything here is plain numpy in, plain dicts out, so the results go straight
into JSON artifacts that the metrics page reads without recomputing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "f1")


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def confusion(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, int]:
    """Counts at ``p >= threshold`` called PNEUMONIA (label 1)."""
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(np.asarray(y).astype(int), pred, labels=[0, 1]).ravel()
    return {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def threshold_metrics(c: dict[str, int]) -> dict[str, float]:
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    sens, prec = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "precision": prec,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * prec * sens, prec + sens) if not (math.isnan(prec) or math.isnan(sens)) else float("nan"),
    }


def safe_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def safe_pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(average_precision_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width bins on P(pneumonia)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if len(y) == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return float(total / len(y))


def _ece_rows(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """``ece`` of each row of resampled labels and probabilities (n_boot x n), vectorised: a bin's weighted
    gap, count x |mean(y) - mean(p)|, is |sum(y - p)| over its films."""
    rows, n = y.shape
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1) + n_bins * np.arange(rows)[:, None]
    sums = np.bincount(bins.ravel(), weights=(y - p).ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    return np.abs(sums).sum(1) / n


ECE_METHOD = ("bootstrap bias-corrected (2 x sample ECE - mean of the resamples' ECE, not below 0), "
              "normal interval (value +- 1.96 x the resamples' SD, not below 0)")


def ece_corrected(value: float, draws: np.ndarray, level: float = 0.95) -> tuple[float, list[float]]:
    """ECE with its sampling bias removed, and a 95% interval that contains it.

    The plug-in ECE is biased upwards (each bin's |observed - predicted| gap picks up sampling noise, even
    for a perfectly calibrated model), and a resample's ECE is biased again on top of that, so the
    percentile interval of the resamples can lie entirely above the sample's own value. The bootstrap
    estimate of the bias is mean(draws) - value (Efron & Tibshirani 1993, ch. 10); subtracting it gives the
    corrected value, and the normal interval around it (its half-width from the resamples' spread) holds
    it by construction. ECE cannot be negative, so both are clipped at 0."""
    from scipy.stats import norm

    draws = np.asarray(draws, float)
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not math.isfinite(value):
        return value, [None, None]
    corrected = max(0.0, 2.0 * value - float(draws.mean()))
    half = float(norm.ppf((1 + level) / 2)) * float(draws.std(ddof=1)) if len(draws) > 1 else 0.0
    return corrected, [max(0.0, corrected - half), corrected + half]


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Per-bin mean predicted probability, observed frequency and count (for the calibration plot)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    out: dict[str, list] = {"bin_lower": [], "bin_upper": [], "mean_predicted": [], "observed": [], "count": []}
    for b in range(n_bins):
        m = bins == b
        out["bin_lower"].append(b / n_bins)
        out["bin_upper"].append((b + 1) / n_bins)
        out["count"].append(int(m.sum()))
        out["mean_predicted"].append(float(p[m].mean()) if m.any() else None)
        out["observed"].append(float(y[m].mean()) if m.any() else None)
    return out


def point_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Every scalar metric at one threshold (AUCs are threshold-free)."""
    return {
        "auc": safe_auc(y, p),
        "pr_auc": safe_pr_auc(y, p),
        **threshold_metrics(confusion(y, p, threshold)),
        "ece": ece(y, p),
    }


def rank_auc(pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row-wise AUC of resampled scores (n_boot x n) with boolean positives ``pos`` of the same shape, by the
    rank (Mann-Whitney) identity, which equals scikit-learn's roc_auc_score, ties included."""
    from scipy.stats import rankdata

    n_pos, n_neg = pos.sum(1), (~pos).sum(1)
    ranks = rankdata(scores, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * pos).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def ece_with_interval(y: np.ndarray, p: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, list[float | None]]:
    """The bias-corrected ECE and its interval alone (what ``report`` gives, for the same resamples)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    idx = _resamples(len(y), n_boot, seed)
    return _ece_interval(y, p, y[idx], p[idx], level)


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The bootstrap's film indices, n_boot x n: the same for ``report`` and ``ece_with_interval``."""
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def _ece_interval(y: np.ndarray, p: np.ndarray, yb: np.ndarray, pb: np.ndarray,
                  level: float) -> tuple[float, list[float | None]]:
    return ece_corrected(ece(y, p), _ece_rows(yb.astype(float), pb), level)


def bootstrap_ci(y: np.ndarray, p: np.ndarray, threshold: float, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, list[float | None]]:
    """Percentile bootstrap over films: a 95% CI for each metric of ``point_metrics``, except ECE, whose
    interval is that of the bias-corrected ECE (``ece_corrected``; ``report`` gives that value).

    Vectorised over resamples: counts by numpy, AUC by the rank (Mann-Whitney) identity,
    which equals scikit-learn's roc_auc_score, ties included."""
    return _bootstrap(y, p, threshold, n_boot=n_boot, seed=seed, level=level)[1]


def _bootstrap(y: np.ndarray, p: np.ndarray, threshold: float, *, n_boot: int, seed: int,
               level: float) -> tuple[float | None, dict[str, list[float | None]]]:
    """(bias-corrected ECE, the intervals of ``bootstrap_ci``) from one set of resamples."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    n = len(y)
    if n == 0 or n_boot <= 0:
        return None, {}
    idx = _resamples(n, n_boot, seed)
    yb, pb = y[idx], p[idx]
    pos, called = yb == 1, pb >= threshold
    tp = (pos & called).sum(1).astype(float)
    fp = (~pos & called).sum(1).astype(float)
    tn = (~pos & ~called).sum(1).astype(float)
    fn = (pos & ~called).sum(1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens, spec, prec, npv = tp / (tp + fn), tn / (tn + fp), tp / (tp + fp), tn / (tn + fn)
        draws = {
            "auc": rank_auc(pos, pb),
            "pr_auc": np.array([safe_pr_auc(a, b) for a, b in zip(yb, pb)]),
            "accuracy": (tp + tn) / n,
            "sensitivity": sens,
            "specificity": spec,
            "precision": prec,
            "npv": npv,
            "f1": 2 * prec * sens / (prec + sens),
        }
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict[str, list[float | None]] = {}
    for k, arr in draws.items():
        arr = arr[np.isfinite(arr)]
        out[k] = [float(np.percentile(arr, lo)), float(np.percentile(arr, hi))] if len(arr) else [None, None]
    corrected, out["ece"] = _ece_interval(y, p, yb, pb, level)
    return corrected, out


def report(y: np.ndarray, p: np.ndarray, threshold: float, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The evaluate contract: n, every metric as a number, ``ci95`` per metric, threshold, confusion."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    points = point_metrics(y, p, threshold)
    corrected, ci = _bootstrap(y, p, threshold, n_boot=n_boot, seed=seed, level=0.95)
    if corrected is not None:           # the value its interval is built around (plug-in kept beside it)
        points.update(ece=corrected, ece_plugin=points["ece"])
    return {
        "n": int(len(y)),
        "n_normal": int((y == 0).sum()),
        "n_pneumonia": int((y == 1).sum()),
        **_nan_to_none(points),
        "threshold": float(threshold),
        "confusion": confusion(y, p, threshold),
        "ci95": ci,
        "ci_method": f"percentile bootstrap over films, {n_boot} resamples (ECE: bias-corrected, normal interval)",
        "ece_method": ECE_METHOD,
    }


def _nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of sigmoid(logit / T)."""
    from scipy.optimize import minimize_scalar

    z, y = np.asarray(logits, float), np.asarray(y, float)

    def nll(log_t: float) -> float:
        q = np.clip(sigmoid(z / math.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


# Below this many films of either class, a threshold fitted on them or a comparison made on them is too noisy
# to act on (20 films gave AUC '1.000 (1.000–1.000)' and a threshold of 0.175): pages say so and ask for a
# confirmation, written to the audit log, before such a model is promoted.
MIN_FILMS_PER_CLASS = 50


def too_few_films(n_normal: int | None, n_pneumonia: int | None) -> bool:
    """True when either class has fewer than MIN_FILMS_PER_CLASS films (an unknown count is not too few)."""
    return any(n is not None and n < MIN_FILMS_PER_CLASS for n in (n_normal, n_pneumonia))


SENSITIVITY_FLOOR = 0.93          # the screening point's sensitivity must hold ...
HOLD_FRACTION = 0.90              # ... in at least this share of bootstrap resamples
OP_BOOTSTRAP = 2000


def _youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, p)
    finite = np.isfinite(thr)          # roc_curve's first threshold (inf) calls nothing positive
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(np.clip(thr[int(np.argmax(j))], 0.0, 1.0))


def _sensitivity_draws(pos: np.ndarray, thresholds: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot x len(thresholds): sensitivity at each threshold in each resample of the positives."""
    draws = np.sort(rng.choice(pos, (n_boot, len(pos)), replace=True), axis=1)
    below = np.stack([np.searchsorted(row, thresholds, side="left") for row in draws])
    return 1.0 - below / len(pos)


def _spread(y: np.ndarray, p: np.ndarray, t: float, idx: np.ndarray) -> dict[str, list[float]]:
    """5th-95th percentile of sensitivity and specificity at a fixed threshold over resamples ``idx``."""
    yb, called = y[idx], p[idx] >= t
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (called & (yb == 1)).sum(1) / (yb == 1).sum(1)
        spec = (~called & (yb == 0)).sum(1) / (yb == 0).sum(1)
    q = lambda a: [float(np.nanpercentile(a, 5)), float(np.nanpercentile(a, 95))]  # noqa: E731
    return {"sensitivity_90": q(sens), "specificity_90": q(spec)}


def choose_operating_points(y: np.ndarray, p: np.ndarray, *, source: str, n_boot: int = OP_BOOTSTRAP,
                            seed: int = 0) -> dict[str, dict[str, Any]]:
    """Two named thresholds chosen by rules that hold under resampling (a threshold picked on a few
    hundred films is itself noisy), each with its bootstrap spread.

    ``high_sensitivity``: the highest threshold whose sensitivity is >= SENSITIVITY_FLOOR in at least
    HOLD_FRACTION of stratified bootstrap resamples (so a new sample of films keeps the sensitivity),
    and never above the balanced threshold.
    ``balanced``: the median over resamples of the maximal-Youden-J threshold (the plain maximum on
    one sample jumps between neighbouring films).
    ``threshold_spread_90``: 5th-95th percentile, over resamples, of the threshold each rule picks on
    that resample alone; ``*_90``: of sensitivity and specificity at the chosen threshold; ``films``: how
    many films of each class the rules saw (``too_few_films`` says when that is too few to rely on)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    rng = np.random.default_rng(seed)
    pos = p[y == 1]
    # Stratified resamples (same class counts as the sample) of indices into y/p.
    i_pos, i_neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    idx = np.concatenate([rng.choice(i_pos, (n_boot, len(i_pos))), rng.choice(i_neg, (n_boot, len(i_neg)))], axis=1)

    youden = np.array([_youden_threshold(y[i], p[i]) for i in idx])
    t_bal = float(np.median(youden))

    candidates = np.unique(pos)[::-1]                         # every distinct positive score, highest first
    sens = _sensitivity_draws(pos, candidates, n_boot, rng)  # n_boot x candidates
    holds = (sens >= SENSITIVITY_FLOOR).mean(0) >= HOLD_FRACTION
    t_hs = float(candidates[int(np.argmax(holds))]) if holds.any() else float(np.min(p))
    # A well-separated sample can put the Youden point below the floor's threshold: the screening point is
    # never less sensitive than the balanced one.
    t_hs = min(t_hs, t_bal)
    # Per resample, the highest threshold reaching the floor (the one-sample rule), for the spread.
    reach = sens >= SENSITIVITY_FLOOR
    per_draw = candidates[np.argmax(reach, axis=1)]

    q = lambda a: [float(np.percentile(a, 5)), float(np.percentile(a, 95))]  # noqa: E731
    points = {}
    for name, t, rule, spread in (
            ("balanced", t_bal, f"max Youden J (median threshold over {n_boot} bootstrap resamples)", youden),
            ("high_sensitivity", t_hs, f"highest threshold with sensitivity >= {SENSITIVITY_FLOOR:.2f} in "
                                       f">= {HOLD_FRACTION:.0%} of {n_boot} bootstrap resamples, and not above "
                                       f"the balanced threshold", per_draw)):
        m = threshold_metrics(confusion(y, p, t))
        points[name] = {"threshold": t, "rule": rule, "chosen_on": source,
                        "films": {"normal": len(i_neg), "pneumonia": len(i_pos)},
                        "sensitivity": m["sensitivity"], "specificity": m["specificity"],
                        "threshold_spread_90": q(spread), **_spread(y, p, t, idx)}
    return points


def curves(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """Everything the metrics page plots, as lists."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    out: dict[str, Any] = {"reliability": reliability(y, p)}
    if len(np.unique(y)) == 2:
        fpr, tpr, thr = roc_curve(y, p)
        prec, rec, pthr = precision_recall_curve(y, p)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": np.clip(thr, 0, 1).tolist()}
        out["pr"] = {"precision": prec.tolist(), "recall": rec.tolist(), "threshold": pthr.tolist()}
    grid = np.round(np.linspace(0, 1, 101), 4)
    sweep: dict[str, list] = {"threshold": grid.tolist(), **{k: [] for k in THRESHOLD_METRICS}}
    for t in grid:
        for k, v in threshold_metrics(confusion(y, p, float(t))).items():
            sweep[k].append(None if math.isnan(v) else v)
    out["sweep"] = sweep
    out["prevalence"] = float(y.mean()) if len(y) else None
    return out
