"""Upload-to-overlay time in a real browser, on CPU, for one film on the Predict page.

    python bench/bench_app_browser.py [--model DIR] [--film FILE] [--runs 5]

Starts `streamlit run app.py` on a free localhost port and drives Debian's headless Chromium with
Playwright. Each run opens a fresh session, uploads the film and stops the clock when the
probability and both images (film and Grad-CAM overlay) are decoded by the browser. The first
upload after the server starts also loads the model and is reported apart. Goal: <= 1.5 s (warm).
Uses the active model in weights/ unless --model; the film defaults to a real external/ film enlarged to 1500x1200 JPEG.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CHROMIUM, CHROMIUM_ARGS, ROOT, clinic_size_jpeg, start_streamlit, stop_streamlit  # noqa: E402

DONE = ("() => document.querySelectorAll('[data-testid=stMetricValue]').length >= 1 && "
        "[...document.querySelectorAll('[data-testid=stImage] img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length >= 2")


def weights_root(model: str | None, tmp: Path) -> Path:
    if not model:
        root = ROOT / "weights"
        if not (root / "ACTIVE").is_file():
            sys.exit("No active model in weights/; pass --model DIR.")
        return root
    (tmp / "bench").symlink_to(Path(model).resolve(), target_is_directory=True)
    (tmp / "ACTIVE").write_text("bench\n")
    return tmp


def upload_to_overlay(browser, url: str, name: str, data: bytes) -> float:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(url)
        uploader = page.locator('[data-testid="stFileUploaderDropzoneInput"]')
        uploader.wait_for(state="attached", timeout=60_000)
        t = time.perf_counter()
        uploader.set_input_files({"name": name, "mimeType": "application/octet-stream", "buffer": data})
        page.wait_for_function(DONE, timeout=120_000, polling=20)
        return time.perf_counter() - t
    finally:
        page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the active model in weights/)")
    ap.add_argument("--film", help="film to upload (default: a real film enlarged to 1500x1200 JPEG, new bytes per run)")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = weights_root(args.model, Path(tmp))
        film = (lambda i: Path(args.film).read_bytes()) if args.film else (lambda i: clinic_size_jpeg(np.random.default_rng(i)))
        name = Path(args.film).name if args.film else "film.jpg"
        proc, url = start_streamlit(root, Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                cold = upload_to_overlay(browser, url, name, film(0))
                # a new film per run (new hash), so no session cache helps; the model stays loaded
                warm = [upload_to_overlay(browser, url, name, film(i + 1)) for i in range(args.runs)]
                browser.close()
        finally:
            stop_streamlit(proc)
    print(f"model     {'--model ' + args.model if args.model else 'weights/ACTIVE'} ({root})")
    print(f"film      {name}, {len(film(0)) / 1024:.0f} KB")
    print(f"cold      {cold:.2f} s (first upload after server start: includes loading the model)")
    print("warm      " + ", ".join(f"{w:.2f}" for w in warm) + " s")
    med = statistics.median(warm)
    print(f"median    {med:.2f} s upload-to-overlay (goal <= 1.5 s -> {'met' if med <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
