"""The addresses of a study's two stores, read in one place: Optuna's ``study.storage``
(a database URL or a journal file) and MLflow's ``tracking.uri`` (a database URL or a
server).

A database URL is told by its scheme, SQLAlchemy's ``dialect[+driver]://``; anything
else is the path of a journal file. A study shares its storage through a lock every
process on every machine respects (:func:`ablation.study.storage.lock`), so the
storage is a database that has one (:data:`DIALECTS`) or a file on this machine.

Example:
    >>> sqlite_file("sqlite:////work/mlruns/mlflow.db")
    PosixPath('/work/mlruns/mlflow.db')
    >>> sqlite_file("postgresql://db/optuna") is None, is_server("https://mlflow.example")
    (True, True)
    >>> local_file("mlruns/optuna.journal"), is_database("mlruns/optuna.journal")
    (PosixPath('mlruns/optuna.journal'), False)
    >>> dialect("postgresql+psycopg2://u@db/optuna"), dialect("mlruns/optuna.journal")
    ('postgresql', None)
    >>> storage_problem("mysql+pymysql://u:pw@db/optuna") is None
    True
    >>> storage_problem("postgres://u:pw@db/optuna")
    "'postgres://' is an alias SQLAlchemy refuses; write postgresql:// (or postgresql+DRIVER://)"
"""

from __future__ import annotations

import re
from pathlib import Path

SQLITE = "sqlite:///"
# The databases whose storage every process on every machine can lock (see above).
DIALECTS = ("postgresql", "mysql", "mariadb", "sqlite")
ALLOWED = (
    "a journal file path, or a database URL postgresql://, mysql://, mariadb:// or "
    "sqlite:///FILE, each with an optional +driver (e.g. postgresql+psycopg2://)"
)
# An RFC 3986 scheme (SQLAlchemy's: dialect[+driver]), with and without the "//".
_SCHEME = re.compile(r"^(?P<dialect>[A-Za-z][A-Za-z0-9.\-]*)(?:\+[A-Za-z0-9+.\-]*)?://")
_SCHEME_ONLY = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_SQLITE_FILE = re.compile(r"^sqlite(?:\+\w+)?:///(?P<path>[^?]+)")


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return f"{SQLITE}{path}"


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite[+driver]:///`` URL (its query left out); None for any other
    address."""
    match = _SQLITE_FILE.match(url)
    return Path(match["path"]) if match else None


def is_database(storage: str) -> bool:
    """Whether a ``study.storage`` is a URL (else the path of a journal file)."""
    return _SCHEME.match(storage) is not None


def dialect(storage: str) -> str | None:
    """A database URL's kind (``postgresql``, ``mysql``, ``sqlite``, the driver left out);
    None for a journal file."""
    match = _SCHEME.match(storage)
    return match["dialect"] if match else None


def storage_problem(storage: str) -> str | None:
    """What is wrong with a ``study.storage`` (one line, saying what is allowed); None when
    it is a journal file or a database URL of :data:`DIALECTS`."""
    kind = dialect(storage)
    if kind is None:  # the value is not shown: it may be a URL, password included
        return (
            f"starts like a URL (scheme:) but has no '//' after it; allowed: {ALLOWED}"
            if _SCHEME_ONLY.match(storage)
            else None
        )
    if kind == "postgres":  # SQLAlchemy 1.4 dropped the alias; libpq and Heroku still write it
        return (
            "'postgres://' is an alias SQLAlchemy refuses; "
            "write postgresql:// (or postgresql+DRIVER://)"
        )
    if kind not in DIALECTS:
        return f"{kind}:// is not a database every process can lock; allowed: {ALLOWED}"
    if kind == "sqlite" and sqlite_file(storage) is None:
        return f"a SQLite storage needs a file that every process opens; allowed: {ALLOWED}"
    return None


def is_server(uri: str) -> bool:
    """Whether a tracking URI (or a data source) is an HTTP(S) address."""
    return uri.startswith(("http://", "https://"))


def local_file(storage: str) -> Path | None:
    """The file on this machine behind a ``study.storage`` (a SQLite database or a journal
    file); None for a database server."""
    if is_database(storage):
        return sqlite_file(storage)
    return Path(storage)
