"""The committed reference results and their READMEs say the same thing: the READMEs' headline
numbers are read back from the committed Parquet files, so the two cannot drift apart."""
import re
from pathlib import Path

import pandas as pd
import pytest

from sweep import collect, compare

RESULTS = Path(__file__).resolve().parent.parent / "results"
MNIST_5K = RESULTS / "reference-mnist-5k"
FASHION = RESULTS / "reference-fashion-mnist"


@pytest.fixture(scope="module")
def mnist5k():
    results, comparisons = collect.read_tables(MNIST_5K, (collect.RESULTS, collect.COMPARISONS))
    return results, comparisons, (MNIST_5K / "README.md").read_text()


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def test_the_committed_tables_are_complete_and_current(mnist5k):
    results, comparisons, _ = mnist5k
    assert len(results) == 130 and sorted(results["seed"].unique()) == [0, 1, 2, 3, 4]
    assert results["dataset"].eq("mnist-5k").all() and results["epochs_run"].eq(12).all()
    assert {"pack_size", "git_version", "git_dirty", "git_diff_sha256", "teacher_forward_images"} <= set(results)
    assert results["git_version"].str.fullmatch(r"[0-9a-f]{40}").all()  # a commit, never "HEAD"
    pd.testing.assert_frame_equal(comparisons, compare.paired(results))  # the file is what the code computes
    assert len(comparisons) == 24 and comparisons["n_seeds"].eq(5).all()


def test_readme_table_matches_the_comparisons(mnist5k):
    _, comparisons, readme = mnist5k
    rows = re.findall(r"^\| ([\d.]+) \| (\d+) \| ([\d.]+) \| ([+-][\d.]+) \| ([+-][\d.]+) to ([+-][\d.]+) \| ([\w ]+) \|$",
                      readme, re.M)
    assert len(rows) == len(comparisons) == 24
    table = {(float(a), float(t)): rest for a, t, *rest in rows}
    for _, c in comparisons.iterrows():
        assert table[(c["alpha"], c["temperature"])] == [
            f"{100 * c['mean']:.2f}", _points(c["difference"]), _points(c["ci_low"]), _points(c["ci_high"]),
            c["verdict"]], c["point"]


def test_readme_headline_counts_and_baselines(mnist5k):
    results, comparisons, readme = mnist5k
    readme = " ".join(readme.split())  # sentences wrap anywhere
    counts = comparisons["verdict"].value_counts()
    m = re.search(r"\*\*(\d+) of (\d+)\*\* KD points beat the student from scratch with 95% confidence; "
                  r"\*\*(\d+)\*\* (?:is|are) below it", readme)
    assert m and [int(g) for g in m.groups()] == [counts.get("better", 0), len(comparisons), counts.get("worse", 0)]
    worse = comparisons[comparisons["verdict"] == "worse"]
    m = re.search(r"below it \(([^)]*)\)", readme)
    assert m and sorted(m.group(1).split("; ")) == sorted(worse["point"])
    means = compare.point_means(results).set_index("method")
    for method, words in (("teacher", "teacher"), ("scratch", "student from scratch")):
        r = means.loc[method]
        line = f"{words} {100 * r['mean']:.2f}% (95% CI {100 * r['ci_low']:.2f} to {100 * r['ci_high']:.2f}"
        assert line in readme, line


def test_committed_files_are_small_and_self_contained():
    files = [p for p in MNIST_5K.rglob("*") if p.is_file()]
    assert {p.relative_to(MNIST_5K).as_posix() for p in files} >= {
        "README.md", "results.parquet", "epochs.parquet", "comparisons.parquet", "report.html", "report.md",
        "plots/accuracy_vs_temperature.png", "plots/difference_kd_vs_scratch.png"}
    assert not [p for p in files if p.suffix in (".pt", ".json") or "jobs" in p.parts]
    assert sum(p.stat().st_size for p in files) < 3_000_000
    html = (MNIST_5K / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(list((MNIST_5K / "plots").glob("*.png")))


def test_fashion_readme_counts_the_points_below_scratch():
    results = pd.read_parquet(FASHION / "results.parquet")
    scratch = results.loc[results["method"] == "scratch", "test_accuracy"].item()
    below = results[(results["method"] == "kd") & (results["test_accuracy"] < scratch)]
    readme = " ".join((FASHION / "README.md").read_text().split())
    assert len(below) == 2 and "all KD points but two are at or above the scratch student" in readme
    assert f"({100 * scratch:.2f}%)" in readme
    for _, r in below.iterrows():
        assert f"alpha {r['alpha']:g}, T {r['temperature']:g} ({100 * r['test_accuracy']:.2f}%)" in readme
