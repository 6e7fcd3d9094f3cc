"""Plain helpers for the Retrain page: tables and words from jobs, versions and comparisons
(no Streamlit, so they are tested directly)."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import pandas as pd

from pneumo_core.datacheck import DatasetReport
from pneumo_core.jobs import Job
from pneumo_core.registry import VersionInfo

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


def progress(job: Job, now: float | None = None) -> dict[str, Any]:
    """Epoch, fraction done, last loss and validation metric, and the time left (from the newest epoch's
    ETA minus the time since it was written, or the job's estimate before the first epoch)."""
    now = time.time() if now is None else now
    last = job.history[-1] if job.history else {}
    epochs = max(1, job.epochs)
    eta = last.get("eta_s")
    try:
        written = (job.dir / "state.json").stat().st_mtime
    except OSError:
        written = now
    if eta is not None:
        eta = max(0.0, float(eta) - (now - written))
    elif not job.history:
        estimate = (job.spec.get("estimate") or {}).get("seconds")
        started = _parse_time(job.state.get("created")) or now
        eta = max(0.0, float(estimate) - (now - started)) if estimate else None
    metric_key = next((k for k in ("external_auc", "val_auc") if k in last), None)
    return {"epoch": int(last.get("epoch", 0)), "epochs": epochs, "fraction": int(last.get("epoch", 0)) / epochs,
            "loss": last.get("train_loss"), "metric_name": (metric_key or "val_auc").replace("_", " "),
            "metric": last.get(metric_key) if metric_key else None, "eta_s": eta,
            "images_per_s": last.get("images_per_s")}


def _parse_time(text: Any) -> float | None:
    import datetime as dt

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

