"""First-line checks that a readable image could be a frontal chest radiograph.

Cheap evidence only (DICOM modality, blank frames). A learned
out-of-distribution score is separate work; this module is where it plugs in.
"""

from __future__ import annotations

import numpy as np

from .io import XrayImage

# Projection radiography modalities; CT, MR, US, NM, ... are not chest films.
RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR", "OT", "SC", "XA"}


def rejection_reason(image: XrayImage) -> str | None:
    """A one-line reason to refuse the film, or None when nothing speaks against it."""
    modality = str(image.metadata.get("modality") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"DICOM modality {modality} is not a projection radiograph."
    px = image.pixels
    if float(np.std(px)) < 0.02:
        return "The image is blank or nearly uniform."
    return None
