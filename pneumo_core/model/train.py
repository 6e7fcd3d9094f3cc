"""Training: a readable loop, a frozen config, and a progress callback as the only link to any UI.

    fit(data_dir, out_dir, TrainConfig(...), progress=print)

Films are decoded once into a uint8 tensor on the training device; augmentation
runs there too (pneumo_core.model.augment), so the GPU is not starved by a loader.
Model selection uses ``external/`` when present (the distribution users meet),
else ``val/``. ``external/`` is never trained on.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumo_core.files import atomic_write_bytes
from pneumo_core.ingest.folders import ImageSet, LabelledFiles, discover_splits, fingerprint, list_labelled, load_images
from pneumo_core.ingest.preprocess import normalise
from pneumo_core.model import augment as aug
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.metrics import safe_auc
from pneumo_core.model.network import LABELS, create_model, default_input_spec
from pneumo_core.model.store import code_version, save_model


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    metrics: dict[str, float]        # e.g. {"val_auc": .., "external_auc": ..}
    images_per_s: float
    elapsed_s: float
    eta_s: float
    best: bool


@dataclass
class FitResult:
    out_dir: Path
    card: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


Progress = Callable[[EpochReport], None]


class TrainingCancelled(RuntimeError):
    """Raised from inside fit() when the cancel check says stop; nothing is written to out_dir."""


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up then cosine decay to 1% of peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, enabled: bool):
    # bf16 autocast: on CUDA always; on CPU it is ~2x faster where the CPU has bf16 instructions.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def predict_logits(net: nn.Module, pixels: torch.Tensor, spec: dict, *, batch_size: int = 128,
                   bf16: bool = False) -> np.ndarray:
    """uint8 N x S x S (any device) -> raw logits (N,), with the network in eval mode."""
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(pixels), batch_size):
        x = normalise(pixels[i:i + batch_size].to(device).unsqueeze(1), spec)
        if device.type == "cuda" or bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, bf16):
            out.append(net(x).float().squeeze(1).cpu())
    net.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _split_val(lf: LabelledFiles, fraction: float, seed: int) -> tuple[LabelledFiles, LabelledFiles]:
    """Stratified random split for data that came without val/ (patient grouping unknown)."""
    rng = np.random.default_rng(seed)
    val_idx = []
    for y in (0, 1):
        idx = np.flatnonzero(lf.labels == y)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, int(round(len(idx) * fraction)))])
    mask = np.zeros(len(lf), bool)
    mask[val_idx] = True
    pick = lambda m: LabelledFiles(tuple(f for f, k in zip(lf.files, m) if k), lf.labels[m])  # noqa: E731
    return pick(~mask), pick(mask)


def _subsample(lf: LabelledFiles, n: int | None, seed: int) -> LabelledFiles:
    """At most ``n`` films, keeping the class proportions (and at least one of each class)."""
    if n is None or len(lf) <= n:
        return lf
    rng = np.random.default_rng(seed)
    idx = []
    for y in (0, 1):
        members = np.flatnonzero(lf.labels == y)
        k = max(1, int(round(n * len(members) / len(lf))))
        idx.extend(rng.choice(members, min(k, len(members)), replace=False))
    idx = np.sort(np.asarray(idx))
    return LabelledFiles(tuple(lf.files[i] for i in idx), lf.labels[idx])


def prepare_data(data_dir: str | Path, cfg: TrainConfig, spec: dict) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """Decode the splits once. Returns the image sets and a data description for the card."""
    folders = discover_splits(data_dir)
    lists = {name: list_labelled(path) for name, path in folders.items() if name != "test"}
    if "val" not in lists:
        lists["train"], lists["val"] = _split_val(lists["train"], cfg.val_fraction, cfg.seed)
    lists = {k: _subsample(v, cfg.max_images, cfg.seed) for k, v in lists.items()}
    for name in ("train", "val"):
        counts = lists[name].counts()
        if min(counts.values()) < 1:
            raise ValueError(f"The {name} data need films of both classes; found {counts}.")
    sets = {name: load_images(lf, spec, workers=cfg.workers) for name, lf in lists.items()}
    data = {
        "source": Path(data_dir).name,
        "fingerprint": fingerprint({k: v for k, v in lists.items()}, Path(data_dir)),
        "counts": {k: lists[k].counts() for k in lists},
        "skipped": {k: len(v.skipped) for k, v in sets.items()},
        "used_for": {"train": "weights", "val": "monitoring",
                     "external": "model selection (never trained on)" if "external" in sets else None},
    }
    return sets, data


def train_one_epoch(net, opt, batches, y_all, x_all, spec, cfg, aug_cfg, g, step0, total_steps,
                    warmup, pos_weight, ema, device) -> tuple[float, int]:
    net.train()
    losses = []
    step = step0
    for idx in batches:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total_steps, warmup, cfg.lr)
        x = x_all[idx].unsqueeze(1).float().div_(255.0)
        y = y_all[idx].float()
        if aug_cfg is not None:
            x = aug.augment(x, aug_cfg, g)
        x, y = aug.mixup(x, y, cfg.mixup_alpha, g)
        x = normalise(x, spec)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.bf16):
            logits = net(x).float().squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update_parameters(net)
        losses.append(loss.detach())
        step += 1
    return float(torch.stack(losses).mean()), step


CHECKPOINT = "last.pt"


def save_checkpoint(ckpt_dir: Path, payload: dict[str, Any]) -> None:
    """Atomically replace ``ckpt_dir/last.pt`` (a crash mid-write keeps the previous epoch's)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(ckpt_dir / CHECKPOINT, buf.getvalue())


def load_checkpoint(ckpt_dir: Path | None, cfg: TrainConfig) -> dict[str, Any] | None:
    """The run's last checkpoint, if any, after checking it belongs to the same configuration."""
    if ckpt_dir is None or not (ckpt_dir / CHECKPOINT).exists():
        return None
    ckpt = torch.load(ckpt_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    saved = {k: v for k, v in ckpt["config"].items() if k not in _RESUME_MAY_DIFFER}
    now = {k: v for k, v in asdict(cfg).items() if k not in _RESUME_MAY_DIFFER}
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(f"The checkpoint in {ckpt_dir} was made with other settings ({', '.join(diff)}); "
                         "use a new checkpoint folder or the same settings.")
    return ckpt


# Settings that do not change what is computed, so a run may resume with other values. (``device`` and
# ``bf16`` do; ``device`` may say "auto", so the device actually used is checked separately.)
_RESUME_MAY_DIFFER = {"workers", "threads"}


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def fit(data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig = TrainConfig(), *,
        progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
        checkpoint_dir: str | Path | None = None, keep_snapshots: int = 0,
        on_decoded: Callable[[], None] | None = None) -> FitResult:
    """Train a model and write it (weights + card) to ``out_dir``.

    ``out_dir`` must not exist or be empty. Everything is staged in a sibling
    folder and moved into place only when training succeeded, so a failed or
    cancelled run leaves nothing half-written.

    With ``checkpoint_dir`` the full training state (network, EMA, optimiser,
    random generator, history, best so far) is saved after every epoch, and a
    run started again with the same folder and settings resumes after the last
    finished epoch, with the same batches it would have drawn.
    ``keep_snapshots`` also keeps the raw and EMA weights of the last that many
    epochs there (``snapshots/``), for weight averaging and snapshot ensembles.
    ``on_decoded`` is called once the films are decoded, before the first epoch (a job's phases).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose a new folder.")
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    use_bf16 = cfg.bf16 and (device.type == "cuda" or _cpu_has_bf16())
    cfg = TrainConfig(**{**asdict(cfg), "bf16": use_bf16})
    resume = load_checkpoint(ckpt_dir, cfg)
    if resume is not None and resume.get("device_type", device.type) != device.type:
        raise ValueError(f"The checkpoint in {ckpt_dir} was made on {resume['device_type']}, not "
                         f"{device.type}; a run resumes on the same kind of device.")
    net, init = create_model(cfg.init, dropout=cfg.dropout)       # fails fast, before decoding data
    spec = default_input_spec(cfg.image_size)

    sets, data = prepare_data(data_dir, cfg, spec)
    if on_decoded:
        on_decoded()
    x_train = torch.from_numpy(sets["train"].pixels).to(device)
    y_train = torch.from_numpy(sets["train"].labels).to(device)
    evals = {k: (torch.from_numpy(v.pixels), v.labels) for k, v in sets.items() if k != "train"}
    select_on = "external" if "external" in evals else "val"

    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    model_for_steps = torch.compile(net) if cfg.compile else net
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_pos = int(y_train.sum())
    # Class imbalance: weight positives down so both classes carry equal total weight.
    pos_weight = torch.tensor((len(y_train) - n_pos) / max(1, n_pos), device=device)
    aug_cfg = {"strong": aug.AugmentConfig(), "mild": aug.AugmentConfig.mild(), "none": None}[cfg.augment]
    g = torch.Generator(device=device).manual_seed(cfg.seed)

    steps_per_epoch = max(1, len(x_train) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor], dict[str, Any]] | None = None
    t0 = time.perf_counter()
    step = 0
    first_epoch = 1
    if resume is not None:
        if resume.get("data_fingerprint", data["fingerprint"]) != data["fingerprint"]:
            raise ValueError(f"The checkpoint in {ckpt_dir} was made on other data (the films or their labels "
                             "differ); use a new checkpoint folder.")
        net.load_state_dict(resume["net"])
        if ema is not None:
            ema.load_state_dict(resume["ema"])
        opt.load_state_dict(resume["opt"])
        g.set_state(resume["generator"])
        if "torch_rng" in resume:                         # mixup's Beta draw uses the global generator
            torch.set_rng_state(resume["torch_rng"])
        if resume.get("cuda_rng") and device.type == "cuda":   # head dropout on CUDA
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        step, first_epoch, history = resume["step"], resume["epoch"] + 1, list(resume["history"])
        best = (resume["best_score"], resume["best_state"], dict(resume["best_info"]))
        t0 -= resume["elapsed_s"]
    for epoch in range(first_epoch, cfg.epochs + 1):
        if should_stop and should_stop():
            raise TrainingCancelled("Training was cancelled; no model was written.")
        te = time.perf_counter()
        order = torch.randperm(len(x_train), generator=g, device=device)
        batches = [order[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(steps_per_epoch)]
        loss, step = train_one_epoch(model_for_steps, opt, batches, y_train, x_train, spec, cfg, aug_cfg, g,
                                     step, total_steps, warmup, pos_weight, ema, device)
        ips = steps_per_epoch * cfg.batch_size / (time.perf_counter() - te)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": loss, "lr": lr_at(step - 1, total_steps, warmup, cfg.lr),
                               "images_per_s": ips}
        candidates = {"raw": net} if ema is None else {"raw": net, "ema": ema.module}
        improved = False
        for kind, candidate in candidates.items():
            for split, (px, labels) in evals.items():
                row[f"{split}_auc" + ("" if kind == "raw" else "_ema")] = safe_auc(labels, predict_logits(
                    candidate, px, spec, bf16=use_bf16))
            score = row[f"{select_on}_auc" + ("" if kind == "raw" else "_ema")]
            if best is None or (not math.isnan(score) and score > best[0]):
                best = (score, _snapshot(candidate), {"epoch": epoch, "weights": kind, f"{select_on}_auc": score})
                improved = True
        history.append(row)
        elapsed = time.perf_counter() - t0
        if ckpt_dir is not None:
            if keep_snapshots and epoch > cfg.epochs - keep_snapshots:
                for kind, candidate in candidates.items():
                    _save_snapshot(ckpt_dir / "snapshots" / f"epoch{epoch:03d}-{kind}.safetensors", candidate)
            save_checkpoint(ckpt_dir, {
                "config": asdict(cfg), "epoch": epoch, "step": step, "elapsed_s": elapsed,
                "net": net.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                "opt": opt.state_dict(), "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
                "device_type": device.type, "data_fingerprint": data["fingerprint"], "history": history,
                "best_score": best[0], "best_state": best[1], "best_info": best[2]})
        if progress:
            metrics = {k: float(v) for k, v in row.items() if k.endswith(("_auc", "_auc_ema"))}
            progress(EpochReport(epoch, cfg.epochs, loss, metrics, ips, elapsed,
                                 elapsed / epoch * (cfg.epochs - epoch), improved))

    assert best is not None
    final = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format)
    final.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in best[1].items()})
    weights_check = fp16_agreement(final, evals.get(select_on, (None,))[0], spec)
    card = {
        "name": "pneumo-densenet121",
        "version": _version_stamp(),
        "architecture": "densenet121",
        "task": "binary: PNEUMONIA vs NORMAL on frontal chest radiographs",
        "labels": list(LABELS),
        "positive_label": LABELS[1],
        "input": spec,
        "temperature": 1.0,
        "operating_points": {},
        "default_operating_point": "balanced",
        "initialisation": init,
        "training": {**asdict(cfg), "selected": best[2], "device": _device_name(device),
                     "seconds": round(time.perf_counter() - t0, 1)},
        "data": data,
        "history": history,
        "weights_check": weights_check,
        "notes": provenance_notes(init, device, cfg),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
    }
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        card = save_model(final, card, staging)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()          # empty (checked above)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FitResult(out_dir, card, history)


def _save_snapshot(path: Path, net: nn.Module) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()
                                   if v.is_floating_point()}))


DATA_CITATION = ("Kermany DS, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
                 "Images for Classification. Mendeley Data v2, 2018, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0); "
                 "Kermany et al., Cell 172(5):1122-1131, 2018.")


def provenance_notes(init: dict[str, Any], device: torch.device, cfg: TrainConfig) -> list[str]:
    """Plain statements for the card: how this model came to be, and what that implies."""
    notes = []
    if init["kind"] == "scratch":
        notes.append("Trained from scratch: no ImageNet (or other pretrained) weights were used.")
    elif init["kind"] == "checkpoint":
        notes.append(f"Fine-tuned from our own model {init.get('parent_version')}.")
    else:
        notes.append("Initialised from torchvision's ImageNet weights for DenseNet-121.")
    notes.append(f"Trained on {'a GPU' if device.type == 'cuda' else 'CPU'} for {cfg.epochs} epochs at "
                 f"{cfg.image_size}x{cfg.image_size} px.")
    notes.append("Validated on pediatric (1-5 years) frontal chest films only.")
    return notes


def fp16_agreement(net: nn.Module, pixels: torch.Tensor | None, spec: dict) -> dict[str, Any]:
    """Weights ship as fp16: compare the fp32 network's probabilities with the fp16-rounded one's."""
    if pixels is None or len(pixels) == 0:
        return {}
    half = copy.deepcopy(net)
    half.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in net.state_dict().items()})
    p32 = torch.sigmoid(torch.from_numpy(predict_logits(net, pixels, spec)))
    p16 = torch.sigmoid(torch.from_numpy(predict_logits(half, pixels, spec)))
    return {"fp16_vs_fp32_max_abs_prob_diff": float((p32 - p16).abs().max()), "films": int(len(pixels))}


def _version_stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False
