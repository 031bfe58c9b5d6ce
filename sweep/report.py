"""A sweep's report: one self-contained HTML file (figures inline) and its Markdown twin.

    results/<sweep>/report.html   opens anywhere, no network: images are base64 PNG
    results/<sweep>/report.md     the same content; figures linked from plots/

The content is built once as a list of sections of plain blocks (text, lists, tables, code,
figures) and rendered twice, so the two files cannot say different things.
"""
from __future__ import annotations

import base64
import html
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kd import atomic
from kd.config import TEACHER_METHODS
from sweep import collect, compare, plots, state
from sweep.plan import Plan, units

log = logging.getLogger(__name__)

HTML, MARKDOWN = "report.html", "report.md"
# What one process per grid point costs against kd-sweep's packed students, as bench/kd_grid.py
# last measured it (README, Speed; 2026-11-26): 24 KD students on the 2-core CPU (medians of 3);
# the whole reference grid on one H200 (1 run, the naive side sampled: 1 of 24 students, scaled).
NAIVE_RATIO = {"cpu": (20.2, "24 KD students of the reference grid, mnist-5k, on a 2-core CPU"),
               "gpu": (39.0, "the whole reference grid, Fashion-MNIST, on one H200")}


@dataclass(frozen=True)
class Text:
    text: str
    kind: str = "p"  # p, warn (a box that stands out), note (small print)


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    summary: str = ""  # set: folded away (HTML <details>) under this line
    marked: tuple[str, ...] = ()  # per row: "" or a word to emphasise it by (better, worse)


@dataclass(frozen=True)
class Code:
    text: str
    summary: str = ""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple = ()


@dataclass(frozen=True)
class Written:
    html: Path
    markdown: Path
    headline: tuple[str, ...] = field(default=())


def write(plan: Plan, folder: Path) -> Written:
    """Draw the figures, then write ``report.html`` and ``report.md`` into ``folder`` (atomically)."""
    results = collect.current_results(plan, folder)
    slices: dict[Path, dict] = {}
    figures = plots.plot_all(folder, slices, results) if len(results) else []  # nothing finished: a report that says so
    title = f"kd-sweep report: {plan.sweep.name}"
    sections = build(plan, folder, results, figures, slices)
    out_html, out_md = folder / HTML, folder / MARKDOWN
    atomic.write_text(out_html, to_html(title, sections))
    atomic.write_text(out_md, to_markdown(title, sections, folder))
    headline = tuple(b.text for b in sections[0].blocks if isinstance(b, Text) and b.kind != "note")
    return Written(out_html, out_md, headline)


def build(plan: Plan, folder: Path, results: pd.DataFrame, figures: list[Path],
          slices: dict[Path, dict] | None = None) -> list[Section]:
    """The report's sections, from the plan, the results table, the figures and the job folders."""
    comparisons = compare.paired(results)
    unfinished = unfinished_jobs(plan, folder, results)
    seeds = results["seed"].nunique() if len(results) else 0
    finished = len(results) - sum(d.endswith(STALE) for _, _, d in unfinished)  # rows whose job is still done
    later = sum(st == "done after collect" for _, st, _ in unfinished)  # the table is older than the folders
    still = len(unfinished) - later - sum(d == GONE for _, _, d in unfinished)
    headline = [Text(f"{plan.sweep.description or plan.sweep.name}. {finished} of {len(plan.jobs)} jobs "
                     f"finished, {seeds} seed{'s' if seeds != 1 else ''}"
                     + (f"; {still} not finished (see below)" if still else "")
                     + (f"; {later} more finished since the last collect: run 'kdsweep collect' again" if later else "")
                     + ".")]
    headline += [Text(line + ".") for line in compare.summary(comparisons)]
    headline += [Text(w, "warn") for w in code_warnings(results, collect.saved_diff_hash(folder / collect.CODE_DIFF))]
    if comparisons["interval"].any():
        headline.append(Text("Differences are paired seed by seed (each seed's own baseline); the intervals are "
                             "95% paired t intervals over the seeds, each point on its own (among "
                             f"{len(comparisons)} points with no real difference about {0.05 * len(comparisons):.1f} "
                             "would exclude 0 by chance), on this sweep's fixed test set.", "note"))
    return [Section("Summary", tuple(headline)),
            Section("Comparisons", comparison_blocks(comparisons, plan)),
            Section("Figures", tuple(Figure(f, _caption(f, seeds, (slices or {}).get(f, {})))
                                     for f in sorted(figures, key=_figure_order))),
            Section("Results", results_blocks(results)),
            Section("Failures and unfinished jobs", unfinished_blocks(plan, unfinished)),
            Section("Plan", plan_blocks(plan, _device_kind(results))),
            Section("Sweep file", (Code(_sweep_text(plan)),)),
            Section("Provenance", provenance_blocks(results, folder))]


def _pct(v: float) -> str:
    return "-" if pd.isna(v) else f"{100 * v:.2f}"


def _ci(lo: float, hi: float, n: int) -> str:
    return compare.no_interval(n) if n < 2 or pd.isna(lo) else f"{100 * lo:.2f} to {100 * hi:.2f}"


def comparison_blocks(comparisons: pd.DataFrame, plan: Plan | None = None) -> tuple:
    if comparisons.empty:
        methods = {j.method for j in plan.jobs} if plan is not None else set(compare.BASELINES)
        if not any(b in methods for m, bases in compare.BASELINES.items() if m in methods for b in bases):
            return (Text("No comparisons: the sweep has no distilled student and baseline (a student from scratch) "
                         "to compare (add \"scratch\" and \"kd\" to its methods)."),)
        return (Text("No comparisons: no distilled student has finished beside its baseline (the student from "
                     "scratch) of the same seed."),)
    blocks: list = []
    order = (compare.BETTER, compare.WORSE, compare.SAME, compare.NO_INTERVAL)
    heads = {compare.BETTER: "Better than the baseline with 95% confidence:",
             compare.WORSE: "Below the baseline with 95% confidence:",
             compare.SAME: "Not distinguishable from the baseline (the interval holds 0):",
             compare.NO_INTERVAL: "No interval can be given (one seed, or the same difference with every seed: run "
                                  "more seeds):"}
    for verdict in order:
        g = comparisons[comparisons["verdict"] == verdict]
        if len(g):
            g = g.sort_values("difference", ascending=verdict == compare.WORSE)
            blocks += [Text(heads[verdict]), Items(tuple(compare.describe(r) for _, r in g.iterrows()))]
    rows = tuple((r.point, r.baseline, _pct(r["mean"]), _pct(r.baseline_mean), f"{100 * r.difference:+.2f}",
                  _ci(r.ci_low, r.ci_high, r.n_seeds), str(r.n_seeds), r.verdict) for _, r in comparisons.iterrows())
    marked = tuple(v if v in (compare.BETTER, compare.WORSE) else "" for v in comparisons["verdict"])
    blocks.append(Table(("point", "baseline", "accuracy (%)", "baseline (%)", "difference (points)",
                         "95% CI (points)", "seeds", "verdict"), rows, marked=marked))
    return tuple(blocks)


def results_blocks(results: pd.DataFrame) -> tuple:
    if results.empty:
        return (Text("No finished jobs yet."),)
    means = compare.point_means(results)
    varying = [c for c in compare.varying_settings(results) if c not in ("alpha", "temperature")]
    header = ("method", "alpha", "T", *varying, "seeds", "test accuracy (%)", "95% CI (%)")
    rows = tuple((r.method, _num(r.get("alpha")), _num(r.get("temperature")), *(_num(r.get(c)) for c in varying),
                  str(r.n_seeds), _pct(r["mean"]), _ci(r.ci_low, r.ci_high, r.n_seeds)) for _, r in means.iterrows())
    jobs = results.sort_values(["method", "alpha", "temperature", "seed"], na_position="first")
    job_rows = tuple((r["name"], r["method"], _num(r["alpha"]), _num(r["temperature"]), *(_num(r.get(c)) for c in varying),
                      str(r["seed"]), _pct(r["test_accuracy"]), _num(r.get("wall_seconds"), ".1f"),
                      str(r.get("pack_size", 1))) for _, r in jobs.iterrows())
    return (Text("Each grid point's mean test accuracy over its seeds, with the 95% t interval of the mean."),
            Table(header, rows),
            Table(("job", "method", "alpha", "T", *varying, "seed", "test accuracy (%)", "its pack's training s", "pack"),
                  job_rows, summary=f"every job ({len(job_rows)})"))


def _num(v, fmt: str = "g") -> str:
    return "-" if v is None or pd.isna(v) else format(v, fmt) if isinstance(v, float) else str(v)


STALE = "in the tables from an earlier collect: run 'kdsweep collect' again"
GONE = "its folder is gone: its row, from an earlier collect, stays in the tables (collect keeps it)"


def unfinished_jobs(plan: Plan, folder: Path, results: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(job name, state, detail) of every planned job without a row in ``results``, from its folder
    (or, where the job folders are not kept: committed results, said so); and of every job with a
    row whose folder no longer holds its result (the table is older than the folders)."""
    from sweep import status

    have = set(results["job_id"]) if "job_id" in results else set()
    if not (folder / "jobs").is_dir():
        return [(j.name, "not in results.parquet", "the job folders are not here") for j in plan.jobs
                if j.id not in have]
    out = []
    for job, s in status.job_states(plan, folder):
        if job.id in have and s.state != state.DONE and not state.job_dir(folder, job).exists():
            out.append((job.name, "done, folder gone", GONE))
        elif job.id in have and s.state != state.DONE:
            out.append((job.name, s.state, f"{s.detail + '; ' if s.detail else ''}{STALE}"))
        elif job.id not in have:
            out.append((job.name, "done after collect", "run 'kdsweep collect' again") if s.state == state.DONE
                       else (job.name, s.state, s.detail))
    return out


def unfinished_blocks(plan: Plan, unfinished: list[tuple[str, str, str]]) -> tuple:
    if not unfinished:
        return (Text(f"None: all {len(plan.jobs)} jobs are in the results."),)
    counts = Counter(s for _, s, d in unfinished if not _in_tables(d))
    kept = sum(_in_tables(d) for _, _, d in unfinished)
    said = ([", ".join(f"{n} {s}" for s, n in counts.most_common()) + "; not in the tables or figures."] if counts
            else []) + ([f"{kept} in the tables from an earlier collect, whose folders no longer hold their result "
                         "(see the detail)."] if kept else [])
    return (Text(" ".join(said)), Table(("job", "state", "detail"), tuple(unfinished)))


def _in_tables(detail: str) -> bool:
    """An unfinished_jobs detail of a job whose row the tables still hold."""
    return detail.endswith(STALE) or detail == GONE


def _device_kind(results: pd.DataFrame) -> str:
    """"cuda" where the results were trained on a GPU, else "cpu" (what pack "auto" depends on)."""
    if "device" not in results:
        return "cpu"
    devices = results["device"].dropna().astype(str)
    named = devices[~devices.isin(["", "unknown"])]  # a result without a device says nothing
    return "cuda" if (~named.str.startswith("cpu")).any() else "cpu"


def plan_blocks(plan: Plan, device_kind: str = "cpu") -> tuple:
    pack = plan.sweep.pack or "auto"
    work = units(plan, pack, device_kind)
    methods = Counter(j.method for j in plan.jobs)
    shapes = Counter((len(u), "+".join(sorted({j.method for j in u}))) for u in work)
    names = {j.id: j.name for j in plan.jobs}
    jobs = tuple((j.id, j.name, j.method, _num(j.config.get("alpha")), _num(j.config.get("temperature")),
                  str(j.config["seed"]), ", ".join(names[d] for d in j.depends_on) or "-") for j in plan.jobs)
    return (Text(f"{len(plan.jobs)} jobs ({', '.join(f'{n} {m}' for m, n in methods.items())}) from "
                 f"{plan.n_points} grid points, {plan.excluded} excluded."),
            Items(tuple(f"merged: {why}" for _, why in plan.merged()) + tuple(f"kept: {why}" for why in plan.kept_notes())
                  or ("no merged points",)),
            Text(f"Run locally as {len(work)} units (pack {pack}, on a {'GPU' if device_kind == 'cuda' else 'CPU'}): "
                 + "; ".join(f"{n} x {size} {m} job{'s' if size > 1 else ''}" + (" packed" if size > 1 else " alone")
                             for (size, m), n in sorted(shapes.items(), key=lambda kv: (kv[0][0], kv[0][1])))
                 + ". Students of a teacher start when it is done; packing changes speed, and results only by float rounding."),
            Table(("id", "job", "method", "alpha", "T", "seed", "depends on"), jobs, summary=f"every job ({len(jobs)})"))


def _sweep_text(plan: Plan) -> str:
    path = plan.sweep.path
    try:
        return f"# {path}\n{Path(path).read_text()}" if path else "(the sweep was not read from a file)"
    except OSError as e:
        return f"# {path}: cannot be read now ({e.strerror})"


def code_warnings(results: pd.DataFrame, saved_diff: str | None = None) -> list[str]:
    """Warnings about the code the rows ran with: several versions mixed, or uncommitted changes
    (``saved_diff``: the hash of the code.diff beside the report, if any)."""
    if results.empty:
        return []
    commit = results.get("git_version", pd.Series([None] * len(results), index=results.index))
    diff = results.get("git_diff_sha256", pd.Series([None] * len(results), index=results.index))
    versions = Counter(zip(commit.fillna("unknown"), diff.fillna("")))
    out = []
    if len(versions) > 1:
        out.append(f"This sweep mixes {len(versions)} code versions: "
                   + "; ".join(f"{n} job{'s' if n != 1 else ''} at {_version(c, d)}" for (c, d), n in versions.most_common())
                   + ". Results from different code may not be comparable.")
    elif commit.isna().all():
        out.append("The rows record no git commit: the code that produced them is unknown.")
    if "git_dirty" in results and results["git_dirty"].fillna(False).astype(bool).any() and len(versions) == 1:
        (_, digest), = versions
        kept = ("code.diff beside this report holds them" if saved_diff and saved_diff == digest
                else "their diff is not kept here")
        out.append(f"The jobs ran on uncommitted changes ({_version(*next(iter(versions)))}): "
                   f"the commit alone does not reproduce them; {kept}.")
    return out


def _version(commit: str, diff: str) -> str:
    return f"commit {commit[:10]}" + (f" + uncommitted diff {diff[:10]}" if diff else "")


def compute_time(results: pd.DataFrame) -> list[tuple[str, float, float, float]]:
    """Per device: (device, training hours of the processes, of which in packs of students, hours that
    one process per grid point would have taken by bench/kd_grid.py's measured ratio, which is the
    students'; a pack of teachers counts as its own time). A pack's members each record the pack's
    time: each counts 1/pack_size of it."""
    if results.empty or "wall_seconds" not in results:
        return []
    df = results.assign(pack_size=results.get("pack_size", 1)).fillna({"pack_size": 1, "device": "unknown"})
    df = df.assign(hours=df["wall_seconds"] / df["pack_size"] / 3600)
    out = []
    for device, g in df.groupby("device"):
        students = ~g["method"].isin(TEACHER_METHODS) if "method" in g else True
        packed = g.loc[(g["pack_size"] > 1) & students, "hours"].sum()
        ratio = NAIVE_RATIO["cpu" if str(device).startswith("cpu") else "gpu"][0]
        out.append((str(device), g["hours"].sum(), packed, g["hours"].sum() - packed + ratio * packed))
    return out


def provenance_blocks(results: pd.DataFrame, folder: Path) -> tuple:
    if results.empty:
        return (Text("No finished jobs: nothing to say."),)

    def values(col: str, words: dict | None = None, missing: str = "unknown") -> str:
        if col not in results:
            return "not recorded"
        column = results[col].map(lambda v: missing if pd.isna(v) else (words or {}).get(v, v))
        return ", ".join(f"{v} ({n})" for v, n in Counter(column.astype(str)).most_common())

    rows = [("git commit", values("git_version")),
            ("uncommitted changes to kd/, sweep/", values("git_dirty", {True: "yes", False: "no"})),
            ("their git diff, sha256", values("git_diff_sha256", missing="none")),
            ("kd version", values("kd_version")), ("torch version", values("torch_version")),
            ("python version", values("python_version")), ("devices", values("device"))]
    saved = collect.saved_diff_hash(folder / collect.CODE_DIFF)
    if saved and "git_diff_sha256" in results and (results["git_diff_sha256"] == saved).any():
        rows.append(("the uncommitted changes", f"{collect.CODE_DIFF} beside this report (sha256 {saved[:16]}, "
                     f"{int((results['git_diff_sha256'] == saved).sum())} jobs)"))
    blocks: list = [Table(("what", "value (number of jobs)"), tuple(rows))]
    for device, hours, packed, naive in compute_time(results):
        kind = "CPU" if device.startswith("cpu") else "GPU"
        ratio, what = NAIVE_RATIO[kind.lower()]
        blocks.append(Text(
            f"{device}: {60 * hours:.1f} min of training ({hours:.2f} {kind} hours: each process's training time "
            f"from the rows' wall_seconds, a pack counted once; start-up and waiting not included), "
            f"{60 * packed:.1f} min of it in packs of students. One process per grid point would have taken about "
            f"{naive:.2f} {kind} hours: the packed students' part times {ratio:g}, the ratio bench/kd_grid.py measured "
            f"({what}; README, Speed)."))
    return tuple(blocks)


def _figure_order(path: Path) -> int:
    """The answer first (accuracy against T, the paired differences), then the rest."""
    order = ("accuracy_vs_temperature", "difference_", "heatmap_", "accuracy_f1", "accuracy_per_epoch")
    return next((i for i, prefix in enumerate(order) if path.stem.startswith(prefix)), len(order))


def _caption(path: Path, seeds: int, values: dict | None = None) -> str:
    """The figure's caption; ``values``: the settings its jobs share (a slice: lr 0.001)."""
    from kd.config import shown

    only = f" Jobs with {', '.join(f'{k} {shown(v)}' for k, v in values.items())} only." if values else ""
    return _caption_of(path.stem.partition("-")[0], seeds) + only


def _caption_of(name: str, seeds: int) -> str:
    if name.startswith("difference_"):
        method, base = name[len("difference_"):].split("_vs_")
        return (f"{method} minus {base}, paired seed by seed, in percentage points; "
                + ("starred, outlined cells: the 95% interval excludes 0." if seeds > 1 else "1 seed: no interval."))
    bars = ("error bars and the grey band (student from scratch): 95% intervals of the mean over seeds." if seeds > 1
            else "1 seed: no error bars.")
    return {"accuracy_vs_temperature": f"Student accuracy against temperature, one line per alpha; {bars}",
            "heatmap_alpha_temperature": "Mean student accuracy over alpha and T (alpha 0: the student from scratch).",
            "accuracy_per_epoch": "Test accuracy after each epoch, mean of each group of jobs.",
            "accuracy_f1_vs_temperature": "Accuracy and F1 per class against temperature."}.get(name, name)


# ---- rendering: the same sections as HTML and as Markdown ----

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 24px auto; padding: 0 24px; line-height: 1.45; font-size: 15px; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 20px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr.better td { background: #e3f1e3; font-weight: 600; }
tr.worse td { background: #fbe6e4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 12.5px; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 8px 12px; }
.note { color: #555; font-size: 13px; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; } details summary { cursor: pointer; color: #0645ad; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text.split(" ")[0].replace("+", ""))
        return True
    except ValueError:
        return False


def _html_table(t: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join(
        (f'<tr class="{t.marked[i]}">' if i < len(t.marked) and t.marked[i] else "<tr>")
        + "".join(f'<td class="num">{e(c)}</td>' if _is_number(c) else f"<td>{e(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(t.rows))
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f"<details><summary>{e(t.summary)}</summary>{table}</details>" if t.summary else table


def _html_block(b) -> str:
    e = html.escape
    if isinstance(b, Text):
        return f"<p class=\"{b.kind}\">{e(b.text)}</p>"
    if isinstance(b, Items):
        return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, Table):
        return _html_table(b)
    if isinstance(b, Code):
        pre = f"<pre>{e(b.text)}</pre>"
        return f"<details><summary>{e(b.summary)}</summary>{pre}</details>" if b.summary else pre
    if isinstance(b, Figure):
        data = base64.b64encode(b.path.read_bytes()).decode()
        return (f"<figure><img alt=\"{e(b.path.name)}\" src=\"data:image/png;base64,{data}\">"
                f"<figcaption>{e(b.caption)}</figcaption></figure>")
    raise TypeError(f"no HTML for {b!r}")


def to_html(title: str, sections: list[Section]) -> str:
    """One page, no external resources."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>" + "\n".join(_html_block(b) for b in s.blocks)
                     + "</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_block(b, folder: Path) -> str:
    if isinstance(b, Text):
        return {"warn": f"> **Warning:** {b.text}", "note": f"*{b.text}*"}.get(b.kind, b.text)
    if isinstance(b, Items):
        return "\n".join(f"- {i}" for i in b.items)
    if isinstance(b, Table):
        lines = ["| " + " | ".join(map(_md_cell, b.header)) + " |", "|" + "---|" * len(b.header)]
        lines += ["| " + " | ".join(_md_cell(f"**{c}**" if i < len(b.marked) and b.marked[i] else c) for c in row)
                  + " |" for i, row in enumerate(b.rows)]
        table = "\n".join(lines)
        return f"<details><summary>{b.summary}</summary>\n\n{table}\n\n</details>" if b.summary else table
    if isinstance(b, Code):
        return f"```\n{b.text.rstrip()}\n```"
    if isinstance(b, Figure):
        rel = b.path.relative_to(folder) if b.path.is_relative_to(folder) else b.path
        return f"![{b.caption}]({rel.as_posix()})"
    raise TypeError(f"no Markdown for {b!r}")


def to_markdown(title: str, sections: list[Section], folder: Path) -> str:
    """The same content; figures linked relative to ``folder`` (plots/...)."""
    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        parts += [_md_block(b, folder) for b in s.blocks]
    return "\n\n".join(parts) + "\n"
