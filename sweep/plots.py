"""Summary figures drawn from the Parquet files alone (no job folders needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kd import atomic  # noqa: E402
from kd.errors import UserError  # noqa: E402


def plot_all(folder: Path) -> list[Path]:
    """Draw every figure that the sweep's data supports into ``folder/plots``; returns the files."""
    try:
        results = pd.read_parquet(folder / "results.parquet")
        epochs = pd.read_parquet(folder / "epochs.parquet")
    except FileNotFoundError as e:
        raise UserError(f"{e.filename}: not found", hint="run 'kdsweep collect' first") from None
    if results.empty:
        raise UserError(f"{folder / 'results.parquet'}: no finished jobs to plot")
    out = folder / "plots"
    out.mkdir(exist_ok=True)
    title = f"{results['sweep'].iloc[0]} ({', '.join(sorted(results['dataset'].unique()))})"
    files = []
    if (results["method"] == "kd").any():
        files.append(_accuracy_vs_temperature(results, out / "accuracy_vs_temperature.png", title))
        files.append(_heatmap(results, out / "heatmap_alpha_temperature.png", title))
        if any(c.startswith("f1_") for c in results.columns):  # two classes (MHIST): the study's second figure
            files.append(_f1_vs_temperature(results, out / "accuracy_f1_vs_temperature.png", title))
    files.append(_per_epoch(epochs, out / "accuracy_per_epoch.png", title))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        atomic.write_with(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path


def _reference_lines(ax, results: pd.DataFrame) -> None:
    for method, style, label in (("teacher", ("black", "--"), "teacher"), ("scratch", ("grey", ":"), "student from scratch")):
        acc = results.loc[results["method"] == method, "test_accuracy"]
        if len(acc):
            ax.axhline(100 * acc.mean(), color=style[0], linestyle=style[1], linewidth=1.5,
                       label=f"{label} ({100 * acc.mean():.2f}%)")


def _accuracy_vs_temperature(results: pd.DataFrame, path: Path, title: str) -> Path:
    kd = results[results["method"] == "kd"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, kd["alpha"].nunique()))
    for color, (alpha, group) in zip(colors, kd.groupby("alpha")):
        stats = group.groupby("temperature")["test_accuracy"].agg(["mean", "std", "count"]).sort_index()
        err = 100 * stats["std"].fillna(0) if (stats["count"] > 1).any() else None
        ax.errorbar(stats.index, 100 * stats["mean"], yerr=err, marker="o", capsize=3, color=color,
                    label=f"alpha = {alpha:g}")
    seeds = results["seed"].nunique()
    _temperature_axes(ax, results, "student test accuracy (%)",
                      f"Student accuracy vs temperature: {title}" + (f", mean of {seeds} seeds" if seeds > 1 else ""))
    return _save(fig, path)


def _temperature_axes(ax, results: pd.DataFrame, ylabel: str, title: str) -> None:
    """Teacher and scratch lines, a log2 temperature axis with the grid's values, labels, legend."""
    _reference_lines(ax, results)
    ax.set_xscale("log", base=2)
    temps = sorted(results.loc[results["method"] == "kd", "temperature"].unique())
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.set_xlabel("temperature T")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _f1_vs_temperature(results: pd.DataFrame, path: Path, title: str) -> Path:
    kd = results[results["method"] == "kd"]
    metrics = ["test_accuracy", *sorted(c for c in results.columns if c.startswith("f1_")), "macro_f1"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for (alpha, group), style in zip(kd.groupby("alpha"), ("-", "--", ":", "-.")):
        stats = group.groupby("temperature")[[m for m in metrics if m in group]].mean().sort_index()
        for m, color in zip(stats.columns, plt.cm.tab10.colors):
            label = {"test_accuracy": "accuracy", "macro_f1": "macro F1"}.get(m, f"F1 {m[3:].upper()}")
            ax.plot(stats.index, 100 * stats[m], marker="o", linestyle=style, color=color,
                    label=f"{label}" + (f" (alpha {alpha:g})" if kd["alpha"].nunique() > 1 else ""))
    _temperature_axes(ax, results, "student, test set (%)", f"Student accuracy and F1 vs temperature: {title}")
    return _save(fig, path)


def _heatmap(results: pd.DataFrame, path: Path, title: str) -> Path:
    kd = results[results["method"] == "kd"]
    table = kd.pivot_table(index="alpha", columns="temperature", values="test_accuracy", aggfunc="mean")
    scratch = results.loc[results["method"] == "scratch", "test_accuracy"]
    if len(scratch):  # alpha = 0 is the student from scratch at every temperature
        table.loc[0.0] = scratch.mean()
        table = table.sort_index()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(table.columns) + 2.5), max(3.5, 0.6 * len(table.index) + 1.8)))
    im = ax.imshow(100 * table.values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), [f"{t:g}" for t in table.columns])
    ax.set_yticks(range(len(table.index)), [f"{a:g}" for a in table.index])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("alpha (weight of distillation)")
    lo, hi = np.nanmin(table.values), np.nanmax(table.values)
    for (i, j), v in np.ndenumerate(table.values):
        if not np.isnan(v):
            ax.text(j, i, f"{100 * v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if v < (lo + hi) / 2 else "black")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title(f"Student accuracy: {title}", fontsize=10)
    return _save(fig, path)


def _per_epoch(epochs: pd.DataFrame, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    kd = epochs[epochs["method"] == "kd"]
    alphas = sorted(kd["alpha"].dropna().unique())
    cmap = dict(zip(alphas, plt.cm.viridis(np.linspace(0.1, 0.85, max(len(alphas), 1)))))
    labelled = set()
    for (method, alpha, name), g in epochs.groupby(["method", "alpha", "name"], dropna=False, sort=False):
        if method == "kd":
            label = f"kd, alpha = {alpha:g}" if alpha not in labelled else None
            labelled.add(alpha)
            ax.plot(g["epoch"], 100 * g["test_accuracy"], color=cmap[alpha], alpha=0.6, linewidth=1, label=label)
        else:
            color = "black" if method == "teacher" else "grey"
            label = method if method not in labelled else None
            labelled.add(method)
            ax.plot(g["epoch"], 100 * g["test_accuracy"], color=color, linewidth=2,
                    linestyle="--" if method == "teacher" else ":", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy per epoch: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
