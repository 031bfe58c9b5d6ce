"""kdsweep report on hand-written job folders: one self-contained HTML page and its Markdown twin."""
import base64
import io
import json
from html.parser import HTMLParser

import pandas as pd
import pytest
from PIL import Image

from kd import atomic
from sweep import api, report, state
from sweep.cli import main
from sweep_tables import finished_sweep


class Page(HTMLParser):
    """The parts of a page the tests look at: images, tables (header cells), headings, text, links."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tables, self.h2, self.links, self.text = [], [], [], [], []
        self._in = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append([])
        elif tag in ("th", "h2"):
            self._in = tag
        for key in ("src", "href"):
            if key in a and tag != "img":
                self.links.append(a[key])

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        self.text.append(data)
        if self._in == "th":
            self.tables[-1].append(data)
        elif self._in == "h2":
            self.h2.append(data)


@pytest.fixture
def reported(tmp_path):
    """A 3-seed sweep: one job never ran, one failed, one left a damaged result; collected, reported."""
    sweep_file, root, plan = finished_sweep(tmp_path, skip=("kd-a0.9-T1-s2", "kd-a0.9-T4-s2"))
    folder = api.folder(plan, root)
    by = {j.name: j for j in plan.jobs}
    atomic.write_json(state.job_dir(folder, by["kd-a0.9-T1-s2"]) / "error.json", {"line": "RuntimeError: out of memory"})
    (state.job_dir(folder, by["kd-a0.5-T1-s2"]) / "result.json").write_bytes(b'{"metrics": {"test_acc')
    api.collect(sweep_file, results_root=root)
    return sweep_file, root, plan, folder


def test_report_html_is_self_contained_with_every_figure_and_table(reported, capsys):
    sweep_file, root, plan, folder = reported
    assert main(["report", str(sweep_file), "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"report -> {folder / 'report.html'}" in out and "kd against scratch: " in out
    page = Page((folder / "report.html").read_text())
    assert page.h2 == ["Summary", "Comparisons", "Figures", "Results", "Failures and unfinished jobs", "Plan",
                       "Sweep file", "Provenance"]
    pngs = sorted(p.name for p in (folder / "plots").glob("*.png"))
    assert pngs == ["accuracy_per_epoch.png", "accuracy_vs_temperature.png", "difference_kd_vs_scratch.png",
                    "heatmap_alpha_temperature.png"]
    assert sorted(i["alt"] for i in page.images) == pngs
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)  # inline: no file, no network
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):], validate=True))) as im:
            im.verify()
            assert im.format == "PNG" and im.width >= 600
    headers = [tuple(t) for t in page.tables]
    assert headers == [
        ("point", "baseline", "accuracy (%)", "baseline (%)", "difference (points)", "95% CI (points)", "seeds", "verdict"),
        ("method", "alpha", "T", "seeds", "test accuracy (%)", "95% CI (%)"),
        ("job", "method", "alpha", "T", "seed", "test accuracy (%)", "its pack's training s", "pack"),
        ("job", "state", "detail"),
        ("id", "job", "method", "alpha", "T", "seed", "depends on"),
        ("what", "value (number of jobs)")]
    assert not [link for link in page.links if "//" in link]  # nothing to fetch
    text = " ".join(page.text)
    assert "alpha 0.5, T 4 beats scratch by 0.63 points, 95% CI 0.49 to 0.78, 3 seeds" in text
    assert "alpha 0.9, T 1 does not differ from scratch (+0.05 points" in text
    assert "1 damaged, 1 failed, 1 pending" in text and "RuntimeError: out of memory" in text
    assert 'seed = [0, 1, 2]' in text  # the sweep file itself
    assert "3 x 1 teacher job alone; 1 x 3 scratch jobs packed; 1 x 12 kd jobs packed" in text
    assert "One process per grid point would have taken about" in text and "bench/kd_grid.py" in text


def test_markdown_twin_says_the_same(reported):
    sweep_file, root, plan, folder = reported
    written = api.report(sweep_file, results_root=root)
    md = written.markdown.read_text()
    html = written.html.read_text()
    for line in ("alpha 0.5, T 4 beats scratch by 0.63 points, 95% CI 0.49 to 0.78, 3 seeds",
                 "kd against scratch: 2 of 4 points better with 95% confidence"):
        assert line in md and line in html
    for png in (folder / "plots").glob("*.png"):
        assert f"](plots/{png.name})" in md


def test_one_seed_report_says_no_interval(tmp_path):
    sweep_file, root, plan = finished_sweep(tmp_path, seeds=(0,))
    api.collect(sweep_file, results_root=root)
    text = " ".join(Page(api.report(sweep_file, results_root=root).html.read_text()).text)
    assert "alpha 0.5, T 4: +0.60 points against scratch, 1 seed: no interval" in text
    assert "1 seed: no interval (run more seeds" in text and "beats" not in text


def test_mixed_code_versions_are_warned_about(tmp_path):
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    for job in plan.jobs[:2]:
        path = state.job_dir(folder, job) / "result.json"
        r = json.loads(path.read_text())
        r["versions"].update(git="b" * 40, dirty=True, diff_sha256="c" * 64)
        path.write_text(json.dumps(r))
    results = pd.read_parquet(api.collect(sweep_file, results_root=root).results)
    (warning,) = report.code_warnings(results)
    assert warning.startswith("This sweep mixes 2 code versions: 16 jobs at commit aaaaaaaaaa; "
                              "2 jobs at commit bbbbbbbbbb + uncommitted diff cccccccccc.")
    assert "mixes 2 code versions" in api.report(sweep_file, results_root=root).html.read_text()
    assert report.code_warnings(results.iloc[2:]) == []


def test_committed_results_without_job_folders(tmp_path):
    """A results folder of Parquet files only: jobs missing from the table are said to be missing, not pending."""
    sweep_file, root, plan = finished_sweep(tmp_path, skip=("kd-a0.9-T4-s2",))
    api.collect(sweep_file, results_root=root)
    folder = api.folder(plan, root)
    for p in (folder / "jobs").glob("*/*"):
        p.unlink()
    for d in (folder / "jobs").iterdir():
        d.rmdir()
    (folder / "jobs").rmdir()
    text = " ".join(Page(api.report(sweep_file, results_root=root).html.read_text()).text)
    assert "kd-a0.9-T4-s2" in text and "not in results.parquet" in text and "pending" not in text


def test_compute_time_counts_a_pack_once():
    rows = pd.DataFrame({"device": ["cpu (x86_64)"] * 3 + ["NVIDIA H100 (tf32 on)"] * 3,
                         "method": ["teacher", "kd", "kd", "scratch", "teacher", "teacher"],
                         "wall_seconds": [3600.0, 1800.0, 1800.0, 360.0, 720.0, 720.0], "pack_size": [1, 2, 2, 1, 2, 2]})
    # the students' ratio for packed students alone: a pack of teachers (a GPU's) counts as its time
    assert report.compute_time(rows) == [("NVIDIA H100 (tf32 on)", pytest.approx(0.3), 0.0, pytest.approx(0.3)),
                                         ("cpu (x86_64)", 1.5, 0.5, pytest.approx(1.0 + 20.2 * 0.5))]


def test_the_plan_section_sizes_packs_for_the_device_the_results_name():
    import pandas as pd

    from sweep.report import _device_kind

    kind = lambda devices: _device_kind(pd.DataFrame({"device": devices}))  # noqa: E731
    assert kind(["cpu (x86_64)", "cpu (x86_64)"]) == "cpu"
    assert kind(["cpu (x86_64)", "NVIDIA H200 (tf32 on)"]) == "cuda"
    assert kind(["cpu (x86_64)", None, "unknown", ""]) == "cpu"  # results that name no device say nothing
    assert kind([None, None]) == kind([]) == _device_kind(pd.DataFrame({"x": [1]})) == "cpu"


def test_the_headline_says_which_jobs_finished_since_the_last_collect(tmp_path, capsys):
    from sweep_tables import finish

    sweep_file, root, plan = finished_sweep(tmp_path, skip=("kd-a0.5-T4-s1", "kd-a0.5-T4-s2"))
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    finish(api.folder(plan, root), plan, skip=("kd-a0.5-T4-s2",))  # a resume finished one of the two
    capsys.readouterr()
    assert main(["report", str(sweep_file), "--results", str(root)]) == 0
    headline = capsys.readouterr().out.splitlines()[0]
    assert headline.endswith(f"{len(plan.jobs) - 2} of {len(plan.jobs)} jobs finished, 3 seeds; 1 not finished "
                             "(see below); 1 more finished since the last collect: run 'kdsweep collect' again."), headline


def test_a_job_whose_folder_is_gone_is_in_the_tables_and_said_so(tmp_path, capsys):
    """Its row kept (collect refuses to drop it): the report called it 'pending; not in the tables or
    figures' above a row of every table, and told to collect again, which refuses."""
    import shutil

    sweep_file, root, plan = finished_sweep(tmp_path)
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    gone = next(j for j in plan.jobs if j.name == "kd-a0.5-T4-s1")
    shutil.rmtree(state.job_dir(api.folder(plan, root), gone))
    capsys.readouterr()
    assert main(["report", str(sweep_file), "--results", str(root)]) == 0
    headline = capsys.readouterr().out.splitlines()[0]
    assert headline.endswith(f"{len(plan.jobs)} of {len(plan.jobs)} jobs finished, 3 seeds."), headline
    md = (api.folder(plan, root) / "report.md").read_text()
    assert "not in the tables" not in md and "pending" not in md, md
    assert "1 in the tables from an earlier collect, whose folders no longer hold their result (see the detail)." in md
    assert f"| kd-a0.5-T4-s1 | done, folder gone | {report.GONE} |" in md, md


def test_a_sweep_with_nothing_to_compare_is_not_said_to_be_unfinished(tmp_path):
    """methods = ["kd"] (its teacher, no scratch) or ["scratch"]: 'no distilled student has finished
    beside its baseline' read as if something were still to come."""
    import pandas as pd

    from sweep import api, report

    def said(methods):
        f = tmp_path / "s.toml"
        f.write_text(f'name = "s"\ndataset = "mnist-5k"\nmethods = {methods}\n[train]\nepochs = 1\n')
        (text,) = report.comparison_blocks(pd.DataFrame(), api.plan(f))
        return text.text

    assert said('["kd"]').startswith("No comparisons: the sweep has no distilled student and baseline")
    assert said('["scratch"]').startswith("No comparisons: the sweep has no distilled student and baseline")
    assert said('["scratch", "kd"]').startswith("No comparisons: no distilled student has finished beside")
