"""How a model version treats each kind of film, through the same path as ``predict --json``.

    python bench/film_types.py [--model DIR] [--film-types DIR] [--data DIR] [--json OUT]

For each sub-folder of ``--film-types`` (frontal_chest_adult, lateral_chest, other_radiograph,
other_modality) and for the chest films of ``--data``'s test/ and external/, it counts the records'
statuses (ok / rejected / error), film types and adult warnings. The fitted folders are in-sample for
the film-type check (its card has the leave-one-source-out rates, which are the honest ones); the
laterals and the chest films of test/ and external/ were never fitted on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pneumo_core.model.predict import Predictor, predict_files  # noqa: E402
from pneumo_core.ops.registry import active_model_dir  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FOLDERS = ("frontal_chest_adult", "lateral_chest", "other_radiograph", "other_modality")


def tally(predictor: Predictor, files: list[Path]) -> dict:
    status, kinds, adult = Counter(), Counter(), 0
    for rec in predict_files(predictor, files):
        status[rec.status] += 1
        kinds[rec.film_type or "none"] += 1
        adult += any("adult" in w.lower() for w in rec.warnings) and rec.status == "ok"
    n = len(files)
    return {"n": n, "ok": status["ok"], "rejected": status["rejected"], "error": status["error"],
            "accepted_rate": status["ok"] / n if n else None, "adult_warned_rate": adult / n if n else None,
            "film_types": dict(kinds)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder (default: the active one)")
    ap.add_argument("--film-types", type=Path, default=SHARED / "film_types")
    ap.add_argument("--data", type=Path, default=SHARED / "chest_xray")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args()
    predictor = Predictor.from_dir(args.model or active_model_dir())
    out = {"model_version": predictor.version, "film_type_check": predictor.film_types is not None, "sets": {}}
    sets = {f: sorted(p for p in (args.film_types / f).rglob("*") if p.is_file()) for f in FOLDERS}
    for split in ("test", "external"):
        sets[f"chest_xray/{split}"] = sorted(p for p in (args.data / split).rglob("*") if p.is_file())
    for name, files in sets.items():
        if files:
            out["sets"][name] = r = tally(predictor, files)
            print(f"{name:28s} n={r['n']:4d}  accepted {r['accepted_rate']:.3f}  warned adult "
                  f"{r['adult_warned_rate']:.3f}  {r['film_types']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
