"""Trials per hour on GPUs: 1 to 4 workers on one GPU, and the same workers spread on all.

    KERAS_HOME=/tmp/keras-home python bench/gpu.py --data ../shared/data/cats_and_dogs
    python bench/gpu.py --backbone cnn --size 160 --trials 16 --epochs 5
    python bench/gpu.py --workers 1,2 --trials 8           # a quick look

For N in ``--workers``, a small study (one configuration, ``--trials`` seeds, fresh
stores, the decoded images and the machine's auto settings shared, both made before
anything is timed) runs with ``run_sweep(..., workers=N)``: once with every worker on
the first GPU (``--gpus <first>``), and, on a machine with several GPUs, once with the
workers spread round-robin on all of them (the default). Each study is timed from its
start to its last trial's record, spare processes' start-up included, as a user waits
for it: trials per hour = trials / that time. Memory growth is on in every trial
process, so several of them share a GPU; the table also has each GPU's peak memory in
use during the study (``nvidia-smi --query-gpu``, sampled every 0.5 s).

Where no NVIDIA GPU is found (``nvidia-smi -L``, else ``/proc/driver/nvidia/gpus``) it
says so in one line and exits 1: the other settings need one. ``--help`` works anywhere.
Numbers, not assertions: bench/README.md has the figures measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SWEEP = """
study: {{name: {name}, sampler: grid, seeds: {seeds}}}
data: {{source: {data}, image_size: [{size}, {size}], batch_size: {batch}, limit_per_class: {limit},
        cache_dir: {cache}}}
train: {{epochs: {epochs}, patience: null, precision: {precision}}}
space:
  augment: {{choice: [{augment}]}}
  backbone: {{choice: [{backbone}]}}
model: {{weights: {weights}, alpha: {alpha}}}
tracking: {{uri: sqlite:///{out}/mlflow.db, experiment: {name}}}
"""


class GpuMemory:
    """Peak memory in use per GPU (MiB, nvidia-smi's index), sampled in a thread."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                continue
            for line in out.splitlines():
                index, _, used = line.partition(",")
                if index.strip().isdigit() and used.strip().isdigit():
                    gpu = int(index)
                    self.peaks[gpu] = max(self.peaks.get(gpu, 0), int(used))


def sweep_file(args: argparse.Namespace, out: Path, name: str, trials: int) -> Path:
    path = out / f"{name}.yaml"
    path.write_text(
        SWEEP.format(
            name=name,
            seeds=list(range(trials)),
            data=Path(args.data).resolve(),
            size=args.size,
            batch=args.batch,
            limit=args.limit,
            cache=out / "cache",
            epochs=args.epochs,
            precision=args.precision,
            augment=str(args.augment).lower(),
            backbone=args.backbone,
            weights=args.weights,
            alpha=args.alpha,
            out=out / name,
        )
    )
    return path


def timed_study(args: argparse.Namespace, out: Path, workers: int, gpus: str | None) -> dict:
    """One study of ``args.trials`` trials on ``workers`` workers; its time and peaks."""
    from ablation import TrialState, load_sweep, run_sweep

    name = f"gpu-{workers}-{'spread' if gpus is None else 'one'}"
    sweep = load_sweep(
        sweep_file(args, out, name, args.trials), [f"study.storage={out / name}.journal"]
    )
    with GpuMemory() as memory:
        started = time.perf_counter()
        summary = run_sweep(sweep, workers=workers, gpus=gpus)
        seconds = time.perf_counter() - started
    done = [o for o in summary.outcomes if o.state == TrialState.COMPLETE]
    return {
        "seconds": seconds,
        "done": len(done),
        "run": len(summary.outcomes),
        "peaks": memory.peaks,
    }


def prepare(args: argparse.Namespace, out: Path) -> None:
    """Decode the images and time the auto settings once (one trial), untimed."""
    from ablation import load_sweep, run_sweep

    sweep = load_sweep(sweep_file(args, out, "warm-up", 1), [f"study.storage={out}/warm.journal"])
    started = time.perf_counter()
    run_sweep(sweep)
    print(f"images decoded, auto settings timed: {time.perf_counter() - started:.0f} s (untimed)")


def per_hour(result: dict) -> float:
    return result["done"] / result["seconds"] * 3600


def row(workers: int, where: str, result: dict, base: float) -> str:
    """A line of the table; ``base``: the first line's trials per hour."""
    peaks = ", ".join(f"GPU {i}: {mib:,}" for i, mib in sorted(result["peaks"].items()))
    failed = result["run"] - result["done"]
    return (
        f"| {workers} | {where} | {result['done']}{f' ({failed} failed)' if failed else ''} | "
        f"{result['seconds']:.0f} | {per_hour(result):.0f} | {per_hour(result) / base:.2f}x | "
        f"{peaks or '-'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cats_and_dogs")
    parser.add_argument("--workers", default="1,2,3,4", help="worker counts (default 1,2,3,4)")
    parser.add_argument("--trials", type=int, default=12, help="trials per study (default 12)")
    parser.add_argument("--backbone", default="mobilenet_v2", help="cnn, mobilenet_v2, ...")
    parser.add_argument("--augment", action="store_true", help="augmentation in front")
    parser.add_argument("--weights", default="imagenet", help="imagenet, a file or none")
    parser.add_argument("--alpha", default="1.0")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=int, default=200, help="images per class and split")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    from ablation.autotune.gpus import visible_gpus
    from ablation.cli import configure_logging

    configure_logging(debug=False)  # warnings only, as the command line prints them

    found = visible_gpus()
    if not found:
        sys.exit("bench/gpu.py: no NVIDIA GPU found (nvidia-smi -L, /proc/driver/nvidia/gpus)")
    counts = [int(n) for n in args.workers.split(",")]
    names = "; ".join(f"GPU {gpu.index}: {gpu.name}" for gpu in found)
    title = (
        f"{names}; {os.cpu_count()} CPU cores; {args.backbone} at {args.size}x{args.size}, "
        f"{args.epochs} epoch(s), {args.trials} trials per study"
    )
    print(title, flush=True)
    first = found[0].index
    settings = [(n, f"GPU {first}", str(first)) for n in counts]  # all on the first GPU
    if len(found) > 1:  # spread round-robin on every GPU
        settings += [(n, f"{len(found)} GPUs", None) for n in counts if n > 1]
    out = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        prepare(args, out)
        lines = [
            "| workers | GPUs | trials done | seconds | trials/hour | vs first row | "
            "peak MiB in use |",
            "|---|---|---|---|---|---|---|",
        ]
        base = 0.0
        for workers, where, gpus in settings:
            result = timed_study(args, out, workers, gpus)
            base = base or per_hour(result) or 1.0
            lines.append(row(workers, where, result, base))
            print(lines[-1], flush=True)
        print(f"\n{title}\n\n" + "\n".join(lines))
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
