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
from scipy import stats

from ablation import load_sweep, run_sweep
from ablation.results.figures import FIGURES
from ablation.results.report import build_report, render
from ablation.tracking.tracker import Tracker
from conftest import CHROMIUM, CHROMIUM_FLAGS, need_chromium, run_module

pytestmark = pytest.mark.slow  # really trained studies, reported on the command line

SWEEP = """
study: {{name: {name}, sampler: grid, seeds: {seeds}, isolation: none}}
data: {{source: {data}, image_size: [48, 48], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 2}}
space:
  augment:  {{choice: [false, true]}}
  rotation: {{choice: [0.1, 0.2], when: {{augment: true}}}}
  backbone: {{choice: [cnn]}}
  preprocess: {{choice: [mobilenet_v2]}}  # raw pixels learn nothing in 2 epochs at 48x48
tracking: {{experiment: report-exp}}
"""
LABELS = ["cnn+prep", "cnn+aug(0.1)+prep", "cnn+aug(0.2)+prep"]


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
    assert sorted(rows) == sorted(LABELS) and len(configurations) == 3
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
    # By hand: per seed, the rotations averaged within the context (no cross product),
    # minus that seed's control; then Student-t over the two per-seed effects.
    control = {seed: test for seed, _, test in records["cnn+prep"]}
    treated = {
        seed: np.mean(
            [
                test
                for label in ("cnn+aug(0.1)+prep", "cnn+aug(0.2)+prep")
                for s, _, test in records[label]
                if s == seed
            ]
        )
        for seed in control
    }
    per_seed = [treated[seed] - control[seed] for seed in sorted(control)]
    augment = effects[("augment", "True")]
    assert float(augment["seeds"]) == 2 and float(augment["contexts_used"]) == 1
    assert float(augment["effect"]) == pytest.approx(np.mean(per_seed))
    half = stats.t.ppf(0.975, 1) * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert float(augment["seed_ci_low"]) == pytest.approx(np.mean(per_seed) - half)
    assert float(augment["seed_ci_high"]) == pytest.approx(np.mean(per_seed) + half)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    n_test = {
        int(client.get_run(r["run_id"]).data.params["n_test"])
        for r in read_csv(tmp_path / "results.trials.csv")
        if r["state"] == "COMPLETE"
    }
    assert {int(float(augment["test_images"]))} == n_test  # every test image, on both sides
    assert augment["verdict"] in ("gain", "loss", "negligible", "undecided")
    rotation = {seed: test for seed, _, test in records["cnn+aug(0.1)+prep"]}
    rotation_diffs = [test - rotation[seed] for seed, _, test in records["cnn+aug(0.2)+prep"]]
    assert float(effects[("rotation", "0.2")]["effect"]) == pytest.approx(np.mean(rotation_diffs))
    assert ("backbone", "cnn") not in effects  # a factor with one level has no effect
    interactions = read_csv(tmp_path / "results.interactions.csv")
    assert {r["context"] for r in interactions if r["factor"] == "augment"} == {
        "backbone=cnn, preprocess=mobilenet_v2"
    }


def test_markdown_counts_what_it_leaves_out(studies) -> None:  # type: ignore[no-untyped-def]
    workdir, paths = studies
    journal = workdir / "mlruns" / "optuna.journal"
    hidden = journal.rename(workdir / "optuna-moved-away")  # the importances need only MLflow
    try:
        result = report_cli(str(paths["two-seeds"]), cwd=workdir)
    finally:
        hidden.rename(journal)
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
    first_cell = {"html": r"<tr[^>]*>\s*<td>{}</td>", "latex": r"^{} &"}
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
    for effect in report.effects:
        if effect.verdict != "baseline":
            assert effect.seeds == 1 and effect.seed_interval is None
            assert "the seed spread is unknown" in effect.basis
            assert effect.verdict == "undecided"  # one seed, one context: never called
    assert "needs a second seed to tell" in text
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


def test_the_html_report_is_one_page_with_its_figures(studies, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Opened alone (nothing beside it) in headless Chromium: every figure shows."""
    from playwright.sync_api import sync_playwright

    need_chromium()
    workdir, paths = studies
    out = tmp_path / "alone" / "report.html"
    result = report_cli(
        str(paths["two-seeds"]), "--format", "html", "-o", str(out), "--no-plots", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    screenshot = tmp_path / "report.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        try:
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            shown = page.eval_on_selector_all(
                "img",
                "images => images.map(i => [i.dataset.figure, i.complete && i.naturalWidth > 0])",
            )
            verdicts = page.eval_on_selector_all("td .verdict", "spans => spans.length")
            blog_rows = page.eval_on_selector_all("tr.blog", "rows => rows.length")
            chance = page.eval_on_selector_all("tr.chance", "rows => rows.length")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    figures = {alt for alt, ok in shown if ok}
    assert {"test_accuracy.png", "ablation_effects.png", "interactions.png"} <= figures
    assert all(ok for _, ok in shown), shown
    assert verdicts >= 2 and blog_rows == 1 and chance == 1  # model1 is the blog's cnn
    assert requested == [out.as_uri()]  # self-contained: nothing else is fetched
    assert screenshot.stat().st_size > 50_000
