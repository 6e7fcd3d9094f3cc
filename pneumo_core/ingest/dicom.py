"""DICOM films: bytes -> (gray in [0, 1], allow-listed metadata, warnings), for ``read.read_xray``.

The standard's order: pixel_array -> modality LUT -> VOI LUT (VOI LUT Sequence, else Window
Center/Width) -> un-MONOCHROME1. Scaling to [0, 1] (display sense, bright bone): with a VOI, by that
VOI's output range, so the window maps exactly onto [0, 1]; without one, by the min..max of the
modality-LUT output, as viewers do. Colour DICOM: by the bits-stored range.

Caps are checked on the header (Rows/Columns/frames and the first JPEG/J2K frame header) before any
pixel is decoded; with ``max_side`` the frame is reduced right after its pixels are read, before the LUTs.

Only ALLOWED_METADATA is read; DICOM strings are taken from raw element bytes (pydicom's validation
would echo values into warnings), and pydicom's value validation is turned off for the same reason (the
one global setting changed). Coded tags (Modality, Body Part Examined, View Position, Photometric
Interpretation) are kept only when they are DICOM code strings (``CODE_STRING``): anything else is dropped
here, before a reason, a warning or a page could show it (a crafted tag could carry markdown or a link).
"""

from __future__ import annotations

import re
import struct
from io import BytesIO
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumo_core.errors import ImageTooLargeError, UnreadableImageError, UnsupportedImageError
from pneumo_core.ingest.pixels import (
    MAX_PIXELS,
    MAX_SIDE,
    MAX_TOTAL_PIXELS,
    WARN_COLOUR,
    WARN_FRAMES,
    check_size,
    colour_fraction,
    fit,
    luminance,
    to_unit_range,
)

if TYPE_CHECKING:  # pydicom is imported where DICOM is decoded: training machines may lack it
    import pydicom

MSG_DICOM_CORRUPT = "The DICOM file is truncated or corrupt."
WARN_MONO1 = "MONOCHROME1 film inverted for display"
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
# A DICOM code string (VR CS): upper-case letters, digits, space and underscore, at most 16 characters.
CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
WARN_BAD_CODE = "The DICOM {} value is not a valid code and was ignored."


def _no_value_warnings() -> None:
    """pydicom's value validation warns and logs with the offending value quoted (a UID, a name, a date): patient
    data in a server log. This module never needs that validation, so it is turned off (pydicom's one global
    setting this module changes; structural problems still raise and are refused here)."""
    import pydicom.config  # optional dependency, imported here (see TYPE_CHECKING above)

    if pydicom.config.settings.reading_validation_mode != pydicom.config.IGNORE:
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def read_dicom_dataset(data: bytes) -> pydicom.Dataset:
    """Parse DICOM bytes (with or without preamble / file meta); require pixel data."""
    import pydicom  # optional dependency, imported here (see TYPE_CHECKING above)
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if data[:4] == b"DICM":                       # preamble dropped by some writers
        data = bytes(128) + data
    if b"1.2.840.10008.1.2.1.99" in data[:4096]:  # deflate: an unbounded inflate, refused
        raise UnsupportedImageError("Deflate-compressed DICOM files are not supported.")
    _no_value_warnings()
    ds = pydicom.dcmread(BytesIO(data), force=data[128:132] != b"DICM")
    if "PixelData" not in ds or not ds.PixelData:
        if b"\xe0\x7f\x10\x00" in data:          # the tag is there: lost to a cut
            raise UnreadableImageError(MSG_DICOM_CORRUPT)
        raise UnsupportedImageError("This DICOM file contains no image (no pixel data).")
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):         # no file meta: the encoding pydicom found
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit is not False
                                  else ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
        ds.file_meta = meta
    return ds


def check_dicom_header(ds: pydicom.Dataset) -> tuple[int, int, int]:
    """Caps, decodability and completeness from the header alone -> (rows, columns, frames)."""
    from pydicom.encaps import generate_frames  # optional dependency, imported here (see TYPE_CHECKING above)
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import get_expected_length

    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = max(int(ds.get("NumberOfFrames") or 1), 1)
    check_size(cols, rows)
    if rows * cols * frames > MAX_TOTAL_PIXELS:
        raise ImageTooLargeError(f"The DICOM image is too large ({frames} frames of {cols}×{rows} pixels).")
    ts = ds.file_meta.TransferSyntaxUID
    ts_name = ts.name if ts.name != str(ts) else "an unknown transfer syntax"
    try:
        available = get_decoder(ts).is_available
    except NotImplementedError as exc:
        raise UnsupportedImageError(f"This DICOM encoding is not supported ({ts_name}).") from exc
    if not available:
        raise UnsupportedImageError(f"No decoder is installed for this DICOM compression ({ts_name}).")
    if not ts.is_encapsulated and len(ds.PixelData) < get_expected_length(ds):
        raise UnreadableImageError("The DICOM image data is incomplete (the file is truncated or corrupt).")
    if ts.is_encapsulated:
        check_codestream(next(generate_frames(ds.PixelData, number_of_frames=frames), b""), rows, cols)
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples == 1 and ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2", None):
        raise UnsupportedImageError("This DICOM colour encoding (e.g. palette colour) is not supported.")
    return rows, cols, frames


def check_codestream(frame: bytes, rows: int = 0, columns: int = 0) -> None:
    """Refuse a JPEG / JPEG 2000 frame whose own header declares a huge image (a bomb), no size, or more
    rows / columns than the dataset: decoders allocate what the frame declares before pydicom finds the
    mismatch (found by bench/fuzz_ingest.py: a JPEG-LS height of 0 grew libjpeg to 24 GB; 7071x4096
    declared in a 224x224 film took 16 s)."""
    width = height = None
    if frame[:2] == b"\xff\xd8":
        try:
            from pydicom.pixels.utils import _get_jpg_parameters  # private: guarded
        except ImportError:
            return
        info = _get_jpg_parameters(frame)
        if "height" in info:
            width, height = info.get("width", 0), info["height"]
    elif frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:   # J2K SOC + SIZ
        x, y, x0, y0 = struct.unpack_from(">4I", frame, 8)
        width, height = x - x0, y - y0
    if width is None:
        return
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        check_size(width, height)
    if width <= 0 or height <= 0 or (rows and height > rows) or (columns and width > columns):
        raise UnreadableImageError(MSG_DICOM_CORRUPT)


def apply_modality(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT (sequence, or rescale slope/intercept) -> float64."""
    from pydicom.pixels import apply_modality_lut  # optional dependency, imported here (see TYPE_CHECKING above)

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def apply_voi(values: np.ndarray, ds: pydicom.Dataset, notes: list[str]) -> tuple[np.ndarray, float, float]:
    """VOI LUT Sequence, else window centre/width (pydicom), else nothing.

    Returns (values, lo, hi) where [lo, hi] is the VOI's output range, or the
    data's min..max when there is no usable VOI.
    """
    from pydicom.pixels import processing  # optional dependency, imported here (see TYPE_CHECKING above)

    try:
        if ds.get("VOILUTSequence"):
            n, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
            n = n or 65536
            lut = processing.apply_voi(np.arange(first, first + n), ds)
            index = np.clip(np.rint(values), first, first + n - 1).astype(np.int64)
            return processing.apply_voi(index, ds).astype(np.float64), float(lut.min()), float(lut.max())
        if "WindowCenter" in ds and "WindowWidth" in ds:
            out = processing.apply_windowing(values, ds)
            with np.errstate(all="ignore"):      # the output range, probed with -inf and +inf
                lo, hi = processing.apply_windowing(np.array([-np.inf, np.inf]), ds)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo != hi):
                raise ValueError("degenerate window")
            return out, float(lo), float(hi)
    except Exception:
        notes.append("The display window in the DICOM file is invalid and was ignored.")
    return values, float(values.min()), float(values.max())


def decode_dicom(data: bytes, max_side: int | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """DICOM bytes -> (gray in [0, 1], metadata, warnings); at most ``max_side`` a side (the frame's stored
    values are area-averaged before the LUTs, as a viewer shows a large film on a small screen)."""
    from pydicom.pixels import pixel_array  # optional dependency, imported here (see TYPE_CHECKING above)
    from pydicom.uid import RLELossless

    ds = read_dicom_dataset(data)
    rows, cols, frames = check_dicom_header(ds)
    notes = [WARN_FRAMES] if frames > 1 else []
    pi = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    # RLE: pydicom's own decoder (pylibjpeg-rle panics, noisily, on some corrupt input).
    plugin = "pydicom" if ds.file_meta.TransferSyntaxUID == RLELossless else ""
    arr = fit(pixel_array(ds, index=0, decoding_plugin=plugin), max_side)     # first frame; YBR -> RGB
    colour = None
    if arr.ndim == 3:
        notes.append(WARN_COLOUR)
        gray = to_unit_range(luminance(arr), 0, 2**bits - 1)
        colour = colour_fraction(arr, 2**bits - 1)
    else:
        values, lo, hi = apply_voi(apply_modality(arr, ds), ds, notes)
        gray = to_unit_range(values, lo, hi)
        if pi == "MONOCHROME1":
            gray = 1.0 - gray
            notes.append(WARN_MONO1)
    meta = dicom_metadata(ds, pi, bits, rows, cols, frames, notes)
    if colour is not None:
        meta["colour_fraction"] = colour
    return gray, meta, notes


def dicom_metadata(ds: pydicom.Dataset, pi: str, bits: int, rows: int, cols: int, frames: int,
                   notes: list[str] | None = None) -> dict:
    """Allow-listed metadata only; names, IDs, dates, institutions are never read. Coded tags are kept only
    when they are code strings (``code_string``); one that is not is dropped, with a note in ``notes``."""
    meta: dict[str, Any] = {"format": "DICOM", "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
                            "bits_stored": bits, "width": cols, "height": rows, "frames": frames}
    coded = [("photometric_interpretation", "Photometric Interpretation", pi)]
    coded += [(key, name, raw_text(ds, tag)) for key, name, tag in (
        ("modality", "Modality", 0x00080060), ("body_part", "Body Part Examined", 0x00180015),
        ("view_position", "View Position", 0x00185101))]
    for key, name, text in coded:
        if value := code_string(text):
            meta[key] = value
        elif text.strip() and notes is not None:
            notes.append(WARN_BAD_CODE.format(name))
    if (age := parse_age(raw_text(ds, 0x00101010))) is not None:
        meta["patient_age_years"] = age
    if (sex := raw_text(ds, 0x00100040).upper()) in ("M", "F", "O"):
        meta["patient_sex"] = sex
    return meta


def raw_text(ds: pydicom.Dataset, tag: int) -> str:
    """A short string element from its raw bytes (no pydicom value validation, no warnings)."""
    try:
        value = getattr(ds.get_item(tag), "value", None)
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("ascii", "replace")
        text = str(value or "").strip(" \x00")
    except Exception:
        return ""
    return text[:64] if text.isprintable() else ""


def code_string(text: str) -> str:
    """``text`` (upper-cased) when it is a DICOM code string, else "": nothing else from a coded tag is kept."""
    value = str(text or "").strip().upper()
    return value if CODE_STRING.fullmatch(value) else ""


def parse_age(text: str) -> float | None:
    """DICOM AS ('005Y', '006M', '010W', '020D') -> years (3 decimals), or None."""
    if not (match := _AGE.match(text.strip().upper())):
        return None
    years = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    return round(years, 3) if years <= 130 else None
