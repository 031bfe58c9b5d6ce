"""A job's ``result.json``: what counts as a result. Torch-free, so status and collect read it fast."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    try:
        result = json.loads(raw)
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise DamagedResult(f"{path}: damaged result, not JSON ({e})") from None
    if not (isinstance(result, dict) and isinstance(result.get("config"), dict)
            and isinstance(result.get("metrics"), dict) and "test_accuracy" in result["metrics"]
            and isinstance(result.get("history"), list) and result["history"]
            and all(isinstance(h, dict) for h in result["history"])):
        raise DamagedResult(f"{path}: damaged result, no config, metrics and history")
    return result
