"""Fuzz ingestion and prediction: N mutated films through read_xray and the Predictor's whole check + predict.

    python bench/fuzz_ingest.py [--n 10000] [--seed 0] [--case K] [--model DIR] [--json OUT]
                                [--batch-size 16] [--threads 1] [--timeout 20] [--rss-cap-mb 4096]
                                [--out artifacts/fuzz] [--films-per-class 2]

Seeds: a few real films of external/ (both classes; a synthetic film when the data is absent)
re-encoded as 8/16-bit PNG, JPEG (baseline, progressive), BMP, TIFF, WebP (lossless, lossy) and
DICOM: uncompressed 12/16-bit MONOCHROME2 and MONOCHROME1, signed, rescale + window, VOI LUT,
implicit VR, bare (no file meta), no preamble, multi-frame, RGB, JPEG baseline, JPEG lossless,
JPEG-LS, JPEG 2000, RLE, deflated. A variant whose encoder is missing is skipped with a note.

Case K (0 <= K < n) is a pure function of (--seed, K): cases below the number of seeds are the
seeds themselves, every later one picks a seed and mutators from numpy's generator seeded with
[seed, K], so ``--case K`` rebuilds the same bytes (their sha256 is reported). Mutators: bit flips,
interesting byte values, chunk delete / duplicate / insert, truncation, splicing two seeds, and
format-aware edits that get past checksums: PNG chunks with recomputed CRC (IHDR fields, ancillary
chunks, re-deflated IDAT), JPEG markers (SOF dimensions / precision / components, segment lengths,
EXIF orientation), TIFF IFD entries, DICOM datasets via pydicom (pixel-module attributes, windows
with 0 / negative / NaN strings, rescale, VOI and modality LUTs, Modality, ViewPosition, frames,
pixel data length, a consistent but unusual geometry, nested sequences; written as raw element bytes
so nothing is validated) and DICOM bytes (a transfer syntax that does not match the pixel data, the
Pixel Data length field, the size inside an encapsulated frame's own header); and valid but unusual
re-encodings of a film (any size and aspect up to the caps, Pillow modes 1 / P / LA / RGBA / CMYK /
I;16 / signed I / float F with NaN, EXIF orientation).

Each case runs what `python -m pneumo_core predict` runs: read_xray on the bytes, then (batched)
Predictor.screen_many (model-free checks, the OOD guard, the network; the network runs on rejected
films too, as with --analyse-anyway) and screened_record, the CLI's record builder. Outcomes: ok
(analysed), rejected (read, outside validated use), refused (read_xray refused it with its documented
UnreadableImageError and a one-line message), failure.

A case FAILS when ingestion raises anything else; an accepted image breaks the io output contract
(2-D float32 C-contiguous, finite, in [0, 1], within the size caps, allow-listed metadata, one-line
warnings); the predict step raises, or returns a probability that is NaN or outside [0, 1], or a
record that is not valid JSON; the case takes longer than --timeout (signal.setitimer; a hang in
native code past twice that is caught by a watchdog thread, which records the case and exits); or
the process RSS during the case (VmHWM, reset per case through /proc/self/clear_refs) exceeds
--rss-cap-mb, or an allocation fails under the address-space limit that stops a runaway step first.

Each failing input is written to --out as seed<S>-case<K>.bin with a .txt beside it (what was done,
the traceback); --out/inflight names the running case, so a native crash can be traced to its input.
Nothing there is committed. What C decoders print on file descriptor 2 goes to
--out/native-stderr.log and the records pydicom logs are counted (both reported, neither a failure).
Exit status 1 when any case failed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import resource
import signal
import struct
import sys
import threading
import time
import traceback
import warnings
import zlib
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))   # conftest_io_helpers

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import DATA, ROOT, load_predictor  # noqa: E402
from pneumo_core.errors import UnreadableImageError  # noqa: E402
from pneumo_core.ingest.pixels import MAX_PIXELS, MAX_SIDE, MIN_SIDE  # noqa: E402
from pneumo_core.ingest.read import ALLOWED_METADATA, XrayImage, read_xray  # noqa: E402

DEFAULT_OUT = ROOT / "artifacts" / "fuzz"
OUTCOMES = ("ok", "rejected", "refused", "failure")
MAX_BATCH_PIXELS = 16_000_000        # flush a prediction batch early when its films are this large


# --------------------------------------------------------------------------- seeds

@dataclass(frozen=True)
class Seed:
    name: str            # e.g. "normal0/dicom-rle"
    fmt: str             # PNG | JPEG | BMP | TIFF | WEBP | DICOM
    data: bytes


def load_films(per_class: int) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """``per_class`` 8-bit films of each class of external/, spread over the sorted folder; else one synthetic film."""
    films, notes = [], []
    for label in ("NORMAL", "PNEUMONIA"):
        folder = DATA / "external" / label
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        for i in range(min(per_class, len(files))):
            path = files[i * len(files) // per_class]
            with Image.open(path) as im:
                films.append((f"{label.lower()}{i}", np.asarray(im.convert("L"), dtype=np.uint8)))
    if not films:
        from conftest_io_helpers import film, film8

        notes.append(f"no films under {DATA / 'external'}: one synthetic film is the seed")
        films.append(("synthetic0", film8(film((224, 224)))))
    return films, notes


def _pil(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    from conftest_io_helpers import pil_bytes

    return pil_bytes(Image.fromarray(arr, mode) if mode else Image.fromarray(arr), fmt, **kw)


def _dicom(uid: str, arr: np.ndarray, photometric: str = "MONOCHROME2", bits: int | None = None, *,
           compress: str | None = None, frame: bytes | None = None, syntax: str | None = None,
           implicit: bool = False, file_format: bool = True, **elements) -> bytes:
    """conftest_io_helpers' DICOM builders with a fixed SOP Instance UID, so a seed's bytes never change."""
    from conftest_io_helpers import dicom_bytes, dicom_dataset
    from pydicom.encaps import encapsulate

    ds = dicom_dataset(arr, photometric, bits, **elements)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    if compress:
        ds.compress(compress, generate_instance_uid=False)
    if syntax:                                             # deflate: pydicom deflates the dataset on writing
        ds.file_meta.TransferSyntaxUID = syntax
    if frame is not None:                                  # an already encoded frame (no pydicom encoder)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return dicom_bytes(ds, implicit=implicit, file_format=file_format)


def seed_variants(g8: np.ndarray, uid: str) -> dict[str, tuple[str, Callable[[], bytes]]]:
    """name -> (format, builder) for one 8-bit film."""
    from conftest_io_helpers import encode_jpeg_lossless_sv1, voi_lut_sequence
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGLosslessSV1,
        JPEGLSLossless,
        RLELossless,
    )

    g12 = np.rint(g8.astype(np.float64) * 4095 / 255).astype(np.uint16)
    g16 = (g8.astype(np.uint16) * 257).astype(np.uint16)
    lut = np.rint(65535 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint16)
    dcm = lambda *a, **kw: lambda: _dicom(uid, *a, **kw)  # noqa: E731
    return {
        "png8": ("PNG", lambda: _pil(g8, "PNG")),
        "png16": ("PNG", lambda: _pil(g16, "PNG")),
        "jpeg": ("JPEG", lambda: _pil(g8, "JPEG", quality=90)),
        "jpeg-progressive": ("JPEG", lambda: _pil(g8, "JPEG", quality=90, progressive=True)),
        "bmp": ("BMP", lambda: _pil(g8, "BMP")),
        "tiff": ("TIFF", lambda: _pil(g8, "TIFF", compression="tiff_lzw")),
        "tiff16": ("TIFF", lambda: _pil(g16, "TIFF")),
        "webp-lossless": ("WEBP", lambda: _pil(g8, "WEBP", lossless=True)),
        "webp": ("WEBP", lambda: _pil(g8, "WEBP", quality=90)),
        "dicom-12bit": ("DICOM", dcm(g12, bits=12, PatientAge="004Y", PatientSex="F")),
        "dicom-16bit": ("DICOM", dcm(g16, bits=16)),
        "dicom-monochrome1": ("DICOM", dcm(4095 - g12, "MONOCHROME1", 12)),
        "dicom-signed": ("DICOM", dcm((g12.astype(np.int32) - 2048).astype(np.int16), bits=12)),
        "dicom-rescale-window": ("DICOM", dcm((3 * g12.astype(np.uint32) + 500).astype(np.uint16), bits=16,
                                              RescaleSlope="0.5", RescaleIntercept="-200",
                                              WindowCenter="3121.75", WindowWidth="6143.5")),
        "dicom-voi-lut": ("DICOM", dcm(g12, bits=12, VOILUTSequence=voi_lut_sequence(lut))),
        "dicom-implicit": ("DICOM", dcm(g12, bits=12, implicit=True)),
        "dicom-bare": ("DICOM", dcm(g12, bits=12, implicit=True, file_format=False)),
        "dicom-no-preamble": ("DICOM", lambda: _dicom(uid, g12, bits=12)[128:]),
        "dicom-multiframe": ("DICOM", dcm(np.stack([g12, 4095 - g12, g12 // 2]), bits=12)),
        "dicom-rgb": ("DICOM", dcm(np.dstack([g8, g8, g8]), "RGB", 8)),
        "dicom-jpeg-baseline": ("DICOM", dcm(g8, bits=8, frame=_pil(g8, "JPEG", "L", quality=90),
                                             syntax=JPEGBaseline8Bit)),
        "dicom-jpeg-lossless": ("DICOM", dcm(g12, bits=12, frame=encode_jpeg_lossless_sv1(g12, 12),
                                             syntax=JPEGLosslessSV1)),
        "dicom-jpeg-ls": ("DICOM", dcm(g12, bits=12, compress=JPEGLSLossless)),
        "dicom-j2k": ("DICOM", dcm(g12, bits=12, compress=JPEG2000Lossless)),
        "dicom-rle": ("DICOM", dcm(g12, bits=12, compress=RLELossless)),
        "dicom-deflated": ("DICOM", dcm(g12, bits=12, syntax=DeflatedExplicitVRLittleEndian)),
    }


def build_seeds(per_class: int = 2, verbose: bool = False) -> tuple[list[Seed], list[str]]:
    """The seed corpus (deterministic bytes) and notes on what was skipped."""
    films, notes = load_films(per_class)
    seeds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (film_name, g8) in enumerate(films):
            for variant, (fmt, build) in seed_variants(g8, f"1.2.826.0.1.3680043.8.498.1.{i + 1}").items():
                try:
                    seeds.append(Seed(f"{film_name}/{variant}", fmt, build()))
                except Exception as exc:  # noqa: BLE001 - an encoder that is not installed
                    note = f"seed variant {variant} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    if note not in notes:
                        notes.append(note)
    if verbose:
        for note in notes:
            print(f"note: {note}")
    return seeds, notes


# --------------------------------------------------------------------------- generic mutators

INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0x20, 0x10, 0x40)
INTERESTING_16 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 16384, 16385, 4096)
INTERESTING_32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000, 50_000_001, 0xFFFFFFFE)


def pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def position(rng: np.random.Generator, n: int) -> int:
    """A byte offset in [0, n): often in the header, sometimes near the end, else anywhere."""
    r = rng.random()
    if r < 0.45:
        return int(rng.integers(min(n, 512)))
    if r < 0.55:
        return max(0, n - 1 - int(rng.integers(min(n, 64))))
    return int(rng.integers(n))


def m_bitflip(rng, data, seeds):
    buf = bytearray(data)
    k = int(rng.integers(1, 9))
    for _ in range(k):
        buf[position(rng, len(buf))] ^= 1 << int(rng.integers(8))
    return bytes(buf), f"bitflip x{k}"


def m_interesting(rng, data, seeds):
    buf = bytearray(data)
    width = pick(rng, (1, 2, 4))
    at = position(rng, max(1, len(buf) - width + 1))
    value = pick(rng, {1: INTERESTING_8, 2: INTERESTING_16, 4: INTERESTING_32}[width])
    order = pick(rng, ("<", ">"))
    buf[at:at + width] = struct.pack(order + {1: "B", 2: "H", 4: "I"}[width], value)
    return bytes(buf), f"interesting{width * 8}@{at}={value:#x}{order}"


def _chunk(rng, n: int) -> tuple[int, int]:
    at = position(rng, n)
    size = int(rng.integers(1, max(2, min(4096, n // 4))))
    return at, min(size, n - at)


def m_delete(rng, data, seeds):
    at, size = _chunk(rng, len(data))
    return data[:at] + data[at + size:], f"delete@{at}+{size}"


def m_duplicate(rng, data, seeds):
    at, size = _chunk(rng, len(data))
    to = position(rng, len(data))
    return data[:to] + data[at:at + size] + data[to:], f"duplicate@{at}+{size}->{to}"


def m_insert(rng, data, seeds):
    at, size = position(rng, len(data)), int(rng.integers(1, 257))
    blob = rng.integers(0, 256, size, dtype=np.uint8).tobytes() if rng.random() < 0.5 else \
        bytes([pick(rng, INTERESTING_8)]) * size
    return data[:at] + blob + data[at:], f"insert@{at}+{size}"


def m_truncate(rng, data, seeds):
    at = position(rng, len(data)) if rng.random() < 0.5 else int(rng.integers(len(data)))
    return data[:at], f"truncate@{at}"


def m_splice(rng, data, seeds):
    """Head of this file, tail of another seed: half the time one that starts alike, cut at the same
    offset (one file's header, another's body), else any seed cut anywhere."""
    cut = position(rng, len(data))
    if rng.random() < 0.5:
        other = pick(rng, [s for s in seeds if (s.data[:8], s.data[128:132]) == (data[:8], data[128:132])] or seeds)
        cut2 = cut
    else:
        other = pick(rng, seeds)
        cut2 = int(rng.integers(len(other.data)))
    return data[:cut] + other.data[cut2:], f"splice@{cut}+{other.name}@{cut2}"


GENERIC = (m_bitflip, m_interesting, m_delete, m_duplicate, m_insert, m_truncate, m_splice)


# --------------------------------------------------------------------------- PNG

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[list] | None:
    """[[type, body], ...] of a well-formed PNG, or None."""
    if not data.startswith(PNG_SIG):
        return None
    chunks, at = [], 8
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        if at + 12 + size > len(data):
            return None
        chunks.append([kind, data[at + 8:at + 8 + size]])
        at += 12 + size
    return chunks or None


def png_build(chunks) -> bytes:
    out = [PNG_SIG]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def m_png(rng, data, seeds):
    chunks = png_chunks(data)
    if chunks is None:
        return m_bitflip(rng, data, seeds)
    op = pick(rng, ("ihdr", "ihdr", "ihdr", "chunk-body", "chunk-drop", "chunk-dup", "chunk-add", "idat"))
    if op == "ihdr" and chunks[0][0] == b"IHDR" and len(chunks[0][1]) == 13:
        w, h, depth, colour, comp, filt, lace = struct.unpack(">IIBBBBB", chunks[0][1])
        what = pick(rng, ("width", "height", "size", "depth", "colour", "depth+colour", "comp", "filter", "interlace"))
        dims = (0, 1, 31, 32, 33, 255, 2 * w, w // 2, w - 1, w + 1, MAX_SIDE, MAX_SIDE + 1, 7072, 0x7FFFFFFF,
                0x80000000, 0xFFFFFFFF)
        if what in ("width", "size"):
            w = pick(rng, dims)
        if what in ("height", "size"):
            h = pick(rng, dims)
        if what in ("depth", "depth+colour"):
            depth = pick(rng, (0, 1, 2, 3, 4, 8, 16, 32, 255))
        if what in ("colour", "depth+colour"):
            colour = pick(rng, (0, 1, 2, 3, 4, 5, 6, 7, 255))
        if what == "comp":
            comp = pick(rng, (1, 255))
        if what == "filter":
            filt = pick(rng, (1, 255))
        if what == "interlace":
            lace = pick(rng, (0, 1, 2, 255))
        chunks[0][1] = struct.pack(">IIBBBBB", w, h, depth, colour, comp, filt, lace)
        return png_build(chunks), f"png:IHDR {what} -> {w}x{h} depth {depth} colour {colour}"
    if op == "chunk-body":
        i = int(rng.integers(len(chunks)))
        body = bytearray(chunks[i][1])
        if body:
            for _ in range(int(rng.integers(1, 5))):
                body[int(rng.integers(len(body)))] = int(rng.integers(256))
        chunks[i][1] = bytes(body)
        return png_build(chunks), f"png:{chunks[i][0].decode('latin1')} body edited, CRC fixed"
    if op == "chunk-drop" and len(chunks) > 1:
        i = int(rng.integers(len(chunks)))
        kind = chunks.pop(i)[0]
        return png_build(chunks), f"png:{kind.decode('latin1')} dropped"
    if op == "chunk-dup":
        i, j = int(rng.integers(len(chunks))), int(rng.integers(len(chunks) + 1))
        chunks.insert(j, list(chunks[i]))
        return png_build(chunks), f"png:{chunks[i][0].decode('latin1')} duplicated at {j}"
    if op == "idat":
        return _png_idat(rng, chunks)
    kind, body = pick(rng, (
        (b"PLTE", rng.integers(0, 256, 3 * int(rng.integers(0, 300)), dtype=np.uint8).tobytes()),
        (b"tRNS", rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()),
        (b"gAMA", struct.pack(">I", pick(rng, (0, 1, 45455, 0xFFFFFFFF)))),
        (b"sBIT", bytes([pick(rng, (0, 1, 8, 16, 255))])),
        (b"pHYs", struct.pack(">IIB", 0, 0xFFFFFFFF, 1)),
        (b"iCCP", b"junk\x00\x00" + zlib.compress(rng.integers(0, 256, 200, dtype=np.uint8).tobytes())),
        (b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 100_000)),
        (b"eXIf", _exif(rng)),
        (b"acTL", struct.pack(">II", pick(rng, (0, 1, 2, 0xFFFFFFFF)), 0)),
        (b"abCD", rng.integers(0, 256, 16, dtype=np.uint8).tobytes()),
        (b"ABCD", b""),
    ))
    at = int(rng.integers(1, len(chunks) + 1))
    chunks.insert(at, [kind, body])
    return png_build(chunks), f"png:{kind.decode('latin1')} inserted at {at}"


def _png_idat(rng, chunks):
    """Edit the inflated scanlines (filter bytes, data, length) and deflate again: CRC and Adler both valid."""
    idat = [i for i, c in enumerate(chunks) if c[0] == b"IDAT"]
    try:
        raw = bytearray(zlib.decompress(b"".join(chunks[i][1] for i in idat)))
    except zlib.error:
        raw = bytearray()
    if not idat or not raw:
        return png_build(chunks), "png:IDAT unreadable, unchanged"
    what = pick(rng, ("filter-bytes", "data", "shorter", "longer"))
    if what == "filter-bytes":
        w, h, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
        stride = max(1, len(raw) // max(h, 1))
        for _ in range(int(rng.integers(1, 6))):
            raw[int(rng.integers(max(h, 1))) * stride % len(raw)] = pick(rng, (0, 1, 2, 3, 4, 5, 255))
    elif what == "data":
        for _ in range(int(rng.integers(1, 50))):
            raw[int(rng.integers(len(raw)))] = int(rng.integers(256))
    elif what == "shorter":
        del raw[int(rng.integers(len(raw))):]
    else:
        raw += bytes(int(rng.integers(1, len(raw) + 1)))
    body = zlib.compress(bytes(raw))
    first = idat[0]
    chunks = [c for i, c in enumerate(chunks) if i not in idat[1:]]
    chunks[first][1] = body
    return png_build(chunks), f"png:IDAT re-deflated ({what})"


def _exif(rng) -> bytes:
    """A little-endian TIFF/EXIF block with an Orientation tag of any value (or a broken IFD count)."""
    count = 1 if rng.random() < 0.8 else pick(rng, (0, 0xFFFF, 5000))
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, pick(rng, (0, 1, 3, 5, 6, 7, 8, 9, 0xFFFF)), 0)
    return b"II*\x00" + struct.pack("<IH", 8, count) + entry + struct.pack("<I", 0)


# --------------------------------------------------------------------------- JPEG

SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, total length) of the segments before the first SOS (which is included)."""
    segs, at = [], 2
    if not data.startswith(b"\xff\xd8"):
        return segs
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        size = struct.unpack_from(">H", data, at + 2)[0]
        segs.append((at, marker, 2 + size))
        if marker == 0xDA:
            break
        at += 2 + size
    return segs


def m_jpeg(rng, data, seeds):
    segs = jpeg_segments(data)
    if not segs:
        return m_bitflip(rng, data, seeds)
    buf = bytearray(data)
    sof = [s for s in segs if s[1] in SOF_MARKERS]
    op = pick(rng, ("sof", "sof", "sof", "marker-type", "drop", "dup", "length", "exif", "dri", "eoi"))
    if op == "sof" and sof:
        at = sof[0][0]
        what = pick(rng, ("height", "width", "size", "precision", "components", "sampling", "table"))
        dims = (0, 1, 31, 32, 255, 448, 112, 4096, MAX_SIDE, MAX_SIDE + 1, 40000, 65535)
        if what in ("height", "size"):
            struct.pack_into(">H", buf, at + 5, pick(rng, dims))
        if what in ("width", "size"):
            struct.pack_into(">H", buf, at + 7, pick(rng, dims))
        if what == "precision":
            buf[at + 4] = pick(rng, (0, 2, 8, 12, 16, 255))
        if what == "components":
            buf[at + 9] = pick(rng, (0, 2, 3, 4, 255))
        if what == "sampling" and sof[0][2] >= 13:
            buf[at + 11] = pick(rng, (0x00, 0x11, 0x22, 0x44, 0x41, 0xFF))
        if what == "table" and sof[0][2] >= 13:
            buf[at + 12] = pick(rng, (0, 1, 3, 4, 255))
        h, w = struct.unpack_from(">HH", buf, at + 5)
        return bytes(buf), f"jpeg:SOF{buf[at + 1] - 0xC0} {what} -> {w}x{h} precision {buf[at + 4]}"
    at, marker, size = pick(rng, segs)
    if op == "marker-type":
        new = pick(rng, (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCF, 0xDB, 0xC4, 0xDD, 0xE1, 0xFE, 0xD9, 0x01))
        buf[at + 1] = new
        return bytes(buf), f"jpeg:marker {marker:#x} -> {new:#x}"
    if op == "drop" and marker != 0xDA:
        return bytes(buf[:at] + buf[at + size:]), f"jpeg:segment {marker:#x} dropped"
    if op == "dup":
        return bytes(buf[:at] + buf[at:at + size] + buf[at:]), f"jpeg:segment {marker:#x} duplicated"
    if op == "length":
        value = pick(rng, (0, 1, 2, 3, size - 3, size - 1, size + 1, 0x7FFF, 0xFFFF))
        struct.pack_into(">H", buf, at + 2, value % 65536)
        return bytes(buf), f"jpeg:segment {marker:#x} length -> {value % 65536}"
    if op == "dri":
        seg = b"\xff\xdd\x00\x04" + struct.pack(">H", pick(rng, (0, 1, 7, 0xFFFF)))
        return bytes(buf[:2] + seg + buf[2:]), "jpeg:DRI inserted"
    if op == "eoi":
        cut = int(rng.integers(segs[-1][0], len(buf)))
        return bytes(buf[:cut]) + b"\xff\xd9", f"jpeg:EOI early at {cut}"
    exif = b"Exif\x00\x00" + _exif(rng)
    seg = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    return bytes(buf[:2] + seg + buf[2:]), "jpeg:APP1 EXIF inserted"


# --------------------------------------------------------------------------- TIFF, and any Pillow format

def m_tiff(rng, data, seeds):
    """One IFD0 entry's type, count or value set to an edge value (dimensions, bits, strips, ...)."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    try:
        ifd = struct.unpack_from(order + "I", data, 4)[0]
        count = struct.unpack_from(order + "H", data, ifd)[0]
        if not order or not 0 < count < 500 or ifd + 2 + 12 * count > len(data):
            raise ValueError
    except (struct.error, ValueError, TypeError):
        return m_bitflip(rng, data, seeds)
    at = ifd + 2 + 12 * int(rng.integers(count))
    tag = struct.unpack_from(order + "H", data, at)[0]
    buf = bytearray(data)
    what = pick(rng, ("value", "value", "count", "type"))
    if what == "value":
        value = pick(rng, INTERESTING_32 + (2, 3, 8, 16, 32, 64, 7, 255, MAX_SIDE + 1, len(data)))
        struct.pack_into(order + "I", buf, at + 8, value)
        if struct.unpack_from(order + "H", data, at + 2)[0] == 3:            # SHORT: left-justified
            struct.pack_into(order + "HH", buf, at + 8, value & 0xFFFF, 0)
    elif what == "count":
        value = pick(rng, (0, 1, 2, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF))
        struct.pack_into(order + "I", buf, at + 4, value)
    else:
        value = int(rng.integers(0, 19))
        struct.pack_into(order + "H", buf, at + 2, value)
    return bytes(buf), f"tiff:tag {tag} {what} -> {value:#x}"


def m_reencode(rng, data, seeds):
    """A seed film re-encoded valid but unusual: any size and aspect (now and then near the caps), any Pillow
    mode (1, P, LA, RGBA, CMYK, I;16, signed I, float F with NaN / inf), any format that holds it, maybe
    an EXIF orientation."""
    films = [s for s in seeds if s.name.endswith("/png8")] or seeds
    with Image.open(io.BytesIO(pick(rng, films).data)) as im:
        film = im.convert("L")
    if rng.random() < 0.004:                                         # near or over the caps: slow, rare
        w, h = pick(rng, ((7000, 7000), (7072, 7072), (MAX_SIDE, 3000), (MAX_SIDE + 1, 40), (3000, MAX_SIDE)))
        fmt = pick(rng, ("BMP", "TIFF"))
    else:
        w = pick(rng, (int(rng.integers(1, 64)), int(rng.integers(64, 1200)), int(rng.integers(64, 1200)),
                       int(rng.integers(1200, 3000))))
        h = max(1, min(12_000_000 // w, int(w * np.exp(rng.uniform(-1.3, 1.3)))))
        fmt = pick(rng, ("PNG", "PNG", "TIFF", "TIFF", "BMP", "JPEG", "WEBP", "GIF"))
    g = np.asarray(film.resize((w, h), Image.BILINEAR), dtype=np.float64) / 255
    mode = pick(rng, ("L", "1", "P", "LA", "RGB", "RGBA", "CMYK", "I;16", "I", "F"))
    if mode == "I;16":
        img = Image.fromarray(np.rint(g * pick(rng, (65535, 4095, 255, 1))).astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray((np.rint(g * pick(rng, (1, 4095, 2**31 - 1))) - pick(rng, (0, 2048, 2**30)))
                              .astype(np.int32), "I")
    elif mode == "F":
        a = (g * pick(rng, (1.0, 1e-30, 1e30, -1.0)) + pick(rng, (0.0, -0.5, 1e6))).astype(np.float32)
        if rng.random() < 0.3:
            a.flat[rng.integers(a.size, size=int(rng.integers(1, 10)))] = pick(rng, (np.nan, np.inf, -np.inf))
        img = Image.fromarray(a, "F")
    else:
        img = Image.fromarray(np.rint(g * 255).astype(np.uint8))
        if mode in ("RGB", "RGBA") and rng.random() < 0.3:                # colourised: a photo, not a film
            img = Image.merge("RGB", (img, img.point(lambda v: 255 - v), img.point(lambda v: v // 2)))
        if mode == "LA" or mode == "RGBA":
            alpha = Image.fromarray(np.rint(np.linspace(0, 255, w)[None, :].repeat(h, 0)).astype(np.uint8)) \
                if rng.random() < 0.5 else Image.new("L", (w, h), pick(rng, (0, 128, 255)))
            img = img.convert(mode[:-1])
            img.putalpha(alpha)
        else:
            img = img.convert(mode)
    kw = {}
    if fmt in ("JPEG", "WEBP", "PNG", "TIFF") and rng.random() < 0.2:
        exif = Image.Exif()
        exif[0x0112] = pick(rng, (1, 2, 3, 4, 5, 6, 7, 8, 0, 9))
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    try:
        img.save(buf, fmt, **kw)
    except (OSError, ValueError, KeyError, TypeError):                  # the format cannot hold the mode
        buf = io.BytesIO()
        img.convert("L").save(buf, fmt)
        mode += "->L"
    return buf.getvalue(), f"reencode {fmt} {mode} {w}x{h}" + (" exif" if kw else "")


# --------------------------------------------------------------------------- DICOM

TS_CHOICES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
              "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
              "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
              "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.5", "1.2.3.4", "")
DS_VALUES = ("0", "-1", "-4096", "1", "0.5", "NaN", "nan", "inf", "-inf", "1e308", "-1e308", "1e-308", "",
             "abc", "100\\200", "\\", "4096", "65535", "2048.5", "1e400")
IS_VALUES = ("0", "1", "2", "3", "-1", "1000", "99999999", "2147483648", "abc", "1.5", "", "3\\4")
US_VALUES = (0, 1, 2, 3, 7, 8, 11, 12, 15, 16, 17, 24, 31, 32, 33, 64, 255, 256, 4096, 16384, 16385,
             32767, 32768, 65535)
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT",
               "PALETTE COLOR", "ARGB", "CMYK", "HSV", "", "monochrome2", "MONOCHROME3", "X" * 16)
STRINGS = ("", "CT", "MR", "US", "NM", "CR", "DX", "OT", "dx", "??", "LL", "PA", "AP", "LATERAL", "LLO",
           "pa", "\x00\x00", "X" * 64, "CHEST", "SKULL", "999Y", "000D", "-1Y", "012M", "5Y", "M", "F", "\x1b[31m")

TAGS = {"Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100, "BitsStored": 0x00280101,
        "HighBit": 0x00280102, "PixelRepresentation": 0x00280103, "SamplesPerPixel": 0x00280002,
        "PlanarConfiguration": 0x00280006, "PhotometricInterpretation": 0x00280004,
        "NumberOfFrames": 0x00280008, "WindowCenter": 0x00281050, "WindowWidth": 0x00281051,
        "RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052, "VOILUTFunction": 0x00281056,
        "Modality": 0x00080060, "ViewPosition": 0x00185101, "BodyPartExamined": 0x00180015,
        "PatientAge": 0x00101010, "PatientSex": 0x00100040}
VR = {"Rows": "US", "Columns": "US", "BitsAllocated": "US", "BitsStored": "US", "HighBit": "US",
      "PixelRepresentation": "US", "SamplesPerPixel": "US", "PlanarConfiguration": "US",
      "PhotometricInterpretation": "CS", "NumberOfFrames": "IS", "WindowCenter": "DS", "WindowWidth": "DS",
      "RescaleSlope": "DS", "RescaleIntercept": "DS", "VOILUTFunction": "CS", "Modality": "CS",
      "ViewPosition": "CS", "BodyPartExamined": "CS", "PatientAge": "AS", "PatientSex": "CS"}


def put_raw(ds, keyword_or_tag, raw: bytes, vr: str | None = None, *, undefined_length: bool = False) -> None:
    """Store exactly these value bytes (padded to even length): pydicom validates nothing it writes this way."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(TAGS.get(keyword_or_tag, keyword_or_tag))
    vr = vr or VR.get(keyword_or_tag, "UN")
    if len(raw) % 2:
        raw += b"\x00" if vr in ("US", "SS", "UL", "OB", "OW", "UN", "UI") else b" "
    ds[tag] = RawDataElement(tag, vr, 0xFFFFFFFF if undefined_length else len(raw), raw, 0, False, True)


ITEM_TAG = b"\xfe\xff\x00\xe0"      # an encapsulated pixel data item: written with undefined length


def _text(value: str) -> bytes:
    return value.encode("latin1")


def d_attribute(rng, ds, seeds):
    """One pixel-module or display attribute set to an edge value (or deleted)."""
    name = pick(rng, tuple(TAGS))
    if rng.random() < 0.08:
        if TAGS[name] in ds:
            del ds[TAGS[name]]
        return f"del {name}"
    vr = VR[name]
    if vr == "US":
        try:
            current = int(ds.get(name) or 0)
        except (TypeError, ValueError):
            current = 0
        value = pick(rng, US_VALUES + (current + 1, max(current - 1, 0), current * 2 % 65536))
        n = 1 if rng.random() < 0.9 else 2
        put_raw(ds, name, struct.pack(f"<{n}H", *([value] * n)))
        return f"{name}={value}" + (" (2 values)" if n == 2 else "")
    pool = {"DS": DS_VALUES, "IS": IS_VALUES, "CS": PHOTOMETRIC + STRINGS if name == "PhotometricInterpretation"
            else STRINGS}.get(vr, STRINGS)
    value = pick(rng, pool)
    put_raw(ds, name, _text(value))
    return f"{name}={value!r}"


def d_window(rng, ds, seeds):
    """Window centre and width together: 0, negative, NaN, multi-valued strings."""
    wc, ww = pick(rng, DS_VALUES), pick(rng, DS_VALUES + ("0", "-1", "1"))
    put_raw(ds, "WindowCenter", _text(wc))
    put_raw(ds, "WindowWidth", _text(ww))
    if rng.random() < 0.3:
        put_raw(ds, "VOILUTFunction", _text(pick(rng, ("LINEAR", "LINEAR_EXACT", "SIGMOID", "", "BOGUS"))))
    return f"window {wc!r}/{ww!r}"


def d_rescale(rng, ds, seeds):
    slope, intercept = pick(rng, DS_VALUES), pick(rng, DS_VALUES)
    put_raw(ds, "RescaleSlope", _text(slope))
    put_raw(ds, "RescaleIntercept", _text(intercept))
    return f"rescale {slope!r}/{intercept!r}"


def _lut_item(rng, modality: bool):
    from pydicom.dataset import Dataset

    n = pick(rng, (0, 1, 2, 256, 4096, 65535))
    first = pick(rng, (0, 1, 4095, 65535, 0x8000))
    bits = pick(rng, (0, 1, 8, 12, 16, 17, 32))
    length = pick(rng, (n, n, 0, 1, n // 2 + 1, 2 * n, 4096))
    values = rng.integers(0, 65536, length, dtype=np.uint16)
    item = Dataset()
    put_raw(item, 0x00283002, struct.pack("<3H", n, first, bits), "US")        # LUT Descriptor
    if rng.random() < 0.9:
        put_raw(item, 0x00283006, values.astype("<u2").tobytes(), "OW")         # LUT Data
    if modality:
        put_raw(item, 0x00283004, _text(pick(rng, ("HU", "OD", "US", ""))), "LO")  # Modality LUT Type
    return item, f"LUT n={n} first={first} bits={bits} data={length}"


def d_voi_lut(rng, ds, seeds):
    from pydicom.sequence import Sequence

    if rng.random() < 0.1:
        ds.VOILUTSequence = Sequence([])
        return "VOILUTSequence empty"
    item, text = _lut_item(rng, False)
    ds.VOILUTSequence = Sequence([item])
    return f"VOI {text}"


def d_modality_lut(rng, ds, seeds):
    from pydicom.sequence import Sequence

    item, text = _lut_item(rng, True)
    ds.ModalityLUTSequence = Sequence([item])
    return f"modality {text}"


def d_pixel_length(rng, ds, seeds):
    """Pixel data cut short, lengthened, or made odd."""
    px = bytes(ds.PixelData or b"") if "PixelData" in ds else b""
    what = pick(rng, ("empty", "one", "half", "minus1", "minus2", "plus1", "plus2", "double", "cut"))
    new = {"empty": b"", "one": px[:1], "half": px[:len(px) // 2], "minus1": px[:-1], "minus2": px[:-2],
           "plus1": px + b"\x00", "plus2": px + b"\xff\xff", "double": px + px,
           "cut": px[:int(rng.integers(len(px) + 1))]}[what]
    elem = ds["PixelData"] if "PixelData" in ds else None
    put_raw(ds, 0x7FE00010, new, "OB" if elem is None or elem.VR == "OB" else "OW",
            undefined_length=new.startswith(ITEM_TAG))
    return f"PixelData {what} ({len(px)} -> {len(new)} bytes)"


def d_pixels_from(rng, ds, seeds):
    """Pixel data of another DICOM seed under this header."""
    import pydicom

    other = pick(rng, [s for s in seeds if s.fmt == "DICOM" and "deflated" not in s.name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pydicom.dcmread(io.BytesIO(other.data), force=True)
    if "PixelData" in src:
        px = bytes(src.PixelData or b"")
        put_raw(ds, 0x7FE00010, px, "OB", undefined_length=px.startswith(ITEM_TAG))
    return f"PixelData from {other.name}"


def d_pixel_tag(rng, ds, seeds):
    """The pixels under Float / Double Float Pixel Data instead, or an OB/OW VR swap."""
    if "PixelData" not in ds:
        return "no PixelData"
    px = bytes(ds.PixelData or b"")
    if rng.random() < 0.5:
        del ds[0x7FE00010]
        tag = pick(rng, (0x7FE00008, 0x7FE00009))
        put_raw(ds, tag, px, "OF" if tag == 0x7FE00008 else "OD")
        return f"PixelData moved to {tag:#010x}"
    put_raw(ds, 0x7FE00010, px, pick(rng, ("OB", "OW", "UN")), undefined_length=px.startswith(ITEM_TAG))
    return "PixelData VR changed"


def d_nested(rng, ds, seeds):
    """A deeply nested private sequence, as raw bytes (pydicom's writer is quadratic in the depth)."""
    try:
        implicit = ds.file_meta.TransferSyntaxUID.is_implicit_VR
    except (AttributeError, ValueError):                  # no file meta, or an unknown syntax
        implicit = ds.original_encoding[0] is not False
    depth = pick(rng, (10, 100, 400))
    undefined = b"\xff\xff\xff\xff"
    head = struct.pack("<HH", 0x0009, 0x1010) + (undefined if implicit else b"SQ\x00\x00" + undefined)
    item, item_end = b"\xfe\xff\x00\xe0" + undefined, b"\xfe\xff\x0d\xe0" + bytes(4)
    seq_end = b"\xfe\xff\xdd\xe0" + bytes(4)
    value = b""
    for _ in range(depth):
        value = item + (head + value + seq_end if value else b"") + item_end
    put_raw(ds, 0x00091010, value, "SQ", undefined_length=True)
    return f"nested sequence depth {depth}"


def d_geometry(rng, ds, seeds):
    """A consistent but unusual native pixel module (size, frames, bits, sign, samples, planar configuration,
    photometric) with Pixel Data of exactly the expected length, so it gets past the completeness check."""
    from pydicom.pixels.utils import get_expected_length

    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            return d_attribute(rng, ds, seeds)
    except (AttributeError, ValueError):                  # no file meta, or an unknown syntax: try anyway
        pass
    old = bytes(ds.get("PixelData") or b"") or b"\x80"
    samples = 1 if rng.random() < 0.8 else 3
    alloc = pick(rng, (1, 8, 16, 16, 32, 64) if samples == 1 else (8, 8, 16))
    stored = pick(rng, tuple(b for b in (1, 7, 8, 10, 12, 15, 16, 31, 32, 64) if b <= alloc))
    rows = pick(rng, (int(rng.integers(1, 40)), int(rng.integers(32, 1024)), int(rng.integers(32, 1024)),
                      int(rng.integers(1024, 4096))))
    cols = max(1, min(16_000_000 // rows, int(rows * np.exp(rng.uniform(-1.3, 1.3)))))
    frames = pick(rng, (1, 1, 1, 2, 3, 8))
    cap = 24 * 2**20                                                    # keep a case fast ...
    if rng.random() < 0.03:                                             # ... but now and then near the caps
        rows, cols, frames, cap = *pick(rng, ((7000, 7000), (7072, 7072), (3000, MAX_SIDE), (40, MAX_SIDE + 1))), \
            1, 200 * 2**20
    while rows * cols * frames * max(alloc, 8) // 8 * samples > cap:
        if frames > 1:
            frames //= 2
        elif rows >= cols:
            rows //= 2
        else:
            cols //= 2
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = alloc, stored, pick(rng, (stored - 1, stored - 1, alloc - 1))
    ds.PixelRepresentation = int(rng.random() < 0.4)
    ds.PhotometricInterpretation = pick(rng, ("MONOCHROME2", "MONOCHROME1") if samples == 1 else
                                        ("RGB", "YBR_FULL", "YBR_FULL_422"))
    if samples == 3:
        ds.PlanarConfiguration = int(rng.random() < 0.5)
    if frames > 1 or rng.random() < 0.3:
        ds.NumberOfFrames = frames
    elif "NumberOfFrames" in ds:
        del ds.NumberOfFrames
    size = get_expected_length(ds) + pick(rng, (0, 0, 0, 1, 2))
    fill = old if rng.random() < 0.7 else rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    put_raw(ds, 0x7FE00010, (fill * (size // len(fill) + 1))[:size], "OB" if alloc <= 8 else "OW")
    return (f"geometry {cols}x{rows}x{frames} alloc {alloc} stored {stored} signed {ds.PixelRepresentation} "
            f"samples {samples} {ds.PhotometricInterpretation}")


DICOM_DATASET_MUTATORS = (d_attribute, d_attribute, d_attribute, d_attribute, d_window, d_window, d_rescale,
                          d_voi_lut, d_modality_lut, d_pixel_length, d_pixels_from, d_pixel_tag, d_nested,
                          d_geometry, d_geometry)


def m_dicom_dataset(rng, data, seeds):
    """Parse with pydicom, apply 1-3 dataset mutations, write back the same way (preamble, meta, VR)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            body = bytes(128) + data if data[:4] == b"DICM" else data
            ds = pydicom.dcmread(io.BytesIO(body), force=True)
            ds.PixelData                                 # noqa: B018 - parse up to the pixels now
        except Exception:  # noqa: BLE001 - an earlier mutation broke it
            return m_bitflip(rng, data, seeds)
        done = []
        for fn in [pick(rng, DICOM_DATASET_MUTATORS) for _ in range(int(rng.integers(1, 4)))]:
            try:
                done.append(fn(rng, ds, seeds))
            except Exception as exc:  # noqa: BLE001 - a mutator's own bug is noted, the others still apply
                done.append(f"{fn.__name__} raised {type(exc).__name__} (mutator bug)")
        buf = io.BytesIO()
        implicit, little = ds.original_encoding
        kw = {} if ds.file_meta.get("TransferSyntaxUID") else {
            "implicit_vr": implicit is not False, "little_endian": little is not False}
        try:
            ds.save_as(buf, enforce_file_format=False, **kw)
        except Exception as exc:  # noqa: BLE001 - pydicom refused to write it
            return data, f"dicom:{'; '.join(done)} (not writable: {type(exc).__name__}, unchanged)"
    out = buf.getvalue()
    return (out[128:] if data[:4] == b"DICM" else out), "dicom:" + "; ".join(done)


def _meta_element(data: bytes, tag: int) -> tuple[int, int] | None:
    """(offset, value length) of an explicit-VR group-0002 element in the file meta, or None."""
    start = 132 if data[128:132] == b"DICM" else 4 if data[:4] == b"DICM" else -1
    if start < 0:
        return None
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = data.find(needle, start, start + 1024)
    if at < 0 or data[at + 4:at + 6] != b"UI":
        return None
    return at, struct.unpack_from("<H", data, at + 6)[0]


def m_dicom_bytes(rng, data, seeds):
    """Byte-level edits pydicom would not write: a transfer syntax that does not match the pixel data,
    the Pixel Data element's length field, or the dimensions inside an encapsulated frame's own header."""
    r = rng.random()
    if r < 0.25:
        return _dicom_codestream(rng, data, seeds)
    if r < 0.7 and (found := _meta_element(data, 0x00020010)):
        at, size = found
        uid = pick(rng, TS_CHOICES).encode()
        uid += b"\x00" * (len(uid) % 2)
        out = bytearray(data[:at + 6] + struct.pack("<H", len(uid)) + uid + data[at + 8 + size:])
        group = data.find(b"\x02\x00\x00\x00UL\x04\x00", 128)          # keep the group length right
        if 0 <= group < at:
            old = struct.unpack_from("<I", out, group + 8)[0]
            struct.pack_into("<I", out, group + 8, (old + len(uid) - size) % 2**32)
        return bytes(out), f"dicom:TransferSyntaxUID -> {uid.rstrip(bytes(1)).decode()!r} (pixels unchanged)"
    at = data.rfind(b"\xe0\x7f\x10\x00")
    if at < 0:
        return m_bitflip(rng, data, seeds)
    explicit = data[at + 4:at + 6] in (b"OB", b"OW", b"UN")
    field_at = at + 8 if explicit else at + 4
    value = pick(rng, (0, 1, 2, 0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE, len(data), len(data) - field_at - 2))
    buf = bytearray(data)
    struct.pack_into("<I", buf, field_at, value % 2**32)
    return bytes(buf), f"dicom:PixelData length field -> {value % 2**32:#x}"


def _dicom_codestream(rng, data, seeds):
    """The first frame's JPEG SOF (baseline, lossless, JPEG-LS) or JPEG 2000 SIZ declares another size / precision."""
    start = data.rfind(b"\xe0\x7f\x10\x00")
    soi = data.find(b"\xff\xd8\xff", start, start + 256) if start >= 0 else -1
    sof = min((at for at in (data.find(bytes([0xFF, m]), soi, soi + 2048) for m in (0xC0, 0xC1, 0xC3, 0xF7))
               if at > 0), default=-1) if soi > 0 else -1
    siz = data.find(b"\xff\x4f\xff\x51", start, start + 256) if start >= 0 else -1
    dims = (0, 1, 31, 32, 112, 448, 4096, 7071, 7072, MAX_SIDE, MAX_SIDE + 1, 65535)
    buf = bytearray(data)
    if sof > 0 and sof + 9 <= len(buf):
        h, w = pick(rng, dims), pick(rng, dims) if rng.random() < 0.5 else struct.unpack_from(">H", buf, sof + 7)[0]
        struct.pack_into(">HH", buf, sof + 5, h, w)
        if rng.random() < 0.2:
            buf[sof + 4] = pick(rng, (0, 2, 8, 12, 16, 17, 255))
        return bytes(buf), f"dicom:frame SOF {buf[sof + 1]:#x} -> {w}x{h} precision {buf[sof + 4]}"
    if siz > 0 and siz + 46 <= len(buf):
        if rng.random() < 0.25:                                     # Csiz, or component 0's depth / subsampling
            at = siz + 40 + int(rng.integers(4))
            buf[at] = pick(rng, (0, 1, 2, 3, 0x0F, 0x8F, 0xFF))
            return bytes(buf), f"dicom:frame J2K SIZ byte {at - siz} -> {buf[at]}"
        at = siz + 8 + 4 * int(rng.integers(8))                    # image / offset / tile sizes and offsets
        value = pick(rng, dims + (2, 7, 0xFFFFFFFF, 0x80000000))
        struct.pack_into(">I", buf, at, value)
        return bytes(buf), f"dicom:frame J2K SIZ field {(at - siz - 8) // 4} -> {value}"
    return m_bitflip(rng, data, seeds)


AWARE = {"PNG": (m_png, m_png, m_reencode), "JPEG": (m_jpeg, m_jpeg, m_reencode), "BMP": (m_reencode,),
         "TIFF": (m_tiff, m_reencode), "WEBP": (m_reencode,),
         "DICOM": (m_dicom_dataset, m_dicom_dataset, m_dicom_dataset, m_dicom_bytes)}


# --------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    k: int
    seed: Seed
    ops: tuple[str, ...]
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def make_case(seeds: list[Seed], seed: int, k: int) -> Case:
    """Case ``k``: the seed itself for k < len(seeds), else a mutated seed; a pure function of (seed, k)."""
    if k < len(seeds):
        return Case(k, seeds[k], ("none: the seed itself",), seeds[k].data)
    rng = np.random.default_rng([seed, k])
    base = pick(rng, seeds)
    data, ops = base.data, []
    aware = AWARE.get(base.fmt, ())
    if aware and rng.random() < 0.6:
        fns = [pick(rng, aware) for _ in range(1 + int(rng.random() < 0.3))]
        fns += [pick(rng, GENERIC) for _ in range(int(rng.random() < 0.25))]
    else:
        fns = [pick(rng, GENERIC) for _ in range(1 + int(rng.integers(3)))]
    for fn in fns:
        if not data:
            break
        try:
            data, text = fn(rng, data, seeds)
        except Exception as exc:  # noqa: BLE001 - a mutator's own bug must not stop the run; it is noted
            text = f"{fn.__name__} raised {type(exc).__name__} (mutator bug, unchanged)"
        ops.append(text)
    return Case(k, base, tuple(ops), data)


# --------------------------------------------------------------------------- limits

class CaseTimeout(KeyboardInterrupt):
    """Raised by the alarm. A KeyboardInterrupt, so read_xray's catch-all lets it through."""


def call_with_limit(fn: Callable[[], Any], seconds: float) -> tuple[Any, BaseException | None, float, bool]:
    """(value, exception or None, seconds taken, timed out) of ``fn()`` under a SIGALRM deadline."""
    fired = []

    def on_alarm(signum, frame):
        fired.append(True)
        raise CaseTimeout(f"over {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    start = time.perf_counter()
    value = error = None
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            value = fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:  # noqa: BLE001 - judged by the caller
        error = exc
    finally:
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.perf_counter() - start
    if isinstance(error, KeyboardInterrupt) and not isinstance(error, CaseTimeout):
        raise error
    return value, error, elapsed, bool(fired) or elapsed > seconds


class Memory:
    """Peak RSS per step from /proc/self/status (VmHWM), reset between steps through /proc/self/clear_refs.

    Under that check, a safety net: a step may grow the address space by at most ``headroom_mb``
    (RLIMIT_AS, re-armed from the current size before and after every step), so a runaway decoder meets
    MemoryError, which the run reports, instead of the machine's OOM killer (a JPEG-LS frame declaring a
    height of 0 once grew this process to 24 GB).
    """

    def __init__(self, headroom_mb: float):
        self.headroom_mb = headroom_mb
        self.saved_limit = resource.getrlimit(resource.RLIMIT_AS)
        status = self._read()
        self.peak_mb, self.rss_mb = status["VmHWM"], status["VmRSS"]
        self.can_reset = self._reset()

    @staticmethod
    def _read() -> dict[str, float]:
        try:
            with open("/proc/self/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if line.startswith(("VmRSS", "VmHWM", "VmSize")))
            return {k: int(v.split()[0]) / 1024 for k, v in fields.items()}
        except OSError:                                   # not Linux: the lifetime peak only, no limit
            mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return {"VmRSS": mb, "VmHWM": mb, "VmSize": 0}

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def restore(self) -> None:
        """The address-space limit as it was before this object (also between steps)."""
        resource.setrlimit(resource.RLIMIT_AS, self.saved_limit)

    def step_peak(self) -> float:
        """MB: the peak RSS since the last call (the lifetime peak where it cannot be reset); then the
        address-space limit is armed for the next step."""
        self.restore()                                    # room for the bookkeeping after a step that hit it
        status = self._read()
        self.rss_mb = status["VmRSS"]
        self.peak_mb = max(self.peak_mb, status["VmHWM"])
        if self.can_reset:
            self._reset()
        soft, hard = self.saved_limit
        limit = int((status["VmSize"] + self.headroom_mb) * 2**20)
        if status["VmSize"] and (soft == resource.RLIM_INFINITY or limit < soft):
            resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard),
                                                    hard))
        return status["VmHWM"]


class Watchdog(threading.Thread):
    """Last resort for a hang in native code (no Python bytecode runs, so the alarm cannot fire):
    when a step outlives twice its limit (plus 10 s) it writes the case(s) as failures and ends the
    process with status 1."""

    def __init__(self, on_hang: Callable[[list[Case], float], None]):
        super().__init__(daemon=True, name="fuzz-watchdog")
        self.on_hang = on_hang
        self.cases: list[Case] = []
        self.since = self.hard_s = 0.0
        self.stop = threading.Event()

    def watch(self, cases: list[Case], limit_s: float) -> None:
        self.since, self.hard_s, self.cases = time.monotonic(), 2 * limit_s + 10, cases

    def idle(self) -> None:
        self.cases = []

    def run(self) -> None:
        while not self.stop.wait(1.0):
            cases = self.cases
            if cases and time.monotonic() - self.since > self.hard_s:
                self.on_hang(cases, time.monotonic() - self.since)
                os._exit(1)


@contextmanager
def native_stderr_to(path: Path):
    """C libraries (libtiff above all) print to file descriptor 2 on corrupt input: send that to ``path``,
    keeping Python's own stderr (tracebacks, the watchdog's message) on the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    python_stderr = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, closefd=False, errors="backslashreplace")
    try:
        yield
    finally:
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def counting_logs(name: str):
    """Count the records logger ``name`` emits (pydicom logs warnings and tracebacks on corrupt input)
    instead of letting them reach stderr; the logger is as it was afterwards. Yields {level: count}."""
    levels: Counter = Counter()

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            levels[record.levelname] += 1

    logger, handler = logging.getLogger(name), Count()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield levels
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


# --------------------------------------------------------------------------- checks

OUT_OF_MEMORY = ("out of memory", "out of free memory", "bad_alloc", "cannot allocate")


def out_of_memory(error: BaseException | None) -> bool:
    """Did this error (or one it was raised from) come from a failed allocation?"""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MemoryError) or any(t in str(error).lower() for t in OUT_OF_MEMORY):
            return True
        error = error.__cause__ or error.__context__
    return False


def one_line(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip()) and "\n" not in text and "Traceback" not in text


def contract_problem(image: Any) -> str | None:
    """Why an accepted image breaks io's output contract, or None."""
    if not isinstance(image, XrayImage):
        return f"read_xray returned {type(image).__name__}, not XrayImage"
    px = image.pixels
    if not isinstance(px, np.ndarray):
        return f"pixels are {type(px).__name__}"
    if px.dtype != np.float32 or px.ndim != 2 or not px.flags.c_contiguous:
        return f"pixels are {px.dtype} {px.ndim}-D contiguous={px.flags.c_contiguous}"
    h, w = px.shape
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE and h * w <= MAX_PIXELS):
        return f"pixels are {w}x{h}, outside the size caps"
    if not np.isfinite(px).all():
        return "pixels are not all finite"
    if px.min() < 0.0 or px.max() > 1.0:
        return f"pixels span {px.min()}..{px.max()}, outside [0, 1]"
    if extra := set(image.metadata) - set(ALLOWED_METADATA):
        return f"metadata keys outside the allow-list: {sorted(extra)}"
    if not all(one_line(w) for w in image.warnings):
        return "a warning is not a one-line string"
    return None


# --------------------------------------------------------------------------- the run

@dataclass
class Failure:
    case: int
    seed: str
    ops: tuple[str, ...]
    sha256: str
    stage: str               # ingest | contract | predict | probability | record | timeout | memory | hang
    error: str
    message: str
    traceback: str = ""
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "traceback"}
        d["ops"], d["seconds"] = list(self.ops), round(self.seconds, 3)
        return d


@dataclass
class Tally:
    outcomes: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    by_format: dict = field(default_factory=lambda: defaultdict(Counter))
    failures: list[Failure] = field(default_factory=list)
    slowest: list[tuple[float, int, str]] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)         # per-case detail (--case only)


class Fuzzer:
    def __init__(self, predictor, seeds: list[Seed], seed: int, *, batch_size: int, timeout_s: float,
                 rss_cap_mb: float, out: Path, keep_cases: bool = False):
        self.predictor, self.seeds, self.seed = predictor, seeds, seed
        self.batch_size, self.timeout_s, self.rss_cap_mb = batch_size, timeout_s, rss_cap_mb
        self.out, self.keep_cases = out, keep_cases
        self.tally = Tally()
        self.memory: Memory | None = None               # set by run(): it limits the address space
        self.pending: list[tuple[Case, XrayImage, float]] = []
        self.name, self.threshold = predictor.threshold(None)
        self.inflight = out / "inflight"
        self.native_log = out / "native-stderr.log"
        self.log_records: Counter = Counter()
        self.mutate_s = 0.0                              # of the run's time, building the cases
        self.watchdog = Watchdog(self._hang)

    # -- bookkeeping
    def _outcome(self, case: Case, outcome: str, seconds: float, detail: str = "") -> None:
        self.tally.outcomes[outcome] += 1
        self.tally.by_format[case.seed.fmt][outcome] += 1
        self.tally.slowest = sorted(self.tally.slowest + [(seconds, case.k, case.seed.name)], reverse=True)[:5]
        if self.keep_cases:
            self.tally.cases.append({"case": case.k, "seed": case.seed.name, "ops": list(case.ops),
                                     "sha256": case.sha256, "bytes": len(case.data), "outcome": outcome,
                                     "detail": detail, "seconds": round(seconds, 3)})

    def _fail(self, case: Case, stage: str, message: str, exc: BaseException | None = None,
              seconds: float = 0.0) -> None:
        tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
        failure = Failure(case.k, case.seed.name, case.ops, case.sha256, stage,
                          type(exc).__name__ if exc is not None else stage, message, tb, seconds)
        self.tally.failures.append(failure)
        self._outcome(case, "failure", seconds, f"{stage}: {message}")
        self._write(case, failure)

    def _write(self, case: Case, failure: Failure) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stem = self.out / f"seed{self.seed}-case{case.k:06d}"
        stem.with_suffix(".bin").write_bytes(case.data)
        stem.with_suffix(".txt").write_text(
            f"case {case.k} (--seed {self.seed} --case {case.k}), seed film {case.seed.name}, {len(case.data)} bytes, "
            f"sha256 {case.sha256}\nmutations: {'; '.join(case.ops)}\nstage: {failure.stage}\n"
            f"error: {failure.error}: {failure.message}\nseconds: {failure.seconds:.3f}\n\n{failure.traceback}")

    def _hang(self, cases: list[Case], seconds: float) -> None:
        for case in cases:
            self.tally.failures.append(Failure(case.k, case.seed.name, case.ops, case.sha256, "hang", "hang",
                                               f"no return after {seconds:.0f} s (native code)", "", seconds))
            self._write(case, self.tally.failures[-1])
        print(f"HANG: case(s) {[c.k for c in cases]} did not return after {seconds:.0f} s; "
              f"written to {self.out}; exiting", file=sys.stderr, flush=True)

    def _mark(self, cases: list[Case], limit_s: float) -> None:
        """--out/inflight names the running case(s): after a native crash it says which input did it."""
        self.inflight.write_text(f"--seed {self.seed} --case {' '.join(str(c.k) for c in cases)}\n")
        self.watchdog.watch(cases, limit_s)

    # -- one case
    def run_case(self, k: int) -> None:
        t = time.perf_counter()
        case = make_case(self.seeds, self.seed, k)
        self.mutate_s += time.perf_counter() - t
        self._mark([case], self.timeout_s)
        self.memory.step_peak()
        before_mb = self.memory.rss_mb
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                  # decoders' warnings are not failures
            image, error, seconds, timed_out = call_with_limit(lambda: read_xray(case.data), self.timeout_s)
        peak = self.memory.step_peak()
        self.watchdog.idle()
        # memory before time: a case that blows the cap is often slow because of it (paging, a loaded
        # machine), and "memory" is the finding that names the cause
        if peak > self.rss_cap_mb:
            left = f"; {before_mb:.0f} MB before it, left by an earlier case" if before_mb > self.rss_cap_mb else ""
            return self._fail(case, "memory", f"RSS reached {peak:.0f} MB while reading "
                              f"(cap {self.rss_cap_mb:g}{left})", error, seconds)
        if out_of_memory(error):
            return self._fail(case, "memory", f"an allocation failed under the address-space limit "
                              f"({self.rss_cap_mb:g} MB above the start)", error, seconds)
        if timed_out:
            return self._fail(case, "timeout", f"read_xray took {seconds:.1f} s (limit {self.timeout_s:g} s)",
                              error, seconds)
        if error is not None:
            if isinstance(error, UnreadableImageError) and one_line(str(error)):
                self.tally.refusals[type(error).__name__] += 1
                return self._outcome(case, "refused", seconds, f"{type(error).__name__}: {error}")
            stage_msg = "refusal message is not one line: " if isinstance(error, UnreadableImageError) else ""
            return self._fail(case, "ingest", stage_msg + (str(error).splitlines() or [""])[0][:300], error, seconds)
        if problem := contract_problem(image):
            return self._fail(case, "contract", problem, None, seconds)
        self.pending.append((case, image, seconds))
        if len(self.pending) >= self.batch_size or \
                sum(im.pixels.size for _, im, _ in self.pending) >= MAX_BATCH_PIXELS:
            self.flush()

    # -- prediction, batched
    def _screen(self, images: list[XrayImage]) -> list:
        from pneumo_core.model.predict import screened_record

        screened = self.predictor.screen_many(images, self.name, batch_size=len(images), predict_rejected=True)
        return [(s, screened_record("fuzz", im, s, self.name, self.threshold, self.predictor.version))
                for im, s in zip(images, screened)]

    def flush(self, items: list | None = None) -> None:
        items = self.pending if items is None else items
        if items is self.pending:
            self.pending = []
        if not items:
            return
        limit = self.timeout_s * len(items)
        self._mark([c for c, _, _ in items], limit)
        self.memory.step_peak()
        results, error, seconds, timed_out = call_with_limit(lambda: self._screen([im for _, im, _ in items]), limit)
        peak = self.memory.step_peak()
        self.watchdog.idle()
        bad = timed_out or error is not None or peak > self.rss_cap_mb or len(results or ()) != len(items)
        if bad and len(items) > 1:                      # find the film(s) responsible, one at a time
            before = len(self.tally.failures)
            for item in items:
                self.flush([item])
            if len(self.tally.failures) == before:      # only the batch fails: one failure, on its first case
                what = "memory" if peak > self.rss_cap_mb else "timeout" if timed_out else "predict"
                case = items[0][0]
                failure = Failure(case.k, case.seed.name, case.ops, case.sha256, f"batch-{what}",
                                  type(error).__name__ if error else what,
                                  f"the batch of cases {[c.k for c, _, _ in items]} failed, no case alone does",
                                  "".join(traceback.format_exception(error)) if error else "", seconds)
                self.tally.failures.append(failure)
                self._write(case, failure)
            return
        case, _, ingest_s = items[0]
        if peak > self.rss_cap_mb or out_of_memory(error):
            return self._fail(case, "memory", f"RSS reached {peak:.0f} MB while predicting (cap {self.rss_cap_mb:g})"
                              if peak > self.rss_cap_mb else "an allocation failed under the address-space limit",
                              error, ingest_s + seconds)
        if timed_out:
            return self._fail(case, "timeout", f"predict took {seconds:.1f} s (limit {limit:g} s)", error,
                              ingest_s + seconds)
        if error is not None or len(results or ()) != len(items):
            return self._fail(case, "predict", str(error).splitlines()[0][:300] if error and str(error) else
                              f"{len(results or ())} results for {len(items)} films", error, ingest_s + seconds)
        share = seconds / len(items)
        for (case, image, ingest_s), (screened, record) in zip(items, results):
            self._judge(case, screened, record, ingest_s + share)

    def _judge(self, case: Case, screened, record, seconds: float) -> None:
        from pneumo_core.model.network import LABELS

        pred = screened.prediction
        if pred is None:
            return self._fail(case, "predict", "no prediction for a film the network was asked about", None, seconds)
        p = pred.probability
        if not isinstance(p, float) or not np.isfinite(p) or not 0.0 <= p <= 1.0:
            return self._fail(case, "probability", f"probability {p!r}", None, seconds)
        if pred.label not in LABELS or not (screened.reason is None or one_line(screened.reason)):
            return self._fail(case, "probability", f"label {pred.label!r}, reason {screened.reason!r}", None, seconds)
        try:
            json.dumps(record.to_json(), allow_nan=False)
        except (TypeError, ValueError) as exc:
            return self._fail(case, "record", f"the CLI record is not valid JSON: {exc}", exc, seconds)
        if record.status not in ("ok", "rejected"):
            return self._fail(case, "record", f"record status {record.status!r}", None, seconds)
        self._outcome(case, record.status, seconds, record.message or f"p={p:.4f}")

    def run(self, ks) -> Tally:
        self.out.mkdir(parents=True, exist_ok=True)
        self.native_log.unlink(missing_ok=True)
        self.watchdog.start()
        self.memory = Memory(self.rss_cap_mb)
        try:
            with native_stderr_to(self.native_log), counting_logs("pydicom") as self.log_records:
                for k in ks:
                    self.run_case(k)
                self.flush()
        finally:
            self.memory.restore()
            self.watchdog.stop.set()
            self.inflight.unlink(missing_ok=True)
        return self.tally


# --------------------------------------------------------------------------- report

def report(tally: Tally, seconds: float, n: int, peak_mb: float) -> None:
    """The short human table: outcomes per seed format, refusals, speed, memory, every failure."""
    rows = sorted(tally.by_format.items())
    print(f"\n{'format':<8} {'cases':>7} " + " ".join(f"{o:>9}" for o in OUTCOMES))
    for fmt, c in rows + [("all", tally.outcomes)]:
        print(f"{fmt:<8} {sum(c.values()):>7} " + " ".join(f"{c[o]:>9}" for o in OUTCOMES))
    if tally.refusals:
        print("refusals: " + ", ".join(f"{k} {v}" for k, v in tally.refusals.most_common()))
    print(f"{n} cases in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} cases/s), peak RSS {peak_mb:.0f} MB; slowest: "
          + ", ".join(f"case {k} {s:.2f} s ({name})" for s, k, name in tally.slowest[:3]))
    for f in tally.failures:
        print(f"FAIL case {f.case} [{f.stage}] {f.error}: {f.message}  (seed {f.seed}; {'; '.join(f.ops)})")
    print(f"failures: {len(tally.failures)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="number of cases (0 .. n-1)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed: case K is a function of (seed, K)")
    ap.add_argument("--case", type=int, action="append", help="re-run only case K (repeatable)")
    ap.add_argument("--model", help="model folder (default: the active model in weights/)")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds allowed per case")
    ap.add_argument("--rss-cap-mb", type=float, default=4096.0, help="peak RSS allowed during a case")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="failing inputs and tracebacks go here")
    ap.add_argument("--films-per-class", type=int, default=2)
    args = ap.parse_args(argv)

    predictor, model_dir, load_s = load_predictor(args.model, args.threads)
    seeds, notes = build_seeds(args.films_per_class, verbose=True)
    ks = args.case or range(args.n)
    print(f"model    {model_dir} (version {predictor.version}), loaded in {load_s:.1f} s, {args.threads} thread(s)")
    print(f"seeds    {len(seeds)} ({len({s.name.split('/')[0] for s in seeds})} films x "
          f"{len({s.name.split('/')[1] for s in seeds})} encodings); run seed {args.seed}")
    print(f"cases    {'case ' + ', '.join(map(str, ks)) if args.case else f'0..{args.n - 1}'}; "
          f"limits {args.timeout:g} s, {args.rss_cap_mb:g} MB RSS; failing inputs -> {args.out}")
    fuzzer = Fuzzer(predictor, seeds, args.seed, batch_size=args.batch_size, timeout_s=args.timeout,
                    rss_cap_mb=args.rss_cap_mb, out=Path(args.out), keep_cases=bool(args.case))
    t = time.perf_counter()
    tally = fuzzer.run(ks)
    seconds = time.perf_counter() - t
    n = sum(tally.outcomes.values())
    report(tally, seconds, n, fuzzer.memory.peak_mb)
    for row in tally.cases:
        print(f"case {row['case']}: {row['outcome']} ({row['detail'][:100]}); seed {row['seed']}; "
              f"{'; '.join(row['ops'])}; sha256 {row['sha256'][:16]}")
    native_lines = 0
    if fuzzer.native_log.is_file():
        native_lines = fuzzer.native_log.read_bytes().count(b"\n")
        if native_lines:
            print(f"decoders wrote {native_lines} lines to stderr: {fuzzer.native_log}")
        else:
            fuzzer.native_log.unlink()
    if fuzzer.log_records:
        print("pydicom logged " + ", ".join(f"{v} {k}" for k, v in fuzzer.log_records.most_common()) + " records")
    counts = lambda c: {"ok": c["ok"], "rejected": c["rejected"], "error_refused": c["refused"],  # noqa: E731
                        "failures": c["failure"]}
    summary = {
        "bench": "fuzz_ingest",
        "command": " ".join(["python bench/fuzz_ingest.py", *(sys.argv[1:] if argv is None else argv)]),
        "n": n,
        "seed": args.seed,
        "outcomes": counts(tally.outcomes),
        "refusals": dict(tally.refusals),
        "by_format": {fmt: counts(c) for fmt, c in sorted(tally.by_format.items())},
        "failures": [f.summary() for f in tally.failures],
        "seconds": round(seconds, 1),
        "cases_per_s": round(n / max(seconds, 1e-9), 2),
        "seconds_building_cases": round(fuzzer.mutate_s, 1),
        "peak_rss_mb": round(fuzzer.memory.peak_mb, 1),
        "slowest": [{"case": k, "seed": name, "seconds": round(s, 3)} for s, k, name in tally.slowest],
        "model_version": predictor.version,
        "model_dir": str(model_dir),
        "seeds": {"count": len(seeds), "names": [s.name for s in seeds], "notes": notes},
        "native_stderr_lines": native_lines,
        "pydicom_log_records": dict(fuzzer.log_records),
        "limits": {"timeout_s": args.timeout, "rss_cap_mb": args.rss_cap_mb},
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    if args.case:
        summary["cases"] = tally.cases
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
