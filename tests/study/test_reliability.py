"""Trials that crash, processes that are killed or interrupted, and runs that repeat exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.data.images import load_images
from ablation.model.training import train
from ablation.sweep.factors import Configuration
from conftest import SMALL_WEIGHTS, load_study

pytestmark = pytest.mark.slow  # studies and trainings, killed and rerun on the command line

SWEEP = """
study: {{name: r, sampler: grid, seeds: [0], isolation: {isolation}}}
data: {{source: {data}, image_size: [64, 64], batch_size: 4, limit_per_class: 6}}
train: {{epochs: {epochs}, optimizer: {optimizer}, learning_rate: {lr}}}
space:
  augment:  {{choice: [false, true]}}
  rotation: {{choice: [0.1, 0.2], when: {{augment: true}}}}
tracking: {{experiment: r}}
"""
CONFIGURATIONS = 3


def write_sweep(
    workdir: Path,
    data: Path,
    *,
    isolation: str = "process",
    epochs: int = 6,
    optimizer: str = "adam",
    lr: float = 0.001,
) -> Path:
    path = workdir / "sweep.yaml"
    path.write_text(
        SWEEP.format(data=data, isolation=isolation, epochs=epochs, optimizer=optimizer, lr=lr)
    )
    return path


def start(sweep: Path, workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ablation.run", str(sweep)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def rerun(sweep: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ablation.run", str(sweep)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def load(workdir: Path) -> optuna.Study:
    return load_study(workdir, "r")


def wait_for_a_trial_mid_training(
    process: subprocess.Popen[str], workdir: Path, number: int
) -> None:
    """Block until trial ``number`` has finished an epoch but not its last one."""
    journal = workdir / "mlruns" / "optuna.journal"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if journal.exists():
            try:
                trials = load(workdir).get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                trials = []
            for trial in trials:
                if (
                    trial.number == number
                    and trial.state == optuna.trial.TrialState.RUNNING
                    and trial.intermediate_values
                ):
                    return
        time.sleep(0.05)
    raise AssertionError("no trial reached the middle of its training in time")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} outlived their study"
        time.sleep(0.1)


def mlflow_runs(workdir: Path) -> list:  # type: ignore[type-arg]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns/mlflow.db'}")
    experiment = client.get_experiment_by_name("r")
    return client.search_runs([experiment.experiment_id])


def assert_every_point_complete_once(workdir: Path) -> None:
    study = load(workdir)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == CONFIGURATIONS
    assert len({t.user_attrs["point"] for t in complete}) == CONFIGURATIONS
    assert not study.get_trials(
        states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    )
    runs = mlflow_runs(workdir)
    assert "RUNNING" not in {r.info.status for r in runs}
    finished = [r for r in runs if r.data.tags.get("ablation.state") == "COMPLETE"]
    assert len(finished) == CONFIGURATIONS == len({r.info.run_name for r in finished})


def test_sigkill_mid_epoch_then_rerun_resumes(tmp_path: Path, small_data: Path) -> None:
    sweep = write_sweep(tmp_path, small_data)
    process = start(sweep, tmp_path)
    wait_for_a_trial_mid_training(process, tmp_path, number=1)
    trial_processes = children(process.pid)
    assert trial_processes  # the trial runs in its own process
    process.kill()
    process.wait()
    wait_gone(trial_processes)  # the trial's process does not outlive the study's
    before = load(tmp_path)
    assert [t.state.name for t in before.trials[:2]] == ["COMPLETE", "RUNNING"]
    assert "RUNNING" in {r.info.status for r in mlflow_runs(tmp_path)}

    result = rerun(sweep, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 trial(s) of an earlier run were interrupted" in result.stderr
    assert_every_point_complete_once(tmp_path)
    study = load(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and len(states) == CONFIGURATIONS + 1
    # The interrupted trial ran again from scratch, with the same configuration and seed.
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    again = [t for t in study.trials if t.user_attrs["point"] == failed.user_attrs["point"]]
    assert [t.state.name for t in again] == ["FAIL", "COMPLETE"]
    assert len(again[1].intermediate_values) == 6
    killed = [r for r in mlflow_runs(tmp_path) if r.info.status == "KILLED"]
    assert len(killed) == 1 and "process running it died" in killed[0].data.tags["error"]
    # The first trial finished before the kill and was kept, not re-run.
    assert study.trials[0].state.name == "COMPLETE"
    assert (
        sum(t.user_attrs["point"] == study.trials[0].user_attrs["point"] for t in study.trials) == 1
    )


def trial_pid(workdir: Path, number: int) -> int:
    return load(workdir).trials[number].user_attrs["pid"]


def trial_processes(pid: int) -> set[int]:
    """The study's trial processes (not multiprocessing's resource tracker)."""
    return {p for p in children(pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}


@dataclass
class Kills:
    """One study whose trial process and, later, spare process were killed (SIGKILL)."""

    workdir: Path
    sweep: Path
    returncode: int
    stderr: str
    spares: set[int]  # trial 0's spare: the next trial's process, started while trial 0 trained
    spare: int  # trial 1's spare, killed while it waited for trial 2


@pytest.fixture(scope="module")
def kills(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> Kills:
    """Trial 0's process killed mid-training (what the kernel's OOM killer would do), then,
    while trial 1 trains, the spare process waiting for trial 2: one study for both tests."""
    workdir = tmp_path_factory.mktemp("kills")
    sweep = write_sweep(workdir, small_data)
    process = start(sweep, workdir)
    wait_for_a_trial_mid_training(process, workdir, number=0)
    running = trial_pid(workdir, 0)
    spares = trial_processes(process.pid) - {running}
    assert len(spares) == 1  # the next trial's process, started while this one trains
    os.kill(running, signal.SIGKILL)
    wait_for_a_trial_mid_training(process, workdir, number=1)
    (spare,) = trial_processes(process.pid) - {trial_pid(workdir, 1)}
    os.kill(spare, signal.SIGKILL)  # dies while it waits for its trial
    _, stderr = process.communicate(timeout=600)
    return Kills(workdir, sweep, process.returncode, stderr, spares, spare)


def test_a_killed_trial_fails_alone_and_is_retried(kills: Kills) -> None:
    assert kills.returncode == 1, kills.stderr[-2000:]
    assert "1 trial(s) failed" in kills.stderr and "Traceback" not in kills.stderr
    study = load(kills.workdir)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "the trial's process died (killed by signal 9)" in study.trials[0].user_attrs["error"]
    assert study.trials[1].user_attrs["pid"] in kills.spares  # the spare ran the next trial
    failed_runs = [r for r in mlflow_runs(kills.workdir) if r.info.status == "FAILED"]
    assert len(failed_runs) == 1, [
        (r.info.run_name, r.info.status, r.data.tags) for r in mlflow_runs(kills.workdir)
    ]
    assert "killed by signal 9" in failed_runs[0].data.tags["error"]

    result = rerun(kills.sweep, kills.workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_every_point_complete_once(kills.workdir)


def test_a_killed_spare_process_costs_no_trial(kills: Kills) -> None:
    study = load(kills.workdir)  # the first run's trials (the other test runs it again)
    # Trial 2 ran, in a fresh process, to the end: the one failed trial is the one killed.
    assert [t.state.name for t in study.trials[:3]] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert kills.spare not in {t.user_attrs["pid"] for t in study.trials[:3]}
    for run in mlflow_runs(kills.workdir):
        if run.data.tags.get("ablation.state") == "COMPLETE":  # each trial's cost outside training
            assert 0 <= run.data.metrics["fixed_seconds"] <= run.data.metrics["wall_seconds"]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sighup"])
def test_ctrl_c_stops_the_trial_and_says_how_to_resume(
    tmp_path: Path, small_data: Path, how: str
) -> None:
    sweep = write_sweep(tmp_path, small_data, epochs=30)
    process = start(sweep, tmp_path)
    wait_for_a_trial_mid_training(process, tmp_path, number=0)
    trial_processes = children(process.pid)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal sends to the whole group
    elif how == "sighup":
        os.killpg(process.pid, signal.SIGHUP)  # a closed terminal, to the whole group
    else:
        process.terminate()  # what kill and job schedulers send, to the study's process only
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130
    assert "interrupted; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    wait_gone(trial_processes)
    # The interrupted trial failed (so it runs again); the rest of the grid still waits.
    trials = load(tmp_path).trials
    assert [t.state.name for t in trials] == ["FAIL", "WAITING", "WAITING"]
    assert len(trials[0].intermediate_values) < 30  # it stopped mid-training, not at the end
    statuses = {r.data.tags.get("ablation.role"): r.info.status for r in mlflow_runs(tmp_path)}
    assert statuses == {"study": "KILLED", "trial": "KILLED"}


def test_a_trial_whose_loss_explodes_fails_and_the_study_goes_on(
    tmp_path: Path, small_data: Path
) -> None:
    # 1e38: the first step overflows float32 (at 1e30 the blog's CNN only dies, loss finite)
    sweep = write_sweep(tmp_path, small_data, isolation="none", epochs=3, optimizer="sgd", lr=1e38)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        summary = run_sweep(load_sweep(sweep))
    assert [o.state for o in summary.outcomes] == ["FAIL"] * CONFIGURATIONS
    assert all("non-finite metric" in (o.error or "") for o in summary.outcomes)
    runs = [r for r in mlflow_runs(tmp_path) if r.data.tags["ablation.role"] == "trial"]
    assert {r.info.status for r in runs} == {"FAILED"} and len(runs) == CONFIGURATIONS
    assert all("FloatingPointError" in r.data.tags["error"] for r in runs)


@pytest.mark.parametrize(
    "choices",
    [
        Configuration(backbone="cnn", augment=True, rotation=0.2),
        Configuration(backbone="mobilenet_v2", augment=True, preprocess="mobilenet_v2"),
    ],
    ids=["cnn+aug", "mobilenet_v2+aug+prep"],
)
def test_same_configuration_and_seed_give_the_same_numbers(
    tmp_path: Path, small_data: Path, choices: Configuration
) -> None:
    sweep = load_sweep(
        write_sweep(tmp_path, small_data, epochs=2),
        [f"model.weights={SMALL_WEIGHTS}", "model.alpha=0.35"],
    )
    images = load_images(sweep.data)
    first = train(choices, seed=3, sweep=sweep, images=images)
    second = train(choices, seed=3, sweep=sweep, images=images)
    other = train(choices, seed=4, sweep=sweep, images=images)
    assert first.history == second.history  # bit for bit, every epoch
    assert (first.test_accuracy, first.test_loss) == (second.test_accuracy, second.test_loss)
    assert first.history["loss"] != other.history["loss"]
    weights = zip(first.model.get_weights(), second.model.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path, small_data: Path) -> None:
    """With a learning rate too small to learn anything, nothing improves after epoch 1."""
    sweep = load_sweep(
        write_sweep(tmp_path, small_data, epochs=10, optimizer="sgd", lr=1e-12),
        ["train.patience=2"],
    )
    images = load_images(sweep.data)
    result = train(Configuration(), seed=0, sweep=sweep, images=images)
    assert result.epochs_run == 3 and result.kept_epoch == 0  # stopped after 2 idle epochs
    assert result.model_val_accuracy == result.history["val_accuracy"][0]
    # The model holds the kept epoch's weights: its validation accuracy is that epoch's.
    x_val = images.x_val.astype("float32")
    predicted = np.argmax(result.model.predict(x_val, verbose=0), axis=1)
    assert float(np.mean(predicted == images.y_val)) == pytest.approx(result.model_val_accuracy)

    learning = load_sweep(write_sweep(tmp_path, small_data, epochs=6), ["train.patience=50"])
    full = train(Configuration(), seed=0, sweep=learning, images=images)
    assert full.epochs_run == 6  # patience longer than the budget: every epoch runs
    assert full.model_val_accuracy == full.history["val_accuracy"][full.kept_epoch]
    assert full.model_val_accuracy == max(full.history["val_accuracy"])
