"""The one logging set-up of kd-sweep's processes (the CLI, a local worker, a SLURM task)."""
from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
# a job's log file: milliseconds too, so that a unit's phases (set-up, epochs, results) can be timed
FILE_FORMAT = "%(asctime)s.%(msecs)03d %(levelname).1s %(name)s: %(message)s"


def setup(level: int = logging.INFO, *, force: bool = False, fmt: str = FORMAT) -> None:
    """One fixed-format line per record on stderr; ``force`` replaces handlers set up before
    (submitit's, in a SLURM task); ``fmt``: FILE_FORMAT where stderr is a job's log (a local worker)."""
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt, datefmt=DATEFMT, force=force)
