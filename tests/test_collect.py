"""collect on hand-written job folders: damaged results are skipped and named, comparisons written,
the code's provenance kept; plot on a damaged table is one error line."""
import json
import logging
import subprocess

import pandas as pd
import pytest

from kd.errors import UserError

from sweep import api, collect, plots, state
from sweep.cli import main
from sweep_tables import SWEEP, accuracy, finish, finished_sweep


@pytest.mark.parametrize("damage", [b"\x00\xff garbage \x8f", b'{"metrics": {"test_accuracy": 0.9', b"{}",
                                    b'{"metrics": {"test_accuracy": 0.9}, "history": "none"}', b"[]"],
                         ids=["garbage", "truncated", "empty-object", "no-history", "a-list"])
def test_a_damaged_result_is_skipped_named_and_listed(tmp_path, caplog, capsys, damage):
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    job = next(j for j in plan.jobs if j.name == "kd-a0.5-T4-s1")
    bad = state.job_dir(folder, job) / "result.json"
    bad.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="sweep.collect"):
        c = api.collect(sweep_file, results_root=root)
    assert c.rows == len(plan.jobs) - 1
    assert str(bad) in caplog.text  # the warning names the file
    assert [(n, s) for n, s, _ in c.missing] == [("kd-a0.5-T4-s1", collect.DAMAGED)]
    assert str(bad) in c.missing[0][2]
    df = pd.read_parquet(c.results)
    assert job.id not in set(df["job_id"]) and len(df) == len(plan.jobs) - 1
    comparisons = pd.read_parquet(c.comparisons)
    assert comparisons.set_index("point").loc["alpha 0.5, T 4", "n_seeds"] == 2  # the other seeds still count
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "not finished (1), not in the table:\n  kd-a0.5-T4-s1: damaged (" in out


def _chattr(flag: str, path) -> None:
    """chattr +i: a folder no one may write in, not even root (EPERM), as a colleague's refuses you."""
    r = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"chattr {flag} {path}: {r.stderr.strip() or r.returncode}")


def test_a_results_folder_that_cannot_be_written_is_one_error_line(tmp_path, capsys):
    """collect, plot and report on a sweep folder one may read but not write: one line naming what
    could not be written, exit status 2, no traceback, nothing half-written."""
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    assert main(["-q", "collect", str(sweep_file), "--results", str(root)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in folder.iterdir())
    _chattr("+i", folder)
    try:
        for command, line in (("collect", "results.parquet: cannot write it (Operation not permitted)"),
                              ("plot", "plots: Operation not permitted"), ("report", "plots: Operation not permitted")):
            assert main(["-q", command, str(sweep_file), "--results", str(root)]) == 2, command
            err = capsys.readouterr().err.strip().splitlines()
            assert err[0] == f"error: {folder}/{line}", command
            assert "Traceback" not in "\n".join(err)
    finally:
        _chattr("-i", folder)
    assert sorted(p.name for p in folder.iterdir()) == before  # no stray temporary file


def test_comparisons_are_written_beside_the_results(tmp_path, capsys):
    sweep_file, root, plan = finished_sweep(tmp_path)
    c = api.collect(sweep_file, results_root=root)
    assert c.comparisons == api.folder(plan, root) / "comparisons.parquet"
    table = pd.read_parquet(c.comparisons)
    assert list(table["point"]) == ["alpha 0.5, T 1", "alpha 0.5, T 4", "alpha 0.9, T 1", "alpha 0.9, T 4"]
    assert table.set_index("point").loc["alpha 0.5, T 4", "verdict"] == "better"
    pd.testing.assert_frame_equal(table, api.compare(sweep_file, results_root=root))
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "kd against scratch: 2 of 4 points better with 95% confidence" in out
    assert "  alpha 0.5, T 4 beats scratch by 0.63 points, 95% CI 0.49 to 0.78, 3 seeds" in out


def test_one_seed_says_no_interval(tmp_path, capsys):
    sweep_file, root, plan = finished_sweep(tmp_path, seeds=(0,))
    c = api.collect(sweep_file, results_root=root)
    table = pd.read_parquet(c.comparisons)
    assert not table["interval"].any() and table["ci_low"].isna().all() and set(table["verdict"]) == {"no interval"}
    main(["collect", str(sweep_file), "--results", str(root)])
    out = capsys.readouterr().out
    assert "alpha 0.5, T 4: +0.60 points against scratch, 1 seed: no interval" in out
    assert "95% CI" not in out


def test_version_columns(tmp_path):
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    job = plan.jobs[0]
    path = state.job_dir(folder, job) / "result.json"
    result = json.loads(path.read_text())
    result["versions"].update(dirty=True, diff_sha256="d" * 64)
    path.write_text(json.dumps(result))
    df = pd.read_parquet(api.collect(sweep_file, results_root=root).results).set_index("job_id")
    assert {"git_version", "git_dirty", "git_diff_sha256", "torch_version", "kd_version"} <= set(df.columns)
    assert df.loc[job.id, "git_dirty"] and df.loc[job.id, "git_diff_sha256"] == "d" * 64


@pytest.mark.parametrize("damage", [b"PAR1 this is not parquet", b"", b"\x00" * 100])
def test_plot_on_a_damaged_table_is_one_error_line(tmp_path, capsys, damage):
    sweep_file, root, plan = finished_sweep(tmp_path)
    api.collect(sweep_file, results_root=root)
    bad = api.folder(plan, root) / "results.parquet"
    bad.write_bytes(damage)
    for command in ("plot", "report"):
        assert main([command, str(sweep_file), "--results", str(root)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"error: {bad}: damaged, not a Parquet table") and "Traceback" not in "".join(err)
        assert err[1:] == ["hint: run 'kdsweep collect' again to rewrite it"]


@pytest.mark.parametrize("table, edit, said", [
    ("results.parquet", lambda d: d.assign(test_accuracy=d["test_accuracy"].astype(str)),
     "column test_accuracy holds '{v}' (row 1, job {name}), not a number"),
    ("results.parquet", lambda d: d.assign(test_accuracy=d["test_accuracy"] * 100),  # in percent
     "column test_accuracy holds {p} (row 1, job {name}), not a fraction between 0 and 1"),
    ("epochs.parquet", lambda d: d.assign(epoch=d["epoch"].astype(str)), "column epoch holds '1' (row 1, job {name}), "
     "not a number"),
])
def test_plot_and_report_on_a_table_of_wrong_values_is_one_error_line(tmp_path, capsys, table, edit, said):
    """A column edited by hand (words for numbers, accuracy in percent) is damage, named with its
    first bad row, not a traceback in the arithmetic or a figure drawn wrong without a word."""
    sweep_file, root, plan = finished_sweep(tmp_path)
    api.collect(sweep_file, results_root=root)
    path = api.folder(plan, root) / table
    first = pd.read_parquet(api.folder(plan, root) / "results.parquet")
    edit(pd.read_parquet(path)).to_parquet(path)
    said = said.format(v=first["test_accuracy"].iloc[0], p=f"{first['test_accuracy'].iloc[0] * 100:g}",
                       name=first["name"].iloc[0])
    for command in ("plot", "report"):
        assert main([command, str(sweep_file), "--results", str(root)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"error: {path}: damaged, {said}", "hint: run 'kdsweep collect' again to rewrite it"]


@pytest.mark.parametrize("where", ["results.parquet", "epochs.parquet", "plots", "report.html"])
def test_a_folder_or_file_in_the_way_of_what_collect_plot_report_write_is_one_line_and_nothing_half_written(
        tmp_path, capsys, where):
    """A folder where a table or the page belongs (or a file where the figures' folder does) is one
    line naming it, for every command that would read or write it; pandas would read a folder as an
    empty table (plot then removed every figure as stale); no table is replaced unless all are."""
    sweep_file, root, plan = finished_sweep(tmp_path)
    api.collect(sweep_file, results_root=root)
    assert main(["plot", str(sweep_file), "--results", str(root)]) == 0
    folder = api.folder(plan, root)
    figures = sorted((folder / "plots").iterdir())
    tables = {n: (folder / n).read_bytes() for n in ("results.parquet", "epochs.parquet", "comparisons.parquet")}
    capsys.readouterr()
    bad = folder / where
    if where == "plots":
        for f in figures:
            f.unlink()
        bad.rmdir()
        bad.write_text("x")
    else:
        bad.unlink(missing_ok=True)  # report.html: not written yet
        bad.mkdir()
    said = {"plots": f"error: {bad}: a file where the figures' folder belongs",
            "report.html": f"error: {bad}: a folder where this file belongs"}
    for command in ("collect", "plot", "report"):
        rc = main([command, str(sweep_file), "--results", str(root)])
        err = capsys.readouterr().err.splitlines()
        if (command == "collect" and where in ("plots", "report.html")) or (command, where) == ("plot", "report.html"):
            assert rc == 0  # neither reads nor writes it
            continue
        expect = said.get(where) or (f"error: {bad}: a folder where this table belongs" if command == "collect"
                                     else f"error: {bad}: a folder, not a Parquet table")
        assert (rc, err[0]) == (2, expect), err
        assert err[1].startswith(f"hint: move {bad} away and run")
    for n, data in tables.items():
        assert n == where or (folder / n).read_bytes() == data  # collect replaced none of the tables
    assert where == "plots" or sorted((folder / "plots").iterdir()) == figures  # none removed as stale
    assert not list(folder.glob(".tmp-*"))


@pytest.mark.parametrize("at", ["write", "fsync"])
def test_collect_that_cannot_write_one_table_replaces_none(tmp_path, monkeypatch, at):
    """A full disk while the second table is written (or a quota that NFS or Lustre report only at its
    fsync): the first, written already, does not replace its old one either, so results.parquet and
    epochs.parquet always come from the same collect."""
    import errno
    import os

    sweep_file, root, plan = finished_sweep(tmp_path)
    api.collect(sweep_file, results_root=root)
    folder = api.folder(plan, root)
    tables = {p: p.read_bytes() for p in folder.glob("*.parquet")}
    path = state.job_dir(folder, plan.jobs[-1]) / "result.json"  # something new to collect
    result = json.loads(path.read_text())
    result["metrics"]["test_accuracy"] = 0.5
    path.write_text(json.dumps(result))
    written = pd.DataFrame.to_parquet
    calls = []

    def full_disk(df, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return written(df, path, **kw)

    synced = os.fsync

    def quota(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.EDQUOT if at == "fsync" else errno.ENOSPC, "Disk quota exceeded")
        return synced(fd)

    if at == "write":
        monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    else:
        monkeypatch.setattr(os, "fsync", quota)
    with pytest.raises(UserError, match="epochs.parquet: cannot write it \\((No space left on device|Disk quota "
                                        "exceeded)\\)"):
        api.collect(sweep_file, results_root=root)
    assert len(calls) == 2 and {p: p.read_bytes() for p in folder.glob("*.parquet")} == tables
    assert not list(folder.glob(".tmp-*"))


def test_plot_without_collect_says_so(tmp_path, capsys):
    sweep_file, root, plan = finished_sweep(tmp_path)
    assert main(["plot", str(sweep_file), "--results", str(root)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {api.folder(plan, root) / 'results.parquet'}: not found")


def test_code_diff_is_saved_for_the_rows_that_ran_on_it_and_removed_when_stale(tmp_path, monkeypatch):
    from kd import provenance

    changes = b"diff --git a/kd/train.py b/kd/train.py\n-x = 1\n+x = 2\n"
    digest = provenance.diff_hash(changes)
    monkeypatch.setattr(provenance, "diff", lambda root=None: changes)
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)

    def record(sha):
        for job in plan.jobs:
            path = state.job_dir(folder, job) / "result.json"
            r = json.loads(path.read_text())
            r["versions"].update(dirty=True, diff_sha256=sha)
            path.write_text(json.dumps(r))

    record(digest)
    c = api.collect(sweep_file, results_root=root)
    text = c.code_diff.read_bytes()
    assert c.code_diff == folder / "code.diff" and text.endswith(changes)
    assert text.startswith(b"# git diff HEAD -- kd sweep pyproject.toml at commit ")
    assert collect.saved_diff_hash(c.code_diff) == digest
    record("e" * 64)  # the jobs ran again on other code: the saved diff is nobody's
    assert api.collect(sweep_file, results_root=root).code_diff is None and not (folder / "code.diff").exists()


def test_a_result_of_another_job_is_not_collected_under_this_ones_name(tmp_path):
    """A result.json copied into another job's folder: that job is damaged (the settings that differ
    named), not a row of the other job's numbers under its name."""
    import shutil

    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    a, b = [j for j in plan.jobs if j.method == "kd"][:2]
    shutil.copy(state.job_dir(folder, a) / "result.json", state.job_dir(folder, b) / "result.json")
    c = api.collect(sweep_file, results_root=root)
    assert [(n, s) for n, s, _ in c.missing] == [(b.name, collect.DAMAGED)]
    assert "result.json: holds another job's result (" in c.missing[0][2]
    assert b.id not in set(pd.read_parquet(c.results)["job_id"]) and c.rows == len(plan.jobs) - 1
    (state.job_dir(folder, b) / "config.json").unlink()  # nothing in the folder says whose it is: the plan does
    c = api.collect(sweep_file, results_root=root)
    assert [(n, s) for n, s, _ in c.missing] == [(b.name, collect.DAMAGED)], c.missing
    assert b.id not in set(pd.read_parquet(c.results)["job_id"])
    s = dict((j.id, s) for j, s in api.status(sweep_file, results_root=root))[b.id]
    assert s.state == state.DAMAGED and s.detail.startswith("result.json holds another job's result (")


def test_a_report_from_an_older_table_says_which_rows_are_no_longer_done(tmp_path):
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    api.collect(sweep_file, results_root=root)
    gone = plan.jobs[-1]
    (state.job_dir(folder, gone) / "result.json").unlink()
    api.report(sweep_file, results_root=root)
    md = (folder / "report.md").read_text()
    assert f"{len(plan.jobs) - 1} of {len(plan.jobs)} jobs finished" in md
    assert "in the tables from an earlier collect: run 'kdsweep collect' again" in md and gone.name in md


def test_where_a_sweep_never_ran_collect_and_resume_refuse_and_status_says_so(tmp_path, capsys):
    """A shell in another folder (results/ is relative to it): collect wrote empty tables there and
    resume started the whole sweep over; now each says where it looked."""
    sweep_file, _, plan = finished_sweep(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    for command in ("collect", "resume"):
        assert main(["-q", command, str(sweep_file), "--results", str(elsewhere)]) == 2, command
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"error: {elsewhere / plan.sweep.name}: no such folder: sweep {plan.sweep.name} "
                                 "has not run here"), err
    assert not elsewhere.exists()
    assert main(["-q", "status", str(sweep_file), "--results", str(elsewhere)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        f"pending (no folder {elsewhere / plan.sweep.name}: not run here; --results DIR where it ran)")


def test_plot_removes_its_figures_that_the_current_table_no_longer_supports(tmp_path):
    """plots/ shows the table beside it: figures of points gone from it (their results damaged,
    removed) go too; a file of the user's own stays."""
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    api.collect(sweep_file, results_root=root)
    drawn = {p.name for p in api.plot(sweep_file, results_root=root)}
    assert {"accuracy_vs_temperature.png", "difference_kd_vs_scratch.png"} <= drawn
    (folder / "plots" / "mine.png").write_bytes(b"the user's")
    for job in plan.jobs:
        if job.method == "kd":
            (state.job_dir(folder, job) / "result.json").unlink()
    api.collect(sweep_file, results_root=root)
    now = {p.name for p in api.plot(sweep_file, results_root=root)}
    assert "accuracy_vs_temperature.png" not in now
    assert {p.name for p in (folder / "plots").iterdir()} == now | {"mine.png"}


def test_an_axis_besides_alpha_and_t_is_a_column_everywhere_and_each_figure_is_of_one_value(tmp_path, capsys):
    """An lr axis: epochs.parquet has the column; collect's table shows it; every figure is of one
    lr (named and titled so), never a mean over both: here lr 0.003 is 2 points better throughout."""
    path = tmp_path / "lrs.toml"
    path.write_text(SWEEP.format(name="lrs", seeds=[0, 1]).replace("[grid]", "[grid]\nlr = [0.001, 0.003]"))
    plan = api.plan(path)
    root = tmp_path / "results"
    finish(api.folder(plan, root), plan, acc=lambda j: accuracy(j) + (0.02 if j.config["lr"] == 0.003 else 0))
    assert main(["collect", str(path), "--results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "method   alpha  T  lr     seeds  mean test accuracy" in out and "kd       0.5    4  0.003  2" in out, out
    folder = root / "lrs"
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert sorted(epochs["lr"].unique()) == [0.001, 0.003]
    files = {p.name for p in plots.plot_all(folder)}
    assert files == {f"{kind}-lr{lr}.png" for lr in ("0.001", "0.003") for kind in (
        "accuracy_vs_temperature", "heatmap_alpha_temperature", "difference_kd_vs_scratch", "accuracy_per_epoch")}
    results = pd.read_parquet(folder / "results.parquet")
    for lr in (0.001, 0.003):  # each slice's rows: its students, and the teachers (lr is not theirs)
        rows = next(r for v, r in plots._slices(results) if v == {"lr": lr})
        students = rows[rows["method"] != "teacher"]
        assert set(students["lr"]) == {lr} and (rows["method"] == "teacher").sum() == 2
    assert main(["report", str(path), "--results", str(root)]) == 0
    md = (folder / "report.md").read_text()
    assert "Jobs with lr 0.003 only." in md and "Jobs with lr 0.001 only." in md
    assert "| job | method | alpha | T | lr | seed | test accuracy (%) |" in md, md  # every job's table too
    assert "| kd-a0.5-T4-lr0.003-s1 | kd | 0.5 | 4 | 0.003 | 1 |" in md, md


def test_a_subclass_students_teacher_settings_tell_its_points_apart(tmp_path):
    """beta is the subclass teacher's, not its student's: students of teachers of two betas are two
    grid points (the beta column says whose), not one point of two seeds."""
    path = tmp_path / "sub.toml"
    path.write_text('name = "sub"\ndataset = "mnist-5k-binary"\nmethods = ["scratch", "kd", "subclass"]\n'
                    "[train]\nepochs = 3\n[grid]\nalpha = [0.5]\ntemperature = [4]\nbeta = [0.5, 1.0]\nseed = [0]\n")
    plan = api.plan(path)
    names = [j.name for j in plan.jobs]
    assert "subclass-a0.5-T4-beta0.5-s0" in names and "subclass-a0.5-T4-beta1-s0" in names, names
    root = tmp_path / "results"
    finish(api.folder(plan, root), plan, acc=lambda j: 0.9)
    collect.collect(plan, root / "sub")
    results = pd.read_parquet(root / "sub" / "results.parquet")
    subclass = results[results["method"] == "subclass"]
    assert sorted(subclass["beta"]) == [0.5, 1.0]
    comparisons = pd.read_parquet(root / "sub" / "comparisons.parquet")
    mine = comparisons[comparisons["method"] == "subclass"]
    assert len(mine) == 4 and set(mine["n_seeds"]) == {1}, mine  # 2 betas x 2 baselines, 1 seed each


def test_a_sweep_run_with_max_jobs_is_collected_plotted_and_reported_with_it(tmp_path, capsys):
    """--max-jobs raised the sweep file's limit for the run: the commands after it take it too, and
    each next-step hint carries it (collect refused it, so the run's own hint led nowhere)."""
    path = tmp_path / "big.toml"
    path.write_text("max_jobs = 2\n" + SWEEP.format(name="big", seeds=[0]))
    assert main(["plan", str(path)]) == 2  # 10 points: over the file's limit
    capsys.readouterr()
    plan = api.plan(path, max_jobs=20)
    root = tmp_path / "results"
    finish(api.folder(plan, root), plan)
    args = ["--results", str(root), "--max-jobs", "20"]
    assert main(["status", str(path), *args]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"6/6 done  ->  kdsweep collect {path} {' '.join(args)}"
    for command in ("collect", "plot", "report"):
        assert main([command, str(path), *args]) == 0, command
    assert (root / "big" / "report.html").is_file()


def test_after_an_edit_that_changes_every_job_the_old_jobs_are_named_and_the_report_refuses_the_old_table(
        tmp_path, capsys):
    """epochs 3 -> 2: every job is another. status and collect say the folder holds finished jobs
    of other settings (kept), and report refuses a table collected for the old file ('4 of 3 jobs')."""
    path, root, plan = finished_sweep(tmp_path, seeds=(0,))
    assert main(["collect", str(path), "--results", str(root)]) == 0
    path.write_text(path.read_text().replace("epochs = 3", "epochs = 2"))
    capsys.readouterr()
    for command in ("report", "plot"):  # plot redrew the old table's figures, without a word
        assert main([command, str(path), "--results", str(root)]) == 2
        err = capsys.readouterr().err
        assert "results.parquet: holds 6 job(s) that" in err and "hint: run 'kdsweep collect' first" in err, err
    assert not (root / "hand" / "plots").exists()  # nothing drawn from the old table
    with pytest.raises(UserError, match="results.parquet: holds 6 job"):
        api.compare(path, results_root=root)
    assert main(["status", str(path), "--results", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith(f"note: {root / 'hand' / 'jobs'} holds 6 finished jobs of other settings than "), out
    assert out[-1] == f"0/6 done, 6 pending  ->  kdsweep resume {path} --results {root}"
    assert main(["collect", str(path), "--results", str(root)]) == 0
    assert "holds 6 finished jobs of other settings than the sweep file plans" in capsys.readouterr().out
    path.write_text(path.read_text().replace("epochs = 2", "epochs = 3"))  # back: every job is done again
    assert main(["status", str(path), "--results", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("6/6 done  ->  kdsweep collect")


def test_slices_leave_no_student_out_and_teachers_follow_their_own_axes():
    """lr x subclasses with no subclass job at lr 0.003 yet: kd and scratch at 0.003 get a slice of
    their own (they were in none, their figures deleted); a dataset slice holds that dataset's teacher
    only, even where the other's teacher is missing; a weights file's path names no folders."""
    nan = float("nan")
    rows = pd.DataFrame.from_records([
        {"job_id": "t", "method": "teacher", "lr": 0.001, "subclasses": nan},
        *[{"job_id": f"{m}{lr}", "method": m, "lr": lr, "subclasses": nan} for m in ("kd", "scratch")
          for lr in (0.001, 0.003)],
        *[{"job_id": f"s{n}", "method": "subclass", "lr": 0.001, "subclasses": n} for n in (5.0, 10.0)]])
    slices = {tuple(sorted(v.items())): set(r["job_id"]) for v, r in plots._slices(rows)}
    assert slices == {(("lr", 0.001), ("subclasses", 5.0)): {"t", "kd0.001", "scratch0.001", "s5.0"},
                      (("lr", 0.001), ("subclasses", 10.0)): {"t", "kd0.001", "scratch0.001", "s10.0"},
                      (("lr", 0.003),): {"t", "kd0.003", "scratch0.003"}}  # lr is not a teacher's axis
    datasets = pd.DataFrame.from_records([
        {"job_id": "ta", "method": "teacher", "dataset": "mnist-5k"},
        {"job_id": "sa", "method": "scratch", "dataset": "mnist-5k"},
        {"job_id": "sb", "method": "scratch", "dataset": "fashion-mnist"}])  # its teacher failed
    assert set(plots._in_slice(datasets, {"dataset": "fashion-mnist"})["job_id"]) == {"sb"}
    assert plots._file_word("/tmp/w/student.pt") == "tmp_w_student.pt" and plots._file_word(1e-05) == "1e-05"


@pytest.mark.parametrize("gone", ["one", "all"])
def test_collect_refuses_to_drop_the_rows_of_jobs_whose_folders_are_gone(tmp_path, capsys, gone):
    """Job folders removed to save disk after a collect (or a results folder copied without jobs/, as
    the committed reference results are): collecting again would replace their rows with nothing."""
    import shutil

    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    before = (folder / collect.RESULTS).read_bytes()
    if gone == "one":
        shutil.rmtree(state.job_dir(folder, plan.jobs[-1]))
    else:
        shutil.rmtree(folder / "jobs")
    capsys.readouterr()
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 2
    err = capsys.readouterr().err.splitlines()
    n = 1 if gone == "one" else len(plan.jobs)
    which = "job whose folder is" if n == 1 else "jobs whose folders are"
    assert err[0].startswith(f"error: {folder / collect.RESULTS} holds the rows of {n} finished {which} "
                             f"gone from {folder / 'jobs'} ({plan.jobs[-1].name if n == 1 else plan.jobs[0].name}")
    assert err[1] == ("hint: restore those folders, or move results.parquet, epochs.parquet and comparisons.parquet "
                      "aside to collect without them")
    assert (folder / collect.RESULTS).read_bytes() == before  # the rows are where they were
    (folder / collect.RESULTS).rename(folder / "results.kept.parquet")
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 2  # the epochs' rows too
    assert capsys.readouterr().err.startswith(f"error: {folder / collect.EPOCHS} holds the rows of {n} finished")
    for name in (collect.EPOCHS, collect.COMPARISONS):  # the user's way on: it collects the rest
        (folder / name).rename(folder / f"kept-{name}")
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    assert len(pd.read_parquet(folder / collect.RESULTS)) == len(plan.jobs) - n


@pytest.mark.parametrize("edit, why", [
    (lambda r: r["metrics"].update(test_accuracy="abc"), "metrics.test_accuracy is 'abc', not a fraction between 0 and 1"),
    (lambda r: r["metrics"].update(test_accuracy=42.0), "metrics.test_accuracy is 42.0, not a fraction between 0 and 1"),
    (lambda r: r["metrics"].update(test_loss="low"), "metrics.test_loss is 'low', not a number"),
    (lambda r: r["history"][0].update(epoch="one"), "history[0].epoch is 'one', not a number"),
], ids=["word", "percent", "loss", "epoch"])
def test_a_stray_edit_of_a_value_makes_the_job_damaged_and_collect_skips_it(tmp_path, capsys, edit, why):
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    job = next(j for j in plan.jobs if j.name == "kd-a0.5-T4-s1")
    path = state.job_dir(folder, job) / "result.json"
    result = json.loads(path.read_text())
    edit(result)
    path.write_text(json.dumps(result))
    assert main(["status", str(sweep_file), "--results", str(root)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if job.name in x)
    assert " damaged " in line and why in line, line  # was: done, then collect failed with a traceback
    assert main(["collect", str(sweep_file), "--results", str(root)]) == 0
    assert "  kd-a0.5-T4-s1: damaged (" in capsys.readouterr().out
    assert len(pd.read_parquet(folder / collect.RESULTS)) == len(plan.jobs) - 1


def _drawn(monkeypatch) -> dict:
    """Each figure's title and legend labels, as plot draws them (kept as the figure is saved)."""
    seen = {}
    real = plots._save

    def keep(fig, path):
        ax = fig.axes[0]
        legends = [*fig.legends, *([ax.get_legend()] if ax.get_legend() else [])]
        seen[path.name] = (ax.get_title(), [t.get_text() for legend in legends for t in legend.get_texts()])
        return real(fig, path)
    monkeypatch.setattr(plots, "_save", keep)
    return seen


def test_figures_say_how_many_seeds_each_point_has_where_some_are_missing(tmp_path, monkeypatch):
    """Two seeds of one point unfinished: its cell is one seed's accuracy beside means of three, which
    the titles called 'mean of 3 seeds'."""
    sweep_file, root, plan = finished_sweep(tmp_path, skip=("kd-a0.5-T4-s1", "kd-a0.5-T4-s2"))
    api.collect(sweep_file, results_root=root)
    drawn = _drawn(monkeypatch)
    api.plot(sweep_file, results_root=root)
    for name in ("accuracy_vs_temperature.png", "heatmap_alpha_temperature.png", "difference_kd_vs_scratch.png"):
        assert "1-3 seeds (per point: some are missing)" in drawn[name][0], (name, drawn[name][0])
    finish(api.folder(plan, root), plan)
    api.collect(sweep_file, results_root=root)
    api.plot(sweep_file, results_root=root)
    assert all("1-3" not in title and "3 seeds" in title for name, (title, _) in drawn.items()
               if name != "accuracy_per_epoch.png"), drawn


def test_the_f1_figure_draws_every_alpha(tmp_path, monkeypatch):
    """Line styles ran out after four alphas, and zip() dropped the fifth without a word."""
    rows = [{"method": "kd", "alpha": a, "temperature": t, "seed": 0, "test_accuracy": 0.8, "f1_hp": 0.7,
             "f1_ssa": 0.6, "macro_f1": 0.65} for a in (0.1, 0.3, 0.5, 0.7, 0.9) for t in (1.0, 4.0)]
    drawn = _drawn(monkeypatch)
    plots._f1_vs_temperature(pd.DataFrame(rows), tmp_path / "f1.png", "five alphas")
    labels = drawn["f1.png"][1]
    assert {a for a in (0.1, 0.3, 0.5, 0.7, 0.9) if f"macro F1 (alpha {a:g})" in labels} == {0.1, 0.3, 0.5, 0.7, 0.9}


def test_a_grid_of_teachers_alone_tells_its_rows_apart():
    """beta x subclasses of subclass teachers: collect's and report's tables had no column for either."""
    from sweep import compare

    rows = pd.DataFrame([{"method": "subclass-teacher", "alpha": None, "temperature": None, "beta": b,
                          "subclasses": k, "lr": 1e-3, "seed": s, "test_accuracy": 0.9}
                         for b in (0.5, 2.0) for k in (2, 4) for s in (0, 1)])
    assert compare.varying_settings(rows) == ["subclasses", "beta"]  # kd.config.SETTINGS' order
    assert compare.varying_settings(rows[rows["beta"] == 0.5]) == ["subclasses"]


def test_the_per_epoch_figure_draws_subclass_students_per_alpha(tmp_path, monkeypatch):
    """Subclass students at alpha 0 (no teacher: not distilled) and 0.5 were one line, their mean."""
    rows = [{"job_id": f"{m}{a}{s}", "method": m, "alpha": a, "epoch": e, "test_accuracy": 0.8 + (a or 0) / 10}
            for m, alphas in (("scratch", (None,)), ("subclass", (0.0, 0.5)), ("subclass-teacher", (None,)))
            for a in alphas for s in (0, 1) for e in (1, 2, 3)]
    drawn = _drawn(monkeypatch)
    plots._per_epoch(pd.DataFrame(rows).astype({"alpha": float}), tmp_path / "e.png", "subclass")
    assert drawn["e.png"][1] == ["student from scratch (mean of 2 jobs)", "subclass KD, alpha = 0 (mean of 2 jobs)",
                                 "subclass KD, alpha = 0.5 (mean of 2 jobs)", "subclass-teacher (mean of 2 jobs)"]


def test_figures_count_the_seeds_of_the_scratch_and_teacher_they_draw(tmp_path, monkeypatch):
    """A third seed's scratch and teacher done, its students not: the heatmap's alpha 0 row (the
    scratch mean over 3 seeds) and the band were titled 'mean of 2 seeds' beside students of 2."""
    from sweep_tables import sweep_file as write_sweep

    third = tuple(j.name for j in api.plan(write_sweep(tmp_path)).jobs if j.method == "kd" and j.name.endswith("-s2"))
    sweep_file, root, plan = finished_sweep(tmp_path, skip=third)
    api.collect(sweep_file, results_root=root)
    drawn = _drawn(monkeypatch)
    api.plot(sweep_file, results_root=root)
    for name in ("accuracy_vs_temperature.png", "heatmap_alpha_temperature.png"):
        assert "mean of 2-3 seeds (per point: some are missing)" in drawn[name][0], (name, drawn[name][0])


def test_plot_says_when_jobs_finished_since_the_table_was_collected(tmp_path, capsys):
    """A collect during a run, a plot after it: the figures drew 2 of 8 jobs without a word, where
    report says '6 more finished since the last collect'."""
    sweep_file, root, plan = finished_sweep(tmp_path)
    folder = api.folder(plan, root)
    later = state.job_dir(folder, plan.jobs[-1]) / "result.json"
    later.rename(later.with_name("later.json"))
    api.collect(sweep_file, results_root=root)
    later.with_name("later.json").rename(later)  # it finishes after the collect
    capsys.readouterr()
    assert main(["plot", str(sweep_file), "--results", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("note: 1 job finished since the last collect is not in these "
                                                        "figures: run 'kdsweep collect' again")
    api.collect(sweep_file, results_root=root)
    assert main(["plot", str(sweep_file), "--results", str(root)]) == 0
    assert "note:" not in capsys.readouterr().out
