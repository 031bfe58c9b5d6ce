"""A job's ``result.json``: what counts as a result. Torch-free, so status and collect read it fast."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kd import atomic

RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"  # kd.train writes it; status asks only whether it is there


class DamagedResult(ValueError):
    """A result.json that exists but is not a result (not JSON, truncated, or incomplete)."""


def read(path: Path) -> dict[str, Any] | None:
    """The result in ``path``: None when there is none; ``DamagedResult`` (naming the file and why)
    when it is not JSON or lacks the config, the metrics or the history a result has."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DamagedResult(f"{path}: damaged result, a folder, not a file") from None
    except NotADirectoryError:  # its job folder (or one above) is a file
        bad = atomic.not_a_folder(Path(path).parent) or Path(path).parent
        raise DamagedResult(f"{path}: damaged result, {bad} is a file, not a folder") from None
    try:
        result = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise DamagedResult(f"{path}: damaged result, not JSON ({e})") from None
    if not isinstance(result, dict):
        raise DamagedResult(f"{path}: damaged result, a JSON {type(result).__name__}, not an object")
    lacks = [what for what, ok in (
        ("config", isinstance(result.get("config"), dict)),
        ("metrics", isinstance(result.get("metrics"), dict)),
        ("metrics.test_accuracy", not isinstance(result.get("metrics"), dict) or "test_accuracy" in result["metrics"]),
        ("history", isinstance(result.get("history"), list) and result["history"]
         and all(isinstance(h, dict) for h in result["history"])))
        if not ok]
    if lacks:
        raise DamagedResult(f"{path}: damaged result, no {' and no '.join(lacks)}")
    problem = _values_problem(result)
    if problem:
        raise DamagedResult(f"{path}: damaged result, {problem}")
    return result


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _values_problem(result: dict[str, Any]) -> str | None:
    """What in a result's metrics or history is not what training writes (a stray edit: a word for
    a number, an accuracy of 42), or None."""
    acc = result["metrics"]["test_accuracy"]
    if not (_number(acc) and 0 <= acc <= 1):
        return f"metrics.test_accuracy is {acc!r}, not a fraction between 0 and 1"
    for key, value in result["metrics"].items():
        if key == "confusion":
            if not (isinstance(value, list) and len(value) == 2 and all(
                    isinstance(row, list) and len(row) == 2 and all(isinstance(n, int) and n >= 0 for n in row)
                    for row in value)):
                return f"metrics.confusion is {str(value)[:40]}, not a 2x2 table of counts"
        elif value is not None and not _number(value):
            return f"metrics.{key} is {value!r}, not a number"
    for i, h in enumerate(result["history"]):
        bad = next((k for k, v in h.items() if v is not None and not _number(v)), None)
        if bad is not None:
            return f"history[{i}].{bad} is {str(h[bad])[:40]!r}, not a number"
    return None


def model_problem(folder: Path, result: dict[str, Any]) -> str | None:
    """Why the model file a result records (``model_file``: name, bytes, sha256) is not there as
    written, by its size alone (a stat: cheap enough for status); None if it is. A result written
    before results recorded it: whether model.pt is there."""
    record = result.get("model_file")
    if not isinstance(record, dict):  # written before results recorded it: whether it is there, then
        record = {"name": "model.pt"}
    name = record.get("name", "model.pt")
    try:
        size = (Path(folder) / name).stat().st_size
    except FileNotFoundError:
        return f"{name} missing"
    except OSError as e:
        return f"{name} unreadable ({e.strerror})"
    if "bytes" in record and size != record["bytes"]:
        return f"{name} has {size:,} bytes where {record['bytes']:,} were written"
    return None


def other_settings(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The settings of ``config`` (a job's) that a result's ``saved`` config holds otherwise.
    Teachers compare by folder name (a job id, or a path ending in one), so a results folder may move."""
    name = lambda t: Path(t).name if t else t  # noqa: E731
    return [k for k in config if (name(saved.get(k)) != name(config[k]) if k == "teacher" else saved.get(k) != config[k])]


def keep_aside(path: Path) -> Path:
    """Rename a damaged result out of the way (``result.json.damaged-<time>``), so the job runs again
    while its bytes stay for a look; returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = Path(path).with_name(f"{Path(path).name}.damaged-{stamp}")
    n = 1
    while aside.exists():  # two in one second: keep both
        n += 1
        aside = aside.with_name(f"{Path(path).name}.damaged-{stamp}-{n}")
    Path(path).rename(aside)
    return aside
