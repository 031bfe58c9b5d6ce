"""The local scheduler's rules (sweep.local.run), with stand-in processes: no torch, no training.

``local._start`` is replaced by a process that waits for its teachers' results (as a unit
started early does), sleeps a moment, then writes each job's result.json, or exits 1.
"""
import json
import re
import subprocess
import sys

import pytest

from sweep import local, plan as planner, spec, state

STAND_IN = r"""
import json, pathlib, sys, time
a = json.loads(sys.argv[1])
deadline = time.monotonic() + 20
while not all(pathlib.Path(d, "result.json").exists() for d in a["after"]):
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.01)
time.sleep(a["seconds"])
if a["fail"]:
    sys.exit(1)
for d in a["dirs"]:  # a result of the job's own settings, as kd.train writes it
    config = json.loads(pathlib.Path(d, "config.json").read_text())["config"]
    if config["method"] == "teacher":  # the weights its students read
        pathlib.Path(d, "model.pt").write_bytes(b"weights")
    result = {"config": config, "metrics": {"test_accuracy": 0.5}, "history": [{}]}
    pathlib.Path(d, "result.json").write_text(json.dumps(result))
"""


class StandIn:
    """Starts stand-in processes in place of ``local._start``; remembers what it started."""

    def __init__(self):
        self.starts = []  # (job names, names of the teacher folders it waits for, process)
        self.fail = set()  # names of jobs whose unit exits 1

    def __call__(self, members, after, *, folder, pool):
        arg = {"dirs": [str(state.job_dir(folder, j)) for j in members], "after": [str(a) for a in after],
               "seconds": 0.3 if members[0].method == "teacher" else 0.1,
               "fail": bool({j.name for j in members} & self.fail)}
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN, json.dumps(arg)])
        self.starts.append(([j.name for j in members], [a.name for a in after], proc))
        return proc


@pytest.fixture
def stand_in(monkeypatch):
    s = StandIn()
    monkeypatch.setattr(local, "_start", s)
    yield s
    for _, _, proc in s.starts:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _plan(methods=("kd",)):
    """teacher-s0, teacher-s1 (and scratch-s0, scratch-s1), kd-a0.5-T4-s0, kd-a0.5-T4-s1."""
    return planner.plan(spec.parse({"name": "s", "dataset": "mnist-5k", "methods": list(methods),
                                    "grid": {"alpha": [0.5], "temperature": [4], "seed": [0, 1]}}))


def _run(plan, folder, jobs, pack=1):
    """local.run; returns its summary, its events (job name, state, detail) and the most units it ran at once."""
    events, live, most = [], set(), 0

    def on_event(e):
        nonlocal most
        events.append((e.job.name, e.state, e.detail))
        (live.add if e.state == "started" else live.discard)(e.job.name)
        most = max(most, len(live))

    summary = local.run(plan, folder, jobs=jobs, pack=pack, on_event=on_event, poll=0.01)
    return summary, events, most


def test_jobs_limit_and_early_start(tmp_path, stand_in):
    plan = _plan()
    summary, events, most = _run(plan, tmp_path, jobs=3)
    assert most == 3 and len(summary.done) == 4 and not summary.failed + summary.skipped
    # both teachers need nothing and go first; the third place goes to a student whose teacher
    # trains here (it waits for its result); the other student starts when a place is free
    (t0, _, _), (t1, _, _), (s0, after0, _), (s1, _, _) = stand_in.starts
    assert t0 + t1 == ["teacher-s0", "teacher-s1"]
    assert s0 == ["kd-a0.5-T4-s0"] and after0 == [plan.jobs[0].id] and s1 == ["kd-a0.5-T4-s1"]


def test_ready_units_go_before_early_ones(tmp_path, stand_in):
    plan = _plan(["kd", "scratch"])
    assert [j.name for j in plan.jobs][2:] == ["kd-a0.5-T4-s0", "kd-a0.5-T4-s1", "scratch-s0", "scratch-s1"]
    summary, events, most = _run(plan, tmp_path, jobs=3)
    # a student from scratch can train now; a kd student would only wait for its teacher
    assert [names[0] for names, _, _ in stand_in.starts][:3] == ["teacher-s0", "teacher-s1", "scratch-s0"]
    assert most == 3 and len(summary.done) == 6


def test_a_failed_teacher_skips_its_students_and_stops_those_waiting(tmp_path, stand_in):
    stand_in.fail.add("teacher-s0")
    summary, events, most = _run(_plan(), tmp_path, jobs=4)
    assert [names for names, _, _ in stand_in.starts] == [["teacher-s0"], ["teacher-s1"], ["kd-a0.5-T4-s0"],
                                                         ["kd-a0.5-T4-s1"]]  # the students started early
    assert ("teacher-s0", "failed", "exit status 1") in events
    assert ("kd-a0.5-T4-s0", "skipped", "its teacher did not finish") in events  # stopped while it waited
    assert stand_in.starts[2][2].returncode < 0  # by a signal, not by its own deadline
    names = {j.id: j.name for j in _plan().jobs}
    assert [names[i] for i in summary.done] == ["teacher-s1", "kd-a0.5-T4-s1"]


def test_a_pack_runs_without_the_students_whose_teacher_failed(tmp_path, stand_in, monkeypatch):
    plan = _plan()
    t0, t1, s0, s1 = plan.jobs
    monkeypatch.setattr(local, "units", lambda plan, pack, device_kind: [(t0,), (t1,), (s0, s1)])  # one pack, two teachers
    stand_in.fail.add("teacher-s0")
    summary, events, _ = _run(plan, tmp_path, jobs=1)
    assert [(names, after) for names, after, _ in stand_in.starts] == [
        (["teacher-s0"], []), (["teacher-s1"], []), (["kd-a0.5-T4-s1"], [])]
    assert summary.done == [t1.id, s1.id] and summary.failed == [t0.id] and summary.skipped == [s0.id]


def test_jobs_running_elsewhere_are_skipped_with_their_students(tmp_path, stand_in):
    plan = _plan()
    teacher = state.job_dir(tmp_path, plan.jobs[0])
    teacher.mkdir(parents=True)
    (teacher / "attempt.json").write_text(json.dumps({"host": "another-host", "pid": 1}))
    summary, events, _ = _run(plan, tmp_path, jobs=2)
    assert ("teacher-s0", "skipped", "already running (pid 1 on another-host (heartbeat 0 s ago))") in events
    assert ("kd-a0.5-T4-s0", "skipped", "its teacher did not finish") in events
    assert [names for names, _, _ in stand_in.starts] == [["teacher-s1"], ["kd-a0.5-T4-s1"]]


def test_an_interrupted_run_stops_its_children(tmp_path, stand_in, monkeypatch):
    def interrupt(e):
        if len(stand_in.starts) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        local.run(_plan(), tmp_path, jobs=2, pack=1, on_event=interrupt, poll=0.01)
    assert len(stand_in.starts) == 2
    assert all(proc.returncode is not None and proc.returncode < 0 for _, _, proc in stand_in.starts)


def test_the_run_prints_no_time_for_a_student_that_never_trained(tmp_path, stand_in, capsys):
    from sweep.cli import main

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["kd"]\n'
                          '[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0, 1]\n')
    stand_in.fail.add("teacher-s0")
    assert main(["-q", "run", str(sweep_file), "--results", str(tmp_path / "r"), "-j", "4", "--pack", "1"]) == 1
    out = capsys.readouterr().out
    assert stand_in.starts[2][0] == ["kd-a0.5-T4-s0"]  # it started early, waited for its teacher, was stopped
    (line,) = [x for x in out.splitlines() if x.startswith("skipped")]
    assert line.endswith(" kd-a0.5-T4-s0: its teacher did not finish"), out  # not "after 0 s": it never trained


def test_the_next_command_names_the_data_root_the_sweep_ran_with(tmp_path, stand_in, capsys):
    from sweep.cli import main

    sweep_file, results, root = tmp_path / "s.toml", tmp_path / "r", tmp_path / "my data"
    sweep_file.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["kd"]\n'
                          '[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0]\n')
    root.mkdir()
    stand_in.fail.add("teacher-s0")
    assert main(["-q", "run", str(sweep_file), "--results", str(results), "--data-root", str(root)]) == 1
    hint = f"  ->  kdsweep resume {sweep_file} --results {results} --data-root '{root}'"
    assert capsys.readouterr().out.splitlines()[-1].endswith(hint)
    # another shell in another folder, days later: status reads the data root from the sweep's plan.json;
    # and the run's process (this test's, as a notebook's api.run) lives on, done: no run holds the sweep
    status = subprocess.run([sys.executable, "-m", "sweep.cli", "status", str(sweep_file), "--results", str(results)],
                            capture_output=True, text=True, cwd="/")
    assert status.stdout.splitlines()[-1] == "0/2 done, 1 failed, 1 pending" + hint, status.stdout + status.stderr


@pytest.mark.parametrize("kwargs, why", [
    ({"jobs": 0}, "jobs: 0 must be a whole number >= 1"), ({"jobs": -1}, "jobs: -1 must be a whole number >= 1"),
    ({"jobs": "2"}, "jobs: '2' must be a whole number >= 1"),
    ({"pack": 0}, "pack: 0 must be \"auto\" or a number of jobs >= 1"), ({"pack": "x"}, "pack: 'x' must be"),
    ({"device": "tpu"}, "device: 'tpu' is not a device"),
])
def test_api_run_refuses_bad_arguments_before_any_work(tmp_path, stand_in, kwargs, why):
    """As the CLI's flags are: a notebook's api.run(jobs=0) divided by zero, jobs=-1 trained the teachers
    and then could schedule nothing, pack=0 ran, device='tpu' failed in every job."""
    from kd.errors import UserError
    from sweep import api

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["kd"]\n'
                          '[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0]\n')
    with pytest.raises(UserError, match=re.escape(why)):
        api.run(sweep_file, results_root=tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists() and not stand_in.starts


def test_a_data_root_from_the_environment_is_named_as_the_given_one(tmp_path, stand_in, capsys, monkeypatch):
    """KDSWEEP_DATA in the shell that ran it: a shell without it would resume from the default root."""
    from sweep.cli import main

    sweep_file, results, root = tmp_path / "s.toml", tmp_path / "r", tmp_path / "data"
    sweep_file.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["kd"]\n'
                          '[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0]\n')
    root.mkdir()
    monkeypatch.setenv("KDSWEEP_DATA", str(root))
    stand_in.fail.add("teacher-s0")
    assert main(["-q", "run", str(sweep_file), "--results", str(results)]) == 1
    monkeypatch.delenv("KDSWEEP_DATA")
    capsys.readouterr()
    assert main(["status", str(sweep_file), "--results", str(results)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"--results {results} --data-root {root}")


def test_status_during_a_run_names_the_jobs_of_an_edited_file_that_the_run_will_not_start(tmp_path, capsys):
    import os
    import socket

    from sweep import api
    from sweep.cli import main

    sweep_file, results = tmp_path / "s.toml", tmp_path / "r"
    text = 'name = "s"\ndataset = "mnist-5k"\nmethods = ["kd"]\n[grid]\nalpha = [0.5]\ntemperature = [4]\nseed = [0]\n'
    sweep_file.write_text(text)
    folder = api.folder(api.plan(sweep_file), results)
    folder.mkdir(parents=True)
    state.write_plan(folder, api.plan(sweep_file))  # as a run writes it, holding the sweep's lock: this process
    (folder / ".lock").write_text(f"pid {os.getpid()} on {socket.gethostname()} since {state._process_start(os.getpid())}")
    sweep_file.write_text(text.replace("alpha = [0.5]", "alpha = [0.5, 0.7]"))  # edited while it runs
    assert main(["status", str(sweep_file), "--results", str(results)]) == 0
    note = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("note: a 'kdsweep run'"))
    assert note.endswith("its pending jobs are its to start, but for 1 job it does not plan (the file changed since "
                         "it started: kd-a0.7-T4-s0): resume them once it ends"), note


def test_a_pack_members_damaged_checkpoint_is_said_on_its_own_done_line(tmp_path):
    """A pack logs into its first member's log: the note went to the first member whoever's
    checkpoint was damaged, and never to the member that trained over."""
    from sweep_tables import sweep_file
    from sweep import api

    plan = api.plan(sweep_file(tmp_path))
    folder = tmp_path / "r" / "hand"
    state.write_plan(folder, plan)
    first, second = [j for j in plan.jobs if j.method == "kd"][:2]
    unit = local._Unit([first, second])
    log = state.job_dir(folder, first) / "log"
    log.write_text("=== 2026-11-27 07:00:00 an earlier attempt\nW checkpoint "
                   f"{state.job_dir(folder, first)}/checkpoint.pt is damaged (x): starting this job over\n"
                   f"=== 2026-11-27 08:00:00 this one\nW checkpoint {state.job_dir(folder, second)}/checkpoint.pt "
                   "is damaged (UnpicklingError: ...): starting this job over\n")
    assert local._started_over(folder, unit, first) == ""  # its own warning was an earlier attempt's
    assert local._started_over(folder, unit, second) == ("its checkpoint was damaged: trained from the start (its "
                                                         "log says how)")
