"""End to end against the real one-node Slurm cluster of slurm/testcluster (started by make test)."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_idx_root, trained_an_epoch
from sweep import api, state

pytestmark = pytest.mark.slurm


def kdsweep(*args, env=None, check=True):
    p = subprocess.run([sys.executable, "-m", "sweep.cli", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def wait_until(sweep_file, results, predicate, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {j.name: s for j, s in api.status(sweep_file, results_root=results)}
        if predicate(states):
            return states
        time.sleep(0.5)
    raise AssertionError(f"timed out; states: {states}\n" + kdsweep("status", sweep_file, "--results", results).stdout)


def all_final(states):
    return all(s.state in (state.DONE, state.FAILED, state.CANCELLED) for s in states.values())


def sacct_times(array_ids):
    p = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,Start,End", "-j", ",".join(array_ids)],
                       capture_output=True, text=True, check=True)
    return {line.split("|")[0]: line.split("|")[1:] for line in p.stdout.splitlines()}


def test_sweep_on_slurm_equals_local_and_teacher_first(slurm_cluster, tmp_path, mini_mnist_env):
    from test_sweep_local import TINY as tiny_text

    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(tiny_text)
    out = kdsweep("run", sweep_file, "--results", tmp_path / "slurm", "--profile", "local-slurm").stdout
    assert "submitted first array" in out and "submitted students array" in out
    again = kdsweep("run", sweep_file, "--results", tmp_path / "slurm", "--profile", "local-slurm").stdout
    assert "nothing to submit" in again  # running `run` twice never submits a job twice
    # the same sweep locally, two processes of one thread each: as on the cluster (1 CPU per job)
    kdsweep("run", sweep_file, "--results", tmp_path / "local", "--jobs", "2")
    states = wait_until(sweep_file, tmp_path / "slurm", all_final)
    assert {s.state for s in states.values()} == {state.DONE}, states

    a = api.collect(sweep_file, results_root=tmp_path / "slurm")
    b = api.collect(sweep_file, results_root=tmp_path / "local")
    cols = ["job_id", "name", "method", "alpha", "temperature", "test_accuracy", "test_loss", "params"]
    pd.testing.assert_frame_equal(pd.read_parquet(a.results)[cols], pd.read_parquet(b.results)[cols])

    record = json.loads((tmp_path / "slurm" / "tiny" / "slurm" / "submissions.json").read_text())
    first, students = record[0]["jobs"], record[1]["jobs"]
    plan = api.plan(sweep_file)
    teacher = next(j for j in plan.jobs if j.method == "teacher")
    times = sacct_times(sorted({i.split("_")[0] for i in [*first.values(), *students.values()]}))
    teacher_end = times[first[teacher.id]][1]
    for sid in students.values():
        assert times[sid][0] >= teacher_end, (times, teacher_end)  # ISO times compare as strings

    # a result damaged after its task ended: status says so (and how to recover), not Slurm's
    # "ended without a result" for a task that completed
    student = next(j for j in plan.jobs if j.method == "kd")
    model = state.job_dir(tmp_path / "slurm" / "tiny", student) / "model.pt"
    with open(model, "r+b") as f:
        f.truncate(100)
    shown = kdsweep("status", sweep_file, "--results", tmp_path / "slurm", check=False).stdout
    line = next(x for x in shown.splitlines() if student.id in x)
    assert "damaged" in line and "model.pt has 100 bytes" in line and "without a result" not in line, line


def test_preempted_job_requeues_mid_epoch_and_cancelled_job_reruns_alone(slurm_cluster, tmp_path):
    sweep_file = tmp_path / "long.toml"
    sweep_file.write_text('name = "long"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n'
                          "[train]\nepochs = 3\nbatch_size = 16\n[grid]\nseed = [0, 1]\n")  # 250 steps an epoch
    results = tmp_path / "results"
    kdsweep("run", sweep_file, "--results", results, "--profile", "local-slurm", "--pack", "1")
    plan = api.plan(sweep_file)
    s0, s1 = plan.jobs
    ids = json.loads((results / "long" / "slurm" / "submissions.json").read_text())[0]["jobs"]
    first = state.job_dir(results / "long", s0)
    deadline = time.monotonic() + 120
    while not trained_an_epoch(first) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trained_an_epoch(first), "the job never finished its first epoch"
    assert not (first / "checkpoint.pt").exists()  # none yet: the default is one every 10 minutes of training
    time.sleep(1.0)  # into the next epoch: the signal lands mid-epoch
    subprocess.run(["scancel", ids[s1.id]], check=True)
    subprocess.run(["scancel", "--signal=USR2", ids[s0.id]], check=True)  # as a preemption does
    wait_until(sweep_file, results, lambda st: st[s0.name].state == state.QUEUED, timeout=60)
    # Slurm holds a requeued job for 120 s (BeginTime); on the test cluster, release it now. The
    # hold is set as the requeue completes, so release until the job runs again; but not within the
    # second of the requeue: slurmd refuses a task whose credential is no newer than the revocation of
    # the one requeued ("Killing non-startable batch JobId=8: Job credential revoked", seen once in CI)
    time.sleep(2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        subprocess.run(["scontrol", "update", f"JobId={ids[s0.id]}", "StartTime=now"], capture_output=True)
        st = {j.name: s for j, s in api.status(sweep_file, results_root=results)}[s0.name].state
        if st in (state.RUNNING, state.DONE):
            break
        time.sleep(1)
    states = wait_until(sweep_file, results, lambda st: st[s0.name].state == state.DONE
                        and st[s1.name].state == state.CANCELLED)
    assert states[s1.name].detail.startswith(f"slurm {ids[s1.id]}")
    result = json.loads((state.job_dir(results / "long", s0) / "result.json").read_text())
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    task_log = (results / "long" / "slurm" / ids[s0.id] / f"{ids[s0.id]}_0_log.out").read_text()
    assert "Caught signal SIGUSR2" in task_log and "Requeued" in task_log
    # it stopped mid-epoch with a checkpoint, and the requeued task resumed at that very step
    stopped = re.search(r"stopped at epoch (\d+), step (\d+) of 250", task_log)
    assert stopped, task_log
    epoch, step = int(stopped.group(1)), int(stopped.group(2))
    assert 0 < step < 250
    assert f"from epoch {epoch}, step {step} (of 250)" in task_log  # lost: the step in flight, not the epoch
    assert (first / "log").read_text().count(f" slurm task {ids[s0.id]}\n") == 2  # as status names it, twice

    out = kdsweep("resume", sweep_file, "--results", results, "--profile", "local-slurm").stdout
    assert "submitted first array" in out and ": 1 tasks" in out and "1 done" in out
    states = wait_until(sweep_file, results, all_final)
    assert states[s1.name].state == state.DONE


def test_a_job_out_of_requeues_says_time_limit_and_one_resume_continues_it(slurm_cluster, tmp_path):
    """The warning signal of a time limit after the profile's max_requeue requeues: submitit does not
    requeue it (its traceback said 'UncompletedJobError'; status said 'exit code 1'); status now
    says time limit, what resume does and the fix, and one resume finishes it from its checkpoint."""
    profile = tmp_path / "once.toml"
    profile.write_text('name = "once"\npartition = "debug"\ntime = 10\ngpus = 1\ncpus = 1\nmax_requeue = 0\n')
    sweep_file = tmp_path / "long.toml"
    sweep_file.write_text('name = "long"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n'
                          "[train]\nepochs = 3\nbatch_size = 16\n[grid]\nseed = [0]\n")
    results = tmp_path / "results"
    kdsweep("run", sweep_file, "--results", results, "--profile", profile)
    (job,) = api.plan(sweep_file).jobs
    sid = json.loads((results / "long" / "slurm" / "submissions.json").read_text())[0]["jobs"][job.id]
    folder = state.job_dir(results / "long", job)
    deadline = time.monotonic() + 120
    while not trained_an_epoch(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    subprocess.run(["scancel", "--signal=USR2", sid], check=True)  # a time limit under 10 minutes is one
    states = wait_until(sweep_file, results, lambda st: st[job.name].state == state.FAILED, timeout=60)
    assert states[job.name].detail.endswith(
        "time limit: not requeued (timed-out too many times: the profile's max_requeue); resume continues "
        "from its checkpoint, or raise the profile's time"), states[job.name].detail
    kdsweep("resume", sweep_file, "--results", results, "--profile", "local-slurm")
    states = wait_until(sweep_file, results, all_final)
    assert states[job.name].state == state.DONE
    assert "resuming" in (folder / "log").read_text()


def test_failing_job_shows_failed_with_its_error_line(slurm_cluster, tmp_path):
    root = tmp_path / "data"
    raw = make_idx_root(root, "MNIST")
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(b"\x00\x00\x08\x01garbage")  # corrupt
    sweep_file = tmp_path / "bad.toml"
    sweep_file.write_text('name = "bad"\ndataset = "mnist"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    kdsweep("run", sweep_file, "--results", tmp_path / "r", "--profile", "local-slurm", "--data-root", root)
    states = wait_until(sweep_file, tmp_path / "r", all_final)
    (s,) = states.values()
    assert s.state == state.FAILED
    assert "cannot read IDX file" in s.detail and "train-labels-idx1-ubyte.gz" in s.detail
    out = kdsweep("status", sweep_file, "--results", tmp_path / "r").stdout
    assert "0/1 done, 1 failed" in out


def test_a_task_that_fails_before_its_job_begins_shows_its_logs_error_line(slurm_cluster, tmp_path):
    profile = tmp_path / "p.toml"  # a python path mistyped: the task's srun fails, the job never begins
    profile.write_text('name = "p"\npartition = "debug"\ntime = 10\ncpus = 1\npython = "/nonexistent/python3"\n')
    sweep_file = tmp_path / "one.toml"  # two tasks in one array, where submitit's logs are slurm/12_1/12_1_0_log.out
    sweep_file.write_text('name = "one"\ndataset = "mnist-5k"\nmethods = ["scratch"]\npack = 1\n[train]\nepochs = 1\n'
                          '[grid]\nseed = [0, 1]\n')
    kdsweep("run", sweep_file, "--results", tmp_path / "r", "--profile", profile)
    for s in wait_until(sweep_file, tmp_path / "r", all_final).values():
        assert s.state == state.FAILED and "exit code" in s.detail, s
        # where before it said 'exit code 2' alone, the answer being in a file under results/one/slurm/
        assert "execve(): /nonexistent/python3: No such file or directory" in s.detail, s
        task = s.slurm_id
        assert "_" in task and s.detail.endswith(f"({tmp_path / 'r' / 'one' / 'slurm' / task / task}_0_log.out)"), s


def test_container_path_through_an_apptainer_stand_in(slurm_cluster, tmp_path):
    image = tmp_path / "kd-sweep.sif"
    image.write_bytes(b"stand-in image")
    profile = tmp_path / "apptainer-test.toml"
    profile.write_text(f'name = "apptainer-test"\npartition = "debug"\ntime = 10\ngpus = 1\ncpus = 1\n'
                       f'[container]\nruntime = "apptainer"\nimage = "{image}"\nbinds = ["{tmp_path}"]\n'
                       f'python = "{sys.executable}"\n')
    sweep_file = tmp_path / "one.toml"
    sweep_file.write_text('name = "one"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    log = tmp_path / "apptainer-args.log"
    env = {"PATH": f"{Path(__file__).parent / 'standin'}:{os.environ['PATH']}", "APPTAINER_STANDIN_LOG": str(log)}
    kdsweep("run", sweep_file, "--results", tmp_path / "r", "--profile", profile, env=env)
    states = wait_until(sweep_file, tmp_path / "r", all_final)
    assert [s.state for s in states.values()] == [state.DONE]
    args = log.read_text().split()
    assert args[:2] == ["exec", "--nv"]
    assert ["--bind", str(tmp_path), "--bind", str((tmp_path / "r").resolve())] == args[2:6]
    python = args.index(sys.executable)
    assert args[6:8] == [str(image), "env"] and args[python - 2:python + 2] == [
        "PYTHONNOUSERSITE=1", "PYTHONSAFEPATH=1", sys.executable, "-u"]  # the host's packages kept out of the image
    assert ("PYTHONPATH" in os.environ) == ("PYTHONPATH" in args[8:python]) and "submitit.core._submit" in args


@pytest.mark.parametrize("profile_text, why", [
    ('partition = "nosuch"\n', "sbatch: error: invalid partition specified: nosuch"),
    ('partition = "debug"\n[sbatch]\nnosuchopt = "x"\n', "sbatch: unrecognized option '--nosuchopt=x'"),
])
def test_a_submission_sbatch_refuses_is_one_line_naming_why(slurm_cluster, tmp_path, profile_text, why):
    """sbatch's own lines came first, raw, and the error line kept its last ('Try "sbatch --help"')."""
    profile = tmp_path / "p.toml"
    profile.write_text(f'name = "p"\ntime = 10\n{profile_text}')
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    p = kdsweep("run", sweep_file, "--results", tmp_path / "r", "--profile", profile, check=False)
    assert p.returncode == 2 and p.stderr.splitlines() == [f"error: sbatch refused the first array: {why}"], p.stderr
    assert not (tmp_path / "r" / "s" / "slurm" / "submissions.json").exists()
    assert list((tmp_path / "r" / "s" / "slurm").iterdir()) == []  # no pickle, no sbatch script left behind

