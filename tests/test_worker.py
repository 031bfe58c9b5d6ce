"""One job folder, one writer; heartbeats of running attempts; a damaged result is no result."""
import json
import os
import fcntl
import subprocess
import sys
import time

from kd import sealed
from sweep import state

WHOLE_CHECKPOINT = sealed.dumps({"epoch": 1, "step": 0})  # as kd.train writes one: a sealed torch zip


def _folder(tmp_path):
    folder = tmp_path / "jobs" / "abc"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"id": "abc", "name": "scratch-s0", "config": {
        "dataset": "mnist-5k", "method": "scratch", "epochs": 1, "batch_size": 500}}))
    return folder


def test_a_second_worker_on_a_locked_job_folder_waits_then_refuses(tmp_path):
    folder = _folder(tmp_path)
    (folder / "attempt.json").write_text(json.dumps({"host": "node7", "pid": 1}))
    with open(folder / ".lock", "a+") as held:  # another process trains this job
        fcntl.lockf(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "sweep.worker", str(folder)], capture_output=True, text=True,
                           env={**os.environ, "KDSWEEP_LOCK_WAIT": "1.5"})
        waited = time.monotonic() - t0
    assert p.returncode == 2 and waited >= 1.5
    assert p.stderr.strip().splitlines()[-1] == (f"error: {folder}: another process trains this job (node7); "
                                                 "not starting a second one")
    assert not (folder / "error.json").exists()  # the job is not failed: it runs elsewhere
    assert json.loads((folder / "attempt.json").read_text()) == {"host": "node7", "pid": 1}  # untouched


def test_a_silent_attempt_on_another_host_becomes_interrupted(tmp_path):
    folder = _folder(tmp_path)
    (folder / "attempt.json").write_text(json.dumps({"host": "node7", "pid": 4242}))
    s = state.job_state(folder)
    assert s.state == state.RUNNING and "on node7 (heartbeat" in s.detail
    old = time.time() - state.STALE_S - 5
    os.utime(folder / "attempt.json", (old, old))
    s = state.job_state(folder)
    assert s.state == state.INTERRUPTED and s.detail.startswith("no heartbeat from pid 4242 on node7 for 3 min")
    assert s.detail.endswith("taken for dead; no checkpoint: resume starts it over")
    (folder / "checkpoint.pt").write_bytes(b"a checkpoint, cut short")
    assert state.job_state(folder).detail.endswith("taken for dead; its checkpoint is cut short: resume starts it over")
    (folder / "checkpoint.pt").write_bytes(WHOLE_CHECKPOINT)
    assert state.job_state(folder).detail.endswith("taken for dead; resume continues from its checkpoint")


def test_a_job_stopped_before_its_first_step_says_resume_starts_it(tmp_path):
    """A student stopped while it waited for its teacher has no checkpoint: status must not claim one."""
    folder = _folder(tmp_path)
    (folder / "attempt.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "slurm_job_id": "7",
                                                     "stopped": "SIGTERM"}))
    assert state.job_state(folder).detail == "stopped by SIGTERM, no checkpoint: resume starts it over"
    (folder / "checkpoint.pt").write_bytes(WHOLE_CHECKPOINT)
    assert state.job_state(folder).detail == "stopped by SIGTERM, checkpointed: resume continues it"
    (folder / "checkpoint.pt").write_bytes(WHOLE_CHECKPOINT[:-30])  # a copy cut short: not what resume continues
    assert state.job_state(folder).detail == "stopped by SIGTERM, its checkpoint is cut short: resume starts it over"


def test_a_job_whose_attempt_record_is_damaged_or_gone_is_not_called_pending(tmp_path):
    """It began (its attempt.json was written first, or it has a checkpoint): "pending" would say it never did."""
    folder = _folder(tmp_path)
    assert state.job_state(folder).state == state.PENDING
    (folder / "attempt.json").write_text('{"host": "node7", "pi')  # a disk's damage, a hand's edit
    s = state.job_state(folder)
    assert (s.state, s.detail) == (state.INTERRUPTED, "attempt.json unreadable (who ran it, and how it ended, "
                                                      "unknown); no checkpoint: resume starts it over")
    (folder / "checkpoint.pt").write_bytes(WHOLE_CHECKPOINT)
    assert state.job_state(folder).detail.endswith("unknown); resume continues from its checkpoint")
    (folder / "attempt.json").unlink()
    s = state.job_state(folder)
    assert (s.state, s.detail) == (state.INTERRUPTED, "attempt.json missing (who ran it, and how it ended, "
                                                      "unknown); resume continues from its checkpoint")


def test_heartbeat_touches_the_attempt(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    (folder / "attempt.json").write_text("{}")
    os.utime(folder / "attempt.json", (0, 0))
    monkeypatch.setattr(state, "HEARTBEAT_S", 0.05)
    stop = state.heartbeat([folder])
    time.sleep(0.3)
    stop()
    assert time.time() - (folder / "attempt.json").stat().st_mtime < 5


def test_a_damaged_result_is_a_damaged_job(tmp_path):
    folder = _folder(tmp_path)
    for damage in (b"\x00\xffgarbage", b'{"config": {}, "metr', b"{}"):
        (folder / "result.json").write_bytes(damage)
        s = state.job_state(folder)
        assert s.state == state.DAMAGED and "resume keeps result.json aside and reruns the job" in s.detail


def test_a_file_where_a_folder_belongs_is_a_damaged_job_and_stops_a_resume_before_it_writes(tmp_path):
    """result.json a folder, a job's folder a file, jobs/ a file: status names the thing in one line,
    never a traceback; resume (write_plan) refuses before it writes anything, naming the file."""
    import pytest

    from kd import results
    from sweep import api
    from kd.errors import UserError

    folder = _folder(tmp_path)
    (folder / "result.json").mkdir()
    s = state.job_state(folder)
    assert (s.state, s.detail) == (state.DAMAGED, "result.json unreadable (a folder, not a file): resume keeps "
                                                  "result.json aside and reruns the job")
    aside = results.keep_aside(folder / "result.json")  # as resume does: a folder moves aside as a file does
    assert aside.is_dir() and not (folder / "result.json").exists()
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    plan = api.plan(sweep_file)
    sweep = tmp_path / "s"
    job = state.job_dir(sweep, plan.jobs[0])
    job.parent.mkdir(parents=True)
    for bad in (job, job.parent):
        if bad.is_dir():
            bad.rmdir()
        bad.write_text("x")
        s = state.job_state(job)
        assert (s.state, s.detail) == (state.DAMAGED, f"{bad} is a file, not a folder: move it away, then resume")
        with pytest.raises(results.DamagedResult, match=f"{bad} is a file, not a folder"):
            results.read(job / "result.json")  # collect reads it so
        with pytest.raises(UserError, match=f"^{bad}: a file where job scratch-s0's folder belongs$"):
            state.write_plan(sweep, plan)
        assert not (sweep / "plan.json").exists()  # nothing written
        bad.unlink()
        job.parent.mkdir(exist_ok=True)
    state.write_plan(sweep, plan)
    assert state.job_state(job).state == state.PENDING


def test_a_result_of_another_job_is_a_damaged_job_not_done(tmp_path):
    """A result.json copied from another job's folder must not make this job 'done' under another
    job's numbers: it is damaged, and the settings that differ are named."""
    folder = _folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())["config"]
    result = {"config": config, "metrics": {"test_accuracy": 0.9}, "history": [{"epoch": 1}]}
    (folder / "result.json").write_text(json.dumps(result))
    assert state.job_state(folder).state == state.DONE
    (folder / "result.json").write_text(json.dumps({**result, "config": {**config, "epochs": 3}}))
    s = state.job_state(folder)
    assert s.state == state.DAMAGED
    assert s.detail == ("result.json holds another job's result (epochs 3, not 1): "
                        "resume keeps result.json aside and reruns the job")


def test_a_teacher_whose_model_is_damaged_is_trained_again_with_its_student_in_one_resume(tmp_path,
                                                                                          mini_mnist_env):
    """A finished teacher's model.pt deleted or cut short makes the teacher damaged (by its size, which
    result.json records: status only stats it); bytes overwritten in place are found by its student
    (by the SHA-256 result.json records), which hands the teacher back: failed, with why. Each case
    ends in one resume with every job done, and nothing done trained twice."""
    from sweep import api
    from sweep.cli import main

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndataset = "mnist"\nmethods = ["teacher", "scratch", "kd"]\n'
                          "[train]\nepochs = 1\nbatch_size = 100\n[grid]\nalpha = [0.5, 0.9]\ntemperature = [4]\n")
    results = tmp_path / "r"
    args = [str(sweep_file), "--results", str(results), "--pack", "1"]  # two student units, one after the other
    assert main(["-q", "run", *args]) == 0
    teacher, scratch, *students = (state.job_dir(results / "s", j) for j in api.plan(sweep_file).jobs)
    states = lambda: [(s.state, s.detail) for _, s in api.status(sweep_file, results_root=results)]  # noqa: E731
    untouched = (scratch / "result.json").stat().st_mtime_ns
    for damage in ("deleted", "cut", "overwritten"):
        for student in students:
            (student / "result.json").unlink()
        model = teacher / "model.pt"
        data = model.read_bytes()
        record = json.loads((teacher / "result.json").read_text())["model_file"]
        assert record["bytes"] == len(data)
        half = len(data) // 2
        if damage == "deleted":
            model.unlink()
        else:
            model.write_bytes(data[:1000] if damage == "cut" else data[:half] + b"\0" * 64 + data[half + 64:])
        if damage == "overwritten":
            assert states()[0] == (state.DONE, "")  # a stat cannot tell: the student's check does
            assert main(["-q", "resume", *args]) == 1
            (t_state, t_why), _, (s_state, s_why), (later, later_why) = states()
            assert t_state == state.FAILED and "its SHA-256 differs from the one its result.json records" in t_why
            assert t_why.endswith("resume trains it again") and "found by a student" in t_why
            assert s_state == state.FAILED and f"{model} is damaged" in s_why
            # the next student does not train on the damaged file (it would end 'done', never to run again)
            assert later == state.FAILED and "it has not been trained again since" in later_why, later_why
        else:
            why = "model.pt missing" if damage == "deleted" else f"model.pt has 1,000 bytes where {len(data):,} were"
            assert states()[0][0] == state.DAMAGED and states()[0][1].startswith(why)
        assert main(["-q", "resume", *args]) == 0
        assert [s for s, _ in states()] == [state.DONE] * 4
        assert (scratch / "result.json").stat().st_mtime_ns == untouched
        assert len(list(teacher.glob("result.json.damaged-*"))) == 1  # the teacher's old result, kept
        for kept in teacher.glob("result.json.damaged-*"):
            kept.unlink()


def test_a_damaged_result_shows_damaged_and_resume_reruns_only_that_job(tmp_path, mini_mnist_env):
    from sweep.cli import main

    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('name = "s"\ndataset = "mnist"\nmethods = ["scratch"]\n'
                          "[train]\nepochs = 1\nbatch_size = 100\n[grid]\nseed = [0, 1]\n")
    results = tmp_path / "r"
    args = [str(sweep_file), "--results", str(results)]
    assert main(["-q", "run", *args, "--pack", "1"]) == 0
    from sweep import api

    damaged, intact = (state.job_dir(results / "s", j) for j in api.plan(sweep_file).jobs)
    (damaged / "result.json").write_bytes(b'{"config": {"dataset": "mni')  # truncated by a full disk
    untouched = (intact / "result.json").stat().st_mtime_ns
    assert [s.state for _, s in api.status(sweep_file, results_root=results)] == [state.DAMAGED, state.DONE]
    assert main(["-q", "resume", *args, "--pack", "1"]) == 0
    assert [s.state for _, s in api.status(sweep_file, results_root=results)] == [state.DONE, state.DONE]
    assert (intact / "result.json").stat().st_mtime_ns == untouched  # nothing finished runs twice
    (kept,) = damaged.glob("result.json.damaged-*")
    assert kept.read_bytes() == b'{"config": {"dataset": "mni'


def test_a_write_cut_by_a_kill_leaves_no_stray_file_once_the_job_runs_again(tmp_path):
    folder = _folder(tmp_path)
    stray = folder / ".tmp-checkpoint.pt.k1ll3d"  # what a SIGKILL in the middle of a checkpoint write leaves
    stray.write_bytes(b"PK\x03\x04 half a checkpoint")
    p = subprocess.run([sys.executable, "-m", "sweep.worker", str(folder), "--device", "cpu"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    assert state.job_state(folder).state == state.DONE and not stray.exists()


def test_a_long_lived_worker_loads_its_dataset_once_for_the_units_that_use_it(monkeypatch, mini_mnist):
    from kd import data as kd_data
    from sweep import worker

    loads, load = [], kd_data.load
    monkeypatch.setattr(kd_data, "load", lambda name, root=None: loads.append(name) or load(name, root))
    monkeypatch.setattr(worker, "_LOADED", {})
    first = worker._dataset("mnist", mini_mnist)
    assert worker._dataset("mnist", mini_mnist) is first and loads == ["mnist"]
    other = worker._dataset("mnist-5k", None)  # another dataset replaces it: one kept at a time
    assert len(other.train_y) == 4000 and worker._dataset("mnist-5k", None) is other
    assert worker._dataset("mnist", mini_mnist) is not first and loads == ["mnist", "mnist-5k", "mnist"]


def test_job_files_of_another_shape_are_damaged_not_a_traceback(tmp_path):
    """JSON that is not an object (a list, a number) or a pid that is not one: what a file cut or
    overwritten leaves, read as missing, as a file that is not JSON is."""
    import socket

    folder = _folder(tmp_path)
    for attempt in ("[]", "1", '"x"'):  # no attempt to read, but one was made: not pending
        (folder / "attempt.json").write_text(attempt)
        s = state.job_state(folder)
        assert s.state == state.INTERRUPTED and s.detail.startswith("attempt.json unreadable"), attempt
    for pid in ("abc", True, -1):  # an attempt here whose process cannot be running: it ended unfinished
        (folder / "attempt.json").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
        s = state.job_state(folder)
        assert s.state == state.INTERRUPTED and s.detail.startswith("the process ended without a result"), pid
    (folder / "error.json").write_text("[]")
    assert state.job_state(folder).state == state.INTERRUPTED


def test_a_finished_students_model_file_cut_short_or_gone_is_damaged(tmp_path):
    """Its result records model.pt's size: a student whose model is gone is not 'done' (a user
    reads every job's model, not only a teacher's students)."""
    folder = _folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())["config"]
    (folder / "model.pt").write_bytes(b"w" * 100)
    (folder / "result.json").write_text(json.dumps({"config": config, "metrics": {"test_accuracy": 0.9},
                                                    "history": [{"epoch": 1}],
                                                    "model_file": {"name": "model.pt", "bytes": 100}}))
    assert state.job_state(folder).state == state.DONE
    (folder / "model.pt").write_bytes(b"w" * 60)
    s = state.job_state(folder)
    assert s.state == state.DAMAGED and s.detail.startswith("model.pt has 60 bytes where 100 were written")
    (folder / "model.pt").unlink()
    assert state.job_state(folder).detail.startswith("model.pt missing")


def test_a_config_json_that_says_nothing_is_rewritten_by_the_next_run(tmp_path):
    """config.json emptied ({}) or of another shape: status and run agree that it holds no other
    job's settings; the run writes it again (it refused the whole sweep, while status said pending)."""
    from sweep import api, status

    sweep = tmp_path / "s.toml"
    sweep.write_text('name = "s"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    plan = api.plan(sweep)
    folder = tmp_path / "results" / "s"
    state.write_plan(folder, plan)
    config = state.job_dir(folder, plan.jobs[0]) / "config.json"
    for damage in ("{}", "[]", '{"config": 3}'):
        config.write_text(damage)
        assert [s.state for _, s in status.job_states(plan, folder)] == [state.PENDING]
        state.write_plan(folder, plan)
        assert json.loads(config.read_text())["config"] == plan.jobs[0].config


SPENT_WORKER = """
import os, sys
from kd import graphs
from sweep import worker

def run_one(folders, after, data_root, device, stop):  # a unit whose CUDA capture failed
    graphs.FAILED_CAPTURES["count"] += 1
    print("unit", folders[0])
    return 2

worker.run_one = run_one
worker.serve(int(sys.argv[1]), None, "cpu")
"""


def test_a_worker_whose_cuda_capture_failed_takes_no_other_unit(tmp_path):
    """A failed capture leaves CUDA's generator unusable in that process ("Offset increment outside
    graph capture", seen on an H100): the worker answers for its unit, says it is exiting, and
    exits, so that the pool starts a fresh worker for the next unit instead of failing it too."""
    read, write = os.pipe()
    units = "".join(json.dumps({"folders": [str(tmp_path / n)], "after": [], "log": str(tmp_path / f"{n}.log")}) + "\n"
                    for n in ("first", "second"))
    p = subprocess.run([sys.executable, "-c", SPENT_WORKER, str(write)], input=units, text=True, capture_output=True,
                       pass_fds=(write,), timeout=120)
    os.close(write)
    with os.fdopen(read) as answers:
        assert [json.loads(line) for line in answers] == [{"status": 2, "exiting": True}]
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "first.log").read_text().strip() == f"unit {tmp_path / 'first'}"
    assert not (tmp_path / "second.log").exists()


def test_an_errors_line_is_its_first_line_with_text_and_its_class():
    from kd.errors import first_line

    assert first_line(KeyError()) == "KeyError"  # no message: the class alone, no "KeyError: "
    assert first_line(RuntimeError("\n  CUDA error: out of memory\nmore")) == "RuntimeError: CUDA error: out of memory"
    assert first_line(ValueError("x" * 300), 200) == "ValueError: " + "x" * 200
    assert first_line(OSError(28, "No space left on device")) == "OSError: [Errno 28] No space left on device"


def test_the_teachers_whose_students_read_the_cache_are_read_from_the_plan(tmp_path):
    """A teacher's unit caches its logits where a student of the plan reads them: one with the
    teacher among its depends_on, not augmented (an augmented student runs the teacher online)."""
    from sweep import worker

    sweep = tmp_path / "s"
    folders = [sweep / "jobs" / j for j in ("t1", "t2", "t3", "x")]
    for f in folders:
        f.mkdir(parents=True)
    jobs = [{"id": "t1", "config": {}, "depends_on": []}, {"id": "t2", "config": {}, "depends_on": []},
            {"id": "t3", "config": {}, "depends_on": []},
            {"id": "k1", "config": {"method": "kd"}, "depends_on": ["t1"]},
            {"id": "k2", "config": {"method": "kd", "augment": True}, "depends_on": ["t2"]},
            {"id": "k3", "config": {"method": "kd", "augment": False}, "depends_on": ["t3"]}]
    (sweep / "plan.json").write_text(json.dumps({"sweep": "s", "jobs": jobs}))
    assert worker.read_from_cache(folders) == [folders[0], folders[2]]
    (sweep / "plan.json").write_text("{damaged")
    assert worker.read_from_cache(folders) == []
    odd = [{"config": "x", "depends_on": ["t1"]}, {"config": {}, "depends_on": 5}, {"config": {}, "depends_on": [["t2"]]},
           {"config": None, "depends_on": ["t3"]}, "a job", {"config": {}, "depends_on": ["t3"]}]
    (sweep / "plan.json").write_text(json.dumps({"sweep": "s", "jobs": odd}))  # valid JSON of odd shapes
    assert worker.read_from_cache(folders) == [folders[2]]  # the students compute them, as they would anyway
    (sweep / "plan.json").unlink()
    assert worker.read_from_cache(folders) == []


HOLD = """import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.lockf(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _held_by_another_process(folder, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / ".lock"), str(seconds)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_student_started_early_waits_for_its_teachers_unit_to_end_not_only_its_result(tmp_path, monkeypatch):
    """A teacher's unit caches its students' logits after its result: the student waits until the
    unit is over (its job lock free), at most LOCK_WAIT_S, so that it finds them."""
    from sweep import worker

    teacher = tmp_path / "t"
    teacher.mkdir()
    (teacher / "result.json").write_text("{}")
    holder = _held_by_another_process(teacher, 0.8)
    t0 = time.monotonic()
    assert worker._wait_for([teacher], None)
    assert 0.5 < time.monotonic() - t0 < 10 and holder.wait() == 0
    t0 = time.monotonic()
    assert worker._wait_for([teacher], None)  # nobody holds it: at once
    assert time.monotonic() - t0 < 0.5
    monkeypatch.setattr(worker, "LOCK_WAIT_S", 0.3)
    holder = _held_by_another_process(teacher, 30)
    try:
        t0 = time.monotonic()
        assert worker._wait_for([teacher], None)  # a lock held on and on: not waited for beyond LOCK_WAIT_S
        assert time.monotonic() - t0 < 5
        assert worker._wait_for([teacher], lambda: True) is False  # a stop ends the wait
    finally:
        holder.kill()
        holder.wait()


def test_asking_whether_a_folder_is_locked_keeps_this_processs_own_lock(tmp_path):
    """POSIX record locks are the process's: a status asked inside a unit (run_unit reads its jobs'
    states under their locks) would take the lock again, succeed, and release it on closing."""
    folder = _folder(tmp_path)
    probe = [sys.executable, "-c", "import sys; from pathlib import Path; from sweep import state; "
             "print(state.lock_holder(Path(sys.argv[1])))", str(folder)]
    with state.job_locks([folder]):
        assert state.lock_holder(folder) is True and state.held(folder)
        assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout == "True\n"  # still held
    assert state.lock_holder(folder) is False
    assert subprocess.run(probe, capture_output=True, text=True, check=True).stdout == "False\n"


def test_a_unit_started_ahead_records_what_each_of_its_jobs_waits_for(tmp_path):
    """A pack across seeds waits for every seed's teacher: each student names its own, and one whose
    own is done names the others' (it said 'its teacher teacher-s0, teacher-s1' for every member)."""
    import socket

    from sweep import worker

    jobs = tmp_path / "jobs"
    for jid, name, teacher in (("t0", "teacher-s0", None), ("t1", "teacher-s1", None), ("k0", "kd-s0", "t0"),
                               ("k2", "kd-s2", "t2")):
        (jobs / jid).mkdir(parents=True)
        (jobs / jid / "config.json").write_text(json.dumps({"name": name, "config": {"teacher": teacher}}))
    teachers = {"t0": "teacher-s0", "t1": "teacher-s1"}
    assert worker._waiting(jobs / "k0", teachers) == {"waiting_for": ["teacher-s0"]}
    assert worker._waiting(jobs / "k2", teachers) == {"waiting_for": ["teacher-s0", "teacher-s1"],
                                                      "waiting_for_pack": True}  # its teacher t2 is done
    assert worker._waiting(jobs / "k0", {}) == {}
    with state.job_locks([jobs / "k2"]):
        state.record_attempt(jobs / "k2", **worker._waiting(jobs / "k2", teachers))
        assert state.job_state(jobs / "k2").detail == (
            f"waiting for the teachers of others in its pack teacher-s0, teacher-s1 (started ahead in pid "
            f"{os.getpid()} on {socket.gethostname()})")
        state.record_began(jobs / "k2")
        assert state.job_state(jobs / "k2").state == state.RUNNING


def test_a_result_deleted_after_its_job_finished_is_said_so_not_taken_for_a_crash(tmp_path):
    """A finished job's result.json removed by hand: status said 'the process ended without a result or
    an error (killed? or a full disk ...)'. Its model.pt, written at its attempt's end, says it finished."""
    import socket

    folder = _folder(tmp_path)
    (folder / "attempt.json").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7}))  # gone
    (folder / "model.pt").write_bytes(b"weights")
    s = state.job_state(folder)
    assert (s.state, s.detail) == (state.INTERRUPTED, "result.json missing beside its model.pt (deleted? its last "
                                                      "attempt finished): resume trains it again"), s
    os.utime(folder / "model.pt", (time.time() - 600, time.time() - 600))  # an earlier attempt's: a rerun began
    assert state.job_state(folder).detail.startswith("the process ended without a result or an error")
