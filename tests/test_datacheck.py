"""Training data checks and safe .zip unpacking (no training here: milliseconds per test)."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
from conftest import make_dataset

from pneumo_core.errors import DatasetError
from pneumo_core.ingest.archives import extract_zip
from pneumo_core.ingest.datacheck import validate_dataset


def zip_folder(folder: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, prefix + f.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("d"), {"train": 20, "val": 5}, size=40)


def test_folder_counts_per_split_and_class(dataset):
    report = validate_dataset(dataset)
    assert report.ok and report.problems == ()
    assert report.counts == {"train": {"NORMAL": 20, "PNEUMONIA": 20}, "val": {"NORMAL": 5, "PNEUMONIA": 5}}
    assert report.n_train == 40 and report.total == 50
    assert any("external/" in w for w in report.warnings)


def test_flat_folder_gets_a_carved_validation_split(dataset):
    report = validate_dataset(dataset / "train")
    assert report.ok and set(report.counts) == {"train"}
    assert report.carved_val() == {"NORMAL": 2, "PNEUMONIA": 2} and report.n_train == 36
    assert any("No val/" in w for w in report.warnings)


def test_too_few_films_are_refused_with_counts(tmp_path):
    data = make_dataset(tmp_path / "d", {"train": 6, "val": 2}, size=40)
    report = validate_dataset(data)
    assert not report.ok
    assert any("Too few training films: 6 NORMAL, 6 PNEUMONIA" in p for p in report.problems)
    assert any("val/" in p for p in report.problems)


def test_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        validate_dataset(tmp_path / "missing")
    (tmp_path / "pics").mkdir()
    with pytest.raises(DatasetError, match="NORMAL/ and PNEUMONIA/"):
        validate_dataset(tmp_path / "pics")


def test_zip_in_a_wrapper_folder_with_unreadable_files_listed_and_skipped(dataset, tmp_path):
    good = (dataset / "train" / "NORMAL" / "normal_000.png").read_bytes()
    data = zip_folder(dataset, "export/", {
        "export/train/NORMAL/notes.txt": b"Patient notes, not a film",
        "export/train/PNEUMONIA/cut.png": good[:150],
        "export/train/PNEUMONIA/.DS_Store": b"junk",
        "__MACOSX/export/._x": b"junk",
    })
    root = extract_zip(data, tmp_path / "x")
    assert root == tmp_path / "x" / "uploaded"                   # the archive's folder names are not kept
    assert [p.name for p in (tmp_path / "x").iterdir()] == ["uploaded"]
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    report = validate_dataset(root)
    assert report.ok and report.counts["train"] == {"NORMAL": 20, "PNEUMONIA": 20}
    assert sorted(f for f, _ in report.unreadable) == ["train/NORMAL/notes.txt", "train/PNEUMONIA/cut.png"]
    assert all(reason for _, reason in report.unreadable)
    assert report.summary()["n_unreadable"] == 2 and "notes.txt" not in str(report.summary())


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entries, message", [
    ([("../evil.png", b"x")], "outside the archive"),
    ([("NORMAL/../../evil.png", b"x")], "outside the archive"),
    ([("/tmp/abs.png", b"x")], "outside the archive"),
    ([(_symlink("NORMAL/link.png", "/etc/passwd"), b"/etc/passwd")], "link or special file"),
    ([("NORMAL/a.png", b"x"), ("NORMAL/a.png", b"y")], "appears twice"),
    ([("NORMAL/zeros.dcm", bytes(4 * 2**20))], "zip bomb"),
    ([("film1.png", b"x"), ("film2.png", b"y")], "expected layout"),
])
def test_bad_archives_are_refused_and_leave_nothing(tmp_path, entries, message):
    dest = tmp_path / "x"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # zipfile warns about the duplicate name we write on purpose
        data = _zip(entries)
    with pytest.raises(DatasetError, match=message):
        extract_zip(data, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/abs.png").exists()


def test_not_a_zip_and_size_caps(tmp_path, dataset):
    with pytest.raises(DatasetError, match="not a readable .zip"):
        extract_zip(b"PK\x03\x04 but not really a zip", tmp_path / "a")
    data = zip_folder(dataset)
    with pytest.raises(DatasetError, match="at most 10 are accepted"):
        extract_zip(data, tmp_path / "b", max_files=10)
    with pytest.raises(DatasetError, match="expands to more than"):
        extract_zip(data, tmp_path / "c", max_bytes=10_000)
    with pytest.raises(DatasetError, match="larger than"):
        extract_zip(data, tmp_path / "d", max_file_bytes=100)
    assert not any((tmp_path / n).exists() for n in "abcd")



# --------------------------------------------------------------------------- issue #19, item 7: many-member zip

def test_many_small_members_that_expand_far_beyond_the_archive_are_refused_before_writing(tmp_path):
    """1 MiB members of zeros pass the per-member ratio check (it looks only above 1 MiB); together they expand
    hundreds of times. Refused from the archive's directory: nothing is written."""
    mib = bytes(2**20)
    data = _zip([(f"{label}/{i:04d}.png", mib) for i in range(32) for label in ("NORMAL", "PNEUMONIA")])
    assert len(data) < 2**20                                     # 64 MiB unpacked from well under 1 MB
    dest = tmp_path / "x"
    with pytest.raises(DatasetError, match="expands to more than .*50 times the archive"):
        extract_zip(data, dest)
    assert not dest.exists()


def test_total_expansion_is_checked_on_files_and_streams_too(tmp_path):
    data = _zip([(f"NORMAL/{i}.png", bytes(2**20)) for i in range(8)])
    (tmp_path / "a.zip").write_bytes(data)
    for source, dest in ((tmp_path / "a.zip", "p"), (io.BytesIO(data), "s")):
        with pytest.raises(DatasetError, match="expands to more than"):
            extract_zip(source, tmp_path / dest)
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()


def test_member_count_default_is_far_below_a_hundred_thousand(tmp_path):
    from pneumo_core.ingest.archives import ZIP_MAX_FILES

    assert ZIP_MAX_FILES <= 20_000
    data = _zip([(f"NORMAL/{i}.png", b"") for i in range(ZIP_MAX_FILES + 1)], zipfile.ZIP_STORED)
    with pytest.raises(DatasetError, match=f"at most {ZIP_MAX_FILES:,} are accepted"):
        extract_zip(data, tmp_path / "x")
    assert not (tmp_path / "x").exists()
