"""Run a plan's unfinished jobs as local processes, teachers before their students.

A small scheduler. Its units are those of the plan (a teacher, or a pack of students trained
together); a unit needs its students' teachers. One loop reaps the units that ended, skips
the students whose teacher did not finish, and starts what may start, at most ``jobs`` at
once. A unit may start when its teachers are done, or early when each one is done or
training here: it imports torch and loads its data meanwhile, then waits for their results
(``python -m sweep.worker FOLDERS --after TEACHER_FOLDERS``). An early unit holds one of the
``jobs`` places like any other; units whose teachers are done go first.

Each unit runs in its own process, so one crash does not take the sweep down. The sweep's
lock (``state.sweep_lock``) keeps two ``kdsweep run`` from running the same sweep.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sweep import state, status
from sweep.plan import Job, Plan, units

TEACHER_LOST = "its teacher did not finish"
PACK_LOST = "packed with a student whose teacher did not finish"


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


@dataclass
class _Unit:
    jobs: list[Job]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    stopped: bool = False  # terminated here: it waited for a teacher that will not finish

    @property
    def needs(self) -> set[str]:
        return {d for j in self.jobs for d in j.depends_on}


def run(plan: Plan, folder: Path, *, jobs: int = 1, pack: int | str = "auto", data_root: Path | None = None,
        device: str | None = None, on_event: Callable[[Event], None] | None = None, poll: float = 0.2) -> Summary:
    """Run every job of ``plan`` that is not done, at most ``jobs`` processes at once; returns what happened.

    A unit is a teacher, or a pack of students trained together in one process (``pack``).
    """
    emit = on_event or (lambda e: None)
    summary = Summary()
    done: set[str] = set()
    lost: set[str] = set()  # jobs that will not finish in this run: their students are skipped

    def finish(job: Job, outcome: str, detail: str = "", seconds: float = 0.0) -> None:  # done, failed, skipped
        (done if outcome == "done" else lost).add(job.id)
        getattr(summary, outcome).append(job.id)
        emit(Event(job, outcome, detail, seconds))

    with state.sweep_lock(folder):
        state.write_plan(folder, plan)
        states = dict((j.id, s) for j, s in status.job_states(plan, folder))
        done.update(jid for jid, s in states.items() if s.state == state.DONE)
        summary.already_done = len(done)
        waiting: list[_Unit] = []
        for unit in units(plan, pack):
            todo = [j for j in unit if j.id not in done]
            for job in [j for j in todo if status.active(states[j.id])]:
                todo.remove(job)
                finish(job, "skipped", f"already running ({states[job.id].detail})")
            if todo:
                waiting.append(_Unit(todo))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
        start = functools.partial(_start, folder=folder, data_root=data_root, device=device, env=env)
        running: list[_Unit] = []
        try:
            while waiting or running:
                # reap the units that ended
                for unit in [u for u in running if u.proc.poll() is not None]:
                    running.remove(unit)
                    seconds = time.monotonic() - unit.started
                    for job in unit.jobs:
                        s = state.job_state(state.job_dir(folder, job))
                        if s.state == state.DONE:
                            finish(job, "done", seconds=seconds)
                        elif unit.stopped:
                            finish(job, "skipped", TEACHER_LOST if set(job.depends_on) & lost else PACK_LOST, seconds)
                        else:
                            finish(job, "failed", s.detail or f"exit status {unit.proc.returncode}", seconds)
                # a unit waiting for a teacher that will not finish would wait for ever: stop it
                for unit in running:
                    if unit.needs & lost and not unit.stopped:
                        unit.stopped = True
                        unit.proc.terminate()
                # students whose teacher will not finish are skipped; their pack-mates still run
                for unit in list(waiting):
                    for job in [j for j in unit.jobs if set(j.depends_on) & lost]:
                        unit.jobs.remove(job)
                        finish(job, "skipped", TEACHER_LOST)
                    if not unit.jobs:
                        waiting.remove(unit)
                # start what may start: teachers done first, then teachers done or training here
                in_flight = {j.id for u in running for j in u.jobs}
                ready = [u for u in waiting if u.needs <= done]
                early = [u for u in waiting if not u.needs <= done and u.needs <= done | in_flight]
                for unit in (ready + early)[:jobs - len(running)]:
                    waiting.remove(unit)
                    after = [state.job_dir(folder, d) for d in sorted(unit.needs - done)]
                    unit.proc, unit.started = start(unit.jobs, after), time.monotonic()
                    running.append(unit)
                    summary.ran.extend(j.id for j in unit.jobs)
                    for job in unit.jobs:
                        emit(Event(job, "started"))
                if waiting and not running:  # a bug: a teacher neither done, nor running, nor lost
                    raise RuntimeError(f"cannot schedule {[j.name for u in waiting for j in u.jobs]}")
                time.sleep(poll if running else 0)
        finally:
            for unit in running:  # interrupted: stop the children, their checkpoints stay
                unit.proc.terminate()
            for unit in running:
                unit.proc.wait()
    return summary


def _start(members: list[Job], after: list[Path], *, folder: Path, data_root: Path | None, device: str | None,
           env: dict[str, str]) -> subprocess.Popen:
    """Start one unit's process: its job folders, and the folders of the teachers to wait for."""
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
