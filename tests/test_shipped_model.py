"""The model shipped in weights/: loads with its sha checked, says how it was made, and behaves on real films.

Uses a few films of external/ (the shared data beside the checkout); skips only when that folder is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from pneumo_core.model.predict import Predictor, predict_files
from pneumo_core.ops.registry import active_model_dir

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "weights"
EXTERNAL = ROOT.parent / "shared" / "data" / "chest_xray" / "external"


@pytest.fixture(scope="module")
def shipped() -> Path:
    return active_model_dir(WEIGHTS)


def test_shipped_weights_are_small_fp16_and_the_card_is_complete(shipped):
    card = json.loads((shipped / "card.json").read_text())
    assert all(f.stat().st_size < 20 * 2**20 for f in shipped.glob("*.safetensors"))
    assert card["initialisation"]["kind"] == "scratch"
    assert any("scratch" in n.lower() for n in card["notes"])          # the card says how it was made
    assert set(card["operating_points"]) == {"balanced", "high_sensitivity"}
    assert card["calibration"]["fitted_on"].rstrip("/") == "external"
    for split in ("test", "external"):
        assert (shipped / "evaluation" / f"{split}.json").is_file()
        assert "ci95" in card["metrics"][split]["balanced"]
    assert card["ood"]["sha256"]                                      # its guard is shipped with it


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason="shared data not present")
def test_shipped_model_separates_real_films_and_accepts_them(shipped):
    films = [(p, 0) for p in sorted((EXTERNAL / "NORMAL").iterdir())[:12]] + \
            [(p, 1) for p in sorted((EXTERNAL / "PNEUMONIA").iterdir())[:12]]
    records = list(predict_files(Predictor.from_dir(shipped), [p for p, _ in films]))
    assert [r.status for r in records] == ["ok"] * len(films)
    auc = roc_auc_score([y for _, y in films], [r.probability for r in records])
    assert auc > 0.85, auc


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason="shared data not present")
def test_contract_predict_uses_the_active_model_by_default(tmp_path):
    film = next((EXTERNAL / "PNEUMONIA").iterdir())
    env = {"PATH": "/usr/bin:/bin", "PNEUMO_WEIGHTS_DIR": str(WEIGHTS)}
    out = subprocess.run([sys.executable, "-m", "pneumo_core", "predict", "--json", str(film)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[0])
    assert record["status"] == "ok" and record["model_version"] == active_model_dir(WEIGHTS).name
    card = json.loads((active_model_dir(WEIGHTS) / "card.json").read_text())
    assert record["operating_point"] == card["default_operating_point"] == "high_sensitivity"
    assert record["threshold"] == pytest.approx(card["operating_points"]["high_sensitivity"]["threshold"])


def test_shipped_version_fits_its_size_budget(shipped):
    assert sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file()) < 45 * 2**20


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason="shared data not present")
def test_shipped_gradcam_map_is_at_least_8x8_and_its_faithfulness_is_recorded(shipped):
    from pneumo_core.ingest.read import read_xray
    from pneumo_core.model.explain import explain

    card = json.loads((shipped / "card.json").read_text())
    faith = card["explain"]["faithfulness"]
    assert faith["table"] and faith["ci95"][0] <= faith["score"] <= faith["ci95"][1]
    exp = explain(Predictor.from_dir(shipped), read_xray(next((EXTERNAL / "PNEUMONIA").iterdir())))
    assert min(exp.raw.shape) >= 8 and exp.method == card["explain"]["method"]
    assert list(exp.raw.shape) == card["explain"]["grid"]


FILM_TYPES = ROOT.parent / "shared" / "data" / "film_types"


def test_shipped_version_has_its_film_type_check_and_its_card_reports_it(shipped):
    from pneumo_core.safety.filmtype import CLASSES

    card = json.loads((shipped / "card.json").read_text())
    info = card["film_type"]
    assert info["fitted"] and info["weights_sha256"] == card["weights"]["sha256"]
    assert Predictor.from_dir(shipped).film_types is not None            # sha256 checked on load
    loso = info["leave_one_source_out"]
    assert {k.split("/")[0] for k in loso} >= {"adult_frontal", "other_radiograph", "not_radiograph"}
    assert all(set(r["as"]) <= set(CLASSES) for r in loso.values())
    assert all("lateral" not in k for k in info["fitted_on"] if not k.startswith("lateral/one-sided"))


@pytest.mark.skipif(not FILM_TYPES.is_dir(), reason=f"no film_types/ at {FILM_TYPES}")
def test_shipped_check_warns_on_an_adult_film_and_rejects_other_body_parts(shipped):
    """In-sample films (the check was fitted on these folders): this checks the shipped files and the
    record contract, not generalisation (docs/model.md has the left-out rates)."""
    files = [sorted((FILM_TYPES / d).glob("*.png"))[0] for d in ("frontal_chest_adult", "other_radiograph",
                                                                 "other_modality")]
    recs = list(predict_files(Predictor.from_dir(shipped), files))
    adult, other, us = recs
    assert adult.status == "ok" and adult.film_type == "adult_frontal" and adult.outside_validated_use
    assert any("adult" in w and "children aged 1–5" in w for w in adult.warnings)
    assert other.status == "rejected" and other.film_type == "other_radiograph" and "looks like" in other.message
    assert us.status == "rejected" and us.film_type == "not_radiograph"
