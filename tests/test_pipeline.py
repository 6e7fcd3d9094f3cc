"""Making a version the one way (model.pipeline.train_version): from the CLI and as a job would (CPU, seconds)."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import pytest

from pneumo_core.cli.main import main
from pneumo_core.errors import TrainingCancelled
from pneumo_core.model import pipeline
from pneumo_core.model.compare import VERDICTS
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.network import CARD_FILE
from pneumo_core.model.pipeline import COMPARISON_FILE, PHASES, train_version
from pneumo_core.safety.fitting import GuardFit, fit_guard
from pneumo_core.safety.guard import OOD_FILE

FAST = dict(epochs=1, batch_size=8, image_size=32, device="cpu", bf16=False, channels_last=False, workers=1,
            max_images=16)


@pytest.fixture()
def quick_guard(monkeypatch) -> None:
    """The guard fitted for real, without measuring it on the built-in non-chest images (minutes of decoding on
    a small CPU; test_cli's end-to-end training keeps them)."""
    monkeypatch.setattr(pipeline, "fit_guard", functools.partial(fit_guard, options=GuardFit(negatives=False)))


@pytest.fixture()
def views(monkeypatch) -> list[Path]:
    """The temporary folders made during the test (the carved-split view), so a test can see them removed."""
    made: list[Path] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs) -> str:
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


def test_cli_version_of_data_without_val_has_its_guard(synthetic_data, tmp_path, views, quick_guard, capsys):
    out = tmp_path / "new"
    rc = main(["train", "--data", str(synthetic_data / "train"), "--out", str(out), "--epochs", "1",
               "--image-size", "32", "--max-images", "16", "--device", "cpu", "--bootstrap", "20"])
    assert rc == 0
    card = json.loads((out / CARD_FILE).read_text())
    assert (out / OOD_FILE).is_file() and card["ood"]["threshold"] > 0
    assert card["film_type"]["fitted"] is False and card["film_type"]["why"]
    assert card["calibration"]["fitted_on"] == "val/" and "val" in card["metrics"]   # on the carved split
    assert card["data"]["source"] == "train"                 # trained on the data as given, not on the view
    assert [p.name[:12] for p in views] == ["pneumo-view-"] and not views[0].exists()    # the view is gone
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    printed = capsys.readouterr().out
    assert "film-type check: none" in printed and f"model written to {out}" in printed


def test_job_version_is_compared_with_the_active_one_and_reports_its_phases(synthetic_data, tiny_model_dir,
                                                                             tmp_path, quick_guard):
    phases, steps, reports = [], [], []
    card = train_version(synthetic_data, tmp_path / "model", TrainConfig(**FAST), progress=reports.append,
                         on_phase=phases.append, log=steps.append, n_boot=20,
                         compare_with={"path": str(tiny_model_dir), "version": "tiny"})
    assert phases == list(PHASES)
    assert [r.epoch for r in reports] == [1]
    assert "fitting the out-of-distribution guard and the film-type check" in steps
    assert "evaluating the active model on external/" in steps
    assert card["ood"]["threshold"] > 0 and card["temperature"] > 0
    comparison = json.loads((tmp_path / "model" / COMPARISON_FILE).read_text())
    assert comparison["candidate_version"] == card["version"] and comparison["active_version"] == "tiny"
    assert comparison["decision_split"] == "test"            # not used to fit the new model
    for split in ("val", "test", "external"):
        paired = comparison["splits"][split]["paired"]
        assert paired["verdict"] in VERDICTS and paired["n_normal"] == paired["n_pneumonia"] == 8
        assert comparison["splits"][split]["active"] and comparison["splits"][split]["candidate"]


def test_without_an_active_version_the_comparison_has_the_new_model_only(synthetic_data, tmp_path):
    phases = []
    train_version(synthetic_data, tmp_path / "model", TrainConfig(**FAST), on_phase=phases.append, guard=False,
                  n_boot=20, compare_with={})
    assert phases == ["preparing", "training", "calibrating", "comparing"]     # a skipped phase is not announced
    comparison = json.loads((tmp_path / "model" / COMPARISON_FILE).read_text())
    assert comparison["active_version"] is None and "decision_split" not in comparison
    assert all(set(s) == {"candidate"} for s in comparison["splits"].values())


def test_cancel_after_training_leaves_nothing(synthetic_data, tmp_path, views):
    phases = []
    with pytest.raises(TrainingCancelled):                   # asked as calibration is about to begin
        train_version(synthetic_data / "train", tmp_path / "model", TrainConfig(**FAST), on_phase=phases.append,
                      should_stop=lambda: _trained(tmp_path))
    assert phases == ["preparing", "training"]
    assert list(tmp_path.iterdir()) == [] and len(views) == 1 and not views[0].exists()


def _trained(tmp_path) -> bool:
    """Whether fit() has written its model into the pipeline's staging folder (the training is over)."""
    return any((p / CARD_FILE).is_file() for p in tmp_path.glob(".model.partial-*"))


def test_a_failure_leaves_no_output_folder(synthetic_data, tmp_path, views, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the guard could not be fitted")

    monkeypatch.setattr(pipeline, "fit_guard", broken)
    view = tmp_path / "view"
    with pytest.raises(RuntimeError, match="guard"):
        train_version(synthetic_data / "train", tmp_path / "model", TrainConfig(**FAST), calibrate=False,
                      view_dir=view)
    assert (view / "val" / "NORMAL").is_dir()                # the caller's view is the caller's to remove
    assert [p.name for p in tmp_path.iterdir()] == ["view"] and views == []


def test_an_existing_version_or_a_missing_film_types_folder_is_refused_before_training(synthetic_data, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("x")
    phases = []
    with pytest.raises(FileExistsError):
        train_version(synthetic_data, tmp_path / "model", TrainConfig(**FAST), on_phase=phases.append)
    with pytest.raises(FileNotFoundError, match="film-types"):
        train_version(synthetic_data, tmp_path / "other", TrainConfig(**FAST), on_phase=phases.append,
                      film_types=tmp_path / "absent")
    assert phases == [] and (tmp_path / "model" / "keep.txt").read_text() == "x"
    assert not (tmp_path / "other").exists()
