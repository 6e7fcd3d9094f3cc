"""Trust: roles (local password and OIDC), the audit log, upload caps and the rate limit, temporary files,
and the weights' integrity check on every load. AppTest drives the real app.py; the CLI runs as a process.

Every test has its own audit log and secrets file (conftest's autouse fixture sets PNEUMO_AUDIT_DB and
PNEUMO_SECRETS), so nothing here reads or writes the checkout's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from conftest import active_weights_root, copy_model_version, synthetic_film
from conftest_app_helpers import ADMIN_PASSWORD, menu_titles, record_menu, set_password, sign_in  # noqa: F401
from streamlit.testing.v1 import AppTest
from test_app import SECRETS, dicom, errors, film, overlays, unescaped, upload

from appkit.frame import RETRIED_KEY
from appkit.limits import RateLimiter, UploadLimits, admit
from pneumo_core.errors import AuthError, ModelLoadError
from pneumo_core.model.network import CARD_FILE, WEIGHTS_FILE
from pneumo_core.model.store import load_model, write_card
from pneumo_core.ops import audit, registry
from pneumo_core.ops.auth import (
    ADMIN,
    VIEWER,
    admin_password_hash,
    hash_password,
    oidc_configured,
    read_secrets,
    role_for_user,
    set_admin_password,
    verify_password,
)
from pneumo_core.ops.throttle import Backoff, SignInThrottle, unlock

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
OIDC = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
        "client_id": "pneumo", "client_secret": "s", "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}


def _clear_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture()
def weights(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    """A weights root with a real copy of the tiny model active (copies, so a test may damage them)."""
    root = active_weights_root(tmp_path, monkeypatch, tiny_model_dir)
    _clear_caches()
    yield root
    _clear_caches()


def open_app(page: str | None = None, *, user: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    if user is not None:
        at.user = user
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def nav_titles(at: AppTest) -> list[str]:   # noqa: ARG001 (the last run is this session's)
    """The pages in this session's navigation menu (hidden ones, registered for a direct URL, left out)."""
    return menu_titles()


def events(**kw) -> list[dict]:
    return audit.events(newest_first=False, **kw)


def db_bytes() -> bytes:
    """The audit database and its WAL, as raw bytes (what a leak would be found in)."""
    path = audit.audit_path()
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


# =========================================================================== passwords and secrets

def test_password_is_stored_only_as_a_salted_argon2id_hash(tmp_path):
    a, b = hash_password(ADMIN_PASSWORD), hash_password(ADMIN_PASSWORD)
    assert a.startswith("$argon2id$") and b.startswith("$argon2id$") and a != b      # a fresh salt each time
    assert verify_password(a, ADMIN_PASSWORD) and not verify_password(a, ADMIN_PASSWORD + "!")
    with pytest.raises(AuthError, match="at least 12"):
        hash_password("short")
    with pytest.raises(AuthError, match="not a valid argon2"):
        verify_password("plaintext-password", "plaintext-password")


def test_set_admin_password_keeps_the_rest_of_the_secrets_file_and_is_private(tmp_path):
    path = tmp_path / "secrets.toml"
    path.write_text('# hospital SSO\n[auth]\nclient_id = "pneumo"\n\n[pneumo]\nadmin_emails = ["a@h.org"]\n')
    set_admin_password(ADMIN_PASSWORD, path)
    text = path.read_text()
    assert "# hospital SSO" in text and 'client_id = "pneumo"' in text and "a@h.org" in text
    assert ADMIN_PASSWORD not in text
    conf = read_secrets(path)
    assert verify_password(admin_password_hash(conf), ADMIN_PASSWORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.toml"]           # no temporary file left
    path.write_text("[pneumo\n")
    with pytest.raises(AuthError, match="cannot be read"):
        read_secrets(path)


def _cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pneumo_core", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def test_cli_sets_the_password_and_refuses_a_weak_one(tmp_path):
    path = tmp_path / "s.toml"
    weak = _cli("set-admin-password", "--secrets", str(path), "--password-stdin", stdin="short\n")
    assert weak.returncode == 1 and "at least 12" in weak.stderr and "Traceback" not in weak.stderr
    assert not path.exists()
    ok = _cli("set-admin-password", "--secrets", str(path), "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    assert verify_password(admin_password_hash(read_secrets(path)), ADMIN_PASSWORD)
    assert [e["action"] for e in events()] == ["set_admin_password"]


# =========================================================================== roles in pure form

def test_oidc_roles_come_from_the_admin_list_and_verified_addresses():
    admins = frozenset({"rad.lead@h.org"})
    assert role_for_user({"is_logged_in": False}, admins) is None
    assert role_for_user({"is_logged_in": True, "email": "Rad.Lead@H.org"}, admins) == ADMIN
    assert role_for_user({"is_logged_in": True, "email": "rad.lead@h.org", "email_verified": False}, admins) == VIEWER
    assert role_for_user({"is_logged_in": True, "email": "someone@h.org"}, admins) == VIEWER
    assert oidc_configured({"auth": OIDC}) and oidc_configured({"auth": {"microsoft": OIDC}})
    assert not oidc_configured({}) and not oidc_configured({"auth": {"cookie_secret": "x"}})


def test_sign_in_backoff_grows_per_client_and_never_slows_another(tmp_path):
    now = [1000.0]
    t = SignInThrottle(Backoff(free_tries=3, delay_s=10, max_delay_s=35, forget_s=3600),
                       path=tmp_path / "t.sqlite3", clock=lambda: now[0])
    for _ in range(3):
        assert t.attempt("ip:10.0.0.1") == 0                 # each try counts until it succeeds
    assert t.attempt("ip:10.0.0.1") == pytest.approx(10)     # the third failure: wait 10 s (not counted)
    assert t.attempt("ip:10.0.0.2") == 0                     # another client is not slowed at all
    now[0] += 10
    assert t.attempt("ip:10.0.0.1") == 0 and t.wait_s("ip:10.0.0.1") == pytest.approx(20)   # doubled
    now[0] += 20
    assert t.attempt("ip:10.0.0.1") == 0 and t.wait_s("ip:10.0.0.1") == pytest.approx(35)   # capped
    t.succeeded("ip:10.0.0.1")
    assert t.wait_s("ip:10.0.0.1") == 0
    assert b"10.0.0" not in (tmp_path / "t.sqlite3").read_bytes()        # clients are stored as keyed hashes
    assert unlock(tmp_path / "t.sqlite3") == 1 and t.attempt("ip:10.0.0.2") == 0
    now[0] += 3601                                           # a client's count is forgotten in time
    for _ in range(3):
        t.attempt("ip:10.0.0.3")
    now[0] += 3601
    assert t.wait_s("ip:10.0.0.3") == 0 and t.attempt("ip:10.0.0.3") == 0


# =========================================================================== roles in the app

def test_viewer_sees_no_admin_page_and_a_direct_open_is_refused(weights):
    """Issue #17, item 5: a viewer's direct URL (a bookmark, a typed /retrain) gets the page's "for administrators"
    refusal, written to the audit log, not Streamlit's "Page not found"; the menu still lists no admin page."""
    set_password()
    at = open_app()
    assert nav_titles(at) == ["Predict", "Triage", "Metrics"]
    for page in ("retrain", "audit"):           # a direct URL within the app: the page is found, and refuses
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert any("for administrators" in e for e in errors(at))
        assert not [b for b in at.button if b.key and b.key.startswith(("retrain_", "audit_"))] and not at.dataframe
        assert not at.get("download_button") and not at.title
        assert nav_titles(at) == ["Predict", "Triage", "Metrics"]
        assert any(t.key == "_admin_password" for t in at.sidebar.text_input)     # and where to sign in
    for page in ("retrain", "audit"):           # the page file run on its own, as a direct URL on a fresh server
        alone = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=180)
        alone.session_state[RETRIED_KEY] = True     # past the frame's rerun through app.py (which needs a server)
        alone.run()
        assert not alone.exception, [e.value for e in alone.exception]
        assert any("for administrators" in e for e in errors(alone))
        assert not [b for b in alone.button if b.key and b.key.startswith("retrain_")] and not alone.dataframe
    denied = [e for e in events() if e["action"] == "open_page"]
    assert [(e["role"], e["result"], e["detail"]) for e in denied] == [(VIEWER, "denied", "retrain"),
                                                                      (VIEWER, "denied", "audit")] * 2


def test_no_admin_sign_in_without_a_password_set(weights):
    at = open_app()
    assert not [t for t in at.text_input if t.key == "_admin_password"]
    assert any("No admin password is set" in c.value for c in at.sidebar.caption)


def test_wrong_passwords_are_refused_audited_and_throttled(weights):
    set_password()
    at = open_app()
    for _ in range(5):
        sign_in(at, "not the password at all")
        assert any("Wrong password" in e.value for e in at.sidebar.error)
    sign_in(at, ADMIN_PASSWORD)                          # right password, but too many failures just now
    assert any("Too many failed attempts" in e.value for e in at.sidebar.error)
    assert nav_titles(at) == ["Predict", "Triage", "Metrics"]
    results = [e["result"] for e in events() if e["action"] == "sign_in"]
    assert results == ["denied"] * 5 + ["throttled"]
    assert ADMIN_PASSWORD.encode() not in db_bytes() and b"not the password" not in db_bytes()


def test_admin_signs_in_sees_admin_pages_and_signs_out(weights):
    set_password()
    at = sign_in(open_app(), ADMIN_PASSWORD)
    assert nav_titles(at) == ["Predict", "Triage", "Metrics", "Retrain", "Audit log"]
    at.switch_page("pages/retrain.py").run()
    assert not errors(at) and any(b.key == "retrain_promote" for b in at.button)
    at.switch_page("pages/audit.py").run()
    assert not errors(at) and at.dataframe
    assert any("Hash chain intact" in c.value for c in at.caption)
    next(b for b in at.sidebar.button if b.key == "admin_logout").click().run()
    assert nav_titles(at) == ["Predict", "Triage", "Metrics"]
    assert [(e["action"], e["result"]) for e in events() if e["action"].startswith("sign")] == \
        [("sign_in", "succeeded"), ("sign_out", "succeeded")]


def retrain_as_admin_with_version_other(weights: Path, tiny_model_dir: Path) -> AppTest:
    """An admin on the Retrain page with a second version, "other", picked for promotion (the tiny model's
    thresholds rest on too few films, so the admin also ticks "promote anyway")."""
    copy_model_version(tiny_model_dir, weights, "other")
    set_password()
    at = sign_in(open_app(), ADMIN_PASSWORD)
    at.switch_page("pages/retrain.py").run()
    at.selectbox(key="retrain_version_pick").select("other").run()
    at.checkbox(key="retrain_promote_confirm").check().run()
    return at


def test_changing_the_password_ends_admin_sessions_and_their_pending_actions(weights, tiny_model_dir):
    at = retrain_as_admin_with_version_other(weights, tiny_model_dir)
    set_password("a completely new passphrase")         # e.g. a colleague rotated it from the CLI
    next(b for b in at.button if b.key == "retrain_promote").click().run()
    assert registry.active_name() == "base"             # the click did nothing
    assert any("admin session ended (password changed)" in w.value for w in at.sidebar.warning)
    assert nav_titles(at) == ["Predict", "Triage", "Metrics"]
    promote = [e for e in events() if e["action"] == "promote"]
    assert [(e["role"], e["result"]) for e in promote] == [(VIEWER, "denied")]


def test_audit_export_rechecks_the_role_when_it_runs(weights, monkeypatch):
    """The export is built when its button is clicked, on a server thread: the test keeps the button's
    callable and calls it after the password changed (or the admin signed out) on a page left open."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    exports: list = []
    real = MediaFileManager.add_deferred

    def keep(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        if str(file_name).startswith("audit-"):
            exports.append(data_callable)
        return real(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", keep)
    set_password()
    at = sign_in(open_app(), ADMIN_PASSWORD)
    at.switch_page("pages/audit.py").run()
    assert not errors(at) and exports
    assert b"sign_in" in exports[-1]()                    # still admin: the events are exported
    left_open = exports[-1]
    set_password("a completely new passphrase")          # rotated from the CLI while the page stays open
    with pytest.raises(PermissionError, match="password changed"):
        left_open()
    export = [(e["role"], e["result"], e["detail"]) for e in events() if e["action"] == "export_audit"]
    assert export[-1] == (VIEWER, "denied", "password changed")
    assert [r for r, *_ in export if r == ADMIN] and all(res == "succeeded" for r, res, _ in export if r == ADMIN)

    set_password()                                       # signing out ends a page left open too
    at = sign_in(open_app(), ADMIN_PASSWORD)
    at.switch_page("pages/audit.py").run()
    left_open = exports[-1]
    assert left_open()
    next(b for b in at.sidebar.button if b.key == "admin_logout").click().run()
    with pytest.raises(PermissionError, match="admin session ended"):
        left_open()
    assert [e["result"] for e in events() if e["action"] == "export_audit"][-1] == "denied"


def test_audit_table_is_readable_and_its_only_csv_is_the_logged_export(weights):
    """Issue #17, item 6: readable headers, blank empty cells, times to the second, the full sha256 and detail of
    the selected row, and no CSV download of the table's own beside the logged export."""
    import tomllib

    set_password()
    sha = hashlib.sha256(b"a film").hexdigest()
    long_detail = "job 20990101-000000-aaaaaa; base active; 12 epochs at 224 px; " + "x" * 120
    audit.record("predict", role=VIEWER, actor=VIEWER, result="PNEUMONIA", probability=0.8125, input_sha256=sha,
                 model_version="base", operating_point="balanced", threshold=0.5)
    audit.record("start_training", role=ADMIN, actor="local-admin", result="succeeded", detail=long_detail)
    at = sign_in(open_app(), ADMIN_PASSWORD)
    at.switch_page("pages/audit.py").run()
    table = at.dataframe[0].value
    assert list(table.columns) == ["Time (UTC)", "Role", "Account", "Action", "Result", "Model version",
                                   "Operating point", "Threshold", "Probability", "Input sha256", "Detail",
                                   "Session", "Event"]
    predict = table[table.Action == "predict"].iloc[0]
    assert predict["Input sha256"] == sha and predict.Probability == pytest.approx(0.8125)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", predict["Time (UTC)"])       # no microseconds
    assert predict.Detail == "" and table[table.Action == "start_training"].iloc[0]["Model version"] == ""
    assert not table.isin(["None"]).any().any()
    assert at.dataframe[0].proto.placeholder == ""                  # empty numbers blank too, not a grey "None"
    assert not at.code                                              # nothing selected yet
    at.session_state["audit_table"] = {"selection": {"rows": [list(table.Action).index("predict")], "columns": [],
                                                     "cells": []}}
    at.run()
    assert [c.value for c in at.code][:1] == [sha]                  # the full sha256 of the selected event
    at.session_state["audit_table"] = {"selection": {"rows": [list(table.Action).index("start_training")],
                                                     "columns": [], "cells": []}}
    at.run()
    assert any(c.value == long_detail for c in at.code)
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["disableDataExport"] is True             # the table's own CSV download is off
    assert [b.label for b in at.get("download_button")] == ["Export CSV"]


def test_admin_promote_and_rollback_are_audited_with_versions(weights, tiny_model_dir):
    at = retrain_as_admin_with_version_other(weights, tiny_model_dir)
    next(b for b in at.button if b.key == "retrain_promote").click().run()
    assert registry.active_name() == "other"
    next(b for b in at.button if b.key == "retrain_rollback").click().run()
    assert registry.active_name() == "base"
    acts = [(e["action"], e["role"], e["result"], e["model_version"], e["detail"]) for e in events()
            if e["action"] in ("promote", "rollback")]
    version = json.loads((weights / "other" / CARD_FILE).read_text())["version"]
    assert acts[0][:4] == ("promote", ADMIN, "succeeded", "other")
    assert acts[0][4].startswith("was base; confirmed despite:")
    assert acts[1][:4] == ("rollback", ADMIN, "succeeded", "base") and acts[1][4] == "was other"
    assert version                                                  # folder names are what the registry uses


def test_oidc_requires_sign_in_and_maps_admins_by_email(weights, tmp_path):
    Path(os.environ["PNEUMO_SECRETS"]).write_text(
        "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in OIDC.items()) + '[pneumo]\nadmin_emails = ["lead@h.org"]\n')
    at = open_app(user={"is_logged_in": False})
    assert any(b.key == "oidc_login" for b in at.button)
    assert not at.file_uploader and not at.metric               # nothing else until signed in
    at = open_app(user={"is_logged_in": True, "email": "resident@h.org"})
    assert at.file_uploader and nav_titles(at) == ["Predict", "Triage", "Metrics"]
    assert any("resident@h.org · viewer" in c.value for c in at.sidebar.caption)
    assert not [t for t in at.text_input if t.key == "_admin_password"]   # no local password with OIDC
    at = open_app(user={"is_logged_in": True, "email": "lead@h.org"})
    assert nav_titles(at)[-2:] == ["Retrain", "Audit log"]


# =========================================================================== the audit log

def test_audit_chain_detects_edits_and_deletions(tmp_path):
    db = tmp_path / "a.sqlite3"
    for i in range(5):
        audit.record("predict", role=VIEWER, result="NORMAL", probability=0.1 * i, input_sha256="ab" * 32, path=db)
    assert audit.verify_chain(db) == (5, None)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("UPDATE events SET result = 'PNEUMONIA' WHERE id = 3")
    assert audit.verify_chain(db) == (2, 3)
    db2 = tmp_path / "b.sqlite3"
    for i in range(4):
        audit.record("predict", role=VIEWER, result="NORMAL", path=db2)
    with sqlite3.connect(db2) as conn:
        conn.execute("DELETE FROM events WHERE id = 2")
    assert audit.verify_chain(db2) == (1, 3)


def test_audit_writes_are_atomic_and_concurrent_writers_keep_the_chain(tmp_path):
    db = tmp_path / "a.sqlite3"
    with pytest.raises(ValueError):          # one bad event: none of the batch is written
        audit.record_many([audit.event("triage", role=VIEWER, result="ok", input_sha256="0" * 64),
                           audit.event("triage", role=VIEWER, result="ok", input_sha256="not-a-sha")], db)
    assert audit.events(path=db) == []

    def writer(k: int) -> None:
        for i in range(25):
            audit.record("predict", role=VIEWER, session=f"s{k}", result="NORMAL", path=db)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audit.verify_chain(db) == (200, None)
    assert audit.actions(db) == ["predict"]
    csv = audit.to_csv(audit.events(path=db)).decode()
    assert csv.splitlines()[0] == ",".join(audit.COLUMNS) and len(csv.splitlines()) == 201


def test_audit_csv_cells_never_start_like_a_formula(tmp_path):
    """Issue #19, item 4: every CSV export, the audit log's too (an account name comes from the identity
    provider)."""
    import csv
    import io

    db = tmp_path / "audit.db"
    audit.record("predict", role=VIEWER, actor="=2+5", session="@SUM(1)", result="+cmd|' /C calc'!A0",
                 probability=0.25, detail="ok\r=1+1", path=db)
    rows = list(csv.DictReader(io.StringIO(audit.to_csv(audit.events(path=db)).decode(), newline="")))
    assert len(rows) == 1                                     # the CR inside the detail stays in its cell
    row = rows[0]
    assert (row["actor"], row["session"], row["result"]) == ("'=2+5", "'@SUM(1)", "'+cmd|' /C calc'!A0")
    assert row["detail"] == "ok\r=1+1"
    assert row["probability"] == "0.25" and audit.verify_chain(db) == (1, None)     # stored values unchanged


def test_app_predictions_are_audited_by_hash_never_by_name_or_header(weights):
    raw = dicom(synthetic_film(np.random.default_rng(3), True, 96))
    png = film(4)
    at = upload(open_app(), ("Doe_Jane_PID-123456.dcm", raw), ("Smith_John.png", png), ("junk.txt", b"not an image"))
    assert len(at.metric) == 2
    at.run()                                              # a rerun redraws; it is not a new event
    preds = [e for e in events() if e["action"] == "predict"]
    assert sorted(e["input_sha256"] for e in preds) == sorted(hashlib.sha256(d).hexdigest()
                                                              for d in (raw, png, b"not an image"))
    ok = [e for e in preds if e["result"] in ("PNEUMONIA", "NORMAL")]
    assert len(ok) == 2 and all(e["operating_point"] == "high_sensitivity" and 0 <= e["probability"] <= 1
                                and e["threshold"] is not None and e["model_version"] for e in ok)
    assert [e["result"] for e in preds if e["result"] not in ("PNEUMONIA", "NORMAL")] == ["error"]
    blob = db_bytes()
    for secret in (*SECRETS, "Doe_Jane", "Smith_John", "PID-123456", "junk.txt", "003Y"):
        assert secret.encode() not in blob, secret


def test_triage_batch_is_audited_one_event_per_film(weights):
    files = [(f"f{i}.png", film(10 + i, i % 2 == 0)) for i in range(4)]
    at = open_app("triage")
    upload(at, *files)
    tri = [e for e in events() if e["action"] == "triage"]
    assert len(tri) == 4 and {e["input_sha256"] for e in tri} == {hashlib.sha256(d).hexdigest() for _, d in files}
    assert audit.verify_chain() == (len(events()), None)


def test_cli_predict_is_audited_and_survives_an_unwritable_log(tmp_path, tiny_model_dir):
    f = tmp_path / "Doe_Jane.png"
    f.write_bytes(film(5))
    r = _cli("predict", "--model", str(tiny_model_dir), "--json", str(f), str(tmp_path / "missing.png"))
    assert r.returncode == 0, r.stderr
    preds = events(actions=["predict"])
    assert [(e["role"], e["input_sha256"]) for e in preds] == [("cli", hashlib.sha256(f.read_bytes()).hexdigest()),
                                                              ("cli", None)]
    assert b"Doe_Jane" not in db_bytes()
    r = _cli("predict", "--model", str(tiny_model_dir), "--no-audit", "--json", str(f))
    assert r.returncode == 0 and len(events(actions=["predict"])) == 2
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = _cli("predict", "--model", str(tiny_model_dir), "--json", str(f),
             env={"PNEUMO_AUDIT_DB": str(blocker / "audit.sqlite3")})
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "ok"
    assert "audit log" in r.stderr and "Traceback" not in r.stderr


def test_cli_audit_export_and_verify(tmp_path):
    for i in range(3):
        audit.record("predict", role="cli", result="NORMAL", probability=0.2)
    out = tmp_path / "audit.csv"
    r = _cli("audit", "export", "--out", str(out))
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 4        # header + 3 (export logged after)
    assert _cli("audit", "verify").returncode == 0
    with sqlite3.connect(audit.audit_path()) as conn:
        conn.execute("UPDATE events SET probability = 0.9 WHERE id = 2")
    r = _cli("audit", "verify")
    assert r.returncode == 1 and "breaks at event 2" in r.stderr


def test_admin_actions_are_refused_while_the_audit_log_cannot_be_written(weights, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    at = retrain_as_admin_with_version_other(weights, tiny_model_dir)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(blocker / "audit.sqlite3"))
    next(b for b in at.button if b.key == "retrain_promote").click().run()
    assert registry.active_name() == "base"
    assert any("audit log cannot be written" in e for e in errors(at))


# =========================================================================== uploads

def test_admission_caps_files_and_batches():
    lim = UploadLimits(max_file_bytes=100, max_files=4, max_batch_bytes=250, rate_films=10, rate_window_s=60)
    a = admit([50, 150, 90, 90, 60, 10], lim)
    assert a.accepted == (0, 2, 3, 5) and set(a.refused) == {1, 4}
    assert "too large" in a.refused[1] and "MB per batch" in a.refused[4]
    assert a.notices and "separate batch" in a.notices[0]
    b = admit([1] * 6, lim)
    assert b.accepted == (0, 1, 2, 3) and all("4 films per batch" in why for why in b.refused.values())
    assert admit([100, 100], lim).refused == {} and not admit([100, 100], lim).notices


def test_rate_limiter_is_a_sliding_window():
    now = [0.0]
    r = RateLimiter(limit=3, window_s=10, clock=lambda: now[0])
    assert r.take(2) == 2 and r.take(2) == 1 and r.take(1) == 0
    assert r.retry_after() == pytest.approx(10)
    now[0] = 10.0
    assert r.retry_after() == 0 and r.take(5) == 3


def test_oversized_upload_is_refused_with_a_clear_message(weights, monkeypatch):
    monkeypatch.setenv("PNEUMO_MAX_FILE_MB", "1")
    big = film(6, size=96) + b"\0" * (2 * 2**20)
    at = upload(open_app(), ("big.png", big), ("ok.png", film(7)))
    assert any("Not analysed" in w and "too large" in w and "1 MB per file" in w
               for w in (unescaped(w.value) for w in at.warning))
    assert len(at.metric) == 1 and not errors(at)


def test_session_rate_limit_defers_films_until_the_window_has_room(weights, monkeypatch):
    monkeypatch.setenv("PNEUMO_RATE_FILMS", "2")
    monkeypatch.setenv("PNEUMO_RATE_WINDOW_S", "3")
    at = upload(open_app(), *[(f"{i}.png", film(20 + i)) for i in range(3)])
    assert len(at.metric) == 2
    assert any("Limit reached" in w.value and "held back" in w.value for w in at.warning)
    assert not errors(at)
    at.run()                                               # the same films: not charged again, still limited
    assert len(at.metric) == 2
    time.sleep(3.2)
    at.run()
    assert len(at.metric) == 3 and not errors(at)
    other = upload(open_app(), *[(f"{i}.png", film(20 + i)) for i in range(3)])   # no address: its own limit
    assert len(other.metric) == 2


def test_no_temporary_file_is_left_by_uploads_even_bad_ones(weights, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))
    raw = dicom(synthetic_film(np.random.default_rng(8), False, 96))
    at = upload(open_app(), ("a.dcm", raw), ("b.png", film(9)), ("cut.png", film(9)[:150]), ("x.bin", os.urandom(999)))
    assert len(at.metric) == 2 and len(errors(at)) == 2
    at.switch_page("pages/triage.py").run()
    upload(at, ("a.dcm", raw), ("cut.png", film(9)[:150]))
    assert list(scratch.iterdir()) == []


# =========================================================================== integrity

def test_a_card_without_a_weights_sha256_is_refused(tmp_path, tiny_model_dir):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    card = json.loads((folder / CARD_FILE).read_text())
    del card["weights"]["sha256"]
    write_card(folder, card)
    with pytest.raises(ModelLoadError, match="records no sha256"):
        load_model(folder)


@pytest.mark.parametrize("target", [WEIGHTS_FILE, "ood.safetensors"])
def test_a_file_changed_on_disk_stops_being_served_at_the_next_run(weights, target, synthetic_data):
    if target == "ood.safetensors":
        from pneumo_core.safety.fitting import GuardFit, fit_guard

        fit_guard(weights / "base", synthetic_data, GuardFit(copies=0, negatives=False, workers=1))
        _clear_caches()
    at = upload(open_app(), ("a.png", film(11)))
    assert not any("No model is available" in e for e in errors(at))
    path = weights / "base" / target
    good = path.read_bytes()
    path.write_bytes(good[:-64] + bytes(64))              # same size, different content
    at.run()
    assert any("No model is available" in e and "sha256 differs" in e for e in errors(at)), errors(at)
    assert not at.metric and not overlays(at)
    path.write_bytes(good)
    at.run()
    assert not any("No model is available" in e for e in errors(at))


def test_an_unreadable_secrets_file_closes_the_app(weights):
    Path(os.environ["PNEUMO_SECRETS"]).write_text("[auth\nclient_id = 'x'\n")
    at = open_app()
    assert any("settings are unreadable" in e for e in errors(at))
    assert not at.file_uploader and not at.metric
