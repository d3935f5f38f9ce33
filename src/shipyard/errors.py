"""Errors that mean "the user asked for something that cannot be done".

The CLI turns a :class:`UserError` into one line on stderr and exit code 2 (the HTTP
side, later, into a 4xx). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: the message says what was wrong and what was expected."""


class ConfigError(UserError):
    """An unknown config option, a malformed override, or a value of the wrong kind."""


class DataError(UserError):
    """A data source that cannot become a snapshot (missing path, no rows, no target column)."""


class NotFoundError(UserError):
    """A snapshot, run or model that the store does not hold."""
