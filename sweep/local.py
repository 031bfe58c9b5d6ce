"""Run a plan's unfinished jobs as local processes, teachers before their students.

Each job runs in its own process (``python -m sweep.worker``), so one crash does not take
the sweep down; ``jobs`` processes run at once. A lock in the sweep's folder keeps two
``kdsweep run`` from running the same sweep on one machine.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kd.errors import UserError
from sweep import state, status
from sweep.plan import Job, Plan


@dataclass
class Event:
    job: Job
    state: str  # started, done, failed, skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Summary:
    ran: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a dependency failed or runs elsewhere
    already_done: int = 0


@contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
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


def run(plan: Plan, folder: Path, *, jobs: int = 1, data_root: Path | None = None, device: str | None = None,
        on_event: Callable[[Event], None] | None = None, poll: float = 0.2) -> Summary:
    """Run every job of ``plan`` that is not done; returns what happened."""
    emit = on_event or (lambda e: None)
    summary = Summary()
    with sweep_lock(folder):
        state.write_plan(folder, plan)
        states = dict((j.id, s) for j, s in status.job_states(plan, folder))
        todo = [j for j in plan.jobs if states[j.id].state != state.DONE]
        summary.already_done = len(plan.jobs) - len(todo)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
        running: dict[str, tuple[Job, subprocess.Popen, float]] = {}
        finished = {j.id for j in plan.jobs if states[j.id].state == state.DONE}
        blocked: set[str] = set()
        try:
            while todo or running:
                for jid, (job, proc, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[jid]
                    s = state.job_state(state.job_dir(folder, job))
                    if s.state == state.DONE:
                        finished.add(jid)
                        summary.done.append(jid)
                        emit(Event(job, "done", seconds=time.monotonic() - t0))
                    else:
                        blocked.add(jid)
                        summary.failed.append(jid)
                        emit(Event(job, "failed", s.detail or f"exit status {proc.returncode}", time.monotonic() - t0))
                for job in list(todo):
                    if any(d in blocked for d in job.depends_on):
                        todo.remove(job)
                        blocked.add(job.id)
                        summary.skipped.append(job.id)
                        emit(Event(job, "skipped", "its teacher did not finish"))
                    elif status.active(states[job.id]):
                        todo.remove(job)
                        blocked.add(job.id)
                        summary.skipped.append(job.id)
                        emit(Event(job, "skipped", f"already running ({states[job.id].detail})"))
                    elif len(running) < jobs and all(d in finished for d in job.depends_on):
                        todo.remove(job)
                        running[job.id] = (job, _start(job, folder, data_root, device, env), time.monotonic())
                        summary.ran.append(job.id)
                        emit(Event(job, "started"))
                time.sleep(poll if running else 0)
        finally:
            for _, proc, _ in running.values():  # interrupted: stop the children, their checkpoints stay
                proc.terminate()
            for _, proc, _ in running.values():
                proc.wait()
    return summary


def _start(job: Job, folder: Path, data_root: Path | None, device: str | None, env: dict) -> subprocess.Popen:
    jdir = state.job_dir(folder, job)
    cmd = [sys.executable, "-m", "sweep.worker", str(jdir)]
    if data_root:
        cmd += ["--data-root", str(data_root)]
    if device:
        cmd += ["--device", device]
    with open(jdir / "log", "ab") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
