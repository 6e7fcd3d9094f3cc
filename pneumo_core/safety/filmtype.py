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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pneumo_core.errors import ModelLoadError
from pneumo_core.files import atomic_write_bytes, sha256_file
from pneumo_core.model.store import read_card
from pneumo_core.safety.guard import LAYOUT, Gaussian, read_fitted_file

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
    from safetensors.torch import save

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
    from safetensors import SafetensorError
    from safetensors.torch import load

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


# --------------------------------------------------------------------------- fitting

@dataclass(frozen=True)
class Labelled:
    """Representations ({"pooled", "layout"}: N x d) of films of one class from one source.

    ``groups``: which original film each row comes from (augmented copies share it), so cross-fitting
    never scores a film with a model fitted on a copy of itself. ``derived_from``: the source these
    rows were synthesised from (one-sided crops), left out with it."""

    kind: str
    source: str
    reps: Mapping[str, np.ndarray]
    groups: np.ndarray
    derived_from: str | None = None

    def __len__(self) -> int:
        return len(self.groups)


def _stack(sets: Sequence[Labelled]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    reps = {k: np.concatenate([np.asarray(s.reps[k], np.float64) for s in sets]) for k in FEATURES}
    y = np.concatenate([np.full(len(s), CLASSES.index(s.kind)) for s in sets])
    return reps, y


def _fit_gaussians(reps: Mapping[str, np.ndarray], dims: int) -> tuple[dict[str, Gaussian], dict[str, float]]:
    gs = {k: Gaussian.fit(reps[k], dims) for k in FEATURES}
    return gs, {k: float(np.median(g.distance(reps[k]))) or 1.0 for k, g in gs.items()}


def fit(sets: Sequence[Labelled], val_pediatric: Mapping[str, np.ndarray], *, C: float = 0.3,
        adult_acceptance: float = 0.98, pediatric_rejection: float = 0.005, pediatric_as_adult: float = 0.05,
        guard_scores: Mapping[str, np.ndarray] | None = None, negative_acceptance: float = 0.05,
        val_scores: np.ndarray | None = None, folds: int = 3, seed: int = 0) -> FilmTypeCheck:
    """The check from labelled representations (``sets``; any class may be missing, then it is never
    predicted, but pediatric films are needed) and pediatric validation films (which set the thresholds):

    * the adult Gaussian's threshold: the ``adult_acceptance`` quantile of adult films' cross-fitted scores;
    * ``frontal_min``: at most ``pediatric_rejection`` of validation films below it (never above FRONTAL_MIN_CAP);
    * ``adult_min`` and ``typical_max`` (with ``val_scores``, the guard's scores of the validation films):
      each at most half of ``pediatric_as_adult`` of validation films above it (``adult_min`` never below 0.5,
      ``typical_max`` never above 1): a film is called adult when the classifier says so *or* when it is
      less typical of the children's films than almost all validation films;
    * ``chest_max`` (with ``guard_scores``, the guard's scores of each set by "kind/source"): the
      ``adult_acceptance`` quantile of adult films' guard scores, but at most the ``negative_acceptance``
      quantile of other radiographs' and non-radiographs' (never below 1, the guard's own threshold).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    sets = [s for s in sets if len(s)]
    reps, y = _stack(sets)
    ped = y == CLASSES.index(PEDIATRIC)
    if not ped.any() or len(np.unique(y)) < 2:
        raise ValueError("the film-type check needs pediatric films and at least one other class")
    k = max(1, min(PCA_DIMS, int(ped.sum()) - 1, reps["pooled"].shape[1]))
    pca = PCA(k, svd_solver="full", random_state=seed).fit(reps["pooled"][ped])
    x = np.hstack([pca.transform(reps["pooled"]), reps[LAYOUT]])
    x_mean, x_scale = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit((x - x_mean) / x_scale, y)
    coef = np.zeros((len(CLASSES), x.shape[1]))
    intercept = np.full(len(CLASSES), -1e4)          # a class never seen is never predicted
    if len(lr.classes_) == 2:                         # sklearn keeps one row for a binary problem
        coef[lr.classes_[1]], intercept[lr.classes_[1]] = lr.coef_[0], lr.intercept_[0]
        intercept[lr.classes_[0]] = 0.0
    else:
        coef[lr.classes_], intercept[lr.classes_] = lr.coef_, lr.intercept_

    adults = [s for s in sets if s.kind == ADULT]
    if adults:
        a_reps, _ = _stack(adults)
        groups = np.concatenate([np.char.add(f"{s.source}:", s.groups.astype(str)) for s in adults])
        adult, scales = _fit_gaussians(a_reps, min(ADULT_DIMS, len(groups) - 2) if len(groups) > 3 else 1)
        cross = _cross_fitted(a_reps, groups, folds, seed)
        threshold = float(np.quantile(cross, adult_acceptance)) if len(cross) else 1.0
    else:                                             # no adult films: the adult Gaussian accepts nothing
        adult, scales = _fit_gaussians({kk: v[ped][:64] for kk, v in reps.items()}, 1)
        threshold = 1e-9
    chest_max = 1.0
    if guard_scores is not None:
        originals = lambda kinds: np.concatenate([np.asarray(guard_scores[f"{s.kind}/{s.source}"])[_firsts(s.groups)]  # noqa: E731
                                                  for s in sets if s.kind in kinds] or [np.zeros(0)])
        a, neg = originals((ADULT,)), originals((OTHER_RADIOGRAPH, NOT_RADIOGRAPH))
        if len(a) and len(neg):
            chest_max = float(max(1.0, min(np.quantile(a, adult_acceptance), np.quantile(neg, negative_acceptance))))
    provisional = FilmTypeCheck(pca.mean_, pca.components_, x_mean, x_scale, coef, intercept, adult, scales,
                                threshold, 0.0, 1.0)
    p = provisional.probabilities(val_pediatric)
    frontal = p[:, 0] + p[:, 1]
    frontal_min = min(FRONTAL_MIN_CAP, float(np.quantile(frontal, pediatric_rejection)))
    budget = pediatric_as_adult / (2 if val_scores is not None else 1)
    adult_min = max(0.5, float(np.quantile(p[:, 1] / np.maximum(frontal, 1e-12), 1.0 - budget)))
    typical_max = min(1.0, float(np.quantile(val_scores, 1.0 - budget))) if val_scores is not None else 1.0
    return FilmTypeCheck(pca.mean_, pca.components_, x_mean, x_scale, coef, intercept, adult, scales, threshold,
                         frontal_min, adult_min, chest_max, typical_max)


def _firsts(groups: np.ndarray) -> np.ndarray:
    """Rows that are the first of their group (the original film, not an augmented copy)."""
    first = np.zeros(len(groups), bool)
    first[np.unique(groups, return_index=True)[1]] = True
    return first


def _cross_fitted(reps: Mapping[str, np.ndarray], groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each adult film's distance ratio under a Gaussian fitted without it (and without its copies); the
    originals only (rows whose group appears first)."""
    uniq = np.unique(groups)
    folds = min(folds, len(uniq))
    if folds < 2:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(uniq[rng.permutation(len(uniq))], np.arange(len(uniq)) % folds))
    f = np.array([fold_of[g] for g in groups])
    first = _firsts(groups)
    out = np.zeros(len(groups))
    for i in range(folds):
        tr = f != i
        gs, scales = _fit_gaussians({k: v[tr] for k, v in reps.items()},
                                    min(ADULT_DIMS, int(tr.sum()) - 2) if tr.sum() > 3 else 1)
        out[~tr] = np.max([gs[k].distance(reps[k][~tr]) / scales[k] for k in FEATURES], axis=0)
    return out[first]


def rates(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """Share of each film type among verdicts, and how many were rejected / warned as adult."""
    n = len(verdicts)
    counts = {c: sum(v.kind == c for v in verdicts) for c in CLASSES}
    rejected = sum(v.reason is not None for v in verdicts)
    return {"n": n, "rejected": rejected, "rejected_rate": rejected / n if n else None,
            "accepted_rate": 1 - rejected / n if n else None,
            "adult_warned_rate": counts[ADULT] / n if n else None,
            "as": {c: v for c, v in counts.items() if v}}


def leave_one_source_out(sets: Sequence[Labelled], val_pediatric: Mapping[str, np.ndarray],
                         pediatric_scores: Mapping[str, np.ndarray], *, moderate: float = 1.0,
                         only: Sequence[str] | None = None, **fit_kw: Any) -> dict[str, Any]:
    """For each source other than the pediatric training films: refit without it (and without what was
    synthesised from it), then judge its films. What a new hospital, body part or modality would meet.

    ``pediatric_scores``: the guard's scores of each set's films, by "kind/source"."""
    out = {}
    for held in sets:
        if held.kind == PEDIATRIC or held.derived_from is not None or (only and held.kind not in only):
            continue
        rest = [s for s in sets if s is not held and s.derived_from != held.source
                and not (s.source == held.source and s.kind == held.kind)]
        check = fit(rest, val_pediatric, guard_scores=pediatric_scores, **fit_kw)
        first = _firsts(held.groups)
        reps = {k: np.asarray(v)[first] for k, v in held.reps.items()}
        v = check.judge(reps, pediatric_scores[f"{held.kind}/{held.source}"][first], [{}] * int(first.sum()),
                        moderate)
        out[f"{held.kind}/{held.source}"] = rates(v)
    return out


# --------------------------------------------------------------------------- from folders to a fitted check

FOLDER_KINDS = {"frontal_chest_pediatric": PEDIATRIC, "frontal_chest_adult": ADULT, "lateral_chest": LATERAL,
                "other_radiograph": OTHER_RADIOGRAPH, "other_modality": NOT_RADIOGRAPH, "not_radiograph": NOT_RADIOGRAPH}
# Measured, never fitted: the real laterals are licensed non-commercially (CC BY-NC-SA).
MEASURE_ONLY = (LATERAL,)
BUILTIN_SOURCES = {"photo": "photos and textures", "texture": "photos and textures", "synthetic": "photos and textures",
                   "document": "documents, noise and blank frames", "noise": "documents, noise and blank frames",
                   "blank": "documents, noise and blank frames"}


FILM_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp")


def film_type_files(folder: str | Path) -> list[tuple[str, Path]]:
    """(sub-folder name, file) of every film a film_types folder offers: files with a film's extension in the
    sub-folders named in ``FOLDER_KINDS`` (what ``read_film_types`` reads; the job estimate counts them)."""
    folder = Path(folder)
    return [(sub.name, f) for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name in FOLDER_KINDS)
            for f in sorted(sub.rglob("*")) if f.is_file() and f.suffix.lower() in FILM_EXTENSIONS]


def read_film_types(folder: str | Path) -> dict[tuple[str, str], list[np.ndarray]]:
    """{(kind, source): display pixels} from a film_types folder: one sub-folder per kind (``FOLDER_KINDS``),
    the source from ``manifest.csv``'s source_repo when there is one (else the folder's name). Unreadable
    files are skipped (this is fitting data, not a user's upload)."""
    import csv

    from pneumo_core.errors import UnreadableImageError
    from pneumo_core.ingest.read import read_xray

    folder = Path(folder)
    sources: dict[str, str] = {}
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                repo = (row.get("source_repo") or "").split(" (")[0].rstrip("/").split("/")[-1]
                sources[str(row.get("file", ""))] = " ".join(filter(None, [repo, row.get("body_part") or ""]))
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for sub, f in film_type_files(folder):
        try:
            pixels = read_xray(f).pixels
        except (UnreadableImageError, OSError):
            continue
        source = sources.get(f.relative_to(folder).as_posix()) or sub
        out.setdefault((FOLDER_KINDS[sub], source), []).append(pixels)
    return out


def one_sided(pixels_u8: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic 'lateral-like' films: one side of a frontal film (42-62% of its width, left or right:
    one lung field with the mediastinum and spine at an edge), stretched back to the full frame.
    Returns (N x S x S uint8, index of the film each came from)."""
    import cv2

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(pixels_u8), n, replace=n > len(pixels_u8))
    out = []
    for i in idx:
        p = pixels_u8[i]
        h, w = p.shape
        cut = max(2, int(w * rng.uniform(0.42, 0.62)))
        half = p[:, :cut] if rng.random() < 0.5 else p[:, w - cut:]
        out.append(cv2.resize(np.ascontiguousarray(half), (w, h), interpolation=cv2.INTER_AREA))
    return np.stack(out).astype(np.uint8), idx


def _u8(pixels: Sequence[np.ndarray], spec: Mapping[str, Any]) -> np.ndarray:
    from pneumo_core.ingest.preprocess import resize
    from pneumo_core.safety.guard import _unit

    return np.stack([np.clip(np.rint(resize(_unit(p), spec) * 255), 0, 255).astype(np.uint8) for p in pixels])


def fit_from_folders(predictor: Any, train_u8: np.ndarray, train_reps: Mapping[str, np.ndarray],
                     val_reps: Mapping[str, np.ndarray], val_scores: np.ndarray, film_types_dir: str | Path, *,
                     copies: int = 4, crops: int = 800, seed: int = 0, builtin: bool = True,
                     log: Any = lambda s: None) -> tuple[FilmTypeCheck, dict[str, Any]]:
    """Fit the check of ``predictor``'s model (whose ``guard`` is fitted) and measure it.

    ``train_reps``: representations of ``train_u8`` followed by its augmented copies (as the guard was
    fitted); ``val_reps``: of the validation films (thresholds), and ``val_scores`` the guard's scores of
    them. Returns the check and what the card records about it (fitting sets, thresholds, per-class
    leave-one-source-out rates, the real laterals)."""
    from pneumo_core.safety.guard import augmented, builtin_negatives, represent

    spec, guard = predictor.card["input"], predictor.guard
    reps_of = lambda pix: represent(predictor, list(pix), ("pooled",))[1]  # noqa: E731
    n_train = len(train_u8)
    ped = Labelled(PEDIATRIC, "training films", train_reps,
                   np.tile(np.arange(n_train), max(1, len(train_reps["pooled"]) // max(n_train, 1))))
    sets: list[Labelled] = [ped]
    measured: dict[str, Labelled] = {}
    log(f"reading {film_types_dir}")
    folders = read_film_types(film_types_dir)
    if builtin:
        from pneumo_core.errors import UnreadableImageError
        from pneumo_core.ingest.read import read_xray

        for cat, name, data in builtin_negatives(seed):
            try:
                pixels = read_xray(data).pixels
            except UnreadableImageError:
                continue
            source = BUILTIN_SOURCES.get(cat, "CT, MR, NM and US slices")
            folders.setdefault((NOT_RADIOGRAPH, f"built-in {source}"), []).append(pixels)
    one_sided_sources = []
    for (kind, source), pixels in sorted(folders.items()):
        log(f"features of {len(pixels)} films: {kind} from {source}")
        if kind in MEASURE_ONLY:
            measured[f"{kind}/{source}"] = Labelled(kind, source, reps_of(pixels), np.arange(len(pixels)))
            continue
        u8 = _u8(pixels, spec)                   # for augmented copies and one-sided crops only
        extra = augmented(u8, copies, seed) if kind != NOT_RADIOGRAPH or not source.startswith("built-in") else u8[:0]
        reps = reps_of(list(pixels) + list(extra))
        groups = np.concatenate([np.arange(len(pixels))] + [np.arange(len(pixels))] * (len(extra) // len(pixels)))
        sets.append(Labelled(kind, source, reps, groups))
        if kind == ADULT:
            one_sided_sources.append((source, u8))
    log("features of one-sided crops (synthetic lateral-like films)")
    crops_u8, idx = one_sided(train_u8, min(crops, len(train_u8)), seed)
    sets.append(Labelled(LATERAL, "one-sided crops of training films", reps_of(crops_u8), idx))
    for source, u8 in one_sided_sources:
        c, i = one_sided(u8, 2 * len(u8), seed + 1)
        sets.append(Labelled(LATERAL, f"one-sided crops of {source}", reps_of(c), i, derived_from=source))

    log("fitting the film-type check")
    moderate = guard.moderate / guard.threshold
    scores = {f"{s.kind}/{s.source}": guard.scores(s.reps) for s in [*sets, *measured.values()]}
    check = fit(sets, val_reps, guard_scores=scores, val_scores=val_scores, seed=seed)
    log("leave-one-source-out evaluation")
    loso = leave_one_source_out(sets, val_reps, scores, moderate=moderate, val_scores=val_scores, seed=seed)
    measured_rates = {key: rates(check.judge(s.reps, scores[key], [{}] * len(s), moderate))
                      for key, s in measured.items()}
    info = {
        **check_info(check),
        "method": ("multinomial logistic regression on the DenseNet's pooled features (PCA) + the guard's layout; "
                   "an adult frontal chest Gaussian beside the pediatric guard; thresholds on val/"),
        "fitted_on": {f"{s.kind}/{s.source}": int(len(np.unique(s.groups))) for s in sets},
        "augmented_copies": copies,
        "not_fitted_on": {key: f"{len(s)} films, measured only (non-commercial licence)" for key, s in measured.items()},
        "leave_one_source_out": loso,
        "measured": measured_rates,
        "in_sample": {f"{s.kind}/{s.source}": rates(check.judge(
            {k: np.asarray(v)[_firsts(s.groups)] for k, v in s.reps.items()},
            scores[f"{s.kind}/{s.source}"][_firsts(s.groups)], [{}] * int(_firsts(s.groups).sum()), moderate))
            for s in sets if s.kind != PEDIATRIC},
    }
    return check, info
