"""Builders for the io tests: every fixture image is made here, in memory.

No binary fixture is committed: PNG/JPEG/... come from numpy + Pillow, DICOM
from pydicom (set_pixel_data / compress / encapsulate), and JPEG Lossless
(process 14, SV1), for which no encoder is installed, from the tiny encoder
below.
"""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
)

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def film(shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """A smooth synthetic 12-bit 'film' (uint16) whose values span exactly 0..4095."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    g = np.sin(x / 23.0) * np.cos(y / 31.0) + 0.6 * np.exp(-((x - shape[1] / 2) ** 2 + (y - shape[0] / 3) ** 2) / 900.0)
    return np.rint((g - g.min()) / (g.max() - g.min()) * 4095).astype(np.uint16)


def film8(f: np.ndarray) -> np.ndarray:
    """The 8-bit quantisation of a 12-bit film (what an exported PNG holds)."""
    return np.rint(f.astype(np.float64) * 255 / 4095).astype(np.uint8)


def pil_bytes(img: Image.Image, fmt: str, **save_kw) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **save_kw)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    return pil_bytes(Image.fromarray(arr, mode) if mode else Image.fromarray(arr), "PNG")


def dicom_dataset(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                  **elements) -> Dataset:
    """A minimal DX dataset holding ``arr`` (native, explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_SOP_CLASS
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    bits = bits_stored or arr.dtype.itemsize * 8
    ds.set_pixel_data(arr, photometric, bits)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def dicom_bytes(ds: Dataset, *, implicit: bool = False, file_format: bool = True) -> bytes:
    """Serialise ``ds``: with preamble + file meta (default), or bare (old files)."""
    buf = BytesIO()
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    if not file_format:
        ds.file_meta = FileMetaDataset()
        ds.preamble = None
        ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_dicom(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
               *, compress: str | None = None, implicit: bool = False, file_format: bool = True,
               **elements) -> bytes:
    ds = dicom_dataset(arr, photometric, bits_stored, **elements)
    if compress:
        ds.compress(compress)
    return dicom_bytes(ds, implicit=implicit, file_format=file_format)


def voi_lut_sequence(lut: np.ndarray, first: int = 0, bits: int = 16) -> Sequence:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(lut) % 65536, first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", [int(v) for v in lut])            # LUT Data
    return Sequence([item])


def encapsulated_dicom(arr: np.ndarray, frame: bytes, syntax: str, bits_stored: int,
                       photometric: str = "MONOCHROME2") -> bytes:
    """Put an already encoded frame into a dataset shaped like ``arr``."""
    ds = dicom_dataset(arr, photometric, bits_stored)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return dicom_bytes(ds)


def jpeg_baseline_dicom(arr8: np.ndarray, quality: int = 95) -> bytes:
    frame = pil_bytes(Image.fromarray(arr8, "L"), "JPEG", quality=quality)
    return encapsulated_dicom(arr8, frame, JPEGBaseline8Bit, 8)


# --------------------------------------------------------------------------- JPEG Lossless SV1

def encode_jpeg_lossless_sv1(arr: np.ndarray, precision: int) -> bytes:
    """Minimal JPEG Lossless (ITU T.81 process 14, predictor 1) encoder, grayscale.

    One Huffman table where every category 0..16 has a 5-bit code; enough for
    tests (the decoder under test is libjpeg, via pydicom).
    """
    a = arr.astype(np.int64)
    pred = np.empty_like(a)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = a[0, :-1]          # first row: left neighbour
    pred[1:, 0] = a[:-1, 0]          # first column: the pixel above
    pred[1:, 1:] = a[1:, :-1]        # predictor 1 (Ra)
    diff = (a - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff)
    bits = []
    for d in diff.ravel().tolist():
        ssss = abs(d).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else (d - 1) & ((1 << ssss) - 1), f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big").replace(b"\xff", b"\xff\x00")
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)
    dht = b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 17) + b"\x00" + counts + bytes(range(17))
    rows, cols = arr.shape
    sof = b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, rows, cols, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x01\x00\x00"
    return b"\xff\xd8" + dht + sof + sos + data + b"\xff\xd9"


def jpeg_lossless_dicom(arr: np.ndarray, bits_stored: int) -> bytes:
    frame = encode_jpeg_lossless_sv1(arr, bits_stored)
    return encapsulated_dicom(arr, frame, JPEGLosslessSV1, bits_stored)


# --------------------------------------------------------------------------- pydicom samples

def bundled_dicom(name: str) -> Path:
    """A test file shipped inside the installed pydicom wheel; skip (no download) if absent."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    if not path.is_file():
        pytest.skip(f"{name} is not bundled with this pydicom (it would need a download)")
    return path


# --------------------------------------------------------------------------- contract

def assert_valid_xray(result) -> None:
    from pneumo_core.ingest.read import ALLOWED_METADATA, XrayImage

    assert isinstance(result, XrayImage)
    px = result.pixels
    assert px.dtype == np.float32 and px.ndim == 2 and px.flags.c_contiguous
    assert np.isfinite(px).all()
    assert px.min() >= 0.0 and px.max() <= 1.0
    assert set(result.metadata) <= set(ALLOWED_METADATA)
    assert all(isinstance(w, str) and w and "\n" not in w for w in result.warnings)


def assert_one_line(exc: BaseException) -> None:
    msg = str(exc)
    assert msg.strip() and "\n" not in msg and "Traceback" not in msg, repr(msg)
