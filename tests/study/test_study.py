"""End to end: real training on real photos, checked against the Optuna and MLflow records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.data.images import load_images
from ablation.tracking.predictions import read_predictions
from conftest import SMALL_WEIGHTS, load_study

pytestmark = pytest.mark.slow  # real training on real photos

SWEEP = """
study: {{name: small, sampler: grid, seeds: [0, 1]}}
data: {{source: {data}, image_size: [64, 64], batch_size: 8, limit_per_class: 8}}
train: {{epochs: 2, optimizer: adam, learning_rate: 0.001, precision: {{cnn: mixed_bfloat16}}}}
model: {{weights: {weights}, alpha: 0.35}}
space:
  augment:  {{choice: [false, true]}}
  rotation: {{choice: [0.1], when: {{augment: true}}}}
  backbone: {{choice: [cnn, mobilenet_v2]}}
tracking: {{experiment: small-exp, system_metrics: 0.5}}
"""
# The sweep's grid, written out: rotation only where augment is on.
GRID = [
    {"augment": False, "backbone": "cnn"},
    {"augment": False, "backbone": "mobilenet_v2"},
    {"augment": True, "rotation": 0.1, "backbone": "cnn"},
    {"augment": True, "rotation": 0.1, "backbone": "mobilenet_v2"},
]


@pytest.fixture(scope="module")
def finished_study(small_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A 4-configuration x 2-seed grid, run once in a fresh working directory."""
    workdir = tmp_path_factory.mktemp("study")
    sweep_path = workdir / "sweep.yaml"
    sweep_path.write_text(SWEEP.format(data=small_data, weights=SMALL_WEIGHTS))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        sweep = load_sweep(sweep_path)
        summary = run_sweep(sweep)
    return workdir, sweep_path, sweep, summary


def mlflow_client(workdir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")


def child_runs(client: MlflowClient) -> list:  # type: ignore[type-arg]
    experiment = client.get_experiment_by_name("small-exp")
    return client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")


def test_every_grid_point_ran_once_in_optuna(finished_study) -> None:  # type: ignore[no-untyped-def]
    workdir, _, _, summary = finished_study
    assert len(summary.outcomes) == 8
    assert all(o.state == "COMPLETE" for o in summary.outcomes)
    study = load_study(workdir, "small")
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == len(trials) == 8
    ran = sorted((json.dumps(t.params, sort_keys=True), t.user_attrs["seed"]) for t in trials)
    assert ran == sorted(
        (json.dumps(point, sort_keys=True), seed) for point in GRID for seed in (0, 1)
    )
    for trial in trials:
        assert ("rotation" in trial.params) == trial.params["augment"]
        assert 0.0 <= trial.value <= 1.0


def test_mlflow_has_a_parent_run_and_one_child_per_trial(finished_study) -> None:  # type: ignore[no-untyped-def]
    workdir, _, _, summary = finished_study
    client = mlflow_client(workdir)
    experiment = client.get_experiment_by_name("small-exp")
    assert experiment.artifact_location == (workdir / "mlruns" / "artifacts").as_uri()
    parents = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_id == summary.parent_run_id
    children = child_runs(client)
    assert len(children) == 8
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {summary.parent_run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(
        f"{b}{a} s{s}" for b in ("cnn", "mobilenet_v2") for a in ("", "+aug(0.1)") for s in (0, 1)
    )


def test_child_runs_hold_params_curves_test_accuracy_and_artifacts(finished_study) -> None:  # type: ignore[no-untyped-def]
    workdir, _, sweep, summary = finished_study
    client = mlflow_client(workdir)
    images = load_images(sweep.data)
    by_run = {o.run_id: o for o in summary.outcomes}
    for run in child_runs(client):
        params, metrics = run.data.params, run.data.metrics
        outcome = by_run[run.info.run_id]
        assert params["seed"] == str(outcome.seed)
        assert ("rotation" in params) == (params["augment"] == "True")
        assert params["epochs"] == "2" and params["data_sha256"] == images.fingerprint
        assert ("weights_sha256" in params) == (params["backbone"] == "mobilenet_v2")
        cnn = params["backbone"] == "cnn"
        assert params["precision"] == ("mixed_bfloat16" if cnn else "float32")
        for key in ("accuracy", "loss", "val_accuracy", "val_loss"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [0, 1]
        val_history = sorted(
            client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step
        )
        assert val_history[-1].value == pytest.approx(outcome.model_val_accuracy)
        # Accuracy on the test set is a whole number of correct images.
        n_test = int(params["n_test"])
        assert n_test == len(images.y_test)
        correct = metrics["test_accuracy"] * n_test
        assert correct == pytest.approx(round(correct), abs=1e-4)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {
            "accuracy_curves.png",
            "confusion_matrix.json",
            "confusion_matrix.png",
            "model.keras",
            "test_predictions.csv",
        }


def test_every_trial_run_carries_mlflow_system_metrics(finished_study) -> None:  # type: ignore[no-untyped-def]
    workdir, *_ = finished_study
    client = mlflow_client(workdir)
    for run in child_runs(client):
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
        # Sampled every half second while the trial trained, and once at its end.
        assert len(cpu) >= 2 and sorted(m.step for m in cpu) == list(range(len(cpu)))
        assert all(0.0 <= m.value <= 100.0 for m in cpu) and max(m.value for m in cpu) > 0
        assert len(memory) == len(cpu) and all(m.value > 0 for m in memory)
        started, ended = run.info.start_time, run.info.end_time
        assert all(started <= m.timestamp <= ended for m in cpu)


def test_logged_model_reproduces_the_logged_test_accuracy(finished_study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import keras

    workdir, _, sweep, summary = finished_study
    client = mlflow_client(workdir)
    images = load_images(sweep.data)
    for backbone in ("cnn", "mobilenet_v2"):  # bfloat16 and float32 (the sweep's precision)
        outcome = [o for o in summary.outcomes if o.params["backbone"] == backbone][-1]
        target = tmp_path / backbone
        target.mkdir()
        local = client.download_artifacts(outcome.run_id, "model.keras", str(target))
        model = keras.saving.load_model(local)
        assert model.layers[-1].compute_dtype == "float32"
        if backbone == "cnn":
            assert model.get_layer("conv2d").compute_dtype == "bfloat16"
        logits = model.predict(images.x_test.astype("float32"), verbose=0)
        accuracy = float(np.mean(np.argmax(logits, axis=1) == images.y_test))
        assert accuracy == pytest.approx(outcome.test_accuracy, abs=1e-6)
    png = client.download_artifacts(outcome.run_id, "accuracy_curves.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_invocation_continues_instead_of_repeating(finished_study) -> None:  # type: ignore[no-untyped-def]
    workdir, sweep_path, _, first = finished_study
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        again = run_sweep(load_sweep(sweep_path))
        assert again.outcomes == [] and again.already_done == 8
        assert again.parent_run_id == first.parent_run_id
        more = run_sweep(load_sweep(sweep_path, ["study.seeds=[0, 1, 2]"]))
    assert [o.seed for o in more.outcomes] == [2, 2, 2, 2]
    assert more.already_done == 8
    client = mlflow_client(workdir)
    children = child_runs(client)
    assert len(children) == 12
    names = [r.info.run_name for r in children]
    assert len(set(names)) == 12
    study = load_study(workdir, "small")
    assert len(study.trials) == 12
    points = [json.loads(t.user_attrs["point"]) for t in study.trials]
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 12


def test_a_guided_search_runs_its_try_first_points_first_and_samples_ranges(
    small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sweep_path = tmp_path / "tpe.yaml"
    sweep_path.write_text(f"""
study:
  name: guided
  sampler: tpe
  trials: 3
  isolation: none
  try_first: [{{dropout: 0.1, learning_rate: 0.002}}]
data: {{source: {small_data}, image_size: [32, 32], batch_size: 8, limit_per_class: 4}}
train: {{epochs: 1}}
space:
  dropout: {{low: 0.0, high: 0.5}}
  learning_rate: {{low: 0.0001, high: 0.01, log: true}}
""")
    summary = run_sweep(load_sweep(sweep_path))
    assert [o.state for o in summary.outcomes] == ["COMPLETE"] * 3
    assert summary.outcomes[0].params == {"dropout": 0.1, "learning_rate": 0.002}
    for outcome in summary.outcomes[1:]:
        assert 0.0 <= float(outcome.params["dropout"]) <= 0.5
        assert 0.0001 <= float(outcome.params["learning_rate"]) <= 0.01
    # Running the sweep again neither repeats the first point nor runs more trials.
    again = run_sweep(load_sweep(sweep_path))
    assert again.outcomes == []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("guided")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    rates = sorted(float(run.data.params["learning_rate"]) for run in runs)
    assert len(rates) == 3 and 0.002 in rates  # the trial's factor, not train.learning_rate


def test_each_trial_records_every_test_images_prediction(finished_study) -> None:  # type: ignore[no-untyped-def]
    workdir, _, sweep, _ = finished_study
    client = mlflow_client(workdir)
    images = load_images(sweep.data)
    for run in child_runs(client):
        text = Path(
            client.download_artifacts(run.info.run_id, "test_predictions.csv", str(workdir))
        )
        predictions = read_predictions(text.read_text())
        assert len(predictions.paths) == len(images.y_test) == len(set(predictions.paths))
        assert predictions.class_names == ("cats", "dogs")
        for path, true_class in zip(predictions.paths, predictions.true_class, strict=True):
            assert (Path(sweep.data.source) / path).is_file()
            assert Path(path).parent.name == true_class
        assert [images.class_names.index(c) for c in predictions.true_class] == list(images.y_test)
        np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-4)
        assert predictions.correct.mean() == pytest.approx(run.data.metrics["test_accuracy"])
        assert run.data.tags["ablation.collapsed"] in ("true", "false")


def test_a_network_that_died_is_tagged_collapsed(small_data: Path, tmp_path: Path) -> None:
    """Raw pixels at a learning rate of 1.0: the ReLUs die, the network says 'cats' to all."""
    sweep_path = tmp_path / "sweep.yaml"
    sweep_path.write_text(
        f"study: {{name: dead, sampler: grid, seeds: [0]}}\n"
        f"data: {{source: {small_data}, image_size: [64, 64], batch_size: 8}}\n"
        "train: {epochs: 2, learning_rate: 1.0, patience: null, precision: float32}\n"
        "space: {backbone: {choice: [cnn]}}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        run_sweep(load_sweep(sweep_path))
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("dead").experiment_id], "tags.`ablation.role` = 'trial'"
    )
    assert run.data.tags["ablation.collapsed"] == "true"
    assert run.data.tags["ablation.collapse_reason"].endswith("of the test images")
    text = client.download_artifacts(run.info.run_id, "test_predictions.csv", str(tmp_path))
    assert len(set(read_predictions(Path(text).read_text()).predicted_class)) == 1
