"""An uploaded .zip of training data, unpacked safely (``extract_zip``), and the data root found inside it.

Refused with a DatasetError: path traversal, links and special files, encryption, too many files, too
many bytes in all or per file, and zip bombs (see ``extract_zip``). The archive's own folder names are
not kept: they may name a patient, and they reach the model card.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pneumo_core.errors import DatasetError
from pneumo_core.ingest.folders import discover_splits
from pneumo_core.ingest.read import MAX_FILE_BYTES

ZIP_MAX_FILES = 20_000                 # a training set is thousands of films, not hundreds of thousands
ZIP_MAX_BYTES = 8 * 1024 ** 3          # uncompressed total
ZIP_MAX_RATIO = 200                    # per member, uncompressed / compressed: zip bombs
ZIP_MAX_EXPANSION = 50                 # all members together, uncompressed / the archive's size (films barely
                                       # compress; 1,100 members of 1 MiB of zeros in 1.65 MB did, 700 times)
_IGNORED_PARTS = ("__MACOSX",)


def extract_zip(source: bytes | BinaryIO | str | Path, dest: str | Path, *, max_files: int = ZIP_MAX_FILES,
                max_bytes: int = ZIP_MAX_BYTES, max_file_bytes: int = MAX_FILE_BYTES,
                max_expansion: float = ZIP_MAX_EXPANSION) -> Path:
    """Unpack a .zip into ``dest`` (created; must be empty) and return the data root, ``dest/uploaded``
    (the archive's own folder names are not kept: they may name a patient, and they reach the model card).

    Refused with a DatasetError, leaving ``dest`` removed: not a zip, encrypted members, absolute
    paths or ``..`` (path traversal), links and special files, more than ``max_files`` files, more
    than ``max_bytes`` or ``max_expansion`` times the archive's own size in all, or more than
    ``max_file_bytes`` per file (refused from the archive's directory before anything is written,
    and checked again on the bytes actually written), and a suspicious compression ratio.
    Hidden files and ``__MACOSX/`` are skipped.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise DatasetError(f"{dest} is not empty.")
    try:
        unpacked = dest / "unpacked"
        unpacked.mkdir()
        try:
            _extract(source, unpacked, max_files, max_bytes, max_file_bytes, max_expansion)
        except OSError as exc:          # a file where a folder should be, disk full, ...
            raise DatasetError(f"The archive could not be unpacked ({exc.strerror or type(exc).__name__}).") from exc
        root = dest / "uploaded"
        os.replace(find_data_root(unpacked), root)
        remove_tree(unpacked)
        return root
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract(source, dest: Path, max_files: int, max_bytes: int, max_file_bytes: int, max_expansion: float) -> None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    try:
        zip_size = os.path.getsize(source) if isinstance(source, (str, os.PathLike)) else _stream_size(source)
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError("The upload is not a readable .zip archive.") from exc
    max_bytes = min(max_bytes, int(max_expansion * zip_size))
    with zf:
        members = _checked_members(zf, max_files, max_bytes, max_file_bytes, max_expansion)
        _write_members(zf, members, dest, max_bytes, max_file_bytes)


def _checked_members(zf: zipfile.ZipFile, max_files: int, max_bytes: int, max_file_bytes: int,
                     max_expansion: float) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """The members to unpack, (info, path parts), from the archive's directory alone: refused (DatasetError)
    before anything is written when one entry or the whole breaks a rule; hidden files are skipped."""
    members = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
            raise DatasetError(f"The archive is refused: the entry {name!r} points outside the archive.")
        kind = stat.S_IFMT(info.external_attr >> 16)         # 0 when the archiver recorded no Unix type
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise DatasetError(f"The archive is refused: {name!r} is a link or special file.")
        if info.flag_bits & 0x1:
            raise DatasetError("The archive is refused: it is encrypted.")
        if info.is_dir() or not parts or any(p.startswith(".") or p in _IGNORED_PARTS for p in parts):
            continue
        if info.file_size > max_file_bytes:
            raise DatasetError(f"The archive is refused: {parts[-1]} is larger than {_size(max_file_bytes)}.")
        if info.compress_size and info.file_size / info.compress_size > ZIP_MAX_RATIO and info.file_size > 2**20:
            raise DatasetError("The archive is refused: it expands suspiciously (a zip bomb?).")
        members.append((info, parts))
    if len(members) > max_files:
        raise DatasetError(f"The archive has {len(members):,} files; at most {max_files:,} are accepted.")
    if (total := sum(i.file_size for i, _ in members)) > max_bytes:
        raise DatasetError(f"The archive expands to more than {_size(max_bytes)} ({_size(total)}; at most "
                           f"{max_expansion:g} times the archive's own size is accepted).")
    return members


def _write_members(zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]], dest: Path,
                   max_bytes: int, max_file_bytes: int) -> None:
    """Unpack ``members`` under ``dest``, counting the bytes actually written against the same limits (a
    directory can lie about sizes)."""
    written = 0
    root = dest.resolve()
    for info, parts in members:
        target = dest.joinpath(*parts)
        if not target.resolve().is_relative_to(root):          # belt and braces
            raise DatasetError(f"The archive is refused: {info.filename!r} points outside the archive.")
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            with zf.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    size += len(chunk)
                    written += len(chunk)
                    if size > max_file_bytes or written > max_bytes:
                        raise DatasetError("The archive is refused: it expands beyond the size limits.")
                    out.write(chunk)
        except DatasetError:
            raise
        except FileExistsError as exc:
            raise DatasetError(f"The archive is refused: {info.filename!r} appears twice.") from exc
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError,
                ValueError) as exc:
            raise DatasetError("The archive is damaged or uses an unsupported compression method.") from exc


def _stream_size(stream: BinaryIO) -> int:
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def find_data_root(folder: str | Path) -> Path:
    """The folder holding the class (or split) folders: ``folder`` itself, or the single folder that
    an archive wrapped everything in (``mydata/train/NORMAL/...``)."""
    folder = Path(folder)
    for _ in range(4):
        try:
            discover_splits(folder)
            return folder
        except FileNotFoundError:
            subs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
            files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
            if len(subs) != 1 or files:
                break
            folder = subs[0]
    raise DatasetError("The archive does not have the expected layout: NORMAL/ and PNEUMONIA/ folders "
                       "(optionally inside train/, val/ and external/).")


def remove_tree(path: str | Path) -> None:
    """Remove a folder of temporary data (never following links out of it)."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)

