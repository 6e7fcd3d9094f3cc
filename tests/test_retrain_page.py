"""The Retrain page with streamlit.testing.v1.AppTest over the real app.py: data checks, a job started,
watched (by two sessions) and cancelled from the page, a finished job's comparison with promote and
rollback, failures shown with their log. The weights folder is temporary; the one job that runs is a
real worker process on tiny synthetic films."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from conftest import active_weights_root, copy_model_version, make_dataset
from conftest_app_helpers import set_password, sign_in
from streamlit.testing.v1 import AppTest
from test_jobs import worker_env

from appkit.retrain_ui import DATA_KEY
from pneumo_core.model.compare import compare_with_active
from pneumo_core.model.config import SETTINGS
from pneumo_core.model.network import CARD_FILE, WEIGHTS_FILE
from pneumo_core.ops import registry
from pneumo_core.ops.jobs import store

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


def _clear_caches() -> None:
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("pagedata"), {"train": 20, "val": 5}, size=40, seed=7)


@pytest.fixture()
def weights(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    root = active_weights_root(tmp_path, monkeypatch, tiny_model_dir)
    monkeypatch.delenv("PNEUMO_JOBS_DIR", raising=False)
    worker_env(monkeypatch)
    set_password()
    _clear_caches()
    yield root
    for job in store.list_jobs():
        if not job.finished:
            store.cancel_job(job.id)
            pid = json.loads((job.dir / store.WORKER).read_text())["pid"]
            if store._leads_another_group(pid):        # never this test process's own group (CI may make
                os.killpg(pid, 9)                      # pytest a group leader: that would end the whole run)
    while _STAND_INS:
        _STAND_INS.pop().wait(timeout=30)
    _clear_caches()


def open_page() -> AppTest:
    """The Retrain page for an admin (signed in through the sidebar, like a person)."""
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    sign_in(at)
    at.switch_page("pages/retrain.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def run(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button(at: AppTest, key: str):
    return next(b for b in at.button if b.key == key)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def check_folder(at: AppTest, path: Path | str) -> AppTest:
    """Type a folder and press Enter: the page reads it at once."""
    at.text_input(key="retrain_folder").set_value(str(path))
    return run(at)


def test_page_lists_versions_and_waits_for_data(weights):
    at = open_page()
    assert at.title[0].value == "Retrain"
    versions = at.dataframe[0].value
    assert list(versions.version) == ["base"] and bool(versions.active.iloc[0])
    assert button(at, "retrain_start").disabled
    assert button(at, "retrain_rollback").disabled                 # nothing was active before
    assert not errors(at)


def test_folder_check_shows_counts_settings_and_an_estimate(weights, data, tmp_path):
    at = check_folder(open_page(), tmp_path / "missing")
    assert any("not a folder" in e for e in errors(at))
    assert button(at, "retrain_start").disabled

    at = check_folder(at, data)
    assert not errors(at)
    counts = at.dataframe[0].value
    assert counts.loc["train/", "NORMAL"] == 20 and counts.loc["val/", "PNEUMONIA"] == 5
    assert counts.loc["train/", "total"] == 40
    assert any("50 readable films" in s.value for s in at.success)
    assert any("No external/" in w.value for w in at.warning)
    card = json.loads((weights / "base" / CARD_FILE).read_text())
    assert at.number_input(key="retrain_size_active").value == card["input"]["size"]    # the active model's
    assert at.number_input(key="retrain_epochs_active").value <= 5             # a short fine-tune on a CPU
    for key, name in (("epochs", "epochs"), ("size", "image_size"), ("seed", "seed")):   # TrainConfig's bounds
        field = at.number_input(key=f"retrain_{key}_active")
        assert (field.min, field.max) == SETTINGS[name].bounds()
    assert at.selectbox(key="retrain_aug_active").options == list(SETTINGS["augment"].rule.choices)
    estimate = next(i.value for i in at.info if "Estimated time" in i.value)
    assert "CPU" in estimate and "img/s" in estimate
    assert not button(at, "retrain_start").disabled


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    return buf.getvalue()


def test_bad_zip_uploads_are_rejected_cleanly(weights, data):
    at = open_page()
    at.radio(key="retrain_source").set_value("upload")
    run(at)
    at.file_uploader(key="retrain_zip").set_value(("data.zip", _zip({"../../evil.png": b"x"}), "application/zip"))
    run(at)
    assert any("cannot be used" in e and "outside the archive" in e for e in errors(at))
    assert button(at, "retrain_start").disabled

    few = {f"NORMAL/n{i}.png": (data / "train" / "NORMAL" / f"normal_{i:03d}.png").read_bytes() for i in range(3)}
    few |= {f"PNEUMONIA/p{i}.png": (data / "train" / "PNEUMONIA" / f"pneumonia_{i:03d}.png").read_bytes()
            for i in range(3)}
    few["PNEUMONIA/notes.txt"] = b"not a film"
    at.file_uploader(key="retrain_zip").set_value(("few.zip", _zip(few), "application/zip"))
    run(at)
    assert any("Too few training films" in e for e in errors(at))
    assert any("Unreadable files (1)" in x.label for x in at.expander)
    assert button(at, "retrain_start").disabled
    assert "Traceback" not in str(at._tree)
    uploads = weights / ".jobs" / store.UPLOADS
    assert len(list(uploads.iterdir())) == 1                         # the rejected archive's folder is gone


def _epoch_shown(at: AppTest) -> int:
    metric = next((m for m in at.metric if m.label == "Epoch"), None)
    return int(metric.value.split("/")[0]) if metric else 0


def test_start_watch_from_two_sessions_and_cancel_from_the_page(weights, data):
    at = check_folder(open_page(), data)
    at.number_input(key="retrain_epochs_active").set_value(200)
    at.number_input(key="retrain_size_active").set_value(32)
    at.selectbox(key="retrain_batch_active").set_value(16)
    run(at)
    button(at, "retrain_start").click()
    run(at)
    assert any(h.value == "Training in progress" for h in at.subheader)
    [job] = store.list_jobs()
    assert not job.finished
    assert any(f"Training job {job.id} started" in s.value for s in at.success)

    other = open_page()                                             # another browser, another session
    assert any(h.value == "Training in progress" for h in other.subheader)
    assert any(job.id in c.value for c in other.caption)
    other.switch_page("pages/metrics.py").run()                     # leave the page and come back
    other.switch_page("pages/retrain.py").run()
    assert any(h.value == "Training in progress" for h in other.subheader)

    deadline = time.monotonic() + 300
    while _epoch_shown(at) < 1:
        assert time.monotonic() < deadline, store.get_job(job.id).log_tail()
        time.sleep(1)
        run(at)
    assert at.get("plotly_chart")                                   # loss and AUC by epoch
    button(at, "retrain_cancel").click()
    run(at)
    deadline = time.monotonic() + 120
    while not any("Last job" in m.value for m in at.markdown):
        assert time.monotonic() < deadline
        time.sleep(1)
        run(at)
    assert any("Cancelled" in w.value and "unchanged" in w.value for w in at.warning)
    assert registry.active_name(weights) == "base"
    assert [v.name for v in registry.list_versions(weights)] == ["base"]


@pytest.fixture()
def finished_job(weights, tiny_model_dir, data, tmp_path) -> tuple[store.Job, dict]:
    """What a successful job leaves: a new version with its comparison, and the job's state."""
    from pneumo_core.model.evaluation import calibrate_model

    candidate = copy_model_version(tiny_model_dir, tmp_path, "cand-v")
    card = calibrate_model(candidate, data, n_boot=50)        # as a job does: on its own films, then compare
    comparison = compare_with_active(candidate, card, data, {"path": str(weights / "base"), "version": "base"},
                                     n_boot=50, device="cpu")
    (candidate / "comparison.json").write_text(json.dumps(comparison))
    version = registry.add_version(candidate, weights)
    job_dir = weights / ".jobs" / "20990101-000000-aaaaaa"
    job_dir.mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "config": {"epochs": 2, "image_size": 32},
                                                  "base": {"kind": "active", "version": "base"},
                                                  "data": {"counts": {"train": {"NORMAL": 20, "PNEUMONIA": 20}}},
                                                  "data_name": "pagedata"}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "succeeded", "phase": "ended", "version": version,
                                                   "history": card["history"], "finished": "2099-01-01T00:00:00",
                                                   "message": f"New model version {version} is ready."}))
    return store.get_job(job_dir.name), comparison


def test_finished_job_compares_side_by_side_then_promote_and_rollback(weights, finished_job):
    """On 5 films per class (issue 17, item 2): the page says the paired comparison cannot support a decision
    and the thresholds rest on too few films; Promote is not primary and needs a confirmation, which the
    audit log records with the reasons."""
    from appkit.text import fmt_ci
    from pneumo_core.ops import audit

    job, comparison = finished_job
    at = open_page()
    assert any("Last job: finished" in m.value for m in at.markdown)
    assert any("cand-v is ready" in s.value for s in at.success)
    assert len(at.table) == 1 and list(at.table[0].value.columns) == ["Active: base", "New: cand-v"]
    table = at.table[0].value
    for who, column in (("active", "Active: base"), ("candidate", "New: cand-v")):
        summary = comparison["splits"]["val"][who]["balanced"]
        assert table.loc["AUC", column] == fmt_ci(summary["auc"], summary["ci95"]["auc"])
    paired = comparison["splits"]["val"]["paired"]
    assert comparison["decision_split"] == "val" and (paired["n_normal"], paired["n_pneumonia"]) == (5, 5)
    assert paired["verdict"] in ("better", "not distinguishable", "worse") and not paired["enough"]
    warnings = [w.value for w in at.warning]
    assert any("This comparison cannot support a decision" in w and "5 normal and 5 pneumonia films" in w
               for w in warnings)
    assert any("cannot support promoting cand-v" in w and "thresholds were fitted on 5 normal and 5 pneumonia" in w
               for w in warnings)
    promote = button(at, "retrain_promote_new")
    assert promote.disabled and promote.proto.type != "primary"

    at.checkbox(key="retrain_promote_new_confirm").check()
    run(at)
    assert not button(at, "retrain_promote_new").disabled
    at.checkbox(key="retrain_promote_new_confirm").uncheck()     # a stale page: the callback checks again
    button(at, "retrain_promote_new").click()
    run(at)
    assert registry.active_name(weights) == "base"
    assert any("Not promoted" in e and "tick the confirmation" in e for e in errors(at))
    assert audit.events(actions=["promote"])[0]["result"] == "denied"

    at.checkbox(key="retrain_promote_new_confirm").check()
    run(at)
    button(at, "retrain_promote_new").click()
    run(at)
    assert registry.active_name(weights) == "cand-v"
    event = audit.events(actions=["promote"])[0]
    assert event["result"] == "succeeded" and event["model_version"] == "cand-v"
    assert "confirmed despite: compared on 5+5 films" in event["detail"] and "thresholds fitted on 5+5" in event["detail"]
    assert any("cand-v is now the active model" in s.value for s in at.success)
    assert any("cand-v" in m.value for m in at.sidebar.markdown)     # every page now uses it
    assert any("cand-v is the active model" in i.value for i in at.info)

    rollback = button(at, "retrain_rollback")
    assert rollback.label == "Roll back to base" and not rollback.disabled
    rollback.click()
    run(at)
    assert registry.active_name(weights) == "base"
    assert any("base is the active model again" in s.value for s in at.success)


def test_tampered_version_is_not_promoted_from_the_page(weights, tiny_model_dir):
    bad = copy_model_version(tiny_model_dir, weights, "bad")
    (bad / WEIGHTS_FILE).write_bytes((bad / WEIGHTS_FILE).read_bytes()[:-100])
    at = open_page()
    at.selectbox(key="retrain_version_pick").set_value("bad")
    run(at)
    at.checkbox(key="retrain_promote_confirm").check()           # its thresholds rest on 8 films per class
    run(at)
    button(at, "retrain_promote").click()
    run(at)
    assert any("Not promoted" in e and "sha256" in e for e in errors(at))
    assert registry.active_name(weights) == "base"


def test_failed_and_killed_jobs_show_a_clear_message_and_the_log(weights):
    job_dir = weights / ".jobs" / "20990101-000000-bbbbbb"
    job_dir.mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "config": {"epochs": 3}}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "running", "phase": "training", "history": []}))
    (job_dir / store.LOG).write_text("epoch 1/3  loss=0.6931\n")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    store.record_worker(job_dir, gone.pid)        # before it is reaped: a reused pid is then told apart
    gone.wait()
    at = open_page()
    assert any("stopped unexpectedly" in e and "unchanged" in e for e in errors(at))
    assert any("epoch 1/3" in c.value for c in at.code)
    assert any(h.value == "New training job" for h in at.subheader)  # and a new job can be set up


def test_progress_counts_down_from_the_last_epoch_or_the_estimate(tmp_path):
    import datetime as dt

    from appkit.retrain import fmt_duration, progress

    (tmp_path / "state.json").write_text("{}")
    written = (tmp_path / "state.json").stat().st_mtime
    job = store.Job("j", tmp_path, {"status": "running", "history": [
        {"epoch": 2, "train_loss": 0.5, "val_auc": 0.8, "eta_s": 100.0}]}, {"config": {"epochs": 5}})
    p = progress(job, now=written + 30)
    assert (p["epoch"], p["epochs"], p["fraction"], p["metric"]) == (2, 5, 0.4, 0.8)
    assert p["eta_s"] == pytest.approx(70) and progress(job, now=written + 500)["eta_s"] == 0
    created = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    fresh = store.Job("j", tmp_path, {"status": "running", "history": [], "created": created.isoformat()},
                      {"config": {"epochs": 5}, "estimate": {"seconds": 600}})
    assert progress(fresh, now=created.timestamp() + 60)["eta_s"] == pytest.approx(540)
    assert [fmt_duration(s) for s in (45, 600, 7200, None)] == ["45 s", "10 min", "2.0 h", "–"]


def test_counts_table_shows_a_carved_validation_split(data):
    from appkit.retrain import counts_frame
    from pneumo_core.ingest.datacheck import validate_dataset

    df = counts_frame(validate_dataset(data / "train"))
    assert list(df.index) == ["train/", "val/ (carved from train/)"]
    assert df.loc["val/ (carved from train/)", "NORMAL"] == 2 and df["total"].sum() == 40


def test_data_roots_restrict_which_server_folders_can_be_used(weights, data, tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", str(tmp_path / "allowed"))
    at = check_folder(open_page(), data)
    assert any("only trains on films under" in e for e in errors(at))
    assert button(at, "retrain_start").disabled
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "films").symlink_to(data, target_is_directory=True)        # a link out of the root is still outside
    at = check_folder(at, allowed / "films")
    assert any("only trains on films under" in e for e in errors(at))
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", str(data.parent))
    at = check_folder(open_page(), data)
    assert not errors(at) and not button(at, "retrain_start").disabled


def test_a_link_inside_a_data_root_may_not_lead_out_of_it(data, tmp_path, monkeypatch):
    import shutil

    from appkit.retrain_ui import outside_data_roots

    root = tmp_path / "allowed"
    monkeypatch.setenv("PNEUMO_DATA_ROOTS", str(root))
    good = root / "good"
    shutil.copytree(data, good)
    assert outside_data_roots(str(good)) is None                          # real folders and films: accepted

    split = root / "split"                                                # train/ links out of the roots
    split.mkdir()
    (split / "train").symlink_to(data / "train", target_is_directory=True)
    refused = outside_data_roots(str(split))
    assert refused and "train/ is a link to" in refused and "PNEUMO_DATA_ROOTS" in refused

    label = root / "label"                                                # NORMAL/ links out of the roots
    shutil.copytree(data / "train", label / "train")
    shutil.rmtree(label / "train" / "NORMAL")
    (label / "train" / "NORMAL").symlink_to(data / "train" / "NORMAL", target_is_directory=True)
    refused = outside_data_roots(str(label))
    assert refused and "train/NORMAL/ is a link to" in refused

    film = root / "film"                                                  # a single film links out
    shutil.copytree(data / "train", film)
    one = sorted((film / "PNEUMONIA").iterdir())[0]
    one.unlink()
    one.symlink_to(data / "train" / "PNEUMONIA" / one.name)
    refused = outside_data_roots(str(film))
    assert refused and f"PNEUMONIA/{one.name} is a link to" in refused

    inner = root / "inner"                                                # a link that stays inside: fine
    inner.mkdir()
    (inner / "train").symlink_to(good / "train", target_is_directory=True)
    assert outside_data_roots(str(inner)) is None


def test_a_job_that_ends_resets_the_data_and_the_picker_lists_its_version(weights, data, tiny_model_dir):
    """Issue #17, item 4: after a job the page shows no data report or Start button left from before the job,
    and its new version can be picked for promotion at once (not "no other version")."""
    at = check_folder(open_page(), data)
    assert not button(at, "retrain_start").disabled
    assert at.selectbox(key="retrain_version_pick").value is None           # only the active version so far
    job_dir = weights / ".jobs" / "20990101-000000-cccccc"                  # a job started elsewhere (CLI)
    job_dir.mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "config": {"epochs": 2, "image_size": 32}}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "running", "phase": "training", "history": []}))
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        store.record_worker(job_dir, worker.pid)
        run(at)
        assert any(h.value == "Training in progress" for h in at.subheader)
        copy_model_version(tiny_model_dir, weights, "cand-v")                # what the job leaves when it ends
        (job_dir / store.STATE).write_text(json.dumps({"status": "succeeded", "phase": "ended", "version": "cand-v",
                                                       "finished": "2099-01-01T00:00:00",
                                                       "message": "New model version cand-v is ready."}))
        run(at)
    finally:
        worker.kill()
        worker.wait()
    assert any("Last job: finished" in m.value for m in at.markdown)
    assert at.text_input(key="retrain_folder").value == ""
    assert not any("readable films" in s.value for s in at.success)
    assert button(at, "retrain_start").disabled
    assert DATA_KEY not in at.session_state          # the report from before the job is gone, not kept for later
    at = check_folder(at, data)                                             # the same folder again: read afresh
    assert any("50 readable films" in s.value for s in at.success) and not button(at, "retrain_start").disabled
    assert at.selectbox(key="retrain_version_pick").value == "cand-v"
    promote = button(at, "retrain_promote")             # enabled, or waiting for its "promote anyway" box
    assert not promote.disabled or any(c.key == "retrain_promote_confirm" for c in at.checkbox)


# --------------------------------------------------------------------------- honest progress, proposals, charts

_STAND_INS: list[subprocess.Popen] = []


def _live_job(weights: Path, state: dict, estimate: dict) -> store.Job:
    """A job that looks alive, with the given state: its worker record names a sleeping process that, like a
    real worker, leads its own session (the ``weights`` fixture ends it)."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    _STAND_INS.append(stand_in)
    job_dir = weights / ".jobs" / "20990101-000000-cccccc"
    job_dir.mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "config": {"epochs": 4, "image_size": 32},
                                                  "base": {"kind": "active", "version": "base"},
                                                  "estimate": estimate, "data_name": "pagedata"}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "running", "created": "2099-01-01T00:00:00+00:00",
                                                   "history": [], **state}))
    store.record_worker(job_dir, stand_in.pid)
    return store.get_job(job_dir.name)


PLAN = {"seconds": 100, "basis": "test", "phases": {"preparing": 10, "training": 40, "calibrating": 10,
                                                    "guard": 30, "comparing": 10}}


def test_progress_names_the_phase_and_never_reads_0_s_while_work_remains(tmp_path):
    from appkit.retrain import phase_text, progress, time_left_text

    (tmp_path / "state.json").write_text("{}")
    written = (tmp_path / "state.json").stat().st_mtime
    t0 = written - 100

    def at(state: dict, now: float, history=()) -> dict:
        job = store.Job("j", tmp_path, {"status": "running", "history": list(history), **state},
                        {"config": {"epochs": 4}, "estimate": PLAN})
        return progress(job, now=now)

    training = {**store.phase_fields("training", t0), "phases": {"preparing": 20}, "phase_fraction": 0.5}
    p = at(training, written + 10, [{"epoch": 2, "train_loss": 0.4, "val_auc": 0.8, "eta_s": 50.0}])
    assert phase_text(p) == "Phase 2 of 5: training — 50%"
    # 40 s of training left, then the later phases at the pace so far (preparing took 2x its estimate)
    assert p["eta_s"] == pytest.approx(40 + 2 * (10 + 30 + 10))
    guard = {**store.phase_fields("guard", t0 + 80), "phases": {"preparing": 10, "training": 40, "calibrating": 10}}
    p = at(guard, t0 + 95)
    assert phase_text(p) == "Phase 4 of 5: fitting the out-of-distribution guard and the film-type check — 50%"
    assert p["eta_s"] == pytest.approx(15 + 10) and time_left_text(p) == "25 s"
    late = at(guard, t0 + 80 + 200)                                  # far past the guard's estimate
    assert late["overrun"] and late["fraction"] == 0.99
    assert time_left_text(late) == "more than 10 s"                  # the comparison is still to come
    last = {**store.phase_fields("comparing", t0), "phases": {k: v for k, v in PLAN["phases"].items()
                                                              if k != "comparing"}}
    p = at(last, t0 + 500)
    assert p["eta_s"] == 0 and time_left_text(p) == "finishing"     # never "0 s"
    old = at({"phase": "training"}, written, [{"epoch": 1, "eta_s": 30.0}])   # a job from before phases
    assert phase_text(old) == "Epoch 1 of 4" and old["eta_s"] == pytest.approx(30)


def test_history_chart_keeps_auc_inside_0_1_with_whole_epochs():
    from appkit.charts import history_figure

    fig = history_figure([{"epoch": 1, "train_loss": 0.6, "val_auc": 1.0, "external_auc": 0.97}])
    assert list(fig.layout.yaxis2.range) == [0.9, 1.0]               # one epoch: not 0 to 2
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.tickformat == "d"
    history = [{"epoch": e, "train_loss": 1 / e, "val_auc": 0.4 + e / 100, "val_auc_ema": float("nan")}
               for e in range(1, 41)]
    fig = history_figure(history)
    low, high = fig.layout.yaxis2.range
    assert 0 <= low <= 0.41 and high == 1.0
    assert float(fig.layout.xaxis.dtick).is_integer() and fig.layout.xaxis.dtick >= 4
    assert fig.layout.yaxis.range[0] == 0


def test_running_job_shows_its_phase_and_time_left_for_the_whole_job(weights):
    import time as _time

    now = _time.time()
    _live_job(weights, {**store.phase_fields("guard", now - 5), "phase_step": "features of 40 training films",
                        "phases": {"preparing": 10, "training": 40, "calibrating": 10}}, PLAN)
    at = open_page()
    assert any(h.value == "Training in progress" for h in at.subheader)
    bar = at.get("progress")[0]
    assert "Phase 4 of 5: fitting the out-of-distribution guard" in bar.proto.text
    assert any("features of 40 training films" in m.value for m in at.markdown)
    left = next(m for m in at.metric if m.label == "Time left")
    seconds = int(left.value.removesuffix(" s"))                     # 25 s of the guard + 10 s to compare,
    assert 10 < seconds <= 35                                        # less what opening the page took


def _top_index(at: AppTest, text: str) -> int:
    """Index, among the page's top-level elements, of the one holding a subheader ``text``."""
    def holds(node) -> bool:
        if getattr(node, "type", None) == "subheader" and getattr(node, "value", None) == text:
            return True
        return any(holds(c) for c in getattr(node, "children", {}).values())

    return next(i for i, node in at.main.children.items() if holds(node))


def test_starting_a_job_replaces_the_settings_in_place(weights, data):
    at = check_folder(open_page(), data)
    versions_at = _top_index(at, "Model versions")
    section_at = _top_index(at, "New training job")
    _live_job(weights, store.phase_fields("preparing", __import__("time").time()), PLAN)
    at.session_state["_retrain_flash"] = ("Training job started.", False)      # the message a start leaves
    run(at)
    assert _top_index(at, "Training in progress") == section_at       # the same slot, emptied first
    assert _top_index(at, "Model versions") == versions_at            # nothing below moved: no stale copy
    assert not any(h.value == "New training job" for h in at.subheader)


def test_without_a_gpu_the_page_proposes_a_short_fine_tune_and_with_one_the_full_recipe(weights, data,
                                                                                        monkeypatch):
    import appkit.retrain_ui as ui

    at = check_folder(open_page(), data)
    proposal = next(i.value for i in at.info if "Proposed" in i.value)
    assert "no GPU" in proposal and "fine-tune of base" in proposal and "about" in proposal
    card = json.loads((weights / "base" / CARD_FILE).read_text())
    assert at.radio(key="retrain_base").value == "active"
    assert at.number_input(key="retrain_size_active").value == card["input"]["size"]
    assert 1 <= at.number_input(key="retrain_epochs_active").value <= 5

    monkeypatch.setattr(ui, "_gpu_name", lambda: "NVIDIA H200")
    at = check_folder(open_page(), data)
    proposal = next(i.value for i in at.info if "Proposed" in i.value)
    assert "full recipe" in proposal and "on the GPU" in proposal
    base = at.radio(key="retrain_base").value
    assert base in ("imagenet", "scratch")
    assert at.number_input(key=f"retrain_epochs_{base}").value == card["training"]["epochs"]


def test_a_version_with_enough_evidence_is_promoted_from_the_picker_without_confirmation(weights, tiny_model_dir):
    """Issue #17, item 2: 80 films per class compared and fitted on, a 'better' paired verdict: no warning, no
    confirmation; the same version compared on 20 films needs the confirmation in the picker too."""
    from pneumo_core.model.store import read_card, write_card
    from pneumo_core.ops import audit

    good = copy_model_version(tiny_model_dir, weights, "good-v")
    card = read_card(good)
    for point in card["operating_points"].values():
        point["films"] = {"normal": 80, "pneumonia": 80}
    write_card(good, card)
    paired = {"verdict": "better", "n_normal": 80, "n_pneumonia": 80, "enough": True, "delta_auc": 0.03,
              "ci95": [0.01, 0.05]}
    comparison = {"candidate_version": "good-v", "active_version": "base", "calibrated_on": "external/",
                  "decision_split": "test", "splits": {"test": {"paired": paired}}}
    (good / "comparison.json").write_text(json.dumps(comparison))
    at = open_page()
    at.selectbox(key="retrain_version_pick").set_value("good-v")
    run(at)
    assert not any("cannot support" in w.value for w in at.warning)
    assert not at.get("checkbox") or all(c.key != "retrain_promote_confirm" for c in at.checkbox)
    button(at, "retrain_promote").click()
    run(at)
    assert registry.active_name(weights) == "good-v"
    assert "confirmed despite" not in (audit.events(actions=["promote"])[0]["detail"] or "")

    registry.promote("base", weights)
    (good / "comparison.json").write_text(json.dumps({**comparison, "splits": {"test": {"paired": {
        **paired, "n_normal": 10, "n_pneumonia": 10, "enough": False}}}}))
    at = open_page()
    at.selectbox(key="retrain_version_pick").set_value("good-v")
    run(at)
    assert any("cannot support promoting good-v" in w.value and "10 normal and 10 pneumonia" in w.value
               for w in at.warning)
    assert button(at, "retrain_promote").disabled
    at.checkbox(key="retrain_promote_confirm").check()
    run(at)
    button(at, "retrain_promote").click()
    run(at)
    assert registry.active_name(weights) == "good-v"
    assert "confirmed despite: compared on 10+10 films" in audit.events(actions=["promote"])[0]["detail"]
