"""Triage of N films on CPU through the Triage page's own code path (appkit.triage.triage).

    python bench/bench_triage.py [--model DIR] [--films DIR] [--n 100] [--threads 2]

Goal: 100 films <= 30 s on the 2-core CPU machine. The time covers what the page does after the
upload: decode every file from bytes, the guard, batched prediction, thumbnails, sorting. Films
come from --films (default: the shared Kermany external/ folders, 224 px films), cycled to N, or
are real films enlarged to 1500x1200 JPEGs (a clinic film's size) with --synthetic or when that folder is missing. Uses the active model in weights/ unless --model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from appkit.analysis import Upload  # noqa: E402
from appkit.triage import triage  # noqa: E402
from bench.common import DATA, clinic_size_jpeg, load_predictor  # noqa: E402

DEFAULT_FILMS = DATA / "external"


def load_uploads(folder: Path, n: int) -> tuple[list[Upload], str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))[:n] \
        if folder.is_dir() else []
    if files:
        uploads = [Upload.of(f"{i:03d}_{files[i % len(files)].name}", files[i % len(files)].read_bytes())
                   for i in range(n)]
        return uploads, f"{len(files)} real films from {folder}"
    rng = np.random.default_rng(0)
    return [Upload.of(f"synthetic_{i:03d}.jpg", clinic_size_jpeg(rng)) for i in range(n)], "real films enlarged to 1500x1200 JPEGs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the active model in weights/)")
    ap.add_argument("--films", default=str(DEFAULT_FILMS))
    ap.add_argument("--synthetic", action="store_true", help="films enlarged to 1500x1200 JPEGs (a clinic film's size)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--operating-point", default="balanced")
    args = ap.parse_args()
    predictor, model_dir, load_s = load_predictor(args.model, args.threads)
    uploads, source = load_uploads(Path("/nonexistent" if args.synthetic else args.films), args.n)
    mb = sum(len(u.data) for u in uploads) / 2**20
    triage(predictor, uploads[:4], args.operating_point)               # warm-up: kernels, allocator
    t = time.perf_counter()
    rows = triage(predictor, uploads, args.operating_point)
    total = time.perf_counter() - t
    statuses = {s: sum(r.record.status == s for r in rows) for s in ("ok", "rejected", "error")}
    print(f"model       {model_dir} (version {predictor.version}, input {predictor.card['input']['size']} px), "
          f"loaded in {load_s:.1f} s")
    print(f"films       {len(uploads)} ({mb:.1f} MB): {source}")
    print(f"threads     {torch.get_num_threads()}")
    print(f"triage      {total:.2f} s total, {1000 * total / len(uploads):.0f} ms/film, "
          f"{len(uploads) / total:.1f} films/s  (goal: 100 films <= 30 s -> "
          f"{'met' if total * 100 / len(uploads) <= 30 else 'NOT met'})")
    print(f"statuses    {statuses}; flagged {sum(r.flag for r in rows)}")


if __name__ == "__main__":
    main()
