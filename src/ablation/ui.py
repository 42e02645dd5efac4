"""Open a sweep's results in the MLflow UI, without remembering the store's URI.

Usage::

    python -m ablation.ui sweeps/blog.yaml            # http://127.0.0.1:5000
    python -m ablation.ui sweeps/blog.yaml --port 5001 --set tracking.uri=...

It starts ``mlflow ui`` on the sweep's store, a SQLite file or a database (with one
worker: enough for one person, and light on a laptop; a password never on its command
line), prints the address of the study's runs in the "Model training" view (where the
trials are nested under the study's run), and stops the server, with every process it
started, on Ctrl-C, ``kill`` (SIGTERM) or a closed terminal (SIGHUP). A sweep whose
``tracking.uri`` is already a server just gets that server's address.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

from ablation.cli import configure_logging, stop_on_signals, sweep_parser, user_error
from ablation.errors import UserError
from ablation.redaction import redact
from ablation.sweep.config import Sweep, load_sweep
from ablation.sweep.stores import is_server, sqlite_file
from ablation.tracking.tracker import Tracker


def runs_view(base_url: str, experiment_id: str) -> str:
    """The address of an experiment's runs table, trials nested under their study."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@contextlib.contextmanager
def serve(sweep: Sweep, host: str = "127.0.0.1", port: int = 5000) -> Iterator[str]:
    """Run the MLflow UI on the sweep's store while the context is open; yields its base URL.

    Raises:
        UserError: The store does not exist, or the server does not come up.
    """
    uri = sweep.tracking.tracking_uri()
    if is_server(uri):
        yield uri.rstrip("/")
        return
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise UserError(f"tracking.uri: no MLflow store at {uri!r}; run the sweep first")
    with mlflow_server(uri, host=host, port=port, command="ui") as base_url:
        yield base_url


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    artifacts_destination: str | None = None,
    command: str = "server",
) -> Iterator[str]:
    """``mlflow server`` (or ``mlflow ui``) while the context is open; yields its base URL.

    One worker (enough for a study's writers, light on a laptop). The server runs
    in its own process group: mlflow's uvicorn workers and job consumers outlive a
    SIGTERM to their parent, so the whole group is ended on the way out. The store's
    URI reaches it in the environment, never on its command line.
    """
    arguments = [sys.executable, "-m", "mlflow", command]
    arguments += ["--host", host, "--port", str(port), "--workers", "1"]
    # A database URI holds a password, and `ps` shows every command line to every user;
    # `mlflow server` (and `mlflow ui`, its alias) reads these two as its options' envvars.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    if artifacts_destination is not None:
        env["MLFLOW_ARTIFACTS_DESTINATION"] = artifacts_destination
    # Its log goes to a file: a pipe nobody reads would fill up and stall the server.
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            arguments, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log
        )
        base_url = f"http://{host}:{port}"
        try:
            _wait_until_up(server, base_url, log)
            yield base_url
        finally:
            _stop_group(server)


def _wait_until_up(
    server: subprocess.Popen[bytes], base_url: str, log: IO[bytes], timeout: float = 120
) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            error = log.read().decode(errors="replace")
            last = next((line for line in reversed(error.splitlines()) if line.strip()), "")
            raise UserError(f"the MLflow UI did not start ({last or f'exit {server.returncode}'})")
        try:
            if requests.get(f"{base_url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise UserError(f"the MLflow UI did not answer at {base_url} within {timeout:.0f} s")


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        deadline = time.monotonic() + 10
        while _group_alive(server.pid) and time.monotonic() < deadline:
            server.poll()  # reap the leader, or it lingers in the group as a zombie
            time.sleep(0.2)
        if not _group_alive(server.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def experiment_id(sweep: Sweep) -> str:
    return Tracker.existing(sweep.tracking, sweep.experiment_name).experiment_id


def main(argv: list[str] | None = None) -> int:
    parser = sweep_parser("python -m ablation.ui", "Open a sweep's results in the MLflow UI.")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    configure_logging(args.debug)
    stop_on_signals()
    try:
        sweep = load_sweep(args.sweep, args.overrides)
        experiment = experiment_id(sweep)
        with serve(sweep, args.host, args.port) as base_url:
            print(
                f"MLflow UI for study {sweep.study.name!r}: "
                f"{redact(runs_view(base_url, experiment))}",
                flush=True,
            )
            print("Ctrl-C (or SIGTERM, SIGHUP) stops it.", flush=True)
            while True:
                time.sleep(3600)
    except UserError as exc:
        return user_error(exc, args.debug)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
