"""Model folders on disk: saving a network (or an ensemble) with its model card, and loading one back.

A model on disk is a folder: ``model.safetensors`` (fp16) beside ``card.json``.
The card describes everything needed to use the weights (labels, input size,
normalisation, temperature, operating points) and where they came from
(training config, data fingerprint, initialisation, metrics, code version).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save
from torch import nn

from pneumo_core import __version__
from pneumo_core.errors import ModelLoadError
from pneumo_core.files import atomic_write_bytes, atomic_write_json, json_default, sha256_file
from pneumo_core.model.network import (
    CARD_FILE,
    CARD_SCHEMA,
    MAX_MEMBERS,
    WEIGHTS_FILE,
    Ensemble,
    build_densenet121,
    load_state,
    read_safetensors,
)
from pneumo_core.ops.integrity import check_card, sealed


def weight_files(card: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """(file, recorded sha256) of every weights file the card names: one, or each ensemble member."""
    members = (card.get("ensemble") or {}).get("members")
    if members:
        return [(str(m.get("file") or ""), m.get("sha256")) for m in members]
    weights = card.get("weights") or {}
    return [(str(weights.get("file") or WEIGHTS_FILE), weights.get("sha256"))]


def check_weight_files(model_dir: Path, card: Mapping[str, Any]) -> list[Path]:
    """Every weights file the card names, after checking it exists and matches its recorded sha256."""
    name = card.get("version", model_dir.name)
    files = weight_files(card)
    if len(files) > MAX_MEMBERS:
        raise ModelLoadError(f"The card of model {name} names {len(files)} ensemble members; at most "
                             f"{MAX_MEMBERS} are allowed.")
    paths = []
    for file, expected in files:
        path = model_dir / file
        if not file or Path(file).name != file or not path.is_file():
            raise ModelLoadError(f"The model {name} has no weights file {file or '(unnamed)'}.")
        if not expected:
            raise ModelLoadError(f"The card of model {name} records no sha256 for its weights ({file}), so they "
                                 f"cannot be checked. Refusing to use them.")
        if sha256_file(path) != expected:
            raise ModelLoadError(
                f"The weights of model {name} do not match their card "
                f"(sha256 differs): the file was changed or truncated. Refusing to use it.")
        paths.append(path)
    return paths


def code_version() -> str:
    """The git commit of this code, or the package version outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return f"{__version__}+{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def fp16_safetensors(net: nn.Module) -> bytes:
    """The network's state as fp16 safetensors bytes (integer buffers kept as they are)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    return save({k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}, metadata={"format": "pt"})


def save_model(net: nn.Module, card: Mapping[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Save fp16 safetensors and the card (with the weights' sha256) into ``out_dir``, atomically per file.

    The weights are written first and the card last, so a folder with a card is complete.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / WEIGHTS_FILE, fp16_safetensors(net))
    card = dict(card)
    card["schema"] = CARD_SCHEMA
    card["weights"] = {"file": WEIGHTS_FILE, "dtype": "float16", "sha256": sha256_file(out / WEIGHTS_FILE)}
    return write_card(out, card)


def save_ensemble(members: list[nn.Module], sources: list[str], card: Mapping[str, Any],
                  out_dir: str | Path) -> dict[str, Any]:
    """Save up to three networks as one model: ``member{i}.safetensors`` (fp16) and a card listing each
    member's file, sha256 and source. ``weights`` names the first member, for readers that know one file."""
    if not 1 <= len(members) <= MAX_MEMBERS or len(sources) != len(members):
        raise ValueError(f"An ensemble has 1 to {MAX_MEMBERS} members, each with a source.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    listed = []
    for i, (net, source) in enumerate(zip(members, sources)):
        file = f"member{i}.safetensors"
        atomic_write_bytes(out / file, fp16_safetensors(net))
        listed.append({"file": file, "sha256": sha256_file(out / file), "source": source})
    card = dict(card)
    card["schema"] = CARD_SCHEMA
    card["ensemble"] = {"combine": "mean of the members' logits", "members": listed}
    card["weights"] = {"file": listed[0]["file"], "dtype": "float16", "sha256": listed[0]["sha256"]}
    return write_card(out, card)


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference (eval mode, fp32, on ``device``) and its card. Treat as read-only."""

    net: nn.Module
    card: Mapping[str, Any]
    path: Path

    @property
    def version(self) -> str:
        return str(self.card.get("version", self.path.name))

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def read_card(model_dir: str | Path, *, check: bool = True) -> dict[str, Any]:
    """The card of a model folder, refused (ModelLoadError) when it was changed after it was written by
    ``write_card`` (``integrity.check_card``). ``check=False`` only to list or report a version, never to use
    its numbers."""
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"No model card ({CARD_FILE}) in {Path(model_dir).name or model_dir}.") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"The model card in {Path(model_dir).name} is unreadable.") from exc
    if not isinstance(card, dict) or card.get("schema") != CARD_SCHEMA:
        raise ModelLoadError(f"The model card in {Path(model_dir).name} has an unknown format.")
    if check:
        check_card(card, str(card.get("version") or Path(model_dir).name))
    return card


def write_card(model_dir: str | Path, card: Mapping[str, Any]) -> dict[str, Any]:
    """Seal the card under this server's key and write it atomically; returns what was written. Every
    writer of a card goes through here, so a card changed any other way is refused on load."""
    written = sealed(json.loads(json.dumps(dict(card), default=json_default)))   # plain JSON types, as read
    atomic_write_json(Path(model_dir) / CARD_FILE, written)
    return written


def load_model(model_dir: str | Path, *, device: str | torch.device = "cpu", verify: bool = True) -> LoadedModel:
    """Load a model folder for inference. The card must record each weights file's sha256 and every file
    must match it (checked on every load; ``verify=False`` only for tests of the check itself).

    A card with an ``ensemble`` section loads its members into one ``Ensemble``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"Model folder not found: {model_dir}")
    card = read_card(model_dir)
    if verify:
        paths = check_weight_files(model_dir, card)
    else:
        paths = [model_dir / file for file, _ in weight_files(card)]
        if not all(p.is_file() for p in paths):
            raise ModelLoadError(f"The model in {model_dir.name} has no weights file.")
    nets = []
    for path in paths:
        member = build_densenet121(card.get("training", {}).get("dropout", 0.0))
        load_state(member, read_safetensors(path))
        nets.append(member)
    net = nets[0] if "ensemble" not in card else Ensemble(nets)
    net.eval().requires_grad_(False)
    net.to(device)
    return LoadedModel(net=net, card=card, path=model_dir)
