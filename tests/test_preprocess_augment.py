from __future__ import annotations

import numpy as np
import torch

from pneumo_core.ingest.preprocess import normalise, resize, to_batch, to_uint8
from pneumo_core.model import augment as aug
from pneumo_core.model.network import default_input_spec


def test_resize_squashes_to_square_in_range():
    spec = default_input_spec(64)
    out = resize(np.random.default_rng(0).random((300, 200)).astype(np.float32), spec)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    small = resize(np.full((40, 50), 0.5, np.float32), spec)
    assert np.allclose(small, 0.5, atol=1e-6)


def test_normalise_uint8_and_float_agree():
    spec = default_input_spec(8)
    px = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    a = normalise(torch.from_numpy(to_uint8(px))[:, None], spec)
    b = normalise(torch.from_numpy(px)[:, None], spec)
    assert a.shape == (2, 3, 8, 8)
    assert (a - b).abs().max() < 0.01
    # channel 0 of a mid-grey film is (0.5 - mean) / std
    grey = normalise(torch.full((1, 1, 2, 2), 0.5), spec)
    assert torch.allclose(grey[0, 0], torch.full((2, 2), (0.5 - 0.485) / 0.229))


def test_to_batch_mixed_sizes():
    x = to_batch([np.zeros((100, 80), np.float32), np.ones((50, 50), np.float32)], default_input_spec(32))
    assert x.shape == (2, 3, 32, 32)


def test_augment_keeps_range_shape_and_is_seeded():
    x = torch.rand(4, 1, 32, 32)
    cfg = aug.AugmentConfig()
    a = aug.augment(x, cfg, torch.Generator().manual_seed(0))
    b = aug.augment(x, cfg, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x)


def test_random_erase_erases_some_area():
    x = torch.zeros(8, 1, 32, 32)
    cfg = aug.AugmentConfig(erase_p=1.0, erase_area=(0.1, 0.1))
    out = aug.random_erase(x, cfg, torch.Generator().manual_seed(0))
    frac = (out != 0).float().mean(dim=(1, 2, 3))
    assert (frac > 0.05).all() and (frac < 0.2).all()


def test_mixup_mixes_labels_consistently():
    x = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    y = torch.tensor([0.0, 1.0])
    torch.manual_seed(0)
    xm, ym = aug.mixup(x, y, 0.4, torch.Generator().manual_seed(0))
    # each mixed image's mean equals its mixed label here (images are all-0 / all-1)
    assert torch.allclose(xm.mean(dim=(1, 2, 3)), ym)
