"""Architecture rules that are cheap to check: the core never imports streamlit, and training
imports nothing the GPU machine lacks (no streamlit, pydicom or pytorch-grad-cam there)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCKER = """
import builtins, sys
real = builtins.__import__
def guarded(name, *a, **k):
    if name.split('.')[0] in {blocked!r}:
        raise ImportError('blocked for this test: ' + name)
    return real(name, *a, **k)
builtins.__import__ = guarded
"""


def _run(code: str, blocked: set[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=blocked) + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_core_never_imports_streamlit():
    offenders = [p.name for p in (ROOT / "pneumo_core").glob("*.py") if "import streamlit" in p.read_text()]
    assert offenders == []
    out = _run("import pneumo_core.cli.main, pneumo_core.model.predict, pneumo_core.model.explain, pneumo_core.model.evaluation", {"streamlit"})
    assert out.returncode == 0, out.stderr


def test_training_runs_without_dicom_gradcam_or_streamlit(tmp_path):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", {"train": 4, "val": 2})
    code = f"""
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.train import fit
from pneumo_core.model.evaluation import calibrate_model
fit({str(data)!r}, {str(tmp_path / 'm')!r}, TrainConfig(epochs=1, batch_size=4, image_size=32, device='cpu',
    bf16=False, channels_last=False, workers=1))
calibrate_model({str(tmp_path / 'm')!r}, {str(data)!r}, n_boot=10)
print('trained')
"""
    out = _run(code, {"streamlit", "pydicom", "pytorch_grad_cam", "pylibjpeg", "openjpeg", "libjpeg"})
    assert out.returncode == 0, out.stderr
    assert "trained" in out.stdout
