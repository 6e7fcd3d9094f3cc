"""Issue #17, item 2: a paired verdict on the same films, and the reasons a promotion cannot be supported
(too few films compared, thresholds fitted on too few films, a worse model, a stale comparison)."""

from __future__ import annotations

import numpy as np

from appkit import promotion
from pneumo_core.model import compare as cand
from pneumo_core.model import metrics as ev


def _scores(n_per_class: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_per_class, int), np.zeros(n_per_class, int)]
    return y, y + rng.normal(0, 1.2, 2 * n_per_class), y + rng.normal(0, 0.5, 2 * n_per_class)


def test_paired_verdict_says_better_worse_or_not_distinguishable():
    y, weak, strong = _scores(150)
    assert cand.paired_verdict(y, strong, weak, n_boot=300)["verdict"] == "better"
    assert cand.paired_verdict(y, weak, strong, n_boot=300)["verdict"] == "worse"
    same = cand.paired_verdict(y, weak, weak, n_boot=300)
    assert same["verdict"] == "not distinguishable" and same["enough"]
    assert (same["n_normal"], same["n_pneumonia"]) == (150, 150)
    few = cand.paired_verdict(*_scores(10)[:2], _scores(10)[2], n_boot=100)
    assert not few["enough"] and few["n_normal"] == 10
    assert cand.paired_verdict(np.array([1, 0, 0]), np.array([.9, .1, .2]), np.array([.5, .5, .5]))["verdict"] is None


def test_operating_points_record_the_films_they_were_fitted_on():
    y, _, strong = _scores(30)
    points = ev.choose_operating_points(y, ev.sigmoid(strong), source="val/", n_boot=50)
    assert all(pt["films"] == {"normal": 30, "pneumonia": 30} for pt in points.values())
    assert ev.too_few_films(30, 80) and not ev.too_few_films(50, 50) and not ev.too_few_films(None, None)


def _comparison(verdict: str, n: int, *, active: str = "base") -> dict:
    paired = {"verdict": verdict, "n_normal": n, "n_pneumonia": n + 3, "enough": not ev.too_few_films(n, n + 3),
              "delta_auc": 0.02, "ci95": [0.01, 0.03] if verdict == "better" else [-0.01, 0.02]}
    return {"active_version": active, "candidate_version": "new", "calibrated_on": "external/",
            "decision_split": "test", "splits": {"test": {"paired": paired}}}


def _card(n: int | None) -> dict:
    point = {"threshold": 0.5, "chosen_on": "external/"}
    if n is not None:
        point["films"] = {"normal": n, "pneumonia": n}
    return {"operating_points": {"balanced": point}}


def test_enough_films_and_a_better_model_raise_no_concern():
    verdict, text = promotion.verdict_text(_comparison("better", 120))
    assert verdict == "better" and text.startswith("**Better.**") and "120 normal and 123 pneumonia films of test/" in text
    assert promotion.concerns(_comparison("better", 120), _card(120), active="base") == []


def test_too_few_films_cannot_support_a_decision():
    verdict, text = promotion.verdict_text(_comparison("better", 10))
    assert verdict == "too few" and "cannot support a decision" in text
    reasons = promotion.concerns(_comparison("better", 10), _card(20), active="base")
    assert [short for short, _ in reasons] == ["compared on 10+13 films", "thresholds fitted on 20+20 films"]
    assert "below 50 films per class" in reasons[0][1]


def test_worse_stale_and_missing_comparisons_are_concerns():
    worse = _comparison("worse", 100)
    worse["splits"]["test"]["paired"]["ci95"] = [-0.05, -0.01]
    assert promotion.verdict_text(worse)[0] == "worse"
    assert [s for s, _ in promotion.concerns(worse, _card(None))] == ["worse on test/"]
    stale = promotion.concerns(_comparison("not distinguishable", 100), _card(100), active="other")
    assert [s for s, _ in stale] == ["compared with base, not other"]
    assert promotion.verdict_text({})[0] is None
    assert [s for s, _ in promotion.concerns({}, _card(100))] == ["no paired comparison"]


def test_threshold_films_of_an_older_card_come_from_its_saved_evaluation():
    evals = {"external": {"scores": {"label": [0] * 12 + [1] * 30}}}
    assert promotion.threshold_films(_card(None), evals=evals) == {"normal": 12, "pneumonia": 30,
                                                                   "split": "external/"}
    assert "12 normal and 30 pneumonia films of external/" in promotion.threshold_warning(_card(None), evals=evals)
    assert promotion.threshold_warning(_card(None)) is None                  # unknown: no claim either way


def test_metrics_page_warns_when_thresholds_rest_on_too_few_films(tmp_path, monkeypatch, tiny_model_dir):
    """conftest's tiny model is calibrated on 8 films per class: the Metrics page says its thresholds are
    unreliable, and every ECE it shows lies inside its interval."""
    import re
    from pathlib import Path

    import streamlit as st
    from conftest import active_weights_root
    from streamlit.testing.v1 import AppTest

    active_weights_root(tmp_path, monkeypatch, tiny_model_dir)
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/metrics.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("These thresholds are unreliable" in w.value and "8 normal and 8 pneumonia films of external/"
               in w.value for w in at.warning)
    table = at.table[0].value
    for cell in table.loc["ECE (calibration error)"]:
        value, lo, hi = map(float, re.match(r"([\d.]+) \(([\d.]+)–([\d.]+)\)", cell).groups())
        assert lo <= value <= hi, cell


def test_an_older_artifact_with_ece_outside_its_interval_is_recomputed_for_display():
    from appkit.metrics_ui import ece_repaired

    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 150)
    y = (rng.random(150) < p).astype(int)
    artifact = {"scores": {"label": y.tolist(), "probability": p.tolist()}}
    old = {"ece": 0.026, "ci95": {"ece": [0.027, 0.064], "auc": [0.9, 1.0]}}          # issue 17's reading
    fixed = ece_repaired(artifact, old)
    lo, hi = fixed["ci95"]["ece"]
    assert lo <= fixed["ece"] <= hi and fixed["ci95"]["auc"] == [0.9, 1.0] and "recomputed" in fixed["ece_method"]
    inside = {"ece": 0.03, "ci95": {"ece": [0.02, 0.06]}}
    assert ece_repaired(artifact, inside) is inside                  # the shipped model's values are kept as saved
