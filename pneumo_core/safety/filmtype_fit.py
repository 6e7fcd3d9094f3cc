"""Fitting the film-type check (``filmtype.FilmTypeCheck``) from representations of labelled films, measuring it
source by source, and reading the ``film_types/`` folder it is fitted on. What a model's films look like
(their representations) is computed in ``fitting.py``, which runs all this for a model folder.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression

from pneumo_core.errors import UnreadableImageError
from pneumo_core.ingest.read import read_xray
from pneumo_core.safety.features import LAYOUT
from pneumo_core.safety.filmtype import (
    ADULT,
    ADULT_DIMS,
    CLASSES,
    FEATURES,
    FRONTAL_MIN_CAP,
    LATERAL,
    NOT_RADIOGRAPH,
    OTHER_RADIOGRAPH,
    PCA_DIMS,
    PEDIATRIC,
    FilmTypeCheck,
    Verdict,
)
from pneumo_core.safety.guard import Gaussian


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
    sets = [s for s in sets if len(s)]
    reps, y = _stack(sets)
    ped = y == CLASSES.index(PEDIATRIC)
    if not ped.any() or len(np.unique(y)) < 2:
        raise ValueError("the film-type check needs pediatric films and at least one other class")
    classifier = _classifier(reps, y, ped, C, seed)
    adult, scales, threshold = _adult_gaussian(sets, reps, ped, adult_acceptance, folds, seed)
    chest_max = _chest_max(sets, guard_scores, adult_acceptance, negative_acceptance) if guard_scores is not None \
        else 1.0
    provisional = FilmTypeCheck(*classifier, adult, scales, threshold, 0.0, 1.0)
    p = provisional.probabilities(val_pediatric)
    frontal = p[:, 0] + p[:, 1]
    frontal_min = min(FRONTAL_MIN_CAP, float(np.quantile(frontal, pediatric_rejection)))
    budget = pediatric_as_adult / (2 if val_scores is not None else 1)
    adult_min = max(0.5, float(np.quantile(p[:, 1] / np.maximum(frontal, 1e-12), 1.0 - budget)))
    typical_max = min(1.0, float(np.quantile(val_scores, 1.0 - budget))) if val_scores is not None else 1.0
    return FilmTypeCheck(*classifier, adult, scales, threshold, frontal_min, adult_min, chest_max, typical_max)


def _classifier(reps: Mapping[str, np.ndarray], y: np.ndarray, ped: np.ndarray, C: float,
                seed: int) -> tuple[np.ndarray, ...]:
    """The multinomial logistic regression on PCA(pooled) + layout: (pca_mean, pca_components, x_mean, x_scale,
    coef, intercept), one row of coef per class of ``CLASSES`` (PCA fitted on the pediatric films)."""
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
    return pca.mean_, pca.components_, x_mean, x_scale, coef, intercept


def _adult_gaussian(sets: Sequence[Labelled], reps: Mapping[str, np.ndarray], ped: np.ndarray,
                    adult_acceptance: float, folds: int, seed: int
                    ) -> tuple[dict[str, Gaussian], dict[str, float], float]:
    """The adult frontal chest Gaussian: (parts, their scales, the threshold on the cross-fitted scores)."""
    adults = [s for s in sets if s.kind == ADULT]
    if not adults:                                    # no adult films: the adult Gaussian accepts nothing
        adult, scales = _fit_gaussians({kk: v[ped][:64] for kk, v in reps.items()}, 1)
        return adult, scales, 1e-9
    a_reps, _ = _stack(adults)
    groups = np.concatenate([np.char.add(f"{s.source}:", s.groups.astype(str)) for s in adults])
    adult, scales = _fit_gaussians(a_reps, min(ADULT_DIMS, len(groups) - 2) if len(groups) > 3 else 1)
    cross = _cross_fitted(a_reps, groups, folds, seed)
    return adult, scales, float(np.quantile(cross, adult_acceptance)) if len(cross) else 1.0


def _chest_max(sets: Sequence[Labelled], guard_scores: Mapping[str, np.ndarray], adult_acceptance: float,
               negative_acceptance: float) -> float:
    """How far above the guard's threshold a film the classifier is sure is frontal may be (see ``fit``)."""
    def originals(kinds: Sequence[str]) -> np.ndarray:
        return np.concatenate([np.asarray(guard_scores[f"{s.kind}/{s.source}"])[_firsts(s.groups)]
                               for s in sets if s.kind in kinds] or [np.zeros(0)])

    a, neg = originals((ADULT,)), originals((OTHER_RADIOGRAPH, NOT_RADIOGRAPH))
    if len(a) and len(neg):
        return float(max(1.0, min(np.quantile(a, adult_acceptance), np.quantile(neg, negative_acceptance))))
    return 1.0


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
        key = f"{held.kind}/{held.source}"
        out[key] = rates_on_originals(check, held, pediatric_scores[key], moderate)
    return out


def rates_on_originals(check: FilmTypeCheck, films: Labelled, scores: np.ndarray, moderate: float) -> dict[str, Any]:
    """``rates`` of the check's verdicts on a set's original films (not their augmented copies); ``scores``: the
    guard's scores of the set's rows."""
    first = _firsts(films.groups)
    reps = {k: np.asarray(v)[first] for k, v in films.reps.items()}
    return rates(check.judge(reps, np.asarray(scores)[first], [{}] * int(first.sum()), moderate))


# --------------------------------------------------------------------------- the film_types/ folder

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

