"""Batch augmentation on the training device (GPU or CPU), pure torch.

Films from other hospitals differ in exposure, contrast, framing and
positioning; augmentation simulates that so the network stops keying on one
scanner's look. Input and output: N x 1 x H x W float in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08          # fraction of the side
    shear_deg: float = 5.0
    brightness: float = 0.12         # additive, +-
    contrast: tuple[float, float] = (0.7, 1.35)
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.03          # max gaussian noise sigma (applied to half the batch)
    blur_p: float = 0.2              # chance of a mild blur (softer detectors)
    erase_p: float = 0.5             # random erasing: chance per image
    erase_area: tuple[float, float] = (0.02, 0.15)

    @classmethod
    def mild(cls) -> "AugmentConfig":
        return cls(rotate_deg=5, scale=(0.95, 1.05), translate=0.03, shear_deg=0, brightness=0.05,
                   contrast=(0.9, 1.1), gamma=(0.9, 1.1), noise_std=0.0, blur_p=0.0, erase_p=0.0)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def geometric(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-image random rotation, scale, shear and translation in one grid_sample."""
    n, dev = x.shape[0], x.device
    ang = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, g, dev) * math.pi / 180
    shear = _uniform(n, -cfg.shear_deg, cfg.shear_deg, g, dev) * math.pi / 180
    scale = _uniform(n, *cfg.scale, g, dev)
    tx = _uniform(n, -cfg.translate, cfg.translate, g, dev) * 2
    ty = _uniform(n, -cfg.translate, cfg.translate, g, dev) * 2
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + torch.tan(shear) * cos, tx], 1),
        torch.stack([sin, cos, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def intensity(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Exposure and contrast differences between machines: gamma, contrast, brightness, blur, noise."""
    n, dev = x.shape[0], x.device
    view = (n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), g, dev)).view(view)
    x = x.clamp(0, 1).pow(gamma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _uniform(n, *cfg.contrast, g, dev).view(view) + mean
    x = x + _uniform(n, -cfg.brightness, cfg.brightness, g, dev).view(view)
    if cfg.blur_p > 0:
        blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        pick = (torch.rand(n, generator=g, device=dev) < cfg.blur_p).view(view)
        x = torch.where(pick, blurred, x)
    if cfg.noise_std > 0:
        sigma = _uniform(n, 0, cfg.noise_std, g, dev).view(view) * (torch.rand(view, generator=g, device=dev) < 0.5)
        x = x + torch.randn(x.shape, generator=g, device=dev) * sigma
    return x.clamp(0, 1)


def random_erase(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One random rectangle per chosen image, filled with noise (Zhong et al. 2017)."""
    n, _, h, w = x.shape
    dev = x.device
    area = _uniform(n, *cfg.erase_area, g, dev) * h * w
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), g, dev))
    eh = (area * aspect).sqrt().clamp(1, h)
    ew = (area / aspect).sqrt().clamp(1, w)
    y0 = torch.rand(n, generator=g, device=dev) * (h - eh)
    x0 = torch.rand(n, generator=g, device=dev) * (w - ew)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    box = ((ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1))
           & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1)))
    box &= (torch.rand(n, generator=g, device=dev) < cfg.erase_p).view(n, 1, 1)
    fill = torch.rand(x.shape, generator=g, device=dev)
    return torch.where(box.unsqueeze(1), fill, x)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    x = geometric(x, cfg, g)
    x = intensity(x, cfg, g)
    if cfg.erase_p > 0:
        x = random_erase(x, cfg, g)
    return x


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Convex combinations of pairs (Zhang et al. 2018); soft labels for BCE."""
    if alpha <= 0:
        return x, y
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)
    perm = torch.randperm(x.shape[0], generator=g, device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
