"""Finished sweeps without training: a result.json per job, written by hand, for collect, plots and report."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from sweep import api, state
from sweep.plan import Job, Plan

SWEEP = """name = "{name}"
description = "a hand-made sweep for the tests"
dataset = "mnist-5k"
methods = ["teacher", "scratch", "kd"]
[train]
epochs = 3
[grid]
alpha = [0, 0.5, 0.9]
temperature = [1, 4]
seed = {seeds}
"""


def accuracy(job: Job) -> float:
    """Teacher 0.97; scratch 0.940 plus a seed effect; kd above it at T 4, level at T 1."""
    c = job.config
    seed_effect = [0.0, 0.004, -0.003, 0.002, -0.001][c["seed"] % 5]
    if job.method == "teacher":
        return 0.97 + seed_effect / 2
    gain = 0.0 if job.method == "scratch" else (0.006 if c["temperature"] == 4 else 0.0) + 0.001 * (c["seed"] % 2)
    return round(0.94 + seed_effect + gain, 4)


def sweep_file(tmp_path: Path, name: str = "hand", seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SWEEP.format(name=name, seeds=list(seeds)))
    return path


def result(job: Job, acc: float, pack_size: int = 1, versions: dict | None = None) -> dict:
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "test_accuracy": acc - 0.02 * (3 - e),
                "seconds": 10.0} for e in (1, 2, 3)]
    return {"config": job.config, "metrics": {"test_accuracy": acc, "test_loss": 0.4, "train_loss": 0.3},
            "history": history, "params": 1000, "flops_per_sample": 2000, "wall_seconds": 30.0,
            "device": "cpu (x86_64)", "pack_size": pack_size,
            "versions": versions or {"python": "3.11", "torch": "2.14.1", "kd": "0.1.0", "git": "a" * 40,
                                     "dirty": False, "diff_sha256": None}}


def finish(folder: Path, plan: Plan, acc: Callable[[Job], float] = accuracy, skip: tuple[str, ...] = ()) -> None:
    """Write each job's folder and result.json, as a finished run leaves them (jobs named in ``skip``: none)."""
    state.write_plan(folder, plan)
    students = sum(j.method == "kd" for j in plan.jobs)
    for job in plan.jobs:
        if job.name in skip:
            continue
        r = result(job, acc(job), pack_size=students if job.method == "kd" else 1)
        if job.method == "teacher":  # a finished teacher's weights, which its students read, as kd.train records them
            weights = f"the weights of {job.name}".encode()
            (state.job_dir(folder, job) / "model.pt").write_bytes(weights)
            r["model_file"] = {"name": "model.pt", "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
        (state.job_dir(folder, job) / "result.json").write_text(json.dumps(r))


def finished_sweep(tmp_path: Path, name: str = "hand", seeds: tuple[int, ...] = (0, 1, 2),
                   skip: tuple[str, ...] = ()) -> tuple[Path, Path, Plan]:
    """(sweep file, results root, plan) of a sweep whose jobs all finished, but those in ``skip``."""
    path = sweep_file(tmp_path, name, seeds)
    plan = api.plan(path)
    root = tmp_path / "results"
    finish(api.folder(plan, root), plan, skip=skip)
    return path, root, plan
