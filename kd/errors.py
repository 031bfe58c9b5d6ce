"""The one exception family for mistakes a user can fix (bad input, missing files)."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``did you mean 'alpha'?`` for a near miss, else the list of known words."""
    known = list(known)
    close = difflib.get_close_matches(str(word), known, n=1)
    return f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
