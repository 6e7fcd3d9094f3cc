"""bench/load_sessions.py: its isolation checker (fast, pure) and one small real run of the bench.

The run starts `streamlit run app.py` on a temporary weights folder whose ACTIVE is conftest's tiny
model and drives 3 concurrent Chromium sessions for 1 round, each uploading its own synthetic film.
Without /usr/bin/chromium it skips locally and FAILS on CI (env CI set), like tests/test_browser.py.
"""

from __future__ import annotations

import json

import pytest
from conftest import weights_root
from test_browser import require_chromium

from bench.load_sessions import (
    check_markers_distinct,
    growth_flag,
    isolation_findings,
    parse_pct,
    probability_matches,
    tag_of,
)

OWN = "r1s001_person1_virus_6.jpeg"
OTHERS = ["w0s000_IM-0006-0001.jpeg", "r1s002_person1_virus_60.jpeg", "r1s003_IM-0007-0001.jpeg"]
MARKERS = set(OTHERS) | {tag_of(n) for n in OTHERS}


def page(own_chip: str = "r1s001_...us_6.jpeg", heading: str = OWN, prob: str = "89.5%", extra: str = "") -> str:
    """Page text shaped like the Predict page's (sidebar, uploader chip with a shortened name, result card)."""
    return (f"Predict\nModel\nVersion 20261123-135013\nPredict\nChest films\n{own_chip}\n7.9KB\n{heading}\nFilm\n"
            f"Probability of pneumonia\n{prob}\nPNEUMONIA\n{extra}Image metadata")


def findings(**kw) -> list[str]:
    args = {"own_name": OWN, "expected_probability": 0.8951, "shown_probabilities": ["89.5%"],
            "shown_headings": [OWN], "page_text": page(), "other_markers": MARKERS}
    return isolation_findings(**{**args, **kw})


# --------------------------------------------------------------------------- the checker

def test_own_result_only_is_clean():
    assert findings() == []


def test_another_sessions_file_name_is_flagged():
    out = findings(page_text=page(extra="r1s002_person1_virus_60.jpeg\n"))
    assert len(out) == 1 and "r1s002_person1_virus_60.jpeg" in out[0]


def test_another_sessions_shortened_name_in_the_uploader_is_flagged():
    out = findings(page_text=page(own_chip="r1s003_...01.jpeg"))
    assert len(out) == 1 and "r1s003_" in out[0]


def test_an_earlier_sessions_result_card_is_flagged():
    other = "w0s000_IM-0006-0001.jpeg"
    out = findings(shown_headings=[other], shown_probabilities=["12.0%"],
                   page_text=page(heading=other, prob="12.0%"))
    assert any(other in f for f in out)                          # another file on the page
    assert any("own file" in f for f in out)                     # and not its own
    assert any("probability 12.0%" in f for f in out)            # with someone else's number


def test_wrong_probability_is_flagged():
    out = findings(shown_probabilities=["89.7%"], page_text=page(prob="89.7%"))
    assert len(out) == 1 and "89.7%" in out[0] and "89.5%" in out[0]


def test_two_results_are_flagged():
    out = findings(shown_probabilities=["89.5%", "89.5%"])
    assert len(out) == 1 and "2 probabilities" in out[0]


def test_missing_own_heading_is_flagged():
    assert any("own file" in f for f in findings(shown_headings=[]))


def test_rounding_of_a_nearly_equal_value_is_accepted_and_nothing_more():
    assert probability_matches("12.3%", 0.1234) and not probability_matches("12.4%", 0.1234)
    assert probability_matches("12.4%", 0.123499997)             # server float rounds up, here down
    assert not probability_matches("12.2%", 0.1234)
    assert not probability_matches("–", 0.1234) and not probability_matches(None, 0.1234)
    assert parse_pct(" 0.8% ") == pytest.approx(0.008) and parse_pct("0.8") is None


def test_names_must_be_distinguishable():
    check_markers_distinct(["w0s000_a.png", "r1s001_a.png", "r1s002_b.png", "r2s001_a.png"])
    with pytest.raises(ValueError):
        check_markers_distinct(["r1s001_a.png", "r1s001_b.png"])   # same tag


def test_growth_flag():
    assert growth_flag([1000, 1010, 1030], [990, 995, 1000], 64) is None
    assert "peak grew" in growth_flag([1000, 1100, 1200], [990, 995, 1000], 64)
    assert "after-round" in growth_flag([1000, 1000, 1000], [900, 1000, 1100], 64)
    assert growth_flag([0.0], [0.0], 64) is None


# --------------------------------------------------------------------------- a real run: 3 sessions x 1 round

def test_three_concurrent_sessions_each_get_their_own_answer(tmp_path, tiny_model_dir, synthetic_data):
    require_chromium()
    from bench.load_sessions import main

    root = weights_root(tmp_path, tiny_model_dir, "tiny")
    out = tmp_path / "load.json"
    summary = main(["--sessions", "3", "--rounds", "1", "--films", str(synthetic_data / "external"),
                    "--weights-root", str(root), "--session-ttl", "2", "--threads", "1",
                    "--json", str(out), "--log", str(tmp_path / "streamlit.log")])

    assert summary["failures"] == [], summary["failures"]
    assert summary["leakage"] == [], summary["leakage"]
    assert summary["answered"] == summary["total_sessions"] == 3
    sessions = summary["per_session"]
    assert len({s["file"] for s in sessions}) == len({s["source"] for s in sessions}) == 3
    assert {s["label"] for s in sessions} == {"NORMAL", "PNEUMONIA"}
    assert all(s["shown_headings"] == [s["file"]] and len(s["shown_probabilities"]) == 1 for s in sessions)
    lat = summary["latency_ms"]
    assert lat["n"] == 3 and 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["max_ms"]
    rss = summary["server_rss_mb"]
    assert rss["measured"] and 0 < rss["baseline"] <= rss["peak"] and len(rss["per_round"]) == 1
    assert json.loads(out.read_text())["answered"] == 3
