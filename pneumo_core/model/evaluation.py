"""Run a model over labelled folders; calibrate it and write its evaluation into the card.

``calibrate_model`` is the last step of training: temperature and operating
points are fitted on ``external/`` (the distribution users meet) when present,
else on ``val/``; metrics with CIs are computed on every split; curves are
saved as JSON artifacts for the metrics page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pneumo_core.errors import UnreadableImageError
from pneumo_core.files import atomic_write_json
from pneumo_core.ingest.folders import discover_splits, list_labelled
from pneumo_core.ingest.read import read_xray
from pneumo_core.model import metrics as ev
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import load_model, read_card, write_card

EVAL_DIR = "evaluation"
# A second-opinion tool: a missed pneumonia costs more than a false flag, so the screening point is the default.
DEFAULT_OPERATING_POINT = "high_sensitivity"


@dataclass(frozen=True)
class FolderScores:
    files: tuple[str, ...]
    labels: np.ndarray
    logits: np.ndarray
    skipped: tuple[tuple[str, str], ...]     # (file name, reason)


def score_folder(predictor: Predictor, folder: str | Path, *, batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None) -> FolderScores:
    """Raw logits for every readable film under NORMAL/ and PNEUMONIA/; unreadable ones are listed."""
    lf = list_labelled(folder)
    files, labels, logits, skipped = [], [], [], []
    batch: list[tuple[Path, int, np.ndarray]] = []

    def flush() -> None:
        if batch:
            logits.extend(predictor.logits([b[2] for b in batch]).tolist())
            files.extend(b[0].name for b in batch)
            labels.extend(b[1] for b in batch)
            batch.clear()

    for i, (f, y) in enumerate(zip(lf.files, lf.labels.tolist())):
        try:
            batch.append((f, y, read_xray(f).pixels))
        except (UnreadableImageError, OSError) as exc:
            skipped.append((f.name, str(exc)))
        if len(batch) >= batch_size:
            flush()
        if progress:
            progress(i + 1, len(lf))
    flush()
    return FolderScores(tuple(files), np.asarray(labels, int), np.asarray(logits, float), tuple(skipped))


def evaluate_folder(predictor: Predictor, folder: str | Path, operating_point: str | None = None,
                    *, n_boot: int = 1000) -> dict[str, Any]:
    """The ``evaluate`` contract over one labelled folder, at the card's operating point."""
    name, thr = predictor.threshold(operating_point)
    scores = score_folder(predictor, folder)
    probs = ev.sigmoid(scores.logits / predictor.temperature)
    out = ev.report(scores.labels, probs, thr, n_boot=n_boot)
    out.update({
        "operating_point": name,
        "model_version": predictor.version,
        "data": Path(folder).name,
        "n_skipped": len(scores.skipped),
        "skipped": [{"file": f, "reason": r} for f, r in scores.skipped],
    })
    return out


def evaluate_points(predictor: Predictor, folder: str | Path, *, n_boot: int = 1000,
                    scores: FolderScores | None = None) -> dict[str, Any]:
    """Summaries (metrics with 95% CIs) at each of the model's operating points on one labelled folder,
    scoring the films once (or using ``scores`` already made by this predictor on it); the model's own
    temperature and thresholds are used."""
    scores = scores if scores is not None else score_folder(predictor, folder)
    probs = ev.sigmoid(scores.logits / predictor.temperature)
    out: dict[str, Any] = {name: _summary(ev.report(scores.labels, probs, thr, n_boot=n_boot))
                           for name, thr in predictor.operating_points().items()}
    return out


def calibrate_model(model_dir: str | Path, data_dir: str | Path, *, n_boot: int = 1000,
                    log: Callable[[str], None] = lambda s: None, device: Any = "cpu") -> dict[str, Any]:
    """Fit temperature + operating points, evaluate every split, update the card in place (atomically).

    ``device``: where the model scores the films (a training job passes its GPU)."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    predictor = Predictor(load_model(model_dir, device=device))
    folders = discover_splits(data_dir)
    scores = {}
    for split in ("val", "test", "external"):
        if split in folders:
            log(f"scoring {split}")
            scores[split] = score_folder(predictor, folders[split])
    fit_on = "external" if "external" in scores else "val"
    if fit_on not in scores:
        raise FileNotFoundError(f"{data_dir} has neither external/ nor val/ to calibrate on.")
    temperature = ev.fit_temperature(scores[fit_on].logits, scores[fit_on].labels)
    probs = {k: ev.sigmoid(s.logits / temperature) for k, s in scores.items()}
    points = ev.choose_operating_points(scores[fit_on].labels, probs[fit_on], source=f"{fit_on}/")
    card["temperature"] = temperature
    card["operating_points"] = points
    card["default_operating_point"] = DEFAULT_OPERATING_POINT
    metrics: dict[str, Any] = {}
    for split, s in scores.items():
        log(f"evaluating {split}")
        metrics[split] = write_evaluation(model_dir, split, s, probs[split], points, temperature,
                                          version=card.get("version"), n_boot=n_boot)
    card["calibration"] = {"method": "temperature scaling", "fitted_on": f"{fit_on}/",
                           "population": POPULATIONS[fit_on],
                           "note": f"temperature, thresholds and model selection all used {fit_on}/, "
                                   f"so its metrics are optimistic; other splits are untouched. "
                                   + _ece_note(metrics, fit_on)}
    card["metrics"] = metrics
    write_card(model_dir, card)
    return card


POPULATIONS = {
    "external": "films like the official Kermany test set (external/), taken later than the training films and "
                "the closest population here to a new clinic's",
    "val": "films like the training hospital's own (val/)",
}


def _ece_note(metrics: dict[str, dict[str, Any]], fit_on: str) -> str:
    """One temperature cannot serve two populations: say how far off the others are.
    ``metrics``: per split, per operating point summaries (ECE does not depend on the point)."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731   (no films: no ECE)
    ece = {split: fmt(next(iter(points.values())).get("ece")) for split, points in metrics.items()}
    others = [f"{k}/ {v}" for k, v in ece.items() if k != fit_on]
    if not others:
        return ""
    return (f"ECE on {fit_on}/ {ece[fit_on]}; on " + ", ".join(others)
            + ": on other populations a probability may be off by about that much.")


def write_evaluation(model_dir: Path, split: str, s: FolderScores, probs: np.ndarray,
                     points: dict[str, dict[str, Any]], temperature: float, *, version: str | None,
                     n_boot: int = 1000) -> dict[str, Any]:
    """Write ``evaluation/<split>.json`` (reports per operating point, curves, per-film scores).

    Returns the per-operating-point summaries that go into the card."""
    reports = {name: ev.report(s.labels, probs, pt["threshold"], n_boot=n_boot) for name, pt in points.items()}
    out = Path(model_dir) / EVAL_DIR
    out.mkdir(exist_ok=True)
    atomic_write_json(out / f"{split}.json", {
        "split": split, "model_version": version, "temperature": temperature,
        "n": int(len(s.labels)), "n_skipped": len(s.skipped),
        "uncalibrated_ece": ev.ece(s.labels, ev.sigmoid(s.logits)),
        "operating_points": reports,
        "curves": ev.curves(s.labels, probs),
        # Per-film scores (file name, label, probability): file names only, no patient data.
        "scores": {"file": list(s.files), "label": s.labels.tolist(), "probability": np.asarray(probs).tolist()},
    })
    return {name: _summary(rep) for name, rep in reports.items()}


def _summary(rep: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "auc", "pr_auc", "accuracy", "sensitivity", "specificity", "precision", "npv", "f1", "ece",
            "threshold", "confusion", "ci95")
    return {k: rep[k] for k in keys if k in rep}


def load_evaluation(model_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Saved artifacts by split (what the metrics page shows)."""
    folder = Path(model_dir) / EVAL_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
