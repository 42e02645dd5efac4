"""The one exception type a user is meant to see.

Everything a user can get wrong (a sweep file, a data folder, a store URI)
raises :class:`UserError` with a one-line message that says what is wrong and
what is allowed. The command-line entry points print that line and exit 2;
any other exception is a bug and keeps its traceback.

A message never holds a secret: a URL's password is shown as ``***``
(:func:`ablation.redaction.redact`), also in ``--debug`` tracebacks.

Example:
    >>> print(UserError("cannot open 'postgresql://alice:s3cretpw@dbhost/optuna'"))
    cannot open 'postgresql://alice:***@dbhost/optuna'
"""

from __future__ import annotations

from ablation.redaction import redact


class UserError(Exception):
    """A mistake in the user's input, reported as one line and exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(str(message)))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (any password redacted), or its type when it
    has none."""
    text = redact(str(exc).strip())
    return text.splitlines()[0] if text else type(exc).__name__
