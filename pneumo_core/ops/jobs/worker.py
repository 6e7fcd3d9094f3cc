"""The worker process of a job (``python -m pneumo_core jobs worker DIR``): train, calibrate, fit the guard,
compare with the active model, and register the new version, recording progress in state.json as it goes.
It imports the whole training stack, so only the worker process imports this module."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist
from filelock import FileLock, Timeout

from pneumo_core.errors import AuditError, JobError, PneumoError, TrainingCancelled
from pneumo_core.files import atomic_write_json
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.distributed import is_main_process, world_size_from_env
from pneumo_core.model.pipeline import train_version
from pneumo_core.model.train import _device_name, pick_device
from pneumo_core.ops.audit import record
from pneumo_core.ops.jobs.store import (
    CANCEL,
    SPEC,
    STATE,
    TRAIN_LOCK,
    UNCHANGED,
    now_iso,
    phase_fields,
    read_json,
    remove_temp,
)
from pneumo_core.ops.registry import add_version, verify_version

WORKER_NICE = 5              # training yields the CPU to people using the app ($PNEUMO_JOB_NICE overrides)


class CancelRequested(KeyboardInterrupt):
    """Raised inside the worker by SIGTERM; a KeyboardInterrupt so broad ``except Exception`` passes it on."""


class RankStopped(KeyboardInterrupt):
    """Raised in rank 0 of a job under torchrun by a SIGTERM that no cancel asked for: torchrun stopping the
    ranks because another one failed."""


class _CancelSwitch:
    """Cancel requests reach the worker as a file (polled) or SIGTERM. The handler raises at most once,
    and only while ``armed`` (inside the training/evaluation work), so it can never interrupt the
    final bookkeeping; a request outside those windows is seen by ``check``."""

    def __init__(self, job_dir: Path):
        self.file = job_dir / CANCEL
        self.ranks = world_size_from_env()
        self.requested = False
        self.armed = False
        self.raised = False
        self._stop = threading.Event()

    def should_stop(self) -> bool:
        self.requested = self.requested or self.file.exists()
        return self.requested

    def check(self) -> None:
        if self.should_stop():
            raise CancelRequested()

    def on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        peer_failed = self.ranks > 1 and not self.file.exists()
        self.requested = self.requested or not peer_failed
        if self.armed and not self.raised:
            self.raised = True
            raise RankStopped() if peer_failed else CancelRequested()

    def run(self, fn, *args, **kwargs):
        self.check()
        self.armed = True
        try:
            return fn(*args, **kwargs)
        finally:
            self.armed = False

    def watch(self) -> None:
        def loop() -> None:
            while not self._stop.wait(0.5):
                if self.file.exists():
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
        threading.Thread(target=loop, name="cancel-watch", daemon=True).start()

    def stop_watching(self) -> None:
        self._stop.set()


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _close_phase(state: dict, now: float) -> None:
    """Record how long the current phase took (``state['phases']``: key -> seconds; read by ``phase_pace``)."""
    key, started = state.get("phase_key"), state.get("phase_started")
    if key and started and key not in (state.get("phases") or {}):
        state.setdefault("phases", {})[key] = round(now - float(started), 1)


def run_worker(job_dir: str | Path) -> int:
    """The worker process's main: train, evaluate, compare, register. Exit 0 done, 1 failed, 3 cancelled."""
    job_dir = Path(job_dir).resolve()
    spec = read_json(job_dir / SPEC)
    state = read_json(job_dir / STATE) or {"history": []}
    if not spec:
        _log(f"no job spec in {job_dir}")
        return 1
    if not is_main_process():
        return _run_rank(job_dir, spec)
    lock = FileLock(str(job_dir.parent / TRAIN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        state.update(status="failed", phase="ended", finished=now_iso(),
                     message=f"Another training job is running (it holds the training lock). {UNCHANGED}")
        atomic_write_json(job_dir / STATE, state)
        return 1
    switch = _CancelSwitch(job_dir)
    signal.signal(signal.SIGTERM, switch.on_sigterm)
    switch.watch()
    try:
        os.nice(int(os.environ.get("PNEUMO_JOB_NICE", WORKER_NICE)))
    except (OSError, ValueError):
        pass

    def save(**changes: Any) -> None:
        state.update(changes)
        atomic_write_json(job_dir / STATE, state)

    if not state.get("phase_key"):                       # a state.json from before phases were recorded
        state.update(phase_fields("preparing", time.time()))
    save(status="running", started=now_iso(), pid=os.getpid(), message="")
    status, message, rc = _run(job_dir, spec, state, save, switch)
    switch.stop_watching()
    remove_temp(job_dir)
    if status == "succeeded":
        _close_phase(state, time.time())
    save(status=status, phase="ended", finished=now_iso(), message=message)
    _log(f"{status}: {message}")
    _audit_outcome(job_dir, status, state.get("version"))
    lock.release()
    return rc


def _run_rank(job_dir: Path, spec: Mapping[str, Any]) -> int:
    """A rank other than 0 of a job under torchrun: it trains beside rank 0 and writes nothing (rank 0 holds the
    training lock and keeps the job's records, its log, the audit events and the registry). A cancel file stops
    every rank at the same epoch; an error here ends this process, and torchrun then stops the others."""
    cancel = job_dir / CANCEL
    train_version(Path(spec["data_dir"]), job_dir / "model", _job_config(spec), should_stop=cancel.exists)
    return 0


def _run(job_dir: Path, spec: Mapping[str, Any], state: dict, save, switch: _CancelSwitch) -> tuple[str, str, int]:
    """The work, and how it ended: (status, message, exit code)."""
    try:
        try:
            version = _work(job_dir, spec, state, save, switch)
            if switch.requested:
                return ("succeeded", f"The job finished before the cancel took effect: version {version} was "
                                     f"added (not active).", 0)
            return ("succeeded", f"New model version {version} is ready (not active until promoted).", 0)
        except BaseException as exc:  # noqa: BLE001 - every ending is recorded
            return _outcome(exc)
    except CancelRequested:                              # arrived while the outcome was being worked out
        return ("cancelled", f"Cancelled. {UNCHANGED}", 3)


def _audit_outcome(job_dir: Path, status: str, version: str | None) -> None:
    """The job's ending in the audit log (who started it is recorded by the app or the CLI)."""
    try:
        record("training_finished", role="job", session=f"job:{job_dir.name}", result=status, model_version=version,
               detail=f"job {job_dir.name}")
    except AuditError as exc:
        _log(f"audit log not written: {exc}")


def _outcome(exc: BaseException) -> tuple[str, str, int]:
    if isinstance(exc, RankStopped) or (isinstance(exc, dist.DistError) and world_size_from_env() > 1):
        traceback.print_exception(exc, file=sys.stdout)
        return ("failed", f"Another training process of this job failed; torchrun's report in the log names its "
                          f"rank. {UNCHANGED}", 1)
    if isinstance(exc, (CancelRequested, TrainingCancelled)):
        return "cancelled", f"Cancelled. {UNCHANGED}", 3
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return "failed", f"The training process was interrupted. {UNCHANGED}", 1
    traceback.print_exception(exc, file=sys.stdout)
    if isinstance(exc, (PneumoError, FileNotFoundError, FileExistsError, ValueError)):
        return "failed", f"Training failed: {exc} {UNCHANGED}", 1
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return "failed", f"Training ran out of memory: lower the batch size or image size. {UNCHANGED}", 1
    return "failed", f"Training failed ({type(exc).__name__}); details are in the log. {UNCHANGED}", 1


def _config(spec: Mapping[str, Any], state: dict, save) -> tuple[TrainConfig, torch.device]:
    """The job's TrainConfig (from its base: the checked active version, or ImageNet/scratch) and device."""
    base = spec["base"]
    if base["kind"] == "active":
        verify_version(base["path"])
    cfg = _job_config(spec)
    device = pick_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JobError("A GPU was asked for but none is available to the training process.")
    save(device=_device_name(device), device_kind=device.type)
    _log(f"job {spec['id']}: base {base.get('version') or base['kind']}, {cfg.epochs} epochs at "
         f"{cfg.image_size} px on {state['device']}")
    return cfg, device


def _job_config(spec: Mapping[str, Any]) -> TrainConfig:
    """The job's TrainConfig: its settings, from its base (the active version's folder, or ImageNet/scratch)."""
    cfg_over = dict(spec["config"])
    cfg_over.setdefault("workers", min(16, os.cpu_count() or 4))       # decoding threads
    base = spec["base"]
    return TrainConfig(**{**cfg_over, "init": base["path"] if base["kind"] == "active" else base["kind"]})


def _work(job_dir: Path, spec: Mapping[str, Any], state: dict, save, switch: _CancelSwitch) -> str:
    """Make the version the one way (``model.pipeline.train_version``), recording each phase, step and epoch in
    state.json, then register it. A cancel is honoured up to the moment the version is registered."""
    cfg, _ = _config(spec, state, save)
    base = spec["base"]

    def enter(key: str) -> None:
        if key == state.get("phase_key"):                 # "preparing" was recorded when the job started
            return
        now = time.time()
        _close_phase(state, now)
        save(**phase_fields(key, now), eta_s=None)

    def step(msg: str) -> None:                           # a phase's log lines name its current step
        _log(msg)
        save(phase_step=msg)

    def progress(r) -> None:
        row = {"epoch": r.epoch, "train_loss": r.train_loss, **r.metrics, "images_per_s": r.images_per_s,
               "elapsed_s": r.elapsed_s, "eta_s": r.eta_s, "best": r.best}
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in r.metrics.items())
        _log(f"epoch {r.epoch}/{r.epochs}  loss={r.train_loss:.4f}  {metrics}  {r.images_per_s:.0f} img/s  "
             f"eta {r.eta_s:.0f}s")
        save(history=state.get("history", []) + [row], eta_s=r.eta_s, phase_fraction=r.epoch / r.epochs,
             phase_step=f"epoch {r.epoch} of {r.epochs}")

    model_dir = job_dir / "model"
    compare = base if base["kind"] == "active" else base.get("compare_with")
    switch.run(train_version, Path(spec["data_dir"]), model_dir, cfg, progress=progress,
               should_stop=switch.should_stop, on_phase=enter, log=step, n_boot=int(spec.get("bootstrap", 1000)),
               view_dir=job_dir / "view", compare_with=compare or {})
    switch.check()                                        # last point at which a cancel is honoured
    save(phase_step="saving the new version")
    version = add_version(model_dir, spec["weights_root"])
    save(version=version)
    return version
