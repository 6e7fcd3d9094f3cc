"""Training-step throughput of DenseNet-121 on this machine, per resolution and precision.

    python bench/train_throughput.py [--sizes 112,128,144] [--threads 2] [--batch 32] [--steps 6] [--json OUT]

One step = augmentation + mixup + forward + backward + AdamW update, as in
``pneumo_core.model.train`` (synthetic uint8 films, so no disk). Reports images per
second after two warm-up steps for: fp32, fp32 + channels_last, bf16 autocast,
and bf16 autocast + channels_last (bf16 rows only where the CPU has bf16
instructions, or on CUDA). Numbers are noisy on a shared machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pneumo_core.ingest.preprocess import normalise  # noqa: E402
from pneumo_core.model import augment as aug  # noqa: E402
from pneumo_core.model.network import build_densenet121, default_input_spec  # noqa: E402
from pneumo_core.model.train import _cpu_has_bf16, pick_device  # noqa: E402


def measure(size: int, bf16: bool, channels_last: bool, *, batch: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    net = build_densenet121().to(device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
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
    return batch * len(times) / sum(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="112,128,144")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
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
