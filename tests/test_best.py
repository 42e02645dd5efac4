"""``python -m ablation.best``: the best trial by validation accuracy, and its model out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.best import best_record
from ablation.data.images import load_images
from ablation.results.artifacts import read_study
from ablation.tracking.records import TrialRecord, TrialState
from conftest import SMALL_WEIGHTS, run_module

SWEEP = f"""
study: {{name: best, sampler: grid, seeds: [0], isolation: none}}
data: {{source: {{data}}, image_size: [64, 64], batch_size: 8}}
train: {{epochs: 2, feature_batch_size: 8}}  # auto's timing: tests/autotune
model: {{weights: {SMALL_WEIGHTS}, alpha: 0.35}}
space:
  backbone:   {{choice: [cnn, mobilenet_v2]}}
  preprocess: {{choice: [mobilenet_v2]}}
  pooling:    {{choice: [max, avg], when: {{backbone: mobilenet_v2}}}}
tracking: {{experiment: best}}
"""


def record(
    run_id: str,
    number: int,
    val: float | None,
    test: float,
    state: str = "COMPLETE",
    best_epoch_val: float = 1.0,
) -> TrialRecord:
    return TrialRecord(
        run_id=run_id,
        params={},
        seed=0,
        state=TrialState(state),
        number=number,
        best_val_accuracy=best_epoch_val,  # the best epoch's: not what the saved model has
        model_val_accuracy=val,
        test_accuracy=test,
    )


def test_best_is_chosen_on_validation_never_on_test() -> None:
    records = [  # in MLflow's order, newest first
        record("e", 5, None, 1.00, state="FAIL"),
        record("d", 4, 0.99, 1.00, state="PRUNED"),
        record("c", 3, 0.90, 0.95),  # a tie on validation: the earlier trial wins
        record("b", 2, 0.90, 0.70),
        record("a", 1, 0.80, 0.99),
    ]
    best = best_record(records)
    assert best is not None and best.run_id == "b"
    reversed_best = best_record(records[::-1])  # the trial number breaks the tie, not the order
    assert reversed_best is not None and reversed_best.run_id == "b"
    assert best_record([r for r in records if r.state != "COMPLETE"]) is None


@pytest.mark.parametrize(
    ("records", "winner"),
    [
        # A higher test accuracy never wins: 0.71 beats 0.70 on validation, whatever the test says.
        ([record("x", 1, 0.70, 0.99), record("y", 2, 0.71, 0.10)], "y"),
        ([record("y", 2, 0.71, 0.10), record("x", 1, 0.70, 0.99)], "y"),
        # A three-way tie: the lowest trial number (3), wherever it is in the list.
        ([record("p", 7, 0.80, 0.9), record("q", 3, 0.80, 0.1), record("r", 5, 0.80, 0.5)], "q"),
        # Trial 0 is a trial like any other: it wins its tie.
        ([record("one", 1, 0.5, 0.9), record("zero", 0, 0.5, 0.1)], "zero"),
        # The saved model's validation accuracy counts, not the best epoch's.
        (
            [
                record("peak", 1, 0.50, 0.9, best_epoch_val=0.99),
                record("steady", 2, 0.60, 0.1, best_epoch_val=0.60),
            ],
            "steady",
        ),
        # A complete trial without the saved model's accuracy cannot be chosen.
        ([record("unknown", 1, None, 1.0), record("known", 2, 0.10, 0.0)], "known"),
    ],
    ids=[
        "test-ignored",
        "test-ignored-reversed",
        "three-way-tie",
        "trial-0",
        "saved-model",
        "none",
    ],
)
def test_best_record_hand_picked(records: list[TrialRecord], winner: str) -> None:
    best = best_record(records)
    assert best is not None and best.run_id == winner


def test_no_best_without_a_complete_trial_with_an_accuracy() -> None:
    assert best_record([]) is None
    assert best_record([record("unknown", 1, None, 1.0)]) is None
    assert best_record([record("f", 1, 0.9, 0.9, state="FAIL")]) is None


@pytest.fixture(scope="module")
def study(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("best")
    path = workdir / "best.yaml"
    path.write_text(SWEEP.replace("{data}", str(small_data)))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        summary = run_sweep(load_sweep(path))
    assert [o.state for o in summary.outcomes] == ["COMPLETE"] * 3
    return path


@pytest.mark.slow  # a study, then the command line
def test_best_writes_the_trials_model_which_classifies_raw_images(study: Path) -> None:
    import keras

    workdir = study.parent
    result = run_module("ablation.best", str(study), "-o", "out/model.keras", cwd=workdir)
    assert result.returncode == 0, result.stderr

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        sweep = load_sweep(study)
        _, _, records = read_study(sweep)
        images = load_images(sweep.data)
    # The run it names is a complete trial that no other complete trial beats on the saved
    # model's validation accuracy, nor ties with a lower trial number.
    (run_id,) = re.findall(r"MLflow run (\w+)", result.stdout)
    by_id = {r.run_id: r for r in records}
    best = by_id[run_id]
    assert best.state == "COMPLETE" and best.model_val_accuracy is not None
    others = [r for r in records if r.state == "COMPLETE" and r.run_id != run_id]
    assert len(others) == 2
    for other in others:
        assert other.model_val_accuracy is not None
        assert other.model_val_accuracy < best.model_val_accuracy or (
            other.model_val_accuracy == best.model_val_accuracy and other.number > best.number
        ), (other, best)
    assert f"validation accuracy {best.model_val_accuracy:.4f}" in result.stdout
    assert f"test accuracy       {best.test_accuracy:.4f}" in result.stdout
    assert "0=cats, 1=dogs" in result.stdout

    model = keras.saving.load_model(workdir / "out" / "model.keras")
    logits = model.predict(images.x_test.astype("float32"), verbose=0)  # raw 0-255 RGB
    assert logits.shape == (len(images.y_test), 2)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == images.y_test))
    assert accuracy == pytest.approx(best.test_accuracy)  # the trial's test accuracy, reproduced
    # ... and the very predictions of the model the trial recorded.
    client = MlflowClient(tracking_uri=sweep.tracking.tracking_uri())
    recorded = keras.saving.load_model(
        client.download_artifacts(best.run_id, "model.keras", str(workdir))
    )
    np.testing.assert_array_equal(
        recorded.predict(images.x_test.astype("float32"), verbose=0), logits
    )


@pytest.mark.slow  # a study, then the command line
def test_best_refuses_a_file_that_is_not_keras(study: Path) -> None:
    result = run_module("ablation.best", str(study), "-o", "model.h5", cwd=study.parent)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: -o model.h5: the model file must end in .keras")


@pytest.mark.slow  # a study, then the command line
def test_best_of_a_study_never_run_is_one_line(study: Path) -> None:
    result = run_module("ablation.best", str(study), "--set", "study.name=never", cwd=study.parent)
    assert result.returncode == 2
    assert "no trials of study 'never'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a study, then the command line twice
def test_mlflow_alone_has_each_trials_model_and_data_and_the_registered_winner(
    study: Path, small_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    workdir = study.parent
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("best")
    trials = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    assert len(trials) == 3
    assert len(client.search_logged_models([experiment.experiment_id])) == 3
    for run in trials:
        # One logged model (Keras flavour), linked to the run, with the trial on it.
        (output,) = run.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == run.info.run_id and model.status == "READY"
        assert model.experiment_id == experiment.experiment_id
        assert (
            model.params["seed"] == "0" and model.params["backbone"] == run.data.params["backbone"]
        )
        assert model.tags["ablation.configuration"] == run.info.run_name
        assert json.loads(model.tags["ablation.class_names"]) == ["cats", "dogs"]
        on_model = {m.key: m.value for m in model.metrics}
        assert on_model["test_accuracy"] == run.data.metrics["test_accuracy"]
        assert "val_accuracy" not in on_model  # an epoch's curve value is not the model's
        # Three dataset inputs: the data's fingerprint, its folder, the split's size and classes.
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["test", "training", "validation"]
        sizes = {"training": "n_train", "validation": "n_val", "test": "n_test"}
        for context, dataset in inputs.items():
            assert dataset.digest == run.data.params["data_sha256"]
            assert json.loads(dataset.source) == {"uri": str(small_data)}
            profile = json.loads(dataset.profile)
            assert profile["num_rows"] == int(run.data.params[sizes[context]])
            assert profile["classes"] == ["cats", "dogs"]

    result = run_module("ablation.best", str(study), "--register", "cats-dogs", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "registered 'cats-dogs' version 1, alias 'champion'" in result.stdout
    (run_id,) = re.findall(r"MLflow run (\w+)", result.stdout)
    version = client.get_model_version_by_alias("cats-dogs", "champion")
    assert str(version.version) == "1" and version.run_id == run_id
    best = client.get_run(run_id)
    assert version.tags["ablation.study"] == "best"
    assert version.tags["ablation.configuration"] == best.info.run_name
    assert float(version.tags["ablation.test_accuracy"]) == pytest.approx(
        best.data.metrics["test_accuracy"], abs=1e-4
    )
    assert float(version.tags["ablation.val_accuracy"]) == pytest.approx(
        best.data.metrics["model_val_accuracy"], abs=1e-4
    )

    # The registered version, through mlflow.pyfunc, on the raw test images (0-255).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        images = load_images(load_sweep(study).data)
    served = mlflow.pyfunc.load_model("models:/cats-dogs@champion")
    logits = np.asarray(served.predict(images.x_test.astype("float32")))
    classes = np.argmax(logits, axis=1)
    assert float(np.mean(classes == images.y_test)) == pytest.approx(
        best.data.metrics["test_accuracy"]
    )
    # ... and the same classes as the trial's recorded test predictions, image by image
    # counted into its confusion matrix (rows: true class, columns: predicted).
    recorded = mlflow.artifacts.load_dict(f"runs:/{run_id}/confusion_matrix.json")
    counts = np.zeros((2, 2), int)
    np.add.at(counts, (images.y_test, classes), 1)
    assert recorded["counts"] == counts.tolist()

    # Registering again makes version 2 and moves the alias to it.
    again = run_module("ablation.best", str(study), "--register", "cats-dogs", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "version 2" in again.stdout
    assert str(client.get_model_version_by_alias("cats-dogs", "champion").version) == "2"
    assert len(client.search_model_versions("name = 'cats-dogs'")) == 2
