"""What MLflow's system-metrics sampling costs a trial: the same training with sampling off
and at a few intervals, interleaved, on one machine in one run.

Each repeat trains the blog's CNN (seed 0, the same photos) once per setting, in turn, each
inside :func:`ablation.tracking.system_metrics.system_metrics` on a run of a fresh SQLite
store, and times the training. The table gives each setting's median seconds and its ratio
to sampling off; the overhead is that ratio minus one.

Usage (../shared as the data)::

    .venv/bin/python bench/system_metrics.py --repeats 5 --intervals 1 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--intervals", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--per-class", type=int, default=200, help="training photos per class")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from mlflow import MlflowClient

    from ablation.autotune.timings import machine_identity
    from ablation.data.images import load_images
    from ablation.model.training import train
    from ablation.sweep.config import load_sweep
    from ablation.sweep.factors import Configuration
    from ablation.tracking.system_metrics import system_metrics

    sweep = load_sweep(
        Path(__file__).resolve().parents[1] / "sweeps" / "blog.yaml",
        [
            f"data.source={SHARED / 'data' / 'cats_and_dogs'}",
            f"data.limit_per_class={args.per_class}",
            f"train.epochs={args.epochs}",
            "train.patience=null",
            "train.precision=float32",
            "study.seeds=[0]",
        ],
    )
    images = load_images(sweep.data)
    uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("system-metrics-bench")
    settings: list[float | None] = [None, *args.intervals]
    seconds: dict[float | None, list[float]] = {s: [] for s in settings}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for interval in settings:
            run_id = client.create_run(experiment).info.run_id
            started = time.perf_counter()
            with system_metrics(uri, run_id, interval):
                train(Configuration(), seed=0, sweep=sweep, images=images)
            if repeat:
                seconds[interval].append(time.perf_counter() - started)
            client.set_terminated(run_id)
    base = statistics.median(seconds[None])
    machine = machine_identity()
    print(
        f"{machine['cpu']}, {machine['cores']} cores, {args.repeats} repeats, "
        f"cnn, {args.per_class} photos per class, {args.epochs} epochs"
    )
    print("| sampling | median s | ratio to off |")
    print("|---|---|---|")
    for interval in settings:
        median = statistics.median(seconds[interval])
        name = "off" if interval is None else f"every {interval:g} s"
        print(f"| {name} | {median:.2f} | {median / base:.3f} |")


if __name__ == "__main__":
    main()
