"""bench/memory_session.py: its settling check and ceiling (fast, pure) and one small real run.

The run starts `streamlit run app.py` on a temporary weights folder whose ACTIVE is conftest's tiny model;
one session uploads 3 large films with a session cap that has room for two of them. Without
/usr/bin/chromium it skips locally and FAILS on CI (env CI set), like tests/test_browser.py.
"""

from __future__ import annotations

import json

from conftest import weights_root
from test_browser import require_chromium

from bench.memory_session import ceiling, settled


def state(**kw) -> dict:
    return {"cards": 3, "analysed": 1, "rejected": 1, "refused": 1, "unreadable": 0, "exception": 0,
            "running": False, **kw}


def test_settled_needs_every_card_with_an_outcome_and_the_script_done():
    assert settled(state(), 3)
    assert not settled(state(running=True), 3)
    assert not settled(state(cards=2), 3)
    assert not settled(state(refused=0), 3)                     # one card still computing
    assert settled(state(refused=0, exception=1), 3)            # a traceback ends the wait (and is reported)
    assert not settled(None, 3)


def test_ceiling_is_the_apps_stated_bound_over_the_baseline(monkeypatch):
    monkeypatch.delenv("PNEUMO_SESSION_MPIX", raising=False)
    c = ceiling(1000 * 2**20, 10 * 2**20, None)
    assert c["baseline_mb"] == 1000 and c["uploads_x2_mb"] == 20 and c["session_mpix"] == 64
    parts = c["baseline_mb"] + c["uploads_x2_mb"] + c["films_kept_mb"] + c["one_decode_mb"] + c["page_allowance_mb"]
    assert abs(c["ceiling_mb"] - parts) < 0.5
    assert ceiling(0, 0, 2.0)["films_kept_mb"] < c["films_kept_mb"]


def test_one_session_of_large_films_stays_under_the_ceiling(tmp_path, tiny_model_dir, synthetic_data):
    require_chromium()
    from bench.memory_session import main

    root = weights_root(tmp_path, tiny_model_dir, "tiny")
    out = tmp_path / "memory.json"
    summary = main(["--films", "3", "--side", "3000", "--session-mpix", "2.5", "--source",
                    str(synthetic_data / "external"), "--weights-root", str(root), "--timeout", "240",
                    "--json", str(out), "--log", str(tmp_path / "streamlit.log")])
    assert summary["error"] is None and summary["settled"], summary
    cards = summary["cards"]
    assert cards["cards"] == 3 and cards["exception"] == 0 and cards["unreadable"] == 0
    assert cards["session_cap"] == 1                            # room for two films of FILM_SIDE a side
    rss = summary["server_rss_mb"]
    assert 0 < rss["baseline"] <= rss["peak"] and summary["within_ceiling"], summary
    assert json.loads(out.read_text())["films"] == 3
