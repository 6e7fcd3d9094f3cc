"""Films outside the validated population (an adult frontal film, issue #14 item 3) in the app and its PDF:
a headline warning, no plain green or red label, and triage ranking and tinting them apart.

The tiny test model has no film-type check, so ``adult_check`` stands one in: it wraps the real
``Predictor.screen_many`` and calls every accepted film ``ADULT_WIDTH`` pixels wide an adult frontal film,
as the core does (a caution, the adult warning first in the prediction's warnings), and every other
accepted film a pediatric one.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import replace

import numpy as np
import pytest
from test_app import film, open_app, png, upload, weights  # noqa: F401  (weights: a fixture)
from test_app_units import _inflate

from appkit.analysis import Upload
from appkit.films_ui import label_badges
from appkit.triage import CSV_COLUMNS, TriageRow, sort_worklist, triage, worklist_csv, worklist_frame
from appkit.triage_ui import FLAG_TINT, OUTSIDE_TINT, row_tint
from pneumo_core.model.predict import Record
from pneumo_core.ops import audit
from pneumo_core.safety.filmtype import ADULT, ADULT_CAUTION, ADULT_WARNING, PEDIATRIC

ADULT_WIDTH = 112          # films this wide are adult films for ``adult_check``; test_app's films are 96 px
PLAIN_BADGES = (":red-badge[", ":green-badge[")


@pytest.fixture()
def adult_check(monkeypatch):
    import pneumo_core.model.predict as predict

    real = predict.Predictor.screen_many

    def screen_many(self, images, operating_point=None, **kwargs):
        out = []
        for image, s in zip(images, real(self, images, operating_point, **kwargs)):
            if s.reason is None and image.pixels.shape[1] == ADULT_WIDTH:
                pred = replace(s.prediction, warnings=(ADULT_WARNING,) + s.prediction.warnings)
                s = replace(s, prediction=pred, film_type=ADULT, caution=ADULT_CAUTION)
            elif s.reason is None:
                s = replace(s, film_type=PEDIATRIC)
            out.append(s)
        return out

    monkeypatch.setattr(predict.Predictor, "screen_many", screen_many)


def adult_film(seed: int = 2, pneumonia: bool = True) -> bytes:
    return film(seed, pneumonia, size=ADULT_WIDTH)


def plain(markdown: str) -> str:
    """Markdown source as the reader sees it (backslash escapes removed)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def boxes(at) -> dict[str, list[tuple[str, str]]]:
    """Each film's box on the page, in page order: {file name: [(element type, text), ...]}."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list | None = None

    def walk(node) -> None:
        nonlocal current
        children = getattr(node, "children", None)
        if children is not None and not hasattr(node, "value"):
            for k in sorted(children):
                walk(children[k])
            return
        kind = getattr(node, "type", "")
        if kind == "metric":
            text = f"{node.label}: {node.value}"
        else:
            try:
                text = str(node.value)
            except Exception:          # widgets without a plain value
                text = ""
        if kind == "markdown" and text.startswith("##### "):
            current = out.setdefault(plain(text[6:]), [])
        if current is not None:
            current.append((kind, plain(text)))

    walk(at.main)
    return out


# --------------------------------------------------------------------------- predict page

def test_adult_film_gets_the_headline_warning_and_no_plain_badge(weights, adult_check):
    at = upload(open_app(), ("child.png", film(1)), ("adult.png", adult_film()))
    page = boxes(at)
    assert set(page) == {"child.png", "adult.png"}
    adult, child = page["adult.png"], page["child.png"]

    # The headline: the first thing under the film's name, before the probability.
    kinds = [k for k, _ in adult]
    first_warning = kinds.index("warning")
    assert adult[first_warning][1].startswith("**Outside validated use.** " + ADULT_CAUTION)
    assert first_warning < kinds.index("metric")
    assert first_warning == 1, adult[:3]
    # No plain green or red label; the label is there, marked as not validated.
    markdown = [t for k, t in adult if k == "markdown"]
    assert not any(b in m for m in markdown for b in PLAIN_BADGES), markdown
    badge = next(m for m in markdown if "Outside validated use" in m)
    assert re.search(r":gray-badge\[(PNEUMONIA|NORMAL) — not validated\]", badge), badge
    assert any(ADULT_WARNING in t for k, t in adult if k == "warning")

    # A pediatric film is within validated use: its plain badge and no such warning.
    assert any(t in (":red-badge[PNEUMONIA]", ":green-badge[NORMAL]") for k, t in child if k == "markdown"), child
    assert not any("Outside validated use" in t for _, t in child)
    assert not any("not validated" in t for _, t in child)


def test_adult_film_result_is_audited_as_outside_validated_use(weights, adult_check):
    upload(open_app(), ("child.png", film(1)), ("adult.png", adult_film()))
    details = {e["input_sha256"]: e["detail"] for e in audit.events(actions=["predict"])}
    assert details[Upload.of("a", adult_film()).sha] == f"outside validated use ({ADULT})"
    assert details[Upload.of("c", film(1)).sha] is None


def test_analysed_anyway_rejection_gets_the_same_headline(weights):
    at = upload(open_app(), ("blank.png", png(np.full((128, 128), 0.5))))
    at.checkbox[0].check().run()
    [box] = boxes(at).values()
    kinds = [k for k, _ in box]
    headline = next(t for k, t in box if k == "warning")
    assert headline.startswith("**Outside validated use.** The image is blank")
    assert kinds.index("warning") < kinds.index("metric")
    assert not any(b in t for k, t in box if k == "markdown" for b in PLAIN_BADGES)
    assert [e["detail"] for e in audit.events(actions=["predict"]) if e["result"] != "rejected"] == [
        "analysed anyway, outside validated use"]


def test_pdf_of_an_adult_film_carries_the_warning_in_its_headline(weights, adult_check, monkeypatch):
    """The PDF is built when its button is clicked: the test keeps the button's callable and calls it."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    deferred: dict[str, object] = {}
    real = MediaFileManager.add_deferred

    def keep(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        deferred[file_name] = data_callable
        return real(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", keep)
    upload(open_app(), ("child.png", film(1)), ("adult.png", adult_film()))
    adult, child = pdf_text(deferred["adult_report.pdf"]()), pdf_text(deferred["child_report.pdf"]())

    assert "OUTSIDE VALIDATED USE: " + ADULT_CAUTION[:40] in adult
    assert adult.index("OUTSIDE VALIDATED USE") < adult.index("File: adult.png")      # under the title
    assert adult.index("OUTSIDE VALIDATED USE") < adult.index("Probability of pneumonia")
    assert re.search(r"Label: (PNEUMONIA|NORMAL) \(not validated\)", adult)
    assert "Adult chest film" in adult                                                 # and in the warnings
    assert "OUTSIDE VALIDATED USE" not in child and "not validated" not in child
    assert re.search(r"Label: (PNEUMONIA|NORMAL)\)", child)                             # ends the text string


def pdf_text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF-")
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, flags=re.S)
    return b"".join(_inflate(s) for s in streams).decode("latin-1").replace("\\(", "(").replace("\\)", ")")


# --------------------------------------------------------------------------- triage (plain Python)

def row(file: str, status: str = "ok", p: float | None = 0.5, *, outside: bool = False, flag: bool = False,
        film_type: str | None = None) -> TriageRow:
    return TriageRow(Record(file, status, p, "PNEUMONIA" if p and p >= 0.5 else "NORMAL", 0.5, "v",
                            film_type=film_type, outside_validated_use=outside), flag, file)


def test_sort_ranks_validated_then_outside_validated_then_rejected_then_errors():
    rows = [row("err", "error", None), row("adult-low", p=0.2, outside=True, film_type=ADULT),
            row("rej", "rejected", None, outside=True), row("child-low", p=0.1, film_type=PEDIATRIC),
            row("adult-high", p=0.99, outside=True, film_type=ADULT), row("child-high", p=0.6),
            row("err2", "error", None)]
    order = [r.record.file for r in sort_worklist(rows)]
    assert order == ["child-high", "child-low", "adult-high", "adult-low", "rej", "err", "err2"]


def test_worklist_frame_marks_and_tints_outside_validated_rows_apart_from_flags():
    rows = sort_worklist([row("child", p=0.9, flag=True, film_type=PEDIATRIC),
                          row("adult", p=0.95, flag=True, outside=True, film_type=ADULT),
                          row("child2", p=0.1), row("rej", "rejected", None, outside=True)])
    df = worklist_frame(rows)
    assert list(df.file) == ["child", "child2", "adult", "rej"]
    assert list(df.outside) == ["", "", "Outside", "Outside"] and list(df.flag) == ["Flagged", "", "Flagged", ""]
    assert list(df.film_type) == ["pediatric frontal", "", "adult frontal", ""]
    tints = [row_tint(r)[0] for _, r in df.iterrows()]
    assert tints == [FLAG_TINT, "", OUTSIDE_TINT, ""]        # a flagged adult film is amber, not pink
    assert FLAG_TINT != OUTSIDE_TINT


def test_worklist_csv_has_film_type_and_outside_validated_use():
    text = worklist_csv([row("child", p=0.9, film_type=PEDIATRIC), row("adult", p=0.7, outside=True,
                                                                          film_type=ADULT)], file_names=True).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == ("file", *CSV_COLUMNS) and {"film_type", "outside_validated_use"} <= set(CSV_COLUMNS)
    assert [(r["file"], r["film_type"], r["outside_validated_use"]) for r in rows] == [
        ("child", PEDIATRIC, "False"), ("adult", ADULT, "True")]


def test_triage_of_adult_films_through_the_core(tiny_model_dir, adult_check):
    from pneumo_core.model.predict import Predictor

    predictor = Predictor.from_dir(tiny_model_dir)
    uploads = [Upload.of("adult.png", adult_film(4, True)), Upload.of("child.png", film(5, False)),
               Upload.of("blank.png", png(np.zeros((64, 64)))), Upload.of("child2.png", film(6, True))]
    rows = triage(predictor, uploads, "balanced")
    assert [r.record.file for r in rows][2:] == ["adult.png", "blank.png"]
    adult = rows[2].record
    assert adult.status == "ok" and adult.outside_validated_use and adult.film_type == ADULT
    assert adult.message == "Outside validated use: " + ADULT_CAUTION and adult.warnings[0] == ADULT_WARNING
    assert not any(r.record.outside_validated_use for r in rows[:2])


def test_label_badges():
    assert label_badges("PNEUMONIA", None) == ":red-badge[PNEUMONIA]"
    assert label_badges("NORMAL", None) == ":green-badge[NORMAL]"
    outside = label_badges("PNEUMONIA", ADULT_CAUTION)
    assert not any(b in outside for b in PLAIN_BADGES) and "not validated" in outside


# --------------------------------------------------------------------------- triage page

def tinted_rows(styles: str, tint: str) -> set[int]:
    """Rows of the styled worklist (the CSS the page sends) that carry this tint."""
    colour = tint.split(": ")[1]
    return {int(n) for selectors, body in re.findall(r"([^{}]*)\{([^}]*)\}", styles) if colour in body
            for n in re.findall(r"_row(\d+)_col", selectors)}


def test_triage_page_lists_adult_films_after_validated_ones_tinted_and_counted_apart(weights, adult_check):
    files = [("c1.png", film(11, True)), ("c2.png", film(12, False)), ("a1.png", adult_film(13, True)),
             ("a2.png", adult_film(14, False)), ("blank.png", png(np.full((64, 64), 0.3)))]
    at = upload(open_app("triage"), *files)
    df = at.dataframe[0].value
    assert set(df.file[:2]) == {"c1.png", "c2.png"}
    assert set(df.file[2:4]) == {"a1.png", "a2.png"} and df.file.iloc[4] == "blank.png"
    assert list(df.probability[2:4]) == sorted(df.probability[2:4], reverse=True)
    assert list(df.outside) == ["", "", "Outside", "Outside", "Outside"]
    assert list(df.film_type[:4]) == ["pediatric frontal"] * 2 + ["adult frontal"] * 2
    metrics = {m.label: m.value for m in at.metric}
    flags = [f == "Flagged" for f in df.flag]
    assert metrics["Outside validated use"] == "2" and metrics["Analysed"] == "4"
    assert any(flags[:2])              # the tiny model flags every film at its high-sensitivity point...
    assert not any(flags[2:4])         # ...but an adult film's number is not one to triage on: never flagged
    assert metrics["Flagged"] == str(sum(flags[:2]))
    # The tints reach the page: the styled frame sent to the browser has amber adult rows, pink flagged ones.
    styles = str(at.dataframe[0].proto.arrow_data.styler.styles)
    assert tinted_rows(styles, OUTSIDE_TINT) == {2, 3}
    assert tinted_rows(styles, FLAG_TINT) == {i for i in (0, 1) if flags[i]}
    events = [e for e in audit.events(actions=["triage"]) if e["detail"]]
    assert len(events) == 2 and {e["detail"] for e in events} == {f"outside validated use ({ADULT})"}
