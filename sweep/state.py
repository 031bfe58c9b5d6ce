"""The results folder on disk, and each job's state as its folder tells it.

    results/<sweep>/plan.json               the plan last run (ids, names, configs, dependencies)
    results/<sweep>/.lock                   held by the 'kdsweep run' (or submission) at work on the sweep
    results/<sweep>/jobs/<id>/config.json   what the job runs
                             /attempt.json  who runs it now (host, pid, start), written at start
                             /error.json    why the last attempt failed
                             /checkpoint.pt, model.pt, log
                             /result.json   written last, atomically: the job is done

State is derived from these files (and, for SLURM, from what Slurm says), never kept
only in a process's memory.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd import atomic
from kd.errors import UserError
from sweep.plan import Job, Plan

DONE, RUNNING, FAILED, INTERRUPTED, PENDING = "done", "running", "failed", "interrupted", "pending"
QUEUED, CANCELLED = "queued", "cancelled"  # from Slurm


@dataclass(frozen=True)
class JobState:
    state: str
    detail: str = ""  # the failure's last error line, or where it runs


def sweep_dir(results_root: Path, plan: Plan) -> Path:
    return Path(results_root) / plan.sweep.name


def job_dir(sweep_folder: Path, job: Job | str) -> Path:
    return Path(sweep_folder) / "jobs" / (job if isinstance(job, str) else job.id)


@contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
    """Hold the sweep's lock: two runs (or submissions) of one sweep would start its jobs twice."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"{folder}: another 'kdsweep run' is running this sweep ({f.read().strip()})") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield


def write_plan(sweep_folder: Path, plan: Plan) -> None:
    """Record the plan and each job's config, so any later shell can see what was run."""
    jobs = [{"id": j.id, "name": j.name, "method": j.method, "config": j.config, "depends_on": list(j.depends_on)}
            for j in plan.jobs]
    atomic.write_json(sweep_folder / "plan.json", {"sweep": plan.sweep.name, "jobs": jobs})
    for j in plan.jobs:
        folder = job_dir(sweep_folder, j)
        config = folder / "config.json"
        if not config.exists():
            atomic.write_json(config, {"id": j.id, "name": j.name, "config": j.config})


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), where /proc exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process: guards against a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(attempt: dict[str, Any]) -> bool:
    """Whether the process recorded in an attempt.json still runs (on this host)."""
    if attempt.get("host") != socket.gethostname() or "pid" not in attempt:
        return False
    pid = attempt["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its new parent
        return False
    return attempt.get("proc_start") in (None, _process_start(pid))


def record_attempt(folder: Path, **extra: Any) -> None:
    (folder / "error.json").unlink(missing_ok=True)
    pid = os.getpid()
    atomic.write_json(folder / "attempt.json", {"host": socket.gethostname(), "pid": pid,
                                                 "proc_start": _process_start(pid), **extra})


def job_state(folder: Path) -> JobState:
    if (folder / "result.json").exists():
        return JobState(DONE)
    error = read_json(folder / "error.json")
    if error is not None:
        return JobState(FAILED, error.get("line", ""))
    attempt = read_json(folder / "attempt.json")
    if attempt is None:
        return JobState(PENDING)
    if alive(attempt):
        return JobState(RUNNING, f"pid {attempt['pid']} on {attempt['host']}")
    if attempt.get("host") != socket.gethostname() and not attempt.get("slurm_job_id"):
        return JobState(RUNNING, f"on {attempt.get('host')} (not checkable from here)")
    return JobState(INTERRUPTED, "the process ended without a result or an error (killed?)")
