"""Bad inputs, one parametrised table per kind (issue #10): each is refused before any work starts.

Every case asserts the CLI's promise: exit status 2, exactly one line ``error: ...`` that names the
file, key, flag or row (plus at most a ``hint:`` line), no traceback, and nothing written: the
folder the case works in is byte for byte as it was (no output or results folder made, no cache
left beside the data or the teacher). In-process through ``sweep.cli.main`` (fast); a few through
a real process to prove the exit status. Nothing here trains: a case that would train is a failure.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_idx_root, write_idx
from sweep.cli import main
from test_mhist import HEADER, _png, make_mhist
from test_profile import GOOD as PROFILE

ROOT = Path(__file__).parent.parent


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in folder.rglob("*")}


def _refused(capsys, argv: list[str], fragments: tuple[str, ...], folder: Path) -> None:
    """Run ``kdsweep argv`` in-process; assert the one-line refusal and that ``folder`` is unchanged."""
    before = _snapshot(folder)
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert _snapshot(folder) == before, "something was written"


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty folder to work in, the current folder, with its own default data root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KDSWEEP_DATA", str(tmp_path / "default-data"))
    return tmp_path


# ---- sweep files -----------------------------------------------------------------------------

GOOD = '''name = "bad"
dataset = "mnist-5k"
methods = ["teacher", "kd"]
[train]
epochs = 2
[grid]
alpha = [0.5]
temperature = [4]
'''


def _edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


def _train(line: str) -> str:
    return _edit("epochs = 2", f"epochs = 2\n{line}")


def _grid(line: str) -> str:
    return _edit("temperature = [4]", f"temperature = [4]\n{line}")


def _axis(n: int) -> str:
    return "[" + ", ".join(str(i) for i in range(n)) + "]"


SWEEPS = [
    # TOML syntax
    ("name = 'x\n", "invalid TOML"),
    (GOOD + "epochs = \n", "invalid TOML"),
    (GOOD.replace("[train]", "[train"), "invalid TOML"),
    (_edit("epochs = 2", "epochs = 2\nepochs = 3"), "invalid TOML"),
    (GOOD + "alpha = [0.5,\n", "invalid TOML"),
    (GOOD + "= 3\n", "invalid TOML"),
    (b"name = \"\xff\xfe\"\n", "cannot read"),
    ("", "name: missing"),
    # keys
    (_edit('dataset = "mnist-5k"', 'datset = "mnist-5k"'), "datset: unknown key (did you mean 'dataset'?)"),
    (_edit("epochs = 2", "epoch = 2"), "train.epoch: unknown key (did you mean 'epochs'?)"),
    (_grid("temprature = [1]"), "grid.temprature: unknown key (did you mean 'temperature'?)"),
    (GOOD + "[teacher]\nlrate = 0.1\n", "teacher.lrate: unknown key"),
    (_train('method = "kd"'), "train.method: set by the plan, not by the sweep file (use 'methods')"),
    (_train('teacher = "x"'), "train.teacher: set by the plan"),
    (_grid("method = ['kd']"), "grid.method: not an axis"),
    (_grid("teacher = ['x']"), "grid.teacher: not an axis"),
    (_edit("epochs = 2", "epochs = 2\n[grid.x]"), "grid.x: unknown key"),
    ('"da\\ntaset" = 1\n' + GOOD, "da\\ntaset: unknown key (did you mean 'dataset'?)"),
    # types
    (_edit('name = "bad"', "name = 3"), "name: 3 is not a plain folder name"),
    (_edit('name = "bad"', 'name = "bad"\ndescription = 3'), "description: expected a string, got 3"),
    (_edit('dataset = "mnist-5k"', "dataset = 5"), "dataset: expected str, got 5"),
    (_edit('methods = ["teacher", "kd"]', 'methods = "kd"'), "methods: expected a non-empty list"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["kd", 3]'), "methods[1]: unknown method 3"),
    (_edit("[train]", "[[train]]"), "train: expected a table of settings"),
    ("grid = [1, 2]\n" + GOOD.split("[grid]")[0], "grid: expected a table of axes"),
    (_edit("alpha = [0.5]", "alpha = 0.5"), "grid.alpha: expected a list of values, got 0.5"),
    (_edit("epochs = 2", 'epochs = "two"'), "train.epochs: expected int, got 'two'"),
    (_edit("epochs = 2", "epochs = 2.5"), "train.epochs: expected int, got 2.5"),
    (_edit("epochs = 2", "epochs = true"), "train.epochs: expected int, got True"),
    (_train('lr = "fast"'), "train.lr: expected float, got 'fast'"),
    (_train('drop_last = "yes"'), "train.drop_last: expected bool, got 'yes'"),
    (_train("augment = 1"), "train.augment: expected bool, got 1"),
    (_grid("seed = [0, 1.5]"), "grid.seed[1]: expected int, got 1.5"),
    (_edit("alpha = [0.5]", 'alpha = [0.5, "x"]'), "grid.alpha[1]: expected float, got 'x'"),
    ('pack = "big"\n' + GOOD, "pack: 'big' must be \"auto\" or a number of jobs >= 1"),
    ("pack = 0\n" + GOOD, "pack: 0 must be \"auto\" or a number"),
    ("pack = true\n" + GOOD, "pack: True must be \"auto\""),
    ("max_jobs = 0\n" + GOOD, "max_jobs: 0 must be a number of jobs >= 1"),
    ('max_jobs = "many"\n' + GOOD, "max_jobs: 'many' must be a number of jobs"),
    ("max_jobs = 1.5e5\n" + GOOD, "max_jobs: 150000.0 must be a number of jobs"),
    # ranges
    (_edit("alpha = [0.5]", "alpha = [0.5, 1.5]"), "grid.alpha[1]: 1.5 must be in [0, 1]"),
    (_edit("alpha = [0.5]", "alpha = [-0.1]"), "grid.alpha[0]: -0.1 must be in [0, 1]"),
    (_edit("temperature = [4]", "temperature = [4, 0]"), "grid.temperature[1]: 0.0 must be >= 0.01"),
    (_edit("temperature = [4]", "temperature = [1e-300]"), "grid.temperature[0]: 1e-300 must be >= 0.01"),
    (_edit("temperature = [4]", "temperature = [-1]"), "grid.temperature[0]: -1.0 must be >= 0.01"),
    (_edit("temperature = [4]", "temperature = [20000]"), "grid.temperature[0]: 20000.0 must be <= 10,000"),
    (_train("lr = 0"), "train.lr: 0.0 must be > 0"),
    (_train("lr = -1"), "train.lr: -1.0 must be > 0"),
    (_train("lr = 20"), "train.lr: 20.0 must be <= 10"),
    (_edit("epochs = 2", "epochs = 0"), "train.epochs: 0 must be >= 1"),
    (_edit("epochs = 2", "epochs = 200000"), "train.epochs: 200000 must be <= 100,000"),
    (_train("batch_size = 0"), "train.batch_size: 0 must be >= 1"),
    (_train("batch_size = 2_000_000"), "train.batch_size: 2000000 must be <= 1,000,000"),
    (_train("seed = -1"), "train.seed: -1 must be >= 0"),
    (_train("seed = 4294967296"), "train.seed: 4294967296 must be < 2**32"),
    (_train("seed = 9223372036854775807"), "train.seed: 9223372036854775807 must be < 2**32"),
    (_grid("seed = [0, 5_000_000_000]"), "grid.seed[1]: 5000000000 must be < 2**32"),
    (_train("subclasses = 0"), "train.subclasses: 0 must be >= 1"),
    (_train("subclasses = 2000"), "train.subclasses: 2000 must be <= 1,000"),
    (_train("beta = -1"), "train.beta: -1.0 must be >= 0"),
    (_train("aux_temperature = 0"), "train.aux_temperature: 0.0 must be >= 0.01"),
    (_train("head_epochs = -1"), "train.head_epochs: -1 must be >= 0"),
    (_train("finetune_lr = 0"), "train.finetune_lr: 0.0 must be > 0"),
    (_train("unfreeze_from = -1"), "train.unfreeze_from: -1 must be >= 0"),
    (_train('precision = "fp16"'), "train.precision: 'fp16' is not one of fp32, bf16"),
    (_train('model = "bogus"'), "train.model: unknown model 'bogus'"),
    (_train('model = "resnet"'), "train.model: unknown model 'resnet' (did you mean 'resnet50'?)"),
    (GOOD + '[teacher]\nmodel = "mnist_cnn"\n', "teacher.model: unknown model 'mnist_cnn' (did you mean 'mnist-cnn'?)"),
    (_train('pretrained = ""'), "train.pretrained: empty"),
    (_edit('dataset = "mnist-5k"', 'dataset = "cifar10"'), "dataset: unknown dataset 'cifar10'"),
    (_edit('dataset = "mnist-5k"\n', "").replace("[grid]", '[grid]\ndataset = ["mnist", "mnsit"]'),
     "grid.dataset[1]: unknown dataset 'mnsit' (did you mean 'mnist'?)"),
    (_edit('dataset = "mnist-5k"\n', ""), "dataset: missing"),
    # nan and inf (TOML has both; 1e309 reads as inf)
    (_edit("temperature = [4]", "temperature = [nan]"), "grid.temperature[0]: nan must be a finite number >= 0.01"),
    (_edit("temperature = [4]", "temperature = [4, inf]"), "grid.temperature[1]: inf must be a finite number"),
    (_edit("temperature = [4]", "temperature = [-inf]"), "grid.temperature[0]: -inf must be a finite number"),
    (_edit("temperature = [4]", "temperature = [1e309]"), "grid.temperature[0]: inf must be a finite number"),
    (_train("lr = nan"), "train.lr: nan must be a finite number > 0"),
    (_train("lr = inf"), "train.lr: inf must be a finite number > 0"),
    (_edit("alpha = [0.5]", "alpha = [nan]"), "grid.alpha[0]: nan must be in [0, 1]"),
    (_train("beta = inf"), "train.beta: inf must be a finite number >= 0"),
    (_train("aux_temperature = nan"), "train.aux_temperature: nan must be a finite number"),
    (_train("finetune_lr = -inf"), "train.finetune_lr: -inf must be a finite number"),
    (GOOD + "[teacher]\nlr = nan\n", "teacher.lr: nan must be a finite number"),
    (GOOD + "[[exclude]]\ntemperature = nan\n", "exclude[0].temperature: nan must be a finite number"),
    # grids
    (_edit("temperature = [4]", "temperature = []"), "grid.temperature: empty list"),
    (_edit("alpha = [0.5]", "alpha = [0.5, 0.5]"), "grid.alpha: value 0.5 appears twice"),
    (_edit("temperature = [4]", "temperature = [4, 4.0]"), "grid.temperature: value 4.0 appears twice"),
    (_edit("[grid]", '[grid]\ndataset = ["mnist"]'), "dataset: given both as a key and as grid.dataset"),
    (_edit("temperature = [4]", "temperature = [4]\nepochs = [1, 2]"), "train.epochs: also a grid axis"),
    (_edit("alpha = [0.5]", f"alpha = {_axis(1)}\nlr = {[0.001 * (i + 1) for i in range(100)]}\n"
                            f"seed = {_axis(1001)}"),
     "the grid has 101,101 points (teacher: seed 1001 = 1,001; kd: alpha 1 x lr 100 x seed 1001 x temperature 1 = 100,100), "
     "more than max_jobs = 100,000"),
    ("max_jobs = 10\n" + _grid(f"seed = {_axis(6)}"), "the grid has 12 points"),
    ("max_jobs = 1\n" + GOOD, "the grid has 2 points (teacher: 1; kd: 1), more than max_jobs = 1"),  # was "points ()"
    (_train("batch_size = 5000"), "train.batch_size: 5000 is larger than the training set of 'mnist-5k' (4,000 images)"),
    (_grid("batch_size = [256, 4096]"), "grid.batch_size: 4096 is larger than the training set of 'mnist-5k'"),
    (GOOD + "[teacher]\nbatch_size = 4001\n", "teacher.batch_size: 4001 is larger than the training set"),
    (_edit('dataset = "mnist-5k"', 'dataset = "fashion-mnist-binary"').replace("epochs = 2", "epochs = 2\nbatch_size = 60001"),
     "train.batch_size: 60001 is larger than the training set of 'fashion-mnist-binary' (60,000 images)"),
    (_train("drop_last = true\nbatch_size = 4096"), "train.batch_size: 4096 is larger"),
    (_train("head_epochs = 2"), "train.head_epochs: 2 must be less than epochs (2), which counts both phases"),
    (_grid("finetune_lr = [0.0001, 0.1]"), "grid.finetune_lr: is the learning rate after head_epochs (or of the "
     "layers from unfreeze_from); with neither set every parameter trains at one rate: set lr instead"),
    (_grid("head_epochs = [1, 2]"), "grid.head_epochs: 2 must be less than epochs (2)"),
    (GOOD + "[teacher]\nepochs = 1\nhead_epochs = 1\n", "teacher.head_epochs: 1 must be less than epochs (1)"),
    # excludes
    (GOOD + "[[exclude]]\nalfa = 0.5\n", "exclude[0].alfa: unknown key (did you mean 'alpha'?)"),
    (GOOD + '[[exclude]]\nmethod = "scratch"\n', "exclude[0].method: 'scratch' is not one of the sweep's methods"),
    (GOOD + '[[exclude]]\nalpha = "half"\n', "exclude[0].alpha: expected float, got 'half'"),
    (GOOD + "[exclude]\nalpha = 0.5\n", "exclude: expected a list of tables ([[exclude]])"),
    ('exclude = [1]\n' + GOOD, "exclude[0]: expected a non-empty table of axis = value"),
    (GOOD + "[[exclude]]\n", "exclude[0]: expected a non-empty table"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["kd"]') + "[[exclude]]\nalpha = 0.5\n",
     "no jobs left: every grid point is excluded"),
    (GOOD + "[[exclude]]\nalpha = 0.7\n", "exclude[0]: matches no grid point (alpha = 0.7)"),
    (GOOD + '[[exclude]]\nmethod = "teacher"\nalpha = 0.5\n',
     "exclude[0]: matches no grid point (method = 'teacher', alpha = 0.5)"),
    (GOOD + "[[exclude]]\nalpha = 0.5\n[[exclude]]\ntemperature = 9\n", "exclude[1]: matches no grid point"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["kd"]').replace("alpha = [0.5]", "alpha = [0]"),
     "no jobs left: with alpha = 0 every kd point is the student from scratch, and 'scratch' is not in methods"),
    # settings that would do nothing
    (GOOD + "[teacher]\nalpha = 0.5\n", "teacher.alpha: no teacher of this sweep has it (it is for kd, subclass)"),
    (GOOD + "[teacher]\ntemperature = 3\n", "teacher.temperature: no teacher of this sweep has it"),
    (GOOD + "[teacher]\nbeta = 2\n", "teacher.beta: no teacher of this sweep has it (it is for subclass-teacher)"),
    (_grid("seed = [0, 1]") + "[teacher]\nseed = 5\n", "teacher.seed: also a grid axis, which the teachers follow"),
    (GOOD + '[teacher]\npretrained = "imagenet"\n',
     "teacher.pretrained: 'imagenet': only the ImageNet models (resnet50, mobilenet_v2) load weights; mnist-cnn"),
    (_train('pretrained = "w.pt"'), "train.pretrained: 'w.pt': only the ImageNet models"),
    (_grid("beta = [0.5, 2.0]"), "grid.beta: none of this sweep's methods has it (it is for subclass-teacher): "
     "it would change nothing"),
    (_train("subclasses = 7"), "train.subclasses: none of this sweep's methods has it (it is for subclass-teacher, subclass)"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["teacher", "scratch"]'),
     "grid.alpha: none of this sweep's methods has it (it is for kd, subclass)"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["scratch"]').replace("alpha = [0.5]\ntemperature = [4]\n", "")
     + "[teacher]\nepochs = 3\n", "teacher.epochs: this sweep has no teacher (methods: scratch): [teacher] would change nothing"),
    (GOOD + '[teacher]\ndataset = "mnist-5k-binary"\n', "teacher.dataset: the teacher trains on 'mnist-5k-binary', its "
     "student on 'mnist-5k': a teacher's logits are for its own dataset's images"),
    (_edit('dataset = "mnist-5k"', 'dataset = "mnist-5k-binary"').replace('methods = ["teacher", "kd"]', 'methods = ["subclass"]')
     + "[teacher]\nsubclasses = 3\n", "teacher.subclasses: the teacher has 3 per class, its subclass student 5"),
    # names
    (_edit('name = "bad"', 'name = "../../etc"'), "name: '../../etc' is not a plain folder name"),
    (_edit('name = "bad"', 'name = "a/b"'), "name: 'a/b' is not a plain folder name"),
    (_edit('name = "bad"', 'name = ""'), "name: '' is not a plain folder name"),
    (_edit('name = "bad"', 'name = ".."'), "name: '..' is not a plain folder name"),
    (_edit('name = "bad"', 'name = "my sweep"'), "name: 'my sweep' is not a plain folder name"),
    (_edit('name = "bad"', 'name = "-x"'), "name: '-x' is not a plain folder name (1-100 letters, digits, '.', '_', "
                                           "'-', starting with a letter or digit;"),
    (_edit('name = "bad"', 'name = ".hidden"'), "name: '.hidden' is not a plain folder name"),
    (_edit('name = "bad"', f'name = "{"x" * 101}"'), "is not a plain folder name"),
    (_edit('name = "bad"', 'name = "bad\\n"'), "name: 'bad\\n' is not a plain folder name"),
    (_edit('name = "bad"\n', ""), "name: missing"),
    # methods
    (_edit('methods = ["teacher", "kd"]', "methods = []"), "methods: expected a non-empty list"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["teacher", "distil"]'), "methods[1]: unknown method 'distil'"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["teacher", "KD"]'),
     "methods[1]: unknown method 'KD' (did you mean 'kd'?)"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["kd", "kd"]'), "methods: a method appears twice"),
    (_edit('methods = ["teacher", "kd"]\n', ""), "methods: missing"),
]


@pytest.mark.parametrize("text, message", SWEEPS, ids=[f"{i:03d}-{m[:40]}" for i, (_, m) in enumerate(SWEEPS)])
@pytest.mark.parametrize("command", ["plan", "run", "status"])
def test_bad_sweep_file(work, capsys, text, message, command):
    f = work / "sweep.toml"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    _refused(capsys, [command, str(f), "--results", str(work / "results")], (f"error: {f}: ", message), work)


def test_the_sweep_corpus_holds_distinct_inputs():
    texts = [t for t, _ in SWEEPS]
    assert len(set(texts)) == len(texts)


def test_max_jobs_flag_overrides_the_sweep_file(work, capsys):
    f = work / "sweep.toml"
    f.write_text("max_jobs = 10\n" + _grid(f"seed = {_axis(6)}"))
    assert main(["plan", str(f), "--max-jobs", "12"]) == 0
    assert "12 jobs from 12 grid points (6 teacher, 6 kd)" in capsys.readouterr().out
    too_many = ("demo.toml: the grid has 11 points (teacher: 1; scratch: 1; kd: alpha 3 x temperature 3 x seed 1 = 9), "
                "more than max_jobs = 5")
    _refused(capsys, ["plan", "demo", "--max-jobs", "5"], ("error: ", too_many), work)
    _refused(capsys, ["plan", "demo", "--max-jobs", "0"], ("error: --max-jobs: 0 must be a number of jobs >= 1",), work)


def test_a_large_plan_prints_a_summary_and_all_on_request(work, capsys):
    f = work / "sweep.toml"
    f.write_text(_grid(f"seed = {_axis(150)}"))  # 150 teachers + 150 students
    assert main(["plan", str(f)]) == 0
    out = capsys.readouterr().out
    assert "300 jobs from 300 grid points (150 teacher, 150 kd)" in out
    assert "... 285 more jobs (--all lists every one) ..." in out
    assert "teacher-s0 " in out and "kd-a0.5-T4-s149" in out and "kd-a0.5-T4-s100" not in out
    assert main(["plan", str(f), "--all"]) == 0
    out = capsys.readouterr().out
    assert "more jobs" not in out and all(f"kd-a0.5-T4-s{i} " in out for i in range(150))


# ---- cluster profiles --------------------------------------------------------------------------


def _p(old: str, new: str) -> str:
    assert old in PROFILE
    return PROFILE.replace(old, new, 1)


def _top(line: str) -> str:
    return _p("gpus = 1", f"gpus = 1\n{line}")


def _box(line: str) -> str:
    return PROFILE + line + "\n"


PROFILES = [
    ("name = 'p\n", "invalid TOML"),
    (_p("gpus = 1", "gpu = 1"), "gpu: unknown key (did you mean 'gpus'?)"),
    (_box("runtme = 'none'"), "container.runtme: unknown key (did you mean 'runtime'?)"),
    (_p("gpus = 1", 'gpus = "one"'), "gpus: expected int, got 'one'"),
    (_p("gpus = 1", "gpus = true"), "gpus: expected int, got True"),
    (_p('time = "01:00:00"', "time = [1]"), "time: expected str/int, got [1]"),
    (_top('sbatch = ["mail-type"]'), "sbatch: expected dict"),
    (_top('setup = "module load cuda"'), "setup: expected list"),
    (_box('binds = "/scratch"'), "container.binds: expected list"),
    (_box('nv = "yes"'), "container.nv: expected bool"),
    (_top('mem_gb = "32G"'), "mem_gb: expected int/float, got '32G'"),
    (_p("gpus = 1", "gpus = -1"), "gpus: -1 must be >= 0"),
    (_p("gpus = 1", "gpus = 1000"), "gpus: 1000 must be <= 64"),
    (_top("cpus = 0"), "cpus: 0 must be >= 1"),
    (_top("cpus = 100000"), "cpus: 100000 must be <= 4,096"),
    (_top("mem_gb = 0"), "mem_gb: 0 must be > 0"),
    (_top("mem_gb = -4"), "mem_gb: -4 must be > 0"),
    (_top("mem_gb = nan"), "mem_gb: nan must be a finite number"),
    (_top("mem_gb = inf"), "mem_gb: inf must be a finite number"),
    (_top("mem_gb = 1e9"), "mem_gb: 1000000000.0 must be <= 100,000"),
    (_top("array_parallelism = 0"), "array_parallelism: 0 must be >= 1"),
    (_top("signal_delay_s = -1"), "signal_delay_s: -1 must be >= 0"),
    (_top("signal_delay_s = 3600"), "signal_delay_s: 3600 must be less than the time limit (60 minutes = 3600 s)"),
    (_p('time = "01:00:00"', "time = 1"), "signal_delay_s: 120 (the default) must be less than the time limit"),
    (_top("max_requeue = -1"), "max_requeue: -1 must be >= 0"),
    (_top("max_requeue = 5000"), "max_requeue: 5000 must be <= 1,000"),
    (_p('time = "01:00:00"', 'time = "soon"'), "time: 'soon' is not a time"),
    (_p('time = "01:00:00"', "time = 0"), "time: 0 must be at least one minute"),
    (_p('time = "01:00:00"', 'time = "00:00:00"'), "time: '00:00:00' must be at least one minute"),
    (_p('time = "01:00:00"', "time = 99999999"), "time: 99999999 is 99,999,999 minutes, over a year: the most is 365 days"),
    (_p('time = "01:00:00"', 'time = "400-00:00:00"'), "time: '400-00:00:00' is 576,000 minutes, over a year"),
    (_p('time = "01:00:00"', 'time = "01:75:00"'), "time: '01:75:00': hours are 0-23 after a day, minutes and seconds 0-59"),
    (_p('time = "01:00:00"', 'time = "1-24:00:00"'), "time: '1-24:00:00': hours are 0-23 after a day"),
    (_p('partition = "gpu"', 'partition = "gpu large"'), "partition: 'gpu large' is not a valid Slurm name"),
    (_p('partition = "gpu"', 'partition = "gpu;reboot"'), "partition: 'gpu;reboot' is not a valid Slurm name"),
    (_top('account = "$(id)"'), "account: '$(id)' is not a valid Slurm name"),
    (_top('qos = "normal\\nhigh"'), "qos: 'normal\\nhigh' contains a control character (U+000A)"),
    (_top('constraint = "a100\\n#SBATCH --x"'), "constraint: 'a100\\n#SBATCH --x' contains a control character"),
    (_top('constraint = "a100\\r"'), "constraint: 'a100\\r' contains a control character (U+000D)"),
    (_top('setup = ["module load cuda\\nrm -rf ~"]'), "setup[0]: 'module load cuda\\nrm -rf ~' contains a control"),
    (_top('setup = ["ok", "tab\\there"]'), "setup[1]: 'tab\\there' contains a control character (U+0009)"),
    (_top('sbatch = { mail-user = "me@x\\n#SBATCH --y" }'), "sbatch.mail-user: 'me@x\\n#SBATCH --y' contains a control"),
    (_top('sbatch = { comment = "esc\\u001b[2J" }'), "sbatch.comment: 'esc\\x1b[2J' contains a control character"),
    (_p('name = "p"', 'name = "p\\nq"'), "name: 'p\\nq' contains a control character"),
    (_top('description = "two\\nlines"'), "description: 'two\\nlines' contains a control character"),
    (_top('python = "/usr/bin/python3\\u0000"'), "python: '/usr/bin/python3\\x00' contains a control character"),
    (_p('runtime = "none"', 'runtime = "apptainer"\nimage = "/x.sif\\n"'), "container.image: '/x.sif\\n' contains"),
    (_box('binds = ["/scratch\\n"]'), "container.binds[0]: '/scratch\\n' contains a control character"),
    (_box('python = "python3\\u007f"'), "container.python: 'python3\\x7f' contains a control character"),
    (_top('"x\\ny" = 1'), "x\\ny: unknown key"),
    (_top('sbatch = { "Mail Type" = "FAIL" }'), "sbatch.Mail Type: expected an sbatch option"),
    (_top("sbatch = { mail-type = 1.5 }"), "sbatch.mail-type: expected an sbatch option name = string, number or true"),
    (_top('sbatch = { dependency = "singleton" }'), "sbatch.dependency: kd-sweep sets --dependency itself"),
    (_top('sbatch = { array = "0-3" }'), "sbatch.array: kd-sweep sets --array itself"),
    (_top('sbatch = { o = "x.log" }'), "sbatch.o: kd-sweep sets --output itself"),
    (_top('sbatch = { job-name = "mine" }'), "sbatch.job-name: kd-sweep sets --job-name itself"),
    (_top('sbatch = { time = "5" }'), "sbatch.time: use the profile's own key: time = ..."),
    (_top('sbatch = { cpus-per-task = 4 }'), "sbatch.cpus-per-task: use the profile's own key: cpus = ..."),
    (_top('sbatch = { mem = "8G" }'), "sbatch.mem: use the profile's own key: mem_gb = ..."),
    (_top('setup = ["module load cuda", 3]'), "setup: expected a list of shell lines"),
    (_p('runtime = "none"', 'runtime = "docker"'), "container.runtime: 'docker' is not one of none, apptainer, charliecloud, pyxis"),
    (_p('runtime = "none"', 'runtime = "apptainer"'), "container.image: runtime 'apptainer' needs an image"),
    (_box('binds = ["/a,/b"]'), "container.binds: expected a list of paths"),
    (_box('binds = [""]'), "container.binds: expected a list of paths"),
    (_top("pack = 0"), "pack: 0 must be \"auto\" or a number of jobs >= 1"),
    (PROFILE + "zzz = 1\n", "container.zzz: unknown key (known: runtime, image, binds, nv, python)"),
]


@pytest.mark.parametrize("text, message", PROFILES, ids=[f"{i:03d}-{m[:40]}" for i, (_, m) in enumerate(PROFILES)])
def test_bad_profile(work, capsys, text, message):
    p = work / "p.toml"
    p.write_text(text)
    _refused(capsys, ["run", "demo", "--profile", str(p), "--results", str(work / "r")], (f"error: {p}: ", message),
             work)


def test_the_profile_corpus_holds_distinct_inputs():
    texts = [t for t, _ in PROFILES]
    assert len(set(texts)) == len(texts)


def test_a_plan_with_a_bad_profile_prints_no_plan_first(work, capsys):
    p = work / "p.toml"
    p.write_text(_top('setup = ["a\\nb"]'))
    _refused(capsys, ["plan", "demo", "--profile", str(p)], (f"error: {p}: setup[0]",), work)
    assert capsys.readouterr().out == ""


# ---- kdsweep train flags ------------------------------------------------------------------------

TRAIN_FLAGS = [
    (["--alpha", "1.5"], "--alpha: 1.5 must be in [0, 1]"),
    (["--alpha", "-0.1"], "--alpha: -0.1 must be in [0, 1]"),
    (["--alpha", "nan"], "--alpha: nan must be in [0, 1]"),
    (["--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
    (["--temperature", "0"], "--temperature: 0.0 must be >= 0.01"),
    (["--temperature", "nan"], "--temperature: nan must be a finite number >= 0.01"),
    (["--temperature", "inf"], "--temperature: inf must be a finite number >= 0.01"),
    (["--temperature=-inf"], "--temperature: -inf must be a finite number >= 0.01"),
    (["--temperature", "1e309"], "--temperature: inf must be a finite number >= 0.01"),
    (["--temperature", "1e5"], "--temperature: 100000.0 must be <= 10,000"),
    (["--lr", "nan"], "--lr: nan must be a finite number > 0"),
    (["--lr", "0"], "--lr: 0.0 must be > 0"),
    (["--lr", "100"], "--lr: 100.0 must be <= 10"),
    (["--epochs", "0"], "--epochs: 0 must be >= 1"),
    (["--epochs", "1000000"], "--epochs: 1000000 must be <= 100,000"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    (["--batch-size", "0"], "--batch-size: 0 must be >= 1"),
    (["--method", "scratch", "--batch-size", "5000"],
     "--batch-size: 5000 is larger than the training set of 'mnist-5k' (4,000 images)"),
    (["--batch-size", "10000000"], "--batch-size: 10000000 must be <= 1,000,000"),
    (["--seed", "-1"], "--seed: -1 must be >= 0"),
    (["--seed", "4294967296"], "--seed: 4294967296 must be < 2**32"),
    (["--seed", "99999999999999999999"], "--seed: 99999999999999999999 must be < 2**32"),
    (["--method", "subclass-teacher", "--subclasses", "0"], "--subclasses: 0 must be >= 1"),
    (["--method", "subclass-teacher", "--beta", "nan"], "--beta: nan must be a finite number >= 0"),
    (["--method", "subclass-teacher", "--aux-temperature", "0"], "--aux-temperature: 0.0 must be >= 0.01"),
    (["--method", "scratch", "--head-epochs", "-1"], "--head-epochs: -1 must be >= 0"),
    (["--method", "scratch", "--head-epochs", "12"], "--head-epochs: 12 must be less than epochs (12)"),
    (["--method", "scratch", "--finetune-lr", "inf"], "--finetune-lr: inf must be a finite number > 0"),
    (["--method", "scratch", "--unfreeze-from", "-1"], "--unfreeze-from: -1 must be >= 0"),
    (["--method", "scratch", "--unfreeze-from", "6", "--finetune-lr", "0.01", "--epochs", "1"],  # froze all but
     "unfreeze_from: 6, but mnist-mlp has 6 parameter tensors (0 .. 5): no layer but the head would train"),  # the head
    (["--method", "scratch", "--pretrained", ""], "--pretrained: empty"),
    (["--method", "scratch", "--model", "bogus"], "--model: unknown model 'bogus'"),
    (["--method", "scratch", "--model", "mnist_mlp"], "--model: unknown model 'mnist_mlp' (did you mean 'mnist-mlp'?)"),
    (["--method", "scratch", "--dataset", "cifar"], "--dataset: unknown dataset 'cifar'"),
    (["--method", "distill"], "argument --method: invalid choice: 'distill'"),
    (["--method", "scratch", "--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (["--method", "kd"], "--teacher: method 'kd' with alpha > 0 needs a teacher"),
    (["--method", "subclass"], "--teacher: method 'subclass' with alpha > 0 needs a teacher"),
    (["--method", "scratch", "--teacher", "runs/t"], "--teacher: method 'scratch' trains without a teacher"),
    (["--method", "teacher", "--teacher", "runs/t"], "--teacher: method 'teacher' trains without a teacher"),
    (["--method", "scratch", "--device", "bogus"], "--device: 'bogus' is not a device"),
    (["--method", "scratch", "--device", "cuda:99"], "--device: 'cuda:99', but"),
    (["--method", "scratch", "--device", "meta"], "--device: 'meta': kd trains on cpu, cuda or mps"),
    (["--method", "scratch", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    # a setting the method does not have, as a sweep file refuses it (it was trained without it, silently)
    (["--method", "scratch", "--alpha", "0.5"], "--alpha: method 'scratch' has none (it is for kd, subclass): it "
                                                "would change nothing"),
    (["--method", "teacher", "--temperature", "4"], "--temperature: method 'teacher' has none"),
    (["--method", "kd", "--beta", "2"], "--beta: method 'kd' has none (it is for subclass-teacher)"),
]


@pytest.mark.parametrize("args, message", TRAIN_FLAGS, ids=[m[:40] for _, m in TRAIN_FLAGS])
def test_bad_train_flag(work, capsys, args, message):
    _refused(capsys, ["train", "--out", str(work / "out"), *args], (message,), work)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA: --device cuda is good here")
def test_cuda_without_cuda(work, capsys):
    _refused(capsys, ["train", "--method", "scratch", "--device", "cuda", "--out", str(work / "out")],
             ("--device: 'cuda', but torch finds no CUDA device on this machine",), work)


# ---- datasets: IDX files and MHIST, read by kdsweep train before any folder is made ----------------


def _idx(root: Path, **kw) -> Path:
    """A data root with small IDX files (60 train, 20 test images), plain: the raw folder."""
    return make_idx_root(root, "MNIST", n_train=60, n_test=20, gz=kw.pop("gz", False))


def _rewrite(name: str, change):
    def make(root: Path) -> None:
        raw = _idx(root)
        path = raw / name
        path.write_bytes(change(path.read_bytes()))
    return make


def _replace(name: str, array, gz: bool = False):
    def make(root: Path) -> None:
        raw = _idx(root)
        if gz:
            (raw / name).unlink()
        write_idx(raw / name, np.asarray(array), gz=gz)
    return make


def _labels(values) -> np.ndarray:
    y = np.zeros(60, dtype=np.uint8)
    y[: len(values)] = values
    return y


IDX_CASES = [
    (_rewrite("train-images-idx3-ubyte", lambda b: b"\x00\x00\x0d\x03" + b[4:]),
     "train-images-idx3-ubyte: not an unsigned-byte IDX file (bad magic number 00000d03)"),
    (_rewrite("train-labels-idx1-ubyte", lambda b: b"PK\x03\x04" + b[4:]),
     "train-labels-idx1-ubyte: not an unsigned-byte IDX file (bad magic number 504b0304)"),
    (_rewrite("t10k-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x00" + b[4:]), "t10k-images-idx3-ubyte: not an unsigned"),
    (_rewrite("t10k-labels-idx1-ubyte", lambda b: b""),
     "t10k-labels-idx1-ubyte: not an unsigned-byte IDX file (bad magic number empty)"),
    (_rewrite("train-images-idx3-ubyte", lambda b: b[:10]), "train-images-idx3-ubyte: truncated IDX header"),
    (_rewrite("train-images-idx3-ubyte", lambda b: b[:-100]), "train-images-idx3-ubyte: truncated or oversized IDX file"),
    (_rewrite("train-labels-idx1-ubyte", lambda b: b + b"\x01"), "train-labels-idx1-ubyte: truncated or oversized IDX file"),
    (_replace("train-labels-idx1-ubyte", np.zeros(59)),
     "train-images-idx3-ubyte: 60 images but train-labels-idx1-ubyte has 59 labels"),
    (_replace("t10k-labels-idx1-ubyte", np.zeros(21)), "t10k-images-idx3-ubyte: 20 images but t10k-labels-idx1-ubyte has 21"),
    (_replace("train-labels-idx1-ubyte", _labels([3, 10])),
     "train-labels-idx1-ubyte: label 10 at index 1 is out of range (expected 0-9: 10 classes)"),
    (_replace("t10k-labels-idx1-ubyte", _labels([255])[:20]), "t10k-labels-idx1-ubyte: label 255 at index 0 is out of range"),
    (_replace("train-images-idx3-ubyte", np.zeros((60, 784))),
     "train-images-idx3-ubyte: expected a 3-dimensional image file, found shape (60, 784)"),
    (_replace("train-labels-idx1-ubyte", np.zeros((60, 1))), "train-labels-idx1-ubyte: expected a 1-dimensional label file"),
    (lambda r: (write_idx(_idx(r) / "train-images-idx3-ubyte", np.zeros((0, 28, 28))),
                write_idx(r / "MNIST" / "raw" / "train-labels-idx1-ubyte", np.zeros(0))), "train-images-idx3-ubyte: no images"),
    (_replace("t10k-images-idx3-ubyte", np.zeros((20, 32, 32))),
     "t10k-images-idx3-ubyte: images of 32x32, expected 28x28 like train-images-idx3-ubyte"),
    (lambda r: (_idx(r) / "t10k-labels-idx1-ubyte").unlink(), "dataset 'mnist': IDX files not found in"),
    (lambda r: None, "dataset 'mnist': IDX files not found in"),
    (lambda r: (_idx(r, gz=True) / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00broken"),
     "train-images-idx3-ubyte.gz: cannot read IDX file"),
    (lambda r: (_idx(r, gz=True) / "train-labels-idx1-ubyte.gz").write_bytes(b"plain, not gzip"),
     "train-labels-idx1-ubyte.gz: cannot read IDX file"),
    (lambda r: (_idx(r, gz=True) / "t10k-images-idx3-ubyte.gz").write_bytes(
        (_idx(r, gz=True) / "t10k-images-idx3-ubyte.gz").read_bytes()[:-30]), "t10k-images-idx3-ubyte.gz: cannot read"),
]


@pytest.mark.parametrize("make, message", IDX_CASES, ids=[m[:50] for _, m in IDX_CASES])
@pytest.mark.parametrize("dataset", ["mnist", "mnist-binary"])
def test_bad_idx_dataset(work, capsys, make, message, dataset):
    data = work / "data"
    data.mkdir()
    make(data)
    _refused(capsys, ["train", "--method", "teacher", "--dataset", dataset, "--data-root", str(data), "--epochs", "1",
                      "--batch-size", "10", "--device", "cpu", "--out", str(work / "out")], (message,), work)


def _mhist_rows(**change) -> list[tuple]:
    rows = [(f"MHIST_{i:03d}.png", "HP" if i % 2 else "SSA", 3, "train" if i < 4 else "test") for i in range(6)]
    for i, row in change.items():
        rows[int(i[1:])] = row
    return rows


def _zip(root: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(root / "images.zip", "w") as z:
        for name, blob in members.items():
            z.writestr(f"images/{name}", blob)


def _bad_crc(root: Path) -> None:
    make_mhist(root, n_train=3, n_test=3)  # SSA (every third) in both partitions
    raw = bytearray((root / "images.zip").read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as z:
        info = z.getinfo("images/MHIST_003.png")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start + 50] ^= 0xFF  # a flipped byte inside the stored PNG: zipfile's CRC check fails on read
    (root / "images.zip").write_bytes(bytes(raw))


MHIST_CASES = [
    (lambda r: None, "annotations.csv: not found"),
    (lambda r: (r / "annotations.csv").write_text("Image Name,Label,Partition\nx.png,HP,train\n"),
     "annotations.csv: missing column 'Majority Vote Label'"),
    (lambda r: make_mhist(r, rows=_mhist_rows(r1=("MHIST_001.png", "TA", 0, "train"))),
     "annotations.csv: row 3: unknown label 'TA' (expected HP or SSA)"),
    (lambda r: make_mhist(r, rows=_mhist_rows(r5=("MHIST_005.png", "HP", 0, "validation"))),
     "annotations.csv: row 7: unknown partition 'validation' (expected train or test)"),
    (lambda r: make_mhist(r, rows=_mhist_rows(r4=("MHIST_004.png", "HP", 0, "train"), r5=("MHIST_005.png", "HP", 0, "train"))),
     "annotations.csv: no rows in partition 'test'"),
    (lambda r: make_mhist(r, rows=_mhist_rows(r2=("MHIST_002.png", "", 0, "train"))),
     "annotations.csv: row 4: no value in column 'Majority Vote Label'"),
    (lambda r: (make_mhist(r), (r / "annotations.csv").open("a").write("MHIST_009.png\n")),
     "annotations.csv: row 12: no value in column 'Majority Vote Label'"),
    (lambda r: (make_mhist(r), (r / "annotations.csv").write_bytes(HEADER.encode() + b"caf\xe9.png,HP,0,train\n")),
     "annotations.csv: not UTF-8 text"),
    (lambda r: (make_mhist(r), (r / "annotations.csv").write_text(HEADER + "x" * 200_000 + ",HP,0,train\n")),
     "annotations.csv: row 2: not CSV (field larger than field limit"),
    (lambda r: (make_mhist(r), (r / "annotations.csv").open("a").write("ghost.png,HP,0,test\n")),
     "images.zip: image 'ghost.png' (named in annotations.csv row 12) is missing"),
    (lambda r: make_mhist(r, pngs={"MHIST_002.png": b"\x89PNG\r\n\x1a\nbroken"}),
     "images.zip/MHIST_002.png (annotations.csv row 4): not a readable image"),
    (lambda r: make_mhist(r, pngs={"MHIST_004.png": _png(np.random.RandomState(1), 12)}),
     "images.zip/MHIST_004.png: image of 12x12, expected 16x16 like the others (annotations.csv row 6)"),
    (lambda r: (make_mhist(r), (r / "images.zip").write_bytes(b"not a zip at all")), "images.zip: not a zip file"),
    (lambda r: (make_mhist(r), (r / "images.zip").unlink()), "neither images.zip nor images/ found"),
    (lambda r: (make_mhist(r), _zip(r, {})), "images.zip: image 'MHIST_000.png' (named in annotations.csv row 2) is missing"),
    (_bad_crc, "images.zip/MHIST_003.png: cannot read"),
    (lambda r: make_mhist(r, rows=_mhist_rows(r5=("MHIST_000.png", "HP", 3, "test"))),  # trained and tested on
     "annotations.csv: row 7: image 'MHIST_000.png' listed twice (rows 2 and 7)"),
    (lambda r: make_mhist(r, rows=_mhist_rows(r4=("MHIST_004.png", "HP", 3, "test"))),
     "annotations.csv: no SSA images in partition 'test' (MHIST's two classes, HP and SSA, are both in each)"),
    (lambda r: make_mhist(r, pngs={"MHIST_003.png": _png(np.random.RandomState(1), 16)[:60]}),  # cut short
     "images.zip/MHIST_003.png (annotations.csv row 5): not a readable image"),
    (lambda r: (r / "annotations.csv").mkdir(), "annotations.csv: cannot read"),
]


@pytest.mark.parametrize("make, message", MHIST_CASES, ids=[m[:50] for _, m in MHIST_CASES])
def test_bad_mhist_dataset(work, capsys, make, message):
    root = work / "data" / "MHIST"
    root.mkdir(parents=True)
    make(root)
    _refused(capsys, ["train", "--method", "scratch", "--dataset", "mhist", "--pretrained", "none", "--data-root",
                      str(work / "data"), "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                      "--out", str(work / "out")], (message,), work)


# ---- teachers ---------------------------------------------------------------------------------------


def _fake_teacher(folder: Path, **config) -> None:
    import torch

    folder.mkdir(parents=True)
    saved = {"config": {"dataset": "mnist", "method": "teacher", "model": "mnist-cnn", "subclasses": None, **config},
             "state_dict": {}}
    torch.save(saved, folder / "model.pt")


TEACHERS = [
    (lambda t: None, "teacher: {t} not found"),
    (lambda t: t.mkdir(), "teacher: {t}/model.pt not found"),
    (lambda t: (t.mkdir(), (t / "model.pt").write_bytes(b"not a model")), "teacher: {t}/model.pt is not a kd model file"),
    (lambda t: (t.mkdir(), __import__("torch").save({"weights": 1}, t / "model.pt")),
     "teacher: {t}/model.pt is not a kd model file (KeyError"),
    (lambda t: _fake_teacher(t, dataset="fashion-mnist"), "teacher: {t}/model.pt was trained on 'fashion-mnist', not 'mnist'"),
    (lambda t: _fake_teacher(t, method="subclass-teacher", subclasses=5),
     "teacher: {t}/model.pt is a subclass-teacher job with 50 outputs; this student has 10"),
]


@pytest.mark.parametrize("make, message", TEACHERS, ids=[m[:50] for _, m in TEACHERS])
def test_bad_teacher(work, capsys, make, message):
    _idx(work / "data")
    teacher = work / "teacher"
    make(teacher)
    _refused(capsys, ["train", "--method", "kd", "--teacher", str(teacher), "--dataset", "mnist", "--data-root",
                      str(work / "data"), "--epochs", "1", "--batch-size", "10", "--device", "cpu",
                      "--out", str(work / "out")], (message.format(t=teacher),), work)


# ---- output and results folders ---------------------------------------------------------------------


def _file(work: Path, name: str = "file") -> Path:
    (work / name).parent.mkdir(parents=True, exist_ok=True)
    (work / name).write_text("not a folder\n")
    return work / name


FOLDERS = [
    (lambda w: ["train", "--method", "scratch", "--out", str(_file(w))], "--out: {w}/file exists and is not a folder"),
    (lambda w: ["train", "--method", "scratch", "--out", str(_file(w) / "sub")], "--out: {w}/file/sub: {w}/file is a file"),
    (lambda w: ["train", "--method", "scratch", "--out", str(_file(w) / "a" / "b")], "--out: {w}/file/a/b: {w}/file is a file"),
    (lambda w: ["run", "demo", "--results", str(_file(w))], "--results: {w}/file/demo: {w}/file is a file, not a folder"),
    (lambda w: ["run", "demo", "--results", str(_file(w) / "sub")], "--results: {w}/file/sub/demo: {w}/file is a file"),
    (lambda w: ["run", "demo", "--results", str(_file(w, "r/demo").parent)], "--results: {w}/r/demo exists and is not a folder"),
    (lambda w: ["resume", "demo", "--results", str(_file(w))], "--results: {w}/file/demo: {w}/file is a file"),
    (lambda w: ["run", "demo", "--profile", "local-slurm", "--results", str(_file(w))], "--results: {w}/file/demo"),
    (lambda w: ["status", "demo", "--results", str(_file(w))], "--results: {w}/file/demo: {w}/file is a file"),
    (lambda w: ["plan", "demo", "--results", str(_file(w))], "--results: {w}/file/demo: {w}/file is a file"),
    (lambda w: ["collect", "demo", "--results", str(_file(w))], "--results: {w}/file exists and is not a folder"),
    (lambda w: ["plot", "demo", "--results", str(_file(w))], "--results: {w}/file exists and is not a folder"),
    (lambda w: ["report", "demo", "--results", str(_file(w))], "--results: {w}/file exists and is not a folder"),
    (lambda w: ["plan", str((w / "dir.toml").mkdir() or w / "dir.toml")], "{w}/dir.toml: a folder, not a sweep file"),
    (lambda w: ["data", "mnist", "--root", str(_file(w))], "--root: {w}/file exists and is not a folder"),
    (lambda w: ["data", "mnist", "--root", str(_file(w) / "sub")], "--root: {w}/file/sub: {w}/file is a file"),
]


@pytest.mark.parametrize("argv, message", FOLDERS, ids=[m[:50] for _, m in FOLDERS])
def test_bad_output_folder(work, capsys, argv, message):
    _refused(capsys, argv(work), (message.format(w=work),), work)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder anyway: permissions cannot refuse it")
@pytest.mark.parametrize("command", [["train", "--method", "scratch", "--out"], ["run", "demo", "--results"]])
def test_read_only_folder(work, capsys, command):
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _refused(capsys, [*command, str(locked / "sub")], ("cannot write in", "(permission denied)"), work)
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", [["train", "--method", "scratch", "--out"], ["run", "demo", "--results"]])
def test_read_only_folder_as_the_system_reports_it(work, capsys, monkeypatch, command):
    """The same refusal where permissions cannot be set up (as root): the system says no write access."""
    locked = work / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr("sweep.cli.os.access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    _refused(capsys, [*command, str(locked / "sub")], (f"{locked}/sub", f": cannot write in {locked} (permission denied)"),
             work)


# ---- a local run's environment: checked before any folder is made -------------------------------------


def _sweep(work: Path, dataset: str, extra: str = "") -> str:
    f = work / "s.toml"
    f.write_text(f'name = "s"\ndataset = "{dataset}"\nmethods = ["teacher", "scratch"]\n[train]\nepochs = 1\n{extra}')
    return str(f)


def _mhist_csv_only(work: Path) -> Path:
    (work / "MHIST").mkdir()
    (work / "MHIST" / "annotations.csv").write_text(HEADER + "MHIST_000.png,HP,0,train\n")
    return work / "MHIST"


def _mhist_broken(work: Path, how: str) -> Path:
    """MHIST in its distributed format with one mistake: a label mistyped, or an image gone."""
    import zipfile

    from test_mhist import make_mhist

    rows = [(f"MHIST_{i:03d}.png", "hp" if how == "label" and i == 3 else "SSA" if i in (1, 5) else "HP", 1,
             "train" if i < 4 else "test") for i in range(6)]
    root = make_mhist(work / "MHIST", rows=rows)
    if how in ("image", "corrupt"):
        with zipfile.ZipFile(root / "images.zip") as z:
            z.extractall(root)
        (root / "images.zip").unlink()
        if how == "image":
            (root / "images" / "MHIST_004.png").unlink()
        else:  # cut short: found only by decoding it
            png = root / "images" / "MHIST_004.png"
            png.write_bytes(png.read_bytes()[:60])
    return work


RUNS = [
    (lambda w: ["run", "demo", "--device", "bogus"], "--device: 'bogus' is not a device"),
    (lambda w: ["run", "demo", "--device", "cuda:99"], "--device: 'cuda:99', but"),
    (lambda w: ["run", "demo", "--profile", "local-slurm", "--device", "cpu"], "--device: not with --profile"),
    (lambda w: ["run", "demo", "--jobs", "0"], "--jobs: 0 must be >= 1"),
    (lambda w: ["run", "demo", "--pack", "0"], "--pack: 0 must be \"auto\" or a number"),
    (lambda w: ["run", "demo", "--pack", "many"], "--pack: 'many' must be \"auto\" or a number"),
    (lambda w: ["run", "demo", "--max-jobs", "0"], "--max-jobs: 0 must be a number of jobs >= 1"),
    (lambda w: ["resume", "demo", "--max-jobs", "3"],
     "demo.toml: the grid has 11 points (teacher: 1; scratch: 1; kd: alpha 3 x temperature 3 x seed 1 = 9), more "
     "than max_jobs = 3"),
    (lambda w: ["run", _sweep(w, "mnist"), "--data-root", str(w / "nowhere")],
     "dataset 'mnist': IDX files not found in {w}/nowhere/MNIST/raw"),
    (lambda w: ["run", "demo", "--data-root", str(w / "nowhere")],  # mnist-5k reads no data root: it would be
     "--data-root {w}/nowhere: no such folder"),  # recorded all the same, and named in every next command
    (lambda w: ["run", "demo", "--profile", "local-slurm", "--data-root", str(w / "nowhere")],
     "--data-root {w}/nowhere: no such folder"),
    (lambda w: ["run", _sweep(w, "fashion-mnist-binary")],
     "dataset 'fashion-mnist': IDX files not found in {w}/default-data/FashionMNIST/raw"),
    (lambda w: ["run", _sweep(w, "mhist"), "--data-root", str(w)], "{w}/MHIST/annotations.csv: not found"),
    (lambda w: ["run", _sweep(w, "mnist"), "--profile", "local-slurm", "--data-root", str(w / "nope")],
     "dataset 'mnist': IDX files not found in {w}/nope/MNIST/raw"),  # before anything is submitted
    (lambda w: ["run", _sweep(w, "mhist"), "--data-root", str(_mhist_csv_only(w))],
     "{w}/MHIST: neither images.zip nor images/ found"),
    (lambda w: ["run", _sweep(w, "mhist"), "--data-root", str(_mhist_broken(w, "label"))],  # not in each job
     "{w}/MHIST/annotations.csv: row 5: unknown label 'hp' (expected HP or SSA)"),
    (lambda w: ["run", _sweep(w, "mhist"), "--data-root", str(_mhist_broken(w, "image"))],
     "{w}/MHIST/images: image 'MHIST_004.png' (named in annotations.csv row 6) is missing"),
    (lambda w: ["run", _sweep(w, "mhist"), "--data-root", str(_mhist_broken(w, "corrupt"))],  # each job found it
     "{w}/MHIST/images/MHIST_004.png (annotations.csv row 6): not a readable image"),
    (lambda w: ["run", _sweep(w, "mnist-5k", f'model = "mobilenet_v2"\npretrained = "{w}/weights.pt"\n')],
     "s.toml: pretrained: {w}/weights.pt: no such weights file (job teacher-s0)"),
]


@pytest.mark.parametrize("argv, message", RUNS, ids=[m[:50] for _, m in RUNS])
def test_bad_run_environment(work, capsys, argv, message):
    _refused(capsys, argv(work), (message.format(w=work),), work)


@pytest.mark.parametrize("command", ["run", "resume"])
@pytest.mark.parametrize("minutes", ["ten", "0", "-5", "inf", "nan", "1e999"])
def test_a_mistyped_checkpoint_interval_is_refused_before_any_job(work, capsys, monkeypatch, command, minutes):
    monkeypatch.setenv("KDSWEEP_CHECKPOINT_MINUTES", minutes)
    _refused(capsys, [command, "demo"], (f"KDSWEEP_CHECKPOINT_MINUTES: '{minutes}' is neither minutes of training "
                                         "between checkpoints (a number > 0) nor 'epoch'",), work)
    _refused(capsys, [command, "demo", "--profile", "local-slurm"], ("KDSWEEP_CHECKPOINT_MINUTES: ",), work)


@pytest.mark.parametrize("command", ["run", "resume"])
@pytest.mark.parametrize("value", ["yes", "on", "2", "Trace"])
def test_a_mistyped_cuda_graphs_setting_is_refused_before_any_job(work, capsys, monkeypatch, command, value):
    monkeypatch.setenv("KDSWEEP_CUDA_GRAPHS", value)
    _refused(capsys, [command, "demo"], (f"KDSWEEP_CUDA_GRAPHS: '{value}' is none of 1 (training steps replayed "
                                         "as CUDA graphs on a GPU, the default); 0 (eager steps); trace (",), work)
    _refused(capsys, [command, "demo", "--profile", "local-slurm"], ("KDSWEEP_CUDA_GRAPHS: ",), work)
    _refused(capsys, ["train", "--method", "scratch", "--epochs", "1", "--out", str(work / "out")],
             ("KDSWEEP_CUDA_GRAPHS: ",), work)  # kdsweep train too, before its --out folder is made


def test_data_without_a_network_leaves_no_folder(work, capsys, monkeypatch):
    from torchvision import datasets

    def offline(root, train, download):
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)  # as torchvision does, before it fails
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(datasets, "MNIST", offline)
    _refused(capsys, ["data", "mnist", "--root", str(work / "new")],
             ("error: download of 'mnist' into", "failed: Error downloading train-images-idx3-ubyte.gz "
              "(urlopen error [Errno -2] Name or service not known)"), work)
    (work / "kept").mkdir()  # a root that was there stays; only the folders the download made go
    _refused(capsys, ["data", "mnist", "--root", str(work / "kept")], ("error: download of 'mnist'",), work)


def test_the_planners_model_names_are_the_registrys():
    from kd import models
    from kd.config import MODELS

    assert list(MODELS) == models.names()


# ---- the real exit status and output of a process --------------------------------------------------

PROCESSES = [
    (lambda w: ["plan", _sweep(w, "mnist-5k", "temperature = nan\n")],
     "s.toml: train.temperature: nan must be a finite number >= 0.01"),
    (lambda w: ["train", "--method", "scratch", "--device", "bogus", "--out", str(w / "out")],
     "--device: 'bogus' is not a device"),
    (lambda w: ["run", "demo", "--results", str(_file(w))], "--results: {w}/file/demo: {w}/file is a file"),
    (lambda w: ["train", "--method", "teacher", "--seed", str(2**64), "--out", str(w / "out")],
     "--seed: 18446744073709551616 must be < 2**32"),
]


@pytest.mark.parametrize("argv, message", PROCESSES, ids=[m[:50] for _, m in PROCESSES])
def test_a_real_process_exits_2_with_one_line(work, argv, message):
    args = argv(work)
    before = _snapshot(work)
    p = subprocess.run([sys.executable, "-m", "sweep.cli", *args], capture_output=True, text=True, cwd=work,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) in (1, 2) and lines[0].startswith("error: ") and message.format(w=work) in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert _snapshot(work) == before


def test_a_cuda_index_beyond_the_machines_devices(work, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)  # as on a machine with two GPUs
    _refused(capsys, ["train", "--method", "scratch", "--device", "cuda:2", "--out", str(work / "out")],
             ("--device: 'cuda:2', but this machine has 2 CUDA device(s): cuda:0 .. cuda:1",), work)


@pytest.mark.parametrize("name", ["KDSWEEP_TF32", "KDSWEEP_CUDNN_BENCHMARK", "KDSWEEP_FUSED_CNN", "KDSWEEP_KEEP_CHECKPOINTS"])
@pytest.mark.parametrize("value", ["yes", "maybe", "true"])
def test_a_mistyped_switch_is_refused_before_any_job(work, capsys, monkeypatch, name, value):
    """On/off settings are 1 or 0: any other word meant on (or off) without a word said."""
    monkeypatch.setenv(name, value)
    train = ["train", "--method", "scratch", "--epochs", "1", "--out", str(work / "out")]  # reads TF32 and CUDNN_BENCHMARK only
    for argv in (["run", "demo"], ["run", "demo", "--profile", "local-slurm"], *([train] if "KEEP" not in name else [])):
        _refused(capsys, argv, (f"{name}: '{value}' must be 1 (on) or 0 (off)",), work)


def test_the_api_checks_a_runs_inputs_before_any_folder_as_the_cli_does(work):
    """api.run on a dataset that is not there trained nothing and returned every job failed or skipped."""
    from kd.errors import UserError
    from sweep import api

    with pytest.raises(UserError, match=r"dataset 'mnist': IDX files not found in .*/nowhere/MNIST/raw"):
        api.run(_sweep(work, "mnist"), results_root=work / "results", data_root=work / "nowhere")
    assert not (work / "results").exists()
