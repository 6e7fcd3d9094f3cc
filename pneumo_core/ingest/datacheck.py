"""Training data supplied by staff: check a class-folder layout before any training starts (an uploaded
.zip is unpacked first by ``archives.extract_zip``).

Layout (as ``folders.discover_splits``): ``NORMAL/`` and ``PNEUMONIA/``, or ``train/`` (and optionally
``val/``, ``test/``, ``external/``) holding them. Every film is decoded once with the app's reader,
so the counts are of films training can actually use; unreadable files are listed and skipped.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pneumo_core.errors import DatasetError, UnreadableImageError
from pneumo_core.ingest.folders import LabelledFiles, discover_splits, list_labelled
from pneumo_core.ingest.read import read_xray
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.network import LABELS

MIN_TRAIN_PER_CLASS = 20     # fewer films than this per class cannot teach the model anything useful
MIN_EVAL_PER_CLASS = 5       # val/ and external/ need enough of each class for an AUC to mean something


@dataclass(frozen=True)
class DatasetReport:
    root: Path
    counts: dict[str, dict[str, int]]                 # split -> class -> readable films
    unreadable: tuple[tuple[str, str], ...] = ()      # (split/CLASS/file, reason)
    problems: tuple[str, ...] = ()                    # reasons to refuse
    warnings: tuple[str, ...] = ()
    decode_cpu_s: float = 0.0                         # CPU seconds the check spent decoding the films

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def read_s(self) -> float | None:
        """CPU seconds to decode one readable film, as measured by the check (None without one)."""
        return self.decode_cpu_s / self.total if self.total and self.decode_cpu_s else None

    @property
    def n_train(self) -> int:
        """Films training will see per epoch (train/ minus the carved validation part when no val/)."""
        n = sum(self.counts.get("train", {}).values())
        return n if "val" in self.counts else n - sum(self.carved_val().values())

    def carved_val(self) -> dict[str, int]:
        if "val" in self.counts:
            return {}
        # carved from train/ when there is no val/, as training will carve it (TrainConfig's default share)
        return {k: max(1, round(v * TrainConfig.val_fraction)) for k, v in self.counts.get("train", {}).items()}

    def summary(self) -> dict:
        """What may be stored with a job: counts only, never file names."""
        return {"counts": self.counts, "n_unreadable": len(self.unreadable), "warnings": list(self.warnings)}


def _readable(path: Path) -> tuple[str | None, float]:
    """(None when ``path`` decodes as a film, else the reason it does not; the CPU seconds it took)."""
    t = time.thread_time()
    try:
        read_xray(path, name=path.name)
        return None, time.thread_time() - t
    except UnreadableImageError as exc:
        return str(exc), 0.0
    except OSError as exc:
        return f"Cannot open the file ({exc.strerror or 'I/O error'}).", 0.0


def validate_dataset(root: str | Path, *, min_train_per_class: int = MIN_TRAIN_PER_CLASS,
                     min_eval_per_class: int = MIN_EVAL_PER_CLASS, workers: int = 4,
                     progress: Callable[[int, int], None] | None = None) -> DatasetReport:
    """Decode every film once; count readable ones per split and class; say what would refuse training."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder on this server.")
    try:
        splits = discover_splits(root)
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from exc
    lists: dict[str, LabelledFiles] = {name: list_labelled(path) for name, path in splits.items()}
    jobs = [(name, f, int(y)) for name, lf in lists.items() for f, y in zip(lf.files, lf.labels)]
    done = 0
    counts = {name: {label: 0 for label in LABELS} for name in lists}
    unreadable = []
    cpu_s = 0.0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (name, f, y), (reason, spent) in zip(jobs, pool.map(lambda j: _readable(j[1]), jobs)):
            cpu_s += spent
            if reason is None:
                counts[name][LABELS[y]] += 1
            else:
                rel = f.relative_to(root) if f.is_relative_to(root) else Path(name, LABELS[y], f.name)
                unreadable.append((rel.as_posix(), reason))
            done += 1
            if progress:
                progress(done, len(jobs))
    problems, warnings = [], []
    train = counts["train"]
    if min(train.values()) < min_train_per_class:
        problems.append(f"Too few training films: {_fmt(train)}; at least {min_train_per_class} readable films "
                        f"of each class are needed.")
    for split in ("val", "external"):
        if split in counts and min(counts[split].values()) < min_eval_per_class:
            problems.append(f"Too few films in {split}/: {_fmt(counts[split])}; at least {min_eval_per_class} of "
                            f"each class are needed (or remove {split}/).")
    if "val" not in counts:
        warnings.append(f"No val/ folder: {TrainConfig.val_fraction:.0%} of train/ (stratified, random: patients are "
                        f"not kept together) is held out for validation.")
    if "external" not in counts:
        warnings.append("No external/ folder: the new model is evaluated on its validation films only.")
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable file(s) will be skipped.")
    if train and max(train.values()) > 10 * max(1, min(train.values())):
        warnings.append(f"Strong class imbalance in train/ ({_fmt(train)}); the loss reweights the classes.")
    return DatasetReport(root, counts, tuple(unreadable), tuple(problems), tuple(warnings), decode_cpu_s=cpu_s)


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items())
