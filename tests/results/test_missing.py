"""A report on a study whose artifacts are gone names each part it cannot fill, and why.

A real study is run (``python -m ablation.run``), then its artifacts are taken out of the
artifact store on disk, first as a study recorded before them looks (a few files absent
beside the others: exit 0), then deleted outright, one trial's and the study run's whole
folders, and a file corrupted (exit 1). Below that, what the report stands on: how the
tracker tells an absent artifact from one it cannot read, on a real store.
"""

from __future__ import annotations

import csv
import html
import io
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from mlflow import MlflowClient

from ablation.errors import UserError
from ablation.results.artifacts import ABSENT, MISSING_TITLE
from ablation.sweep.sections import Tracking
from ablation.tracking.tracker import ArtifactMissing, Tracker
from conftest import run_module

SWEEP = """
study: {{name: gaps, sampler: grid, seeds: [0, 1], isolation: none}}
data: {{source: {data}, image_size: [48, 48], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 1}}
space:
  augment: {{choice: [false, true]}}
  backbone: {{choice: [cnn]}}
  preprocess: {{choice: [mobilenet_v2]}}
tracking: {{experiment: gaps-exp}}
"""
PREDICTIONS = "test predictions (test_predictions.csv)"
CONFUSION = "confusion matrix of the best configuration (confusion_matrix.json)"
EXAMPLES = "data picture data_examples.png"
AUGMENTATION = "data picture augmentation_examples.png"
GONE = "cannot read artifact: none of the run's artifacts is in the store"


def test_download_tells_absent_from_unreadable(tmp_path: Path) -> None:
    tracker = Tracker(Tracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"), "downloads")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_json(run_id, {"counts": [[1]]}, "confusion_matrix.json")
    picture = tmp_path / "data_examples.png"
    picture.write_bytes(b"\x89PNG")
    tracker.attach_report(run_id, [picture])
    folder = Path(unquote(urlparse(tracker.client.get_run(run_id).info.artifact_uri).path))

    def missing(path: str) -> ArtifactMissing:
        with pytest.raises(ArtifactMissing) as caught:
            tracker.download(run_id, path, str(tmp_path / "down"))
        return caught.value

    found = tracker.download(run_id, "report/data_examples.png", str(tmp_path / "down"))
    assert found.read_bytes() == b"\x89PNG"
    for path in ("test_predictions.csv", "report/augmentation_examples.png"):
        assert missing(path).absent, path  # the run's other artifacts are there
    (folder / "confusion_matrix.json").unlink()
    (folder / "confusion_matrix.json").symlink_to(tmp_path / "elsewhere" / "gone.json")
    unlisted = missing("confusion_matrix.json")  # the store cannot list the run's files
    assert not unlisted.absent and "No such file or directory" in str(unlisted)
    shutil.rmtree(folder)
    gone = missing("report/data_examples.png")
    assert not gone.absent
    assert (
        str(gone)
        == f"none of the run's artifacts is in the store ({folder.parent.parent.as_uri()})"
    )
    with pytest.raises(UserError, match="the trial's model is not in the store"):
        tracker.download_model(run_id, str(tmp_path / "down"))


@pytest.fixture(scope="module")
def study(small_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A study of 4 trials, run as a user runs it; its folder and sweep file."""
    workdir = tmp_path_factory.mktemp("missing")
    sweep = workdir / "gaps.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    result = run_module("ablation.run", str(sweep), cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir, sweep


def report(workdir: Path, sweep: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("ablation.report", str(sweep), "--no-plots", *args, cwd=workdir, timeout=600)


def runs(workdir: Path) -> tuple[dict[str, Path], Path]:
    """Independently from MLflow: each trial's artifact folder by its label
    (``cnn+prep s0 (trial 0)``), in trial order, and the study run's."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gaps-exp")
    found = client.search_runs([experiment.experiment_id])
    folder = {run.info.run_id: Path(unquote(urlparse(run.info.artifact_uri).path)) for run in found}
    trials = sorted(
        (int(run.data.tags["ablation.trial"]), run.info.run_name, folder[run.info.run_id])
        for run in found
        if run.data.tags["ablation.role"] == "trial"
    )
    (parent,) = [folder[r.info.run_id] for r in found if r.data.tags["ablation.role"] == "study"]
    return {f"{name} (trial {number})": path for number, name, path in trials}, parent


def missing_rows(markdown: str) -> list[tuple[str, str, str, str]]:
    """(part, status, runs, reason) of each row of the report's missing parts."""
    assert markdown.count(f"### {MISSING_TITLE}") == 1
    table = markdown.split(f"### {MISSING_TITLE}")[1].split("###")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    return [tuple(cell.strip() for cell in line.split("|")[1:5]) for line in lines]  # type: ignore[misc]


def errors_in(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def runs_text(labels: list[str], of: int) -> str:
    return f"{len(labels)} of {of} trial(s): {', '.join(labels)}"


@pytest.mark.slow  # a really trained study, reported on the command line
def test_a_report_on_deleted_artifacts_names_each_missing_part(study, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workdir, sweep = study
    intact = report(workdir, sweep)
    assert intact.returncode == 0, intact.stderr
    assert MISSING_TITLE not in intact.stdout and errors_in(intact) == []
    ranked = csv.DictReader(io.StringIO(report(workdir, sweep, "--format", "csv").stdout))
    best_configuration = next(ranked)["configuration"]
    trials, parent = runs(workdir)
    best = [label for label in trials if label.split(" ")[0] == best_configuration]
    other = [label for label in trials if label not in best]
    assert len(best) == 2 and len(other) == 2

    # A study recorded before these artifacts existed: the files absent, their runs' others there.
    for label in other:
        (trials[label] / "test_predictions.csv").unlink()
    (trials[best[1]] / "confusion_matrix.json").unlink()
    (parent / "report" / "data_examples.png").unlink()
    old = report(workdir, sweep)
    assert old.returncode == 0, old.stderr
    assert errors_in(old) == []
    assert missing_rows(old.stdout) == [
        (PREDICTIONS, "absent", runs_text(other, 4), ABSENT),
        (CONFUSION, "absent", runs_text(best[1:], 2), ABSENT),
        (EXAMPLES, "absent", "the study run", ABSENT),
    ]
    assert "test confusion matrix (1 seed(s) summed)" in old.stdout  # the seed that has one
    ablation = old.stdout.split("### Ablation")[1].split("###")[0]
    assert "seeds only: no per-image predictions" in ablation  # no test-set interval, said so

    # Deleted from the store: one trial's and the study run's whole folders; a file corrupted.
    shutil.rmtree(trials[best[0]])
    shutil.rmtree(parent)
    (trials[best[1]] / "test_predictions.csv").write_text("path,true_class,predicted_class\n")
    gone = report(workdir, sweep)
    assert gone.returncode == 1
    assert "Traceback" not in gone.stderr
    errors = errors_in(gone)
    assert errors == [
        f"error: 4 part(s) of the report could not be read from the artifact store ({PREDICTIONS}; "
        f"{CONFUSION}; {EXAMPLES}; {AUGMENTATION}); the report names them under {MISSING_TITLE!r}"
    ]
    rows = missing_rows(gone.stdout)
    store = (workdir / "mlruns" / "artifacts").resolve().as_uri()
    assert [row[:3] for row in rows] == [
        (PREDICTIONS, "absent", runs_text(other, 4)),
        (PREDICTIONS, "cannot read", runs_text(best, 4)),
        (CONFUSION, "absent", runs_text(best[1:], 2)),
        (CONFUSION, "cannot read", runs_text(best[:1], 2)),
        (EXAMPLES, "cannot read", "the study run"),
        (AUGMENTATION, "cannot read", "the study run"),
    ]
    assert rows[1][3] == (
        f"{GONE} ({store}); cannot read artifact: it does not parse (it lists no test image)"
    )
    assert [row[3] for row in rows[3:]] == [f"{GONE} ({store})"] * 3
    assert "Best configuration" not in gone.stdout  # no matrix left to show, and it says so
    assert "no per-class accuracy, confusion matrix or chance level" in gone.stdout
    assert "chance (always" not in gone.stdout

    # Every format names them, and exits 1 the same.
    for fmt in ("html", "latex", "csv"):
        out = tmp_path / f"report.{fmt}"
        result = report(workdir, sweep, "--format", fmt, "-o", str(out))
        assert result.returncode == 1, result.stderr
        assert errors_in(result) == errors
        text = html.unescape((tmp_path / "report.missing.csv" if fmt == "csv" else out).read_text())
        for part in (PREDICTIONS, CONFUSION, EXAMPLES, AUGMENTATION):
            assert part in text, (fmt, part)
        assert best[0] in text and GONE in text
    missing = list(csv.DictReader(io.StringIO((tmp_path / "report.missing.csv").read_text())))
    assert [(row["part"], row["status"]) for row in missing] == [row[:2] for row in rows]
