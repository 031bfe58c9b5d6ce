"""The local path of a sweep end to end: run, kill, status, resume, collect, plot."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from PIL import Image

from sweep import api, state
from sweep.cli import main

TINY = """name = "tiny"
dataset = "mnist-5k"
methods = ["teacher", "scratch", "kd"]
[train]
epochs = 4
batch_size = 500
[teacher]
epochs = 1
[grid]
alpha = [0, 0.5]
temperature = [2, 8]
"""


def _kdsweep(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _attempts(folder):
    return (folder / "log").read_text().count("=== ")


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run the tiny sweep, SIGKILL the whole process group mid-way, then resume it."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_file = root / "tiny.toml"
    sweep_file.write_text(TINY)
    results = root / "results"
    plan = api.plan(sweep_file)
    folder = results / "tiny"
    proc = _kdsweep("run", str(sweep_file), "--results", str(results), start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # until the teacher is done and a student is mid-training
        done = [j for j in plan.jobs if (state.job_dir(folder, j) / "result.json").exists()]
        mid = [j for j in plan.jobs if j.method == "kd" and (state.job_dir(folder, j) / "checkpoint.pt").exists()
               and not (state.job_dir(folder, j) / "result.json").exists()]
        if any(j.method == "teacher" for j in done) and mid:
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail(f"sweep did not get going: {proc.communicate()[0]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_group_dead(proc.pid)
    done_before = {j.id: (state.job_dir(folder, j) / "result.json").stat().st_mtime_ns for j in plan.jobs
                   if (state.job_dir(folder, j) / "result.json").exists()}
    status_after_kill = _run_main(["status", str(sweep_file), "--results", str(results)])
    resume = _kdsweep("resume", str(sweep_file), "--results", str(results))
    resume_out = resume.communicate(timeout=300)[0]
    return dict(root=root, sweep_file=sweep_file, results=results, folder=folder, plan=plan, done_before=done_before,
                status_after_kill=status_after_kill, resume_out=resume_out, resume_rc=resume.returncode)


def _wait_group_dead(pgid, timeout=20):
    """Until no process of the group is alive (SIGKILL is delivered at once, but dying takes a moment)."""
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                alive.append(stat)
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError("the killed sweep's processes did not die")


def _run_main(argv):
    r = subprocess.run([sys.executable, "-m", "sweep.cli", *argv], capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


def test_resume_after_kill_finishes_every_job_once(killed_and_resumed):
    k = killed_and_resumed
    assert k["resume_rc"] == 0, k["resume_out"]
    assert len(k["plan"].jobs) == 4
    for job in k["plan"].jobs:
        folder = state.job_dir(k["folder"], job)
        result = json.loads((folder / "result.json").read_text())
        assert len(result["history"]) == job.config["epochs"]
        if job.id in k["done_before"]:  # finished before the kill: not run again
            assert (folder / "result.json").stat().st_mtime_ns == k["done_before"][job.id]
            assert _attempts(folder) == 1
    assert 0 < len(k["done_before"]) < 4
    assert f"resuming {4 - len(k['done_before'])} of 4 jobs" in k["resume_out"]


def test_status_after_kill_shows_the_interrupted_job(killed_and_resumed):
    rc, out, _ = killed_and_resumed["status_after_kill"]
    assert rc == 0
    assert "interrupted" in out or "pending" in out
    assert f"{len(killed_and_resumed['done_before'])}/4 done" in out.splitlines()[-1]


def test_interrupted_student_resumed_from_its_checkpoint(killed_and_resumed):
    k = killed_and_resumed
    logs = [(state.job_dir(k["folder"], j) / "log").read_text() for j in k["plan"].jobs if j.method == "kd"]
    assert any("resuming" in log and "from epoch" in log for log in logs), logs


def test_run_on_a_finished_sweep_does_nothing(killed_and_resumed):
    k = killed_and_resumed
    rc, out, _ = _run_main(["run", str(k["sweep_file"]), "--results", str(k["results"])])
    assert rc == 0 and out.startswith("nothing to do: 4/4 done")


def test_collect_is_complete_and_repeatable(killed_and_resumed):
    k = killed_and_resumed
    c = api.collect(k["sweep_file"], results_root=k["results"])
    first = c.results.read_bytes(), c.epochs.read_bytes()
    api.collect(k["sweep_file"], results_root=k["results"])
    assert (c.results.read_bytes(), c.epochs.read_bytes()) == first  # running it twice gives the same files
    df = pd.read_parquet(c.results)
    assert c.missing == [] and len(df) == 4
    assert sorted(df["name"]) == ["kd-a0.5-T2-s0", "kd-a0.5-T8-s0", "scratch-s0", "teacher-s0"]
    for col in ("sweep", "job_id", "method", "dataset", "alpha", "temperature", "seed", "epochs", "test_accuracy",
                "test_loss", "params", "flops_per_sample", "wall_seconds", "device", "torch_version"):
        assert col in df.columns
    assert df["test_accuracy"].between(0.5, 1).all()
    assert df.set_index("name").loc["teacher-s0", "params"] == 1_404_682
    epochs = pd.read_parquet(c.epochs)
    assert len(epochs) == 1 + 4 + 4 + 4 and set(epochs["job_id"]) == set(df["job_id"])


def test_plots_from_parquet_alone(killed_and_resumed, tmp_path):
    k = killed_and_resumed
    api.collect(k["sweep_file"], results_root=k["results"])
    copy = tmp_path / "results" / "tiny"
    copy.mkdir(parents=True)
    for name in ("results.parquet", "epochs.parquet"):  # no job folders: the figures need the tables only
        shutil.copy(k["folder"] / name, copy / name)
    files = api.plot(k["sweep_file"], results_root=tmp_path / "results")
    assert sorted(f.name for f in files) == ["accuracy_per_epoch.png", "accuracy_vs_temperature.png",
                                             "heatmap_alpha_temperature.png"]
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 300
            assert len(im.getcolors(1 << 20)) > 50  # a drawing, not a blank canvas


def test_failed_and_missing_jobs_are_listed(killed_and_resumed, tmp_path):
    k = killed_and_resumed
    results = tmp_path / "results"
    shutil.copytree(k["folder"], results / "tiny")
    folder = results / "tiny"
    by = {j.name: j for j in k["plan"].jobs}
    teacher = state.job_dir(folder, by["teacher-s0"])
    (teacher / "model.pt").write_bytes(b"not a checkpoint")  # the teacher's weights got corrupted
    student = state.job_dir(folder, by["kd-a0.5-T2-s0"])
    for f in ("result.json", "checkpoint.pt"):
        (student / f).unlink()
    shutil.rmtree(state.job_dir(folder, by["kd-a0.5-T8-s0"]))
    rc, out, _ = _run_main(["resume", str(k["sweep_file"]), "--results", str(results), "--jobs", "2"])
    assert rc == 1
    assert "failed  " in out and "kd-a0.5-T2-s0" in out
    rc, out, _ = _run_main(["status", str(k["sweep_file"]), "--results", str(results)])
    assert out.splitlines()[-1] == "2/4 done, 2 failed"
    assert "teacher: " in out and "is not a kd model file" in out
    rc, out, _ = _run_main(["collect", str(k["sweep_file"]), "--results", str(results)])
    assert rc == 0 and "\n2 finished jobs -> " in out
    assert "not finished (2), not in the table:" in out and "kd-a0.5-T2-s0: failed (UserError: teacher:" in out
    assert len(pd.read_parquet(folder / "results.parquet")) == 2


def test_a_second_run_of_the_same_sweep_is_refused(killed_and_resumed, capsys):
    k = killed_and_resumed
    from sweep import local

    with local.sweep_lock(k["folder"]):
        assert main(["run", str(k["sweep_file"]), "--results", str(k["results"])]) in (0, 2)
    # a finished sweep says so before taking the lock; an unfinished one is refused while the lock is held
    err = capsys.readouterr()
    assert "nothing to do" in err.out or "another 'kdsweep run' is running this sweep" in err.err
