"""End to end on five classes of real flowers with their own test/ folder: a small sweep
(CNN and MobileNetV2), what MLflow holds about each class, and a report from MLflow alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.data.folders import list_images
from ablation.data.images import decode, load_images
from ablation.results.figures import FIGURES
from ablation.tracking.records import class_metric
from conftest import SHARED, SMALL_WEIGHTS, run_module

pytestmark = pytest.mark.slow  # a really trained study

FLOWERS = SHARED / "data" / "flowers"
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
SIZE = (64, 64)
SWEEP = """
study: {{name: flowers, sampler: grid, seeds: [0], isolation: none}}
data: {{source: {data}, image_size: [64, 64], batch_size: 32}}
train: {{epochs: 1, feature_batch_size: 8}}  # auto's timing: tests/autotune
model: {{weights: {weights}, alpha: 0.35}}
space:
  backbone: {{choice: [cnn, mobilenet_v2]}}
  preprocess: {{choice: [mobilenet_v2]}}
tracking: {{experiment: flowers}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The sweep, run on a copy of the flowers in a fresh folder."""
    workdir = tmp_path_factory.mktemp("flowers")
    data = Path(shutil.copytree(FLOWERS, workdir / "flowers"))
    sweep_file = workdir / "flowers.yaml"
    sweep_file.write_text(SWEEP.format(data=data, weights=SMALL_WEIGHTS))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        summary = run_sweep(load_sweep(sweep_file))
    assert [o.state for o in summary.outcomes] == ["COMPLETE", "COMPLETE"]
    return workdir, data, sweep_file


def trial_runs(workdir: Path):  # type: ignore[no-untyped-def]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("flowers")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`ablation.role` = 'trial'", order_by=["params.backbone"]
    )
    return client, runs


def test_each_class_is_recorded_and_agrees_with_the_saved_model(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import keras

    workdir, data, _ = study
    listing = list_images(data)
    test_files = [path for path, _ in listing.files["test"]]
    truth = np.array([label for _, label in listing.files["test"]])
    assert len(test_files) == 75 and all(p.parent.parent == data / "test" for p in test_files)
    x_test, failed = decode(test_files, SIZE)
    assert failed == []
    images = load_images(load_sweep(workdir / "flowers.yaml").data)
    assert np.array_equal(images.x_test, x_test) and np.array_equal(images.y_test, truth)

    client, runs = trial_runs(workdir)
    assert [run.data.params["backbone"] for run in runs] == ["cnn", "mobilenet_v2"]
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        assert json.loads(params["classes"]) == CLASSES
        assert params["data_layout"] == "train+validation+test"
        assert (params["n_train"], params["n_val"], params["n_test"]) == ("200", "75", "75")
        folder = tmp_path / run.info.run_id
        model = keras.saving.load_model(
            client.download_artifacts(run.info.run_id, "model.keras", str(folder))
        )
        logits = model.predict(x_test.astype("float32"), verbose=0)
        assert logits.shape == (75, 5)
        predicted = np.argmax(logits, axis=1)
        counts = np.zeros((5, 5), int)
        np.add.at(counts, (truth, predicted), 1)
        recorded = json.loads(
            Path(
                client.download_artifacts(run.info.run_id, "confusion_matrix.json", str(folder))
            ).read_text()
        )
        assert recorded["class_names"] == CLASSES
        assert recorded["counts"] == counts.tolist()
        for index, name in enumerate(CLASSES):
            assert metrics[class_metric(index, name)] == pytest.approx(counts[index, index] / 15)
        assert metrics["test_accuracy"] == pytest.approx(np.trace(counts) / 75)
        assert (folder / "confusion_matrix.png").exists() or client.download_artifacts(
            run.info.run_id, "confusion_matrix.png", str(folder)
        )


def test_the_report_needs_only_mlflow(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workdir, data, sweep_file = study
    moved = data.rename(workdir / "moved-away")  # the data is gone
    journal = workdir / "mlruns" / "optuna.journal"
    assert journal.is_file()
    hidden = journal.rename(workdir / "optuna-moved-away")  # and so is the Optuna storage
    try:
        for fmt in ("markdown", "csv", "html", "latex"):
            out = tmp_path / fmt / f"results.{fmt}"
            result = run_module(
                "ablation.report",
                str(sweep_file),
                "--format",
                fmt,
                "-o",
                str(out),
                cwd=workdir,
                timeout=600,
            )
            assert result.returncode == 0, result.stderr
            for name in FIGURES:
                assert (out.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    finally:
        moved.rename(data)
        hidden.rename(journal)

    _, runs = trial_runs(workdir)
    by_id = {run.info.run_id: run for run in runs}
    csv_dir = tmp_path / "csv"
    configurations = pd.read_csv(csv_dir / "results.csv")
    assert len(configurations) == 2 and configurations["seeds"].tolist() == [1, 1]
    assert configurations["test_acc_mean"].dtype == float
    trials = pd.read_csv(csv_dir / "results.trials.csv")
    assert len(trials) == 2 and set(trials["run_id"]) == set(by_id)
    for row in trials.itertuples():
        run = by_id[row.run_id]
        assert (
            row.state == "COMPLETE"
            and row.seed == 0
            and row.backbone == run.data.params["backbone"]
        )
        for name, value in run.data.metrics.items():
            assert trials.loc[row.Index, name] == pytest.approx(value)
    classes = pd.read_csv(csv_dir / "results.classes.csv")
    assert classes["class"].tolist() == CLASSES and classes["test_images"].tolist() == [15] * 5
    for name in ("ablation", "interactions", "importance", "confusion"):
        assert not pd.read_csv(csv_dir / f"results.{name}.csv").empty

    markdown = (tmp_path / "markdown" / "results.markdown").read_text()
    assert "| chance (always 'daisy', tied with 4)" in markdown and "0.200" in markdown
    assert "test accuracy per class" in markdown and "### Trials" in markdown
