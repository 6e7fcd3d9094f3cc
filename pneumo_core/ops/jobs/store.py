"""A training job's records on disk, and what anyone who looks at a job may conclude from them.

A job is a folder ``<jobs root>/<id>/`` (default ``weights/.jobs/``, or ``$PNEUMO_JOBS_DIR``):

    spec.json     what to do (data folder, base model, training config), written once by the launcher
    worker.json   the worker's pid and process creation time, written once by the launcher
    state.json    status, phase (of ``PHASES``, with its own progress and each finished phase's seconds),
                  per-epoch progress, message, result; written (atomically) by the worker
    log.txt       the worker's output (kept whatever happens)
    cancel        present once someone asked to cancel
    upload/ view/ model/   temporary data and the model being built; removed when the job ends

Cancel: the ``cancel`` file is polled by the worker (between epochs, and every half second by a
thread that then interrupts the work); if the worker does not end, observers send SIGTERM, then
SIGKILL, to its process group.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import psutil
from filelock import FileLock

from pneumo_core.errors import JobError
from pneumo_core.files import atomic_write_json
from pneumo_core.ingest.archives import remove_tree
from pneumo_core.ops.registry import weights_root

SPEC, STATE, WORKER, CANCEL, LOG = "spec.json", "state.json", "worker.json", "cancel", "log.txt"
TRAIN_LOCK, LAUNCH_LOCK, UPLOADS = ".train.lock", ".launch.lock", ".uploads"
TEMP_DIRS = ("upload", "view", "model")
TERMINAL = ("succeeded", "failed", "cancelled")
START_GRACE_S = 60.0         # a job with no worker record after this long never started
CANCEL_TERM_S = 15.0         # cancel file this old and the worker still alive: SIGTERM
CANCEL_KILL_S = 60.0         # ... this old: SIGKILL
UNCHANGED = "The active model is unchanged."
# The phases of a job, in order: (key, what the page calls it).
PHASES = (("preparing", "starting and decoding the films"), ("training", "training"),
          ("calibrating", "calibrating and evaluating the new model"),
          ("guard", "fitting the out-of-distribution guard and the film-type check"),
          ("comparing", "comparing with the active model on the same films"))
_CHILDREN: dict[str, subprocess.Popen] = {}      # workers this process started (reaped when polled)


def jobs_root(root: str | Path | None = None) -> Path:
    """``root`` when given, else where jobs live: ``$PNEUMO_JOBS_DIR``, or ``.jobs/`` in the weights folder."""
    if root:
        return Path(root)
    env = os.environ.get("PNEUMO_JOBS_DIR")
    return Path(env) if env else weights_root() / ".jobs"


_LOCKS: dict[str, FileLock] = {}


def launch_lock(root: Path) -> FileLock:
    """One lock object per jobs root and process: re-entrant within a thread (start_job reconciles while
    holding it), exclusive between threads and processes."""
    key = str(root.resolve() / LAUNCH_LOCK)
    if key not in _LOCKS:
        _LOCKS[key] = FileLock(key, timeout=30)
    return _LOCKS[key]


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def age(path: Path) -> float:
    """Seconds since ``path`` was last modified (0 when it cannot be read)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def phase_fields(key: str, started: float, step: str = "") -> dict[str, Any]:
    """What state.json says about the phase ``key`` (of ``PHASES``) that began at ``started`` (epoch s).
    ``phase_fraction`` is the phase's own measured progress where it has one (training: epochs done), else
    None (the page then counts the phase's time against its estimate)."""
    keys = [k for k, _ in PHASES]
    return {"phase": dict(PHASES)[key], "phase_key": key, "phase_index": keys.index(key) + 1,
            "phase_count": len(PHASES), "phase_started": started, "phase_step": step,
            "phase_fraction": 0.0 if key == "training" else None}


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


def load_job(job_dir: Path) -> Job:
    """The job's records as they are on disk (``get_job`` also notices a dead worker)."""
    return Job(job_dir.name, job_dir, read_json(job_dir / STATE), read_json(job_dir / SPEC))


def get_job(job_id: str, root: str | Path | None = None) -> Job:
    job_dir = jobs_root(root) / job_id
    if not job_id or job_id.startswith(".") or "/" in job_id or not (job_dir / SPEC).is_file():
        raise JobError(f"No training job {job_id!r}.")
    return _reconcile(job_dir)


def list_jobs(root: str | Path | None = None, limit: int = 20) -> list[Job]:
    """Newest first (ids sort by start time)."""
    root = jobs_root(root)
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


def cancel_job(job_id: str, root: str | Path | None = None) -> Job:
    """Ask a job to stop (it stops within about a second, before anything reaches the registry)."""
    job = get_job(job_id, root)
    if not job.finished:
        (job.dir / CANCEL).touch()
    return job


# --------------------------------------------------------------------------- liveness and reconciliation

def record_worker(job_dir: Path, pid: int, *, child: subprocess.Popen | None = None) -> None:
    """Write worker.json: the worker's pid and its creation time, which tell it apart from a later process
    that reuses the pid. ``child``: the worker, when this process started it (then it is reaped when polled)."""
    if child is not None:
        _CHILDREN[job_dir.name] = child
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:                   # gone already, or not ours to inspect: identity unknown
        created = None
    atomic_write_json(job_dir / WORKER, {"pid": pid, "create_time": created})


def _alive(job_id: str, pid: int, created: float | None) -> bool:
    """Whether the worker ``pid`` (created at ``created``, when known) still runs; a zombie has ended."""
    child = _CHILDREN.get(job_id)
    if child is not None and child.poll() is not None:           # ours, and it ended: reaped
        _CHILDREN.pop(job_id, None)
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return created is None or abs(proc.create_time() - float(created)) < 0.005   # else: the pid was reused
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:                                  # it exists, but cannot be told apart
        return True


def _worker_alive(job_dir: Path) -> bool | None:
    """True/False, or None when the launcher has not recorded a worker (yet)."""
    worker = read_json(job_dir / WORKER)
    if not worker.get("pid"):
        return None
    return _alive(job_dir.name, int(worker["pid"]), worker.get("create_time"))


def _signal_group(job_dir: Path, sig: int) -> None:
    worker = read_json(job_dir / WORKER)
    pid, created = int(worker.get("pid") or 0), worker.get("create_time")
    # Only a worker we can identify: without its creation time, a reused pid could name another program's
    # process group (the cancel file still stops the worker itself).
    if pid > 1 and created and _alive(job_dir.name, pid, created) and _leads_another_group(pid):
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


def _reconcile(job_dir: Path) -> Job:
    """The job's state, after marking it ended if its worker is gone, and escalating a stuck cancel."""
    job = load_job(job_dir)
    if job.finished:
        return job
    alive = _worker_alive(job_dir)
    if alive or (alive is None and age(job_dir / SPEC) < START_GRACE_S):
        cancel = job_dir / CANCEL
        if alive and cancel.exists():
            waited = age(cancel)
            if waited > CANCEL_KILL_S:
                _signal_group(job_dir, signal.SIGKILL)
            elif waited > CANCEL_TERM_S:
                _signal_group(job_dir, signal.SIGTERM)
        return job
    with launch_lock(job_dir.parent):
        job = load_job(job_dir)                                  # the worker may have just finished
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
        state.update(phase="ended", finished=now_iso())
        remove_temp(job_dir)
        atomic_write_json(job_dir / STATE, state)
        return load_job(job_dir)


def remove_temp(job_dir: Path) -> None:
    """Remove a job's temporary data (its log and records stay)."""
    for name in TEMP_DIRS:
        remove_tree(job_dir / name)
    for partial in job_dir.glob("*.model.partial-*"):           # the version's staging (and fit()'s inside it)
        remove_tree(partial)
