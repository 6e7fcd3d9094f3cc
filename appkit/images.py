"""Display-side image helpers: [0, 1] film pixels -> small uint8 / PNG / data-URI images."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from pneumo_core.model.explain import encode_png

THUMB_SIDE = 96


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def shrink(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never enlarge) so the longer side is at most ``max_side``; keeps the aspect ratio."""
    h, w = pixels.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def png_bytes(image: np.ndarray) -> bytes:
    """Grey [0, 1] float or uint8 RGB -> PNG bytes."""
    if image.ndim == 2:
        image = cv2.cvtColor(to_uint8(image), cv2.COLOR_GRAY2RGB)
    return encode_png(image)


def thumbnail_uri(pixels: np.ndarray, side: int = THUMB_SIDE) -> str:
    """A small PNG as a data URI (for st.column_config.ImageColumn)."""
    ok, buf = cv2.imencode(".png", to_uint8(shrink(pixels, side)))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def placeholder_uri(side: int = THUMB_SIDE) -> str:
    """A thumbnail for a film with no image (unreadable, not analysed): a light grey square with a cross, so
    the worklist shows a blank tile rather than a literal "None"."""
    tile = np.full((side, side), 0.93, dtype=np.float32)
    cv2.line(tile, (side // 4, side // 4), (3 * side // 4, 3 * side // 4), 0.7, 2)
    cv2.line(tile, (3 * side // 4, side // 4), (side // 4, 3 * side // 4), 0.7, 2)
    return thumbnail_uri(tile, side)
