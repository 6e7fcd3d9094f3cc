"""DenseNet-121 with a one-logit pneumonia head: one factory for every initialisation (scratch, ImageNet,
a checkpoint), ensembles of up to three, the input spec a card records, and the names of a model
folder's files (``store.py`` writes and reads the folders).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pneumo_core.errors import ModelLoadError, WeightsUnavailableError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_SCHEMA = 1
LABELS = ("NORMAL", "PNEUMONIA")
# ImageNet statistics: the DenseNet stem expects them whatever the initialisation,
# so a scratch model and an ImageNet one share preprocessing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_input_spec(size: int = 224) -> dict[str, Any]:
    """How films become tensors; stored in the card and read by preprocess."""
    return {
        "size": int(size),
        "resize": "squash",          # straight to size x size, like the training data
        "interpolation": "area",
        "channels": 3,               # grey replicated, so ImageNet weights fit
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def build_densenet121(dropout: float = 0.0) -> nn.Module:
    """torchvision's densenet121 with a single-logit head (P(pneumonia) via sigmoid)."""
    from torchvision.models import densenet121  # torchvision is heavy: imported where a network is built

    net = densenet121(weights=None, drop_rate=0.0)
    in_features = net.classifier.in_features
    net.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, 1)) if dropout else nn.Linear(in_features, 1)
    return net


MAX_MEMBERS = 3


class Ensemble(nn.Module):
    """Up to three DenseNet-121s whose logits are averaged: to every caller, one network.

    ``forward`` returns the mean logit, so calibration, operating points,
    evaluation, triage and Grad-CAM (which backpropagates that mean into every
    member) treat the ensemble as a single model.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not 1 <= len(members) <= MAX_MEMBERS:
            raise ValueError(f"An ensemble has 1 to {MAX_MEMBERS} members, not {len(members)}.")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def members_of(net: nn.Module) -> list[nn.Module]:
    """The DenseNets inside ``net``: itself, or an ensemble's members."""
    return list(net.members) if isinstance(net, Ensemble) else [net]


# torchvision's old checkpoints name dense-layer params "norm.1.weight"; the module says "norm1.weight".
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def imagenet_weights_path() -> Path:
    """Where torchvision's weights API caches DenseNet-121's ImageNet file (under TORCH_HOME)."""
    from torchvision.models import DenseNet121_Weights  # heavy: deferred to where it is needed

    url = DenseNet121_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_imagenet_backbone(net: nn.Module) -> None:
    """Copy ImageNet features into ``net`` from torchvision's cache; never downloads.

    Raises WeightsUnavailableError naming the file and folder when the cache lacks it.
    """
    from torchvision.models import DenseNet121_Weights  # heavy: deferred to where it is needed

    path = imagenet_weights_path()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"ImageNet weights for DenseNet-121 are not cached on this machine: put "
            f"{path.name} in {path.parent} (torchvision's cache under TORCH_HOME), "
            f"or use --init scratch."
        )
    try:
        # The file is already cached, so this reads it; weights_only keeps the load safe.
        state = DenseNet121_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # a corrupt stand-in, a pickle with code in it, ...
        raise WeightsUnavailableError(f"The cached ImageNet weights at {path} could not be read: {exc}") from exc
    state = {(_LEGACY_KEY.sub(r"\1\2", k)): v for k, v in state.items()}
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing, unexpected = net.features.load_state_dict(features, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]   # absent from the published file
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"The cached ImageNet weights at {path} do not fit DenseNet-121 "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors)."
        )


def create_model(init: str = "scratch", *, dropout: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    """One factory for every initialisation: 'scratch', 'imagenet', or a model folder / .safetensors path.

    Returns the network (fp32, train mode) and a description of the initialisation for the card.
    """
    net = build_densenet121(dropout)
    if init == "scratch":
        return net, {"kind": "scratch"}
    if init == "imagenet":
        load_imagenet_backbone(net)
        return net, {"kind": "imagenet", "source": "torchvision DenseNet121_Weights.IMAGENET1K_V1"}
    path = Path(init)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise ModelLoadError(f"--init must be 'scratch', 'imagenet' or a model folder/.safetensors file; {init!r} is none of these.")
    load_state(net, read_safetensors(weights))
    parent_card = path / CARD_FILE if path.is_dir() else weights.with_name(CARD_FILE)
    parent = json.loads(parent_card.read_text()).get("version") if parent_card.is_file() else None
    return net, {"kind": "checkpoint", "source": weights.name, "parent_version": parent}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors; ModelLoadError when it cannot be read."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"The weights file {path.name} is unreadable or truncated.") from exc


def load_state(net: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into ``net`` (cast to its dtypes); ModelLoadError when it does not fit."""
    own = net.state_dict()
    # A checkpoint saved with or without head dropout differs only in the head's key names.
    fixed = {}
    for k, v in state.items():
        if k not in own and k.startswith("classifier"):
            alt = "classifier.weight" if k.endswith("weight") else "classifier.bias"
            alt = alt if alt in own else k.replace("classifier.", "classifier.1.")
            k = alt
        fixed[k] = v
    try:
        net.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in fixed.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError("The weights do not fit a DenseNet-121 with a pneumonia head.") from exc
