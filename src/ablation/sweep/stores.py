"""The addresses of a study's two stores, read in one place: Optuna's ``study.storage``
(a database URL or a journal file) and MLflow's ``tracking.uri`` (a database URL or a
server).

Example:
    >>> sqlite_file("sqlite:////work/mlruns/mlflow.db")
    PosixPath('/work/mlruns/mlflow.db')
    >>> sqlite_file("postgresql://db/optuna") is None, is_server("https://mlflow.example")
    (True, True)
    >>> local_file("mlruns/optuna.journal"), is_database("mlruns/optuna.journal")
    (PosixPath('mlruns/optuna.journal'), False)
    >>> dialect("postgresql+psycopg://u@db/optuna"), dialect("mlruns/optuna.journal")
    ('postgresql', None)
"""

from __future__ import annotations

from pathlib import Path

SQLITE = "sqlite:///"


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return f"{SQLITE}{path}"


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL; None for any other address."""
    return Path(url.removeprefix(SQLITE)) if url.startswith(SQLITE) else None


def is_database(storage: str) -> bool:
    """Whether a ``study.storage`` is a database URL (else the path of a journal file)."""
    return "://" in storage


def dialect(storage: str) -> str | None:
    """A database URL's kind (``postgresql``, ``mysql``, ``sqlite``, the driver left out);
    None for a journal file."""
    return storage.split("://", 1)[0].split("+", 1)[0] if is_database(storage) else None


def is_server(uri: str) -> bool:
    """Whether a tracking URI (or a data source) is an HTTP(S) address."""
    return uri.startswith(("http://", "https://"))


def local_file(storage: str) -> Path | None:
    """The file on this machine behind a ``study.storage`` (a SQLite database or a journal
    file); None for a database server."""
    if is_database(storage):
        return sqlite_file(storage)
    return Path(storage)
