"""Training jobs that run in their own process, independent of whoever started them.

A job is a folder ``<jobs root>/<id>/`` (default ``weights/.jobs/``, or ``$PNEUMO_JOBS_DIR``):

    spec.json     what to do (data folder, base model, training config), written once by the launcher
    worker.json   the worker's pid and process start time, written once by the launcher
    state.json    status, phase (of ``PHASES``, with its own progress and each finished phase's seconds),
                  per-epoch progress, message, result; written (atomically) by the worker
    log.txt       the worker's output (kept whatever happens)
    cancel        present once someone asked to cancel
    upload/ view/ model/   temporary data and the model being built; removed when the job ends

Because everything is on disk, a job survives Streamlit reruns, page changes and browser refreshes,
and every user sees it. One job at a time: the launcher refuses while a job is alive, and the worker
holds ``.train.lock`` (an OS file lock, released by the kernel if the worker is killed, so a stale
lock never blocks the next job). Whoever looks at a job whose worker died (killed, crashed) marks it
failed and removes its temporary data; the registry is untouched because a new version enters it in
one rename at the very end.

Cancel: the ``cancel`` file is polled by the worker (between epochs, and every half second by a
thread that then interrupts the work); if the worker does not end, observers send SIGTERM, then
SIGKILL, to its process group.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock, Timeout

from pneumo_core.errors import ModelLoadError, PneumoError
from pneumo_core.files import atomic_write_json
from pneumo_core.ingest.datacheck import DatasetError, DatasetReport, remove_tree, validate_dataset
from pneumo_core.model.network import read_card
from pneumo_core.ops.registry import active_model_dir, add_version, verify_version, weights_root

SPEC, STATE, WORKER, CANCEL, LOG = "spec.json", "state.json", "worker.json", "cancel", "log.txt"
TRAIN_LOCK, LAUNCH_LOCK, UPLOADS = ".train.lock", ".launch.lock", ".uploads"
TEMP_DIRS = ("upload", "view", "model")
TERMINAL = ("succeeded", "failed", "cancelled")
BASES = ("active", "imagenet", "scratch")
START_GRACE_S = 60.0         # a job with no worker record after this long never started
CANCEL_TERM_S = 15.0         # cancel file this old and the worker still alive: SIGTERM
CANCEL_KILL_S = 60.0         # ... this old: SIGKILL
WORKER_NICE = 5              # training yields the CPU to people using the app ($PNEUMO_JOB_NICE overrides)
UNCHANGED = "The active model is unchanged."
_CHILDREN: dict[str, subprocess.Popen] = {}      # workers this process started (reaped when polled)

# Reference training throughput of DenseNet-121 at 224 px on an H100 (~1,500 img/s with GPU-side augmentation),
# used until the machine has measured its own.
GPU_REF_IMG_S_224 = 1500.0
# What each step of a job costs on a 2-core CPU without bf16 (this machine, idle; bench/train_throughput.py,
# bench/cpu_latency.py and bench/job_estimate.py): seconds per image at (64 px, 128 px) for a training step
# (fp32 + channels_last, batch 32) and a batched forward pass; seconds to decode one clinic film on one core
# (used when the data check did not measure it); fixed costs in seconds; the guard's feature pass relative to
# a plain forward pass; the film-type check's forward passes per film, its fitting, and its leave-one-source-
# out evaluation. Fitted to the phase times of bench/job_estimate.py's three jobs on this machine (the first
# rates, from the throughput benches, left training ~3x and the guard ~3.5x too fast).
CPU_COST: dict[str, Any] = {"start": 8.0, "load": 2.0, "read": 0.012, "train": (0.036, 0.10),
                            "infer": (0.008, 0.022), "features": 3.3, "bootstrap": 4.0, "negatives": 57,
                            "type_passes": 3.0, "type_fit": 10.0, "type_loso": 26.0}
# The phases of a job, in order: (key, what the page calls it).
PHASES = (("preparing", "starting and decoding the films"), ("training", "training"),
          ("calibrating", "calibrating and evaluating the new model"),
          ("guard", "fitting the out-of-distribution guard and the film-type check"),
          ("comparing", "comparing with the active model on the same films"))


class JobError(PneumoError, RuntimeError):
    """A job that cannot be started or found; the message says why."""


class JobBusyError(JobError):
    """Another training job is running (one at a time)."""


class CancelRequested(KeyboardInterrupt):
    """Raised inside the worker by SIGTERM; a KeyboardInterrupt so broad ``except Exception`` passes it on."""


def jobs_root() -> Path:
    env = os.environ.get("PNEUMO_JOBS_DIR")
    return Path(env) if env else weights_root() / ".jobs"


def _root(root: str | Path | None) -> Path:
    return Path(root) if root else jobs_root()


_LOCKS: dict[str, FileLock] = {}


def _launch_lock(root: Path) -> FileLock:
    """One lock object per jobs root and process: re-entrant within a thread (start_job reconciles while
    holding it), exclusive between threads and processes."""
    key = str(root.resolve() / LAUNCH_LOCK)
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(key, timeout=30)
    return _LOCKS[key]


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------- a job as seen from outside

@dataclass(frozen=True)
class Job:
    id: str
    dir: Path
    state: Mapping[str, Any]
    spec: Mapping[str, Any]

    @property
    def status(self) -> str:
        return str(self.state.get("status", "unknown"))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.state.get("history") or [])

    @property
    def epochs(self) -> int:
        return int((self.spec.get("config") or {}).get("epochs") or 0)

    @property
    def message(self) -> str:
        return str(self.state.get("message") or "")

    @property
    def version(self) -> str | None:
        return self.state.get("version")

    @property
    def log_path(self) -> Path:
        return self.dir / LOG

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                return "\n".join(fh.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""


def _load(job_dir: Path) -> Job:
    return Job(job_dir.name, job_dir, _read_json(job_dir / STATE), _read_json(job_dir / SPEC))


def get_job(job_id: str, root: str | Path | None = None) -> Job:
    job_dir = _root(root) / job_id
    if not job_id or job_id.startswith(".") or "/" in job_id or not (job_dir / SPEC).is_file():
        raise JobError(f"No training job {job_id!r}.")
    return _reconcile(job_dir)


def list_jobs(root: str | Path | None = None, limit: int = 20) -> list[Job]:
    """Newest first (ids sort by start time)."""
    root = _root(root)
    if not root.is_dir():
        return []
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / SPEC).is_file()),
                  key=lambda p: p.name, reverse=True)
    return [_reconcile(p) for p in dirs[:limit]]


def running_job(root: str | Path | None = None) -> Job | None:
    return next((j for j in list_jobs(root, limit=50) if not j.finished), None)


def latest_job(root: str | Path | None = None) -> Job | None:
    jobs = list_jobs(root, limit=1)
    return jobs[0] if jobs else None


# --------------------------------------------------------------------------- liveness and reconciliation

def _proc_info(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", 0)
    rest = stat[stat.rindex(")") + 2:].split()
    return rest[0], int(rest[19])


def _alive(job_id: str, pid: int, start: int | None) -> bool:
    proc = _CHILDREN.get(job_id)
    if proc is not None and proc.poll() is not None:           # ours, and it ended: reaped
        _CHILDREN.pop(job_id, None)
        return False
    if not Path("/proc/self/stat").exists():                   # not Linux: signal 0 is all we have
        return _pid_alive(pid)
    info = _proc_info(pid)
    if info is None or info[0] in ("Z", "X"):
        return False
    return not start or not info[1] or info[1] == start          # a different start: the pid was reused


def _worker_alive(job_dir: Path) -> bool | None:
    """True/False, or None when the launcher has not recorded a worker (yet)."""
    worker = _read_json(job_dir / WORKER)
    if not worker.get("pid"):
        return None
    return _alive(job_dir.name, int(worker["pid"]), worker.get("start"))


def _signal_group(job_dir: Path, sig: int) -> None:
    worker = _read_json(job_dir / WORKER)
    pid, start = int(worker.get("pid") or 0), worker.get("start")
    # Only a worker we can identify: without its start time, a reused pid could name another program's
    # process group (the cancel file still stops the worker itself).
    if pid > 1 and start and _alive(job_dir.name, pid, start) and _leads_another_group(pid):
        try:
            os.killpg(pid, sig)        # the worker leads its own session: its process group is its pid
        except (ProcessLookupError, PermissionError):
            pass


def _leads_another_group(pid: int) -> bool:
    """Whether ``pid`` leads a process group other than this process's own. A worker always does (it is
    started in a new session); a worker record naming anything else is not signalled as a group, so a
    wrong record can never take down this process or the programs that share its group."""
    try:
        return os.getpgid(pid) == pid and pid != os.getpgrp()
    except (ProcessLookupError, PermissionError):
        return False


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _reconcile(job_dir: Path) -> Job:
    """The job's state, after marking it ended if its worker is gone, and escalating a stuck cancel."""
    job = _load(job_dir)
    if job.finished:
        return job
    alive = _worker_alive(job_dir)
    if alive or (alive is None and _age(job_dir / SPEC) < START_GRACE_S):
        cancel = job_dir / CANCEL
        if alive and cancel.exists():
            age = _age(cancel)
            if age > CANCEL_KILL_S:
                _signal_group(job_dir, signal.SIGKILL)
            elif age > CANCEL_TERM_S:
                _signal_group(job_dir, signal.SIGTERM)
        return job
    with _launch_lock(job_dir.parent):
        job = _load(job_dir)                                   # the worker may have just finished
        if job.finished:
            return job
        state = dict(job.state)
        if (job_dir / CANCEL).exists():
            state.update(status="cancelled", message=f"Cancelled (the training process was stopped). {UNCHANGED}")
        elif alive is None:
            state.update(status="failed", message=f"The training process never started. {UNCHANGED}")
        else:
            state.update(status="failed", message=f"The training process stopped unexpectedly (it was killed or "
                                                  f"crashed) during {state.get('phase') or 'start-up'}. {UNCHANGED} "
                                                  f"See the log.")
        state.update(phase="ended", finished=_now())
        _remove_temp(job_dir)
        atomic_write_json(job_dir / STATE, state)
        return _load(job_dir)


def _remove_temp(job_dir: Path) -> None:
    for name in TEMP_DIRS:
        remove_tree(job_dir / name)
    for partial in job_dir.glob(".model.partial-*"):            # fit()'s staging, if killed mid-save
        remove_tree(partial)


# --------------------------------------------------------------------------- starting and cancelling

_CONFIG_FIELDS = {"epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "image_size", "dropout", "augment",
                  "mixup_alpha", "ema_decay", "seed", "device", "bf16", "channels_last", "compile", "val_fraction",
                  "max_images", "workers"}


def default_config(base: str, root: str | Path | None = None) -> dict[str, Any]:
    """Sensible starting hyperparameters for a base ('active' fine-tunes gently; the others train longer)."""
    cfg: dict[str, Any] = {"epochs": 10, "batch_size": 64, "lr": 3e-4, "image_size": 224, "augment": "strong",
                           "mixup_alpha": 0.2, "seed": 0, "device": "auto", "max_images": None}
    if base == "active":
        try:
            cfg["image_size"] = int(read_card(active_model_dir(root))["input"]["size"])
        except (ModelLoadError, KeyError, TypeError, ValueError):
            pass
    elif base == "imagenet":
        cfg.update(epochs=15, lr=1e-3)
    else:
        cfg.update(epochs=30, lr=1e-3)
    return cfg


CPU_FINE_TUNE_BUDGET_S = 15 * 60     # without a GPU, the proposed job should end within this
CPU_FINE_TUNE_EPOCHS = (5, 4, 3, 2, 1)
RECIPE_FIELDS = ("epochs", "lr", "batch_size", "image_size", "augment", "mixup_alpha")


def proposed_job(report: DatasetReport, device_kind: str, root: str | Path | None = None, *,
                 jobs_root: str | Path | None = None,
                 budget_s: float = CPU_FINE_TUNE_BUDGET_S) -> tuple[str, dict[str, Any], Estimate]:
    """What to propose for these data on this server: (base, config, its estimate).

    With a GPU: the full recipe, the one the active version was trained with (its card's epochs, learning
    rate, batch, input size, augmentation), from ImageNet weights when they are cached, else from scratch.
    Without one: a fine-tune of the active version at its own input size, gentle (lr 1e-4), with as many
    epochs (5 down to 1) as fit ``budget_s`` by ``estimate_phases``, and if one epoch does not fit, a cap
    on films per split, halved until it does (a trial run; at least 50 films). Without an active version,
    the full recipe's defaults from scratch."""
    from pneumo_core.model.network import imagenet_weights_path

    weights = Path(root) if root else weights_root()
    try:
        active_dir = active_model_dir(weights)
        active = read_card(active_dir)
    except ModelLoadError:
        active_dir, active = None, None
    base_size = int((active or {}).get("input", {}).get("size") or 0) or None
    if device_kind == "cuda" or active is None:
        base = "imagenet" if imagenet_weights_path().is_file() else "scratch"
        cfg = default_config(base, weights)
        recipe = (active or {}).get("training") or {}
        cfg.update({k: recipe[k] for k in RECIPE_FIELDS if recipe.get(k) is not None})
        cfg = _check_config(cfg)
        return base, cfg, estimate_phases(report, cfg, device_kind, root=jobs_root, base_size=base_size)
    cfg = {**default_config("active", weights), "lr": 1e-4}
    est = None
    for epochs in CPU_FINE_TUNE_EPOCHS:
        cfg["epochs"] = epochs
        est = estimate_phases(report, cfg, device_kind, root=jobs_root, base_size=base_size)
        if est.seconds <= budget_s:
            return "active", cfg, est
    cap = max(report.n_train, 100)
    while cap > 50 and est.seconds > budget_s:
        cap = max(50, cap // 2)
        cfg["max_images"] = cap
        est = estimate_phases(report, cfg, device_kind, root=jobs_root, base_size=base_size)
    return "active", cfg, est


def _check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    from pneumo_core.model.train import TrainConfig

    unknown = set(config) - _CONFIG_FIELDS
    if unknown:
        raise JobError(f"Unknown training setting(s): {', '.join(sorted(unknown))}.")
    cfg = {k: v for k, v in config.items() if v is not None or k == "max_images"}
    try:
        TrainConfig(**cfg)
    except TypeError as exc:
        raise JobError(f"Invalid training settings: {exc}") from exc
    checks = (("epochs", 1, 1000), ("batch_size", 2, 4096), ("image_size", 32, 1024))
    for key, lo, hi in checks:
        if key in cfg and not (isinstance(cfg[key], int) and lo <= cfg[key] <= hi):
            raise JobError(f"{key.replace('_', ' ')} must be a whole number from {lo} to {hi}.")
    if "lr" in cfg and not (0 < float(cfg["lr"]) < 1):
        raise JobError("The learning rate must be between 0 and 1.")
    if cfg.get("device") not in (None, "auto", "cpu", "cuda"):
        raise JobError("device must be auto, cpu or cuda.")
    if cfg.get("max_images") is not None and int(cfg["max_images"]) < 4:
        raise JobError("The cap on films per split must be at least 4.")
    return cfg


def new_upload_dir(root: str | Path | None = None) -> Path:
    """A fresh folder for an uploaded archive, beside the jobs (same file system: a job adopts it by rename).
    Its name carries this process's id, so that a sweep can tell whose it is (``remove_stale_uploads``)."""
    path = _root(root) / UPLOADS / f"{_stamp()}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    return path


_LEASED: set[str] = set()                # upload folders of this process that a live UploadLease holds
_LEASED_LOCK = threading.Lock()
ORPHAN_GRACE_S = 60.0                    # an unleased folder of this process younger than this is being filled


def _release(path: str) -> None:
    with _LEASED_LOCK:
        _LEASED.discard(path)
    remove_tree(path)                    # gone already when a job adopted it (renamed into the job's folder)


class UploadLease:
    """An upload folder (``new_upload_dir``) held by one session: when the lease is dropped (the session that
    holds it in its state ended, or replaced it) or ``release()`` is called, the folder is removed, unless a
    job adopted it first (``start_job`` renames it away). Path-like, so it can be passed where the folder is."""

    def __init__(self, root: str | Path | None = None):
        self.path = new_upload_dir(root)
        with _LEASED_LOCK:
            _LEASED.add(str(self.path))
        self._finalizer = weakref.finalize(self, _release, str(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def release(self) -> None:
        self._finalizer()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                      # e.g. PermissionError: it exists
        return True
    return True


def remove_stale_uploads(root: str | Path | None = None, max_age_s: float = 6 * 3600) -> None:
    """Remove uploads that no session holds any more and no job adopted: this process's folders that no live
    ``UploadLease`` holds (after ``ORPHAN_GRACE_S``), folders of a process that is gone (a restarted server),
    and any folder older than ``max_age_s``. Run when the Retrain page loads."""
    folder = _root(root) / UPLOADS
    me = os.getpid()
    try:
        for p in folder.iterdir() if folder.is_dir() else ():
            age = _age(p)
            parts = p.name.split("-")
            pid = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None
            with _LEASED_LOCK:
                leased = str(p) in _LEASED
            orphan = (pid == me and not leased and age > ORPHAN_GRACE_S) or (
                pid is not None and pid != me and not _pid_alive(pid))
            if orphan or age > max_age_s:
                remove_tree(p)
    except OSError:
        pass


def start_job(data_dir: str | Path, *, base: str = "active", config: Mapping[str, Any] | None = None,
              report: DatasetReport | None = None, upload_dir: str | Path | None = None, bootstrap: int = 1000,
              root: str | Path | None = None, weights: str | Path | None = None) -> Job:
    """Check the data and the request, then start a worker process; returns at once.

    ``upload_dir``: a folder from ``new_upload_dir`` holding ``data_dir``; the job takes it over and
    removes it when it ends. Raises DatasetError (bad data), JobBusyError (a job is running),
    JobError / ModelLoadError (bad request, no or tampered base model).
    """
    root = _root(root)
    weights = Path(weights) if weights else weights_root()
    data_dir = Path(data_dir).resolve()
    if base not in BASES:
        raise JobError(f"base must be one of {', '.join(BASES)}.")
    cfg = _check_config({**default_config(base, weights), **(config or {})})
    report = report if report is not None and Path(report.root).resolve() == data_dir else validate_dataset(data_dir)
    if not report.ok:
        raise DatasetError(" ".join(report.problems))
    base_info: dict[str, Any] = {"kind": base}
    if base == "active":
        folder = active_model_dir(weights)
        card = verify_version(folder)             # never fine-tune tampered weights
        base_info.update(path=str(folder.resolve()), version=card.get("version", folder.name))
    else:
        try:
            folder = active_model_dir(weights)
            base_info["compare_with"] = {"path": str(folder.resolve()),
                                         "version": read_card(folder).get("version", folder.name)}
        except ModelLoadError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    with _launch_lock(root):
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
        if upload_dir is not None:
            upload_dir = Path(upload_dir).resolve()
            if not data_dir.is_relative_to(upload_dir):
                raise JobError("The data folder is not inside the uploaded archive's folder.")
        job_id = f"{_stamp()}-{secrets.token_hex(3)}"
        job_dir = root / job_id
        job_dir.mkdir()
        if upload_dir is not None:
            os.replace(upload_dir, job_dir / "upload")
            data_dir = job_dir / "upload" / data_dir.relative_to(upload_dir)
        est = estimate_phases(report, cfg, device_kind(cfg.get("device", "auto")), root=root,
                              base_size=_base_size(base_info))
        spec = {"id": job_id, "created": _now(), "data_dir": str(data_dir),
                "estimate": {"seconds": round(est.seconds), "basis": est.basis,
                             "phases": {k: round(v, 1) for k, v in est.phases.items()},
                             "reference": {k: round(v, 1) for k, v in est.reference.items()}},
                "data_source": "upload" if upload_dir is not None else "server folder",
                "data_name": "uploaded archive" if upload_dir is not None else data_dir.name,
                "data": report.summary(), "base": base_info, "config": cfg, "bootstrap": int(bootstrap),
                "weights_root": str(weights.resolve())}
        atomic_write_json(job_dir / SPEC, spec)
        atomic_write_json(job_dir / STATE, {"status": "starting", "created": spec["created"], "history": [],
                                            "message": "Starting the training process…",
                                            **phase_fields("preparing", time.time())})
        try:
            with open(job_dir / LOG, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "pneumo_core", "jobs", "worker", str(job_dir)],
                    cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            _remove_temp(job_dir)
            atomic_write_json(job_dir / STATE, {"status": "failed", "phase": "ended", "created": spec["created"],
                                                "finished": _now(), "history": [],
                                                "message": f"The training process could not be started ({exc}). "
                                                           f"{UNCHANGED}"})
            raise JobError(f"The training process could not be started ({exc}).") from exc
        _CHILDREN[job_id] = proc
        info = _proc_info(proc.pid)
        atomic_write_json(job_dir / WORKER, {"pid": proc.pid, "start": info[1] if info else None})
    return _load(job_dir)


def _active_path() -> str | None:
    try:
        return str(active_model_dir())
    except ModelLoadError:
        return None


def _base_size(base_info: Mapping[str, Any]) -> int | None:
    """Input size of the model a job is compared with (it scores the same films at its own size)."""
    folder = base_info.get("path") or (base_info.get("compare_with") or {}).get("path")
    try:
        return int(read_card(folder)["input"]["size"]) if folder else None
    except (ModelLoadError, KeyError, TypeError, ValueError):
        return None


def cancel_job(job_id: str, root: str | Path | None = None) -> Job:
    """Ask a job to stop (it stops within about a second, before anything reaches the registry)."""
    job = get_job(job_id, root)
    if not job.finished:
        (job.dir / CANCEL).touch()
    return job


# --------------------------------------------------------------------------- time estimate

def device_kind(device: str = "auto") -> str:
    """'cuda' or 'cpu': where a job with this device setting would train."""
    import torch

    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def measured_throughput(device_kind: str, image_size: int = 224, root: str | Path | None = None, *,
                        recent: list[Job] | None = None) -> tuple[float, int] | None:
    """(training img/s, image size) measured by the newest job on this machine's ``device_kind`` at a size
    within a factor of 1.5 of ``image_size`` (tiny images are overhead-bound: they do not scale). ``recent``:
    ``list_jobs(root, limit=20)`` when the caller has it already."""
    for job in list_jobs(root, limit=20) if recent is None else recent:
        rows = [r.get("images_per_s") for r in job.history if r.get("images_per_s")]
        size = int((job.spec.get("config") or {}).get("image_size") or 224)
        if rows and job.state.get("device_kind") == device_kind and 1 / 1.5 <= size / image_size <= 1.5:
            return float(sorted(rows)[len(rows) // 2]), size
    return None


def phase_pace(device_kind: str, root: str | Path | None = None, limit: int = 5, *,
               recent: list[Job] | None = None) -> dict[str, float]:
    """Per phase, the median of (actual / reference seconds) over this machine's newest finished jobs on
    ``device_kind`` that recorded both (at most ``limit``); clipped to [0.25, 4] so one odd job cannot
    make the next estimate absurd. The reference is each job's estimate before its own pace correction
    (older jobs recorded only the corrected one), so corrections do not compound or cancel from job to job.
    ``recent``: ``list_jobs(root, limit=20)`` when the caller has it already."""
    ratios: dict[str, list[float]] = {}
    seen = 0
    for job in list_jobs(root, limit=20) if recent is None else recent:
        estimate = job.spec.get("estimate") or {}
        planned = estimate.get("reference") or estimate.get("phases") or {}
        actual = job.state.get("phases") or {}
        if job.status != "succeeded" or job.state.get("device_kind") != device_kind or not planned:
            continue
        for key, est in planned.items():
            if actual.get(key) and est and est > 0:
                ratios.setdefault(key, []).append(float(actual[key]) / float(est))
        seen += 1
        if seen >= limit:
            break
    return {k: min(4.0, max(0.25, sorted(v)[len(v) // 2])) for k, v in ratios.items()}


@dataclass(frozen=True)
class Estimate:
    """Seconds per phase (keys of ``PHASES``), their total, and where the rates came from; ``reference``: the
    same before this machine's pace corrected it (what ``phase_pace`` compares later jobs with)."""
    phases: dict[str, float]
    basis: str
    reference: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())


def _per_image_s(ref_64: float, ref_128: float, size: int) -> float:
    """Seconds per image at ``size`` px from two measurements, as a + b * size^2 (a: per-image overhead that
    does not shrink with the image; b: the convolutions)."""
    b = (ref_128 - ref_64) / (128 ** 2 - 64 ** 2)
    return max(ref_64 - b * 64 ** 2, 0.0) + b * size ** 2


def _count_film_types(folder: Path | None) -> int:
    from pneumo_core.safety.filmtype_fit import film_type_files

    return len(film_type_files(folder)) if folder is not None and folder.is_dir() else 0


def estimate_phases(report: DatasetReport, config: Mapping[str, Any], device_kind: str, *,
                    cpu_threads: int | None = None, root: str | Path | None = None,
                    film_types: Path | None | bool = True, base_size: int | None = None) -> Estimate:
    """Wall time of each phase of a job, from what each phase does and this machine's measured rates.

    What is counted (n_* are films; training/val/external are capped by ``max_images``, the later phases
    read whole folders):

    * preparing: process start, imports and model build (``CPU_COST["start"]``), then decoding the films
      ``fit`` uses (train, val, external) at the job's decoding threads;
    * training: per epoch, one training pass over train (floor to whole batches) and two inference passes
      (raw and averaged model) over val + external;
    * calibrating: model load, every film of val, test and external read again (one thread) and scored,
      and the bootstrap CIs per split;
    * guard: train and val decoded again, features of them and one augmented copy each, the whole check on
      test and external, the built-in negatives, and (when a film_types/ folder is found) the film-type
      check: its films read and featured with their augmented copies, and its fitting;
    * comparing: the active model loaded and run on val, test and external at its own size, with CIs.

    Rates: decoding from the data check's own measurement of these films (``report.read_s``) when it has
    one; training and inference per image from the CPU reference (measured on this 2-core machine at 64 and
    128 px, ``CPU_COST``), divided by cores/2, or the training pace an earlier job measured here. Then each
    phase is multiplied by this machine's pace on recent finished jobs (``phase_pace``: actual / estimated),
    so the estimate corrects itself from the jobs that ran here.
    """
    from pneumo_core.safety.fitting import film_types_folder

    size = int(config.get("image_size") or 224)
    if base_size is None:                                     # compared with the active version, at its size
        base_size = _base_size({"path": _active_path()})
    base_size = int(base_size or size)
    threads = cpu_threads or os.cpu_count() or 2
    cores = max(1.0, threads / 2)
    c = CPU_COST
    read_s = report.read_s or c["read"]
    if device_kind == "cuda":
        train_s = 1 / (GPU_REF_IMG_S_224 * (224 / size) ** 2)
        infer_s, infer_base_s = train_s / 3, 1 / (3 * GPU_REF_IMG_S_224 * (224 / base_size) ** 2)
        basis = f"a reference of {GPU_REF_IMG_S_224:.0f} img/s at 224 px on an H100"
    else:
        train_s = _per_image_s(*c["train"], size) / cores
        infer_s = _per_image_s(*c["infer"], size) / cores
        infer_base_s = _per_image_s(*c["infer"], base_size) / cores
        basis = (f"rates measured on a 2-core CPU ({1 / _per_image_s(*c['train'], 224):.0f} img/s training at "
                 f"224 px per 2 cores; {threads} cores here)")
    recent = list_jobs(root, limit=20)                        # read once: the throughput and the pace use it
    measured = measured_throughput(device_kind, size, recent=recent)
    if measured:
        train_s = 1 / (measured[0] * (measured[1] / size) ** 2)
        basis = f"{measured[0]:.0f} img/s measured at {measured[1]} px by an earlier job on this machine"
    if report.read_s:
        basis += f"; decoding {1 / report.read_s:.0f} films/s per core, measured while checking these films"
    cap = config.get("max_images")
    clip = (lambda n: min(n, int(cap))) if cap else (lambda n: n)  # noqa: E731
    counts = {s: sum(v.values()) for s, v in report.counts.items()}
    carved = sum(report.carved_val().values())
    n_train_all, n_val_all = report.n_train, counts.get("val", carved)
    n_ext_all, n_test = counts.get("external", 0), counts.get("test", 0)
    n_train, n_val, n_ext = clip(n_train_all), clip(n_val_all), clip(n_ext_all)
    batch = int(config.get("batch_size") or 64)
    epochs = int(config.get("epochs") or 10)
    workers = min(int(config.get("workers") or min(16, threads)), threads)
    decode = read_s / workers                                 # decoding threads in fit and in the guard
    evaluated = n_val_all + n_test + n_ext_all
    splits = sum(1 for n in (n_val_all, n_test, n_ext_all) if n)
    if film_types is True:
        film_types = film_types_folder(report.root)
    n_types = _count_film_types(film_types) if film_types else 0
    phases = {
        "preparing": c["start"] + (n_train + n_val + n_ext) * decode,
        "training": epochs * (max(1, n_train // batch) * batch * train_s + 2 * (n_val + n_ext) * infer_s),
        "calibrating": c["load"] + evaluated * (read_s + infer_s) + splits * c["bootstrap"],
        "guard": (c["load"] + (n_train_all + n_val_all) * (decode + 2 * infer_s * c["features"])
                  + (n_test + n_ext_all) * (read_s + infer_s * c["features"])
                  + c["negatives"] * (read_s + infer_s * c["features"])
                  + (n_types * (read_s + c["type_passes"] * infer_s) + c["type_fit"] + c["type_loso"]
                     if n_types else 0.0)),
        "comparing": c["load"] + evaluated * (read_s + infer_base_s) + splits * c["bootstrap"],
    }
    reference = dict(phases)
    pace = phase_pace(device_kind, recent=recent)
    if measured:
        pace.pop("training", None)                            # the measured pace already says it
    if pace:
        phases = {k: v * pace.get(k, 1.0) for k, v in phases.items()}
        basis += f", corrected by the time each phase took in this machine's last finished job(s)"
    return Estimate(phases, basis, reference)


def estimate_seconds(report: DatasetReport, config: Mapping[str, Any], device_kind: str, *,
                     cpu_threads: int | None = None, root: str | Path | None = None) -> tuple[float, str]:
    """Wall time of a whole job (every phase: ``estimate_phases``) and where its rates came from."""
    est = estimate_phases(report, config, device_kind, cpu_threads=cpu_threads, root=root)
    return est.seconds, est.basis


# --------------------------------------------------------------------------- the worker process

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


def phase_fields(key: str, started: float, step: str = "") -> dict[str, Any]:
    """What state.json says about the phase ``key`` (of ``PHASES``) that began at ``started`` (epoch s).
    ``phase_fraction`` is the phase's own measured progress where it has one (training: epochs done), else
    None (the page then counts the phase's time against its estimate)."""
    keys = [k for k, _ in PHASES]
    return {"phase": dict(PHASES)[key], "phase_key": key, "phase_index": keys.index(key) + 1,
            "phase_count": len(PHASES), "phase_started": started, "phase_step": step,
            "phase_fraction": 0.0 if key == "training" else None}


def _close_phase(state: dict, now: float) -> None:
    """Record how long the current phase took (``state['phases']``: key -> seconds; read by ``phase_pace``)."""
    key, started = state.get("phase_key"), state.get("phase_started")
    if key and started and key not in (state.get("phases") or {}):
        state.setdefault("phases", {})[key] = round(now - float(started), 1)


def run_worker(job_dir: str | Path) -> int:
    """The worker process's main: train, evaluate, compare, register. Exit 0 done, 1 failed, 3 cancelled."""
    job_dir = Path(job_dir).resolve()
    spec = _read_json(job_dir / SPEC)
    state = _read_json(job_dir / STATE) or {"history": []}
    if not spec:
        _log(f"no job spec in {job_dir}")
        return 1
    lock = FileLock(str(job_dir.parent / TRAIN_LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        state.update(status="failed", phase="ended", finished=_now(),
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
    save(status="running", started=_now(), pid=os.getpid(), message="")
    outcome: tuple[str, str, int]
    try:
        try:
            version = _work(job_dir, spec, state, save, switch)
            outcome = ("succeeded", f"New model version {version} is ready (not active until promoted).", 0)
            if switch.requested:
                outcome = ("succeeded", f"The job finished before the cancel took effect: version {version} was "
                                        f"added (not active).", 0)
        except BaseException as exc:  # noqa: BLE001 - every ending is recorded
            outcome = _outcome(exc)
    except CancelRequested:                              # arrived while the outcome was being worked out
        outcome = ("cancelled", f"Cancelled. {UNCHANGED}", 3)
    switch.stop_watching()
    status, message, rc = outcome
    _remove_temp(job_dir)
    if status == "succeeded":
        _close_phase(state, time.time())
    save(status=status, phase="ended", finished=_now(), message=message)
    _log(f"{status}: {message}")
    _audit_outcome(job_dir, status, state.get("version"))
    lock.release()
    return rc


def _audit_outcome(job_dir: Path, status: str, version: str | None) -> None:
    """The job's ending in the audit log (who started it is recorded by the app or the CLI)."""
    from pneumo_core.ops.audit import AuditError, record

    try:
        record("training_finished", role="job", session=f"job:{job_dir.name}", result=status, model_version=version,
               detail=f"job {job_dir.name}")
    except AuditError as exc:
        _log(f"audit log not written: {exc}")


def _outcome(exc: BaseException) -> tuple[str, str, int]:
    from pneumo_core.model.train import TrainingCancelled

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


def _work(job_dir: Path, spec: Mapping[str, Any], state: dict, save, switch: _CancelSwitch) -> str:
    from pneumo_core.ingest.folders import discover_splits
    from pneumo_core.model.evaluation import calibrate_model
    from pneumo_core.model.train import TrainConfig, _device_name, fit, pick_device
    from pneumo_core.safety.fitting import film_types_folder, fit_guard

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
    if device.type == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise JobError("A GPU was asked for but none is available to the training process.")
    save(device=_device_name(device), device_kind=device.type)
    _log(f"job {spec['id']}: base {base.get('version') or base['kind']}, {cfg.epochs} epochs at "
         f"{cfg.image_size} px on {state['device']}")

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
    from pneumo_core.ingest.folders import discover_splits, list_labelled
    from pneumo_core.model.network import LABELS
    from pneumo_core.model.train import _split_val

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
    those films with a verdict (``candidates.paired_verdict``); ``decision_split`` names the split the verdict
    to act on comes from (the first of test/, external/, val/ not used to fit the new model, if any)."""
    from pneumo_core.ingest.folders import discover_splits
    from pneumo_core.model.evaluation import evaluate_points, score_folder
    from pneumo_core.model.network import load_model
    from pneumo_core.model.predict import Predictor

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
    import numpy as np

    from pneumo_core.model.compare import paired_verdict
    from pneumo_core.model.evaluation import EVAL_DIR
    from pneumo_core.model.metrics import sigmoid

    try:
        saved = _read_json(model_dir / EVAL_DIR / f"{split}.json")["scores"]
        new = {(f, int(y)): float(p) for f, y, p in zip(saved["file"], saved["label"], saved["probability"])}
    except (KeyError, TypeError):
        return {"verdict": None, "error": f"the new model's per-film scores on {split}/ are missing"}
    keys = list(zip(active.files, active.labels.tolist()))
    if set(keys) != set(new) or len(keys) != len(new):
        return {"verdict": None, "error": f"the two models were not scored on the same films of {split}/"}
    y = np.asarray(active.labels, int)
    return paired_verdict(y, np.array([new[k] for k in keys]), sigmoid(active.logits / temperature),
                          n_boot=max(n_boot, 200))
