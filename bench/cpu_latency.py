"""CPU latency per film: predict, and predict + Grad-CAM; peak memory.

    python bench/cpu_latency.py [--model DIR] [--films DIR] [--n 50] [--threads 2]

Goals (issue "DenseNet-121 pipeline", 2-core machine): p50 predict <= 150 ms,
predict + Grad-CAM <= 400 ms. Times include decoding the file, as a user waits for it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.common import DATA, load_predictor  # noqa: E402
from pneumo_core.ingest.read import read_xray  # noqa: E402
from pneumo_core.model.explain import explain, overlay  # noqa: E402


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--films", default=str(DATA / "external" / "PNEUMONIA"))
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    predictor, model_dir, load_s = load_predictor(args.model, args.threads)
    films = sorted(p for p in Path(args.films).iterdir() if p.is_file())[: args.n]
    if not films:
        sys.exit(f"no films in {args.films}")
    for f in films[:3]:                           # warm-up (allocator, kernels)
        predictor.predict(read_xray(f))
    pred_ms, cam_ms = [], []
    for f in films:
        t = time.perf_counter()
        predictor.predict(read_xray(f))
        pred_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        image = read_xray(f)
        exp = explain(predictor, image)            # includes its own prediction
        overlay(image.pixels, exp.normalised)
        cam_ms.append((time.perf_counter() - t) * 1000)
    out = {
        "model": predictor.version,
        "input_size": predictor.card["input"]["size"],
        "threads": args.threads,
        "films": len(films),
        "model_load_s": round(load_s, 2),
        "predict_ms": {"p50": round(statistics.median(pred_ms), 1), "p95": round(percentile(pred_ms, 95), 1)},
        "predict_gradcam_ms": {"p50": round(statistics.median(cam_ms), 1), "p95": round(percentile(cam_ms, 95), 1)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
