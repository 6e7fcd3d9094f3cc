"""Grad-CAM: shape, range, explicit target, hooks released."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo_core.ingest.read import read_xray
from pneumo_core.model.explain import METHODS, explain, overlay
from pneumo_core.model.predict import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_dir(tiny_model_dir)


def _hook_count(net) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(getattr(m, "_forward_pre_hooks", {}))
               for m in net.modules())


def test_gradcam_shape_range_and_hooks_released(predictor, film_png):
    image = read_xray(film_png)
    before = _hook_count(predictor.model.net)
    exp = explain(predictor, image)
    size = predictor.card["input"]["size"]
    assert exp.normalised.shape == (size, size)
    assert exp.normalised.dtype == np.float32
    assert 0.0 <= exp.normalised.min() and exp.normalised.max() <= 1.0
    assert (exp.raw >= 0).all() and exp.raw.ndim == 2
    assert exp.target == "PNEUMONIA logit"
    assert _hook_count(predictor.model.net) == before == 0
    assert not any(p.requires_grad for p in predictor.model.net.parameters())
    # the prediction inside the explanation is the same as a plain prediction
    assert exp.prediction.probability == pytest.approx(predictor.predict(image).probability, abs=1e-6)


def test_target_is_explicit(predictor, film_png):
    image = read_xray(film_png)
    pos = explain(predictor, image, target="PNEUMONIA")
    neg = explain(predictor, image, target="NORMAL")
    assert neg.target == "NORMAL logit"
    assert not np.allclose(pos.raw, neg.raw)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs(predictor, film_png, method):
    exp = explain(predictor, read_xray(film_png), method=method)
    assert exp.normalised.shape[0] == predictor.card["input"]["size"]
    assert np.isfinite(exp.normalised).all()


def test_unknown_method(predictor, film_png):
    with pytest.raises(ValueError):
        explain(predictor, read_xray(film_png), method="magic")


def test_overlay_at_film_resolution():
    film = np.linspace(0, 1, 120 * 90, dtype=np.float32).reshape(120, 90)
    cam = np.zeros((32, 32), np.float32)
    cam[8:16, 8:16] = 1
    rgb = overlay(film, cam, alpha=0.5)
    assert rgb.shape == (120, 90, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(overlay(film, cam, alpha=0.0), rgb)
    assert np.array_equal(overlay(film, cam, alpha=0.0)[..., 0], (film * 255).astype(np.uint8))
