"""Pure stages from display pixels to the network's input, driven by the card's input spec.

The same functions serve training (which caches their uint8 output), evaluation,
the CLI and the app, so a film is seen the same way everywhere.
"""

from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np
import torch


def resize(pixels: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """float32 [0,1] H x W -> float32 [0,1] size x size, squashed like the training films."""
    size = int(spec["size"])
    if spec.get("resize", "squash") != "squash":
        raise ValueError(f"unknown resize policy {spec.get('resize')!r}")
    h, w = pixels.shape
    if (h, w) == (size, size):
        return np.ascontiguousarray(pixels, dtype=np.float32)
    # INTER_AREA when shrinking (no aliasing); linear when enlarging.
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    out = cv2.resize(pixels.astype(np.float32, copy=False), (size, size), interpolation=interp)
    return np.clip(out, 0.0, 1.0)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Compact storage for training caches: [0,1] float -> uint8."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def normalise(x: torch.Tensor, spec: Mapping[str, Any]) -> torch.Tensor:
    """N x 1 x H x W (uint8 or float in [0,1]) -> N x C x H x W float, mean/std normalised."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    channels = int(spec.get("channels", 3))
    mean = torch.tensor(spec["mean"][:channels], dtype=x.dtype, device=x.device).view(1, channels, 1, 1)
    std = torch.tensor(spec["std"][:channels], dtype=x.dtype, device=x.device).view(1, channels, 1, 1)
    return (x.expand(-1, channels, -1, -1) - mean) / std


def to_batch(images: list[np.ndarray], spec: Mapping[str, Any]) -> torch.Tensor:
    """Display pixels of any size -> a normalised N x C x size x size batch."""
    arr = np.stack([resize(p, spec) for p in images])[:, None]
    return normalise(torch.from_numpy(arr), spec)
