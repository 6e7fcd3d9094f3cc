"""Film -> calibrated probability at a named operating point, and whether the film may be analysed.

``Predictor`` wraps a loaded model (read-only, shareable between sessions) and
serialises use of it with a lock, so explanations' hooks never meet another
caller's forward pass. It also holds the model's out-of-distribution guard
(``safety/guard.py``) when the model folder has one: ``check`` / ``screen_many`` give the
guard's verdict and the prediction from the same forward pass.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from pneumo_core.errors import PneumoError, UnreadableImageError
from pneumo_core.ingest.preprocess import to_batch
from pneumo_core.ingest.read import XrayImage, read_xray
from pneumo_core.model.metrics import sigmoid
from pneumo_core.model.network import LABELS
from pneumo_core.model.store import LoadedModel, load_model
from pneumo_core.safety.checks import LATERAL_VIEWS, model_free_verdict
from pneumo_core.safety.features import LAYOUT, forward_with_taps, layout
from pneumo_core.safety.filmtype import ADULT, ADULT_WARNING, PEDIATRIC_MAX_AGE, FilmTypeCheck, load_check
from pneumo_core.safety.guard import Guard, load_guard

# Probabilities this close to the threshold (in logit units after calibration) get a warning.
NEAR_THRESHOLD_LOGIT = 0.5


@dataclass(frozen=True)
class Prediction:
    probability: float           # calibrated P(pneumonia)
    label: str                   # NORMAL | PNEUMONIA at the operating point
    threshold: float
    operating_point: str
    model_version: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Screened:
    """The guard's verdict on one film and, unless it was not computed, the model's answer."""

    reason: str | None               # why the film is rejected; None when accepted
    prediction: Prediction | None    # None only for films the model-free checks refused (not run)
    film_type: str | None = None     # filmtype.CLASSES; None when the version has no film-type check
    caution: str | None = None       # accepted, but outside the validated population (an adult film)

    @property
    def outside_validated_use(self) -> str | None:
        """Why a result for this film is outside validated use (rejected or cautioned), else None."""
        return self.reason or self.caution


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
    film_type: str | None = None         # filmtype.CLASSES, when the version has a film-type check
    outside_validated_use: bool = False  # analysed, but not a film of the validated population

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        return d


class Predictor:
    def __init__(self, model: LoadedModel, guard: Guard | None = None, film_types: FilmTypeCheck | None = None):
        self.model = model
        self.guard = guard           # None: a model without a fitted guard (model-free checks only)
        self.film_types = film_types  # None: no film-type check (the guard alone decides); needs the guard
        self.lock = threading.Lock()

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, guard: bool = True) -> "Predictor":
        """Load a model folder and, when its card names them (and ``guard``), its OOD guard and film-type
        check (each sha256 checked)."""
        model = load_model(model_dir)
        if not guard:
            return cls(model)
        g = load_guard(model.path, model.card)
        return cls(model, g, load_check(model.path, model.card) if g is not None else None)

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

    def forward(self, images: list[np.ndarray], taps: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Display pixels -> (raw logits, {tap: pooled features}) from one forward pass."""
        x = to_batch(images, self.card["input"]).to(self.model.device)
        with self.lock, torch.inference_mode():
            logits, feats = forward_with_taps(self.model.net, x, taps)
            return logits.float().cpu().numpy(), {k: v.float().cpu().numpy() for k, v in feats.items()}

    def screen_many(self, images: list[XrayImage], operating_point: str | None = None, *, batch_size: int = 16,
                    predict_rejected: bool = False) -> list[Screened]:
        """Verdict and prediction for each film, the guard's features and the logit from one pass.

        The model-free checks run first; films they refuse are not run through the network
        unless ``predict_rejected`` (the "analyse anyway" path).
        """
        name, thr = self.threshold(operating_point)
        found = [model_free_verdict(im) for im in images]
        reasons, kinds = [r for r, _ in found], [k for _, k in found]
        cautions: list[str | None] = [None] * len(images)
        preds: list[Prediction | None] = [None] * len(images)
        run = [i for i, r in enumerate(reasons) if r is None or predict_rejected]
        taps = self.guard.taps if self.guard is not None else ()
        for start in range(0, len(run), batch_size):
            idx = run[start:start + batch_size]
            pixels = [images[i].pixels for i in idx]
            logits, feats = self.forward(pixels, taps)
            probs = sigmoid(logits / self.temperature)
            scores = verdicts = None
            if self.guard is not None:
                feats[LAYOUT] = layout(pixels, self.card["input"])
                scores = self.guard.scores(feats)
                if self.film_types is not None:
                    verdicts = self.film_types.judge(feats, scores, [images[i].metadata for i in idx],
                                                     moderate=self.guard.moderate / self.guard.threshold)
            for j, i in enumerate(idx):
                p, im = float(probs[j]), images[i]
                if verdicts is not None and reasons[i] is None:
                    v = verdicts[j]
                    reasons[i], kinds[i], cautions[i] = v.reason, v.kind, v.caution
                elif verdicts is not None:
                    kinds[i] = kinds[i] or verdicts[j].kind
                elif reasons[i] is None and scores is not None:
                    reasons[i] = self.guard.reason(im, float(scores[j]))
                preds[i] = Prediction(p, LABELS[int(p >= thr)], thr, name, self.version,
                                      prediction_warnings(im, p, thr, self.temperature, kinds[i]))
        return [Screened(r, p, k, c) for r, p, k, c in zip(reasons, preds, kinds, cautions)]

    def screen(self, image: XrayImage, operating_point: str | None = None) -> Screened:
        """``screen_many`` for one film: the verdict, film type, caution and prediction."""
        return self.screen_many([image], operating_point)[0]

    def check_many(self, images: list[XrayImage], *, batch_size: int = 16) -> list[str | None]:
        """For each film, a one-line reason it is outside validated use, or None to analyse it."""
        return [s.reason for s in self.screen_many(images, batch_size=batch_size)]

    def check(self, image: XrayImage) -> str | None:
        """The whole check (model-free checks, then this model's guard if it has one): a reason, or None."""
        return self.check_many([image])[0]

    def predict(self, image: XrayImage, operating_point: str | None = None) -> Prediction:
        return self.predict_many([image], operating_point)[0]

    def predict_many(self, images: list[XrayImage], operating_point: str | None = None,
                     batch_size: int = 16) -> list[Prediction]:
        self.threshold(operating_point)                      # an unknown operating point fails before any work
        logits = np.concatenate([self.logits([im.pixels for im in images[i:i + batch_size]])
                                 for i in range(0, len(images), batch_size)]) if images else np.zeros(0)
        return [self.prediction_from_logit(im, float(z), operating_point) for im, z in zip(images, logits)]

    def prediction_from_logit(self, image: XrayImage, logit: float, operating_point: str | None = None) -> Prediction:
        """The Prediction for a film whose raw logit is already known (e.g. from Grad-CAM's own forward pass)."""
        name, thr = self.threshold(operating_point)
        p = float(sigmoid(np.asarray(logit / self.temperature)))
        return Prediction(p, LABELS[int(p >= thr)], thr, name, self.version,
                          prediction_warnings(image, p, thr, self.temperature, None))

    def typed(self, pred: Prediction, image: XrayImage, kind: str | None) -> Prediction:
        """``pred`` with the warnings of a film of type ``kind`` (``screen_many`` gives them at once; ``predict``
        and Grad-CAM, which do not run the film-type check, get them here)."""
        return replace(pred, warnings=prediction_warnings(image, pred.probability, pred.threshold, self.temperature,
                                                          kind))


def film_warnings(kind: str | None) -> tuple[str, ...]:
    """The warning a film type carries on an analysed film (an adult film: not the validated population)."""
    return (ADULT_WARNING,) if kind == ADULT else ()


def prediction_warnings(image: XrayImage, probability: float, threshold: float, temperature: float,
                        kind: str | None) -> tuple[str, ...]:
    """Every warning of a prediction: its film type's, the decoder's, then the clinical ones."""
    return (film_warnings(kind) + tuple(image.warnings)
            + clinical_warnings(image, probability, threshold, temperature, adult=kind == ADULT))


def outside_message(outside: str | None) -> str:
    """A record's message for a result outside validated use (the reason or caution), else empty."""
    return f"Outside validated use: {outside}" if outside else ""


def outside_detail(film_type: str | None, *, analysed_anyway: bool = False) -> str:
    """The audit log's detail for a result outside validated use: fixed words and the film type (one of
    ``filmtype.CLASSES``), never file data."""
    if analysed_anyway:
        return "analysed anyway, outside validated use"
    return "outside validated use" + (f" ({film_type})" if film_type else "")


def clinical_warnings(image: XrayImage, probability: float, threshold: float, temperature: float = 1.0,
                      *, adult: bool = False) -> tuple[str, ...]:
    """What a radiologist should know before trusting the number (``adult``: the adult-film warning is already
    given, so the DICOM age note would repeat it)."""
    notes = []
    view = str(image.metadata.get("view_position") or "").upper()
    if view in LATERAL_VIEWS:
        notes.append(f"Lateral view ({view}): the model was trained on frontal films only.")
    age = image.metadata.get("patient_age_years")
    if isinstance(age, (int, float)) and age > PEDIATRIC_MAX_AGE and not adult:
        notes.append("Patient older than the pediatric training population (1–5 years): "
                     "the model is not validated for this age.")
    z = lambda q: np.log(max(q, 1e-9) / max(1 - q, 1e-9))  # noqa: E731
    if abs(z(probability) - z(threshold)) < NEAR_THRESHOLD_LOGIT:
        notes.append("Low confidence: the probability is close to the decision threshold.")
    return tuple(notes)


# A model failure on one film is reported on that film (a record, a message), never raised through a batch.
MODEL_ERRORS = (PneumoError, ValueError, RuntimeError)


def model_failure(exc: BaseException) -> str:
    return f"The model could not analyse this film ({type(exc).__name__})."


def screened_record(file: str, image: XrayImage, screened: Screened, operating_point: str, threshold: float,
                    model_version: str, *, allow_rejected: bool = False) -> Record:
    """The contract record of one screened film: rejected with its reason, or ok (marked outside validated
    use when a rejected film is analysed anyway)."""
    reason, pred, kind = screened.reason, screened.prediction, screened.film_type
    if reason and not allow_rejected:
        return Record(file, "rejected", message=f"Not analysed: {reason}", model_version=model_version,
                      threshold=threshold, operating_point=operating_point, warnings=tuple(image.warnings),
                      film_type=kind, outside_validated_use=True)
    outside = screened.outside_validated_use
    return Record(file, "ok", pred.probability, pred.label, pred.threshold, pred.model_version,
                  message=outside_message(outside),
                  operating_point=operating_point, warnings=pred.warnings, film_type=kind,
                  outside_validated_use=bool(outside))


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
        try:
            screened = predictor.screen_many([image], name, predict_rejected=allow_rejected)[0]
        except MODEL_ERRORS as exc:
            yield Record(shown, "error", message=model_failure(exc), model_version=predictor.version)
            continue
        yield screened_record(shown, image, screened, name, thr, predictor.version, allow_rejected=allow_rejected)
