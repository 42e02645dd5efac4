"""Secrets stay secret: passwords in URLs are shown and recorded as ``***``.

Users pass credentials inside URLs (``--storage postgresql://user:pw@dbhost/optuna``,
``--tracking-uri https://user:pw@mlflow.example``). Everything this package shows
or records (error lines, log lines, the progress display, the ``sweep.yaml``
artifact, MLflow params and tags, Optuna attributes, cache files) goes through
:func:`redact` first: the user name and host stay, the password becomes ``***``.

Example:
    >>> redact("postgresql://alice:s3cretpw@dbhost:5432/ablation_optuna")
    'postgresql://alice:***@dbhost:5432/ablation_optuna'
    >>> redact("error: MLflow server 'https://bob:hunter2@mlflow.example' does not answer")
    "error: MLflow server 'https://bob:***@mlflow.example' does not answer"
    >>> redact("postgresql://dbhost/optuna?user=alice&password=s3cretpw")
    'postgresql://dbhost/optuna?user=alice&password=***'
    >>> redact("http://127.0.0.1:5000"), redact("mlruns/optuna.journal")
    ('http://127.0.0.1:5000', 'mlruns/optuna.journal')
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import Any

MASK = "***"

# scheme://user:password@  (the password may hold ':' and '/', never '@', a space or a quote)
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*):(?P<password>[^@\s'\"]+)@"
)
# ?password=...  &token=...  (libpq, SQLAlchemy and most HTTP APIs take these in the query)
_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|api_key|apikey|secret)=)"
    r"(?P<password>[^&#\s'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` (a URL, or any message holding URLs) with every URL's password as ``***``.

    Text without a URL, and URLs without a password, come back unchanged.
    """
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redacted(data: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings) with every string redacted.

    >>> redacted({"study": {"storage": "mysql://u:pw@db/o", "seeds": [0]}})
    {'study': {'storage': 'mysql://u:***@db/o', 'seeds': [0]}}
    """
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redacted(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(redacted(value) for value in data)
    return data


def redact_output() -> None:
    """Redact every log record this process creates, on any logger (MLflow's own handlers,
    which do not propagate to the root, included), and the traceback of an uncaught
    exception. Safe to call again."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when the record is emitted
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))

    make_record.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
    sys.excepthook = excepthook
