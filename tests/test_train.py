"""Training on synthetic data (CPU, seconds): the loop, the card, cancellation, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pneumo_core.errors import TrainingCancelled, WeightsUnavailableError
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.metrics import SENSITIVITY_FLOOR
from pneumo_core.model.network import CARD_FILE, WEIGHTS_FILE
from pneumo_core.model.store import load_model
from pneumo_core.model.train import fit, lr_at

FAST = dict(epochs=1, batch_size=8, image_size=32, device="cpu", bf16=False, channels_last=False, workers=1,
            max_images=16)


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 10, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


def test_fit_writes_a_complete_model_and_reports_progress(synthetic_data, tmp_path):
    reports = []
    res = fit(synthetic_data, tmp_path / "m", TrainConfig(**{**FAST, "epochs": 2}), progress=reports.append)
    assert [r.epoch for r in reports] == [1, 2]
    assert all(r.epochs == 2 and r.train_loss > 0 and "external_auc" in r.metrics for r in reports)
    card = json.loads((tmp_path / "m" / CARD_FILE).read_text())
    assert card["initialisation"]["kind"] == "scratch"
    assert card["input"]["size"] == 32
    assert len(card["data"]["fingerprint"]) == 64
    assert card["data"]["counts"]["train"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert card["training"]["selected"]["epoch"] in (1, 2)
    assert "external" in card["data"]["used_for"] and "never trained on" in card["data"]["used_for"]["external"]
    assert card["weights_check"]["fp16_vs_fp32_max_abs_prob_diff"] < 0.01
    assert load_model(tmp_path / "m").version == card["version"] == res.card["version"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # staging removed


def test_same_seed_same_weights(synthetic_data, tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        fit(synthetic_data, tmp_path / "a", TrainConfig(**FAST, seed=3))
        fit(synthetic_data, tmp_path / "b", TrainConfig(**FAST, seed=3))
    finally:
        torch.use_deterministic_algorithms(False)
    a, b = load_file(str(tmp_path / "a" / WEIGHTS_FILE)), load_file(str(tmp_path / "b" / WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cancel_leaves_nothing_behind(synthetic_data, tmp_path):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1          # let epoch 1 run, stop before epoch 2

    with pytest.raises(TrainingCancelled):
        fit(synthetic_data, tmp_path / "m", TrainConfig(**{**FAST, "epochs": 3}), should_stop=stop)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_an_existing_model(synthetic_data, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        fit(synthetic_data, tmp_path / "m", TrainConfig(**FAST))
    assert (tmp_path / "m" / "keep.txt").read_text() == "x"


def test_imagenet_without_cache_fails_before_any_work(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailableError, match="densenet121"):
        fit(synthetic_data, tmp_path / "m", TrainConfig(**FAST, init="imagenet"))
    assert not (tmp_path / "m").exists()


def test_flat_folder_gets_a_validation_split(synthetic_data, tmp_path):
    res = fit(synthetic_data / "train", tmp_path / "m", TrainConfig(**{**FAST, "max_images": None}))
    counts = res.card["data"]["counts"]
    assert set(counts) == {"train", "val"}
    assert counts["val"]["NORMAL"] >= 1 and counts["val"]["PNEUMONIA"] >= 1
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 48


def test_tiny_model_learns_the_synthetic_task(tiny_model_dir):
    card = json.loads((tiny_model_dir / CARD_FILE).read_text())
    assert set(card["operating_points"]) == {"balanced", "high_sensitivity"}
    assert card["operating_points"]["high_sensitivity"]["sensitivity"] >= SENSITIVITY_FLOOR
    assert card["default_operating_point"] == "high_sensitivity"     # a second-opinion tool screens by default
    assert card["temperature"] > 0
    assert {"val", "test", "external"} <= set(card["metrics"])
    assert (tiny_model_dir / "evaluation" / "external.json").is_file()
