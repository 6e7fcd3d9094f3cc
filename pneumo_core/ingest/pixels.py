"""The film caps and the pixel steps both readers (Pillow's and DICOM's) share: header size checks, early
reduction to ``max_side``, luminance, scaling to [0, 1] and the output contract.

Caps are checked on headers, before any pixel is decoded. A constant image becomes zeros (the OOD guard
is elsewhere); a non-finite one is refused with an UnreadableImageError whose message is one fixed line.
"""

from __future__ import annotations

import cv2
import numpy as np

from pneumo_core.errors import ImageTooLargeError, ImageTooSmallError, UnreadableImageError

# Caps. A film is at most ~4k x 4k; anything far larger is refused before decoding.
MAX_PIXELS = 50_000_000          # per frame
MAX_SIDE = 16_384
MIN_SIDE = 32
MAX_TOTAL_PIXELS = 4 * MAX_PIXELS  # DICOM Rows*Columns*frames

MSG_CORRUPT = "The image is truncated or corrupt."
MSG_NON_FINITE = "The image contains invalid (non-numeric) pixel values."
WARN_FRAMES = "Only the first frame of this multi-frame image is shown."
WARN_COLOUR = "Colour image converted to greyscale."


def check_size(width: int, height: int) -> None:
    """Refuse absurd or tiny dimensions (called on headers, before decoding)."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageTooLargeError(f"The image is too large ({width}×{height} pixels; the limit is "
                                 f"{MAX_SIDE} pixels a side and {MAX_PIXELS:,} pixels in all).")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageTooSmallError(f"The image is too small to read ({width}×{height} pixels; "
                                 f"at least {MIN_SIDE}×{MIN_SIDE} is needed).")


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most ``max_side``, aspect kept, and never below
    MIN_SIDE a side (an elongated film stays readable); unchanged when it fits or ``max_side`` is None."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max(max_side / max(width, height), min(1.0, MIN_SIDE / max(1, min(width, height))))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(values: np.ndarray, max_side: int | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Area-average an H x W (x C) array down to ``fitted_size`` (or to ``size``, width x height); the dtype is
    kept (integers rounded), so a DICOM frame still goes through its modality and VOI LUTs."""
    h, w = values.shape[:2]
    size = size or fitted_size(w, h, max_side)
    if size == (w, h):
        return values
    native = values.dtype in (np.uint8, np.uint16, np.int16, np.float32, np.float64)
    out = cv2.resize(values if native else values.astype(np.float64), size, interpolation=cv2.INTER_AREA)
    if out.dtype != values.dtype:
        out = np.rint(out) if np.issubdtype(values.dtype, np.integer) else out
        out = out.astype(values.dtype)
    return out


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma (Pillow's convention) of the first three channels, float64."""
    return np.asarray(rgb, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])


def colour_fraction(rgb: np.ndarray, full_scale: float) -> float:
    """Share of pixels whose R, G, B differ by more than 10% of ``full_scale`` (on at most ~1M pixels).

    A grey film stored as RGB scores ~0 (JPEG chroma noise stays far below 10%); a photo scores high.
    """
    a = np.asarray(rgb)[..., :3]
    step = max(1, int(np.sqrt(a.shape[0] * a.shape[1] / 1_000_000)))
    a = a[::step, ::step].astype(np.float32)
    return round(float((np.ptp(a, axis=-1) > 0.1 * full_scale).mean()), 4)


def to_unit_range(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's min..max) linearly onto [0, 1], clipped, float32.

    lo > hi inverts; lo == hi (a constant image) gives zeros; non-finite input is refused.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all():
        raise UnreadableImageError(MSG_NON_FINITE)
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    if lo == hi or not (np.isfinite(lo) and np.isfinite(hi)):
        return np.zeros(a.shape, dtype=np.float32)
    with np.errstate(all="ignore"):
        out = a - lo                              # in place from here: films can be large
        out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32)


def finish(pixels: np.ndarray) -> np.ndarray:
    """The output contract: 2-D, sized within caps, finite, float32, C-contiguous, in [0, 1]."""
    a = np.asarray(pixels, dtype=np.float32)
    if a.ndim != 2:
        raise UnreadableImageError(MSG_CORRUPT)
    check_size(a.shape[1], a.shape[0])
    if not np.isfinite(a).all():
        raise UnreadableImageError(MSG_NON_FINITE)
    return np.ascontiguousarray(np.clip(a, 0.0, 1.0))
