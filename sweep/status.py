"""Where a sweep stands: each job's state from its folder, and the totals."""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import Counter
from pathlib import Path

from kd.errors import UserError
from sweep import slurm, state
from sweep.plan import Job, Plan

log = logging.getLogger(__name__)

ORDER = (state.DONE, state.RUNNING, state.QUEUED, state.FAILED, state.CANCELLED, state.DAMAGED, state.INTERRUPTED,
         state.PENDING)


def job_states(plan: Plan, folder: Path, strict: bool = False,
               found: dict[str, tuple[str, dict[str, str], list[str]]] | None = None) -> list[tuple[Job, state.JobState]]:
    """Each job's state: its folder's word, and Slurm's for submitted jobs that are not done; a
    student that waits on (or was cancelled for) a teacher that will not finish says so. Where
    Slurm cannot be asked the folders' word stands, with a warning; ``strict`` (before a
    submission): a UserError instead, as jobs Slurm still holds would be submitted twice.
    ``found``: slurm.unrecorded(folder), where the caller has asked it already."""
    jobs = {job.id: job for job in plan.jobs}
    states = {jid: _folder_state(state.job_dir(folder, jid), jobs[jid]) for jid in jobs}
    every = slurm.submitted_ids(folder)
    names = slurm.submitted_names(folder)
    for name, tasks, _ in (slurm.unrecorded(folder) if found is None else found).values():  # missing from the
        for jid, sid in tasks.items():  # record: Slurm holds them all the same
            every.setdefault(jid, []).append(sid)
            names[sid] = name
    ids = {jid: sids[-1] for jid, sids in every.items()}  # the latest; below, the one whose state stands
    submitted = {jid: sids for jid, sids in every.items() if jid in states and states[jid].state != state.DONE}
    try:
        seen = slurm.query([sid for sids in submitted.values() for sid in sids], names)
    except slurm.Unreachable as e:
        if strict:
            raise UserError(f"cannot ask Slurm about {len(submitted)} submitted jobs of this sweep ({e}): not "
                            "submitting, as those it still holds would run twice",
                            hint="run it where squeue answers (the cluster's login node)") from None
        log.warning("could not ask Slurm about %d submitted jobs (%s): their states below are the job "
                    "folders' alone", len(submitted), e)
        seen = {}
        for jid in submitted:
            states[jid] = dataclasses.replace(states[jid], unasked=True)
    for jid, sids in submitted.items():
        known = [sid for sid in sids if sid in seen]
        if not known:  # Slurm has forgotten it (no accounting), or gave its id to another job: the folder tells
            ids.pop(jid)  # and no task of it is newer or older than another's
            if states[jid].state == state.PENDING and not states[jid].unasked:  # and it never began: a task
                # cancelled while it waited
                states[jid] = state.JobState(state.PENDING, f"slurm {sids[-1]}: Slurm no longer knows it (cancelled "
                                                            "before it started?): resume submits it again")
            continue
        # a job submitted twice (a submissions record lost): a live task's state stands over a later
        # one that stood aside (it found the job locked, and failed)
        sid = next((s for want in (state.RUNNING, state.QUEUED) for s in reversed(known) if seen[s][0] == want),
                   known[-1])
        ids[jid] = sid
        st, reason = seen[sid]
        if states[jid].state == state.DAMAGED and (st not in (state.RUNNING, state.QUEUED)
                                                   or sid == attempt_task(folder, jid)):
            # the task that wrote its result (ended, or ending) wrote one damaged since: the folder's
            # word says what, and resume; a task submitted again says where the job is instead
            states[jid] = state.JobState(state.DAMAGED, states[jid].detail, slurm_id=sid)
            continue
        trainer = attempt_task(folder, jid) \
            if st in (state.FAILED, state.CANCELLED) and states[jid].state == state.RUNNING else None
        if trainer and trainer != sid:
            # its folder's heartbeat is another task's (one whose record was lost): that one trains it, if
            # Slurm holds it as this sweep's (an id it forgot, or gave another job since, is no task to wait on)
            held = trainer in held_tasks([trainer], plan.sweep.name)
            aside = f"slurm {sid}, submitted again, stood aside" if st == state.FAILED else f"slurm {sid} {st}"
            states[jid] = state.JobState(state.RUNNING, f"{states[jid].detail}, slurm {trainer} ({aside})" + (
                "" if held else f"; Slurm does not hold slurm {trainer}"), slurm_id=trainer if held else None)
            continue
        if st == state.FAILED and states[jid].state == state.FAILED:
            reason = states[jid].detail  # the job's own last error line says more than an exit code
        elif st == state.FAILED and reason.startswith("exit code"):  # the task's log says why: it never
            line = task_log_error(folder, sid)  # began (no python, no container), or was killed
            if KILLED.search(line):  # srun's word for its task's SIGKILL, which sacct gives as exit code 9
                reason = f"killed by SIGKILL (out of memory, or a kill -9) ({line.rsplit(' (', 1)[-1]}"
            else:
                reason = "; ".join(filter(None, [reason, line]))
            if states[jid].state != state.PENDING and not state.has_checkpoint(state.job_dir(folder, jid)):
                reason = f"{reason}; {state.resume_from(state.job_dir(folder, jid))}"  # it began: say what resume does
        if st == state.QUEUED and not reason and _beating(folder, jid, sid):
            st = state.RUNNING  # the task writes its heartbeat: accounting has not caught up yet
        if st in (state.FAILED, state.CANCELLED) and state.has_checkpoint(job := state.job_dir(folder, jid)) \
                and state.resume_from(job) not in reason:  # said once (the job's own line may say it)
            reason = "; ".join(filter(None, [reason, state.resume_from(job)]))
        states[jid] = state.JobState(st, f"slurm {sid}" + (f": {reason}" if reason else ""), slurm_id=sid)
    array_of: dict[str, list[str]] = {}  # a Slurm array -> its jobs (its tasks share one dependency; a pack's
    for jid, s in states.items():  # students share one task)
        if s.slurm_id:
            array_of.setdefault(s.slurm_id.split("_")[0], []).append(jid)
    for jid, s in states.items():  # students of a teacher that will not finish (on Slurm: a local run's
        if s.state not in (state.QUEUED, state.CANCELLED) or not s.slurm_id:  # unit fails with it)
            continue
        lost = [d for d in jobs[jid].depends_on if states[d].state not in (state.DONE, state.RUNNING, state.QUEUED)
                or _newer(ids.get(d), ids.get(jid))]
        mates = [(m, d) for m in array_of.get((s.slurm_id or "").split("_")[0], []) for d in jobs[m].depends_on
                 if d not in jobs[jid].depends_on]
        if not lost and s.state == state.CANCELLED and (
                bad := [(m, d) for m, d in mates if states[d].state not in (state.DONE, state.RUNNING, state.QUEUED)]):
            m, d = bad[0]  # its own teacher is fine: the array's dependency on another's cancelled it
            where = "pack" if states[m].slurm_id == s.slurm_id else "array"
            states[jid] = state.JobState(s.state, f"{s.detail}: the teacher {jobs[d].name} of a student in its {where} "
                                                  f"{states[d].state}", slurm_id=s.slurm_id)
        elif not lost and s.detail.endswith(": waiting for its teacher") and jobs[jid].depends_on \
                and all(states[d].state == state.DONE for d in jobs[jid].depends_on):  # its own teachers are done
            waits = sorted({jobs[d].name for m, d in mates if states[d].state != state.DONE})
            tasks = sorted({ids[d] for d in jobs[jid].depends_on if ids.get(d)})
            # the array's dependency waits for others' teachers; or afterok for its teachers' tasks to end: one
            # requeued after its teacher's result (a node failure, scontrol requeue) runs again, finds it done
            why = (f"the teachers of other students in its array ({', '.join(waits[:3])}{', ...' * (len(waits) > 3)}; "
                   "its own is done)" if waits else
                   f"its teacher's task to end ({', '.join(jobs[d].name for d in jobs[jid].depends_on)} done; slurm "
                   f"{', '.join(tasks) or '?'} still in Slurm's queue: requeued, or ending)")
            states[jid] = dataclasses.replace(s, detail=s.detail.removesuffix("its teacher") + why)
        elif lost:
            t = lost[0]
            why = (f"its teacher {jobs[t].name} {states[t].state}" if not _newer(ids.get(t), ids.get(jid))
                   else f"its teacher {jobs[t].name} was submitted again after it")
            where = f"slurm {s.slurm_id}" if s.state == state.QUEUED else s.detail  # why it waits (held, ...) moot
            states[jid] = state.JobState(s.state, f"{where}: {why}" + (
                ": never to be met; resume cancels and resubmits it" if s.state == state.QUEUED else ""),
                stranded=s.state == state.QUEUED, slurm_id=s.slurm_id)
    return [(job, states[job.id]) for job in plan.jobs]


def unplanned_active(plan: Plan, folder: Path) -> list[str]:
    """Slurm tasks queued or running for jobs of this sweep's record that the plan no longer holds
    (the sweep file edited since they were submitted): they run on, unseen by status and resume.
    Empty where there are none, or Slurm cannot be asked."""
    planned = {j.id for j in plan.jobs}
    try:
        latest = slurm.latest_ids(folder)
    except UserError:  # a damaged record: said elsewhere
        return []
    live = {sid for jid, sid in latest.items() if jid in planned}  # a pack's task may train planned jobs too
    ids = {sid for jid, sid in latest.items() if jid not in planned and sid not in live}
    if not ids:
        return []
    try:
        seen = slurm.query(sorted(ids), slurm.submitted_names(folder))
    except slurm.Unreachable:
        return []
    return sorted(sid for sid in ids if seen.get(sid, ("",))[0] in (state.RUNNING, state.QUEUED))


def _folder_state(folder: Path, job: Job) -> state.JobState:
    """The job's folder's word, unless the folder holds another job's settings (a moved or edited
    folder): then nothing in it is this job's, and run and resume refuse it until it is moved away."""
    saved = (state.read_json(folder / "config.json") or {}).get("config")
    differ = state.settings_differ(saved, job.config) if isinstance(saved, dict) else []  # damaged: resume rewrites it
    if differ:
        return state.JobState(state.FAILED, f"{folder} holds other settings than the job ({', '.join(differ[:4])}): "
                                            "move it away, then resume")
    return state.job_state(folder, job.config)  # a config.json gone: the result is still checked against the plan


KILLED = re.compile(r"srun: error: .*: tasks? [\d,-]+: Killed")


def task_log_error(folder: Path, sid: str) -> str:
    """Where a task failed outside its job's own code (no python at the profile's path, a container
    that did not start, an image without the project, a kill), why, from the task's own log: the
    exception of its last Python traceback, else its first error line; and the log. Else ''."""
    for name in (f"{sid}_0_log.err", f"{sid}_0_log.out"):  # submitit's: slurm/<task>/<task>_0_log.* (an
        log = folder / "slurm" / sid / name  # array's task 54_1, or a submission of one task: 53)
        try:
            lines = log.read_text(errors="replace").splitlines()[-200:]
        except OSError:
            continue
        # the later of its last traceback and a kill (a traceback logged and handled, then the OOM killer);
        # else python -m's own word, else srun's
        ends = [(i, x.strip()) for i, x in enumerate(lines) if KILLED.search(x)] + [_exception_line(lines) or (-1, "")]
        hit = max(ends)[1] or next((x.strip() for x in lines if ": No module named " in x), None) \
            or next((x.strip() for x in lines if "error" in x.lower()), None)
        if hit:
            return f"{hit[:200]} ({log})"
    return ""


def _exception_line(lines: list[str]) -> tuple[int, str] | None:
    """(where, the exception line) of the last traceback in ``lines`` ('ModuleNotFoundError: No module
    named 'sweep''): the first line after it that is not indented; None without one."""
    starts = [i for i, x in enumerate(lines) if x.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    return next(((i, x.strip()) for i, x in enumerate(lines[starts[-1] + 1:], starts[-1] + 1)
                 if x.strip() and not x[0].isspace()), None)


def _newer(teacher: str | None, student: str | None) -> bool:
    """The teacher was submitted again after the student: the student's afterok names a dead task."""
    return bool(teacher and student) and int(teacher.split("_")[0]) > int(student.split("_")[0])


def attempt_task(folder: Path, jid: str) -> str | None:
    """The Slurm task that last began training the job (its attempt.json says), or None (or where
    that attempt trained another folder: this one a copy of it)."""
    job = state.job_dir(folder, jid)
    attempt = state.read_json(job / "attempt.json") or {}
    return None if state.trained_elsewhere(job, attempt) else attempt.get("slurm_job_id")


def _beating(folder: Path, jid: str, sid: str) -> bool:
    """Whether Slurm task ``sid`` is at work on the job: its attempt's heartbeat is fresh."""
    try:
        return (attempt_task(folder, jid) == sid
                and time.time() - (state.job_dir(folder, jid) / "attempt.json").stat().st_mtime < state.STALE_S)
    except OSError:
        return False


def held_tasks(sids: list[str], sweep: str) -> set[str]:
    """The tasks among ``sids`` that Slurm holds queued or running as this sweep's (by their job
    names: an id it forgot, or gave another job since, is none); none where it cannot be asked."""
    try:
        seen = slurm.query(sorted(set(sids)), {sid: slurm.sweep_names(sweep) for sid in sids}) if sids else {}
    except slurm.Unreachable:
        return set()
    return {sid for sid in sids if seen.get(sid, ("",))[0] in (state.RUNNING, state.QUEUED)}


def active(s: state.JobState) -> bool:
    """Queued or running somewhere: not to be started again."""
    return s.state in (state.RUNNING, state.QUEUED)


def totals(states: list[tuple[Job, state.JobState]]) -> str:
    """``20/26 done, 1 failed, 5 pending``."""
    counts = Counter(s.state for _, s in states)
    rest = [f"{counts[k]} {k}" for k in ORDER[1:] if counts[k]]
    rest += [f"{n} {k}" for k, n in counts.items() if k not in ORDER]
    return ", ".join([f"{counts[state.DONE]}/{len(states)} done", *rest])
