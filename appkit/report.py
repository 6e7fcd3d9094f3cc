"""The one-page PDF report for one film (fpdf2). Plain Python: bytes out, nothing written to disk."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

import numpy as np
from fpdf import FPDF
from PIL import Image

from .images import shrink, to_uint8
from .text import CAUTION, INTENDED_USE

# fpdf2's core fonts are Latin-1 only; a few typographic characters the app uses are mapped.
_ASCII = str.maketrans({"–": "-", "—": "-", "·": "-", "×": "x", "≥": ">=", "≤": "<=", "’": "'", "‘": "'",
                        "“": '"', "”": '"', "…": "...", "→": "->", "π": "pi"})


def latin1(text: str) -> str:
    return str(text).translate(_ASCII).encode("latin-1", "replace").decode("latin-1")


def _height(pdf: FPDF, text: str, size: float, h: float) -> float:
    """The height ``multi_cell`` would take for this text (nothing drawn)."""
    pdf.set_font("Helvetica", "", size)
    return pdf.multi_cell(0, h, latin1(text), dry_run=True, output="HEIGHT")


def _line(pdf: FPDF, text: str, size: float = 10, style: str = "", h: float = 5.5, colour: int = 20) -> None:
    """One paragraph, full width, then back to the left margin."""
    pdf.set_font("Helvetica", style, size)
    pdf.set_text_color(colour)
    pdf.multi_cell(0, h, latin1(text), new_x="LMARGIN", new_y="NEXT")


MARGIN = 12.0
PAGE_W, PAGE_H = 210.0, 297.0
FOOTER_Y = PAGE_H - MARGIN - 16


def pdf_report(*, file_name: str, sha256: str, film: np.ndarray, overlay_rgb: np.ndarray, probability: float,
               label: str, operating_point: str, model_version: str, card_line: str, method: str,
               operating_point_details: str | None = None, warnings: Sequence[str] = (),
               metadata: Sequence[tuple[str, str]] = (), outside_validated_use: str | None = None) -> bytes:
    """film: [0, 1] grey pixels; overlay_rgb: uint8 RGB; sha256: the uploaded file's digest, as the audit log
    records the film (so the report can be matched with its audit event). Returns the PDF's bytes."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_margins(MARGIN, MARGIN, MARGIN)
    pdf.add_page()
    pdf.set_title("Pneumonia decision support report")
    pdf.set_creator("pneumo app")
    _header(pdf, file_name, sha256, outside_validated_use)
    _images(pdf, film, overlay_rgb, method)
    _line(pdf, f"Probability of pneumonia: {100 * probability:.1f}%    Label: {label}"
          + (" (not validated)" if outside_validated_use else ""), 15, "B", 8)
    _findings(pdf, [("Operating point", operating_point),
                    *([("How it was chosen", operating_point_details)] if operating_point_details else []),
                    ("Model", f"{model_version} ({card_line})"),
                    ("Map", f"{method}: where, within this film, the evidence for pneumonia is strongest relative "
                            "to the rest of the film; not an absolute measure and not a lesion outline."),
                    ("Probability", "calibrated on the model's held-out data"),
                    *([("Image", "; ".join(f"{k} {v}" for k, v in metadata))] if metadata else [])])
    _notes(pdf, warnings, FOOTER_Y)
    _footer(pdf, FOOTER_Y)
    return bytes(pdf.output())


def _header(pdf: FPDF, file_name: str, sha256: str, outside_validated_use: str | None) -> None:
    _line(pdf, "Pneumonia decision support - film report", 16, "B", 8)
    if outside_validated_use:                 # the headline: before anything else about the film
        pdf.set_fill_color(255, 224, 178)
        pdf.set_font("Helvetica", "B", 11)
        pdf.set_text_color(150, 40, 0)
        pdf.multi_cell(0, 6, latin1(f"OUTSIDE VALIDATED USE: {outside_validated_use} The probability and label "
                                    "are not validated for this film."),
                       fill=True, padding=1.5, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    _line(pdf, f"File: {file_name}    Generated: {created}", 9, colour=90, h=4.6)
    pdf.set_font("Courier", "", 8.5)
    pdf.cell(0, 4.6, f"sha256 {sha256}", new_x="LMARGIN", new_y="NEXT")      # as in the audit log
    _line(pdf, INTENDED_USE, 8.5, "I", h=4.4, colour=60)
    pdf.ln(2)


def _images(pdf: FPDF, film: np.ndarray, overlay_rgb: np.ndarray, method: str) -> None:
    """Film and overlay side by side, as large as the page allows, same size, aspect kept."""
    gap = 4.0
    top, width, max_h = pdf.get_y(), (PAGE_W - 2 * MARGIN - gap) / 2, 118.0
    h, w = film.shape
    img_w, img_h = (width, width * h / w) if width * h / w <= max_h else (max_h * w / h, max_h)
    for x, img, caption in ((MARGIN, to_uint8(shrink(film, 1024)), "Film"),
                            (MARGIN + width + gap, shrink(overlay_rgb, 1024),
                             f"{method} map for pneumonia (relative, not a lesion outline)")):
        pdf.image(Image.fromarray(img), x=x + (width - img_w) / 2, y=top, w=img_w, h=img_h)
        pdf.set_xy(x, top + img_h + 1)
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(90)
        pdf.cell(width, 4, latin1(caption), align="C")
    pdf.set_xy(MARGIN, top + img_h + 7)


def _findings(pdf: FPDF, rows: Sequence[tuple[str, str]]) -> None:
    """The findings as a two-column table: what, and its value."""
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 9)
    pdf.set_text_color(20)
    pdf.set_draw_color(200)
    with pdf.table(col_widths=(32, PAGE_W - 2 * MARGIN - 32), first_row_as_headings=False, line_height=4.6,
                   padding=1.2, text_align=("LEFT", "LEFT")) as table:
        for name, value in rows:
            row = table.row()
            pdf.set_font("Helvetica", "B", 9)
            row.cell(latin1(name))
            pdf.set_font("Helvetica", "", 9)
            row.cell(latin1(value))


def _notes(pdf: FPDF, warnings: Sequence[str], footer: float) -> None:
    """The warnings (at most 8), as many as fit above the footer."""
    if warnings:
        pdf.ln(2)
        _line(pdf, "Warnings", 10, "B")
        shown = list(warnings)[:8]
        for i, w_ in enumerate(shown):
            if pdf.get_y() + _height(pdf, f"- {w_}", 9, 4.8) > footer - 10:   # keep clear of the footer
                _line(pdf, f"({len(shown) - i} more warning(s): see the app.)", 9, "I", h=4.8)
                break
            _line(pdf, f"- {w_}", 9, h=4.8)


def _footer(pdf: FPDF, footer: float) -> None:
    pdf.set_xy(MARGIN, footer)
    pdf.set_fill_color(242, 244, 247)
    pdf.set_text_color(20)
    pdf.set_font("Helvetica", "B", 13)
    pdf.cell(0, 9, latin1(CAUTION), align="C", fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 6, "The final interpretation rests with the reporting clinician.", align="C", fill=True)
