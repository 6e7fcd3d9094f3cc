"""Retrain page widgets: training data (server folder or .zip), settings with a time estimate, live job
progress, the result with a comparison and a promote button, and the model versions with rollback.

Everything that matters happens in pneumo_core (datacheck, archives, jobs, registry); the job itself runs in its
own process, so these widgets only read its state from disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from pneumo_core.errors import DatasetError, ModelLoadError, PneumoError, SettingsError
from pneumo_core.ingest.archives import extract_zip
from pneumo_core.ingest.datacheck import DatasetReport, validate_dataset
from pneumo_core.ingest.folders import discover_splits, list_labelled
from pneumo_core.model.config import SETTINGS, check_setting, setting
from pneumo_core.model.network import LABELS, imagenet_weights_path
from pneumo_core.model.store import read_card
from pneumo_core.ops import registry
from pneumo_core.ops.jobs.estimate import Estimate, estimate_seconds, proposed_job
from pneumo_core.ops.jobs.launch import start_job
from pneumo_core.ops.jobs.settings import default_config
from pneumo_core.ops.jobs.store import CANCEL, Job, cancel_job, get_job, running_job
from pneumo_core.ops.jobs.uploads import UploadLease

from . import charts, promotion
from .auth_ui import audit_event, require_admin_action
from .retrain import (
    BASE_LABELS,
    STATUS_WORDS,
    comparison_frame,
    comparison_splits,
    counts_frame,
    fmt_duration,
    phase_text,
    progress,
    time_left_text,
    unreadable_frame,
    versions_frame,
)
from .text import op_label

DATA_KEY = "_retrain_data"        # session: the checked data {"kind", "key", "report" | "error", "upload_dir"}
                                  # (an uploaded archive's folder: an UploadLease, gone with the session)
FLASH_KEY = "_retrain_flash"      # session: one message to show after a rerun
SEEN_JOB_KEY = "_retrain_seen_job"  # session: (id, finished) of the latest job when this session last drew the page
FOLDER_KEY, PICK_KEY = "retrain_folder", "retrain_version_pick"
POLL_S = 2.0
LAYOUT_HELP = ("Class folders NORMAL/ and PNEUMONIA/ with the films, or train/ (and optionally val/, test/, "
               "external/) each holding them. Without val/, a tenth of train/ is held out for validation.")
LR_OPTIONS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)      # offered where TrainConfig allows them
BATCH_OPTIONS = (16, 32, 64, 128, 256)


def flash(message: str, *, error: bool = False) -> None:
    st.session_state[FLASH_KEY] = (message, error)


def show_flash() -> None:
    """The outcome of the last button (actions run in on_click callbacks, before the page is drawn)."""
    if shown := st.session_state.pop(FLASH_KEY, None):
        message, error = shown
        (st.error if error else st.success)(message, icon=":material/block:" if error else ":material/check_circle:")


# --------------------------------------------------------------------------- data

def _check(root: Path) -> DatasetReport:
    bar = st.progress(0.0, text="Reading every film once…")
    step = {"next": 0.0}

    def tick(i: int, n: int) -> None:
        if i / n >= step["next"] or i == n:
            bar.progress(i / n, text=f"Read {i:,} of {n:,} films")
            step["next"] = i / n + 0.02

    try:
        return validate_dataset(root, progress=tick)
    finally:
        bar.empty()


def outside_data_roots(path: str) -> str | None:
    """Why this server folder may not be used (None: it may). ``PNEUMO_DATA_ROOTS`` (folders separated by
    ``os.pathsep``) restricts training data to those folders; unset, any folder the server can read."""
    roots = [Path(r).resolve() for r in os.environ.get("PNEUMO_DATA_ROOTS", "").split(os.pathsep) if r.strip()]
    if not roots:
        return None
    where = ", ".join(str(r) for r in roots)

    def inside(p: Path) -> bool:
        real = p.resolve()
        return any(real == r or r in real.parents for r in roots)

    folder = Path(path)
    if not inside(folder):
        return (f"This server only trains on films under: {where} (PNEUMO_DATA_ROOTS). Copy the data there, "
                f"or upload a .zip.")
    # A link inside the folder (a split, a class folder or a single film) may point anywhere: resolve every
    # folder and file that training would read, and require each one to stay under a root too.
    try:
        splits = discover_splits(folder)
        for split in splits.values():
            parts = [split] + [split / label for label in LABELS] + list(list_labelled(split).files)
            for p in parts:
                if not inside(p):
                    rel = p.relative_to(folder).as_posix() if p != folder else "."
                    return (f"{rel}{'/' if p.is_dir() else ''} is a link to {p.resolve()}, outside the folders "
                            f"this server trains on: {where} (PNEUMO_DATA_ROOTS). Copy the films there instead "
                            f"of linking to them, or upload a .zip.")
    except OSError:
        return None          # no usable layout, or unreadable: validate_dataset says why
    return None


def _discard_upload(current: dict | None) -> None:
    if current and current.get("upload_dir"):
        current["upload_dir"].release()


def reset_after_job(job: Job | None) -> tuple[str, bool] | None:
    """Once a job has started or ended (here, in another session or from the CLI), the data checked before it
    are stale: the next job starts from an empty form (no folder, no report, Start disabled). Returns the
    (id, finished) of the latest job as this session last drew the page (this run's on a first visit)."""
    seen = (job.id, job.finished) if job else None
    before = st.session_state.get(SEEN_JOB_KEY, seen)
    st.session_state[SEEN_JOB_KEY] = seen
    if before != seen:
        _discard_upload(st.session_state.pop(DATA_KEY, None))     # this session's own archive, not the job's
        st.session_state[FOLDER_KEY] = ""
    return before


def data_ui() -> dict | None:
    """The training data, checked: ``{"report", "upload_dir"}`` or None (with the reason on the page)."""
    kind = st.radio("Training data", ["folder", "upload"], horizontal=True, key="retrain_source",
                    format_func={"folder": "Folder on this server", "upload": "Upload a .zip"}.get,
                    help=LAYOUT_HELP)
    current = st.session_state.get(DATA_KEY)
    if kind == "folder":
        path = st.text_input("Folder", key=FOLDER_KEY, placeholder="/srv/films/our-hospital",
                             help=LAYOUT_HELP + " Checked when you press Enter.").strip()
        if current and current["kind"] == "upload":
            _discard_upload(current)
            current = st.session_state[DATA_KEY] = None
        if not path:
            st.caption("Enter a folder on this server: every film is read once, and nothing starts until the data "
                       "are accepted.")
            return None
        if not current or current["key"] != path:
            try:
                if refused := outside_data_roots(path):
                    raise DatasetError(refused)
                current = {"kind": "folder", "key": path, "report": _check(Path(path)), "upload_dir": None}
            except (DatasetError, OSError) as exc:
                reason = str(exc) if isinstance(exc, DatasetError) else \
                    f"The folder cannot be read ({exc.strerror or type(exc).__name__})."
                current = {"kind": "folder", "key": path, "error": reason, "upload_dir": None}
            st.session_state[DATA_KEY] = current
        st.button("Check again", key="retrain_recheck", icon=":material/refresh:",
                  on_click=lambda: st.session_state.pop(DATA_KEY, None),
                  help="Read the folder again (after adding or removing films).")
    else:
        upload = st.file_uploader("Archive (.zip)", type=["zip"], key="retrain_zip",
                                  help=LAYOUT_HELP + " The archive is unpacked on the server for this job only and "
                                                     "removed when the job ends.")
        if upload is None:
            if current and current["kind"] == "upload":          # removed from the uploader: drop its files
                _discard_upload(current)
                st.session_state[DATA_KEY] = None
            return None
        data = upload.getvalue()
        key = hashlib.sha256(data).hexdigest()
        if not current or current["kind"] != "upload" or current["key"] != key:
            _discard_upload(current)
            dest = None
            try:
                dest = UploadLease()       # removed with this session's state (or when replaced)
                with st.spinner("Unpacking the archive…"):
                    root = extract_zip(data, dest.path)
                current = {"kind": "upload", "key": key, "report": _check(root), "upload_dir": dest}
            except (DatasetError, OSError) as exc:
                if dest is not None:
                    dest.release()
                reason = str(exc) if isinstance(exc, DatasetError) else \
                    f"The archive could not be stored on the server ({exc.strerror or type(exc).__name__})."
                current = {"kind": "upload", "key": key, "error": reason, "upload_dir": None}
            st.session_state[DATA_KEY] = current
    if "error" in current:
        st.error(f"**These data cannot be used.** {current['error']}", icon=":material/block:")
        return None
    report_ui(current["report"])
    return current if current["report"].ok else None


def report_ui(report: DatasetReport) -> None:
    left, right = st.columns([2, 3])
    left.dataframe(counts_frame(report), width="stretch")
    with right:
        for problem in report.problems:
            st.error(problem, icon=":material/block:")
        for warning in report.warnings:
            st.warning(warning, icon=":material/warning:")
        if report.ok:
            st.success(f"{report.total:,} readable films; ready to train.", icon=":material/check_circle:")
    if report.unreadable:
        with st.expander(f"Unreadable files ({len(report.unreadable)}), skipped"):
            st.dataframe(unreadable_frame(report), hide_index=True, width="stretch")


# --------------------------------------------------------------------------- settings

def _active_version() -> str | None:
    try:
        folder = registry.active_model_dir()
        return str(read_card(folder).get("version", folder.name))
    except ModelLoadError:
        return None


def _bounds(name: str) -> tuple[int | float, int | float]:
    """A setting's lowest and highest value, as TrainConfig allows them (its field's rule)."""
    return SETTINGS[name].bounds()


def _allowed(name: str, options: tuple) -> list:
    """The options TrainConfig allows for the setting ``name``."""
    return [v for v in options if _accepts(name, v)]


def _accepts(name: str, value: Any) -> bool:
    try:
        check_setting(name, value)
    except SettingsError:
        return False
    return True


def settings_ui(report: DatasetReport) -> tuple[str, dict[str, Any]]:
    """Base model, hyperparameters and device, with an estimate of the time the job will take. The settings
    start from what suits this server (``proposed_job``): without a GPU a fine-tune that ends in
    minutes, with one the full recipe."""
    active = _active_version()
    bases = (["active"] if active else []) + ["imagenet", "scratch"]
    kind = "cpu" if _gpu_name() is None else "cuda"
    proposed, proposal, proposal_est = proposed_job(report, kind)
    _proposal_ui(kind, proposed, proposal, proposal_est, active)
    base = st.radio("Start from", bases, key="retrain_base", horizontal=True,
                    index=bases.index(proposed) if proposed in bases else 0,
                    format_func=lambda b: BASE_LABELS[b] + (f" ({active})" if b == "active" else ""),
                    help="Fine-tuning keeps what the active model learned and adapts it to these films (fast, "
                         "needs fewer films). ImageNet or scratch start over and need more films and epochs.")
    if base == "imagenet" and not imagenet_weights_path().is_file():
        st.warning(f"ImageNet weights are not cached on this server ({imagenet_weights_path().name}); a job "
                   f"started from them will fail at once. Fine-tune the active model or start from scratch.")
    d = proposal if base == proposed else default_config(base)
    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input("Epochs", *_bounds("epochs"), int(d["epochs"]), key=f"retrain_epochs_{base}",
                             help="Passes over the training films. The epoch with the best validation AUC is kept, "
                                  "so more epochs cost time, rarely quality.")
    rates = _allowed("lr", LR_OPTIONS)
    lr = c2.select_slider("Learning rate", rates, value=min(rates, key=lambda v: abs(v - d["lr"])),
                          key=f"retrain_lr_{base}",
                          format_func=lambda v: f"{v:.0e}",
                          help="Peak step size (after a one-epoch warm-up, then cosine decay). Lower for "
                               "fine-tuning, so the model does not forget what it knew.")
    batches = _allowed("batch_size", BATCH_OPTIONS)
    batch = c3.selectbox("Batch size", batches,
                         index=batches.index(d["batch_size"]) if d["batch_size"] in batches else 2,
                         key=f"retrain_batch_{base}",
                         help="Films per step. Lower it if the job runs out of memory.")
    size = c1.number_input("Image size (px)", *_bounds("image_size"), int(d["image_size"]), 16,
                           key=f"retrain_size_{base}",
                           help="Films are resized to this square. The active model uses "
                                f"{default_config('active')['image_size']} px; smaller is faster, larger "
                                "sees more detail.")
    augments = list(SETTINGS["augment"].rule.choices)
    augment = c2.selectbox("Augmentation", augments, key=f"retrain_aug_{base}",
                           index=augments.index(d["augment"]) if d.get("augment") in augments else 0,
                           help="Random crops, rotations, brightness and contrast changes while training, so the "
                                "model does not learn one site's exposure. Keep it on unless the data are huge.")
    with c3.popover("More settings"):
        mixup, cap, seed = _more_settings_ui(base, d)
    device = _device_ui()
    config = {"epochs": int(epochs), "lr": float(lr), "batch_size": int(batch), "image_size": int(size),
              "augment": augment, "mixup_alpha": float(mixup), "max_images": int(cap) or None, "seed": int(seed),
              "device": device}
    seconds, basis = estimate_seconds(report, config, device)
    config.update(_gpus_ui(device, int(batch)))
    text = f"**Estimated time: about {fmt_duration(seconds)}** on the {'GPU' if device == 'cuda' else 'CPU'} " \
           f"(from {basis}; the real pace shows after the first epoch)."
    (st.warning if seconds > 2 * 3600 else st.info)(
        text + (" Consider fewer epochs, a smaller image size or a cap on films." if seconds > 2 * 3600 else ""),
        icon=":material/schedule:")
    return base, config


def _more_settings_ui(base: str, d: dict[str, Any]) -> tuple[float, int, int]:
    """Mixup, the cap on films per split (0: none) and the seed, starting from ``d``."""
    mixup = st.number_input("Mixup α", *map(float, _bounds("mixup_alpha")), float(d["mixup_alpha"]), 0.05,
                            key=f"retrain_mixup_{base}", help="Blends pairs of films and labels; 0 turns it off.")
    cap = st.number_input("At most this many films per split (0 = all)", 0, _bounds("max_images")[1],
                          int(d.get("max_images") or 0), 50, key=f"retrain_cap_{base}",
                          help=f"For a quick trial run of the whole pipeline (at least {_bounds('max_images')[0]} "
                               f"films).")
    seed = st.number_input("Random seed", *_bounds("seed"), int(d["seed"]), key=f"retrain_seed_{base}",
                           help="Same data, settings and seed give the same model.")
    return mixup, cap, seed


def _proposal_ui(kind: str, base: str, config: dict[str, Any], est: Estimate, active: str | None) -> None:
    """One line: what the settings below propose for this server, and how long it would take."""
    if kind == "cpu" and base == "active":
        cap = f", at most {config['max_images']:,} films per split" if config.get("max_images") else ""
        st.info(f"**Proposed for this server (no GPU): a fine-tune of {active}** at its input size "
                f"({config['image_size']} px), {config['epochs']} epoch(s){cap}, learning rate "
                f"{config['lr']:.0e}: **about {fmt_duration(est.seconds)}** in all. Training from ImageNet or "
                f"from scratch on a CPU takes hours.", icon=":material/speed:")
    else:
        st.info(f"**Proposed: the full recipe** ({BASE_LABELS[base].lower()}, {config['epochs']} epochs at "
                f"{config['image_size']} px, learning rate {config['lr']:.0e}): **about "
                f"{fmt_duration(est.seconds)}** in all" + (" on the GPU." if kind == "cuda" else "."),
                icon=":material/speed:")


@st.cache_resource(show_spinner=False)
def _gpu_name() -> str | None:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _device_ui() -> str:
    gpu = _gpu_name()
    if gpu is None:
        st.caption("No GPU on this server: training runs on the CPU (slowly, and the app stays usable because the "
                   "job runs at lower priority).")
        return "cpu"
    return st.radio("Device", ["cuda", "cpu"], horizontal=True, key="retrain_device",
                    format_func=lambda d: f"GPU ({gpu})" if d == "cuda" else "CPU")


@st.cache_resource(show_spinner=False)
def _gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpus_ui(device: str, batch: int) -> dict[str, Any]:
    """On a server with more than one GPU: how many to train on (one process each, under torchrun) and whether
    BatchNorm sees the whole global batch (SyncBatchNorm). Nothing to choose elsewhere."""
    count = _gpu_count()
    if device != "cuda" or count < 2:
        return {}
    lo, hi = _bounds_launch("nproc")
    nproc = st.number_input("GPUs", lo, min(hi, count), count, key="retrain_nproc",
                            help="Processes under torchrun, one per GPU (DistributedDataParallel). The batch size "
                                 "is the global batch, shared between them, so it must divide evenly.")
    sync_bn = st.checkbox("SyncBatchNorm", False, key="retrain_sync_bn", disabled=nproc < 2,
                          help=SETTINGS["sync_bn"].rule.help)
    if batch % nproc:
        st.warning(f"A batch of {batch} films does not split evenly over {nproc} GPUs; the job will refuse it.")
    return {"nproc": int(nproc), "sync_bn": bool(sync_bn and nproc > 1)}


def _bounds_launch(name: str) -> tuple[int, int]:
    lo, hi = setting(name).bounds()
    return int(lo), int(hi)


def _start(data: dict, base: str, config: dict) -> None:
    if refused := require_admin_action("start_training"):
        flash(f"**The job was not started.** {refused}", error=True)
        return
    config = dict(config)
    nproc = int(config.pop("nproc", 1))                 # how many processes run the job, not a training setting
    try:
        job = start_job(data["report"].root, base=base, config=config, report=data["report"],
                        upload_dir=data["upload_dir"], nproc=nproc)
    except (PneumoError, OSError) as exc:        # OSError: the jobs folder is not writable, a lock timed out
        audit_event("start_training", "failed", model_version=_active_version(), detail=type(exc).__name__)
        flash(f"**The job was not started.** {exc}", error=True)
        return
    audit_event("start_training", "succeeded", model_version=_active_version(),
                detail=f"job {job.id}; base {base}; {nproc} process(es); {config['epochs']} epochs at "
                       f"{config['image_size']} px; {data['report'].total} films")
    st.session_state.pop(DATA_KEY, None)            # an uploaded archive now belongs to the job
    flash(f"Training job {job.id} started. It runs on the server: you can leave this page and come back.")


def start_ui(data: dict | None, base: str | None, config: dict | None) -> None:
    running = running_job()
    st.button("Start training", type="primary", key="retrain_start", icon=":material/play_arrow:",
              disabled=data is None or running is not None, on_click=_start, args=(data, base, config),
              help="Runs in the background on the server; you can leave this page. The active model is not "
                   "changed: you decide afterwards whether to promote the new one.")


# --------------------------------------------------------------------------- a running job

def _job_caption(job: Job) -> str:
    base = job.spec.get("base") or {}
    data = job.spec.get("data") or {}
    n = sum(sum(c.values()) for c in (data.get("counts") or {}).values())
    cfg = job.spec.get("config") or {}
    start = {"active": f"fine-tune of {base.get('version', 'the active model')}", "imagenet": "from ImageNet weights",
             "scratch": "from scratch"}.get(base.get("kind"), "")
    return (f"Job `{job.id}` · {start} · {job.spec.get('data_name', '')} "
            f"({n:,} films) · {cfg.get('epochs')} epochs at {cfg.get('image_size')} px · "
            f"{job.state.get('device') or 'device not chosen yet'}")


@st.fragment(run_every=POLL_S)
def job_progress_ui(job_id: str) -> None:
    """Live view of a running job (polled from disk every few seconds; every user sees the same)."""
    try:
        job = get_job(job_id)
    except PneumoError as exc:
        st.error(str(exc))
        return
    if job.finished:
        st.rerun()                                  # the whole page: show the result
    p = progress(job)
    step = f" ({p['step']})" if p["step"] and p["step"] != p["phase"] else ""
    st.markdown(f"**{STATUS_WORDS.get(job.status, job.status)}:** {p['phase'] or job.state.get('phase', '')}{step}")
    st.caption(_job_caption(job))
    st.progress(min(1.0, p["fraction"]), text=phase_text(p))
    cols = st.columns(4)
    cols[0].metric("Epoch", f"{p['epoch']} / {p['epochs']}")
    cols[1].metric("Training loss", "–" if p["loss"] is None else f"{p['loss']:.4f}")
    cols[2].metric(p["metric_name"].replace("auc", "AUC"), "–" if p["metric"] is None else f"{p['metric']:.3f}")
    estimate = (job.spec.get("estimate") or {}).get("seconds")
    cols[3].metric("Time left", time_left_text(p),
                   help="The whole job (training, calibration, the guard and the comparison): what is left of this "
                        "phase plus the estimates of the next ones, scaled by the pace so far"
                        + (f"; {fmt_duration(estimate)} were estimated in all." if estimate else ".")
                        + (" This phase is taking longer than estimated." if p["overrun"] else ""))
    if job.history:
        st.plotly_chart(charts.history_figure(job.history), width="stretch", key=f"job_chart_{job.id}")
    if (job.dir / CANCEL).exists():
        st.warning("Cancel requested: the job is stopping. The active model is unchanged.", icon=":material/stop:")
    else:
        st.button("Cancel training", key="retrain_cancel", icon=":material/stop:", on_click=_cancel,
                  args=(job.id,), help="Stops the job within seconds; nothing it made is kept except its log.")
    with st.expander("Log"):
        st.code(job.log_tail(30) or "(empty)", language=None)


# --------------------------------------------------------------------------- a finished job

def _comparison(version: str) -> dict[str, Any]:
    try:
        return json.loads((registry.weights_root() / version / "comparison.json").read_text())
    except (OSError, ValueError):
        return {}


def job_result_ui(job: Job, op: str) -> None:
    st.markdown(f"#### Last job: {STATUS_WORDS.get(job.status, job.status).lower()}")
    st.caption(_job_caption(job) + f" · ended {str(job.state.get('finished', '')).replace('T', ' ')[:19]}")
    if job.status != "succeeded":
        (st.warning if job.status == "cancelled" else st.error)(job.message, icon=":material/info:")
        with st.expander("Log (kept)", expanded=job.status == "failed"):
            st.code(job.log_tail(60) or "(empty)", language=None)
        return
    st.success(job.message, icon=":material/check_circle:")
    version = job.version or ""
    if not (registry.weights_root() / version).is_dir():
        st.info(f"Version {version} is no longer in the registry.")
        return
    comparison = _comparison(version)
    splits = comparison_splits(comparison)
    if splits:
        st.markdown(f"**New model and active model on this job's films**, {op_label(op)} operating point "
                    f"(each model at its own threshold); value (95% CI)")
        for col, split in zip(st.columns(len(splits)), splits):
            col.markdown(f"**{split}/**")
            col.table(comparison_frame(comparison, split, op))
        notes = [comparison.get("note", "")]
        if comparison.get("active_error"):
            notes.append(f"The active model could not be evaluated: {comparison['active_error']}")
        st.caption(" ".join(n for n in notes if n))
    verdict, words = promotion.verdict_text(comparison)
    {"better": st.success, "worse": st.error, "too few": st.warning}.get(verdict, st.info)(
        words, icon=":material/balance:")
    if job.history:
        with st.expander("Training curves"):
            st.plotly_chart(charts.history_figure(job.history), width="stretch", key=f"job_curves_{job.id}")
    _guard_notice(version)
    if registry.active_name() == version:
        st.info(f"{version} is the active model.", icon=":material/verified:")
    else:
        promote_ui(version, "retrain_promote_new", f"Promote {version} to active", primary=verdict == "better",
                   help="Every page and the CLI use it from their next run; rollback returns to the current one.")


CONFIRM_SUFFIX = "_confirm"


def _concerns(version: str) -> list[tuple[str, str]]:
    """Why the evidence cannot support promoting ``version`` now (``promotion.concerns``), read from disk."""
    folder = registry.weights_root() / version
    try:
        card = read_card(folder)
    except ModelLoadError:
        return []                       # registry.promote refuses it, with the reason
    return promotion.concerns(_comparison(version), card, folder, active=registry.active_name())


def promote_ui(version: str | None, key: str, label: str, *, primary: bool = False, help: str = "") -> None:
    """A promote button; when the evidence cannot support the promotion, the reasons and a confirmation box
    first (the button stays disabled until it is ticked, and the reasons go into the audit log)."""
    reasons = _concerns(version) if version else []
    confirmed = True
    if reasons:
        st.warning(f"**The evidence cannot support promoting {version}.**\n\n"
                   + "\n".join(f"- {text}" for _, text in reasons), icon=":material/warning:")
        confirmed = st.checkbox(f"Promote {version} anyway: I have read why. The promotion is recorded with these "
                                f"reasons in the audit log.", key=key + CONFIRM_SUFFIX)
    st.button(label, type="primary" if primary and not reasons else "secondary", key=key,
              disabled=version is None or not confirmed, icon=":material/upgrade:", on_click=_promote,
              args=(version, key + CONFIRM_SUFFIX), help=help)


def _guard_notice(version: str) -> None:
    """A version without an out-of-distribution guard (jobs fit one; a folder added by hand may lack it)."""
    try:
        new = read_card(registry.weights_root() / version)
        active = read_card(registry.active_model_dir())
    except ModelLoadError:
        return
    if active.get("ood") and not new.get("ood"):
        st.warning(f"{version} has no out-of-distribution guard yet (the active model has one): until "
                   f"`python -m pneumo_core fit-guard --model weights/{version} --data DIR` is run, only the "
                   f"model-free checks screen its input films.", icon=":material/shield:")
    elif (active.get("film_type") or {}).get("fitted") and not (new.get("film_type") or {}).get("fitted"):
        st.warning(f"{version} has no film-type check (the active model has one): it cannot tell adult, lateral "
                   "or other films from the children's frontal films it was validated on, so adult films would get "
                   f"a plain result. Run `python -m pneumo_core fit-guard --model weights/{version} --data DIR "
                   "--film-types DIR` before promoting it.", icon=":material/shield:")


# --------------------------------------------------------------------------- versions

def _cancel(job_id: str) -> None:
    if refused := require_admin_action("cancel_training"):
        flash(f"**Not cancelled.** {refused}", error=True)
        return
    try:
        cancel_job(job_id)
    except PneumoError as exc:
        audit_event("cancel_training", "failed", detail=f"job {job_id}")
        flash(f"**Not cancelled.** {exc}", error=True)
        return
    audit_event("cancel_training", "succeeded", detail=f"job {job_id}")


def _promote(version: str | None, confirm_key: str | None = None) -> None:
    if not version:
        return
    if refused := require_admin_action("promote"):
        flash(f"**Not promoted.** {refused}", error=True)
        return
    reasons = [short for short, _ in _concerns(version)]      # again from disk: the page may be stale
    if reasons and not (confirm_key and st.session_state.get(confirm_key)):
        audit_event("promote", "denied", model_version=version, detail="not confirmed: " + "; ".join(reasons))
        flash(f"**Not promoted.** The evidence cannot support promoting {version} ({'; '.join(reasons)}): "
              f"tick the confirmation first.", error=True)
        return
    try:
        before = registry.promote(version)
    except PneumoError as exc:
        audit_event("promote", "failed", model_version=version, detail=str(exc)[:200])
        flash(f"**Not promoted.** {exc}", error=True)
        return
    detail = "; ".join(([f"was {before}"] if before else [])
                       + (["confirmed despite: " + "; ".join(reasons)] if reasons else []))
    audit_event("promote", "succeeded", model_version=version, detail=detail or None)
    flash(f"{version} is now the active model" + (f" (was {before})." if before else "."))


def _rollback() -> None:
    if refused := require_admin_action("rollback"):
        flash(f"**Not rolled back.** {refused}", error=True)
        return
    before = registry.active_name()
    try:
        now = registry.rollback()
    except PneumoError as exc:
        audit_event("rollback", "failed", model_version=before, detail=str(exc)[:200])
        flash(f"**Not rolled back.** {exc}", error=True)
        return
    audit_event("rollback", "succeeded", model_version=now, detail=f"was {before}")
    flash(f"Rolled back: {now} is the active model again.")


def versions_ui(op: str) -> None:
    st.subheader("Model versions")
    versions = registry.list_versions()
    if not versions:
        st.info("No model versions yet.")
        return
    st.dataframe(versions_frame(versions, op), hide_index=True, width="stretch",
                 column_config={"active": st.column_config.CheckboxColumn("active")})
    st.caption(f"AUC (95% CI) from each version's own evaluation, {op_label(op)} operating point; versions trained "
               f"on other films are evaluated on other films, so compare them on the same data (the job comparison).")
    left, right = st.columns(2)
    others = [v.name for v in versions if not v.active and not v.problem]
    if st.session_state.get(PICK_KEY) not in others:   # a keyed selectbox keeps its old value when its options change
        if others:                                     # (e.g. None from before a job added a version)
            st.session_state[PICK_KEY] = others[0]
        else:
            st.session_state.pop(PICK_KEY, None)
    with left:
        chosen = st.selectbox("Version", others, key=PICK_KEY, disabled=not others,
                              placeholder="no other version")
        promote_ui(chosen, "retrain_promote", "Promote", help="Checks the version's weights, then makes it active.")
    with right:
        previous = [v for v in registry.read_history()["previous"] if v != registry.active_name()]
        target = previous[-1] if previous else None
        st.markdown("&nbsp;")
        st.button(f"Roll back to {target}" if target else "Roll back", key="retrain_rollback",
                  disabled=target is None, icon=":material/undo:", on_click=_rollback,
                  help="Makes the previously active model active again.")
