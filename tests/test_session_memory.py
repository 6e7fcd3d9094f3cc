"""Issue #19, item 2: memory per session. A film is decoded to at most ``FILM_SIDE`` a side (never held at
full size), and a session keeps at most ``PNEUMO_SESSION_MPIX`` megapixels of films; films past it get a
message, not a crash. Core tests on synthetic films built here; the page test with AppTest."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from conftest import synthetic_film
from conftest_io_helpers import make_dicom
from PIL import Image
from test_app import errors, open_app, upload, weights  # noqa: F401  (weights: the page tests' fixture)

from pneumo_core.ingest.pixels import fitted_size
from pneumo_core.ingest.read import read_xray


def big_film(seed: int, shape: tuple[int, int] = (3000, 2400)) -> np.ndarray:
    """A chest-like film enlarged without interpolation: large in pixels, small as a PNG."""
    small = synthetic_film(np.random.default_rng(seed), True, 96)
    return cv2.resize(np.clip(small, 0, 1).astype(np.float32), shape[::-1], interpolation=cv2.INTER_NEAREST)


def png(pixels: np.ndarray, bits: int = 8) -> bytes:
    scale = 255 if bits == 8 else 65535
    buf = io.BytesIO()
    Image.fromarray((np.clip(pixels, 0, 1) * scale).astype(np.uint8 if bits == 8 else np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def area(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(pixels, shape[::-1], interpolation=cv2.INTER_AREA)


# --------------------------------------------------------------------------- the core: read_xray(max_side=...)

def test_fitted_size_keeps_the_aspect_and_a_readable_short_side():
    assert fitted_size(7000, 7000, 1024) == (1024, 1024)
    assert fitted_size(2400, 3000, 1024) == (819, 1024)
    assert fitted_size(800, 600, 1024) == (800, 600) and fitted_size(800, 600, None) == (800, 600)
    assert min(fitted_size(16000, 40, 1024)) >= 32                 # never below MIN_SIDE


@pytest.mark.parametrize("bits", [8, 16])
def test_large_png_is_decoded_to_max_side_with_its_own_size_in_the_metadata(bits):
    pixels = big_film(1)
    data = png(pixels, bits)
    full = read_xray(data)
    small = read_xray(data, max_side=1024)
    assert small.shape == (1024, 819) and small.pixels.dtype == np.float32
    assert small.metadata["width"] == 2400 and small.metadata["height"] == 3000
    assert small.metadata["bits_stored"] == bits
    # what an area resize of the full film gives (the reduction is a box filter, then an area resize)
    assert np.abs(small.pixels - area(full.pixels, small.shape)).mean() < 2e-3


def test_large_jpeg_with_exif_rotation_is_reduced_then_turned_upright():
    arr = (big_film(2, (2000, 3000)) * 255).astype(np.uint8)        # stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6                                                 # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    full = read_xray(buf.getvalue())
    small = read_xray(buf.getvalue(), max_side=1024)
    assert full.shape == (3000, 2000) and small.shape == (1024, 683)   # upright: portrait
    assert (small.metadata["width"], small.metadata["height"]) == (2000, 3000)
    assert any("orientation" in w for w in small.warnings)
    assert np.abs(small.pixels - area(full.pixels, small.shape)).mean() < 5e-3


def test_large_dicom_keeps_its_window_at_max_side():
    """16-bit data with a window: the stored values are reduced first, then windowed as before."""
    values = (big_film(3, (2400, 2400)) * 60000).astype(np.uint16)
    data = make_dicom(values, "MONOCHROME1", 16, WindowCenter=30000, WindowWidth=40000)
    full = read_xray(data)
    small = read_xray(data, max_side=1024)
    assert small.shape == (1024, 1024) and small.metadata["width"] == 2400
    assert any("MONOCHROME1" in w for w in small.warnings)
    assert np.abs(small.pixels - area(full.pixels, small.shape)).mean() < 2e-3
    assert 0.0 <= small.pixels.min() and small.pixels.max() <= 1.0


def test_small_films_are_unchanged_by_max_side():
    data = png(synthetic_film(np.random.default_rng(4), False, 96))
    np.testing.assert_array_equal(read_xray(data, max_side=1024).pixels, read_xray(data).pixels)


# --------------------------------------------------------------------------- the page: a cap per session

def test_predict_keeps_films_small_and_refuses_films_past_the_session_cap(weights, monkeypatch):
    from appkit.analysis import FILM_SIDE, held_pixels

    monkeypatch.setenv("PNEUMO_SESSION_MPIX", "2.5")            # room for two films of FILM_SIDE a side
    films = [(f"big{i}.png", png(big_film(10 + i, (3000, 3000)))) for i in range(4)]
    at = upload(open_app(), *films)
    assert not at.exception
    refused = [w.value for w in at.warning if "limit per session is 2" in w.value]
    assert len(refused) == 2 and not errors(at), [w.value for w in at.warning]     # the last two, with why
    _, kept = at.session_state["_films_predict"]
    assert len(kept) == 2
    assert all(max(f.image.shape) <= FILM_SIDE for f in kept.values())
    assert held_pixels(kept.values()) <= 2_500_000
    assert "Traceback" not in str(at._tree)

    at.file_uploader[0].set_value([(name, data, "image/png") for name, data in films[2:]]).run()
    assert not any("limit per session" in w.value for w in at.warning)    # room again: both analysed now
    _, kept = at.session_state["_films_predict"]
    assert len(kept) == 2
