"""The learned out-of-distribution guard: does this image look like the films the model was trained on?

Two parts, each a probabilistic-PCA Gaussian (a Mahalanobis distance) fitted on the training films:

* ``pooled``: the DenseNet's own penultimate features (the 1024 pooled channels the pneumonia
  head reads): what the network "sees". Catches photos, documents, noise, CT/MR slices even when
  the DICOM header says nothing.
* ``layout``: a model-free 16 x 16 thumbnail (contrast-normalised) plus the grey histogram.
  Where things are and how bright: two dark lungs either side of a bright mediastinum. Catches
  radiographs of other anatomy and other framings that the features alone may miss.

(Both are read in ``features.py``, which can also catch mid-level features, e.g. ``denseblock3``; on the
shipped model they added nothing measurable to the two parts above, so ``TAPS`` is just ``pooled``.)

Each distance is divided by its median on the validation films, and the image's score is the
largest of these ratios, so one threshold (a high quantile of the score on validation films and
augmented copies of them) sets the false-rejection rate of the whole guard.

The Gaussians are fitted (``fitting.py``) on the training films *and* on copies altered by the training
augmentation (exposure, contrast, rotation, scale, blur, noise): the guard then accepts the
variation the classifier was trained to handle (other hospitals' films) rather than only the look
of one hospital's.

A model folder keeps the arrays in ``ood.safetensors`` and the threshold, sha256 and measured
rejection rates in ``card["ood"]``. Older models have no guard; ``load_guard`` returns None and
only the model-free checks in ``checks.py`` apply. Fitting never touches the weights file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from sklearn.decomposition import PCA

from pneumo_core.errors import ModelLoadError
from pneumo_core.files import atomic_write_bytes, sha256_file
from pneumo_core.ingest.read import XrayImage
from pneumo_core.model.store import read_card
from pneumo_core.safety.features import LAYOUT

OOD_FILE = "ood.safetensors"
# PCA dimensions of each part's Gaussian; the parts a guard may have (features.py reads them)
DIMS = {"denseblock1": 32, "denseblock2": 48, "denseblock3": 64, "denseblock4": 64, "pooled": 64, LAYOUT: 16}
# A DICOM body part that is not chest rejects only with this much pixel evidence: a score
# above its 95th percentile on validation films ("unusual", though not out of range by itself).
MODERATE_QUANTILE = 0.95
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "RIB", "TORSO", "STERNUM", "HEART", "BREAST")


# --------------------------------------------------------------------------- the Gaussian

@dataclass(frozen=True)
class Gaussian:
    """Probabilistic PCA (Tipping & Bishop 1999, as scikit-learn's PCA.score_samples).

    distance(x)^2 = sum_i z_i^2 / var_i + |residual|^2 / noise, z = the k PCA coordinates,
    residual = what the k components do not explain: a Mahalanobis distance that also
    counts directions the training films never varied in.
    """

    mean: np.ndarray            # d
    components: np.ndarray      # k x d, orthonormal rows
    variances: np.ndarray       # k
    noise: float                # variance of each discarded direction

    @classmethod
    def fit(cls, x: np.ndarray, dims: int) -> "Gaussian":
        x = np.asarray(x, np.float64)
        dims = max(1, min(dims, x.shape[0] - 1, x.shape[1] - 1))
        pca = PCA(dims, svd_solver="full").fit(x)
        top = float(pca.explained_variance_[0]) if len(pca.explained_variance_) else 1.0
        noise = float(max(pca.noise_variance_, 1e-6 * top, 1e-12))
        return cls(pca.mean_.astype(np.float32), pca.components_.astype(np.float32),
                   np.maximum(pca.explained_variance_, noise).astype(np.float32), noise)

    def distance(self, x: np.ndarray) -> np.ndarray:
        c = np.asarray(x, np.float64) - self.mean
        z = c @ self.components.T.astype(np.float64)
        inside = (z ** 2 / self.variances).sum(1)
        residual = np.maximum((c ** 2).sum(1) - (z ** 2).sum(1), 0.0)
        return np.sqrt(inside + residual / self.noise)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.mean": torch.from_numpy(np.ascontiguousarray(self.mean)),
                f"{prefix}.components": torch.from_numpy(np.ascontiguousarray(self.components)),
                f"{prefix}.variances": torch.from_numpy(np.ascontiguousarray(self.variances)),
                f"{prefix}.noise": torch.tensor([self.noise], dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, t: Mapping[str, torch.Tensor], prefix: str) -> "Gaussian":
        g = cls(t[f"{prefix}.mean"].numpy(), t[f"{prefix}.components"].numpy(),
                t[f"{prefix}.variances"].numpy(), float(t[f"{prefix}.noise"][0]))
        d = g.mean.shape[0]
        if g.mean.ndim != 1 or g.components.ndim != 2 or g.components.shape[1] != d \
                or g.variances.shape != (g.components.shape[0],) or not g.noise > 0:
            raise ValueError(f"inconsistent shapes in part {prefix}")
        return g


# --------------------------------------------------------------------------- the guard

@dataclass(frozen=True)
class Guard:
    """Named Gaussians, each with its typical (median) distance on validation films, and one threshold."""

    gaussians: Mapping[str, Gaussian]
    scales: Mapping[str, float]      # median distance of validation films, per part
    threshold: float                 # on the score (max over parts of distance / scale)
    moderate: float                  # the score's MODERATE_QUANTILE on validation films

    @property
    def taps(self) -> tuple[str, ...]:
        return tuple(k for k in self.gaussians if k != LAYOUT)

    def part_ratios(self, reps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: g.distance(reps[k]) / self.scales[k] for k, g in self.gaussians.items()}

    def scores(self, reps: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each image's score divided by the threshold: above 1 is out of distribution."""
        ratios = self.part_ratios(reps)
        return np.max(np.stack(list(ratios.values())), axis=0) / self.threshold

    def reason(self, image: XrayImage, score: float) -> str | None:
        """Why this image is refused, given its score (from ``scores``); None to accept it."""
        if not np.isfinite(score) or score > 1.0:
            shown = f"{score:.1f}" if np.isfinite(score) else "not computable"
            return (f"The image does not look like a frontal chest radiograph like those the model was "
                    f"trained on (out-of-distribution score {shown}; above 1.0 is refused).")
        body = str(image.metadata.get("body_part") or "").upper()
        if body and not any(w in body for w in CHEST_WORDS) and score * self.threshold > self.moderate:
            return f"DICOM body part {body} and an unusual image for a chest film: not a chest radiograph."
        return None


def read_fitted_file(model_dir: Path, card: Mapping[str, Any], info: Mapping[str, Any], default_file: str,
                     what: str) -> bytes:
    """The bytes of a file fitted beside the weights (the guard, the film-type check) that its card section
    ``info`` names. Refused (ModelLoadError) when missing, not matching the card's sha256, or fitted for other
    weights."""
    version = card.get("version", model_dir.name)
    path = model_dir / str(info.get("file", default_file))
    if path.parent != model_dir or not path.is_file():
        raise ModelLoadError(f"The {what} named by the card of model {version} ({path.name}) is missing. "
                             "Refusing to run without it.")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise ModelLoadError(f"The {what} of model {version} does not match its card (sha256 differs): "
                             "the file was changed or truncated. Refusing to use it.")
    weights_sha = (card.get("weights") or {}).get("sha256")
    if info.get("weights_sha256") and weights_sha and info["weights_sha256"] != weights_sha:
        raise ModelLoadError(f"The {what} of model {version} was fitted for other weights; "
                             "refit it (python -m pneumo_core fit-guard).")
    return data


def guard_tensors(guard: Guard) -> dict[str, torch.Tensor]:
    return {k: v for name, g in guard.gaussians.items() for k, v in g.tensors(name).items()}


def save_guard(guard: Guard, model_dir: Path) -> str:
    """Write ood.safetensors atomically; return its sha256."""
    meta = {"format": "pt", "parts": json.dumps(list(guard.gaussians))}
    atomic_write_bytes(Path(model_dir) / OOD_FILE, save(guard_tensors(guard), metadata=meta))
    return sha256_file(Path(model_dir) / OOD_FILE)


def guard_info(guard: Guard) -> dict[str, Any]:
    """What the card records to rebuild the guard from ood.safetensors."""
    return {"parts": list(guard.gaussians), "scales": {k: float(v) for k, v in guard.scales.items()},
            "threshold": float(guard.threshold), "moderate": float(guard.moderate)}


def load_guard(model_dir: str | Path, card: Mapping[str, Any] | None = None) -> Guard | None:
    """The model's guard, or None when it has none (older models).

    Refuses (ModelLoadError) a guard file that is missing, differs from its card (sha256),
    was fitted for other weights, or cannot be read.
    """
    model_dir = Path(model_dir)
    card = card if card is not None else read_card(model_dir)
    info = card.get("ood")
    if not info:
        return None
    version = card.get("version", model_dir.name)
    if not isinstance(info, Mapping):
        raise ModelLoadError(f"The OOD guard entry in the card of model {version} is unreadable.")
    data = read_fitted_file(model_dir, card, info, OOD_FILE, "OOD guard")
    try:
        t = load(data)
        parts = list(info["parts"])
        gaussians = {k: Gaussian.from_tensors(t, k) for k in parts}
        scales = {k: float(info["scales"][k]) for k in parts}
        guard = Guard(gaussians, scales, float(info["threshold"]), float(info["moderate"]))
        if not parts or not all(np.isfinite(list(scales.values()))) or not guard.threshold > 0:
            raise ValueError("empty or non-finite guard")
        unknown = set(guard.taps) - set(DIMS)
        if unknown:
            raise ValueError(f"unknown feature taps {sorted(unknown)}")
        return guard
    except (SafetensorError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"The OOD guard of model {version} is unreadable.") from exc


# --------------------------------------------------------------------------- fitting, from representations

def fit(train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray], *, false_rejection: float = 0.005,
        dims: Mapping[str, int] | None = None) -> Guard:
    """A guard from representations ({part: N x d}) of training films and validation films.

    The score's threshold is its (1 - false_rejection) quantile on ``val``.
    """
    dims = {**DIMS, **(dims or {})}
    gaussians = {k: Gaussian.fit(train[k], dims.get(k, 32)) for k in train}
    scales = {k: float(np.median(g.distance(val[k]))) or 1.0 for k, g in gaussians.items()}
    provisional = Guard(gaussians, scales, 1.0, 1.0)
    s = provisional.scores(val)
    return Guard(gaussians, scales, float(np.quantile(s, 1.0 - false_rejection)),
                 float(np.quantile(s, MODERATE_QUANTILE)))

