"""Many concurrent browser sessions on the Predict page of a real `streamlit run app.py` server.

    python bench/load_sessions.py [--sessions 20] [--rounds 3] [--films DIR] [--json OUT]
    python bench/load_sessions.py --url http://127.0.0.1:8501 [--server-pid PID] ...   # a running server

One headless Chromium (Debian's /usr/bin/chromium) driven by Playwright's async API, one browser
context per session (own cookies, so its own Streamlit session). Each round opens N sessions at
once; once every page answers input (its upload box is there, it has loaded and its main thread has had
no long task for 0.5 s, as a user's upload would wait: ``bench.common.READY_FOR_INPUT``), all N upload their own
film together, and each waits for its result card. Per session:
latency from the upload to the "Probability of pneumonia" value in the page (timed in the page by
a MutationObserver, so the polling does not add to it), the probability shown and the file name
shown. Checks:

* answered: every session got a probability within --timeout (a timeout or an error is a failure);
* isolation: each page shows its own file name, no other session's file (this round's, earlier
  rounds', the warm-up's) and exactly one result, whose probability equals the one computed here,
  offline, for that exact file with the same active model (``Predictor.from_dir`` +
  ``appkit.text.fmt_pct``). Any mismatch is reported as leakage (or a wrong result).

The films are distinct real films of --films (default: the shared external/ folder, NORMAL and
PNEUMONIA alternating), ones the model's guard accepts, chosen so that their displayed
probabilities differ where possible (then a probability from another session cannot pass as
one's own); each session uploads its film under a unique name ``r<round>s<session>_<file>``.

Memory: the server's RSS (its process tree, psutil) is sampled every --sample-s seconds: baseline
after a warm-up upload, peak, and per round the peak and the RSS once the round's sessions are
gone. Closed sessions are kept by Streamlit for ``server.disconnectedSessionTTL`` (120 s by
default) and dropped lazily, when another session disconnects; the bench starts its server with
--session-ttl (default 5 s) and, after each round, waits that long and opens and closes one probe
session so that the round's sessions are really dropped before the "after" sample. Growth of the
last round over the first by more than --growth-margin-mb is flagged (not an error).

Exit 1 when a session failed or leaked. Results are reported, not asserted against a goal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (CHROMIUM, CHROMIUM_ARGS, DATA, LONG_TASKS_JS, READY_FOR_INPUT, ROOT,  # noqa: E402
                          start_streamlit, stop_streamlit)

UPLOADER = '[data-testid="stFileUploaderDropzoneInput"]'
METRIC = '[data-testid="stMetricValue"]'
HEADINGS = '[data-testid="stMain"] h5'          # film_ui: one "##### <file name>" per result card
# A display may differ from fmt_pct(offline probability) only by the rounding of a value this close to
# the offline one (float differences between the server's and this process's thread counts).
PROB_SLACK = 1e-4
MIME = {".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".png": "image/png", ".dcm": "application/dicom"}

# Installed in the page just before the upload: the time of the first DOM state with a probability
# (the result), or with an exception / error box (a failure that would otherwise wait for the timeout).
WATCH_JS = """() => {
  const w = window.__load = {t0: performance.now(), seen: null, kind: null};
  const state = () => {
    const m = document.querySelector('[data-testid="stMetricValue"]');
    if (m && /%\\s*$/.test(m.textContent)) return 'result';
    if (document.querySelector('[data-testid="stException"]')) return 'exception';
    const err = [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stAlertContentError"]')];
    if (err.length) return 'error';
    return null;
  };
  const check = () => {
    if (w.seen !== null) return;
    const k = state();
    if (k) { w.seen = performance.now(); w.kind = k; obs.disconnect(); }
  };
  const obs = new MutationObserver(check);
  obs.observe(document.body, {childList: true, subtree: true, characterData: true});
  check();
}"""


# --------------------------------------------------------------------------- the isolation check (pure)

def parse_pct(text: str | None) -> float | None:
    """'89.5%' -> 0.895; None for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", text or "")
    return float(m.group(1)) / 100 if m else None


def probability_matches(shown: str | None, expected: float, digits: int = 1, slack: float = PROB_SLACK) -> bool:
    """Does the displayed text show ``expected`` (as fmt_pct would, up to the rounding of a value within ``slack``)?"""
    from appkit.text import fmt_pct

    if shown is not None and shown.strip() == fmt_pct(expected, digits):
        return True
    value = parse_pct(shown)
    half_step = 0.5 * 10 ** -(digits + 2)
    return value is not None and abs(value - expected) <= half_step + slack


def tag_of(name: str) -> str:
    """The unique prefix of an upload name ``r1s003_person1_virus_6.jpeg`` -> ``r1s003_``, for
    places where the app shortens a long name (the uploader's file chip: ``r1s003_...us_6.jpeg``)."""
    m = re.match(r"[A-Za-z0-9]+_", name)
    return m.group(0) if m else name


def isolation_findings(own_name: str, expected_probability: float, shown_probabilities: Sequence[str],
                       shown_headings: Sequence[str], page_text: str, other_markers: Iterable[str]) -> list[str]:
    """What a session's answered page shows that it should not: [] when it shows exactly its own result.

    ``shown_probabilities``: every "Probability of pneumonia" value on the page; ``shown_headings``: the
    result cards' titles (file names); ``page_text``: the whole page's text; ``other_markers``: names (and
    name tags) of every other session's file. Flags another session's file anywhere on the page, a
    missing own file name, not exactly one result, and a probability other than the offline one.
    """
    findings = []
    leaked = sorted({m for m in other_markers if m and m in page_text})
    if leaked:
        findings.append(f"shows other sessions' files: {', '.join(leaked)}")
    if own_name not in shown_headings:
        findings.append(f"no result card titled with its own file {own_name!r} (titles: {list(shown_headings)})")
    if len(shown_probabilities) != 1:
        findings.append(f"{len(shown_probabilities)} probabilities shown instead of one: {list(shown_probabilities)}")
    wrong = [p for p in shown_probabilities if not probability_matches(p, expected_probability)]
    if wrong:
        from appkit.text import fmt_pct

        findings.append(f"probability {', '.join(wrong)} shown, offline for {own_name!r}: "
                        f"{fmt_pct(expected_probability)} ({expected_probability:.6f})")
    return findings


def check_markers_distinct(names: Sequence[str]) -> None:
    """The substring test is only sound if no name or tag of one session occurs in another's name."""
    for a in names:
        for b in names:
            if a != b and (a in b or tag_of(a) in b):
                raise ValueError(f"upload names are not distinguishable: {a!r} occurs in {b!r}")


# --------------------------------------------------------------------------- films and offline references

@dataclass(frozen=True)
class RefFilm:
    """A film of --films with what the active model says about it, computed in this process."""

    source: Path
    label: str                    # its folder: NORMAL or PNEUMONIA
    probability: float
    shown: str                    # fmt_pct(probability)
    data: bytes = field(repr=False)


def choose_films(predictor, folder: Path, n: int, seed: int = 0) -> tuple[list[RefFilm], dict]:
    """``n`` distinct films of ``folder``/{NORMAL,PNEUMONIA}, classes alternating, accepted by the model's
    guard, with distinct displayed probabilities where the folder allows it."""
    from appkit.analysis import FILM_SIDE
    from appkit.text import fmt_pct
    from pneumo_core.errors import UnreadableImageError
    from pneumo_core.ingest.read import read_xray

    rng = random.Random(seed)
    pools = []
    for label in ("NORMAL", "PNEUMONIA"):
        files = sorted(p for p in (folder / label).glob("*") if p.is_file() and not p.name.startswith("."))
        rng.shuffle(files)
        pools.append([(label, f) for f in files])
    if not all(pools):
        raise SystemExit(f"{folder} needs films in both NORMAL/ and PNEUMONIA/ (pass --films DIR).")
    order = [x for pair in zip(*pools) for x in pair] + pools[0][len(pools[1]):] + pools[1][len(pools[0]):]
    chosen: list[RefFilm] = []
    spare: list[RefFilm] = []
    counts = {"examined": 0, "rejected_or_unreadable": 0}
    shown: set[str] = set()
    for label, path in order:
        if len(chosen) >= n:
            break
        counts["examined"] += 1
        data = path.read_bytes()
        try:
            image = read_xray(data, name=path.name, max_side=FILM_SIDE)     # as the app keeps it
        except UnreadableImageError:
            counts["rejected_or_unreadable"] += 1
            continue
        if predictor.check(image):
            counts["rejected_or_unreadable"] += 1
            continue
        p = predictor.predict(image).probability
        film = RefFilm(path, label, p, fmt_pct(p), data)
        if film.shown in shown:
            spare.append(film)
        else:
            shown.add(film.shown)
            chosen.append(film)
    chosen += spare[: n - len(chosen)]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} usable films in {folder} for {n} sessions.")
    counts["same_displayed_probability"] = len(chosen) - len({f.shown for f in chosen})
    return chosen, counts


# --------------------------------------------------------------------------- server memory

def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and all its descendants (0 when it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def renice_clients(server_pid: int | None, niceness: int) -> int:
    """Lower the CPU priority of this bench's other children (Playwright's driver and Chromium), so that on a
    small machine the browsers, which stand in for 20 radiologists' own computers, do not starve the server
    being measured. Returns how many processes were reniced."""
    import psutil

    n = 0
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            if child.pid == server_pid:
                continue
            for proc in [child] + child.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    proc.nice(max(proc.nice(), niceness))
                    n += 1
    return n


class RssSampler(threading.Thread):
    """Samples the server's process-tree RSS (and this bench's own children: Playwright + Chromium)."""

    def __init__(self, server_pid: int | None, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.server_pid, self.interval_s = server_pid, interval_s
        self.samples: list[tuple[float, int, int]] = []      # (monotonic time, server bytes, client bytes)
        self._stop_event = threading.Event()

    def client_rss(self) -> int:
        import psutil

        total = 0
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process().children():
                if child.pid != self.server_pid:
                    total += tree_rss(child.pid)
        return total

    def sample(self) -> tuple[float, int, int]:
        s = (time.monotonic(), tree_rss(self.server_pid) if self.server_pid else 0, self.client_rss())
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)

    def peak(self, t0: float, t1: float | None = None, which: int = 1) -> int:
        vals = [s[which] for s in list(self.samples) if s[0] >= t0 and (t1 is None or s[0] <= t1)]
        return max(vals, default=0)


def mb(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


def growth_flag(round_peaks_mb: Sequence[float], rounds_after_mb: Sequence[float], margin_mb: float) -> str | None:
    """A line when the last round's peak or after-round RSS exceeds the first round's by more than the margin."""
    if len(round_peaks_mb) < 2 or not all(round_peaks_mb):
        return None
    lines = []
    for what, vals in (("peak", round_peaks_mb), ("after-round RSS", rounds_after_mb)):
        if len(vals) >= 2 and vals[0] and vals[-1] and vals[-1] - vals[0] > margin_mb:
            lines.append(f"{what} grew {vals[-1] - vals[0]:.0f} MB from round 1 to round {len(vals)} "
                         f"({vals[0]:.0f} -> {vals[-1]:.0f} MB, margin {margin_mb:.0f} MB)")
    return "; ".join(lines) or None


def find_listener_pid(url: str) -> int | None:
    """The pid listening on the URL's port (for --url without --server-pid), if it can be seen."""
    from urllib.parse import urlparse

    import psutil

    port = urlparse(url).port
    with contextlib.suppress(psutil.Error, OSError):
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    return None


# --------------------------------------------------------------------------- the browser sessions

@dataclass
class SessionResult:
    round: int
    session: int
    file: str                       # the name it uploads under
    source: str                     # the film's path
    label: str
    expected_probability: float
    expected_shown: str
    answered: bool = False
    latency_ms: float | None = None          # upload -> probability in the page (the page's clock)
    wall_latency_ms: float | None = None     # the same from this process (includes polling)
    page_load_ms: float | None = None        # goto -> uploader present
    page_ready_ms: float | None = None       # goto -> page ready for input (bench.common.READY_FOR_INPUT)
    shown_probabilities: list[str] = field(default_factory=list)
    shown_headings: list[str] = field(default_factory=list)
    error: str | None = None
    findings: list[str] = field(default_factory=list)
    page_text: str = field(default="", repr=False)      # what the checker read; not written to the JSON


def percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


def latency_summary(results: Sequence[SessionResult]) -> dict:
    lat = [r.latency_ms for r in results if r.answered and r.latency_ms is not None]
    return {"n": len(lat), "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
            "max_ms": round(max(lat), 1) if lat else None}


def short_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


class Sessions:
    """The browser side: one Chromium, one context per session."""

    def __init__(self, browser, url: str, timeout_s: float):
        self.browser, self.url, self.timeout_ms = browser, url, timeout_s * 1000

    async def open(self, res: SessionResult | None = None):
        """A new context on the app's default page (Predict), once its uploader is there and the page answers input
        (as a user's upload would wait): (context, page)."""
        ctx = await self.browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            await ctx.add_init_script(LONG_TASKS_JS)
            page = await ctx.new_page()
            t = time.perf_counter()
            await page.goto(self.url, wait_until="domcontentloaded", timeout=self.timeout_ms)
            await page.locator(UPLOADER).wait_for(state="attached", timeout=self.timeout_ms)
            if res is not None:
                res.page_load_ms = round(1000 * (time.perf_counter() - t), 1)
            await page.wait_for_load_state("networkidle", timeout=self.timeout_ms)
            await page.wait_for_function(READY_FOR_INPUT, timeout=self.timeout_ms, polling=250)
            if res is not None:
                res.page_ready_ms = round(1000 * (time.perf_counter() - t), 1)
            return ctx, page
        except BaseException:
            await ctx.close()
            raise

    async def predict(self, page, res: SessionResult, film: RefFilm) -> None:
        """Upload the session's film, wait for its result; fills ``res`` (never raises for a page problem)."""
        try:
            await page.evaluate(WATCH_JS)
            t = time.perf_counter()
            await page.locator(UPLOADER).set_input_files(
                {"name": res.file, "mimeType": MIME.get(film.source.suffix.lower(), "application/octet-stream"),
                 "buffer": film.data}, timeout=self.timeout_ms)
            await page.wait_for_function("() => window.__load && window.__load.seen !== null",
                                         timeout=self.timeout_ms, polling=250)
            res.wall_latency_ms = round(1000 * (time.perf_counter() - t), 1)
            seen = await page.evaluate("() => window.__load")
            if seen["kind"] != "result":
                text = await page.locator('[data-testid="stMain"]').inner_text()
                res.error = f"{seen['kind']} instead of a result: " + " ".join(text.split())[-400:]
                return
            res.latency_ms = round(seen["seen"] - seen["t0"], 1)
            res.answered = True
            res.shown_probabilities = [t.strip() for t in await page.locator(METRIC).all_inner_texts()]
            res.shown_headings = [t.strip() for t in await page.locator(HEADINGS).all_inner_texts()]
            res.page_text = await page.inner_text("body")
        except Exception as exc:                                        # a timeout is a failed session
            res.error = short_error(exc)


async def run_round(sessions: Sessions, rnd: int, films: Sequence[RefFilm]) -> list[SessionResult]:
    """N sessions open together, then upload together; contexts closed at the end."""
    width = max(3, len(str(len(films))))
    results = [SessionResult(rnd, i, f"r{rnd}s{i:0{width}d}_{f.source.name}", str(f.source), f.label,
                             f.probability, f.shown) for i, f in enumerate(films, 1)]
    opened: list = [None] * len(films)

    async def open_one(i: int) -> None:
        try:
            opened[i] = await sessions.open(results[i])
        except Exception as exc:
            results[i].error = "opening the page: " + short_error(exc)

    async def predict_one(i: int) -> None:
        if opened[i] is not None:
            await sessions.predict(opened[i][1], results[i], films[i])

    try:
        await asyncio.gather(*(open_one(i) for i in range(len(films))))
        await asyncio.gather(*(predict_one(i) for i in range(len(films))))
    finally:
        await asyncio.gather(*(o[0].close() for o in opened if o is not None), return_exceptions=True)
    return results


async def warm_up(sessions: Sessions, film: RefFilm) -> SessionResult:
    """One upload before measuring: the server loads the model on its first request."""
    res = SessionResult(0, 0, f"w0s000_{film.source.name}", str(film.source), film.label, film.probability, film.shown)
    try:
        ctx, page = await sessions.open(res)
    except Exception as exc:
        res.error = "opening the page: " + short_error(exc)
        return res
    try:
        await sessions.predict(page, res, film)
    finally:
        await ctx.close()
    return res


async def probe(sessions: Sessions) -> None:
    """Open and close one session: its disconnect makes Streamlit drop sessions older than the TTL."""
    with contextlib.suppress(Exception):
        ctx, _ = await sessions.open()
        await ctx.close()


def judge(results: Sequence[SessionResult], all_names: Sequence[str]) -> None:
    markers = {n: {n, tag_of(n)} for n in all_names}
    for r in results:
        if r.answered:
            others = set().union(*(m for n, m in markers.items() if n != r.file))
            r.findings = isolation_findings(r.file, r.expected_probability, r.shown_probabilities,
                                            r.shown_headings, r.page_text, others)


# --------------------------------------------------------------------------- main

@contextlib.contextmanager
def env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def default_weights_root() -> Path:
    return Path(os.environ.get("PNEUMO_WEIGHTS_DIR") or ROOT / "weights")


async def drive(args, url: str, films: list[RefFilm], warm_film: RefFilm, sampler: RssSampler, report: dict) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            if args.browser_nice:
                report["reniced_client_processes"] = renice_clients(sampler.server_pid, args.browser_nice)
            sessions = Sessions(browser, url, args.timeout)
            warm = await warm_up(sessions, warm_film)
            report["warm_up"] = {"answered": warm.answered, "latency_ms": warm.latency_ms, "error": warm.error}
            await asyncio.sleep(1.0)
            report["rss_baseline_mb"] = mb(sampler.sample()[1])
            names = [warm.file]
            for rnd in range(1, args.rounds + 1):
                t0 = time.monotonic()
                results = await run_round(sessions, rnd, films)
                t1 = time.monotonic()
                names += [r.file for r in results]
                check_markers_distinct(names)
                judge(results, names)
                await asyncio.sleep(args.session_ttl + 1 if not args.url else 1.0)
                await probe(sessions)
                await asyncio.sleep(1.5)
                after = sampler.sample()
                report["round_results"].append(results)
                report["rounds_detail"].append({
                    "round": rnd, "seconds": round(t1 - t0, 1), **latency_summary(results),
                    "answered": sum(r.answered for r in results),
                    "rss_peak_mb": mb(sampler.peak(t0, t1)), "rss_after_mb": mb(after[1]),
                    "client_rss_peak_mb": mb(sampler.peak(t0, t1, which=2))})
                print(f"round {rnd}: {report['rounds_detail'][-1]}", flush=True)
        finally:
            await browser.close()


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=20, help="concurrent browser sessions per round (default 20)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--films", default=str(DATA / "external"), help="folder with NORMAL/ and PNEUMONIA/ films")
    ap.add_argument("--weights-root", help="weights folder whose ACTIVE model the server uses "
                                           "(default: $PNEUMO_WEIGHTS_DIR or weights/)")
    ap.add_argument("--url", help="use this running server instead of starting one (it must serve --weights-root)")
    ap.add_argument("--server-pid", type=int, help="with --url: the server's pid for memory (else found by port)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds per session to open the page, and again "
                                                               "from upload to result (default 180)")
    ap.add_argument("--session-ttl", type=int, default=5, help="server.disconnectedSessionTTL of the server "
                                                               "started here (Streamlit's default: 120 s)")
    ap.add_argument("--browser-nice", type=int, default=10,
                    help="niceness for Playwright and Chromium (and the tabs they start later inherit it), so "
                         "the browsers standing in for the users' machines do not starve the server on a small "
                         "machine; 0 leaves them alone (default 10)")
    ap.add_argument("--sample-s", type=float, default=0.2, help="RSS sampling interval")
    ap.add_argument("--growth-margin-mb", type=float, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the offline references")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--log", help="streamlit log (default: a temporary file, tail printed on failure)")
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.rounds < 1:
        ap.error("--sessions and --rounds must be >= 1")
    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium).")

    wall = time.perf_counter()
    import torch

    from pneumo_core.model.predict import Predictor
    from pneumo_core.ops.registry import active_model_dir

    root = Path(args.weights_root) if args.weights_root else default_weights_root()
    model_dir = active_model_dir(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    try:
        predictor = Predictor.from_dir(model_dir)
        films, film_counts = choose_films(predictor, Path(args.films), args.sessions + 1, args.seed)
    finally:
        torch.set_num_threads(threads)      # main() may run inside a test process
    warm_film, films = films[-1], films[:-1]
    version = predictor.version
    del predictor
    refs_s = time.perf_counter() - t
    print(f"model {version} ({model_dir}); {len(films)} films + 1 warm-up from {args.films} "
          f"({film_counts}), references in {refs_s:.1f} s", flush=True)

    report: dict = {"sessions": args.sessions, "rounds": args.rounds, "round_results": [], "rounds_detail": []}
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(args.log) if args.log else Path(tmp) / "streamlit.log"
        sampler = None
        try:
            if args.url:
                url, pid = args.url.rstrip("/"), args.server_pid or find_listener_pid(args.url)
            else:
                with env(STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL=str(args.session_ttl)):
                    proc, url = start_streamlit(root, log, timeout_s=max(90.0, args.timeout))
                pid = proc.pid
            sampler = RssSampler(pid, args.sample_s)
            sampler.start()
            t_start = time.monotonic()
            asyncio.run(drive(args, url, films, warm_film, sampler, report))
            report["rss_peak_mb"] = mb(sampler.peak(t_start))
            report["client_rss_peak_mb"] = mb(sampler.peak(t_start, which=2))
        finally:
            if sampler is not None:
                sampler.stop()
            if proc is not None:
                stop_streamlit(proc)
        server_log_tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""

    results = [r for rr in report.pop("round_results") for r in rr]
    rounds = report.pop("rounds_detail")
    failures = [{"round": r.round, "session": r.session, "file": r.file, "error": r.error or "no answer"}
                for r in results if not r.answered]
    leaks = [{"round": r.round, "session": r.session, "file": r.file, "findings": r.findings}
             for r in results if r.findings]
    flag = growth_flag([x["rss_peak_mb"] for x in rounds], [x["rss_after_mb"] for x in rounds],
                       args.growth_margin_mb)
    summary = {
        "sessions": args.sessions, "rounds": args.rounds, "total_sessions": len(results),
        "answered": sum(r.answered for r in results), "failures": failures, "leakage": leaks,
        "latency_ms": latency_summary(results),
        "page_ready_ms_p50": percentile([r.page_ready_ms for r in results if r.page_ready_ms is not None], 50),
        "latency_ms_per_round": [
            {k: x[k] for k in ("round", "n", "p50_ms", "p95_ms", "max_ms", "answered", "seconds")} for x in rounds],
        "warm_up": report.get("warm_up"),
        "server_rss_mb": {"baseline": report.get("rss_baseline_mb"), "peak": report.get("rss_peak_mb"),
                          "per_round": [{k: x[k] for k in ("round", "rss_peak_mb", "rss_after_mb")} for x in rounds],
                          "growth_flag": flag, "growth_margin_mb": args.growth_margin_mb,
                          "measured": bool(sampler and sampler.server_pid)},
        "client_rss_peak_mb": report.get("client_rss_peak_mb"),
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "model_version": version, "model_dir": str(model_dir),
        "films": {"folder": args.films, **film_counts,
                  "labels": {lab: sum(f.label == lab for f in films) for lab in ("NORMAL", "PNEUMONIA")}},
        "server": args.url or "started here", "session_ttl_s": None if args.url else args.session_ttl,
        "timeout_s": args.timeout, "browser_nice": args.browser_nice, "wall_s": round(time.perf_counter() - wall, 1),
        "per_session": [{k: v for k, v in asdict(r).items() if k != "page_text"} for r in results],
    }
    print_summary(summary)
    if failures and server_log_tail:
        print("---- streamlit log (tail) ----\n" + server_log_tail)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return summary


def print_summary(s: dict) -> None:
    lat, rss = s["latency_ms"], s["server_rss_mb"]
    print(f"\nmodel       {s['model_version']}; {s['cpu_count']} CPUs; server {s['server']}")
    print(f"sessions    {s['sessions']} concurrent x {s['rounds']} rounds: {s['answered']}/{s['total_sessions']} "
          f"answered, {len(s['failures'])} failed, {len(s['leakage'])} with leakage / wrong result")
    print(f"films       {s['films']['labels']} distinct films (each session its own); "
          f"{s['films']['same_displayed_probability']} share a displayed probability with another")
    print(f"latency     upload -> probability: p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, max {lat['max_ms']} ms "
          f"(warm-up alone {s['warm_up'] and s['warm_up']['latency_ms']} ms)")
    print(f"pages       request -> ready for input: p50 {s['page_ready_ms_p50']} ms (before the uploads)")
    for x in s["latency_ms_per_round"]:
        print(f"  round {x['round']}   p50 {x['p50_ms']} ms, p95 {x['p95_ms']} ms, max {x['max_ms']} ms, "
              f"{x['answered']} answered, {x['seconds']} s")
    print(f"server RSS  baseline {rss['baseline']} MB (after warm-up), peak {rss['peak']} MB"
          + ("" if rss["measured"] else " (server pid unknown: not measured)"))
    for x in rss["per_round"]:
        print(f"  round {x['round']}   peak {x['rss_peak_mb']} MB, after (sessions dropped) {x['rss_after_mb']} MB")
    print(f"growth      {rss['growth_flag'] or 'none beyond the margin'}")
    print(f"client RSS  peak {s['client_rss_peak_mb']} MB (Playwright + Chromium, same machine)")
    for f in s["failures"]:
        print(f"FAILED      round {f['round']} session {f['session']} {f['file']}: {f['error']}")
    for f in s["leakage"]:
        print(f"LEAK        round {f['round']} session {f['session']} {f['file']}: {'; '.join(f['findings'])}")
    print(f"wall        {s['wall_s']} s")


if __name__ == "__main__":
    out = main()
    sys.exit(1 if out["failures"] or out["leakage"] else 0)
