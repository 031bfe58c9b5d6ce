"""Benchmark: one unit's training epochs through kd-sweep's own loop (kd.train.run_pack), several
ways side by side in one run, for the teacher CNN alone, a pack of 24 reference MLP students, and
(--units cnn-pack) five CNNs of the teacher's architecture in one pack, seeds 0-4, as the 5-seed
grid's teachers would train packed: against five times the teacher's epoch, what the pack's
members on streams of their own gain on a GPU:

  eager                 every step launched op by op (KDSWEEP_CUDA_GRAPHS=0)
  graphs                kd's step replay (kd/graphs.py: a CUDA graph; on a CPU the FX-trace replay)
  compile               torch.compile(mode="reduce-overhead") of the same step instead
  channels-last         graphs, the model channels-last (a setting: packs of one)
  bf16-channels-last    graphs, bf16 autocast and channels-last (settings: packs of one)
  graphs-ops-rng        graphs, dropout masks from kd.rng's tensor operations, not its fused CUDA kernel
  graphs-timed-conv     graphs, cuDNN's convolution algorithms timed, not guessed (KDSWEEP_CUDNN_BENCHMARK=1)
  graphs-torch-cnn      graphs, torch's ReLU and max-pool, NCHW inputs (KDSWEEP_FUSED_CNN=0), where by
                        default on CUDA kd.pool's fused kernels and channels-last inputs
  graphs-fused-pool     graphs, kd.pool's kernels, NCHW inputs
  graphs-cl-input       graphs, torch's ReLU and max-pool, channels-last inputs

    python bench/epoch_ways.py --dataset fashion-mnist --data-root DIR --device cuda
    python bench/epoch_ways.py --units teacher --ways graphs channels-last bf16-channels-last --profile ...

Prints, for each unit and way, the first epoch's seconds (warm-up, recording or compiling
included), the median of the others, and the test accuracy; a way that fails says how. --profile
adds the kernels of the teacher's eager epoch (torch.profiler, CUDA; --profile-unit another unit's). On a CPU reduce-overhead has no
CUDA graphs to use: only a GPU answers graphs against compile.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kd import data as kd_data, graphs, phases, pool, rng, train  # noqa: E402
from kd.config import make_config, packable  # noqa: E402

STEP_CLASS = graphs.Step
WAYS = {"eager": {}, "graphs": {}, "compile": {}, "channels-last": {"channels_last": True},
        "bf16-channels-last": {"precision": "bf16", "channels_last": True},
        "graphs-ops-rng": {}, "graphs-timed-conv": {}, "graphs-torch-cnn": {}, "graphs-fused-pool": {},
        "graphs-cl-input": {}}  # way -> the settings it adds


class CompiledStep:
    """A stand-in for kd.graphs.Step: full batches through torch.compile(mode="reduce-overhead")
    of the same step function (compiled at its first call), the short last batch eagerly."""

    def __init__(self, fn, batch: int, mode):
        self.fn, self.batch = fn, batch
        self.compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

    def __call__(self, b: int) -> None:
        (self.compiled if b == self.batch else self.fn)(b)


def timed(unit: str, way: str, configs, out: Path, data, device: str) -> None:
    """Train ``configs`` one way into ``out`` and print its epochs' seconds and accuracy."""
    os.environ[graphs.ENV] = "0" if way in ("eager", "compile") else "1" if device.startswith("cuda") else "trace"
    os.environ["KDSWEEP_CUDNN_BENCHMARK"] = "1" if way == "graphs-timed-conv" else "0"
    os.environ["KDSWEEP_FUSED_CNN"] = "0" if way == "graphs-torch-cnn" else "1"
    fused, fused_pool, restride = rng.FUSED["ok"], pool.FUSED["ok"], pool.channels_last
    if way == "graphs-ops-rng":
        rng.FUSED["ok"] = False
    if way == "graphs-cl-input":
        pool.FUSED["ok"] = False  # torch's ops in the fused modules' place
    if way == "graphs-fused-pool":
        pool.channels_last = lambda x: x
    graphs.Step = CompiledStep if way == "compile" else STEP_CLASS
    t0 = time.perf_counter()
    try:
        results = train.run_pack(configs, [out / f"{i}" for i in range(len(configs))], dataset=data, device=device)
    except Exception as e:  # a way that cannot run this step: say how
        print(f"{unit:>10s}, {way:>19s}: failed after {time.perf_counter() - t0:.1f} s: "
              f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:160]}", flush=True)
        return
    finally:
        graphs.Step = STEP_CLASS
        rng.FUSED["ok"], pool.FUSED["ok"], pool.channels_last = fused, fused_pool, restride
    seconds = [h["seconds"] for h in results[0]["history"]]
    print(f"{unit:>10s}, {way:>19s}: first epoch {seconds[0]:.3f} s, then {statistics.median(seconds[1:] or seconds):.3f} s "
          f"(median), test accuracy {results[0]['metrics']['test_accuracy']:.4f}; {time.perf_counter() - t0:.1f} s in all",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--units", nargs="+", choices=["teacher", "students", "cnn-pack", "students-120"],
                    default=["teacher", "students"])
    ap.add_argument("--ways", nargs="+", choices=list(WAYS), default=["eager", "graphs", "compile"])
    ap.add_argument("--profile", action="store_true", help="also profile the teacher's eager epoch's kernels (CUDA)")
    ap.add_argument("--profile-unit", choices=["teacher", "students", "cnn-pack", "students-120"], default="teacher",
                    help="the unit --profile profiles (default: the teacher)")
    args = ap.parse_args()
    if "compile" not in args.ways:
        phases.skip_dynamo_import()  # as kd-sweep's workers do (it would have the compiler trace the optimiser)
    data = kd_data.load(args.dataset, args.data_root)
    units = {"teacher": [{"method": "teacher"}], "students": [{"method": "scratch", "seed": s} for s in range(24)],
             "cnn-pack": [{"method": "scratch", "model": "mnist-cnn", "seed": s} for s in range(5)],
             "students-120": [{"method": "scratch", "seed": s} for s in range(120)]}
    with tempfile.TemporaryDirectory() as tmp:
        for unit in args.units:
            for way in args.ways:
                configs = [make_config(dataset=args.dataset, epochs=args.epochs, **member, **WAYS[way])
                           for member in units[unit]]
                if len(configs) > 1 and not packable(configs[0].to_dict()):
                    print(f"{unit:>10s}, {way:>19s}: not run (its settings train a job alone, not in a pack)")
                    continue
                timed(unit, way, configs, Path(tmp) / f"{unit}-{way}", data, args.device)
        if args.profile and args.device.startswith("cuda"):
            from torch.profiler import ProfilerActivity, profile

            os.environ[graphs.ENV] = "0"  # eager: every kernel launched, and seen, on its own
            configs = [make_config(dataset=args.dataset, epochs=1, **member) for member in units[args.profile_unit]]
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                train.run_pack(configs, [Path(tmp) / f"profiled{i}" for i in range(len(configs))], dataset=data,
                               device=args.device)
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
