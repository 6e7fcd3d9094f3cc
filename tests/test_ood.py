"""The out-of-distribution guard: fitted on real chest films, it refuses what is not one.

Negatives are built here, in memory (scikit-image's bundled sample images, rendered text, noise,
pydicom's bundled CT and MR files); positives are films of the internal test split, which the
guard never saw. The guard is fitted (through the CLI) on a small subset of train/ and val/ for
a copy of the tiny session model, so everything runs on CPU in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_film, write_png
from conftest_io_helpers import film, make_dicom, png_bytes

from pneumo_core.cli.main import main
from pneumo_core.errors import ModelLoadError
from pneumo_core.files import sha256_file
from pneumo_core.ingest.read import read_xray
from pneumo_core.model.predict import Predictor, predict_files
from pneumo_core.model.store import read_card, write_card
from pneumo_core.safety import guard as ood
from pneumo_core.safety.checks import model_free_reason
from pneumo_core.safety.features import LAYOUT, TAPS
from pneumo_core.safety.negatives import builtin_negatives, png, text_page

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "chest_xray"
CONTRACT = {"file", "status", "probability", "label", "threshold", "model_version", "message"}
needs_data = pytest.mark.skipif(not (DATA / "test").is_dir(), reason=f"no chest films at {DATA}")


def _spread(files: list[Path], n: int) -> list[Path]:
    """n files evenly spread over a sorted list (deterministic, no randomness to chase)."""
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)] if len(files) > n else files


def _subset(split: str, per_class: int, offset: int = 0) -> dict[str, list[Path]]:
    return {label: _spread(sorted((DATA / split / label).iterdir())[offset:], per_class)
            for label in ("NORMAL", "PNEUMONIA")}


def _link_split(root: Path, split: str, files: dict[str, list[Path]]) -> None:
    for label, paths in files.items():
        (root / split / label).mkdir(parents=True)
        for p in paths:
            (root / split / label / p.name).symlink_to(p)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """train/ val/ test/ with a few real films each (links, no copies)."""
    if not (DATA / "test").is_dir():
        pytest.skip(f"no chest films at {DATA}")
    root = tmp_path_factory.mktemp("chest")
    _link_split(root, "train", _subset("train", 60))
    _link_split(root, "val", _subset("val", 30))
    _link_split(root, "test", _subset("test", 10))
    return root


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_model_dir, small_data) -> tuple[Path, dict, str]:
    """A copy of the tiny model with a guard fitted by ``fit-guard``: (folder, CLI summary, weights sha before)."""
    model = tmp_path_factory.mktemp("guarded") / "m"
    shutil.copytree(tiny_model_dir, model)
    weights_before = sha256_file(model / "model.safetensors")
    out, err = io.StringIO(), io.StringIO()
    # conftest's setting, which a module fixture runs before: never the shared film_types/ folder by itself
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("PNEUMO_FILM_TYPES", "")
        rc = main(["fit-guard", "--model", str(model), "--data", str(small_data)])
    assert rc == 0, err.getvalue()
    return model, json.loads(out.getvalue()), weights_before


@pytest.fixture(scope="module")
def guarded_predictor(guarded) -> Predictor:
    return Predictor.from_dir(guarded[0])


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> dict[str, Path]:
    """Non-chest files on disk, built here: scikit-image photos and documents, text, noise, pydicom CT/MR."""
    skimage_data = pytest.importorskip("skimage.data")
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("negatives")
    rng = np.random.default_rng(7)
    arrays = {name: getattr(skimage_data, name)() for name in
              ("astronaut", "camera", "coffee", "chelsea", "coins", "moon", "page", "text", "brick", "horse")}
    arrays["text_page"] = text_page(rng, font_size=20)
    arrays["uniform_noise"] = rng.random((300, 300))
    arrays["gaussian_noise"] = np.clip(0.5 + 0.2 * rng.standard_normal((256, 320)), 0, 1)
    files = {name: folder / f"{name}.png" for name in arrays}
    for name, a in arrays.items():
        files[name].write_bytes(png(a))
    for name in ("CT_small.dcm", "MR_small.dcm"):
        src = Path(get_testdata_file(name))
        files[name] = folder / name
        shutil.copy(src, files[name])
        ds = dcmread(src)                       # the same pixels, but the header no longer says CT / MR
        ds.Modality = "OT"
        files[name + "[OT]"] = folder / ("as_OT_" + name)
        ds.save_as(files[name + "[OT]"])
    return files


def _records(argv: list[str]) -> tuple[int, list[dict]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


# --------------------------------------------------------------------------- fitting, saving, loading

@needs_data
def test_fit_guard_records_threshold_and_rates_and_leaves_the_weights(guarded):
    model, summary, weights_before = guarded
    card = read_card(model)
    info = card["ood"]
    assert sha256_file(model / "model.safetensors") == weights_before == card["weights"]["sha256"]
    assert info["sha256"] == sha256_file(model / ood.OOD_FILE) == summary["sha256"]
    assert info["weights_sha256"] == weights_before
    assert info["threshold"] > 0 and summary["threshold"] == info["threshold"]
    assert set(info["parts"]) == set(TAPS) | {LAYOUT}
    rates = info["false_rejection"]
    assert {"val", "val_augmented", "test"} <= set(rates) and "external" not in rates
    assert rates["val"]["n"] == 60 and rates["test"]["n"] == 20
    assert rates["test"]["rate"] == rates["test"]["rejected"] / 20
    neg = info["negative_rejection"]
    assert neg["n"] >= 30 and neg["rate"] == neg["rejected"] / neg["n"]
    assert {"photo", "document", "noise", "ct", "mr", "ct_as_OT", "mr_as_OT"} <= set(neg["per_category"])
    from appkit.text import guard_summary  # what the Metrics page shows

    assert "test/" in guard_summary(card) and "non-chest" in guard_summary(card)


def _random_guard(rng: np.random.Generator) -> tuple[ood.Guard, dict[str, np.ndarray]]:
    dims = {"pooled": 40, LAYOUT: 12}
    train = {k: rng.standard_normal((80, d)) * rng.uniform(0.5, 2, d) for k, d in dims.items()}
    val = {k: rng.standard_normal((40, d)) for k, d in dims.items()}
    return ood.fit(train, val, dims={"pooled": 8, LAYOUT: 4}), val


def _write_guard(model: Path, guard: ood.Guard) -> None:
    card = read_card(model)
    card["ood"] = {**ood.guard_info(guard), "file": ood.OOD_FILE, "sha256": ood.save_guard(guard, model),
                   "weights_sha256": card["weights"]["sha256"]}
    write_card(model, card)


def test_save_load_round_trip_gives_the_same_scores_and_checks_the_sha(tiny_model_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    guard, val = _random_guard(np.random.default_rng(0))
    _write_guard(model, guard)
    loaded = ood.load_guard(model)
    assert ood.guard_info(loaded) == ood.guard_info(guard)
    probe = {k: v + np.random.default_rng(1).standard_normal(v.shape) for k, v in val.items()}
    np.testing.assert_allclose(loaded.scores(probe), guard.scores(probe), rtol=1e-6)
    assert Predictor.from_dir(model).guard is not None

    data = (model / ood.OOD_FILE).read_bytes()
    (model / ood.OOD_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))         # one bit changed
    with pytest.raises(ModelLoadError, match="does not match its card"):
        Predictor.from_dir(model)
    (model / ood.OOD_FILE).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        ood.load_guard(model)
    rc = main(["predict", "--model", str(model), "--json", str(write_png(tmp_path / "f.png", film() / 4095.0))])
    assert rc == 1                                                            # no model, no records, no traceback


def test_a_guard_fitted_for_other_weights_is_refused(tiny_model_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    guard, _ = _random_guard(np.random.default_rng(2))
    _write_guard(model, guard)
    card = read_card(model)
    card["ood"]["weights_sha256"] = hashlib.sha256(b"other weights").hexdigest()
    write_card(model, card)
    with pytest.raises(ModelLoadError, match="other weights"):
        ood.load_guard(model)
    assert Predictor.from_dir(model, guard=False).guard is None               # how fit-guard replaces it


# --------------------------------------------------------------------------- verdicts

@needs_data
def test_non_chest_inputs_are_rejected(guarded, guarded_predictor, negatives):
    recs = {Path(r.file).name: r for r in predict_files(guarded_predictor, list(negatives.values()))}
    assert len(recs) == len(negatives)
    assert all(r.status in ("rejected", "error") for name, r in recs.items() if name.endswith(".dcm"))
    rejected = [r for r in recs.values() if r.status == "rejected"]
    assert len(rejected) >= 0.9 * len(negatives), {k: r.status for k, r in recs.items()}
    for r in rejected:
        assert r.probability is None and r.label is None and r.message.startswith("Not analysed:")
    for name in ("uniform_noise.png", "gaussian_noise.png", "text_page.png", "CT_small.dcm", "MR_small.dcm"):
        assert recs[name].status == "rejected", (name, recs[name].message)
    # the same pixels with Modality rewritten to OT: only the guard can tell
    assert recs["as_OT_MR_small.dcm"].status == "rejected"
    assert "does not look like" in recs["as_OT_MR_small.dcm"].message


@needs_data
def test_unseen_chest_films_are_accepted(guarded_predictor):
    films = [p for paths in _subset("test", 25, offset=1).values() for p in paths]
    statuses = [r.status for r in predict_files(guarded_predictor, films)]
    assert statuses.count("ok") >= len(films) - 1, statuses                    # 50 films: at most one refused


@needs_data
def test_screening_and_prediction_share_one_forward_pass(guarded_predictor):
    images = [read_xray(p) for paths in _subset("test", 3).values() for p in paths]
    screened = guarded_predictor.screen_many(images, "balanced", batch_size=4)
    direct = guarded_predictor.predict_many(images, "balanced")
    np.testing.assert_allclose([s.prediction.probability for s in screened], [p.probability for p in direct],
                               atol=1e-6)
    assert [s.reason for s in screened] == guarded_predictor.check_many(images)


@needs_data
def test_cli_predict_records_rejected_ok_and_analyse_anyway(guarded, negatives):
    model = guarded[0]
    chest = _subset("test", 1, offset=3)["PNEUMONIA"][0]
    photo = negatives["astronaut"]
    rc, recs = _records(["predict", "--model", str(model), "--json", str(chest), str(photo)])
    assert rc == 0 and [r["status"] for r in recs] == ["ok", "rejected"]
    for r in recs:
        assert CONTRACT <= set(r)
    rejected = recs[1]
    assert rejected["probability"] is None and rejected["label"] is None
    assert rejected["message"].startswith("Not analysed:") and rejected["threshold"] is not None
    assert rejected["model_version"] == read_card(model)["version"]
    rc, recs = _records(["predict", "--model", str(model), "--json", "--analyse-anyway", str(photo)])
    assert recs[0]["status"] == "ok" and 0 <= recs[0]["probability"] <= 1
    assert recs[0]["message"].startswith("Outside validated use:")


@needs_data
def test_app_triage_and_decode_use_the_models_guard(guarded_predictor, negatives):
    from appkit.analysis import Upload, decode
    from appkit.triage import triage

    chest = _subset("test", 1, offset=5)["NORMAL"][0]
    uploads = [Upload.of("chest.jpeg", chest.read_bytes()), Upload.of("moon.png", negatives["moon"].read_bytes()),
               Upload.of("ct.dcm", negatives["CT_small.dcm"].read_bytes())]
    rows = {r.record.file: r.record for r in triage(guarded_predictor, uploads, "balanced")}
    assert rows["chest.jpeg"].status == "ok"
    assert rows["moon.png"].status == "rejected" and "does not look like" in rows["moon.png"].message
    assert rows["ct.dcm"].status == "rejected" and "modality CT" in rows["ct.dcm"].message
    assert decode(uploads[0], guarded_predictor).rejection is None
    assert decode(uploads[1], guarded_predictor).rejection == rows["moon.png"].message.removeprefix("Not analysed: ")


def test_model_without_guard_keeps_the_model_free_checks(tiny_model_dir, tmp_path):
    predictor = Predictor.from_dir(tiny_model_dir)
    assert "ood" not in predictor.card and predictor.guard is None
    chest_like = read_xray(png_bytes((synthetic_film(np.random.default_rng(3), True, 96) * 255).astype(np.uint8)))
    assert predictor.check(chest_like) is None
    assert "modality CT" in predictor.check(read_xray(make_dicom(film(), "MONOCHROME2", 12, Modality="CT")))
    assert "blank" in predictor.check(read_xray(png_bytes(np.full((64, 64), 90, np.uint8))))
    assert "Lateral" in predictor.check(read_xray(make_dicom(film(), "MONOCHROME2", 12, ViewPosition="LL")))
    assert "elongated" in predictor.check(read_xray(png_bytes((np.random.default_rng(0).random((64, 300)) * 255)
                                                              .astype(np.uint8))))
    grey = synthetic_film(np.random.default_rng(4), False, 96)
    as_rgb_jpeg = io.BytesIO()                                       # a grey film stored as colour JPEG
    from PIL import Image

    Image.fromarray((grey * 255).astype(np.uint8)).convert("RGB").save(as_rgb_jpeg, "JPEG", quality=80)
    assert predictor.check(read_xray(as_rgb_jpeg.getvalue())) is None
    tinted = np.stack([grey, grey * 0.6, grey * 0.3], -1)                 # the same film, strongly coloured
    assert "colour" in predictor.check(read_xray(png(tinted)))
    good = write_png(tmp_path / "film.png", grey)
    (rec,) = predict_files(predictor, [good])
    assert rec.status == "ok" and rec.probability is not None


def test_fit_guard_cli_refuses_data_without_a_validation_split(tiny_model_dir, tmp_path):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", {"train": 2})
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["fit-guard", "--model", str(model), "--data", str(data)]) == 1
        assert main(["fit-guard", "--model", str(model), "--data", str(tmp_path / "nothing")]) == 2
    assert "val/" in err.getvalue() and "Traceback" not in err.getvalue()
    assert "ood" not in read_card(model) and not (model / ood.OOD_FILE).exists()


def test_builtin_negatives_are_readable_and_never_chest_films():
    items = builtin_negatives()
    cats = {c for c, _, _ in items}
    assert {"noise", "blank", "document", "ct", "mr"} <= cats
    readable = 0
    for _, name, data in items:
        try:
            image = read_xray(data, name=name)
        except ValueError:
            continue
        readable += 1
        assert np.isfinite(image.pixels).all()
    assert readable >= 0.9 * len(items)
    blank = [d for c, _, d in items if c == "blank"]
    assert all(model_free_reason(read_xray(d)) for d in blank)
