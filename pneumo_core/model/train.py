"""Training: a readable loop, a frozen config, and a progress callback as the only link to any UI.

    fit(data_dir, out_dir, TrainConfig(...), progress=print)

Films are decoded once into a uint8 tensor on the training device (``model.trainingdata``); augmentation
runs there too (pneumo_core.model.augment), so the GPU is not starved by a loader.
Model selection uses ``external/`` when present (the distribution users meet),
else ``val/``. ``external/`` is never trained on.

An epoch reads top to bottom in ``fit``: ``train_one_epoch`` (the steps), ``evaluate`` (AUC of the raw
and averaged weights on every held-out split), ``select`` (keep the best so far), a checkpoint, a progress
report. Then ``card_for`` describes the chosen weights. The run's state (``Run``) and its checkpoints are
in ``model.checkpoints``. A complete version (calibrated, with its guard) is made by
``model.pipeline.train_version``. Several processes (torchrun, DistributedDataParallel) are
``model.distributed``'s part.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pneumo_core.errors import TrainingCancelled
from pneumo_core.ingest.folders import ImageSet
from pneumo_core.ingest.preprocess import normalise
from pneumo_core.model import augment as aug
from pneumo_core.model.checkpoints import (
    Best,
    Run,
    check_out_dir,
    check_same_data,
    load_checkpoint,
    resume_run,
    save_epoch,
    staged,
)
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.distributed import (
    World,
    align,
    any_rank,
    augment_generator,
    check_world,
    data_parallel,
    device_for,
    from_main,
    join_world,
    leave_world,
    mean_over_ranks,
    plain_batchnorm,
    shard,
    sync_batchnorm,
)
from pneumo_core.model.metrics import safe_auc
from pneumo_core.model.network import LABELS, create_model, default_input_spec
from pneumo_core.model.store import code_version, save_model
from pneumo_core.model.trainingdata import prepare_data


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
    card: dict[str, Any]                     # empty on a rank other than 0 under torchrun (it wrote nothing)
    history: list[dict[str, Any]] = field(default_factory=list)
    selected: dict[str, torch.Tensor] = field(default_factory=dict)   # the chosen weights, on the CPU


Progress = Callable[[EpochReport], None]


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


def train_one_epoch(net: nn.Module, opt: torch.optim.Optimizer, run: Run, cfg: TrainConfig) -> float:
    """One pass over the training films in an order drawn from the run's generator; returns the mean loss.
    The learning rate follows ``lr_at`` step by step, and the averaged model follows every step.
    Under torchrun each rank takes its shard of the order (``distributed.shard``), ``batch_size / world size``
    films a step, and augments them with its own generator; the loss returned is the mean over the ranks."""
    net.train()
    order = shard(torch.randperm(len(run.x), generator=run.generator, device=run.device), run.world)
    draws = augment_generator(run.world, cfg.seed, run.epoch + 1, run.device)
    draws = run.generator if draws is None else draws
    batch = cfg.batch_size // run.world.size
    losses = []
    for i in range(run.steps_per_epoch):
        idx = order[i * batch:(i + 1) * batch]
        for group in opt.param_groups:
            group["lr"] = lr_at(run.step, run.total_steps, run.warmup, cfg.lr)
        x = run.x[idx].unsqueeze(1).float().div_(255.0)
        y = run.y[idx].float()
        if run.augment is not None:
            x = aug.augment(x, run.augment, draws)
        x, y = aug.mixup(x, y, cfg.mixup_alpha, draws)
        x = normalise(x, run.spec)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(run.device, cfg.bf16):
            logits = net(x).float().squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=run.pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if run.ema is not None:
            run.ema.update_parameters(net)
        losses.append(loss.detach())
        run.step += 1
    return mean_over_ranks(torch.stack(losses).mean(), run.world)


def _suffix(kind: str) -> str:
    return "" if kind == "raw" else "_ema"


def evaluate(candidates: Mapping[str, nn.Module], evals: Mapping[str, tuple[torch.Tensor, np.ndarray]],
             spec: dict, *, bf16: bool) -> dict[str, float]:
    """AUC of each candidate (raw, ema) on each held-out split: ``{split}_auc`` for the raw weights,
    ``{split}_auc_ema`` for the averaged ones."""
    return {f"{split}_auc{_suffix(kind)}": safe_auc(labels, predict_logits(candidate, px, spec, bf16=bf16))
            for kind, candidate in candidates.items() for split, (px, labels) in evals.items()}


def select(run: Run, candidates: Mapping[str, nn.Module], row: Mapping[str, Any], select_on: str) -> bool:
    """Keep the candidate with the best AUC on ``select_on`` so far (the first one, whatever its AUC);
    whether this epoch gave it."""
    improved = False
    for kind, candidate in candidates.items():
        score = row[f"{select_on}_auc{_suffix(kind)}"]
        if run.best is None or (not math.isnan(score) and score > run.best.score):
            run.best = Best(score, _snapshot(candidate),
                            {"epoch": row["epoch"], "weights": kind, f"{select_on}_auc": score})
            improved = True
    return improved


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def fit(data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig = TrainConfig(), *,
        progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
        checkpoint_dir: str | Path | None = None, keep_snapshots: int = 0,
        on_decoded: Callable[[], None] | None = None) -> FitResult:
    """Train a model and write it (weights + card) to ``out_dir``.

    ``out_dir`` must not exist or be empty. Everything is staged in a sibling folder and moved into place
    only when training succeeded, so a failed or cancelled run leaves nothing half-written.

    With ``checkpoint_dir`` the full training state (network, EMA, optimiser, random generator, history,
    best so far) is saved after every epoch, and a run started again with the same folder and settings
    resumes after the last finished epoch, with the same batches it would have drawn. ``keep_snapshots``
    also keeps the raw and EMA weights of the last that many epochs there (``snapshots/``), for weight
    averaging and snapshot ensembles.
    ``on_decoded`` is called once the films are decoded, before the first epoch (a job's phases).
    Under torchrun (``model.distributed``) every rank calls ``fit``: ``cfg.batch_size`` is the global batch,
    split across the ranks; only rank 0 reports progress, checkpoints and writes ``out_dir``, and the other
    ranks return a result with an empty card (and the same selected weights).
    """
    out_dir = check_out_dir(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    cfg, device, world = _settle(cfg)
    if not world.main:                      # one writer: only rank 0 reports, checkpoints and writes the model
        progress, on_decoded = None, None
    resume = load_checkpoint(ckpt_dir, asdict(cfg), device.type)
    net, init = create_model(cfg.init, dropout=cfg.dropout)       # fails fast, before decoding data
    spec = default_input_spec(cfg.image_size)
    sets, data = prepare_data(data_dir, spec, val_fraction=cfg.val_fraction, seed=cfg.seed,
                              max_images=cfg.max_images, workers=cfg.workers)
    if on_decoded:
        on_decoded()
    run, opt, net, model_for_steps = _start(net, sets["train"], spec, cfg, device, world)
    evals = {k: (torch.from_numpy(v.pixels), v.labels) for k, v in sets.items() if k != "train"}
    select_on = "external" if "external" in evals else "val"
    t0 = time.perf_counter()
    if resume is not None:
        check_same_data(resume, ckpt_dir, data["fingerprint"])
        t0 -= resume_run(resume, net, opt, run)
    for epoch in range(run.epoch + 1, cfg.epochs + 1):
        if any_rank(bool(should_stop and should_stop()), world):     # every rank stops at the same epoch
            raise TrainingCancelled("Training was cancelled; no model was written.")
        row, candidates, improved = _epoch(model_for_steps, net, opt, run, cfg, evals, select_on)
        run.epoch = epoch
        elapsed = time.perf_counter() - t0
        if ckpt_dir is not None and world.main:
            save_epoch(ckpt_dir, run, net, opt, candidates, config=asdict(cfg), keep_snapshots=keep_snapshots,
                       elapsed=elapsed, data_fingerprint=data["fingerprint"])
        if progress:
            progress(_report(row, cfg, elapsed, improved))
    leave_world(world)
    if not world.main:
        return FitResult(out_dir, {}, run.history, run.best.state)
    final = best_network(net, run.best)
    card = card_for(final, run, cfg, init=init, data=data, device=device, seconds=time.perf_counter() - t0,
                    check_on=evals.get(select_on, (None,))[0])
    with staged(out_dir) as staging:
        card = save_model(final, card, staging)
    return FitResult(out_dir, card, run.history, run.best.state)


def _epoch(model_for_steps: nn.Module, net: nn.Module, opt: torch.optim.Optimizer, run: Run, cfg: TrainConfig,
           evals: Mapping[str, tuple[torch.Tensor, np.ndarray]],
           select_on: str) -> tuple[dict[str, Any], dict[str, nn.Module], bool]:
    """One epoch: the steps, then the candidates (raw, ema) evaluated and the best so far kept. Under torchrun
    the ranks are aligned on rank 0's weights first, and rank 0 evaluates and shares its row, so every rank
    selects the same weights. Returns (the history row, the candidates, whether this epoch gave the best)."""
    te = time.perf_counter()
    loss = train_one_epoch(model_for_steps, opt, run, cfg)
    ips = run.steps_per_epoch * cfg.batch_size / (time.perf_counter() - te)
    last_lr = lr_at(run.step - 1, run.total_steps, run.warmup, cfg.lr)
    align(run.world, net, run.ema)
    row: dict[str, Any] = {"epoch": run.epoch + 1, "train_loss": loss, "lr": last_lr, "images_per_s": ips}
    candidates = {"raw": net} if run.ema is None else {"raw": net, "ema": run.ema.module}
    if run.world.main:
        row.update(evaluate(candidates, evals, run.spec, bf16=cfg.bf16))
    row = from_main(row, run.world)
    improved = select(run, candidates, row, select_on)
    run.history.append(row)
    return row, candidates, improved


def _settle(cfg: TrainConfig) -> tuple[TrainConfig, torch.device, World]:
    """Threads, seeds, device and processes (torchrun's, when it started this one) for a run, and its config
    as run (bf16 only where the device has it)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    world = join_world(device.type)
    device = device_for(world, device)
    check_world(world, cfg.batch_size, device, cfg.sync_bn)
    use_bf16 = cfg.bf16 and (device.type == "cuda" or _cpu_has_bf16())
    return replace(cfg, bf16=use_bf16), device, world


def _start(net: nn.Module, train: ImageSet, spec: dict, cfg: TrainConfig, device: torch.device,
           world: World) -> tuple[Run, torch.optim.Optimizer, nn.Module, nn.Module]:
    """The network on its device, its averaged twin, the optimiser, and the run before its first epoch.
    Returns also the network (with SyncBatchNorm under torchrun, when asked) and the module the steps call
    (in DistributedDataParallel under torchrun; compiled, when asked)."""
    x = torch.from_numpy(train.pixels).to(device)
    y = torch.from_numpy(train.labels).to(device)
    net = sync_batchnorm(net, world, cfg.sync_bn).to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = None
    if cfg.ema_decay > 0:
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    model_for_steps = data_parallel(net, world, device)
    model_for_steps = torch.compile(model_for_steps) if cfg.compile else model_for_steps
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_pos = int(y.sum())
    # Class imbalance: weight positives down so both classes carry equal total weight.
    pos_weight = torch.tensor((len(y) - n_pos) / max(1, n_pos), device=device)
    aug_cfg = {"strong": aug.AugmentConfig(), "mild": aug.AugmentConfig.mild(), "none": None}[cfg.augment]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(x) // cfg.batch_size)
    run = Run(x, y, spec, device, pos_weight, aug_cfg, generator, ema, steps_per_epoch,
              total_steps=steps_per_epoch * cfg.epochs, warmup=max(1, int(cfg.warmup_epochs * steps_per_epoch)),
              world=world)
    return run, opt, net, model_for_steps


def _report(row: Mapping[str, Any], cfg: TrainConfig, elapsed: float, improved: bool) -> EpochReport:
    epoch = row["epoch"]
    metrics = {k: float(v) for k, v in row.items() if k.endswith(("_auc", "_auc_ema"))}
    return EpochReport(epoch, cfg.epochs, row["train_loss"], metrics, row["images_per_s"], elapsed,
                       elapsed / epoch * (cfg.epochs - epoch), improved)


def best_network(net: nn.Module, best: Best) -> nn.Module:
    """A CPU fp32 copy of the network holding the selected weights."""
    final = plain_batchnorm(copy.deepcopy(net)).cpu().float().to(memory_format=torch.contiguous_format)
    final.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in best.state.items()})
    return final


def card_for(final: nn.Module, run: Run, cfg: TrainConfig, *, init: dict[str, Any], data: dict[str, Any],
             device: torch.device, seconds: float, check_on: torch.Tensor | None) -> dict[str, Any]:
    """The model card of the selected weights (before calibration fills in temperature, operating points and
    metrics). ``check_on``: the films the fp16 weights are checked against the fp32 ones on."""
    return {
        "name": "pneumo-densenet121",
        "version": _version_stamp(),
        "architecture": "densenet121",
        "task": "binary: PNEUMONIA vs NORMAL on frontal chest radiographs",
        "labels": list(LABELS),
        "positive_label": LABELS[1],
        "input": run.spec,
        "temperature": 1.0,
        "operating_points": {},
        "default_operating_point": "balanced",
        "initialisation": init,
        "training": {**asdict(cfg), "selected": run.best.info, "device": _device_name(device),
                     "seconds": round(seconds, 1), "processes": run.world.describe(cfg.batch_size, cfg.lr,
                                                                                     cfg.sync_bn)},
        "data": data,
        "history": run.history,
        "weights_check": fp16_agreement(final, check_on, run.spec),
        "notes": provenance_notes(init, device, cfg),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
    }


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
