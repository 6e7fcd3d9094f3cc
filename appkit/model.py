"""The active model: loaded once per (folder, weights sha, files on disk), shared read-only by every session.

Keying the cache on the card's weights sha means a newly promoted model (``weights/ACTIVE``
rewritten, or the folder's weights replaced) is picked up on the next rerun, without a restart.
Keying it on the files' stat too means a file changed on disk is loaded again, and every load checks
the sha256 of the weights and of the OOD guard against the card: a tampered file is refused, said so,
and nothing is served from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import streamlit as st

from pneumo_core.errors import PneumoError
from pneumo_core.model.evaluation import load_evaluation
from pneumo_core.model.network import CARD_FILE
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import read_card, weight_files
from pneumo_core.ops.integrity import card_digest
from pneumo_core.ops.registry import active_model_dir
from pneumo_core.safety.filmtype import FILM_TYPE_FILE
from pneumo_core.safety.guard import OOD_FILE

OP_KEY = "operating_point"      # session_state key of the sidebar's operating-point selector
NO_MODEL_HINT = ("Install a model: put its folder (model.safetensors + card.json) in weights/ and write "
                 "its folder name into weights/ACTIVE, or train one with `python -m pneumo_core train`.")


@dataclass(frozen=True)
class ActiveModel:
    path: Path
    weights_sha: str
    predictor: Predictor

    @property
    def card(self) -> Mapping[str, Any]:
        return self.predictor.card

    @property
    def version(self) -> str:
        return self.predictor.version

    @property
    def key(self) -> str:
        """Identifies this model in per-session caches."""
        return f"{self.path}@{self.weights_sha}"


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _predictor(path: str, files_key: str) -> Predictor:   # files_key: part of the cache key only
    return Predictor.from_dir(path)


@st.cache_data(max_entries=4, show_spinner=False)
def _evaluation(path: str, weights_sha: str) -> dict[str, dict[str, Any]]:
    return load_evaluation(path)


def load_active() -> ActiveModel:
    """The model named by weights/ACTIVE (or $PNEUMO_WEIGHTS_DIR/ACTIVE); raises PneumoError."""
    folder = active_model_dir()
    card = read_card(folder)
    sha = str((card.get("weights") or {}).get("sha256") or (folder / CARD_FILE).stat().st_mtime_ns)
    # The card's digest covers everything it records: a re-sealed threshold, a guard or film-type check
    # fitted later (their sha256 are in the card).
    sha += f"+card:{card_digest(card)[:16]}"
    ood, film_type = card.get("ood"), card.get("film_type")
    # A file replaced or edited on disk changes its stat, so the next rerun loads it again, and that load
    # checks its sha256 (the card: its seal, already checked by read_card above): a tampered file stops being
    # served (the error shows) instead of lingering in memory.
    files = [CARD_FILE, *(file for file, _ in weight_files(card))]
    if isinstance(ood, dict):
        files.append(ood.get("file") or OOD_FILE)
    if isinstance(film_type, dict) and film_type.get("fitted"):
        files.append(film_type.get("file") or FILM_TYPE_FILE)
    stamp = "+".join(_stat(folder / str(name)) for name in files)
    return ActiveModel(folder, sha, _predictor(str(folder), f"{sha}@{stamp}"))


def _stat(path: Path) -> str:
    try:
        st_ = path.stat()
    except OSError:
        return "missing"
    return f"{st_.st_size}:{st_.st_mtime_ns}:{st_.st_ino}"


def active_model_or_error() -> tuple[ActiveModel | None, str | None]:
    try:
        return load_active(), None
    except PneumoError as exc:
        return None, str(exc)
    except (OSError, RuntimeError, ValueError) as exc:      # torch / filesystem trouble: no traceback
        return None, f"The model could not be loaded ({type(exc).__name__})."


def require_model() -> ActiveModel:
    """The active model, or a clear error and the end of this page."""
    model, error = active_model_or_error()
    if model is None:
        st.error(f"**No model is available.** {error}", icon=":material/error:")
        st.info(NO_MODEL_HINT)
        st.stop()
    return model


def operating_point(model: ActiveModel) -> str:
    """The operating point chosen in the sidebar (shared by every page), valid for this model."""
    chosen = st.session_state.get(OP_KEY)
    return chosen if chosen in model.predictor.operating_points() else model.predictor.default_operating_point()


def evaluation(model: ActiveModel) -> dict[str, dict[str, Any]]:
    """Saved evaluation artifacts by split (no recomputation of the model)."""
    return _evaluation(str(model.path), model.weights_sha)
