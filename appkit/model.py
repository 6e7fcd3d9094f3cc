"""The active model: loaded once per (folder, weights sha), shared read-only by every session.

Keying the cache on the card's weights sha means a newly promoted model (``weights/ACTIVE``
rewritten, or the folder's weights replaced) is picked up on the next rerun, without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import streamlit as st

from pneumo_core.errors import PneumoError
from pneumo_core.model import CARD_FILE, read_card
from pneumo_core.predict import Predictor
from pneumo_core.registry import active_model_dir
from pneumo_core.validation import load_evaluation

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
def _predictor(path: str, weights_sha: str) -> Predictor:   # weights_sha: part of the cache key only
    return Predictor.from_dir(path)


@st.cache_data(max_entries=4, show_spinner=False)
def _evaluation(path: str, weights_sha: str) -> dict[str, dict[str, Any]]:
    return load_evaluation(path)


def load_active() -> ActiveModel:
    """The model named by weights/ACTIVE (or $PNEUMO_WEIGHTS_DIR/ACTIVE); raises PneumoError."""
    folder = active_model_dir()
    card = read_card(folder)
    sha = str((card.get("weights") or {}).get("sha256") or (folder / CARD_FILE).stat().st_mtime_ns)
    ood = card.get("ood")
    if isinstance(ood, dict) and ood.get("sha256"):           # a guard fitted later is picked up too
        sha += f"+ood:{ood['sha256']}"
    return ActiveModel(folder, sha, _predictor(str(folder), sha))


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
