"""Sweep files (TOML): loaded once into frozen dataclasses; errors name file, key, value and expectation.

    name = "demo"
    dataset = "mnist-5k"
    methods = ["teacher", "scratch", "kd"]
    pack = "auto"      # jobs trained together in one process: "auto", or a number (1: off)
    [train]            # fixed settings for every job
    epochs = 12
    [teacher]          # settings for the teacher jobs only (override [train])
    [grid]             # the axes: any training setting (a list of values each)
    alpha = [0, 0.5, 1]
    temperature = [1, 4, 16]
    seed = [0]
    [[exclude]]        # points to leave out: every key given must match
    alpha = 1
    temperature = 1
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd.config import APPLIES, DATASETS, METHODS, SETTINGS, TEACHER_METHODS, TEACHER_OF, check_value
from kd.errors import UserError, did_you_mean

TOP_KEYS = ("name", "description", "dataset", "methods", "pack", "max_jobs", "train", "teacher", "grid", "exclude")
MAX_JOBS = 100_000  # a larger grid is refused (before it is expanded) unless max_jobs says otherwise
NOT_SETTABLE = ("method", "teacher")  # the plan sets these
TEACHER_AXES = ("dataset", "seed")  # axes every teacher follows (sweep.plan: a teacher per value)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
EXAMPLES = Path(__file__).parent / "examples"


@dataclass(frozen=True)
class Sweep:
    name: str
    dataset: str
    methods: tuple[str, ...]
    train: tuple[tuple[str, Any], ...]  # fixed settings, (key, value) pairs
    teacher: tuple[tuple[str, Any], ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]  # ordered axes
    exclude: tuple[tuple[tuple[str, Any], ...], ...]
    path: Path | None = None
    description: str = ""
    pack: int | str | None = None  # jobs per process: an int, "auto", or None (the profile's, else auto)
    max_jobs: int = MAX_JOBS  # the largest grid planned (grid points over all methods)

    @property
    def axes(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.grid)


def resolve_path(arg: str | Path) -> Path:
    """A sweep file path, or a name: ``NAME.toml`` in this folder (a copy of an example, edited), else
    the bundled example (sweep/examples: ``demo``, ``reference-mnist`` ...)."""
    p = Path(arg)
    if p.is_file():
        return p
    if p.name and not p.suffix and p.with_name(f"{p.name}.toml").is_file():
        return p.with_name(f"{p.name}.toml")
    example = EXAMPLES / f"{p.stem}.toml"
    if p.parent == Path(".") and example.is_file():
        return example
    if p.is_dir():
        raise UserError(f"{p}: a folder, not a sweep file")
    known = ", ".join(sorted(e.stem for e in EXAMPLES.glob("*.toml")))
    raise UserError(f"{p}: no such sweep file (bundled examples: {known})")


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents, or a UserError naming the file (sweep files and profiles alike)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (some Windows editors) is no error
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: invalid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read: {e}") from None


def load(arg: str | Path) -> Sweep:
    path = resolve_path(arg)
    return parse(read_toml(path), path)


def unknown_key(where: str, key: str, known: Iterable[str]) -> UserError:
    """``<where><key>: unknown key (did you mean 'x'?)``: sweep files and profiles alike."""
    return UserError(f"{where}{key}: unknown key ({did_you_mean(key, known)})")


def _settings(table: Any, where: str) -> tuple[tuple[str, Any], ...]:
    if not isinstance(table, dict):
        raise UserError(f"{where.rstrip('.')}: expected a table of settings, got {table!r}")
    out = []
    for key, value in table.items():
        if key in NOT_SETTABLE:
            raise UserError(f"{where}{key}: set by the plan, not by the sweep file"
                            + (" (use 'methods')" if key == "method" else ""))
        if key not in SETTINGS:
            raise unknown_key(where, key, [s for s in SETTINGS if s not in NOT_SETTABLE])
        out.append((key, check_value(key, value, where)))
    return tuple(out)


def parse(raw: dict[str, Any], path: Path | None = None) -> Sweep:
    """Validate a parsed sweep file; every error names the file and the key path."""
    f = f"{path}: " if path else ""
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(f, key, TOP_KEYS)
    name = raw.get("name")
    if name is None:
        raise UserError(f"{f}name: missing (the sweep's name, used as its results folder)")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UserError(f"{f}name: {name!r} is not a plain folder name "
                        "(1-100 letters, digits, '.', '_', '-', starting with a letter or digit; no '/': it must "
                        "stay inside the results folder)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{f}description: expected a string, got {description!r}")

    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise UserError(f"{f}grid: expected a table of axes, got {grid_raw!r}")
    grid = []
    for key, values in grid_raw.items():
        where = f"{f}grid."
        if key in NOT_SETTABLE:
            raise UserError(f"{where}{key}: not an axis" + (" (list methods in 'methods')" if key == "method" else ""))
        if key not in SETTINGS:
            raise unknown_key(where, key, [s for s in SETTINGS if s not in NOT_SETTABLE])
        if not isinstance(values, list):
            raise UserError(f"{where}{key}: expected a list of values, got {values!r}")
        if not values:
            raise UserError(f"{where}{key}: empty list (an axis needs at least one value)")
        checked = tuple(check_value(key, v, at=f"{where}{key}[{i}]") for i, v in enumerate(values))
        seen = set()
        for v in checked:
            if v in seen:
                raise UserError(f"{where}{key}: value {v!r} appears twice")
            seen.add(v)
        grid.append((key, checked))
    axes = dict(grid)

    dataset = raw.get("dataset")
    if "dataset" in axes:
        if dataset is not None:
            raise UserError(f"{f}dataset: given both as a key and as grid.dataset; keep one")
        dataset = ""
    elif dataset is None:
        raise UserError(f"{f}dataset: missing (one of {', '.join(DATASETS)})")
    else:
        dataset = check_value("dataset", dataset, f)

    methods = raw.get("methods")
    if methods is None:
        raise UserError(f"{f}methods: missing (a list of: {', '.join(METHODS)})")
    if not isinstance(methods, list) or not methods:
        raise UserError(f"{f}methods: expected a non-empty list of: {', '.join(METHODS)}; got {methods!r}")
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise UserError(f"{f}methods[{i}]: unknown method {m!r} ({did_you_mean(m, METHODS)})")
    if len(set(methods)) != len(methods):
        raise UserError(f"{f}methods: a method appears twice: {methods!r}")

    train = _settings(raw.get("train", {}), f"{f}train.")
    teacher = _settings(raw.get("teacher", {}), f"{f}teacher.")
    for key, _ in train:
        if key in axes:
            raise UserError(f"{f}train.{key}: also a grid axis; keep one")
    teachers = [t for t in TEACHER_METHODS if t in methods or any(TEACHER_OF.get(m) == t for m in methods)]
    if teacher and not teachers:
        raise UserError(f"{f}teacher.{teacher[0][0]}: this sweep has no teacher (methods: {', '.join(methods)}): "
                        "[teacher] would change nothing")
    every = set(methods) | set(teachers)
    for table, keys in (("grid", list(axes)), ("train", [k for k, _ in train])):  # would be cleared for every job
        for key in keys:
            if key in APPLIES and not set(APPLIES[key]) & every:
                raise UserError(f"{f}{table}.{key}: none of this sweep's methods has it (it is for "
                                f"{', '.join(APPLIES[key])}): it would change nothing")
    for key, _ in teacher:  # a teacher's setting that would be cleared or overruled: say so, not ignore it
        if key in APPLIES and not set(APPLIES[key]) & set(teachers or TEACHER_METHODS):
            raise UserError(f"{f}teacher.{key}: no teacher of this sweep has it (it is for {', '.join(APPLIES[key])})")
        if key in axes and (key in TEACHER_AXES or key in APPLIES):
            raise UserError(f"{f}teacher.{key}: also a grid axis, which the teachers follow; keep one")

    exclude_raw = raw.get("exclude", [])
    if not isinstance(exclude_raw, list):
        raise UserError(f"{f}exclude: expected a list of tables ([[exclude]]), got {exclude_raw!r}")
    exclude = []
    for i, entry in enumerate(exclude_raw):
        where = f"{f}exclude[{i}]."
        if not isinstance(entry, dict) or not entry:
            raise UserError(f"{where.rstrip('.')}: expected a non-empty table of axis = value")
        pairs = []
        for key, value in entry.items():
            if key == "method":
                if value not in methods:
                    raise UserError(f"{where}method: {value!r} is not one of the sweep's methods {methods}")
                pairs.append((key, value))
                continue
            if key not in axes:
                raise unknown_key(where, key, list(axes) + ["method"])
            pairs.append((key, check_value(key, value, where)))
        exclude.append(tuple(pairs))

    pack = check_pack(raw.get("pack"), f"{f}pack")
    max_jobs = check_max_jobs(raw.get("max_jobs", MAX_JOBS), f"{f}max_jobs")
    return Sweep(name=name, dataset=dataset, methods=tuple(methods), train=train, teacher=teacher,
                 grid=tuple(grid), exclude=tuple(exclude), path=path, description=description, pack=pack,
                 max_jobs=max_jobs)


def check_pack(value: Any, where: str) -> int | str | None:
    if value is None or value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise UserError(f"{where}: {value!r} must be \"auto\" or a number of jobs >= 1 (1: no packing)")


def check_max_jobs(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise UserError(f"{where}: {value!r} must be a number of jobs >= 1 (default {MAX_JOBS:,})")
