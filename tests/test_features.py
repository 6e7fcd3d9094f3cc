"""The guard's features are caught by hooks during the network's own forward pass: the logit is the plain
``net(x)``, the taps are what DenseNet-121 computes there, and no hook outlives the call (the model is shared)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pneumo_core.model.network import Ensemble, build_densenet121
from pneumo_core.safety.features import forward_with_taps


def _no_hooks(net: torch.nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def _reference(net: torch.nn.Module, x: torch.Tensor, block: str) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand, from torchvision's DenseNet: (the head's input, a DenseBlock's output averaged per channel)."""
    names = [name for name, _ in net.features.named_children()]
    pooled = F.adaptive_avg_pool2d(F.relu(net.features(x)), 1).flatten(1)
    return pooled, net.features[:names.index(block) + 1](x).mean((2, 3))


@pytest.fixture(scope="module")
def nets() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [build_densenet121().eval(), build_densenet121(dropout=0.2).eval()]


def test_taps_come_from_the_plain_forward_pass(nets):
    x = torch.rand(2, 3, 64, 64)
    for net in nets:                                      # a bare Linear head and a Dropout + Linear one
        with torch.inference_mode():
            plain = net(x).squeeze(1)
            logits, feats = forward_with_taps(net, x, ("pooled", "denseblock3"))
            pooled, block3 = _reference(net, x, "denseblock3")
            head = net.classifier(feats["pooled"]).squeeze(1)
        assert torch.equal(logits, plain)
        assert torch.allclose(head, plain, atol=1e-5)      # "pooled" is exactly what the head reads
        assert feats["pooled"].shape == (2, 1024) and torch.allclose(feats["pooled"], pooled, atol=1e-5)
        assert feats["denseblock3"].shape == (2, 1024) and torch.allclose(feats["denseblock3"], block3, atol=1e-5)
        assert _no_hooks(net)


def test_an_ensemble_gives_its_mean_logit_and_its_first_members_features(nets):
    ensemble = Ensemble(list(nets))
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        logits, feats = forward_with_taps(ensemble, x, ("pooled",))
        each = [m(x).squeeze(1) for m in nets]
        pooled, _ = _reference(nets[0], x, "denseblock1")
    assert torch.allclose(logits, (each[0] + each[1]) / 2, atol=1e-5)
    assert torch.allclose(feats["pooled"], pooled, atol=1e-5)
    assert _no_hooks(ensemble)


def test_no_hook_outlives_a_failed_pass(nets):
    with pytest.raises(RuntimeError), torch.inference_mode():
        forward_with_taps(nets[0], torch.rand(1, 1, 64, 64), ("pooled", "denseblock2"))   # one channel: refused
    assert _no_hooks(nets[0])
