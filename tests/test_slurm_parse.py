"""What sacct and squeue print, read back as job states: recorded outputs (tests/golden/), no cluster."""
import os
import re
from pathlib import Path

import pytest

from sweep import slurm

GOLDEN = Path(__file__).parent / "golden"


def test_sacct_output_as_states():
    """``sacct -n -P -X -D --format=JobID,State,ExitCode``: one line per attempt, oldest first."""
    found = slurm.parse_sacct((GOLDEN / "sacct.txt").read_text())
    assert found == {
        # a pending array is one line with its task ranges (and its %-limit)
        "4211_0": ("queued", ""), "4211_1": ("queued", ""), "4211_2": ("queued", ""), "4211_3": ("queued", ""),
        "4211_5": ("queued", ""),
        "4211_4": ("running", ""),
        "4212_0": ("running", ""),  # requeued twice, then running: the last attempt counts
        "4212_1": ("queued", ""),  # preempted, then pending again
        "4212_2": ("failed", "ended without a result"),  # a completed task whose job has no result.json
        "4212_3": ("cancelled", ""),  # "CANCELLED by <uid>"
        "4212_4": ("cancelled", ""),
        "4212_5": ("failed", "exit code 1"),
        "4212_6": ("failed", "time limit"),
        "4212_7": ("failed", "out of memory"),
        "4212_8": ("failed", "node failure"),
        "4212_9": ("running", "completing"),
        "4213": ("queued", ""),  # not an array
        "4214_12": ("queued", ""), "4214_13": ("queued", ""),
        "4214_0": ("failed", "killed by SIGKILL"),  # ExitCode 0:9: a signal, not an exit code
    }


def test_squeue_output_as_states(monkeypatch):
    """``squeue -h -r -o '%i|%t|%r|%S'``: one line per array task (-r), short state codes, the reason a
    pending job waits and its start time (a requeued job is held until its BeginTime)."""
    monkeypatch.setattr(slurm.time, "strftime", lambda fmt: "2026-11-25")  # "today" of the recording
    found = slurm.parse_squeue((GOLDEN / "squeue.txt").read_text())
    assert found == {
        "4211_0": ("queued", ""), "4211_1": ("queued", "waiting for its teacher"), "4211_4": ("running", ""),
        "4212_0": ("running", ""), "4212_1": ("queued", "requeued, held until 09:16"),
        "4212_2": ("queued", "its dependency can never be met"),
        "4212_9": ("running", ""), "4212_10": ("running", ""),  # CG completing, S suspended
        "4213": ("queued", ""), "4215_0": ("running", ""),  # CF: configuring
        # held (sbatch --hold, scontrol hold or requeuehold), and a request the partition can never run
        # (as the test cluster printed them, 2026-11-26)
        "4220": ("queued", "held: scontrol release 4220 lets it start"),
        "4221_0": ("queued", "requeued and held: scontrol release 4221_0 lets it start"),
        "4222": ("queued", "it asks more than its partition allows (cpus, gpus, memory or time) and will never "
                           "start: scancel 4222, fix the profile, then resume"),
        "4223": ("queued", "held by an administrator: scontrol release 4223 (as one) lets it start"),
        # more time than the partition's MaxTime, a drained node (the test cluster's words, Slurm 22.05);
        # the same in other versions' words, and limits of QOS and account (Slurm's documented reasons)
        "4224": ("queued", "it asks more time than its partition allows and will never start: scancel 4224, lower "
                           "the profile's time, then resume"),
        "4225_0": ("queued", "the nodes it needs are down, drained or reserved"),
        "4226": ("queued", "the nodes it needs are down, drained or reserved"),
        "4227": ("queued", "its request does not fit a limit of its QOS (QOSMaxWallDurationPerJobLimit) and will "
                           "never start: scancel 4227, fix the profile, then resume"),
        "4228": ("queued", "held back by a limit of its account (AssocGrpGRES): it starts when the account's other "
                           "jobs leave room"),
        "4229": ("queued", "its request does not fit a limit of its QOS (QOSMinCpuNotSatisfied) and will never start: "
                           "scancel 4229, fix the profile, then resume"),  # a minimum: waiting does not move it
        "4230": ("queued", "the nodes it needs are down or drained, or it asks more than its partition allows (then "
                           "scancel 4230, fix the profile, and resume)"),
    }
    assert slurm.parse_squeue("7_1|RQ\n") == {"7_1": ("queued", "")}  # the two-field form reads too


@pytest.mark.parametrize("jobid, expanded", [
    ("12_[0-3,5%2]", ["12_0", "12_1", "12_2", "12_3", "12_5"]),
    ("12_[7]", ["12_7"]),
    ("12_[8-9%1]", ["12_8", "12_9"]),
    ("12_4", ["12_4"]),
    ("13", ["13"]),
])
def test_expand_array_ranges(jobid, expanded):
    assert slurm._expand(jobid) == expanded


def test_query_asks_sacct_for_the_arrays_then_squeue_for_the_rest(tmp_path, monkeypatch):
    """Stand-ins for sacct and squeue on PATH print the recordings and note how they were called."""
    for tool, recording in (("sacct", "sacct.txt"), ("squeue", "squeue.txt")):
        script = tmp_path / tool
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/{tool}.args\ncat {GOLDEN / recording}\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    found = slurm.query(["4212_0", "4212_5", "4215_0", "4216_0"])
    assert found == {"4212_0": ("running", ""), "4212_5": ("failed", "exit code 1"), "4215_0": ("running", "")}
    assert (tmp_path / "sacct.args").read_text().split() == [
        "-n", "-P", "-X", "-D", "--format=JobID,State,ExitCode,JobName", "-j", "4212,4215,4216"]
    assert (tmp_path / "squeue.args").read_text().split() == ["-h", "-r", "-o", "%i|%t|%r|%S|%j", "-j", "4215,4216"]


def _half_submitted(tmp_path):
    """A hand-made sweep: all done but one job, which a Slurm task on node7 trains (a fresh heartbeat)."""
    import json

    from sweep import api, state
    from sweep_tables import finish, sweep_file

    f = sweep_file(tmp_path)
    plan = api.plan(f)
    folder = api.folder(plan, tmp_path / "results")
    job = plan.jobs[-1]
    finish(folder, plan, skip=(job.name,))
    slurm.add_submission(folder, "students", {job.id: "4211_0"}, "local-slurm")
    (state.job_dir(folder, job) / "attempt.json").write_text(
        json.dumps({"host": "node7", "pid": 4242, "slurm_job_id": "4211_0"}))
    return f, plan, folder, job


def test_where_slurm_cannot_be_asked_status_says_so_and_nothing_is_submitted_again(tmp_path, monkeypatch, caplog,
                                                                                    capsys):
    """No squeue or sacct here (a laptop, a node without the client): status goes by the job
    folders and says so, and a job whose task beats its heartbeat is running, not 'killed?';
    a submission refuses, where it submitted again every job Slurm still held."""
    import logging

    from kd.errors import UserError
    from sweep import api, profile, state, status, submit

    f, plan, folder, job = _half_submitted(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    with caplog.at_level(logging.WARNING, logger="sweep.status"):
        states = dict((j.id, s) for j, s in status.job_states(plan, folder))
    assert "could not ask Slurm about 1 submitted jobs (no squeue command on this machine)" in caplog.text
    assert states[job.id].state == state.RUNNING and "on node7 (heartbeat" in states[job.id].detail
    with pytest.raises(UserError, match=r"cannot ask Slurm about 1 submitted jobs of this sweep \(no squeue "
                                        r"command on this machine\): not submitting"):
        submit.submit(plan, profile.load("local-slurm"), folder)
    assert len(slurm.read_record(folder)) == 1  # nothing submitted
    # a job Slurm has queued has nothing in its folder: pending there, and resume would refuse, so the
    # next command is status where Slurm answers
    from sweep.cli import main

    (state.job_dir(folder, job) / "attempt.json").unlink()
    assert main(["status", str(f), "--results", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{len(plan.jobs) - 1}/{len(plan.jobs)} done, 1 pending  ->  kdsweep status {f} --results "
        f"{tmp_path / 'results'} where Slurm answers (the cluster's login node)")


@pytest.mark.parametrize("damage", [b'[{"level": "first", "jo', b'{"jobs": {}}', b"[1, 2]"])
def test_a_damaged_submissions_record_is_one_error_line(tmp_path, capsys, damage):
    from sweep.cli import main

    f, plan, folder, job = _half_submitted(tmp_path)
    (folder / slurm.RECORD).write_bytes(damage)
    for command in ("status", "resume"):
        assert main([command, str(f), "--results", str(tmp_path / "results")]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"error: {folder / slurm.RECORD}: damaged (") and "Traceback" not in err
        assert err[1].startswith("hint: restore it, or move it aside")


def _recorded_slurm(tmp_path, monkeypatch):
    """sacct and squeue on PATH that print the recordings (tests/golden)."""
    for tool, recording in (("sacct", "sacct.txt"), ("squeue", "squeue.txt")):
        script = tmp_path / "bin" / tool
        script.parent.mkdir(exist_ok=True)
        script.write_text(f"#!/bin/sh\ncat {GOLDEN / recording}\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")


@pytest.mark.parametrize("recorded", [("4212_0", "4212_5"), ("4212_5",)], ids=["both-recorded", "first-lost"])
def test_a_job_submitted_twice_shows_the_task_that_trains_it(tmp_path, monkeypatch, recorded):
    """A job submitted again (its submissions record lost, or Slurm's answer missed) whose second task
    found the folder locked and stood aside (failed): the first task, running and beating its
    heartbeat, is its state, not the second's failure (which also cancelled its students)."""
    import json

    from sweep import state, status

    _recorded_slurm(tmp_path, monkeypatch)
    f, plan, folder, job = _half_submitted(tmp_path)  # 4211_0, queued: replaced below
    (folder / slurm.RECORD).write_text(json.dumps([{"level": "students", "jobs": {job.id: sid}} for sid in recorded]))
    (state.job_dir(folder, job) / "attempt.json").write_text(
        json.dumps({"host": "node7", "pid": 4242, "slurm_job_id": "4212_0"}))  # the first trains it
    s = dict((j.id, s) for j, s in status.job_states(plan, folder))[job.id]
    assert s.state == state.RUNNING and s.slurm_id == "4212_0", s
    if len(recorded) == 1:
        assert re.search(r"on node7 \(heartbeat \d+ s ago\), slurm 4212_0 \(slurm 4212_5, submitted again, "
                         r"stood aside\)$", s.detail), s


def test_the_next_step_after_a_slurm_submission_names_its_profile_as_resume_takes_it(tmp_path):
    """status ends with the command that moves the sweep on; for a sweep submitted to SLURM, resume
    needs the profile again: a bundled one by name, another by its file (its own name may be none)."""
    from sweep import cli, profile

    folder = tmp_path / "results" / "s"
    assert cli._last_profile(folder) is None  # never submitted: resume runs locally
    slurm.add_submission(folder, "first", {"a": "1_0"}, "my-cluster")  # a record from before profile_file
    assert cli._last_profile(folder) == "my-cluster"
    bundled = profile.resolve_path("local-slurm")
    slurm.add_submission(folder, "first", {"a": "2_0"}, "local-slurm", bundled)
    assert cli._last_profile(folder) == "local-slurm"
    own = tmp_path / "cluster.toml"
    own.write_text('name = "my-cluster"\n')
    slurm.add_submission(folder, "first", {"a": "3_0"}, "my-cluster", own)
    assert cli._last_profile(folder) == str(own.resolve())  # its name would not find it: the file does


def _refusing_second_sbatch(tmp_path: Path, monkeypatch, **tools: str) -> None:
    """An sbatch that takes the first array and refuses the next (a QOS limit), and these other tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count = tmp_path / "sbatch-calls"
    tools = {"sbatch": f"echo x >> {count}\n"  # the first call accepted, the next refused
                       f"[ $(wc -l < {count}) = 1 ] && {{ echo 'Submitted batch job 4300'; exit 0; }}\n"
                       "echo 'sbatch: error: QOSMaxSubmitJobPerUserLimit' >&2; exit 1\n",
             "srun": "exit 0\n", **tools}
    for tool, body in tools.items():
        (bin_dir / tool).write_text("#!/bin/sh\n" + body)
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_a_refused_students_array_says_what_went_in_before_it(tmp_path, monkeypatch):
    """sbatch takes the first array (teachers) and refuses the second: the one line says the first went
    in, where it read as if nothing had been submitted."""
    from kd.errors import UserError
    from sweep import api, profile, submit
    from sweep_tables import sweep_file

    _refusing_second_sbatch(tmp_path, monkeypatch)
    plan = api.plan(sweep_file(tmp_path, seeds=(0,)))
    with pytest.raises(UserError) as e:
        submit.submit(plan, profile.load("local-slurm"), api.folder(plan, tmp_path / "results"))
    assert str(e.value) == ("sbatch refused the students array: sbatch: error: QOSMaxSubmitJobPerUserLimit (submitted "
                            "before it: first array 4300 (2 tasks); resume submits the rest once this is fixed)")
    slurm_dir = api.folder(plan, tmp_path / "results") / "slurm"
    # the refused array's pickles and script are gone; the first's are in its folder, its script linked
    assert sorted(f.name for f in slurm_dir.iterdir() if f.is_file() and not f.is_symlink()) == ["submissions.json"]
    assert sorted(f.name for f in slurm_dir.glob("4300_*/*.pkl")) == ["4300_0_submitted.pkl", "4300_1_submitted.pkl"]


def test_a_refused_students_array_also_says_which_queued_students_it_cancelled(tmp_path, monkeypatch):
    """Resume cancels students queued behind a failed teacher, then sbatch refuses their new array:
    the line said nothing of the cancelled ones, which Slurm no longer holds."""
    from kd.errors import UserError
    from sweep import api, profile, submit
    from sweep_tables import sweep_file

    plan = api.plan(sweep_file(tmp_path, seeds=(0,)))
    folder = api.folder(plan, tmp_path / "results")
    teacher, scratch, *students = plan.jobs
    bundled = profile.resolve_path("local-slurm")
    slurm.add_submission(folder, "first", {teacher.id: "4100_0", scratch.id: "4100_1"}, "local-slurm", bundled)
    slurm.add_submission(folder, "students", {j.id: "4101_0" for j in students}, "local-slurm", bundled)
    cancelled = tmp_path / "scancel-args"
    _refusing_second_sbatch(tmp_path, monkeypatch,  # the teacher failed; its students' task waits for it
                            sacct="printf '4100_0|FAILED|1:0\\n4100_1|FAILED|1:0\\n4101_0|PENDING|0:0\\n'\n",
                            squeue="echo '4101_0|PD|DependencyNeverSatisfied|N/A'\n",
                            scancel=f'echo "$@" > {cancelled}\n')
    with pytest.raises(UserError) as e:
        submit.submit(plan, profile.load("local-slurm"), folder)
    assert cancelled.read_text().split() == ["4101_0"]
    assert str(e.value) == ("sbatch refused the students array: sbatch: error: QOSMaxSubmitJobPerUserLimit (cancelled "
                            "before it: 4 students queued behind a failed teacher; submitted before it: first array 4300 (2 "
                            "tasks); resume submits the rest once this is fixed)")


def test_lines_of_a_job_of_another_name_are_not_the_recorded_ids():
    """sacct and squeue lines name each job: an id whose line names another job than the one it was
    submitted under is that job's (Slurm gave the id again), not this sweep's."""
    names = {"12_0": "mine-first", "12_1": "mine-first", "13": "mine-students"}
    sacct = "12_[0-1]|PENDING|0:0|someone-elses\n13|RUNNING|0:0|mine-students\n14|FAILED|1:0|a|b\n"
    assert slurm.parse_sacct(sacct, names) == {"13": ("running", ""), "14": ("failed", "exit code 1")}
    assert slurm.parse_sacct(sacct) == {"12_0": ("queued", ""), "12_1": ("queued", ""), "13": ("running", ""),
                                        "14": ("failed", "exit code 1")}  # nothing to check against
    squeue = "12_0|PD|Dependency|N/A|mine-first\n13|R|None|2026-11-27T06:00:00|other\n"
    assert slurm.parse_squeue(squeue, names) == {"12_0": ("queued", "waiting for its teacher")}


@pytest.mark.parametrize("jobs, why", [
    ('{"x": 5}', "'x': 5 is not a Slurm job id"),
    ('{"x": "12_a"}', "'x': '12_a' is not a Slurm job id"),
    ('{"x": null}', "'x': None is not a Slurm job id"),
])
def test_a_record_whose_ids_are_not_slurm_ids_is_damaged_in_one_line(tmp_path, jobs, why):
    from kd.errors import UserError

    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "submissions.json").write_text(f'[{{"jobs": {jobs}}}]')
    with pytest.raises(UserError, match=f"submissions.json: damaged \\({why}"):
        slurm.read_record(tmp_path)


def test_arrays_in_the_queue_that_the_record_lacks_are_found_by_their_scripts_and_tasks(tmp_path, monkeypatch):
    """squeue --me lists every array submitted from the sweep's folder (%F: the array's id on each
    line, a running task's too); its tasks' submitit files name the job folders. Arrays recorded,
    or of another folder, are not listed."""
    from submitit.core.utils import DelayedSubmission

    folder = tmp_path / "r" / "s"
    for task, jobs in (("90_0", ["aaa"]), ("90_1", ["bbb", "ccc"]), ("91", ["ddd"])):
        (folder / "slurm" / task).mkdir(parents=True)
        DelayedSubmission(print, [str(folder / "jobs" / j) for j in jobs], None).dump(
            folder / "slurm" / task / f"{task}_submitted.pkl")
    script = f"{folder}/slurm/.submission_file_1.sh"
    queue = (f"90|90_0|s-students|{tmp_path}|{script}\n90|90_1|s-students|{tmp_path}|{script}\n"
             f"91|91|s-first|{tmp_path}|r/s/slurm/.submission_file_2.sh\n"  # relative to its working directory
             f"92|92_0|other|{tmp_path}|/elsewhere/slurm/.submission_file_3.sh\n")
    (tmp_path / "queue.txt").write_text(queue)
    stand_in = tmp_path / "bin" / "squeue"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/squeue.args\ncat {tmp_path}/queue.txt\n')
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stand_in.parent}:{os.environ['PATH']}")
    assert slurm.unrecorded(folder) == {"90": ("s-students", {"aaa": "90_0", "bbb": "90_1", "ccc": "90_1"}, []),
                                        "91": ("s-first", {"ddd": "91"}, [])}
    assert (tmp_path / "squeue.args").read_text().split() == ["--me", "-h", "-r", "-o", "%F|%i|%j|%Z|%o"]
    slurm.add_submission(folder, "first", {"ddd": "91"}, "local-slurm", name="s-first")
    assert list(slurm.unrecorded(folder)) == ["90"]
    (folder / "slurm" / "90_1" / "90_1_submitted.pkl").unlink()  # what it trains is unknown now
    assert slurm.unrecorded(folder) == {"90": ("s-students", {"aaa": "90_0"}, ["90_1"])}


@pytest.mark.parametrize("log, said", [
    ("submitit INFO (2026-11-27 09:15:34,500) - Starting with JobEnvironment(job_id=4_0, hostname=vm)\n"
     "submitit ERROR (2026-11-27 09:15:34,624) - Submitted job triggered an exception\n"
     "Traceback (most recent call last):\n  File \"<frozen runpy>\", line 198, in _run_module_as_main\n"
     "    return _run_code(code, main_globals, None,\n  File \"/usr/lib/python3/submitit/core/_submit.py\", line 11\n"
     "ModuleNotFoundError: No module named 'sweep'\nsrun: error: vm: task 0: Exited with exit code 1\n",
     "ModuleNotFoundError: No module named 'sweep'"),  # an image without the project: the exception, not submitit's line
    ("/usr/bin/python3: No module named submitit\nsrun: error: vm: task 0: Exited with exit code 1\n",
     "/usr/bin/python3: No module named submitit"),  # a python without the project's packages
    ("slurmstepd-vm: error: execve(): /nonexistent/python3: No such file or directory\n",
     "slurmstepd-vm: error: execve(): /nonexistent/python3: No such file or directory"),
    ("12:00:01.000 I kd.train: epoch 1/3\nsrun: error: vm: task 0: Killed\n", "srun: error: vm: task 0: Killed"),
])
def test_a_tasks_log_says_why_it_failed_in_one_line(tmp_path, log, said):
    from sweep import status

    (tmp_path / "slurm" / "4_0").mkdir(parents=True)
    (tmp_path / "slurm" / "4_0" / "4_0_0_log.out").write_text(log)
    assert status.task_log_error(tmp_path, "4_0") == f"{said} ({tmp_path / 'slurm' / '4_0' / '4_0_0_log.out'})"
    assert bool(status.KILLED.search(said)) == said.endswith("Killed")


def test_a_student_whose_teacher_is_done_but_whose_task_was_requeued_says_what_it_waits_for(tmp_path, monkeypatch):
    """A teacher's task requeued after it wrote its result (scontrol requeue, a node failure) sits
    held until its BeginTime: its students said 'waiting for its teacher' of a teacher that is done."""
    import json

    from sweep import api, state, status
    from sweep_tables import finish, sweep_file

    plan = api.plan(sweep_file(tmp_path, "rq", (0,)))
    folder = tmp_path / "r" / "rq"
    students = tuple(j.name for j in plan.jobs if j.method == "kd")
    finish(folder, plan, skip=students)
    first = {j.id: f"50_{i}" for i, j in enumerate(j for j in plan.jobs if not j.depends_on)}
    second = {j.id: "51_0" for j in plan.jobs if j.depends_on}
    (folder / "slurm").mkdir()
    (folder / slurm.RECORD).write_text(json.dumps([{"level": "first", "jobs": first}, {"level": "students", "jobs": second}]))
    teacher = next(j for j in plan.jobs if j.method == "teacher")
    monkeypatch.setattr(slurm, "query", lambda sids, names=None: {
        **{sid: ("queued", "requeued, held until 12:00") for sid in first.values()},
        "51_0": ("queued", "waiting for its teacher")})
    states = {j.name: s for j, s in status.job_states(plan, folder)}
    assert states["teacher-s0"].state == state.DONE
    s = states[students[0]]
    assert (s.state, s.detail) == (state.QUEUED, f"slurm 51_0: waiting for its teacher's task to end (teacher-s0 "
                                                 f"done; slurm {first[teacher.id]} still in Slurm's queue: requeued, "
                                                 "or ending)"), s


def test_a_kill_after_a_handled_traceback_is_what_the_task_died_of(tmp_path):
    from sweep import status

    (tmp_path / "slurm" / "7_0").mkdir(parents=True)
    (tmp_path / "slurm" / "7_0" / "7_0_0_log.out").write_text(
        "Traceback (most recent call last):\n  File \"x.py\", line 1\nOSError: a retried read\n"
        "12:00:01.000 I kd.train: epoch 2/3\nsrun: error: vm: task 0: Killed\n")
    assert status.task_log_error(tmp_path, "7_0").startswith("srun: error: vm: task 0: Killed (")
