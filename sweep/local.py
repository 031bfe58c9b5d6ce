"""Run a plan's unfinished jobs as local processes, teachers before their students.

A small scheduler. Its units are those of the plan (a job, or a pack of jobs trained
together: students, or teachers); a unit needs its students' teachers. One loop reaps the units that ended, skips
the students whose teacher did not finish, and starts what may start, at most ``jobs`` at
once. A unit may start when its teachers are done, or early when each one is done or
training here: it loads its data meanwhile, then waits for their results. An early unit holds
one of the ``jobs`` places like any other; units whose teachers are done go first.

Units run in at most ``jobs`` long-lived worker processes (``sweep.pool``), each importing torch
once and taking units one after another; a unit that crashes its worker fails alone, and the next
unit gets a new worker. The sweep's lock (``state.sweep_lock``) keeps two ``kdsweep run`` from
running the same sweep.
"""
from __future__ import annotations

import functools
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kd import results
from kd.errors import UserError
from sweep import state, status, worker
from sweep.plan import Job, Plan, units
from sweep.pool import Pool, Task
from sweep.spec import check_pack

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
    interrupted: list[str] = field(default_factory=list)  # its worker stopped by a signal: resume continues it
    skipped: list[str] = field(default_factory=list)  # a dependency failed or runs elsewhere
    already_done: int = 0


@dataclass
class _Unit:
    jobs: list[Job]
    proc: Task | None = None
    started: float = 0.0
    stopped: bool = False  # terminated here: it waited for a teacher that will not finish

    @property
    def needs(self) -> set[str]:
        return {d for j in self.jobs for d in j.depends_on}


NVIDIA_DEVICE = Path("/dev/nvidiactl")  # the NVIDIA driver's control device: there when a GPU is


def device_kind(device: str | None) -> str:
    """"cuda" or "cpu": the kind of device a local run trains on (``device``, else CUDA when this
    machine shows an NVIDIA GPU), for pack "auto". Read without importing torch (seconds): from the
    driver's device file and CUDA_VISIBLE_DEVICES; where that guess is wrong the packs are only sized
    for the other kind."""
    if device:
        return "cuda" if device.startswith("cuda") else "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # CUDA stops at the first entry that is not a device: -1, none, "" hide them all
        first = visible.split(",")[0].strip()
        if not (first.isdigit() or first.startswith(("GPU-", "MIG-"))):
            return "cpu"
    return "cuda" if NVIDIA_DEVICE.exists() else "cpu"


def check_device(device: str | None, where: str = "device") -> None:
    """Refuse a device this machine does not have, before any folder is made (torch says so only
    once a job starts: RuntimeError for a bad name, a CUDA error for a missing GPU)."""
    if device in (None, "cpu"):  # no torch to import (1.5 s) for what every machine has
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"{where}: {device!r} is not a device (expected cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError(f"{where}: {device!r}, but torch finds no CUDA device on this machine",
                            hint=f"{where} cpu, or leave {where} out: cuda where present, else cpu")
        if dev.index is not None and dev.index >= count:
            raise UserError(f"{where}: {device!r}, but this machine has {count} CUDA device(s): cuda:0 .. cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{where}: {device!r}, but MPS is not available on this machine")
    elif dev.type not in ("cpu", "mps"):
        raise UserError(f"{where}: {device!r}: kd trains on cpu, cuda or mps")


def check_inputs(plan: Plan, jobs: list[Job], data_root: Path | None) -> None:
    """Before a run makes any folder, cheaply: the files the jobs will read are there (each
    dataset's, each weights file), so that a missing one is one line here, not a failure per job."""
    from kd import data

    for name in dict.fromkeys(j.config["dataset"] for j in jobs):
        data.check_present(name, data_root)
    if data_root is not None and not Path(data_root).is_dir():  # mnist-5k reads none; the sweep records it all
        raise UserError(f"--data-root {data_root}: no such folder")  # the same, and names it in every next command
    missing = missing_weights(jobs)
    if missing:
        raise UserError(f"{plan.sweep.path or plan.sweep.name}: pretrained: {missing[1]}: no such weights file "
                        f"(job {missing[0].name})")


def missing_weights(jobs: list[Job]) -> tuple[Job, str] | None:
    """(the first job, its weights file) whose pretrained weights file is not here, else None."""
    for j in jobs:
        weights = j.config.get("pretrained")
        if weights not in (None, "imagenet", "none") and not Path(weights).is_file():
            return j, weights
    return None


def run(plan: Plan, folder: Path, *, jobs: int = 1, pack: int | str = "auto", data_root: Path | None = None,
        device: str | None = None, on_event: Callable[[Event], None] | None = None,
        on_start: Callable[[], None] | None = None, poll: float = 0.2) -> Summary:
    """Run every job of ``plan`` that is not done, at most ``jobs`` processes at once; returns what happened.

    A unit is a job, or a pack of jobs trained together in one process (``pack``).
    ``on_start``: called once the sweep is this run's (locked, its plan and job folders written).
    """
    worker.check_settings()  # before any folder is made
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"jobs: {jobs!r} must be a whole number >= 1")
    pack = check_pack(pack, "pack") or "auto"
    check_device(device)
    # the jobs not done, by their folders alone (job_states would ask Slurm too, and is asked under the lock)
    check_inputs(plan, [j for j in plan.jobs if state.own_result(state.job_dir(folder, j), j.config)[0] is None],
                 data_root)
    emit = on_event or (lambda e: None)
    summary = Summary()
    done: set[str] = set()
    lost: set[str] = set()  # jobs that will not finish in this run: their students are skipped

    def finish(job: Job, outcome: str, detail: str = "", seconds: float = 0.0) -> None:  # an outcome: Summary's
        (done if outcome == "done" else lost).add(job.id)
        getattr(summary, outcome).append(job.id)
        emit(Event(job, outcome, detail, seconds))

    with state.sweep_lock(folder):
        # the root its jobs read: given, or from the environment (a shell without it resumes elsewhere)
        state.write_plan(folder, plan, data_root or os.environ.get("KDSWEEP_DATA") or None)
        if on_start:
            on_start()
        states = dict((j.id, s) for j, s in status.job_states(plan, folder))
        done.update(jid for jid, s in states.items() if s.state == state.DONE)
        summary.already_done = len(done)
        waiting: list[_Unit] = []
        for unit in units(plan, pack, device_kind(device)):
            todo = [j for j in unit if j.id not in done]
            for job in [j for j in todo if status.active(states[j.id])]:
                if _orphan(state.job_dir(folder, job), states[job.id]):  # its worker waits for the job's lock
                    continue
                todo.remove(job)
                finish(job, "skipped", f"already running ({states[job.id].detail})")
            if todo:
                waiting.append(_Unit(todo))
        threads = max(1, (os.cpu_count() or 1) // jobs)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
        pool = Pool(env, data_root, device, plan.sweep.dataset)
        start = functools.partial(_start, folder=folder, pool=pool)
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
                            finish(job, "done", _started_over(folder, unit, job), seconds)
                        elif unit.stopped:
                            finish(job, "skipped", TEACHER_LOST if set(job.depends_on) & lost else PACK_LOST, seconds)
                        elif status.active(s) and _trainer(folder, job) != _worker_pid(unit.proc):
                            # another process still trains it (a killed run's worker, past the lock's wait)
                            finish(job, "skipped", f"already running ({s.detail})", seconds)
                        elif unit.proc.returncode > 128:  # its worker was asked to stop, and did
                            finish(job, "interrupted", state.stopped(state.job_dir(folder, job)) or
                                   f"stopped by {_signal_name(unit.proc.returncode - 128)} before it started: "
                                   "resume starts it", seconds)
                        else:
                            rc = unit.proc.returncode
                            first = state.job_dir(folder, unit.jobs[0])  # its unit's log is there
                            last = getattr(unit.proc, "last_line", "") or _error_in_log(unit, folder) or (
                                "the sweep's folder is gone (moved or deleted during the run)"
                                if not (folder / "plan.json").is_file() else
                                f"{first} is gone (deleted during the run?), and its unit's log with it"
                                if not first.is_dir() else "")
                            detail = (s.detail if 0 <= rc < 128 and s.detail and s.state == state.FAILED else
                                      _ended(rc) + (f": {last}" if last else ""))
                            if rc != 0 and s.state != state.FAILED:  # its worker failed or was killed before it
                                jdir = state.job_dir(folder, job)  # could say so: status too
                                if rc < 0:  # killed mid-training: and what resume does
                                    detail = f"{detail}; {state.resume_from(jdir)}"
                                try:
                                    state.record_error(jdir, detail)
                                except (UserError, OSError) as e:  # a full disk: said here, the run goes on
                                    detail += f" (not recorded for status: {e})"
                            finish(job, "failed", detail, seconds)
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
                    try:
                        unit.proc, unit.started = start(unit.jobs, after), time.monotonic()
                    except OSError as e:  # its log cannot be made (a full disk): it fails, the run goes on
                        if not (folder / "plan.json").is_file():  # unless the sweep's folder is gone
                            raise UserError(f"{folder}: moved or deleted during the run: the run stopped",
                                            hint=f"status and resume where it is now: --results DIR names the "
                                                 f"folder that holds it, under its name {folder.name}") from None
                        for job in unit.jobs:
                            finish(job, "failed", f"not started: {e.filename}: {e.strerror}")
                        continue
                    running.append(unit)
                    summary.ran.extend(j.id for j in unit.jobs)
                    for job in unit.jobs:
                        emit(Event(job, "started"))
                if not waiting:  # nothing left to start: idle workers exit now, not at the run's end
                    pool.retire_idle()
                if waiting and not running:  # a bug: a teacher neither done, nor running, nor lost
                    raise RuntimeError(f"cannot schedule {[j.name for u in waiting for j in u.jobs]}")
                if running:
                    pool.wait(poll)  # a unit's end wakes it at once
        finally:
            for unit in running:  # interrupted: stop the children, their checkpoints stay
                unit.proc.terminate()
            for unit in running:
                unit.proc.wait()
            pool.close()
    return summary


def _orphan(jdir: Path, s: state.JobState) -> bool:
    """A job running here, not on Slurm, while this run holds the sweep's lock: the worker of a run
    that was killed (kill -9), still checkpointing on its way out. Its unit is started all the same:
    the worker waits for the job's lock (a minute), then resumes from the checkpoint, where skipping
    it took a second resume."""
    attempt = state.read_json(jdir / "attempt.json") or {}
    return (s.state in (state.RUNNING, state.QUEUED) and s.slurm_id is None and not attempt.get("slurm_job_id")
            and attempt.get("host") == socket.gethostname())


def _trainer(folder: Path, job: Job) -> object:
    return (state.read_json(state.job_dir(folder, job) / "attempt.json") or {}).get("pid")


def _worker_pid(task: object) -> int | None:
    """The pid of the pool worker that ran a unit (it lives on after the unit: not 'another process')."""
    return getattr(getattr(getattr(task, "worker", None), "proc", None), "pid", None)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _started_over(folder: Path, unit: _Unit, job: Job) -> str:
    """Where the job's last attempt found its checkpoint damaged and trained from the start (a
    warning in its unit's log, a pack's first member's: status could not tell it from the
    checkpoint's last bytes): said so."""
    try:
        last = (state.job_dir(folder, unit.jobs[0]) / "log").read_text(errors="replace").rsplit("\n=== ", 1)[-1]
    except OSError:
        return ""
    mine = f"{job.id}/{results.CHECKPOINT} is damaged"
    return ("its checkpoint was damaged: trained from the start (its log says how)"
            if any(mine in line and "starting this job over" in line for line in last.splitlines()) else "")


def _error_in_log(unit: _Unit, folder: Path) -> str:
    """The last 'error: ' line its worker wrote into the unit's log (a pack's: its first job's):
    what it failed of where it could not record it (a full disk)."""
    try:
        with open(state.job_dir(folder, unit.jobs[0]) / "log", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((ln[len("error: "):][:300] for ln in reversed(lines) if ln.startswith("error: ")), "")


def _ended(status: int) -> str:
    """How a unit's process ended, when the unit left no error of its own."""
    if status < 0:  # killed: by the OOM killer, a crash in native code, someone's kill -9
        return f"its worker was killed by {_signal_name(-status)}"
    return f"exit status {status}"


def _start(members: list[Job], after: list[Path], *, folder: Path, pool: Pool) -> Task:
    """Start one unit in a worker: its job folders, and the folders of the teachers to wait for."""
    dirs = [state.job_dir(folder, j) for j in members]
    header = (f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(str, dirs))}"
              + (f" --after {' '.join(map(str, after))}" if after else "") + "\n")
    for d in dirs[1:]:  # a pack logs into its first job's log; the others say where
        with open(d / "log", "a") as other:
            other.write(header + f"(packed with {len(dirs)} jobs: see {dirs[0] / 'log'})\n")
    with open(dirs[0] / "log", "a") as log:
        log.write(header)
    return pool.run(dirs, after, dirs[0] / "log")
