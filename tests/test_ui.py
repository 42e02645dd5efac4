"""The MLflow UI as a user sees it: a real server, a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from conftest import CHROMIUM, CHROMIUM_FLAGS, need_chromium

pytestmark = pytest.mark.slow  # a study, a server and a browser

SWEEP = """
study: {{name: ui-study, sampler: grid, seeds: [0], isolation: none}}
data: {{source: {data}, image_size: [48, 48], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 2}}
space:
  augment:  {{choice: [false, true]}}
  rotation: {{choice: [0.2], when: {{augment: true}}}}
tracking: {{experiment: ui-exp}}
"""


@pytest.fixture(scope="module", autouse=True)
def _chromium() -> None:
    need_chromium()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def finished(small_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    workdir = tmp_path_factory.mktemp("ui")
    sweep = workdir / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        run_sweep(load_sweep(sweep))
    return workdir, sweep


@pytest.fixture
def ui(finished):  # type: ignore[no-untyped-def]
    """``python -m ablation.ui`` as a user starts it; yields the address it prints."""
    workdir, sweep = finished
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ablation.ui", str(sweep), "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    assert line.startswith("MLflow UI for study 'ui-study': http://127.0.0.1:"), line + (
        process.stderr.read() if process.stderr else ""
    )
    yield line.split(": ", 1)[1].strip()
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal that runs it
    process.wait(60)
    deadline = time.monotonic() + 30
    while True:  # the server and its workers went with it
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the MLflow UI outlived ablation.ui"
        time.sleep(0.2)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_study_and_its_trials_appear_nested_with_test_accuracy(
    ui: str,
    finished,
    tmp_path: Path,
    request: pytest.FixtureRequest,  # type: ignore[no-untyped-def]
) -> None:
    from playwright.sync_api import sync_playwright

    workdir, _ = finished
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ui-exp")
    trials = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    expected = {run.info.run_name: run.data.metrics["test_accuracy"] for run in trials}
    digests = {run.data.params["data_sha256"] for run in trials}
    assert len(digests) == 1
    assert sorted(expected) == ["cnn s0", "cnn+aug(0.2) s0"]
    assert f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning" in ui

    screenshot = tmp_path / "mlflow-ui.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(ui)
            page.get_by_text("ui-study", exact=True).first.wait_for(timeout=90_000)
            assistant = page.get_by_role("button", name="Close")
            if assistant.count():
                assistant.first.click()
            assert page.get_by_text("ui-exp", exact=True).count() >= 1  # the experiment
            # The trials are nested under the study's run: expand it.
            page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            for name in expected:
                page.get_by_text(name, exact=True).wait_for(timeout=30_000)
            page.get_by_role("button", name="Columns").click()
            menu = page.locator("[role=dialog], [role=menu], [role=listbox]").first
            for column in ("test_accuracy", "augment", "rotation", "seed"):
                menu.get_by_text(column, exact=True).first.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(screenshot))

            names = page.locator("[row-index] [col-id='attributes.`Run Name`']")
            accuracies = page.locator("[row-index] [col-id='metrics.`test_accuracy`']")
            shown, datasets, models = {}, {}, {}
            for index in range(names.count()):
                row = names.nth(index).evaluate(
                    "e => e.closest('[row-index]').getAttribute('row-index')"
                )
                name = names.nth(index).inner_text().split("\n")[-1]
                cells = page.locator(f"[row-index='{row}']")
                shown[name] = cells.locator("[col-id='metrics.`test_accuracy`']").first.inner_text()
                datasets[name] = cells.locator("[col-id='attributes.`Dataset`']").first.inner_text()
                models[name] = cells.locator("[col-id='attributes.`Models`']").first.inner_text()
            assert accuracies.count() == 3
            assert shown["ui-study"] == "-"  # the study's own run has no test accuracy
            for name, value in expected.items():
                assert float(shown[name]) == pytest.approx(value, abs=1e-3)
            # Each trial's data (Dataset column) and its logged model (Models column).
            (digest,) = digests
            for name in expected:
                for context in ("training", "validation", "test"):
                    assert f"cats_and_dogs-{context} ({digest})" in datasets[name], datasets
                assert models[name].strip() == "model", models
            assert models["ui-study"].strip() == "-"
            # The experiment's Models tab lists them, each from its trial's run.
            page.goto(ui.split("#")[0] + f"#/experiments/{experiment.experiment_id}/models")
            for name in expected:
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            assert page.get_by_text("Ready", exact=True).count() == len(expected)
            page.screenshot(path=str(tmp_path / "mlflow-models.png"))
        except Exception:
            page.screenshot(path=str(screenshot))
            print(f"screenshot of the failing page: {screenshot}")
            raise
        finally:
            browser.close()
    shutil.copy(screenshot, workdir / "mlflow-ui.png")  # kept for a person to look at
    request.node.user_properties.append(("screenshot", str(screenshot)))
