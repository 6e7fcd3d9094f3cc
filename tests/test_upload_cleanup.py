"""Issue #19, item 7: an uploaded training archive's folder goes when its session ends (it stayed 6 hours).

The Retrain page holds the folder through an ``UploadLease`` in the session's state: the session's end
drops it and the folder with it; the page's sweep removes what a crash or a restart left behind."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import time
import zipfile

from test_retrain_page import data, open_page, run, weights  # noqa: F401  (fixtures)

from pneumo_core.ops.jobs.store import UPLOADS
from pneumo_core.ops.jobs.uploads import ORPHAN_GRACE_S, UploadLease, remove_stale_uploads


def _folders(root) -> list[str]:
    folder = root / UPLOADS
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_lease_removes_its_folder_when_dropped_or_released(tmp_path):
    lease = UploadLease(tmp_path)
    path = lease.path
    assert path.is_dir() and f"-{os.getpid()}-" in path.name and os.fspath(lease) == str(path)
    del lease
    gc.collect()
    assert not path.exists()
    other = UploadLease(tmp_path)
    other.release()
    assert not other.path.exists()


def test_sweep_removes_orphans_and_keeps_what_a_session_holds(tmp_path):
    uploads = tmp_path / UPLOADS
    held = UploadLease(tmp_path)
    me, parent, dead = os.getpid(), os.getppid(), _dead_pid()
    names = {"mine_orphan": f"20260101-000000-{me}-aaaa0001", "dead_process": f"20260101-000000-{dead}-aaaa0002",
             "other_live": f"20260101-000000-{parent}-aaaa0003", "old_style": "20260101-000000-aaaa0004",
             "old_style_expired": "20260101-000000-aaaa0005"}
    for name in names.values():
        (uploads / name).mkdir()
    past = time.time() - 2 * ORPHAN_GRACE_S
    os.utime(uploads / names["mine_orphan"], (past, past))
    os.utime(uploads / names["old_style_expired"], (past - 7 * 3600, past - 7 * 3600))

    remove_stale_uploads(tmp_path)
    left = set(_folders(tmp_path))
    assert held.path.name in left                                    # a live session's upload stays
    assert names["other_live"] in left and names["old_style"] in left
    assert not left & {names["mine_orphan"], names["dead_process"], names["old_style_expired"]}
    held.release()


def test_retrain_upload_folder_is_gone_once_its_session_ends(weights, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(data.rglob("*.png")):
            zf.write(f, f.relative_to(data).as_posix())
    at = open_page()
    at.radio(key="retrain_source").set_value("upload")
    run(at)
    at.file_uploader(key="retrain_zip").set_value(("data.zip", buf.getvalue(), "application/zip"))
    run(at)
    assert any("ready to train" in s.value for s in at.success)
    root = weights / ".jobs"
    assert len(_folders(root)) == 1                                  # unpacked for this session
    del at                                                           # the session ends: its state is dropped
    gc.collect()
    assert _folders(root) == []
