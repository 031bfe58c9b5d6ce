"""Benchmark: kd-sweep's hand-made step replay (kd/graphs.py: a CUDA graph recorded after three
warm-up steps) against torch.compile(mode="reduce-overhead") of the same step, and eager steps, side
by side in one run, through kd-sweep's own training loop (kd.train.run_pack), for the teacher CNN
alone and a pack of 24 reference MLP students.

    python bench/compile_vs_graphs.py --dataset fashion-mnist --data-root DIR --device cuda

Prints, for each way, the first epoch's seconds (warm-up, recording or compiling included), the
median of the others, and the test accuracy; a way that fails says how. On a CPU "graphs" means the
FX-trace replay (KDSWEEP_CUDA_GRAPHS=trace) and reduce-overhead has no CUDA graphs to use: only the
GPU numbers answer the question.
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

from kd import data as kd_data, graphs, train  # noqa: E402
from kd.config import make_config  # noqa: E402


class CompiledStep:
    """A stand-in for kd.graphs.Step: full batches through torch.compile(mode="reduce-overhead")
    of the same step function (compiled at its first call), the short last batch eagerly."""

    def __init__(self, fn, batch: int, mode):
        self.fn, self.batch = fn, batch
        self.compiled = torch.compile(fn, mode="reduce-overhead", dynamic=False)

    def __call__(self, b: int) -> None:
        (self.compiled if b == self.batch else self.fn)(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ways", nargs="+", default=["eager", "graphs", "compile"])
    args = ap.parse_args()
    data = kd_data.load(args.dataset, args.data_root)
    units = {"teacher CNN": [make_config(dataset=args.dataset, method="teacher", epochs=args.epochs)],
             "24 MLP students": [make_config(dataset=args.dataset, method="scratch", epochs=args.epochs, seed=s)
                                 for s in range(24)]}
    replay = "1" if args.device.startswith("cuda") else "trace"
    step_class = graphs.Step
    with tempfile.TemporaryDirectory() as tmp:
        for unit, configs in units.items():
            for way in args.ways:
                os.environ[graphs.ENV] = {"eager": "0", "graphs": replay, "compile": "0"}[way]
                graphs.Step = CompiledStep if way == "compile" else step_class
                outs = [Path(tmp) / f"{unit}-{way}-{i}".replace(" ", "") for i in range(len(configs))]
                t0 = time.perf_counter()
                try:
                    results = train.run_pack(configs, outs, dataset=data, device=args.device)
                except Exception as e:  # a way that cannot run this step: say how
                    print(f"{unit:>16s}, {way:>7s}: failed after {time.perf_counter() - t0:.1f} s: "
                          f"{e.__class__.__name__}: {(str(e).splitlines() or [''])[0][:160]}", flush=True)
                    continue
                finally:
                    graphs.Step = step_class
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                seconds = [h["seconds"] for h in results[0]["history"]]
                print(f"{unit:>16s}, {way:>7s}: first epoch {seconds[0]:.3f} s, then {statistics.median(seconds[1:]):.3f} s "
                      f"(median), test accuracy {results[0]['metrics']['test_accuracy']:.4f}; "
                      f"{time.perf_counter() - t0:.1f} s in all", flush=True)


if __name__ == "__main__":
    main()
