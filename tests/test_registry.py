"""The model registry: versions, the ACTIVE pointer, promote/rollback with history, integrity checks,
and the ``models`` CLI. Versions are copies of conftest's tiny model in a temporary weights folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_model_version, synthetic_film, write_png

from pneumo_core.cli.main import main
from pneumo_core.errors import ModelLoadError, RegistryError
from pneumo_core.model.network import CARD_FILE, WEIGHTS_FILE
from pneumo_core.model.store import load_model
from pneumo_core.ops import registry


def tamper(folder: Path, *, truncate: bool = False) -> None:
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    if truncate:
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF              # one flipped byte inside a tensor: still loads without the check
        weights.write_bytes(bytes(data))


@pytest.fixture()
def root(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    root = tmp_path / "weights"
    root.mkdir()
    for name in ("v1", "v2"):
        copy_model_version(tiny_model_dir, root, name)
    (root / "ACTIVE").write_text("v1\n")
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    return root


@pytest.fixture()
def film(tmp_path) -> Path:
    return write_png(tmp_path / "film.png", synthetic_film(np.random.default_rng(3), True, 80))


def predicted_version(film: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["predict", "--json", str(film)]) == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert record["status"] == "ok"
    return record["model_version"]


def test_list_versions_marks_the_active_one_and_reads_metrics_from_cards(root, tiny_model_dir):
    (root / ".jobs").mkdir()                                  # never a version
    (root / "half").mkdir()                                   # no card: not a version
    versions = registry.list_versions(root)
    assert sorted(v.name for v in versions) == ["v1", "v2"]
    assert [v.name for v in versions if v.active] == ["v1"]
    card = json.loads((tiny_model_dir / CARD_FILE).read_text())
    expected = card["metrics"]["external"]["balanced"]
    auc, ci = versions[0].metric("external")
    assert auc == pytest.approx(expected["auc"]) and ci == pytest.approx(expected["ci95"]["auc"])
    assert all(v.problem is None for v in versions)


def test_models_list_cli(root, tiny_model_dir, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    active_line = next(line for line in out.splitlines() if line.startswith("*"))
    assert "v1" in active_line and "v2" not in active_line
    auc = json.loads((tiny_model_dir / CARD_FILE).read_text())["metrics"]["external"]["balanced"]["auc"]
    assert f"{auc:.3f}" in active_line
    assert main(["models", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["name"]: r["active"] for r in rows} == {"v1": True, "v2": False}
    assert rows[0]["auc"]["external"] == pytest.approx(auc)


def test_promote_and_rollback_switch_what_predict_uses(root, film, capsys):
    assert predicted_version(film, capsys) == "v1"
    assert main(["models", "promote", "v2"]) == 0
    assert (root / "ACTIVE").read_text().strip() == "v2"
    assert predicted_version(film, capsys) == "v2"
    assert registry.read_history(root)["previous"] == ["v1"]

    assert main(["models", "rollback"]) == 0
    assert "active model: v1 (was v2)" in capsys.readouterr().out
    assert predicted_version(film, capsys) == "v1"
    events = registry.read_history(root)["events"]
    assert [(e["action"], e["from"], e["to"]) for e in events] == [("promote", "v1", "v2"), ("rollback", "v2", "v1")]

    assert main(["models", "rollback"]) == 1                  # nothing earlier than v1 was ever active
    assert "Nothing to roll back to" in capsys.readouterr().err
    assert (root / "ACTIVE").read_text().strip() == "v1"
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")]    # atomic writes left no temp files


def test_rollback_walks_back_and_skips_broken_versions(root, tiny_model_dir):
    copy_model_version(tiny_model_dir, root, "v3")
    registry.promote("v2", root)
    registry.promote("v3", root)
    assert registry.read_history(root)["previous"] == ["v1", "v2"]
    tamper(root / "v2")
    assert registry.rollback(root) == "v1"                    # v2 is skipped: its weights changed
    assert registry.active_name(root) == "v1"


def test_promote_refuses_unknown_and_tampered_versions(root, capsys):
    for bad in ("nope", "../v2", ".jobs", ""):
        with pytest.raises(RegistryError):
            registry.promote(bad, root)
    tamper(root / "v2")
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        registry.promote("v2", root)
    assert main(["models", "promote", "v2"]) == 1
    assert "changed or truncated" in capsys.readouterr().err
    assert registry.active_name(root) == "v1"
    [v2] = [v for v in registry.list_versions(root, verify=True) if v.name == "v2"]
    assert "sha256" in v2.problem


@pytest.mark.parametrize("truncate", [False, True])
def test_tampered_or_truncated_active_weights_are_refused_with_a_clear_message(root, film, capsys, truncate):
    tamper(root / "v1", truncate=truncate)
    with pytest.raises(ModelLoadError, match="do not match their card"):
        load_model(root / "v1")
    assert main(["predict", "--json", str(film)]) == 1
    err = capsys.readouterr().err
    assert "Refusing to use it" in err and "Traceback" not in err


def test_add_version_arrives_whole_never_active_and_never_overwrites(root, tiny_model_dir, tmp_path):
    incoming = copy_model_version(tiny_model_dir, tmp_path, "v1")      # its card says v1, which is taken
    name = registry.add_version(incoming, root)
    assert name == "v1-2" and not incoming.exists()
    assert json.loads((root / name / CARD_FILE).read_text())["version"] == "v1-2"
    assert load_model(root / name).version == "v1-2"            # weights untouched: the sha still matches
    assert registry.active_name(root) == "v1"
    broken = copy_model_version(tiny_model_dir, tmp_path, "v9")
    tamper(broken)
    with pytest.raises(ModelLoadError):
        registry.add_version(broken, root)
    assert not (root / "v9").exists()


def test_versions_made_on_a_server_are_ignored_by_git_and_the_shipped_one_is_not():
    """Issue #17, item 7: a job's new version (and the promote history) never show up as untracked files; the
    shipped version and weights/ACTIVE stay tracked."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(path: str) -> bool:
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=root, capture_output=True)
        assert r.returncode in (0, 1), r.stderr
        return r.returncode == 0

    from pneumo_core.ops.integrity import SHIPPED_CARDS

    [shipped] = SHIPPED_CARDS
    for path in (f"weights/{shipped}/model.safetensors", f"weights/{shipped}/card.json",
                 f"weights/{shipped}/evaluation/val.json", "weights/ACTIVE"):
        assert not ignored(path), path
    for path in ("weights/20990101-000000/model.safetensors", "weights/20990101-000000/card.json",
                 "weights/active_history.json", "weights/.jobs/x/state.json", "weights/.registry.lock",
                 "weights/.incoming-1/card.json"):
        assert ignored(path), path
