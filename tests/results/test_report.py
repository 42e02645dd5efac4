"""The report against the MLflow records of a small, really trained study."""

from __future__ import annotations

import csv
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.results.figures import FIGURES
from ablation.results.report import build_report, render
from ablation.tracking.tracker import Tracker
from conftest import run_module

pytestmark = pytest.mark.slow  # really trained studies, reported on the command line

SWEEP = """
study: {{name: {name}, sampler: grid, seeds: {seeds}, isolation: none}}
data: {{source: {data}, image_size: [48, 48], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 2}}
space:
  augment:  {{choice: [false, true]}}
  rotation: {{choice: [0.1, 0.2], when: {{augment: true}}}}
  backbone: {{choice: [cnn]}}
tracking: {{experiment: report-exp}}
"""
LABELS = ["cnn", "cnn+aug(0.1)", "cnn+aug(0.2)"]


@pytest.fixture(scope="module")
def studies(small_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Two real studies in one store: two seeds (plus failed, pruned, running records), one seed."""
    workdir = tmp_path_factory.mktemp("report")
    paths = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        for name, seeds in (("two-seeds", "[0, 1]"), ("one-seed", "[0]")):
            paths[name] = workdir / f"{name}.yaml"
            paths[name].write_text(SWEEP.format(name=name, seeds=seeds, data=small_data))
            summary = run_sweep(load_sweep(paths[name]))
            assert [o.state for o in summary.outcomes] == ["COMPLETE"] * (3 * len(eval(seeds)))
        # Trials that did not complete, recorded the way the harness records them; their
        # test accuracy of 0 would pull every mean down if it were counted.
        sweep = load_sweep(paths["two-seeds"])
        tracker = Tracker(sweep.tracking, sweep.experiment_name)
        parent = summary_parent(tracker, "two-seeds")
        for state in ("FAIL", "PRUNED", "RUNNING"):
            run_id = tracker.start_trial(
                parent,
                study_name="two-seeds",
                number=99,
                name=f"cnn s{state}",
                params={"augment": False, "backbone": "cnn", "seed": 7},
            )
            tracker.log_epoch(run_id, 0, {"val_accuracy": 0.0})
            if state == "FAIL":
                tracker.client.log_metric(run_id, "test_accuracy", 0.0)
                tracker.fail_trial(run_id, "RuntimeError: out of memory")
            elif state == "PRUNED":
                tracker.prune_trial(run_id, epochs_run=1)
    return workdir, paths


def summary_parent(tracker: Tracker, study: str) -> str:
    parent_id, _ = tracker.trial_records(study, {})
    assert parent_id is not None
    return parent_id


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_module("ablation.report", *args, cwd=cwd, timeout=600)


def complete_runs(workdir: Path, study: str) -> dict[str, list[tuple[int, float, float]]]:
    """Independently from MLflow: label -> [(seed, best val acc, test acc)] of complete trials."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("report-exp")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`ablation.study` = '{study}' and tags.`ablation.role` = 'trial'"
        " and tags.`ablation.state` = 'COMPLETE' and attributes.status = 'FINISHED'",
    )
    by_label: dict[str, list[tuple[int, float, float]]] = {}
    for run in runs:
        label = run.info.run_name.rsplit(" ", 1)[0]
        by_label.setdefault(label, []).append(
            (
                int(run.data.params["seed"]),
                run.data.metrics["best_val_accuracy"],
                run.data.metrics["test_accuracy"],
            )
        )
    return by_label


def read_csv(path: Path | str) -> list[dict[str, str]]:
    text = path.read_text() if isinstance(path, Path) else path
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_matches_the_mlflow_records(studies, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workdir, paths = studies
    out = tmp_path / "results.csv"
    result = report_cli(
        str(paths["two-seeds"]), "--format", "csv", "-o", str(out), "--no-plots", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    configurations = read_csv(out)
    rows = {row["configuration"]: row for row in configurations}
    assert sorted(rows) == LABELS and len(configurations) == 3
    records = complete_runs(workdir, "two-seeds")
    for label, runs in records.items():
        tests = [t for _, _, t in runs]
        vals = [v for _, v, _ in runs]
        assert int(rows[label]["seeds"]) == 2 == len(tests)
        # Two seeds: the mean is (a + b) / 2 and the sample SD |a - b| / sqrt(2).
        assert float(rows[label]["test_acc_mean"]) == pytest.approx((tests[0] + tests[1]) / 2)
        assert float(rows[label]["test_acc_sd"]) == pytest.approx(
            abs(tests[0] - tests[1]) / np.sqrt(2)
        )
        assert float(rows[label]["val_acc_mean"]) == pytest.approx((vals[0] + vals[1]) / 2)
    order = [float(r["val_acc_mean"]) for r in configurations]
    assert order == sorted(order, reverse=True)

    ablation = read_csv(tmp_path / "results.ablation.csv")
    effects = {(r["factor"], r["level"]): r for r in ablation}
    control = {seed: test for seed, _, test in records["cnn"]}
    differences = [
        test - control[seed]
        for label in ("cnn+aug(0.1)", "cnn+aug(0.2)")
        for seed, _, test in records[label]
    ]
    augment = effects[("augment", "True")]
    assert int(augment["pairs"]) == 4
    assert float(augment["effect"]) == pytest.approx(np.mean(differences))
    rotation = {seed: test for seed, _, test in records["cnn+aug(0.1)"]}
    rotation_diffs = [test - rotation[seed] for seed, _, test in records["cnn+aug(0.2)"]]
    assert float(effects[("rotation", "0.2")]["effect"]) == pytest.approx(np.mean(rotation_diffs))
    assert ("backbone", "cnn") not in effects  # a factor with one level has no effect


def test_markdown_counts_what_it_leaves_out(studies) -> None:  # type: ignore[no-untyped-def]
    workdir, paths = studies
    result = report_cli(str(paths["two-seeds"]), cwd=workdir)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "6 complete trial(s); not in any mean: 1 pruned, 1 fail, 1 running" in text
    table = text.split("### Ablation")[0]
    for label in LABELS:
        assert len(re.findall(rf"^\| {re.escape(label)} +\|", table, flags=re.M)) == 1
    assert "cnn s" not in text.split("### Configurations")[1].split("###")[0].replace("seeds", "")
    importance = text.split("### Parameter importance")[1]
    assert re.search(r"^\| all trials +\| augment +\| +[01](\.\d+)? \| 6 trials", importance, re.M)
    assert re.search(r"^\| trials with augment=True +\| rotation +\|", importance, re.M)
    figures = [workdir / "mlruns" / "reports" / "two-seeds" / name for name in FIGURES]
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_and_latex_hold_every_configuration_once(studies, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    workdir, paths = studies
    records = complete_runs(workdir, "two-seeds")
    first_cell = {"html": r"<tr>\s*<td>{}</td>", "latex": r"^{} &"}
    table_end = {"html": "</table>", "latex": "\\end{tabular}"}
    for fmt, cell in first_cell.items():
        out = tmp_path / f"report.{fmt}"
        result = report_cli(str(paths["two-seeds"]), "--format", fmt, "-o", str(out), cwd=workdir)
        assert result.returncode == 0, result.stderr
        text = out.read_text()
        configurations = text.split(table_end[fmt])[0]
        for label, runs in records.items():
            pattern = cell.format(re.escape(label))
            assert len(re.findall(pattern, configurations, flags=re.M)) == 1
            mean = np.mean([t for _, _, t in runs])
            assert f"{mean:.3f}" in text
        assert (tmp_path / "test_accuracy.png").is_file()  # figures go beside the output
    assert "\\begin{tabular}" in (tmp_path / "report.latex").read_text()


def test_one_seed_says_so_instead_of_a_spread(studies, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    workdir, paths = studies
    monkeypatch.chdir(workdir)  # the sweep's default stores are under ./mlruns
    report = build_report(load_sweep(paths["one-seed"]))
    assert all(row.test.sd is None for row in report.configurations)
    text = render(report, "markdown")
    assert text.count("(one seed)") == 6  # validation and test of three configurations
    rotation = next(e for e in report.effects if e.factor == "rotation" and e.level == 0.2)
    assert rotation.pairs == 1 and "too few to tell" in rotation.verdict()
    assert all(row["test_acc_sd"] == "" for row in read_csv(render(report, "csv")))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "--format 'pdf' is unknown (allowed: markdown, csv, html, latex)"),
        (["--set", "study.name=never-ran"], "no trials of study 'never-ran'"),
        (
            ["--set", "tracking.uri=http://127.0.0.1:9"],
            "MLflow server 'http://127.0.0.1:9' does not answer",
        ),
        (
            ["--set", "tracking.uri=sqlite:///nowhere/mlflow.db"],
            "no MLflow store at 'sqlite:///nowhere/mlflow.db'",
        ),
        (["--set", "tracking.experiment=other"], "no experiment 'other'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(studies, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    workdir, paths = studies
    result = report_cli(str(paths["two-seeds"]), *args, cwd=workdir)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
