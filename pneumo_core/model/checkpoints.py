"""A training run's state (``Run``: what the loop carries from epoch to epoch) and what a run writes:
``last.pt`` after every epoch (to resume from), the weights of the last epochs as snapshots (for weight
averaging and snapshot ensembles, ``model.compare``), and the new model folder, staged beside its place
and moved there in one rename (so a failed or cancelled run leaves nothing half-written).

A checkpoint stores its run's configuration, and a run resumes only with the same settings, on the same
kind of device and the same data, so a resumed run draws the batches the uninterrupted one would have. The number
of processes (torchrun's world size) may differ: the batch size is the global batch, every rank holds the same
state, and rank 0 alone writes the checkpoint, so any number of ranks can read it back.
Saving (``save_epoch``) and restoring (``resume_run``) sit side by side, so the format is read in one place.
"""

from __future__ import annotations

import io
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save as save_safetensors
from torch import nn
from torch.optim.swa_utils import AveragedModel

from pneumo_core.files import atomic_write_bytes
from pneumo_core.model.augment import AugmentConfig
from pneumo_core.model.distributed import World

CHECKPOINT = "last.pt"
SNAPSHOTS = "snapshots"

# Settings that do not change what is computed, so a run may resume with other values. (``device`` and
# ``bf16`` do; ``device`` may say "auto", so the device actually used is checked separately.)
_RESUME_MAY_DIFFER = {"workers", "threads"}
# Settings added after checkpoints were first written, with the value a checkpoint without them was made with.
_ADDED_LATER = {"sync_bn": False}


@dataclass
class Best:
    """The best weights so far, by AUC on the selection split."""
    score: float
    state: dict[str, torch.Tensor]   # on the CPU
    info: dict[str, Any]             # epoch, weights (raw | ema), the selection split's AUC


@dataclass
class Run:
    """What the training loop carries from step to step and epoch to epoch; a checkpoint saves it with the
    network and the optimiser."""
    x: torch.Tensor                  # training films, uint8 N x S x S on the device
    y: torch.Tensor                  # their labels, on the device
    spec: dict[str, Any]             # the model's input (size, normalisation)
    device: torch.device
    pos_weight: torch.Tensor
    augment: AugmentConfig | None
    generator: torch.Generator       # batch order and augmentation draw from it, so a seed fixes both
    ema: AveragedModel | None        # the averaged model; None when ema_decay is 0
    steps_per_epoch: int
    total_steps: int
    warmup: int
    step: int = 0
    epoch: int = 0                   # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Best | None = None
    world: World = field(default_factory=World)     # this process among torchrun's (one, without torchrun)


def save_checkpoint(ckpt_dir: Path, payload: dict[str, Any]) -> None:
    """Atomically replace ``ckpt_dir/last.pt`` (a crash mid-write keeps the previous epoch's)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(ckpt_dir / CHECKPOINT, buf.getvalue())


def load_checkpoint(ckpt_dir: Path | None, config: Mapping[str, Any], device_type: str) -> dict[str, Any] | None:
    """The run's last checkpoint, if any, after checking it belongs to the same configuration (``config``:
    the run's settings as a dict) and the same kind of device."""
    if ckpt_dir is None or not (ckpt_dir / CHECKPOINT).exists():
        return None
    ckpt = torch.load(ckpt_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    saved = {k: v for k, v in {**_ADDED_LATER, **ckpt["config"]}.items() if k not in _RESUME_MAY_DIFFER}
    now = {k: v for k, v in config.items() if k not in _RESUME_MAY_DIFFER}
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(f"The checkpoint in {ckpt_dir} was made with other settings ({', '.join(diff)}); "
                         "use a new checkpoint folder or the same settings.")
    if ckpt.get("device_type", device_type) != device_type:
        raise ValueError(f"The checkpoint in {ckpt_dir} was made on {ckpt['device_type']}, not "
                         f"{device_type}; a run resumes on the same kind of device.")
    return ckpt


def check_same_data(ckpt: Mapping[str, Any], ckpt_dir: Path | None, data_fingerprint: str) -> None:
    """A run resumes only on the films it started with (once they are decoded, their fingerprint is known)."""
    if ckpt.get("data_fingerprint", data_fingerprint) != data_fingerprint:
        raise ValueError(f"The checkpoint in {ckpt_dir} was made on other data (the films or their labels "
                         "differ); use a new checkpoint folder.")


def save_epoch(ckpt_dir: Path, run: Run, net: nn.Module, opt: torch.optim.Optimizer,
               candidates: Mapping[str, nn.Module], *, config: Mapping[str, Any], keep_snapshots: int,
               elapsed: float, data_fingerprint: str) -> None:
    """After each epoch: the snapshots of the last ``keep_snapshots`` epochs, and the checkpoint to resume from."""
    if keep_snapshots and run.epoch > config["epochs"] - keep_snapshots:
        for kind, candidate in candidates.items():
            save_snapshot(ckpt_dir, run.epoch, kind, candidate)
    save_checkpoint(ckpt_dir, {
        "config": dict(config), "epoch": run.epoch, "step": run.step, "elapsed_s": elapsed,
        "net": net.state_dict(), "ema": run.ema.state_dict() if run.ema is not None else {},
        "opt": opt.state_dict(), "generator": run.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else [],
        "device_type": run.device.type, "world_size": run.world.size, "data_fingerprint": data_fingerprint,
        "history": run.history,
        "best_score": run.best.score, "best_state": run.best.state, "best_info": run.best.info})


def resume_run(ckpt: Mapping[str, Any], net: nn.Module, opt: torch.optim.Optimizer, run: Run) -> float:
    """Continue a run from its checkpoint (network, EMA, optimiser, random generators, history, best so far).
    Returns the seconds the run had already taken."""
    net.load_state_dict(ckpt["net"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    opt.load_state_dict(ckpt["opt"])
    run.generator.set_state(ckpt["generator"])
    if "torch_rng" in ckpt:                         # mixup's Beta draw uses the global generator
        torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") and run.device.type == "cuda":   # head dropout on CUDA
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    run.step, run.epoch, run.history = ckpt["step"], ckpt["epoch"], list(ckpt["history"])
    run.best = Best(ckpt["best_score"], ckpt["best_state"], dict(ckpt["best_info"]))
    return ckpt["elapsed_s"]


def save_snapshot(ckpt_dir: Path, epoch: int, kind: str, net: nn.Module) -> None:
    """The floating-point weights of ``net`` (``kind``: raw | ema) after ``epoch``, where
    ``model.compare.snapshots`` finds them."""
    path = ckpt_dir / SNAPSHOTS / f"epoch{epoch:03d}-{kind}.safetensors"
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}
    atomic_write_bytes(path, save_safetensors(tensors))


def check_out_dir(out_dir: str | Path) -> Path:
    """A model folder is written only where there is none: ``out_dir`` must not exist or be empty."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} already exists and is not empty; choose a new folder.")
    return out_dir


@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """A sibling folder (``.NAME.partial-PID``) to write ``out_dir`` in. It becomes ``out_dir`` in one rename
    when the block ends without an error, and is removed whatever happens. ``out_dir`` must not exist or be
    empty (``check_out_dir``, before the work)."""
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if out_dir.exists():
            out_dir.rmdir()          # empty (checked before training)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
