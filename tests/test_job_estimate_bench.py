"""bench/job_estimate.py: its comparison and table (fast, pure; the bench itself runs real jobs)."""

from __future__ import annotations

from bench.job_estimate import GOAL, SIZES, compare, subset, table


def test_compare_gives_ratios_per_phase_and_in_total():
    rows = compare({"preparing": 10.0, "training": 50.0, "guard": 40.0},
                   {"preparing": 12.0, "training": 80.0, "guard": 38.0})
    by = {r["phase"]: r for r in rows}
    assert [r["phase"] for r in rows] == ["preparing", "training", "guard", "total"]
    assert by["training"]["ratio"] == 1.6 and not by["training"]["within_goal"]
    assert by["preparing"]["within_goal"] and by["guard"]["within_goal"]
    assert by["total"]["estimated_s"] == 100 and by["total"]["actual_s"] == 130 and by["total"]["within_goal"]
    assert GOAL == 0.30
    missing = compare({"preparing": 10.0, "comparing": 5.0}, {"preparing": 10.0})   # a phase never recorded
    assert missing[1]["actual_s"] is None and missing[1]["ratio"] is None and not missing[1]["within_goal"]


def test_table_has_a_line_per_job_and_phase():
    rows = compare({"preparing": 10.0, "training": 50.0}, {"preparing": 10.0, "training": 90.0})
    text = table([{"name": "small", "rows": rows, "reference": compare({"preparing": 8.0, "training": 40.0},
                                                                        {"preparing": 10.0, "training": 90.0})}])
    lines = text.splitlines()
    assert len(lines) == 1 + 3 and "reference s" in lines[0]
    assert lines[2].split()[:2] == ["small", "training"] and lines[2].rstrip().endswith("MISS")
    assert lines[1].rstrip().endswith("ok")


def test_three_job_sizes_grow_and_subsets_are_links(tmp_path, monkeypatch):
    import bench.job_estimate as bench

    sizes = [SIZES[k] for k in ("small", "medium", "large")]
    assert [s[0][0] for s in sizes] == sorted(s[0][0] for s in sizes) and len(set(s[2] for s in sizes)) == 3
    src = tmp_path / "src"
    for split in ("train", "val", "external"):
        for label in ("NORMAL", "PNEUMONIA"):
            (src / split / label).mkdir(parents=True)
            for i in range(5):
                (src / split / label / f"{i}.png").write_bytes(b"x")
    monkeypatch.setattr(bench, "DATA", src)
    out = subset(tmp_path / "sub", (3, 2, 1))
    assert len(list((out / "train" / "NORMAL").iterdir())) == 3
    assert (out / "external" / "PNEUMONIA" / "0.png").is_symlink()
