"""What runs inside one job's process (a local child process or a SLURM task).

Reads the job's ``config.json``, records the attempt, calls ``kd.train.run``, and on an
exception writes ``error.json`` with its last line before failing.
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from kd import atomic
from kd.config import TrainConfig
from sweep import state


def train_config(folder: Path) -> TrainConfig:
    """The job's TrainConfig, its teacher resolved from a job id to the teacher's folder."""
    saved = state.read_json(folder / "config.json")
    if saved is None:
        raise FileNotFoundError(f"{folder / 'config.json'}: missing or unreadable")
    config = dict(saved["config"])
    if config.get("teacher"):
        config["teacher"] = str(folder.parent / config["teacher"])
    return TrainConfig(**config)


def run_job(folder: Path, *, data_root: Path | None = None, device: str | None = None,
            stop: Callable[[], bool] | None = None, **attempt: object) -> dict | None:
    """Run one job folder to its result; errors are recorded in the folder, then raised."""
    folder = Path(folder)
    if (folder / "result.json").exists():
        return state.read_json(folder / "result.json")
    state.record_attempt(folder, **attempt)
    try:
        from kd import train

        return train.run(train_config(folder), folder, data_root=data_root, device=device, stop=stop)
    except Exception as e:  # a kill or Ctrl-C leaves no error.json: the job shows as interrupted
        line = f"{e.__class__.__name__}: {e}".splitlines()[0] if str(e) else e.__class__.__name__
        atomic.write_json(folder / "error.json", {"line": line, "traceback": traceback.format_exc()})
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run one kd-sweep job folder (used by kdsweep run)")
    p.add_argument("folder", type=Path)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--device")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        run_job(args.folder, data_root=args.data_root, device=args.device)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


class SlurmTask:
    """The callable that submitit pickles into each SLURM array task.

    On the warning signal (time limit or preemption) submitit calls ``checkpoint`` and
    requeues the task with the same arguments; the requeued task resumes from the job's
    last epoch checkpoint, so at most the epoch in flight is lost.
    """

    def __call__(self, folder: str, data_root: str | None = None) -> str:
        import os

        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        slurm_id = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
                    if "SLURM_ARRAY_JOB_ID" in os.environ else os.environ.get("SLURM_JOB_ID"))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
                            datefmt="%H:%M:%S", force=True)
        run_job(Path(folder), data_root=Path(data_root) if data_root else None, slurm_job_id=slurm_id)
        return "done"

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
