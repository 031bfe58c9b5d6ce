"""Benchmark: GPU settings for one training epoch of the teacher CNN and of a pack of 24 students,
side by side in one run: fp32, TF32, bf16 autocast + channels-last, and torch.compile.

    python bench/gpu_habits.py --dataset fashion-mnist --data-root DIR

Prints seconds per epoch (median of the epochs after the first) and, for torch.compile, the
compile time that a 12-epoch job would have to win back.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from kd import data as kd_data, models


def epoch_times(model, x, y, epochs: int, bf16: bool, channels_last: bool) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, len(y) - 255, 256):
            xb = kd_data.to_float(x[i:i + 256])
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xb), y[i:i + 256])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-root")
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    d = kd_data.load(args.dataset, args.data_root)
    x, y = d.train_x.cuda(), d.train_y.cuda()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dataset} {len(y):,} images, batch 256")
    for name in ("mnist-cnn", "mnist-mlp"):
        rows = []
        for label, tf32, bf16, cl, compile_ in (("fp32", False, False, False, False), ("tf32", True, False, False, False),
                                               ("bf16 autocast + channels-last", True, True, name == "mnist-cnn", False),
                                               ("tf32 + torch.compile", True, False, False, True)):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            torch.manual_seed(0)
            model = models.build(name, 10, d.input_shape).cuda()
            if compile_:
                model = torch.compile(model)
            times = epoch_times(model, x, y, args.epochs, bf16, cl)
            first = times[0]
            steady = statistics.median(times[1:])
            rows.append((label, steady, first - steady if compile_ else None))
        print(f"\n{name}: seconds per epoch (median of epochs 2..{args.epochs})")
        base = rows[0][1]
        for label, steady, compile_cost in rows:
            extra = f"   compile cost {compile_cost:.1f} s (pays back after {compile_cost / max(base - steady, 1e-9):.0f} epochs)" \
                if compile_cost is not None and steady < base else (
                    f"   compile cost {compile_cost:.1f} s, no gain" if compile_cost is not None else "")
            print(f"  {label:32s} {steady:6.3f} s  ({base / steady:4.2f}x fp32){extra}")


if __name__ == "__main__":
    main()
