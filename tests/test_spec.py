from pathlib import Path

from sweep.cli import main

# The table of bad sweep files is in tests/test_bad_inputs.py.


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
