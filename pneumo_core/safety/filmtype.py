"""What was uploaded: a pediatric or adult frontal chest film, a lateral chest film, another radiograph,
or not a radiograph at all.

The check reads what the guard already computes in the prediction's own forward pass (the DenseNet's
1024 pooled features and the model-free 16 x 16 layout + grey histogram, ``features.py``), so it
costs no second pass:

* a multinomial logistic regression over the five classes, on the pooled features reduced by PCA
  plus the layout, fitted on:
    - pediatric frontal: the training films (and augmented copies),
    - adult frontal: ``film_types/frontal_chest_adult`` (and augmented copies),
    - lateral: *synthetic* one-sided crops of frontal films (one lung field, the spine or mediastinum
      at one edge, stretched to a full frame). The real laterals in ``film_types/`` are licensed
      non-commercially (CC BY-NC-SA), so nothing is fitted on them; they only measure the check,
    - other radiograph: ``film_types/other_radiograph`` (knees, child pelvis),
    - not a radiograph: ``film_types/other_modality`` (ultrasound) and the built-in negatives
      (photos, documents, noise, CT/MR/NM slices, ``negatives.builtin_negatives``);
* an adult frontal chest Gaussian (probabilistic PCA, as the guard's), so an adult film outside the
  pediatric guard's range is still recognised as a chest film;
* the pediatric guard's own score stays the backstop for what neither was fitted on: a film must be
  inside the pediatric guard or inside the adult Gaussian, *and* be called frontal by the classifier.

DICOM tags are extra evidence, never the only evidence: PatientAge of 18 or more makes a frontal film
"adult"; a non-chest BodyPartExamined rejects a film only when the pixels are also unusual for a chest
film. (A lateral ViewPosition is rejected model-free in ``checks.py``.)

A model folder keeps the arrays in ``film_type.safetensors`` and thresholds, sha256 and the
leave-one-source-out evaluation in ``card["film_type"]``. A version fitted without ``film_types/``
records ``{"fitted": false, "why": ...}``; without a fitted check, only the guard decides.

Fitting, from representations and the ``film_types/`` folder, is in ``filmtype_fit.py``; ``fitting.py`` runs it
for a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from pneumo_core.errors import ModelLoadError
from pneumo_core.files import atomic_write_bytes, sha256_file
from pneumo_core.model.store import read_card
from pneumo_core.safety.features import LAYOUT
from pneumo_core.safety.guard import Gaussian, read_fitted_file

FILM_TYPE_FILE = "film_type.safetensors"
CLASSES = ("pediatric_frontal", "adult_frontal", "lateral", "other_radiograph", "not_radiograph")
PEDIATRIC, ADULT, LATERAL, OTHER_RADIOGRAPH, NOT_RADIOGRAPH = CLASSES
FRONTAL = (PEDIATRIC, ADULT)
LOOKS_LIKE = {
    PEDIATRIC: "looks like a pediatric frontal chest film",
    ADULT: "looks like an adult frontal chest film",
    LATERAL: "looks like a lateral chest film (or a film showing one side of the chest)",
    OTHER_RADIOGRAPH: "looks like a radiograph of another body part",
    NOT_RADIOGRAPH: "does not look like a radiograph (a photo, document, another modality or noise)",
}
VALIDATED_AGES = "children aged 1–5"
PEDIATRIC_MAX_AGE = 5.0      # the training films: children aged 1 to 5 (Kermany et al. 2018)
ADULT_WARNING = (f"Adult chest film: the model was validated on {VALIDATED_AGES} (Kermany et al. 2018), "
                 "not on adults; the probability and label are outside validated use.")
ADULT_CAUTION = f"The film looks like an adult frontal chest film; the model was validated on {VALIDATED_AGES} only."
ADULT_AGE = 18.0                 # DICOM PatientAge at or above this makes a frontal film adult
# Between the guard's threshold and ``chest_max``, only a film the classifier is this sure is frontal is kept:
# other hospitals' adult films sit just above the children's guard, other radiographs far above it.
SURE_FRONTAL = 0.9
# frontal_min is the val quantile that rejects ``pediatric_rejection`` of children's films, but at most this
FRONTAL_MIN_CAP = 0.5
PCA_DIMS = 64
ADULT_DIMS = 16
FEATURES = ("pooled", LAYOUT)
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "RIB", "TORSO", "STERNUM", "HEART", "BREAST")


@dataclass(frozen=True)
class Verdict:
    """The film type of one image; ``reason`` (rejected) or ``caution`` (analysed, outside validated use)."""

    kind: str
    reason: str | None = None
    caution: str | None = None
    frontal: float | None = None      # P(frontal chest) from the classifier


@dataclass(frozen=True)
class FilmTypeCheck:
    pca_mean: np.ndarray          # 1024
    pca_components: np.ndarray    # k x 1024
    x_mean: np.ndarray            # k + layout
    x_scale: np.ndarray
    coef: np.ndarray              # 5 x (k + layout)
    intercept: np.ndarray         # 5
    adult: Mapping[str, Gaussian]
    adult_scales: Mapping[str, float]
    adult_threshold: float        # on max over parts of distance / scale
    frontal_min: float            # P(pediatric) + P(adult) below this: not a frontal chest film
    adult_min: float              # P(adult) / P(frontal) above this: an adult film
    chest_max: float = 1.0        # a film the classifier is sure is frontal may have a guard score up to this
    typical_max: float = 1.0      # a frontal film with a guard score above this is unlike the validated children's

    # ----------------------------------------------------------------------- scores
    def design(self, reps: Mapping[str, np.ndarray]) -> np.ndarray:
        z = (np.asarray(reps["pooled"], np.float64) - self.pca_mean) @ self.pca_components.T.astype(np.float64)
        x = np.hstack([z, np.asarray(reps[LAYOUT], np.float64)])
        return (x - self.x_mean) / self.x_scale

    def probabilities(self, reps: Mapping[str, np.ndarray]) -> np.ndarray:
        """N x 5 class probabilities, columns in ``CLASSES`` order."""
        logits = self.design(reps) @ self.coef.T.astype(np.float64) + self.intercept
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)

    def adult_scores(self, reps: Mapping[str, np.ndarray]) -> np.ndarray:
        """Distance to adult frontal chest films over the threshold: above 1 is unlike them."""
        ratios = [g.distance(reps[k]) / self.adult_scales[k] for k, g in self.adult.items()]
        return np.max(np.stack(ratios), axis=0) / self.adult_threshold

    # ----------------------------------------------------------------------- the verdict
    def judge(self, reps: Mapping[str, np.ndarray], pediatric_scores: np.ndarray,
              metadata: Sequence[Mapping[str, Any]], moderate: float = 1.0) -> list[Verdict]:
        """One Verdict per image. ``pediatric_scores``: the guard's scores (``Guard.scores``, above 1 is out of
        its range); ``moderate``: the guard's 'unusual' level on that scale (for a non-chest DICOM body part)."""
        p = self.probabilities(reps)
        adult_s = self.adult_scores(reps)
        out = []
        for i, meta in enumerate(metadata):
            out.append(self._one(p[i], float(pediatric_scores[i]), float(adult_s[i]), meta, moderate))
        return out

    def _one(self, p: np.ndarray, ped: float, adult: float, meta: Mapping[str, Any], moderate: float) -> Verdict:
        frontal = float(p[0] + p[1])
        inside = (np.isfinite(ped) and ped <= 1.0) or (np.isfinite(adult) and adult <= 1.0) \
            or (np.isfinite(ped) and ped <= self.chest_max and frontal >= SURE_FRONTAL)
        if not inside or frontal < self.frontal_min:
            kind = CLASSES[2 + int(np.argmax(p[2:]))]        # the likeliest of the non-frontal types
            scores = (f"out-of-distribution score {_shown(ped)} for children's films, {_shown(adult)} for adults'; "
                      "above 1.0 is refused")
            if frontal >= self.frontal_min:                   # frontal-looking, but unlike every frontal film known
                return Verdict(kind, "The image is unlike the frontal chest films the model and its checks know, "
                                     f"though it may be one ({scores}).", frontal=frontal)
            why = f"film-type check: P(frontal chest) {frontal:.2f}" + ("" if inside else f"; {scores}")
            said = LOOKS_LIKE[kind] + ("" if kind == NOT_RADIOGRAPH else ", not a frontal chest radiograph")
            return Verdict(kind, f"The image {said} ({why}).", frontal=frontal)
        body = str(meta.get("body_part") or "").upper()
        if body and not any(w in body for w in CHEST_WORDS) and not (ped <= moderate) and not (adult <= 1.0):
            return Verdict(OTHER_RADIOGRAPH, f"DICOM body part {body} and an unusual image for a chest film: "
                                             "not a chest radiograph.", frontal=frontal)
        age = meta.get("patient_age_years")
        is_adult = (p[1] / max(frontal, 1e-12) > self.adult_min or not (ped <= self.typical_max)
                    or (isinstance(age, (int, float)) and age >= ADULT_AGE))
        if is_adult:
            return Verdict(ADULT, caution=ADULT_CAUTION, frontal=frontal)
        # A child's film from outside the validated ages (DICOM PatientAge over 5): outside validated use too.
        older = isinstance(age, (int, float)) and age > PEDIATRIC_MAX_AGE
        return Verdict(PEDIATRIC, caution=(f"The patient is {age:g} years old; the model was validated on "
                                           f"{VALIDATED_AGES} only.") if older else None, frontal=frontal)


def _shown(score: float) -> str:
    return f"{score:.1f}" if np.isfinite(score) else "not computable"


# --------------------------------------------------------------------------- persistence

def check_tensors(check: FilmTypeCheck) -> dict[str, torch.Tensor]:
    t = {k: torch.from_numpy(np.ascontiguousarray(getattr(check, k), dtype=np.float32))
         for k in ("pca_mean", "pca_components", "x_mean", "x_scale", "coef", "intercept")}
    for name, g in check.adult.items():
        t.update(g.tensors(f"adult.{name}"))
    return t


def save_check(check: FilmTypeCheck, model_dir: Path) -> str:
    """Write film_type.safetensors atomically; return its sha256."""
    meta = {"format": "pt", "classes": json.dumps(CLASSES)}
    atomic_write_bytes(Path(model_dir) / FILM_TYPE_FILE, save(check_tensors(check), metadata=meta))
    return sha256_file(Path(model_dir) / FILM_TYPE_FILE)


def check_info(check: FilmTypeCheck) -> dict[str, Any]:
    return {"fitted": True, "classes": list(CLASSES), "features": list(FEATURES), "pca_dims": int(len(check.pca_components)),
            "adult_parts": list(check.adult), "adult_scales": {k: float(v) for k, v in check.adult_scales.items()},
            "adult_threshold": float(check.adult_threshold), "frontal_min": float(check.frontal_min),
            "adult_min": float(check.adult_min), "chest_max": float(check.chest_max),
            "typical_max": float(check.typical_max), "sure_frontal": SURE_FRONTAL}


def load_check(model_dir: str | Path, card: Mapping[str, Any] | None = None) -> FilmTypeCheck | None:
    """The version's film-type check, or None when it has none. A file that differs from the card
    (sha256), was fitted for other weights, or cannot be read is refused (ModelLoadError)."""
    model_dir = Path(model_dir)
    card = card if card is not None else read_card(model_dir)
    info = card.get("film_type")
    if not isinstance(info, Mapping) or not info.get("fitted"):
        return None
    version = card.get("version", model_dir.name)
    data = read_fitted_file(model_dir, card, info, FILM_TYPE_FILE, "film-type check")
    try:
        t = load(data)
        arr = {k: t[k].numpy().astype(np.float64) for k in
               ("pca_mean", "pca_components", "x_mean", "x_scale", "coef", "intercept")}
        adult = {k: Gaussian.from_tensors(t, f"adult.{k}") for k in info["adult_parts"]}
        check = FilmTypeCheck(**arr, adult=adult,
                              adult_scales={k: float(info["adult_scales"][k]) for k in adult},
                              adult_threshold=float(info["adult_threshold"]), frontal_min=float(info["frontal_min"]),
                              adult_min=float(info["adult_min"]), chest_max=float(info.get("chest_max", 1.0)),
                              typical_max=float(info.get("typical_max", 1.0)))
        k, d = check.pca_components.shape
        if check.coef.shape != (len(CLASSES), len(check.x_mean)) or check.intercept.shape != (len(CLASSES),) \
                or check.pca_mean.shape != (d,) or check.x_scale.shape != check.x_mean.shape \
                or not check.adult_threshold > 0 or not all(np.isfinite(check.x_scale)):
            raise ValueError("inconsistent shapes")
        return check
    except (SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"The film-type check of model {version} is unreadable.") from exc

