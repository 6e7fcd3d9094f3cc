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

import numpy as np
import torch
from filelock import FileLock, Timeout

from pneumo_core.errors import ModelLoadError, PneumoError
from pneumo_core.files import atomic_write_json
from pneumo_core.ingest.folders import discover_splits, list_labelled
from pneumo_core.model.compare import paired_verdict
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.evaluation import EVAL_DIR, calibrate_model, evaluate_points, score_folder
from pneumo_core.model.metrics import sigmoid
from pneumo_core.model.network import LABELS
from pneumo_core.model.store import load_model
from pneumo_core.model.predict import Predictor
from pneumo_core.model.train import TrainingCancelled, _device_name, _split_val, fit, pick_device
from pneumo_core.ops.audit import record
from pneumo_core.errors import AuditError
from pneumo_core.ops.jobs.store import (
    CANCEL,
    SPEC,
    STATE,
    TRAIN_LOCK,
    UNCHANGED,
    JobError,
    now_iso,
    phase_fields,
    read_json,
    remove_temp,
)
from pneumo_core.ops.registry import add_version, verify_version
from pneumo_core.safety.fitting import film_types_folder, fit_guard

WORKER_NICE = 5              # training yields the CPU to people using the app ($PNEUMO_JOB_NICE overrides)


class CancelRequested(KeyboardInterrupt):
    """Raised inside the worker by SIGTERM; a KeyboardInterrupt so broad ``except Exception`` passes it on."""


class _CancelSwitch:
    """Cancel requests reach the worker as a file (polled) or SIGTERM. The handler raises at most once,
    and only while ``armed`` (inside the training/evaluation work), so it can never interrupt the
    final bookkeeping; a request outside those windows is seen by ``check``."""

    def __init__(self, job_dir: Path):
        self.file = job_dir / CANCEL
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
        self.requested = True
        if self.armed and not self.raised:
            self.raised = True
            raise CancelRequested()

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
    cfg_over = dict(spec["config"])
    cfg_over.setdefault("workers", min(16, os.cpu_count() or 4))       # decoding threads
    base = spec["base"]
    if base["kind"] == "active":
        verify_version(base["path"])
        init = base["path"]
    else:
        init = base["kind"]
    cfg = TrainConfig(**{**cfg_over, "init": init})
    device = pick_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise JobError("A GPU was asked for but none is available to the training process.")
    save(device=_device_name(device), device_kind=device.type)
    _log(f"job {spec['id']}: base {base.get('version') or base['kind']}, {cfg.epochs} epochs at "
         f"{cfg.image_size} px on {state['device']}")
    return cfg, device


def _work(job_dir: Path, spec: Mapping[str, Any], state: dict, save, switch: _CancelSwitch) -> str:
    cfg, device = _config(spec, state, save)
    base = spec["base"]
    data = Path(spec["data_dir"])
    splits = switch.run(discover_splits, data)
    if "val" not in splits:
        data = _view_with_val(data, job_dir / "view", cfg)

    def enter(key: str) -> None:
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

    save(phase_step="decoding the films")
    model_dir = job_dir / "model"
    switch.run(fit, data, model_dir, cfg, progress=progress, should_stop=switch.should_stop,
               on_decoded=lambda: enter("training"))
    enter("calibrating")
    step("calibrating and evaluating the new model")
    n_boot = int(spec.get("bootstrap", 1000))
    card = switch.run(calibrate_model, model_dir, data, n_boot=n_boot, log=step, device=device)
    # a new version screens its inputs like the shipped one: the guard, and the film-type check when the
    # film_types/ folder is found (beside the data, or $PNEUMO_FILM_TYPES); else its card says it has none
    enter("guard")
    step("fitting the out-of-distribution guard and the film-type check")
    switch.run(fit_guard, model_dir, data, film_types=film_types_folder(Path(spec["data_dir"])), log=step)
    enter("comparing")
    compare = base if base["kind"] == "active" else base.get("compare_with")
    comparison = switch.run(_compare, model_dir, card, data, compare, n_boot, device)
    atomic_write_json(model_dir / "comparison.json", comparison)
    switch.check()                                        # last point at which a cancel is honoured
    save(phase_step="saving the new version")
    version = add_version(model_dir, spec["weights_root"])
    save(version=version)
    return version


def _view_with_val(data: Path, view: Path, cfg) -> Path:
    """Data without val/: a folder of links with a stratified validation split carved from train/
    (the same split fit() would make), so calibration and evaluation have a val/ to use."""
    splits = discover_splits(data)
    train, val = _split_val(list_labelled(splits["train"]), cfg.val_fraction, cfg.seed)
    for name, lf in (("train", train), ("val", val)):
        for label in LABELS:
            (view / name / label).mkdir(parents=True, exist_ok=True)
        for f, y in zip(lf.files, lf.labels.tolist()):
            os.symlink(f.resolve(), view / name / LABELS[y] / f.name)
    for name in ("test", "external"):
        if name in splits:
            os.symlink(splits[name].resolve(), view / name, target_is_directory=True)
    return view


def _compare(model_dir: Path, card: Mapping[str, Any], data: Path, baseline: Mapping[str, Any] | None,
             n_boot: int, device) -> dict[str, Any]:
    """The new model and the model it would replace, on the same films: metrics with 95% CIs per split and
    operating point (each model at its own thresholds), and per split a paired comparison of their AUCs on
    those films with a verdict (``compare.paired_verdict``); ``decision_split`` names the split the verdict
    to act on comes from (the first of test/, external/, val/ not used to fit the new model, if any)."""
    folders = {s: p for s, p in discover_splits(data).items() if s in ("val", "test", "external")}
    candidate = {s: (card.get("metrics") or {}).get(s) or {} for s in folders}
    out: dict[str, Any] = {
        "candidate_version": card.get("version"),
        "active_version": (baseline or {}).get("version"),
        "splits": {s: {"candidate": candidate[s]} for s in folders},
        "calibrated_on": (card.get("calibration") or {}).get("fitted_on"),
        "note": f"The new model's temperature, thresholds and epoch were chosen on "
                f"{(card.get('calibration') or {}).get('fitted_on', 'val/')}, so its numbers there are optimistic; "
                f"the active model's thresholds come from its own calibration.",
    }
    if baseline and baseline.get("path"):
        try:
            predictor = Predictor(load_model(baseline["path"], device=device))
        except ModelLoadError as exc:
            out["active_error"] = str(exc)
            return out
        for split, folder in folders.items():
            _log(f"evaluating the active model on {split}/")
            scores = score_folder(predictor, folder)
            out["splits"][split]["active"] = evaluate_points(predictor, folder, n_boot=n_boot, scores=scores)
            out["splits"][split]["paired"] = _paired(model_dir, split, scores, predictor.temperature, n_boot)
        fitted = str(out["calibrated_on"] or "").rstrip("/")
        order = sorted(folders, key=lambda s: (s == fitted, ("test", "external", "val").index(s)))
        out["decision_split"] = order[0] if order else None
    return out


def _paired(model_dir: Path, split: str, active, temperature: float, n_boot: int) -> dict[str, Any]:
    """The new model's saved per-film probabilities on ``split`` (from its calibration on the same data)
    against the active model's ``active`` scores, film by film (matched by class and file name)."""
    try:
        saved = read_json(model_dir / EVAL_DIR / f"{split}.json")["scores"]
        new = {(f, int(y)): float(p) for f, y, p in zip(saved["file"], saved["label"], saved["probability"])}
    except (KeyError, TypeError):
        return {"verdict": None, "error": f"the new model's per-film scores on {split}/ are missing"}
    keys = list(zip(active.files, active.labels.tolist()))
    if set(keys) != set(new) or len(keys) != len(new):
        return {"verdict": None, "error": f"the two models were not scored on the same films of {split}/"}
    y = np.asarray(active.labels, int)
    return paired_verdict(y, np.array([new[k] for k in keys]), sigmoid(active.logits / temperature),
                          n_boot=max(n_boot, 200))
