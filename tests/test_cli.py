import re
import subprocess
import sys

from sweep.cli import main

# The table of bad train flags is in tests/test_bad_inputs.py.


def test_missing_out_is_a_usage_error(capsys):
    assert main(["train"]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_console_script_exit_status_and_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sweep.cli", "train", "--out", str(tmp_path / "o"), "--epochs", "-3"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == "error: --epochs: -3 must be >= 1"


def test_debug_shows_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sweep.cli", "--debug", "train", "--out", str(tmp_path), "--epochs", "0"],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_train_then_distil_from_the_command_line(tmp_path, mini_mnist):
    kw = dict(capture_output=True, text=True)
    base = [sys.executable, "-m", "sweep.cli", "-q", "train", "--epochs", "1", "--dataset", "mnist",
            "--data-root", str(mini_mnist), "--batch-size", "100"]
    t = subprocess.run([*base, "--method", "teacher", "--out", str(tmp_path / "t")], **kw)
    assert t.returncode == 0, t.stderr
    s = subprocess.run([*base, "--method", "kd", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s")], **kw)
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("kd on mnist: test accuracy ")
    assert (tmp_path / "s" / "result.json").exists()


def test_plan_shows_the_packs_that_run_will_make(capsys, monkeypatch):
    assert main(["plan", "demo", "--pack", "1"]) == 0
    assert "local run: 8 units (pack 1: jobs that share" in capsys.readouterr().out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for this run: packs sized for the CPU
    assert main(["plan", "demo"]) == 0
    assert "local run: 3 units (pack auto, sized for this machine's CPU: " in capsys.readouterr().out
    assert main(["plan", "demo", "--pack", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --pack: 0 must be")
    assert main(["plan", "demo", "--device", "cuda"]) == 0  # a GPU run's plan, shown where there is no GPU
    assert "local run: 3 units (pack auto, sized for a GPU: " in capsys.readouterr().out
    assert main(["plan", "demo", "--device", "gpu"]) == 2
    assert "argument --device: 'gpu' is not a device (expected cpu, cuda, cuda:N or mps)" in capsys.readouterr().err


def test_a_results_path_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    """A link to an unmounted scratch disk, a loop of links, a name too long: each was a traceback."""
    sweep_file = tmp_path / "one.toml"
    sweep_file.write_text('name = "one"\ndataset = "mnist-5k"\nmethods = ["scratch"]\n[train]\nepochs = 1\n')
    (tmp_path / "dangling").symlink_to("/nonexistent/scratch/results")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    cases = [(["run", str(sweep_file), "--results", str(tmp_path / "dangling")],
              "is a link to /nonexistent/scratch/results, which does not resolve to a folder"),
             (["train", "--method", "scratch", "--out", str(tmp_path / "dangling"), "--epochs", "1"], "which does not resolve to a folder"),
             (["status", str(sweep_file), "--results", str(tmp_path / "loop1")], "which does not resolve to a folder"),
             (["run", str(sweep_file), "--results", str(tmp_path / ("x" * 300))], ": File name too long"),
             (["collect", str(sweep_file), "--results", str(tmp_path / ("x" * 300))], ": File name too long")]
    for argv, why in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and why in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop1", "loop2", "one.toml"]  # nothing made


def test_train_stopped_checkpoints_where_it_is_says_so_and_the_same_command_goes_on(tmp_path, mini_mnist):
    """Ctrl-C (or a SIGTERM) printed 'interrupted' and no more, and kept nothing inside the first
    epoch; the same command run twice trained one folder from two processes."""
    import os
    import signal

    out = tmp_path / "t"
    cmd = [sys.executable, "-m", "sweep.cli", "train", "--method", "scratch", "--epochs", "300", "--dataset", "mnist",
           "--data-root", str(mini_mnist), "--batch-size", "100", "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = first.stderr.readline()
        while line and not re.search(r"epoch +1/300", line):  # an epoch trained
            line = first.stderr.readline()
        assert line, first.communicate()
        second = subprocess.run(cmd, capture_output=True, text=True)
        assert (second.returncode, second.stderr.strip()) == (
            2, f"error: {out}: another process trains this job; not starting a second one"), second.stderr
        os.killpg(first.pid, signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 128 + signal.SIGINT
    assert err.splitlines()[-1] == f"interrupted (SIGINT): checkpointed in {out}; the same command goes on from there"
    assert (out / "checkpoint.pt").exists() and not (out / "result.json").exists()
    resumed = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = resumed.stderr.readline()  # its first log line says where it goes on from
        while line and "resuming" not in line and "training" not in line:
            line = resumed.stderr.readline()
        assert re.search(r"resuming .* from epoch \d+, step \d+ \(of 10\)", line), line
    finally:
        os.killpg(resumed.pid, signal.SIGKILL)
        resumed.communicate(timeout=60)


def test_an_unknown_flag_names_the_help_that_lists_the_flags_where_it_was_typed(capsys):
    assert main(["plan", "demo", "--bogus"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: kdsweep plan: unrecognized arguments: --bogus",
                                                    "hint: see 'kdsweep plan --help'"]
    assert main(["--bogus", "plan", "demo"]) == 2  # before the command: the top's help, which plan's cannot list
    assert capsys.readouterr().err.splitlines() == ["error: kdsweep: unrecognized arguments: --bogus",
                                                    "hint: see 'kdsweep --help'"]


def test_train_on_a_file_system_without_locks_trains_unlocked_with_a_warning(tmp_path, mini_mnist, monkeypatch, caplog):
    """NFS mounted nolock, sshfs: lockf fails with ENOLCK, which is no other process training there."""
    import errno
    import fcntl

    def no_locks(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    assert main(["-q", "train", "--method", "scratch", "--epochs", "1", "--dataset", "mnist", "--data-root",
                 str(mini_mnist), "--batch-size", "100", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "result.json").exists()
    assert f"{tmp_path / 'o'}: cannot lock it (No locks available): its file system keeps no locks" in caplog.text


def test_the_python_api_names_the_argument_a_notebook_got_wrong(tmp_path):
    """A dict for a path was os.fspath's TypeError, naming no argument; a non-callable on_event a
    TypeError at the first event, mid-run. A Plan is taken where a sweep file is."""
    import pytest

    from kd.errors import UserError
    from sweep import api

    cases = [(lambda: api.plan({"name": "x"}), "sweep_file: {'name': 'x'} is not a path"),
             (lambda: api.plan(3), "sweep_file: 3 is not a path"),
             (lambda: api.status("demo", results_root={}), "results_root: {} is not a path"),
             (lambda: api.run("demo", results_root=tmp_path, on_event=5), "on_event: 5 is not callable"),
             (lambda: api.run("demo", results_root=tmp_path, data_root=[1]), "data_root: [1] is not a path")]
    for call, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            call()
    assert not (tmp_path / "demo").exists()  # refused before anything was written
    p = api.plan("demo")
    assert api.plan(p) is p and [j.id for j, _ in api.status(p, results_root=tmp_path)] == [j.id for j in p.jobs]
