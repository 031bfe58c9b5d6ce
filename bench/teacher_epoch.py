"""Benchmark: the teacher CNN's training epoch on one device, through kd-sweep's own training loop
(kd.train.run: CUDA graphs as configured), for its arithmetic settings side by side in one run:
float32 (TF32 on CUDA), channels-last, and bf16 autocast with channels-last; then, with --profile,
the kernels that take an eager epoch's GPU time (torch.profiler), to say what bounds the step.

    python bench/teacher_epoch.py --dataset fashion-mnist --data-root DIR --device cuda --profile

Prints each setting's median epoch seconds (the epochs after the first: warm-up and graph capture
are in the first) and its test accuracy after --epochs epochs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kd import data as kd_data, phases, train  # noqa: E402
from kd.config import make_config  # noqa: E402

VARIANTS = {"float32": {}, "channels-last": {"channels_last": True},
            "bf16 + channels-last": {"precision": "bf16", "channels_last": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also profile one eager epoch's kernels (CUDA)")
    args = ap.parse_args()
    phases.skip_dynamo_import()
    data = kd_data.load(args.dataset, args.data_root)
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in VARIANTS.items():
            config = make_config(dataset=args.dataset, method="teacher", epochs=args.epochs, **settings)
            r = train.run(config, Path(tmp) / name.replace(" ", ""), dataset=data, device=args.device)
            seconds = [h["seconds"] for h in r["history"]]
            print(f"{name:>22s}: epoch {statistics.median(seconds[1:] or seconds):.3f} s (first {seconds[0]:.3f} s), "
                  f"test accuracy {r['metrics']['test_accuracy']:.4f}", flush=True)
        if args.profile and args.device.startswith("cuda"):
            import torch
            from torch.profiler import ProfilerActivity, profile

            os.environ["KDSWEEP_CUDA_GRAPHS"] = "0"  # eager: every kernel launched, and seen, on its own
            config = make_config(dataset=args.dataset, method="teacher", epochs=1)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                train.run(config, Path(tmp) / "profiled", dataset=data, device=args.device)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
