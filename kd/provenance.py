"""Where a result comes from: the versions of the code and libraries that computed it."""
from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

import kd


@functools.cache
def versions() -> dict[str, str | None]:
    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kd.__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "kd": kd.__version__, "git": commit}
