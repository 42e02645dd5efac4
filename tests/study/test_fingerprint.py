"""A study is found again by its name and its settings: an edited sweep is refused before any
trial, ``--new-study`` runs it apart, and what only adds work continues."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ablation.study.fingerprint import changes, new_study_name, study_settings
from ablation.study.storage import open_storage
from ablation.sweep.config import load_sweep
from conftest import REPO, run_module, write_sweep

BLOG = REPO / "sweeps" / "blog.yaml"
IDENTITY = {"data_sha256": "0123456789abcdef"}


def settings_of(*overrides: str) -> dict[str, object]:
    return study_settings(load_sweep(BLOG, list(overrides)), IDENTITY, {})


def test_what_decides_the_results_is_compared() -> None:
    base = settings_of()
    assert changes(base, settings_of("train.epochs=10")) == ["train.epochs: 20 -> 10"]
    assert changes(base, settings_of("data.image_size=[96, 96]")) == [
        "data.image_size: [160, 160] -> [96, 96]"
    ]
    [line] = changes(base, settings_of("space.rotation.choice=[0.1, 0.3]"))
    assert line.startswith("space.rotation: ") and "0.3" in line
    other_photos = study_settings(load_sweep(BLOG), {"data_sha256": "fedcba9876543210"}, {})
    assert changes(base, other_photos) == ["data.identity: 0123456789abcdef -> fedcba9876543210"]
    weights = {"weights": "imagenet", "alpha": 1.0, "weights_sha256": "aa"}
    assert changes(base, study_settings(load_sweep(BLOG), IDENTITY, weights)) == [
        "model.alpha: (absent) -> 1.0",
        "model.weights: (absent) -> imagenet",
        "model.weights_sha256: (absent) -> aa",
    ]


@pytest.mark.parametrize(
    "override",
    [
        "study.seeds=[0, 1, 2]",  # more seeds: more trials of the same settings
        "study.min_effect=0.02",  # the report's
        "study.isolation=none",
        "data.source=/elsewhere/the_same_photos",  # the identity is the photos', not the path's
        "data.cache_dir=/tmp/another_cache",
        "train.cache_features=false",  # exact either way
        "train.feature_batch_size=8",
        "tracking.experiment=another",
    ],
)
def test_what_only_adds_work_or_changes_no_result_continues(override: str) -> None:
    assert changes(settings_of(), settings_of(override)) == []


def test_the_new_study_name_follows_the_settings() -> None:
    assert new_study_name("blog", settings_of()) == new_study_name("blog", settings_of())
    assert new_study_name("blog", settings_of()) != new_study_name(
        "blog", settings_of("train.epochs=10")
    )
    assert new_study_name("blog", settings_of()).startswith("blog-")


TINY = """
study: {{name: tiny, sampler: grid, seeds: [0], isolation: none}}
data: {{source: {data}, image_size: [32, 32], batch_size: 8}}
train: {{epochs: 1}}
space:
  augment: {{choice: [false]}}
"""


def trial_counts(workdir: Path) -> dict[str, int]:
    storage = open_storage(str(workdir / "mlruns" / "optuna.journal"))
    return {
        summary.study_name: summary.n_trials
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }


def trial_runs(workdir: Path) -> int:
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiments = client.search_experiments()
    return len(
        client.search_runs([e.experiment_id for e in experiments], "tags.`ablation.role` = 'trial'")
    )


def refusal(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.slow
def test_an_edited_sweep_is_refused_then_runs_under_new_study(
    tmp_path: Path, small_data: Path
) -> None:
    sweep = str(write_sweep(tmp_path / "tiny.yaml", TINY.format(data=small_data)))

    def run(*args: str):  # type: ignore[no-untyped-def]
        return run_module("ablation.run", sweep, *args, cwd=tmp_path, timeout=600)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    assert trial_counts(tmp_path) == {"tiny": 1}

    # Edited training and an edited space: refused before any trial, naming the change.
    line = refusal(run("--set", "train.epochs=2"))
    assert "study 'tiny'" in line and "train.epochs: 1 -> 2" in line
    assert "study.name" in line and "--new-study" in line
    line = refusal(run("--set", "space.augment.choice=[false, true]"))
    assert "space.augment: " in line
    assert trial_counts(tmp_path) == {"tiny": 1} and trial_runs(tmp_path) == 1

    # --new-study: a study of its own, named in the refusal and in the output.
    expected = line.split("--new-study (study '")[1].rstrip("')")
    apart = run("--set", "space.augment.choice=[false, true]", "--new-study")
    assert apart.returncode == 0, apart.stderr[-3000:]
    assert f"new study {expected!r}" in apart.stdout
    assert trial_counts(tmp_path) == {"tiny": 1, expected: 2}
    again = run("--set", "space.augment.choice=[false, true]", "--new-study")
    assert again.returncode == 0 and "nothing to run" in again.stdout
    assert trial_counts(tmp_path) == {"tiny": 1, expected: 2}

    # More seeds only add work: the old study continues.
    more = run("--set", "study.seeds=[0, 1]")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "1 of 2 trial(s) were already done" in more.stdout
    assert trial_counts(tmp_path) == {"tiny": 2, expected: 2}

    # The MLflow record refuses too, where the Optuna storage no longer knows the study.
    (tmp_path / "mlruns" / "optuna.journal").unlink()
    shutil.rmtree(tmp_path / "mlruns" / "cache", ignore_errors=True)
    line = refusal(run("--set", "train.epochs=2"))
    assert "in MLflow" in line and "train.epochs: 1 -> 2" in line
    assert trial_runs(tmp_path) == 4
