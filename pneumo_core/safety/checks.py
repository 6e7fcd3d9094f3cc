"""Is this readable image a frontal chest radiograph the model may be asked about? The checks that need no model.

Two layers:

* ``rejection_reason``: cheap, model-free evidence (DICOM modality, blank
  frames). Every model gets it, old ones included.
* ``model_free_verdict`` / ``model_free_reason``: the cheap checks, then a lateral
  DICOM view, an absurd aspect ratio and colour.

The whole verdict adds, for a model that has them, the learned guard (``guard.py``: a
score on the network's features and on the film's layout; a non-chest DICOM body part
counts only together with an unusual score) and the film-type check (``filmtype.py``).
``Predictor.check(image)`` / ``Predictor.screen_many`` give it; use them.
"""

from __future__ import annotations

import numpy as np

from pneumo_core.ingest.read import XrayImage
from pneumo_core.safety.filmtype import LATERAL, NOT_RADIOGRAPH

# Projection radiography modalities; CT, MR, US, NM, ... are not chest films.
RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR", "OT", "SC", "XA"}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "RLD", "LLD", "LLO", "RLO"}
# Chest films are about 35 x 43 cm either way round (ratio 1.2); a frame 2.5 times longer
# than wide is a whole-body scan, a spine, a panorama or a screenshot, not a chest film.
MAX_ASPECT = 2.5
# Radiographs are grey. A colour image with this share of clearly coloured pixels (io's
# ``colour_fraction``) is a photo, a drawing or a screenshot; a coloured annotation is far smaller.
MAX_COLOUR_FRACTION = 0.2


Found = tuple[str, "str | None"]      # (one-line reason, the film type it implies: filmtype.CLASSES or None)


def _rejection(image: XrayImage) -> Found | None:
    modality = str(image.metadata.get("modality") or "").upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        return f"DICOM modality {modality} is not a projection radiograph.", NOT_RADIOGRAPH
    px = image.pixels
    if float(np.std(px)) < 0.02:
        return "The image is blank or nearly uniform.", NOT_RADIOGRAPH
    return None


def _view(image: XrayImage) -> Found | None:
    view = str(image.metadata.get("view_position") or "").upper()
    if view in LATERAL_VIEWS:
        return f"Lateral view ({view}): the model is validated on frontal chest films only.", LATERAL
    h, w = image.pixels.shape
    if max(h, w) > MAX_ASPECT * min(h, w):
        return f"The image is {w}×{h} pixels: far too elongated for a chest radiograph.", None
    colour = image.metadata.get("colour_fraction")
    if isinstance(colour, (int, float)) and colour >= MAX_COLOUR_FRACTION:
        return f"The image is in colour ({colour:.0%} of its pixels): a radiograph is grey.", NOT_RADIOGRAPH
    return None


def rejection_reason(image: XrayImage) -> str | None:
    """A one-line reason to refuse the film, or None when nothing speaks against it."""
    return (_rejection(image) or (None, None))[0]


def model_free_verdict(image: XrayImage) -> tuple[str | None, str | None]:
    """Every check that needs no model (``rejection_reason``, then ``_view``: the view, the frame's shape,
    colour): the reason to refuse the film and the film type that reason implies (a lateral view, not a
    radiograph), or (None, None)."""
    return _rejection(image) or _view(image) or (None, None)


def model_free_reason(image: XrayImage) -> str | None:
    """Every check that needs no model: the reason of ``model_free_verdict``."""
    return model_free_verdict(image)[0]

