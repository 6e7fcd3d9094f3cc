"""Estimated against actual time of real training jobs, per phase, over three job sizes.

    python bench/job_estimate.py [--sizes small,medium,large] [--no-film-types] [--json OUT]

Each job is a real background job (``pneumo_core.ops.jobs.launch.start_job``, its own worker process, as the Retrain
page starts it): a fine-tune of the active version on a subset of the project's films (symlinks into
``shared/data/chest_xray``), in a temporary weights folder, so the real registry is never touched. The jobs
run one after another in one jobs folder, so from the second on the estimate is also corrected by the
earlier ones (``jobs.estimate.phase_pace``), as on a server; both figures are reported: "reference" (the built-in
rates and the data check's decoding time only) and "used" (what the job was given). The goal: actual
within ±30% of the estimate. Numbers depend on what else the machine runs: record the load with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DATA, ROOT  # noqa: E402

# name: (films per class in train, val, external; epochs; image size)
SIZES = {"small": ((40, 15, 15), 1, 64), "medium": ((80, 20, 20), 2, 96), "large": ((150, 30, 30), 2, 128)}
GOAL = 0.30


def subset(dest: Path, per_class: Sequence[int]) -> Path:
    """``dest``/{train,val,external}/{NORMAL,PNEUMONIA}/ with the first n films of each (symlinks)."""
    for split, n in zip(("train", "val", "external"), per_class):
        for label in ("NORMAL", "PNEUMONIA"):
            (dest / split / label).mkdir(parents=True)
            for f in sorted((DATA / split / label).iterdir())[:n]:
                (dest / split / label / f.name).symlink_to(f)
    return dest


def compare(estimated: Mapping[str, float], actual: Mapping[str, float]) -> list[dict[str, Any]]:
    """Rows per phase and in total: estimated and actual seconds, actual / estimated, within the goal."""
    rows = []
    for key in list(estimated) + ["total"]:
        est = sum(estimated.values()) if key == "total" else float(estimated[key])
        act = sum(actual.values()) if key == "total" else actual.get(key)
        ratio = act / est if act is not None and est > 0 else None
        rows.append({"phase": key, "estimated_s": round(est, 1), "actual_s": None if act is None else round(act, 1),
                     "ratio": None if ratio is None else round(ratio, 2),
                     "within_goal": ratio is not None and abs(ratio - 1) <= GOAL + 1e-9})
    return rows


def table(results: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: one line per job and phase."""
    lines = [f"{'job':8} {'phase':12} {'reference s':>11} {'estimate s':>10} {'actual s':>9} {'act/est':>8}  goal"]
    for r in results:
        ref = {row["phase"]: row for row in r["reference"]}
        for row in r["rows"]:
            act = "-" if row["actual_s"] is None else f"{row['actual_s']:.0f}"
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            lines.append(f"{r['name']:8} {row['phase']:12} {ref[row['phase']]['estimated_s']:11.0f} "
                         f"{row['estimated_s']:10.0f} {act:>9} {ratio:>8}  {'ok' if row['within_goal'] else 'MISS'}")
    return "\n".join(lines)


def run_job(name: str, work: Path, weights: Path) -> dict[str, Any]:
    from pneumo_core.ingest.datacheck import validate_dataset
    from pneumo_core.ops.jobs.estimate import estimate_phases
    from pneumo_core.ops.jobs.launch import start_job
    from pneumo_core.ops.jobs.store import get_job

    per_class, epochs, size = SIZES[name]
    data = subset(work / f"data-{name}", per_class)
    report = validate_dataset(data)
    cfg = {"epochs": epochs, "image_size": size, "batch_size": 32, "lr": 1e-4}
    empty = work / "no-jobs"
    empty.mkdir(exist_ok=True)
    reference = estimate_phases(report, cfg, "cpu", root=empty)   # PNEUMO_FILM_TYPES says which
    t0 = time.time()
    load0 = os.getloadavg()[0]
    job = start_job(data, base="active", config=cfg, report=report, weights=weights)
    while not job.finished:
        time.sleep(1)
        job = get_job(job.id)
    wall = time.time() - t0
    if job.status != "succeeded":
        raise RuntimeError(f"job {name} {job.status}: {job.message}\n{job.log_tail(40)}")
    estimated = job.spec["estimate"]["phases"]
    actual = job.state.get("phases") or {}
    out = {"name": name, "films": report.total, "epochs": epochs, "image_size": size, "wall_s": round(wall, 1),
           "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "basis": job.spec["estimate"]["basis"],
           "rows": compare(estimated, actual), "reference": compare(reference.phases, actual)}
    print(f"{name}: {report.total} films, {epochs} epoch(s) at {size} px: estimate {sum(estimated.values()):.0f} s, "
          f"actual {wall:.0f} s (load {load0:.1f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,medium,large")
    ap.add_argument("--no-film-types", action="store_true", help="fit no film-type check (PNEUMO_FILM_TYPES='')")
    ap.add_argument("--json", default=str(ROOT / "artifacts" / "job_estimate" / "summary.json"))
    args = ap.parse_args()
    from pneumo_core.ops.registry import active_model_dir

    if args.no_film_types:
        os.environ["PNEUMO_FILM_TYPES"] = ""
    work = Path(tempfile.mkdtemp(prefix="job-estimate-"))
    try:
        weights = work / "weights"
        active = active_model_dir()
        shutil.copytree(active, weights / active.name)
        (weights / "ACTIVE").write_text(active.name + "\n")
        os.environ["PNEUMO_WEIGHTS_DIR"] = str(weights)
        os.environ["PNEUMO_AUDIT_DB"] = str(work / "audit.sqlite3")      # the bench's jobs stay out of the log
        os.environ.pop("PNEUMO_JOBS_DIR", None)
        results = [run_job(name, work, weights) for name in args.sizes.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    out = {"cpu_count": os.cpu_count(), "film_types": not args.no_film_types, "goal": f"actual within ±{GOAL:.0%}",
           "jobs": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
