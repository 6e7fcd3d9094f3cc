"""Training settings, written once: a frozen dataclass whose fields carry their allowed values and help text.

``TrainConfig`` is what ``fit()`` trains with and what a model card records. Everything else that offers or
checks a training setting derives from its fields: the ``train`` and ``jobs start`` command-line flags
(``pneumo_core.cli.train_flags``), a background job's defaults and its check (``pneumo_core.ops.jobs.settings``)
and the Retrain page's inputs. So a setting's range is stated in one place, and a value outside it is refused
the same way wherever it comes from. No torch here: ``--help`` and the job check stay fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from pneumo_core.errors import SettingsError


@dataclass(frozen=True)
class Rule:
    """What a setting allows and how it is described. ``lo``/``hi``: inclusive bounds, unless ``above``/``below``
    name an exclusive one instead; ``choices``: the allowed words; ``flag``: the command-line flag when it is
    not ``--`` + the name with dashes (kept as the CLI has always spelled it)."""
    help: str
    label: str
    lo: float | None = None
    hi: float | None = None
    above: float | None = None
    below: float | None = None
    choices: tuple[str, ...] = ()
    flag: str | None = None


def _setting(default: Any, help: str, label: str, **rule: Any) -> Any:
    return field(default=default, metadata={"rule": Rule(help, label, **rule)})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _setting(30, "passes over the training films", "epochs", lo=1, hi=1000)
    batch_size: int = _setting(64, "films per training step", "batch size", lo=2, hi=4096)
    lr: float = _setting(1e-3, "peak learning rate of AdamW, after a linear warm-up", "learning rate",
                         above=0, below=1)
    weight_decay: float = _setting(0.05, "AdamW weight decay", "weight decay", lo=0, hi=1)
    warmup_epochs: float = _setting(1.0, "epochs of linear learning-rate warm-up", "warm-up", lo=0)
    image_size: int = _setting(224, "films are resized to this square (px)", "image size", lo=32, hi=1024)
    init: str = _setting("scratch", "imagenet | scratch | PATH to a model folder", "initialisation")
    dropout: float = _setting(0.0, "dropout before the classifier", "dropout", lo=0, below=1)
    augment: str = _setting("strong", "augmentation while training", "augmentation",
                            choices=("strong", "mild", "none"))
    mixup_alpha: float = _setting(0.2, "mixup alpha (0 disables)", "mixup alpha", lo=0, hi=1, flag="--mixup")
    ema_decay: float = _setting(0.995, "per-step EMA decay of the averaged model (0 disables)", "EMA decay",
                                lo=0, below=1)
    seed: int = _setting(0, "random seed: same data, settings and seed give the same model", "random seed",
                         lo=0, hi=2**31 - 1)
    device: str = _setting("auto", "where to train", "device", choices=("auto", "cpu", "cuda"))
    bf16: bool = _setting(True, "bf16 autocast where the device supports it", "bf16")
    channels_last: bool = _setting(True, "channels-last memory format", "channels-last")
    compile: bool = _setting(False, "torch.compile the network (GPU)", "compile")
    sync_bn: bool = _setting(False, "SyncBatchNorm: batch statistics over all processes' films, not each one's "
                                    "(several GPUs under torchrun)", "SyncBatchNorm")
    val_fraction: float = _setting(0.1, "share of train/ held out for validation when there is no val/",
                                   "validation share", above=0, hi=0.5)
    max_images: int | None = _setting(None, "cap on films per split (a smoke test or a quick trial)",
                                      "cap on films per split", lo=4)
    workers: int = _setting(4, "decoding threads", "decoding threads", lo=1, hi=256)
    threads: int | None = _setting(None, "CPU threads for torch (default: torch's choice)", "torch threads",
                                   lo=1, hi=1024)

    def __post_init__(self) -> None:
        for f in fields(self):
            check_setting(f.name, getattr(self, f.name))


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


@dataclass(frozen=True)
class Setting:
    """One field of ``TrainConfig`` as the command line, the job check and the page see it."""
    name: str
    kind: type                  # int, float, bool or str
    optional: bool              # None allowed (and the default)
    default: Any
    rule: Rule

    @property
    def flag(self) -> str:
        return self.rule.flag or "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """What the setting allows, in words ("a whole number from 1 to 1000")."""
        r = self.rule
        if r.choices:
            return "one of " + ", ".join(r.choices)
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return "text"
        noun = "a whole number" if self.kind is int else "a number"
        if r.lo is not None and r.hi is not None:
            return f"{noun} from {_num(r.lo)} to {_num(r.hi)}"
        low = f"above {_num(r.above)}" if r.above is not None else f"at least {_num(r.lo)}" if r.lo is not None else ""
        high = f"below {_num(r.below)}" if r.below is not None else f"at most {_num(r.hi)}" if r.hi is not None else ""
        return " ".join(p for p in (noun, " and ".join(p for p in (low, high) if p)) if p)

    def bounds(self) -> tuple[float | None, float | None]:
        """(lowest, highest) allowed value, inclusive, where it has them (exclusive bounds give None)."""
        return self.rule.lo, self.rule.hi


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _setting_of(f) -> Setting:
    kind, _, none = str(f.type).partition(" | ")
    return Setting(f.name, _KINDS[kind], none == "None", f.default, f.metadata["rule"])


SETTINGS: dict[str, Setting] = {f.name: _setting_of(f) for f in fields(TrainConfig)}
# How many processes run a training (torchrun's world size) is not a TrainConfig field: it is a fact of the run,
# which the card records (``training.processes``), and a checkpoint resumes on any number of them because the
# batch size is the global batch. It is offered and checked like the settings all the same.
LAUNCH_SETTINGS: dict[str, Setting] = {"nproc": Setting("nproc", int, False, 1, Rule(
    "training processes under torchrun, one per GPU (1: a single process, no torchrun)", "processes",
    lo=1, hi=64))}


def setting(name: str) -> Setting:
    """A TrainConfig field's setting, or a launch setting (``nproc``)."""
    return SETTINGS[name] if name in SETTINGS else LAUNCH_SETTINGS[name]


def check_setting(name: str, value: Any) -> None:
    """Raise SettingsError unless ``value`` is allowed for the setting ``name``."""
    s = setting(name)
    if value is None and s.optional:
        return
    if not _has_kind(value, s.kind) or not _in_range(value, s):
        label = s.rule.label[0].upper() + s.rule.label[1:]
        raise SettingsError(f"{label} ({name}) must be {s.allowed()}, not {value!r}.")


def _has_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):                      # True is an int to Python, never a number of epochs
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _in_range(value: Any, s: Setting) -> bool:
    r = s.rule
    if r.choices:
        return value in r.choices
    if s.kind not in (int, float):
        return True
    return ((r.lo is None or value >= r.lo) and (r.hi is None or value <= r.hi)
            and (r.above is None or value > r.above) and (r.below is None or value < r.below))
