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

# A URL, and the quote just before it if any. It runs to a space, or a double quote outside
# '...' (the URL grammar allows neither); a single quote is part of it: RFC 3986 allows one
# in a password.
_URL = re.compile(
    r"(?:(?P<single>')|(?P<double>\")?)"
    r"(?P<url>\b[A-Za-z][A-Za-z0-9+.\-]*://(?(single)\S*|[^\s\"]*))"
)
# scheme://user:password@  (the password may hold ':', '/' and quotes, never '@')
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*):(?P<password>[^@]+)@")
# ?password=...  &token=...  (libpq, SQLAlchemy and most HTTP APIs take these in the query)
_QUERY = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|access_token|api_key|apikey|secret)=)"
    r"(?P<password>[^&#]+)",
    re.IGNORECASE,
)
# What may follow a URL's closing quote: punctuation, never a password's characters.
_AFTER_QUOTE = re.compile(r"'[)\]}>,.;:!?]*$")


def redact(text: str) -> str:
    """``text`` (a URL, or any message holding URLs) with every URL's password as ``***``.

    Text without a URL, and URLs without a password, come back unchanged. A password
    may hold any character the URL grammar allows (``'`` too, and ``%``-escapes).

    >>> redact("cannot open postgresql://u:it's%40@db/optuna (timeout)")
    'cannot open postgresql://u:***@db/optuna (timeout)'
    >>> redact("at 'postgresql://db/optuna?password=s3cret' (timeout)")
    "at 'postgresql://db/optuna?password=***' (timeout)"
    """
    return _URL.sub(_redact_url, text)


def _redact_url(match: re.Match[str]) -> str:
    url, closing = match["url"], ""
    if match["single"]:
        # In '...' the URL ends at the last quote before punctuation, if one is there: a
        # password's quote is followed by more of the password.
        after = _AFTER_QUOTE.search(url)
        if after:
            url, closing = url[: after.start()], after[0]
    url = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", url)
    url = _QUERY.sub(lambda m: f"{m['head']}{MASK}", url)
    return f"{match['single'] or match['double'] or ''}{url}{closing}"


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
