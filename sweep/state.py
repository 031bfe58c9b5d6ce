"""The results folder on disk, and each job's state as its folder tells it.

    results/<sweep>/plan.json               the plan last run (ids, names, configs, dependencies)
    results/<sweep>/.lock                   held by the 'kdsweep run' (resume, submission) at work on the
                                            sweep: its pid, host and start, then its command
    results/<sweep>/jobs/<id>/config.json   what the job runs
                             /attempt.json  who runs it now (host, pid, start), written at start and
                                            touched every HEARTBEAT_S seconds while it runs
                             /.lock         locked (POSIX record lock) by the one process that trains it
                             /error.json    why the last attempt failed
                             /checkpoint.pt, model.pt, log
                             /result.json   written last, atomically: the job is done

State is derived from these files (and, for SLURM, from what Slurm says), never kept
only in a process's memory.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sys
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd import atomic, results
from kd.config import TEACHER_METHODS
from kd.errors import UserError
from sweep.plan import Job, Plan, identity

DONE, RUNNING, FAILED, INTERRUPTED, PENDING = "done", "running", "failed", "interrupted", "pending"
DAMAGED = "damaged"  # a result.json that is not the job's (see own_result): resume keeps it aside, reruns it
QUEUED, CANCELLED = "queued", "cancelled"  # from Slurm
HEARTBEAT_S = 30  # a running attempt touches its attempt.json this often
STALE_S = 180  # an attempt on another host silent for this long is taken for dead


@dataclass(frozen=True)
class JobState:
    state: str
    detail: str = ""  # the failure's last error line, or where it runs
    stranded: bool = False  # queued on Slurm behind a teacher task that will never succeed
    slurm_id: str | None = None  # the Slurm task whose state this is (of a job submitted more than once: the live one)
    unasked: bool = False  # submitted, but Slurm could not be asked about it: the folder's word alone


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
            first, what = _lock_record(f.read())
            holder = first.split(" since ")[0]  # "pid N on HOST" (its start time is for sweep_run)
            raise UserError(f"{folder}: another '{what}' is running this sweep ({holder})") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {_process_start(os.getpid())}\n{command()}")
        f.flush()
        try:
            yield
        finally:  # its holder lives on (a notebook's api.run): status must not take it for a run
            f.seek(0)
            f.truncate()


def command() -> str:
    """This process as its user would name it: 'kdsweep resume' (the CLI, or ``python -m
    sweep.cli``), else its program ('ipykernel_launcher.py': kd-sweep's API in a notebook)."""
    argv = sys.argv or [""]
    if Path(argv[0]).name in ("kdsweep", "cli.py"):
        words = [a for a in argv[1:] if not a.startswith("-")]
        return f"kdsweep {words[0]}" if words else "kdsweep"
    name = Path(argv[0])
    return (name.parent.name if name.name == "__main__.py" else name.name) or "python"  # python -m pytest: pytest


def _lock_record(text: str) -> tuple[str, str]:
    """A sweep lock file's two lines: 'pid N on HOST since START', and its holder's command
    ('kdsweep run' for a lock written before commands were)."""
    lines = text.strip().splitlines()
    return (lines[0] if lines else ""), (lines[1] if len(lines) > 1 else "kdsweep run")


def sweep_holder(folder: Path) -> str:
    """The command that holds (or last held) the sweep's lock, as it wrote it."""
    try:
        return _lock_record((folder / ".lock").read_text())[1]
    except OSError:
        return _lock_record("")[1]


def sweep_run(folder: Path) -> int | None:
    """The pid of the 'kdsweep run' (or resume, or notebook) that holds the sweep's lock now, on this
    host; else None. Read from what the run wrote there (testing the lock would make a run starting
    this instant refuse)."""
    try:
        m = re.fullmatch(r"pid (\d+) on (\S+) since (\S+)", _lock_record((folder / ".lock").read_text())[0])
    except OSError:
        return None
    if not m:  # a lock from before hosts and start times were written
        return None
    pid = int(m.group(1))  # running here, and not its pid used again since
    if not alive({"host": m.group(2), "pid": pid, "proc_start": m.group(3)}):
        return None
    return None if _holds_open(pid, folder / ".lock") is False else pid  # not a copy of the folder it runs in


def _holds_open(pid: int, path: Path) -> bool | None:
    """Whether process ``pid`` has ``path`` open (a run holds its sweep's lock file open: a copy of
    the folder, made while it ran, names it too); None where /proc does not say (another user's)."""
    try:
        want = str(path.resolve())
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == want for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def foreign_done(folder: Path, plan: Plan) -> int:
    """Finished jobs in the sweep's folder that are not in ``plan``: of other settings (the sweep
    file changed since they ran, or another file of the sweep's name ran here). Kept; not counted."""
    ids = {j.id for j in plan.jobs}
    try:
        return sum(1 for d in (folder / "jobs").iterdir() if d.name not in ids and (d / "result.json").is_file())
    except OSError:
        return 0


def write_plan(sweep_folder: Path, plan: Plan, data_root: Path | None = None,
               profile: tuple[str, Path | None] | None = None) -> None:
    """Record the plan and each job's config, so any later shell can see what was run (and with
    which data root and, for a SLURM submission, which profile: the command that resumes it names
    them again, even where the submissions' record is lost)."""
    jobs = [{"id": j.id, "name": j.name, "method": j.method, "config": j.config, "depends_on": list(j.depends_on)}
            for j in plan.jobs]
    record: dict[str, Any] = {"sweep": plan.sweep.name, "jobs": jobs}
    if data_root is not None:
        record["data_root"] = str(Path(data_root).resolve())
    if profile is not None:
        record["profile"] = {"name": profile[0], **({"file": str(Path(profile[1]).resolve())} if profile[1] else {})}
    for j in plan.jobs:  # before anything is written: a file where a job folder belongs stops it all
        if (bad := atomic.not_a_folder(job_dir(sweep_folder, j))) is not None:
            raise UserError(f"{bad}: a file where job {j.name}'s folder belongs", hint=f"move {bad} away and run again")
    atomic.write_json(sweep_folder / "plan.json", record)
    for j in plan.jobs:
        folder = job_dir(sweep_folder, j)
        config = folder / "config.json"
        saved = (read_json(config) or {}).get("config")
        if not isinstance(saved, dict):  # none, or damaged: it says nothing of the folder, so it is written
            atomic.write_json(config, {"id": j.id, "name": j.name, "config": j.config})
        elif differ := settings_differ(saved, j.config):  # never reuse a folder of other settings
            raise UserError(f"{config}: this job folder holds other settings than job {j.name} "
                            f"({', '.join(differ) or 'unreadable'})", hint=f"move {folder} away and run again")


def settings_differ(saved: Any, config: dict[str, Any]) -> list[str]:
    """The settings a folder's saved config and a job's hold otherwise (as their ids count them), sorted;
    a saved config that is not a table of settings differs in all."""
    saved, config = identity(saved if isinstance(saved, dict) else {}), identity(config)
    return sorted(k for k in {*saved, *config} if saved.get(k) != config.get(k))


def read_json(path: Path) -> dict[str, Any] | None:
    """A job's JSON file (config, attempt, error, result) as a dict; None where it is missing, not
    JSON, or JSON of another shape (a list, a number: damaged, as a file cut short is)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
    pid = attempt.get("pid")
    if attempt.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
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
                                                 "proc_start": _process_start(pid),
                                                 "folder": os.path.realpath(folder), **extra})


def trained_elsewhere(folder: Path, attempt: dict[str, Any]) -> str | None:
    """The folder an attempt.json says its attempt trained, where that is not ``folder`` (a copy of
    it, or moved since); None for this folder's own attempt (or one that does not say)."""
    there = attempt.get("folder")
    return there if isinstance(there, str) and there != os.path.realpath(folder) else None


def record_error(folder: Path, line: str, traceback: str | None = None) -> None:
    """The attempt failed: its error's last line (what status shows), and its traceback if any
    (nothing where the folder is gone: moved during the run, it is not made anew)."""
    if not folder.is_dir():
        return
    atomic.write_json(folder / "error.json", {"line": line, **({"traceback": traceback} if traceback else {})})


def record_began(folder: Path) -> None:
    """A unit started ahead of its teacher begins training: no longer waiting (``waiting_for``)."""
    attempt = read_json(folder / "attempt.json") or {}
    attempt.pop("waiting_for", None)
    attempt.pop("waiting_for_pack", None)
    atomic.write_json(folder / "attempt.json", attempt)


def never_began(folder: Path, signal_name: str) -> None:
    """Stopped while it waited for its teacher: pending again (no attempt), or, where an earlier
    attempt left a checkpoint, stopped with it."""
    if checkpoint_state(folder) is None:
        (folder / "attempt.json").unlink(missing_ok=True)
    else:
        record_stop(folder, signal_name)


def record_stop(folder: Path, signal_name: str) -> None:
    """The attempt ended on a signal, with a checkpoint where it was (its ``stopped``)."""
    attempt = read_json(folder / "attempt.json") or {}
    atomic.write_json(folder / "attempt.json", {**attempt, "stopped": signal_name})


def own_result(folder: Path, config: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """A job folder's result.json if it is the job's result, else why not: (result, None), or
    (None, why) when it is unreadable, of other settings than the job's (``config``, the plan's;
    else the folder's config.json), or, for a teacher, its model.pt missing or cut short; (None,
    None) when there is none."""
    try:
        result = results.read(folder / "result.json")
    except results.DamagedResult as e:
        return None, "result.json unreadable (" + str(e).split(": damaged result, ", 1)[-1][:120] + ")"
    if result is None:
        return None, None
    job = config if config is not None else (read_json(folder / "config.json") or {}).get("config")
    if isinstance(job, dict):
        differ = results.other_settings(result["config"], job)
        if differ:
            return None, "result.json holds another job's result (" + ", ".join(
                f"{k} {result['config'].get(k)!r}, not {job[k]!r}" for k in differ[:3]) + ")"
        # a teacher's students read its model.pt, a user every job's: one that records it is checked
        if job.get("method") in TEACHER_METHODS or isinstance(result.get("model_file"), dict):
            problem = results.model_problem(folder, result)
            if problem:
                return None, problem
    return result, None


def job_state(folder: Path, config: dict[str, Any] | None = None) -> JobState:
    """The folder's word on its job (``config``: the job's settings, where the plan is at hand)."""
    if not folder.is_dir() and (bad := atomic.not_a_folder(folder)) is not None:  # nothing runs there till moved
        return JobState(DAMAGED, f"{bad} is a file, not a folder: move it away, then resume")
    result, problem = own_result(folder, config)
    if result is not None:
        return JobState(DONE)
    if problem:
        return JobState(DAMAGED, f"{problem}: resume keeps result.json aside and reruns the job")
    error = read_json(folder / "error.json")
    if error is not None:
        return JobState(FAILED, error.get("line", ""))
    attempt = read_json(folder / "attempt.json")
    if attempt is None:
        damaged = (folder / "attempt.json").exists()
        if damaged or checkpoint_state(folder) is not None:  # it began: not pending
            return JobState(INTERRUPTED, ("attempt.json unreadable" if damaged else "attempt.json missing")
                            + f" (who ran it, and how it ended, unknown); {resume_from(folder)}")
        return JobState(PENDING)
    elsewhere = trained_elsewhere(folder, attempt)
    if elsewhere:
        return JobState(INTERRUPTED, f"its last attempt trained {elsewhere} (this folder a copy of it, or "
                                     f"moved since): nothing trains it here; {resume_from(folder)}")
    living = alive(attempt)
    if living and lock_holder(folder) is not False:
        if attempt.get("waiting_for"):  # started ahead: queued behind its teacher, in its process
            whom = "the teachers of others in its pack" if attempt.get("waiting_for_pack") else "its teacher"
            return JobState(QUEUED, f"waiting for {whom} {', '.join(map(str, attempt['waiting_for']))} "
                                    f"(started ahead in pid {attempt['pid']} on {attempt['host']})")
        return JobState(RUNNING, f"pid {attempt['pid']} on {attempt['host']}")
    if attempt.get("stopped"):
        return JobState(INTERRUPTED, stopped(folder, attempt))
    if living:  # its process lives, but holds no lock here: a copy of the folder, or a long-lived worker
        # that went on to other units after this one ended unrecorded
        return JobState(INTERRUPTED, f"pid {attempt['pid']} on {attempt['host']} does not train it here (a copy of "
                                     f"its folder? or its unit ended without a result or an error: its log says); "
                                     f"{resume_from(folder)}")
    if attempt.get("host") != socket.gethostname():  # a node (or a Slurm task Slurm forgot, or cannot be asked of)
        try:
            silent = time.time() - (folder / "attempt.json").stat().st_mtime
        except OSError:
            silent = STALE_S
        if silent < STALE_S:
            return JobState(RUNNING, f"pid {attempt.get('pid')} on {attempt.get('host')} (heartbeat {silent:.0f} s ago)")
        return JobState(INTERRUPTED, f"no heartbeat from pid {attempt.get('pid')} on {attempt.get('host')} "
                                     f"for {silent / 60:.0f} min: taken for dead; {resume_from(folder)}")
    if _finished_since(folder):  # model.pt is written with the result, at its attempt's end: the result was
        return JobState(INTERRUPTED, "result.json missing beside its model.pt (deleted? its last attempt "
                                     "finished): resume trains it again")
    return JobState(INTERRUPTED, "the process ended without a result or an error (killed? or a full disk: its log "
                                 f"says); {resume_from(folder)}")


def _finished_since(folder: Path) -> bool:
    """Whether the job's model.pt was written at the end of its last attempt (not left by an earlier one
    that an interrupted rerun began after): no older than attempt.json, which heartbeats touch."""
    try:
        return (folder / "model.pt").stat().st_mtime >= (folder / "attempt.json").stat().st_mtime
    except OSError:
        return False


def stopped(folder: Path, attempt: dict | None = None) -> str | None:
    """How the job's last attempt was stopped by a signal (None if it was not)."""
    attempt = read_json(folder / "attempt.json") if attempt is None else attempt
    if not attempt or not attempt.get("stopped"):
        return None
    whole = checkpoint_state(folder)
    return f"stopped by {attempt['stopped']}, " + ("checkpointed: resume continues it" if whole == WHOLE
                                                   else f"{NO_CHECKPOINT[whole]}: resume starts it over")


WHOLE, CUT = "whole", "cut short"
NO_CHECKPOINT = {None: "no checkpoint", CUT: "its checkpoint is cut short"}
ZIP_END = b"PK\x05\x06"  # a zip file's last record (torch.save writes zip files; a sealed one wraps one)


def checkpoint_state(folder: Path) -> str | None:
    """None where the job has no checkpoint; WHOLE where it ends as torch's zip files do; CUT where
    it does not (a full disk, a copy cut short: resume starts over). A read of its last 22 bytes, for
    status; loading it checks every byte (kd.sealed)."""
    try:
        with open(folder / results.CHECKPOINT, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 22:
                return CUT
            f.seek(-22, os.SEEK_END)
            return WHOLE if f.read(4) == ZIP_END else CUT
    except FileNotFoundError:
        return None
    except OSError:
        return CUT


def has_checkpoint(folder: Path) -> bool:
    return checkpoint_state(folder) == WHOLE


def resume_from(folder: Path) -> str:
    """What resume does with an unfinished job: continue from its checkpoint, or start it over (a
    hard kill before the first checkpoint, which comes every KDSWEEP_CHECKPOINT_MINUTES)."""
    whole = checkpoint_state(folder)
    return "resume continues from its checkpoint" if whole == WHOLE else f"{NO_CHECKPOINT[whole]}: resume starts it over"


class LocksUnsupported(UserError):
    """The file system of a job folder refuses POSIX locks (ENOLCK, EOPNOTSUPP): not another holder."""


@contextmanager
def job_locks(folders: list[Path], wait_s: float = 60.0) -> Iterator[None]:
    """Hold each job folder's lock while training it: one folder, one writer. A folder locked by
    another process (a cancelled Slurm task still in its KillWait, a second worker) is waited for
    ``wait_s`` seconds, then refused. POSIX record locks (fcntl): NFSv4, GPFS and Lustre (mounted
    with -o flock) honour them across nodes."""
    files = []
    try:
        for folder in folders:
            f = open(folder / ".lock", "a+")
            files.append(f)
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):  # not another holder: no locks here at all
                        raise LocksUnsupported(f"{folder}: cannot lock it ({e.strerror}): its file system keeps no "
                                               "locks (NFS mounted nolock?), so one writer per job folder cannot "
                                               "be made sure of", hint="put the results on a file system with "
                                               "locks (NFSv4, Lustre with -o flock, a local disk)") from None
                    if time.monotonic() >= deadline:
                        host = (read_json(folder / "attempt.json") or {}).get("host")  # none: kdsweep train's
                        raise UserError(f"{folder}: another process trains this job" + (f" ({host})" if host else "")
                                        + "; not starting a second one") from None
                    time.sleep(0.5)
            _HELD_HERE.add(_file_key(f))
        yield
    finally:
        for f in files:
            _HELD_HERE.discard(_file_key(f))
            f.close()


# The lock files this process holds: POSIX record locks belong to the process, and closing any
# descriptor of the file, even one only opened to ask, releases them.
_HELD_HERE: set[tuple[int, int]] = set()


def _file_key(f) -> tuple[int, int]:
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino


def lock_holder(folder: Path) -> bool | None:
    """Whether a process (this one too) holds the job folder's lock now (``job_locks``: its unit is
    not over): True, False, or None where it cannot be told (a folder not ours to write)."""
    try:
        st = os.stat(folder / ".lock")
        if (st.st_dev, st.st_ino) in _HELD_HERE:
            return True
        with open(folder / ".lock", "r+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            return False  # closing the file releases the lock just taken
    except FileNotFoundError:  # never locked (job_locks makes the file), or no folder
        return False
    except OSError:
        return None


def held(folder: Path) -> bool:
    """Whether a process holds the job folder's lock now; False where it cannot be told."""
    return lock_holder(folder) is True


def heartbeat(folders: list[Path]) -> Callable[[], None]:
    """Touch each folder's attempt.json every HEARTBEAT_S seconds from a daemon thread; returns stop()."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            for folder in folders:
                try:
                    os.utime(folder / "attempt.json")
                except OSError:
                    pass

    threading.Thread(target=beat, daemon=True, name="heartbeat").start()
    return done.set
