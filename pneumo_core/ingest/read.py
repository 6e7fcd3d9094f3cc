"""Read any X-ray a radiologist may upload: bytes or path -> XrayImage.

Pipeline, one small pure function per step (each is tested alone):

    load_bytes -> sniff -> decode_pillow | decode_dicom (pixel_array -> apply_modality
    -> apply_voi -> un-MONOCHROME1) -> to_unit_range -> finish

Scaling to [0, 1] (display sense, bright bone):
* Pillow images are display-ready: divided by their type's range (255, 65535);
  float / 32-bit images are stretched min..max.
* DICOM with a VOI (VOI LUT Sequence, else Window Center/Width): by that VOI's
  output range, so the window maps exactly onto [0, 1]. Without a VOI: by the
  min..max of the modality-LUT output, as viewers do. Colour DICOM: by the
  bits-stored range. A constant image becomes zeros (the OOD guard is elsewhere).

Caps are checked on headers (file size by stat, Pillow's header-only open,
DICOM Rows/Columns/frames and the first JPEG/J2K frame header) before any
pixel is decoded. ``read_xray(..., max_side=N)`` keeps at most N pixels on the
longer side (the app keeps films this way): the film is reduced as early as the
format allows (a JPEG is decoded at a reduced scale, other Pillow images are
reduced before any float copy, a DICOM frame right after its pixels are read,
before the LUTs): the film kept does not grow with the file's size, and the
decoding peak is about the decoder's own buffer (1-4 bytes a pixel), not float64
copies of the full film; metadata keeps the file's own width and height.

Every failure is an UnreadableImageError (or subclass) with a
fixed one-line message: no metadata value, no traceback. Only ALLOWED_METADATA
is read; DICOM strings are taken from raw element bytes (pydicom's validation
would echo values into warnings), and pydicom's value validation is turned off
for the same reason (the one global setting changed). Coded tags (Modality, Body
Part Examined, View Position, Photometric Interpretation) are kept only when they
are DICOM code strings (``CODE_STRING``): anything else is dropped here, before a
reason, a warning or a page could show it (a crafted tag could carry markdown or a
link). No Pillow setting is changed.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import cv2
import numpy as np
from PIL import Image

if TYPE_CHECKING:  # pydicom is imported where DICOM is decoded: training machines may lack it
    import pydicom

from pneumo_core.errors import (  # noqa: F401  (re-exported for callers)
    ImageTooLargeError,
    ImageTooSmallError,
    PneumoError,
    UnreadableImageError,
    UnsupportedImageError,
)

# Caps. A film is at most ~4k x 4k; anything far larger is refused before decoding.
MAX_PIXELS = 50_000_000          # per frame
MAX_SIDE = 16_384
MAX_FILE_BYTES = 200 * 1024 * 1024
MIN_SIDE = 32
MAX_TOTAL_PIXELS = 4 * MAX_PIXELS  # DICOM Rows*Columns*frames


@dataclass(frozen=True)
class XrayImage:
    """A decoded film in display sense.

    pixels: float32 2-D array in [0, 1], bright bone (MONOCHROME2 sense), upright.
    metadata: allow-listed keys only (see ALLOWED_METADATA). Patient age and sex
        may be present in memory; they are never logged or persisted.
    warnings: human-readable notes for the radiologist (multi-frame, RGB, ...).
    """

    pixels: np.ndarray
    metadata: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    def __repr__(self) -> str:  # patient fields stay out of logs that print the object
        shown = {k: v for k, v in self.metadata.items() if not k.startswith("patient_")}
        return f"XrayImage(shape={self.shape}, metadata={shown!r}, warnings={self.warnings!r})"


ALLOWED_METADATA = (
    "format",                      # "PNG", "JPEG", "DICOM", ...
    "transfer_syntax",             # DICOM transfer syntax name
    "modality",                    # DICOM Modality (CR, DX, CT, ...)
    "body_part",                   # BodyPartExamined
    "view_position",               # ViewPosition (PA, AP, LL, ...)
    "photometric_interpretation",
    "bits_stored",
    "width",
    "height",
    "frames",
    "colour_fraction",             # share of pixels with clearly coloured RGB (colour images only)
    "patient_age_years",           # float, in memory only
    "patient_sex",                 # "M" / "F" / "O", in memory only
)

MSG_CORRUPT = "The image is truncated or corrupt."
MSG_DICOM_CORRUPT = "The DICOM file is truncated or corrupt."
MSG_NON_FINITE = "The image contains invalid (non-numeric) pixel values."
WARN_MONO1 = "MONOCHROME1 film inverted for display"
WARN_FRAMES = "Only the first frame of this multi-frame image is shown."
WARN_COLOUR = "Colour image converted to greyscale."
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"))
_PIL_FORMATS = {"PNG": ["PNG"], "JPEG": ["JPEG", "MPO"], "BMP": ["BMP"], "WEBP": ["WEBP"],
                "TIFF": ["TIFF"], "GIF": ["GIF"]}
_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP",
               ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF", ".dcm": "DICOM", ".dicom": "DICOM"}
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
# A DICOM code string (VR CS): upper-case letters, digits, space and underscore, at most 16 characters.
CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
WARN_BAD_CODE = "The DICOM {} value is not a valid code and was ignored."


# --------------------------------------------------------------------------- bytes in, sniffing

def load_bytes(source: Any) -> bytes:
    """Bytes of ``source`` (bytes-like, path, or binary file-like), size-capped before reading."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            if (size := os.stat(source).st_size) > MAX_FILE_BYTES:
                raise ImageTooLargeError(_file_too_large(size))
            with open(source, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise UnreadableImageError("The file could not be opened.") from exc
    elif hasattr(source, "read"):
        data = bytes(source.read(MAX_FILE_BYTES + 1))
    else:
        raise TypeError(f"read_xray expects bytes or a path, not {type(source).__name__}")
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(_file_too_large(len(data)))
    return data


def _file_too_large(size: int) -> str:
    return f"The file is too large ({size / 2**20:,.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB)."


def sniff(data: bytes) -> str:
    """Format from content ('DICOM' or a Pillow format name); raise for anything else."""
    if not data:
        raise UnreadableImageError("This file is empty.")
    if data[128:132] == b"DICM" or data[:4] == b"DICM":
        return "DICOM"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) > 14 and data[14] in (12, 16, 40, 52, 56, 64, 108, 124):
        return "BMP"
    if b"%PDF-" in data[:1024]:
        raise UnreadableImageError("This is a PDF document, not an image.")
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise UnreadableImageError("This is a ZIP archive (or an Office document), not an image.")
    if looks_like_bare_dicom(data):
        return "DICOM"
    if (text := as_text(data[:4096])) is None:
        raise UnreadableImageError("This file is not a recognised image (PNG, JPEG, BMP, WebP, TIFF or DICOM).")
    head = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in head and head.startswith(("<svg", "<?xml", "<!doctype svg", "<!--")):
        raise UnsupportedImageError("This is an SVG drawing, not a radiograph; please upload PNG, JPEG or DICOM.")
    if head.startswith(("<!doctype html", "<html")) or "<html" in head[:1024]:
        raise UnreadableImageError("This is a web page (HTML), not an image.")
    raise UnreadableImageError("This is a text file, not an image.")


def looks_like_bare_dicom(data: bytes) -> bool:
    """An old DICOM file without preamble: starts with a group 0002/0008 element."""
    if len(data) < 16 or struct.unpack_from("<H", data)[0] not in (0x0002, 0x0008):
        return False
    if data[4:6].isalpha() and data[4:6].isupper():               # explicit VR
        return True
    return struct.unpack_from("<I", data, 4)[0] < len(data)      # implicit VR: a sane length


def as_text(chunk: bytes) -> str | None:
    """The chunk as text if it is mostly printable UTF-8, else None."""
    if b"\x00" in chunk:
        return None
    for cut in range(4):                          # a multi-byte character may be cut at the end
        try:
            text = chunk[: len(chunk) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
    return text if printable >= 0.95 * max(len(text), 1) else None


# --------------------------------------------------------------------------- shared steps

def check_size(width: int, height: int) -> None:
    """Refuse absurd or tiny dimensions (called on headers, before decoding)."""
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ImageTooLargeError(f"The image is too large ({width}×{height} pixels; the limit is "
                                 f"{MAX_SIDE} pixels a side and {MAX_PIXELS:,} pixels in all).")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageTooSmallError(f"The image is too small to read ({width}×{height} pixels; "
                                 f"at least {MIN_SIDE}×{MIN_SIDE} is needed).")


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most ``max_side``, aspect kept, and never below
    MIN_SIDE a side (an elongated film stays readable); unchanged when it fits or ``max_side`` is None."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max(max_side / max(width, height), min(1.0, MIN_SIDE / max(1, min(width, height))))
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(values: np.ndarray, max_side: int | None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Area-average an H x W (x C) array down to ``fitted_size`` (or to ``size``, width x height); the dtype is
    kept (integers rounded), so a DICOM frame still goes through its modality and VOI LUTs."""
    h, w = values.shape[:2]
    size = size or fitted_size(w, h, max_side)
    if size == (w, h):
        return values
    native = values.dtype in (np.uint8, np.uint16, np.int16, np.float32, np.float64)
    out = cv2.resize(values if native else values.astype(np.float64), size, interpolation=cv2.INTER_AREA)
    if out.dtype != values.dtype:
        out = np.rint(out) if np.issubdtype(values.dtype, np.integer) else out
        out = out.astype(values.dtype)
    return out


def reduce_pil(im: Image.Image, max_side: int | None) -> Image.Image:
    """Shrink a decoded Pillow image by the largest whole factor that keeps the longer side at least
    ``max_side`` (a box filter on the image's own 8/16-bit samples: no float copy of the full film); ``fit``
    then brings it to ``max_side`` exactly."""
    w, h = im.size
    factor = min(max(w, h) // max_side, max(1, min(w, h) // MIN_SIDE)) if max_side else 1
    if factor < 2:
        return im
    if im.mode.startswith("I;16"):                # Pillow cannot reduce these: the samples, resized by OpenCV
        a = np.asarray(im)
        return Image.fromarray(fit(a.astype(a.dtype.newbyteorder("="), copy=False), max_side))
    if im.mode in ("1", "P"):
        im = im.convert("L" if im.mode == "1" else "RGBA")
    try:
        return im.reduce(factor)
    except ValueError:                            # a mode reduce() does not take
        return im.convert("RGB").reduce(factor)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma (Pillow's convention) of the first three channels, float64."""
    return np.asarray(rgb, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114])


def to_unit_range(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map [lo, hi] (default: the data's min..max) linearly onto [0, 1], clipped, float32.

    lo > hi inverts; lo == hi (a constant image) gives zeros; non-finite input is refused.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0 or not np.isfinite(a).all():
        raise UnreadableImageError(MSG_NON_FINITE)
    lo = float(a.min()) if lo is None else float(lo)
    hi = float(a.max()) if hi is None else float(hi)
    if lo == hi or not (np.isfinite(lo) and np.isfinite(hi)):
        return np.zeros(a.shape, dtype=np.float32)
    with np.errstate(all="ignore"):
        out = a - lo                              # in place from here: films can be large
        out /= hi - lo
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32)


def finish(pixels: np.ndarray) -> np.ndarray:
    """The output contract: 2-D, sized within caps, finite, float32, C-contiguous, in [0, 1]."""
    a = np.asarray(pixels, dtype=np.float32)
    if a.ndim != 2:
        raise UnreadableImageError(MSG_CORRUPT)
    check_size(a.shape[1], a.shape[0])
    if not np.isfinite(a).all():
        raise UnreadableImageError(MSG_NON_FINITE)
    return np.ascontiguousarray(np.clip(a, 0.0, 1.0))


# --------------------------------------------------------------------------- Pillow

# EXIF orientation -> the transposition that makes the image upright (as ImageOps.exif_transpose, which
# copies the full image first: here only the reduced one is turned).
_EXIF_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}
_EXIF_SWAPS = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
               Image.Transpose.ROTATE_90)


def decode_pillow(data: bytes, fmt: str, max_side: int | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """PNG/JPEG/BMP/WebP/TIFF/GIF -> (gray in [0, 1], metadata, warnings); at most ``max_side`` a side."""
    notes: list[str] = []
    with Image.open(BytesIO(data), formats=_PIL_FORMATS[fmt]) as im:
        check_size(*im.size)                      # the header only: nothing decoded yet
        width, height = im.size
        try:
            if getattr(im, "is_animated", False):
                notes.append(WARN_FRAMES)
        except Exception:                         # a corrupt 2nd page must not spoil the 1st
            pass
        if max_side and fmt == "JPEG" and max(width, height) > max_side:
            im.draft(im.mode, fitted_size(width, height, max_side))     # decoded at 1/2, 1/4 or 1/8 scale
        im.load()
        bits_1 = im.mode == "1"
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:
            orientation = None
            notes.append("The EXIF orientation tag could not be read; the image is shown as stored.")
        upright = reduce_pil(im, max_side)        # before any copy of the full film
        if turn := _EXIF_TURNS.get(orientation):
            upright = upright.transpose(turn)
            notes.append("Rotated upright according to the EXIF orientation tag.")
            if turn in _EXIF_SWAPS:
                width, height = height, width
        gray, bits = pil_to_unit(upright, notes)
        gray = fit(gray, max_side, fitted_size(width, height, max_side))    # exactly as the film's own size gives
        meta = {"format": fmt, "width": width, "height": height, "bits_stored": 1 if bits_1 else bits}
        if WARN_COLOUR in notes:
            meta["colour_fraction"] = colour_fraction(np.asarray(upright.convert("RGB")), 255)
    return gray, meta, notes


def colour_fraction(rgb: np.ndarray, full_scale: float) -> float:
    """Share of pixels whose R, G, B differ by more than 10% of ``full_scale`` (on at most ~1M pixels).

    A grey film stored as RGB scores ~0 (JPEG chroma noise stays far below 10%); a photo scores high.
    """
    a = np.asarray(rgb)[..., :3]
    step = max(1, int(np.sqrt(a.shape[0] * a.shape[1] / 1_000_000)))
    a = a[::step, ::step].astype(np.float32)
    return round(float((np.ptp(a, axis=-1) > 0.1 * full_scale).mean()), 4)


def pil_to_unit(im: Image.Image, notes: list[str]) -> tuple[np.ndarray, int]:
    """A PIL image of any mode -> (gray in [0, 1], bits per sample). Alpha: shown on black."""
    if im.mode.startswith("I;16"):
        return to_unit_range(np.asarray(im), 0, 65535), 16
    if im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "I" and a.size and a.min() >= 0 and a.max() <= 65535:   # 16-bit PNG, old Pillow
            return to_unit_range(a, 0, 65535), 16
        return to_unit_range(a), 32
    if im.mode == "1":
        return to_unit_range(np.asarray(im, dtype=np.uint8), 0, 1), 1
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")                    # CMYK, YCbCr, LAB, HSV, ...
    # A 50-Mpixel colour film is 1.2 GB here as float64: scaled and masked in place, tested for colour by
    # blocks of rows, and dropped before the grey is scaled (bench/fuzz_ingest.py measured RSS over 4 GB).
    a = np.asarray(im, dtype=np.float64)
    a /= 255.0
    if a.ndim == 2:
        return to_unit_range(a, 0, 1), 8
    if im.mode in ("LA", "RGBA"):
        alpha, a = a[..., -1:], a[..., :-1]
        if alpha.max() > 0 and alpha.min() < 1:   # an all-zero alpha (some BMPs) is ignored
            a *= alpha
            notes.append("Transparent areas were shown on black.")
        del alpha
    if a.shape[-1] < 3:
        return to_unit_range(a[..., 0], 0, 1), 8
    if max(float(np.ptp(a[i:i + 256, :, :3], axis=-1).max()) for i in range(0, len(a), 256)) > 2 / 255:
        notes.append(WARN_COLOUR)
    gray = luminance(a)
    del a
    return to_unit_range(gray, 0, 1), 8


# --------------------------------------------------------------------------- DICOM

def _no_value_warnings() -> None:
    """pydicom's value validation warns and logs with the offending value quoted (a UID, a name, a date): patient
    data in a server log. This module never needs that validation, so it is turned off (pydicom's one global
    setting this module changes; structural problems still raise and are refused here)."""
    import pydicom.config

    if pydicom.config.settings.reading_validation_mode != pydicom.config.IGNORE:
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def read_dicom_dataset(data: bytes) -> pydicom.Dataset:
    """Parse DICOM bytes (with or without preamble / file meta); require pixel data."""
    import pydicom
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
    from pydicom.encaps import generate_frames
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
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


def apply_voi(values: np.ndarray, ds: pydicom.Dataset, notes: list[str]) -> tuple[np.ndarray, float, float]:
    """VOI LUT Sequence, else window centre/width (pydicom), else nothing.

    Returns (values, lo, hi) where [lo, hi] is the VOI's output range, or the
    data's min..max when there is no usable VOI.
    """
    from pydicom.pixels import processing

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
    from pydicom.pixels import pixel_array
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


# --------------------------------------------------------------------------- entry point

def read_xray(source: bytes | bytearray | memoryview | str | Path, *, name: str | None = None,
              max_side: int | None = None) -> XrayImage:
    """Decode ``source`` (bytes or a path) into an XrayImage.

    The type is sniffed from content, never from ``name`` (which only serves
    messages). ``max_side``: keep at most this many pixels on the longer side
    (reduced while decoding; ``metadata`` keeps the file's own size); None keeps
    the full film. Raises UnreadableImageError (or a subclass) with a one-line
    message on anything it cannot or will not read.
    """
    data = load_bytes(source)
    fmt = sniff(data)
    try:
        gray, meta, notes = decode_dicom(data, max_side) if fmt == "DICOM" else decode_pillow(data, fmt, max_side)
        pixels = finish(gray)
    except PneumoError:
        raise
    except MemoryError as exc:
        raise ImageTooLargeError("The image is too large to decode in memory.") from exc
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything (Rust panics included)
        if type(exc).__name__.startswith("DecompressionBomb"):   # Pillow's error or warning
            raise ImageTooLargeError(f"The image is too large (its header declares over "
                                     f"{MAX_PIXELS:,} pixels, the limit).") from exc
        raise UnreadableImageError(MSG_DICOM_CORRUPT if fmt == "DICOM" else MSG_CORRUPT) from exc
    ext = Path(name).suffix.lower() if name else ""
    if _EXTENSIONS.get(ext, fmt) != fmt:
        notes.append(f"The file name ends in {ext} but the content is {fmt}; it was read as {fmt}.")
    return XrayImage(pixels=pixels, metadata=meta, warnings=tuple(notes))
