"""The one exception type a user is meant to see.

Everything a user can get wrong (a sweep file, a data folder, a store URI)
raises :class:`UserError` with a one-line message that says what is wrong and
what is allowed. The command-line entry points print that line and exit 2;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input, reported as one line and exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
