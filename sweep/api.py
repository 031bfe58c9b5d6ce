"""The Python API, for notebooks and scripts; the CLI is a thin layer over it.

    from sweep import api
    p = api.plan("demo")              # a sweep file path or a bundled example's name
    api.run("demo", jobs=2)
    api.collect("demo")               # -> results/demo/results.parquet, epochs.parquet
"""
from __future__ import annotations

from pathlib import Path

from sweep import spec
from sweep.plan import Plan, plan as make_plan

DEFAULT_RESULTS = Path("results")


def plan(sweep_file: str | Path) -> Plan:
    return make_plan(spec.load(sweep_file))


def folder(p: Plan, results_root: str | Path = DEFAULT_RESULTS) -> Path:
    return Path(results_root) / p.sweep.name


def run(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS, jobs: int = 1, **kwargs):
    """Run every job not done, locally; returns a ``sweep.local.Summary``."""
    from sweep import local

    p = plan(sweep_file)
    kwargs.setdefault("pack", p.sweep.pack or "auto")
    return local.run(p, folder(p, results_root), jobs=jobs, **kwargs)


def status(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS):
    from sweep import status as st

    p = plan(sweep_file)
    return st.job_states(p, folder(p, results_root))


def collect(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS):
    from sweep import collect as c

    p = plan(sweep_file)
    return c.collect(p, folder(p, results_root))


def plot(sweep_file: str | Path, *, results_root: str | Path = DEFAULT_RESULTS) -> list[Path]:
    from sweep import plots

    return plots.plot_all(folder(plan(sweep_file), results_root))
