"""Benchmark: the planner on a 100,000-point grid, and status and collect on 10,000 job results.

    python bench/plan_collect.py [--repeat 3]

Prints the median of the repeats. The job results are written in the real result.json
format (12 epochs of history each) into a temporary folder first; that part is not timed.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

from sweep import collect, plan, spec, state, status


def grid(name: str, alphas: int, temps: int, seeds: int) -> spec.Sweep:
    a = ", ".join(f"{(i + 1) / alphas:.6f}" for i in range(alphas))
    t = ", ".join(str(1 + i) for i in range(temps))
    s = ", ".join(str(i) for i in range(seeds))
    text = (f'name = "{name}"\ndataset = "mnist-5k"\nmethods = ["teacher", "scratch", "kd"]\nmax_jobs = 200000\n'
            f"[grid]\nalpha = [{a}]\ntemperature = [{t}]\nseed = [{s}]\n")
    return spec.parse(tomllib.loads(text))


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def fake_results(p: plan.Plan, folder: Path) -> None:
    rng = random.Random(0)
    for job in p.jobs:
        history = [{"epoch": e, "train_loss": rng.random(), "test_loss": rng.random(),
                    "test_accuracy": rng.uniform(0.9, 1.0), "seconds": rng.uniform(1, 2)} for e in range(1, 13)]
        result = {"config": job.config, "metrics": {k: history[-1][k] for k in ("test_accuracy", "test_loss", "train_loss")},
                  "history": history, "params": 1_238_730, "flops_per_sample": 2_475_840, "wall_seconds": 20.0,
                  "device": "cpu", "versions": {"python": "3.11", "torch": "2.14.1", "kd": "0.1.0", "git": None}}
        d = state.job_dir(folder, job)
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    sweep = grid("plan-bench", 100, 100, 10)
    seconds, p = median_time(lambda: plan.plan(sweep), args.repeat)
    print(f"plan:    {p.n_points:,} grid points -> {len(p.jobs):,} jobs in {seconds:.2f} s (median of {args.repeat})")

    sweep = grid("collect-bench", 100, 100, 1)
    p = plan.plan(sweep)
    p = plan.Plan(sweep=p.sweep, jobs=tuple(j for j in p.jobs if j.method == "kd"))  # 10,000 kd jobs
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / p.sweep.name
        fake_results(p, folder)
        seconds, states = median_time(lambda: status.job_states(p, folder), args.repeat)
        print(f"status:  {len(states):,} jobs ({sum(s.state == state.DONE for _, s in states):,} done) in "
              f"{seconds:.2f} s (median of {args.repeat})")
        seconds, c = median_time(lambda: collect.collect(p, folder), args.repeat)
        print(f"collect: {c.rows:,} job results (12 epochs each) -> results.parquet + epochs.parquet "
              f"in {seconds:.2f} s (median of {args.repeat})")


if __name__ == "__main__":
    main()
