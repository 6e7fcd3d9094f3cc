"""Plain helpers for the Retrain page: tables and words from jobs, versions and comparisons
(no Streamlit, so they are tested directly)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Mapping, Sequence

import pandas as pd

from pneumo_core.ingest.datacheck import DatasetReport
from pneumo_core.ops.jobs.store import PHASES, Job
from pneumo_core.ops.registry import VersionInfo

from .text import fmt_ci

COMPARED = (("auc", "AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
            ("precision", "PPV (precision)"), ("npv", "NPV"), ("accuracy", "Accuracy"), ("ece", "ECE"))
BASE_LABELS = {"active": "Fine-tune the active model", "imagenet": "ImageNet-pretrained DenseNet-121",
               "scratch": "From scratch (random weights)"}
STATUS_WORDS = {"starting": "Starting", "running": "Running", "succeeded": "Finished", "failed": "Failed",
                "cancelled": "Cancelled"}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def counts_frame(report: DatasetReport) -> pd.DataFrame:
    """Readable films per split and class (a carved validation split is shown as such)."""
    rows = {f"{split}/": dict(counts) for split, counts in report.counts.items()}
    carved = report.carved_val()
    if carved:
        rows["train/"] = {k: v - carved[k] for k, v in report.counts["train"].items()}
        rows["val/ (carved from train/)"] = carved
    df = pd.DataFrame(rows).T
    df["total"] = df.sum(axis=1)
    return df


def unreadable_frame(report: DatasetReport) -> pd.DataFrame:
    return pd.DataFrame(list(report.unreadable), columns=["file", "reason"])


FINISHING_S = 5.0       # less than this left: "finishing", never "0 s" while work remains


def progress(job: Job, now: float | None = None) -> dict[str, Any]:
    """Where a running job is: its phase ("Phase k of n: name"), that phase's own progress, the training
    figures, and the time left for the whole job.

    The phase's fraction is measured where the phase reports one (training: epochs done), else it is the
    time spent in the phase against its estimate (never past 99%). Time left = what remains of this phase
    (training: the newest epoch's ETA less the time since it was written; other phases: their estimate less
    the time spent) + the estimates of the phases after it. Estimates of phases still to come are scaled by
    the pace of the phases already done (actual / estimated), so a slow machine's later phases are not
    promised at the idle machine's speed. A phase running past its estimate is flagged ``overrun`` (time
    left is then a lower bound), and under ``FINISHING_S`` left the page says "finishing", never "0 s".
    """

    now = time.time() if now is None else now
    state, history = job.state, job.history
    last = history[-1] if history else {}
    epochs = max(1, job.epochs)
    keys = [k for k, _ in PHASES]
    key = state.get("phase_key") if state.get("phase_key") in keys else None
    plan = {k: float(v) for k, v in ((job.spec.get("estimate") or {}).get("phases") or {}).items()}
    done = {k: float(v) for k, v in (state.get("phases") or {}).items() if k in plan}
    planned_done = sum(plan[k] for k in done)
    pace = min(3.0, max(0.5, sum(done.values()) / planned_done)) if planned_done > 0 else 1.0
    started = state.get("phase_started")
    in_phase = max(0.0, now - float(started)) if started else 0.0
    overrun = False
    fraction: float | None = state.get("phase_fraction")
    try:
        written = (job.dir / "state.json").stat().st_mtime
    except OSError:
        written = now
    if key is None:                      # a job from before phases were recorded: training figures only
        eta = last.get("eta_s")
        if eta is not None:
            eta = max(0.0, float(eta) - (now - written))
        elif not history:
            estimate = (job.spec.get("estimate") or {}).get("seconds")
            created = _parse_time(state.get("created")) or now
            eta = max(0.0, float(estimate) - (now - created)) if estimate else None
        fraction = int(last.get("epoch", 0)) / epochs
    else:
        phase_plan = plan.get(key, 0.0) * pace
        if key == "training" and last.get("eta_s") is not None:
            left_here = max(0.0, float(last["eta_s"]) - (now - written))
            overrun = left_here == 0.0
        else:
            left_here = max(0.0, phase_plan - in_phase)
            overrun = bool(plan) and in_phase > phase_plan
        if fraction is None:
            fraction = min(0.99, in_phase / phase_plan) if phase_plan > 0 else 0.0
        later = keys[keys.index(key) + 1:]
        eta = left_here + pace * sum(plan.get(k, 0.0) for k in later) if plan else None
    metric_key = next((k for k in ("external_auc", "val_auc") if k in last), None)
    return {"epoch": int(last.get("epoch", 0)), "epochs": epochs, "fraction": float(fraction or 0.0),
            "loss": last.get("train_loss"), "metric_name": (metric_key or "val_auc").replace("_", " "),
            "metric": last.get(metric_key) if metric_key else None, "eta_s": eta,
            "images_per_s": last.get("images_per_s"), "phase_key": key,
            "phase_index": int(state.get("phase_index") or 0), "phase_count": int(state.get("phase_count") or 0),
            "phase": state.get("phase", ""), "step": state.get("phase_step", ""), "overrun": overrun}


def time_left_text(p: Mapping[str, Any]) -> str:
    """The whole job's time left in words: "finishing" rather than 0 s, "more than …" past the estimate."""
    eta = p.get("eta_s")
    if eta is None:
        return "–"
    if eta < FINISHING_S:
        return "finishing"
    return ("more than " if p.get("overrun") else "") + fmt_duration(eta)


def phase_text(p: Mapping[str, Any]) -> str:
    """ "Phase 2 of 5: training — 40%" (or the epoch count before phases were recorded)."""
    if not p.get("phase_count"):
        return f"Epoch {p['epoch']} of {p['epochs']}"
    return f"Phase {p['phase_index']} of {p['phase_count']}: {p['phase']} — {p['fraction']:.0%}"


def _parse_time(text: Any) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def comparison_frame(comparison: Mapping[str, Any], split: str, op: str) -> pd.DataFrame:
    """One split, side by side: the active model and the new one at the operating point ``op`` (each at its
    own threshold), value (95% CI)."""
    entry = (comparison.get("splits") or {}).get(split) or {}
    cols = {}
    for who in ("active", "candidate"):
        version = comparison.get(f"{who}_version")
        summary = (entry.get(who) or {}).get(op)
        if not summary:
            continue
        ci = summary.get("ci95") or {}
        title = f"{'Active' if who == 'active' else 'New'}: {version}"
        cols[title] = [fmt_ci(summary.get(k), ci.get(k)) for k, _ in COMPARED] + [f"{summary.get('threshold', 0):.3f}"]
    return pd.DataFrame(cols, index=[label for _, label in COMPARED] + ["Threshold"])


def comparison_splits(comparison: Mapping[str, Any]) -> list[str]:
    order = ("external", "test", "val")
    splits = list((comparison.get("splits") or {}))
    return sorted(splits, key=lambda s: order.index(s) if s in order else len(order))


def versions_frame(versions: Sequence[VersionInfo], op: str = "balanced") -> pd.DataFrame:
    rows = []
    for v in versions:
        row = {"version": v.name, "active": v.active, "created": v.created.replace("T", " ")[:19], "base": v.init}
        for split in ("external", "test", "val"):
            row[f"{split} AUC"] = fmt_ci(*v.metric(split, "auc", op))
        row["problem"] = v.problem or ""
        rows.append(row)
    return pd.DataFrame(rows, columns=["version", "active", "created", "base", "external AUC", "test AUC", "val AUC",
                                       "problem"])

