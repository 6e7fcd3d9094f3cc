"""The model recipe's machinery on tiny synthetic runs (CPU, seconds): resume from a checkpoint,
ensembles (card, sha256 checks, logit averaging, guard and Grad-CAM), candidates from snapshots,
and the Grad-CAM faithfulness comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pneumo_core.errors import ModelLoadError, TrainingCancelled
from pneumo_core.ingest.preprocess import to_batch
from pneumo_core.ingest.read import read_xray
from pneumo_core.model import cam_eval
from pneumo_core.model import compare as cand
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.explain import explain, target_layers
from pneumo_core.model.network import CARD_FILE, Ensemble, build_densenet121, default_input_spec
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import load_model, save_ensemble, write_card
from pneumo_core.model.train import fit
from pneumo_core.ops.registry import verify_version
from pneumo_core.safety.features import forward_with_taps

FAST = dict(batch_size=8, image_size=32, device="cpu", bf16=False, channels_last=False, workers=1,
            max_images=16, ema_decay=0.9)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- checkpoint and resume

def test_a_stopped_run_resumes_where_it_stopped_and_ends_as_an_unbroken_run(synthetic_data, tmp_path):
    cfg = TrainConfig(**FAST, epochs=3, seed=5)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        whole = fit(synthetic_data, tmp_path / "whole", cfg, checkpoint_dir=tmp_path / "ck-whole")
        calls = []
        with pytest.raises(TrainingCancelled):     # stopped before epoch 3 (a crash or a cancel)
            fit(synthetic_data, tmp_path / "split", cfg, checkpoint_dir=tmp_path / "ck",
                should_stop=lambda: calls.append(1) or len(calls) > 2)
        assert not (tmp_path / "split").exists() and (tmp_path / "ck" / "last.pt").is_file()
        epochs_run = []
        resumed = fit(synthetic_data, tmp_path / "split", cfg, checkpoint_dir=tmp_path / "ck",
                      progress=lambda r: epochs_run.append(r.epoch))
    finally:
        torch.use_deterministic_algorithms(False)
    assert epochs_run == [3]                                       # only the missing epoch was trained
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in whole.history])
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


def test_a_checkpoint_of_other_settings_is_refused(synthetic_data, tmp_path):
    fit(synthetic_data, tmp_path / "a", TrainConfig(**FAST, epochs=1), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match="other settings.*lr"):
        fit(synthetic_data, tmp_path / "b", TrainConfig(**FAST, epochs=1, lr=5e-4), checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "b").exists()


def test_snapshots_of_the_last_epochs_are_kept_and_load(synthetic_data, tmp_path):
    fit(synthetic_data, tmp_path / "m", TrainConfig(**FAST, epochs=3), checkpoint_dir=tmp_path / "ck",
        keep_snapshots=2)
    snaps = cand.snapshots(tmp_path / "ck")
    assert set(snaps) == {(2, "raw"), (2, "ema"), (3, "raw"), (3, "ema")}
    net = cand.load_snapshot(snaps[(3, "ema")])
    assert not net.training
    # SWA of one snapshot is that snapshot; of two, the mean of their parameters.
    one = cand.average_weights([snaps[(3, "raw")]])
    ref = cand.load_snapshot(snaps[(3, "raw")])
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), ref.parameters()))
    two = cand.average_weights([snaps[(2, "raw")], snaps[(3, "raw")]])
    other = cand.load_snapshot(snaps[(2, "raw")])
    w = "classifier.weight"
    assert torch.allclose(dict(two.named_parameters())[w],
                          (dict(ref.named_parameters())[w] + dict(other.named_parameters())[w]) / 2)


def test_update_bn_recomputes_running_statistics():
    net = build_densenet121().eval()
    bn = net.features.norm0
    bn.running_mean.fill_(5.0)
    pixels = torch.randint(0, 255, (6, 32, 32), dtype=torch.uint8)
    cand.update_bn(net, pixels, default_input_spec(32), batch_size=3)
    assert not net.training
    assert float(bn.running_mean.abs().max()) < 5.0 and int(bn.num_batches_tracked) == 2


# --------------------------------------------------------------------------- comparisons

def test_paired_auc_sees_a_real_gain_and_no_gain_in_a_copy():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(150, int), np.zeros(150, int)]
    weak = y + rng.normal(0, 1.2, 300)
    strong = y + rng.normal(0, 0.5, 300)
    same = cand.paired_auc(y, weak, weak, n_boot=300)
    assert same["delta_auc"] == 0 and same["ci95"] == [0.0, 0.0]
    gain = cand.paired_auc(y, strong, weak, n_boot=300)
    assert gain["delta_auc"] > 0.1 and gain["ci95"][0] > 0 and gain["p_better"] > 0.99
    lo, hi = cand.auc_ci(y, strong, n_boot=300)
    from pneumo_core.model.metrics import safe_auc
    assert lo <= safe_auc(y, strong) <= hi


# --------------------------------------------------------------------------- ensembles

@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    return [build_densenet121().eval() for _ in range(2)]


@pytest.fixture()
def ensemble_dir(tmp_path, members):
    card = {"name": "t", "version": "ens-1", "input": default_input_spec(128), "temperature": 1.0,
            "operating_points": {"balanced": {"threshold": 0.5}}, "default_operating_point": "balanced",
            "explain": {"layer": "denseblock3", "method": "gradcam"}}
    save_ensemble(members, ["epoch050-ema", "epoch060-ema"], card, tmp_path / "ens")
    return tmp_path / "ens"


def test_ensemble_card_lists_each_member_with_its_sha256(ensemble_dir):
    card = json.loads((ensemble_dir / CARD_FILE).read_text())
    listed = card["ensemble"]["members"]
    assert [m["file"] for m in listed] == ["member0.safetensors", "member1.safetensors"]
    assert [m["source"] for m in listed] == ["epoch050-ema", "epoch060-ema"]
    assert all(len(m["sha256"]) == 64 for m in listed) and listed[0]["sha256"] != listed[1]["sha256"]
    assert card["weights"]["sha256"] == listed[0]["sha256"]
    assert verify_version(ensemble_dir)["version"] == "ens-1"


def test_ensemble_logit_is_the_mean_of_its_members(ensemble_dir):
    model = load_model(ensemble_dir)
    assert isinstance(model.net, Ensemble) and len(model.net.members) == 2
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        each = [m(x).squeeze(1) for m in model.net.members]
        both = model.net(x).squeeze(1)
        tapped, feats = forward_with_taps(model.net, x, ("pooled",))
    assert torch.allclose(both, (each[0] + each[1]) / 2, atol=1e-6)
    assert torch.allclose(tapped, both, atol=1e-5)                     # the guard's pass gives the same logit
    assert feats["pooled"].shape == (3, 1024)


@pytest.mark.parametrize("member", ["member0.safetensors", "member1.safetensors"])
def test_a_changed_member_is_refused(ensemble_dir, member):
    path = ensemble_dir / member
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        load_model(ensemble_dir)
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        verify_version(ensemble_dir)


def test_a_missing_member_or_too_many_members_are_refused(ensemble_dir, members):
    card = json.loads((ensemble_dir / CARD_FILE).read_text())
    four = dict(card, ensemble={**card["ensemble"], "members": card["ensemble"]["members"] * 2})
    write_card(ensemble_dir, four)
    with pytest.raises(ModelLoadError, match="at most 3"):
        load_model(ensemble_dir)
    write_card(ensemble_dir, card)
    (ensemble_dir / "member1.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights file member1"):
        load_model(ensemble_dir)
    with pytest.raises(ValueError):
        save_ensemble(members * 2, ["a", "b", "c", "d"], card, ensemble_dir.parent / "four")


def test_predict_and_gradcam_treat_an_ensemble_as_one_model(ensemble_dir, film_png):
    predictor = Predictor.from_dir(ensemble_dir, guard=False)
    image = read_xray(film_png)
    p = predictor.predict(image)
    x = to_batch([image.pixels], predictor.card["input"])
    with torch.inference_mode():
        expected = torch.sigmoid(predictor.model.net(x)).item()
    assert p.probability == pytest.approx(expected, abs=1e-6) and p.model_version == "ens-1"
    layers = target_layers(predictor.model.net, "denseblock3")
    assert len(layers) == 2 and layers[0] is not layers[1]
    exp = explain(predictor, image)
    assert exp.normalised.shape == (128, 128) and exp.method == "gradcam"
    assert exp.raw.shape == (8, 8)                       # denseblock3 at 128 px: an 8 x 8 grid
    assert float(exp.normalised.max()) > 0


# --------------------------------------------------------------------------- Grad-CAM faithfulness

def test_choose_takes_the_most_faithful_map_with_enough_resolution():
    rng = np.random.default_rng(0)
    results = [cam_eval.CamScore("denseblock4", "gradcam", (4, 4), rng.normal(0.9, 0.1, 20)),   # too coarse
               cam_eval.CamScore("denseblock3", "gradcam", (8, 8), rng.normal(0.5, 0.1, 20)),
               cam_eval.CamScore("denseblock3", "layercam", (8, 8), rng.normal(0.3, 0.1, 20)),
               cam_eval.CamScore("random", "random map", (8, 8), rng.normal(0.0, 0.1, 20))]
    choice = cam_eval.choose(results, n_boot=200)
    assert (choice["layer"], choice["method"], choice["grid"]) == ("denseblock3", "gradcam", [8, 8])
    table = {(r["layer"], r["method"]): r for r in choice["faithfulness"]["table"]}
    assert not table[("denseblock4", "gradcam")]["eligible"] and not table[("random", "random map")]["eligible"]
    assert table[("random", "random map")]["best_minus_this_ci95"][0] > 0
    with pytest.raises(ValueError, match="8x8"):
        cam_eval.choose(results[:1])


def test_road_comparison_runs_on_a_real_network(ensemble_dir, film_png):
    predictor = Predictor.from_dir(ensemble_dir, guard=False)
    pixels = [read_xray(film_png).pixels] * 2
    results = cam_eval.compare(predictor, pixels, layers=("denseblock3",), methods=("gradcam",),
                               percentiles=(50,))
    assert [(r.layer, r.method) for r in results] == [("denseblock3", "gradcam"), ("random", "random map")]
    assert results[0].grid == (8, 8) and results[0].scores.shape == (2,)
    assert np.isfinite(results[0].scores).all()


def test_cam_eval_cli_records_the_choice_in_the_card(ensemble_dir, tmp_path, capsys):
    from conftest import synthetic_film, write_png

    from pneumo_core.cli.main import main

    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(tmp_path / "ext" / "PNEUMONIA" / f"p{i}.png", synthetic_film(rng, True, 96))
        write_png(tmp_path / "ext" / "NORMAL" / f"n{i}.png", synthetic_film(rng, False, 96))
    assert main(["cam-eval", "--model", str(ensemble_dir), "--data", str(tmp_path / "ext"), "--films", "2",
                 "--layers", "denseblock3,denseblock4", "--methods", "gradcam", "--apply",
                 "--json", str(tmp_path / "cam.json")]) == 0
    card = json.loads((ensemble_dir / CARD_FILE).read_text())
    assert card["explain"]["layer"] == "denseblock3"          # the only one with an 8 x 8 map at 128 px
    assert card["explain"]["faithfulness"]["films"].startswith("2 PNEUMONIA films")
    assert json.loads((tmp_path / "cam.json").read_text())["layer"] == "denseblock3"
    out = capsys.readouterr().out
    assert "denseblock4" in out and "random" in out
    assert load_model(ensemble_dir).version == "ens-1"        # a card edit does not touch the weights


def test_a_checkpoint_on_other_data_is_refused(synthetic_data, tmp_path):
    import shutil

    fit(synthetic_data, tmp_path / "a", TrainConfig(**FAST, epochs=1), checkpoint_dir=tmp_path / "ck")
    other = tmp_path / "other"
    shutil.copytree(synthetic_data, other)
    victim = next((other / "train" / "NORMAL").iterdir())
    victim.rename(other / "train" / "PNEUMONIA" / victim.name)          # one label changed
    with pytest.raises(ValueError, match="other data"):
        fit(other, tmp_path / "b", TrainConfig(**FAST, epochs=1), checkpoint_dir=tmp_path / "ck")
    assert not (tmp_path / "b").exists()


def test_cam_eval_refuses_an_unknown_layer(ensemble_dir, film_png):
    predictor = Predictor.from_dir(ensemble_dir, guard=False)
    with pytest.raises(ValueError, match="Unknown Grad-CAM layer"):
        cam_eval.compare(predictor, [read_xray(film_png).pixels], layers=("denseblock2",), methods=("gradcam",))
