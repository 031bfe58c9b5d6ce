"""Paired comparisons against a hand computation: tiny tables built by hand, no training."""
import math

import pandas as pd
import pytest

from sweep import compare

T_975_2 = 4.302653  # Student's t, 0.975 quantile, 2 degrees of freedom (printed tables)


def _table(rows):
    """Rows of (method, alpha, temperature, seed, accuracy) as collect writes them."""
    return pd.DataFrame([{"sweep": "toy", "job_id": f"{m}-{a}-{t}-{s}", "name": f"{m}-{a}-{t}-{s}",
                          "dataset": "mnist-5k", "method": m, "model": "mnist-mlp", "alpha": a, "temperature": t,
                          "epochs": 12, "batch_size": 256, "lr": 1e-3, "seed": s, "drop_last": True,
                          "test_accuracy": acc} for m, a, t, s, acc in rows])


NAN = float("nan")
# scratch and two kd points over 3 seeds; seed 1 is a lucky seed for every student
TOY = _table([
    ("teacher", NAN, NAN, 0, 0.970), ("teacher", NAN, NAN, 1, 0.972), ("teacher", NAN, NAN, 2, 0.969),
    ("scratch", NAN, NAN, 0, 0.900), ("scratch", NAN, NAN, 1, 0.910), ("scratch", NAN, NAN, 2, 0.905),
    ("kd", 0.5, 4.0, 0, 0.915), ("kd", 0.5, 4.0, 1, 0.922), ("kd", 0.5, 4.0, 2, 0.921),
    ("kd", 0.5, 1.0, 0, 0.910), ("kd", 0.5, 1.0, 1, 0.915), ("kd", 0.5, 1.0, 2, 0.901),
])


def _at(c, point):
    return c[c["point"] == point].iloc[0]


def test_t_quantile_is_the_printed_one():
    assert compare.t_quantile(0.975, 2) == pytest.approx(T_975_2, abs=1e-6)


def test_paired_interval_by_hand():
    c = compare.paired(TOY).set_index("point")
    assert list(c.index) == ["alpha 0.5, T 1", "alpha 0.5, T 4"] and set(c["baseline"]) == {"scratch"}
    # alpha 0.5, T 4: differences 0.015, 0.012, 0.016; mean 0.043/3 = 0.0143333
    # deviations +0.000667, -0.002333, +0.001667; squares sum 8.6667e-6; s^2 = 4.3333e-6, s = 0.00208167
    # half-width = 4.302653 * 0.00208167 / sqrt(3) = 0.00517122 -> [0.0091621, 0.0195045]
    r = c.loc["alpha 0.5, T 4"]
    assert r["difference"] == pytest.approx(0.0143333, abs=1e-7)
    assert r["sd"] == pytest.approx(0.00208167, abs=1e-8)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(0.0091621, abs=1e-7), pytest.approx(0.0195045, abs=1e-7))
    assert r["n_seeds"] == 3 and r["seeds"] == "0 1 2" and r["interval"] and r["significant"]
    assert r["verdict"] == "better" and r["mean"] == pytest.approx(0.919333, abs=1e-6)
    # alpha 0.5, T 1: differences 0.010, 0.005, -0.004; mean 0.0036667; s = 0.0070946;
    # half-width = 4.302653 * 0.0070946 / sqrt(3) = 0.0176237 -> [-0.013957, 0.021290]: holds 0
    r = c.loc["alpha 0.5, T 1"]
    assert r["difference"] == pytest.approx(0.0036667, abs=1e-7)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(-0.0139570, abs=1e-6), pytest.approx(0.0212903, abs=1e-6))
    assert not r["significant"] and r["verdict"] == "no difference"


def test_unpaired_seeds_are_left_out():
    """A kd seed without its scratch student counts for nothing: pairs only."""
    extra = pd.concat([TOY, _table([("kd", 0.5, 4.0, 7, 0.999)])], ignore_index=True)
    r = compare.paired(extra).set_index("point").loc["alpha 0.5, T 4"]
    assert r["n_seeds"] == 3 and r["difference"] == pytest.approx(0.0143333, abs=1e-7)


def test_one_seed_gives_no_interval():
    one = TOY[TOY["seed"] == 0]
    c = compare.paired(one)
    r = _at(c, "alpha 0.5, T 4")
    assert r["difference"] == pytest.approx(0.015) and r["n_seeds"] == 1
    assert math.isnan(r["ci_low"]) and math.isnan(r["ci_high"]) and math.isnan(r["sd"])
    assert not r["interval"] and not r["significant"] and r["verdict"] == "no interval"
    assert compare.describe(r) == "alpha 0.5, T 4: +1.50 points against scratch, 1 seed: no interval"
    assert compare.summary(c) == [
        "kd against scratch: 2 points, 1 seed: no interval (run more seeds to tell differences from noise)"]


def test_seeds_that_all_differ_by_the_same_step_give_no_interval():
    """Accuracies move in steps of one test image: two seeds 0.1 points above scratch each have sd 0,
    and an interval of width 0 called that certain ('beats scratch by 0.10 points, 95% CI 0.10 to 0.10')."""
    steps = _table([("scratch", NAN, NAN, 0, 937 / 1000), ("scratch", NAN, NAN, 1, 998 / 1000),
                    ("kd", 0.5, 4.0, 0, 938 / 1000), ("kd", 0.5, 4.0, 1, 999 / 1000),  # differences 1 ulp apart
                    ("kd", 0.5, 1.0, 0, 0.941), ("kd", 0.5, 1.0, 1, 0.997)])
    c = compare.paired(steps)
    r = _at(c, "alpha 0.5, T 4")
    assert r["difference"] == pytest.approx(0.001) and r["n_seeds"] == 2 and r["sd"] == 0
    assert math.isnan(r["ci_low"]) and not r["interval"] and not r["significant"] and r["verdict"] == "no interval"
    assert compare.describe(r) == "alpha 0.5, T 4: +0.10 points against scratch, 2 seeds, all the same: no interval"
    assert _at(c, "alpha 0.5, T 1")["verdict"] == "no difference"  # 0.4 and -0.1 points: a spread, an interval
    assert compare.summary(c) == ["kd against scratch: 0 of 2 points better with 95% confidence, 0 worse, 1 not "
                                  "distinguishable, 1 without an interval (the same difference with every seed) "
                                  "(paired over 2 seeds)"]


def test_words():
    c = compare.paired(TOY)
    assert compare.describe(_at(c, "alpha 0.5, T 4")) == "alpha 0.5, T 4 beats scratch by 1.43 points, 95% CI 0.92 to 1.95, 3 seeds"
    assert compare.describe(_at(c, "alpha 0.5, T 1")) == (
        "alpha 0.5, T 1 does not differ from scratch (+0.37 points, 95% CI -1.40 to 2.13, 3 seeds)")
    worse = _at(c, "alpha 0.5, T 4").copy()
    worse[["difference", "ci_low", "ci_high", "verdict"]] = [-0.01, -0.015, -0.005, "worse"]
    assert compare.describe(worse) == "alpha 0.5, T 4 is below scratch by 1.00 points, 95% CI -1.50 to -0.50, 3 seeds"
    assert compare.summary(c) == [
        "kd against scratch: 1 of 2 points better with 95% confidence, 0 worse, 1 not distinguishable "
        "(paired over 3 seeds)"]


def test_subclass_is_compared_with_scratch_and_with_kd_at_the_same_point():
    sub = _table([("subclass", 0.5, 4.0, s, acc) for s, acc in ((0, 0.925), (1, 0.930), (2, 0.924))])
    sub["subclasses"] = 5
    c = compare.paired(pd.concat([TOY, sub], ignore_index=True))
    rows = c[c["method"] == "subclass"].set_index("baseline")
    assert sorted(rows.index) == ["kd", "scratch"]
    # against kd at alpha 0.5, T 4, seed by seed: 0.010, 0.008, 0.003
    assert rows.loc["kd", "difference"] == pytest.approx(0.007, abs=1e-9)
    assert rows.loc["kd", "point"] == "subclass alpha 0.5, T 4" and rows.loc["kd", "n_seeds"] == 3
    # against scratch: 0.025, 0.020, 0.019
    assert rows.loc["scratch", "difference"] == pytest.approx(0.064 / 3, abs=1e-9)
    words = compare.describe(rows.loc["kd"].to_dict() | {"baseline": "kd"})
    assert words.startswith("subclass alpha 0.5, T 4 ") and "kd (same alpha and T)" in words


def test_point_means_interval_of_the_mean():
    m = compare.point_means(TOY).set_index("method").loc["scratch"]
    # 0.900, 0.910, 0.905: mean 0.905, s = 0.005, half = 4.302653 * 0.005 / sqrt(3) = 0.0124207
    assert m["mean"] == pytest.approx(0.905) and m["n_seeds"] == 3
    assert (m["ci_low"], m["ci_high"]) == (pytest.approx(0.8925793, abs=1e-7), pytest.approx(0.9174207, abs=1e-7))
    far = compare.point_means(_table([("scratch", NAN, NAN, 0, 0.60), ("scratch", NAN, NAN, 1, 1.00)])).iloc[0]
    assert (far["ci_low"], far["ci_high"]) == (0.0, 1.0)  # the t interval, -1.74 to 3.34, cut to what can be


def test_no_baseline_no_comparison():
    assert compare.paired(TOY[TOY["method"] != "scratch"]).empty
