"""Training-step throughput of DenseNet-121 on this machine, per resolution and precision.

    python bench/train_throughput.py [--sizes 112,128,144] [--threads 2] [--batch 32] [--steps 6] [--json OUT]

One step = augmentation + mixup + forward + backward + AdamW update, as in
``pneumo_core.model.train`` (synthetic uint8 films, so no disk). Reports images per
second after two warm-up steps for: fp32, fp32 + channels_last, bf16 autocast,
and bf16 autocast + channels_last (bf16 rows only where the CPU has bf16
instructions, or on CUDA). Numbers are noisy on a shared machine: run it alone.

    python bench/train_throughput.py --layouts 1x2,2x1 [--sizes 64] [--batch 16] [--steps 6] [--json OUT]

Processes x threads (issue #18): the same global batch in P processes of T threads each, under torchrun with
DistributedDataParallel (gloo on CPU, NCCL on GPUs), each rank stepping on its share of the batch, as
``fit()`` does. Reports global images per second per layout; says so when there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pneumo_core.ingest.preprocess import normalise  # noqa: E402
from pneumo_core.model import augment as aug  # noqa: E402
from pneumo_core.model.network import build_densenet121, default_input_spec  # noqa: E402
from pneumo_core.model.train import _cpu_has_bf16, pick_device  # noqa: E402


def measure(size: int, bf16: bool, channels_last: bool, *, batch: int, steps: int, device: torch.device,
            world: int = 1) -> float:
    """Images per second of the whole (global) batch; under torchrun each rank steps on ``batch / world``
    films through DistributedDataParallel."""
    torch.manual_seed(0)
    net = build_densenet121().to(device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        batch //= world
    g = torch.Generator(device=device).manual_seed(0)
    films = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
    labels = (torch.arange(batch, device=device) % 2).float()
    spec = default_input_spec(size)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        x = aug.augment(films.unsqueeze(1).float().div(255.0), aug.AugmentConfig(), g)
        x, y = aug.mixup(x, labels, 0.2, g)
        x = normalise(x, spec)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.binary_cross_entropy_with_logits(net(x).float().squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch * world * len(times) / sum(times)


def rank_main(args: argparse.Namespace) -> None:
    """One process of a layout (under torchrun when it has several): measure, rank 0 writes the result."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(args.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.set_num_threads(args.threads)
    size = int(args.sizes.split(",")[0])
    ips = measure(size, False, device.type == "cuda", batch=args.batch, steps=args.steps, device=device, world=world)
    if int(os.environ.get("RANK", 0)) == 0:
        Path(args.rank_out).write_text(json.dumps({"images_per_s": ips, "device": str(device)}))
    if world > 1:
        dist.destroy_process_group()


def compare_layouts(args: argparse.Namespace) -> dict:
    """Each layout PxT: P processes (torchrun, DDP) of T threads, the same global batch."""
    gpu = torch.cuda.is_available()
    print(f"{'GPUs: ' + str(torch.cuda.device_count()) if gpu else 'No GPU on this machine'}: "
          f"{'NCCL' if gpu else 'CPU processes with gloo'}; global batch {args.batch} at {args.sizes.split(',')[0]} px, "
          f"{args.steps} timed steps after 2 warm-up steps, fp32.", flush=True)
    rows = []
    for layout in args.layouts.split(","):
        procs, threads = (int(v) for v in layout.lower().split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rank0.json"
            worker = [__file__, "--rank-worker", "--rank-out", str(out), "--threads", str(threads), "--sizes",
                      args.sizes, "--batch", str(args.batch), "--steps", str(args.steps), "--device", args.device]
            cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
                    *worker] if procs > 1 else [sys.executable, *worker])
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                           stdout=subprocess.DEVNULL)
            res = json.loads(out.read_text())
        row = {"processes": procs, "threads_each": threads, "images_per_s": round(res["images_per_s"], 1),
               "wall_s_with_startup": round(time.perf_counter() - t, 1), "device": res["device"]}
        rows.append(row)
        print(f"{procs} process(es) x {threads} thread(s): {row['images_per_s']:7.1f} img/s "
              f"({row['wall_s_with_startup']} s with start-up)", flush=True)
    return {"gpu": gpu, "batch": args.batch, "size": int(args.sizes.split(",")[0]), "steps": args.steps,
            "torch": torch.__version__, "layouts": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="112,128,144")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    ap.add_argument("--layouts", help="processes x threads to compare, e.g. 1x2,2x1 (DDP under torchrun)")
    ap.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        return rank_main(args)
    if args.layouts:
        out = compare_layouts(args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        return None
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    bf16_ok = device.type == "cuda" or _cpu_has_bf16()
    combos = [(False, False), (False, True)] + ([(True, False), (True, True)] if bf16_ok else [])
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        for bf16, cl in combos:
            ips = measure(size, bf16, cl, batch=args.batch, steps=args.steps, device=device)
            row = {"size": size, "precision": "bf16 autocast" if bf16 else "fp32", "channels_last": cl,
                   "images_per_s": round(ips, 1)}
            rows.append(row)
            print(f"{size:4d} px  {row['precision']:13}  channels_last={str(cl):5}  {ips:7.1f} img/s", flush=True)
    out = {"device": str(device), "threads": args.threads, "batch": args.batch, "steps": args.steps,
           "torch": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
