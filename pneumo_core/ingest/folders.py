"""Labelled folders (NORMAL/, PNEUMONIA/) -> file lists and decoded uint8 arrays."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pneumo_core.errors import UnreadableImageError
from pneumo_core.ingest.preprocess import resize, to_uint8
from pneumo_core.ingest.read import read_xray
from pneumo_core.model.network import LABELS


@dataclass(frozen=True)
class LabelledFiles:
    files: tuple[Path, ...]
    labels: np.ndarray            # int64, 1 = PNEUMONIA

    def __len__(self) -> int:
        return len(self.files)

    def counts(self) -> dict[str, int]:
        return {LABELS[0]: int((self.labels == 0).sum()), LABELS[1]: int((self.labels == 1).sum())}


@dataclass(frozen=True)
class ImageSet:
    """Decoded films at the model's input size, ready to move to a device."""

    pixels: np.ndarray            # N x S x S uint8
    labels: np.ndarray            # N int64
    files: tuple[Path, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())   # (file name, reason)


def is_labelled_folder(path: str | Path) -> bool:
    p = Path(path)
    return (p / LABELS[0]).is_dir() and (p / LABELS[1]).is_dir()


def list_labelled(folder: str | Path) -> LabelledFiles:
    """Files under NORMAL/ and PNEUMONIA/ (sorted; hidden files and sub-folders ignored)."""
    folder = Path(folder)
    if not is_labelled_folder(folder):
        raise FileNotFoundError(f"{folder} must contain {LABELS[0]}/ and {LABELS[1]}/ folders.")
    files, labels = [], []
    for y, name in enumerate(LABELS):
        for f in sorted((folder / name).iterdir()):
            if f.is_file() and not f.name.startswith("."):
                files.append(f)
                labels.append(y)
    return LabelledFiles(tuple(files), np.asarray(labels, dtype=np.int64))


def fingerprint(sets: Mapping[str, LabelledFiles], root: Path | None = None) -> str:
    """sha256 of the sorted (split, label, relative path) list: which films a model saw."""
    h = hashlib.sha256()
    for split in sorted(sets):
        lf = sets[split]
        for f, y in sorted(zip(lf.files, lf.labels.tolist()), key=lambda t: str(t[0])):
            rel = f.relative_to(root) if root and f.is_relative_to(root) else Path(f.parent.name) / f.name
            h.update(f"{split}\t{LABELS[y]}\t{rel.as_posix()}\n".encode())
    return h.hexdigest()


def _decode_one(path: Path, spec: Mapping[str, Any]) -> np.ndarray:
    return to_uint8(resize(read_xray(path).pixels, spec))


def load_images(lf: LabelledFiles, spec: Mapping[str, Any], *, workers: int = 4) -> ImageSet:
    """Decode every film once (unreadable ones are skipped and listed, never fatal)."""
    size = int(spec["size"])
    out = np.zeros((len(lf), size, size), np.uint8)
    keep = np.zeros(len(lf), bool)
    skipped: list[tuple[str, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = _decode_one(lf.files[i], spec)
            keep[i] = True
        except UnreadableImageError as exc:
            skipped.append((lf.files[i].name, str(exc)))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(len(lf))))
    return ImageSet(out[keep], lf.labels[keep], tuple(f for f, k in zip(lf.files, keep) if k), tuple(skipped))


def discover_splits(data_dir: str | Path) -> dict[str, Path]:
    """Map split name -> folder. Accepts DIR/{train,val,test,external}/ or a flat DIR/{NORMAL,PNEUMONIA}/."""
    data_dir = Path(data_dir)
    found = {s: data_dir / s for s in ("train", "val", "test", "external") if is_labelled_folder(data_dir / s)}
    if "train" not in found and is_labelled_folder(data_dir):
        found["train"] = data_dir
    if "train" not in found:
        raise FileNotFoundError(
            f"{data_dir} holds no training data: expected NORMAL/ and PNEUMONIA/ folders, "
            f"or train/ (and optionally val/, test/, external/) folders holding them."
        )
    return found
