"""Metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumo_core.model import metrics as ev

Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.15, 0.7, 0.4, 0.2, 0.1, 0.1, 0.05])


def test_confusion_and_threshold_metrics_by_hand():
    c = ev.confusion(Y, P, 0.5)
    assert c == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    m = ev.threshold_metrics(c)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(0.75)


def test_threshold_is_inclusive():
    assert ev.confusion(np.array([1, 0]), np.array([0.5, 0.5]), 0.5) == {"tp": 1, "fp": 1, "tn": 0, "fn": 0}


def test_auc_by_hand():
    # positives 0.9,0.8,0.6,0.15 vs negatives 0.7,0.4,0.2,0.1,0.1,0.05: pairs won = 6+6+5+3 = 20 of 24
    assert ev.safe_auc(Y, P) == pytest.approx(20 / 24)
    assert math.isnan(ev.safe_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_ece_by_hand():
    # two bins: p=0.05 (bin 0) with outcome 0 twice; p=0.95 (bin 9) with outcomes 1,0 -> gaps 0.05 and 0.45
    y = np.array([0, 0, 1, 0])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    assert ev.ece(y, p) == pytest.approx((2 * 0.05 + 2 * 0.45) / 4)
    assert ev.ece(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(0.0)


def test_bootstrap_ci_contains_point_and_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1)
    point = ev.report(y, p, 0.5, n_boot=300, seed=1)          # ECE: the bias-corrected value its CI is built on
    ci = ev.bootstrap_ci(y, p, 0.5, n_boot=300, seed=1)
    assert ci == point["ci95"]
    for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece"):
        lo, hi = ci[k]
        assert lo <= point[k] <= hi, k
        assert hi - lo < 0.25
    # the rank identity used for speed agrees with scikit-learn on one resample, ties included
    from scipy.stats import rankdata
    yt, pt = np.array([1, 0, 1, 0, 1]), np.array([0.5, 0.5, 0.9, 0.1, 0.5])
    r = rankdata(pt)
    rank_auc = (r[yt == 1].sum() - 3 * 4 / 2) / (3 * 2)
    assert rank_auc == pytest.approx(ev.safe_auc(yt, pt))


def test_ece_lies_inside_its_interval_and_is_less_biased():
    """Well-calibrated samples of 120 films (true ECE 0): the plug-in ECE is biased up, and a resample's more so,
    so its percentile interval can lie wholly above the value (issue 17: '0.026 (0.027–0.064)'). The reported
    ECE is bias-corrected, inside its interval on every sample, and nearer the truth on average."""
    rng = np.random.default_rng(11)
    corrected, plugin = [], []
    for k in range(12):
        p = rng.uniform(0.05, 0.95, 120)
        y = (rng.random(120) < p).astype(int)
        rep = ev.report(y, p, 0.5, n_boot=200, seed=k)
        lo, hi = rep["ci95"]["ece"]
        assert 0 <= lo <= rep["ece"] <= hi, (k, rep["ece"], lo, hi)
        assert rep["ece_plugin"] == pytest.approx(ev.ece(y, p))
        corrected.append(rep["ece"])
        plugin.append(rep["ece_plugin"])
    assert np.mean(corrected) < 0.8 * np.mean(plugin)          # partly: see docs/model.md
    assert "bias-corrected" in rep["ece_method"] and "ECE" in rep["ci_method"]


def test_ece_correction_by_hand_and_vectorised_rows():
    # value 0.05, resamples averaging 0.08: bias 0.03, corrected 0.02; half-width 1.96 x SD; clipped at 0
    draws = np.array([0.06, 0.08, 0.10])
    value, (lo, hi) = ev.ece_corrected(0.05, draws)
    assert value == pytest.approx(0.02)
    assert lo == 0.0 and hi == pytest.approx(0.02 + 1.959964 * 0.02, rel=1e-4)
    assert ev.ece_corrected(0.01, np.array([0.05, 0.07]))[0] == 0.0            # never negative
    rng = np.random.default_rng(0)
    yb, pb = rng.integers(0, 2, (6, 50)).astype(float), rng.random((6, 50))
    assert ev._ece_rows(yb, pb) == pytest.approx([ev.ece(a, b) for a, b in zip(yb, pb)])


def test_report_has_the_contract_fields():
    rep = ev.report(Y, P, 0.5, n_boot=50)
    for k in ("n", "auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece", "threshold", "confusion"):
        assert k in rep
    for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece"):
        assert len(rep["ci95"][k]) == 2
    assert rep["n"] == 10 and rep["confusion"]["tp"] == 3


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < ev.sigmoid(true_logit)).astype(int)
    t = ev.fit_temperature(true_logit * 3.0, y)      # over-confident by a factor 3
    assert t == pytest.approx(3.0, rel=0.08)


def test_operating_points():
    pts = ev.choose_operating_points(Y, P, source="x", n_boot=500)
    bal, hs = pts["balanced"], pts["high_sensitivity"]
    # Sensitivity >= 0.93 with 4 positives needs all four in every resample: only 0.15 (the lowest positive)
    # holds, and it holds in every resample.
    assert hs["threshold"] == pytest.approx(0.15) and hs["sensitivity"] == 1.0
    assert hs["sensitivity_90"] == [1.0, 1.0]
    # Balanced: a Youden-optimal threshold of some resample, so one of the scores; never below the screening one.
    assert bal["threshold"] in set(P.tolist())
    assert hs["threshold"] <= bal["threshold"]
    for pt in (bal, hs):
        lo, hi = pt["threshold_spread_90"]
        assert lo <= hi and 0 <= lo and hi <= 1
        assert pt["specificity_90"][0] <= pt["specificity"] <= pt["specificity_90"][1] + 1e-9


def test_screening_point_is_never_less_sensitive_than_the_balanced_one():
    # Well separated: Youden J peaks at a threshold that already keeps every positive.
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200, int), np.zeros(100, int)]
    p = np.r_[rng.uniform(0.8, 1.0, 200), rng.uniform(0.0, 0.5, 100)]
    pts = ev.choose_operating_points(y, p, source="x", n_boot=300)
    assert pts["high_sensitivity"]["threshold"] <= pts["balanced"]["threshold"]
    assert pts["high_sensitivity"]["sensitivity"] >= pts["balanced"]["sensitivity"]


def test_balanced_point_with_tied_scores_is_a_real_threshold():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.full(6, 0.7)
    pts = ev.choose_operating_points(y, p, source="x", n_boot=100)
    assert pts["balanced"]["threshold"] == pytest.approx(0.7)        # not 1.0 (roc_curve's 'call nothing' point)
    assert pts["high_sensitivity"]["sensitivity"] == 1.0


def _sample(rng, n_pos=200, n_neg=110):
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    return y, ev.sigmoid(np.r_[rng.normal(2.2, 1.0, n_pos), rng.normal(-1.0, 1.0, n_neg)])


def _sens(y, p, t):
    return ((p >= t) & (y == 1)).sum() / (y == 1).sum()


def test_screening_point_keeps_its_sensitivity_on_new_films_more_often_than_the_one_sample_rule():
    """The point of the bootstrap rule: chosen on one sample of ~300 films, its sensitivity floor holds on
    fresh samples from the same population far more often than the plain 'highest threshold reaching the
    floor on this sample' (which holds about half the time)."""
    rng = np.random.default_rng(3)
    held_boot, held_plain = [], []
    for _ in range(30):
        y, p = _sample(rng)
        t_boot = ev.choose_operating_points(y, p, source="x", n_boot=300)["high_sensitivity"]["threshold"]
        pos = np.sort(p[y == 1])[::-1]
        t_plain = pos[int(np.ceil(ev.SENSITIVITY_FLOOR * len(pos))) - 1]
        y2, p2 = _sample(rng, 5000, 10)
        held_boot.append(_sens(y2, p2, t_boot) >= ev.SENSITIVITY_FLOOR)
        held_plain.append(_sens(y2, p2, t_plain) >= ev.SENSITIVITY_FLOOR)
    assert np.mean(held_boot) >= 0.75
    assert np.mean(held_boot) > np.mean(held_plain) + 0.2


def test_curves_shapes():
    c = ev.curves(Y, P)
    assert len(c["roc"]["fpr"]) == len(c["roc"]["tpr"])
    assert c["sweep"]["threshold"][0] == 0 and c["sweep"]["threshold"][-1] == 1
    assert c["sweep"]["sensitivity"][0] == 1.0
    assert sum(c["reliability"]["count"]) == len(Y)
    assert c["prevalence"] == pytest.approx(0.4)
