"""Adaptive seeds in real studies: rounds decided on finished trials, the same after a kill
mid-round and with two workers, and a changed rule on rerun replayed, never refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ablation.study.rounds import study_decisions
from ablation.sweep.config import load_sweep
from conftest import SMALL_WEIGHTS, load_study, run_module

pytestmark = pytest.mark.slow  # real studies of 8 to 12 trials, run several times

SWEEP = """
study: {{name: adaptive, sampler: grid, seeds: {{min: 2, max: {max}}}, isolation: process}}
data: {{source: {data}, image_size: [32, 32], batch_size: 8}}
train: {{epochs: 2}}
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


def decisions(workdir: Path) -> dict[str, object]:
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


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The adaptive study run once, uninterrupted, with one worker."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_module("ablation.run", str(write(workdir, data)), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_rounds_run_what_the_decisions_call_for(reference: Path) -> None:
    found = decisions(reference)
    assert found["rule"]["min_seeds"] == 2 and found["rule"]["looks"] == 2
    effects = {e["factor"]: e for e in found["effects"]}
    assert set(effects) == {"backbone", "preprocess"}
    finished = points(reference)
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
    report = run_module("ablation.report", str(reference / "sweep.yaml"), cwd=reference)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "Adaptive seeds: each effect's decision" in report.stdout
    assert f"Cost: {found['trials']} trial(s) of at most 12" in report.stdout
    for effect in effects.values():
        assert effect["state"] in report.stdout


def test_a_kill_mid_round_then_a_rerun_decides_the_same(
    reference: Path, data: Path, tmp_path: Path
) -> None:
    sweep = write(tmp_path, data)
    process = subprocess.Popen(
        [sys.executable, "-m", "ablation.run", str(sweep)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while True:  # kill the study while trial 5 (the first round's second seed) trains
        assert process.poll() is None, "the study ended before the kill"
        assert time.monotonic() < deadline
        try:
            trials = load_study(tmp_path, "adaptive").trials
        except (KeyError, FileNotFoundError, ValueError):
            trials = []
        if len(trials) > 5 and trials[5].state.name == "RUNNING" and trials[5].intermediate_values:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = run_module("ablation.run", str(sweep), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 trial(s) of an earlier run were interrupted" in result.stderr
    assert points(tmp_path) == points(reference)  # none lost, none twice
    mine, theirs = decisions(tmp_path), decisions(reference)
    assert mine["effects"] == theirs["effects"]


def test_two_workers_decide_as_one_and_a_changed_rule_continues(
    reference: Path, data: Path, tmp_path: Path
) -> None:
    sweep = str(write(tmp_path, data))
    result = run_module("ablation.run", sweep, "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert points(tmp_path) == points(reference)
    assert decisions(tmp_path)["effects"] == decisions(reference)["effects"]

    # A larger max is not refused: the decisions are replayed under the new rule (three
    # looks now, each widened more), and undecided effects may get a fourth seed.
    before = points(tmp_path)
    result = run_module("ablation.run", str(write(tmp_path, data, max_seeds=4)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = decisions(tmp_path)
    assert found["rule"]["max_seeds"] == 4 and found["rule"]["looks"] == 3
    after = points(tmp_path)
    assert set(before) <= set(after) and len(after) == len(set(after)) == found["trials"]
    assert set(found["seeds_per_configuration"].values()) <= {2, 3, 4}

    # A changed min_effect is not refused either: every look is replayed under the new
    # band, and the recorded decisions are exactly that replay on the finished trials.
    wider = ["--set", "study.min_effect=0.5"]
    result = run_module("ablation.run", str(tmp_path / "sweep.yaml"), *wider, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    found = decisions(tmp_path)
    assert found["rule"]["min_effect"] == 0.5 and found["rule"]["max_seeds"] == 4
    replayed = study_decisions(
        load_study(tmp_path, "adaptive"), load_sweep(tmp_path / "sweep.yaml", wider[1:])
    )
    assert [(e["factor"], e["state"], e["round"]) for e in found["effects"]] == [
        (d.effect.factor, d.state, d.round) for d in replayed
    ]
    assert set(after) <= set(points(tmp_path)) and len(points(tmp_path)) == found["trials"]
