"""Benchmark: the same KD grid two ways in one run, on the same machine, and their ratio.

  (a) naive: one process per grid point (bench/naive_kd.py: DataLoader, teacher forward every step)
  (b) kd-sweep: `kdsweep run` on the same grid, students packed, teacher logits cached

    python bench/kd_grid.py                                  # 24 kd students of the reference grid,
                                                             # mnist-5k, 2 epochs, this machine's CPU
    python bench/kd_grid.py --dataset fashion-mnist --epochs 12 --full-grid --device cuda --naive-sample 3

--full-grid times the whole reference grid end to end for kd-sweep (teacher, scratch and 24
students); the naive side then also trains its teacher and scratch student. --naive-sample K
runs only K of the naive students and scales their mean time to all of them (said in the output).

    python bench/kd_grid.py --compare-with HEAD~3 --repeat 3   # kd-sweep now against an earlier commit

--compare-with REV times only kd-sweep's side, this tree's code against commit REV's (checked out
into a temporary git worktree), alternating, ``--repeat`` times each on the same teacher, and prints
the medians and their ratio: a regression check, side by side in one run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALPHAS, TEMPS = [0.2, 0.5, 0.8, 1.0], [1, 2, 4, 16, 32, 64]


def sh(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return p


def matmul_gflops(device: str) -> float:
    import torch

    n = 8192 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)  # float32, TF32 as configured
    times = []
    for _ in range(7):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times[2:]) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-grid", action="store_true")
    ap.add_argument("--naive-sample", type=int, default=0, help="run only this many naive students (0: all)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive runs")
    ap.add_argument("--jobs", type=int, default=1, help="kd-sweep's processes at once (kdsweep run -j)")
    ap.add_argument("--compare-with", metavar="REV", help="time kd-sweep against commit REV's kd-sweep instead")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side with --compare-with (medians)")
    args = ap.parse_args()

    import torch

    from kd import data as kd_data, models
    from sweep import api, state

    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent}:{os.environ.get('PYTHONPATH', '')}", "TQDM_DISABLE": "1"}
    teacher_epochs = args.epochs if args.full_grid else args.teacher_epochs
    sweep_file = tmp / "bench.toml"
    sweep_file.write_text(f'name = "bench"\ndataset = "{args.dataset}"\n'
                          f'methods = {json.dumps(["teacher", "scratch", "kd"] if args.full_grid else ["kd"])}\n'
                          f"[train]\nepochs = {args.epochs}\n[teacher]\nepochs = {teacher_epochs}\n"
                          f"[grid]\nalpha = {ALPHAS}\ntemperature = {TEMPS}\n")
    plan = api.plan(sweep_file)
    results = tmp / "results"
    folder = results / "bench"
    run = [sys.executable, "-m", "sweep.cli", "-q", "run", str(sweep_file), "--results", str(results),
           "--device", args.device, "--jobs", str(args.jobs)] + (["--data-root", args.data_root] if args.data_root else [])
    teacher = next(j for j in plan.jobs if j.method == "teacher")
    d = kd_data.load(args.dataset, args.data_root)
    n_train = len(d.train_y) - len(d.train_y) % 256
    print(f"grid: {sum(j.method == 'kd' for j in plan.jobs)} kd students, {args.epochs} epochs, {args.dataset} "
          f"({len(d.train_y):,} train images), device {args.device}"
          + (", whole grid end to end (teacher + scratch + students)" if args.full_grid else ""))

    # (b) kd-sweep
    if not args.full_grid:  # the teacher is trained first, untimed, and shared by both sides
        state.write_plan(folder, plan)  # its folder and config, as `kdsweep run` writes them
        sh([sys.executable, "-m", "sweep.worker", str(state.job_dir(folder, teacher)), "--device", args.device]
           + (["--data-root", args.data_root] if args.data_root else []), env)
    if args.compare_with:
        return compare_versions(args, run, results, folder, env)
    t0 = time.perf_counter()
    sh(run, env)
    ours = time.perf_counter() - t0
    teacher_model = state.job_dir(folder, teacher) / "model.pt"
    done = [state.read_json(state.job_dir(folder, j) / "result.json") for j in plan.jobs]
    ours_teacher_images = sum(r.get("teacher_forward_images", 0) / r.get("pack_size", 1) for r in done)

    # (a) naive
    naive_base = [sys.executable, str(HERE / "naive_kd.py"), "--dataset", args.dataset, "--epochs", str(args.epochs),
                  "--device", args.device, "--workers", str(args.workers)] + (
                      ["--data-root", args.data_root] if args.data_root else [])
    points = [(a, t) for a in ALPHAS for t in TEMPS]
    sample = points if not args.naive_sample else points[:: max(1, len(points) // args.naive_sample)][: args.naive_sample]
    runs = []
    t0 = time.perf_counter()
    extra = 0.0
    if args.full_grid:
        for method in ("teacher", "scratch"):
            t1 = time.perf_counter()
            sh(naive_base + ["--method", method], env)
            extra += time.perf_counter() - t1
    for a, t in sample:
        out = sh(naive_base + ["--teacher", str(teacher_model), "--alpha", str(a), "--temperature", str(t)], env)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    measured = time.perf_counter() - t0
    per_student = (measured - extra) / len(sample)
    naive = extra + per_student * len(points)
    naive_teacher_images = statistics.mean(r["teacher_images"] for r in runs) * len(points)

    student = models.build("mnist-mlp", 10, d.input_shape)
    from kd.train import flops_per_sample

    fwd = flops_per_sample(student, d.input_shape, torch.device("cpu"))
    samples = len(points) * args.epochs * n_train
    from kd.train import pick_device

    pick_device(args.device)  # the same TF32 setting the runs had
    peak = matmul_gflops(args.device)
    note = "" if len(sample) == len(points) else f"  ({len(sample)} of {len(points)} naive students run, mean scaled)"
    print(f"naive (one process per point, DataLoader, teacher every step): {naive:8.1f} s{note}")
    print(f"kd-sweep run (packed students, cached teacher logits):           {ours:8.1f} s")
    print(f"speed-up: {naive / ours:.1f}x")
    split = {}
    for job, r in zip(plan.jobs, done):
        if job.method == "teacher" and not args.full_grid:
            continue  # trained before the clock started
        key = f"{job.method} x{r.get('pack_size', 1)}" if job.method == "kd" else job.method
        split[key] = sum(h["seconds"] for h in r["history"])  # epochs' time: training and evaluation
    print("kd-sweep epochs' time per unit: " + ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
          + "; the rest is process start, data loading, teacher cache and checkpoints")
    print(f"student-samples/s: naive {samples / (per_student * len(points)):,.0f}   kd-sweep {samples / ours:,.0f}")
    print(f"teacher forward images: naive {naive_teacher_images:,.0f}   kd-sweep {ours_teacher_images:,.0f}  "
          f"({naive_teacher_images / max(ours_teacher_images, 1):.0f}x fewer)")
    print(f"student training arithmetic: {3 * fwd * samples / 1e12:.2f} TFLOP; kd-sweep reached "
          f"{3 * fwd * samples / ours / 1e9:,.0f} GFLOP/s = {3 * fwd * samples / ours / 1e9 / peak:.1%} of this "
          f"machine's measured float32 matmul rate ({peak:,.0f} GFLOP/s)")
    accs = [r["metrics"]["test_accuracy"] for r in done if r["config"]["method"] == "kd"]
    print(f"mean kd student accuracy: naive {statistics.mean(r['test_accuracy'] for r in runs):.4f}  "
          f"kd-sweep {statistics.mean(accs):.4f}")
    shutil.rmtree(tmp, ignore_errors=True)


def compare_versions(args, run: list[str], results: Path, folder: Path, env: dict) -> None:
    """kd-sweep's side with this tree's code and with commit ``args.compare_with``'s, alternating."""
    old_tree = Path(tempfile.mkdtemp(prefix="kd-bench-rev-")) / "tree"
    subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", "-q", str(old_tree),
                    args.compare_with], check=True)
    sides = {f"{args.compare_with}": old_tree, "this tree": HERE.parent}
    times: dict[str, list[float]] = {k: [] for k in sides}
    start = results.parent / "start"
    shutil.copytree(folder, start / "bench")  # the trained teacher: every run starts from it
    try:
        for rep in range(args.repeat):
            for name, tree in sides.items():
                shutil.rmtree(results, ignore_errors=True)
                shutil.copytree(start, results)
                side_env = {**env, "PYTHONPATH": str(tree)}
                t0 = time.perf_counter()
                subprocess.run(run, env=side_env, cwd=results.parent, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
                print(f"run {rep + 1}: {name:>12s} {times[name][-1]:6.1f} s", flush=True)
    finally:
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(old_tree)], check=False)
    (old, old_t), (new, new_t) = ((k, statistics.median(v)) for k, v in times.items())
    print(f"median of {args.repeat}: {old} {old_t:.1f} s, this tree {new_t:.1f} s: "
          f"this tree takes {new_t / old_t:.2f}x the time of {old}")


if __name__ == "__main__":
    main()
