"""One uploaded film through the core: decode -> guard -> prediction / Grad-CAM, remembered per film.

No Streamlit here: the pages keep ``Film`` objects in ``st.session_state`` (see ``films_ui``), so a
rerun (an opacity slider moved, an operating point changed) reuses what was already computed.

Memory: a film is kept at most ``FILM_SIDE`` pixels a side (float32, full bit depth; decoded to that size,
never held at full size), and a session keeps at most ``session_pixel_cap()`` pixels of films in all
(``PNEUMO_SESSION_MPIX`` megapixels, default 64: 256 MB of float32). Films past it are not decoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable

from pneumo_core.env import env_number
from pneumo_core.errors import UnreadableImageError
from pneumo_core.ingest.pixels import MAX_PIXELS
from pneumo_core.ingest.read import XrayImage, read_xray
from pneumo_core.model.explain import Explanation, explain
from pneumo_core.model.predict import MODEL_ERRORS, Prediction, Predictor

FILM_SIDE = 1024                 # longest side a film is kept at: the screen shows 768, the PDF report 1024
SESSION_MPIX = 64                # default per-session cap on film pixels kept, megapixels


def session_pixel_cap() -> int:
    """Film pixels one session may keep (``PNEUMO_SESSION_MPIX`` megapixels; never below one film)."""
    mpix = env_number("PNEUMO_SESSION_MPIX", SESSION_MPIX, allow_zero=False)
    return max(int(mpix * 1_000_000), FILM_SIDE * FILM_SIDE)


# What one session can make the server hold besides its films (see ``session_memory_bound``).
DECODE_BYTES_PER_PIXEL = 8       # one film being decoded: Pillow's RGBA buffer and its reduction (measured ~7.7)
PAGE_ALLOWANCE = 64 * 2**20      # the session's page: rendered images, widgets, results


def session_memory_bound(upload_bytes: int) -> int:
    """The most memory one session should make the server hold, in bytes: its uploaded files twice (Streamlit
    keeps them; the app reads them during a run), its films (float32 up to ``session_pixel_cap()``), one film
    being decoded at the reader's pixel cap (``io.MAX_PIXELS``), and an allowance for its page. The server's
    ceiling is its own base (model and libraries, after a first film) plus this for each concurrent session,
    ``upload_bytes`` at most the upload caps (``PNEUMO_MAX_BATCH_MB``)."""
    return 2 * upload_bytes + 4 * session_pixel_cap() + DECODE_BYTES_PER_PIXEL * MAX_PIXELS + PAGE_ALLOWANCE


def held_pixels(films: Iterable["Film"]) -> int:
    return sum(f.image.pixels.size for f in films if f.image is not None)


def over_session_cap(name: str, sha: str, held: int, cap: int) -> "Film":
    """A film not decoded because the session holds its share of pixels already (kept nowhere: it is decoded on
    a later run once films are removed)."""
    return Film(name, sha, refused=True, error=f"This session already holds {held / 1e6:,.0f} megapixels of "
                                              f"films, this server's limit per session is {cap / 1e6:,.0f}. "
                                              f"Remove some films from the upload (or analyse this one in a "
                                              f"later batch).")


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
    refused: bool = False            # ``error`` says why the app would not analyse it (a cap, the rate limit)
    rejection: str | None = None
    caution: str | None = None       # analysed, but outside the validated population (e.g. an adult film)
    film_type: str | None = None     # pneumo_core.safety.filmtype.CLASSES; None without a film-type check
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


def decode(upload: Upload, predictor: Predictor, *, max_side: int = FILM_SIDE) -> Film:
    """Read the upload (at most ``max_side`` pixels a side) and run the model's whole check (model-free checks,
    then its OOD guard if it has one)."""
    if upload.refusal:
        return Film(upload.name, upload.sha, error=upload.refusal, refused=True)
    try:
        image = read_xray(upload.data, name=upload.name, max_side=max_side)
    except UnreadableImageError as exc:
        return Film(upload.name, upload.sha, error=str(exc))
    try:
        screened = predictor.screen(image)
    except MODEL_ERRORS as exc:     # the check could not run: refuse rather than pass the film unchecked
        return Film(upload.name, upload.sha, image=image,
                    rejection=f"The out-of-distribution check could not run ({type(exc).__name__}).")
    return Film(upload.name, upload.sha, image=image, rejection=screened.reason, caution=screened.caution,
                film_type=screened.film_type)
