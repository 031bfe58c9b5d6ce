"""The job ids of every bundled example sweep, against a golden table (tests/golden/job-ids.txt).

A job's id names its results folder: a changed id orphans a user's finished results (the
job runs again, and its old folder is no longer part of the sweep).
"""
import os
from pathlib import Path

from sweep import api, spec

GOLDEN = Path(__file__).parent / "golden" / "job-ids.txt"
REFRESH = "KDSWEEP_REFRESH_GOLDEN=1 .venv/bin/pytest tests/test_job_ids.py"


def _table() -> str:
    rows = [(f.stem, job.name, job.id) for f in sorted(spec.EXAMPLES.glob("*.toml")) for job in api.plan(f).jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "".join(f"{s:{widths[0]}}  {n:{widths[1]}}  {i}\n" for s, n, i in rows)


def test_job_ids_of_the_example_sweeps_do_not_change():
    """Refresh, only for a deliberate change of ids: KDSWEEP_REFRESH_GOLDEN=1 pytest tests/test_job_ids.py"""
    table = _table()
    if os.environ.get("KDSWEEP_REFRESH_GOLDEN"):
        GOLDEN.write_text(table)
    golden = GOLDEN.read_text()
    was, now = set(golden.splitlines()), set(table.splitlines())
    diff = [f"- {line}" for line in sorted(was - now)] + [f"+ {line}" for line in sorted(now - was)]
    assert table == golden, (
        "job ids of the example sweeps changed: a changed id orphans a user's finished results "
        "(those jobs would run again in new folders).\n  golden (-) / now (+):\n" + "\n".join(diff)
        + f"\nIf the change is deliberate (and announced), refresh the golden file: {REFRESH}")
