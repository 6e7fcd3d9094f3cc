"""Turning one training run into candidate models, and comparing them fairly on the same films.

A run with ``fit(..., checkpoint_dir=D, keep_snapshots=N)`` leaves the raw and
EMA weights of its last N epochs in ``D/snapshots``. From those, at no extra
training cost, come: the final EMA or raw weights, weight averages (SWA, with
BatchNorm statistics re-estimated on the training films), snapshot ensembles,
and any of them evaluated at another input size (FixRes).

Candidates are compared by a paired bootstrap over the same films: with 314
external films, AUC intervals are about +-0.015 wide, and the best of several
candidates is flattered by chance, so a candidate only replaces the reference
when the whole 95% interval of its AUC gain is above zero.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from pneumo_core.ingest.preprocess import normalise
from pneumo_core.model.metrics import rank_auc, safe_auc
from pneumo_core.model.network import Ensemble, build_densenet121

SNAPSHOT = re.compile(r"epoch(\d{3})-(raw|ema)\.safetensors$")


def snapshots(ckpt_dir: str | Path) -> dict[tuple[int, str], Path]:
    """{(epoch, 'raw'|'ema'): path} of the snapshots a run kept."""
    folder = Path(ckpt_dir) / "snapshots"
    out = {}
    for p in sorted(folder.glob("epoch*.safetensors")) if folder.is_dir() else []:
        m = SNAPSHOT.search(p.name)
        if m:
            out[(int(m.group(1)), m.group(2))] = p
    return out


def load_snapshot(path: str | Path) -> nn.Module:
    """A DenseNet-121 (fp32, eval mode) from a snapshot (floating-point tensors only)."""
    from safetensors.torch import load_file

    net = build_densenet121()
    state = load_file(str(path))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"{Path(path).name} does not fit a DenseNet-121 with a pneumonia head.")
    return net.eval()


def average_weights(paths: Sequence[str | Path]) -> nn.Module:
    """Uniform average of several snapshots' parameters (SWA). BatchNorm statistics must be re-estimated."""
    nets = [load_snapshot(p) for p in paths]
    avg = nets[0]
    with torch.no_grad():
        params = [dict(n.named_parameters()) for n in nets]
        for name, p in avg.named_parameters():
            p.copy_(torch.stack([q[name] for q in params]).mean(0))
    return avg


@torch.no_grad()
def update_bn(net: nn.Module, pixels: torch.Tensor, spec: dict, *, batch_size: int = 64) -> nn.Module:
    """Re-estimate BatchNorm running statistics over uint8 films (N x S x S), as torch's SWA does."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                      # cumulative average over every batch
    net.train()
    for i in range(0, len(pixels), batch_size):
        x = normalise(pixels[i:i + batch_size].unsqueeze(1).float().div(255.0), spec)
        net(x.contiguous(memory_format=torch.channels_last))
    return net.eval()


def ensemble(nets: Sequence[nn.Module]) -> Ensemble:
    return Ensemble(list(nets)).eval()


def _boot_aucs(y: np.ndarray, scores: Sequence[np.ndarray], n_boot: int, seed: int) -> tuple[np.ndarray, ...]:
    """AUC of each score vector on the same bootstrap resamples of films (rank identity, ties handled)."""
    y = np.asarray(y).astype(int)
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    yb = y[idx]
    ok = (yb.min(1) == 0) & (yb.max(1) == 1)
    yb, idx = yb[ok], idx[ok]
    return tuple(rank_auc(yb == 1, np.asarray(s, float)[idx]) for s in scores)


def auc_ci(y: np.ndarray, s: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> list[float]:
    (a,) = _boot_aucs(y, [s], n_boot, seed)
    return [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))]


def paired_auc(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """AUC of scores ``a`` minus AUC of ``b`` on the same films: point, 95% paired-bootstrap interval,
    and the share of resamples where ``a`` is better."""
    y = np.asarray(y).astype(int)
    a_b, b_b = _boot_aucs(y, [a, b], n_boot, seed)
    d = a_b - b_b
    return {"delta_auc": safe_auc(y, np.asarray(a, float)) - safe_auc(y, np.asarray(b, float)),
            "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
            "p_better": float((d > 0).mean()), "resamples": int(len(d))}


VERDICTS = ("better", "not distinguishable", "worse")


def paired_verdict(y: np.ndarray, new: np.ndarray, active: np.ndarray, *, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """The new model against the active one on the same films: ``paired_auc`` (new minus active) with a plain
    verdict, "better" or "worse" only when the whole 95% interval of the AUC difference is on one side of zero,
    and whether the films are enough to act on (``evaluate.too_few_films``). With fewer than two films of a
    class the AUCs are undefined: the verdict is None."""
    from pneumo_core.model.metrics import too_few_films

    y = np.asarray(y).astype(int)
    n_normal, n_pneumonia = int((y == 0).sum()), int((y == 1).sum())
    out: dict[str, Any] = {"n_normal": n_normal, "n_pneumonia": n_pneumonia,
                           "enough": not too_few_films(n_normal, n_pneumonia),
                           "method": f"paired bootstrap over the same films ({n_boot} resamples) of the AUC "
                                     f"difference, new minus active"}
    if min(n_normal, n_pneumonia) < 2:
        return {**out, "verdict": None}
    result = paired_auc(y, new, active, n_boot=n_boot, seed=seed)
    lo, hi = result["ci95"]
    return {**out, **result, "verdict": "better" if lo > 0 else "worse" if hi < 0 else "not distinguishable"}
