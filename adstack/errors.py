"""User-facing errors.

A ``UserError`` is a problem with the user's input (a file, a map name, a route id) rather than a
bug. The CLI prints it as one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user. ``str(err)`` is the one-line message shown to them."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class DataError(UserError):
    """A file exists but its content is malformed or inconsistent."""
