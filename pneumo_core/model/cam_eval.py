"""How faithful is a Grad-CAM map? ROAD (Rong et al. 2022) via ``pytorch_grad_cam.metrics``.

ROAD removes the pixels a map calls most relevant (MoRF) or least relevant
(LeRF), fills them by noisy linear imputation (so the network does not just
react to a hole), and measures the change in the explained logit. The
combined score is ``(LeRF change - MoRF change) / 2``, averaged over removal
percentiles: higher means that removing what the map points at hurts the
pneumonia logit more than removing what it ignores. A map that carries no
information about the network (a random map) scores about zero.

``compare`` scores every (layer, method) pair on the same films, with a
percentile bootstrap CI over films for each score and for its difference from
the best, and ``choose`` picks the layer and method the card records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pneumo_core.ingest.preprocess import to_batch
from pneumo_core.model.explain import LAYERS, METHODS, PneumoniaLogit, _cam_class, target_layers
from pneumo_core.model.predict import Predictor

PERCENTILES = (20, 40, 60, 80)
CANDIDATE_METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
MIN_GRID = 8                      # the floor: at least an 8 x 8 map


@dataclass(frozen=True)
class CamScore:
    layer: str
    method: str
    grid: tuple[int, int]           # feature-map size the map is computed at
    scores: np.ndarray              # per film ROAD combined score (logit units)

    def summary(self, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
        lo, hi = _boot_ci(self.scores, n_boot, seed)
        return {"layer": self.layer, "method": self.method, "grid": list(self.grid),
                "road_combined": float(self.scores.mean()), "ci95": [lo, hi], "films": int(len(self.scores))}


def _boot_ci(x: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), (n_boot, len(x)))
    means = x[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def cams_for(predictor: Predictor, x: torch.Tensor, layer: str, method: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Normalised maps (N x H x W at the input size) for the pneumonia logit, and the feature grid."""
    net = predictor.model.net
    layers = target_layers(net, layer)
    targets = [PneumoniaLogit(1.0) for _ in range(len(x))]
    with predictor.lock, torch.enable_grad(), _cam_class(method)(model=net, target_layers=layers) as cam:
        maps = cam(input_tensor=x.clone().requires_grad_(True), targets=targets)
        grid = tuple(cam.activations_and_grads.activations[0].shape[-2:])
    return np.nan_to_num(maps).astype(np.float32), grid  # type: ignore[return-value]


def random_maps(n: int, size: int, grid: int = MIN_GRID, seed: int = 0) -> np.ndarray:
    """Smooth random maps at ``grid`` resolution, upsampled: the no-information baseline."""
    import cv2

    rng = np.random.default_rng(seed)
    return np.stack([cv2.resize(rng.random((grid, grid)).astype(np.float32), (size, size),
                                interpolation=cv2.INTER_LINEAR) for _ in range(n)])


def road_scores(predictor: Predictor, x: torch.Tensor, maps: np.ndarray,
                percentiles: Sequence[int] = PERCENTILES) -> np.ndarray:
    from pytorch_grad_cam.metrics.road import ROADCombined

    torch.manual_seed(0)                          # the imputer adds noise
    metric = ROADCombined(percentiles=list(percentiles))
    targets = [PneumoniaLogit(1.0) for _ in range(len(x))]
    with predictor.lock, torch.no_grad():
        return np.asarray(metric(x, maps, targets, predictor.model.net), dtype=float).reshape(-1)


def compare(predictor: Predictor, pixels: Sequence[np.ndarray], *, layers: Sequence[str] = LAYERS,
            methods: Sequence[str] = CANDIDATE_METHODS,
            percentiles: Sequence[int] = PERCENTILES, batch_size: int = 8) -> list[CamScore]:
    """ROAD combined score per film for every (layer, method) and for a random-map baseline."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"Unknown CAM method {m!r}; choose from {', '.join(METHODS)}.")
    for layer in layers:
        if layer not in LAYERS:
            raise ValueError(f"Unknown Grad-CAM layer {layer!r}; choose from {', '.join(LAYERS)}.")
    out: list[CamScore] = []
    size = int(predictor.card["input"]["size"])
    batches = [to_batch(list(pixels[i:i + batch_size]), predictor.card["input"]).to(predictor.model.device)
               for i in range(0, len(pixels), batch_size)]
    for layer in layers:
        for method in methods:
            scores, grid = [], (0, 0)
            for x in batches:
                maps, grid = cams_for(predictor, x, layer, method)
                scores.append(road_scores(predictor, x, maps, percentiles))
            out.append(CamScore(layer, method, grid, np.concatenate(scores)))
    scores = [road_scores(predictor, x, random_maps(len(x), size, seed=i), percentiles)
              for i, x in enumerate(batches)]
    out.append(CamScore("random", "random map", (MIN_GRID, MIN_GRID), np.concatenate(scores)))
    return out


def choose(results: Sequence[CamScore], *, min_grid: int = MIN_GRID, n_boot: int = 1000) -> dict[str, Any]:
    """The most faithful (layer, method) among those with at least a ``min_grid`` map.

    Returns the card's ``explain`` entry: the choice, its score and CI, and the paired difference
    (bootstrap over the same films) from each other candidate."""
    eligible = [r for r in results if r.layer != "random" and min(r.grid) >= min_grid]
    if not eligible:
        raise ValueError(f"No candidate layer gives a map of at least {min_grid}x{min_grid}.")
    best = max(eligible, key=lambda r: r.scores.mean())
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(best.scores), (n_boot, len(best.scores)))
    table = []
    for r in results:
        row = r.summary(n_boot)
        diff = (best.scores - r.scores)[idx].mean(1)
        row["best_minus_this_ci95"] = [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]
        row["eligible"] = r in eligible
        table.append(row)
    return {"layer": best.layer, "method": best.method, "grid": list(best.grid),
            "faithfulness": {"metric": "ROAD combined (pytorch_grad_cam.metrics.road), pneumonia logit",
                             "percentiles": list(PERCENTILES), "score": float(best.scores.mean()),
                             "ci95": best.summary(n_boot)["ci95"], "table": table}}
