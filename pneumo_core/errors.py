"""Domain errors. Each carries a one-line message a radiologist can read.

Pages turn these into ``st.error``; the CLI turns them into JSON records.
Every ingestion error is a ``ValueError`` so callers that only know the
standard library still catch them.
"""

from __future__ import annotations


class PneumoError(Exception):
    """Base class of every error this package raises on purpose."""


class UnreadableImageError(PneumoError, ValueError):
    """The bytes are not an image we can decode (empty, truncated, corrupt, not an image)."""


class UnsupportedImageError(UnreadableImageError):
    """A known format, but a variant we do not handle (e.g. DICOM without pixel data)."""


class ImageTooLargeError(UnreadableImageError):
    """Dimensions or decoded size over the cap (decompression bombs included)."""


class ImageTooSmallError(UnreadableImageError):
    """Too few pixels to read a chest film from."""


class ModelLoadError(PneumoError, RuntimeError):
    """A model folder is missing, incomplete, or its weights do not match its card."""


class WeightsUnavailableError(ModelLoadError):
    """Pretrained weights were asked for but are not in the local cache."""
