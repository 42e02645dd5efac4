"""Adaptive seeds in real studies: rounds decided on finished trials, the same after a kill
mid-round and with two workers, and a changed rule on rerun replayed, never refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient

from ablation.study.rounds import study_decisions
from ablation.sweep.config import load_sweep
from conftest import SMALL_WEIGHTS, load_study, run_module

pytestmark = pytest.mark.slow  # two real studies of 8 to 12 trials, each run again

SWEEP = """
study: {{name: adaptive, sampler: grid, seeds: {{min: 2, max: {max}}}, isolation: process}}
data: {{source: {data}, image_size: [32, 32], batch_size: 8}}
train: {{epochs: 2, feature_batch_size: 8}}  # auto's timing: tests/autotune
model: {{weights: {weights}, alpha: 0.35}}
space:
  backbone: {{choice: [cnn, mobilenet_v2]}}
  preprocess: {{choice: [none, mobilenet_v2]}}
"""


@pytest.fixture(scope="module")
def data(small_data: Path) -> Path:
    return small_data


def write(workdir: Path, data: Path, max_seeds: int = 3) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "sweep.yaml"
    path.write_text(SWEEP.format(data=data, max=max_seeds, weights=SMALL_WEIGHTS))
    return path


def decisions(workdir: Path) -> dict[str, Any]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("adaptive")
    [parent] = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'study'")
    path = client.download_artifacts(parent.info.run_id, "seed_decisions.json", str(workdir))
    found = json.loads(Path(path).read_text())
    found["rule"] = json.loads(parent.data.tags["ablation.seed_rule"])
    return found


def points(workdir: Path) -> list[str]:
    """The finished trials' grid points, sorted (a duplicate shows twice)."""
    study = load_study(workdir, "adaptive")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(t.user_attrs["point"] for t in complete)


def run_killed_mid_round(workdir: Path, sweep: Path) -> None:
    """Start the study with one worker and SIGKILL it (its whole process group) while trial 5
    (the first round's second seed) trains."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ablation.run", str(sweep)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while True:
        assert process.poll() is None, "the study ended before the kill"
        assert time.monotonic() < deadline
        try:
            trials = load_study(workdir, "adaptive").trials
        except (KeyError, FileNotFoundError, ValueError):
            trials = []
        if len(trials) > 5 and trials[5].state.name == "RUNNING" and trials[5].intermediate_values:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# Two runs of the same study, each the other's reference (two studies, not three: a
# separate uninterrupted one-worker run would only repeat what each of these is compared to):
# - two_workers: uninterrupted, with two workers side by side;
# - killed: one worker, killed mid-round, then run again to the end.
# The kill test compares the killed run with the uninterrupted one, the two-workers test the
# two-worker run with the one-worker one; both must decide exactly alike.


@pytest.fixture(scope="module")
def two_workers(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adaptive study run once, uninterrupted, with two workers."""
    workdir = tmp_path_factory.mktemp("two-workers")
    result = run_module("ablation.run", str(write(workdir, data)), "--workers", "2", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@dataclass
class Rerun:
    """A study's folder, its rerun's stderr, and its finished points and decisions as they
    were after the rerun (the last test goes on in the folder)."""

    workdir: Path
    stderr: str
    points: list[str]
    decisions: dict[str, Any]


@pytest.fixture(scope="module")
def killed(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Rerun:
    """The adaptive study with one worker, killed mid-round, then run again to the end."""
    workdir = tmp_path_factory.mktemp("killed")
    sweep = write(workdir, data)
    run_killed_mid_round(workdir, sweep)
    result = run_module("ablation.run", str(sweep), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return Rerun(workdir, result.stderr, points(workdir), decisions(workdir))


def test_rounds_run_what_the_decisions_call_for(two_workers: Path) -> None:
    found = decisions(two_workers)
    assert found["rule"]["min_seeds"] == 2 and found["rule"]["looks"] == 2
    effects = {e["factor"]: e for e in found["effects"]}
    assert set(effects) == {"backbone", "preprocess"}
    finished = points(two_workers)
    assert len(finished) == len(set(finished)) == found["trials"]
    per_configuration = found["seeds_per_configuration"]
    assert len(per_configuration) == 4 and set(per_configuration.values()) <= {2, 3}
    for effect in effects.values():
        assert effect["state"] in ("gain", "loss", "negligible", "test set too small", "undecided")
        if effect["state"] == "undecided":
            assert effect["seeds"] == 3  # went on to max
        else:
            assert effect["round"] == effect["seeds"] - 1
    # Round 2 ran exactly the configurations of the effects round 1 left undecided.
    undecided_after_one = [e for e in effects.values() if e["round"] != 1]
    assert (found["trials"] > 8) == bool(undecided_after_one)
    # The report says each decision and what it cost.
    report = run_module("ablation.report", str(two_workers / "sweep.yaml"), cwd=two_workers)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "Adaptive seeds: each effect's decision" in report.stdout
    assert f"Cost: {found['trials']} trial(s) of at most 12" in report.stdout
    for effect in effects.values():
        assert effect["state"] in report.stdout


def test_a_kill_mid_round_then_a_rerun_decides_the_same(killed: Rerun, two_workers: Path) -> None:
    assert "1 trial(s) of an earlier run were interrupted" in killed.stderr
    assert killed.points == points(two_workers)  # none lost, none twice
    assert killed.decisions["effects"] == decisions(two_workers)["effects"]


def test_two_workers_decide_as_one(two_workers: Path, killed: Rerun) -> None:
    trials = load_study(two_workers, "adaptive").get_trials(
        states=(optuna.trial.TrialState.COMPLETE,)
    )
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    # The two workers really ran side by side: some trials overlap in time.
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert points(two_workers) == killed.points  # the one-worker run's
    assert decisions(two_workers)["effects"] == killed.decisions["effects"]


def test_a_changed_rule_on_rerun_continues(killed: Rerun, data: Path) -> None:
    # A larger max is not refused: the decisions are replayed under the new rule (three
    # looks now, each widened more), and undecided effects may get a fourth seed.
    workdir = killed.workdir
    before = points(workdir)
    result = run_module("ablation.run", str(write(workdir, data, max_seeds=4)), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    found = decisions(workdir)
    assert found["rule"]["max_seeds"] == 4 and found["rule"]["looks"] == 3
    after = points(workdir)
    assert set(before) <= set(after) and len(after) == len(set(after)) == found["trials"]
    assert set(found["seeds_per_configuration"].values()) <= {2, 3, 4}

    # A changed min_effect is not refused either: every look is replayed under the new
    # band, and the recorded decisions are exactly that replay on the finished trials.
    wider = ["--set", "study.min_effect=0.5"]
    result = run_module("ablation.run", str(workdir / "sweep.yaml"), *wider, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    found = decisions(workdir)
    assert found["rule"]["min_effect"] == 0.5 and found["rule"]["max_seeds"] == 4
    replayed = study_decisions(
        load_study(workdir, "adaptive"), load_sweep(workdir / "sweep.yaml", wider[1:])
    )
    assert [(e["factor"], e["state"], e["round"]) for e in found["effects"]] == [
        (d.effect.factor, d.state, d.round) for d in replayed
    ]
    assert set(after) <= set(points(workdir)) and len(points(workdir)) == found["trials"]
