"""The README's picture of the Predict page: `python docs/make_screenshot.py [--film FILE] [--out docs/predict.jpg]`.

Serves the app on the active model as `make run` does, uploads one film in headless Chromium (1400x1000, light
theme) and saves the page as a JPEG (the README asks for one image under 300 KB). The default film is the first
pneumonia film of the shared Kermany external/ folder (CC BY 4.0), uploaded as "example_film.jpeg".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_app_browser import DONE  # noqa: E402  (the result and both viewer images drawn)
from bench.common import CHROMIUM, CHROMIUM_ARGS, DATA, ROOT, start_streamlit, stop_streamlit  # noqa: E402

LIMIT_KB = 300


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--film", help="film to upload (default: the first of external/PNEUMONIA)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "predict.jpg"))
    ap.add_argument("--quality", type=int, default=80)
    args = ap.parse_args()
    film = Path(args.film) if args.film else min((DATA / "external" / "PNEUMONIA").glob("*.jpeg"))
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_streamlit(ROOT / "weights", Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme="light")
                page.goto(url)
                page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                    {"name": "example_film.jpeg", "mimeType": "image/jpeg", "buffer": film.read_bytes()},
                    timeout=120_000)
                page.wait_for_function(DONE, timeout=120_000)
                page.wait_for_timeout(1500)          # the chart's last paint
                page.mouse.move(5, 995)              # no hover label on the picture
                page.screenshot(path=args.out, type="jpeg", quality=args.quality)
                browser.close()
        finally:
            stop_streamlit(proc)
    size_kb = Path(args.out).stat().st_size / 1024
    print(f"{args.out}: {size_kb:.0f} KB ({'under' if size_kb < LIMIT_KB else 'OVER'} {LIMIT_KB} KB)")


if __name__ == "__main__":
    main()
