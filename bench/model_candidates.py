"""Which model to ship from one long training run: every candidate scored on the same films.

    python bench/model_candidates.py --run RUN_DIR [--data DIR] --json OUT [--ship MODEL_DIR]

RUN_DIR is a ``train --checkpoint-dir`` folder (with ``snapshots/``) whose
``model/`` sibling or ``--model`` is the run's own output (its best-on-external
epoch). The candidates were fixed before any of them was scored (docs/model.md):

  C1 EMA weights after the last epoch, at the training size (the reference)
  C2 raw weights after the last epoch
  C3 the epoch with the best external AUC during training (what ``fit`` keeps; flattered by selection)
  C4 C1 evaluated at training size + 16 px (FixRes)
  C5 C1 evaluated at training size + 32 px (FixRes)
  C6 SWA: mean of the raw weights of the last 10 epochs, BatchNorm re-estimated on train/
  C7 snapshot ensemble: EMA weights at the last epoch, 5 and 10 epochs before (mean logit)
  C8 C7 at training size + 16 px

Rule: C1 unless a candidate's paired-bootstrap 95% interval of AUC gain over C1
on external/ lies wholly above zero; among those, the largest gain. Every
candidate's external, val and test AUC with its 95% CI goes to the JSON.
``--ship`` writes the chosen candidate as an uncalibrated model folder (then
run ``calibrate``, ``fit-guard`` and ``cam-eval --apply`` on it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import DATA  # noqa: E402
from pneumo_core.ingest.folders import discover_splits, list_labelled, load_images  # noqa: E402
from pneumo_core.model import compare as cand  # noqa: E402
from pneumo_core.model import metrics as ev  # noqa: E402
from pneumo_core.model.network import Ensemble, default_input_spec  # noqa: E402
from pneumo_core.model.store import load_model, save_ensemble, save_model  # noqa: E402
from pneumo_core.model.train import predict_logits  # noqa: E402


def decode(folder: Path, size: int) -> tuple[torch.Tensor, np.ndarray]:
    s = load_images(list_labelled(folder), default_input_spec(size), workers=2)
    return torch.from_numpy(s.pixels), s.labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the run's --checkpoint-dir")
    ap.add_argument("--model", help="the run's own output folder (default: RUN/../model)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--json", required=True)
    ap.add_argument("--ship", help="write the chosen candidate here (uncalibrated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--swa-epochs", type=int, default=10)
    ap.add_argument("--candidate", help="ship this candidate instead of the rule's choice (for tests)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    run = Path(args.run)
    model_dir = Path(args.model) if args.model else run.parent / "model"
    base = load_model(model_dir)
    size = int(base.card["input"]["size"])
    snaps = cand.snapshots(run)
    last = max(e for e, _ in snaps)
    folders = discover_splits(args.data)
    sizes = (size, size + 16, size + 32)
    films = {(split, s): decode(folders[split], s) for split in ("external", "val", "test") for s in sizes}
    labels = {split: films[(split, size)][1] for split in ("external", "val", "test")}

    ema = lambda e: cand.load_snapshot(snaps[(e, "ema")])  # noqa: E731
    final_ema = ema(last)
    print(f"[{time.perf_counter() - t0:.0f}s] SWA over epochs {last - args.swa_epochs + 1}..{last}", flush=True)
    swa = cand.average_weights([snaps[(e, "raw")] for e in range(last - args.swa_epochs + 1, last + 1)])
    train_px, _ = decode(folders["train"], size)
    cand.update_bn(swa, train_px, default_input_spec(size))
    del train_px
    snap_ens = cand.ensemble([ema(last - 10), ema(last - 5), final_ema])
    plan = {
        "C1": ("EMA, last epoch", final_ema, size, [f"epoch{last:03d}-ema"]),
        "C2": ("raw, last epoch", cand.load_snapshot(snaps[(last, "raw")]), size, [f"epoch{last:03d}-raw"]),
        "C3": ("{weights} weights of epoch {epoch}, the best external/ AUC during training (selection flatters it)"
               .format(**base.card["training"]["selected"]), base.net, size, ["run output"]),
        "C4": (f"C1 at {size + 16} px (FixRes)", final_ema, size + 16, [f"epoch{last:03d}-ema"]),
        "C5": (f"C1 at {size + 32} px (FixRes)", final_ema, size + 32, [f"epoch{last:03d}-ema"]),
        "C6": (f"SWA of raw weights, last {args.swa_epochs} epochs, BN re-estimated", swa, size, ["swa"]),
        "C7": ("snapshot ensemble: EMA at last, -5, -10 epochs", snap_ens, size,
               [f"epoch{e:03d}-ema" for e in (last - 10, last - 5, last)]),
        "C8": (f"C7 at {size + 16} px", snap_ens, size + 16,
               [f"epoch{e:03d}-ema" for e in (last - 10, last - 5, last)]),
    }
    logits: dict[str, dict[str, np.ndarray]] = {}
    rows = {}
    for name, (desc, net, s, _) in plan.items():
        spec = default_input_spec(s)
        logits[name] = {split: predict_logits(net, films[(split, s)][0], spec) for split in labels}
        row = {"description": desc, "input_size": s}
        for split, z in logits[name].items():
            row[split] = {"auc": ev.safe_auc(labels[split], z), "ci95": cand.auc_ci(labels[split], z)}
        rows[name] = row
        print(f"[{time.perf_counter() - t0:.0f}s] {name} {desc}: external AUC {row['external']['auc']:.4f} "
              f"[{row['external']['ci95'][0]:.4f}, {row['external']['ci95'][1]:.4f}]  "
              f"val {row['val']['auc']:.4f}  test {row['test']['auc']:.4f}", flush=True)
    y = labels["external"]
    for name in rows:
        rows[name]["vs_C1_external"] = cand.paired_auc(y, logits[name]["external"], logits["C1"]["external"])
    better = {k: r["vs_C1_external"]["delta_auc"] for k, r in rows.items()
              if k != "C1" and r["vs_C1_external"]["ci95"][0] > 0}
    chosen = max(better, key=better.get) if better else "C1"
    out = {"run": run.name, "training": base.card["training"], "candidates": rows, "chosen": chosen,
           "rule": "C1 unless a candidate's paired 95% interval of external AUC gain over C1 is above zero; "
                   "then the largest gain", "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.json).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"chosen by the rule: {chosen} ({rows[chosen]['description']})")
    if args.ship:
        chosen = args.candidate or chosen
        desc, net, s, sources = plan[chosen]
        card = {**base.card, "input": default_input_spec(s)}
        card["training"] = {**card["training"], "selected": {"candidate": chosen, "description": desc,
                                                            "sources": sources, "rule": out["rule"]}}
        card["notes"] = list(card.get("notes") or []) + [f"Shipped candidate {chosen}: {desc}."]
        for key in ("ensemble", "weights", "metrics", "operating_points", "ood", "explain"):
            card.pop(key, None)
        if isinstance(net, Ensemble):
            save_ensemble(list(net.members), sources, card, args.ship)
        else:
            save_model(net, card, args.ship)
        print(f"wrote {args.ship}")


if __name__ == "__main__":
    main()
