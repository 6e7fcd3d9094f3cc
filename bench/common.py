"""Shared pieces of the bench scripts: where the data is, a synthetic full-size film, model loading."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "chest_xray"      # the project's data, beside the checkout


def clinic_size_jpeg(rng: np.random.Generator, h: int = 1500, w: int = 1200) -> bytes:
    """A clinic-sized grey JPEG (the decode and resize cost of a real film), new bytes per call.

    It is a real film of external/ enlarged, with faint noise so every call hashes differently (no cache
    helps); a drawn stand-in only when the data is absent, which the OOD guard will rightly reject.
    """
    films = sorted((DATA / "external" / "PNEUMONIA").glob("*.jpeg")) if DATA.is_dir() else []
    if films:
        src = np.asarray(Image.open(films[int(rng.integers(len(films)))]).convert("L"), dtype=np.float32) / 255
        img = np.asarray(Image.fromarray((src * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                         dtype=np.float32) / 255 + 0.01 * rng.standard_normal((h, w))
    else:
        yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
        img = 0.65 + 0.05 * rng.standard_normal((h, w))
        for cx in (0.32, 0.68):
            img[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] -= 0.4
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def load_predictor(model: str | None, threads: int):
    """(Predictor, its folder, seconds to load) for --model or the active model, on ``threads`` CPU threads."""
    import torch

    from pneumo_core.model.predict import Predictor
    from pneumo_core.ops.registry import active_model_dir

    torch.set_num_threads(threads)
    model_dir = Path(model) if model else active_model_dir()
    t = time.perf_counter()
    predictor = Predictor.from_dir(model_dir)
    return predictor, model_dir, time.perf_counter() - t


# --------------------------------------------------------------------------- a real app server + browser

CHROMIUM = "/usr/bin/chromium"          # Debian's chromium (.ci/run installs it)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Installed in a page before its own scripts (add_init_script): when its last long task (> 50 ms on the main
# thread) ended. A user's upload starts once the page answers input: loaded (no request for 0.5 s), then no
# long task for QUIET_MS. The app's upload pages run about 2 s of such tasks after the box is drawn (they load
# a result's browser code then: appkit.viewer.preload_result_code).
LONG_TASKS_JS = """
window.__lastLongTaskEnd = 0;
new PerformanceObserver(list => list.getEntries().forEach(e => {
  window.__lastLongTaskEnd = Math.max(window.__lastLongTaskEnd, e.startTime + e.duration);
})).observe({type: "longtask"});
"""
QUIET_MS = 500
READY_FOR_INPUT = f"() => performance.now() - window.__lastLongTaskEnd >= {QUIET_MS}"
# Installed the same way: when the upload box enters the DOM (window.__boxAt, ms since the navigation started),
# in the page's own clock: a busy main thread would delay Playwright's polling.
BOX_DRAWN_JS = """
window.__boxAt = null;
new MutationObserver((_, obs) => {
  if (document.querySelector('[data-testid="stFileUploaderDropzone"]')) {
    window.__boxAt = performance.now();
    obs.disconnect();
  }
}).observe(document, {childList: true, subtree: true});
"""


def start_streamlit(weights_root: Path, log: Path, timeout_s: float = 90):
    """The app (`python -m appkit.serve`: `streamlit run app.py` with the model loaded at start) on a free localhost port serving ``weights_root``; (process, url) once healthy."""
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = ROOT / ".venv" / "bin" / "python"
    # as `make run` starts it: the model loads while the server starts (appkit/serve.py)
    cmd = [str(exe) if exe.is_file() else sys.executable, "-m", "appkit.serve", "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PNEUMO_WEIGHTS_DIR": str(weights_root)},
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_streamlit(proc)
    raise RuntimeError(f"streamlit did not become healthy:\n{log.read_text()[-3000:]}")


def stop_streamlit(proc) -> None:
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
