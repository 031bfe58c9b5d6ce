"""Where a sweep stands: each job's state from its folder, and the totals."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from sweep import slurm, state
from sweep.plan import Job, Plan

ORDER = (state.DONE, state.RUNNING, state.QUEUED, state.FAILED, state.CANCELLED, state.INTERRUPTED, state.PENDING)


def job_states(plan: Plan, folder: Path) -> list[tuple[Job, state.JobState]]:
    """Each job's state: its folder's word, and Slurm's for submitted jobs that are not done."""
    states = {job.id: state.job_state(state.job_dir(folder, job)) for job in plan.jobs}
    submitted = {jid: sid for jid, sid in slurm.latest_ids(folder).items()
                 if jid in states and states[jid].state != state.DONE}
    seen = slurm.query(list(submitted.values()))
    for jid, sid in submitted.items():
        if sid not in seen:  # Slurm has forgotten it (no accounting): the folder tells
            continue
        st, reason = seen[sid]
        if st == state.FAILED and states[jid].state == state.FAILED:
            reason = states[jid].detail  # the job's own last error line says more than an exit code
        states[jid] = state.JobState(st, f"slurm {sid}" + (f": {reason}" if reason else ""))
    return [(job, states[job.id]) for job in plan.jobs]


def active(s: state.JobState) -> bool:
    """Queued or running somewhere: not to be started again."""
    return s.state in (state.RUNNING, state.QUEUED)


def totals(states: list[tuple[Job, state.JobState]]) -> str:
    """``20/26 done, 1 failed, 5 pending``."""
    counts = Counter(s.state for _, s in states)
    rest = [f"{counts[k]} {k}" for k in ORDER[1:] if counts[k]]
    rest += [f"{n} {k}" for k, n in counts.items() if k not in ORDER]
    return ", ".join([f"{counts[state.DONE]}/{len(states)} done", *rest])
