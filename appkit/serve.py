"""`python -m appkit.serve [streamlit flags]`: `streamlit run app.py`, with the active model loaded as the server
starts, before the first visitor (``make run`` and the browser tests start the app this way).

Streamlit runs app.py only when a visitor's session starts, so without this the first visitor waited for the
model (torch, weights, guard: 20 s on a small machine) and the first prediction for the network's first
passes. Here a background thread fills the same ``st.cache_resource`` entry the pages read
(``appkit.model.load_active``) and runs one Grad-CAM on a blank film, while the server starts. A visitor who
comes sooner waits on that cache entry, not for a second load. A model that cannot be loaded is only noted
in the server log here: the pages still say why, as they do without this. The same thread imports the pages'
modules (the PDF writer, plotly, the charts), so the first visitor's page does not wait for them either.

Threads: the server runs each film's network passes on one CPU thread (``PNEUMO_SERVE_THREADS``, default 1).
Each session runs its films in its own script thread, so concurrent sessions already spread over the cores;
with torch's default (every core for each operation) two films at once, or one film while the same machine
draws pages, oversubscribe the CPU and OpenMP's threads spin-wait for each other. On the 2-core machine a
Grad-CAM took 0.6-0.85 s in the server that way against 0.11-0.3 s on one thread (bench/bench_app_browser.py,
browser on the same machine). The price shows when one user has the machine alone: a 100-film triage here
took 8.2 s instead of 6.7 s. Raise it for a server with many cores and few users. Training runs in its own worker
process and keeps its own setting.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from streamlit.web import cli

from pneumo_core.env import env_number
from pneumo_core.ingest.read import XrayImage
from pneumo_core.model.explain import explain
from pneumo_core.model.predict import MODEL_ERRORS

from .model import active_model_or_error

APP = str(Path(__file__).resolve().parent.parent / "app.py")
log = logging.getLogger("pneumo.serve")
SERVE_THREADS = 1
# What the pages import beyond the model (app.py imports the rest, and these import what they need, charts
# and the PDF writer among it): loaded here, before the first visitor.
PAGE_MODULES = ("appkit.films_ui", "appkit.triage_ui", "appkit.metrics_ui", "appkit.retrain_ui", "appkit.audit_ui")


def serve_threads() -> int:
    """CPU threads for one film's network passes in the server (``PNEUMO_SERVE_THREADS``, default 1)."""
    return int(env_number("PNEUMO_SERVE_THREADS", SERVE_THREADS, cast=int, allow_zero=False))


def warm() -> str | None:
    """Load the active model into the shared cache, run the network once and import the pages' modules; the
    error (no traceback, no file name) when there is no usable model, else None."""
    t = time.perf_counter()
    warm_pages()
    model, error = active_model_or_error()
    if model is None:
        log.warning("No model loaded at start (the pages say why): %s", error)
        return error
    try:      # the first forward and backward passes are slow (allocator, kernels): do them before a visitor
        explain(model.predictor, XrayImage(np.full((256, 256), 0.5, dtype=np.float32)))
    except MODEL_ERRORS as exc:     # a warm-up only: the pages report a failure that recurs
        log.warning("Model warm-up pass failed (%s); the pages will report it if it recurs.", type(exc).__name__)
    log.warning("Model %s loaded at start in %.1f s (pages' modules too).", model.version, time.perf_counter() - t)
    return None


def warm_pages() -> None:
    """Import what the pages import beyond app.py (``PAGE_MODULES``), so the first visitor's run does not."""
    for name in PAGE_MODULES:
        importlib.import_module(name)


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(serve_threads())      # before any thread runs the network (each reads this setting)
    threading.Thread(target=warm, name="pneumo-warm-model", daemon=True).start()
    sys.argv = ["streamlit", "run", APP, *(sys.argv[1:] if argv is None else argv)]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
