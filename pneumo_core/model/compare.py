"""Turning one training run into candidate models, and comparing them fairly on the same films: candidates
with each other, and a new version with the active one (``compare_with_active``, a job's comparison.json).

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

import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pneumo_core.errors import ModelLoadError
from pneumo_core.ingest.folders import discover_splits
from pneumo_core.ingest.preprocess import normalise
from pneumo_core.model.evaluation import EVAL_DIR, FolderScores, evaluate_points, score_folder
from pneumo_core.model.metrics import rank_auc, safe_auc, sigmoid, too_few_films
from pneumo_core.model.network import Ensemble, build_densenet121
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import load_model

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


def compare_with_active(model_dir: Path, card: Mapping[str, Any], data: Path, baseline: Mapping[str, Any] | None,
                        *, n_boot: int, device: Any = "cpu",
                        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The new model and the model it would replace, on the same films: metrics with 95% CIs per split and
    operating point (each model at its own thresholds), and per split a paired comparison of their AUCs on
    those films with a verdict (``paired_verdict``); ``decision_split`` names the split the verdict
    to act on comes from (the first of test/, external/, val/ not used to fit the new model, if any).
    ``baseline``: the active version (``{"path", "version"}``), or None when there is none."""
    folders = {s: p for s, p in discover_splits(data).items() if s in ("val", "test", "external")}
    candidate = {s: (card.get("metrics") or {}).get(s) or {} for s in folders}
    out: dict[str, Any] = {
        "candidate_version": card.get("version"),
        "active_version": (baseline or {}).get("version"),
        "splits": {s: {"candidate": candidate[s]} for s in folders},
        "calibrated_on": (card.get("calibration") or {}).get("fitted_on"),
        "note": f"The new model's temperature, thresholds and epoch were chosen on "
                f"{(card.get('calibration') or {}).get('fitted_on', 'val/')}, so its numbers there are optimistic; "
                f"the active model's thresholds come from its own calibration.",
    }
    if baseline and baseline.get("path"):
        try:
            predictor = Predictor(load_model(baseline["path"], device=device))
        except ModelLoadError as exc:
            out["active_error"] = str(exc)
            return out
        for split, folder in folders.items():
            log(f"evaluating the active model on {split}/")
            scores = score_folder(predictor, folder)
            out["splits"][split]["active"] = evaluate_points(predictor, folder, n_boot=n_boot, scores=scores)
            out["splits"][split]["paired"] = paired_on_split(model_dir, split, scores, predictor.temperature, n_boot)
        fitted = str(out["calibrated_on"] or "").rstrip("/")
        order = sorted(folders, key=lambda s: (s == fitted, ("test", "external", "val").index(s)))
        out["decision_split"] = order[0] if order else None
    return out


def paired_on_split(model_dir: Path, split: str, active: FolderScores, temperature: float,
                    n_boot: int) -> dict[str, Any]:
    """The new model's saved per-film probabilities on ``split`` (from its calibration on the same data)
    against the active model's ``active`` scores, film by film (matched by class and file name)."""
    try:
        saved = json.loads((model_dir / EVAL_DIR / f"{split}.json").read_text())["scores"]
        new = {(f, int(y)): float(p) for f, y, p in zip(saved["file"], saved["label"], saved["probability"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {"verdict": None, "error": f"the new model's per-film scores on {split}/ are missing"}
    keys = list(zip(active.files, active.labels.tolist()))
    if set(keys) != set(new) or len(keys) != len(new):
        return {"verdict": None, "error": f"the two models were not scored on the same films of {split}/"}
    y = np.asarray(active.labels, int)
    return paired_verdict(y, np.array([new[k] for k in keys]), sigmoid(active.logits / temperature),
                          n_boot=max(n_boot, 200))
