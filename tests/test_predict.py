"""Predictor: the same film in any encoding gets the same probability; warnings; the first-line guard."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_io_helpers import film, film8, make_dicom, png_bytes
from pydicom.uid import JPEG2000Lossless, RLELossless

from pneumo_core.ingest.read import read_xray
from pneumo_core.model.predict import Predictor
from pneumo_core.safety.checks import rejection_reason


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor.from_dir(tiny_model_dir)


def test_equal_pixels_in_different_encodings_get_the_same_probability(predictor):
    f = film()
    window = dict(WindowCenter=2047.5 * 2 + 10, WindowWidth=4096 * 2, RescaleSlope=2, RescaleIntercept=10)
    encodings = {
        "png8": png_bytes(film8(f)),
        "dicom16_window_rescale": make_dicom(f, "MONOCHROME2", 12, **window),
        "dicom_monochrome1": make_dicom((4095 - f).astype(np.uint16), "MONOCHROME1", 12),
        "dicom_rle": make_dicom(f, "MONOCHROME2", 12, compress=RLELossless),
        "dicom_j2k": make_dicom(f, "MONOCHROME2", 12, compress=JPEG2000Lossless),
    }
    probs = {k: predictor.predict(read_xray(v)).probability for k, v in encodings.items()}
    ref = probs["png8"]
    for k, p in probs.items():
        assert abs(p - ref) <= 0.02, (k, probs)


def test_batch_and_single_predictions_agree(predictor):
    rng = np.random.default_rng(0)
    images = [read_xray(png_bytes((rng.random((64 + 8 * i, 64)) * 255).astype(np.uint8))) for i in range(5)]
    many = [p.probability for p in predictor.predict_many(images, batch_size=2)]
    single = [predictor.predict(im).probability for im in images]
    assert np.allclose(many, single, atol=1e-5)


def test_label_follows_the_operating_point(predictor):
    image = read_xray(png_bytes(film8(film())))
    for name, thr in predictor.operating_points().items():
        p = predictor.predict(image, name)
        assert p.threshold == thr and p.operating_point == name
        assert p.label == ("PNEUMONIA" if p.probability >= thr else "NORMAL")
    with pytest.raises(ValueError):
        predictor.predict(image, "nonsense")


def test_clinical_warnings(predictor):
    lateral = read_xray(make_dicom(film(), "MONOCHROME2", 12, ViewPosition="LL", PatientAge="034Y"))
    notes = " ".join(predictor.predict(lateral).warnings)
    assert "Lateral" in notes and "older than the pediatric" in notes
    mono1 = read_xray(make_dicom(film(), "MONOCHROME1", 12))
    assert any("MONOCHROME1" in w for w in predictor.predict(mono1).warnings)


def test_guard_rejects_ct_and_blank_but_not_a_film():
    assert rejection_reason(read_xray(make_dicom(film(), "MONOCHROME2", 12, Modality="CT"))) is not None
    assert rejection_reason(read_xray(png_bytes(np.full((64, 64), 128, np.uint8)))) is not None
    assert rejection_reason(read_xray(png_bytes(film8(film())))) is None
