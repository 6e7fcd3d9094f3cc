"""Read any X-ray a radiologist may upload: bytes or path -> XrayImage.

Pipeline, one small pure function per step (each is tested alone):

    load_bytes -> sniff -> decode_pillow | dicom.decode_dicom (pixel_array -> apply_modality
    -> apply_voi -> un-MONOCHROME1) -> pixels.to_unit_range -> pixels.finish

Scaling to [0, 1] (display sense, bright bone):
* Pillow images are display-ready: divided by their type's range (255, 65535);
  float / 32-bit images are stretched min..max.
* DICOM: by its VOI's output range, else the modality-LUT output's min..max (``dicom.py``).
  A constant image becomes zeros (the OOD guard is elsewhere).

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
is read (``dicom.py`` says how DICOM tags are kept to it). No Pillow setting is changed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from pneumo_core.errors import ImageTooLargeError, PneumoError, UnreadableImageError, UnsupportedImageError
from pneumo_core.ingest.dicom import MSG_DICOM_CORRUPT, decode_dicom
from pneumo_core.ingest.pixels import (
    MAX_PIXELS,
    MIN_SIDE,
    MSG_CORRUPT,
    WARN_COLOUR,
    WARN_FRAMES,
    check_size,
    colour_fraction,
    finish,
    fit,
    fitted_size,
    luminance,
    to_unit_range,
)

MAX_FILE_BYTES = 200 * 1024 * 1024  # checked before a byte is read (the film caps are in pixels.py)


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

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"))
_PIL_FORMATS = {"PNG": ["PNG"], "JPEG": ["JPEG", "MPO"], "BMP": ["BMP"], "WEBP": ["WEBP"],
                "TIFF": ["TIFF"], "GIF": ["GIF"]}
_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP",
               ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF", ".dcm": "DICOM", ".dicom": "DICOM"}


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


# --------------------------------------------------------------------------- Pillow

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
