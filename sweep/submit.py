"""SLURM submission through submitit: each level of the plan is one job array.

The first array holds the jobs that need nothing (teachers, students from scratch); the
second the students, depending ``afterok`` on exactly the teacher tasks they need. The
container is applied through submitit's own means: the job's python command is prefixed
by ``apptainer exec`` or ``ch-run``, or pyxis options are given to srun. submitit renders the sbatch
text (``_make_sbatch_string``); this module only turns a profile into its parameters.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.errors import UserError
from sweep import profile as prof, slurm, state, status
from sweep.plan import Job, Plan, units

LEVEL_NAMES = slurm.LEVEL_NAMES


def image_python() -> list[str]:
    """What comes before the image's python, so that the image's own code runs: sbatch hands the
    submitting shell's environment to the job and the runtimes hand it on, so its PYTHONPATH (or a
    ~/.local site-packages in a bound home, or the submission's folder, a checkout, first on sys.path
    under ``python -m``) would put the host's kd and sweep in front of the image's, under the image's
    name in every result. PYTHONPATH is unset only where this shell has one: an image may set its own."""
    unset = [a for var in ("PYTHONPATH", "PYTHONHOME") if var in os.environ for a in ("-u", var)]
    return ["env", *unset, "PYTHONNOUSERSITE=1", "PYTHONSAFEPATH=1"]


def python_command(p: prof.Profile, mounts: list[str]) -> str:
    """The command that starts python for a job: inside the container where the profile has one."""
    c = p.container
    if c.runtime == "apptainer":
        binds = [*c.binds, *mounts]
        parts = ["apptainer", "exec", *(["--nv"] if c.nv else []),
                 *[a for b in binds for a in ("--bind", b)], c.image, *image_python(), c.python]
        return shlex.join(parts)
    if c.runtime == "charliecloud":  # --set-env: the image's ENV (PATH to its python, KDSWEEP_DATA ...)
        parts = ["ch-run", "--set-env", *[a for b in [*c.binds, *mounts] for a in ("-b", b)], c.image, "--",
                 *image_python(), c.python]
        return shlex.join(parts)
    if c.runtime == "pyxis":
        return shlex.join([*image_python(), c.python])
    return shlex.quote(p.python or sys.executable)


def executor_parameters(p: prof.Profile, name: str, mounts: list[str]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one array of this profile."""
    params: dict[str, Any] = {"job_name": name, "time": p.time_min, "nodes": 1, "ntasks_per_node": 1,
                              "cpus_per_task": p.cpus, "array_parallelism": p.array_parallelism,
                              "signal_delay_s": p.signal_delay_s, "stderr_to_stdout": True}
    if p.gpus:
        params["gpus_per_node"] = p.gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(p, key):
            params[key] = getattr(p, key)
    if p.mem_gb:
        # MB rounded up: --mem=0 asks Slurm for all of a node's memory
        params["mem"] = f"{int(p.mem_gb)}GB" if p.mem_gb == int(p.mem_gb) else f"{math.ceil(p.mem_gb * 1024)}MB"
    if p.setup:
        params["setup"] = list(p.setup)
    if p.sbatch:
        params["additional_parameters"] = dict(p.sbatch)
    if p.container.runtime == "pyxis":
        mount_list = ",".join(m if ":" in m else f"{m}:{m}" for m in [*p.container.binds, *mounts])
        params["srun_args"] = [f"--container-image={p.container.image}",
                               *([f"--container-mounts={mount_list}"] if mount_list else []),
                               "--container-workdir=" + str(Path.cwd())]
    return params


def _mounts(folder: Path, data_root: Path | None) -> list[str]:
    """Paths the job must see inside the container: the results folder and the data root."""
    paths = [Path(folder).resolve().parent]
    if data_root:
        paths.append(Path(data_root).resolve())
    return [str(p) for p in paths]


def _level_units(plan: Plan, pack: int | str, p: prof.Profile) -> list[list[tuple[Job, ...]]]:
    """Array tasks per level: the units (a job, or a pack) in each level of the plan, packs sized
    for the profile's device (a GPU where it asks for one), one device for each task."""
    all_units = units(plan, pack, "cuda" if p.gpus else "cpu", side_by_side=True)
    return [[u for u in all_units if u[0] in level] for level in plan.levels()]


def preview(plan: Plan, p: prof.Profile, folder: Path, data_root: Path | None = None,
            pack: int | str = "auto") -> list[tuple[str, list[tuple[Job, ...]], str]]:
    """The sbatch script each array would get, rendered by submitit without submitting anything."""
    from submitit.slurm.slurm import _make_sbatch_string

    mounts = _mounts(folder, data_root)
    command = " ".join([python_command(p, mounts), "-u -m submitit.core._submit", shlex.quote(str(folder / "slurm" / "%j"))])
    out = []
    for i, tasks in enumerate(_level_units(plan, pack, p)):
        params = executor_parameters(p, f"{plan.sweep.name}-{LEVEL_NAMES[i]}", mounts)
        if i > 0:
            params["dependency"] = "afterok:<the teacher tasks they need, e.g. 1234_0>"
            params["additional_parameters"] = {**params.get("additional_parameters", {}), "kill-on-invalid-dep": "yes"}
        text = _make_sbatch_string(command=command, folder=folder / "slurm" / "%j", map_count=len(tasks), **params)
        out.append((LEVEL_NAMES[i], tasks, text))
    return out


@dataclass
class Submitted:
    arrays: list[tuple[str, str, int]] = field(default_factory=list)  # (level, slurm array id, tasks)
    skipped_active: int = 0
    already_done: int = 0
    cancelled: int = 0  # students queued behind a failed teacher: cancelled, then submitted again
    held_back: list[str] = field(default_factory=list)  # students not submitted: their teacher trains where
    # no Slurm id is known to wait on (a local run; a lost submissions record and no task in its folder)
    held_for: list[str] = field(default_factory=list)  # those teachers: "name (its state's detail)"
    found: list[str] = field(default_factory=list)  # arrays of this sweep in Slurm's queue its record lacked


def submit(plan: Plan, p: prof.Profile, folder: Path, data_root: Path | None = None,
           pack: int | str = "auto") -> Submitted:
    """Submit every job that is neither done nor queued/running; never submits a job twice."""
    prof.check_for_submission(p, _mounts(folder, data_root))
    import submitit

    out = Submitted()
    with state.sweep_lock(folder):
        state.write_plan(folder, plan, data_root, (p.name, p.path))
        found = slurm.unrecorded(folder)
        unread = [t for _, _, tasks in found.values() for t in tasks]
        if unread:
            raise UserError(f"Slurm holds {len(unread)} tasks submitted from {folder} that its record "
                            f"({slurm.RECORD}) does not list, and whose own files under slurm/ are gone "
                            f"({', '.join(unread[:5])}{', ...' * (len(unread) > 5)}): what they train is unknown, "
                            "and submitting again could train it twice",
                            hint=f"scancel {' '.join(unread)} (or wait for them to end), then resume")
        for array, (name, jobs, _) in found.items():  # Slurm holds them: recorded again, not submitted twice
            level = name.rsplit("-", 1)[-1]
            slurm.add_submission(folder, level if level in LEVEL_NAMES else LEVEL_NAMES[0], jobs, p.name, p.path,
                                 name=name, found=True)
            out.found.append(array)
        states = dict((j.id, s) for j, s in status.job_states(plan, folder, strict=True, found={}))  # recorded above
        out.already_done = sum(s.state == state.DONE for s in states.values())
        stranded = {jid for jid, s in states.items() if s.stranded}  # queued behind a teacher that failed
        out.skipped_active = sum(status.active(s) for jid, s in states.items() if jid not in stranded)
        todo = {j.id for j in plan.jobs if states[j.id].state != state.DONE
                and (not status.active(states[j.id]) or j.id in stranded)}
        if not todo:
            return out
        known = _waitable(folder, states, plan.sweep.name)
        if stranded:
            slurm.cancel(sorted({states[jid].slurm_id for jid in stranded}))  # a pack's students share one task
            out.cancelled = len(stranded)
        mounts = _mounts(folder, data_root)
        try:
            executor = submitit.SlurmExecutor(folder=folder / "slurm" / "%j", python=python_command(p, mounts),
                                              max_num_timeout=p.max_requeue)
        except RuntimeError as e:  # no srun on this machine
            raise UserError(f"cannot submit to SLURM here: {e}") from None
        task = _task()
        names = {j.id: j.name for j in plan.jobs}
        root = str(Path(data_root).resolve()) if data_root else None
        for i, level_units in enumerate(_level_units(plan, pack, p)):
            tasks = [[j for j in u if j.id in todo] for u in level_units]
            # a student whose teacher trains out of Slurm's sight (no id to wait on) would start at once
            # and fail: it waits for a later resume
            unseen = {j.id: [d for d in j.depends_on if states[d].state != state.DONE and d not in known]
                      for t in tasks for j in t}
            for jid, teachers in unseen.items():
                if teachers:
                    out.held_back.append(jid)
                    out.held_for += [w for d in teachers
                                     if (w := f"{names[d]} ({states[d].detail})") not in out.held_for]
            tasks = [[j for j in t if not unseen[j.id]] for t in tasks]
            tasks = [t for t in tasks if t]
            if not tasks:
                continue
            params = executor_parameters(p, f"{plan.sweep.name}-{LEVEL_NAMES[i]}", mounts)
            deps = sorted({known[d] for t in tasks for j in t for d in j.depends_on
                           if states[d].state != state.DONE and d in known})
            if deps:  # Slurm cancels the students of a teacher that fails, instead of keeping them for ever
                params["dependency"] = "afterok:" + ":".join(deps)
                params["additional_parameters"] = {**params.get("additional_parameters", {}),
                                                   "kill-on-invalid-dep": "yes"}
            executor.update_parameters(**params)
            folders = [[str(state.job_dir(folder, j).resolve()) for j in t] for t in tasks]
            said = io.StringIO()  # submitit prints sbatch's refusal: it is said once, in the error line
            before = _submitit_files(folder)
            try:
                with contextlib.redirect_stderr(said):
                    submitted = executor.map_array(task, folders, [root] * len(tasks))
            except Exception as e:  # sbatch refused: its first line says why ('Try sbatch --help' does not)
                for leftover in _submitit_files(folder) - before:  # the refused array's pickles and sbatch file
                    leftover.unlink(missing_ok=True)
                lines = [x.strip() for x in (said.getvalue() + "\n" + str(e)).splitlines() if x.strip()]
                why = next((x for x in lines if not x.startswith("Try ")), e.__class__.__name__)
                went = "; ".join(f"{level} array {aid} ({n} tasks)" for level, aid, n in out.arrays)
                earlier = "; ".join(filter(None, [
                    out.cancelled and f"cancelled before it: {out.cancelled} students queued behind a failed teacher",
                    went and f"submitted before it: {went}"]))
                raise UserError(f"sbatch refused the {LEVEL_NAMES[i]} array: {why}" + (
                    f" ({earlier}; resume submits the rest once this is fixed)" if earlier else "")) from None
            sys.stderr.write(said.getvalue())  # accepted: whatever sbatch warned of is shown
            ids = {j.id: s.job_id for t, s in zip(tasks, submitted) for j in t}
            slurm.add_submission(folder, LEVEL_NAMES[i], ids, p.name, p.path, name=params["job_name"])
            known.update(ids)
            out.arrays.append((LEVEL_NAMES[i], submitted[0].job_id.split("_")[0], len(tasks)))
    return out


def _waitable(folder: Path, states: dict[str, state.JobState], sweep: str) -> dict[str, str]:
    """The Slurm task of each job that Slurm holds queued or running now: what a student may wait on.
    An id Slurm no longer knows (or that names another job now: its ids start again after its state
    is lost) would be a dependency it takes as met, and the student would start at once and fail."""
    known = {jid: s.slurm_id for jid, s in states.items() if s.slurm_id and status.active(s)}
    # training, its submission unrecorded (the record lost): the task its attempt.json names, if Slurm holds it
    lost = {jid: sid for jid, s in states.items()
            if status.active(s) and jid not in known and (sid := status.attempt_task(folder, jid))}
    held = status.held_tasks(list(lost.values()), sweep)
    known.update({jid: sid for jid, sid in lost.items() if sid in held})
    return known


def _submitit_files(folder: Path) -> set[Path]:
    """What submitit writes before sbatch answers: each task's pickle and the sbatch script, moved
    into the array's own folder once sbatch accepts it (the script leaving a link behind), left
    where they are when sbatch refuses it."""
    try:
        return {f for f in (folder / "slurm").iterdir() if not f.is_symlink() and f.is_file()
                and (f.suffix == ".pkl" or f.name.startswith(".submission_file_"))}
    except OSError:
        return set()


def _task():
    from sweep.worker import SlurmTask

    return SlurmTask()
