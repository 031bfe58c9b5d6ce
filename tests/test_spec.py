import dataclasses
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


def test_a_name_is_the_users_own_file_before_a_bundled_example(tmp_path, monkeypatch):
    """The README says: copy an example and edit it. 'kdsweep run demo' beside the edited demo.toml
    then runs the user's copy, where it ran the bundled one (12 epochs instead of 1)."""
    from sweep import spec

    monkeypatch.chdir(tmp_path)
    assert spec.resolve_path("demo") == spec.EXAMPLES / "demo.toml"
    (tmp_path / "demo.toml").write_text((spec.EXAMPLES / "demo.toml").read_text().replace("epochs = 12", "epochs = 1"))
    assert spec.resolve_path("demo") == Path("demo.toml")
    assert dict(spec.load("demo").train)["epochs"] == 1


def test_a_sweep_file_saved_with_a_byte_order_mark_loads(tmp_path):
    from sweep import spec

    text = (spec.EXAMPLES / "demo.toml").read_text()
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + text.encode())
    demo = spec.load(spec.EXAMPLES / "demo.toml")
    assert spec.load(tmp_path / "bom.toml") == dataclasses.replace(demo, path=tmp_path / "bom.toml")
