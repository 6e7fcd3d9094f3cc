"""What was uploaded: a pediatric or adult frontal chest film, a lateral chest film, another radiograph,
or not a radiograph at all.

The check reads what the guard already computes in the prediction's own forward pass (the DenseNet's
1024 pooled features and the model-free 16 x 16 layout + grey histogram, ``ood.represent``), so it
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
      (photos, documents, noise, CT/MR/NM slices, ``ood.builtin_negatives``);
* an adult frontal chest Gaussian (probabilistic PCA, as the guard's), so an adult film outside the
  pediatric guard's range is still recognised as a chest film;
* the pediatric guard's own score stays the backstop for what neither was fitted on: a film must be
  inside the pediatric guard or inside the adult Gaussian, *and* be called frontal by the classifier.

DICOM tags are extra evidence, never the only evidence: PatientAge of 18 or more makes a frontal film
"adult"; a non-chest BodyPartExamined rejects a film only when the pixels are also unusual for a chest
film. (A lateral ViewPosition is rejected model-free in ``guard.py``.)

A model folder keeps the arrays in ``film_type.safetensors`` and thresholds, sha256 and the
leave-one-source-out evaluation in ``card["film_type"]``. A version fitted without ``film_types/``
records ``{"fitted": false, "why": ...}``; without a fitted check, only the guard decides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import ModelLoadError
from .guard import LATERAL_VIEWS
from .model import atomic_write_bytes, read_card, sha256_file
from .ood import LAYOUT, Gaussian

FILM_TYPE_FILE = "film_type.safetensors"
CLASSES = ("pediatric_frontal", "adult_frontal", "lateral", "other_radiograph", "not_radiograph")
PEDIATRIC, ADULT, LATERAL, OTHER_RADIOGRAPH, NOT_RADIOGRAPH = CLASSES
FRONTAL = (PEDIATRIC, ADULT)
LOOKS_LIKE = {
    PEDIATRIC: "a pediatric frontal chest film",
    ADULT: "an adult frontal chest film",
    LATERAL: "a lateral chest film (or a film showing one side of the chest)",
    OTHER_RADIOGRAPH: "a radiograph of another body part",
    NOT_RADIOGRAPH: "not a radiograph (a photo, document, another modality or noise)",
}
VALIDATED_AGES = "children aged 1–5"
ADULT_WARNING = (f"Adult chest film: the model was validated on {VALIDATED_AGES} (Kermany et al. 2018), "
                 "not on adults; the probability and label are outside validated use.")
ADULT_CAUTION = f"The film looks like an adult frontal chest film; the model was validated on {VALIDATED_AGES} only."
ADULT_AGE = 18.0                 # DICOM PatientAge at or above this makes a frontal film adult
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
        inside = (np.isfinite(ped) and ped <= 1.0) or (np.isfinite(adult) and adult <= 1.0)
        if not inside or frontal < self.frontal_min:
            kind = CLASSES[2 + int(np.argmax(p[2:]))]
            why = (f"film-type check: P(frontal chest) {frontal:.2f}" if inside else
                   f"out-of-distribution score {_shown(ped)} for children's films, {_shown(adult)} for adults'; "
                   "above 1.0 is refused")
            return Verdict(kind, f"The image looks like {LOOKS_LIKE[kind]}, not a frontal chest radiograph "
                                 f"({why}).", frontal=frontal)
        body = str(meta.get("body_part") or "").upper()
        if body and not any(w in body for w in CHEST_WORDS) and min(ped, adult) > moderate:
            return Verdict(OTHER_RADIOGRAPH, f"DICOM body part {body} and an unusual image for a chest film: "
                                             "not a chest radiograph.", frontal=frontal)
        age = meta.get("patient_age_years")
        is_adult = (p[1] / max(frontal, 1e-12) > self.adult_min or ped > 1.0
                    or (isinstance(age, (int, float)) and age >= ADULT_AGE))
        if is_adult:
            return Verdict(ADULT, caution=ADULT_CAUTION, frontal=frontal)
        return Verdict(PEDIATRIC, frontal=frontal)


def _shown(score: float) -> str:
    return f"{score:.1f}" if np.isfinite(score) else "not computable"


def model_free_kind(reason: str | None, metadata: Mapping[str, Any]) -> str | None:
    """The film type implied by a model-free refusal (``guard.model_free_reason``), when it implies one."""
    if reason is None:
        return None
    if str(metadata.get("view_position") or "").upper() in LATERAL_VIEWS:
        return LATERAL
    if reason.startswith(("DICOM modality", "The image is in colour", "The image is blank")):
        return NOT_RADIOGRAPH
    return None


# --------------------------------------------------------------------------- persistence

def check_tensors(check: FilmTypeCheck) -> dict[str, torch.Tensor]:
    t = {k: torch.from_numpy(np.ascontiguousarray(getattr(check, k), dtype=np.float32))
         for k in ("pca_mean", "pca_components", "x_mean", "x_scale", "coef", "intercept")}
    for name, g in check.adult.items():
        t.update(g.tensors(f"adult.{name}"))
    return t


def save_check(check: FilmTypeCheck, model_dir: Path) -> str:
    from safetensors.torch import save

    meta = {"format": "pt", "classes": json.dumps(CLASSES)}
    atomic_write_bytes(Path(model_dir) / FILM_TYPE_FILE, save(check_tensors(check), metadata=meta))
    return sha256_file(Path(model_dir) / FILM_TYPE_FILE)


def check_info(check: FilmTypeCheck) -> dict[str, Any]:
    return {"fitted": True, "classes": list(CLASSES), "features": list(FEATURES), "pca_dims": int(len(check.pca_components)),
            "adult_parts": list(check.adult), "adult_scales": {k: float(v) for k, v in check.adult_scales.items()},
            "adult_threshold": float(check.adult_threshold), "frontal_min": float(check.frontal_min),
            "adult_min": float(check.adult_min)}


def load_check(model_dir: str | Path, card: Mapping[str, Any] | None = None) -> FilmTypeCheck | None:
    """The version's film-type check, or None when it has none. A file that differs from the card
    (sha256), was fitted for other weights, or cannot be read is refused (ModelLoadError)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    model_dir = Path(model_dir)
    card = card if card is not None else read_card(model_dir)
    info = card.get("film_type")
    if not isinstance(info, Mapping) or not info.get("fitted"):
        return None
    version = card.get("version", model_dir.name)
    path = model_dir / str(info.get("file", FILM_TYPE_FILE))
    if path.parent != model_dir or not path.is_file():
        raise ModelLoadError(f"The model card of {version} names a film-type check ({path.name}) that is missing. "
                             "Refusing to run without it.")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise ModelLoadError(f"The film-type check of model {version} does not match its card (sha256 differs): "
                             "the file was changed or truncated. Refusing to use it.")
    weights_sha = (card.get("weights") or {}).get("sha256")
    if info.get("weights_sha256") and weights_sha and info["weights_sha256"] != weights_sha:
        raise ModelLoadError(f"The film-type check of model {version} was fitted for other weights; "
                             "refit it (python -m pneumo_core fit-guard).")
    try:
        t = load(data)
        arr = {k: t[k].numpy().astype(np.float64) for k in
               ("pca_mean", "pca_components", "x_mean", "x_scale", "coef", "intercept")}
        adult = {k: Gaussian.from_tensors(t, f"adult.{k}") for k in info["adult_parts"]}
        check = FilmTypeCheck(**arr, adult=adult,
                              adult_scales={k: float(info["adult_scales"][k]) for k in adult},
                              adult_threshold=float(info["adult_threshold"]), frontal_min=float(info["frontal_min"]),
                              adult_min=float(info["adult_min"]))
        k, d = check.pca_components.shape
        if check.coef.shape != (len(CLASSES), len(check.x_mean)) or check.intercept.shape != (len(CLASSES),) \
                or check.pca_mean.shape != (d,) or check.x_scale.shape != check.x_mean.shape \
                or not check.adult_threshold > 0 or not all(np.isfinite(check.x_scale)):
            raise ValueError("inconsistent shapes")
        return check
    except (SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"The film-type check of model {version} is unreadable.") from exc
