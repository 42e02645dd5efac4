"""Secrets stay secret: a password in a storage or tracking URL is never shown nor recorded.

The slow tests run real studies against the real PostgreSQL (trust auth: any password
is accepted) and a real ``mlflow server`` reached with credentials in its URL, then
search every file the run wrote, a dump of the Optuna database, stdout and stderr,
and the command lines of the running trial processes for the password.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ablation.best import _check_loads
from ablation.errors import UserError, first_line
from ablation.redaction import redact, redact_output
from ablation.study.runner import sweep_yaml
from ablation.study.storage import lock
from ablation.sweep.config import load_sweep
from ablation.ui import mlflow_server
from conftest import REPO, run_module

SWEEP = """
study: {{name: secret, sampler: grid, seeds: [0]}}
data: {{source: {data}, image_size: [48, 48], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 1}}
space:
  augment: {{choice: [false, true]}}
tracking: {{experiment: {experiment}}}
"""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg://u:p%40ss@h:5432/d", "postgresql+psycopg://u:***@h:5432/d"),
        ("https://user:pass:word@mlflow.example", "https://user:***@mlflow.example"),
        ("mysql://:only-a-password@db/optuna", "mysql://:***@db/optuna"),
        (
            "postgresql://h/d?sslmode=require&password=pw",
            "postgresql://h/d?sslmode=require&password=***",
        ),
        ("http://user@host:5000", "http://user@host:5000"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
        ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
        ("/home/me/mlruns/optuna.journal", "/home/me/mlruns/optuna.journal"),
        ("a:b@c is no URL", "a:b@c is no URL"),
        (
            "from 'http://a:x@h1' to \"https://b:y@h2/p\"",
            "from 'http://a:***@h1' to \"https://b:***@h2/p\"",
        ),
        # A password may hold any character the URL grammar allows, a quote too.
        ("postgresql://user:pa'ss@host/db", "postgresql://user:***@host/db"),
        ('open "postgresql://user:pa\'ss@host/db"', 'open "postgresql://user:***@host/db"'),
        ("open 'postgresql://user:pa'ss@host/db'.", "open 'postgresql://user:***@host/db'."),
        ("'postgresql://u:pa\\'s\"s@h/d'", "'postgresql://u:***@h/d'"),  # repr of both quotes
        ("mysql://u:pa%27ss%40%2F%3A@h/d", "mysql://u:***@h/d"),
        ("https://u:!$&'()*+,;=:~-._@h", "https://u:***@h"),
        ("postgresql://o'neil:pw@h/d", "postgresql://o'neil:***@h/d"),
        ("'postgresql://h/d?password=pa'ss' (x)", "'postgresql://h/d?password=***' (x)"),
        (
            "postgresql://h/d?password=pa'ss&sslmode=require",
            "postgresql://h/d?password=***&sslmode=require",
        ),
        ("['--storage', 'mysql://u:pw@h/d']", "['--storage', 'mysql://u:***@h/d']"),
    ],
)
def test_redact_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_user_errors_first_lines_and_log_lines_hold_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "postgresql://alice:s3cretpw@127.0.0.1:5999/optuna"
    assert "s3cretpw" not in str(UserError(f"cannot open {url!r}"))
    assert "alice:***@127.0.0.1:5999" in str(UserError(f"cannot open {url!r}"))
    assert first_line(RuntimeError(f"API request to {url} failed\nmore")) == (
        "API request to postgresql://alice:***@127.0.0.1:5999/optuna failed"
    )
    redact_output()
    with caplog.at_level(logging.WARNING):
        logging.getLogger("mlflow.anything").warning("retrying %s", url)
        try:
            raise ValueError(url)
        except ValueError:
            logging.getLogger("ablation.test").exception("failed")
    assert "s3cretpw" not in caplog.text
    assert "alice:***@127.0.0.1" in caplog.text


def test_an_uncaught_exception_shows_no_password(tmp_path: Path) -> None:
    code = (
        "from ablation.redaction import redact_output; redact_output(); "
        "raise RuntimeError('API request to http://bob:s3cretpw@mlflow.example/api failed')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 1
    assert "RuntimeError: API request to http://bob:***@mlflow.example/api failed" in result.stderr
    assert "s3cretpw" not in result.stderr


def test_the_environment_names_the_stores_when_the_sweep_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ABLATION_STORAGE", "postgresql://alice:s3cretpw@dbhost/optuna")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    sweep = load_sweep(REPO / "sweeps" / "blog.yaml")
    assert sweep.study.storage_url() == "postgresql://alice:s3cretpw@dbhost/optuna"
    assert sweep.tracking.tracking_uri() == "http://mlflow.example:5000"
    text = sweep_yaml(sweep)
    assert "s3cretpw" not in text and "postgresql://alice:***@dbhost/optuna" in text
    # The sweep file and the command line come first.
    sweep = load_sweep(REPO / "sweeps" / "blog.yaml", ["study.storage=other.journal"])
    assert sweep.study.storage_url() == "other.journal"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_storage_or_server_names_the_host_not_the_password(
    tmp_path: Path, small_data: Path
) -> None:
    password = f"pw{uuid.uuid4().hex[:12]}"
    port = free_port()  # nothing listens there
    cases = [
        (
            ["--storage", f"postgresql://alice:{password}@127.0.0.1:{port}/optuna"],
            f"error: study.storage: cannot open Optuna storage "
            f"'postgresql://alice:***@127.0.0.1:{port}/optuna'",
        ),
        (
            ["--tracking-uri", f"http://bob:{password}@127.0.0.1:{port}"],
            f"error: tracking.uri: MLflow server 'http://bob:***@127.0.0.1:{port}' does not answer",
        ),
    ]
    for args, message in cases:
        for debug in ([], ["--debug"]):
            result = run_module(
                "ablation.run",
                str(REPO / "sweeps" / "blog.yaml"),
                "--set",
                f"data.source={small_data}",
                "--set",
                "data.limit_per_class=2",
                *args,
                *debug,
                cwd=tmp_path,
            )
            assert result.returncode == (1 if debug else 2), result.stderr[-3000:]
            shown = message.replace(
                "error: ", "ablation.errors.UserError: " if debug else "error: "
            )
            assert shown in result.stderr, result.stderr[-3000:]
            assert password not in result.stdout + result.stderr
            if not debug:
                assert "Traceback" not in result.stderr
    assert_nowhere(password, tmp_path)


# -- a whole study with a password in its URLs ---------------------------------------------


@pytest.fixture(scope="module")
def server_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the server's store and artifacts (searched for secrets by every test)."""
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="module")
def server(server_store: Path) -> Iterator[str]:
    """A real ``mlflow server`` whose store and artifacts are files under ``server_store``:
    one for the module's tests (starting and stopping one takes 10-20 s), each test its own
    experiment in it."""
    store = server_store
    with mlflow_server(
        f"sqlite:///{store / 'mlflow.db'}",
        port=free_port(),
        artifacts_destination=str(store / "artifacts"),
    ) as base_url:
        yield base_url


def with_password(url: str, user: str, password: str) -> str:
    """``scheme://user:password@rest`` from ``scheme://[user@]rest``."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[-1]}"


def database_text(url: str) -> str:
    """Every row of every table of a database, as text (a dump of what Optuna stored)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        tables = connection.execute(
            sqlalchemy.text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ).scalars()
        rows = [
            row
            for table in list(tables)
            for row in connection.execute(
                sqlalchemy.text(f'SELECT CAST(t AS text) FROM "{table}" t')
            ).scalars()
        ]
    engine.dispose()
    assert any("secret" in row for row in rows)  # the study is there
    return "\n".join(rows)


def fresh_password(form: str = "pw{0}") -> tuple[str, list[str]]:
    """A new password as a URL holds it (``form`` with fresh tokens for ``{0}``, ``{1}``...)
    and those tokens: a password shown whole or in part shows one of them."""
    tokens = [f"pw{uuid.uuid4().hex[:12]}" for _ in range(form.count("{"))]
    return form.format(*tokens), tokens


# A quote and a percent-escape: both allowed in a URL's password.
QUOTED = "{0}'{1}%40{2}"


def leaks(secrets: list[str], *texts: str) -> list[str]:
    """The secrets that any of ``texts`` shows."""
    return [secret for secret in secrets if any(secret in text for text in texts)]


def assert_nowhere(secrets: str | list[str], *folders: Path) -> None:
    """No file or folder under ``folders`` holds a secret in its name, no file in its bytes."""
    needles = [secrets] if isinstance(secrets, str) else secrets
    holding = [
        str(path)
        for folder in folders
        for path in folder.rglob("*")
        if leaks(needles, str(path.relative_to(folder)))
        or (path.is_file() and any(n.encode() in path.read_bytes() for n in needles))
    ]
    assert holding == []


def family_commands(root: int) -> dict[int, str]:
    """What ``ps`` shows now of a process and all its descendants: pid to command line
    (whole: ``-ww``, else ps cuts lines at the width it guesses, 80 under pytest)."""
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True
    ).stdout
    table = [line.split(None, 2) for line in listing.splitlines() if line.strip()]
    family, grown = {root}, True
    while grown:  # children, grandchildren, ... (mlflow's server has uvicorn's workers)
        children = {int(pid) for pid, ppid, *_ in table if int(ppid) in family}
        grown = not children <= family
        family |= children
    return {int(pid): rest[0] for pid, _, *rest in table if int(pid) in family and rest}


def run_watching_processes(
    args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``python -m ablation.run ARGS``, and what ``ps`` showed of each of its trial processes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ablation.run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, str] = {}
    try:
        while process.poll() is None:
            seen |= family_commands(process.pid)
            time.sleep(0.3)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    completed = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    trials = [line for line in seen.values() if "multiprocessing" in line]
    return completed, trials


@pytest.mark.slow
def test_a_password_in_the_urls_is_recorded_nowhere(
    tmp_path: Path, small_data: Path, database: str, server: str, server_store: Path
) -> None:
    # The password holds a quote and a percent-escape, the hardest to redact; each of its
    # three tokens is a plain password of its own, searched for everywhere (a plain password
    # alone, run as a study of its own, checked nothing more).
    password, secrets = fresh_password(QUOTED)
    storage = with_password(database, "postgres", password)
    tracking = with_password(server, "bob", password)
    work = tmp_path / "work"
    work.mkdir()
    sweep = work / "sweep.yaml"
    experiment = "secret-urls"
    sweep.write_text(SWEEP.format(data=small_data, experiment=experiment))
    stores = ["--set", f"study.storage={storage}", "--set", f"tracking.uri={tracking}"]

    result, trials = run_watching_processes(
        [str(sweep), "--storage", storage, "--tracking-uri", tracking], work, dict(os.environ)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert trials, "no trial process was seen"
    assert leaks(secrets, *trials) == []  # ps of a running trial
    assert f"MLflow: http://bob:***@{server.removeprefix('http://')}" in result.stdout
    assert "Optuna: postgresql://postgres:***@127.0.0.1" in result.stdout
    outputs = [result.stdout, result.stderr]
    for module, extra in (
        ("ablation.report", ["-o", str(work / "report.md")]),
        ("ablation.best", ["-o", str(work / "best.keras")]),
    ):
        shown = run_module(module, str(sweep), *stores, *extra, cwd=work)
        assert shown.returncode == 0, shown.stderr[-3000:]
        outputs += [shown.stdout, shown.stderr]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 3  # the study and its two trials
    parent = next(r for r in runs if r.data.tags.get("ablation.role") == "study")
    recorded = client.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path))
    assert "storage: postgresql://postgres:***@" in Path(recorded).read_text()
    assert "uri: http://bob:***@" in Path(recorded).read_text()
    assert leaks(secrets, *outputs, database_text(database)) == []
    assert_nowhere(secrets, tmp_path, server_store)


@pytest.mark.slow
def test_the_environment_carries_the_secrets_and_no_command_line_shows_them(
    tmp_path: Path, small_data: Path, database: str, server: str, server_store: Path
) -> None:
    """ABLATION_STORAGE (a URL without a password) with PGPASSWORD for libpq, and
    MLFLOW_TRACKING_URI with MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD."""
    import optuna

    password = f"pw{uuid.uuid4().hex[:12]}"
    work = tmp_path / "work"
    work.mkdir()
    sweep = work / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data, experiment="secret-env"))
    env = {
        **os.environ,
        "ABLATION_STORAGE": database,
        "PGPASSWORD": password,
        "MLFLOW_TRACKING_URI": server,
        "MLFLOW_TRACKING_USERNAME": "bob",
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    result, trials = run_watching_processes([str(sweep)], work, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert trials, "no trial process was seen"
    assert not [line for line in trials if password in line]
    assert f"MLflow: {server}" in result.stdout
    assert not (work / "mlruns" / "optuna.journal").exists()  # the study went to the database
    study = optuna.load_study(study_name="secret", storage=database)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server)
    experiment = client.get_experiment_by_name("secret-env")
    assert len(client.search_runs([experiment.experiment_id])) == 3
    for text in (result.stdout, result.stderr, database_text(database)):
        assert password not in text
    assert_nowhere(password, tmp_path, server_store)


# -- a storage URL never names a file; the UI's store is on no command line ---------------


@pytest.mark.parametrize(
    "url",
    [
        "postgres://postgres:{}@127.0.0.1:5432/optuna",
        "postgres+psycopg://postgres:{}@127.0.0.1:5432/optuna",
        "oracle://scott:{}@127.0.0.1:1521/optuna",
        "postgresql:/postgres:{}@127.0.0.1:5432/optuna",
    ],
)
def test_a_storage_no_lock_guards_is_refused_and_names_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Such a URL used to become the path of a lock beside a journal file, password and all."""
    password, secrets = fresh_password(QUOTED)
    url = url.format(password)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as refused:
        load_sweep(REPO / "sweeps" / "blog.yaml", [f"study.storage={url}"])
    message = str(refused.value)
    assert "study.storage: " in message
    assert "allowed: " in message or "write postgresql://" in message
    monkeypatch.setenv("ABLATION_STORAGE", url)
    with pytest.raises(UserError):
        load_sweep(REPO / "sweeps" / "blog.yaml")
    with pytest.raises(UserError) as refused, lock(url, "schema"):
        pass
    assert leaks(secrets, str(refused.value)) == []
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_storage_with_a_driver_is_locked_beside_its_file(tmp_path: Path) -> None:
    with lock(f"sqlite+pysqlite:///{tmp_path}/optuna.db?timeout=10", "schema"):
        assert [p.name for p in tmp_path.iterdir()] == ["optuna.schema.lock"]


def test_a_lock_on_postgresql_with_a_driver_holds_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> None:
    password, _ = fresh_password(QUOTED)
    url = with_password(database, "postgres", password).replace(
        "postgresql:", "postgresql+psycopg:"
    )
    monkeypatch.chdir(tmp_path)
    with lock(url, "schema"):
        assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_postgres_url_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    password, secrets = fresh_password(QUOTED)
    url = f"postgres://postgres:{password}@127.0.0.1:5432/optuna"
    for args in (["--storage", url], ["--set", f"study.storage={url}"]):
        result = run_module("ablation.run", str(REPO / "sweeps" / "blog.yaml"), *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr
        assert errors[0].endswith(
            "study.storage: 'postgres://' is an alias SQLAlchemy refuses; "
            "write postgresql:// (or postgresql+DRIVER://)"
        )
        assert leaks(secrets, result.stdout, result.stderr) == []
    assert_nowhere(secrets, tmp_path)


@pytest.mark.slow
def test_the_ui_on_a_database_shows_its_password_on_no_command_line(
    tmp_path: Path, small_data: Path, database: str
) -> None:
    """``ablation.ui`` on a PostgreSQL store (the URI in the environment, as a user keeps it
    off ``ps``): the MLflow server it starts gets the URI in its environment, too."""
    from mlflow import MlflowClient

    password, secrets = fresh_password(QUOTED)
    tracking = with_password(database, "postgres", password)
    MlflowClient(tracking_uri=tracking).create_experiment("secret")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data, experiment="secret"))
    port, output = free_port(), tmp_path / "ui.out"
    with output.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ablation.ui", str(sweep), "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "MLFLOW_TRACKING_URI": tracking},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seen: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 300
        while "MLflow UI for study" not in output.read_text() and process.poll() is None:
            assert time.monotonic() < deadline, output.read_text()[-3000:]
            seen |= family_commands(process.pid)
            time.sleep(0.3)
        seen |= family_commands(process.pid)  # the server and its workers, all up
        served = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        experiment = served.get_experiment_by_name("secret")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0, output.read_text()[-3000:]
    assert experiment is not None  # the server opened the database, not a default store
    assert [line for line in seen.values() if " mlflow " in line and " ui " in line]
    assert leaks(secrets, *seen.values(), output.read_text()) == []
    assert_nowhere(secrets, tmp_path)


def test_a_model_that_holds_code_does_not_load(tmp_path: Path) -> None:
    """``ablation.best`` loads a trial's model from its store, perhaps a remote one: Keras's
    safe mode refuses to run the code a Lambda layer carries."""
    import keras

    inputs = keras.Input((2,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(tmp_path / "m.keras")
    with pytest.raises(UserError, match="the best trial's model does not load"):
        _check_loads(tmp_path / "m.keras")
