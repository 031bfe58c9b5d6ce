"""A teacher that fails or is cancelled on the real test cluster: its students are cancelled by Slurm
(not stranded), status says why, and one resume after the cause is fixed finishes every job once."""
import json
import re
import shlex
import shutil
import subprocess
import time

import pytest

from conftest import trained_an_epoch
from sweep import api, slurm, state
from test_slurm import all_final, kdsweep, wait_until

pytestmark = pytest.mark.slurm

SWEEP = """name = "{name}"
dataset = "mnist"
methods = ["teacher", "kd"]
[train]
epochs = 1
batch_size = 100
[teacher]
epochs = {teacher_epochs}
batch_size = {teacher_batch}
[grid]
alpha = [0.5]
temperature = [2, 4]
"""


def _status_lines(sweep_file, results):
    out = kdsweep("status", sweep_file, "--results", results).stdout
    return out, {line.split()[1]: line for line in out.splitlines()[1:-1]}


def _submissions(results, name):
    return json.loads((results / name / "slurm" / "submissions.json").read_text())


def test_failed_teacher_cancels_its_students_and_one_resume_recovers(slurm_cluster, tmp_path, mini_mnist):
    root = tmp_path / "data"
    shutil.copytree(mini_mnist, root)
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    good = labels.read_bytes()
    labels.write_bytes(good[:20])  # truncated by a full disk
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="failed", teacher_epochs=1, teacher_batch=100))
    results = tmp_path / "r"
    args = ("--results", results, "--profile", "local-slurm", "--data-root", root)
    kdsweep("run", sweep_file, *args)
    states = wait_until(sweep_file, results, lambda st: st["teacher-s0"].state == state.FAILED
                        and all(s.state == state.CANCELLED for n, s in st.items() if n.startswith("kd")))
    out, lines = _status_lines(sweep_file, results)
    assert "truncated or oversized IDX file" in lines["teacher-s0"]
    for name in ("kd-a0.5-T2-s0", "kd-a0.5-T4-s0"):
        assert "cancelled" in lines[name] and lines[name].endswith("its teacher teacher-s0 failed"), out
    totals, hint = out.splitlines()[-1].split("  ->  kdsweep ")
    assert totals == "0/3 done, 1 failed, 2 cancelled"
    # the data root the sweep ran with, named again (from a shell without it, resume would read the default)
    assert hint == f"resume {sweep_file} --results {results} --profile local-slurm --data-root {root}"

    labels.write_bytes(good)  # the cause fixed
    out = kdsweep(*shlex.split(hint)).stdout  # the command status printed, as it printed it
    assert "submitted first array" in out and "submitted students array" in out
    states = wait_until(sweep_file, results, all_final)
    assert {s.state for s in states.values()} == {state.DONE}, states
    record = _submissions(results, "failed")
    assert [sorted(r["jobs"]) for r in record[2:]] == [sorted(r["jobs"]) for r in record[:2]]  # each once again
    assert kdsweep("status", sweep_file, "--results", results).stdout.splitlines()[-1] == \
        f"3/3 done  ->  kdsweep collect {sweep_file} --results {results}"


def test_cancelled_teacher_cancels_its_students_and_one_resume_recovers(slurm_cluster, tmp_path, mini_mnist_env):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="cancelled", teacher_epochs=3, teacher_batch=16))  # about 3 s an epoch
    results = tmp_path / "r"
    args = ("--results", results, "--profile", "local-slurm")
    kdsweep("run", sweep_file, *args)
    plan = api.plan(sweep_file)
    teacher = next(j for j in plan.jobs if j.method == "teacher")
    wait_until(sweep_file, results, lambda st: trained_an_epoch(state.job_dir(results / "cancelled", teacher)))
    ids = _submissions(results, "cancelled")[0]["jobs"]
    subprocess.run(["scancel", ids[teacher.id]], check=True)
    wait_until(sweep_file, results, lambda st: st["teacher-s0"].state == state.CANCELLED
               and all(s.state == state.CANCELLED for n, s in st.items() if n.startswith("kd")), timeout=60)
    out, lines = _status_lines(sweep_file, results)
    assert all(lines[n].endswith("its teacher teacher-s0 cancelled") for n in ("kd-a0.5-T2-s0", "kd-a0.5-T4-s0")), out
    assert lines["teacher-s0"].endswith("resume continues from its checkpoint"), out  # scancel: SIGTERM, a checkpoint
    assert out.splitlines()[-1] == f"0/3 done, 3 cancelled  ->  kdsweep resume {sweep_file} --results {results} " \
        "--profile local-slurm"

    out = kdsweep("resume", sweep_file, *args).stdout
    assert "submitted first array" in out and "submitted students array" in out
    states = wait_until(sweep_file, results, all_final, timeout=300)
    assert {s.state for s in states.values()} == {state.DONE}, states
    log = (state.job_dir(results / "cancelled", teacher) / "log").read_text()
    assert "caught SIGTERM: stopping after this step" in log  # scancel: the step in flight, then a checkpoint
    assert re.search(r"resuming .* from epoch \d, step \d+", log), log  # where the cancelled teacher stopped
    assert kdsweep("status", sweep_file, "--results", results).stdout.splitlines()[-1] == \
        f"3/3 done  ->  kdsweep collect {sweep_file} --results {results}"


def test_a_task_killed_by_sigkill_says_so_and_one_resume_recovers(slurm_cluster, tmp_path, mini_mnist_env):
    """The kernel's out-of-memory killer (or a kill -9) takes the task's python: sacct says exit code 9,
    srun's log 'task 0: Killed'; status said 'exit code 9' alone, with no word of what resume does."""
    import os
    import signal

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="killed", teacher_epochs=3, teacher_batch=16))
    results = tmp_path / "r"
    args = ("--results", results, "--profile", "local-slurm")
    kdsweep("run", sweep_file, *args)
    teacher = next(j for j in api.plan(sweep_file).jobs if j.method == "teacher")
    folder = state.job_dir(results / "killed", teacher)
    wait_until(sweep_file, results, lambda st: trained_an_epoch(folder))
    os.kill(json.loads((folder / "attempt.json").read_text())["pid"], signal.SIGKILL)
    wait_until(sweep_file, results, lambda st: st["teacher-s0"].state == state.FAILED
               and all(s.state == state.CANCELLED for n, s in st.items() if n.startswith("kd")), timeout=60)
    out, lines = _status_lines(sweep_file, results)
    task = _submissions(results, "killed")[0]["jobs"][teacher.id]
    assert lines["teacher-s0"].endswith(
        f"failed     slurm {task}: killed by SIGKILL (out of memory, or a kill -9) "
        f"({results / 'killed' / 'slurm' / task / task}_0_log.out); no checkpoint: resume starts it over"), out
    kdsweep("resume", sweep_file, *args)
    states = wait_until(sweep_file, results, all_final, timeout=300)
    assert {s.state for s in states.values()} == {state.DONE}, states


def test_a_lost_record_is_made_again_from_slurms_queue_and_nothing_runs_twice(slurm_cluster, tmp_path,
                                                                            mini_mnist_env):
    """The record lost while the teacher trained and its students waited: status called them
    pending, and resume submitted both arrays again (a task standing aside on a node for a minute).
    Slurm's queue names the arrays submitted from the sweep's folder, and their tasks' own files the
    jobs: status shows them as Slurm has them, resume records them again and submits nothing."""
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="lost", teacher_epochs=3, teacher_batch=16))  # about 3 s an epoch
    results = tmp_path / "r"
    args = ("--results", results, "--profile", "local-slurm")
    kdsweep("run", sweep_file, *args)
    teacher = next(j for j in api.plan(sweep_file).jobs if j.method == "teacher")
    wait_until(sweep_file, results, lambda st: st["teacher-s0"].state == state.RUNNING
               and (state.job_dir(results / "lost", teacher) / "attempt.json").exists())
    first = _submissions(results, "lost")
    (results / "lost" / "slurm" / "submissions.json").unlink()  # a stray rm: what was submitted is forgotten
    out, lines = _status_lines(sweep_file, results)
    arrays = [r["jobs"][j] for r in first for j in r["jobs"]]
    assert f"running  slurm {first[0]['jobs'][teacher.id]}" in lines["teacher-s0"], out
    assert all("queued" in lines[n] for n in ("kd-a0.5-T2-s0", "kd-a0.5-T4-s0")), out
    assert f"note: 2 arrays of this sweep in Slurm's queue that {results / 'lost' / 'slurm' / 'submissions.json'} " \
           f"does not list ({', '.join(sorted({a.split('_')[0] for a in arrays}, key=int))})" in out, out
    out = kdsweep("resume", sweep_file, *args).stdout
    assert "recorded again: 2 arrays of this sweep in Slurm's queue" in out and "nothing to submit" in out, out
    again = _submissions(results, "lost")
    assert [r["jobs"] for r in again] == [r["jobs"] for r in first] and [r["name"] for r in again] == \
        [r["name"] for r in first]
    assert {r["profile"] for r in again} == {"local-slurm"}  # the resume's: status's next command names it
    states = wait_until(sweep_file, results, all_final, timeout=300)
    assert {s.state for s in states.values()} == {state.DONE}, states
    for job in api.plan(sweep_file).jobs:  # each trained by one task, once
        assert (state.job_dir(results / "lost", job) / "log").read_text().count("=== ") == 1


def test_the_slurm_folder_deleted_while_arrays_wait_is_said_and_resume_keeps_the_profile(slurm_cluster, tmp_path,
                                                                                        mini_mnist_env):
    """results/<sweep>/slurm/ deleted (logs, the record and the tasks' files) while both arrays waited:
    status said '3 pending -> kdsweep resume s.toml', a local run on the login node, and nothing of the
    arrays Slurm holds; resume --profile submitted both again beside them."""
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="gone", teacher_epochs=1, teacher_batch=100))
    results = tmp_path / "r"
    args = ("--results", results, "--profile", "local-slurm")
    kdsweep("run", sweep_file, *args)
    arrays = sorted({sid.split("_")[0] for r in _submissions(results, "gone") for sid in r["jobs"].values()}, key=int)
    subprocess.run(["scontrol", "hold", *arrays], check=True)
    shutil.rmtree(results / "gone" / "slurm")
    out = kdsweep("status", sweep_file, "--results", results).stdout
    assert f"note: 2 arrays of this sweep in Slurm's queue that {results / 'gone' / 'slurm' / 'submissions.json'} " \
           f"does not list ({', '.join(arrays)})" in out and "train what is unknown" in out, out
    assert out.splitlines()[-1].endswith(f"kdsweep resume {sweep_file} --results {results} --profile local-slurm"), out
    p = kdsweep("resume", sweep_file, *args, check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: Slurm holds 2 tasks submitted from"), p.stderr
    assert "submitted" not in p.stdout and not (results / "gone" / "slurm" / "submissions.json").exists()
    scancel = p.stderr.splitlines()[-1].removeprefix("hint: ").split(" (or wait")[0]
    subprocess.run(shlex.split(scancel), check=True)  # the command it named
    wait_until(sweep_file, results, lambda st: not slurm.unrecorded(results / "gone"), timeout=60)
    kdsweep("resume", sweep_file, *args)
    states = wait_until(sweep_file, results, all_final, timeout=300)
    assert {s.state for s in states.values()} == {state.DONE}, states


def test_students_of_a_teacher_training_out_of_slurms_sight_are_held_back(slurm_cluster, tmp_path, mini_mnist_env):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="held", teacher_epochs=1, teacher_batch=100))
    results = tmp_path / "r"
    teacher = next(j for j in api.plan(sweep_file).jobs if j.method == "teacher")
    folder = state.job_dir(results / "held", teacher)
    folder.mkdir(parents=True)  # trained by a process of another host, with no Slurm task to wait on
    (folder / "attempt.json").write_text(json.dumps({"host": "another-host", "pid": 1}))
    out = kdsweep("resume", sweep_file, "--results", results, "--profile", "local-slurm").stdout
    assert "not submitted: 2 students whose teacher trains where Slurm cannot be asked to wait for it: " \
           "teacher-s0 (pid 1 on another-host" in out and "resume again when it is done" in out, out
    assert "submitted" not in out.replace("not submitted", "") and not (results / "held" / "slurm" /
                                                                        "submissions.json").exists(), out


def test_tasks_of_jobs_the_edited_sweep_no_longer_plans_are_named_with_the_scancel_that_stops_them(
        slurm_cluster, tmp_path, mini_mnist_env):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="edited", teacher_epochs=3, teacher_batch=16))
    results = tmp_path / "r"
    kdsweep("run", sweep_file, "--results", results, "--profile", "local-slurm")
    tasks = sorted(set(_submissions(results, "edited")[0]["jobs"].values()) |
                   set(_submissions(results, "edited")[1]["jobs"].values()))
    sweep_file.write_text(sweep_file.read_text().replace("[2, 4]", "[2]"))  # T 4 is gone; its pack's task trains T 2
    out = kdsweep("status", sweep_file, "--results", results).stdout
    assert "Slurm task" not in out, out  # its task trains a student still planned: not to be cancelled
    sweep_file.write_text(sweep_file.read_text().replace("epochs = 3", "epochs = 4"))  # every job is another now
    out = kdsweep("status", sweep_file, "--results", results).stdout
    subprocess.run(["scancel", *tasks], check=True)
    assert f"note: {len(tasks)} Slurm tasks of jobs that {sweep_file} no longer plans (submitted before it changed) " \
           f"still queued or running: scancel {' '.join(tasks)} to stop them" in out, out


def test_a_task_cancelled_while_it_waited_is_pending_with_why_and_one_resume_runs_it(slurm_cluster, tmp_path):
    """Slurm keeps no record of a pending array task split off and cancelled: sacct lists 44_0 and
    44_[1%1], never 44_2; status said 'pending' with nothing more."""
    profile = tmp_path / "one-at-a-time.toml"
    profile.write_text('name = "one-at-a-time"\npartition = "debug"\ntime = 10\ncpus = 1\narray_parallelism = 1\n')
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "waits"\ndataset = "mnist-5k"\nmethods = ["scratch"]\npack = 1\n[train]\nepochs = 1\n'
                          '[grid]\nseed = [0, 1, 2]\n')
    results = tmp_path / "r"
    kdsweep("run", sweep_file, "--results", results, "--profile", profile)
    (record,) = _submissions(results, "waits")
    last = sorted(record["jobs"].items(), key=lambda kv: kv[1])[-1]  # the array's last task: it waits its turn
    subprocess.run(["scancel", last[1]], check=True)
    states = wait_until(sweep_file, results, lambda st: all(s.state in (state.DONE, state.PENDING) for s in st.values())
                        and sum(s.state == state.DONE for s in st.values()) == 2)
    name = next(j.name for j in api.plan(sweep_file).jobs if j.id == last[0])
    assert states[name].detail == f"slurm {last[1]}: Slurm no longer knows it (cancelled before it started?): resume " \
                                  "submits it again", states[name]
    kdsweep("resume", sweep_file, "--results", results, "--profile", profile)
    states = wait_until(sweep_file, results, all_final)
    assert {s.state for s in states.values()} == {state.DONE}, states


def _held_job(name: str) -> str:
    """Another user's job, held: what an id of this sweep's record names after Slurm's ids start again."""
    out = subprocess.run(["sbatch", "--parsable", "-H", "-J", name, "-o", "/dev/null", "--wrap", "sleep 300"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def _planned(tmp_path, name):
    """A sweep whose plan and job folders are written, as a run leaves them before it submits:
    (its file, the results root, its folder, its teacher, its students)."""
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name=name, teacher_epochs=1, teacher_batch=100))
    plan = api.plan(sweep_file)
    state.write_plan(tmp_path / "r" / name, plan)
    return (sweep_file, tmp_path / "r", tmp_path / "r" / name, next(j for j in plan.jobs if j.method == "teacher"),
            [j for j in plan.jobs if j.method == "kd"])


def test_a_recorded_id_that_slurm_now_gives_another_job_is_not_this_sweeps(slurm_cluster, tmp_path, mini_mnist_env):
    """Slurm's ids start again after its state is lost: the record's ids then name other jobs. Status
    called them this sweep's (queued), resume skipped them, and, the teacher failed, scancelled
    the other job as a student stranded behind it."""
    sweep_file, results, folder, teacher, students = _planned(tmp_path, "recycled")
    theirs = [_held_job("someone-elses"), _held_job("someone-elses")]
    try:
        from sweep import slurm

        slurm.add_submission(folder, "first", {teacher.id: theirs[0]}, "local-slurm", name="recycled-first")
        slurm.add_submission(folder, "students", {j.id: theirs[1] for j in students}, "local-slurm",
                             name="recycled-students")
        state.record_error(state.job_dir(folder, teacher), "RuntimeError: it failed")  # its students: stranded?
        out, lines = _status_lines(sweep_file, results)
        for j in students:
            assert f"pending  slurm {theirs[1]}: Slurm no longer knows it" in lines[j.name], out
        assert "failed" in lines["teacher-s0"], out
        out = kdsweep("resume", sweep_file, "--results", results, "--profile", "local-slurm").stdout
        assert "cancelled" not in out and "submitted first array" in out and "submitted students array" in out, out
        queue = subprocess.run(["squeue", "-h", "-o", "%i %j %t", "-j", ",".join(theirs)], capture_output=True,
                               text=True, check=True).stdout.split("\n")
        assert sorted(q for q in queue if q) == sorted(f"{i} someone-elses PD" for i in theirs)  # untouched
    finally:
        subprocess.run(["scancel", *theirs], check=False)
        mine = {sid.split("_")[0] for sub in _submissions(results, "recycled")[2:] for sid in sub["jobs"].values()}
        if mine:
            subprocess.run(["scancel", *mine], check=False)


@pytest.mark.parametrize("case", ["forgotten", "another-job", "recorded-task-cancelled"])
def test_students_do_not_wait_on_a_task_slurm_has_forgotten(slurm_cluster, tmp_path, mini_mnist_env, case):
    """A teacher trains (its heartbeat is fresh) under a task Slurm no longer knows (the cluster's
    state lost), or whose id Slurm gave another job since, or named by its attempt.json while its
    recorded task was cancelled: an afterok on an unknown id is met at once (the students started
    and failed), and one on another job's waits for that job. They are held back until it is done."""
    from sweep import slurm

    sweep_file, results, folder, teacher, _ = _planned(tmp_path, "forgotten")
    placeholder = _held_job("forgotten-first")  # recorded, then cancelled, where the case says so
    subprocess.run(["scancel", placeholder], check=True)
    deadline = time.monotonic() + 60
    while not re.fullmatch(r"CANCELLED[^|]*\|forgotten-first\n", subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", placeholder, "-o", "State,JobName"], capture_output=True,
            text=True).stdout):  # accounting has it (a moment after the cancel, its line may name it 'allocation')
        assert time.monotonic() < deadline, "sacct never said the placeholder was cancelled"
        time.sleep(0.2)
    trainer = {"forgotten": str(int(placeholder) + 1000),  # an id this cluster has not given (yet)
               "another-job": _held_job("someone-elses"), "recorded-task-cancelled": str(int(placeholder) + 1000)}[case]
    recorded = placeholder if case == "recorded-task-cancelled" else trainer
    slurm.add_submission(folder, "first", {teacher.id: recorded}, "local-slurm", name="forgotten-first")
    (state.job_dir(folder, teacher) / "attempt.json").write_text(
        json.dumps({"host": "node7", "pid": 4242, "slurm_job_id": trainer}))
    try:
        if case == "recorded-task-cancelled":  # the task its folder names is not taken for one Slurm holds
            line = _status_lines(sweep_file, results)[1]["teacher-s0"]
            assert line.endswith(f"slurm {trainer} (slurm {placeholder} cancelled); Slurm does not hold slurm "
                                 f"{trainer}"), line
        out = kdsweep("resume", sweep_file, "--results", results, "--profile", "local-slurm").stdout
    finally:
        subprocess.run(["scancel", trainer], check=False)
    assert "not submitted: 2 students whose teacher trains where Slurm cannot be asked to wait for it: " \
           "teacher-s0 (pid 4242 on node7" in out, out
    assert "submitted" not in out.replace("not submitted", ""), out
    assert len(_submissions(results, "forgotten")) == 1


def test_a_student_cancelled_with_its_array_for_another_students_teacher_says_which(slurm_cluster, tmp_path,
                                                                                      mini_mnist_env):
    """A students array waits (afterok) on the teacher tasks of all its students: one cancelled
    cancels the whole array. The student whose own teacher is done said 'cancelled' and no more."""
    from sweep_tables import finish

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="mates", teacher_epochs=3, teacher_batch=16).replace(  # scancelled mid-way
        "temperature = [2, 4]", "temperature = [2]\nseed = [0, 1]").replace("[train]", "pack = 1\n[train]"))
    results = tmp_path / "r"
    plan = api.plan(sweep_file)
    folder = results / "mates"
    finish(folder, plan, skip=tuple(j.name for j in plan.jobs if j.name != "teacher-s0"))  # teacher-s0 is done
    out = kdsweep("resume", sweep_file, "--results", results, "--profile", "local-slurm").stdout
    first, students = _submissions(results, "mates")
    try:
        states = wait_until(sweep_file, results, lambda st: "waiting" in st["kd-a0.5-T2-s0"].detail, timeout=30)
        assert states["kd-a0.5-T2-s0"].detail.endswith(": waiting for the teachers of other students in its array "
                                                       "(teacher-s1; its own is done)"), states  # not 'its teacher'
        subprocess.run(["scancel", *set(first["jobs"].values())], check=True)  # teacher-s1
        wait_until(sweep_file, results, lambda st: all(st[n].state == state.CANCELLED
                                                       for n in ("teacher-s1", "kd-a0.5-T2-s0", "kd-a0.5-T2-s1")))
        out, lines = _status_lines(sweep_file, results)
        assert lines["kd-a0.5-T2-s1"].endswith("its teacher teacher-s1 cancelled"), out
        assert lines["kd-a0.5-T2-s0"].endswith("the teacher teacher-s1 of a student in its array cancelled"), out
    finally:
        subprocess.run(["scancel", *{s.split("_")[0] for r in (first, students) for s in r["jobs"].values()}],
                       check=False)


def test_a_held_student_behind_a_failed_teacher_is_told_the_one_command_that_moves_it(slurm_cluster, tmp_path,
                                                                                      mini_mnist_env):
    """Held, and queued behind a teacher task that failed: its line gave both 'scontrol release' (which
    would leave it waiting for ever) and 'resume cancels and resubmits it'. Only the second moves it."""
    from sweep import slurm

    sweep_file, results, folder, teacher, students = _planned(tmp_path, "stranded")
    run = ["sbatch", "--parsable", "-o", "/dev/null"]
    failed = subprocess.run([*run, "-J", "stranded-first", "--wrap", "exit 1"], capture_output=True, text=True,
                            check=True).stdout.strip()
    held = subprocess.run([*run, "-H", "-J", "stranded-students", f"--dependency=afterok:{failed}",
                           "--kill-on-invalid-dep=no", "--wrap", "true"], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        slurm.add_submission(folder, "first", {teacher.id: failed}, "local-slurm", name="stranded-first")
        slurm.add_submission(folder, "students", {j.id: held for j in students}, "local-slurm",
                             name="stranded-students")
        states = wait_until(sweep_file, results, lambda st: st["teacher-s0"].state == state.FAILED)
        for j in students:
            assert states[j.name].detail == f"slurm {held}: its teacher teacher-s0 failed: never to be met; resume " \
                                            "cancels and resubmits it", states[j.name]
    finally:
        subprocess.run(["scancel", failed, held], check=False)


def test_a_results_folder_copied_while_its_arrays_run_is_not_trained_by_them(slurm_cluster, tmp_path, mini_mnist_env):
    """A copy (cp -a) took the record and the teacher's attempt.json with it: status there called the
    original's tasks its own (running, queued), resume submitted nothing, and once they ended its jobs
    read 'failed: ended without a result'. The copy's jobs are its own to run."""
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text(SWEEP.format(name="copied", teacher_epochs=3, teacher_batch=16))
    results = tmp_path / "r"
    kdsweep("run", sweep_file, "--results", results, "--profile", "local-slurm")
    teacher = next(j for j in api.plan(sweep_file).jobs if j.method == "teacher")
    try:
        wait_until(sweep_file, results, lambda st: st["teacher-s0"].state == state.RUNNING
                   and (state.job_dir(results / "copied", teacher) / "attempt.json").exists())
        copy = tmp_path / "copy"
        shutil.copytree(results, copy, symlinks=True)
        out, lines = _status_lines(sweep_file, copy)
        assert f"interrupted  its last attempt trained {state.job_dir(results / 'copied', teacher)} (this folder a " \
               "copy of it, or moved since): nothing trains it here" in lines["teacher-s0"], out
        assert all("pending" in lines[n] for n in ("kd-a0.5-T2-s0", "kd-a0.5-T4-s0")), out
        assert f"lists Slurm arrays submitted from {results / 'copied'} (this folder copied or moved since?)" in out
        out = kdsweep("resume", sweep_file, "--results", copy, "--profile", "local-slurm").stdout
        assert "submitted first array" in out and "submitted students array" in out, out
        assert _status_lines(sweep_file, results)[1]["teacher-s0"].split()[2] == "running"  # the original's, still
    finally:
        ids = {sid.split("_")[0] for root in (results, tmp_path / "copy") if (root / "copied" / "slurm").is_dir()
               for r in _submissions(root, "copied") for sid in r["jobs"].values()}
        subprocess.run(["scancel", *ids], check=False)
