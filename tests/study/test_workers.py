"""Workers that work together: each process that asks a guided study for trials samples with
its own recorded seed, and a trial's heartbeat that fails says so, once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from ablation.study.storage import OptunaStudy, ask, heartbeat, open_storage
from ablation.sweep.stores import sqlite_url


def execute(url: str, statement: str) -> None:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(statement))
    engine.dispose()


def last_beat(url: str, trial_id: int) -> object:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        beat = connection.execute(
            sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :id"),
            {"id": trial_id},
        ).scalar()
    engine.dispose()
    return beat


def wait_for(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_failing_heartbeat_warns_once_and_beats_on(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    url = (
        sqlite_url(tmp_path / "optuna.db")
        if kind == "sqlite"
        else request.getfixturevalue("database")
    )
    storage = open_storage(url, heartbeat_seconds=1, grace_seconds=60)
    study = optuna.create_study(study_name="beats", storage=storage)
    trial = ask(study)
    trial_id = OptunaStudy(study, storage).trial_id(trial.number)

    def warnings() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "ablation.study.storage"]

    with caplog.at_level(logging.WARNING), heartbeat(storage, trial_id, trial.number):
        wait_for(lambda: last_beat(url, trial_id) is not None)
        first = last_beat(url, trial_id)
        # The storage fails under the heartbeat: its table is gone, as a real outage.
        execute(url, "ALTER TABLE trial_heartbeats RENAME TO trial_heartbeats_away")
        wait_for(lambda: len(warnings()) > 0)
        time.sleep(2.5)  # two or three more beats fail
        (warning,) = warnings()
        assert warning.levelname == "WARNING"
        message = warning.getMessage()
        assert message.startswith(f"trial {trial.number}: its heartbeat failed (")
        assert "\n" not in message and "trial_heartbeats" in message  # the database's error
        execute(url, "ALTER TABLE trial_heartbeats_away RENAME TO trial_heartbeats")
        wait_for(lambda: last_beat(url, trial_id) > first)  # the beats went on
    assert len(warnings()) == 1
