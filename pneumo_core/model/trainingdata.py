"""The films a training run uses: its splits (a validation split carved from train/ when the data have no
val/), capped for smoke tests, decoded once, and described for the model card.

The carved split is the same wherever it is made (``split_val`` with the run's fraction and seed), so
``prepare_data`` (which trains on it) and ``view_with_val`` (a folder of links that calibration, the guard
and the comparison read) agree on which films are the validation films.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pneumo_core.ingest.folders import ImageSet, LabelledFiles, discover_splits, fingerprint, list_labelled, load_images
from pneumo_core.model.network import LABELS


def split_val(lf: LabelledFiles, fraction: float, seed: int) -> tuple[LabelledFiles, LabelledFiles]:
    """Stratified random split for data that came without val/ (patient grouping unknown)."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for y in (0, 1):
        idx = np.flatnonzero(lf.labels == y)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, int(round(len(idx) * fraction)))])
    mask = np.zeros(len(lf), bool)
    mask[val_idx] = True
    pick = lambda m: LabelledFiles(tuple(f for f, k in zip(lf.files, m) if k), lf.labels[m])  # noqa: E731
    return pick(~mask), pick(mask)


def subsample(lf: LabelledFiles, n: int | None, seed: int) -> LabelledFiles:
    """At most ``n`` films, keeping the class proportions (and at least one of each class)."""
    if n is None or len(lf) <= n:
        return lf
    rng = np.random.default_rng(seed)
    idx = []
    for y in (0, 1):
        members = np.flatnonzero(lf.labels == y)
        k = max(1, int(round(n * len(members) / len(lf))))
        idx.extend(rng.choice(members, min(k, len(members)), replace=False))
    idx = np.sort(np.asarray(idx))
    return LabelledFiles(tuple(lf.files[i] for i in idx), lf.labels[idx])


def prepare_data(data_dir: str | Path, spec: dict, *, val_fraction: float, seed: int, max_images: int | None,
                 workers: int) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """Decode the splits once. Returns the image sets and a data description for the card."""
    folders = discover_splits(data_dir)
    lists = {name: list_labelled(path) for name, path in folders.items() if name != "test"}
    if "val" not in lists:
        lists["train"], lists["val"] = split_val(lists["train"], val_fraction, seed)
    lists = {k: subsample(v, max_images, seed) for k, v in lists.items()}
    for name in ("train", "val"):
        counts = lists[name].counts()
        if min(counts.values()) < 1:
            raise ValueError(f"The {name} data need films of both classes; found {counts}.")
    sets = {name: load_images(lf, spec, workers=workers) for name, lf in lists.items()}
    data = {
        "source": Path(data_dir).name,
        "fingerprint": fingerprint({k: v for k, v in lists.items()}, Path(data_dir)),
        "counts": {k: lists[k].counts() for k in lists},
        "skipped": {k: len(v.skipped) for k, v in sets.items()},
        "used_for": {"train": "weights", "val": "monitoring",
                     "external": "model selection (never trained on)" if "external" in sets else None},
    }
    return sets, data


def view_with_val(data: Path, view: Path, fraction: float, seed: int) -> Path:
    """Data without val/: a folder of links with a stratified validation split carved from train/
    (the same split ``prepare_data`` makes with this fraction and seed), so calibration and evaluation
    have a val/ to use."""
    splits = discover_splits(data)
    train, val = split_val(list_labelled(splits["train"]), fraction, seed)
    for name, lf in (("train", train), ("val", val)):
        for label in LABELS:
            (view / name / label).mkdir(parents=True, exist_ok=True)
        for f, y in zip(lf.files, lf.labels.tolist()):
            os.symlink(f.resolve(), view / name / LABELS[y] / f.name)
    for name in ("test", "external"):
        if name in splits:
            os.symlink(splits[name].resolve(), view / name, target_is_directory=True)
    return view
