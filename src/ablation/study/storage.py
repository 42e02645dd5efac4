"""The Optuna side of a study: where its state lives, and how several processes share it.

:func:`open_study` creates or loads a sweep's study; the study process and each
trial's process (which reports its epochs to the pruner) open it the same way.

``study.storage`` is either a database URL (``postgresql://``, ``mysql://``,
``mariadb://``, ``sqlite:///``, each with an optional ``+driver``: Optuna's RDB
storage, which machines share) or the path of a journal file (the default,
``mlruns/optuna.journal``); :func:`check_storage` refuses anything else. Optuna's journal file
storage appends each change to a log under a file lock, so several worker
processes on one machine never meet SQLite's "database is locked".

RDB storages get Optuna's heartbeat: a trial whose process (on any machine)
stops beating for ``study.grace_seconds`` is failed by the next process that
joins the study, and its grid point runs again.

Each process that asks a guided study (tpe, random) for trials samples with a seed
of its own, recorded on each trial it asks (``sampler_seed``, beside ``worker``):
the k-th process to join the study draws with :func:`sampler_seed` of the study's
first seed and k, so that workers, machines and a study's later runs never repeat
each other's draws, while a lone process on a fresh study draws what ``seeds[0]``
draws. Threads of one process share its study object, so its one sampler. A grid's
points are all enqueued: its sampler never draws, and it takes no seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ablation.errors import UserError, first_line
from ablation.files import locked
from ablation.sweep.config import Sweep
from ablation.sweep.stores import ALLOWED, dialect, is_database, local_file, storage_problem

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SAMPLERS_JOINED = "samplers_joined"  # study user attr: processes that took a sampler seed


def open_storage(
    storage: str, *, heartbeat_seconds: int = 20, grace_seconds: int = 90
) -> optuna.storages.BaseStorage:
    """The Optuna storage behind ``study.storage``.

    Raises:
        UserError: It cannot be opened.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    check_storage(storage)
    try:
        file = local_file(storage)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        if is_database(storage):
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
        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    except Exception as exc:  # SQLAlchemy and Optuna raise many kinds for a bad URL or path
        raise UserError(
            f"study.storage: cannot open Optuna storage {storage!r} ({first_line(exc)}); "
            f"allowed: {ALLOWED}"
        ) from None


def check_storage(storage: str) -> None:
    """Refuse a ``study.storage`` that is neither a journal file nor a database whose
    tables and grid every process can lock (:func:`lock`).

    Raises:
        UserError: One line saying what is wrong and what is allowed.
    """
    problem = storage_problem(storage)
    if problem is not None:
        raise UserError(f"study.storage: {problem}")


def _engine_kwargs(url: str) -> dict[str, object]:
    if dialect(url) == "postgresql":
        return {"connect_args": {"connect_timeout": 10}}
    return {}


# A database's own named lock, held by a connection: how to take it, how to give it back.
_NAMED_LOCKS = {
    "postgresql": ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
    "mysql": ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"),
    "mariadb": ("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)"),
}


@contextlib.contextmanager
def lock(storage: str, name: str) -> Iterator[None]:
    """Hold a named lock that every process using this storage, on every machine, respects.

    Used around creating the storage's tables, and around reading a study and
    enqueuing its missing grid points, so that two processes that start at once
    never collide or enqueue the same point twice.
    """
    check_storage(storage)
    key = int(hashlib.sha256(f"ablation:{name}".encode()).hexdigest()[:15], 16)
    kind = dialect(storage)
    if kind in _NAMED_LOCKS:
        import sqlalchemy

        take, release = _NAMED_LOCKS[kind]
        values = {"key": key if kind == "postgresql" else f"ablation-{key}"}
        engine = sqlalchemy.create_engine(
            storage, poolclass=sqlalchemy.pool.NullPool, **_engine_kwargs(storage)
        )
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(take), values)
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(release), values)
        engine.dispose()
        return
    # A file on this machine (SQLite database or journal): an flock beside it. Only such a
    # file names a lock: a URL would put its password in a folder name.
    file = local_file(storage)
    if file is None:
        raise UserError(f"study.storage: cannot lock {storage!r}; allowed: {ALLOWED}")
    with locked(file.with_suffix(f".{name}")):
        yield


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int, number: int) -> Iterator[None]:
    """Beat for a running trial (storage-wide ``trial_id``, ``number`` in its study) while
    the context is open (RDB storages only).

    Optuna beats by itself only inside ``Study.optimize``; a study driven by
    ask-and-tell, as this one is, beats here, on the storage it was opened on.
    A failed beat is not worth a crash: the first one logs a warning, the beats go on.
    """
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        warned = False
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]  # BaseHeartbeat's
            except Exception as exc:  # any database error: the next beat may land
                if not warned:
                    warned = True
                    log.warning(
                        "trial %d: its heartbeat failed (%s); still beating every %d s. Beats "
                        "missed for study.grace_seconds let another process fail the trial.",
                        number,
                        first_line(exc.__cause__ or exc),  # the database's, not Optuna's wrapper
                        interval,
                    )
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


@dataclass(frozen=True)
class OptunaStudy:
    """A sweep's open study and the storage it was opened on.

    Optuna keeps a study's storage private (``Study._storage``); the storage is what
    answers a trial's storage-wide id by its number and takes a trial's heartbeat.
    """

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    sampler_seed: int | None = None  # this process's, where its sampler draws (tpe, random)

    def record_worker(self, trial: optuna.Trial) -> None:
        """Record on a trial just asked for who runs it, and with which sampler seed."""
        trial.set_user_attr("worker", worker_identity())
        if self.sampler_seed is not None:
            trial.set_user_attr("sampler_seed", self.sampler_seed)

    def trial_id(self, number: int) -> int:
        """The storage-wide id of the study's trial ``number`` (a Trial keeps it private)."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def trial(self, trial_id: int) -> optuna.Trial:
        """A running trial, to report its epochs to and ask the pruner, in any process.

        Ask-and-tell has no public way to hand a trial to another process; this is the
        object ``Study.ask`` itself returns, made from the study and the trial's id.
        """
        import optuna

        return optuna.trial.Trial(self.study, trial_id)


def open_study(sweep: Sweep, *, asks: bool = True) -> OptunaStudy:
    """Create or load the sweep's study in its persistent storage.

    Args:
        sweep: The validated sweep.
        asks: This process asks the study for trials (the study's process): with a
            guided sampler it takes its own sampler seed (:func:`sampler_seed`). A
            trial's process, which only reports epochs, passes False.

    Raises:
        UserError: The storage cannot be opened, or refuses the study.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=sweep.study.prune_after)
        if sweep.study.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = open_storage(
        sweep.study.storage_url(),
        heartbeat_seconds=sweep.study.heartbeat_seconds,
        grace_seconds=sweep.study.grace_seconds,
    )
    try:
        study = optuna.create_study(
            study_name=sweep.study.name,
            storage=storage,
            sampler=_sampler(sweep.study.sampler, sweep.study.first_seeds[0]),
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
        if not asks or sweep.study.sampler == "grid":
            return OptunaStudy(study, storage)
        seed = _take_sampler_seed(sweep, study)
        study.sampler = _sampler(sweep.study.sampler, seed)  # per process: Optuna stores none
        return OptunaStudy(study, storage, sampler_seed=seed)
    except Exception as exc:  # a database that refuses the schema, a broken journal
        raise UserError(
            f"study.storage: cannot open study {sweep.study.name!r} in "
            f"{sweep.study.storage_url()!r} ({first_line(exc)})"
        ) from None


def _sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _take_sampler_seed(sweep: Sweep, study: optuna.Study) -> int:
    """This process's sampler seed, counted under the study's lock: two never take one."""
    with lock(sweep.study.storage_url(), f"sampler-{sweep.study.name}"):
        joined = int(study.user_attrs.get(SAMPLERS_JOINED, 0))
        study.set_user_attr(SAMPLERS_JOINED, joined + 1)
    return sampler_seed(sweep.study.first_seeds[0], joined)


def sampler_seed(study_seed: int, joined: int) -> int:
    """The sampler seed of the process that joins a study after ``joined`` others did.

    The first takes the study's own seed; the k-th after it the first 4 bytes (big-endian)
    of ``sha256("ablation-sampler:{study_seed}:{k}")``: no two share a seed by arithmetic.

    >>> sampler_seed(0, 0), sampler_seed(7, 0)
    (0, 7)
    >>> sampler_seed(0, 1) != sampler_seed(0, 2) != sampler_seed(1, 1)
    True
    """
    if joined == 0:
        return study_seed
    digest = hashlib.sha256(f"ablation-sampler:{study_seed}:{joined}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def fail_dead_trials(study: optuna.Study) -> tuple[int, set[int]]:
    """Fail the RUNNING trials whose process has died, so that their points run again.

    Dead means: its heartbeat stopped longer than the grace period ago (database
    storages, any machine), or its process on this machine is gone (a study
    process killed by SIGKILL or a power cut leaves its trial RUNNING).

    Returns:
        How many trials were failed, and the numbers of those still running.
    """
    import optuna

    running_state = (optuna.trial.TrialState.RUNNING,)
    before = {t.number for t in study.get_trials(deepcopy=False, states=running_state)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op for storages without heartbeat
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=running_state):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and not _alive(int(worker.get("pid", 0))):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    still_running = {t.number for t in study.get_trials(deepcopy=False, states=running_state)}
    return len(before - still_running), still_running


def worker_identity() -> dict[str, object]:
    """What :func:`fail_dead_trials` needs to know who runs a trial (a trial user attr)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, without Optuna's warning that heartbeats belong to ``optimize``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask()
