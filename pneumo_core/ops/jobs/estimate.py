"""How long a job will take on this machine, phase by phase, and the job to propose for it.

The rates start from references measured on a 2-core CPU (``CPU_COST``) or a GPU, and correct themselves
from the jobs that ran here: the training pace an earlier job measured, and each phase's actual / estimated
time on recent finished jobs (``phase_pace``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from pneumo_core.errors import ModelLoadError
from pneumo_core.ingest.datacheck import DatasetReport
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.network import imagenet_weights_path
from pneumo_core.model.store import read_card
from pneumo_core.ops.jobs.settings import BASE_DEFAULTS, RECIPE_FIELDS, check_config, default_config
from pneumo_core.ops.jobs.store import Job, list_jobs
from pneumo_core.ops.registry import active_model_dir, weights_root
from pneumo_core.safety.filmtype_fit import film_type_files
from pneumo_core.safety.fitting import film_types_folder

# Reference training throughput of DenseNet-121 at 224 px on an H100 (~1,500 img/s with GPU-side augmentation),
# used until the machine has measured its own.
GPU_REF_IMG_S_224 = 1500.0
# What each step of a job costs on a 2-core CPU without bf16 (this machine, idle; bench/train_throughput.py,
# bench/cpu_latency.py and bench/job_estimate.py): seconds per image at (64 px, 128 px) for a training step
# (fp32 + channels_last, batch 32) and a batched forward pass; seconds to decode one clinic film on one core
# (used when the data check did not measure it); fixed costs in seconds; the guard's feature pass relative to
# a plain forward pass; the film-type check's forward passes per film, its fitting, and its leave-one-source-
# out evaluation. Fitted to the phase times of bench/job_estimate.py's three jobs on this machine (the first
# rates, from the throughput benches, left training ~3x and the guard ~3.5x too fast).
CPU_COST: dict[str, Any] = {"start": 8.0, "load": 2.0, "read": 0.012, "train": (0.036, 0.10),
                            "infer": (0.008, 0.022), "features": 3.3, "bootstrap": 4.0, "negatives": 57,
                            "type_passes": 3.0, "type_fit": 10.0, "type_loso": 26.0}
CPU_FINE_TUNE_BUDGET_S = 15 * 60     # without a GPU, the proposed job should end within this
CPU_FINE_TUNE_EPOCHS = (5, 4, 3, 2, 1)
_DEFAULTS = TrainConfig()


def device_kind(device: str = "auto") -> str:
    """'cuda' or 'cpu': where a job with this device setting would train."""
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def measured_throughput(device_kind: str, image_size: int = 224, root: str | Path | None = None, *,
                        recent: list[Job] | None = None) -> tuple[float, int] | None:
    """(training img/s, image size) measured by the newest job on this machine's ``device_kind`` at a size
    within a factor of 1.5 of ``image_size`` (tiny images are overhead-bound: they do not scale). ``recent``:
    ``list_jobs(root, limit=20)`` when the caller has it already."""
    for job in list_jobs(root, limit=20) if recent is None else recent:
        rows = [r.get("images_per_s") for r in job.history if r.get("images_per_s")]
        size = int((job.spec.get("config") or {}).get("image_size") or 224)
        if rows and job.state.get("device_kind") == device_kind and 1 / 1.5 <= size / image_size <= 1.5:
            return float(sorted(rows)[len(rows) // 2]), size
    return None


def phase_pace(device_kind: str, root: str | Path | None = None, limit: int = 5, *,
               recent: list[Job] | None = None) -> dict[str, float]:
    """Per phase, the median of (actual / reference seconds) over this machine's newest finished jobs on
    ``device_kind`` that recorded both (at most ``limit``); clipped to [0.25, 4] so one odd job cannot
    make the next estimate absurd. The reference is each job's estimate before its own pace correction
    (older jobs recorded only the corrected one), so corrections do not compound or cancel from job to job.
    ``recent``: ``list_jobs(root, limit=20)`` when the caller has it already."""
    ratios: dict[str, list[float]] = {}
    seen = 0
    for job in list_jobs(root, limit=20) if recent is None else recent:
        estimate = job.spec.get("estimate") or {}
        planned = estimate.get("reference") or estimate.get("phases") or {}
        actual = job.state.get("phases") or {}
        if job.status != "succeeded" or job.state.get("device_kind") != device_kind or not planned:
            continue
        for key, est in planned.items():
            if actual.get(key) and est and est > 0:
                ratios.setdefault(key, []).append(float(actual[key]) / float(est))
        seen += 1
        if seen >= limit:
            break
    return {k: min(4.0, max(0.25, sorted(v)[len(v) // 2])) for k, v in ratios.items()}


@dataclass(frozen=True)
class Estimate:
    """Seconds per phase (keys of ``PHASES``), their total, and where the rates came from; ``reference``: the
    same before this machine's pace corrected it (what ``phase_pace`` compares later jobs with)."""
    phases: dict[str, float]
    basis: str
    reference: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())


def compared_size(base_info: Mapping[str, Any]) -> int | None:
    """Input size of the model a job is compared with (it scores the same films at its own size)."""
    folder = base_info.get("path") or (base_info.get("compare_with") or {}).get("path")
    try:
        return int(read_card(folder)["input"]["size"]) if folder else None
    except (ModelLoadError, KeyError, TypeError, ValueError):
        return None


def _active_path() -> str | None:
    try:
        return str(active_model_dir())
    except ModelLoadError:
        return None


def _per_image_s(ref_64: float, ref_128: float, size: int) -> float:
    """Seconds per image at ``size`` px from two measurements, as a + b * size^2 (a: per-image overhead that
    does not shrink with the image; b: the convolutions)."""
    b = (ref_128 - ref_64) / (128 ** 2 - 64 ** 2)
    return max(ref_64 - b * 64 ** 2, 0.0) + b * size ** 2


def _count_film_types(folder: Path | None) -> int:
    return len(film_type_files(folder)) if folder is not None and folder.is_dir() else 0


@dataclass(frozen=True)
class _Rates:
    """Seconds per image: a training step, a forward pass at the job's size and at the compared model's,
    decoding one film on one core; ``basis``: where they came from, in words."""
    train: float
    infer: float
    infer_base: float
    read: float
    basis: str


def _rates(report: DatasetReport, size: int, base_size: int, device_kind: str, threads: int,
           recent: list[Job]) -> tuple[_Rates, bool]:
    """This machine's rates for a job at ``size`` px, and whether its training pace was measured here."""
    cores = max(1.0, threads / 2)
    c = CPU_COST
    if device_kind == "cuda":
        train_s = 1 / (GPU_REF_IMG_S_224 * (224 / size) ** 2)
        infer_s, infer_base_s = train_s / 3, 1 / (3 * GPU_REF_IMG_S_224 * (224 / base_size) ** 2)
        basis = f"a reference of {GPU_REF_IMG_S_224:.0f} img/s at 224 px on an H100"
    else:
        train_s = _per_image_s(*c["train"], size) / cores
        infer_s = _per_image_s(*c["infer"], size) / cores
        infer_base_s = _per_image_s(*c["infer"], base_size) / cores
        basis = (f"rates measured on a 2-core CPU ({1 / _per_image_s(*c['train'], 224):.0f} img/s training at "
                 f"224 px per 2 cores; {threads} cores here)")
    measured = measured_throughput(device_kind, size, recent=recent)
    if measured:
        train_s = 1 / (measured[0] * (measured[1] / size) ** 2)
        basis = f"{measured[0]:.0f} img/s measured at {measured[1]} px by an earlier job on this machine"
    if report.read_s:
        basis += f"; decoding {1 / report.read_s:.0f} films/s per core, measured while checking these films"
    return _Rates(train_s, infer_s, infer_base_s, report.read_s or c["read"], basis), bool(measured)


def _phase_seconds(report: DatasetReport, config: Mapping[str, Any], r: _Rates, threads: int,
                   n_types: int) -> dict[str, float]:
    """Seconds per phase at rates ``r``; what each phase counts is listed in ``estimate_phases``."""
    c = CPU_COST
    cap = config.get("max_images")
    clip = (lambda n: min(n, int(cap))) if cap else (lambda n: n)  # noqa: E731
    counts = {s: sum(v.values()) for s, v in report.counts.items()}
    carved = sum(report.carved_val().values())
    n_train_all, n_val_all = report.n_train, counts.get("val", carved)
    n_ext_all, n_test = counts.get("external", 0), counts.get("test", 0)
    n_train, n_val, n_ext = clip(n_train_all), clip(n_val_all), clip(n_ext_all)
    batch = int(config.get("batch_size") or _DEFAULTS.batch_size)
    epochs = int(config.get("epochs") or BASE_DEFAULTS["active"]["epochs"])
    workers = min(int(config.get("workers") or min(16, threads)), threads)
    decode = r.read / workers                                 # decoding threads in fit and in the guard
    evaluated = n_val_all + n_test + n_ext_all
    splits = sum(1 for n in (n_val_all, n_test, n_ext_all) if n)
    return {
        "preparing": c["start"] + (n_train + n_val + n_ext) * decode,
        "training": epochs * (max(1, n_train // batch) * batch * r.train + 2 * (n_val + n_ext) * r.infer),
        "calibrating": c["load"] + evaluated * (r.read + r.infer) + splits * c["bootstrap"],
        "guard": (c["load"] + (n_train_all + n_val_all) * (decode + 2 * r.infer * c["features"])
                  + (n_test + n_ext_all) * (r.read + r.infer * c["features"])
                  + c["negatives"] * (r.read + r.infer * c["features"])
                  + (n_types * (r.read + c["type_passes"] * r.infer) + c["type_fit"] + c["type_loso"]
                     if n_types else 0.0)),
        "comparing": c["load"] + evaluated * (r.read + r.infer_base) + splits * c["bootstrap"],
    }


def estimate_phases(report: DatasetReport, config: Mapping[str, Any], device_kind: str, *,
                    cpu_threads: int | None = None, root: str | Path | None = None,
                    film_types: Path | None | bool = True, base_size: int | None = None) -> Estimate:
    """Wall time of each phase of a job, from what each phase does and this machine's measured rates.

    What is counted (n_* are films; training/val/external are capped by ``max_images``, the later phases
    read whole folders):

    * preparing: process start, imports and model build (``CPU_COST["start"]``), then decoding the films
      ``fit`` uses (train, val, external) at the job's decoding threads;
    * training: per epoch, one training pass over train (floor to whole batches) and two inference passes
      (raw and averaged model) over val + external;
    * calibrating: model load, every film of val, test and external read again (one thread) and scored,
      and the bootstrap CIs per split;
    * guard: train and val decoded again, features of them and one augmented copy each, the whole check on
      test and external, the built-in negatives, and (when a film_types/ folder is found) the film-type
      check: its films read and featured with their augmented copies, and its fitting;
    * comparing: the active model loaded and run on val, test and external at its own size, with CIs.

    Rates: decoding from the data check's own measurement of these films (``report.read_s``) when it has
    one; training and inference per image from the CPU reference (measured on this 2-core machine at 64 and
    128 px, ``CPU_COST``), divided by cores/2, or the training pace an earlier job measured here. Then each
    phase is multiplied by this machine's pace on recent finished jobs (``phase_pace``: actual / estimated),
    so the estimate corrects itself from the jobs that ran here.
    """
    size = int(config.get("image_size") or _DEFAULTS.image_size)
    if base_size is None:                                     # compared with the active version, at its size
        base_size = compared_size({"path": _active_path()})
    threads = cpu_threads or os.cpu_count() or 2
    recent = list_jobs(root, limit=20)                        # read once: the throughput and the pace use it
    rates, measured = _rates(report, size, int(base_size or size), device_kind, threads, recent)
    if film_types is True:
        film_types = film_types_folder(report.root)
    n_types = _count_film_types(film_types) if film_types else 0
    phases = _phase_seconds(report, config, rates, threads, n_types)
    reference, basis = dict(phases), rates.basis
    pace = phase_pace(device_kind, recent=recent)
    if measured:
        pace.pop("training", None)                            # the measured pace already says it
    if pace:
        phases = {k: v * pace.get(k, 1.0) for k, v in phases.items()}
        basis += ", corrected by the time each phase took in this machine's last finished job(s)"
    return Estimate(phases, basis, reference)


def estimate_seconds(report: DatasetReport, config: Mapping[str, Any], device_kind: str, *,
                     cpu_threads: int | None = None, root: str | Path | None = None) -> tuple[float, str]:
    """Wall time of a whole job (every phase: ``estimate_phases``) and where its rates came from."""
    est = estimate_phases(report, config, device_kind, cpu_threads=cpu_threads, root=root)
    return est.seconds, est.basis


def proposed_job(report: DatasetReport, device_kind: str, root: str | Path | None = None, *,
                 jobs_root: str | Path | None = None,
                 budget_s: float = CPU_FINE_TUNE_BUDGET_S) -> tuple[str, dict[str, Any], Estimate]:
    """What to propose for these data on this server: (base, config, its estimate).

    With a GPU: the full recipe, the one the active version was trained with (its card's epochs, learning
    rate, batch, input size, augmentation), from ImageNet weights when they are cached, else from scratch.
    Without one: a fine-tune of the active version at its own input size, gentle (lr 1e-4), with as many
    epochs (5 down to 1) as fit ``budget_s`` by ``estimate_phases``, and if one epoch does not fit, a cap
    on films per split, halved until it does (a trial run; at least 50 films). Without an active version,
    the full recipe's defaults from scratch."""
    weights = Path(root) if root else weights_root()
    try:
        active = read_card(active_model_dir(weights))
    except ModelLoadError:
        active = None
    base_size = int((active or {}).get("input", {}).get("size") or 0) or None
    if device_kind == "cuda" or active is None:
        base = "imagenet" if imagenet_weights_path().is_file() else "scratch"
        cfg = default_config(base, weights)
        recipe = (active or {}).get("training") or {}
        cfg.update({k: recipe[k] for k in RECIPE_FIELDS if recipe.get(k) is not None})
        cfg = check_config(cfg)
        return base, cfg, estimate_phases(report, cfg, device_kind, root=jobs_root, base_size=base_size)
    cfg = {**default_config("active", weights), "lr": 1e-4}
    est = None
    for epochs in CPU_FINE_TUNE_EPOCHS:
        cfg["epochs"] = epochs
        est = estimate_phases(report, cfg, device_kind, root=jobs_root, base_size=base_size)
        if est.seconds <= budget_s:
            return "active", cfg, est
    cap = max(report.n_train, 100)
    while cap > 50 and est.seconds > budget_s:
        cap = max(50, cap // 2)
        cfg["max_images"] = cap
        est = estimate_phases(report, cfg, device_kind, root=jobs_root, base_size=base_size)
    return "active", cfg, est
