"""One uploaded film through the core: decode -> guard -> prediction / Grad-CAM, remembered per film.

No Streamlit here: the pages keep ``Film`` objects in ``st.session_state`` (see ``films_ui``), so a
rerun (an opacity slider moved, an operating point changed) reuses what was already computed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pneumo_core.errors import UnreadableImageError
from pneumo_core.explain import Explanation, explain
from pneumo_core.io import XrayImage, read_xray
from pneumo_core.predict import MODEL_ERRORS, Prediction, Predictor


@dataclass(frozen=True)
class Upload:
    """Bytes as uploaded (kept in memory, never written to disk) and their content hash; ``refusal`` says why
    the app will not analyse it (a size cap, the rate limit), and then the bytes are dropped."""

    name: str
    data: bytes = field(repr=False)
    sha: str = ""
    refusal: str | None = None
    retry: bool = False          # refused for now only (the rate limit): analyse on a later run

    @classmethod
    def of(cls, name: str, data: bytes) -> "Upload":
        return cls(name, data, hashlib.sha256(data).hexdigest())

    def refused(self, reason: str, *, retry: bool = False) -> "Upload":
        return Upload(self.name, b"", self.sha, reason, retry)


@dataclass
class Film:
    """A decoded film (or why it could not be read), the guard's verdict, and results so far."""

    name: str
    sha: str = ""
    image: XrayImage | None = None
    error: str | None = None
    rejection: str | None = None
    caution: str | None = None       # analysed, but outside the validated population (e.g. an adult film)
    film_type: str | None = None     # pneumo_core.filmtype.CLASSES; None without a film-type check
    predictions: dict[str, Prediction] = field(default_factory=dict)      # by operating point
    explanations: dict[str, Explanation] = field(default_factory=dict)    # by CAM method

    def prediction(self, predictor: Predictor, operating_point: str) -> Prediction:
        if operating_point not in self.predictions:
            self.predictions[operating_point] = predictor.typed(predictor.predict(self.image, operating_point),
                                                                self.image, self.film_type)
        return self.predictions[operating_point]


    def explanation(self, predictor: Predictor, method: str, operating_point: str) -> Explanation:
        """Grad-CAM, computed once per method; its forward pass also gives the prediction."""
        if method not in self.explanations:
            exp = explain(predictor, self.image, method=method, operating_point=operating_point)
            self.explanations[method] = exp
            self.predictions.setdefault(exp.prediction.operating_point,
                                        predictor.typed(exp.prediction, self.image, self.film_type))
        return self.explanations[method]


def decode(upload: Upload, predictor: Predictor) -> Film:
    """Read the upload and run the model's whole check (model-free checks, then its OOD guard if it has one)."""
    if upload.refusal:
        return Film(upload.name, upload.sha, error=upload.refusal)
    try:
        image = read_xray(upload.data, name=upload.name)
    except UnreadableImageError as exc:
        return Film(upload.name, upload.sha, error=str(exc))
    try:
        screened = predictor.screen(image)
    except MODEL_ERRORS as exc:     # the check could not run: refuse rather than pass the film unchecked
        return Film(upload.name, upload.sha, image=image,
                    rejection=f"The out-of-distribution check could not run ({type(exc).__name__}).")
    return Film(upload.name, upload.sha, image=image, rejection=screened.reason, caution=screened.caution,
                film_type=screened.film_type)
