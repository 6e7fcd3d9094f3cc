"""The learned out-of-distribution guard: does this image look like the films the model was trained on?

Two parts, each a probabilistic-PCA Gaussian (a Mahalanobis distance) fitted on the training films:

* ``pooled``: the DenseNet's own penultimate features (the 1024 pooled channels the pneumonia
  head reads): what the network "sees". Catches photos, documents, noise, CT/MR slices even when
  the DICOM header says nothing.
* ``layout``: a model-free 16 x 16 thumbnail (contrast-normalised) plus the grey histogram.
  Where things are and how bright: two dark lungs either side of a bright mediastinum. Catches
  radiographs of other anatomy and other framings that the features alone may miss.

(``forward_with_taps`` can also read mid-level features, e.g. ``denseblock3``; on the shipped
model they added nothing measurable to the two parts above, so ``TAPS`` is just ``pooled``.)

Each distance is divided by its median on the validation films, and the image's score is the
largest of these ratios, so one threshold (a high quantile of the score on validation films and
augmented copies of them) sets the false-rejection rate of the whole guard.

The Gaussians are fitted on the training films *and* on copies altered by the training
augmentation (exposure, contrast, rotation, scale, blur, noise): the guard then accepts the
variation the classifier was trained to handle (other hospitals' films) rather than only the look
of one hospital's.

A model folder keeps the arrays in ``ood.safetensors`` and the threshold, sha256 and measured
rejection rates in ``card["ood"]``. Older models have no guard; ``load_guard`` returns None and
only the model-free checks in ``guard.py`` apply. Fitting never touches the weights file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo_core.errors import ModelLoadError, UnreadableImageError
from pneumo_core.files import atomic_write_bytes, sha256_file
from pneumo_core.ingest.preprocess import resize
from pneumo_core.ingest.read import XrayImage
from pneumo_core.model.network import Ensemble
from pneumo_core.model.store import read_card, write_card

if TYPE_CHECKING:
    from pneumo_core.model.predict import Predictor

OOD_FILE = "ood.safetensors"
# Where the network's features are read: outputs of DenseNet-121's feature modules, average-pooled
# per channel; "pooled" is what the pneumonia head reads (ReLU, then global average).
TAPS = ("pooled",)
LAYOUT = "layout"
DIMS = {"denseblock1": 32, "denseblock2": 48, "denseblock3": 64, "denseblock4": 64, "pooled": 64, LAYOUT: 16}
LAYOUT_SIDE = 16
# A DICOM body part that is not chest rejects only with this much pixel evidence: a score
# above its 95th percentile on validation films ("unusual", though not out of range by itself).
MODERATE_QUANTILE = 0.95
CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "RIB", "TORSO", "STERNUM", "HEART", "BREAST")


# --------------------------------------------------------------------------- representations

def forward_with_taps(net: nn.Module, x: torch.Tensor, taps: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DenseNet-121's forward pass (the same logits as ``net(x)``) plus pooled features at ``taps``.

    Returns (N logits, {tap: N x C}). Call under ``torch.inference_mode()``. For an ensemble the
    logits are the members' mean and the features are the first member's (the guard is fitted on those).
    """
    if isinstance(net, Ensemble):
        logits, out = forward_with_taps(net.members[0], x, taps)
        rest = [m(x).squeeze(1) for m in net.members[1:]]
        return torch.stack([logits, *rest]).mean(0), out
    out: dict[str, torch.Tensor] = {}
    h = x
    for name, module in net.features.named_children():
        h = module(h)
        if name in taps:
            out[name] = h.mean((2, 3))
    pooled = F.adaptive_avg_pool2d(F.relu(h), 1).flatten(1)
    if "pooled" in taps:
        out["pooled"] = pooled
    return net.classifier(pooled).squeeze(1), out


def _unit(p: np.ndarray) -> np.ndarray:
    return p.astype(np.float32) / 255.0 if p.dtype == np.uint8 else np.asarray(p, dtype=np.float32)


def layout(pixels_list: Sequence[np.ndarray], spec: Mapping[str, Any]) -> np.ndarray:
    """Model-free description of a film: contrast-normalised 16 x 16 thumbnail + sqrt grey histogram.

    Computed from the film at the model's input size (squashed like the training films).
    """
    rows = []
    for p in pixels_list:
        a = resize(_unit(p), spec)
        t = cv2.resize(a, (LAYOUT_SIDE, LAYOUT_SIDE), interpolation=cv2.INTER_AREA).ravel()
        t = (t - t.mean()) / (t.std() + 1e-2)
        hist = np.histogram(a, 16, (0.0, 1.0))[0] / a.size
        rows.append(np.concatenate([t, 4.0 * np.sqrt(hist)]))
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), LAYOUT_SIDE * LAYOUT_SIDE + 16)


def represent(predictor: "Predictor", pixels_list: Sequence[np.ndarray], taps: Sequence[str] = TAPS,
              *, batch_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Display pixels (any size; float [0,1] or uint8) -> (raw logits, {part: N x d}) in one pass per batch."""
    logits, parts = [], {}
    for i in range(0, len(pixels_list), batch_size):
        chunk = [_unit(p) for p in pixels_list[i:i + batch_size]]
        lg, feats = predictor.forward(chunk, taps)
        logits.append(lg)
        for k, v in feats.items():
            parts.setdefault(k, []).append(v)
    spec = predictor.card["input"]
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out[LAYOUT] = layout(pixels_list, spec)
    return (np.concatenate(logits) if logits else np.zeros(0, np.float32)), out


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
        from sklearn.decomposition import PCA

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
    from safetensors.torch import save

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
    from safetensors import SafetensorError
    from safetensors.torch import load

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


# --------------------------------------------------------------------------- fitting

def augmented(pixels_u8: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """Copies of films (N x S x S uint8) altered by the training augmentation, random erasing left out."""
    from pneumo_core.model.augment import AugmentConfig, augment

    if copies <= 0 or len(pixels_u8) == 0:
        return pixels_u8[:0]
    cfg = AugmentConfig(erase_p=0.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(pixels_u8)[:, None]
    out = []
    for _ in range(copies):
        for i in range(0, len(x), 256):
            a = augment(x[i:i + 256].float().div_(255.0), cfg, g)[:, 0]
            out.append(a.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy())
    return np.concatenate(out)


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


def fit_guard(model_dir: str | Path, data_dir: str | Path, *, false_rejection: float = 0.005,
              copies: int = 1, max_train: int | None = None, max_eval: int | None = None,
              negatives: bool = True, seed: int = 0, workers: int = 2,
              film_types: str | Path | None = None,
              log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Fit the guard of a model folder on its training data; write ood.safetensors and card['ood'].

    The Gaussians are fitted on train/ (at most ``max_train`` films, plus ``copies`` augmented
    copies). The threshold is the (1 - false_rejection) quantile of the score on val/ plus
    augmented copies of val/. Then the whole check (``Predictor.check``: model-free checks and
    the guard, through the same decoding as ``predict``) is run on test/ and external/ (at most
    ``max_eval`` films each) and on the built-in negatives, and the rates are recorded. The weights
    file is not touched. Returns card['ood'].

    With ``film_types`` (a folder of other films, ``filmtype.read_film_types``; by default
    ``film_types_folder(data_dir)``), the film-type check is fitted too (``film_type.safetensors``,
    card['film_type']) before the rates are measured, so they are those of the whole check; without
    one, card['film_type'] says the version has none.
    """
    from pneumo_core.ingest.folders import discover_splits, list_labelled, load_images
    from pneumo_core.model.predict import Predictor
    from pneumo_core.safety import filmtype

    model_dir = Path(model_dir)
    film_types = film_types if film_types is not None else film_types_folder(data_dir)
    if film_types is not None and not Path(film_types).is_dir():   # named but absent: never drop the check silently
        raise FileNotFoundError(f"The film-types folder {Path(film_types).name}/ was not found; nothing was changed.")
    predictor = Predictor.from_dir(model_dir, guard=False)      # an old or stale guard is being replaced
    spec = predictor.card["input"]
    splits = discover_splits(data_dir)
    if "val" not in splits:
        raise FileNotFoundError(f"{data_dir} has no val/ folder (NORMAL/ and PNEUMONIA/) to set the threshold on.")
    rng = np.random.default_rng(seed)

    def subset(split: str, limit: int | None) -> Sequence[Path]:
        files = list_labelled(splits[split]).files
        if limit and len(files) > limit:
            files = tuple(files[i] for i in np.sort(rng.choice(len(files), limit, replace=False)))
        return files

    def films(split: str, limit: int | None = None) -> np.ndarray:
        from pneumo_core.ingest.folders import LabelledFiles

        files = subset(split, limit)
        return load_images(LabelledFiles(tuple(files), np.zeros(len(files), np.int64)), spec, workers=workers).pixels

    def reps_of(pixels: np.ndarray) -> dict[str, np.ndarray]:
        return represent(predictor, list(pixels), TAPS)[1]

    log("decoding the training films")
    train = films("train", max_train)
    log(f"features of {len(train)} training films (+{copies} augmented copies)")
    train_reps = reps_of(np.concatenate([train, augmented(train, copies, seed)]))
    log("decoding the validation films")
    val = films("val")
    val_all = np.concatenate([val, augmented(val, copies, seed + 1)])
    val_reps = reps_of(val_all)
    guard = fit(train_reps, val_reps, false_rejection=false_rejection)
    val_scores = guard.scores(val_reps)

    rates: dict[str, Any] = {"val": _rate(val_scores[:len(val)] > 1.0),
                             "val_augmented": _rate(val_scores[len(val):] > 1.0)}
    predictor.guard = guard
    if film_types is not None:
        check, ft_info = filmtype.fit_from_folders(predictor, train, train_reps, val_reps, val_scores, film_types,
                                                   seed=seed, builtin=negatives, log=log)
        predictor.film_types = check
    else:
        check, ft_info = None, {"fitted": False,
                                "why": "no film_types/ folder was given to fitting: this version cannot tell adult, "
                                       "lateral or other films from the children's frontal films it was validated "
                                       "on; only the out-of-distribution guard screens uploads"}
    for split in ("test", "external"):
        if split in splits:
            log(f"false rejections on {split}/ (the whole check, as predict runs it)")
            rates[split] = false_rejection_on(predictor, subset(split, max_eval), workers=workers)
    neg_report: dict[str, Any] = {}
    if negatives:
        log("rejection of the built-in negatives")
        neg_report = negative_rejection(predictor)

    info = {
        "method": ("max over parts of (probabilistic-PCA Mahalanobis distance / its median on val films); parts: "
                   f"DenseNet features ({', '.join(TAPS)}), 16x16 layout + grey histogram"),
        **guard_info(guard),
        "threshold_rule": (f"{1 - false_rejection:.4f} quantile of the score on val/ + {copies} augmented "
                           "copy(ies) of val/; a score above the threshold is refused"),
        "target_false_rejection": false_rejection,
        "dims": {k: [int(g.components.shape[0]), int(g.components.shape[1])] for k, g in guard.gaussians.items()},
        "fitted_on": {"train": len(train), "val": len(val), "augmented_copies": copies,
                      "augmentation": "training augmentation (AugmentConfig defaults, no random erasing)"},
        "false_rejection": rates,
        "negative_rejection": neg_report,
        "file": OOD_FILE,
        "weights_sha256": (predictor.card.get("weights") or {}).get("sha256"),
    }
    info["sha256"] = save_guard(guard, model_dir)
    if check is not None:
        ft_info.update(file=filmtype.FILM_TYPE_FILE, sha256=filmtype.save_check(check, model_dir),
                       weights_sha256=info["weights_sha256"])
    elif (model_dir / filmtype.FILM_TYPE_FILE).exists():
        (model_dir / filmtype.FILM_TYPE_FILE).unlink()
    card = read_card(model_dir)      # re-read: keep anything written meanwhile, change only 'ood' and 'film_type'
    card["ood"] = info
    card["film_type"] = ft_info
    write_card(model_dir, card)
    log(f"guard written: {OOD_FILE} (sha256 {info['sha256'][:12]}...)")
    return info


FILM_TYPES_ENV = "PNEUMO_FILM_TYPES"
SHARED_FILM_TYPES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "film_types"


def film_types_folder(data_dir: str | Path) -> Path | None:
    """Where the film-type check's fitting films are: $PNEUMO_FILM_TYPES (empty: none), else a ``film_types/`` folder beside
    the data folder (as in shared/data), else the shared one beside this checkout (a retraining job's
    uploaded data has none beside it), else None."""
    import os

    env = os.environ.get(FILM_TYPES_ENV)
    if env is not None:                               # set but empty: no film-type folder (tests, a choice)
        return Path(env) if env else None
    for candidate in (Path(data_dir).resolve().parent / "film_types", SHARED_FILM_TYPES):
        if candidate.is_dir():
            return candidate
    return None


def _rate(refused: np.ndarray) -> dict[str, Any]:
    refused = np.asarray(refused, bool)
    return {"rate": float(refused.mean()) if len(refused) else None, "rejected": int(refused.sum()),
            "n": int(len(refused))}


def false_rejection_on(predictor: "Predictor", files: Sequence[Path], *, batch_size: int = 32,
                       workers: int = 2) -> dict[str, Any]:
    """How many of these chest films the whole check refuses, decoded exactly as ``predict`` decodes them."""
    from concurrent.futures import ThreadPoolExecutor

    from pneumo_core.ingest.read import read_xray

    def read(path: Path) -> XrayImage | None:
        try:
            return read_xray(path, name=path.name)
        except (UnreadableImageError, OSError):
            return None

    refused: list[bool] = []
    kinds: list[str | None] = []
    unreadable = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(files), batch_size):
            images = [im for im in pool.map(read, files[i:i + batch_size]) if im is not None]
            unreadable += min(batch_size, len(files) - i) - len(images)
            screened = predictor.screen_many(images)
            refused += [s.reason is not None for s in screened]
            kinds += [s.film_type for s in screened]
    out = {**_rate(np.asarray(refused, bool)), "unreadable": unreadable}
    if any(kinds):
        out["film_types"] = {k: kinds.count(k) for k in dict.fromkeys(kinds) if k}
    return out


def negative_rejection(predictor: "Predictor") -> dict[str, Any]:
    """Rejection of the built-in negatives by the whole check (model-free checks, then the guard), per category."""
    from pneumo_core.ingest.read import read_xray

    per: dict[str, list[bool]] = {}
    missed, unreadable = [], []
    for category, name, data in builtin_negatives():
        try:
            image = read_xray(data, name=name)
        except UnreadableImageError:
            unreadable.append(name)            # refused as unreadable: not counted either way
            continue
        refused = predictor.check(image) is not None
        per.setdefault(category, []).append(refused)
        if not refused:
            missed.append(name)
    total = [r for v in per.values() for r in v]
    return {"rate": float(np.mean(total)) if total else None, "rejected": int(sum(total)), "n": len(total),
            "per_category": {k: {"rate": float(np.mean(v)), "n": len(v)} for k, v in per.items()},
            "missed": missed, "unreadable": unreadable}


# --------------------------------------------------------------------------- built-in negatives

# scikit-image sample images bundled with the package (no download needed).
SKIMAGE_SAMPLES = (
    ("photo", ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "clock", "moon",
               "hubble_deep_field", "retina", "immunohistochemistry", "cell", "microaneurysms")),
    ("texture", ("brick", "grass", "gravel")),
    ("document", ("text", "page")),
    ("synthetic", ("checkerboard", "binary_blobs", "horse", "shepp_logan_phantom", "colorwheel", "logo")),
)
# pydicom's bundled test files that hold a decodable image and are not chest radiographs.
PYDICOM_SAMPLES = (
    ("ct", "CT_small.dcm"), ("ct", "693_J2KI.dcm"), ("ct", "J2K_pixelrep_mismatch.dcm"),
    ("mr", "MR_small.dcm"), ("mr", "examples_overlay.dcm"), ("mr", "MR_small_RLE.dcm"),
    ("nm", "JPEG2000.dcm"), ("us", "examples_rgb_color.dcm"), ("us", "examples_ybr_color.dcm"),
    ("us", "examples_palette.dcm"), ("sc", "SC_rgb_jpeg_dcmd.dcm"), ("sc", "GDCMJ2K_TextGBR.dcm"),
    ("seg", "liver_1frame.dcm"), ("ot", "image_dfl.dcm"),
)


def builtin_negatives(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(category, name, file bytes) of readable inputs that are not frontal chest films.

    Built offline from what ships with installed packages: scikit-image's sample images
    (if installed), pydicom's bundled CT/MR/NM/US/... test files (CT and MR also with Modality
    rewritten to OT, so only the pixels can tell), rendered text, noise, gradients, blank frames.
    Nothing here is used to fit the guard: these only measure it.
    """
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, bytes]] = []
    try:
        import skimage.data as sk
    except ImportError:
        sk = None
    if sk is not None:
        for cat, names in SKIMAGE_SAMPLES:
            for name in names:
                try:
                    out.append((cat, f"skimage.{name}", png(getattr(sk, name)())))
                except Exception:                      # noqa: BLE001 - a sample this version lacks
                    continue
    for i, (size, dark) in enumerate(((14, False), (22, False), (30, False), (18, True))):
        out.append(("document", f"rendered_text_{i}", png(text_page(rng, font_size=size, dark=dark))))
    shape = (512, 512)
    blurred = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 8)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    radial = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    out += [
        ("noise", "uniform", png(rng.random(shape))),
        ("noise", "gaussian", png(np.clip(0.5 + 0.15 * rng.standard_normal(shape), 0, 1))),
        ("noise", "salt_and_pepper", png((rng.random(shape) < 0.5).astype(np.float64))),
        ("noise", "blurred", png((blurred - blurred.min()) / np.ptp(blurred))),
        ("blank", "black", png(np.zeros(shape))),
        ("blank", "white", png(np.ones(shape))),
        ("blank", "grey", png(np.full(shape, 0.5))),
        ("synthetic", "gradient", png(np.tile(np.linspace(0, 1, shape[1]), (shape[0], 1)))),
        ("synthetic", "radial_gradient", png(1 - radial / radial.max())),
    ]
    out += pydicom_negatives()
    return out


def png(arr: np.ndarray) -> bytes:
    """PNG bytes of a grey or RGB(A) array (bool, uint8, or float in [0, 1])."""
    from PIL import Image

    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def text_page(rng: np.random.Generator, size: tuple[int, int] = (600, 800), font_size: int = 18,
              dark: bool = False) -> np.ndarray:
    """A page of rendered words (Pillow's default font), black on white or white on black."""
    from PIL import Image, ImageDraw, ImageFont

    words = ("patient report chest radiograph findings impression normal lungs clear heart size within "
             "limits no effusion pneumothorax date signature the of and with").split()
    img = Image.new("L", size, 20 if dark else 250)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:                                  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    y = 20
    while y < size[1] - font_size - 10:
        draw.text((20, y), " ".join(rng.choice(words, int(rng.integers(4, 12)))), fill=235 if dark else 10, font=font)
        y += int(font_size * 1.5)
    return np.asarray(img)


def pydicom_negatives() -> list[tuple[str, str, bytes]]:
    """pydicom's bundled non-chest test files; CT and MR also with Modality rewritten to OT."""
    try:
        import pydicom
        from pydicom.data import get_testdata_file
    except ImportError:
        return []
    out = []
    for cat, name in PYDICOM_SAMPLES:
        try:
            path = get_testdata_file(name, download=False)
        except TypeError:                              # older pydicom: no download argument
            path = get_testdata_file(name)
        except Exception:                              # noqa: BLE001 - not bundled with this version
            path = None
        if not path:
            continue
        data = Path(path).read_bytes()
        out.append((cat, name, data))
        if cat in ("ct", "mr"):
            try:
                ds = pydicom.dcmread(BytesIO(data))
                ds.Modality = "OT"
                buf = BytesIO()
                ds.save_as(buf)
                out.append((f"{cat}_as_OT", f"{name}[Modality=OT]", buf.getvalue()))
            except Exception:                          # noqa: BLE001 - a file pydicom cannot rewrite
                continue
    return out
