"""Summary figures drawn from the Parquet files alone (no job folders needed).

With several seeds every point is a mean with its 95% confidence interval (sweep.compare); the
difference heatmaps show the paired difference of each grid point to its baseline, seed by seed.
"""
from __future__ import annotations

import io
import logging
import math
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from kd import atomic  # noqa: E402
from kd.config import TEACHER_METHODS as TEACHERS, shown  # noqa: E402
from kd.errors import UserError  # noqa: E402
from sweep import collect, compare  # noqa: E402
from sweep.plan import followed_by_teachers  # noqa: E402

log = logging.getLogger(__name__)

STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False}
DPI = 150
CI_WORDS = "95% CI"


def plot_all(folder: Path, slices_of: dict[Path, dict] | None = None, results: pd.DataFrame | None = None) -> list[Path]:
    """Draw every figure that the sweep's data supports into ``folder/plots``; returns the files
    (``slices_of``, where given, gets each file's slice: the settings its jobs share, {} for all).
    ``results``: results.parquet where the caller has read it already (collect.current_results)."""
    if results is None:
        (results,) = collect.read_tables(folder, (collect.RESULTS,))
    (epochs,) = collect.read_tables(folder, (collect.EPOCHS,))
    if results.empty:
        _drop_stale(folder / "plots", [])
        raise UserError(f"{folder / collect.RESULTS}: no finished jobs to plot")
    missing = [c for c in ("sweep", "method", "alpha", "temperature", "seed", "test_accuracy") if c not in results]
    if missing:
        raise UserError(f"{folder / collect.RESULTS}: damaged, no column {', '.join(missing)}",
                        hint="run 'kdsweep collect' again to rewrite it")
    out = folder / "plots"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: a file where the figures' folder belongs", hint=f"move {out} away and run again")
    out.mkdir(exist_ok=True)
    datasets = sorted(results["dataset"].unique()) if "dataset" in results else []
    name = f"{results['sweep'].iloc[0]}" + (f" ({', '.join(datasets)})" if datasets else "")
    files = []
    comparisons = compare.paired(results)
    slices = list(_slices(results))
    if len(slices) > MAX_SLICES:
        log.warning("figures for the first %d of %d combinations of %s only", MAX_SLICES, len(slices),
                    ", ".join(dict.fromkeys(k for v, _ in slices for k in v)))
    drawn: set[Path] = set()

    def draw(kind: str, draw_fn, used: pd.DataFrame, values: dict, *data) -> None:
        """One figure of ``kind`` for the slice ``values``, named and titled by the values its ``used``
        rows have (kd's rows have no subclasses: one figure of them, not one per subclasses value)."""
        own = {k: v for k, v in values.items() if k in used and used[k].notna().any()}
        path = out / f"{kind}{''.join(f'-{k}{_file_word(v)}' for k, v in own.items())}.png"  # ...-lr0.001.png
        if path not in drawn:
            drawn.add(path)
            files.append(draw_fn(*data, path, name + "".join(f", {k} {shown(v)}" for k, v in own.items())))
            if slices_of is not None:
                slices_of[path] = own

    with plt.rc_context(STYLE):
        for values, rows in slices[:MAX_SLICES]:
            students = rows[rows["method"].isin(DISTILLED) | (rows["method"] == "scratch")]
            if rows["method"].isin(DISTILLED).any() and rows["temperature"].notna().any():
                draw("accuracy_vs_temperature", _accuracy_vs_temperature, students, values, rows)
            kd = rows[rows["method"].isin(("kd", "scratch"))]
            if (rows["method"] == "kd").any():
                draw("heatmap_alpha_temperature", _heatmap, kd, values, rows)
                if any(c.startswith("f1_") for c in rows.columns):  # two classes (MHIST): the study's second figure
                    draw("accuracy_f1_vs_temperature", _f1_vs_temperature, kd, values, rows)
            for (method, base), group in _in_slice(comparisons, values).groupby(["method", "baseline"], sort=False):
                if group[["alpha", "temperature"]].duplicated().any():  # settings of the teacher vary: no map
                    log.info("no difference heatmap for %s vs %s: settings besides alpha and T vary", method, base)
                    continue
                draw(f"difference_{method}_vs_{base}", _difference_heatmap, group, values, group)
            draw("accuracy_per_epoch", _per_epoch, rows[~rows["method"].isin(TEACHERS)], values,
                 epochs[epochs["job_id"].isin(rows["job_id"])])
    _drop_stale(out, files)
    return files


# what plot_all draws: KIND.png, or KIND-<setting><value>... .png of a slice (other files are left alone)
OURS = ("accuracy_vs_temperature", "heatmap_alpha_temperature", "accuracy_f1_vs_temperature",
        "difference_*_vs_*", "accuracy_per_epoch")
MAX_SLICES = 24  # figures of each kind, one per combination of the settings besides alpha, T and seed


def _file_word(value) -> str:
    """A setting's value as part of a file name: no path separators (a weights file's path), short."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", shown(value)).strip("_")[:40] or "_"


def _slices(results: pd.DataFrame):
    """(settings, rows) for each combination of the students' settings that vary besides alpha, T
    and the seed (lr, epochs, subclasses ...): each figure is of one, never a mean over several.
    ({}, every row) where none vary. A slice holds the rows that have its values, those the setting
    does not apply to (scratch has no subclasses), and the teachers unless they follow the setting.
    A combination of students that lack a setting (kd rows at an lr where no subclass job finished)
    is a slice of the settings they have: no student is left out of every figure."""
    other = [c for c in compare.varying_settings(results) if c not in ("alpha", "temperature")]
    if not other:
        yield {}, results
        return
    students = results[~results["method"].isin(TEACHERS)]
    combos = [{k: v for k, v in zip(other, row) if not pd.isna(v)}
              for row in students[other].drop_duplicates().itertuples(index=False)]
    full = [c for c in combos if len(c) == len(other)]
    covered = lambda c: any(all(f[k] == v for k, v in c.items()) for f in full)  # noqa: E731
    keep = full + [c for c in combos if len(c) < len(other) and c and not covered(c)]
    keep = list({tuple(sorted(c.items(), key=lambda kv: other.index(kv[0]))): c for c in keep}.values())
    keep.sort(key=lambda c: tuple((k not in c, str(type(c.get(k))), c.get(k, 0)) for k in other))
    for values in keep:
        yield values, _in_slice(results, values)


def _in_slice(table: pd.DataFrame, values: dict) -> pd.DataFrame:
    keep = pd.Series(True, index=table.index)
    teacher = table["method"].isin(TEACHERS) if "method" in table else pd.Series(False, index=table.index)
    for c, v in values.items():
        if c not in table:
            continue
        keep &= table[c].isna() | (table[c] == v) | (teacher & (not followed_by_teachers(c)))
    return table[keep]


def _drop_stale(out: Path, drawn: list[Path]) -> None:
    """Remove the figures of an earlier plot that this one did not draw (their points are gone from
    the table): a figure in plots/ is always of the table beside it."""
    for kind in OURS:
        for pattern in (f"{kind}.png", f"{kind}-*.png"):
            for old in out.glob(pattern):
                if old not in drawn:
                    old.unlink()
                    log.info("removed %s: not drawn from the current table", old)
            for stray in out.glob(f".tmp-{pattern}.*"):  # a write cut short by a kill: an hour old, nobody's
                try:
                    if time.time() - stray.stat().st_mtime > 3600:
                        stray.unlink()
                except OSError:
                    pass


def _save(fig, path: Path) -> Path:
    """Write the figure as a 256-colour PNG: a third of the size of a full-colour one (these are
    committed with reference results and inlined in reports), with no difference to see."""
    from PIL import Image

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    atomic.write_with(path, lambda f: image.save(f, format="PNG", optimize=True))
    return path


def _seeds(per_point: pd.Series, results: pd.DataFrame | None = None, drawn: tuple[str, ...] = ()) -> str:
    """``5 seeds``; ``2-5 seeds`` where points have different numbers of them (some jobs unfinished),
    counting the jobs of the ``drawn`` methods (teacher, scratch) the figure shows too."""
    counts = [int(n) for n in per_point]
    if results is not None:
        counts += [int(n) for m in drawn if (n := results.loc[results["method"] == m, "seed"].nunique())]
    lo, hi = min(counts), max(counts)
    return f"{hi} seeds" if lo == hi else f"{lo}-{hi} seeds (per point: some are missing)"


def _reference_lines(ax, results: pd.DataFrame) -> None:
    """The teacher as a dashed line, the student from scratch as a dotted line in its 95% band (the
    teacher's interval is in its label: a second band would hide the first)."""
    for method, color, style, label in (("teacher", "black", "--", "teacher"),
                                        ("scratch", "dimgrey", ":", "student from scratch")):
        ci = compare.t_interval(results.loc[results["method"] == method, "test_accuracy"])
        if not ci.n:
            continue
        words = (f"{100 * ci.mean:.2f}%, {CI_WORDS} {100 * ci.low:.2f}-{100 * ci.high:.2f}, {ci.n} seeds"
                 if ci.has_interval else f"{100 * ci.mean:.2f}%, {compare.no_interval(ci.n)}")
        ax.axhline(100 * ci.mean, color=color, linestyle=style, linewidth=1.5, label=f"{label} ({words})")
        if ci.has_interval and method == "scratch":
            ax.axhspan(100 * ci.low, 100 * ci.high, color=color, alpha=0.15, linewidth=0)


def _error(stats: pd.DataFrame) -> np.ndarray | None:
    """Asymmetric error bars (points) from a point_means table; None where no point has an interval."""
    if stats["ci_low"].isna().all():
        return None
    return 100 * np.vstack([(stats["mean"] - stats["ci_low"]).fillna(0), (stats["ci_high"] - stats["mean"]).fillna(0)])


DISTILLED = {"kd": ("KD", "-", "o"), "subclass": ("subclass KD", "--", "s")}  # students drawn against T


def _accuracy_vs_temperature(results: pd.DataFrame, path: Path, title: str) -> Path:
    means = compare.point_means(results)
    kd = means[means["method"].isin(DISTILLED) & means["temperature"].notna()]
    alphas = sorted(kd["alpha"].unique())
    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    colors = dict(zip(alphas, plt.cm.viridis(np.linspace(0.05, 0.85, len(alphas)))))
    lines = [(m, a) for m in DISTILLED for a in alphas if ((kd["method"] == m) & (kd["alpha"] == a)).any()]
    for k, (method, alpha) in enumerate(lines):
        # one line per point of the grid's other settings is drawn by slices (plot_all): here one per alpha
        stats = kd[(kd["method"] == method) & (kd["alpha"] == alpha)].set_index("temperature").sort_index()
        dodge = 2 ** (0.06 * (k - (len(lines) - 1) / 2))  # side by side on the log axis: bars do not hide each other
        word, style, marker = DISTILLED[method]
        ax.errorbar(stats.index * dodge, 100 * stats["mean"], yerr=_error(stats), marker=marker, markersize=5,
                    capsize=3, linewidth=1.5, linestyle=style, color=colors[alpha], label=f"{word}, alpha = {alpha:g}")
    seeds = int(kd["n_seeds"].max())
    detail = (f"mean of {_seeds(kd['n_seeds'], results, ('teacher', 'scratch'))}; bars and grey band: {CI_WORDS} "
              "of the mean" if seeds > 1
              else "1 seed: no interval (run more seeds for error bars)")
    _temperature_axes(ax, results, "student test accuracy (%)", f"Student accuracy vs temperature: {title}\n{detail}")
    return _save(fig, path)


def _temperature_axes(ax, results: pd.DataFrame, ylabel: str, title: str) -> None:
    """Teacher and scratch lines, a log2 temperature axis with the grid's values, labels, legend outside."""
    _reference_lines(ax, results)
    ax.set_xscale("log", base=2)
    temps = sorted(results.loc[results["method"].isin(DISTILLED), "temperature"].dropna().unique())
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.minorticks_off()
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.figure.legend(loc="outside lower center", ncols=2, frameon=False)


def _f1_vs_temperature(results: pd.DataFrame, path: Path, title: str) -> Path:
    kd = results[results["method"] == "kd"]
    metrics = ["test_accuracy", *sorted(c for c in results.columns if c.startswith("f1_")), "macro_f1"]
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for k, (alpha, group) in enumerate(kd.groupby("alpha")):  # a line style, then a marker too, per alpha
        style, marker = ("-", "--", ":", "-.")[k % 4], ("o", "s", "^", "D", "v", "P")[k // 4 % 6]
        stats = group.groupby("temperature")[[m for m in metrics if m in group]].mean().sort_index()
        for m, color in zip(stats.columns, plt.cm.tab10.colors):
            label = {"test_accuracy": "accuracy", "macro_f1": "macro F1"}.get(m, f"F1 {m[3:].upper()}")
            ax.plot(stats.index, 100 * stats[m], marker=marker, linestyle=style, color=color,
                    label=f"{label}" + (f" (alpha {alpha:g})" if kd["alpha"].nunique() > 1 else ""))
    _temperature_axes(ax, results, "student, test set (%)", f"Student accuracy and F1 vs temperature: {title}")
    return _save(fig, path)


def _grid_axes(ax, table: pd.DataFrame) -> None:
    ax.set_xticks(range(len(table.columns)), [f"{t:g}" for t in table.columns])
    ax.set_yticks(range(len(table.index)), [f"{a:g}" for a in table.index])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("alpha (weight of distillation)")
    ax.tick_params(length=0)
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(False)


def _figsize(table: pd.DataFrame) -> tuple[float, float]:
    return max(6.5, 1.25 * len(table.columns) + 3.0), max(3.2, 0.8 * len(table.index) + 2.0)


def _heatmap(results: pd.DataFrame, path: Path, title: str) -> Path:
    kd = results[results["method"] == "kd"]
    table = kd.pivot_table(index="alpha", columns="temperature", values="test_accuracy", aggfunc="mean")
    scratch = results.loc[results["method"] == "scratch", "test_accuracy"]
    if len(scratch):  # alpha = 0 is the student from scratch at every temperature
        table.loc[0.0] = scratch.mean()
        table = table.sort_index()
    fig, ax = plt.subplots(figsize=_figsize(table), layout="constrained")
    im = ax.imshow(100 * table.values, cmap="viridis", aspect="auto")
    _grid_axes(ax, table)
    lo, hi = np.nanmin(table.values), np.nanmax(table.values)
    for (i, j), v in np.ndenumerate(table.values):
        if not np.isnan(v):
            ax.text(j, i, f"{100 * v:.2f}", ha="center", va="center", fontsize=9,
                    color="white" if v < (lo + hi) / 2 else "black")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    seeds = kd.groupby(["alpha", "temperature"])["seed"].nunique()
    ax.set_title(f"Student accuracy (%): {title}" + (f"\nmean of {_seeds(seeds, results, ('scratch',))}"
                                                     if seeds.max() > 1 else ""))
    return _save(fig, path)


def _difference_heatmap(comparisons: pd.DataFrame, path: Path, title: str) -> Path:
    """The paired difference to the baseline in points, diverging colours centred on 0; cells whose
    interval excludes 0 are outlined and starred."""
    method, base = comparisons["method"].iloc[0], comparisons["baseline"].iloc[0]
    pivot = {col: comparisons.pivot_table(index="alpha", columns="temperature", values=col, aggfunc="first")
             for col in ("difference", "ci_low", "ci_high")}
    table = pivot["difference"].sort_index()
    sig = comparisons.pivot_table(index="alpha", columns="temperature", values="significant",
                                  aggfunc="first").reindex_like(table)
    values = 100 * table.values
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    bound = max(bound, 0.05)
    fig, ax = plt.subplots(figsize=_figsize(table), layout="constrained")
    im = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    _grid_axes(ax, table)
    for (i, j), v in np.ndenumerate(values):
        if math.isnan(v):
            continue
        marked = bool(sig.values[i, j]) if not pd.isna(sig.values[i, j]) else False
        lo, hi = (100 * pivot[k].reindex_like(table).values[i, j] for k in ("ci_low", "ci_high"))
        text = f"{v:+.2f}{'*' if marked else ''}"
        if not math.isnan(lo):
            text += f"\n[{lo:+.2f}, {hi:+.2f}]"
        ax.text(j, i, text, ha="center", va="center", fontsize=8.5 if "\n" in text else 9.5,
                fontweight="bold" if marked else "normal", color="white" if abs(v) > 0.6 * bound else "black")
        if marked:
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    vs = "kd at the same alpha and T" if base == "kd" else "the student from scratch" if base == "scratch" else base
    fig.colorbar(im, ax=ax, label=f"difference to {base} (percentage points)")
    seeds = int(comparisons["n_seeds"].max())
    how = (f"paired over {_seeds(comparisons['n_seeds'])}; [{CI_WORDS}]; * and outline: the interval excludes 0"
           if seeds > 1
           else "1 seed: no interval, no cell can be called different")
    ax.set_title(f"{method} minus {vs}, test accuracy: {title}\n{how}")
    return _save(fig, path)


def _per_epoch(epochs: pd.DataFrame, path: Path, title: str) -> Path:
    """Test accuracy per epoch: the mean of each group of jobs (teacher, scratch, each distilled
    method per alpha over its temperatures and seeds: alpha 0 is not distilled), the band spanning
    its jobs' lowest and highest."""
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    distilled = epochs[epochs["method"].isin(DISTILLED)]
    alphas = sorted(distilled["alpha"].dropna().unique())
    cmap = dict(zip(alphas, plt.cm.viridis(np.linspace(0.05, 0.85, max(len(alphas), 1)))))
    groups = [("teacher", None, "black", "--", "teacher"), ("scratch", None, "dimgrey", ":", "student from scratch"),
              *[(m, a, cmap[a], DISTILLED[m][1], f"{DISTILLED[m][0]}, alpha = {a:g}") for m in DISTILLED
                for a in sorted(distilled.loc[distilled["method"] == m, "alpha"].dropna().unique())],
              *[(m, None, c, "-.", m) for m, c in zip(sorted(set(epochs["method"]) - {"teacher", "scratch", *DISTILLED}),
                                                       plt.cm.tab10.colors)]]
    for method, alpha, color, style, label in groups:
        g = epochs[(epochs["method"] == method) & ((epochs["alpha"] == alpha) if alpha is not None else True)]
        if g.empty:
            continue
        stats = g.groupby("epoch")["test_accuracy"].agg(["mean", "min", "max"])
        jobs = g["job_id"].nunique()
        ax.plot(stats.index, 100 * stats["mean"], color=color, linestyle=style, linewidth=1.8,
                marker="o" if len(stats) < 3 else None,  # a line of one epoch is a point
                label=label + (f" (mean of {jobs} jobs)" if jobs > 1 else ""))
        if jobs > 1:
            ax.fill_between(stats.index, 100 * stats["min"], 100 * stats["max"], color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    several = epochs.groupby(["method", "alpha"], dropna=False)["job_id"].nunique().max() > 1
    ax.set_title(f"Test accuracy per epoch: {title}" + ("\nbands: lowest to highest job of the group" if several else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _save(fig, path)
