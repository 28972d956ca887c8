"""Errors the command line reports as one line (exit code 2) instead of a traceback."""

from __future__ import annotations


class UserError(RuntimeError):
    """Bad input or a missing prerequisite; the message tells the user what to do."""
