"""Shared fixtures: a synthetic labelled dataset and a tiny trained + calibrated model (CPU, seconds)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tests never reach the network and never use the shipped weights unless they say so.
os.environ.setdefault("PNEUMO_WEIGHTS_DIR", str(Path(__file__).parent / "_no_weights_here"))
# Cards are sealed with a key made for this test run (never the user's ~/.config/pneumo key); every process
# the tests start inherits it, and session-wide fixtures are sealed with the same key.
_KEY_DIR = tempfile.TemporaryDirectory(prefix="pneumo-key-")
os.environ["PNEUMO_KEY_FILE"] = str(Path(_KEY_DIR.name) / "integrity.key")


@pytest.fixture(autouse=True)
def _private_audit_and_secrets(tmp_path_factory, monkeypatch) -> None:
    """Every test writes its own audit log and sign-in throttle, and sees no secrets file unless it makes one
    (never the checkout's)."""
    base = tmp_path_factory.mktemp("trust")
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(base / "audit.sqlite3"))
    monkeypatch.setenv("PNEUMO_SIGNIN_DB", str(base / "sign_in.sqlite3"))
    monkeypatch.setenv("PNEUMO_SECRETS", str(base / "secrets.toml"))
    # Fitting never picks up the shared film_types/ folder by itself: a test that wants the check names a folder.
    monkeypatch.setenv("PNEUMO_FILM_TYPES", "")


def synthetic_film(rng: np.random.Generator, pneumonia: bool, size: int = 64) -> np.ndarray:
    """A chest-like grey image: two dark 'lungs' in a brighter body; pneumonia adds a bright patch in a lung."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.65 + 0.05 * rng.standard_normal((size, size))
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        img[lung] -= 0.4
    if pneumonia:
        cx, cy = rng.choice([0.3, 0.7]), rng.uniform(0.4, 0.65)
        img += 0.35 * np.exp(-(((xx - cx) / 0.08) ** 2 + ((yy - cy) / 0.08) ** 2))
    return np.clip(img, 0, 1)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


def make_dataset(root: Path, counts: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """root/<split>/{NORMAL,PNEUMONIA}/*.png with ``counts[split]`` films per class."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                write_png(root / split / label / f"{label.lower()}_{i:03d}.png",
                          synthetic_film(rng, label == "PNEUMONIA", size))
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), {"train": 24, "val": 8, "test": 8, "external": 8})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, synthetic_data) -> Path:
    """A real model folder (weights, card, evaluation artifacts) from two CPU epochs at 32 px."""
    import torch

    from pneumo_core.model.config import TrainConfig
    from pneumo_core.model.evaluation import calibrate_model
    from pneumo_core.model.train import fit

    out = tmp_path_factory.mktemp("models") / "tiny"
    cfg = TrainConfig(epochs=2, batch_size=8, image_size=32, lr=3e-3, device="cpu", bf16=False,
                      channels_last=False, workers=1, ema_decay=0.9)
    threads = torch.get_num_threads()
    # One thread: a 32 px model gains nothing from more, and on a busy machine OpenMP threads waiting for
    # each other cost several times the CPU (measured: fit + calibrate 29 s of CPU with 2 threads, 6.4 s with 1).
    torch.set_num_threads(1)
    try:
        fit(synthetic_data, out, cfg)
        calibrate_model(out, synthetic_data, n_boot=50)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture()
def film_png(tmp_path) -> Path:
    return write_png(tmp_path / "film.png", synthetic_film(np.random.default_rng(1), True, 96))


def weights_root(tmp_path: Path, model_dir: Path, name: str = "base") -> Path:
    """``tmp_path/weights`` holding a copy of ``model_dir`` as the active version ``name``: a copy, so a test
    may damage or replace its files (a server started by a bench test is pointed at it)."""
    root = tmp_path / "weights"
    root.mkdir()
    copy_model_version(model_dir, root, name)
    (root / "ACTIVE").write_text(f"{name}\n")
    return root


def active_weights_root(tmp_path: Path, monkeypatch, model_dir: Path, name: str = "base") -> Path:
    """``weights_root``, made this process's weights root (``$PNEUMO_WEIGHTS_DIR``)."""
    root = weights_root(tmp_path, model_dir, name)
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    return root


def copy_model_version(src: Path, root: Path, name: str) -> Path:
    """A copy of the model folder ``src`` as version ``name`` under the weights root ``root``."""
    import shutil

    from pneumo_core.model.store import read_card, write_card

    folder = root / name
    shutil.copytree(src, folder)
    write_card(folder, {**read_card(folder), "version": name})
    return folder
