"""Model versions on disk. ``weights/`` holds one folder per version and a file ``ACTIVE``
naming the one in use; the pointer is replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelLoadError
from .model import CARD_FILE, atomic_write_bytes

ACTIVE_FILE = "ACTIVE"


def weights_root() -> Path:
    """``$PNEUMO_WEIGHTS_DIR`` or the ``weights/`` folder beside the package."""
    env = os.environ.get("PNEUMO_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def active_model_dir(root: str | Path | None = None) -> Path:
    root = Path(root) if root else weights_root()
    pointer = root / ACTIVE_FILE
    try:
        name = pointer.read_text().strip()
    except OSError as exc:
        raise ModelLoadError(f"No active model: {pointer} is missing. Train one or pass --model DIR.") from exc
    folder = root / name
    if not name or "/" in name or name.startswith(".") or not (folder / CARD_FILE).is_file():
        raise ModelLoadError(f"The active model {name!r} named in {ACTIVE_FILE} is not a complete model folder.")
    return folder


def set_active(version: str, root: str | Path | None = None) -> None:
    root = Path(root) if root else weights_root()
    if not (root / version / CARD_FILE).is_file():
        raise ModelLoadError(f"No model version {version!r} in {root}.")
    atomic_write_bytes(root / ACTIVE_FILE, (version + "\n").encode())
