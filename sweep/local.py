"""Run a plan's unfinished jobs as local processes, teachers before their students.

Each unit (a teacher, or a pack of students) runs in its own process (``python -m
sweep.worker``), so one crash does not take the sweep down; ``jobs`` processes run at once. A lock in the sweep's folder keeps two
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
from sweep.plan import Job, Plan, units


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


def run(plan: Plan, folder: Path, *, jobs: int = 1, pack: int | str = "auto", data_root: Path | None = None,
        device: str | None = None, on_event: Callable[[Event], None] | None = None, poll: float = 0.2) -> Summary:
    """Run every job of ``plan`` that is not done, ``jobs`` units at a time; returns what happened.

    A unit is a teacher, or a pack of students trained together in one process (``pack``).
    """
    emit = on_event or (lambda e: None)
    summary = Summary()
    with sweep_lock(folder):
        state.write_plan(folder, plan)
        states = dict((j.id, s) for j, s in status.job_states(plan, folder))
        finished = {jid for jid, s in states.items() if s.state == state.DONE}
        summary.already_done = len(finished)
        todo: list[list[Job]] = []
        for unit in units(plan, pack):
            members = [j for j in unit if j.id not in finished]
            busy = [j for j in members if status.active(states[j.id])]
            for j in busy:
                summary.skipped.append(j.id)
                emit(Event(j, "skipped", f"already running ({states[j.id].detail})"))
            if members and not busy:
                todo.append(members)
        blocked = set(summary.skipped)
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
        running: list[tuple[list[Job], subprocess.Popen, float]] = []
        try:
            while todo or running:
                for item in list(running):
                    members, proc, t0 = item
                    if proc.poll() is None:
                        continue
                    running.remove(item)
                    if proc.returncode != 0:  # units waiting on this one would wait for ever
                        for other, other_proc, _ in running:
                            if {j.id for j in members} & {d for j in other for d in j.depends_on}:
                                other_proc.terminate()
                    for job in members:
                        s = state.job_state(state.job_dir(folder, job))
                        if s.state == state.DONE:
                            finished.add(job.id)
                            summary.done.append(job.id)
                            emit(Event(job, "done", seconds=time.monotonic() - t0))
                        else:
                            blocked.add(job.id)
                            summary.failed.append(job.id)
                            emit(Event(job, "failed", s.detail or f"exit status {proc.returncode}", time.monotonic() - t0))
                in_flight = {j.id for members, _, _ in running for j in members}
                waiting = sum(1 for members, _, _ in running if {d for j in members for d in j.depends_on} - finished)
                for members in list(todo):
                    deps = {d for j in members for d in j.depends_on}
                    if deps & blocked:
                        todo.remove(members)
                        for job in members:
                            blocked.add(job.id)
                            summary.skipped.append(job.id)
                            emit(Event(job, "skipped", "its teacher did not finish"))
                        continue
                    ready = deps <= finished and len(running) - waiting < jobs
                    # a unit whose teacher is training here may start early: it imports, loads
                    # its data, then waits for the teacher (at most `jobs` units wait at once)
                    early = not ready and deps <= finished | in_flight and waiting < jobs
                    if ready or early:
                        todo.remove(members)
                        after = [state.job_dir(folder, d) for d in deps - finished]
                        running.append((members, _start(members, folder, data_root, device, env, after),
                                        time.monotonic()))
                        waiting += bool(after)
                        summary.ran.extend(j.id for j in members)
                        for job in members:
                            emit(Event(job, "started"))
                time.sleep(poll if running else 0)
        finally:
            for _, proc, _ in running:  # interrupted: stop the children, their checkpoints stay
                proc.terminate()
            for _, proc, _ in running:
                proc.wait()
    return summary


def _start(members: list[Job], folder: Path, data_root: Path | None, device: str | None, env: dict,
           after: list[Path]) -> subprocess.Popen:
    dirs = [state.job_dir(folder, j) for j in members]
    cmd = [sys.executable, "-m", "sweep.worker", *map(str, dirs)]
    if after:
        cmd += ["--after", *map(str, after)]
    if data_root:
        cmd += ["--data-root", str(data_root)]
    if device:
        cmd += ["--device", device]
    header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode()
    with open(dirs[0] / "log", "ab") as log:
        for d in dirs[1:]:  # a pack logs into its first job's log; the others say where
            with open(d / "log", "ab") as other:
                other.write(header + f"(packed with {len(dirs)} students: see {dirs[0] / 'log'})\n".encode())
        log.write(header)
        log.flush()
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
