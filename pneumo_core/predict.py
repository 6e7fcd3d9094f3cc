"""Film -> calibrated probability at a named operating point.

``Predictor`` wraps a loaded model (read-only, shareable between sessions) and
serialises use of it with a lock, so explanations' hooks never meet another
caller's forward pass.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from .errors import PneumoError, UnreadableImageError
from .evaluate import sigmoid
from .guard import rejection_reason
from .io import XrayImage, read_xray
from .model import LABELS, LoadedModel, load_model
from .preprocess import to_batch

# Probabilities this close to the threshold (in logit units after calibration) get a warning.
NEAR_THRESHOLD_LOGIT = 0.5
PEDIATRIC_MAX_AGE = 5.0      # the training films: children aged 1 to 5 (Kermany et al. 2018)


@dataclass(frozen=True)
class Prediction:
    probability: float           # calibrated P(pneumonia)
    label: str                   # NORMAL | PNEUMONIA at the operating point
    threshold: float
    operating_point: str
    model_version: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    """One line of ``predict --json``: the CLI contract."""

    file: str
    status: str                  # ok | rejected | error
    probability: float | None = None
    label: str | None = None
    threshold: float | None = None
    model_version: str | None = None
    message: str = ""
    operating_point: str | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


class Predictor:
    def __init__(self, model: LoadedModel):
        self.model = model
        self.lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Predictor":
        return cls(load_model(model_dir))

    @property
    def card(self) -> Mapping[str, Any]:
        return self.model.card

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def temperature(self) -> float:
        return float(self.card.get("temperature", 1.0) or 1.0)

    def operating_points(self) -> dict[str, float]:
        points = {k: float(v["threshold"]) for k, v in (self.card.get("operating_points") or {}).items()}
        return points or {"default": 0.5}

    def default_operating_point(self) -> str:
        points = self.operating_points()
        name = self.card.get("default_operating_point", "balanced")
        return name if name in points else next(iter(points))

    def threshold(self, operating_point: str | None = None) -> tuple[str, float]:
        points = self.operating_points()
        name = operating_point or self.default_operating_point()
        if name not in points:
            raise ValueError(f"Unknown operating point {name!r}; this model has {', '.join(points)}.")
        return name, points[name]

    def logits(self, images: list[np.ndarray]) -> np.ndarray:
        """Display pixels -> raw logits (before temperature)."""
        x = to_batch(images, self.card["input"]).to(self.model.device)
        with self.lock, torch.inference_mode():
            return self.model.net(x).float().squeeze(1).cpu().numpy()

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        return sigmoid(self.logits(images) / self.temperature)

    def predict(self, image: XrayImage, operating_point: str | None = None) -> Prediction:
        return self.predict_many([image], operating_point)[0]

    def predict_many(self, images: list[XrayImage], operating_point: str | None = None,
                     batch_size: int = 16) -> list[Prediction]:
        name, thr = self.threshold(operating_point)
        probs = np.concatenate([self.probabilities([im.pixels for im in images[i:i + batch_size]])
                                for i in range(0, len(images), batch_size)]) if images else np.zeros(0)
        out = []
        for im, p in zip(images, probs):
            out.append(Prediction(float(p), LABELS[int(p >= thr)], thr, name, self.version,
                                  tuple(im.warnings) + clinical_warnings(im, float(p), thr, self.temperature)))
        return out


def clinical_warnings(image: XrayImage, probability: float, threshold: float, temperature: float = 1.0) -> tuple[str, ...]:
    """What a radiologist should know before trusting the number."""
    notes = []
    view = str(image.metadata.get("view_position") or "").upper()
    if view in {"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"}:
        notes.append(f"Lateral view ({view}): the model was trained on frontal films only.")
    age = image.metadata.get("patient_age_years")
    if isinstance(age, (int, float)) and age > PEDIATRIC_MAX_AGE:
        notes.append(f"Patient older than the pediatric training population (1–5 years): "
                     "the model is not validated for this age.")
    z = lambda q: np.log(max(q, 1e-9) / max(1 - q, 1e-9))  # noqa: E731
    if abs(z(probability) - z(threshold)) < NEAR_THRESHOLD_LOGIT:
        notes.append("Low confidence: the probability is close to the decision threshold.")
    return tuple(notes)


def predict_files(predictor: Predictor, paths: Iterable[str | Path], operating_point: str | None = None,
                  *, allow_rejected: bool = False) -> Iterable[Record]:
    """One Record per path, whatever happens to it; never raises for a bad file."""
    name, thr = predictor.threshold(operating_point)
    for path in paths:
        shown = str(path)
        try:
            image = read_xray(path, name=Path(path).name)
        except UnreadableImageError as exc:
            yield Record(shown, "error", message=str(exc), model_version=predictor.version)
            continue
        except OSError as exc:
            yield Record(shown, "error", message=f"Cannot open the file ({exc.strerror or 'I/O error'}).",
                         model_version=predictor.version)
            continue
        reason = rejection_reason(image)
        if reason and not allow_rejected:
            yield Record(shown, "rejected", message=f"Not analysed: {reason}", model_version=predictor.version,
                         threshold=thr, operating_point=name)
            continue
        try:
            pred = predictor.predict(image, name)
        except (PneumoError, ValueError, RuntimeError) as exc:   # a model failure on one film must not stop a batch
            yield Record(shown, "error", message=f"The model could not analyse this film ({type(exc).__name__}).",
                         model_version=predictor.version)
            continue
        yield Record(shown, "ok", pred.probability, pred.label, pred.threshold, pred.model_version,
                     message=("Outside validated use: " + reason) if reason else "",
                     operating_point=name, warnings=pred.warnings)
