"""The app layer's plain-Python helpers (no Streamlit runtime): triage, CSV, PDF, PPV/NPV, text, boundaries."""

from __future__ import annotations

import ast
import csv
import io
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_app import SECRETS, dicom, film, png

from appkit.analysis import Upload, decode
from appkit.charts import ppv_npv
from appkit.report import latin1, pdf_report
from appkit.text import card_summary, metadata_rows, split_description
from appkit.triage import CSV_COLUMNS, triage, worklist_csv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    from pneumo_core.model.predict import Predictor

    return Predictor.from_dir(tiny_model_dir)


def test_ppv_npv_follow_bayes_rule():
    ppv, npv = ppv_npv([0.9, None], [0.8, 0.5], 0.1)
    assert ppv[0] == pytest.approx(0.9 * 0.1 / (0.9 * 0.1 + 0.2 * 0.9))
    assert npv[0] == pytest.approx(0.8 * 0.9 / (0.8 * 0.9 + 0.1 * 0.1))
    assert np.isnan(ppv[1]) and np.isnan(npv[1])
    ppv, npv = ppv_npv([0.0], [1.0], 0.3)                         # nothing called positive: PPV undefined
    assert np.isnan(ppv[0]) and npv[0] == pytest.approx(0.7)


def test_triage_rows_sorted_flagged_and_errors_kept(predictor):
    uploads = [Upload.of(f"f{i}.png", film(20 + i, i % 2 == 0)) for i in range(5)]
    uploads += [Upload.of("bad.bin", b"\x00\x01garbage"), Upload.of("blank.png", png(np.zeros((64, 64))))]
    seen = []
    rows = triage(predictor, uploads, "balanced", batch_size=2, progress=lambda i, n: seen.append((i, n)))
    assert seen[-1] == (7, 7) and len(rows) == 7
    statuses = [r.record.status for r in rows]
    assert statuses == ["ok"] * 5 + ["rejected", "error"]
    probs = [r.record.probability for r in rows[:5]]
    assert probs == sorted(probs, reverse=True)
    flag_thr = predictor.operating_points()["high_sensitivity"]
    assert all(r.flag == (r.record.probability >= flag_thr) for r in rows[:5])
    assert not rows[5].flag and not rows[6].flag
    assert all(r.record.operating_point == "balanced" for r in rows[:5])
    # the same numbers as the core's single-film path
    single = predictor.predict(decode(uploads[0], predictor).image, "balanced")
    assert next(r for r in rows if r.record.file == "f0.png").record.probability == pytest.approx(single.probability,
                                                                                                  abs=1e-5)


def test_worklist_csv_has_no_images_and_no_patient_data(predictor):
    from conftest import synthetic_film

    uploads = [Upload.of("a.png", film(1)),
               Upload.of("b.dcm", dicom(synthetic_film(np.random.default_rng(2), True, 96), age="004Y"))]
    text = worklist_csv(triage(predictor, uploads, "high_sensitivity")).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert {r["operating_point"] for r in rows} == {"high_sensitivity"}
    assert {r["model_version"] for r in rows} == {predictor.version}
    assert "data:image" not in text and "base64" not in text
    assert not any(s in text for s in SECRETS) and "004Y" not in text


def test_worklist_csv_names_films_by_sha256_with_rounded_numbers_time_and_model(predictor):
    """Issue #16, item 5: rounded probabilities, sha256 (as the audit log), UTC time and model version; the
    file names (which can hold patient names) only when asked for."""
    from datetime import datetime, timezone

    uploads = [Upload.of("Doe_Jane_chest.png", film(1)), Upload.of("b.png", film(2, False)),
               Upload.of("bad.bin", b"\x00junk")]
    rows = triage(predictor, uploads, "balanced")
    when = datetime(2026, 12, 2, 18, 30, 5, tzinfo=timezone.utc)
    text = worklist_csv(rows, now=when).decode()
    got = list(csv.DictReader(io.StringIO(text)))
    assert tuple(got[0]) == CSV_COLUMNS and "file" not in got[0] and "Doe_Jane" not in text
    assert sorted(r["sha256"] for r in got) == sorted(u.sha for u in uploads)
    assert {r["exported_utc"] for r in got} == {"2026-12-02T18:30:05Z"}
    assert {r["model_version"] for r in got} == {predictor.version}
    probs = [r["probability"] for r in got if r["probability"]]
    assert len(probs) == 2 and all(len(p.split(".")[-1]) <= 4 for p in probs + [got[0]["threshold"]])
    named = list(csv.DictReader(io.StringIO(worklist_csv(rows, file_names=True, now=when).decode())))
    assert tuple(named[0]) == ("file", *CSV_COLUMNS) and "Doe_Jane_chest.png" in {r["file"] for r in named}


def test_worklist_never_shows_none(predictor):
    """An unreadable file's thumbnail was a literal "None": it is a placeholder tile now."""
    from appkit.triage import worklist_frame

    rows = triage(predictor, [Upload.of("a.png", film(1)), Upload.of("bad.bin", b"\x00junk"),
                              Upload.of("big.png", b"x").refused("Too large.")], "balanced")
    frame = worklist_frame(rows)
    assert all(t.startswith("data:image/png;base64,") for t in frame.thumbnail)
    shown = frame.drop(columns=["probability"]).astype(str).to_numpy().ravel()
    assert not any(cell in ("None", "nan") for cell in shown), shown


FORMULA_NAMES = ["=2+5.png", "+cmd|' /C calc'!A0.png", "@SUM(1).png", "-2+3.png", "\tx.png", "\rx.png",
                 "=HYPERLINK(\"http://evil.example\",\"x\")", "a\r=2+5.png", "b\n@SUM(1).png"]


def test_worklist_csv_cells_never_start_like_a_formula(predictor):
    """Issue #19, item 4: a file name such as '=2+5.png' was written as is, and a spreadsheet would run it."""
    blank = png(np.full((64, 64), 0.5))
    uploads = [Upload.of(name, film(i) if i % 2 else blank) for i, name in enumerate(FORMULA_NAMES)]
    uploads.append(Upload.of("notes.txt", b"-not an image"))
    text = worklist_csv(triage(predictor, uploads, "balanced"), file_names=True).decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    expected = [n if n[0] in "ab" else "'" + n for n in FORMULA_NAMES] + ["notes.txt"]
    assert sorted(r["file"] for r in rows) == sorted(expected)        # a CR or LF inside a name stays in its cell
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)
    assert any(r["probability"] for r in rows) and all(float(r["probability"]) >= 0 for r in rows if r["probability"])


def test_safe_cell_changes_text_only():
    from pneumo_core.ops.csvcell import safe_cell

    assert [safe_cell(v) for v in ("=1", "+1", "-1", "@a", "\t1", "\r1")] == ["'=1", "'+1", "'-1", "'@a", "'\t1",
                                                                          "'\r1"]
    assert [safe_cell(v) for v in (-1.5, -2, "a=1", "", None, True)] == [-1.5, -2, "a=1", "", None, True]


def test_pdf_report_is_one_page_with_the_caution(predictor):
    image = decode(Upload.of("film.png", film(3, size=128)), predictor).image
    pdf = pdf_report(file_name="film.png", sha256="ab" * 32, film=image.pixels,
                     overlay_rgb=np.zeros((*image.pixels.shape, 3), np.uint8), probability=0.734, label="PNEUMONIA",
                     operating_point="High sensitivity (threshold 12.0%)", model_version="v-test",
                     card_line="Data: x · init: imagenet · external AUC 0.950 (0.930–0.970)", method="Grad-CAM",
                     warnings=["Patient older than the pediatric training population (1–5 years)"],
                     metadata=[("Modality", "DX")], outside_validated_use="The image is blank.")
    assert pdf.startswith(b"%PDF-") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") == 1
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, flags=re.S)
    content = b"".join(_inflate(s) for s in streams).decode("latin-1").replace("\\(", "(").replace("\\)", ")")
    for words in ("Decision support, not a diagnosis", "73.4%", "PNEUMONIA", "v-test", "High sensitivity",
                  "OUTSIDE VALIDATED USE: The image is blank.", "Label: PNEUMONIA (not validated)",
                  "external AUC 0.950 (0.930-0.970)", "(1-5 years)"):
        assert words in content, words
    assert content.index("OUTSIDE VALIDATED USE") < content.index("Probability of pneumonia")   # the headline


def pdf_text(pdf: bytes) -> str:
    """The text a PDF draws, from its content streams (fpdf2 writes each string in one piece)."""
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, flags=re.S)
    return b"".join(_inflate(s) for s in streams).decode("latin-1").replace("\\(", "(").replace("\\)", ")")


def test_pdf_report_has_sha256_intended_use_plain_operating_point_and_findings_table(predictor):
    """Issue #16, item 6: the input's sha256 (as the audit log has it), an intended-use line, the operating point
    in plain words with its rule apart, film and map large, the findings as a table."""
    import hashlib

    from appkit.text import op_meaning

    data = film(3, size=128)
    up = Upload.of("film.png", data)
    image = decode(up, predictor).image
    pdf = pdf_report(file_name="film.png", sha256=up.sha, film=image.pixels,
                     overlay_rgb=np.zeros((*image.pixels.shape, 3), np.uint8), probability=0.25, label="NORMAL",
                     operating_point=op_meaning("balanced", 0.7293),
                     operating_point_details="max Youden J; chosen on external/", model_version="v-test",
                     card_line="Data: x", method="Grad-CAM", metadata=[("Modality", "DX")])
    text = pdf_text(pdf)
    assert f"sha256 {hashlib.sha256(data).hexdigest()}" in text
    assert "Intended use: decision support" in text and "children" in text
    assert "Balanced (threshold 72.9%): misses and false alarms weighed alike" in text
    assert "How it was chosen" in text and "max Youden J; chosen on external/" in text
    assert "Operating point" in text and "Modality DX" in text
    # film and map each drawn at least 85 mm wide (q w 0 0 h x y cm, in points): the page is used
    sizes = [float(w) for w in re.findall(r"q ([\d.]+) 0 0 [\d.]+ [\d.]+ [\d.]+ cm", text)]
    assert len(sizes) == 2 and min(sizes) >= 85 / 25.4 * 72, sizes


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return b""


def test_latin1_keeps_typography_readable():
    assert latin1("sens ≥ 0.95 – 1·2 × 3 π") == "sens >= 0.95 - 1-2 x 3 pi"
    assert latin1("漢字") == "??"


def test_metadata_rows_are_an_allow_list():
    meta = {"format": "DICOM", "modality": "DX", "patient_age_years": 0.5, "patient_sex": "M",
            "patient_name": "Doe^Jane", "patient_id": "PID-123456", "institution": "St Elsewhere", "width": 10,
            "height": 20}
    rows = dict(metadata_rows(meta))
    assert rows == {"Format": "DICOM", "Modality": "DX", "Size": "10 × 20 px", "Age": "6 mo", "Sex": "M"}


def test_card_texts_come_from_the_card(tiny_model_dir):
    import json

    from pneumo_core.model.evaluation import load_evaluation

    card = json.loads((tiny_model_dir / "card.json").read_text())
    line = card_summary(card)
    assert line.startswith(f"Data: {card['data']['source']}") and f"init: {card['initialisation']['kind']}" in line
    assert "external AUC" in line and "not measured" not in line
    evals = load_evaluation(tiny_model_dir)
    assert "Optimistic" in split_description("external", evals["external"], card)
    assert "Optimistic" not in split_description("test", evals["test"], card)
    assert card_summary({}) == "Data: unknown · init: unknown · external AUC not measured"


# --------------------------------------------------------------------------- boundaries (STYLE.md)

def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {n.split(".")[0] for n in names}


def test_pages_do_not_touch_torch_and_plain_helpers_do_not_import_streamlit():
    for script in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        assert "torch" not in _imports(script), script
        assert ".net" not in script.read_text() and "nn." not in script.read_text(), script
    for name in ("analysis", "triage", "charts", "report", "text", "images"):
        assert "streamlit" not in _imports(ROOT / "appkit" / f"{name}.py"), name


def test_worklist_shows_percentages_like_every_other_number(predictor):
    """Issue #16, item 4: the worklist's probability column holds percentages (shown with one decimal), not
    fractions that the table rounded raggedly (99.7% beside 99.71%)."""
    from appkit.triage import worklist_frame

    rows = triage(predictor, [Upload.of("a.png", film(1)), Upload.of("bad.bin", b"\x00junk")], "balanced")
    frame = worklist_frame(rows)
    ok = rows[0].record.probability
    assert frame.probability.iloc[0] == pytest.approx(100 * ok) and frame.probability.isna().iloc[1]
