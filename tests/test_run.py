"""The command line as a user runs it: a real subprocess, real exit codes, real output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import CATS_AND_DOGS, REPO, run_module

pytestmark = pytest.mark.slow  # the command line in a subprocess; one test trains the blog's grid

BLOG = REPO / "sweeps" / "blog.yaml"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module("ablation.run", *args, cwd=cwd)


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path: Path) -> None:
    result = run(str(BLOG), "--dry-run", "--set", "study.seeds=[0, 1]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "grid of 12 configuration(s) x 2 seed(s) = 24 trial(s), 20 epoch(s) each" in lines[0]
    assert len(lines) == 14 and lines[1].startswith("data: https://")
    for name in ("model1", "model2", "model3", "model4"):
        assert sum(f"[{name}]" in line for line in lines) == 1
    assert not (tmp_path / "mlruns").exists()


def test_dry_run_says_each_backbones_precision(tmp_path: Path) -> None:
    result = run(
        str(BLOG), "--dry-run", "--set", "train.precision={cnn: mixed_bfloat16}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(
        "; cnn in mixed_bfloat16, mobilenet_v2 in float32"
    )
    result = run(str(BLOG), "--dry-run", "--set", "train.precision=float32", cwd=tmp_path)
    assert " in float32" not in result.stdout.splitlines()[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.epochz=1"],
            "unknown key 'train.epochz'; allowed: epochs, optimizer, learning_rate",
        ),
        (
            ["space.backbone.choice=[vgg16]"],
            "'vgg16' is not allowed (allowed: cnn, mobilenet_v2, mobilenet_v3_small",
        ),
        (["data.source=/no/such/folder"], "data.source: '/no/such/folder' is not a directory"),
        (
            ["space.rotation.when={augmnt: true}"],
            "rotation.when names 'augmnt', which is not in the space",
        ),
        (["space.augment.choice=[true"], "'[true' is not valid YAML (expected ',' or ']'"),
        # Adaptive seeds' rule (issue 24):
        (["study.seeds={min: 3, max: 2}"], "study.seeds: min (3) must not be above max (2)"),
        (["study.seeds={min: 1, max: 4}"], "study.seeds: min: Input should be greater than or"),
        (["study.seeds={min: 2}"], "study.seeds: max: Field required (allowed: {min: N, max: M}"),
        (["study.min_effect=0"], "study.min_effect: Input should be greater than 0"),
        (
            ["study.seeds={min: 2, max: 4}", "study.sampler=tpe", "study.trials=4"],
            "'seeds: {min, max}' (adaptive seeds) is for the grid sampler",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    args = [str(BLOG)]
    for override in overrides:
        args += ["--set", override]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(BLOG.read_text().replace("  batch_size: 32", "  batch_size: [32"))
    result = run(str(sweep), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = next(i for i, text in enumerate(sweep.read_text().splitlines(), 1) if "[32" in text)
    assert f"error: {sweep}:" in result.stderr and "YAML syntax error" in result.stderr
    reported = int(result.stderr.split(f"{sweep}:")[1].split(":")[0])
    assert line <= reported <= line + 2


def test_unopenable_tracking_store_is_exit_2(tmp_path: Path, small_data: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run(
        str(BLOG),
        "--set",
        f"data.source={small_data}",
        "--set",
        "data.limit_per_class=2",
        "--set",
        f"tracking.uri=sqlite:///{blocker}/mlflow.db",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "error: tracking.uri: cannot open MLflow store" in result.stderr
    assert "Traceback" not in result.stderr


def test_blog_sweep_quick_run_records_every_configuration(tmp_path: Path) -> None:
    """The issue's acceptance command, run as written (20 images per class, one epoch)."""
    result = run(
        str(BLOG),
        "--set",
        f"data.source={CATS_AND_DOGS}",
        "--set",
        "data.limit_per_class=20",
        "--set",
        "train.epochs=1",
        "--set",
        "study.seeds=[0]",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 12/12" in result.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("blog")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    assert len(runs) == 12
    assert len({r.info.run_name for r in runs}) == 12
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in runs)
    for blog_model in (
        "cnn s0",
        "cnn+aug(0.2) s0",
        "cnn+aug(0.2)+prep s0",
        "mobilenet_v2+aug(0.2)+prep s0",
    ):
        assert blog_model in {r.info.run_name for r in runs}
    # The closing comparison table names the blog's four models ...
    for name in ("model1", "model2", "model3", "model4"):
        assert name in result.stdout
    # ... and the study's parent run carries the full report.
    parent = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'study'")[0]
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/report.md",
        "report/report.html",
        "report/test_accuracy.png",
        "report/validation_curves.png",
        "report/ablation_effects.png",
        "report/data_examples.png",
        "report/augmentation_examples.png",
    } <= attached


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> dict[str, Path]:
    """Data folders with each mistake a user can make."""
    import shutil

    root = tmp_path_factory.mktemp("broken")
    flat = root / "flat"
    (flat / "photos").mkdir(parents=True)
    one_class = root / "one-class"
    for split in ("train", "validation"):
        shutil.copytree(small_data / split / "cats", one_class / split / "cats")
    empty_class = root / "empty-class"
    shutil.copytree(small_data, empty_class)
    for path in (empty_class / "train" / "dogs").iterdir():
        path.unlink()
    weights = root / "not-weights.h5"
    weights.write_text("not an HDF5 file")
    return {"flat": flat, "one-class": one_class, "empty-class": empty_class, "weights": weights}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochs=many"], "train.epochs: Input should be a valid integer"),
        (
            ["train.optimizer=adagrad"],
            "train.optimizer: Input should be 'adam', 'sgd' or 'rmsprop'",
        ),
        (["study.sampler=bayes"], "study.sampler: Input should be 'grid', 'tpe' or 'random'"),
        (["study.pruner=hyperband"], "study.pruner: Input should be 'none' or 'median'"),
        (["space.augment.choice=[]"], "space.augment.choice: List should have at least 1 item"),
        (["data.source={flat}"], "flat has 1 class folder(s); a classifier needs at least two"),
        (["data.source={one-class}"], "has 1 class folder(s); a classifier needs at least two"),
        (["data.source={empty-class}"], "train/dogs has no images"),
        (
            ["data.source=http://127.0.0.1:9/cats_and_dogs.zip"],
            "data.source: cannot download http://127.0.0.1:9/",
        ),
        (
            ["model.weights=/no/such/weights.h5"],
            "model.weights: '/no/such/weights.h5' is not a file",
        ),
        (["model.weights={weights}"], "does not fit MobileNetV2"),
        (
            ["study.storage=postgresql://nobody@127.0.0.1:1/none"],
            "study.storage: cannot open Optuna storage",
        ),
        (
            ["tracking.uri=http://127.0.0.1:9"],
            "tracking.uri: MLflow server 'http://127.0.0.1:9' does not answer",
        ),
    ],
)
def test_every_input_mistake_is_one_line_and_exit_2(
    tmp_path: Path,
    small_data: Path,
    broken_data: dict[str, Path],
    overrides: list[str],
    message: str,
) -> None:
    args = [str(BLOG), "--set", f"data.source={small_data}", "--set", "data.limit_per_class=2"]
    for override in overrides:
        args += ["--set", override.format(**broken_data)]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
