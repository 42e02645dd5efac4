"""Memory across trials: does any process grow from trial to trial, or with the workers?

Runs N small trials (one configuration, N seeds) and prints, after each trial, the
resident memory of the study's process and the peak memory of the process that
ran the trial (sampled from /proc/PID/smaps_rollup every 0.1 s: RSS, PSS, which
splits shared pages such as the memory-mapped images between the processes that
map them, and USS, the process's private memory), with the trial's wall time
and fixed cost (everything outside training: waiting for its process, recording).
Trials run in their own processes (``study.isolation: process``, the default;
``--workers N`` side by side) or in the study's process (``none``).

    python bench/memory.py --data ../shared/data/cats_and_dogs --trials 20
    python bench/memory.py --data ../shared/data/cats_and_dogs --trials 20 --workers 2
    python bench/memory.py --data ../shared/data/cats_and_dogs --trials 20 --isolation none

Numbers, not assertions: bench/README.md has the figures measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

from ablation import TrialOutcome, load_sweep, run_sweep
from ablation.study.workers import SilentReporter

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


def memory_of(pid: int) -> dict[str, float] | None:
    """RSS, PSS and USS (private) of a process in MiB, from /proc/PID/smaps_rollup."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.partition(":")
        kib[name] = int(value.split()[0])
    private = kib.get("Private_Clean", 0) + kib.get("Private_Dirty", 0)
    return {"rss": kib["Rss"] / 1024, "pss": kib["Pss"] / 1024, "uss": private / 1024}


def child_pids(parent: int | None = None) -> set[int]:
    """The children of ``parent`` (default: this process), whichever thread started them."""
    me = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry))
    return found


class MemoryReporter(SilentReporter):
    """Samples the trial processes' memory; prints a line per finished trial."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.peaks: dict[int, dict[str, float]] = {}
        self.reported: set[int] = set()
        self.fixed: list[float] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            for pid in child_pids():
                memory = memory_of(pid)
                if memory is not None:
                    with self.lock:
                        peak = self.peaks.setdefault(pid, dict.fromkeys(memory, 0.0))
                        for key, value in memory.items():
                            peak[key] = max(peak[key], value)
            time.sleep(0.1)

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None:
        with self.lock:
            gone = [p for p in self.peaks if p not in self.reported and memory_of(p) is None]
            self.reported.update(gone)
            peaks = [self.peaks[p] for p in gone]
        self.fixed.append(outcome.fixed_seconds)
        trial = ", ".join(
            f"RSS {p['rss']:6.0f} PSS {p['pss']:6.0f} USS {p['uss']:6.0f}" for p in peaks
        )
        print(
            f"trial {outcome.number + 1:>3}  {outcome.state:<8}  study process RSS "
            f"{rss_mib():6.0f} MiB;  trial process peak (MiB): {trial or '-'};  "
            f"wall {outcome.wall_seconds:5.1f} s, fixed {outcome.fixed_seconds:4.1f} s;  "
            f"{time.monotonic() - self.started:6.1f} s",
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
    parser.add_argument("--workers", type=int, default=1)
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
            f"{args.workers} worker(s), RSS before: {rss_mib():.1f} MiB"
        )
        reporter = MemoryReporter()
        run_sweep(sweep, reporter, workers=args.workers)
        print(
            f"fixed cost per trial: median {statistics.median(reporter.fixed):.2f} s, "
            f"max {max(reporter.fixed):.2f} s"
        )


if __name__ == "__main__":
    main()
