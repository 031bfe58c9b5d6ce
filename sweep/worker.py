"""What runs inside one unit's process (a local child process or a SLURM array task).

A unit is one job, or a pack of jobs trained together (students; or teachers). Reads each job's
``config.json``, records the attempt, calls ``kd.train.run_pack``, and on an exception writes
``error.json`` with its last line into every unfinished job of the unit before failing.

Stopping: on SIGTERM or SIGINT (a local run stopped) and on Slurm's warning signal (time limit,
preemption) the training loop finishes its current step, checkpoints where it is, mid-epoch,
and returns; a Slurm task is then requeued and resumes there. Training is also checkpointed
every ``KDSWEEP_CHECKPOINT_MINUTES`` (default 10) minutes, at the step where that falls due
(``epoch``: after every epoch instead), which bounds what a hard crash (a node lost, kill -9, out
of memory) costs without writing every few seconds when epochs are short.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from kd import results
from kd.config import TrainConfig, cuda_graphs, switch
from kd.errors import DamagedTeacher, UserError, first_line
from sweep import logs, state


def train_config(folder: Path) -> TrainConfig:
    """The job's TrainConfig, its teacher resolved from a job id to the teacher's folder."""
    saved = state.read_json(folder / "config.json")
    if saved is None:
        raise FileNotFoundError(f"{folder / 'config.json'}: missing or unreadable")
    config = dict(saved["config"])
    if config.get("teacher"):
        config["teacher"] = str(folder.parent / config["teacher"])
    return TrainConfig(**config)


CHECKPOINT_MINUTES = 10.0
CHECKPOINT_ENV = "KDSWEEP_CHECKPOINT_MINUTES"
LOCK_WAIT_S = 60.0  # a job folder locked by another process: wait this long (a Slurm KillWait), then refuse


def checkpoint_every() -> float | None:
    """Seconds of training between checkpoints (``KDSWEEP_CHECKPOINT_MINUTES``, default 10), or
    None for one after every epoch (``KDSWEEP_CHECKPOINT_MINUTES=epoch``). UserError if mistyped."""
    raw = os.environ.get(CHECKPOINT_ENV, "").strip()
    if raw == "epoch":
        return None
    try:
        minutes = float(raw) if raw else CHECKPOINT_MINUTES
    except ValueError:
        minutes = math.nan
    if not 0 < minutes < math.inf:
        raise UserError(f"{CHECKPOINT_ENV}: '{raw}' is neither minutes of training between checkpoints "
                        "(a number > 0) nor 'epoch' (one after every epoch)")
    return 60.0 * minutes


def check_settings() -> None:
    """The workers' settings from the environment (KDSWEEP_CHECKPOINT_MINUTES, KDSWEEP_CUDA_GRAPHS,
    KDSWEEP_TF32, KDSWEEP_CUDNN_BENCHMARK, KDSWEEP_FUSED_CNN, KDSWEEP_KEEP_CHECKPOINTS), checked before a run starts
    anything: a mistyped one is one error line, not a failure in every job."""
    checkpoint_every()
    cuda_graphs()
    switch("KDSWEEP_TF32", True)
    switch("KDSWEEP_CUDNN_BENCHMARK", False)
    switch("KDSWEEP_FUSED_CNN", True)
    switch("KDSWEEP_KEEP_CHECKPOINTS", False)


class StopFlag:
    """Set by a signal; the training loop polls it after every step. A second SIGINT interrupts at
    once, unless ``patient`` (a run's worker: Ctrl-C twice reaches it too while its run waits for
    its checkpoint, which the second must not cut short)."""

    def __init__(self, patient: bool = False) -> None:
        self.signal: int | None = None
        self.patient = patient

    def __call__(self) -> bool:
        return self.signal is not None

    def catch(self, *signums: int) -> None:
        for s in signums:
            if s in (signal.SIGHUP, signal.SIGINT) and signal.getsignal(s) == signal.SIG_IGN:
                continue  # started under nohup, or as a script's background job (`kdsweep run ... &`): as asked
            signal.signal(s, self._set)

    def _set(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT and not self.patient:
            raise KeyboardInterrupt
        if self.signal is None:  # the first says why (Ctrl-C reaches a worker, then its run's SIGTERM)
            logging.getLogger(__name__).warning("caught %s: stopping after this step, with a checkpoint",
                                                signal.Signals(signum).name)
            self.signal = signum


def run_unit(folders: list[Path], *, data_root: Path | None = None, device: str | None = None,
             stop: Callable[[], bool] | None = None, after: list[Path] = (), **attempt: object) -> list[dict | None]:
    """Run job folders (one job, or a pack) to their results; errors are recorded
    in each unfinished folder, then raised.

    ``after``: folders of jobs still running (the students' teacher). The unit starts up
    meanwhile (imports, CUDA, data), then waits for their results: a unit started early
    hides its start-up behind its teacher's training.
    """
    folders = [Path(f) for f in folders]
    todo = [f for f in folders if state.job_state(f).state != state.DONE]  # a damaged result runs again
    if not todo:
        return [state.read_json(f / "result.json") for f in folders]
    with state.job_locks(todo, wait_s=float(os.environ.get("KDSWEEP_LOCK_WAIT", LOCK_WAIT_S))):
        now = {f: state.job_state(f) for f in todo}
        todo = [f for f in todo if now[f].state != state.DONE]  # done by the process we waited for
        if not todo:
            logging.getLogger(__name__).info("done meanwhile by the process that held its lock: nothing to do")
            return [state.read_json(f / "result.json") for f in folders]
        teachers = {Path(a).name: (state.read_json(Path(a) / "config.json") or {}).get("name", Path(a).name)
                    for a in after}  # job id -> name, of the teachers this unit waits for
        for f in todo:
            for stray in f.glob(".tmp-*"):  # a write cut by a kill; under the lock no one else writes here
                stray.unlink(missing_ok=True)
            if now[f].state == state.DAMAGED:  # unreadable, another job's result, a teacher's model.pt gone
                logging.getLogger(__name__).warning("%s: %s: kept as %s; the job runs again", f,
                                                    state.own_result(f)[1], results.keep_aside(f / "result.json").name)
            state.record_attempt(f, pack_size=len(todo), **attempt, **_waiting(f, teachers))
        stop_heartbeat = state.heartbeat(todo)
        try:
            began = _train(todo, data_root, device, stop, after)
            signum = getattr(stop, "signal", None)
            if signum:  # stopped by a signal, checkpointed: status says so, not "killed?"
                for f in todo:
                    if not (f / "result.json").exists():
                        if began:
                            state.record_stop(f, signal.Signals(signum).name)
                        else:  # stopped while it waited for its teacher: it never began
                            state.never_began(f, signal.Signals(signum).name)
        except Exception as e:  # a kill or Ctrl-C leaves no error.json: the job shows as interrupted
            own = getattr(e, "per_member", {})  # members that failed for reasons of their own (kd.train)
            for err in {id(x): x for x in [e, *own.values()]}.values():
                if isinstance(err, DamagedTeacher):
                    _teacher_damaged(err.folder, str(err))
            for f in todo:
                if not (f / "result.json").exists():
                    error = own.get(f, e)
                    try:
                        state.record_error(f, first_line(error), "".join(traceback.format_exception(error)))
                    except (UserError, OSError) as unrecorded:  # a full disk: the error itself is what to say
                        logging.getLogger(__name__).error("%s: not recorded (%s)", first_line(error), unrecorded)
            raise
        finally:
            stop_heartbeat()
    return [state.read_json(f / "result.json") for f in folders]


def _waiting(folder: Path, teachers: dict[str, str]) -> dict:
    """What a unit started ahead waits for, for its job's attempt.json: its own teacher, or (its own
    done) the teachers of others in its pack."""
    if not teachers:
        return {}
    own = ((state.read_json(folder / "config.json") or {}).get("config") or {}).get("teacher")
    if own in teachers:
        return {"waiting_for": [teachers[own]]}
    return {"waiting_for": sorted(teachers.values()), "waiting_for_pack": True}


def _teacher_damaged(folder: Path, line: str) -> None:
    """A student found its finished teacher's model.pt damaged: the teacher is no longer done (its
    result kept aside, the finding as its error), so status says so and resume trains it again."""
    try:
        aside = results.keep_aside(folder / results.RESULT)
    except FileNotFoundError:  # another student of it found it first
        return
    state.record_error(folder, f"{line}; found by a student, its result kept as {aside.name}: resume trains it again")


def _train(todo: list[Path], data_root: Path | None, device: str | None, stop: Callable[[], bool] | None,
           after: list[Path]) -> bool:
    """Train the unit's jobs; False where it was stopped before it began (waiting for its teacher)."""
    configs = [train_config(f) for f in todo]
    from kd import phases, train

    phases.skip_dynamo_import()  # a process of kd-sweep's own: nothing here compiles
    if after:  # start up (CUDA, the data) while the teacher trains
        train.pick_device(device)
    dataset = _dataset(configs[0].dataset, data_root)
    if after:
        if not _wait_for([Path(a) for a in after], stop):
            return False
        for f in todo:
            state.record_began(f)
    train.run_pack(configs, todo, data_root=data_root, device=device, stop=stop, dataset=dataset,
                   checkpoint_every=checkpoint_every(),
                   keep_checkpoint=switch("KDSWEEP_KEEP_CHECKPOINTS", False),
                   cache_logits=read_from_cache(todo))
    return True


def read_from_cache(folders: list[Path]) -> list[Path]:
    """The job folders among ``folders`` (a unit's) whose logits a student of the sweep's plan
    (plan.json, beside ``jobs/``) will read from the teacher cache, i.e. trains without augmentation:
    the teacher's unit caches them (kd.train.run_pack), so that the students' unit finds them ready.
    None where the plan cannot be read: the students then compute them, as they would anyway."""
    plan = state.read_json(folders[0].parent.parent / "plan.json") if folders else None
    jobs = plan.get("jobs") if isinstance(plan, dict) else None
    read: set[str] = set()
    for j in jobs if isinstance(jobs, list) else ():
        config, needs = (j.get("config"), j.get("depends_on")) if isinstance(j, dict) else (None, None)
        if isinstance(config, dict) and not config.get("augment") and isinstance(needs, list):
            read.update(t for t in needs if isinstance(t, str))
    return [f for f in folders if f.name in read]


_LOADED: dict[tuple, object] = {}  # the dataset this process loaded last: a worker's next unit reuses it


def _dataset(name: str, root: Path | None):
    """The dataset, loaded once per worker process while its units use the same one (a long-lived
    worker runs a grid's teachers and packs one after another: Fashion-MNIST took 0.5 s a unit on
    a GPU machine); one kept at a time."""
    from kd import data as kd_data

    key = (name, str(root) if root else None)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = kd_data.load(name, root)
    return _LOADED[key]


def _wait_for(folders: list[Path], stop: Callable[[], bool] | None, poll: float = 0.05) -> bool:
    """Until every folder has its result (True) or ``stop()`` (False); a failure there fails this unit.
    Then, for at most LOCK_WAIT_S, until their units are over (their job locks free): a teacher's
    unit caches its students' logits after its result (kd.train.cache_teacher_logits)."""
    from kd.errors import UserError

    while True:
        waiting = [f for f in folders if not (f / "result.json").exists()]
        if not waiting:
            break
        if stop is not None and stop():
            return False
        for f in waiting:
            error = state.read_json(f / "error.json")
            if error is not None:
                raise UserError(f"its teacher {f.name} failed: {error.get('line', '')}")
        time.sleep(poll)
    deadline = time.monotonic() + LOCK_WAIT_S
    while any(state.held(f) for f in folders) and time.monotonic() < deadline:
        if stop is not None and stop():
            return False
        time.sleep(poll)
    return True


def run_one(folders: list[Path], after: list[Path], data_root: Path | None, device: str | None,
            stop: StopFlag) -> int:
    """One unit to its exit status: 0 done, 2 a user's error (one line), 1 a bug (a traceback),
    128 + the signal when a signal stopped it."""
    try:
        results = run_unit(folders, data_root=data_root, device=device, after=after, stop=stop)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        return 1
    return 128 + stop.signal if None in results and stop.signal else 0


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with_parent() -> None:
    """Have the kernel send this worker SIGTERM when the run that started it dies (killed outright:
    SIGKILL, the OOM killer), so that it checkpoints and stops, where it trained on with no one to
    report to, into folders a new run of the sweep may have made anew. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != os.environ.get("KDSWEEP_RUN_PID", str(os.getppid())):  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def serve(channel: int, data_root: Path | None, device: str | None, read_ahead: str | None = None) -> int:
    """A long-lived worker (sweep.pool): imports torch once, then runs the units it reads from stdin,
    one JSON line each, until its end; each unit's output goes into the unit's log, and its exit
    status back as one line on file descriptor ``channel``. A signal stops the unit and the worker.
    ``read_ahead``: the dataset its units train on, read while torch is imported."""
    stop = StopFlag(patient=True)
    stop.catch(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # a hangup: the terminal closed
    _stop_with_parent()
    if read_ahead:  # the sweep's data read meanwhile (kd.data.read_ahead)
        from kd import data

        data.read_ahead(read_ahead, data_root)
    from kd import graphs, train

    if train.pick_device(device).type == "cuda" and switch("KDSWEEP_FUSED_CNN", True):  # torch and CUDA:
        from kd import pool  # once per worker, not once per unit; and Triton's cache key in a thread

        pool.warm_up()
    with os.fdopen(channel, "w") as answers:
        for line in sys.stdin:
            request = json.loads(line)
            with _output_into(Path(request["log"])):
                status = run_one([Path(f) for f in request["folders"]], [Path(a) for a in request["after"]],
                                 data_root, device, stop)
            if read_ahead:  # what the unit did not take (it loaded nothing) is not kept
                data.drop_read_ahead()
                read_ahead = None
            # a signal stops the worker too: it says so with the answer, so that no unit is sent its way;
            # so does a failed CUDA capture, which leaves CUDA's generator unusable in this process
            spent = graphs.FAILED_CAPTURES["count"] > 0
            answers.write(json.dumps({"status": status, "exiting": bool(stop.signal) or spent}) + "\n")
            answers.flush()
            if stop.signal:
                return status
            if spent:
                break
    # the end of its input, or a failed capture: exit at once. The interpreter's own teardown with
    # torch loaded takes 0.6 s of a CPU (module finalisers), which the sweep's end would wait for;
    # every unit's files are closed and flushed already.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@contextlib.contextmanager
def _output_into(log: Path):
    """This process's stdout and stderr (file descriptors 1 and 2) appended to ``log`` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="run kd-sweep job folders as one unit (used by kdsweep run)")
    p.add_argument("folders", type=Path, nargs="*", help="one job, or the students of one pack")
    p.add_argument("--after", type=Path, nargs="*", default=[], help="wait for these jobs' results first")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--device")
    p.add_argument("--serve", type=int, metavar="FD", help="run units read from stdin; answer on file descriptor FD")
    p.add_argument("--read-ahead", metavar="DATASET", help="with --serve: read this dataset while torch is imported")
    args = p.parse_args(argv)
    logs.setup(fmt=logs.FILE_FORMAT)  # its stderr: the unit's log (kdsweep run), milliseconds too
    if args.serve is not None:
        return serve(args.serve, args.data_root, args.device, args.read_ahead)
    if not args.folders:
        p.error("give the job folders of one unit, or --serve FD")
    stop = StopFlag()
    stop.catch(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # a hangup: the terminal closed
    return run_one(args.folders, args.after, args.data_root, args.device, stop)


if __name__ == "__main__":
    sys.exit(main())


class SlurmTask:
    """The callable that submitit pickles into each SLURM array task.

    On the warning signal (time limit or preemption) the training loop finishes its step and
    checkpoints mid-epoch; then submitit's own handler runs: it calls ``checkpoint`` and requeues
    the task with the same arguments, and the requeued task resumes at that step. SIGTERM (a
    ``scancel``) stops the same way, without a requeue.
    """

    def __call__(self, folders: list[str], data_root: str | None = None) -> str:
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        slurm_id = (f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
                    if "SLURM_ARRAY_JOB_ID" in os.environ else os.environ.get("SLURM_JOB_ID"))
        logs.setup(force=True)
        folders = [Path(f) for f in folders]
        _log_into(folders, slurm_id)
        import submitit

        warning = submitit.JobEnvironment._usr_sig()  # USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
        requeue = signal.getsignal(warning)  # submitit's checkpoint-and-requeue handler
        stop = StopFlag()
        stop.catch(warning, signal.SIGTERM)
        results = run_unit(folders, data_root=Path(data_root) if data_root else None, stop=stop, slurm_job_id=slurm_id)
        if None in results and stop.signal == warning and callable(requeue):
            try:
                requeue(warning, None)  # requeues this task and exits
            except Exception as e:  # submitit's "Job not requeued because: timed-out too many times."
                why = str(e).rstrip(".").split("because: ")[-1] or e.__class__.__name__
                line = (f"time limit: not requeued ({why}: the profile's max_requeue)" if "too many" in why else
                        f"Slurm's warning signal: not requeued ({why})")
                for f in folders:
                    if not (f / "result.json").exists():
                        state.record_error(f, f"{line}; {state.resume_from(f)}, or raise the profile's time")
                raise
        return "done" if None not in results else "stopped"

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _log_into(folders: list[Path], slurm_id: str | None) -> None:
    """A Slurm task logs into its first job's ``log`` too (the others say where), as a local run does;
    the task named as status and sacct name it (array_task, not the task's own job number)."""
    header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} slurm task {slurm_id or '?'}\n"
    for f in folders[1:]:
        with open(f / "log", "a") as other:
            other.write(header + f"(packed with {len(folders)} jobs: see {folders[0] / 'log'})\n")
    with open(folders[0] / "log", "a") as first:
        first.write(header)
    handler = logging.FileHandler(folders[0] / "log")
    handler.setFormatter(logging.Formatter(logs.FILE_FORMAT, logs.DATEFMT))
    logging.getLogger().addHandler(handler)
