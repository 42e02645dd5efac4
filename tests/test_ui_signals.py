"""``python -m ablation.ui`` ends its MLflow server on Ctrl-C, ``kill`` and a closed terminal.

Real processes: the command as a user starts it, a real ``mlflow ui`` under it,
and the signal a terminal or ``kill`` sends. Afterwards the server's whole process
group is gone and its port is free.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow  # a real MLflow server per signal

SWEEP = """
study: {{name: signals, sampler: grid, seeds: [0]}}
data: {{source: {data}, image_size: [48, 48]}}
space:
  augment: {{choice: [false]}}
tracking: {{experiment: signals-exp}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_the_server_goes_with_the_command(
    sig: signal.Signals, tmp_path: Path, small_data: Path
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(data=small_data))
    MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").create_experiment("signals-exp")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ablation.ui", str(sweep), "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("MLflow UI for study 'signals'"), line + (
            process.stderr.read() if process.stderr else ""
        )
        # The server runs in a session (and process group) of its own, under the command.
        (server,) = [pid for pid in children(process.pid) if os.getpgid(pid) == pid]
        assert len(children(server)) >= 1  # mlflow ui's own workers
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) == 0

        os.kill(process.pid, sig)
        assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
        deadline = time.monotonic() + 30
        while group_alive(server):
            assert time.monotonic() < deadline, f"the MLflow UI outlived ablation.ui ({sig.name})"
            time.sleep(0.2)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        with socket.socket() as probe:  # nothing listens on it: it can be taken again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
