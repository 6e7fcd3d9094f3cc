"""The one-page PDF report for one film (fpdf2). Plain Python: bytes out, nothing written to disk."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

import numpy as np
from fpdf import FPDF
from PIL import Image

from .images import shrink, to_uint8
from .text import CAUTION

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


def pdf_report(*, file_name: str, film: np.ndarray, overlay_rgb: np.ndarray, probability: float, label: str,
               operating_point: str, model_version: str, card_line: str, method: str,
               warnings: Sequence[str] = (), metadata: Sequence[tuple[str, str]] = (),
               outside_validated_use: str | None = None) -> bytes:
    """film: [0, 1] grey pixels; overlay_rgb: uint8 RGB. Returns the PDF's bytes."""
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_auto_page_break(False)
    pdf.set_margins(15, 15, 15)
    pdf.add_page()
    pdf.set_title("Pneumonia decision support report")
    pdf.set_creator("pneumo app")
    _header(pdf, file_name, outside_validated_use)
    _images(pdf, film, overlay_rgb, method)
    _line(pdf, f"Probability of pneumonia: {100 * probability:.1f}%    Label: {label}"
          + (" (not validated)" if outside_validated_use else ""), 15, "B", 8)
    _line(pdf, f"Operating point: {operating_point}", 10)
    _line(pdf, f"Model: {model_version}  ({card_line})", 9, colour=60)
    _line(pdf, "The probability is calibrated on the model's held-out data. The Grad-CAM map shows where, within "
          "this film, the model's evidence for pneumonia is strongest relative to the rest of the film; "
          "it is not an absolute measure and not a lesion outline.", 8.5, colour=60, h=4.5)
    footer = 297 - 15 - 16
    _notes(pdf, warnings, metadata, footer)
    _footer(pdf, footer)
    return bytes(pdf.output())


def _header(pdf: FPDF, file_name: str, outside_validated_use: str | None) -> None:
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
    _line(pdf, f"File: {file_name}    Generated: {created}", 9, colour=90)
    pdf.ln(2)


def _images(pdf: FPDF, film: np.ndarray, overlay_rgb: np.ndarray, method: str) -> None:
    """Film and overlay side by side, same size, aspect kept."""
    top, width, max_h = pdf.get_y(), 87.0, 105.0
    h, w = film.shape
    img_w, img_h = (width, width * h / w) if width * h / w <= max_h else (max_h * w / h, max_h)
    for x, img, caption in ((15, to_uint8(shrink(film, 1024)), "Film"),
                            (108, shrink(overlay_rgb, 1024), f"{method} map for pneumonia (relative, not a lesion outline)")):
        pdf.image(Image.fromarray(img), x=x, y=top, w=img_w, h=img_h)
        pdf.set_xy(x, top + img_h + 1)
        pdf.set_font("Helvetica", "", 8)
        pdf.set_text_color(90)
        pdf.cell(width, 4, latin1(caption))
    pdf.set_xy(15, top + img_h + 8)


def _notes(pdf: FPDF, warnings: Sequence[str], metadata: Sequence[tuple[str, str]], footer: float) -> None:
    """The warnings (at most 8) and the image's metadata, as many as fit above the footer."""
    if warnings:
        pdf.ln(1)
        _line(pdf, "Warnings", 10, "B")
        shown = list(warnings)[:8]
        for i, w_ in enumerate(shown):
            if pdf.get_y() + _height(pdf, f"- {w_}", 9, 4.8) > footer - 10:   # keep clear of the footer
                _line(pdf, f"({len(shown) - i} more warning(s): see the app.)", 9, "I", h=4.8)
                break
            _line(pdf, f"- {w_}", 9, h=4.8)
    if metadata and pdf.get_y() + _height(pdf, "Image: " + "; ".join(f"{k} {v}" for k, v in metadata), 8.5,
                                          4.5) < footer - 1:
        pdf.ln(1)
        _line(pdf, "Image: " + "; ".join(f"{k} {v}" for k, v in metadata), 8.5, colour=60, h=4.5)


def _footer(pdf: FPDF, footer: float) -> None:
    pdf.set_xy(15, footer)
    pdf.set_fill_color(242, 244, 247)
    pdf.set_text_color(20)
    pdf.set_font("Helvetica", "B", 13)
    pdf.cell(0, 9, latin1(CAUTION), align="C", fill=True, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 6, "The final interpretation rests with the reporting clinician.", align="C", fill=True)
