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
