"""Training data supplied by staff: check a class-folder layout before any training starts, and
unpack an uploaded .zip of one safely.

Layout (as ``data.discover_splits``): ``NORMAL/`` and ``PNEUMONIA/``, or ``train/`` (and optionally
``val/``, ``test/``, ``external/``) holding them. Every film is decoded once with the app's reader,
so the counts are of films training can actually use; unreadable files are listed and skipped.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from pneumo_core.errors import DatasetError, UnreadableImageError
from pneumo_core.ingest.folders import LabelledFiles, discover_splits, list_labelled
from pneumo_core.ingest.read import MAX_FILE_BYTES, read_xray
from pneumo_core.model.network import LABELS

MIN_TRAIN_PER_CLASS = 20     # fewer films than this per class cannot teach the model anything useful
MIN_EVAL_PER_CLASS = 5       # val/ and external/ need enough of each class for an AUC to mean something
VAL_FRACTION = 0.1           # carved from train/ when there is no val/ (as train.TrainConfig)

ZIP_MAX_FILES = 20_000                 # a training set is thousands of films, not hundreds of thousands
ZIP_MAX_BYTES = 8 * 1024 ** 3          # uncompressed total
ZIP_MAX_RATIO = 200                    # per member, uncompressed / compressed: zip bombs
ZIP_MAX_EXPANSION = 50                 # all members together, uncompressed / the archive's size (films barely
                                       # compress; 1,100 members of 1 MiB of zeros in 1.65 MB did, 700 times)
_IGNORED_PARTS = ("__MACOSX",)



@dataclass(frozen=True)
class DatasetReport:
    root: Path
    counts: dict[str, dict[str, int]]                 # split -> class -> readable films
    unreadable: tuple[tuple[str, str], ...] = ()      # (split/CLASS/file, reason)
    problems: tuple[str, ...] = ()                    # reasons to refuse
    warnings: tuple[str, ...] = ()
    decode_cpu_s: float = 0.0                         # CPU seconds the check spent decoding the films

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def read_s(self) -> float | None:
        """CPU seconds to decode one readable film, as measured by the check (None without one)."""
        return self.decode_cpu_s / self.total if self.total and self.decode_cpu_s else None

    @property
    def n_train(self) -> int:
        """Films training will see per epoch (train/ minus the carved validation part when no val/)."""
        n = sum(self.counts.get("train", {}).values())
        return n if "val" in self.counts else n - sum(self.carved_val().values())

    def carved_val(self) -> dict[str, int]:
        if "val" in self.counts:
            return {}
        return {k: max(1, round(v * VAL_FRACTION)) for k, v in self.counts.get("train", {}).items()}

    def summary(self) -> dict:
        """What may be stored with a job: counts only, never file names."""
        return {"counts": self.counts, "n_unreadable": len(self.unreadable), "warnings": list(self.warnings)}


def _readable(path: Path) -> tuple[str | None, float]:
    """(None when ``path`` decodes as a film, else the reason it does not; the CPU seconds it took)."""
    t = time.thread_time()
    try:
        read_xray(path, name=path.name)
        return None, time.thread_time() - t
    except UnreadableImageError as exc:
        return str(exc), 0.0
    except OSError as exc:
        return f"Cannot open the file ({exc.strerror or 'I/O error'}).", 0.0


def validate_dataset(root: str | Path, *, min_train_per_class: int = MIN_TRAIN_PER_CLASS,
                     min_eval_per_class: int = MIN_EVAL_PER_CLASS, workers: int = 4,
                     progress: Callable[[int, int], None] | None = None) -> DatasetReport:
    """Decode every film once; count readable ones per split and class; say what would refuse training."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder on this server.")
    try:
        splits = discover_splits(root)
    except FileNotFoundError as exc:
        raise DatasetError(str(exc)) from exc
    lists: dict[str, LabelledFiles] = {name: list_labelled(path) for name, path in splits.items()}
    jobs = [(name, f, int(y)) for name, lf in lists.items() for f, y in zip(lf.files, lf.labels)]
    done = 0
    counts = {name: {label: 0 for label in LABELS} for name in lists}
    unreadable = []
    cpu_s = 0.0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (name, f, y), (reason, spent) in zip(jobs, pool.map(lambda j: _readable(j[1]), jobs)):
            cpu_s += spent
            if reason is None:
                counts[name][LABELS[y]] += 1
            else:
                rel = f.relative_to(root) if f.is_relative_to(root) else Path(name, LABELS[y], f.name)
                unreadable.append((rel.as_posix(), reason))
            done += 1
            if progress:
                progress(done, len(jobs))
    problems, warnings = [], []
    train = counts["train"]
    if min(train.values()) < min_train_per_class:
        problems.append(f"Too few training films: {_fmt(train)}; at least {min_train_per_class} readable films "
                        f"of each class are needed.")
    for split in ("val", "external"):
        if split in counts and min(counts[split].values()) < min_eval_per_class:
            problems.append(f"Too few films in {split}/: {_fmt(counts[split])}; at least {min_eval_per_class} of "
                            f"each class are needed (or remove {split}/).")
    if "val" not in counts:
        warnings.append(f"No val/ folder: {VAL_FRACTION:.0%} of train/ (stratified, random: patients are not kept "
                        f"together) is held out for validation.")
    if "external" not in counts:
        warnings.append("No external/ folder: the new model is evaluated on its validation films only.")
    if unreadable:
        warnings.append(f"{len(unreadable)} unreadable file(s) will be skipped.")
    if train and max(train.values()) > 10 * max(1, min(train.values())):
        warnings.append(f"Strong class imbalance in train/ ({_fmt(train)}); the loss reweights the classes.")
    return DatasetReport(root, counts, tuple(unreadable), tuple(problems), tuple(warnings), decode_cpu_s=cpu_s)


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items())


# --------------------------------------------------------------------------- uploaded .zip

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

