"""Triage: many uploaded films -> one Record per film, a worklist sorted by probability, CSV export.

The same function serves the Triage page and ``bench/bench_triage.py``. Films are decoded one at a
time, at most ``FILM_SIDE`` a side (as on Predict), and scored in batches, so memory holds at most one
batch of decoded films.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

import pandas as pd

from pneumo_core.errors import UnreadableImageError
from pneumo_core.ingest.read import XrayImage, read_xray
from pneumo_core.model.predict import MODEL_ERRORS, Predictor, Record, model_failure, screened_record
from pneumo_core.ops.csvcell import LINE_END, safe_cell

from .analysis import FILM_SIDE, Upload
from .images import placeholder_uri, thumbnail_uri

FLAG_POINT = "high_sensitivity"
# The CSV names each film by its sha256 (as the audit log does); its file name, which can hold a patient's name,
# only when the user asks for it (``worklist_csv(..., file_names=True)``: a "file" column first).
CSV_COLUMNS = ("sha256", "status", "probability", "label", "flag", "warnings", "message", "model_version",
               "operating_point", "threshold", "film_type", "outside_validated_use", "exported_utc")
FLAGGED, OUTSIDE = "Flagged", "Outside"      # the worklist's Flag and "Outside validated use" cells (else empty)
CSV_DIGITS = 4                  # probabilities and thresholds: 0.7293, not 0.7292334728975158


@dataclass(frozen=True)
class TriageRow:
    record: Record
    flag: bool                 # probability at or above the flag threshold
    sha: str                   # which upload (for the detail view)
    thumbnail: str = ""        # data-URI PNG; never exported
    held_back: bool = False    # not analysed: past a size cap or the rate limit (the file may be fine)

    @property
    def status(self) -> str:
        """The record's status, or "not analysed" for a film held back by a limit (never "unreadable")."""
        return "not analysed" if self.held_back else self.record.status

    @property
    def outside(self) -> bool:
        """Analysed, but outside validated use (e.g. an adult film): its number is not a validated one."""
        return self.record.status == "ok" and self.record.outside_validated_use


def flag_threshold(predictor: Predictor, operating_point: str) -> tuple[str, float]:
    """The high-sensitivity point when the model has one, else the chosen point."""
    points = predictor.operating_points()
    name = FLAG_POINT if FLAG_POINT in points else predictor.threshold(operating_point)[0]
    return name, points[name]


def triage(predictor: Predictor, uploads: Sequence[Upload], operating_point: str, *, batch_size: int = 16,
           progress: Callable[[int, int], None] | None = None) -> list[TriageRow]:
    """Score every upload; unreadable and rejected films (the model's whole check, ``Predictor.screen_many``)
    get their row with the reason. Sorted for a worklist."""
    name, thr = predictor.threshold(operating_point)
    flag_thr = flag_threshold(predictor, name)[1]
    rows: list[TriageRow] = []
    pending: list[tuple[Upload, XrayImage, str]] = []

    def score() -> None:
        """The model's whole check and prediction for the pending films (one forward pass per batch; films the
        model-free checks refuse are not run through the network)."""
        try:
            screened = predictor.screen_many([im for _, im, _ in pending], name, batch_size=batch_size)
        except MODEL_ERRORS as exc:
            rows.extend(TriageRow(Record(up.name, "error", message=model_failure(exc),
                                         model_version=predictor.version), False, up.sha, thumb)
                        for up, _, thumb in pending)
        else:
            for (up, image, thumb), s in zip(pending, screened):
                rec = screened_record(up.name, image, s, name, thr, predictor.version)
                # only a validated result is flagged: an adult film's number is not one to triage on
                rows.append(TriageRow(rec, rec.status == "ok" and not rec.outside_validated_use
                                      and rec.probability >= flag_thr, up.sha, thumb))
        pending.clear()

    for i, up in enumerate(uploads):
        if up.refusal:
            rows.append(TriageRow(Record(up.name, "error", message=up.refusal, model_version=predictor.version),
                                  False, up.sha, held_back=True))
            if progress:
                progress(i + 1, len(uploads))
            continue
        try:
            image = read_xray(up.data, name=up.name, max_side=FILM_SIDE)
        except UnreadableImageError as exc:
            rows.append(TriageRow(Record(up.name, "error", message=str(exc), model_version=predictor.version),
                                  False, up.sha))
        else:
            pending.append((up, image, thumbnail_uri(image.pixels)))
        if len(pending) >= batch_size:
            score()
        if progress:
            progress(i + 1, len(uploads))
    if pending:
        score()
    return sort_worklist(rows)


def sort_worklist(rows: Sequence[TriageRow]) -> list[TriageRow]:
    """Validated films, highest probability first; then films analysed outside validated use (an adult film),
    highest first; then rejected, then unreadable films (upload order kept within each)."""
    def rank(r: TriageRow) -> int:
        status = r.record.status
        return (1 if r.outside else 0) if status == "ok" else {"rejected": 2, "error": 3}.get(status, 4)

    return sorted(rows, key=lambda r: (rank(r), -(r.record.probability or 0.0)))


def film_type_text(film_type: str | None) -> str:
    """A film type (``pneumo_core.safety.filmtype.CLASSES``) in words; empty without a film-type check."""
    return (film_type or "").replace("_", " ")


def worklist_frame(rows: Sequence[TriageRow]) -> pd.DataFrame:
    """What the page shows (thumbnails included)."""
    return pd.DataFrame({
        "thumbnail": [r.thumbnail or placeholder_uri() for r in rows],     # never None (shown as "None")
        # words, not checkboxes: a checkbox column looked like the table's own row-select column
        "flag": [FLAGGED if r.flag else "" for r in rows],
        "outside": [OUTSIDE if r.record.outside_validated_use else "" for r in rows],
        "file": [r.record.file for r in rows],
        "probability": [None if r.record.probability is None else 100 * r.record.probability for r in rows],  # %
        "label": [r.record.label or "" for r in rows],
        "film_type": [film_type_text(r.record.film_type) for r in rows],
        "status": [r.status for r in rows],
        "notes": [" ".join(filter(None, [r.record.message, *r.record.warnings])) for r in rows],
    })


def worklist_csv(rows: Sequence[TriageRow], *, file_names: bool = False, now: datetime | None = None) -> bytes:
    """sha256, status, probability and threshold (rounded), label, flag, warnings, model version, operating point,
    film type, whether the result is outside validated use, and the export's UTC time: no image, no patient data.
    The file names only with ``file_names`` (the user asked: a name can hold a patient's). Text that starts like
    a spreadsheet formula is prefixed with ``'`` (``safe_cell``)."""
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    columns = (["file"] if file_names else []) + list(CSV_COLUMNS)
    df = pd.DataFrame([{**r.record.to_json(), "flag": r.flag, "sha256": r.sha} for r in rows], columns=columns)
    df["warnings"] = [" | ".join(r.record.warnings) for r in rows]
    df["status"] = [r.status for r in rows]
    for column in ("probability", "threshold"):
        df[column] = [None if v is None or pd.isna(v) else round(float(v), CSV_DIGITS) for v in df[column]]
    df["exported_utc"] = stamp
    df = df.map(safe_cell)          # a file name such as '=HYPERLINK(...)' stays text in a spreadsheet
    return df.to_csv(index=False, lineterminator=LINE_END).encode("utf-8")
