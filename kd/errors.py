"""The one exception family for mistakes a user can fix (bad input, missing files)."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint
