"""One browser session uploads many very large films to Predict on a real `streamlit run app.py` server;
the server's peak RSS is reported against its stated memory ceiling (issue #19, item 2).

    python bench/memory_session.py [--films 14] [--side 7000] [--session-mpix MPIX] [--json OUT]

The films are made here: a film of --source (default: the shared external/ folder; a drawn stand-in
without it) enlarged to --side x --side without interpolation, so each is ~49 megapixels but only a few
hundred KB as a PNG (what the upload caps count), each one distinct. One warm-up session (closed) loads
the model; then the RSS of the server's process tree is the baseline, and one session uploads all the
films at once and waits until every film's card has settled (a probability, a rejection, a refusal or
an error) and the script has finished.

The ceiling is stated by the app (``appkit.analysis.session_memory_bound``): baseline + 2 x the bytes
uploaded + 4 B x the session's pixel cap (PNEUMO_SESSION_MPIX) + one film being decoded at the
reader's pixel cap + a page allowance. Exit 1 when the peak is over the ceiling or a card did not settle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import CHROMIUM, CHROMIUM_ARGS, DATA, start_streamlit, stop_streamlit  # noqa: E402
from bench.load_sessions import UPLOADER, RssSampler, default_weights_root, env, mb, probe, renice_clients, short_error  # noqa: E402

# Counted in the page: a film's card has settled when it shows one of these.
CARD_STATES_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main) return null;
  const text = main.innerText;
  const count = (s) => text.split(s).length - 1;
  return {
    cards: main.querySelectorAll('h5').length,
    analysed: main.querySelectorAll('[data-testid="stMetricValue"]').length,
    rejected: count('Rejected: this does not look like'),
    refused: count('Not analysed.'),
    unreadable: count('This file could not be read.'),
    session_cap: count('limit per session is'),
    exception: main.querySelectorAll('[data-testid="stException"]').length,
    running: !!document.querySelector('[data-testid="stStatusWidget"]'),
  };
}"""


def settled(state: dict | None, n: int) -> bool:
    """Every one of ``n`` cards shows its outcome and the script is not running."""
    if not state or state.get("running") or state.get("cards", 0) < n:
        return False
    done = state["analysed"] + state["rejected"] + state["refused"] + state["unreadable"]
    return done >= n or state.get("exception", 0) > 0


def make_films(n: int, side: int, source: Path | None, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` distinct grey PNGs of ``side`` x ``side``: a small film enlarged by pixel repetition (compresses
    to a few hundred KB), each with its own corner mark so no two hash alike."""
    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")) \
        if source and source.is_dir() else []
    out = []
    for i in range(n):
        if files:
            small = np.asarray(Image.open(files[int(rng.integers(len(files)))]).convert("L"))
        else:
            yy, xx = np.mgrid[0:224, 0:224] / 224
            small = np.full((224, 224), 166, np.uint8)
            for cx in (0.32, 0.68):
                small[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 64
        big = cv2.resize(small, (side, side), interpolation=cv2.INTER_NEAREST)
        big[:8, : 8 * (i + 1)] = 255                           # distinct bytes, same film
        ok, buf = cv2.imencode(".png", big, [cv2.IMWRITE_PNG_COMPRESSION, 6])
        del big
        if not ok:
            raise RuntimeError("PNG encoding failed")
        out.append((f"big{i:03d}_{side}px.png", buf.tobytes()))
    return out


def ceiling(baseline_bytes: int, upload_bytes: int, session_mpix: float | None) -> dict:
    """The stated ceiling for one session (``appkit.analysis.session_memory_bound``), with its parts, MB."""
    from appkit.analysis import DECODE_BYTES_PER_PIXEL, PAGE_ALLOWANCE, session_memory_bound, session_pixel_cap
    from pneumo_core.ingest.pixels import MAX_PIXELS

    with env(**({"PNEUMO_SESSION_MPIX": str(session_mpix)} if session_mpix else {})):
        bound, cap = session_memory_bound(upload_bytes), session_pixel_cap()
    return {"ceiling_mb": mb(baseline_bytes + bound), "baseline_mb": mb(baseline_bytes),
            "uploads_x2_mb": mb(2 * upload_bytes), "films_kept_mb": mb(4 * cap), "session_mpix": cap / 1e6,
            "one_decode_mb": mb(DECODE_BYTES_PER_PIXEL * MAX_PIXELS), "page_allowance_mb": mb(PAGE_ALLOWANCE)}


async def _open(browser, url: str, timeout_ms: float):
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await ctx.new_page()
    await page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    await page.locator(UPLOADER).wait_for(state="attached", timeout=timeout_ms)
    return ctx, page


async def _upload_and_wait(page, films: Sequence[tuple[str, bytes]], timeout_s: float) -> dict:
    await page.locator(UPLOADER).set_input_files(
        [{"name": name, "mimeType": "image/png", "buffer": data} for name, data in films], timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    state, calm = None, 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        state = await page.evaluate(CARD_STATES_JS)
        calm = calm + 1 if settled(state, len(films)) else 0
        if calm >= 3:                                          # settled for 1.5 s: the script is done
            return {**state, "settled": True}
    return {**(state or {}), "settled": False}


async def drive(args, url: str, films, warm, sampler: RssSampler, report: dict) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if args.browser_nice:
                renice_clients(sampler.server_pid, args.browser_nice)
            ctx, page = await _open(browser, url, args.timeout * 1000)
            report["warm_up"] = await _upload_and_wait(page, [warm], args.timeout)
            await ctx.close()
            await asyncio.sleep(1.0)
            report["baseline"] = sampler.sample()[1]
            ctx, page = await _open(browser, url, args.timeout * 1000)
            t0 = time.monotonic()
            report["t0"] = t0
            report["cards"] = await _upload_and_wait(page, films, args.timeout)
            report["seconds"] = round(time.monotonic() - t0, 1)
            report["peak"] = sampler.peak(t0)
            report["held"] = sampler.sample()[1]                # the session still open, films kept
            await ctx.close()
            await asyncio.sleep(args.session_ttl + 1)
            await probe(_Opener(browser, url, args.timeout))
            await asyncio.sleep(1.5)
            report["after"] = sampler.sample()[1]
        finally:
            await browser.close()


class _Opener:
    """What ``load_sessions.probe`` needs: ``open()`` -> (context, page)."""

    def __init__(self, browser, url: str, timeout_s: float):
        self.browser, self.url, self.timeout_ms = browser, url, timeout_s * 1000

    async def open(self):
        return await _open(self.browser, self.url, self.timeout_ms)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--films", type=int, default=14, help="films uploaded together by the one session (default 14)")
    ap.add_argument("--side", type=int, default=7000, help="each film's side in pixels (default 7000: 49 Mpixel)")
    ap.add_argument("--source", default=str(DATA / "external"), help="small films to enlarge (default external/)")
    ap.add_argument("--session-mpix", type=float, help="PNEUMO_SESSION_MPIX for the server (default: the app's)")
    ap.add_argument("--weights-root", help="weights folder whose ACTIVE model the server uses")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for the upload to settle (default 300)")
    ap.add_argument("--session-ttl", type=int, default=3, help="server.disconnectedSessionTTL (default 3 s)")
    ap.add_argument("--browser-nice", type=int, default=10)
    ap.add_argument("--sample-s", type=float, default=0.1)
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--log", help="streamlit log (default: a temporary file)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium).")
    wall = time.perf_counter()
    root = Path(args.weights_root) if args.weights_root else default_weights_root()
    t = time.perf_counter()
    films = make_films(args.films, args.side, Path(args.source))
    [(name, data)] = make_films(1, 512, Path(args.source), seed=1)       # loads the model; small, so the baseline
    warm = ("warm_" + name, data)                                        # is not a large film's leftovers
    upload_bytes = sum(len(d) for _, d in films)
    print(f"{len(films)} films of {args.side}x{args.side} ({upload_bytes / 2**20:.1f} MB in all) made in "
          f"{time.perf_counter() - t:.1f} s", flush=True)

    report: dict = {}
    server_env = {"STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": str(args.session_ttl)}
    if args.session_mpix:
        server_env["PNEUMO_SESSION_MPIX"] = str(args.session_mpix)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(args.log) if args.log else Path(tmp) / "streamlit.log"
        proc = sampler = None
        try:
            with env(**server_env):
                proc, url = start_streamlit(root, log, timeout_s=max(90.0, args.timeout))
            sampler = RssSampler(proc.pid, args.sample_s)
            sampler.start()
            asyncio.run(drive(args, url, films, warm, sampler, report))
        except Exception as exc:
            report["error"] = short_error(exc)
        finally:
            if sampler is not None:
                sampler.stop()
            if proc is not None:
                stop_streamlit(proc)
        log_tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""

    cards = report.get("cards") or {}
    limit = ceiling(report.get("baseline", 0), upload_bytes, args.session_mpix)
    peak = mb(report.get("peak"))
    summary = {
        "films": len(films), "side_px": args.side, "megapixels_per_film": args.side ** 2 / 1e6,
        "upload_mb": mb(upload_bytes), "settled": bool(cards.get("settled")), "seconds": report.get("seconds"),
        "cards": {k: cards.get(k) for k in ("cards", "analysed", "rejected", "refused", "session_cap", "unreadable",
                                            "exception")},
        "server_rss_mb": {"baseline": mb(report.get("baseline")), "peak": peak, "held": mb(report.get("held")),
                          "after_session_ended": mb(report.get("after"))},
        "ceiling": limit, "within_ceiling": peak is not None and peak <= limit["ceiling_mb"] and peak > 0,
        "error": report.get("error") or (None if (report.get("warm_up") or {}).get("settled")
                                         else "the warm-up upload did not settle"),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "wall_s": round(time.perf_counter() - wall, 1),
    }
    rss = summary["server_rss_mb"]
    print(f"server RSS  baseline {rss['baseline']} MB, peak {peak} MB, with the session's films held {rss['held']} MB, "
          f"after it ended {rss['after_session_ended']} MB")
    print(f"ceiling     {limit['ceiling_mb']} MB = baseline + uploads x2 {limit['uploads_x2_mb']} + films kept "
          f"{limit['films_kept_mb']} ({limit['session_mpix']:g} Mpixel) + one decode {limit['one_decode_mb']} + page "
          f"{limit['page_allowance_mb']}: {'within' if summary['within_ceiling'] else 'OVER'}")
    print(f"cards       {summary['cards']} in {summary['seconds']} s; settled: {summary['settled']}")
    if summary["error"] or not summary["settled"]:
        print(f"error       {summary['error']}\n---- streamlit log (tail) ----\n{log_tail}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return summary


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out["within_ceiling"] and out["settled"] else 1)
