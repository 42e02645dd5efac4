"""Workers that work together: each process that asks a guided study for trials samples with
its own recorded seed, and a trial's heartbeat that fails says so, once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.study.storage import (
    SAMPLERS_JOINED,
    OptunaStudy,
    ask,
    heartbeat,
    open_storage,
    open_study,
    sampler_seed,
)
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.stores import sqlite_url
from conftest import wait_until

STUDY_SEED = 3
GUIDED = """
study: {{name: guided, sampler: {sampler}, trials: 4, seeds: [{seed}], isolation: none}}
data: {{source: {data}, image_size: [32, 32], batch_size: 8, limit_per_class: 4}}
train: {{epochs: 1, precision: float32}}
space:
  learning_rate: {{low: 0.0001, high: 0.01, log: true}}
  dropout: {{low: 0.0, high: 0.5}}
"""
GRID = """
study: {{name: grid, sampler: grid, seeds: [{seed}]}}
data: {{source: {data}}}
space: {{augment: {{choice: [false, true]}}}}
"""

# One worker joining the study: open it, wait for the go (a line on stdin), ask for a
# trial and suggest its factors as the study's process does; print what it drew.
ASK_FIRST_TRIAL = """
import json, os, sys
from ablation.study.storage import ask, open_study
from ablation.sweep import space
from ablation.sweep.config import load_sweep

sweep = load_sweep(sys.argv[1], [f"study.storage={sys.argv[2]}"])
print("ready", flush=True)
sys.stdin.readline()
opened = open_study(sweep)
trial = ask(opened.study)
opened.record_worker(trial)
params = space.suggest(trial, sweep.space)
print(json.dumps({"pid": os.getpid(), "number": trial.number, "params": params,
                  "sampler_seed": opened.sampler_seed}), flush=True)
"""


def guided_sweep(tmp_path: Path, data: Path, storage: str, sampler: str = "tpe") -> Sweep:
    path = tmp_path / "guided.yaml"
    path.write_text(GUIDED.format(sampler=sampler, seed=STUDY_SEED, data=data))
    return load_sweep(path, [f"study.storage={storage}"])


def storage_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh storage: a journal file, or a PostgreSQL database (skipped without one)."""
    if kind == "journal":
        return str(tmp_path / "optuna.journal")
    return str(request.getfixturevalue("database"))


def ask_together(sweep_file: Path, storage: str, workers: int) -> list[dict]:  # type: ignore[type-arg]
    """``workers`` OS processes join one study at once and ask for their first trial."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", ASK_FIRST_TRIAL, str(sweep_file), storage],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        for process in processes:  # each has imported everything it needs
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        drawn = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            drawn.append(json.loads(out))
        return drawn
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_processes_on_one_guided_study_draw_their_own_first_suggestions(
    kind: str, small_data: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = storage_of(kind, tmp_path, request)
    guided_sweep(tmp_path, small_data, storage)  # writes guided.yaml
    first, second = ask_together(tmp_path / "guided.yaml", storage, workers=2)

    assert first["params"] != second["params"]
    assert first["params"]["learning_rate"] != second["params"]["learning_rate"]
    # One took the study's own seed, the other the next one: which is which, the lock says.
    assert sorted([first["sampler_seed"], second["sampler_seed"]]) == sorted(
        [STUDY_SEED, sampler_seed(STUDY_SEED, 1)]
    )
    study = optuna.load_study(study_name="guided", storage=open_storage(storage))
    assert study.user_attrs[SAMPLERS_JOINED] == 2
    for drawn in (first, second):
        trial = study.trials[drawn["number"]]
        assert trial.user_attrs["sampler_seed"] == drawn["sampler_seed"]
        assert trial.user_attrs["worker"]["pid"] == drawn["pid"]
        assert {k: trial.params[k] for k in drawn["params"]} == drawn["params"]


def test_a_lone_process_draws_what_the_study_seed_draws_and_the_next_one_its_own(
    small_data: Path, tmp_path: Path
) -> None:
    """A study run by one process samples as before workers had seeds of their own; the
    study run again (after an interruption) does not repeat its first draws."""
    sweep = guided_sweep(tmp_path, small_data, str(tmp_path / "optuna.journal"))
    reference = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=STUDY_SEED))
    expected = [space.suggest(reference.ask(), sweep.space) for _ in range(2)]

    first = open_study(sweep)
    assert first.sampler_seed == STUDY_SEED
    assert [space.suggest(ask(first.study), sweep.space) for _ in range(2)] == expected
    again = open_study(sweep)
    assert again.sampler_seed == sampler_seed(STUDY_SEED, 1) != STUDY_SEED
    assert space.suggest(ask(again.study), sweep.space) not in expected


def test_a_trials_process_and_a_grid_take_no_sampler_seed(small_data: Path, tmp_path: Path) -> None:
    storage = str(tmp_path / "optuna.journal")
    guided = guided_sweep(tmp_path, small_data, storage, sampler="random")
    assert open_study(guided, asks=False).sampler_seed is None
    asker = open_study(guided)
    assert asker.sampler_seed == STUDY_SEED
    assert asker.study.user_attrs[SAMPLERS_JOINED] == 1  # the trial's process did not count

    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID.format(seed=STUDY_SEED, data=small_data))
    grid = open_study(load_sweep(grid_file, [f"study.storage={storage}"]))
    assert grid.sampler_seed is None
    assert isinstance(grid.study.sampler, optuna.samplers.RandomSampler)
    assert SAMPLERS_JOINED not in grid.study.user_attrs
    trial = ask(grid.study)
    grid.record_worker(trial)
    assert set(grid.study.trials[trial.number].user_attrs) == {"worker"}


@pytest.mark.slow  # trains two small models
def test_each_trial_run_records_the_seed_of_the_sampler_that_drew_it(
    small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "guided.yaml"
    path.write_text(GUIDED.format(sampler="tpe", seed=STUDY_SEED, data=small_data))
    run_sweep(load_sweep(path, ["study.trials=1"]))
    run_sweep(load_sweep(path, ["study.trials=2"]))  # a later run: another process, seed
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("guided")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    by_number = {int(run.data.tags["ablation.trial"]): run for run in runs}
    study = optuna.load_study(
        study_name="guided", storage=open_storage(str(tmp_path / "mlruns" / "optuna.journal"))
    )
    assert sorted(by_number) == [t.number for t in study.trials] == [0, 1]
    for number, seed in ((0, STUDY_SEED), (1, sampler_seed(STUDY_SEED, 1))):
        assert by_number[number].data.params["sampler_seed"] == str(seed)
        assert study.trials[number].user_attrs["sampler_seed"] == seed


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
        wait_until(lambda: last_beat(url, trial_id) is not None, timeout=15.0, every=0.1)
        first = last_beat(url, trial_id)
        # The storage fails under the heartbeat: its table is gone, as a real outage.
        execute(url, "ALTER TABLE trial_heartbeats RENAME TO trial_heartbeats_away")
        wait_until(lambda: len(warnings()) > 0, timeout=15.0, every=0.1)
        time.sleep(2.5)  # two or three more beats fail
        (warning,) = warnings()
        assert warning.levelname == "WARNING"
        message = warning.getMessage()
        assert message.startswith(f"trial {trial.number}: its heartbeat failed (")
        assert "\n" not in message and "trial_heartbeats" in message  # the database's error
        execute(url, "ALTER TABLE trial_heartbeats_away RENAME TO trial_heartbeats")
        wait_until(
            lambda: last_beat(url, trial_id) > first, timeout=15.0, every=0.1
        )  # the beats went on
    assert len(warnings()) == 1
