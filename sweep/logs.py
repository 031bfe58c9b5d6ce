"""The one logging set-up of kd-sweep's processes (the CLI, a local worker, a SLURM task)."""
from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"


def setup(level: int = logging.INFO, *, force: bool = False) -> None:
    """One fixed-format line per record on stderr; ``force`` replaces handlers set up before
    (submitit's, in a SLURM task)."""
    logging.basicConfig(level=level, stream=sys.stderr, format=FORMAT, datefmt=DATEFMT, force=force)
