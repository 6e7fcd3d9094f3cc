"""Background training jobs: real worker processes on tiny synthetic data (CPU, 32 px).

Each test has its own weights folder (a copy of conftest's tiny model is the active version), so the
registry can be checked before and after: a job adds a version and never changes ACTIVE; cancel and
kill leave it exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset, synthetic_film, write_png
from filelock import FileLock

from pneumo_core.cli.main import main
from pneumo_core.errors import DatasetError, JobBusyError, JobError, ModelLoadError
from pneumo_core.ingest.read import read_xray
from pneumo_core.model.network import CARD_FILE, WEIGHTS_FILE
from pneumo_core.model.predict import Predictor
from pneumo_core.model.store import load_model, write_card
from pneumo_core.ops import audit, registry
from pneumo_core.ops.jobs import estimate, launch, store, uploads
from pneumo_core.ops.jobs import worker as job_worker

FAST = dict(epochs=2, batch_size=8, image_size=32, device="cpu", bf16=False, channels_last=False, workers=1,
            ema_decay=0.9, lr=3e-3)
SLOW = {**FAST, "epochs": 200}          # long enough to be caught mid-run
WAIT_S = 300                            # generous: the machine is shared


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("jobdata"), {"train": 20, "val": 5, "external": 5}, size=40, seed=4)


@pytest.fixture()
def weights(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    root = tmp_path / "weights"
    root.mkdir()
    shutil.copytree(tiny_model_dir, root / "base")
    card = json.loads((root / "base" / CARD_FILE).read_text())
    card["version"] = "base"
    write_card(root / "base", card)
    (root / "ACTIVE").write_text("base\n")
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(root))
    monkeypatch.delenv("PNEUMO_JOBS_DIR", raising=False)
    worker_env(monkeypatch)
    yield root
    for job in store.list_jobs():                      # never leave a worker behind
        if not job.finished:
            store.cancel_job(job.id)
            _kill(job)


def worker_env(monkeypatch) -> None:
    """Workers inherit this: one thread (a tiny model gains nothing from more, and on a shared machine
    OpenMP threads waiting for each other burn CPU) and no extra niceness (they already inherit ours)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PNEUMO_JOB_NICE", "0")


def _kill(job: store.Job) -> None:
    pid = json.loads((job.dir / store.WORKER).read_text())["pid"]
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_for(job_id: str, until, timeout: float = WAIT_S, seen: list | None = None) -> store.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = store.get_job(job_id)
        if seen is not None:
            seen.append((job.status, len(job.history)))
        if until(job):
            return job
        if job.finished or time.monotonic() > deadline:
            pytest.fail(f"job {job_id} ended or timed out: {job.status} {job.message}\n{job.log_tail()}")
        time.sleep(0.2)


def registry_snapshot(root: Path) -> tuple:
    return (sorted(p.name for p in root.iterdir() if not p.name.startswith(".")),
            (root / "ACTIVE").read_text(), (root / "base" / WEIGHTS_FILE).read_bytes())


def test_job_runs_to_completion_with_observable_progress(weights, data, capsys):
    job = launch.start_job(data, base="active", config=FAST, bootstrap=50)
    assert job.status == "starting" and job.spec["base"]["version"] == "base"
    seen: list = []
    job = wait_for(job.id, lambda j: j.finished, seen=seen)
    assert job.status == "succeeded", job.message + job.log_tail()
    assert ("running", 0) in seen                                      # watched while it worked
    assert [r["epoch"] for r in job.history] == [1, 2]
    assert all(r["train_loss"] > 0 and "val_auc" in r and "external_auc" in r for r in job.history)
    assert job.state["device_kind"] == "cpu"
    phases = [k for k, _ in store.PHASES]                                 # each phase timed, and estimated
    assert list(job.state["phases"]) == phases and all(v >= 0 for v in job.state["phases"].values())
    assert list(job.spec["estimate"]["phases"]) == phases

    version = job.version
    folder = weights / version
    assert registry.active_name(weights) == "base"                    # never activated by the job
    assert {v.name: v.active for v in registry.list_versions(weights)} == {"base": True, version: False}
    card = json.loads((folder / CARD_FILE).read_text())
    assert card["initialisation"]["kind"] == "checkpoint" and card["initialisation"]["parent_version"] == "base"
    assert {"val", "external"} <= set(card["metrics"])
    assert (folder / "evaluation" / "val.json").is_file() and (folder / "evaluation" / "external.json").is_file()
    comparison = json.loads((folder / "comparison.json").read_text())
    assert comparison["active_version"] == "base" and comparison["candidate_version"] == version
    for split in ("val", "external"):
        both = comparison["splits"][split]
        assert set(both) == {"active", "candidate", "paired"}
        assert both["paired"]["verdict"] in ("better", "not distinguishable", "worse")   # film by film
        for who in (both["active"], both["candidate"]):
            assert 0 <= who["balanced"]["auc"] <= 1 and len(who["balanced"]["ci95"]["auc"]) == 2
    load_model(folder)                                                # complete and intact
    assert card["ood"]["threshold"] > 0 and (folder / "ood.safetensors").is_file()   # screens inputs too
    assert Predictor.from_dir(folder).check(read_xray(next((data / "val" / "NORMAL").iterdir()))) is None

    assert not any((job.dir / d).exists() for d in store.TEMP_DIRS)   # temporary data removed
    assert "epoch 2/2" in job.log_tail()
    assert main(["jobs", "status"]) == 0                             # the CLI sees the same job
    assert f"{job.id}  succeeded" in capsys.readouterr().out
    FileLock(str(weights / ".jobs" / store.TRAIN_LOCK)).acquire(timeout=0).lock.release()   # lock released
    [ended] = audit.events(actions=["training_finished"])           # the ending is in the audit log
    assert (ended["role"], ended["result"], ended["model_version"]) == ("job", "succeeded", version)


def test_second_job_is_refused_and_cancel_stops_the_first(weights, data):
    before = registry_snapshot(weights)
    job = launch.start_job(data / "train", base="active", config=SLOW, bootstrap=50)   # no val/: a carved split
    with pytest.raises(JobBusyError, match="already running"):
        launch.start_job(data, base="scratch", config=FAST)
    wait_for(job.id, lambda j: len(j.history) >= 1)
    assert (job.dir / "view" / "val" / "NORMAL").is_dir()            # the carved validation split
    store.cancel_job(job.id)
    t0 = time.monotonic()
    job = wait_for(job.id, lambda j: j.finished, timeout=120)
    assert job.status == "cancelled", job.message
    assert time.monotonic() - t0 < 60
    assert len(job.history) < SLOW["epochs"]
    assert "unchanged" in job.message
    assert registry_snapshot(weights) == before
    assert not (job.dir / "view").exists() and job.log_path.stat().st_size > 0      # data gone, log kept
    assert [e["result"] for e in audit.events(actions=["training_finished"])] == ["cancelled"]


def test_killed_worker_leaves_the_registry_consistent_and_the_lock_recoverable(weights, data, tmp_path, capsys):
    before = registry_snapshot(weights)
    job = launch.start_job(data, base="active", config=SLOW, bootstrap=50)
    wait_for(job.id, lambda j: len(j.history) >= 1)
    _kill(job)                                                        # SIGKILL: no chance to clean up
    job = wait_for(job.id, lambda j: j.finished, timeout=60)
    assert job.status == "failed" and "stopped unexpectedly" in job.message and "unchanged" in job.message
    assert registry_snapshot(weights) == before
    assert not [p for p in weights.iterdir() if p.name.startswith(".incoming")]
    assert not any((job.dir / d).exists() for d in store.TEMP_DIRS)

    film = write_png(tmp_path / "film.png", synthetic_film(np.random.default_rng(2), True, 64))
    capsys.readouterr()
    assert main(["predict", "--json", str(film)]) == 0               # the active model is still served
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "ok" and record["model_version"] == "base"

    again = launch.start_job(data, base="scratch", config=FAST, bootstrap=50)   # the dead worker's lock is free
    store.cancel_job(again.id)
    assert wait_for(again.id, lambda j: j.finished, timeout=120).status == "cancelled"


def test_worker_refuses_to_run_while_another_holds_the_training_lock(weights, data):
    root = weights / ".jobs"
    job_dir = root / "20990101-000000-abcdef"
    job_dir.mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "data_dir": str(data), "config": FAST,
                                                  "base": {"kind": "scratch"}, "weights_root": str(weights)}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "starting", "history": []}))
    lock = FileLock(str(root / store.TRAIN_LOCK))
    with lock.acquire(timeout=0):
        assert job_worker.run_worker(job_dir) == 1
    state = json.loads((job_dir / store.STATE).read_text())
    assert state["status"] == "failed" and "Another training job" in state["message"]


def test_start_refuses_bad_requests_before_any_process_starts(weights, data, tmp_path):
    few = make_dataset(tmp_path / "few", {"train": 4}, size=40)
    with pytest.raises(DatasetError, match="Too few training films"):
        launch.start_job(few, config=FAST)
    with pytest.raises(JobError, match="Unknown training setting"):
        launch.start_job(data, config={"epochs": 1, "learning_rate": 1})
    with pytest.raises(JobError, match="epochs"):
        launch.start_job(data, config={**FAST, "epochs": 0})
    with pytest.raises(JobError, match="base"):
        launch.start_job(data, base="yesterday", config=FAST)
    weights_file = weights / "base" / WEIGHTS_FILE
    weights_file.write_bytes(weights_file.read_bytes()[:-10])         # tampered base: never fine-tuned
    with pytest.raises(ModelLoadError, match="sha256"):
        launch.start_job(data, base="active", config=FAST)
    (weights / "ACTIVE").unlink()
    with pytest.raises(ModelLoadError, match="No active model"):
        launch.start_job(data, base="active", config=FAST)
    assert store.list_jobs() == []


def test_a_dead_worker_is_noticed_by_whoever_looks(weights, data):
    root = weights / ".jobs"
    job_dir = root / "20990101-000000-dead00"
    (job_dir / "upload").mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "config": FAST}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "running", "phase": "training", "history": []}))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    store.record_worker(job_dir, gone.pid)        # before it is reaped: a reused pid is then told apart
    gone.wait()
    job = store.get_job(job_dir.name)
    assert job.status == "failed" and "during training" in job.message
    assert not (job_dir / "upload").exists()
    assert store.running_job() is None


def test_a_stuck_cancel_never_signals_the_process_group_of_whoever_looks(tmp_path):
    """A worker record that names the looking process itself (or a process in its group) is not signalled as a
    group when a cancel is overdue: CI may run pytest as a group leader, and a signal to that group would end
    the whole run. A real worker leads its own session and still gets the signal."""
    script = f"""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pneumo_core.ops.jobs import store
job_dir = Path({str(tmp_path)!r}) / "20990101-000000-self00"
job_dir.mkdir()
(job_dir / store.SPEC).write_text(json.dumps({{"id": job_dir.name}}))
(job_dir / store.STATE).write_text(json.dumps({{"status": "running", "history": []}}))
store.record_worker(job_dir, os.getpid())
assert json.loads((job_dir / store.WORKER).read_text())["create_time"]     # identified: it could be signalled
(job_dir / store.CANCEL).write_text("")
old = time.time() - store.CANCEL_KILL_S - 5
os.utime(job_dir / store.CANCEL, (old, old))
assert os.getpgrp() == os.getpid()            # this process leads its group, as pytest may on CI
store._reconcile(job_dir)
print("survived")
"""
    looker = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            start_new_session=True)
    assert looker.returncode == 0 and "survived" in looker.stdout, (looker.returncode, looker.stderr[-2000:])

    same_group = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert not store._leads_another_group(os.getpid())
        assert not store._leads_another_group(same_group.pid)
        assert store._leads_another_group(worker.pid)
        for n, proc in enumerate((same_group, worker)):
            job_dir = tmp_path / f"20990101-000000-grp00{n}"
            job_dir.mkdir()
            (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name}))
            store.record_worker(job_dir, proc.pid)
            store._signal_group(job_dir, signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
        assert same_group.poll() is None                      # not a group leader: left alone
    finally:
        for proc in (same_group, worker):
            proc.kill()
            proc.wait()


def test_estimate_uses_reference_throughput_then_measured(weights, data):
    from pneumo_core.ingest.datacheck import validate_dataset

    report = validate_dataset(data)
    cfg = {"epochs": 10, "image_size": 224}
    cpu, basis = estimate.estimate_seconds(report, cfg, "cpu", cpu_threads=2)
    assert "img/s training at 224 px per 2 cores" in basis and "measured while checking these films" in basis
    # 40 training films x 10 epochs at 11 img/s is 36 s of training alone
    assert cpu > 40 * 10 / 11
    gpu, _ = estimate.estimate_seconds(report, cfg, "cuda")
    assert gpu < cpu
    half, _ = estimate.estimate_seconds(report, {**cfg, "image_size": 112}, "cpu", cpu_threads=2)
    assert half < cpu


def test_the_job_path_imports_nothing_the_gpu_machine_lacks():
    from test_boundaries import _run

    out = _run("import pneumo_core.ops.jobs.launch, pneumo_core.ops.jobs.uploads, pneumo_core.ops.jobs.worker\n"
               "import pneumo_core.cli.models, pneumo_core.ingest.datacheck, pneumo_core.cli.main\n"
               "from pneumo_core.model.predict import Predictor\nprint('ok')",
               {"streamlit", "pydicom", "pytorch_grad_cam", "pylibjpeg"})
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_estimate_prefers_a_pace_measured_on_this_machine_at_a_similar_size(weights, data):
    from pneumo_core.ingest.datacheck import validate_dataset

    report = validate_dataset(data)
    for job_id, size, pace in (("20990101-000000-000001", 224, 100.0), ("20990101-000000-000002", 32, 5000.0)):
        job_dir = weights / ".jobs" / job_id
        job_dir.mkdir(parents=True)
        (job_dir / store.SPEC).write_text(json.dumps({"id": job_id, "config": {"image_size": size}}))
        (job_dir / store.STATE).write_text(json.dumps({"status": "succeeded", "device_kind": "cpu",
                                                       "history": [{"epoch": 1, "images_per_s": pace}]}))
    cfg = {"epochs": 10, "image_size": 224}
    seconds, basis = estimate.estimate_seconds(report, cfg, "cpu", cpu_threads=2)
    assert "100 img/s measured at 224 px" in basis                  # the 32 px job's pace does not scale up
    reference, _ = estimate.estimate_seconds(report, cfg, "cuda")
    assert seconds > 40 * 10 / 100 and reference < seconds


def test_an_uploaded_archive_belongs_to_its_job_and_is_removed_when_it_ends(weights, data):
    from test_datacheck import zip_folder

    from pneumo_core.ingest.archives import extract_zip

    upload = uploads.new_upload_dir()
    root = extract_zip(zip_folder(data, "some-folder/"), upload)
    job = launch.start_job(root, base="scratch", config=SLOW, bootstrap=50, upload_dir=upload)
    assert not upload.exists() and (job.dir / "upload" / "uploaded" / "train").is_dir()
    assert job.spec["data_name"] == "uploaded archive" and "some-folder" not in json.dumps(job.spec)
    store.cancel_job(job.id)
    job = wait_for(job.id, lambda j: j.finished, timeout=120)
    assert job.status == "cancelled" and not (job.dir / "upload").exists()
    assert list((weights / ".jobs" / store.UPLOADS).iterdir()) == []


def test_estimate_counts_every_phase_and_the_guard_reads_whole_folders(weights, data, tmp_path):
    from pneumo_core.ingest.datacheck import validate_dataset

    report = validate_dataset(data)
    assert report.read_s and report.read_s > 0                       # the check timed its own decoding
    cfg = {"epochs": 3, "image_size": 128, "batch_size": 8}
    est = estimate.estimate_phases(report, cfg, "cpu", cpu_threads=2, film_types=None)
    assert list(est.phases) == [k for k, _ in store.PHASES]
    assert all(v > 0 for v in est.phases.values()) and est.seconds == pytest.approx(sum(est.phases.values()))
    assert est.seconds == pytest.approx(estimate.estimate_seconds(report, cfg, "cpu", cpu_threads=2)[0], rel=0.2)
    types = tmp_path / "film_types" / "frontal_chest_adult"
    types.mkdir(parents=True)
    for i in range(30):
        write_png(types / f"a{i}.png", synthetic_film(np.random.default_rng(i), 40))
    with_types = estimate.estimate_phases(report, cfg, "cpu", cpu_threads=2, film_types=types.parent)
    assert with_types.phases["guard"] > est.phases["guard"]           # the film-type check is counted
    assert with_types.phases["training"] == est.phases["training"]
    capped = estimate.estimate_phases(report, {**cfg, "max_images": 4}, "cpu", cpu_threads=2, film_types=None)
    assert capped.phases["training"] < est.phases["training"]
    assert capped.phases["guard"] == pytest.approx(est.phases["guard"])   # the guard reads all of train/
    more = estimate.estimate_phases(report, {**cfg, "epochs": 6}, "cpu", cpu_threads=2, film_types=None)
    assert more.phases["training"] == pytest.approx(2 * est.phases["training"])


def test_estimate_corrects_itself_from_this_machines_finished_jobs(weights, data):
    from pneumo_core.ingest.datacheck import validate_dataset

    report = validate_dataset(data)
    cfg = {"epochs": 3, "image_size": 128}
    plain = estimate.estimate_phases(report, cfg, "cpu", cpu_threads=2, film_types=None)
    job_dir = weights / ".jobs" / "20990101-000000-000003"
    job_dir.mkdir(parents=True)
    (job_dir / store.SPEC).write_text(json.dumps({"id": job_dir.name, "config": {"image_size": 32}, "estimate": {
        "phases": {"preparing": 10, "training": 100, "calibrating": 10, "guard": 20, "comparing": 10}}}))
    (job_dir / store.STATE).write_text(json.dumps({"status": "succeeded", "device_kind": "cpu", "history": [],
                                                   "phases": {"preparing": 10, "training": 200, "calibrating": 5,
                                                              "guard": 400, "comparing": 10}}))
    pace = estimate.phase_pace("cpu")
    assert pace == {"preparing": 1.0, "training": 2.0, "calibrating": 0.5, "guard": 4.0, "comparing": 1.0}
    assert estimate.phase_pace("cuda") == {}
    corrected = estimate.estimate_phases(report, cfg, "cpu", cpu_threads=2, film_types=None)
    for key, factor in pace.items():
        assert corrected.phases[key] == pytest.approx(plain.phases[key] * factor)
    assert "corrected by the time each phase took" in corrected.basis
    assert corrected.reference == pytest.approx(plain.phases)          # what later jobs are compared with

    # A later job, estimated with that correction, ran as corrected: the pace must stay (not fall back to 1
    # because actual / corrected estimate is 1), so it is taken against each job's uncorrected reference.
    shutil.rmtree(job_dir)
    later = weights / ".jobs" / "20990101-000000-000004"
    later.mkdir()
    (later / store.SPEC).write_text(json.dumps({"id": later.name, "config": {"image_size": 32}, "estimate": {
        "phases": {"preparing": 10, "training": 200, "calibrating": 5, "guard": 400, "comparing": 10},
        "reference": {"preparing": 10, "training": 100, "calibrating": 10, "guard": 100, "comparing": 10}}}))
    (later / store.STATE).write_text(json.dumps({"status": "succeeded", "device_kind": "cpu", "history": [],
                                                 "phases": {"preparing": 10, "training": 200, "calibrating": 5,
                                                            "guard": 400, "comparing": 10}}))
    assert estimate.phase_pace("cpu") == pace


def test_the_proposal_is_a_short_fine_tune_on_a_cpu_and_the_full_recipe_on_a_gpu(weights, data):
    from pneumo_core.ingest.datacheck import validate_dataset

    report = validate_dataset(data)
    card = json.loads((weights / "base" / CARD_FILE).read_text())
    base, cfg, est = estimate.proposed_job(report, "cpu")
    assert base == "active" and cfg["image_size"] == card["input"]["size"] and cfg["lr"] == 1e-4
    assert 1 <= cfg["epochs"] <= 5 and est.seconds <= estimate.CPU_FINE_TUNE_BUDGET_S
    assert est.seconds == pytest.approx(estimate.estimate_phases(report, cfg, "cpu").seconds)
    _, tight, tight_est = estimate.proposed_job(report, "cpu", budget_s=1)      # nothing fits: one epoch, capped
    assert tight["epochs"] == 1 and tight["max_images"] == 50
    base, full, _ = estimate.proposed_job(report, "cuda")
    assert base in ("imagenet", "scratch")
    recipe = card.get("training") or {}
    for key in ("epochs", "lr", "batch_size", "image_size"):
        if recipe.get(key) is not None:
            assert full[key] == recipe[key]
