"""GPUs shared by a study's workers: found, chosen, assigned round-robin, and set in every
process's environment before TensorFlow is imported there.

This machine has no GPU (and a CPU build of TensorFlow, which ignores
``CUDA_VISIBLE_DEVICES``), so GPUs are faked through the seam the harness really reads:
an ``nvidia-smi`` script first on ``PATH``. What a process's environment holds when
TensorFlow is imported is read by an import hook (a ``sitecustomize`` on the spawned
processes' ``PYTHONPATH``) that writes one JSON line per process to a log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ablation import load_sweep, run_sweep
from ablation.autotune import gpus, timings
from ablation.autotune.gpus import (
    ALLOW_GROWTH,
    NO_GPU,
    ORDER,
    VISIBLE,
    Gpu,
    GpuPlan,
    applied,
    installed_gpus,
    plan_gpus,
)
from ablation.errors import UserError
from ablation.study import process
from ablation.study.process import SpareProcesses, TrialProcess
from ablation.study.storage import open_storage
from ablation.study.workers import SilentReporter
from conftest import REPO, run_module, wait_until

NAMES = (ALLOW_GROWTH, ORDER, VISIBLE)
GROWTH = {ALLOW_GROWTH: "true", ORDER: "PCI_BUS_ID"}

# Imported by every Python process started with its folder first on PYTHONPATH: when
# the process imports TensorFlow, write what its environment holds then (and, with
# STOP, end the process there: what came before is all a test needs).
IMPORT_HOOK = """
import json, os, sys
import importlib.abc

class _TensorFlowWatch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow":
            sys.meta_path.remove(self)
            names = {names!r}
            seen = {{"pid": os.getpid(), **{{n: os.environ.get(n) for n in names}}}}
            with open(os.environ["ABLATION_TEST_TF_LOG"], "a") as log:
                log.write(json.dumps(seen) + "\\n")
            if os.environ.get("ABLATION_TEST_TF_STOP"):
                os._exit(0)
        return None

if os.environ.get("ABLATION_TEST_TF_LOG"):
    sys.meta_path.insert(0, _TensorFlowWatch())
"""

SMALL = """
study: {{name: gpus, sampler: grid, seeds: [0, 1], isolation: {isolation}}}
data: {{source: {data}, image_size: [32, 32], batch_size: 8, limit_per_class: 6}}
train: {{epochs: 1, precision: float32}}
space:
  augment: {{choice: {augment}}}
tracking: {{experiment: gpus}}
"""


def fake_nvidia_smi(folder: Path, count: int) -> Path:
    """An ``nvidia-smi`` that lists ``count`` GPUs (``-L``), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        f'echo "GPU {i}: Fake GPU {i} (UUID: GPU-{i:08d}-fake)"\n' for i in range(count)
    )
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 2\n{lines}')
    script.chmod(0o755)
    return folder


@pytest.fixture
def fake_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``fake_gpus(G)``: this process (and what it starts) sees G fake GPUs and no
    ``CUDA_VISIBLE_DEVICES`` of the user's."""

    def install(count: int) -> None:
        folder = fake_nvidia_smi(tmp_path / f"bin-{count}", count)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    return install


@pytest.fixture
def tf_import_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Processes started from here log their environment when they import TensorFlow:
    ``log(stop=...)`` arms the hook and returns a reader (pid -> that environment)."""

    def arm(*, stop: bool) -> object:
        hook = tmp_path / "hook"
        hook.mkdir(exist_ok=True)
        (hook / "sitecustomize.py").write_text(IMPORT_HOOK.format(names=NAMES))
        path = tmp_path / "tensorflow-imports.jsonl"
        paths = [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
        monkeypatch.setenv("ABLATION_TEST_TF_LOG", str(path))
        if stop:
            monkeypatch.setenv("ABLATION_TEST_TF_STOP", "1")

        def read() -> dict[int, dict[str, str | None]]:
            lines = path.read_text().splitlines() if path.exists() else []
            return {entry.pop("pid"): entry for entry in map(json.loads, lines)}

        return read

    return arm


# -- found and chosen --------------------------------------------------------------------


def test_gpus_are_read_from_nvidia_smi_first_then_from_the_driver(
    tmp_path: Path, fake_gpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = tmp_path / "driver"
    for bus, model in (("0000:41:00.0", "Driver GPU B"), ("0000:01:00.0", "Driver GPU A")):
        (driver / bus).mkdir(parents=True)
        (driver / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ: \t 88\nGPU UUID: \t GPU-{bus}\nBus Location: {bus}\n"
        )
    fake_gpus(2)
    assert installed_gpus(driver) == [
        Gpu(0, "Fake GPU 0", "GPU-00000000-fake"),
        Gpu(1, "Fake GPU 1", "GPU-00000001-fake"),
    ]
    broken = tmp_path / "broken"  # an nvidia-smi that cannot reach its driver
    broken.mkdir()
    (broken / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (broken / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
    # PCI bus order, as nvidia-smi counts
    assert installed_gpus(driver) == [
        Gpu(0, "Driver GPU A", "GPU-0000:01:00.0"),
        Gpu(1, "Driver GPU B", "GPU-0000:41:00.0"),
    ]
    assert installed_gpus(tmp_path / "no-driver") == []


def test_the_users_cuda_visible_devices_limits_the_gpus(fake_gpus) -> None:
    fake_gpus(4)
    plan = plan_gpus(environ={VISIBLE: "3,GPU-00000001"})
    assert [gpu.index for gpu in plan.gpus] == [3, 1]
    assert plan_gpus(environ={VISIBLE: ""}) == GpuPlan()  # all hidden: nothing set
    assert plan_gpus("1", environ={VISIBLE: "3,1"}).gpus == (
        Gpu(1, "Fake GPU 1", "GPU-00000001-fake"),
    )


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_each_workers_processes_get_its_gpu_round_robin_with_memory_growth(
    count: int, workers: int, fake_gpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What each trial process of each worker is started with (the spawn recorded, not
    made): worker w's GPU is the (w mod G)-th, with memory growth, and only that one."""
    fake_gpus(count)
    plan = plan_gpus()
    started: list[tuple[str, dict[str, str]]] = []

    class Started:
        exitcode = 0

        def is_alive(self) -> bool:
            return True

        def terminate(self) -> None:
            pass

        def join(self, timeout: float | None = None) -> None:
            pass

    def record(context, target, args, environment):  # type: ignore[no-untyped-def]
        assert target is process._child_main
        started.append((args[2], dict(environment)))  # the child's gpu tag, environment
        return Started()

    monkeypatch.setattr(process, "spawn", record)
    sweep = load_sweep(REPO / "sweeps" / "blog.yaml")
    spares = [SpareProcesses(sweep, 1, plan.placement(w)) for w in range(workers)]
    for spare in spares:
        spare.take(more_to_come=True)  # the next one starts, for the same worker
        spare.close()
    expected = [str(w % count) for w in range(workers)]
    # each worker's first process, then the next of each as its first is taken
    assert [gpu for gpu, _ in started] == expected + expected
    assert [env for _, env in started] == [{**GROWTH, VISIBLE: gpu} for gpu in expected * 2]
    assert plan.describe(workers).startswith("gpus: GPU 0 (Fake GPU 0): worker")


def test_no_gpu_found_sets_nothing_and_none_hides_every_gpu() -> None:
    nothing = plan_gpus(installed=[])
    assert nothing.environment(0) == {} and nothing.tag(0) == NO_GPU
    assert nothing.placement(3).on_gpu is False and nothing.describe(2) is None
    hidden = plan_gpus("none", installed=[Gpu(0, "A")])
    assert hidden.environment(1) == {**GROWTH, VISIBLE: "-1"} and hidden.tag(1) == NO_GPU
    chosen = plan_gpus("2,0", installed=[Gpu(i, "A") for i in range(4)])
    assert [chosen.tag(w) for w in range(3)] == ["2", "0", "2"]


@pytest.mark.parametrize(
    ("option", "environ", "message"),
    [
        ("0,0", {}, "--gpus 0,0: GPU 0 is named twice; name each GPU once"),
        ("2", {}, "--gpus 2: no GPU 2 on this machine; allowed: 0, 1 or none"),
        (
            "0;1",
            {},
            "--gpus 0;1: not a list of GPU indices; allowed: nvidia-smi -L's indices, comma-separated (here: 0, 1), or none",
        ),
        ("", {}, "--gpus : not a list of GPU indices"),
        ("-1", {}, "--gpus -1: not a list of GPU indices"),
        ("all", {}, "--gpus all: not a list of GPU indices"),
        (
            "0",
            {VISIBLE: "1"},
            "--gpus 0: GPU 0 is hidden by CUDA_VISIBLE_DEVICES=1; allowed: 1 or none",
        ),
    ],
)
def test_a_bad_gpus_option_says_what_is_wrong_and_what_is_allowed(
    option: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(UserError) as raised:
        plan_gpus(option, installed=[Gpu(0, "A"), Gpu(1, "B")], environ=environ)
    assert str(raised.value).startswith(message)
    with pytest.raises(
        UserError, match=r"^--gpus 0: no GPU found on this machine .*; allowed: none$"
    ):
        plan_gpus("0", installed=[], environ={})


def test_the_command_line_says_a_bad_gpus_in_one_line_and_exits_2(
    fake_gpus, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ablation import run

    monkeypatch.setattr(run, "stop_on_signals", lambda: None)  # this is pytest's process
    monkeypatch.setattr(run, "configure_logging", lambda debug: None)
    fake_gpus(2)
    for option, message in (("0,0", "GPU 0 is named twice"), ("5", "no GPU 5 on this machine")):
        assert run.main([str(REPO / "sweeps" / "blog.yaml"), "--gpus", option]) == 2
        errors = capsys.readouterr().err.splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"error: --gpus {option}: {message}")


def test_a_spawned_process_sets_its_environment_before_its_target_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in NAMES:
        monkeypatch.setenv(name, "before")  # restored afterwards
    seen = []
    gpus._bootstrap(
        {VISIBLE: "3", ALLOW_GROWTH: "true"},
        lambda x: seen.append((x, os.environ[VISIBLE], os.environ[ALLOW_GROWTH])),
        ("arg",),
    )
    assert seen == [("arg", "3", "true")]


def test_a_spare_on_a_gpu_only_imports_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow as tf

    def touched(*args: object) -> None:
        raise AssertionError("an op ran")

    monkeypatch.setattr(tf, "constant", touched)
    process._warm_up(run_an_op=False)
    with pytest.raises(AssertionError, match="an op ran"):
        process._warm_up(run_an_op=True)


# -- real processes ----------------------------------------------------------------------


@pytest.mark.slow  # spawns 12 trial processes (each ends when it imports TensorFlow)
def test_each_trial_process_has_its_gpu_and_memory_growth_when_it_imports_tensorflow(
    fake_gpus, tf_import_log
) -> None:
    """Worker w's trial processes, for 4 workers on 1, 2 and 4 GPUs: the environment that
    a real spawned trial process holds when it imports TensorFlow."""
    read = tf_import_log(stop=True)
    sweep = load_sweep(REPO / "sweeps" / "blog.yaml")
    for count in (1, 2, 4):
        fake_gpus(count)
        plan = plan_gpus()
        started = [TrialProcess(sweep, 1, plan.placement(w)) for w in range(4)]
        try:
            pids = {trial.process.pid: w for w, trial in enumerate(started)}
            wait_until(lambda: set(pids) <= set(read()), timeout=240, every=0.2)  # noqa: B023
        finally:
            for trial in started:
                trial.close()
        seen = read()
        for pid, worker in pids.items():
            assert seen[pid] == {**GROWTH, VISIBLE: str(worker % count)}, (count, worker)


@pytest.mark.slow  # spawns a timing process that imports TensorFlow
def test_a_timing_process_computes_on_worker_0s_gpu_with_memory_growth(
    fake_gpus, tf_import_log
) -> None:
    read = tf_import_log(stop=False)
    fake_gpus(2)
    plan = plan_gpus("1,0")
    with applied(plan.environment(0)):  # as run_sweep does for the study's process
        assert timings.machine_identity()["gpus"] == ["Fake GPU 1"]
        pid = timings.in_spawned_process(os.getpid, threads=1)
    assert read()[pid] == {**GROWTH, VISIBLE: "1"}
    assert VISIBLE not in os.environ and timings.machine_identity()["gpus"] == [
        "Fake GPU 0",
        "Fake GPU 1",
    ]


@pytest.mark.slow  # a two-worker study on the command line
def test_two_workers_on_two_gpus_each_trial_on_its_workers_gpu(
    tmp_path: Path, small_data: Path, fake_gpus, tf_import_log
) -> None:
    read = tf_import_log(stop=False)
    fake_gpus(2)
    sweep = tmp_path / "gpus.yaml"
    sweep.write_text(SMALL.format(isolation="process", data=small_data, augment="[false, true]"))
    result = run_module("ablation.run", str(sweep), "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    line = "gpus: GPU 0 (Fake GPU 0): worker 0; GPU 1 (Fake GPU 1): worker 1; memory growth on"
    assert line in result.stdout.splitlines()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpus")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    tags = {int(run.data.tags["ablation.trial"]): run.data.tags for run in runs}
    assert len(tags) == 4 and {t["ablation.gpu"] for t in tags.values()} == {"0", "1"}
    assert all("ablation.threads" in t for t in tags.values())
    storage = open_storage(str(tmp_path / "mlruns" / "optuna.journal"))
    study = optuna.load_study(study_name="gpus", storage=storage)
    seen = read()
    for trial in study.trials:  # its process had its GPU and memory growth at TensorFlow's import
        assert seen[trial.user_attrs["pid"]] == {
            **GROWTH,
            VISIBLE: tags[trial.number]["ablation.gpu"],
        }
    # The study's own process (it decodes the images) is worker 0's.
    assert seen[study.trials[0].user_attrs["worker"]["pid"]] == {**GROWTH, VISIBLE: "0"}


@pytest.mark.slow  # trains one small model in this process
def test_a_trial_in_the_studys_process_runs_on_worker_0s_gpu(
    tmp_path: Path, small_data: Path, fake_gpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fake_gpus(2)
    sweep = tmp_path / "gpus.yaml"
    sweep.write_text(SMALL.format(isolation="none", data=small_data, augment="[false]"))
    during = []

    class Watch(SilentReporter):
        def trial_started(self, index: int, total: int, label: str) -> None:
            during.append({name: os.environ.get(name) for name in NAMES})

    run_sweep(load_sweep(sweep, ["study.seeds=[0]"]), Watch(), gpus="1")
    assert during == [{**GROWTH, VISIBLE: "1"}]
    assert all(name not in os.environ for name in NAMES)  # as it was before the study
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpus")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    assert run.data.tags["ablation.gpu"] == "1"
