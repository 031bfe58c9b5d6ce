"""The local path of a sweep end to end: run, kill, status, resume, collect, plot."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import trained_an_epoch
from sweep import api, state
from sweep.cli import main
from sweep.plan import units

pytestmark = pytest.mark.usefixtures("mini_mnist_env")  # dataset "mnist": 1,000 real digits

TINY = """name = "tiny"
dataset = "mnist"
methods = ["teacher", "scratch", "kd"]
[train]
epochs = 4
batch_size = 25
[teacher]
epochs = 1
batch_size = 100
[grid]
alpha = [0, 0.5]
temperature = [2, 8]
"""


def _kdsweep(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "sweep.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _until_training(proc, folder, timeout=120):
    """Until the job in ``folder`` has trained an epoch (its run must not end before)."""
    deadline = time.monotonic() + timeout
    while not trained_an_epoch(folder):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)


def _attempts(folder):
    return (folder / "log").read_text().count("=== ")


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, mini_mnist_env):
    """Run the tiny sweep, SIGKILL the whole process group mid-way, then resume it."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_file = root / "tiny.toml"
    sweep_file.write_text(TINY)
    results = root / "results"
    plan = api.plan(sweep_file)
    folder = results / "tiny"
    # a checkpoint after every epoch (not every 10 minutes): a student is killed with one to resume from
    proc = _kdsweep("run", str(sweep_file), "--results", str(results), start_new_session=True,
                    env={**os.environ, "KDSWEEP_CHECKPOINT_MINUTES": "epoch"})
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
    mid = [j for j in mid if not (state.job_dir(folder, j) / "result.json").exists()]
    done_before = {j.id: (state.job_dir(folder, j) / "result.json").stat().st_mtime_ns for j in plan.jobs
                   if (state.job_dir(folder, j) / "result.json").exists()}
    status_after_kill = _run_main(["status", str(sweep_file), "--results", str(results)])
    resume = _kdsweep("resume", str(sweep_file), "--results", str(results))
    resume_out = resume.communicate(timeout=300)[0]
    return dict(root=root, sweep_file=sweep_file, results=results, folder=folder, plan=plan, done_before=done_before,
                mid=mid, status_after_kill=status_after_kill, resume_out=resume_out, resume_rc=resume.returncode)


def _group(pgid):
    """The live processes of a process group, from /proc."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            alive.append(int(stat.parent.name))
    return alive


def _wait_group_dead(pgid, timeout=20):
    """Until no process of the group is alive (SIGKILL is delivered at once, but dying takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group(pgid):
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed sweep's processes did not die: {_group(pgid)}")


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


def test_the_teachers_unit_caches_the_logits_its_students_read(killed_and_resumed):
    r = killed_and_resumed
    (teacher,) = [j for j in r["plan"].jobs if j.method == "teacher"]
    tdir = state.job_dir(r["folder"], teacher)
    assert "teacher logits cached in" in (tdir / "log").read_text()
    assert len(list(tdir.glob("logits-*.pt"))) == 1
    students = [state.job_dir(r["folder"], j) / "log" for j in r["plan"].jobs if j.method == "kd"]
    assert not any("teacher logits cached" in f.read_text() for f in students if f.exists())


def test_status_after_kill_shows_the_interrupted_job(killed_and_resumed):
    """One unit ran at the kill (-j 1): the pack of the student that had a checkpoint. Its jobs are
    interrupted, those done before are done, and the others never started."""
    k = killed_and_resumed
    rc, out, _ = k["status_after_kill"]
    assert rc == 0 and k["mid"]
    in_flight = next(u for u in units(k["plan"], "auto") if k["mid"][0] in u)
    want = {j.name: "done" if j.id in k["done_before"] else "interrupted" if j in in_flight else "pending"
            for j in k["plan"].jobs}
    got = {line.split()[1]: line.split()[2] for line in out.splitlines()[1:-1]}
    assert got == want
    for line in out.splitlines()[1:-1]:  # the student that had a checkpoint: resume goes on from it
        if k["mid"][0].name in line:
            assert line.endswith("(killed? or a full disk: its log says); resume continues from its checkpoint"), line
    counts = [f"{n} {s}" for s in ("interrupted", "pending") if (n := list(want.values()).count(s))]
    assert out.splitlines()[-1] == ", ".join([f"{len(k['done_before'])}/4 done", *counts]) + \
        f"  ->  kdsweep resume {k['sweep_file']} --results {k['results']}"


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
                                             "difference_kd_vs_scratch.png", "heatmap_alpha_temperature.png"]
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
    # the teacher's weights got corrupted, in a result of before result.json recorded model.pt's size and
    # hash (so status cannot tell): its first student finds it, fails, and hands the teacher back
    result = json.loads((teacher / "result.json").read_text())
    del result["model_file"]
    (teacher / "result.json").write_text(json.dumps(result))
    (teacher / "model.pt").write_bytes(b"not a checkpoint")
    student = state.job_dir(folder, by["kd-a0.5-T2-s0"])
    (student / "result.json").unlink()
    shutil.rmtree(state.job_dir(folder, by["kd-a0.5-T8-s0"]))
    rc, out, _ = _run_main(["resume", str(k["sweep_file"]), "--results", str(results), "--jobs", "2"])
    assert rc == 1
    assert "failed  " in out and "kd-a0.5-T2-s0" in out
    rc, out, _ = _run_main(["status", str(k["sweep_file"]), "--results", str(results)])
    assert out.splitlines()[-1] == f"1/4 done, 3 failed  ->  kdsweep resume {k['sweep_file']} --results {results}", out
    assert "teacher: " in out and "model.pt is damaged (it does not load (" in out and "found by a student" in out
    rc, out, _ = _run_main(["collect", str(k["sweep_file"]), "--results", str(results)])
    assert rc == 0 and "\n1 finished jobs -> " in out
    assert "not finished (3), not in the table:" in out and "kd-a0.5-T2-s0: failed (DamagedTeacher: teacher:" in out
    assert len(pd.read_parquet(folder / "results.parquet")) == 1
    rc, out, _ = _run_main(["resume", str(k["sweep_file"]), "--results", str(results)])  # one more: all done
    assert rc == 0 and out.splitlines()[-1] == f"4/4 done  ->  kdsweep collect {k['sweep_file']} --results {results}", out


def test_a_second_run_of_the_same_sweep_is_refused(killed_and_resumed, tmp_path, capsys):
    k = killed_and_resumed
    results = tmp_path / "results"
    shutil.copytree(k["folder"], results / "tiny")
    student = state.job_dir(results / "tiny", next(j for j in k["plan"].jobs if j.method == "kd"))
    (student / "result.json").unlink()  # one job left to run
    attempts = _attempts(student)
    with state.sweep_lock(results / "tiny"):
        assert main(["run", str(k["sweep_file"]), "--results", str(results)]) == 2
    out, err = capsys.readouterr()
    assert f"error: {results / 'tiny'}: another '{state.command()}' is running this sweep (pid {os.getpid()} on " \
           f"{socket.gethostname()})" in err
    assert "running" not in out  # no 'running 1 of 4 jobs' before the refusal
    assert _attempts(student) == attempts and not (student / "result.json").exists()  # nothing started


def test_a_run_refused_by_a_resume_at_work_names_the_resume_and_status_names_it_too(killed_and_resumed, tmp_path,
                                                                                  started):
    k = killed_and_resumed
    sweep_file, folder = k["sweep_file"], tmp_path / "tiny"
    shutil.copytree(k["folder"], folder)
    for j in k["plan"].jobs:  # every job to train again: the resume works for seconds
        (state.job_dir(folder, j) / "result.json").unlink()
    resume = started("-q", "resume", str(sweep_file), "--results", str(tmp_path))
    deadline = time.monotonic() + 60
    while state.sweep_run(folder) is None:  # until it holds the sweep's lock
        assert time.monotonic() < deadline and resume.poll() is None, resume.communicate()[0]
        time.sleep(0.01)
    second = _run_main(["run", str(sweep_file), "--results", str(tmp_path)])
    status = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    os.killpg(resume.pid, signal.SIGTERM)
    resume.communicate()
    assert second[0] == 2
    assert second[2].strip().splitlines()[-1] == (f"error: {folder}: another 'kdsweep resume' is running this sweep "
                                                  f"(pid {resume.pid} on {socket.gethostname()})")
    if state.sweep_run(folder) is None and "note: a 'kdsweep" not in status[1]:
        return  # it ended before status looked: nothing more to see
    assert f"note: a 'kdsweep resume' of tiny (pid {resume.pid}) works in {folder} now" in status[1]


def test_a_job_folder_of_other_settings_is_named_by_status_and_refused_by_resume(killed_and_resumed, tmp_path,
                                                                                  capsys):
    """A folder whose config.json holds other settings (edited, or moved in from another sweep) is
    nothing of this job's: status says so and how to go on, where it said 'interrupted ... resume
    starts it over', and resume refuses it with the same words before it says it runs anything."""
    k = killed_and_resumed
    results = tmp_path / "results"
    shutil.copytree(k["folder"], results / "tiny")
    student = state.job_dir(results / "tiny", next(j for j in k["plan"].jobs if j.method == "kd"))
    (student / "result.json").unlink()
    saved = json.loads((student / "config.json").read_text())
    saved["config"]["epochs"] = 7
    (student / "config.json").write_text(json.dumps(saved))
    assert main(["status", str(k["sweep_file"]), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"failed  {student} holds other settings than the job (epochs): move it away, then resume" in out, out
    assert main(["resume", str(k["sweep_file"]), "--results", str(results)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {student / 'config.json'}: this job folder holds other settings"), err


SEEDS = """name = "seeds"
dataset = "mnist"
methods = ["scratch"]
[train]
epochs = {epochs}
batch_size = 500
[grid]
seed = [{seeds}]
"""


def _workers(run_pid):
    """The run's live worker processes: its children (a worker's own short-lived forks are not workers)."""
    try:
        children = Path(f"/proc/{run_pid}/task/{run_pid}/children").read_text().split()
    except OSError:
        return []
    workers = []
    for pid in children:
        try:
            live = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if live and cmd[1:3] == [b"-m", b"sweep.worker"]:
            workers.append(int(pid))
    return workers


@pytest.fixture
def started():
    """Start ``kdsweep ARGS`` in its own session; at the end, kill whatever of it is left."""
    procs = []

    def start(*args, **kw):
        procs.append(_kdsweep(*args, start_new_session=True, **kw))
        return procs[-1]

    yield start
    for proc in procs:
        if _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("jobs, seeds", [(1, 2), (2, 3)])
def test_jobs_limits_the_training_processes(tmp_path, started, jobs, seeds):
    """Units that need nothing are all ready at once: -j N runs N of them at once in N long-lived
    workers, each taking the next unit when its own ends (no process start per unit)."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=1, seeds=", ".join(map(str, range(seeds)))))
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "-j", str(jobs), "--pack", "1")
    most, seen = 0, set()
    while proc.poll() is None:  # sample the run's children until it ends
        workers = _workers(proc.pid)
        most, seen = max(most, len(workers)), seen | set(workers)
        time.sleep(0.01)
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert len(seen) == jobs and most == jobs, (seen, most)  # N workers for more than N units
    assert f"{seeds}/{seeds} done" in out
    pids = {json.loads((state.job_dir(tmp_path / "seeds", j) / "attempt.json").read_text())["pid"]
            for j in api.plan(sweep_file).jobs}
    assert pids == seen  # each unit ran in one of them


def test_a_worker_with_no_unit_left_to_take_exits_while_the_others_train(tmp_path, started):
    """-j 2: teacher and scratch first; the kd pack takes the worker that frees first; the other
    worker has nothing left to take and exits then, not at the run's end (its device memory freed,
    and its exit not waited for after the last unit)."""
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(TINY.replace("epochs = 4", "epochs = 12"))
    plan = api.plan(sweep_file)
    folder = tmp_path / "tiny"
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "-j", "2")
    kd = [state.job_dir(folder, j) for j in plan.jobs if j.method == "kd"]
    while proc.poll() is None and not all((d / "attempt.json").exists() for d in kd):
        time.sleep(0.01)
    while proc.poll() is None:  # the kd pack trains: the worker it did not take exits meanwhile
        first = {j.method: state.read_json(state.job_dir(folder, j) / "attempt.json") for j in plan.jobs}
        (other,) = {first["teacher"]["pid"], first["scratch"]["pid"]} - {first["kd"]["pid"]}
        if not _workers(proc.pid) or other not in _workers(proc.pid):
            break
        time.sleep(0.01)
    students_done = [(d / "result.json").exists() for d in kd]
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    assert len(_workers(proc.pid)) == 0
    assert not all(students_done), "the idle worker lived on until the students were done"


def test_sigterm_stops_the_run_and_its_children(tmp_path, started):
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=200, seeds="0, 1"))
    plan = api.plan(sweep_file)
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1")
    first = state.job_dir(tmp_path / "seeds", plan.jobs[0])
    _until_training(proc, first)
    assert len(_workers(proc.pid)) == 1
    proc.send_signal(signal.SIGTERM)  # the run process only, as `kill PID` does
    out = proc.communicate(timeout=10)[0]
    _wait_group_dead(proc.pid, timeout=5)
    assert proc.returncode == 128 + signal.SIGTERM, out  # 143, as a shell says of a process stopped so
    hint = f"  ->  kdsweep resume {sweep_file} --results {tmp_path}"
    assert out.splitlines()[-1] == f"interrupted: 0/2 done, 1 interrupted, 1 pending{hint}", out
    rc, out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    assert out.splitlines()[-1] == f"0/2 done, 1 interrupted, 1 pending{hint}", out
    assert f"{plan.jobs[0].name}  interrupted" in out
    assert "stopped by SIGTERM, checkpointed: resume continues it" in out, out  # not "killed?"


CRASH = """name = "crash"
dataset = "mnist"
methods = ["scratch"]
[train]
batch_size = 500
[grid]
seed = [0, 1, 2]
epochs = [2, 400]
[[exclude]]
seed = 0
epochs = 400
[[exclude]]
seed = 2
epochs = 400
[[exclude]]
seed = 1
epochs = 2
"""


def test_a_hangup_stops_the_run_with_a_checkpoint(tmp_path, started):
    """The terminal closes (SIGHUP to the whole process group): the run stops as on Ctrl-C, and the
    job in training checkpoints where it was (with checkpoints every 10 minutes, a hangup that
    killed it would lose up to that)."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=200, seeds="0"))
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1",  # as a terminal starts
                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # it, even if pytest runs
    first = state.job_dir(tmp_path / "seeds", api.plan(sweep_file).jobs[0])  # under nohup
    _until_training(proc, first)
    os.killpg(proc.pid, signal.SIGHUP)
    out = proc.communicate(timeout=30)[0]
    _wait_group_dead(proc.pid, timeout=5)
    assert proc.returncode == 128 + signal.SIGHUP, out
    assert out.splitlines()[-1] == f"interrupted: 0/1 done, 1 interrupted  ->  kdsweep resume {sweep_file} --results {tmp_path}", out
    assert (first / "checkpoint.pt").exists()
    line = state.job_state(first).detail
    assert line.startswith("stopped by SIG") and line.endswith("checkpointed: resume continues it"), line


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_the_run_and_says_where_it_stands(tmp_path, started, presses):
    """Ctrl-C in a terminal reaches the run and its workers (one process group); the run then asks
    its workers to stop (SIGTERM): the job says SIGINT, what the user did. A second Ctrl-C while
    they checkpoint cuts short neither the run's clean-up (its last line agrees with status, no
    worker is left behind) nor the worker's checkpoint."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=200, seeds="0"))
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1",
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    first = state.job_dir(tmp_path / "seeds", api.plan(sweep_file).jobs[0])
    _until_training(proc, first)
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
    out = proc.communicate(timeout=60)[0]
    _wait_group_dead(proc.pid, timeout=10)
    assert proc.returncode == 130, out
    rc, status_out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    totals = status_out.splitlines()[-1]
    assert totals.endswith(f"  ->  kdsweep resume {sweep_file} --results {tmp_path}"), status_out
    assert out.splitlines()[-1] == f"interrupted: {totals}", (out, status_out)  # the run and status agree
    assert state.job_state(first).state == state.INTERRUPTED
    assert state.job_state(first).detail == "stopped by SIGINT, checkpointed: resume continues it"
    assert (first / "checkpoint.pt").exists()  # the second Ctrl-C did not cut the worker's checkpoint short


def test_a_run_killed_outright_takes_its_workers_with_it(tmp_path, started):
    """``kill -9`` of the run (or the OOM killer): its worker gets SIGTERM from the kernel (a
    parent-death signal), checkpoints and stops, where it trained on alone and wrote its results
    into whatever folder stood there later (a user who deleted results/ and ran again)."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=200, seeds="0"))
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1")
    first = state.job_dir(tmp_path / "seeds", api.plan(sweep_file).jobs[0])
    _until_training(proc, first)
    assert len(_workers(proc.pid)) == 1
    proc.kill()
    proc.communicate(timeout=10)
    _wait_group_dead(proc.pid, timeout=30)  # its worker too, which would train on for 200 epochs
    assert (first / "checkpoint.pt").exists()
    s = state.job_state(first)
    assert (s.state, s.detail) == (state.INTERRUPTED, "stopped by SIGTERM, checkpointed: resume continues it")


def test_a_worker_stopped_by_a_signal_is_interrupted_not_failed(tmp_path, started):
    """``kill`` of a worker (not of the run): the job checkpoints; the run and status both say
    interrupted, and the run points at resume."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=200, seeds="0"))
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1")
    first = state.job_dir(tmp_path / "seeds", api.plan(sweep_file).jobs[0])
    _until_training(proc, first)
    os.kill(json.loads((first / "attempt.json").read_text())["pid"], signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1, out
    (line,) = [x for x in out.splitlines() if x.startswith("interrupted")]
    assert line.endswith("stopped by SIGTERM, checkpointed: resume continues it"), out
    assert out.splitlines()[-1] == f"0/1 done, 1 interrupted  ->  kdsweep resume {sweep_file} --results {tmp_path}", out
    assert state.job_state(first).state == state.INTERRUPTED


@pytest.mark.parametrize("ignored", [signal.SIGHUP, signal.SIGINT], ids=["nohup", "a-scripts-background-job"])
def test_a_run_started_with_a_signal_ignored_goes_on_when_it_comes(tmp_path, ignored):
    """nohup ignores SIGHUP; a script's background job (`kdsweep run ... &`) SIGINT, so that a Ctrl-C
    in its terminal is not for it: its workers stopped all the same (their own handler), and the run
    went on with every unit 'interrupted'."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=200, seeds="0"))
    proc = _kdsweep("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1", start_new_session=True,
                    preexec_fn=lambda: signal.signal(ignored, signal.SIG_IGN))  # as nohup, or the shell, starts it
    try:
        first = state.job_dir(tmp_path / "seeds", api.plan(sweep_file).jobs[0])
        _until_training(proc, first)
        os.killpg(proc.pid, ignored)  # the whole group, workers too, as a terminal sends it
        time.sleep(2)
        assert proc.poll() is None and state.job_state(first).state == state.RUNNING
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_unit_that_kills_its_worker_fails_alone_and_the_next_unit_gets_a_new_worker(tmp_path, started):
    """One worker (-j 1) takes three units in turn; the second one's worker is killed (as the OOM
    killer does): that unit fails, named with how it ended, and the third runs in a new worker."""
    sweep_file = tmp_path / "crash.toml"
    sweep_file.write_text(CRASH)
    first, long, last = api.plan(sweep_file).jobs  # 2 epochs, 400 epochs, 2 epochs
    folder = tmp_path / "crash"
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1", "-j", "1",
                   env={**os.environ, "KDSWEEP_CHECKPOINT_MINUTES": "epoch"})
    _until_training(proc, state.job_dir(folder, long))
    while not (state.job_dir(folder, long) / "checkpoint.pt").exists():
        time.sleep(0.02)
    worker = json.loads((state.job_dir(folder, long) / "attempt.json").read_text())["pid"]
    assert json.loads((state.job_dir(folder, first) / "attempt.json").read_text())["pid"] == worker  # reused
    os.kill(worker, signal.SIGKILL)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    (line,) = [x for x in out.splitlines() if long.name in x and x.startswith("failed")]
    assert line.endswith("its worker was killed by SIGKILL; resume continues from its checkpoint"), out
    assert json.loads((state.job_dir(folder, last) / "attempt.json").read_text())["pid"] != worker  # a new one
    rc, out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    assert out.splitlines()[-1] == f"2/3 done, 1 failed  ->  kdsweep resume {sweep_file} --results {tmp_path}", out  # as run said
    assert "killed by SIGKILL; resume continues from its checkpoint" in out, out



def test_a_worker_that_fails_at_its_start_leaves_its_traceback_in_the_job_log(tmp_path, monkeypatch):
    """A broken environment (here: a torch that does not import) ends the worker before it takes its
    unit: the job fails with the error's last line, and the traceback is in the job's log."""
    broken = tmp_path / "broken" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this torch is broken (a test)')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")]))
    sweep_file = tmp_path / "one.toml"
    sweep_file.write_text('name = "one"\ndataset = "mnist"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    rc, out, err = _run_main(["run", str(sweep_file), "--results", str(tmp_path), "--device", "cpu"])
    assert rc == 1, out + err
    (job,) = api.plan(sweep_file).jobs
    (line,) = [x for x in out.splitlines() if x.startswith("failed")]
    assert line.endswith("exit status 1: ImportError: this torch is broken (a test)"), out
    log = (state.job_dir(tmp_path / "one", job) / "log").read_text()
    assert "Traceback" in log and "this torch is broken" in log, log
    monkeypatch.delenv("PYTHONPATH")
    rc, out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])  # status says so too
    assert "failed" in out and "ImportError: this torch is broken (a test)" in out, out

def test_a_worker_stopped_by_a_signal_takes_no_other_unit(tmp_path):
    """A unit stopped by a signal checkpoints and its worker exits; the next unit, sent at once (before
    that worker is gone), goes to a new worker instead of failing with it."""
    from sweep.pool import Pool

    sweep_file = tmp_path / "crash.toml"
    sweep_file.write_text(CRASH)
    plan = api.plan(sweep_file)
    folder = tmp_path / "crash"
    state.write_plan(folder, plan)
    _, long, last = (state.job_dir(folder, j) for j in plan.jobs)  # 2 epochs, 400 epochs, 2 epochs
    pool = Pool({**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}, None, "cpu")
    try:
        stopped = pool.run([long], [], long / "log")
        deadline = time.monotonic() + 120
        while not trained_an_epoch(long):
            assert time.monotonic() < deadline and stopped.poll() is None, (long / "log").read_text()
            time.sleep(0.02)
        stopped.terminate()
        assert stopped.wait() == 128 + signal.SIGTERM
        after = pool.run([last], [], last / "log")
        assert after.worker is not stopped.worker
        assert after.wait() == 0 and (last / "result.json").exists()
        assert "caught SIGTERM: stopping after this step" in (long / "log").read_text()
        assert state.job_state(long).state == state.INTERRUPTED
    finally:
        pool.close()


def _planned_job(tmp_path):
    """A one-job sweep whose folders are written, as a run leaves them before it trains: (its file, the job's folder)."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=1, seeds="0"))
    plan = api.plan(sweep_file)
    state.write_plan(tmp_path / "seeds", plan)
    return sweep_file, state.job_dir(tmp_path / "seeds", plan.jobs[0])


def _worker_holding(jdir: Path, seconds: float) -> subprocess.Popen:
    """A stand-in worker: a process of its own that holds the job folder's lock (POSIX record locks
    are a process's: one this test held would be its own, and released by the status it asks)."""
    proc = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                             "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(float(sys.argv[2]))",
                             str(jdir / ".lock"), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    (jdir / "attempt.json").write_text(json.dumps({"host": socket.gethostname(), "pid": proc.pid}))
    return proc


def test_resume_waits_for_the_worker_of_a_killed_run_instead_of_skipping_its_job(tmp_path):
    """kill -9 of a run leaves its worker checkpointing on its way out: a resume at once must not
    skip that job as 'already running' (a second resume was needed) but wait for the job's lock."""
    import threading

    sweep_file, jdir = _planned_job(tmp_path)
    dying = _worker_holding(jdir, 30)  # the orphaned worker: alive, on this host, holding the lock
    try:
        assert state.job_state(jdir).state == state.RUNNING

        def exits() -> None:  # it checkpoints and exits 3 s later
            time.sleep(3)
            dying.kill()
            dying.wait()
        threading.Thread(target=exits, daemon=True).start()
        rc, out, err = _run_main(["resume", str(sweep_file), "--results", str(tmp_path)])
    finally:
        dying.kill()
    assert rc == 0 and "already running" not in out, (out, err)
    assert state.job_state(jdir).state == state.DONE


def test_status_during_a_run_says_the_run_works_there_and_points_to_status(tmp_path, started):
    """Its pending jobs are the run's to start: status says a run works in the folder and its next
    step is status again, not a resume that would be refused (another run holds the sweep)."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=4, seeds="0, 1"))
    plan = api.plan(sweep_file)
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "--pack", "1")
    _until_training(proc, state.job_dir(tmp_path / "seeds", plan.jobs[0]))
    rc, out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    lines = out.splitlines()
    assert lines[-2] == f"note: a 'kdsweep run' of seeds (pid {proc.pid}) works in {tmp_path / 'seeds'} now: " \
                        "its pending jobs are its to start", out
    assert lines[-1].endswith(f"  ->  kdsweep status {sweep_file} --results {tmp_path}"), out


def test_a_killed_runs_worker_that_outlasts_the_wait_leaves_its_job_running_not_failed(tmp_path):
    """Past the job lock's wait the worker of a killed run still trains: the resume says the job is
    already running and writes no error into the folder that worker trains in."""
    sweep_file, jdir = _planned_job(tmp_path)
    busy = _worker_holding(jdir, 60)
    try:
        r = subprocess.run([sys.executable, "-m", "sweep.cli", "resume", str(sweep_file), "--results",
                            str(tmp_path)], capture_output=True, text=True, env={**os.environ, "KDSWEEP_LOCK_WAIT": "1"})
        assert r.returncode == 1 and f"already running (pid {busy.pid} on " in r.stdout, (r.stdout, r.stderr)
        assert not (jdir / "error.json").exists() and state.job_state(jdir).state == state.RUNNING
    finally:
        busy.kill()


def test_a_copied_job_folder_is_not_running_where_its_process_does_not_train(tmp_path):
    """A folder copied (cp -a) while its job trained named a live process: status called the copy
    'running' as long as the original trained. The process holds the original's lock, not the
    copy's: the copy is interrupted, and resume there goes on from its checkpoint."""
    sweep_file, jdir = _planned_job(tmp_path)
    busy = _worker_holding(jdir, 60)
    try:
        copy = tmp_path / "copy"
        shutil.copytree(tmp_path / "seeds", copy / "seeds")
        copied = copy / jdir.relative_to(tmp_path)
        assert state.job_state(jdir).state == state.RUNNING
        s = state.job_state(copied)
        assert (s.state, s.detail) == (state.INTERRUPTED, f"pid {busy.pid} on {socket.gethostname()} does not train "
                                       "it here (a copy of its folder? or its unit ended without a result or an "
                                       "error: its log says); no checkpoint: resume starts it over"), s
        rc, out, err = _run_main(["resume", str(sweep_file), "--results", str(copy)])
        assert rc == 0, (out, err)
        assert state.job_state(copied).state == state.DONE and state.job_state(jdir).state == state.RUNNING
    finally:
        busy.kill()


def test_a_results_folder_moved_during_the_run_stops_it_in_one_line_and_is_not_made_anew(tmp_path):
    """Moved while its teacher trained: the run ended in a traceback (the next unit's log not found),
    and the worker made the old folder anew for the teacher's result, splitting the sweep in two."""
    sweep_file = tmp_path / "moved.toml"
    sweep_file.write_text('name = "moved"\ndataset = "mnist"\nmethods = ["teacher", "scratch"]\n[train]\n'
                          "epochs = 1\nbatch_size = 100\n[teacher]\nepochs = 3\n")
    plan = api.plan(sweep_file)
    teacher = next(j for j in plan.jobs if j.method == "teacher")
    old, new = tmp_path / "old", tmp_path / "new"
    proc = _kdsweep("run", str(sweep_file), "--results", str(old))
    _until_training(proc, state.job_dir(old / "moved", teacher))
    old.rename(new)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2 and "Traceback" not in out, out
    assert out.splitlines()[-2:] == [f"error: {old / 'moved'}: moved or deleted during the run: the run stopped",
                                     "hint: status and resume where it is now: --results DIR names the folder that "
                                     "holds it, under its name moved"], out
    (line,) = [x for x in out.splitlines() if x.startswith("failed")]  # why, where it said 'exit status 2' alone
    assert "teacher-s0" in line and line.endswith("the sweep's folder is gone (moved or deleted during the run)"), out
    assert not old.exists()  # nothing made anew there
    resumed = _kdsweep("-q", "resume", str(sweep_file), "--results", str(new))
    assert resumed.communicate(timeout=300)[0].splitlines()[-1].startswith("2/2 done") and resumed.returncode == 0


def test_a_job_folder_deleted_during_its_training_is_named_on_its_failed_line(tmp_path):
    """Its unit's log went with it: the line said 'exit status 2' and nothing more."""
    sweep_file = tmp_path / "gone.toml"
    sweep_file.write_text('name = "gone"\ndataset = "mnist"\nmethods = ["teacher", "scratch"]\n[train]\n'
                          "epochs = 1\nbatch_size = 100\n[teacher]\nepochs = 3\n")
    teacher = next(j for j in api.plan(sweep_file).jobs if j.method == "teacher")
    jdir = state.job_dir(tmp_path / "gone", teacher)
    proc = _kdsweep("run", str(sweep_file), "--results", str(tmp_path))
    _until_training(proc, jdir)
    shutil.rmtree(jdir)
    out = proc.communicate(timeout=120)[0]
    (line,) = [x for x in out.splitlines() if x.startswith("failed")]
    assert "teacher-s0" in line and line.endswith(f"{jdir} is gone (deleted during the run?), and its unit's log "
                                                  "with it"), out


def test_a_run_whose_output_pipe_closes_says_it_stopped(tmp_path):
    """'kdsweep run ... | head -1': the run stopped at its second line, silently, with exit status 0
    (right for status's table, not for a run whose jobs did not run)."""
    sweep_file = tmp_path / "piped.toml"
    sweep_file.write_text('name = "piped"\ndataset = "mnist"\nmethods = ["scratch"]\n[train]\nepochs = 1\n'
                          "batch_size = 100\n[grid]\nseed = [0, 1]\n")
    run = subprocess.Popen([sys.executable, "-m", "sweep.cli", "run", str(sweep_file), "--results", str(tmp_path / "r"),
                            "--pack", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline().startswith("running 2 of 2 jobs of piped")
    run.stdout.close()  # as head does after its line
    err = run.communicate(timeout=120)[1]
    assert run.returncode == 1 and err.splitlines()[-1] == (
        "error: the output closed (its pipe's reader ended): the run stopped, its running jobs checkpointed; "
        "'kdsweep resume' goes on from there"), err


def test_a_folder_copied_during_a_run_is_not_the_runs(tmp_path):
    """status on a copy made while the run went on said the run worked there ('its pending jobs are
    its to start'): the run's pid is alive on this host, but it holds the original's lock file open."""
    sweep_file = tmp_path / "copied.toml"
    sweep_file.write_text('name = "copied"\ndataset = "mnist"\nmethods = ["teacher"]\n[train]\nepochs = 3\n'
                          "batch_size = 100\n")
    teacher = api.plan(sweep_file).jobs[0]
    proc = _kdsweep("-q", "run", str(sweep_file), "--results", str(tmp_path / "r"))
    try:
        _until_training(proc, state.job_dir(tmp_path / "r" / "copied", teacher))
        shutil.copytree(tmp_path / "r", tmp_path / "copy")
        assert state.sweep_run(tmp_path / "r" / "copied") == proc.pid
        assert state.sweep_run(tmp_path / "copy" / "copied") is None
    finally:
        proc.communicate(timeout=120)


def test_students_started_ahead_are_queued_behind_their_teacher_and_pending_after_a_stop(tmp_path, started):
    """-j 2: the students' unit starts while the teacher trains, and waits. Status called them
    'running' (its worker's pid), and after a Ctrl-C 'stopped by SIGINT, no checkpoint' though
    they had never begun: queued, waiting for their teacher; then pending again."""
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(TINY.replace('"scratch", ', "").replace("epochs = 1\n", "epochs = 50\n")
                          .replace("[0, 0.5]", "[0.5]"))
    plan = api.plan(sweep_file)
    folder = tmp_path / "tiny"
    teacher = next(j for j in plan.jobs if j.method == "teacher")
    kd = [state.job_dir(folder, j) for j in plan.jobs if j.method == "kd"]
    proc = started("run", str(sweep_file), "--results", str(tmp_path), "-j", "2",
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    deadline = time.monotonic() + 120
    while not all("waiting_for" in (state.read_json(d / "attempt.json") or {}) for d in kd):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    pid = state.read_json(kd[0] / "attempt.json")["pid"]
    for d in kd:
        s = state.job_state(d)
        assert (s.state, s.detail) == (state.QUEUED, f"waiting for its teacher teacher-s0 (started ahead in pid "
                                                     f"{pid} on {socket.gethostname()})"), s
    rc, out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    assert "0/3 done, 1 running, 2 queued" in out.splitlines()[-1], out
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    for d in kd:
        assert state.job_state(d).state == state.PENDING and not (d / "attempt.json").exists()
    assert state.job_state(state.job_dir(folder, teacher)).state == state.INTERRUPTED
    rc, out, _ = _run_main(["status", str(sweep_file), "--results", str(tmp_path)])
    assert out.splitlines()[-1].startswith("0/3 done, 1 interrupted, 2 pending  ->  kdsweep resume"), out


def test_a_resume_that_finds_a_damaged_checkpoint_says_it_trained_from_the_start(tmp_path, started):
    """The checkpoint's last bytes whole, its middle damaged: status cannot tell, and the resume
    trained the job over with a warning in its log alone. Its done line says so."""
    sweep_file = tmp_path / "seeds.toml"
    sweep_file.write_text(SEEDS.format(epochs=40, seeds="0"))
    plan = api.plan(sweep_file)
    job = state.job_dir(tmp_path / "seeds", plan.jobs[0])
    proc = started("run", str(sweep_file), "--results", str(tmp_path), env={**os.environ,
                                                                              "KDSWEEP_CHECKPOINT_MINUTES": "epoch"},
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    _until_training(proc, job)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    checkpoint = job / "checkpoint.pt"
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2: len(data) // 2 + 100] = bytes(100)
    checkpoint.write_bytes(bytes(data))
    assert state.job_state(job).detail == "stopped by SIGINT, checkpointed: resume continues it"
    rc, out, err = _run_main(["resume", str(sweep_file), "--results", str(tmp_path)])
    assert rc == 0 and "(its checkpoint was damaged: trained from the start (its log says how))" in out, (out, err)


def test_resume_reads_the_data_root_the_sweep_ran_with_unless_told_otherwise(tmp_path, mini_mnist_env, monkeypatch,
                                                                              capsys):
    """Run with --data-root, resume from a shell without it: resume read the default data root (another
    copy of the data, or none) without a word; now the one the sweep ran with, said in one line."""
    sweep_file = tmp_path / "one.toml"
    sweep_file.write_text('name = "one"\ndataset = "mnist"\nmethods = ["scratch"]\n[train]\nepochs = 1\n'
                          'batch_size = 100\n[grid]\nseed = [0, 1]\n')
    data = tmp_path / "data"
    shutil.copytree(mini_mnist_env, data)
    monkeypatch.delenv("KDSWEEP_DATA")  # a shell without it: the default root has no mnist
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = ("--results", str(tmp_path / "r"))
    assert main(["run", str(sweep_file), *root, "--data-root", str(data), "--pack", "1"]) == 0
    folder = tmp_path / "r" / "one"
    job = state.job_dir(folder, api.plan(sweep_file).jobs[1])
    (job / "result.json").unlink()
    capsys.readouterr()
    assert main(["resume", str(sweep_file), *root]) == 0
    out = capsys.readouterr().out
    assert f"data root: {data.resolve()}, the one the sweep last ran with (--data-root DIR to change it)" in out, out
    assert (job / "result.json").exists()
    assert json.loads((folder / "plan.json").read_text())["data_root"] == str(data.resolve())
    (job / "result.json").unlink()
    monkeypatch.setenv("KDSWEEP_DATA", str(data))  # this shell's own is that one: nothing to say
    assert main(["resume", str(sweep_file), *root]) == 0
    assert "data root" not in capsys.readouterr().out
    (job / "result.json").unlink()
    other = tmp_path / "other"
    shutil.copytree(data, other)
    monkeypatch.setenv("KDSWEEP_DATA", str(other))  # this shell names another: it wins, said
    assert main(["resume", str(sweep_file), *root]) == 0
    assert (f"note: the sweep last ran with data root {data.resolve()}; this resume reads $KDSWEEP_DATA, {other} "
            "(--data-root DIR to choose)") in capsys.readouterr().out
    (job / "result.json").unlink()
    monkeypatch.delenv("KDSWEEP_DATA")
    shutil.rmtree(other)  # the one recorded now (resume records what it read) is gone: the default, said
    assert main(["resume", str(sweep_file), *root]) == 2  # the default has no mnist: the data's own error
    out, err = capsys.readouterr()
    assert (f"note: the sweep last ran with data root {other.resolve()}; this resume reads the default "
            f"({tmp_path / 'home' / '.cache' / 'kdsweep' / 'data'}), as that one is gone (--data-root DIR to "
            "choose)") in out, out
    assert "--data-root" not in err.splitlines()[0], err  # not a flag the user never typed
