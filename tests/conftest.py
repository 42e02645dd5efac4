"""Shared fixtures: real photos and real weights from ../shared, copied into tmp dirs.

``../shared`` (or ``$ABLATION_SHARED``) holds the blog's data layout and Keras's
weight cache. Keras reads ``KERAS_HOME`` when it is imported, so it is set here,
before any test imports Keras, to a writable copy of the weights.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ABLATION_SHARED", REPO.parent / "shared")).resolve()
CATS_AND_DOGS = SHARED / "data" / "cats_and_dogs"
WEIGHTS = SHARED / "weights" / "keras" / "models"
SMALL_WEIGHTS = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

if not CATS_AND_DOGS.is_dir() or not WEIGHTS.is_dir():
    raise pytest.UsageError(
        f"the tests need the shared data and weights at {SHARED} "
        "(set ABLATION_SHARED to the folder holding data/ and weights/)"
    )

_KERAS_HOME = Path(tempfile.mkdtemp(prefix="ablation-keras-home-"))
shutil.copytree(WEIGHTS, _KERAS_HOME / "models")
os.environ["KERAS_HOME"] = str(_KERAS_HOME)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def need_chromium() -> None:
    """Skip (fail in CI) a browser test where Chromium is missing; checked when the test
    runs, not when it is collected: `-m "not slow"` needs no browser."""
    if not Path(CHROMIUM).exists():
        message = "the browser test needs Chromium (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            raise RuntimeError(message)  # in CI a missing browser is a failure, not a skip
        pytest.skip(message)


def copy_images(
    dest: Path, per_class: int, splits: tuple[str, ...] = ("train", "validation")
) -> Path:
    """Copy the first ``per_class`` real photos of each class and split into ``dest``."""
    for split in splits:
        for class_dir in sorted((CATS_AND_DOGS / split).iterdir()):
            target = dest / split / class_dir.name
            target.mkdir(parents=True)
            files = sorted(class_dir.iterdir(), key=lambda p: int(p.name.split(".")[1]))
            for path in files[:per_class]:
                shutil.copy(path, target / path.name)
    return dest


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 real photos per class in train/ and validation/ (read-only by convention)."""
    return copy_images(tmp_path_factory.mktemp("data") / "cats_and_dogs", per_class=12)


@pytest.fixture(scope="session")
def keras_home() -> Path:
    return _KERAS_HOME


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def frozen_sweep(data: Path, cache_dir: Path, *overrides: str):  # type: ignore[no-untyped-def]
    """``sweeps/blog.yaml`` on ``data`` with the small MobileNetV2 weights (alpha 0.35),
    every epoch trained (no early stopping), one seed; ``overrides`` come last."""
    from ablation.sweep.config import load_sweep

    return load_sweep(
        REPO / "sweeps" / "blog.yaml",
        [
            f"data.source={data}",
            f"data.cache_dir={cache_dir}",
            f"model.weights={SMALL_WEIGHTS}",
            "model.alpha=0.35",
            "train.patience=null",
            "study.seeds=[0]",
            *overrides,
        ],
    )


def load_study(workdir: Path, name: str):  # type: ignore[no-untyped-def]
    """A study from the default storage of a run made in ``workdir`` (read only)."""
    import optuna

    from ablation.study.storage import open_storage

    storage = open_storage(str(workdir / "mlruns" / "optuna.journal"))
    return optuna.load_study(study_name=name, storage=storage)


def run_module(module: str, *args: str, cwd: Path, timeout: int = 900):  # type: ignore[no-untyped-def]
    """``python -m MODULE ARGS`` as a user runs it, output captured."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


POSTGRES_URL = os.environ.get("ABLATION_POSTGRES_URL")  # an admin URL, e.g. .../postgres


@contextlib.contextmanager
def fresh_databases(*prefixes: str) -> Iterator[list[str]]:
    """Fresh PostgreSQL databases, one per prefix, dropped afterwards; the test is skipped
    without ``ABLATION_POSTGRES_URL``."""
    if not POSTGRES_URL:
        pytest.skip("set ABLATION_POSTGRES_URL (an admin URL) to run the PostgreSQL tests")
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    suffix = uuid.uuid4().hex[:10]
    names = [f"ablation_{prefix}_{suffix}" for prefix in prefixes]
    try:
        with engine.connect() as connection:
            for name in names:
                connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"cannot reach PostgreSQL at {POSTGRES_URL}: {str(exc).splitlines()[0]}")
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield [f"{base}/{name}" for name in names]
    finally:
        with engine.connect() as connection:
            for name in names:
                connection.execute(
                    sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
        engine.dispose()


@pytest.fixture
def database() -> Iterator[str]:
    """One fresh PostgreSQL database, dropped afterwards."""
    with fresh_databases("test") as (url,):
        yield url


def wait_until(condition, timeout: float, every: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
