"""Where a sweep stands: each job's state from its folder, and the totals."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from sweep import state
from sweep.plan import Job, Plan

ORDER = (state.DONE, state.RUNNING, "queued", state.FAILED, "cancelled", state.INTERRUPTED, state.PENDING)


def job_states(plan: Plan, folder: Path) -> list[tuple[Job, state.JobState]]:
    return [(job, state.job_state(state.job_dir(folder, job))) for job in plan.jobs]


def totals(states: list[tuple[Job, state.JobState]]) -> str:
    """``20/26 done, 1 failed, 5 pending``."""
    counts = Counter(s.state for _, s in states)
    rest = [f"{counts[k]} {k}" for k in ORDER[1:] if counts[k]]
    rest += [f"{n} {k}" for k, n in counts.items() if k not in ORDER]
    return ", ".join([f"{counts[state.DONE]}/{len(states)} done", *rest])
