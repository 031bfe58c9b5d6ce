"""The one exception family for mistakes a user can fix (bad input, missing files)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class DamagedTeacher(UserError):
    """A finished teacher whose model file is not the one its result.json records (deleted, cut
    short, bytes overwritten): the teacher must be trained again. ``folder``: the teacher's."""

    def __init__(self, file: Path, why: str):
        super().__init__(f"teacher: {file} is damaged ({why})",
                         hint="train the teacher again (in a sweep, 'kdsweep resume' does, then this job)")
        self.folder = Path(file).parent


class Diverged(UserError):
    """Jobs whose loss stopped being a number (a learning rate or temperature too far out): their
    weights are no longer numbers, and the same settings diverge again. ``folders``: theirs."""

    def __init__(self, folders: list[Path], epochs: list[int]):
        names = ", ".join(f"{Path(f).name} (epoch {e})" for f, e in zip(folders, epochs))
        super().__init__(f"training diverged: the loss is not a number from {names} on; no result written",
                         hint="the same settings diverge again: lower lr, or a temperature nearer 1")
        self.folders, self.epochs = [Path(f) for f in folders], list(epochs)


class Stopped(Exception):
    """A computation given a ``stop`` callback was asked to stop (a signal) before its end."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """``Name: the message's first line`` (its first line with text, cut to ``limit`` characters), or
    ``Name`` alone where the message is empty: what a one-line error or an error.json says of ``e``."""
    line = next((text.strip() for text in str(e).splitlines() if text.strip()), "")
    return f"{e.__class__.__name__}: {line[:limit]}" if line else e.__class__.__name__


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``did you mean 'alpha'?`` for a near miss, else the list of known words."""
    known = list(known)
    lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(str(word).lower(), list(lower), n=1)  # 'KD' is 'kd'
    return f"did you mean '{lower[close[0]]}'?" if close else f"known: {', '.join(known)}"
