"""Model factory, save/load round trip, ImageNet initialisation through torchvision's cache."""

from __future__ import annotations

import json

import pytest
import torch

from pneumo_core.errors import ModelLoadError, WeightsUnavailableError
from pneumo_core.model.network import (
    CARD_FILE,
    WEIGHTS_FILE,
    build_densenet121,
    create_model,
    default_input_spec,
    imagenet_weights_path,
)
from pneumo_core.model.store import load_model, save_model


def test_forward_on_tiny_input_gives_one_logit():
    net = build_densenet121().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()


def _card(size=32):
    return {"version": "t1", "input": default_input_spec(size), "temperature": 1.0,
            "operating_points": {"balanced": {"threshold": 0.5}}}


def test_save_load_round_trip_fp16_matches_fp32(tmp_path):
    torch.manual_seed(0)
    net = build_densenet121().eval()
    card = save_model(net, _card(), tmp_path / "m")
    assert (tmp_path / "m" / WEIGHTS_FILE).stat().st_size < 20e6
    assert json.loads((tmp_path / "m" / CARD_FILE).read_text())["weights"]["sha256"] == card["weights"]["sha256"]
    loaded = load_model(tmp_path / "m")
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref, got = torch.sigmoid(net(x)), torch.sigmoid(loaded.net(x))
    assert (ref - got).abs().max() < 2e-3          # fp16 storage costs little
    assert loaded.card["version"] == "t1"
    assert not any(p.requires_grad for p in loaded.net.parameters())


def test_tampered_weights_are_refused(tmp_path):
    save_model(build_densenet121(), _card(), tmp_path / "m")
    w = tmp_path / "m" / WEIGHTS_FILE
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="do not match"):
        load_model(tmp_path / "m")


def test_truncated_weights_are_refused_even_without_hash_check(tmp_path):
    save_model(build_densenet121(), _card(), tmp_path / "m")
    w = tmp_path / "m" / WEIGHTS_FILE
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "m", verify=False)


def test_missing_folder_and_card(tmp_path):
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="card"):
        load_model(tmp_path / "empty")


def test_imagenet_init_fails_clearly_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsUnavailableError) as exc:
        create_model("imagenet")
    msg = str(exc.value)
    assert imagenet_weights_path().name in msg and str(tmp_path / "torch_home") in msg


def test_imagenet_init_uses_torchvision_cache(tmp_path, monkeypatch):
    """A stand-in ImageNet file (torchvision's legacy key names, 1000-class head) in a temporary TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import densenet121

    torch.manual_seed(123)
    stand_in = densenet121(weights=None)
    state = stand_in.state_dict()
    # torchvision's published file uses old names like 'denselayer1.norm.1.weight'
    legacy = {k.replace("norm1", "norm.1").replace("conv1", "conv.1").replace("norm2", "norm.2")
              .replace("conv2", "conv.2") if "denselayer" in k else k: v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}
    path = imagenet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(legacy, path)
    net, init = create_model("imagenet")
    assert init["kind"] == "imagenet"
    key = "features.denseblock1.denselayer1.conv1.weight"
    assert torch.equal(net.state_dict()[key], state[key])
    assert net.classifier.out_features == 1


def test_imagenet_init_refuses_unsafe_pickle(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save({"evil": object()}, path)        # not loadable with weights_only=True
    with pytest.raises(WeightsUnavailableError):
        create_model("imagenet")


def test_checkpoint_init_copies_weights(tmp_path):
    torch.manual_seed(5)
    net = build_densenet121()
    save_model(net, _card(), tmp_path / "m")
    net2, init = create_model(str(tmp_path / "m"))
    assert init["kind"] == "checkpoint" and init["parent_version"] == "t1"
    key = "features.conv0.weight"
    assert torch.allclose(net2.state_dict()[key], net.state_dict()[key].half().float())


def test_bad_init_string():
    with pytest.raises(ModelLoadError):
        create_model("/no/such/checkpoint")
