"""Aggregate finished jobs into Parquet: one row per job, one row per job and epoch."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd import atomic
from sweep import state
from sweep.plan import Plan

RESULTS, EPOCHS = "results.parquet", "epochs.parquet"


@dataclass
class Collected:
    results: Path
    epochs: Path
    rows: int
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (job name, state, detail)


def job_row(plan: Plan, job, result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"sweep": plan.sweep.name, "job_id": job.id, "name": job.name}
    row.update({k: v for k, v in job.config.items() if k != "teacher"})
    row["teacher_job"] = job.config.get("teacher")
    row.update({k: v for k, v in result["metrics"].items() if k != "confusion"})
    if "confusion" in result["metrics"]:  # [[tn, fp], [fn, tp]] with class 1 as positive
        (tn, fp), (fn, tp) = result["metrics"]["confusion"]
        row.update(tn=tn, fp=fp, fn=fn, tp=tp)
    row["epochs_run"] = len(result["history"])
    for key in ("params", "flops_per_sample", "wall_seconds", "device"):
        row[key] = result.get(key)
    row["pack_size"] = result.get("pack_size", 1)
    row["teacher_forward_images"] = result.get("teacher_forward_images")
    row.update({f"{k}_version": v for k, v in result.get("versions", {}).items()})
    return row


def collect(plan: Plan, folder: Path) -> Collected:
    """Write ``results.parquet`` and ``epochs.parquet`` for the finished jobs; list the others."""
    import pandas as pd

    rows, epochs, missing = [], [], []
    for job in plan.jobs:
        jdir = state.job_dir(folder, job)
        try:
            result = json.loads((jdir / "result.json").read_bytes())
        except FileNotFoundError:
            s = state.job_state(jdir)
            missing.append((job.name, s.state, s.detail))
            continue
        rows.append(job_row(plan, job, result))
        for h in result["history"]:
            epochs.append({"sweep": plan.sweep.name, "job_id": job.id, "name": job.name, "method": job.method,
                           "alpha": job.config["alpha"], "temperature": job.config["temperature"],
                           "seed": job.config["seed"], **h})
    columns = ["sweep", "job_id", "name", "method", "alpha", "temperature", "seed"]
    results = pd.DataFrame.from_records(rows, columns=None if rows else columns)
    history = pd.DataFrame.from_records(epochs, columns=None if epochs else [*columns, "epoch"])
    for df in (results, history):
        for col in ("alpha", "temperature"):
            df[col] = df[col].astype("float64")
    out_r, out_e = folder / RESULTS, folder / EPOCHS
    atomic.write_with(out_r, lambda f: results.to_parquet(f, index=False))
    atomic.write_with(out_e, lambda f: history.to_parquet(f, index=False))
    return Collected(out_r, out_e, len(rows), missing)
