"""Benchmark: the same KD grid three ways in one run, on the same machine, and their ratios.

  (a) kd-sweep: `kdsweep run` on the grid, students packed, teacher logits cached
  (b) the reference study's loop: one process (a notebook) training one student after another,
      the teacher's forward pass at every step (bench/reference_loop.py)
  (c) one process per grid point, as one job per point pays (bench/naive_kd.py: DataLoader,
      teacher forward every step)
  and the floor: kd-sweep's arithmetic at this machine's measured matmul rate.

    python bench/kd_grid.py --repeat 3                       # 24 kd students of the reference grid,
                                                             # mnist-5k, 2 epochs, this machine's CPU
    python bench/kd_grid.py --dataset fashion-mnist --epochs 12 --full-grid --device cuda --naive-sample 3 \
        --reference-sample 3

--full-grid times the whole reference grid end to end for kd-sweep (teacher, scratch and 24
students); the naive side then also trains its teacher and scratch student. --naive-sample K
runs only K of the naive students and scales their mean time to all of them (said in the output);
--reference-sample K likewise runs K of the reference loop's students and scales their time.

    python bench/kd_grid.py --compare-with HEAD~3 --repeat 3   # kd-sweep now against an earlier commit

--repeat N runs the three sides N times, alternating, and prints the medians. --compare-with REV
times only kd-sweep's side, this tree's code against commit REV's (checked out into a temporary
git worktree), alternating, ``--repeat`` times each on the same teacher, and prints the medians
and their ratio: a regression check, side by side in one run.
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


def training_flops(model, input_shape: tuple[int, ...], dev) -> int:
    """A training step's arithmetic per sample: the forward pass, then each layer's weight gradient
    (as much as its forward) and its input gradient (as much again), except the first weight
    layer's input gradient, which no one computes (its input is data, not a parameter's output)."""
    from torch import nn

    from kd.train import flops_per_sample

    layers = list(model.children())
    first = next(i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d)))
    first_fwd = flops_per_sample(nn.Sequential(*layers[:first + 1]), input_shape, dev)
    return 3 * flops_per_sample(model, input_shape, dev) - first_fwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--data-root")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--full-grid", action="store_true")
    ap.add_argument("--naive-sample", type=int, default=0, help="run only this many naive students (0: all)")
    ap.add_argument("--reference-sample", type=int, default=0,
                    help=f"run only this many (<= {len(TEMPS)}) of the reference loop's kd students (0: all)")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive runs")
    ap.add_argument("--jobs", type=int, default=1, help="kd-sweep's processes at once (kdsweep run -j)")
    ap.add_argument("--compare-with", metavar="REV", help="time kd-sweep against commit REV's kd-sweep instead")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating (medians)")
    args = ap.parse_args()

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

    if not args.full_grid:  # the teacher is trained first, untimed, and shared by every side
        state.write_plan(folder, plan)  # its folder and config, as `kdsweep run` writes them
        sh([sys.executable, "-m", "sweep.worker", str(state.job_dir(folder, teacher)), "--device", args.device]
           + (["--data-root", args.data_root] if args.data_root else []), env)
        for cache in state.job_dir(folder, teacher).glob("logits-*.pt"):  # cached by the teacher's unit for its
            cache.unlink()  # students: kd-sweep's timed side computes them, as its run would have
    if args.compare_with:
        return compare_versions(args, run, results, folder, env)
    start = tmp / "start"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copytree(results, start)  # every kd-sweep run starts from here: the trained teacher, or nothing
    teacher_model = tmp / "teacher.pt"  # what the naive students distil from: this teacher, or kd-sweep's
    if not args.full_grid:
        shutil.copy(state.job_dir(folder, teacher) / "model.pt", teacher_model)
    data_args = ["--data-root", args.data_root] if args.data_root else []
    ref_points = ([(ALPHAS[0], t) for t in TEMPS[:args.reference_sample]] if 0 < args.reference_sample < len(TEMPS)
                  else [(a, t) for a in ALPHAS for t in TEMPS])  # its students run one after another: time scales
    ref_grid = ["--alpha", *map(str, dict.fromkeys(a for a, _ in ref_points)),
                "--temperature", *map(str, dict.fromkeys(t for _, t in ref_points))]
    reference = [sys.executable, str(HERE / "reference_loop.py"), "--dataset", args.dataset, "--epochs", str(args.epochs),
                 "--device", args.device, *ref_grid, *data_args]
    reference += (["--teacher-epochs", str(teacher_epochs), "--scratch"] if args.full_grid
                  else ["--teacher", str(teacher_model)])
    naive_base = [sys.executable, str(HERE / "naive_kd.py"), "--dataset", args.dataset, "--epochs", str(args.epochs),
                  "--device", args.device, "--workers", str(args.workers), *data_args]
    points = [(a, t) for a in ALPHAS for t in TEMPS]
    sample = points if not args.naive_sample else points[:: max(1, len(points) // args.naive_sample)][: args.naive_sample]

    times: dict[str, list[float]] = {"kd-sweep": [], "reference": [], "naive": []}
    for rep in range(args.repeat):
        # (a) kd-sweep: `kdsweep run`, process start included
        shutil.rmtree(results, ignore_errors=True)
        shutil.copytree(start, results)
        t0 = time.perf_counter()
        sh(run, env)
        times["kd-sweep"].append(time.perf_counter() - t0)
        done = [state.read_json(state.job_dir(folder, j) / "result.json") for j in plan.jobs]
        if args.full_grid:
            shutil.copy(state.job_dir(folder, teacher) / "model.pt", teacher_model)
        # (b) the reference study's loop: one process, one student after another (its start-up not counted)
        ref = json.loads(sh(reference, env).stdout.strip().splitlines()[-1])
        scale = len(points) / len(ref_points)  # 1 unless sampled: its kd students' time, scaled to the grid
        times["reference"].append(ref["seconds"] + ref["kd_seconds"] * (scale - 1))
        # (c) one process per grid point, process start included
        t0, extra, runs = time.perf_counter(), 0.0, []
        if args.full_grid:
            for method in ("teacher", "scratch"):
                t1 = time.perf_counter()
                sh(naive_base + ["--method", method], env)
                extra += time.perf_counter() - t1
        for a, t in sample:
            out = sh(naive_base + ["--teacher", str(teacher_model), "--alpha", str(a), "--temperature", str(t)], env)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        per_student = (time.perf_counter() - t0 - extra) / len(sample)
        times["naive"].append(extra + per_student * len(points))
        print(f"run {rep + 1}: kd-sweep {times['kd-sweep'][-1]:.1f} s, reference loop {times['reference'][-1]:.1f} s, "
              f"one process per point {times['naive'][-1]:.1f} s", flush=True)

    # the floor: kd-sweep's arithmetic at this machine's measured matmul rate
    from kd.train import flops_per_sample, pick_device

    dev = pick_device(args.device)  # the same TF32 setting the runs had
    student, teacher_net = (models.build(m, 10, d.input_shape).to(dev) for m in ("mnist-mlp", "mnist-cnn"))
    student_fwd = flops_per_sample(student, d.input_shape, dev)
    teacher_fwd = flops_per_sample(teacher_net, d.input_shape, dev)
    n_students = len(points) + args.full_grid
    samples = n_students * args.epochs * n_train
    flop = {"students' training": training_flops(student, d.input_shape, dev) * samples,
            "their evaluation": student_fwd * n_students * args.epochs * len(d.test_y),
            "teacher logits, once": teacher_fwd * len(d.train_y)}
    if args.full_grid:
        flop["teacher's training"] = (training_flops(teacher_net, d.input_shape, dev) * teacher_epochs * n_train
                                      + teacher_fwd * teacher_epochs * len(d.test_y))
    peak = matmul_gflops(args.device)
    floor = sum(flop.values()) / peak / 1e9
    med = {k: statistics.median(v) for k, v in times.items()}
    note = "" if len(sample) == len(points) else f"; {len(sample)} of {len(points)} students run, mean scaled"
    ref_note = "" if len(ref_points) == len(points) else f"; {len(ref_points)} of {len(points)} kd students run, scaled"
    n = args.repeat
    print(f"\nmedians of {n} run{'s' * (n > 1)}, side by side:")
    print(f"  kd-sweep run (packed students, cached teacher logits) {med['kd-sweep']:8.1f} s")
    print(f"  reference study's loop (one process, teacher each step) {med['reference']:6.1f} s   "
          f"kd-sweep {med['reference'] / med['kd-sweep']:.1f}x faster (its process start not counted{ref_note})")
    print(f"  one process per grid point (DataLoader, teacher each step) {med['naive']:4.1f} s   "
          f"kd-sweep {med['naive'] / med['kd-sweep']:.1f}x faster{note}")
    print(f"  floor: kd-sweep's arithmetic at the measured float32 matmul rate ({peak:,.0f} GFLOP/s) {floor:.1f} s: "
          f"kd-sweep takes {med['kd-sweep'] / floor:.1f}x the floor")
    print("    arithmetic: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP" for k, v in flop.items()))
    split = {}
    for job, r in zip(plan.jobs, done):
        if job.method == "teacher" and not args.full_grid:
            continue  # trained before the clock started
        key = f"{job.method} x{r.get('pack_size', 1)}" if job.method == "kd" else job.method
        split[key] = sum(h["seconds"] for h in r["history"])  # epochs' time: training and evaluation
    print("  kd-sweep epochs' time per unit (last run): " + ", ".join(f"{k} {v:.1f} s" for k, v in split.items())
          + "; the rest is process start, data loading, teacher cache and checkpoints")
    ours_teacher = sum(r.get("teacher_forward_images", 0) / r.get("pack_size", 1) for r in done)
    if not ours_teacher:  # the teachers' own units cached their logits (not counted in any result): once each
        ours_teacher = len(d.train_y) * sum(1 for j in plan.jobs if j.method == "teacher"
                                             and any(state.job_dir(folder, j).glob("logits-*.pt")))
    print(f"  teacher forward images: reference loop {ref['teacher_images'] * scale:,.0f}, "
          f"one process per point {statistics.mean(r['teacher_images'] for r in runs) * len(points):,.0f}, "
          f"kd-sweep {ours_teacher:,.0f}")
    accs = [r["metrics"]["test_accuracy"] for r in done if r["config"]["method"] == "kd"]
    ref_kd = [v for k, v in ref["accuracy"].items() if k.startswith("alpha")]
    print(f"  mean kd student accuracy: kd-sweep {statistics.mean(accs):.4f}, reference loop "
          f"{statistics.mean(ref_kd):.4f}, one process per point {statistics.mean(r['test_accuracy'] for r in runs):.4f}")
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
