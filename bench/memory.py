"""Memory across trials: does the study's process grow from trial to trial?

Runs N small trials (one configuration, N seeds) and prints the resident memory of
the study's process after each trial, with trials in their own process
(``study.isolation: process``, the default) or in the study's process (``none``).

    python bench/memory.py --data ../shared/data/cats_and_dogs --trials 20 --isolation process
    python bench/memory.py --data ../shared/data/cats_and_dogs --trials 20 --isolation none

Numbers, not assertions: see the closing notes for the figures measured.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from ablation import load_sweep, run_sweep
from ablation import TrialOutcome
from ablation.workers import SilentReporter

SWEEP = """
study: {{name: memory, sampler: grid, seeds: {seeds}, isolation: {isolation}}}
data: {{source: {data}, image_size: [{size}, {size}], batch_size: 16, limit_per_class: {limit}}}
train: {{epochs: {epochs}}}
space:
  augment: {{choice: [true]}}
  backbone: {{choice: [{backbone}]}}
model: {{weights: {weights}, alpha: {alpha}}}
tracking: {{uri: sqlite:///{out}/mlflow.db}}
"""


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


class MemoryReporter(SilentReporter):
    def __init__(self) -> None:
        self.started = time.monotonic()

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None:
        peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(
            f"trial {outcome.number + 1:>3}  {outcome.state:<8}  study process: "
            f"RSS {rss_mib():7.1f} MiB, peak {peak_self:7.1f} MiB;  largest trial process "
            f"peak {peak_children:7.1f} MiB;  {time.monotonic() - self.started:6.1f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cats_and_dogs")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--isolation", choices=("process", "none"), default="process")
    parser.add_argument("--backbone", choices=("cnn", "mobilenet_v2"), default="cnn")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--alpha", default="1.0")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        path = Path(out) / "sweep.yaml"
        path.write_text(
            SWEEP.format(
                seeds=list(range(args.trials)),
                isolation=args.isolation,
                data=Path(args.data).resolve(),
                size=args.size,
                limit=args.limit,
                epochs=args.epochs,
                backbone=args.backbone,
                weights=args.weights,
                alpha=args.alpha,
                out=out,
            )
        )
        sweep = load_sweep(
            path, [f"study.storage=sqlite:///{out}/optuna.db", f"data.cache_dir={out}/cache"]
        )
        print(
            f"isolation={args.isolation} backbone={args.backbone} {args.trials} trials, "
            f"RSS before: {rss_mib():.1f} MiB"
        )
        run_sweep(sweep, MemoryReporter())


if __name__ == "__main__":
    main()
