"""Training settings have one source: TrainConfig checks its own fields, and the command-line flags of ``train``
and ``jobs start`` and a job's defaults and check all agree with it (no torch needed: these run in a second)."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from pneumo_core.cli.main import build_parser
from pneumo_core.cli.train_flags import JOB_FLAGS, TRAIN_FLAGS, train_settings
from pneumo_core.errors import JobError, PneumoError, SettingsError
from pneumo_core.model.config import LAUNCH_SETTINGS, SETTINGS, TrainConfig
from pneumo_core.ops.jobs.settings import BASE_DEFAULTS, JOB_SETTINGS, check_config, default_config

# The flags as the CLI has always spelled them (docs and scripts use them).
TRAIN_FLAG_NAMES = {"--init", "--epochs", "--batch-size", "--lr", "--image-size", "--seed", "--device", "--augment",
                    "--mixup", "--max-images", "--compile", "--threads", "--ema-decay", "--sync-bn"}
JOB_FLAG_NAMES = {"--epochs", "--batch-size", "--lr", "--image-size", "--device", "--max-images", "--seed",
                  "--sync-bn"}


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("bad, allowed", [
    ({"epochs": 0}, "a whole number from 1 to 1000"),
    ({"epochs": 2.0}, "a whole number from 1 to 1000"),
    ({"batch_size": True}, "a whole number from 2 to 4096"),
    ({"lr": 1}, "a number above 0 and below 1"),
    ({"lr": math.nan}, "a number above 0 and below 1"),
    ({"image_size": 2048}, "a whole number from 32 to 1024"),
    ({"device": "tpu"}, "one of auto, cpu, cuda"),
    ({"augment": "heavy"}, "one of strong, mild, none"),
    ({"max_images": 3}, "a whole number at least 4"),
    ({"val_fraction": 0.0}, "a number above 0 and at most 0.5"),
    ({"ema_decay": 1.0}, "a number at least 0 and below 1"),
    ({"bf16": 1}, "true or false"),
    ({"threads": 0}, "a whole number from 1 to 1024"),
])
def test_train_config_refuses_a_value_outside_its_rule_with_a_clear_message(bad, allowed):
    [(name, value)] = bad.items()
    with pytest.raises(SettingsError) as caught:
        TrainConfig(**bad)
    message = str(caught.value)
    assert f"({name}) must be {allowed}, not {value!r}." in message
    assert isinstance(caught.value, PneumoError) and isinstance(caught.value, ValueError)


def test_every_field_has_a_rule_its_default_keeps():
    assert list(SETTINGS) == [f.name for f in fields(TrainConfig)]
    defaults = TrainConfig()                                   # would raise if a default broke its own rule
    assert all(SETTINGS[k].default == v for k, v in asdict(defaults).items())
    assert TrainConfig(weight_decay=0, max_images=None).weight_decay == 0   # a whole number is a number; None: unset


def test_the_train_flags_are_the_fields_with_their_names_and_defaults():
    parser = build_parser()
    train = _options(_subparser(parser, "train"))
    assert TRAIN_FLAG_NAMES <= set(train)
    for name in TRAIN_FLAGS:                                   # one flag per exposed field, filling that field
        assert train[SETTINGS[name].flag].dest == name and train[SETTINGS[name].flag].default is None
    assert {SETTINGS[name].flag for name in TRAIN_FLAGS} == TRAIN_FLAG_NAMES
    args = parser.parse_args(["train", "--data", "d", "--out", "o"])
    assert TrainConfig(**train_settings(args, TRAIN_FLAGS)) == TrainConfig()   # no flag: the field's default
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--init", "imagenet", "--epochs", "7",
                              "--mixup", "0.5", "--compile", "--device", "cpu", "--max-images", "8", "--threads", "2"])
    cfg = TrainConfig(**train_settings(args, TRAIN_FLAGS))
    assert (cfg.init, cfg.epochs, cfg.mixup_alpha, cfg.compile, cfg.device, cfg.max_images, cfg.threads) == (
        "imagenet", 7, 0.5, True, "cpu", 8, 2)


def test_job_flags_offer_job_settings_and_leave_the_defaults_to_the_base():
    parser = build_parser()
    start = _options(_subparser(parser, "jobs", "start"))
    assert {SETTINGS[name].flag for name in JOB_FLAGS} == JOB_FLAG_NAMES <= set(start)
    assert set(JOB_FLAGS) <= set(JOB_SETTINGS)
    args = parser.parse_args(["jobs", "start", "--data", "d"])
    assert train_settings(args, JOB_FLAGS) == {}                          # the job's defaults for its base
    args = parser.parse_args(["jobs", "start", "--data", "d", "--epochs", "3", "--lr", "1e-4"])
    assert train_settings(args, JOB_FLAGS) == {"epochs": 3, "lr": 1e-4}


@pytest.mark.parametrize("name", [n for n in JOB_FLAGS if SETTINGS[n].kind in (int, float)])
def test_a_value_training_refuses_is_refused_by_both_commands_and_by_the_job_check(name, capsys):
    low = SETTINGS[name].rule.lo if SETTINGS[name].rule.lo is not None else SETTINGS[name].rule.above
    bad = low - 1 if SETTINGS[name].kind is int else low
    with pytest.raises(SettingsError) as caught:
        TrainConfig(**{name: bad})
    parser = build_parser()
    for argv in (["train", "--data", "d", "--out", "o"], ["jobs", "start", "--data", "d"]):
        with pytest.raises(SystemExit) as usage:
            parser.parse_args([*argv, SETTINGS[name].flag, str(bad)])
        assert usage.value.code == 2 and str(caught.value) in capsys.readouterr().err
    with pytest.raises(JobError) as refused:
        check_config({name: bad})
    assert str(refused.value) == str(caught.value)


def test_job_settings_and_defaults_come_from_train_config(tmp_path):
    assert set(JOB_SETTINGS) == {f.name for f in fields(TrainConfig)} - {"init", "threads"}
    with pytest.raises(JobError, match="Unknown training setting"):
        check_config({"threads": 2})
    defaults = TrainConfig()
    for base in ("active", "imagenet", "scratch"):
        cfg = default_config(base, tmp_path)                  # no active version there: its own defaults
        assert check_config(cfg) == cfg
        assert cfg == {**{k: getattr(defaults, k) for k in cfg}, **BASE_DEFAULTS[base]}
    assert default_config("scratch", tmp_path)["epochs"] == defaults.epochs


def test_the_data_check_carves_the_validation_share_training_will_carve():
    import numpy as np

    from pneumo_core.ingest.datacheck import DatasetReport
    from pneumo_core.ingest.folders import LabelledFiles
    from pneumo_core.model.trainingdata import split_val

    report = DatasetReport(root=Path("."), counts={"train": {"NORMAL": 37, "PNEUMONIA": 81}})
    films = LabelledFiles(tuple(Path(f"{i}.png") for i in range(118)), np.array([0] * 37 + [1] * 81))
    _, val = split_val(films, TrainConfig().val_fraction, 0)
    assert report.carved_val() == {"NORMAL": int((val.labels == 0).sum()), "PNEUMONIA": int((val.labels == 1).sum())}


def test_nproc_is_a_launch_flag_with_its_range_not_a_field(capsys):
    assert "nproc" not in SETTINGS and LAUNCH_SETTINGS["nproc"].bounds() == (1, 64)
    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--nproc", "2", "--sync-bn"])
    assert args.nproc == 2 and TrainConfig(**train_settings(args, TRAIN_FLAGS)).sync_bn is True
    assert parser.parse_args(["train", "--data", "d", "--out", "o"]).nproc is None       # one process
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["train", "--data", "d", "--out", "o", "--nproc", "0"])
    assert exited.value.code == 2 and "from 1 to 64" in capsys.readouterr().err
