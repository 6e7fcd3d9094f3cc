"""The training flags of ``train`` and ``jobs start``, made from ``TrainConfig``'s fields: each flag's name, type,
choices, help and allowed range come from its field, so the commands accept what training accepts and a value
outside it is a usage error (exit 2) before anything starts.

Every flag defaults to None, meaning "not given": ``train`` then uses TrainConfig's default, ``jobs start``
the job's default for its base model (``pneumo_core.ops.jobs.settings``).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

from pneumo_core.errors import SettingsError
from pneumo_core.model.config import Setting, check_setting, setting

# The settings each command offers, in the order its --help lists them.
TRAIN_FLAGS = ("init", "epochs", "batch_size", "lr", "image_size", "seed", "device", "augment", "mixup_alpha",
               "max_images", "compile", "threads", "ema_decay", "sync_bn")
JOB_FLAGS = ("epochs", "batch_size", "lr", "image_size", "device", "max_images", "seed", "sync_bn")
# Not a TrainConfig field: how many processes torchrun starts (``model.config.LAUNCH_SETTINGS``).
LAUNCH_FLAGS = ("nproc",)


def add_train_flags(p: argparse.ArgumentParser, names: Sequence[str], *, show_defaults: bool) -> None:
    """One flag per setting in ``names``; ``show_defaults``: say TrainConfig's default in the help (not for
    ``jobs start``, whose defaults depend on the base model)."""
    for name in names:
        s = setting(name)
        help = s.rule.help
        if s.kind in (int, float):
            help += f"; {s.allowed()}"
        if show_defaults and s.default is not None and s.kind is not bool:
            help += f" (default {s.default})"
        if s.kind is bool:
            action = "store_true" if not s.default else argparse.BooleanOptionalAction
            p.add_argument(s.flag, dest=name, action=action, default=None, help=help)
        elif s.rule.choices:
            p.add_argument(s.flag, dest=name, choices=s.rule.choices, default=None, help=help)
        elif s.kind is str:
            p.add_argument(s.flag, dest=name, default=None, help=help)
        else:
            p.add_argument(s.flag, dest=name, type=_number(s), default=None,
                           metavar=s.flag.lstrip("-").upper().replace("-", "_"), help=help)


def train_settings(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The settings among ``names`` that were given on the command line."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _number(s: Setting) -> Callable[[str], Any]:
    """argparse ``type`` for a numeric setting: parses it and checks it against the field's range."""
    def parse(text: str) -> Any:
        try:
            value = s.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {s.allowed()}") from None
        try:
            check_setting(s.name, value)
        except SettingsError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return parse
