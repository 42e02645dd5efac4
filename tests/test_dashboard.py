"""optuna-dashboard on a study's own storage: the default journal file, and PostgreSQL.

``optuna-dashboard mlruns/optuna.journal`` (the README's command) is started as a
user starts it; the study's trials are read back through its HTTP API and match
what Optuna holds; then it is stopped (Ctrl-C) and its port is free again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import requests

from ablation import load_sweep, run_sweep
from ablation.study.storage import open_storage
from conftest import load_study

pytestmark = pytest.mark.slow  # a study and a server

SWEEP = """
study: {{name: dash, sampler: grid, seeds: [0], isolation: none}}
data: {{source: {data}, image_size: [32, 32], batch_size: 8, limit_per_class: 4}}
train: {{epochs: 1}}
space:
  augment: {{choice: [false, true]}}
tracking: {{experiment: dash}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dashboard_command() -> list[str]:
    found = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[test]')")
    return [found]


def dashboard_trials(storage: str, study_name: str) -> list[dict]:  # type: ignore[type-arg]
    """Start optuna-dashboard on ``storage``, read the study's trials over HTTP, stop it."""
    port = free_port()
    process = subprocess.Popen(
        [*dashboard_command(), storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # two shared cores: starting it can be slow
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                studies = requests.get(f"{base}/api/studies", timeout=30)
                if studies.ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "optuna-dashboard did not answer"
            time.sleep(0.3)
        (summary,) = [s for s in studies.json()["study_summaries"] if s["study_name"] == study_name]
        detail = requests.get(f"{base}/api/studies/{summary['study_id']}", timeout=180)
        assert detail.ok, detail.text
        trials = detail.json()["trials"]
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    stderr = process.stderr.read() if process.stderr else ""
    assert process.returncode != -signal.SIGKILL, f"Ctrl-C did not stop it: {stderr[-2000:]}"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return trials


def assert_same_trials(shown: list[dict], study: optuna.Study) -> None:  # type: ignore[type-arg]
    expected = {t.number: t for t in study.trials}
    assert sorted(t["number"] for t in shown) == sorted(expected)
    for trial in shown:
        frozen = expected[trial["number"]]
        assert trial["state"].upper() == frozen.state.name
        params = {p["name"]: p["param_external_value"] for p in trial["params"]}
        assert params == {k: str(v) for k, v in frozen.params.items()}
        if frozen.values:
            assert trial["values"] == pytest.approx(frozen.values)


def test_the_dashboard_opens_the_default_journal_file(tmp_path: Path, small_data: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        summary = run_sweep(load_sweep(sweep))
    assert [o.state for o in summary.outcomes] == ["COMPLETE", "COMPLETE"]
    study = load_study(tmp_path, "dash")
    shown = dashboard_trials(str(tmp_path / "mlruns" / "optuna.journal"), "dash")
    assert len(shown) == 2
    assert_same_trials(shown, study)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask/tell, no optimize
def test_the_dashboard_opens_a_postgresql_storage(database: str) -> None:
    # The storage as the harness makes it (its tables, its heartbeat), with a finished,
    # a pruned and a failed trial: no training needed to read them back.
    study = optuna.create_study(
        study_name="dash-pg", storage=open_storage(database), direction="maximize"
    )
    for value, state in ((0.75, "COMPLETE"), (None, "PRUNED"), (None, "FAIL")):
        trial = study.ask({"augment": optuna.distributions.CategoricalDistribution([False, True])})
        study.tell(trial, value, state=optuna.trial.TrialState[state])
    assert_same_trials(dashboard_trials(database, "dash-pg"), study)
