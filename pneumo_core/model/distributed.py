"""Training in several processes: torchrun starts them, DistributedDataParallel keeps their weights in step.

    python -m pneumo_core train ... --nproc 2        # = torchrun --standalone --nproc-per-node 2 -m pneumo_core train ...

Each process (a rank) decodes the films into the same cached tensor and draws the same shuffled order of them
from the run's generator; ``shard`` gives a rank its part of that order as ``DistributedSampler`` does (padded
to a multiple of the world size, rank r takes every world-size-th film from r), so each global batch of the
single-process run is split across the ranks, film for film. ``TrainConfig.batch_size`` is the global batch.

Only rank 0 writes (checkpoints, the model folder, logs, audit events). After each epoch rank 0's buffers and
averaged model are broadcast and its metrics row shared, so the weights, the EMA, the metrics and the model
selection are the same on every rank.

No torch.distributed state exists in a single process: ``World.single()`` and every helper here are no-ops
there, so single-process training computes exactly what it did before.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel

from pneumo_core.errors import SettingsError, TrainingCancelled

# torchrun sets these in each process it starts (``torch.distributed.run``).
_RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# A collective that waits this long means a rank has gone; torchrun stops the others well before.
_TIMEOUT = dt.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """Which process this is among how many (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None       # "nccl" (CUDA) or "gloo" (CPU); None in a single process

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self, cfg_batch: int, lr: float, sync_bn: bool) -> dict[str, Any]:
        """What the model card records of the run's processes."""
        return {"world_size": self.size, "backend": self.backend, "global_batch": cfg_batch,
                "per_rank_batch": cfg_batch // self.size, "lr": lr,
                "sync_bn": bool(sync_bn and self.distributed)}


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in _RANK_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def is_main_process() -> bool:
    """Rank 0 of torchrun's processes, or a single process (before the process group is joined)."""
    return not launched_by_torchrun() or int(os.environ["RANK"]) == 0


def join_world(device_type: str) -> World:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); a single process when not under
    torchrun. Under torchrun a SIGTERM (a cancel, or torchrun stopping the ranks after one failed) raises
    ``TrainingCancelled``, so staging folders are removed on the way out."""
    if not launched_by_torchrun():
        return World()
    rank, size, local = (int(os.environ[k]) for k in _RANK_ENV)
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=_TIMEOUT)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:     # a job's worker has its own cancel handler
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
        _stop_with_parent()
    return World(rank, size, local, backend)


def _stop_with_parent() -> None:
    """torchrun starts each rank in a session of its own, so a rank outlives a torchrun that is killed outright
    (SIGKILL: no chance to stop its ranks). A rank whose parent is gone stops itself the way a cancel does."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop_on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise TrainingCancelled(f"Rank {os.environ.get('RANK', '?')} was stopped; no model was written.")


def leave_world(world: World) -> None:
    """Wait for every rank, then close the process group (each rank does, once its training is done)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device_for(world: World, device: torch.device) -> torch.device:
    """Under torchrun each rank trains on its own GPU (``cuda:LOCAL_RANK``)."""
    if world.distributed and device.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return device


def check_world(world: World, batch_size: int, device: torch.device, sync_bn: bool) -> None:
    """Refuse, before any work, what the world cannot do: a global batch that does not split evenly across the
    ranks, and SyncBatchNorm without GPUs (PyTorch's SyncBatchNorm synchronises CUDA tensors only)."""
    if batch_size % world.size:
        raise SettingsError(f"The batch size ({batch_size}) is the global batch: it must be a multiple of the "
                            f"number of processes ({world.size}).")
    if sync_bn and world.distributed and device.type != "cuda":
        raise SettingsError("SyncBatchNorm needs GPUs (PyTorch synchronises CUDA tensors only); train without "
                            "--sync-bn on CPU.")


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of an epoch's order, with ``DistributedSampler``'s semantics: padded (by wrapping
    round) to a multiple of the world size, then every ``world.size``-th index from ``world.rank``. The first
    ``k`` films of rank r's part are the films at positions r, r+W, ... of the first ``k*W`` of ``order``."""
    if not world.distributed:
        return order
    pad = (-len(order)) % world.size
    if pad:
        order = torch.cat([order, order[:pad]])
    return order[world.rank::world.size]


def augment_generator(world: World, seed: int, epoch: int, device: torch.device) -> torch.Generator | None:
    """Each rank augments its films with draws of its own (so two ranks never share a crop), made from the seed,
    the epoch and the rank, so a run resumed on any number of processes draws them again. None: a single
    process, whose augmentation draws from the run's generator, as it always has."""
    if not world.distributed:
        return None
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch * 1_009 + world.rank)


def sync_batchnorm(net: nn.Module, world: World, sync_bn: bool) -> nn.Module:
    """Under torchrun, with ``sync_bn``, the network's BatchNorm layers become SyncBatchNorm (statistics over the
    global batch rather than each rank's share of it); else the network as it is."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(net) if sync_bn and world.distributed else net


def data_parallel(net: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The module the training steps call: under torchrun, the network in DistributedDataParallel (which
    starts every rank from rank 0's weights and averages the gradients of each step); else the network."""
    if not world.distributed:
        return net
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(net, device_ids=ids)


def plain_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` with any SyncBatchNorm layer turned back into BatchNorm2d (the same weights): the saved model
    is the ordinary network, and evaluation runs without a process group."""
    for name, child in net.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(net, name, bn.to(child.weight.device))
        else:
            plain_batchnorm(child)
    return net


def mean_over_ranks(value: torch.Tensor, world: World) -> float:
    """The mean of a scalar over the ranks (each rank's mean loss -> the global batch's)."""
    if world.distributed:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world.size
    return float(value)


def align(world: World, net: nn.Module, ema: AveragedModel | None) -> None:
    """After an epoch, make every rank hold rank 0's network buffers (BatchNorm running statistics, which
    each rank updated on its own films) and averaged model, bit for bit. The parameters are already equal
    (DDP averaged every gradient); they are sent too, so equality does not rest on identical arithmetic."""
    if not world.distributed:
        return
    modules = [net] if ema is None else [net, ema]
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def from_main(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when it is true on any (a cancel seen by one rank stops them all together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if world.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def world_size_from_env() -> int:
    """How many processes torchrun started (1 without torchrun), before the process group is joined."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs ``python -m pneumo_core ARGS`` in ``nproc`` processes on this machine
    (torchrun's standalone rendezvous: a free port on localhost)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--module", "pneumo_core", *args]
