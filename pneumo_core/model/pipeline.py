"""One way to make a model version: fit -> calibrate -> guard and film-type check -> compare.

    card = train_version(data_dir, out_dir, TrainConfig(...), progress=print, log=print)

The CLI (``train``) and the retraining job's worker both call ``train_version``, so every version comes
out the same way: trained (``model.train.fit``), calibrated and evaluated on every split
(``model.evaluation.calibrate_model``), screening its inputs with its own guard and film-type check
(``safety.fitting.fit_guard``), and, for a job, compared with the version it would replace
(``model.compare.compare_with_active``, written as ``comparison.json``).

The version is built in a staging folder beside ``out`` and moved there in one rename at the very end,
so a failed or cancelled run leaves no output folder.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pneumo_core.errors import TrainingCancelled
from pneumo_core.files import atomic_write_json
from pneumo_core.ingest.folders import discover_splits
from pneumo_core.model.checkpoints import check_out_dir, staged
from pneumo_core.model.compare import compare_with_active
from pneumo_core.model.config import TrainConfig
from pneumo_core.model.distributed import is_main_process
from pneumo_core.model.evaluation import calibrate_model
from pneumo_core.model.store import read_card
from pneumo_core.model.train import Progress, fit, pick_device
from pneumo_core.model.trainingdata import view_with_val
from pneumo_core.safety.fitting import film_types_folder, fit_guard

# The phases of making a version, in order (a job shows them: ``ops.jobs.PHASES`` names each one).
PHASES = ("preparing", "training", "calibrating", "guard", "comparing")
COMPARISON_FILE = "comparison.json"


def train_version(data: str | Path, out: str | Path, config: TrainConfig, *, progress: Progress | None = None,
                  should_stop: Callable[[], bool] | None = None, on_phase: Callable[[str], None] | None = None,
                  log: Callable[[str], None] = lambda s: None, calibrate: bool = True, guard: bool = True,
                  film_types: str | Path | None = None, compare_with: Mapping[str, Any] | None = None,
                  n_boot: int = 1000, view_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None,
                  keep_snapshots: int = 0) -> dict[str, Any]:
    """Make a complete model version in ``out`` (which must not exist or be empty); returns its card.

    ``on_phase(key)`` is called as each phase of ``PHASES`` begins ("training" once the films are decoded;
    a phase that is skipped is not announced); ``log`` gets each step's message; ``progress`` each epoch's
    report. ``should_stop`` is asked before each phase and epoch and once more at the end: when it says
    stop, ``TrainingCancelled`` is raised and nothing is written.
    ``film_types``: the folder to fit the film-type check on (default ``film_types_folder(data)``; without
    one the card says the version has none). ``compare_with``: None for no comparison; else the version
    the new one would replace (``{"path", "version"}``, empty when there is none) to write
    ``comparison.json`` against. Data without val/ are seen through a view with the validation split fit()
    carves, in ``view_dir`` (left for the caller to remove) or in a temporary folder removed here.
    Calibration and the comparison run on ``config.device``; ``n_boot``: bootstrap resamples for the CIs.
    Under torchrun every rank calls this; rank 0 makes the version (calibration, guard and comparison run
    in it alone, after training) and the others train with it, then return an empty card.
    """
    data, out = Path(data), check_out_dir(out)
    film_types = film_types_folder(data) if film_types is None else Path(film_types)
    if guard and film_types is not None and not film_types.is_dir():      # before hours of training, not after
        raise FileNotFoundError(f"The film-types folder {film_types.name}/ was not found; nothing was trained.")
    device = pick_device(config.device)
    if not is_main_process():
        # under torchrun, ranks other than 0 only train: rank 0 writes the version, its log and its phases
        fit(data, out, config, should_stop=should_stop, checkpoint_dir=checkpoint_dir, keep_snapshots=keep_snapshots)
        return {}

    def enter(key: str, step: str = "") -> None:
        _stop_if_asked(should_stop)
        if on_phase:
            on_phase(key)
        if step:
            log(step)

    enter("preparing", "decoding the films")
    needs_val = calibrate or guard or compare_with is not None
    with _with_val(data, view_dir, config, needs_val) as checked, staged(out) as stage:
        fit(data, stage, config, progress=progress, should_stop=should_stop, checkpoint_dir=checkpoint_dir,
            keep_snapshots=keep_snapshots, on_decoded=lambda: enter("training"))
        if calibrate:
            enter("calibrating", "calibrating and evaluating the new model")
            calibrate_model(stage, checked, n_boot=n_boot, log=log, device=device)
        if guard:
            # a new version screens its inputs like the shipped one: the guard, and the film-type check when the
            # film_types/ folder is found (beside the data, or $PNEUMO_FILM_TYPES); else its card says it has none
            enter("guard", "fitting the out-of-distribution guard and the film-type check")
            fit_guard(stage, checked, film_types=film_types, log=log)
        if compare_with is not None:
            enter("comparing", "comparing with the active model on the same films")
            comparison = compare_with_active(stage, read_card(stage), checked, compare_with or None, n_boot=n_boot,
                                             device=device, log=log)
            atomic_write_json(stage / COMPARISON_FILE, comparison)
        _stop_if_asked(should_stop)                       # the last point at which a cancel is honoured
    return read_card(out)


def _stop_if_asked(should_stop: Callable[[], bool] | None) -> None:
    if should_stop and should_stop():
        raise TrainingCancelled("Training was cancelled; no model was written.")


@contextmanager
def _with_val(data: Path, view_dir: str | Path | None, config: TrainConfig, needed: bool) -> Iterator[Path]:
    """The data as calibration, the guard and the comparison read them: as they are when they have a val/
    (or none is needed), else a view of them with the validation split fit() carves from train/."""
    if not needed or "val" in discover_splits(data):
        yield data
    elif view_dir is not None:
        yield view_with_val(data, Path(view_dir), config.val_fraction, config.seed)
    else:
        view = Path(tempfile.mkdtemp(prefix="pneumo-view-"))
        try:
            yield view_with_val(data, view, config.val_fraction, config.seed)
        finally:
            shutil.rmtree(view, ignore_errors=True)
