"""Limits per client, not only per session (issue #19, items 6 and 10): the sign-in backoff and the film
rate limit follow the client's address across sessions (a page reload is a new session), never slow
another client, and the CLI can clear the sign-in backoff. AppTest drives the real app.py; the client's
address is what Streamlit reports as ``st.context.ip_address`` (None under AppTest), set here per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import streamlit as st
from conftest_app_helpers import ADMIN_PASSWORD, record_menu, set_password, sign_in  # noqa: F401 (autouse)
from streamlit.testing.v1 import AppTest
from test_app import errors, film, texts, unescaped, upload
from test_trust import APP, _clear_caches, _cli, events, nav_titles, open_app, weights  # noqa: F401 (fixture)

ADMIN_PAGES = ["Predict", "Triage", "Metrics", "Retrain", "Audit log"]


@pytest.fixture()
def client(monkeypatch):
    """Set the address the next sessions come from: ``client("10.0.0.1")``."""
    address = ["127.0.0.2"]
    monkeypatch.setattr(type(st.context), "ip_address", property(lambda self: address[0]))
    _clear_caches()
    yield lambda ip: address.__setitem__(0, ip)
    _clear_caches()


def session() -> AppTest:
    """A new browser session (a page reload): no model needed for signing in."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sidebar_errors(at: AppTest) -> list[str]:
    return [e.value for e in at.sidebar.error]


def warnings(at: AppTest) -> list[str]:
    return [unescaped(w.value).replace("**", "") for w in at.warning]


# =========================================================================== sign-in (item 6)

def test_failures_from_other_clients_never_refuse_the_admin(client):
    set_password()
    client("203.0.113.5")
    for _ in range(6):                       # six sessions, five wrong passwords each: 30 failures in a minute
        at = session()
        for _ in range(5):
            sign_in(at, "not the password at all")
    client("10.1.2.3")                       # the admin, at their own machine
    at = sign_in(session(), ADMIN_PASSWORD)
    assert nav_titles(at) == ADMIN_PAGES, sidebar_errors(at)
    results = [e["result"] for e in events() if e["action"] == "sign_in"]
    assert results[:5] == ["denied"] * 5 and set(results[5:-1]) == {"throttled"} and results[-1] == "succeeded"


def test_a_reload_keeps_the_backoff_until_the_cli_unlocks_it(client):
    set_password()
    client("203.0.113.5")
    at = session()
    for _ in range(5):
        sign_in(at, "not the password at all")
    after_fifth = sidebar_errors(at)
    at = sign_in(session(), ADMIN_PASSWORD)  # a reload: a new session from the same client
    assert nav_titles(at) == ["Predict", "Triage", "Metrics"]
    assert any("Too many failed attempts" in e for e in sidebar_errors(at))
    assert any("Wrong password" in e and "wait 30 s" in e for e in after_fifth)
    r = _cli("unlock-sign-in")
    assert r.returncode == 0 and "cleared for 1 client" in r.stdout, r.stderr
    at = sign_in(session(), ADMIN_PASSWORD)
    assert nav_titles(at) == ADMIN_PAGES, sidebar_errors(at)
    assert [(e["role"], e["result"]) for e in events() if e["action"] == "unlock_sign_in"] == [("cli", "succeeded")]
    assert b"203.0.113" not in Path(os.environ["PNEUMO_SIGNIN_DB"]).read_bytes()     # no address on disk


# =========================================================================== film rate limit (item 10)

def test_a_reload_gets_no_new_film_quota_but_another_client_does(weights, client, monkeypatch):
    monkeypatch.setenv("PNEUMO_RATE_FILMS", "2")
    monkeypatch.setenv("PNEUMO_RATE_WINDOW_S", "600")
    client("203.0.113.5")
    at = upload(open_app(), *[(f"{i}.png", film(40 + i)) for i in range(3)])
    assert len(at.metric) == 2
    again = upload(open_app(), *[(f"{i}.png", film(50 + i)) for i in range(2)])     # a reload, new films
    assert len(again.metric) == 0
    assert len([w for w in warnings(again) if w.startswith("Not analysed. Limit reached")]) == 2
    client("10.1.2.3")
    other = upload(open_app(), *[(f"{i}.png", film(50 + i)) for i in range(2)])
    assert len(other.metric) == 2 and not [w for w in warnings(other) if "Limit reached" in w]


def test_held_back_films_say_limit_reached_not_unreadable(weights, client, monkeypatch):
    monkeypatch.setenv("PNEUMO_RATE_FILMS", "1")
    monkeypatch.setenv("PNEUMO_RATE_WINDOW_S", "600")
    at = upload(open_app(), ("a.png", film(60)), ("b.png", film(61)))
    assert len(at.metric) == 1
    assert "could not be read" not in unescaped(texts(at)) and not errors(at)
    held = [w for w in warnings(at) if "Limit reached" in w]
    assert len(held) == 2 and "1 film(s) were held back" in held[0]
    assert held[1].startswith("Not analysed. Limit reached") and "Try again in" in held[1]
    refused = [e for e in events(actions=["predict"]) if e["result"] not in ("PNEUMONIA", "NORMAL")]
    assert [e["result"] for e in refused] == ["refused"]


def test_triage_counts_held_back_films_as_not_analysed_not_unreadable(weights, client, monkeypatch):
    from appkit.triage import TriageRow, worklist_csv
    from pneumo_core.model.predict import Record

    monkeypatch.setenv("PNEUMO_RATE_FILMS", "3")         # an unreadable file counts against the quota too
    at = open_app("triage")
    at = upload(at, ("notes.txt", b"not an image"), ("a.png", film(70)), ("b.png", film(71)), ("c.png", film(72)))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Analysed"] == "2" and metrics["Not analysed"] == "1" and metrics["Unreadable"] == "1"
    df = at.dataframe[0].value
    held = df[df.status == "not analysed"]
    assert len(held) == 1 and "Limit reached" in held.notes.iloc[0]
    csv = worklist_csv([TriageRow(Record("c.png", "error", message=held.notes.iloc[0]), False, "0" * 64,
                                  held_back=True)]).decode()
    assert csv.splitlines()[1].split(",")[1] == "not analysed"
