"""Several workers on one machine, and several "machines" on PostgreSQL and an MLflow server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from ablation.data.images import load_images
from ablation.sweep.config import load_sweep
from ablation.ui import mlflow_server
from conftest import fresh_databases, load_study, run_module

pytestmark = pytest.mark.slow  # workers and machines on the command line, training a grid

SWEEP = """
study: {{name: scale, sampler: grid, seeds: [0, 1]}}
data: {{source: {data}, image_size: [48, 48], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 2}}
space:
  augment:  {{choice: [false, true]}}
  rotation: {{choice: [0.1, 0.2], when: {{augment: true}}}}
tracking: {{experiment: scale}}
"""
POINTS = 6  # 3 configurations x 2 seeds


def run(sweep: Path, cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablation.run", str(sweep), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        stdout, stderr = process.communicate(timeout=1200)
        assert process.returncode == 0, stderr[-3000:]


def assert_grid_done_once(study: optuna.Study, client: MlflowClient) -> list:  # type: ignore[type-arg]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == POINTS
    assert len({t.user_attrs["point"] for t in complete}) == POINTS
    others = [t for t in study.trials if t.state != optuna.trial.TrialState.COMPLETE]
    # A process that asks just after the last point was taken gets a trial with no point,
    # ended at once; nothing else may be left over.
    assert all(t.user_attrs.get("error") == "no grid point left to run" for t in others)
    experiment = client.get_experiment_by_name("scale")
    parents = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    assert len(children) == POINTS
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert len({r.info.run_name for r in children}) == POINTS
    for run in children:
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
            "accuracy_curves.png",
            "confusion_matrix.json",
            "confusion_matrix.png",
            "model.keras",
            "test_predictions.csv",
        }
        (output,) = run.outputs.model_outputs  # the trial's logged model, and its data
        assert client.get_logged_model(output.model_id).source_run_id == run.info.run_id
        assert len(run.inputs.dataset_inputs) == 3
    return children


def test_two_workers_on_one_machine_share_the_grid(tmp_path: Path, small_data: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    finish(run(sweep, tmp_path, "--workers", "2"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    children = assert_grid_done_once(load_study(tmp_path, "scale"), client)
    # The two workers really ran side by side: some trials overlap in time.
    spans = sorted((r.info.start_time, r.info.end_time) for r in children)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    # Each worker's trial processes computed with half the cores (at least one thread).
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for child in children:
        threads = json.loads(child.data.tags["ablation.threads"])
        assert threads == {"intra_op": share, "inter_op": share, "pipeline": share}


def test_threads_per_trial_process_can_be_set(tmp_path: Path, small_data: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    finish(
        run(
            sweep,
            tmp_path,
            "--workers",
            "2",
            "--threads",
            "3",
            "--set",
            "train.epochs=1",
            "--set",
            "study.seeds=[0]",
        )
    )
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scale")
    trials = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    assert len(trials) == 3
    for trial in trials:
        threads = json.loads(trial.data.tags["ablation.threads"])
        assert threads == {"intra_op": 3, "inter_op": 3, "pipeline": 3}


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL databases (Optuna's and MLflow's), dropped afterwards."""
    with fresh_databases("optuna", "mlflow") as (optuna_url, mlflow_url):
        yield optuna_url, mlflow_url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_on_postgres_and_an_mlflow_server(
    tmp_path: Path, small_data: Path, databases: tuple[str, str]
) -> None:
    optuna_url, mlflow_url = databases
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    with mlflow_server(
        mlflow_url, port=free_port(), artifacts_destination=str(tmp_path / "artifacts")
    ) as server:
        machines = []
        for name in ("machine-a", "machine-b"):  # two working directories, as two hosts
            workdir = tmp_path / name
            workdir.mkdir()
            machines.append(run(sweep, workdir, "--storage", optuna_url, "--tracking-uri", server))
        finish(*machines)
        study = optuna.load_study(study_name="scale", storage=optuna_url)
        assert_grid_done_once(study, MlflowClient(tracking_uri=server))
        # The winner goes to the server's registry and loads back through mlflow.pyfunc.
        stores = ["--set", f"study.storage={optuna_url}", "--set", f"tracking.uri={server}"]
        best = run_module("ablation.best", str(sweep), *stores, "--register", "scale", cwd=tmp_path)
        assert best.returncode == 0, best.stderr[-3000:]
        assert "registered 'scale' version 1, alias 'champion'" in best.stdout
        (run_id,) = re.findall(r"MLflow run (\w+)", best.stdout)
        test_accuracy = MlflowClient(server).get_run(run_id).data.metrics["test_accuracy"]
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(tmp_path)
            patch.setenv("MLFLOW_TRACKING_URI", server)
            images = load_images(load_sweep(sweep).data)
            served = mlflow.pyfunc.load_model("models:/scale@champion")
            logits = np.asarray(served.predict(images.x_test.astype("float32")))
        assert np.mean(np.argmax(logits, axis=1) == images.y_test) == pytest.approx(test_accuracy)
    # Both machines trained: each took a share of the grid.
    workers = {t.user_attrs["worker"]["pid"] for t in study.trials if "point" in t.user_attrs}
    assert len(workers) == 2


def test_a_dead_machines_trial_runs_again_elsewhere(
    tmp_path: Path, small_data: Path, databases: tuple[str, str]
) -> None:
    """Machine B (its own host name) dies mid-trial; machine A finds it by its silent heartbeat."""
    import shutil
    import signal
    import time

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to give the second machine its own host name")
    optuna_url, _ = databases
    sweep = tmp_path / "sweep.yaml"
    # One configuration, one seed: the grid is the trial that dies and runs again (40 epochs,
    # so that machine B is still training it when it goes down).
    text = (
        SWEEP.format(data=small_data)
        .replace("seeds: [0, 1]}", "seeds: [0], heartbeat_seconds: 1, grace_seconds: 4}")
        .replace("epochs: 2", "epochs: 40")
        .replace("[false, true]", "[false]")
        .replace("  rotation: {choice: [0.1, 0.2], when: {augment: true}}\n", "")
    )
    assert "rotation" not in text and "grace_seconds" in text
    sweep.write_text(text)
    tracking = f"sqlite:///{tmp_path / 'shared-mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "ablation.run",
        str(sweep),
        "--storage",
        optuna_url,
        "--tracking-uri",
        tracking,
    ]
    machine_b = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", 'hostname machine-b && exec "$@"', "sh", *command],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    storage = optuna.storages.RDBStorage(optuna_url)  # one connection pool for every look
    while True:
        assert machine_b.poll() is None, machine_b.communicate()
        assert time.monotonic() < deadline, "machine B never got into a trial"
        try:
            study = optuna.load_study(study_name="scale", storage=storage)
            running = [
                t
                for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.intermediate_values
            ]
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.2)
    assert running[0].user_attrs["worker"]["host"] == "machine-b"
    os.killpg(machine_b.pid, signal.SIGKILL)  # the whole machine goes down
    machine_b.communicate()
    time.sleep(5)  # longer than grace_seconds: its heartbeat is now stale

    machine_a = subprocess.run(  # the same sweep: a study never mixes two settings
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert machine_a.returncode == 0, machine_a.stderr[-3000:]
    assert "1 trial(s) of an earlier run were interrupted" in machine_a.stderr
    study = optuna.load_study(study_name="scale", storage=optuna_url)
    dead = study.trials[running[0].number]
    assert dead.state == optuna.trial.TrialState.FAIL
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.user_attrs["point"] for t in complete) == sorted(
        {t.user_attrs["point"] for t in study.trials if "point" in t.user_attrs}
    )
    assert dead.user_attrs["point"] in {t.user_attrs["point"] for t in complete}
    runs = MlflowClient(tracking_uri=tracking).search_runs(
        [MlflowClient(tracking_uri=tracking).get_experiment_by_name("scale").experiment_id]
    )
    assert "RUNNING" not in {r.info.status for r in runs}
