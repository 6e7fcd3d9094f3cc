"""What the guard and the film-type check read of a film: the network's own features, caught during its
ordinary forward pass, and a model-free layout of the film.

* ``pooled``: the DenseNet's penultimate features (the 1024 pooled channels the pneumonia head reads): what
  the network "sees". Caught by a hook on the head's input, so the logit is the plain ``net(x)`` and costs
  no second pass.
* ``layout``: a 16 x 16 thumbnail (contrast-normalised) plus the grey histogram: where things are and how
  bright, with no model at all.

Mid-level features (the output of a DenseBlock, e.g. ``denseblock3``) can be caught too; on the shipped model
they added nothing measurable to the two parts above, so ``TAPS`` is just ``pooled``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from pneumo_core.ingest.preprocess import resize
from pneumo_core.model.network import members_of

# Where the network's features are read: outputs of DenseNet-121's feature modules, average-pooled
# per channel; "pooled" is what the pneumonia head reads (ReLU, then global average).
TAPS = ("pooled",)
LAYOUT = "layout"
LAYOUT_SIDE = 16


@contextmanager
def caught(net: nn.Module, taps: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that fill the yielded {tap: N x C} during ``net(x)``, removed on leaving.

    The hooks sit on the first DenseNet of ``net`` (an ensemble's first member: the guard is fitted on its
    features). They are removed even when the forward pass fails, so a model shared between sessions
    never keeps them; the caller holds the model's lock meanwhile.
    """
    first = members_of(net)[0]
    out: dict[str, torch.Tensor] = {}

    def keep_mean(name: str):
        # pooled at once: the DenseNet's ReLU after the last feature module works in place
        return lambda module, args, output: out.__setitem__(name, output.mean((2, 3)))

    handles = [module.register_forward_hook(keep_mean(name))
               for name, module in first.features.named_children() if name in taps]
    if "pooled" in taps:
        handles.append(first.classifier.register_forward_pre_hook(
            lambda module, args: out.__setitem__("pooled", args[0])))
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def forward_with_taps(net: nn.Module, x: torch.Tensor,
                      taps: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The network's logits (``net(x)``, an ensemble's mean) and the features at ``taps``, from one pass.

    Returns (N logits, {tap: N x C}). Call under ``torch.inference_mode()``.
    """
    with caught(net, taps) as feats:
        logits = net(x).squeeze(1)
    return logits, feats


def unit(p: np.ndarray) -> np.ndarray:
    """Display pixels (uint8, or float already in [0, 1]) as float32 in [0, 1]."""
    return p.astype(np.float32) / 255.0 if p.dtype == np.uint8 else np.asarray(p, dtype=np.float32)


def layout(pixels_list: Sequence[np.ndarray], spec: Mapping[str, Any]) -> np.ndarray:
    """Model-free description of a film: contrast-normalised 16 x 16 thumbnail + sqrt grey histogram.

    Computed from the film at the model's input size (squashed like the training films).
    """
    rows = []
    for p in pixels_list:
        a = resize(unit(p), spec)
        t = cv2.resize(a, (LAYOUT_SIDE, LAYOUT_SIDE), interpolation=cv2.INTER_AREA).ravel()
        t = (t - t.mean()) / (t.std() + 1e-2)
        hist = np.histogram(a, 16, (0.0, 1.0))[0] / a.size
        rows.append(np.concatenate([t, 4.0 * np.sqrt(hist)]))
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), LAYOUT_SIDE * LAYOUT_SIDE + 16)
