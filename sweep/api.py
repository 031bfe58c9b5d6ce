"""The Python API, for notebooks and scripts; the CLI is a thin layer over it.

    from sweep import api
    p = api.plan("demo")              # a sweep file path or a bundled example's name
    api.run("demo", jobs=2)
    api.collect("demo")               # -> results/demo/results.parquet, epochs.parquet, comparisons.parquet
    api.compare("demo")               # each distilled point against scratch, paired over seeds (a DataFrame)
    api.report("demo")                # -> results/demo/report.html, report.md
"""
from __future__ import annotations

import os
from pathlib import Path

from kd.errors import UserError
from sweep import spec
from sweep.plan import Plan, plan as make_plan

DEFAULT_RESULTS = Path("results")


def _path(value, name: str) -> Path:
    """A path argument as a notebook passes it: a str or a Path, else one error naming the argument (a
    dict gave os.fspath's TypeError, naming none)."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise UserError(f"{name}: {value!r} is not a path (a str or a pathlib.Path)")
    return Path(value)


def plan(sweep_file: str | Path | Plan, max_jobs: int | None = None) -> Plan:
    """The sweep's jobs; ``max_jobs`` (a number) raises the sweep file's limit, as --max-jobs does.
    A Plan is taken as it is (``api.run(api.plan("demo"))``)."""
    from dataclasses import replace

    if isinstance(sweep_file, Plan) and max_jobs is None:
        return sweep_file
    if isinstance(sweep_file, Plan):
        sweep_file = sweep_file.sweep.path or sweep_file.sweep.name
    sweep = spec.load(_path(sweep_file, "sweep_file"))
    if max_jobs is not None:
        sweep = replace(sweep, max_jobs=spec.check_max_jobs(max_jobs, "--max-jobs"))
    return make_plan(sweep)


def folder(p: Plan, results_root: str | Path = DEFAULT_RESULTS) -> Path:
    return _path(results_root, "results_root") / p.sweep.name


def run(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS, jobs: int = 1, **kwargs):
    """Run every job not done, locally; returns a ``sweep.local.Summary``."""
    from sweep import local

    p = plan(sweep_file)
    kwargs.setdefault("pack", p.sweep.pack or "auto")
    for name in ("on_event", "on_start"):  # called at the first event: found there, mid-run, as a TypeError
        if kwargs.get(name) is not None and not callable(kwargs[name]):
            raise UserError(f"{name}: {kwargs[name]!r} is not callable")
    if kwargs.get("data_root") is not None:
        kwargs["data_root"] = _path(kwargs["data_root"], "data_root")
    return local.run(p, folder(p, results_root), jobs=jobs, **kwargs)


def status(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS):
    from sweep import status as st

    p = plan(sweep_file)
    return st.job_states(p, folder(p, results_root))


def collect(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS, max_jobs: int | None = None):
    """Write results.parquet, epochs.parquet and comparisons.parquet; returns a ``sweep.collect.Collected``."""
    from sweep import collect as c

    p = plan(sweep_file, max_jobs)
    return c.collect(p, folder(p, results_root))


def compare(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS):
    """The paired comparisons (``sweep.compare.paired``) of the collected results: one row per
    student grid point and baseline, with the mean difference over seeds and its 95% interval."""
    from sweep import collect as c, compare as cmp

    p = plan(sweep_file)
    return cmp.paired(c.current_results(p, folder(p, results_root)))


def report(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS, max_jobs: int | None = None):
    """Write report.html and report.md from the collected results; returns a ``sweep.report.Written``."""
    from sweep import report as r

    p = plan(sweep_file, max_jobs)
    return r.write(p, folder(p, results_root))


def plot(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS, max_jobs: int | None = None) -> list[Path]:
    from sweep import collect, plots

    p = plan(sweep_file, max_jobs)
    f = folder(p, results_root)
    return plots.plot_all(f, results=collect.current_results(p, f))  # not the table of an earlier sweep file
