"""Training in several processes (issue #18), on CPU: torchrun, gloo, 2 processes of 1 thread, tiny synthetic data.
Every rank ends with the same weights; two processes sharing a global batch train like one; only rank 0 writes;
a rank that dies fails the run and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from torch.utils.data import DistributedSampler

from test_jobs import SLOW, data, registry_snapshot, wait_for, weights  # noqa: F401 - fixtures

from pneumo_core.cli.main import without_nproc
from pneumo_core.errors import SettingsError
from pneumo_core.model.distributed import World, check_world, shard, torchrun_command
from pneumo_core.ops import audit
from pneumo_core.ops.jobs import launch, store

ROOT = Path(__file__).resolve().parents[1]
# Two processes of one thread each, no augmentation or mixup (they draw per rank), EMA on.
DDP_FAST = dict(epochs=2, batch_size=8, image_size=32, device="cpu", bf16=False, channels_last=False, workers=1,
                max_images=16, augment="none", mixup_alpha=0.0, threads=1)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _run(cmd: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, killed with every process it started if it outlives ``timeout``."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out)
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process under it (torchrun starts each rank in a session of its own)."""
    try:
        under = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        under = []
    for p in [*under]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    psutil.wait_procs(under, timeout=10)


def _fit(nproc: int, data: Path, out: Path, report: Path, ckpt: Path | None = None, env: dict | None = None,
         **over) -> dict[int, dict]:
    """fit() in ``nproc`` processes; each rank's chosen weights, history and card (empty but on rank 0)."""
    report.mkdir(parents=True, exist_ok=True)
    args = [str(ROOT / "tests" / "ddp_fit.py"), str(data), str(out), str(report), json.dumps({**DDP_FAST, **over})]
    args += [str(ckpt)] if ckpt else []
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
           if nproc > 1 else [sys.executable, *args])
    res = _run(cmd, **(env or {}))
    assert res.returncode == 0, res.stdout[-3000:]
    return {r: torch.load(report / f"rank{r}.pt", weights_only=False) for r in range(nproc)}


def test_a_rank_takes_the_shard_distributed_sampler_would_give_it():
    order = torch.randperm(11)
    for rank in (0, 1, 2):
        sampler = DistributedSampler(range(11), num_replicas=3, rank=rank, shuffle=False)
        assert shard(order, World(rank, 3)).tolist() == [int(order[i]) for i in sampler]
    assert torch.equal(shard(order, World()), order)


def test_a_batch_that_does_not_split_and_sync_bn_on_cpu_are_refused_before_any_work():
    cpu = torch.device("cpu")
    with pytest.raises(SettingsError, match="multiple of the number of processes"):
        check_world(World(0, 2), 9, cpu, False)
    with pytest.raises(SettingsError, match="SyncBatchNorm needs GPUs"):
        check_world(World(1, 2), 8, cpu, True)
    check_world(World(), 9, cpu, True)                # one process: nothing to split, nothing to synchronise


def test_nproc_is_taken_off_the_command_torchrun_runs():
    argv = ["train", "--data", "d", "--nproc", "2", "--out", "o", "--nproc=3", "--epochs", "1"]
    assert without_nproc(argv) == ["train", "--data", "d", "--out", "o", "--epochs", "1"]
    assert torchrun_command(2, ["train"])[1:] == ["-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node=2", "--module", "pneumo_core", "train"]


@pytest.fixture(scope="module")
def two_ranks(synthetic_data, tmp_path_factory):
    """The tiny DenseNet run in 2 processes: the folder it ran in, each rank's report."""
    tmp = tmp_path_factory.mktemp("ddp")
    return tmp, _fit(2, synthetic_data, tmp / "two", tmp / "two_report")


def test_every_rank_ends_with_the_same_weights_and_selection(two_ranks):
    _, ranks = two_ranks
    r0, r1 = ranks[0], ranks[1]
    assert r0["selected"].keys() == r1["selected"].keys()
    assert all(torch.equal(r0["selected"][k], r1["selected"][k]) for k in r0["selected"])   # BatchNorm's too
    assert r0["history"] == r1["history"]                      # metrics and selection made once, shared


def test_two_processes_train_like_one_with_the_same_global_batch(synthetic_data, tmp_path):
    # BatchNorm normalises each rank's 4 films apart from the other 4 (SyncBatchNorm needs GPUs), which alone
    # moves the loss as much as another seed does; with a batch-independent norm the split must not matter.
    group = {"DDP_FIT_NORM": "group"}
    two = _fit(2, synthetic_data, tmp_path / "two", tmp_path / "r2", env=group)[0]["history"]
    one = _fit(1, synthetic_data, tmp_path / "one", tmp_path / "r1", env=group)[0]["history"]
    assert [h["train_loss"] for h in two] == pytest.approx([h["train_loss"] for h in one], rel=1e-4, abs=1e-5)
    assert [h["val_auc"] for h in two] == pytest.approx([h["val_auc"] for h in one], abs=0.02)


def test_a_run_stopped_in_one_process_resumes_in_two(synthetic_data, tmp_path):
    ck = tmp_path / "ck"
    res = _run([sys.executable, str(ROOT / "tests" / "ddp_fit.py"), str(synthetic_data), str(tmp_path / "m"),
                str(tmp_path), json.dumps(DDP_FAST), str(ck)], DDP_FIT_STOP_AFTER="1")
    assert res.returncode == 0 and not (tmp_path / "m").exists(), res.stdout[-3000:]
    first = torch.load(ck / "last.pt", weights_only=False)
    assert (first["epoch"], first["world_size"]) == (1, 1)
    ranks = _fit(2, synthetic_data, tmp_path / "m", tmp_path / "r", ckpt=ck)
    assert [h["epoch"] for h in ranks[0]["history"]] == [1, 2]
    assert ranks[0]["history"][0] == first["history"][0]               # epoch 1 as the single process left it
    assert all(torch.equal(ranks[0]["selected"][k], ranks[1]["selected"][k]) for k in ranks[0]["selected"])
    assert ranks[0]["card"]["training"]["processes"]["world_size"] == 2
    assert torch.load(ck / "last.pt", weights_only=False)["world_size"] == 2


def test_only_rank_0_writes_and_the_card_says_how_it_was_trained(two_ranks):
    tmp, ranks = two_ranks
    assert ranks[1]["card"] == {} and ranks[0]["card"]["training"]["processes"] == {
        "world_size": 2, "backend": "gloo", "global_batch": 8, "per_rank_batch": 4, "lr": 1e-3, "sync_bn": False}
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("two")) == ["two", "two_report"]
    assert not [p for p in tmp.iterdir() if p.name.startswith(".")]          # no staging folder of any rank


def _start_train(data: Path, tmp: Path) -> tuple[subprocess.Popen, dict[int, psutil.Process]]:
    """``train --nproc 2`` on the command line, long enough to be stopped; returns once the first epoch's
    checkpoint is written, with torchrun's process and its ranks' (by RANK)."""
    cmd = [sys.executable, "-m", "pneumo_core", "train", "--nproc", "2", "--data", str(data), "--out", str(tmp / "out"),
           "--epochs", "200", "--batch-size", "8", "--image-size", "32", "--device", "cpu",
           "--max-images", "16", "--threads", "1", "--checkpoint-dir", str(tmp / "ck"), "--no-calibrate", "--no-guard"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 90
    while not (tmp / "ck" / "last.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_group(proc)
            pytest.fail(f"training did not reach its first checkpoint: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    ranks = {int(p.environ().get("RANK", -1)): p for p in psutil.Process(proc.pid).children(recursive=True)
             if "RANK" in p.environ()}
    assert sorted(ranks) == [0, 1]
    return proc, ranks


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_killed_rank_fails_the_run_names_the_rank_and_writes_nothing(synthetic_data, tmp_path, monkeypatch):
    registry = tmp_path / "weights"
    (registry / "v1").mkdir(parents=True)
    (registry / "v1" / "model_card.json").write_text("{}")
    (registry / "ACTIVE").write_text("v1\n")
    before = _tree(registry)
    monkeypatch.setenv("PNEUMO_WEIGHTS_DIR", str(registry))
    proc, ranks = _start_train(synthetic_data, tmp_path)
    try:
        ranks[1].kill()
        out, _ = proc.communicate(timeout=90)
    finally:
        _kill_group(proc)
    assert proc.returncode != 0
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", out), out[-3000:]      # torchrun's summary names it
    assert not ranks[0].is_running()
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _tree(registry) == before


def test_a_cancel_stops_every_rank(synthetic_data, tmp_path):
    proc, ranks = _start_train(synthetic_data, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)                # what a job's cancel sends its process group
        proc.communicate(timeout=90)
    finally:
        _kill_group(proc)
    assert proc.returncode != 0
    gone, alive = psutil.wait_procs(list(ranks.values()), timeout=10)
    assert not alive
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _job_ranks(job) -> dict[int, psutil.Process]:
    """The ranks of a job's worker (torchrun, whose pid worker.json records)."""
    pid = json.loads((job.dir / store.WORKER).read_text())["pid"]
    return {int(p.environ()["RANK"]): p for p in psutil.Process(pid).children(recursive=True) if "RANK" in p.environ()}


def test_a_job_whose_rank_dies_fails_cleanly_and_leaves_the_registry_untouched(weights, data):
    before = registry_snapshot(weights)
    job = launch.start_job(data, base="active", config=SLOW, bootstrap=50, nproc=2)
    assert job.spec["nproc"] == 2
    ranks: dict[int, psutil.Process] = {}
    try:
        wait_for(job.id, lambda j: len(j.history) >= 1)
        ranks.update(_job_ranks(job))
        assert sorted(ranks) == [0, 1]
        agent = psutil.Process(json.loads((job.dir / store.WORKER).read_text())["pid"])
        ranks[1].kill()
        job = wait_for(job.id, lambda j: j.finished, timeout=120)
        agent.wait(timeout=60)                  # torchrun writes its report once rank 0 has ended
    finally:
        for p in ranks.values():                # torchrun starts each rank in a session of its own
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    assert job.status == "failed" and "unchanged" in job.message, job.message
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", job.log_path.read_text()), job.log_tail()
    assert registry_snapshot(weights) == before
    assert not any((job.dir / d).exists() for d in store.TEMP_DIRS)
    assert [e["result"] for e in audit.events(actions=["training_finished"])] == ["failed"]   # rank 0's, once

