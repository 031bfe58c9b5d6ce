"""Aggregate finished jobs into Parquet: one row per job, one row per job and epoch, and the
paired comparisons of every student grid point with its baseline (sweep.compare)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd import atomic, provenance
from kd.config import SETTINGS
from kd.errors import UserError
from sweep import compare, state
from sweep.plan import Plan

log = logging.getLogger(__name__)

RESULTS, EPOCHS, COMPARISONS, CODE_DIFF = "results.parquet", "epochs.parquet", compare.COMPARISONS, "code.diff"
DAMAGED = state.DAMAGED  # a result.json that exists but cannot be read: listed among the unfinished
# result["versions"] keys -> columns; the rest become "<key>_version"
VERSION_COLUMNS = {"git": "git_version", "dirty": "git_dirty", "diff_sha256": "git_diff_sha256"}


@dataclass
class Collected:
    results: Path
    epochs: Path
    rows: int
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (job name, state, detail)
    comparisons: Path | None = None
    code_diff: Path | None = None  # the uncommitted changes the rows ran with, when still in the tree
    foreign: int = 0  # finished jobs in the folder that the sweep does not plan (other settings): left out


def job_row(plan: Plan, job, result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"sweep": plan.sweep.name, "job_id": job.id, "name": job.name}
    row.update({k: v for k, v in job.settings.items() if k != "teacher"})
    row["teacher_job"] = job.config.get("teacher")
    row.update({k: v for k, v in result["metrics"].items() if k != "confusion"})
    if "confusion" in result["metrics"]:  # [[tn, fp], [fn, tp]] with class 1 as positive
        (tn, fp), (fn, tp) = result["metrics"]["confusion"]
        row.update(tn=tn, fp=fp, fn=fn, tp=tp)
    row["epochs_run"] = len(result["history"])
    for key in ("params", "flops_per_sample", "wall_seconds", "device"):
        row[key] = result.get(key)
    row["pack_size"] = result.get("pack_size", 1)
    row["teacher_forward_images"] = result.get("teacher_forward_images")
    row.update({VERSION_COLUMNS.get(k, f"{k}_version"): v for k, v in result.get("versions", {}).items()})
    return row


def collect(plan: Plan, folder: Path) -> Collected:
    """Write ``results.parquet``, ``epochs.parquet`` and ``comparisons.parquet`` for the finished
    jobs (atomically); list the others. A damaged ``result.json`` is skipped with a warning and
    listed as damaged: it does not stop the rest from being collected."""
    import pandas as pd

    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder: sweep {plan.sweep.name} has not run here",
                        hint="run it first, or give --results DIR where it ran")
    rows, epochs, missing, unfinished = [], [], [], []
    for job in plan.jobs:
        jdir = state.job_dir(folder, job)
        try:
            result, problem = state.own_result(jdir, job.config)
            if problem:  # "result.json unreadable (...)", "model.pt missing ...": the file it is about, named once
                raise UserError(f"{jdir / 'result.json'}: {problem.removeprefix('result.json ')}"
                                if problem.startswith("result.json ") else f"{jdir}: {problem}")
            row = job_row(plan, job, result) if result is not None else None
        except (UserError, KeyError, TypeError, ValueError) as e:
            detail = str(e) if isinstance(e, UserError) else f"{jdir / 'result.json'}: damaged result ({e!r})"
            log.warning("skipped: %s", detail)
            missing.append((job.name, DAMAGED, detail))
            continue
        if row is None:
            unfinished.append(job)
            missing.append((job.name, "", ""))
            continue
        rows.append(row)
        settings = {k: row[k] for k in SETTINGS if k in row}  # every setting: rows of any axis apart
        for h in result["history"]:
            epochs.append({"sweep": plan.sweep.name, "job_id": job.id, "name": job.name, **settings, **h})
    if unfinished:  # where each stands, Slurm asked too (a job queued there is queued, not pending)
        from sweep import status

        ids = {j.id for j in unfinished}
        where = {j.name: s for j, s in status.job_states(plan, folder) if j.id in ids}
        missing = [(n, where[n].state, where[n].detail) if not st else (n, st, d) for n, st, d in missing]
    columns = ["sweep", "job_id", "name", "method", "alpha", "temperature", "seed"]
    results = pd.DataFrame.from_records(rows, columns=None if rows else columns)
    history = pd.DataFrame.from_records(epochs, columns=None if epochs else [*columns, "epoch"])
    for df in (results, history):
        for col in ("alpha", "temperature"):
            df[col] = df[col].astype("float64")
    out_r, out_e, out_c = folder / RESULTS, folder / EPOCHS, folder / COMPARISONS
    _keep_rows_of_gone_jobs(plan, folder, (out_r, out_e), {r["job_id"] for r in rows})
    comparisons = compare.paired(results)
    for out in (out_r, out_e, out_c):
        if out.is_dir():
            raise UserError(f"{out}: a folder where this table belongs", hint=f"move {out} away and run again")
    with contextlib.ExitStack() as written:  # the three written in full, and on disk, before any replaces its
        for out, table in ((out_r, results), (out_e, history), (out_c, comparisons)):  # old one: a full disk (or
            tmp = written.enter_context(atomic.atomic_path(out, fsync=False))  # a quota met only at fsync, as
            table.to_parquet(tmp, index=False)  # NFS and Lustre say it) keeps them all old
            atomic.flush_to_disk(tmp)
    return Collected(out_r, out_e, len(rows), missing, out_c, save_code_diff(results, folder),
                     state.foreign_done(folder, plan))


def _keep_rows_of_gone_jobs(plan: Plan, folder: Path, tables: tuple[Path, ...], collected: set[str]) -> None:
    """Refuse to write over rows of finished jobs whose folders are gone (removed to save disk, or
    a results folder copied without jobs/, as the committed reference results are): collecting
    again would drop those rows, and nothing could make them again."""
    import pandas as pd

    for table in tables:
        try:
            before = set(pd.read_parquet(table, columns=["job_id"])["job_id"])
        except Exception:  # none, or unreadable: nothing in it to keep
            continue
        gone = [j.name for j in plan.jobs if j.id in before and j.id not in collected
                and not state.job_dir(folder, j).exists()]
        if gone:
            raise UserError(f"{table} holds the rows of {len(gone):,} finished {'job' if len(gone) == 1 else 'jobs'} "
                            f"whose {'folder is' if len(gone) == 1 else 'folders are'} gone from "
                            f"{folder / 'jobs'} ({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}): "
                            "collecting again would drop them",
                            hint=f"restore those folders, or move {RESULTS}, {EPOCHS} and {COMPARISONS} aside "
                                 "to collect without them")


def save_code_diff(results, folder: Path) -> Path | None:
    """``folder/code.diff``: the uncommitted changes that rows ran with (their ``git_diff_sha256``),
    when the working tree still holds exactly those, under a first line that names the commit and
    the hash (``git apply`` skips it). A code.diff of no row's code is removed. Returns the file or None."""
    path = folder / CODE_DIFF
    hashes = set(results["git_diff_sha256"].dropna()) if "git_diff_sha256" in results.columns else set()
    now = provenance.diff() if hashes else None
    digest = provenance.diff_hash(now) if now else None
    if digest in hashes:
        n = int((results["git_diff_sha256"] == digest).sum())
        header = (f"# git diff HEAD -- {' '.join(provenance.CODE_PATHS)} at commit {provenance.commit()}, "
                  f"sha256 {digest}: the uncommitted code of {n} job(s)\n")
        atomic.write_with(path, lambda f: f.write(header.encode() + now))
        return path
    if hashes:
        log.warning("%d result(s) ran on uncommitted code (git diff sha256 %s) that the working tree no longer "
                    "holds: no %s for them", int(results["git_diff_sha256"].notna().sum()),
                    ", ".join(h[:12] for h in sorted(hashes)), path)
    if path.exists() and saved_diff_hash(path) not in hashes:
        path.unlink()  # it belongs to no row any more: it would mislead
        log.warning("%s removed: no job's code any more", path)
    return path if path.exists() else None


def saved_diff_hash(path: Path) -> str | None:
    """The sha256 that a code.diff's first line names, or None."""
    try:
        with open(path, "rb") as f:
            first = f.readline().decode(errors="replace")
    except OSError:
        return None
    return first.split(" sha256 ", 1)[1].split(":", 1)[0] if first.startswith("# ") and " sha256 " in first else None


def current_results(plan: Plan, folder: Path):
    """results.parquet, refused where it was collected for another version of the sweep file (rows
    the plan no longer has): figures, comparisons and a report would show jobs it does not plan."""
    (results,) = read_tables(folder, (RESULTS,))
    other = sorted(set(results["job_id"]) - {j.id for j in plan.jobs}) if "job_id" in results else []
    if other:
        raise UserError(f"{folder / RESULTS}: holds {len(other)} job(s) that {plan.sweep.path or plan.sweep.name} "
                        f"does not plan (e.g. {results.loc[results['job_id'] == other[0], 'name'].iloc[0]}): "
                        "the sweep file changed since collect", hint="run 'kdsweep collect' first")
    return results


def read_tables(folder: Path, names: tuple[str, ...] = (RESULTS, EPOCHS)):
    """The sweep's Parquet tables, by name; ``UserError`` naming the file when one is missing or
    cannot be read as Parquet."""
    import pandas as pd

    out = []
    for name in names:
        path = Path(folder) / name
        if path.is_dir():  # pandas would read it as an empty dataset of parts: no rows, no word
            raise UserError(f"{path}: a folder, not a Parquet table", hint=f"move {path} away and run 'kdsweep collect'")
        try:
            out.append(pd.read_parquet(path))
        except FileNotFoundError:
            raise UserError(f"{path}: not found", hint="run 'kdsweep collect' first") from None
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"{path}: damaged, not a Parquet table ({str(e).splitlines()[0]})",
                            hint="run 'kdsweep collect' again to rewrite it") from None
        problem = _values_problem(out[-1]) if name in (RESULTS, EPOCHS) else None
        if problem:
            raise UserError(f"{path}: damaged, {problem}", hint="run 'kdsweep collect' again to rewrite it")
    return out


NUMBERS = ("alpha", "temperature", "seed", "epochs", "batch_size", "lr", "epoch", "seconds", "test_loss",
           "train_loss", "wall_seconds", "epochs_run")  # where present: what collect writes as numbers


def _fraction(column: str) -> bool:
    return column in ("test_accuracy", "macro_f1") or column.startswith("f1_")


def _values_problem(table) -> str | None:
    """What in a results or epochs table is not what collect writes (a column edited by hand into
    words, an accuracy in percent): the first such column and row, or None."""
    import pandas as pd

    for column in [c for c in table.columns if c in NUMBERS or _fraction(c)]:
        values = table[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            bad = values[values.map(lambda v: v is not None and not (
                isinstance(v, (int, float)) and not isinstance(v, bool)))]
            if len(bad):
                return f"column {column} holds {bad.iloc[0]!r} ({_row(table, bad.index[0])}), not a number"
            continue  # numbers and gaps (an object column of None where no job has the setting)
        if _fraction(column):
            out = values[(values < 0) | (values > 1)]
            if len(out):
                return (f"column {column} holds {out.iloc[0]:g} ({_row(table, out.index[0])}), "
                        "not a fraction between 0 and 1")
    return None


def _row(table, index) -> str:
    name = table.at[index, "name"] if "name" in table.columns else None
    return f"row {table.index.get_loc(index) + 1}" + (f", job {name}" if isinstance(name, str) else "")
