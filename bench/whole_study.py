"""A whole study: sweeps/blog.yaml with several seeds, end to end, against the blog's recipe.

    KERAS_HOME=/tmp/keras-home python bench/whole_study.py --data ../shared/data/cats_and_dogs
    python bench/whole_study.py --limit 40 --epochs 2 --seeds 0     # a few minutes, a check
    python bench/whole_study.py --set "space.backbone.choice=[mobilenet_v2]"   # half the grid

(a) The harness, for real: ``python -m ablation.run sweeps/blog.yaml`` with
``study.seeds`` set (12 configurations x 3 seeds = 36 trials with the defaults),
in fresh stores and a fresh image cache, as a user runs it; its wall time from
start to exit (decoding, every trial, recording, the report). The memory of
every process it starts is sampled (``/proc/PID/smaps_rollup``, RSS, PSS, USS).

(b) The blog's recipe for the same (configuration, seed) pairs: its own code
(``image_dataset_from_directory`` decoding every epoch, one Keras model per
configuration, float32, every epoch run, no early stopping), generalized to the
twelve configurations. It is not run 36 times: for each configuration its model
trains 2 epochs here, the same day, and its time for ``--epochs`` epochs is
extrapolated as ``first + (epochs - 1) * second + test``, where ``first`` is the
first epoch (graph tracing included), ``second`` the second epoch and ``test`` its
evaluation on the test batches; a seed changes the numbers, not the work, so each
configuration counts once per seed.

Prints trials per hour, each trial's wall time and fixed cost (wall time minus
training: getting its process, opening the stores, recording), the peak memory of
the trial processes, the ratio (b)/(a), and the study's own report with the
ablation table's verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blog_vs_harness import limited_copy, time_machine  # noqa: E402
from memory import child_pids, memory_of  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
BLOG_SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "blog.yaml"


def recipe_seconds(data: Path, configuration: dict, epochs: int) -> tuple[float, float, float]:
    """The recipe's first epoch, second epoch and test pass for one configuration, in s."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(0)
    size = (160, 160)
    train = keras.utils.image_dataset_from_directory(
        data / "train", shuffle=True, batch_size=32, image_size=size, verbose=False
    )
    validation = keras.utils.image_dataset_from_directory(
        data / "validation", shuffle=True, batch_size=32, image_size=size, verbose=False
    )
    test_batches = max(1, int(validation.cardinality()) // 5)
    test = validation.take(test_batches).prefetch(tf.data.AUTOTUNE)
    validation = validation.skip(test_batches).prefetch(tf.data.AUTOTUNE)
    stack: list = [keras.Input(shape=(*size, 3))]
    if configuration["preprocess"] == "mobilenet_v2":
        i = keras.Input(shape=(*size, 3))  # the blog's preprocessor
        stack.append(keras.Model(i, keras.applications.mobilenet_v2.preprocess_input(i)))
    if configuration["augment"]:
        stack += [layers.RandomFlip(), layers.RandomRotation(configuration["rotation"])]
    if configuration["backbone"] == "cnn":
        stack += [
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ]
    else:
        base = keras.applications.MobileNetV2(input_shape=(*size, 3), include_top=False)
        base.trainable = False
        stack += [base, layers.GlobalMaxPooling2D(), layers.Dropout(0.2), layers.Dense(2)]
    model = keras.Sequential(stack)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    times = []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            times.append(time.perf_counter() - self.started)

    model.fit(
        train.prefetch(tf.data.AUTOTUNE),
        epochs=min(2, epochs),
        validation_data=validation,
        callbacks=[Clock()],
        verbose=0,
    )
    started = time.perf_counter()
    model.evaluate(test, verbose=0)
    tested = time.perf_counter() - started
    keras.backend.clear_session()
    return times[0], times[-1], tested


def configurations(overrides: list[str]) -> list[dict]:
    """The configurations of sweeps/blog.yaml (twelve; fewer with ``overrides`` of its
    space), as the harness plans them."""
    from ablation import load_sweep
    from ablation.study.plan import grid_points

    sweep = load_sweep(BLOG_SWEEP, [*overrides, "study.seeds=[0]"])
    configs = []
    for params, _ in grid_points(sweep):
        config = {"augment": False, "rotation": 0.0, "preprocess": "none", **params}
        configs.append(config)
    return configs


class TreeMemory:
    """Peak RSS / PSS / USS of this process's children (the study's process) and of
    their children (its trial processes), sampled every 0.2 s."""

    def __init__(self) -> None:
        self.peaks: dict[int, dict[str, float]] = {}
        self.studies: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def trial_processes(self) -> list[dict[str, float]]:
        return [peak for pid, peak in self.peaks.items() if pid not in self.studies]

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.studies |= child_pids()
            trials = {pid for study in self.studies for pid in child_pids(study)}
            for pid in self.studies | trials:
                memory = memory_of(pid)
                if memory is None:
                    continue
                peak = self.peaks.setdefault(pid, dict.fromkeys(memory, 0.0))
                for key, value in memory.items():
                    peak[key] = max(peak[key], value)
            time.sleep(0.2)


def harness(
    data: Path, seeds: list[int], epochs: int, workers: int, workdir: Path, overrides: list[str]
) -> dict:
    """Run the study on the command line; its wall time, output and trial records."""
    command = [
        sys.executable, "-m", "ablation.run", str(BLOG_SWEEP),
        "--set", f"data.source={data}",
        "--set", f"study.seeds={json.dumps(seeds)}",
        "--set", f"train.epochs={epochs}",
        "--set", f"data.cache_dir={workdir}/cache",
        "--storage", f"{workdir}/optuna.journal",
        "--tracking-uri", f"sqlite:///{workdir}/mlflow.db",
        "--workers", str(workers),
        *(item for override in overrides for item in ("--set", override)),
    ]  # fmt: skip
    memory = TreeMemory()
    started = time.perf_counter()
    errors = workdir / "stderr.txt"  # a file, not a pipe: a full pipe would stall the study
    with open(errors, "w") as stderr_file:
        process = subprocess.Popen(
            command, cwd=workdir, stdout=subprocess.PIPE, stderr=stderr_file, text=True
        )
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # streamed: a long run shows its progress as it goes
            lines.append(line)
            print(f"    | {line}", end="", flush=True)
        returncode = process.wait()
    stderr = errors.read_text()
    wall = time.perf_counter() - started
    memory.stop.set()
    if returncode != 0:
        raise SystemExit(f"the study failed ({returncode}):\n{stderr[-3000:]}")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("blog")
    runs = client.search_runs([experiment.experiment_id], "tags.`ablation.role` = 'trial'")
    return {"wall": wall, "stdout": "".join(lines), "runs": runs, "memory": memory}


def main() -> None:
    from ablation.cli import add_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cats_and_dogs"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--limit", type=int, help="images per class and split (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip-recipe", action="store_true")
    add_overrides(parser, "override sweeps/blog.yaml, e.g. its space (both sides)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = limited_copy(args.data.resolve(), args.limit, workdir / "data")
        recipe = {}
        if not args.skip_recipe:
            print("(b) the recipe, 2 epochs per configuration, extrapolated:", flush=True)
            for config in configurations(args.overrides):
                first, second, test = recipe_seconds(data, config, args.epochs)
                total = first + (args.epochs - 1) * second + test
                label = json.dumps(config, sort_keys=True)
                recipe[label] = total
                print(
                    f"  {label}: epochs {first:.1f} s, {second:.1f} s; test {test:.1f} s; "
                    f"{args.epochs} epochs ~ {total:.0f} s",
                    flush=True,
                )
        print(f"(a) the harness, seeds {args.seeds}, {args.workers} worker(s):", flush=True)
        study_dir = workdir / "study"
        (study_dir / "cache").mkdir(parents=True)
        from ablation.autotune.cores import share_of_cores

        threads = share_of_cores(args.workers)
        machine = workdir / "machine"
        for timing in time_machine(data, args.epochs, args.overrides, machine, threads):
            if timing.is_file():  # timed once per machine, as on a user's first study
                shutil.copy(timing, study_dir / "cache" / timing.name)
        ran = harness(data, args.seeds, args.epochs, args.workers, study_dir, args.overrides)
        report(ran, recipe, len(args.seeds), args.workers)


def report(ran: dict, recipe: dict, seeds: int, workers: int) -> None:
    runs = ran["runs"]
    walls = [r.data.metrics.get("wall_seconds", 0.0) for r in runs]
    fixed = [r.data.metrics.get("fixed_seconds", 0.0) for r in runs]
    complete = [r for r in runs if "test_accuracy" in r.data.metrics]
    print(f"\ntrials: {len(runs)} ({len(complete)} with a test accuracy)")
    for run in sorted(runs, key=lambda r: r.info.start_time):
        metrics = run.data.metrics
        print(
            f"  {run.info.run_name:<40} wall {metrics.get('wall_seconds', 0):6.1f} s  fixed "
            f"{metrics.get('fixed_seconds', 0):4.1f} s  epochs {metrics.get('epochs_run', 0):3.0f}"
            f"  test acc {metrics.get('test_accuracy', float('nan')):.3f}"
        )
    hours = ran["wall"] / 3600
    print(
        f"harness wall: {ran['wall']:.0f} s for {len(runs)} trials = "
        f"{len(runs) / hours:.1f} trials/hour ({workers} worker(s))"
    )
    print(
        f"fixed cost per trial: median {statistics.median(fixed):.2f} s, max {max(fixed):.2f} s; "
        f"trial wall median {statistics.median(walls):.1f} s"
    )
    # Trial processes only (not multiprocessing's small resource tracker).
    trial_processes = [p for p in ran["memory"].trial_processes() if p["rss"] > 300]
    if trial_processes:
        print(
            "peak memory of a trial process (MiB, max over processes): "
            + ", ".join(
                f"{k.upper()} {max(p[k] for p in trial_processes):.0f}"
                for k in ("rss", "pss", "uss")
            )
        )
    if recipe:
        recipe_total = seeds * sum(recipe.values())
        print(
            f"recipe (extrapolated): {recipe_total:.0f} s for {seeds * len(recipe)} trials; "
            f"ratio recipe / harness: {recipe_total / ran['wall']:.2f}"
        )
    marker = "Study '"
    stdout = ran["stdout"]
    print("\n" + stdout[stdout.find(marker) :] if marker in stdout else stdout[-4000:])


if __name__ == "__main__":
    main()
