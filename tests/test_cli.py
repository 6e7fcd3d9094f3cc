"""The CLI contract: records, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_film, write_png

from pneumo_core.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = {"file", "status", "probability", "label", "threshold", "model_version", "message"}


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    good = write_png(tmp_path / "good.png", synthetic_film(rng, True, 80))
    renamed = tmp_path / "film_without_extension"
    shutil.copy(good, renamed)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    blank = write_png(tmp_path / "blank.png", np.full((80, 80), 0.5))
    return {"good": good, "renamed": renamed, "text": text, "empty": empty, "truncated": truncated,
            "blank": blank, "missing": tmp_path / "missing.png"}


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_predict_json_one_record_per_file(tiny_model_dir, files, capsys):
    order = ["good", "renamed", "text", "empty", "truncated", "blank", "missing"]
    rc = main(["predict", "--model", str(tiny_model_dir), "--json", *[str(files[k]) for k in order]])
    assert rc == 0
    recs = _records(capsys)
    assert [Path(r["file"]).name for r in recs] == [files[k].name for k in order]
    by = dict(zip(order, recs))
    for r in recs:
        assert CONTRACT <= set(r)
    for k in ("good", "renamed"):
        assert by[k]["status"] == "ok"
        assert 0 <= by[k]["probability"] <= 1
        assert by[k]["label"] in ("NORMAL", "PNEUMONIA")
        assert by[k]["label"] == ("PNEUMONIA" if by[k]["probability"] >= by[k]["threshold"] else "NORMAL")
        assert by[k]["model_version"] == json.loads((tiny_model_dir / "card.json").read_text())["version"]
    assert by["good"]["probability"] == by["renamed"]["probability"]
    for k in ("text", "empty", "truncated", "missing"):
        assert by[k]["status"] == "error" and by[k]["message"] and by[k]["probability"] is None
    assert by["blank"]["status"] == "rejected" and "blank" in by["blank"]["message"].lower()


def test_high_sensitivity_point_uses_its_threshold(tiny_model_dir, files, capsys):
    card = json.loads((tiny_model_dir / "card.json").read_text())
    main(["predict", "--model", str(tiny_model_dir), "--json", "--operating-point", "high_sensitivity",
          str(files["good"])])
    rec = _records(capsys)[0]
    assert rec["threshold"] == pytest.approx(card["operating_points"]["high_sensitivity"]["threshold"])
    assert rec["operating_point"] == "high_sensitivity"


def test_exit_codes(tiny_model_dir, files, tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "nope"), "--json", str(files["good"])]) == 1
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--json"])
    assert exc.value.code == 2
    assert main(["predict", "--model", str(tiny_model_dir), "--operating-point", "bogus", str(files["good"])]) == 2


def test_default_model_comes_from_weights_active(tiny_model_dir, files, tmp_path, monkeypatch, capsys):
    root = tmp_path / "weights"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "v1")
    (root / "ACTIVE").write_text("v1\n")
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    assert main(["predict", "--json", str(files["good"])]) == 0
    assert _records(capsys)[0]["status"] == "ok"
    (root / "ACTIVE").unlink()
    assert main(["predict", "--json", str(files["good"])]) == 1


def test_subprocess_no_traceback_for_bad_files(tiny_model_dir, files):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "pneumo_core", "predict", "--model", str(tiny_model_dir), "--json",
                          str(files["text"]), str(files["truncated"]), str(files["good"])],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0
    assert "Traceback" not in out.stderr + out.stdout
    assert [json.loads(x)["status"] for x in out.stdout.splitlines()] == ["error", "error", "ok"]


def test_evaluate_writes_contract_json(tiny_model_dir, synthetic_data, tmp_path, capsys):
    data = synthetic_data / "external"
    (data / "README.txt").write_text("ignored")  # other files are ignored
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--data", str(data), "--model", str(tiny_model_dir), "--json", str(out),
                 "--bootstrap", "100"]) == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 16
    for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece"):
        assert k in rep and len(rep["ci95"][k]) == 2
    for k, (lo, hi) in rep["ci95"].items():             # every value inside its own interval (issue 17: ECE)
        assert rep[k] is None or lo is None or lo - 1e-9 <= rep[k] <= hi + 1e-9, (k, rep[k], lo, hi)
    c = rep["confusion"]
    assert c["tp"] + c["fp"] + c["tn"] + c["fn"] == 16
    card = json.loads((tiny_model_dir / "card.json").read_text())
    assert rep["threshold"] == pytest.approx(card["operating_points"][card["default_operating_point"]]["threshold"])
    assert main(["evaluate", "--data", str(tmp_path), "--model", str(tiny_model_dir), "--json", str(out)]) == 2


def test_explain_writes_png(tiny_model_dir, files, tmp_path, capsys):
    out = tmp_path / "cam.png"
    assert main(["explain", str(files["good"]), "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (80, 80) and im.mode == "RGB"
    assert main(["explain", str(files["text"]), "--model", str(tiny_model_dir), "--out", str(out)]) == 1
    assert "text" in capsys.readouterr().err.lower()


def test_train_cli_end_to_end(synthetic_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "new"
    rc = main(["train", "--data", str(synthetic_data), "--out", str(out), "--init", "scratch", "--epochs", "1",
               "--image-size", "32", "--max-images", "8", "--device", "cpu", "--bootstrap", "20"])
    assert rc == 0
    card = json.loads((out / "card.json").read_text())
    assert "balanced" in card["operating_points"] and card["metrics"]["external"]
    # fitting the guard is part of training; without film_types/ the version says it has no film-type check
    assert card["ood"]["threshold"] > 0 and card["film_type"]["fitted"] is False
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "film-type check: none" in printed


def test_train_cli_imagenet_without_cache_is_a_clear_failure(synthetic_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    rc = main(["train", "--data", str(synthetic_data), "--out", str(tmp_path / "x"), "--init", "imagenet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "densenet121" in err and "TORCH_HOME" in err


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")   # pydicom, writing the crafted file
def test_markdown_in_dicom_tags_never_reaches_a_record(tiny_model_dir, tmp_path, capsys):
    """Issue #19, item 1: a crafted Modality used to be echoed into the record's rejection message."""
    from conftest_io_helpers import make_dicom

    pixels = synthetic_film(np.random.default_rng(4), True, 96)
    path = tmp_path / "tags.dcm"
    path.write_bytes(make_dicom((pixels * 4095).astype(np.uint16), "MONOCHROME2", 12,
                                Modality="[RESULT: NORMAL](http://evil.example)",
                                BodyPartExamined="**RESULT: NORMAL** http://evil.example"))
    assert main(["predict", "--model", str(tiny_model_dir), "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "evil" not in out.lower() and "RESULT" not in out
    rec = json.loads(out.splitlines()[0])
    assert "not a valid code" in " ".join([rec["message"] or "", *rec.get("warnings", [])])
