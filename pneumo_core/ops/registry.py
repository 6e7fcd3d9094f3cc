"""Model versions on disk.

``weights/`` (or ``$PNEUMO_WEIGHTS_DIR``) holds one folder per version (weights, ``card.json``,
``evaluation/``) and a file ``ACTIVE`` naming the one in use. Changing the active model is one
atomic rename of ``ACTIVE``; the versions that were active before are kept, newest last, in
``active_history.json`` (also replaced atomically), which is what ``rollback`` walks back through.
Promote and rollback hold a file lock, so two people clicking at once cannot interleave.

Folders whose name starts with a dot (``.jobs``, ``.incoming-*``) are never versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock

from pneumo_core.errors import ModelLoadError, RegistryError
from pneumo_core.files import CHECKOUT, atomic_write_bytes, atomic_write_json, utc_now
from pneumo_core.model.network import CARD_FILE
from pneumo_core.model.store import check_weight_files, read_card, weight_files, write_card
from pneumo_core.ops.integrity import check_card

ACTIVE_FILE = "ACTIVE"
HISTORY_FILE = "active_history.json"
LOCK_FILE = ".registry.lock"
HISTORY_KEEP = 50
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")



def weights_root() -> Path:
    """``$PNEUMO_WEIGHTS_DIR`` or the ``weights/`` folder beside the package."""
    env = os.environ.get("PNEUMO_WEIGHTS_DIR")
    return Path(env) if env else CHECKOUT / "weights"


def _root(root: str | Path | None) -> Path:
    return Path(root) if root else weights_root()


def _lock(root: Path) -> FileLock:
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / LOCK_FILE), timeout=30)


def is_version_name(name: str) -> bool:
    return bool(_NAME.match(name))


def active_name(root: str | Path | None = None) -> str | None:
    """The name written in ACTIVE, or None when there is no pointer."""
    try:
        return (_root(root) / ACTIVE_FILE).read_text().strip() or None
    except OSError:
        return None


def active_model_dir(root: str | Path | None = None) -> Path:
    root = _root(root)
    pointer = root / ACTIVE_FILE
    try:
        name = pointer.read_text().strip()
    except OSError as exc:
        raise ModelLoadError(f"No active model: {pointer} is missing. Train one or pass --model DIR.") from exc
    folder = root / name
    if not name or "/" in name or name.startswith(".") or not (folder / CARD_FILE).is_file():
        raise ModelLoadError(f"The active model {name!r} named in {ACTIVE_FILE} is not a complete model folder.")
    return folder


# --------------------------------------------------------------------------- integrity

def verify_version(folder: str | Path) -> dict[str, Any]:
    """The card of a complete, untampered version; ModelLoadError (clear message) otherwise."""
    folder = Path(folder)
    card = read_card(folder)
    check_weight_files(folder, card)
    return card


def seal_version(folder: str | Path) -> dict[str, Any]:
    """Seal a version's card as it now reads, under this server's key (``models seal``): for a card someone
    has checked, such as a version copied from another server. Its weights must still match the card."""
    folder = Path(folder)
    card = read_card(folder, check=False)
    check_weight_files(folder, card)
    return write_card(folder, card)


# --------------------------------------------------------------------------- listing

@dataclass(frozen=True)
class VersionInfo:
    name: str
    active: bool
    card: Mapping[str, Any] = field(default_factory=dict, repr=False)
    problem: str | None = None           # unreadable card, missing or tampered weights

    @property
    def version(self) -> str:
        return str(self.card.get("version", self.name))

    @property
    def created(self) -> str:
        return str(self.card.get("created", ""))

    @property
    def init(self) -> str:
        init = self.card.get("initialisation") or {}
        kind = init.get("kind", "?")
        return f"fine-tune of {init['parent_version']}" if kind == "checkpoint" and init.get("parent_version") else kind

    def metric(self, split: str, name: str = "auc", op: str = "balanced") -> tuple[float | None, list | None]:
        """(value, 95% CI) of ``name`` on ``split`` at ``op`` from the card's metrics."""
        summary = ((self.card.get("metrics") or {}).get(split) or {}).get(op) or {}
        value = summary.get(name)
        return (float(value) if value is not None else None), (summary.get("ci95") or {}).get(name)


def list_versions(root: str | Path | None = None, *, verify: bool = False) -> list[VersionInfo]:
    """Every version folder, newest first by creation time; ``verify`` also checks each weights' sha256."""
    root = _root(root)
    current = active_name(root)
    out = []
    if not root.is_dir():
        return out
    for folder in root.iterdir():
        if not folder.is_dir() or not is_version_name(folder.name) or not (folder / CARD_FILE).exists():
            continue
        card: dict[str, Any] = {}
        problem = None
        try:
            card = read_card(folder, check=False)    # shown even when refused, with the reason
            check_card(card, folder.name)
            if verify:
                verify_version(folder)
            elif not all((folder / file).is_file() for file, _ in weight_files(card)):
                problem = "The weights file is missing."
        except ModelLoadError as exc:
            problem = str(exc)
        out.append(VersionInfo(folder.name, folder.name == current, card, problem))
    return sorted(out, key=lambda v: (v.created, v.name), reverse=True)


# --------------------------------------------------------------------------- history, promote, rollback

def read_history(root: str | Path | None = None) -> dict[str, Any]:
    """``{"previous": [older ... newest], "events": [...]}``; empty when absent or unreadable."""
    try:
        data = json.loads((_root(root) / HISTORY_FILE).read_text())
        if isinstance(data, dict) and isinstance(data.get("previous"), list):
            return {"previous": [str(v) for v in data["previous"]], "events": list(data.get("events") or [])}
    except (OSError, ValueError):
        pass
    return {"previous": [], "events": []}


def _switch(root: Path, target: str, previous: list[str], action: str, current: str | None) -> None:
    history = read_history(root)
    history["previous"] = previous[-HISTORY_KEEP:]
    history["events"] = (history["events"] + [{"time": utc_now(), "action": action, "from": current,
                                               "to": target}])[-HISTORY_KEEP:]
    # History first, pointer last: if we die in between, ACTIVE is unchanged and rollback skips
    # history entries equal to the current version.
    atomic_write_json(root / HISTORY_FILE, history)
    atomic_write_bytes(root / ACTIVE_FILE, (target + "\n").encode())


def promote(version: str, root: str | Path | None = None) -> str | None:
    """Make ``version`` active after checking it is complete and untampered. Returns the previous active."""
    root = _root(root)
    if not is_version_name(version) or not (root / version).is_dir():
        raise RegistryError(f"No model version {version!r} in {root}.")
    verify_version(root / version)
    with _lock(root):
        current = active_name(root)
        if current == version:
            return current
        previous = read_history(root)["previous"]
        if current and (root / current / CARD_FILE).is_file():
            previous = [v for v in previous if v not in (current, version)] + [current]
        _switch(root, version, previous, "promote", current)
        return current


def rollback(root: str | Path | None = None) -> str:
    """Make the most recent previous active version (that is still complete and intact) active again."""
    root = _root(root)
    with _lock(root):
        current = active_name(root)
        previous = read_history(root)["previous"]
        skipped = []
        while previous:
            candidate = previous.pop()
            if candidate == current or not is_version_name(candidate):
                continue
            try:
                verify_version(root / candidate)
            except ModelLoadError as exc:
                skipped.append(f"{candidate} ({exc})")
                continue
            _switch(root, candidate, previous, "rollback", current)
            return candidate
        why = f" Skipped: {'; '.join(skipped)}." if skipped else ""
        raise RegistryError(f"Nothing to roll back to: no earlier active model is recorded.{why}")


# --------------------------------------------------------------------------- adding a version

def add_version(model_dir: str | Path, root: str | Path | None = None) -> str:
    """Move a finished model folder into the registry as a new, non-active version; returns its name.

    The folder is named after the card's version (suffixed when taken) and arrives in one rename
    (staged beside the registry first when it comes from another file system).
    """
    root = _root(root)
    src = Path(model_dir)
    card = verify_version(src)
    base = str(card.get("version") or src.name)
    base = base if is_version_name(base) else re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip(".-") or "model"
    with _lock(root):
        for stale in root.glob(".incoming-*"):         # left by a process killed mid-copy
            shutil.rmtree(stale, ignore_errors=True)
        name, n = base, 2
        while (root / name).exists():
            name, n = f"{base}-{n}", n + 1
        if name != card.get("version"):
            write_card(src, {**card, "version": name})
        try:
            os.replace(src, root / name)
        except OSError:                                 # another file system: copy, then rename
            staging = root / f".incoming-{name}"
            try:
                shutil.copytree(src, staging)
                os.replace(staging, root / name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    return name
