"""User-facing errors: the CLIs print these as one line, without a traceback, and exit non-zero."""

from __future__ import annotations


class MapoError(Exception):
    """A problem the user can fix (bad input, missing file, unreachable model): one-line message."""

    exit_code = 2

    def __init__(self, message: str = "", exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
