"""Integrity of what a version and the audit log say: a model card changed after the version was made is
refused (CLI, registry and the running app), and the audit chain is keyed, so rewriting it without the key is
detected. Issue #19, items 3 and 9.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from conftest import active_weights_root, copy_model_version, synthetic_film, write_png
from streamlit.testing.v1 import AppTest

from pneumo_core.errors import AuditError, IntegrityKeyError, ModelLoadError
from pneumo_core.model.network import CARD_FILE
from pneumo_core.model.store import read_card, write_card
from pneumo_core.ops import audit, integrity, registry

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "weights"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pneumo_core", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=300)


def _edit_text(path: Path, old: str, new: str) -> None:
    """Change the card's bytes the way a person with a text editor would (no re-sealing)."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _threshold_text(card: dict) -> str:
    op = card["default_operating_point"]
    return json.dumps(card["operating_points"][op]["threshold"])


@pytest.fixture()
def model(tmp_path, tiny_model_dir) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    return folder


@pytest.fixture()
def film(tmp_path) -> Path:
    return write_png(tmp_path / "film.png", synthetic_film(np.random.default_rng(5), True, 80))


# =========================================================================== model cards

def test_a_card_edited_after_the_version_was_made_is_refused_by_the_cli(model, film, tmp_path):
    before = _cli("predict", "--model", str(model), "--no-audit", "--json", str(film))
    assert before.returncode == 0, before.stderr
    card = read_card(model)
    _edit_text(model / CARD_FILE, f'"threshold": {_threshold_text(card)}', '"threshold": 0.999')
    after = _cli("predict", "--model", str(model), "--no-audit", "--json", str(film))
    assert after.returncode == 1 and "Traceback" not in after.stderr
    assert "changed after the version was made" in after.stderr + after.stdout
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / label).mkdir(parents=True)
        shutil.copy(film, tmp_path / "data" / label / "f.png")
    evaluate = _cli("evaluate", "--data", str(tmp_path / "data"), "--model", str(model), "--json",
                    str(tmp_path / "e.json"))
    assert evaluate.returncode != 0 and "changed after the version was made" in evaluate.stderr + evaluate.stdout
    with pytest.raises(ModelLoadError, match="changed after"):
        read_card(model)


def test_the_temperature_is_covered_too_and_the_weights_check_still_applies(model):
    card = read_card(model)
    _edit_text(model / CARD_FILE, f'"temperature": {json.dumps(card["temperature"])}', '"temperature": 9.5')
    with pytest.raises(ModelLoadError, match="changed after"):
        read_card(model)
    write_card(model, card)                                                  # the writer's own path: accepted
    assert read_card(model)["temperature"] == card["temperature"]


def test_an_edited_copy_cannot_be_promoted_and_is_listed_with_the_reason(tmp_path, monkeypatch, tiny_model_dir):
    root = active_weights_root(tmp_path, monkeypatch, tiny_model_dir, name="v1")
    copy = copy_model_version(tiny_model_dir, root, "v2")
    card = read_card(copy)
    _edit_text(copy / CARD_FILE, f'"threshold": {_threshold_text(card)}', '"threshold": 0.92')
    with pytest.raises(ModelLoadError, match="changed after"):
        registry.promote("v2")
    assert registry.active_name() == "v1"
    listed = {v.name: v for v in registry.list_versions()}
    assert listed["v1"].problem is None
    assert "changed after" in listed["v2"].problem and listed["v2"].card.get("version") == "v2"
    result = _cli("models", "promote", "v2")
    assert result.returncode != 0 and "Traceback" not in result.stderr and registry.active_name() == "v1"


def test_an_unsealed_or_foreign_card_is_refused_until_an_admin_seals_it(model, tmp_path, film):
    card = json.loads((model / CARD_FILE).read_text())
    del card[integrity.SEAL_FIELD]
    (model / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="carries no seal"):
        read_card(model)
    foreign_key = tmp_path / "other-server.key"
    other = _cli("models", "seal", str(model), env={"PNEUMO_KEY_FILE": str(foreign_key)})
    assert other.returncode == 0, other.stderr
    with pytest.raises(ModelLoadError, match="sealed with another key"):
        read_card(model)
    sealed_here = _cli("models", "seal", str(model))
    assert sealed_here.returncode == 0, sealed_here.stderr
    assert read_card(model)["version"] == card["version"]
    assert [e["action"] for e in audit.events() if e["action"] == "seal_card"] == ["seal_card", "seal_card"]


def test_sealing_refuses_a_card_whose_weights_do_not_match(model):
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = _cli("models", "seal", str(model))
    assert result.returncode != 0 and "sha256 differs" in result.stderr and "Traceback" not in result.stderr


def test_the_shipped_card_is_accepted_without_a_key_and_refused_when_edited(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_KEY_FILE", str(tmp_path / "no-key-yet" / "integrity.key"))
    version = (SHIPPED / "ACTIVE").read_text().strip()
    assert version in integrity.SHIPPED_CARDS, "pin the shipped card's digest in integrity.SHIPPED_CARDS"
    assert read_card(SHIPPED / version)["version"] == version      # a fresh clone: no key, the pin accepts it
    assert not (tmp_path / "no-key-yet").exists()                   # reading never makes a key
    copy = tmp_path / version
    copy.mkdir()
    shutil.copy(SHIPPED / version / CARD_FILE, copy / CARD_FILE)
    card = read_card(copy)
    _edit_text(copy / CARD_FILE, f'"threshold": {_threshold_text(card)}', '"threshold": 0.92')
    with pytest.raises(ModelLoadError, match="differs from the card shipped"):
        read_card(copy)


def test_the_key_is_made_once_private_and_outside_the_weights(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "integrity.key"
    monkeypatch.setenv("PNEUMO_KEY_FILE", str(path))
    assert integrity.server_key() is None and not path.exists()
    key = integrity.server_key(create=True)
    assert len(key) == integrity.KEY_BYTES and integrity.server_key(create=True) == key
    assert path.stat().st_mode & 0o077 == 0
    assert integrity.derived_key("card") != integrity.derived_key("audit")
    path.write_text("not hex\n")
    with pytest.raises(IntegrityKeyError, match="cannot be read"):
        integrity.server_key()


def test_the_running_app_notices_a_card_edit_and_stops_serving_it(tmp_path, monkeypatch, tiny_model_dir):
    from test_app import errors, upload
    from test_app import film as app_film

    root = active_weights_root(tmp_path, monkeypatch, tiny_model_dir)
    st.cache_resource.clear()
    st.cache_data.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        at.run()
        upload(at, ("a.png", app_film(11)))
        assert not any("No model is available" in e for e in errors(at))
        card_path = root / "base" / CARD_FILE
        good = card_path.read_bytes()
        _edit_text(card_path, f'"threshold": {_threshold_text(json.loads(good))}', '"threshold": 0.999')
        at.run()
        assert any("No model is available" in e and "changed after" in e for e in errors(at)), errors(at)
        assert not at.metric
        card_path.write_bytes(good)
        at.run()
        assert not any("No model is available" in e for e in errors(at))
    finally:
        st.cache_resource.clear()
        st.cache_data.clear()


# =========================================================================== the audit chain

def _recompute_chain(db: Path, row_hash) -> None:
    """What an insider with the database but not the key does: rewrite every hash after an edit."""
    cols = audit.COLUMNS
    with sqlite3.connect(db) as conn:
        rows = [dict(zip(cols, r)) for r in conn.execute(f"SELECT {', '.join(cols)} FROM events ORDER BY id")]
        prev = audit.GENESIS
        for rec in rows:
            digest = row_hash(prev, [rec[c] for c in cols[1:13]])
            conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE id = ?", (prev, digest, rec["id"]))
            prev = digest


def _plain_sha256(prev, fields):
    payload = json.dumps([prev, *fields], separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def test_an_edited_audit_row_with_every_later_hash_recomputed_is_detected(tmp_path):
    db = tmp_path / "a.sqlite3"
    for i in range(5):
        audit.record("predict", role="viewer", result="PNEUMONIA", probability=0.9, input_sha256="ab" * 32, path=db)
    assert audit.verify_chain(db) == (5, None)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE events SET result = 'NORMAL', probability = 0.05 WHERE id = 3")
    _recompute_chain(db, _plain_sha256)
    assert audit.verify_chain(db) == (0, 1)          # the unkeyed rewrite fails from its first row
    wrong_key = b"\x01" * 32
    _recompute_chain(db, lambda prev, fields: audit._row_hash(wrong_key, prev, fields))
    assert audit.verify_chain(db) == (0, 1)
    result = _cli("audit", "verify", env={"PNEUMO_AUDIT_DB": str(db)})
    assert result.returncode == 1 and "breaks at event 1" in result.stderr and "another key" in result.stderr


def test_audit_verify_prints_the_head_and_needs_the_key(tmp_path, monkeypatch):
    db = tmp_path / "a.sqlite3"
    for _ in range(3):
        audit.record("predict", role="viewer", result="NORMAL", path=db)
    count, broken, newest = audit.chain_status(db)
    assert count == 3 and broken is None and len(newest) == 64
    result = _cli("audit", "verify", env={"PNEUMO_AUDIT_DB": str(db)})
    assert result.returncode == 0 and newest in result.stdout and "intact over 3 events" in result.stdout
    monkeypatch.setenv("PNEUMO_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(AuditError, match="key file .* is missing"):
        audit.verify_chain(db)
