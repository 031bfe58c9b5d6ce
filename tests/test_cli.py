import subprocess
import sys

import pytest

from sweep.cli import main


@pytest.mark.parametrize("args, message", [
    (["--alpha", "1.5"], "--alpha: 1.5 must be in [0, 1]"),
    (["--alpha", "-0.1"], "--alpha: -0.1 must be in [0, 1]"),
    (["--temperature", "0"], "--temperature: 0.0 must be > 0"),
    (["--epochs", "0"], "--epochs: 0 must be >= 1"),
    (["--method", "kd"], "--teacher: method 'kd' with alpha > 0 needs a teacher"),
    (["--dataset", "cifar", "--method", "scratch"], "unknown dataset 'cifar'"),
    (["--method", "kd", "--teacher", "/no/such/teacher"], "teacher: /no/such/teacher not found"),
    (["--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
    (["--method", "distill"], "argument --method: invalid choice: 'distill'"),
])
def test_train_user_errors(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["train", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


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
