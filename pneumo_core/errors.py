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


class DatasetError(PneumoError, ValueError):
    """Training data that cannot be used; the message says what to fix."""


class RegistryError(PneumoError, ValueError):
    """A promote, rollback or add that cannot be done (unknown version, nothing to roll back to, ...)."""


class AuthError(PneumoError):
    """The secrets file or a password cannot be used (said plainly, never with the password)."""


class ThrottleError(PneumoError):
    """The sign-in throttle's file cannot be read or written."""


class AuditError(PneumoError):
    """The audit log cannot be written or read."""


class IntegrityKeyError(PneumoError):
    """This server's integrity key cannot be read or made."""


class SettingsError(PneumoError, ValueError):
    """A training setting of the wrong type or outside its allowed values; the message names it and says what
    it allows."""


class TrainingCancelled(PneumoError, RuntimeError):
    """Raised from inside fit() when the cancel check says stop; nothing is written to out_dir."""


class JobError(PneumoError, RuntimeError):
    """A job that cannot be started or found; the message says why."""


class JobBusyError(JobError):
    """Another training job is running (one at a time)."""
