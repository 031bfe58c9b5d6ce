"""How a pack's speed and memory grow with its size: student-samples per second and peak memory of
the reference student's packed training step (kd.stack: the step kd-sweep runs, with the cached
teacher's logits and fused Adam), for pack sizes 1, 8, 24, 120, on one device.

    python bench/pack_scaling.py                       # this machine's CPU
    python bench/pack_scaling.py --device cuda --sizes 1 8 24 120 480

Each size runs in a fresh process (so that its peak memory is its own): some warm-up steps, then
``--steps`` timed ones; the median step time gives samples per second. What ``pack = "auto"``
(kd.config.AUTO_PACK) should be on this device is the smallest size within 5% of the best rate.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(size: int, device: str, steps: int, batch: int) -> dict:
    import torch

    sys.path.insert(0, str(HERE.parent))
    from kd import data as kd_data, models, phases
    from kd.losses import kd_loss
    from kd.stack import Stack
    from kd.train import pick_device

    phases.skip_dynamo_import()
    dev = pick_device(device)
    n_train = 4000
    x_all = torch.randint(0, 256, (n_train, 1, 28, 28), dtype=torch.uint8, device=dev)
    y_all = torch.randint(0, 10, (n_train,), device=dev)
    teacher = torch.randn(n_train, 10, device=dev)
    nets = []
    for s in range(size):
        torch.manual_seed(s)
        nets.append(models.build("mnist-mlp", 10, (1, 28, 28)).to(dev))
    stack = Stack(nets)
    del nets
    optimizer = phases.adam(list(stack.params.values()), 1e-3)
    alpha = torch.linspace(0.2, 1.0, size, device=dev)
    temperature = torch.linspace(1.0, 64.0, size, device=dev)
    stack.train()
    times = []
    for step in range(steps + 3):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        idx = torch.randint(0, n_train, (size, batch), device=dev)
        x = kd_data.to_float(x_all[idx])
        t, y = teacher[idx], y_all[idx]
        stack.backward(x, lambda z: kd_loss(z, t, y, alpha, temperature))
        optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[3:])
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"size": size, "step_ms": step_s * 1e3, "samples_per_s": size * batch / step_s, "peak_bytes": peak,
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 24, 120])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.device, args.steps, args.batch)))
        return
    rows = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--device", args.device,
                              "--steps", str(args.steps), "--batch", str(args.batch)],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
        if out.returncode != 0:
            sys.exit(f"pack of {size}: failed\n{out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"pack {size:4d}: step {r['step_ms']:8.1f} ms  {r['samples_per_s']:10,.0f} student-samples/s  "
              f"peak memory {r['peak_bytes'] / 2**30:6.2f} GiB  ({r['device']})", flush=True)
    best = max(r["samples_per_s"] for r in rows)
    pick = min(r["size"] for r in rows if r["samples_per_s"] >= 0.95 * best)
    print(f"best rate {best:,.0f} student-samples/s; the smallest pack within 5% of it: {pick}")


if __name__ == "__main__":
    main()
