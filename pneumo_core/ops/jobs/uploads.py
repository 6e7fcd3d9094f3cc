"""Folders for uploaded training archives: beside the jobs, held by the session that uploaded them until a
job adopts one (``start_job`` renames it into the job's folder) or the session lets go of it."""

from __future__ import annotations

import os
import secrets
import threading
import weakref
from pathlib import Path

import psutil

from pneumo_core.ingest.archives import remove_tree
from pneumo_core.ops.jobs.store import UPLOADS, age, jobs_root, stamp

_LEASED: set[str] = set()                # upload folders of this process that a live UploadLease holds
_LEASED_LOCK = threading.Lock()
ORPHAN_GRACE_S = 60.0                    # an unleased folder of this process younger than this is being filled


def new_upload_dir(root: str | Path | None = None) -> Path:
    """A fresh folder for an uploaded archive, beside the jobs (same file system: a job adopts it by rename).
    Its name carries this process's id, so that a sweep can tell whose it is (``remove_stale_uploads``)."""
    path = jobs_root(root) / UPLOADS / f"{stamp()}-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    return path


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


def remove_stale_uploads(root: str | Path | None = None, max_age_s: float = 6 * 3600) -> None:
    """Remove uploads that no session holds any more and no job adopted: this process's folders that no live
    ``UploadLease`` holds (after ``ORPHAN_GRACE_S``), folders of a process that is gone (a restarted server),
    and any folder older than ``max_age_s``. Run when the Retrain page loads."""
    folder = jobs_root(root) / UPLOADS
    me = os.getpid()
    try:
        for p in folder.iterdir() if folder.is_dir() else ():
            waited = age(p)
            parts = p.name.split("-")
            pid = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None
            with _LEASED_LOCK:
                leased = str(p) in _LEASED
            orphan = (pid == me and not leased and waited > ORPHAN_GRACE_S) or (
                pid is not None and pid != me and not psutil.pid_exists(pid))
            if orphan or waited > max_age_s:
                remove_tree(p)
    except OSError:
        pass
