"""The film-type check: pediatric or adult frontal chest film, lateral, other radiograph, not a radiograph.

Two levels, both CPU and seconds:

* the check itself (``filmtype.fit`` / ``judge``) on synthetic representations: clusters standing for
  each class, so every threshold rule and every branch of the verdict can be asserted exactly;
* the whole path on the tiny session model: ``fit-guard`` with a synthetic ``film_types/`` folder
  (drawn films: a child's chest, an adult's chest, a knee, an ultrasound fan), then ``predict`` through
  the CLI, checking each status, film type and warning of the contract.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_film, write_png

from pneumo_core.cli.main import main
from pneumo_core.errors import ModelLoadError
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import read_card
from pneumo_core.safety import filmtype as ft
from pneumo_core.safety import filmtype_fit as ftfit

D_POOLED, D_LAYOUT = 24, 12


# --------------------------------------------------------------------------- synthetic representations

def _cluster(rng, centre: np.ndarray, n: int, spread: float = 1.0) -> dict[str, np.ndarray]:
    x = centre + spread * rng.standard_normal((n, len(centre)))
    return {"pooled": x[:, :D_POOLED], "layout": x[:, D_POOLED:]}


@pytest.fixture(scope="module")
def centres() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal(D_POOLED + D_LAYOUT)
    return {k: base + (6.0 * rng.standard_normal(len(base)) if k != ft.PEDIATRIC else 0.0) for k in ft.CLASSES} | {
        ft.ADULT: base + 3.0 * rng.standard_normal(len(base))}     # adults nearer the children than the rest


def _sets(centres, rng, n=200, small=40) -> list[ftfit.Labelled]:
    out = [ftfit.Labelled(ft.PEDIATRIC, "training films", _cluster(rng, centres[ft.PEDIATRIC], n), np.arange(n))]
    for kind, source in ((ft.ADULT, "hospital A"), (ft.ADULT, "hospital B"), (ft.LATERAL, "crops"),
                         (ft.OTHER_RADIOGRAPH, "knees"), (ft.NOT_RADIOGRAPH, "ultrasound")):
        out.append(ftfit.Labelled(kind, source, _cluster(rng, centres[kind], small), np.arange(small)))
    return out


@pytest.fixture(scope="module")
def fitted(centres):
    rng = np.random.default_rng(1)
    sets = _sets(centres, rng)
    val = _cluster(rng, centres[ft.PEDIATRIC], 400)
    return ftfit.fit(sets, val), sets, val


def _judge(check, reps, ped_score=0.5, meta=None, moderate=1.0):
    n = len(reps["pooled"])
    return check.judge(reps, np.full(n, ped_score), [meta or {}] * n, moderate)


def test_each_class_is_recognised_on_new_films(fitted, centres):
    check, _, _ = fitted
    rng = np.random.default_rng(2)
    for kind in ft.CLASSES:
        verdicts = _judge(check, _cluster(rng, centres[kind], 60), ped_score=0.5 if kind == ft.PEDIATRIC else 3.0)
        share = np.mean([v.kind == kind for v in verdicts])
        assert share >= 0.9, (kind, share)
        rejected = np.mean([v.reason is not None for v in verdicts])
        assert rejected == (0.0 if kind in ft.FRONTAL else 1.0) or (kind == ft.PEDIATRIC and rejected <= 0.05)


def test_thresholds_follow_their_rules_on_the_validation_films(fitted):
    check, _, val = fitted
    p = check.probabilities(val)
    frontal = p[:, 0] + p[:, 1]
    assert check.frontal_min <= ft.FRONTAL_MIN_CAP and np.mean(frontal < check.frontal_min) <= 0.005 + 1e-9
    assert check.adult_min >= 0.5 and np.mean(p[:, 1] / frontal > check.adult_min) <= 0.02 + 1e-9
    # adults: the Gaussian's threshold is the 98% quantile of cross-fitted scores, not of in-sample ones
    assert 0 < check.adult_threshold


def test_adult_verdict_is_analysed_with_a_caution_and_rejections_name_what_the_film_looks_like(fitted, centres):
    check, _, _ = fitted
    rng = np.random.default_rng(3)
    adult = _judge(check, _cluster(rng, centres[ft.ADULT], 5), ped_score=2.0)
    assert all(v.kind == ft.ADULT and v.reason is None and v.caution == ft.ADULT_CAUTION for v in adult)
    assert "adult" in ft.ADULT_WARNING and "children aged 1–5" in ft.ADULT_WARNING
    knee = _judge(check, _cluster(rng, centres[ft.OTHER_RADIOGRAPH], 3), ped_score=4.0)
    assert all(v.reason.startswith("The image looks like a radiograph of another body part") for v in knee)
    lateral = _judge(check, _cluster(rng, centres[ft.LATERAL], 3), ped_score=0.8)     # inside the guard: still
    assert all(v.kind == ft.LATERAL and "looks like a lateral chest film" in v.reason for v in lateral)


def test_out_of_both_ranges_is_refused_even_when_the_classifier_says_frontal(fitted, centres):
    check, _, _ = fitted
    rng = np.random.default_rng(4)
    reps = _cluster(rng, centres[ft.PEDIATRIC], 4)
    far = {k: v + 40.0 for k, v in reps.items()}                  # unlike every class: the backstop decides
    assert all(v.reason and "out-of-distribution score" in v.reason for v in _judge(check, far, ped_score=5.0))
    assert all(v.reason is None for v in _judge(check, reps, ped_score=0.9))


def test_dicom_tags_are_evidence_but_never_alone(fitted, centres):
    check, _, _ = fitted
    rng = np.random.default_rng(5)
    child = _cluster(rng, centres[ft.PEDIATRIC], 3)
    assert all(v.kind == ft.ADULT for v in _judge(check, child, meta={"patient_age_years": 45}))
    assert all(v.kind == ft.PEDIATRIC for v in _judge(check, child, meta={"patient_age_years": 3}))
    # a non-chest body part rejects only an unusual film; a typical chest film with a wrong tag stays
    assert all(v.reason is None for v in _judge(check, child, ped_score=0.2, meta={"body_part": "KNEE"},
                                                moderate=0.9))
    odd = _judge(check, child, ped_score=0.99, meta={"body_part": "KNEE"}, moderate=0.9)
    assert all(v.kind == ft.OTHER_RADIOGRAPH and "DICOM body part KNEE" in v.reason for v in odd)
    # age alone never accepts a film that looks like something else
    knee = _judge(check, _cluster(rng, centres[ft.OTHER_RADIOGRAPH], 3), ped_score=3.0,
                  meta={"patient_age_years": 45})
    assert all(v.reason for v in knee)


def test_leave_one_source_out_refits_without_the_source(fitted, centres):
    _, sets, val = fitted
    scores = {f"{s.kind}/{s.source}": np.full(len(s), 0.5 if s.kind in ft.FRONTAL else 3.0) for s in sets}
    loso = ftfit.leave_one_source_out(sets, val, scores)
    assert set(loso) == {"adult_frontal/hospital A", "adult_frontal/hospital B", "lateral/crops",
                         "other_radiograph/knees", "not_radiograph/ultrasound"}
    assert loso["adult_frontal/hospital A"]["n"] == 40
    # knees never seen: still refused (the other classes and the backstop), named as something other than frontal
    assert loso["other_radiograph/knees"]["rejected_rate"] == 1.0
    # with hospital B in the fit, hospital A's adults are recognised
    assert loso["adult_frontal/hospital A"]["adult_warned_rate"] >= 0.9


def test_a_missing_class_is_never_predicted(centres):
    rng = np.random.default_rng(6)
    sets = [s for s in _sets(centres, rng) if s.kind != ft.NOT_RADIOGRAPH]
    check = ftfit.fit(sets, _cluster(rng, centres[ft.PEDIATRIC], 200))
    p = check.probabilities(_cluster(rng, centres[ft.NOT_RADIOGRAPH], 20))
    assert np.all(p[:, ft.CLASSES.index(ft.NOT_RADIOGRAPH)] < 1e-6)
    with pytest.raises(ValueError, match="pediatric films"):
        ftfit.fit([s for s in sets if s.kind != ft.PEDIATRIC], _cluster(rng, centres[ft.PEDIATRIC], 10))


def test_save_and_load_give_the_same_verdicts_and_check_the_sha(fitted, centres, tmp_path):
    check, _, _ = fitted
    sha = ft.save_check(check, tmp_path)
    card = {"version": "v", "weights": {"sha256": "w"},
            "film_type": {**ft.check_info(check), "file": ft.FILM_TYPE_FILE, "sha256": sha, "weights_sha256": "w"}}
    loaded = ft.load_check(tmp_path, card)
    reps = _cluster(np.random.default_rng(7), centres[ft.ADULT], 10)
    np.testing.assert_allclose(loaded.probabilities(reps), check.probabilities(reps), atol=1e-5)
    assert ft.load_check(tmp_path, {"film_type": {"fitted": False, "why": "none"}}) is None
    with pytest.raises(ModelLoadError, match="other weights"):
        ft.load_check(tmp_path, {**card, "weights": {"sha256": "x"}})
    data = bytearray((tmp_path / ft.FILM_TYPE_FILE).read_bytes())
    data[-3] ^= 1
    (tmp_path / ft.FILM_TYPE_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match its card"):
        ft.load_check(tmp_path, card)
    (tmp_path / ft.FILM_TYPE_FILE).unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        ft.load_check(tmp_path, card)


def test_one_sided_crops_keep_one_side_of_the_film():
    films = np.zeros((2, 32, 32), np.uint8)
    films[:, :, :16] = 200                                            # bright left half, dark right half
    crops, idx = ftfit.one_sided(films, 20, seed=0)
    assert crops.shape == (20, 32, 32) and set(idx) <= {0, 1}
    means = crops.reshape(20, -1).mean(1)
    assert np.all((means > 150) | (means < 60))                       # each crop shows mostly one side


# --------------------------------------------------------------------------- the whole path on the tiny model

def adult_film(rng, size=64):
    """An 'adult' chest: lower contrast, the lungs larger and lower, a bright bar (clavicles) across the top."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.03 * rng.standard_normal((size, size))
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.19) ** 2 + ((yy - 0.58) / 0.33) ** 2 < 1] -= 0.25
    img[(yy > 0.12) & (yy < 0.17)] += 0.3
    return np.clip(img, 0, 1)


def knee_film(rng, size=64):
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.15 + 0.03 * rng.standard_normal((size, size))
    img[(np.abs(xx - 0.5) < 0.18) & (np.abs(yy - 0.5) > 0.04)] = 0.85     # two long bones and a joint gap
    return np.clip(img + 0.02 * rng.standard_normal((size, size)), 0, 1)


def ultrasound(rng, size=64):
    yy, xx = np.mgrid[0:size, 0:size] / size
    fan = (np.abs(np.arctan2(xx - 0.5, yy + 0.05)) < 0.6) & (np.hypot(xx - 0.5, yy + 0.05) < 1.0)
    return np.clip(fan * (0.3 + 0.4 * rng.random((size, size))), 0, 1)


def lateral_film(rng, size=64):
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.65 + 0.05 * rng.standard_normal((size, size))
    img[((xx - 0.45) / 0.28) ** 2 + ((yy - 0.5) / 0.32) ** 2 < 1] -= 0.4
    img[:, int(0.8 * size):int(0.9 * size)] += 0.3                        # the spine at one edge
    return np.clip(img, 0, 1)


MAKERS = {"frontal_chest_adult": adult_film, "other_radiograph": knee_film, "other_modality": ultrasound,
          "lateral_chest": lateral_film}


@pytest.fixture(scope="module")
def film_types_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("film_types")
    rng = np.random.default_rng(11)
    for folder, make in MAKERS.items():
        for i in range(16):
            write_png(root / folder / f"{folder}_{i:02d}.png", make(rng))
    return root


@pytest.fixture(scope="module")
def typed_model(tmp_path_factory, tiny_model_dir, synthetic_data, film_types_dir) -> tuple[Path, dict]:
    model = tmp_path_factory.mktemp("typed") / "m"
    shutil.copytree(tiny_model_dir, model)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["fit-guard", "--model", str(model), "--data", str(synthetic_data), "--film-types",
                   str(film_types_dir), "--no-negatives"])
    assert rc == 0, err.getvalue()
    return model, json.loads(out.getvalue())


def _predict(model: Path, files: list[Path]) -> list[dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["predict", "--model", str(model), "--json", *map(str, files)])
    assert rc == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_fit_guard_fits_and_records_the_film_type_check(typed_model, film_types_dir):
    model, summary = typed_model
    card = read_card(model)
    info = card["film_type"]
    assert info["fitted"] and (model / ft.FILM_TYPE_FILE).is_file()
    assert info["weights_sha256"] == card["weights"]["sha256"]
    assert set(info["fitted_on"]) >= {"pediatric_frontal/training films", "adult_frontal/frontal_chest_adult",
                                      "other_radiograph/other_radiograph", "not_radiograph/other_modality"}
    assert not any(k.startswith("lateral/lateral_chest") for k in info["fitted_on"])     # measured only
    assert info["measured"]["lateral/lateral_chest"]["n"] == 16
    assert "adult_frontal/frontal_chest_adult" in info["leave_one_source_out"]
    assert summary["film_type"]["measured"] == info["measured"]
    assert Predictor.from_dir(model).film_types is not None


def test_cli_predict_gives_each_film_type_its_status_and_warning(typed_model, tmp_path):
    model, _ = typed_model
    rng = np.random.default_rng(99)                                       # films the check never saw
    files = {"child": synthetic_film(rng, True, 64), "adult": adult_film(rng), "knee": knee_film(rng),
             "us": ultrasound(rng)}
    paths = [write_png(tmp_path / f"{k}.png", v) for k, v in files.items()]
    recs = {Path(r["file"]).stem: r for r in _predict(model, paths)}
    assert recs["child"]["status"] == "ok" and recs["child"]["film_type"] == "pediatric_frontal"
    assert not recs["child"]["outside_validated_use"]
    assert not any("adult" in w.lower() for w in recs["child"]["warnings"])
    adult = recs["adult"]
    assert adult["status"] == "ok" and adult["film_type"] == "adult_frontal" and adult["outside_validated_use"]
    assert adult["probability"] is not None and adult["message"].startswith("Outside validated use")
    assert any("adult" in w and "children aged 1–5" in w for w in adult["warnings"])
    for k, kind in (("knee", "other_radiograph"), ("us", "not_radiograph")):
        assert recs[k]["status"] == "rejected" and recs[k]["probability"] is None
        assert recs[k]["film_type"] == kind and re.search(r"looks? like", recs[k]["message"])


def test_cli_dicom_tags_lateral_view_and_adult_age_through_the_check(typed_model, tmp_path):
    from conftest_io_helpers import make_dicom

    model, _ = typed_model
    child = (synthetic_film(np.random.default_rng(3), False, 64) * 4095).astype(np.uint16)
    lateral = tmp_path / "lat.dcm"
    lateral.write_bytes(make_dicom(child, "MONOCHROME2", 12, ViewPosition="LL"))
    grown = tmp_path / "age.dcm"                       # a child-looking frontal film whose header says 45 years
    grown.write_bytes(make_dicom(child, "MONOCHROME2", 12, ViewPosition="PA", PatientAge="045Y"))
    lat, age = _predict(model, [lateral, grown])
    assert lat["status"] == "rejected" and lat["film_type"] == "lateral" and "Lateral view" in lat["message"]
    if age["status"] == "ok":                          # the guard may refuse a re-encoded synthetic film
        assert age["film_type"] == "adult_frontal" and any("adult" in w for w in age["warnings"])
        assert not any("older than the pediatric" in w for w in age["warnings"])     # one age warning, not two


def test_a_version_without_film_types_says_so_and_the_guard_alone_decides(tiny_model_dir, synthetic_data,
                                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_FILM_TYPES", "")
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["fit-guard", "--model", str(model), "--data", str(synthetic_data), "--no-negatives"]) == 0
    info = read_card(model)["film_type"]
    assert info["fitted"] is False and "cannot tell adult" in info["why"]
    predictor = Predictor.from_dir(model)
    assert predictor.guard is not None and predictor.film_types is None
    rec = _predict(model, [write_png(tmp_path / "c.png", synthetic_film(np.random.default_rng(5), False, 64))])[0]
    assert rec["film_type"] is None and rec["status"] in ("ok", "rejected")


def test_metrics_page_text_says_whether_a_version_has_the_check(typed_model):
    from appkit.text import film_type_rows, film_type_summary

    card = read_card(typed_model[0])
    rows = film_type_rows(card)
    assert film_type_summary(card).startswith("fitted")
    assert {r["evaluation"] for r in rows} == {"left out of fitting", "never fitted (licence)"}
    lateral = next(r for r in rows if r["class"] == "lateral" and r["source"] == "lateral_chest")
    assert lateral["films"] == 16 and 0 <= lateral["accepted"] <= 1
    none = {"film_type": {"fitted": False, "why": "no film_types/ folder was given"}}
    assert film_type_summary(none) == "none: no film_types/ folder was given" and film_type_rows(none) == []
    assert film_type_summary({}).startswith("none: this version cannot tell")


def test_leave_one_source_out_never_fits_on_the_held_out_source_or_its_crops(fitted, centres, monkeypatch):
    _, sets, val = fitted
    crops = ftfit.Labelled(ft.LATERAL, "crops of hospital A", sets[1].reps, sets[1].groups, derived_from="hospital A")
    seen: list[set] = []
    real_fit = ftfit.fit
    monkeypatch.setattr(ftfit, "fit", lambda s, *a, **k: (seen.append({(x.kind, x.source) for x in s}),
                                                       real_fit(s, *a, **k))[1])
    scores = {f"{s.kind}/{s.source}": np.full(len(s), 0.5) for s in [*sets, crops]}
    ftfit.leave_one_source_out([*sets, crops], val, scores, only=[ft.ADULT])
    assert len(seen) == 2
    assert (ft.ADULT, "hospital A") not in seen[0] and (ft.LATERAL, "crops of hospital A") not in seen[0]
    assert (ft.ADULT, "hospital B") in seen[0]
    assert (ft.ADULT, "hospital B") not in seen[1] and (ft.LATERAL, "crops of hospital A") in seen[1]


def test_chest_max_and_typical_max_follow_their_rules(centres):
    rng = np.random.default_rng(8)
    sets = _sets(centres, rng)
    val = _cluster(rng, centres[ft.PEDIATRIC], 400)
    guard = {f"{s.kind}/{s.source}": rng.uniform(*( (0.8, 1.2) if s.kind == ft.ADULT else (1.1, 3.0)), len(s))
             for s in sets}
    val_scores = rng.uniform(0.3, 0.9, 400)
    check = ftfit.fit(sets, val, guard_scores=guard, val_scores=val_scores)
    adults = np.concatenate([guard[k] for k in guard if k.startswith(ft.ADULT)])
    others = np.concatenate([guard[k] for k in guard if k.startswith((ft.OTHER_RADIOGRAPH, ft.NOT_RADIOGRAPH))])
    assert check.chest_max == pytest.approx(max(1.0, min(np.quantile(adults, 0.98), np.quantile(others, 0.05))))
    assert check.typical_max == pytest.approx(np.quantile(val_scores, 1 - 0.025))
    child = _cluster(rng, centres[ft.PEDIATRIC], 1)
    # a film the classifier is sure is frontal, just above the children's guard: kept, and named adult
    [v] = _judge(check, child, ped_score=min(check.chest_max, 1.05))
    assert v.reason is None and v.kind == ft.ADULT
    [v] = _judge(check, {k: a + 30.0 for k, a in child.items()}, ped_score=check.chest_max + 0.5)
    assert v.reason is not None                                          # beyond chest_max and the adults: refused
    [v] = _judge(check, child, ped_score=check.typical_max * 0.9)
    assert v.kind == ft.PEDIATRIC
    [v] = _judge(check, child, ped_score=float("nan"))                   # a missing score is never 'typical'
    assert v.kind != ft.PEDIATRIC


def test_fit_guard_refuses_a_film_types_folder_that_is_not_there(typed_model, synthetic_data, tmp_path):
    model, _ = typed_model
    before = (model / ft.FILM_TYPE_FILE).read_bytes()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["fit-guard", "--model", str(model), "--data", str(synthetic_data), "--film-types",
                   str(tmp_path / "typo")])
    assert rc == 2 and "not a folder" in err.getvalue()
    assert (model / ft.FILM_TYPE_FILE).read_bytes() == before          # the existing check is kept


def test_a_child_film_over_the_validated_ages_is_cautioned(typed_model, tmp_path):
    from conftest_io_helpers import make_dicom

    model, _ = typed_model
    child = (synthetic_film(np.random.default_rng(3), False, 64) * 4095).astype(np.uint16)
    paths = []
    for age in ("003Y", "009Y"):
        paths.append(tmp_path / f"{age}.dcm")
        paths[-1].write_bytes(make_dicom(child, "MONOCHROME2", 12, ViewPosition="PA", PatientAge=age))
    young, older = _predict(model, paths)
    if young["status"] == older["status"] == "ok" and young["film_type"] == older["film_type"] == ft.PEDIATRIC:
        assert not young["outside_validated_use"]
        assert older["outside_validated_use"] and "9 years old" in older["message"]
    else:                                  # the tiny model's guard may refuse a re-encoded synthetic film
        pytest.skip(f"the synthetic DICOM was judged {young['film_type']}/{older['film_type']}")
