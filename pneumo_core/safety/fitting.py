"""Fitting a model folder's guard and film-type check, and measuring the whole check as ``predict`` runs it.

This is the one place that needs a ``Predictor`` (to read the network's features of the fitting films) and
writes ``ood.safetensors``, ``film_type.safetensors`` and the card's ``ood`` and ``film_type`` sections.
The guard's maths is in ``guard.py``, the film-type check's in ``filmtype_fit.py``; nothing the predictor
imports imports this module.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from pneumo_core.errors import UnreadableImageError
from pneumo_core.files import CHECKOUT
from pneumo_core.ingest.folders import LabelledFiles, discover_splits, list_labelled, load_images
from pneumo_core.ingest.preprocess import resize
from pneumo_core.ingest.read import XrayImage, read_xray
from pneumo_core.model.augment import AugmentConfig, augment
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import read_card, write_card
from pneumo_core.safety import filmtype, filmtype_fit
from pneumo_core.safety.features import LAYOUT, TAPS, layout, unit
from pneumo_core.safety.filmtype_fit import (
    BUILTIN_SOURCES,
    MEASURE_ONLY,
    Labelled,
    leave_one_source_out,
    one_sided,
    rates,
    rates_on_originals,
)
from pneumo_core.safety.guard import OOD_FILE, Guard, fit, guard_info, save_guard
from pneumo_core.safety.negatives import builtin_negatives

Log = Callable[[str], None]
FILM_TYPES_ENV = "PNEUMO_FILM_TYPES"
SHARED_FILM_TYPES = CHECKOUT.parent / "shared" / "data" / "film_types"
NO_FILM_TYPES = ("no film_types/ folder was given to fitting: this version cannot tell adult, lateral or other films "
                 "from the children's frontal films it was validated on; only the out-of-distribution guard screens "
                 "uploads")


@dataclass(frozen=True)
class GuardFit:
    """How ``fit_guard`` fits and measures (the ``fit-guard`` command's options).

    ``false_rejection``: the share of validation films (and their augmented copies) the guard may refuse;
    ``copies``: augmented copies of each training and validation film; ``max_train`` / ``max_eval``: at most
    this many training films / films per measured split (None: all); ``negatives``: also measure (and fit the
    film-type check on) the built-in negatives; ``workers``: decoding threads.
    """

    false_rejection: float = 0.005
    copies: int = 1
    max_train: int | None = None
    max_eval: int | None = None
    negatives: bool = True
    seed: int = 0
    workers: int = 2


# --------------------------------------------------------------------------- representations

def represent(predictor: Predictor, pixels_list: Sequence[np.ndarray], taps: Sequence[str] = TAPS,
              *, batch_size: int = 32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Display pixels (any size; float [0,1] or uint8) -> (raw logits, {part: N x d}) in one pass per batch."""
    logits, parts = [], {}
    for i in range(0, len(pixels_list), batch_size):
        chunk = [unit(p) for p in pixels_list[i:i + batch_size]]
        lg, feats = predictor.forward(chunk, tuple(taps))
        logits.append(lg)
        for k, v in feats.items():
            parts.setdefault(k, []).append(v)
    spec = predictor.card["input"]
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out[LAYOUT] = layout(pixels_list, spec)
    return (np.concatenate(logits) if logits else np.zeros(0, np.float32)), out


def augmented(pixels_u8: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """Copies of films (N x S x S uint8) altered by the training augmentation, random erasing left out."""
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


# --------------------------------------------------------------------------- the guard of a model folder

class _Splits:
    """The data folder's splits, sub-sampled reproducibly (one generator, drawn in the order asked)."""

    def __init__(self, data_dir: str | Path, spec: Mapping[str, Any], options: GuardFit):
        self.splits = discover_splits(data_dir)
        if "val" not in self.splits:
            raise FileNotFoundError(f"{data_dir} has no val/ folder (NORMAL/ and PNEUMONIA/) to set the threshold on.")
        self.spec, self.workers = spec, options.workers
        self.rng = np.random.default_rng(options.seed)

    def files(self, split: str, limit: int | None) -> Sequence[Path]:
        files = list_labelled(self.splits[split]).files
        if limit and len(files) > limit:
            files = tuple(files[i] for i in np.sort(self.rng.choice(len(files), limit, replace=False)))
        return files

    def films(self, split: str, limit: int | None = None) -> np.ndarray:
        """The films of a split decoded as training decodes them (N x S x S uint8)."""
        files = self.files(split, limit)
        return load_images(LabelledFiles(tuple(files), np.zeros(len(files), np.int64)), self.spec,
                           workers=self.workers).pixels


@dataclass(frozen=True)
class _Fitted:
    """A fitted guard and what it was fitted on (the film-type check is fitted on the same representations)."""

    guard: Guard
    train: np.ndarray                      # the training films (uint8), without their augmented copies
    train_reps: Mapping[str, np.ndarray]   # of train, then its augmented copies
    n_val: int
    val_reps: Mapping[str, np.ndarray]     # of the validation films, then their augmented copies
    val_scores: np.ndarray


def _fit_on_films(predictor: Predictor, splits: _Splits, options: GuardFit, log: Log) -> _Fitted:
    copies, seed = options.copies, options.seed
    log("decoding the training films")
    train = splits.films("train", options.max_train)
    log(f"features of {len(train)} training films (+{copies} augmented copies)")
    train_reps = represent(predictor, list(np.concatenate([train, augmented(train, copies, seed)])), TAPS)[1]
    log("decoding the validation films")
    val = splits.films("val")
    val_reps = represent(predictor, list(np.concatenate([val, augmented(val, copies, seed + 1)])), TAPS)[1]
    guard = fit(train_reps, val_reps, false_rejection=options.false_rejection)
    return _Fitted(guard, train, train_reps, len(val), val_reps, guard.scores(val_reps))


def _film_types_dir(film_types: str | Path | None, data_dir: str | Path) -> Path | None:
    film_types = film_types if film_types is not None else film_types_folder(data_dir)
    if film_types is not None and not Path(film_types).is_dir():   # named but absent: never drop the check silently
        raise FileNotFoundError(f"The film-types folder {Path(film_types).name}/ was not found; nothing was changed.")
    return None if film_types is None else Path(film_types)


def _measured_rates(predictor: Predictor, splits: _Splits, fitted: _Fitted, options: GuardFit,
                    log: Log) -> dict[str, Any]:
    """False rejections on val/ (the guard's own) and on test/ and external/ (the whole check)."""
    scores = fitted.val_scores
    out: dict[str, Any] = {"val": _rate(scores[:fitted.n_val] > 1.0),
                           "val_augmented": _rate(scores[fitted.n_val:] > 1.0)}
    for split in ("test", "external"):
        if split in splits.splits:
            log(f"false rejections on {split}/ (the whole check, as predict runs it)")
            out[split] = false_rejection_on(predictor, splits.files(split, options.max_eval), workers=options.workers)
    return out


def _card_info(predictor: Predictor, fitted: _Fitted, options: GuardFit, rates: Mapping[str, Any],
               negatives: Mapping[str, Any]) -> dict[str, Any]:
    """card['ood'], less the sha256 of the file written from it."""
    guard, copies = fitted.guard, options.copies
    return {
        "method": ("max over parts of (probabilistic-PCA Mahalanobis distance / its median on val films); parts: "
                   f"DenseNet features ({', '.join(TAPS)}), 16x16 layout + grey histogram"),
        **guard_info(guard),
        "threshold_rule": (f"{1 - options.false_rejection:.4f} quantile of the score on val/ + {copies} augmented "
                           "copy(ies) of val/; a score above the threshold is refused"),
        "target_false_rejection": options.false_rejection,
        "dims": {k: [int(g.components.shape[0]), int(g.components.shape[1])] for k, g in guard.gaussians.items()},
        "fitted_on": {"train": len(fitted.train), "val": fitted.n_val, "augmented_copies": copies,
                      "augmentation": "training augmentation (AugmentConfig defaults, no random erasing)"},
        "false_rejection": dict(rates),
        "negative_rejection": dict(negatives),
        "file": OOD_FILE,
        "weights_sha256": (predictor.card.get("weights") or {}).get("sha256"),
    }


def _write(model_dir: Path, guard: Guard, info: dict[str, Any], check: filmtype.FilmTypeCheck | None,
           ft_info: dict[str, Any]) -> None:
    """Write the guard, the film-type check (or remove a stale one) and the card's two sections."""
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


def fit_guard(model_dir: str | Path, data_dir: str | Path, options: GuardFit = GuardFit(), *,
              film_types: str | Path | None = None, log: Log = lambda s: None) -> dict[str, Any]:
    """Fit the guard of a model folder on its training data; write ood.safetensors and card['ood'].

    The Gaussians are fitted on train/ (at most ``options.max_train`` films, plus ``options.copies`` augmented
    copies). The threshold is the (1 - false_rejection) quantile of the score on val/ plus
    augmented copies of val/. Then the whole check (``Predictor.check``: model-free checks and
    the guard, through the same decoding as ``predict``) is run on test/ and external/ (at most
    ``options.max_eval`` films each) and on the built-in negatives, and the rates are recorded. The weights
    file is not touched. Returns card['ood'].

    With ``film_types`` (a folder of other films, ``filmtype_fit.read_film_types``; by default
    ``film_types_folder(data_dir)``), the film-type check is fitted too (``film_type.safetensors``,
    card['film_type']) before the rates are measured, so they are those of the whole check; without
    one, card['film_type'] says the version has none.
    """
    model_dir = Path(model_dir)
    film_types = _film_types_dir(film_types, data_dir)
    predictor = Predictor.from_dir(model_dir, guard=False)      # an old or stale guard is being replaced
    splits = _Splits(data_dir, predictor.card["input"], options)
    fitted = _fit_on_films(predictor, splits, options, log)
    predictor.guard = fitted.guard
    check, ft_info = None, {"fitted": False, "why": NO_FILM_TYPES}
    if film_types is not None:
        check, ft_info = fit_film_type_check(predictor, fitted.train, fitted.train_reps, fitted.val_reps,
                                             fitted.val_scores, film_types, seed=options.seed,
                                             builtin=options.negatives, log=log)
        predictor.film_types = check
    rates = _measured_rates(predictor, splits, fitted, options, log)
    neg_report: dict[str, Any] = {}
    if options.negatives:
        log("rejection of the built-in negatives")
        neg_report = negative_rejection(predictor)
    info = _card_info(predictor, fitted, options, rates, neg_report)
    _write(model_dir, fitted.guard, info, check, ft_info)
    log(f"guard written: {OOD_FILE} (sha256 {info['sha256'][:12]}...)")
    return info


def film_types_folder(data_dir: str | Path) -> Path | None:
    """Where the film-type check's fitting films are: $PNEUMO_FILM_TYPES (empty: none), else a ``film_types/`` folder beside
    the data folder (as in shared/data), else the shared one beside this checkout (a retraining job's
    uploaded data has none beside it), else None."""
    env = os.environ.get(FILM_TYPES_ENV)
    if env is not None:                               # set but empty: no film-type folder (tests, a choice)
        return Path(env) if env else None
    for candidate in (Path(data_dir).resolve().parent / "film_types", SHARED_FILM_TYPES):
        if candidate.is_dir():
            return candidate
    return None


# --------------------------------------------------------------------------- measuring the whole check

def _rate(refused: np.ndarray) -> dict[str, Any]:
    refused = np.asarray(refused, bool)
    return {"rate": float(refused.mean()) if len(refused) else None, "rejected": int(refused.sum()),
            "n": int(len(refused))}


def false_rejection_on(predictor: Predictor, files: Sequence[Path], *, batch_size: int = 32,
                       workers: int = 2) -> dict[str, Any]:
    """How many of these chest films the whole check refuses, decoded exactly as ``predict`` decodes them."""
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


def negative_rejection(predictor: Predictor) -> dict[str, Any]:
    """Rejection of the built-in negatives by the whole check (model-free checks, then the guard), per category."""
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


# --------------------------------------------------------------------------- the film-type check of a model folder

def _u8(pixels: Sequence[np.ndarray], spec: Mapping[str, Any]) -> np.ndarray:
    return np.stack([np.clip(np.rint(resize(unit(p), spec) * 255), 0, 255).astype(np.uint8) for p in pixels])


def _film_sets(film_types_dir: str | Path, builtin: bool, seed: int,
               log: Log) -> dict[tuple[str, str], list[np.ndarray]]:
    """{(kind, source): display pixels} of the film_types folder and, with ``builtin``, the built-in negatives."""
    log(f"reading {film_types_dir}")
    folders = filmtype_fit.read_film_types(film_types_dir)
    if builtin:
        for cat, name, data in builtin_negatives(seed):
            try:
                pixels = read_xray(data).pixels
            except UnreadableImageError:
                continue
            source = BUILTIN_SOURCES.get(cat, "CT, MR, NM and US slices")
            folders.setdefault((filmtype.NOT_RADIOGRAPH, f"built-in {source}"), []).append(pixels)
    return folders


def _labelled_sets(predictor: Predictor, folders: Mapping[tuple[str, str], list[np.ndarray]], train_u8: np.ndarray,
                   train_reps: Mapping[str, np.ndarray], *, copies: int, crops: int, seed: int,
                   log: Log) -> tuple[list[Labelled], dict[str, Labelled]]:
    """The sets the check is fitted on (with augmented copies and synthetic one-sided crops) and those only
    measured (``MEASURE_ONLY``), by "kind/source"."""
    spec = predictor.card["input"]
    reps_of = lambda pix: represent(predictor, list(pix), ("pooled",))[1]  # noqa: E731
    n_train = len(train_u8)
    sets = [Labelled(filmtype.PEDIATRIC, "training films", train_reps,
                     np.tile(np.arange(n_train), max(1, len(train_reps["pooled"]) // max(n_train, 1))))]
    measured: dict[str, Labelled] = {}
    one_sided_sources = []
    for (kind, source), pixels in sorted(folders.items()):
        log(f"features of {len(pixels)} films: {kind} from {source}")
        if kind in MEASURE_ONLY:
            measured[f"{kind}/{source}"] = Labelled(kind, source, reps_of(pixels), np.arange(len(pixels)))
            continue
        u8 = _u8(pixels, spec)                   # for augmented copies and one-sided crops only
        builtin = kind == filmtype.NOT_RADIOGRAPH and source.startswith("built-in")
        extra = u8[:0] if builtin else augmented(u8, copies, seed)
        groups = np.concatenate([np.arange(len(pixels))] + [np.arange(len(pixels))] * (len(extra) // len(pixels)))
        sets.append(Labelled(kind, source, reps_of(list(pixels) + list(extra)), groups))
        if kind == filmtype.ADULT:
            one_sided_sources.append((source, u8))
    log("features of one-sided crops (synthetic lateral-like films)")
    crops_u8, idx = one_sided(train_u8, min(crops, n_train), seed)
    sets.append(Labelled(filmtype.LATERAL, "one-sided crops of training films", reps_of(crops_u8), idx))
    for source, u8 in one_sided_sources:
        c, i = one_sided(u8, 2 * len(u8), seed + 1)
        sets.append(Labelled(filmtype.LATERAL, f"one-sided crops of {source}", reps_of(c), i, derived_from=source))
    return sets, measured


def fit_film_type_check(predictor: Predictor, train_u8: np.ndarray, train_reps: Mapping[str, np.ndarray],
                        val_reps: Mapping[str, np.ndarray], val_scores: np.ndarray, film_types_dir: str | Path, *,
                        copies: int = 4, crops: int = 800, seed: int = 0, builtin: bool = True,
                        log: Log = lambda s: None) -> tuple[filmtype.FilmTypeCheck, dict[str, Any]]:
    """Fit the check of ``predictor``'s model (whose ``guard`` is fitted) and measure it.

    ``train_reps``: representations of ``train_u8`` followed by its augmented copies (as the guard was
    fitted); ``val_reps``: of the validation films (thresholds), and ``val_scores`` the guard's scores of
    them. Returns the check and what the card records about it (fitting sets, thresholds, per-class
    leave-one-source-out rates, the real laterals)."""
    guard = predictor.guard
    folders = _film_sets(film_types_dir, builtin, seed, log)
    sets, measured = _labelled_sets(predictor, folders, train_u8, train_reps, copies=copies, crops=crops, seed=seed,
                                    log=log)
    log("fitting the film-type check")
    moderate = guard.moderate / guard.threshold
    scores = {f"{s.kind}/{s.source}": guard.scores(s.reps) for s in [*sets, *measured.values()]}
    check = filmtype_fit.fit(sets, val_reps, guard_scores=scores, val_scores=val_scores, seed=seed)
    log("leave-one-source-out evaluation")
    loso = leave_one_source_out(sets, val_reps, scores, moderate=moderate, val_scores=val_scores, seed=seed)
    measured_rates = {key: rates(check.judge(s.reps, scores[key], [{}] * len(s), moderate))
                      for key, s in measured.items()}
    info = {
        **filmtype.check_info(check),
        "method": ("multinomial logistic regression on the DenseNet's pooled features (PCA) + the guard's layout; "
                   "an adult frontal chest Gaussian beside the pediatric guard; thresholds on val/"),
        "fitted_on": {f"{s.kind}/{s.source}": int(len(np.unique(s.groups))) for s in sets},
        "augmented_copies": copies,
        "not_fitted_on": {key: f"{len(s)} films, measured only (non-commercial licence)" for key, s in measured.items()},
        "leave_one_source_out": loso,
        "measured": measured_rates,
        "in_sample": {f"{s.kind}/{s.source}": rates_on_originals(check, s, scores[f"{s.kind}/{s.source}"], moderate)
                      for s in sets if s.kind != filmtype.PEDIATRIC},
    }
    return check, info
