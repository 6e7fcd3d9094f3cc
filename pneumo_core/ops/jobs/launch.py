"""Starting a job: check the data and the request, write the job's records, start its worker process."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from filelock import FileLock, Timeout

from pneumo_core.errors import DatasetError, JobBusyError, JobError, ModelLoadError, SettingsError
from pneumo_core.files import CHECKOUT, atomic_write_json
from pneumo_core.ingest.datacheck import DatasetReport, validate_dataset
from pneumo_core.model.config import check_setting
from pneumo_core.model.distributed import torchrun_command
from pneumo_core.model.store import read_card
from pneumo_core.ops.jobs.estimate import compared_size, device_kind, estimate_phases
from pneumo_core.ops.jobs.settings import check_config, default_config
from pneumo_core.ops.jobs.store import (
    LOG,
    SPEC,
    STATE,
    TRAIN_LOCK,
    UNCHANGED,
    Job,
    jobs_root,
    launch_lock,
    load_job,
    now_iso,
    phase_fields,
    record_worker,
    remove_temp,
    running_job,
    stamp,
)
from pneumo_core.ops.registry import active_model_dir, verify_version, weights_root

BASES = ("active", "imagenet", "scratch")
PACKAGE_PARENT = CHECKOUT                # the worker runs ``python -m pneumo_core`` from here


def start_job(data_dir: str | Path, *, base: str = "active", config: Mapping[str, Any] | None = None,
              report: DatasetReport | None = None, upload_dir: str | Path | None = None, bootstrap: int = 1000,
              root: str | Path | None = None, weights: str | Path | None = None, nproc: int = 1) -> Job:
    """Check the data and the request, then start a worker process; returns at once.

    ``upload_dir``: a folder from ``new_upload_dir`` holding ``data_dir``; the job takes it over and
    removes it when it ends. ``nproc`` > 1: the worker runs in that many processes under torchrun (one per GPU;
    rank 0 keeps the job's records). Raises DatasetError (bad data), JobBusyError (a job is running),
    JobError / ModelLoadError (bad request, no or tampered base model).
    """
    root = jobs_root(root)
    weights = Path(weights) if weights else weights_root()
    data_dir = Path(data_dir).resolve()
    if base not in BASES:
        raise JobError(f"base must be one of {', '.join(BASES)}.")
    cfg = check_config({**default_config(base, weights), **(config or {})})
    _check_nproc(nproc, cfg)
    report = report if report is not None and Path(report.root).resolve() == data_dir else validate_dataset(data_dir)
    if not report.ok:
        raise DatasetError(" ".join(report.problems))
    base_info = _base_info(base, weights)
    root.mkdir(parents=True, exist_ok=True)
    with launch_lock(root):
        _refuse_if_busy(root)
        upload = Path(upload_dir).resolve() if upload_dir is not None else None
        if upload is not None and not data_dir.is_relative_to(upload):
            raise JobError("The data folder is not inside the uploaded archive's folder.")
        job_id = f"{stamp()}-{secrets.token_hex(3)}"
        job_dir = root / job_id
        job_dir.mkdir()
        if upload is not None:
            os.replace(upload, job_dir / "upload")
            data_dir = job_dir / "upload" / data_dir.relative_to(upload)
        spec = {"id": job_id, "created": now_iso(), "data_dir": str(data_dir),
                "estimate": _estimate_record(report, cfg, root, base_info),
                "data_source": "upload" if upload is not None else "server folder",
                "data_name": "uploaded archive" if upload is not None else data_dir.name,
                "data": report.summary(), "base": base_info, "config": cfg, "bootstrap": int(bootstrap),
                "weights_root": str(weights.resolve()), "nproc": nproc}
        atomic_write_json(job_dir / SPEC, spec)
        atomic_write_json(job_dir / STATE, {"status": "starting", "created": spec["created"], "history": [],
                                            "message": "Starting the training process…",
                                            **phase_fields("preparing", time.time())})
        proc = _spawn_worker(job_dir, spec["created"], nproc)
        record_worker(job_dir, proc.pid, child=proc)
    return load_job(job_dir)


def _base_info(base: str, weights: Path) -> dict[str, Any]:
    """What the job starts from (the active version, checked: never fine-tune tampered weights) and, for a
    fresh start, the active version it is compared with."""
    info: dict[str, Any] = {"kind": base}
    if base == "active":
        folder = active_model_dir(weights)
        card = verify_version(folder)
        info.update(path=str(folder.resolve()), version=card.get("version", folder.name))
    else:
        try:
            folder = active_model_dir(weights)
            info["compare_with"] = {"path": str(folder.resolve()),
                                    "version": read_card(folder).get("version", folder.name)}
        except ModelLoadError:
            pass
    return info


def _refuse_if_busy(root: Path) -> None:
    """Raise JobBusyError while a job is alive or a training process holds the training lock."""
    busy = running_job(root)
    if busy is not None:
        raise JobBusyError(f"A training job ({busy.id}, started {busy.state.get('created', '?')}) is already "
                           f"running; only one runs at a time. Wait for it to finish or cancel it.")
    probe = FileLock(str(root / TRAIN_LOCK))
    try:
        probe.acquire(timeout=0)
    except Timeout as exc:
        raise JobBusyError("A training process still holds the training lock; try again in a moment.") from exc
    probe.release()


def _estimate_record(report: DatasetReport, cfg: Mapping[str, Any], root: Path,
                     base_info: Mapping[str, Any]) -> dict[str, Any]:
    """The job's estimate as its spec records it (``reference``: before this machine's pace corrected it)."""
    est = estimate_phases(report, cfg, device_kind(cfg.get("device", "auto")), root=root,
                          base_size=compared_size(base_info))
    return {"seconds": round(est.seconds), "basis": est.basis,
            "phases": {k: round(v, 1) for k, v in est.phases.items()},
            "reference": {k: round(v, 1) for k, v in est.reference.items()}}


def _check_nproc(nproc: int, cfg: Mapping[str, Any]) -> None:
    """Processes for a job: within their range, and on a GPU machine no more than its GPUs (one each)."""
    try:
        check_setting("nproc", nproc)
    except SettingsError as exc:
        raise JobError(str(exc)) from exc
    if nproc > 1 and cfg.get("device", "auto") != "cpu" and torch.cuda.is_available() \
            and nproc > torch.cuda.device_count():
        raise JobError(f"{nproc} processes were asked for, but this server has {torch.cuda.device_count()} "
                       f"GPU(s); each process trains on one.")


def _spawn_worker(job_dir: Path, created: str, nproc: int = 1) -> subprocess.Popen:
    """Start ``python -m pneumo_core jobs worker JOB_DIR`` (under torchrun for ``nproc`` > 1) in its own session
    (so a cancel can stop its whole process group; torchrun passes a SIGTERM on to every rank), its output in
    the job's log. If it cannot start, the job is recorded as failed."""
    args = ["jobs", "worker", str(job_dir)]
    try:
        with open(job_dir / LOG, "ab") as log:
            return subprocess.Popen(
                torchrun_command(nproc, args) if nproc > 1 else [sys.executable, "-m", "pneumo_core", *args],
                cwd=PACKAGE_PARENT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except OSError as exc:
        remove_temp(job_dir)
        atomic_write_json(job_dir / STATE, {"status": "failed", "phase": "ended", "created": created,
                                            "finished": now_iso(), "history": [],
                                            "message": f"The training process could not be started ({exc}). "
                                                       f"{UNCHANGED}"})
        raise JobError(f"The training process could not be started ({exc}).") from exc
