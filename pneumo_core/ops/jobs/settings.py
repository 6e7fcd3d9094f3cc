"""A job's training settings: its defaults for each base model, and the check of a request, both from
``TrainConfig`` (its defaults, fields and allowed values), so a job accepts exactly what training does."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from pneumo_core.errors import JobError, ModelLoadError, SettingsError
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.store import read_card
from pneumo_core.ops.registry import active_model_dir

# Not the request's to choose: ``init`` follows from the job's base; ``threads`` stays torch's choice in a
# worker that already yields the CPU to the app (it runs niced).
SET_BY_JOB = ("init", "threads")
JOB_SETTINGS = tuple(f.name for f in fields(TrainConfig) if f.name not in SET_BY_JOB)
# What a job's spec records unless the request says otherwise: TrainConfig's defaults (the from-scratch recipe),
# with fewer epochs from ImageNet weights, and a gentler, shorter fine-tune of the active version.
DEFAULT_FIELDS = ("epochs", "batch_size", "lr", "image_size", "augment", "mixup_alpha", "seed", "device",
                  "max_images")
BASE_DEFAULTS: dict[str, dict[str, Any]] = {"active": {"epochs": 10, "lr": 3e-4}, "imagenet": {"epochs": 15},
                                            "scratch": {}}
RECIPE_FIELDS = ("epochs", "lr", "batch_size", "image_size", "augment", "mixup_alpha")


def default_config(base: str, root: str | Path | None = None) -> dict[str, Any]:
    """Sensible starting hyperparameters for a base ('active' fine-tunes gently, at the active version's
    input size; the others train longer)."""
    defaults = TrainConfig()
    cfg = {**{k: getattr(defaults, k) for k in DEFAULT_FIELDS}, **BASE_DEFAULTS.get(base, {})}
    if base == "active":
        try:
            cfg["image_size"] = int(read_card(active_model_dir(root))["input"]["size"])
        except (ModelLoadError, KeyError, TypeError, ValueError):
            pass
    return cfg


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The request's settings, checked as ``TrainConfig`` checks them (None: the default; for
    ``max_images`` it means no cap). Raises JobError naming the setting and what it allows."""
    unknown = set(config) - set(JOB_SETTINGS)
    if unknown:
        raise JobError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
    cfg = {k: v for k, v in config.items() if v is not None or k == "max_images"}
    try:
        TrainConfig(**cfg)
    except SettingsError as exc:
        raise JobError(str(exc)) from exc
    return cfg
