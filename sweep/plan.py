"""The planner: sweep in, ordered jobs out. Pure: no I/O, no torch.

Each job's id is a short hash of its canonical resolved config, so the same sweep file
always gives the same ids and resume is "plan again, skip what is done". Grid points
that are the same computation are one job: a student with alpha = 0 ignores the
temperature and the teacher, so it is the student from scratch.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from kd.config import (APPLIES, DEFAULTS, TEACHER_METHODS, TEACHER_OF, auto_pack, combination_problem, pack_key,
                       packable, resolve, shown, teacher_problem)
from kd.errors import UserError
from sweep.spec import TEACHER_AXES, Sweep

# Settings added after the first release: left out of job ids while unset, so that the ids of
# earlier sweeps (and so their finished results) stay valid. A setting added later goes here.
LATER_SETTINGS = ("subclasses", "beta", "aux_temperature", "pretrained", "augment", "head_epochs", "finetune_lr",
                  "unfreeze_from", "class_weights", "precision", "channels_last")


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    method: str
    config: dict[str, Any] = field(hash=False)  # canonical settings; "teacher" is the teacher's job id
    depends_on: tuple[str, ...] = ()
    points: tuple[dict[str, Any], ...] = field(default=(), hash=False)  # grid points that are this job

    @property
    def settings(self) -> dict[str, Any]:
        """Its settings as its grid point names them (the tables' columns): see ``point_settings``."""
        return point_settings(self.config, self.points)


def point_settings(config: dict[str, Any], points: tuple[dict[str, Any], ...] | list) -> dict[str, Any]:
    """A job's settings, and for a student the settings of its teacher that the grid varies and
    the student has not (a subclass student's beta: its teacher's): they tell its grid points
    apart. All points of a student with a teacher share that teacher, so the first says them."""
    if not config.get("teacher") or not points:
        return config
    return {**config, **{k: v for k, v in points[0].items()  # its teacher's own: beta, aux_temperature
                         if k in APPLIES and config["method"] not in APPLIES[k] and config.get(k) is None}}


@dataclass(frozen=True)
class Plan:
    sweep: Sweep
    jobs: tuple[Job, ...]  # teachers first, then students, each in grid order
    excluded: int = 0
    kept: tuple[tuple[str, int], ...] = ()  # (job id, exclude rule): a teacher excluded that students need

    def kept_notes(self) -> list[str]:
        """Why a teacher point that an [[exclude]] rule matched runs all the same: its students."""
        out = []
        for jid, rule in self.kept:
            job = next(j for j in self.jobs if j.id == jid)
            students = [j.name for j in self.jobs if jid in j.depends_on]
            shown = ", ".join(students[:3]) + (f", ... ({len(students):,} in all)" if len(students) > 3 else "")
            out.append(f"exclude[{rule}] matches {job.name}, but it runs: {len(students):,} "
                       f"student{'s' if len(students) != 1 else ''} need{'s' if len(students) == 1 else ''} it "
                       f"({shown}); exclude them too to leave it out")
        return out

    def levels(self) -> list[list[Job]]:
        """Jobs grouped so that each level depends only on earlier ones: first the jobs that need
        nothing (teachers, students from scratch), then the students that wait for a teacher."""
        free = [j for j in self.jobs if not j.depends_on]
        waiting = [j for j in self.jobs if j.depends_on]
        return [lvl for lvl in (free, waiting) if lvl]

    def merged(self) -> list[tuple[Job, str]]:
        """Jobs that stand for more than one grid point, with a reason a person can read."""
        out = []
        for job in self.jobs:
            kd_points = [p for p in job.points if p.get("method") == "kd"]
            if job.method == "scratch" and kd_points:
                temps = sorted({p["temperature"] for p in kd_points if "temperature" in p})
                at = f" (temperature {', '.join(shown(t) for t in temps)})" if temps else ""
                out.append((job, f"{len(kd_points)} kd point{'s' if len(kd_points) > 1 else ''} with alpha = 0{at} "
                                 f"into 1 job, {job.name}: without the distillation term "
                                 + ("the temperature has no effect" if temps else "it is the student from scratch")))
            elif len(job.points) > 1:  # e.g. model = "" and the method's default model, written out
                differ = [k for k in dict.fromkeys(k for p in job.points for k in p)
                          if len({repr(p.get(k)) for p in job.points}) > 1]
                what = "; ".join(f"{k} " + " / ".join(dict.fromkeys(repr(p.get(k)) for p in job.points)) for k in differ)
                out.append((job, f"{len(job.points)} {job.method} points ({what}) into 1 job, {job.name}: "
                                 "the same settings once the defaults are filled in"))
        return out

    @property
    def n_points(self) -> int:
        return sum(len(j.points) for j in self.jobs)


def units(plan: Plan, pack: int | str = "auto", device_kind: str = "cpu",
          side_by_side: bool = False) -> list[tuple[Job, ...]]:
    """Units of work, in plan order: jobs that share dataset, model and optimiser settings packed
    together, whatever their seeds and teachers (teachers with teachers of their method), at most ``pack`` per
    unit (1: no packing; "auto": kd.config.auto_pack for the model on a ``device_kind`` device,
    "cpu" or "cuda", shared by the units or, ``side_by_side``, one each as array tasks have)."""
    groups: dict[tuple, list[Job]] = {}
    out: list[list[Job]] = []
    for job in plan.jobs:
        size = auto_pack(job.config["model"], device_kind, side_by_side) if pack == "auto" else int(pack)
        if size == 1 or not packable(job.config):
            out.append([job])
            continue
        key = pack_key(job.config)
        if key not in groups or len(groups[key]) >= size:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(job)
    return [tuple(u) for u in out]


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that make a job what it is: unset settings added after the first release left
    out (a folder written before one was added holds the same job)."""
    return {k: v for k, v in config.items() if not (k in LATER_SETTINGS and v is None)}


def job_id(config: dict[str, Any]) -> str:
    canonical = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _applies(key: str, method: str) -> bool:
    return key not in APPLIES or method in APPLIES[key]


def axes_for(method: str, axes: list[str]) -> list[str]:
    """The grid axes that change what ``method`` computes. A teacher sees the dataset, the seed
    and its own settings; a student sees its settings and its teacher's (another teacher is
    another job for the student too)."""
    if method in TEACHER_METHODS:
        return [k for k in axes if k in TEACHER_AXES or (k in APPLIES and _applies(k, method))]
    teacher = TEACHER_OF.get(method)
    teacher_axes = axes_for(teacher, axes) if teacher else []
    return [k for k in axes if _applies(k, method) or k in teacher_axes]


def followed_by_teachers(key: str) -> bool:
    """Whether a grid axis makes a teacher per value (dataset, seed, a teacher's own setting), as
    ``axes_for`` counts it; one teacher serves every value of the others (lr, epochs)."""
    return any(axes_for(t, [key]) for t in TEACHER_METHODS)


def _name(config: dict[str, Any], varying: list[str]) -> str:
    parts = [config["method"]]
    if config.get("alpha") is not None:
        parts.append(f"a{shown(config['alpha'])}")
    if config.get("temperature") is not None:
        parts.append(f"T{shown(config['temperature'])}")
    for key in axes_for(config["method"], varying):
        if key in ("alpha", "temperature", "seed") or config.get(key) is None:
            continue
        parts.append(f"{key}{shown(config[key])}")
    parts.append(f"s{config['seed']}")
    return "-".join(str(p) for p in parts)


def _methods(sweep: Sweep) -> list[str]:
    """The sweep's methods, with the teachers its students need (they are part of the plan) first."""
    methods = list(sweep.methods)
    for student, teacher in TEACHER_OF.items():
        if student in methods and teacher not in methods:
            methods.insert(0, teacher)
    return methods


def check_size(sweep: Sweep) -> int:
    """The number of grid points (over all methods: at least the number of jobs), from the axes'
    lengths alone; a UserError above ``sweep.max_jobs``, before anything is expanded."""
    axes = sweep.axes
    sizes = {m: math.prod(len(axes[k]) for k in axes_for(m, list(axes))) for m in _methods(sweep)}
    total = sum(sizes.values())
    if total > sweep.max_jobs:
        parts = "; ".join(f"{m}: " + " x ".join(f"{k} {len(axes[k])}" for k in axes_for(m, list(axes))) + f" = {n:,}"
                          if n > 1 else f"{m}: 1" for m, n in sizes.items())  # every method: they add up to total
        raise UserError(f"{sweep.path or sweep.name}: the grid has {total:,} points ({parts}), more than "
                        f"max_jobs = {sweep.max_jobs:,}",
                        hint="if you mean it: max_jobs = N at the top of the sweep file, or --max-jobs N")
    return total


def _check_combination(sweep: Sweep, config: dict[str, Any]) -> None:
    """Settings of one job that are valid alone but not together: named where the sweep file sets them."""
    problem = combination_problem(config)
    if problem:
        key, why = problem
        table = _table_of(sweep, key, config["method"] in TEACHER_METHODS)
        whose = f" (for the {config['method']} jobs)" if config["method"] in TEACHER_METHODS and table != "teacher" else ""
        raise UserError(f"{sweep.path or sweep.name}: {table}.{key}: {why}{whose}")


def _check_teacher(sweep: Sweep, student: dict[str, Any], teacher: dict[str, Any]) -> None:
    """A student that could not read its teacher's outputs is refused here, not after the teacher trained."""
    problem = teacher_problem(student, teacher)
    if problem:
        key, why = problem
        raise UserError(f"{sweep.path or sweep.name}: {_table_of(sweep, key)}.{key}: {why}",
                        hint="set it in [train] or the grid, which teachers and students both follow")


def _table_of(sweep: Sweep, key: str, teacher: bool = True) -> str:
    """Where the sweep file sets ``key`` (for a teacher's setting, when ``teacher``): teacher, grid or train."""
    return "teacher" if teacher and key in dict(sweep.teacher) else "grid" if key in sweep.axes else "train"

def plan(sweep: Sweep) -> Plan:
    """Expand the grid into jobs: teachers first, students after, in grid order."""
    check_size(sweep)
    axes = sweep.axes
    varying = [k for k, v in axes.items() if len(v) > 1]
    base = dict(sweep.train)
    if not axes.get("dataset"):
        base["dataset"] = sweep.dataset
    teacher_base = {**base, **dict(sweep.teacher)}
    jobs: dict[str, dict[str, Any]] = {}  # id -> {"config", "depends_on", "points"}
    order: dict[str, list[str]] = {"teacher": [], "student": []}
    excluded = 0

    def add(config: dict[str, Any], point: dict[str, Any], depends_on: tuple[str, ...]) -> str:
        jid = job_id(config)
        if jid not in jobs:
            _check_combination(sweep, config)
            jobs[jid] = {"config": config, "depends_on": depends_on, "points": []}
            order["teacher" if config["method"] in TEACHER_METHODS else "student"].append(jid)
        jobs[jid]["points"].append(point)
        return jid

    teachers: dict[tuple, str] = {}
    used: set[int] = set()  # the [[exclude]] rules that matched a point
    excluded_teachers: dict[tuple, int] = {}  # a teacher point excluded -> the first rule that matched it

    def teacher_key(point: dict[str, Any], method: str) -> tuple:
        return (method, *((k, point[k]) for k in axes_for(method, list(point)) if k != "method"))

    def teacher_of(point: dict[str, Any], method: str) -> str:
        key = teacher_key(point, method)
        if key not in teachers:
            settings = dict(key[1:])
            teachers[key] = add(resolve({**teacher_base, **settings, "method": method}),
                                {"method": method, **settings}, ())
        return teachers[key]

    for method in _methods(sweep):
        relevant = axes_for(method, list(axes))
        for values in itertools.product(*(axes[k] for k in relevant)):
            point = {"method": method, **dict(zip(relevant, values))}
            rules = [i for i, rule in enumerate(sweep.exclude) if all(k in point and point[k] == v for k, v in rule)]
            if rules:
                excluded += 1
                used.update(rules)
                if method in TEACHER_METHODS:
                    excluded_teachers.setdefault(teacher_key(point, method), rules[0])
                continue
            if method in TEACHER_METHODS:
                teacher_of(point, method)
                continue
            settings = {**base, **{k: v for k, v in point.items() if k != "method"}, "method": method}
            no_teacher = method not in TEACHER_OF or settings.get("alpha", DEFAULTS["alpha"]) == 0
            if method == "kd" and no_teacher:
                settings["method"] = "scratch"  # alpha = 0 ignores the teacher: the same computation
            deps: tuple[str, ...] = ()
            if not no_teacher:
                deps = (teacher_of(point, TEACHER_OF[method]),)
                settings["teacher"] = deps[0]
                _check_teacher(sweep, resolve(settings), jobs[deps[0]]["config"])
            add(resolve(settings), point, deps)

    where = sweep.path or sweep.name
    for i, rule in enumerate(sweep.exclude):  # a typo in a value, or an axis the method has not: say so
        if i not in used:
            raise UserError(f"{where}: exclude[{i}]: matches no grid point "
                            f"({', '.join(f'{k} = {v!r}' for k, v in rule)})",
                            hint="each value must be one of its axis's, and a method named must have every axis given")
    ordered = order["teacher"] + order["student"]
    if not any(jobs[j]["config"]["method"] in sweep.methods for j in ordered):
        if not excluded:  # kd with alpha = 0 only: each point is the student from scratch, not asked for
            raise UserError(f"{where}: no jobs left: with alpha = 0 every kd point is the student from scratch, "
                            "and 'scratch' is not in methods", hint="add 'scratch' to methods, or an alpha > 0")
        raise UserError(f"{where}: no jobs left: every grid point is excluded")
    kept = tuple((teachers[key], rule) for key, rule in excluded_teachers.items() if key in teachers)
    names = [_name(point_settings(jobs[j]["config"], jobs[j]["points"]), varying) for j in ordered]
    if len(set(names)) != len(names):  # settings outside the grid differ: keep names unique with the id
        names = [f"{n}-{j[:6]}" for n, j in zip(names, ordered)]
    return Plan(sweep=sweep, excluded=excluded - len(kept), kept=kept, jobs=tuple(
        Job(id=j, name=n, method=jobs[j]["config"]["method"], config=jobs[j]["config"],
            depends_on=jobs[j]["depends_on"], points=tuple(jobs[j]["points"]))
        for j, n in zip(ordered, names)))

