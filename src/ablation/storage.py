"""Where a study's Optuna state lives, and how several processes share it safely.

``study.storage`` is either a database URL (``postgresql://``, ``mysql://``,
``sqlite:///``: Optuna's RDB storage, which machines share) or the path of a
journal file (the default, ``mlruns/optuna.journal``). Optuna's journal file
storage appends each change to a log under a file lock, so several worker
processes on one machine never meet SQLite's "database is locked".

RDB storages get Optuna's heartbeat: a trial whose process (on any machine)
stops beating for ``study.grace_seconds`` is failed by the next process that
joins the study, and its grid point runs again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ablation.errors import UserError, first_line

if TYPE_CHECKING:
    import optuna


def is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(
    storage: str, *, heartbeat_seconds: int = 20, grace_seconds: int = 90
) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``study.storage``.

    Raises:
        UserError: It cannot be opened.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    try:
        if is_url(storage):
            if storage.startswith("sqlite:///"):
                Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            # One process at a time creates the tables: machines that start together on a
            # fresh database would otherwise collide on CREATE TABLE.
            with lock(storage, "schema"), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat
                return optuna.storages.RDBStorage(
                    storage,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=grace_seconds,
                    engine_kwargs=_engine_kwargs(storage),
                )
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    except Exception as exc:  # SQLAlchemy and Optuna raise many kinds for a bad URL or path
        raise UserError(
            f"study.storage: cannot open Optuna storage {storage!r} ({first_line(exc)}); "
            "allowed: a journal file path or a database URL (postgresql://, mysql://, sqlite:///)"
        ) from None


def _engine_kwargs(url: str) -> dict[str, object]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}}
    return {}


@contextlib.contextmanager
def lock(storage: str, name: str) -> Iterator[None]:
    """Hold a named lock that every process using this storage, on every machine, respects.

    Used around creating the storage's tables, and around reading a study and
    enqueuing its missing grid points, so that two processes that start at once
    never collide or enqueue the same point twice.
    """
    key = int(hashlib.sha256(f"ablation:{name}".encode()).hexdigest()[:15], 16)
    if storage.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            storage, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(storage)
        )
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        engine.dispose()
        return
    if storage.startswith("mysql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            storage, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(storage)
        )
        with engine.connect() as connection:
            connection.execute(
                sqlalchemy.text("SELECT GET_LOCK(:name, -1)"), {"name": f"ablation-{key}"}
            )
            try:
                yield
            finally:
                connection.execute(
                    sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": f"ablation-{key}"}
                )
        engine.dispose()
        return
    # A file on this machine (SQLite database or journal): an flock beside it.
    path = Path(storage.removeprefix("sqlite:///")).with_suffix(f".{name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial_id: int) -> Iterator[None]:
    """Beat for a running trial while the context is open (RDB storages only).

    Optuna beats by itself only inside ``Study.optimize``; a study driven by
    ask-and-tell, as this one is, beats here.
    """
    storage = study._storage  # RDB storage comes wrapped in Optuna's cache, which beats too
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # a missed beat is not worth a crash
                storage.record_heartbeat(trial_id)
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials whose heartbeat stopped longer than the grace period ago (any machine)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op for storages without heartbeat


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, without Optuna's warning that heartbeats belong to ``optimize``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask()
