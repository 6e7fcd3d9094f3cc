"""Words the pages show, derived from the model card and the evaluation artifacts (nothing hard-coded
about a particular model)."""

from __future__ import annotations

from typing import Any, Mapping

OP_LABELS = {"balanced": "Balanced", "high_sensitivity": "High sensitivity"}
PRODUCT = "Pneumonia decision support"
CAUTION = "Decision support, not a diagnosis."
INTENDED_USE = ("Intended use: decision support for clinicians reading frontal chest radiographs of children, "
                "for signs of pneumonia. Not validated for adults, lateral films or other body parts; it does not "
                "replace the reporting clinician's interpretation.")

# What each split is, independent of the model; the numbers and the caveats come from the card.
SPLIT_ROLES = {
    "train": "training films",
    "val": "validation split (held out from training; used to monitor training)",
    "test": "internal test split (patient-level hold-out; untouched by training, thresholds and calibration)",
    "external": "held-out films from outside the training data (in this project: half of the official "
                "Kermany et al. test set)",
}
SPLIT_ORDER = ("test", "external", "val")


def op_label(name: str) -> str:
    return OP_LABELS.get(name, name.replace("_", " ").capitalize())


def fmt_pct(p: float | None, digits: int = 1) -> str:
    return "–" if p is None else f"{100 * p:.{digits}f}%"


def fmt_ci(value: float | None, ci: list | tuple | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if ci and len(ci) == 2 and None not in ci:
        return f"{value:.{digits}f} ({ci[0]:.{digits}f}–{ci[1]:.{digits}f})"
    return f"{value:.{digits}f}"


def external_auc(card: Mapping[str, Any]) -> tuple[float | None, list | None]:
    """(AUC, 95% CI) on external/ from the card's metrics, else the training record's, else (None, None)."""
    split = (card.get("metrics") or {}).get("external") or {}
    for summary in split.values():
        if isinstance(summary, Mapping) and summary.get("auc") is not None:
            return float(summary["auc"]), (summary.get("ci95") or {}).get("auc")
    selected = (card.get("training") or {}).get("selected") or {}
    return (float(selected["external_auc"]), None) if selected.get("external_auc") is not None else (None, None)


def card_summary(card: Mapping[str, Any]) -> str:
    """One line: data, initialisation, external AUC."""
    data = card.get("data") or {}
    train_n = sum((data.get("counts") or {}).get("train", {}).values()) if data.get("counts") else None
    parts = [f"Data: {data.get('source', 'unknown')}" + (f" ({train_n:,} training films)" if train_n else "")]
    parts.append(f"init: {(card.get('initialisation') or {}).get('kind', 'unknown')}")
    auc, ci = external_auc(card)
    parts.append("external AUC " + (fmt_ci(auc, ci) if auc is not None else "not measured"))
    return " · ".join(parts)


def guard_summary(card: Mapping[str, Any]) -> str:
    """The out-of-distribution guard in one line: threshold and measured rejection rates."""
    info = card.get("ood")
    if not isinstance(info, Mapping) or not info:
        return "none fitted: only model-free checks (DICOM modality and view, blank or elongated frames)"
    rates = info.get("false_rejection") or {}
    parts = [f"score threshold {float(info.get('threshold', float('nan'))):.3g}"]
    for split in ("test", "external"):
        r = rates.get(split) or {}
        if r.get("rate") is not None:
            parts.append(f"chest films refused on {split}/ {fmt_pct(r['rate'])} ({r.get('rejected')}/{r.get('n')})")
    neg = info.get("negative_rejection") or {}
    if neg.get("rate") is not None:
        parts.append(f"built-in non-chest images refused {fmt_pct(neg['rate'])} ({neg.get('rejected')}/{neg.get('n')})")
    return "; ".join(parts)


def film_type_summary(card: Mapping[str, Any]) -> str:
    """The film-type check in one line: whether the version has one, and its leave-one-source-out rates."""
    info = card.get("film_type")
    if not isinstance(info, Mapping) or not info.get("fitted"):
        why = info.get("why") if isinstance(info, Mapping) else None
        return "none: " + (why or "this version cannot tell adult, lateral or other films apart; only the "
                                   "out-of-distribution guard screens uploads")
    return ("fitted: pediatric or adult frontal chest, lateral chest, other radiograph, not a radiograph; adult films "
            "are analysed with an 'outside validated use' warning, the others are rejected "
            "(per-source rates below)")


def film_type_rows(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated source: how the check treated films of a source it was not fitted on."""
    info = card.get("film_type")
    if not isinstance(info, Mapping) or not info.get("fitted"):
        return []
    rows = []
    for how, section in (("left out of fitting", "leave_one_source_out"), ("never fitted (licence)", "measured")):
        for key, r in (info.get(section) or {}).items():
            kind, _, source = str(key).partition("/")
            if not isinstance(r, Mapping) or not r.get("n"):
                continue
            rows.append({"class": kind.replace("_", " "), "source": source, "films": r["n"], "evaluation": how,
                         "accepted": r.get("accepted_rate"), "warned adult": r.get("adult_warned_rate")})
    return rows


OP_PLAIN = {"balanced": "misses and false alarms weighed alike",
            "high_sensitivity": "misses fewer pneumonias, at the cost of more false alarms"}


def op_plain(name: str, threshold: float) -> str:
    """The operating point in plain words: 'Balanced (threshold 72.9%)'."""
    return f"{op_label(name)} (threshold {fmt_pct(threshold)})"


def op_meaning(name: str, threshold: float) -> str:
    """'High sensitivity (threshold 47.3%): misses fewer pneumonias, at the cost of more false alarms'."""
    return op_plain(name, threshold) + (f": {OP_PLAIN[name]}" if name in OP_PLAIN else "")


def op_details(card: Mapping[str, Any], name: str, threshold: float) -> str:
    """What the operating point means and how it was chosen, for a help popover (the card's rule, its films,
    and what it measured there), in percentages like every number the main view shows."""
    point = (card.get("operating_points") or {}).get(name) or {}
    text = (f"**{op_label(name)}**: {OP_PLAIN.get(name, 'a named threshold from the model card')}. A film whose "
            f"calibrated probability is {fmt_pct(threshold)} or more is labelled PNEUMONIA.")
    if point.get("sensitivity") is not None and point.get("specificity") is not None:
        text += (f" On the films it was chosen on, it found {fmt_pct(point['sensitivity'])} of pneumonias "
                 f"(sensitivity) and cleared {fmt_pct(point['specificity'])} of normal films (specificity).")
    if point.get("rule"):
        text += f" Rule: {point['rule']}" + (f"; chosen on {point['chosen_on']}" if point.get("chosen_on") else "") + "."
    return text


def op_rule(card: Mapping[str, Any], name: str) -> str | None:
    """How the card says the operating point was chosen ('max Youden J; chosen on external/'), or None."""
    point = (card.get("operating_points") or {}).get(name) or {}
    return "; ".join(x for x in (point.get("rule"), f"chosen on {point['chosen_on']}" if point.get("chosen_on")
                                 else None) if x) or None


def split_description(split: str, artifact: Mapping[str, Any], card: Mapping[str, Any]) -> str:
    """Which films a split's numbers come from, and whether they are optimistic."""
    reports = artifact.get("operating_points") or {}
    first = next(iter(reports.values()), {})
    n = artifact.get("n", first.get("n"))
    counts = ""
    if first.get("n_normal") is not None:
        counts = f" ({first['n_normal']} normal, {first['n_pneumonia']} pneumonia)"
    text = f"**{split}/**: {SPLIT_ROLES.get(split, 'evaluation split')}; {n} films{counts}"
    used_for = ((card.get("data") or {}).get("used_for") or {}).get(split)
    if used_for:
        text += f"; used for {used_for}"
    calibration = card.get("calibration") or {}
    if str(calibration.get("fitted_on", "")).rstrip("/") == split:
        note = str(calibration.get("note") or "thresholds and temperature were chosen on it, so its numbers "
                                              "are optimistic")
        text += f". **Optimistic: {note.rstrip('.')}**"
    return text + "."


def age_text(years: float) -> str:
    return f"{years:.0f} y" if years >= 2 else f"{years * 12:.0f} mo"


METADATA_FIELDS = (("format", "Format"), ("modality", "Modality"), ("view_position", "View"),
                   ("body_part", "Body part"), ("photometric_interpretation", "Photometric"),
                   ("bits_stored", "Bits stored"), ("frames", "Frames"))


def metadata_rows(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Allow-listed technical fields plus age and sex only; never names, IDs, dates or institutions."""
    rows = [(label, str(meta[key])) for key, label in METADATA_FIELDS if meta.get(key) not in (None, "")]
    if meta.get("width") and meta.get("height"):
        rows.append(("Size", f"{meta['width']} × {meta['height']} px"))
    if isinstance(meta.get("patient_age_years"), (int, float)):
        rows.append(("Age", age_text(float(meta["patient_age_years"]))))
    if meta.get("patient_sex"):
        rows.append(("Sex", str(meta["patient_sex"])))
    return rows
