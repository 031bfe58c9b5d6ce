"""Paired comparisons: every distilled grid point against its baseline trained with the same seed.

A student's accuracy moves with its seed (initialisation, batch order and, for a distilled
student, the teacher trained with that seed) by about as much as distillation moves it. So each
grid point is compared with its baseline seed by seed, and the differences are averaged over
the seeds, with a 95% confidence interval from the paired t distribution. Baselines: the
student trained alone ("scratch") for every distilled method, and for "subclass" also
conventional "kd" at the same alpha and temperature.

The interval covers the randomness of training (the seeds), on this sweep's fixed test set; it
does not cover which test images were drawn. Each point's interval holds at 95% on its own: among
24 points with no true difference, about one is expected to exclude 0 by chance.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kd.config import SETTINGS, shown

log = logging.getLogger(__name__)

LEVEL = 0.95
BASELINES = {"kd": ("scratch",), "subclass": ("scratch", "kd")}  # student method -> what it is compared with
NO_INTERVAL = "no interval"
BETTER, WORSE, SAME = "better", "worse", "no difference"
COMPARISONS = "comparisons.parquet"
_NOT_POINT = ("method", "teacher", "seed")  # settings that do not tell grid points apart here


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and its two-sided confidence interval (NaN bounds with one seed)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)

    @property
    def verdict(self) -> str:
        """``better`` or ``worse`` when the interval excludes 0, ``no difference`` when it holds 0,
        ``no interval`` with one seed, or no spread between the seeds."""
        if not self.has_interval:
            return NO_INTERVAL
        return BETTER if self.low > 0 else WORSE if self.high < 0 else SAME


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of ``values`` and the Student-t interval ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)``
    (sd with n - 1 degrees of freedom). Applied to paired differences this is the paired t interval.

    The t distribution, not the normal, because the spread is estimated from a handful of seeds
    (with 5 seeds t_{0.975,4} = 2.78, not 1.96); it assumes the seeds are independent and the
    differences roughly normal. One value gives no spread, so no interval: NaN bounds. Neither do
    values all equal: accuracies move in steps of one test image, so two seeds often differ from
    their baselines by the same step, and an interval of width 0 would call any such difference
    certain."""
    x = np.asarray(values, dtype="float64")
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    if sd < 1e-12:  # all the same but for float rounding (0.999 - 0.998 is not 0.938 - 0.937 to the last bit)
        return Interval(mean, math.nan, math.nan, n, 0.0)
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def no_interval(n: int) -> str:
    """Why a point has no interval: ``1 seed: no interval``, ``2 seeds, all the same: no interval``."""
    return "1 seed: no interval" if n < 2 else f"{n} seeds, all the same: no interval"


@functools.cache
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (t_{0.975,2} = 4.302653)."""
    from scipy import stats  # scipy comes with mlxtend; imported here, only where intervals are made

    return float(stats.t.ppf(q, df))


def settings_columns(results: pd.DataFrame) -> list[str]:
    """The training settings among the table's columns that tell grid points apart (not the seed)."""
    return [c for c in SETTINGS if c in results.columns and c not in _NOT_POINT]


def point_label(row: pd.Series | dict, varying: Sequence[str] = ()) -> str:
    """``alpha 0.5, T 4`` (and any other setting in ``varying``), prefixed by the method unless it is kd."""
    parts = [f"{name} {row[key]:g}" for key, name in (("alpha", "alpha"), ("temperature", "T"))
             if pd.notna(row.get(key))]
    parts += [f"{k} {shown(row[k])}" for k in varying if k not in ("alpha", "temperature") and pd.notna(row.get(k))]
    label = ", ".join(parts)
    return label if row["method"] == "kd" and label else f"{row['method']} {label}".strip()


def varying_settings(results: pd.DataFrame) -> list[str]:
    """Settings with more than one value among the jobs of a method (besides the seed): what tells
    its rows apart (a grid of teachers alone varies theirs)."""
    if results.empty:
        return []
    by_method = results.groupby("method")
    return [c for c in settings_columns(results) if (by_method[c].nunique(dropna=True) > 1).any()]


def paired(results: pd.DataFrame, metric: str = "test_accuracy", level: float = LEVEL) -> pd.DataFrame:
    """One row per student grid point and baseline: the mean paired difference over the seeds that
    both have, its ``level`` interval (``ci_low``, ``ci_high``: NaN with one seed, and then
    ``interval`` is False), ``n_seeds``, ``significant`` (the interval excludes 0) and ``verdict``.
    Accuracies and differences are fractions, as in ``results.parquet``."""
    settings = settings_columns(results)
    varying = varying_settings(results)
    rows = []
    for method, baselines in BASELINES.items():
        students = results[results["method"] == method]
        for base_method in baselines:
            base = results[results["method"] == base_method]
            if students.empty or base.empty:
                continue
            # the baseline's own settings (a scratch student has no alpha) must match, and its seed
            keys = [c for c in settings if base[c].notna().any()] + ["seed"]
            if base.duplicated(keys).any():
                log.warning("%s: more than one %s job per setting and seed: no paired comparison", method, base_method)
                continue
            pairs = students.merge(base[[*keys, metric]], on=keys, how="inner", suffixes=("", "_baseline"))
            point = [c for c in settings if students[c].notna().any()]
            for values, group in pairs.groupby(point, dropna=False, sort=True):
                diff = t_interval(group[metric] - group[f"{metric}_baseline"], level)
                first = dict(zip(point, values if isinstance(values, tuple) else (values,)))
                rows.append({
                    "sweep": group["sweep"].iloc[0], "method": method, "baseline": base_method,
                    "point": point_label({"method": method, **first}, varying), **first,
                    "metric": metric, "n_seeds": diff.n,
                    "seeds": " ".join(str(s) for s in sorted(group["seed"])),
                    "mean": float(group[metric].mean()), "baseline_mean": float(group[f"{metric}_baseline"].mean()),
                    "difference": diff.mean, "sd": diff.sd, "ci_low": diff.low, "ci_high": diff.high,
                    "level": level, "interval": diff.has_interval,
                    "significant": diff.verdict in (BETTER, WORSE), "verdict": diff.verdict})
    columns = ["sweep", "method", "baseline", "point", *settings, "metric", "n_seeds", "seeds", "mean",
               "baseline_mean", "difference", "sd", "ci_low", "ci_high", "level", "interval", "significant", "verdict"]
    out = pd.DataFrame.from_records(rows, columns=columns)
    unset = [c for c in settings if c not in ("alpha", "temperature") and out[c].isna().all()]  # not students'
    return out.drop(columns=unset).astype({"n_seeds": "int64", "interval": "bool", "significant": "bool"})


def point_means(results: pd.DataFrame, metric: str = "test_accuracy", level: float = LEVEL) -> pd.DataFrame:
    """Every method's grid points: the mean of ``metric`` over seeds and its ``level`` interval
    (a one-sample t interval of the mean, cut to [0, 1], where every metric here lies: two seeds far
    apart gave '49.23% to 112.77%'; NaN bounds with one seed), sorted by method, then settings."""
    point = [c for c in settings_columns(results) if results[c].notna().any()]
    rows = []
    for values, group in results.groupby(["method", *point], dropna=False, sort=True):
        ci = t_interval(group[metric], level)
        rows.append({**dict(zip(["method", *point], values)), "n_seeds": ci.n, "mean": ci.mean,
                     "ci_low": ci.low if math.isnan(ci.low) else max(ci.low, 0.0),
                     "ci_high": ci.high if math.isnan(ci.high) else min(ci.high, 1.0)})
    return pd.DataFrame.from_records(rows, columns=["method", *point, "n_seeds", "mean", "ci_low", "ci_high"])


def describe(row: pd.Series | dict, unit: float = 100.0) -> str:
    """A comparison in words: ``alpha 0.5, T 4 beats scratch by 0.92 points, 95% CI 0.48 to 1.36,
    5 seeds``; ``... does not differ from scratch (+0.10 points, 95% CI -0.30 to 0.50, 5 seeds)``;
    ``...: +0.30 points against scratch, 1 seed: no interval``."""
    d, lo, hi, n = (unit * row["difference"], unit * row["ci_low"], unit * row["ci_high"], int(row["n_seeds"]))
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    ci = f"{100 * row.get('level', LEVEL):.0f}% CI {lo:.2f} to {hi:.2f}, {seeds}"
    who, base = row["point"], row["baseline"]
    if row["baseline"] == "kd" and row["method"] == "subclass":
        base = "kd (same alpha and T)"
    verdict = row["verdict"]
    if verdict == BETTER:
        return f"{who} beats {base} by {d:.2f} points, {ci}"
    if verdict == WORSE:
        return f"{who} is below {base} by {-d:.2f} points, {ci}"
    if verdict == SAME:
        return f"{who} does not differ from {base} ({d:+.2f} points, {ci})"
    return f"{who}: {d:+.2f} points against {base}, {no_interval(n)}"


def summary(comparisons: pd.DataFrame) -> list[str]:
    """One sentence per (method, baseline): how many points beat it, fall below it, or neither."""
    out = []
    for (method, base), g in comparisons.groupby(["method", "baseline"], sort=False):
        n = len(g)
        seeds = sorted(set(g["n_seeds"]))
        if not g["interval"].any():
            out.append(f"{method} against {base}: {n} point{'s' if n != 1 else ''}, {'/'.join(map(str, seeds))} seed"
                       f"{'s' if seeds != [1] else ''}: no interval (run more seeds to tell differences from noise)")
            continue
        counts = g["verdict"].value_counts()
        bare = g.loc[g["verdict"] == NO_INTERVAL, "n_seeds"]
        why = ", ".join(filter(None, [(bare < 2).any() and "1 seed",
                                      (bare >= 2).any() and "the same difference with every seed"]))
        out.append(f"{method} against {base}: {counts.get(BETTER, 0)} of {n} points better with "
                   f"{100 * g['level'].iloc[0]:.0f}% confidence, {counts.get(WORSE, 0)} worse, "
                   f"{counts.get(SAME, 0)} not distinguishable"
                   + (f", {len(bare)} without an interval ({why})" if len(bare) else "")
                   + f" (paired over {'/'.join(map(str, seeds))} seeds)")
    return out
