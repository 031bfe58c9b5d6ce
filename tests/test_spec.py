from pathlib import Path

import pytest

from sweep.cli import main

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
    return GOOD.replace(old, new)


BAD = [
    (_edit('dataset = "mnist-5k"', 'datset = "mnist-5k"'), "datset: unknown key (did you mean 'dataset'?)"),
    (_edit("epochs = 2", "epoch = 2"), "train.epoch: unknown key (did you mean 'epochs'?)"),
    (_edit("epochs = 2", 'epochs = "two"'), "train.epochs: expected int, got 'two'"),
    (_edit("alpha = [0.5]", "alpha = [0.5, 1.5]"), "grid.alpha[1]: 1.5 must be in [0, 1]"),
    (_edit("temperature = [4]", "temperature = [4, 0]"), "grid.temperature[1]: 0.0 must be > 0"),
    (_edit("temperature = [4]", "temperature = []"), "grid.temperature: empty list"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["teacher", "kd", "distil"]'),
     "methods[2]: unknown method 'distil'"),
    (_edit('dataset = "mnist-5k"', 'dataset = "cifar10"'), "dataset: unknown dataset 'cifar10'"),
    (_edit("alpha = [0.5]", "alpha = [0.5, 0.5]"), "grid.alpha: value 0.5 appears twice"),
    (_edit('name = "bad"', 'name = "../../etc"'), "name: '../../etc' is not a plain folder name"),
    (_edit('name = "bad"', 'name = "a/b"'), "name: 'a/b' is not a plain folder name"),
    (_edit("alpha = [0.5]", "alpha = 0.5"), "grid.alpha: expected a list of values, got 0.5"),
    (_edit("[train]", "[[train]]"), "train: expected a table of settings"),
    (_edit('methods = ["teacher", "kd"]', 'methods = ["kd"]') + "[[exclude]]\nalpha = 0.5\n", "no jobs left: every grid point is excluded"),
    (GOOD + "[[exclude]]\nalfa = 0.5\n", "exclude[0].alfa: unknown key (did you mean 'alpha'?)"),
    (_edit("epochs = 2", "epochs = 2\nseed = 1\n[grid.x]"), "grid.x: unknown key"),
    (_edit("[grid]", "[grid]\nmethod = ['kd']"), "grid.method: not an axis"),
    (_edit('methods = ["teacher", "kd"]', "methods = []"), "methods: expected a non-empty list"),
    (_edit('name = "bad"\n', ""), "name: missing"),
    (_edit("epochs = 2", "epochs = 2\nlr = -1"), "train.lr: -1.0 must be > 0"),
    ("name = 'x\n", "invalid TOML"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m[:40] for _, m in BAD])
@pytest.mark.parametrize("command", ["plan", "run"])
def test_bad_sweep_file_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch, text, message, command):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "sweep.toml"
    f.write_text(text)
    extra = ["--results", str(tmp_path / "results")] if command == "run" else []
    assert main([command, str(f), *extra]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"error: {f}: ") and message in first, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.toml"]  # nothing written


def test_missing_sweep_file(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.toml")]) == 2
    assert f"error: {tmp_path / 'nope.toml'}: no such sweep file (bundled examples: demo" in capsys.readouterr().err


def test_bundled_examples_load():
    from sweep import spec

    for f in sorted(Path(spec.EXAMPLES).glob("*.toml")):
        assert spec.load(f).name == f.stem


def test_the_docstring_example_is_a_valid_sweep_file():
    import textwrap
    import tomllib

    from sweep import spec

    example = textwrap.dedent(spec.__doc__.split("\n", 1)[1])
    sweep = spec.parse(tomllib.loads(example))
    assert (sweep.name, sweep.pack, sweep.train) == ("demo", "auto", (("epochs", 12),))
    assert sweep.exclude == ((("alpha", 1.0), ("temperature", 1.0)),)
