"""Tests of pneumo_core.ingest.read: every fixture is built here, in memory (see conftest_io_helpers)."""

from __future__ import annotations

import io as stdio
import logging
import struct
import sys
import time
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_io_helpers import (  # noqa: E402
    assert_one_line,
    assert_valid_xray,
    bundled_dicom,
    dicom_bytes,
    dicom_dataset,
    film,
    film8,
    jpeg_baseline_dicom,
    jpeg_lossless_dicom,
    make_dicom,
    pil_bytes,
    png_bytes,
    voi_lut_sequence,
)
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

import pneumo_core.ingest.dicom as dcm  # noqa: E402
import pneumo_core.ingest.pixels as px  # noqa: E402
import pneumo_core.ingest.read as xio  # noqa: E402
from pneumo_core.errors import (  # noqa: E402
    ImageTooLargeError,
    ImageTooSmallError,
    UnreadableImageError,
    UnsupportedImageError,
)
from pneumo_core.ingest.dicom import read_dicom_dataset  # noqa: E402
from pneumo_core.ingest.read import XrayImage, read_xray  # noqa: E402

F = film()                       # 256x256, 12-bit, spans exactly 0..4095
F8 = film8(F)                    # its 8-bit quantisation (spans 0..255)
UNIT = F / 4095.0
UNIT8 = F8 / 255.0
RNG = np.random.default_rng(1234)
COLOUR = RNG.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
EXACT = 1e-6
JPEG_TOL = 10 / 255              # JPEG q95 on a smooth film


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


# --------------------------------------------------------------------------- readable cases

def _rgba():
    alpha = np.tile(np.linspace(0, 255, 256).astype(np.uint8), (256, 1))
    rgba = np.dstack([F8, F8, F8, alpha])
    return png_bytes(rgba, "RGBA"), UNIT8 * alpha / 255.0, EXACT, "Transparent"


def _palette():
    idx = (F8 // 2).astype(np.uint8)                     # 128 indices
    im = Image.fromarray(idx, "P")
    ramp = np.linspace(255, 0, 256).astype(np.uint8)    # inverted gray palette
    im.putpalette(np.repeat(ramp, 3).tolist())
    return pil_bytes(im, "PNG"), ramp[idx] / 255.0, EXACT, None


def _cmyk():
    return pil_bytes(Image.fromarray(F8).convert("CMYK"), "JPEG", quality=95), UNIT8, JPEG_TOL, None


def _multiframe():
    stack = np.stack([F, 4095 - F, F // 2])
    return make_dicom(stack, bits_stored=12), UNIT, EXACT, "first frame"


def _rescaled():
    return make_dicom(F, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024), UNIT, EXACT, None


def _narrow_window():
    expected = np.clip((F - 2047.5) / 1023.0 + 0.5, 0, 1)
    return make_dicom(F, bits_stored=12, WindowCenter=2048, WindowWidth=1024), expected, EXACT, None


def _voi_lut():
    lut = np.rint(65535 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint16)
    data = make_dicom(F, bits_stored=12, VOILUTSequence=voi_lut_sequence(lut))
    return data, lut[F] / 65535.0, EXACT, None


def _signed():
    data = make_dicom((F.astype(np.int32) - 2048).astype(np.int16), bits_stored=12)
    return data, UNIT, EXACT, None


READABLE = {
    "png-gray8": lambda: (png_bytes(F8), UNIT8, EXACT, None),
    "png-gray16": lambda: (png_bytes(F * 16), F * 16 / 65535.0, EXACT, None),
    "png-rgb-gray": lambda: (png_bytes(np.dstack([F8] * 3)), UNIT8, EXACT, None),
    "png-rgb-colour": lambda: (png_bytes(COLOUR), _luma(COLOUR), EXACT, "Colour"),
    "png-rgba": _rgba,
    "png-palette": _palette,
    "png-1bit": lambda: (pil_bytes(Image.fromarray(F8 > 127), "PNG"), (F8 > 127) * 1.0, EXACT, None),
    "jpeg-baseline": lambda: (pil_bytes(Image.fromarray(F8), "JPEG", quality=95), UNIT8, JPEG_TOL, None),
    "jpeg-progressive": lambda: (
        pil_bytes(Image.fromarray(F8), "JPEG", quality=95, progressive=True), UNIT8, JPEG_TOL, None),
    "jpeg-cmyk": _cmyk,
    "bmp": lambda: (pil_bytes(Image.fromarray(F8), "BMP"), UNIT8, EXACT, None),
    "bmp-rgb": lambda: (pil_bytes(Image.fromarray(COLOUR), "BMP"), _luma(COLOUR), EXACT, "Colour"),
    "webp-lossless": lambda: (pil_bytes(Image.fromarray(F8), "WEBP", lossless=True), UNIT8, EXACT, None),
    "tiff-8": lambda: (pil_bytes(Image.fromarray(F8), "TIFF"), UNIT8, EXACT, None),
    "tiff-16": lambda: (pil_bytes(Image.fromarray(F * 16), "TIFF"), F * 16 / 65535.0, EXACT, None),
    "gif": lambda: (pil_bytes(Image.fromarray(F8), "GIF"), UNIT8, EXACT, None),
    "dicom-explicit-le": lambda: (make_dicom(F, bits_stored=12), UNIT, EXACT, None),
    "dicom-implicit-le": lambda: (make_dicom(F, bits_stored=12, implicit=True), UNIT, EXACT, None),
    "dicom-bare-implicit": lambda: (
        make_dicom(F, bits_stored=12, implicit=True, file_format=False), UNIT, EXACT, None),
    "dicom-bare-explicit": lambda: (make_dicom(F, bits_stored=12, file_format=False), UNIT, EXACT, None),
    "dicom-8bit": lambda: (make_dicom(F8), UNIT8, EXACT, None),
    "dicom-signed": _signed,
    "dicom-rle": lambda: (make_dicom(F, bits_stored=12, compress=RLELossless), UNIT, EXACT, None),
    "dicom-jpeg-ls": lambda: (make_dicom(F, bits_stored=12, compress=JPEGLSLossless), UNIT, EXACT, None),
    "dicom-j2k-lossless": lambda: (make_dicom(F, bits_stored=12, compress=JPEG2000Lossless), UNIT, EXACT, None),
    "dicom-jpeg-lossless-sv1": lambda: (jpeg_lossless_dicom(F, 12), UNIT, EXACT, None),
    "dicom-jpeg-baseline": lambda: (jpeg_baseline_dicom(F8), UNIT8, JPEG_TOL, None),
    "dicom-multiframe": _multiframe,
    "dicom-rgb": lambda: (make_dicom(COLOUR, "RGB", 8), _luma(COLOUR), EXACT, "Colour"),
    "dicom-monochrome1": lambda: (make_dicom(4095 - F, "MONOCHROME1", 12), UNIT, EXACT, "MONOCHROME1"),
    "dicom-rescale": _rescaled,
    "dicom-window": _narrow_window,
    "dicom-voi-lut-sequence": _voi_lut,
}


@pytest.mark.parametrize("case", list(READABLE))
def test_reads(case):
    data, expected, tol, warning = READABLE[case]()
    result = read_xray(data, name=None)
    assert_valid_xray(result)
    assert result.shape == expected.shape
    assert np.abs(result.pixels - expected).max() <= tol
    if warning:
        assert any(warning.lower() in w.lower() for w in result.warnings), result.warnings
    else:
        assert not any("colour" in w.lower() or "frame" in w.lower() for w in result.warnings)
    fmt = case.split("-")[0].upper()
    assert result.metadata["format"] == fmt
    assert (result.metadata["width"], result.metadata["height"]) == (expected.shape[1], expected.shape[0])


def test_png16_keeps_16_bit_precision():
    arr = np.full((64, 64), 30000, np.uint16)
    arr[:, 32:] = 30001
    px = read_xray(png_bytes(arr)).pixels
    assert px[0, 40] - px[0, 0] == pytest.approx(1 / 65535, abs=1e-7)


@pytest.mark.parametrize("orientation, transpose", [(3, Image.Transpose.ROTATE_180),
                                                    (6, Image.Transpose.ROTATE_270),
                                                    (8, Image.Transpose.ROTATE_90)])
def test_jpeg_exif_orientation_is_applied(orientation, transpose):
    arr = np.zeros((96, 64), np.uint8)
    arr[:24, :16] = 255                                 # bright block top-left, portrait
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    expected = np.asarray(Image.fromarray(arr).transpose(transpose), np.float64) / 255
    result = read_xray(data)
    assert result.shape == expected.shape
    assert np.abs(result.pixels - expected).mean() < 0.02
    assert any("orientation" in w for w in result.warnings)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(stdio.BytesIO(data))), np.float64) / 255
    assert np.abs(result.pixels - upright).max() <= 1e-6


def test_dicom_metadata_is_allow_listed_and_typed():
    data = make_dicom(F, bits_stored=12, PatientAge="045Y", PatientSex="F")
    md = read_xray(data).metadata
    assert md == {"format": "DICOM", "transfer_syntax": "Explicit VR Little Endian",
                  "photometric_interpretation": "MONOCHROME2", "bits_stored": 12,
                  "width": 256, "height": 256, "frames": 1, "modality": "DX",
                  "body_part": "CHEST", "view_position": "PA",
                  "patient_age_years": 45.0, "patient_sex": "F"}


# --------------------------------------------------------------------------- bundled pydicom samples

MR_VARIANTS = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
               "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG2000.dcm",
                                  "SC_rgb_rle_2frame.dcm", "CT_small.dcm", *MR_VARIANTS])
def test_bundled_pydicom_samples(name):
    result = read_xray(bundled_dicom(name))
    assert_valid_xray(result)
    assert result.metadata["format"] == "DICOM"
    assert result.pixels.max() > result.pixels.min()


def test_bundled_mr_variants_decode_identically():
    reference = read_xray(bundled_dicom(MR_VARIANTS[0])).pixels
    for name in MR_VARIANTS[1:]:
        np.testing.assert_array_equal(read_xray(bundled_dicom(name)).pixels, reference, err_msg=name)


# --------------------------------------------------------------------------- equivalence

def _windowed(compress=None):
    """16-bit stored 3F+500, rescale 0.5/-200 -> M = 1.5F+50; the window spans exactly 50..6192.5."""
    stored = (3 * F.astype(np.uint32) + 500).astype(np.uint16)
    return make_dicom(stored, bits_stored=16, compress=compress, RescaleSlope="0.5",
                      RescaleIntercept="-200", WindowCenter="3121.75", WindowWidth="6143.5")


EQUIVALENT = {
    "dicom-window-rescale": lambda: _windowed(),
    "dicom-monochrome1": lambda: make_dicom(4095 - F, "MONOCHROME1", 12),
    "dicom-monochrome1-window": lambda: make_dicom(4095 - F, "MONOCHROME1", 12,
                                                   WindowCenter=2048, WindowWidth=4096),
    "dicom-rle": lambda: _windowed(RLELossless),
    "dicom-j2k-lossless": lambda: _windowed(JPEG2000Lossless),
    "dicom-jpeg-ls": lambda: _windowed(JPEGLSLossless),
    "dicom-jpeg-lossless-sv1": lambda: jpeg_lossless_dicom(F, 12),
}


@pytest.mark.parametrize("variant", list(EQUIVALENT))
def test_same_film_gives_same_pixels(variant):
    png = read_xray(png_bytes(F8)).pixels
    assert np.abs(png - UNIT8).max() <= EXACT
    px = read_xray(EQUIVALENT[variant]()).pixels
    assert np.abs(px - UNIT).max() <= EXACT                  # exact in principle
    assert np.abs(px - png).max() <= 0.5 / 255 + EXACT       # the PNG's 8-bit rounding only


def test_8bit_dicom_equals_png_exactly():
    np.testing.assert_array_equal(read_xray(make_dicom(F8)).pixels, read_xray(png_bytes(F8)).pixels)


# --------------------------------------------------------------------------- refusals

def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _corrupt_png():
    data = bytearray(png_bytes(F8))
    start = data.index(b"IDAT") + 40
    data[start : start + 400] = RNG.integers(0, 256, 400, dtype=np.uint8).tobytes()
    return bytes(data)


def _dicom_without_pixels():
    ds = dicom_dataset(F, bits_stored=12)
    del ds.PixelData
    return dicom_bytes(ds)


def _dicom_short_pixels():
    ds = dicom_dataset(F, bits_stored=12)
    ds.PixelData = ds.PixelData[:1000]
    return dicom_bytes(ds)


def _dicom_huge(rows=30000, cols=30000, frames=None):
    ds = dicom_dataset(F, bits_stored=12)
    ds.Rows, ds.Columns = rows, cols
    if frames:
        ds.NumberOfFrames = frames
    return dicom_bytes(ds)


def _patched(data: bytes, marker: bytes, offset: int, fmt: str, *values: int) -> bytes:
    """Overwrite header fields found ``offset`` bytes after the first ``marker``."""
    out = bytearray(data)
    at = out.index(marker) + offset
    out[at : at + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    return bytes(out)


def _zip():
    buf = stdio.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("film.png", png_bytes(F8))
    return buf.getvalue()


def _deflated():
    ds = dicom_dataset(F, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return dicom_bytes(ds)


def _nan_tiff():
    arr = np.ones((64, 64), np.float32)
    arr[3, 3] = np.nan
    return pil_bytes(Image.fromarray(arr, "F"), "TIFF")


_SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
REFUSED = {
    "empty": (lambda: b"", UnreadableImageError, "empty"),
    "truncated-png": (lambda: png_bytes(F8)[:3000], UnreadableImageError, "truncated"),
    "truncated-jpeg": (lambda: pil_bytes(Image.fromarray(F8), "JPEG")[:4000], UnreadableImageError, "truncated"),
    "truncated-dicom": (lambda: make_dicom(F, bits_stored=12)[:-5000], UnreadableImageError, "truncated"),
    "truncated-dicom-rle": (lambda: make_dicom(F, bits_stored=12, compress=RLELossless)[:-3000],
                            UnreadableImageError, "corrupt"),
    "corrupt-png": (_corrupt_png, UnreadableImageError, "corrupt"),
    "random-bytes": (lambda: RNG.integers(1, 256, 5000, dtype=np.uint8).tobytes(), UnreadableImageError,
                     "not a recognised image"),
    "text": (lambda: b"Patient has a cough.\nFollow-up in two weeks.\n" * 20, UnreadableImageError, "text"),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", UnreadableImageError, "PDF"),
    "html": (lambda: b"<!DOCTYPE html>\n<html><body><img src='x.png'></body></html>", UnreadableImageError,
             "HTML"),
    "zip": (_zip, UnreadableImageError, "ZIP"),
    "svg": (lambda: _SVG, UnsupportedImageError, "SVG"),
    "dicom-no-pixel-data": (_dicom_without_pixels, UnsupportedImageError, "no pixel data"),
    "dicom-too-little-pixel-data": (_dicom_short_pixels, UnreadableImageError, "incomplete"),
    "dicom-deflated": (_deflated, UnsupportedImageError, "Deflate"),
    "dicom-palette": (lambda: make_dicom(F8, "PALETTE COLOR"), UnsupportedImageError, "palette"),
    "png-30000x30000": (lambda: _png_header(30000, 30000), ImageTooLargeError, "too large"),
    "png-12000x12000": (lambda: _png_header(12000, 12000), ImageTooLargeError, "too large"),
    "png-8000x8000": (lambda: _png_header(8000, 8000), ImageTooLargeError, "8000×8000"),
    "png-20000x40": (lambda: _png_header(20000, 40), ImageTooLargeError, "too large"),
    "dicom-30000x30000": (_dicom_huge, ImageTooLargeError, "30000×30000"),
    "dicom-too-many-frames": (lambda: _dicom_huge(5000, 5000, 20), ImageTooLargeError, "too large"),
    "dicom-j2k-bomb": (lambda: _patched(make_dicom(F, bits_stored=12, compress=JPEG2000Lossless),
                                        b"\xff\x4f\xff\x51", 8, ">II", 60000, 60000),
                       ImageTooLargeError, "60000×60000"),
    "dicom-jpeg-bomb": (lambda: _patched(jpeg_baseline_dicom(F8), b"\xff\xc0", 5, ">HH", 60000, 60000),
                        ImageTooLargeError, "60000×60000"),
    "png-10x10": (lambda: png_bytes(F8[:10, :10]), ImageTooSmallError, "too small"),
    "dicom-10x10": (lambda: make_dicom(F[:10, :10], bits_stored=12), ImageTooSmallError, "too small"),
    "tiff-nan": (_nan_tiff, UnreadableImageError, "invalid"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refuses(case):
    builder, error, words = REFUSED[case]
    with pytest.raises(error) as info:
        read_xray(builder())
    assert_one_line(info.value)
    assert words.lower() in str(info.value).lower()
    if error is UnreadableImageError:              # not mislabelled as a more specific refusal
        assert not isinstance(info.value, (ImageTooLargeError, ImageTooSmallError))


def test_bomb_is_refused_fast_without_allocating():
    data = _png_header(30000, 30000)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError):
            read_xray(data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 50 * 2**20


def test_huge_dicom_is_refused_fast():
    data = _dicom_huge()
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError):
        read_xray(data)
    assert time.perf_counter() - start < 1.0


def test_file_cap_checked_with_stat_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "film.png"
    path.write_bytes(png_bytes(F8))
    monkeypatch.setattr(xio, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(xio, "open", lambda *a: pytest.fail("read before the size check"), raising=False)
    with pytest.raises(ImageTooLargeError) as info:
        read_xray(path)
    assert_one_line(info.value)
    with pytest.raises(ImageTooLargeError):
        read_xray(png_bytes(F8))


@pytest.mark.parametrize("target", ["missing.png", "."])
def test_unopenable_path(tmp_path, target):
    with pytest.raises(UnreadableImageError) as info:
        read_xray(tmp_path / target)
    assert_one_line(info.value)


def test_constant_image_is_readable():
    assert not read_xray(png_bytes(np.zeros((64, 64), np.uint8))).pixels.any()
    px = read_xray(make_dicom(np.full((64, 64), 1000, np.uint16), bits_stored=12)).pixels
    assert px.shape == (64, 64) and not px.any()


def test_invalid_window_is_ignored_with_a_warning():
    result = read_xray(make_dicom(F, bits_stored=12, WindowCenter=100, WindowWidth=0))
    assert np.abs(result.pixels - UNIT).max() <= EXACT
    assert any("window" in w for w in result.warnings)


EXCEPTIONS = [ValueError("x"), KeyError("x"), AttributeError("x"), OSError("x"), struct.error("x"),
              EOFError("x"), RuntimeError("x"), TypeError("x"), IndexError("x"), NotImplementedError("x"),
              ZeroDivisionError("x"), SyntaxError("x"), RecursionError("x"), UnicodeDecodeError("ascii", b"", 0, 1, "x")]


@pytest.mark.parametrize("fmt, decoder", [("png", "decode_pillow"), ("dicom", "decode_dicom")])
@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_decoder_exceptions_become_unreadable(monkeypatch, fmt, decoder, exc):
    def boom(*args, **kwargs):
        raise exc
    monkeypatch.setattr(xio, decoder, boom)
    data = png_bytes(F8) if fmt == "png" else make_dicom(F, bits_stored=12)
    with pytest.raises(UnreadableImageError) as info:
        read_xray(data)
    assert info.value.__cause__ is exc
    assert_one_line(info.value)
    assert str(exc) not in str(info.value)


def test_memory_error_becomes_too_large(monkeypatch):
    monkeypatch.setattr(xio, "decode_pillow", lambda *a: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(ImageTooLargeError):
        read_xray(png_bytes(F8))


def test_wrong_source_type_is_a_programming_error():
    with pytest.raises(TypeError):
        read_xray(12345)  # type: ignore[arg-type]


def test_global_state_untouched():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    for data in (png_bytes(F8), _png_header(30000, 30000), make_dicom(F, bits_stored=12)):
        try:
            read_xray(data)
        except UnreadableImageError:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


# --------------------------------------------------------------------------- names, paths, privacy

def test_extension_lies(tmp_path):
    png_as_dcm = tmp_path / "film.dcm"
    png_as_dcm.write_bytes(png_bytes(F8))
    dcm_as_jpg = tmp_path / "film.jpg"
    dcm_as_jpg.write_bytes(make_dicom(F, bits_stored=12))
    a = read_xray(png_as_dcm, name="film.dcm")
    b = read_xray(dcm_as_jpg.read_bytes(), name="film.jpg")
    assert a.metadata["format"] == "PNG" and np.abs(a.pixels - UNIT8).max() <= EXACT
    assert b.metadata["format"] == "DICOM" and np.abs(b.pixels - UNIT).max() <= EXACT
    assert any(".dcm" in w for w in a.warnings) and any(".jpg" in w for w in b.warnings)


@pytest.mark.parametrize("kind", ["png", "dicom", "jpeg"])
def test_path_and_bytes_give_identical_results(tmp_path, kind):
    data = {"png": lambda: png_bytes(F8), "dicom": lambda: make_dicom(F, bits_stored=12),
            "jpeg": lambda: pil_bytes(Image.fromarray(F8), "JPEG")}[kind]()
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    results = [read_xray(data), read_xray(path), read_xray(str(path)), read_xray(bytearray(data)),
               read_xray(memoryview(data)), read_xray(stdio.BytesIO(data))]
    for other in results[1:]:
        np.testing.assert_array_equal(other.pixels, results[0].pixels)
        assert dict(other.metadata) == dict(results[0].metadata)
        assert other.warnings == results[0].warnings


IDENTIFIERS = {"PatientName": "Doe^Janet", "PatientID": "PID8675309", "PatientBirthDate": "19610302",
               "StudyDate": "20240117", "AcquisitionDate": "20240118", "InstitutionName": "St Elsewhere Infirmary",
               "AccessionNumber": "ACC555123", "ReferringPhysicianName": "House^Gregory",
               "StudyInstanceUID": "1.2.3.4.5.6.7.8.9.424242"}


def test_no_identifiers_leak(caplog):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = read_xray(make_dicom(F, bits_stored=12, PatientAge="067Y", PatientSex="M", **IDENTIFIERS))
        ds = dicom_dataset(F, bits_stored=12, PatientAge="067Y", **IDENTIFIERS)
        ds.PixelData = ds.PixelData[:100]
        with pytest.raises(UnreadableImageError) as info:
            read_xray(dicom_bytes(ds))
    assert result.metadata["patient_age_years"] == 67.0 and result.metadata["patient_sex"] == "M"
    texts = [repr(result), str(result), repr(dict(result.metadata)), " ".join(result.warnings),
             str(info.value), caplog.text, " ".join(str(w.message) for w in caught)]
    for value in IDENTIFIERS.values():
        for part in value.split("^"):
            assert all(part not in text for text in texts), part
    assert "067" not in repr(result) and "67.0" not in repr(result)  # age/sex stay out of repr


@pytest.mark.parametrize("text, years", [("005Y", 5.0), ("006M", 0.5), ("010W", round(70 / 365.25, 3)),
                                         ("020D", round(20 / 365.25, 3)), ("045Y", 45.0), ("", None),
                                         ("abc", None), ("45", None), ("999Y", None)])
def test_parse_age(text, years):
    assert dcm.parse_age(text) == years


# --------------------------------------------------------------------------- the small pure steps

@pytest.mark.parametrize("head, fmt", [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff\xe0", "JPEG"),
                                       (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"GIF89a", "GIF"),
                                       (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
                                       (b"BM" + bytes(12) + b"\x28", "BMP"),
                                       (bytes(128) + b"DICM", "DICOM"),
                                       (b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", "DICOM")])
def test_sniff(head, fmt):
    assert xio.sniff(head + bytes(64)) == fmt


def test_to_unit_range():
    np.testing.assert_allclose(px.to_unit_range(np.array([[0, 5, 10]])), [[0, 0.5, 1]])
    np.testing.assert_allclose(px.to_unit_range(np.array([[0, 5, 10]]), 10, 0), [[1, 0.5, 0]])
    np.testing.assert_allclose(px.to_unit_range(np.array([[-5, 5, 15]]), 0, 10), [[0, 0.5, 1]])
    assert not px.to_unit_range(np.full((4, 4), 7.0)).any()
    assert px.to_unit_range(np.zeros((2, 2))).dtype == np.float32
    with pytest.raises(UnreadableImageError):
        px.to_unit_range(np.array([[0.0, np.inf]]))


def test_voi_window_range_and_modality_lut():
    import pydicom
    ds = pydicom.dcmread(stdio.BytesIO(make_dicom(F, bits_stored=12, RescaleSlope=2, RescaleIntercept=-10,
                                                 WindowCenter=1000, WindowWidth=501)))
    values = dcm.apply_modality(F, ds)
    np.testing.assert_array_equal(values, 2.0 * F - 10)
    notes: list[str] = []
    out, lo, hi = dcm.apply_voi(values, ds, notes)
    assert (lo, hi) == (-10.0, 8180.0) and not notes        # the rescaled 12-bit range
    unit = px.to_unit_range(out, lo, hi)
    np.testing.assert_allclose(unit, np.clip((values - 999.5) / 500 + 0.5, 0, 1), atol=EXACT)


def test_check_size_and_finish():
    px.check_size(px.MIN_SIDE, px.MAX_SIDE)
    with pytest.raises(ImageTooSmallError):
        px.check_size(px.MIN_SIDE - 1, 100)
    with pytest.raises(ImageTooLargeError):
        px.check_size(px.MAX_SIDE + 1, 100)
    out = px.finish(np.asfortranarray(np.full((40, 50), 0.5)))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    with pytest.raises(UnreadableImageError):
        px.finish(np.zeros((40, 50, 3)))


def test_xray_image_is_frozen():
    result = read_xray(png_bytes(F8))
    with pytest.raises(AttributeError):
        result.pixels = None  # type: ignore[misc]
    assert isinstance(result, XrayImage)


def test_dicom_values_are_not_echoed_into_warnings_or_logs(caplog, recwarn):
    """pydicom's value validation quotes the value it dislikes; a bad name or date must not reach a log."""
    import logging

    import numpy as np

    raw = make_dicom((np.random.default_rng(0).random((64, 64)) * 4095).astype(np.uint16), "MONOCHROME2", 12,
                     PatientName="Doe^Jane", PatientBirthDate="19990101", StudyInstanceUID="1.2.3.4")
    raw = raw.replace(b"19990101", b"1999X101").replace(b"1.2.3.4", b"1.2.3..")
    with caplog.at_level(logging.DEBUG):
        image = read_xray(raw)
        for tag in ("PatientBirthDate", "StudyInstanceUID", "PatientName"):   # what a careless caller might touch
            getattr(read_dicom_dataset(raw), tag)
    assert image.pixels.shape == (64, 64)
    text = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "1999X101" not in text and "1.2.3.." not in text and "Doe" not in text


# Markdown, a link and an image URL where DICOM wants a short code (issue #19, item 1).
INJECTED_TAGS = {"Modality": "[RESULT: NORMAL](http://evil.example)",
                 "BodyPartExamined": "**RESULT: NORMAL** http://evil.example",
                 "ViewPosition": "![x](http://evil.example/a.png)"}


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")   # pydicom, writing the crafted file
def test_coded_dicom_tags_that_are_not_code_strings_are_dropped():
    image = read_xray(make_dicom(F, bits_stored=12, **INJECTED_TAGS))
    md = image.metadata
    assert not {"modality", "body_part", "view_position"} & set(md), md
    assert "evil" not in repr(image).lower() and "RESULT" not in repr(image)
    assert sum("not a valid code and was ignored" in w for w in image.warnings) == 3
    assert not any("evil" in w or "RESULT" in w for w in image.warnings)
    # A conforming code (or one only in lower case) is kept, upper-cased; at most 16 characters.
    md = read_xray(make_dicom(F, bits_stored=12, Modality="dx", BodyPartExamined="CHEST_LUNG 2",
                              ViewPosition="A" * 17)).metadata
    assert (md["modality"], md["body_part"], "view_position" in md) == ("DX", "CHEST_LUNG 2", False)
