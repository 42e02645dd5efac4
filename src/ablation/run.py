"""Command line: run (or continue) a sweep.

Usage::

    python -m ablation.run sweeps/blog.yaml
    python -m ablation.run sweeps/blog.yaml --set data.source=../shared/data/cats_and_dogs \\
        --set data.limit_per_class=20 --set train.epochs=1
    python -m ablation.run sweeps/blog.yaml --dry-run
    python -m ablation.run sweeps/blog.yaml --workers 2            # two trials side by side
    python -m ablation.run sweeps/blog.yaml --workers 4 --gpus 0,1   # two on each GPU
    python -m ablation.run sweeps/blog.yaml --storage postgresql://db/optuna \
        --tracking-uri http://db:5000                                # one of several machines

Running the same command again continues the study: finished trials are kept. A sweep
whose settings changed is refused (a new ``study.name``, or ``--new-study``).
Exit codes: 0 done, 1 some trials failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ablation.autotune.gpus import plan_gpus
from ablation.cli import configure_logging, stop_on_signals, sweep_parser, user_error
from ablation.errors import UserError
from ablation.redaction import redact
from ablation.results.artifacts import unreadable_line
from ablation.results.report import build_report, default_plot_dir, render, write_report_files
from ablation.study.fingerprint import named
from ablation.study.plan import plan, stores
from ablation.study.runner import run_sweep
from ablation.study.trial import TrialOutcome
from ablation.sweep.config import Sweep, load_sweep
from ablation.tracking.records import TrialState


class ConsoleReporter:
    """Progress of a study: live bars on a terminal, one plain line per event otherwise (CI logs).

    Both show trial i of n with its configuration, the epoch, the time left and
    the best trial so far; each finished trial leaves one line behind.
    """

    def __init__(self, console: Console, *, live: bool = True) -> None:
        self.console = console
        self.trial_started_at = time.monotonic()
        self.best = ""
        self.progress: Progress | None = None
        if live and console.is_terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
            )
            self.study_task = self.progress.add_task("study", total=None, info="")
            self.trial_task = self.progress.add_task("trial", total=None, info="")

    def trial_started(self, index: int, total: int, label: str) -> None:
        self.trial_started_at = time.monotonic()
        if self.progress is None:
            self.console.print(f"trial {index + 1}/{total} {label}", highlight=False)
            return
        self.progress.start()
        self.progress.update(
            self.study_task,
            description=f"trial {index + 1}/{total}",
            total=total,
            completed=index,
            info=self.best,
        )
        self.progress.reset(self.trial_task, description=f"  {label}", total=None, info="")

    def epoch_ended(self, label: str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        elapsed = time.monotonic() - self.trial_started_at
        summary = (
            f"loss {metrics.get('loss', float('nan')):.4f}  "
            f"acc {metrics.get('accuracy', float('nan')):.3f}  "
            f"val_acc {metrics.get('val_accuracy', float('nan')):.3f}"
        )
        if self.progress is None:
            eta = elapsed / (epoch + 1) * (epochs - epoch - 1)
            self.console.print(
                f"  {label} epoch {epoch + 1}/{epochs}  {summary}  "
                f"({elapsed:.0f}s, ~{eta:.0f}s left in trial)",
                highlight=False,
            )
            return
        self.progress.update(self.trial_task, total=epochs, completed=epoch + 1, info=summary)

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None:
        if outcome.state == TrialState.COMPLETE:
            text = (
                f"val_acc {outcome.model_val_accuracy:.3f}  test_acc "
                f"{outcome.test_accuracy:.3f}  in {outcome.wall_seconds:.0f}s "
                f"(fixed cost {outcome.fixed_seconds:.1f}s)"
            )
        elif outcome.state == TrialState.PRUNED:
            text = f"pruned after {outcome.epochs_run} epoch(s)"
        else:
            text = f"failed: {outcome.error}"
        if best is not None:
            self.best = f"best so far: {best.label} val_acc {best.model_val_accuracy:.3f}"
        if self.progress is None:
            self.console.print(
                f"  {outcome.label}: {text}  | {self.best}", highlight=False, markup=False
            )
            return
        self.progress.console.print(f"{outcome.label}: {text}", highlight=False, markup=False)
        self.progress.advance(self.study_task)
        self.progress.update(self.study_task, info=self.best)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def report_study(sweep: Sweep, console: Console) -> str | None:
    """Print the study's comparison table and attach the full report to its parent run;
    what could not be read for it, in one line (None: every recorded part was read)."""
    report = build_report(sweep)
    console.print(render(report, "markdown", short=True), markup=False, highlight=False)
    directory = default_plot_dir(sweep)
    write_report_files(report, directory)
    console.print(
        f"report: {directory} (also on the study's MLflow run, under report/)", highlight=False
    )
    return unreadable_line(report.missing)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sweep_parser("python -m ablation.run", "Run (or continue) an ablation sweep.")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan without training"
    )
    parser.add_argument(
        "--new-study",
        action="store_true",
        help="run under a new study named after the sweep's settings (study.name plus their "
        "digest), never mixed with the study of a sweep whose settings differ; the same "
        "command continues it",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="trials to run side by side on this machine (default 1); each trial's process "
        "computes with an even share of the cores",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="K",
        help="threads per trial process: TensorFlow's intra- and inter-op pools and the data "
        "pipeline's (default: the cores this process may use, divided by --workers)",
    )
    parser.add_argument(
        "--gpus",
        metavar="LIST",
        help="the GPUs the workers share, as nvidia-smi -L numbers them (e.g. 0,2; worker w "
        "on the (w mod G)-th), or none: the CPU only (default: every GPU found, limited by "
        "$CUDA_VISIBLE_DEVICES); each trial's run records its GPU in the ablation.gpu tag",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: a database URL or a journal file (= study.storage; default "
        "$ABLATION_STORAGE); a password is better in $PGPASSWORD or ~/.pgpass than here",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking URI, e.g. http://host:5000 (= tracking.uri; default "
        "$MLFLOW_TRACKING_URI); credentials are better in $MLFLOW_TRACKING_USERNAME and "
        "$MLFLOW_TRACKING_PASSWORD (or $MLFLOW_TRACKING_TOKEN) than here",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.debug)
    stop_on_signals()  # the running trials are recorded as interrupted and run again
    # Piped output (CI logs) gets a wide plain table instead of rich's 80-column default.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    try:
        if args.workers < 1:
            raise UserError(f"--workers {args.workers}: needs a whole number of at least 1")
        if args.threads is not None and args.threads < 1:
            raise UserError(f"--threads {args.threads}: needs a whole number of at least 1")
        gpus = plan_gpus(args.gpus)
        gpu_line = gpus.describe(args.workers)
        overrides = list(args.overrides)
        if args.storage:
            overrides.append(f"study.storage={args.storage}")
        if args.tracking_uri:
            overrides.append(f"tracking.uri={args.tracking_uri}")
        sweep: Sweep = load_sweep(args.sweep, overrides)
        if args.dry_run:
            for line in [*plan(sweep), *([gpu_line] if gpu_line else [])]:
                console.print(line, highlight=False, markup=False)
            return 0
        for line in [*plan(sweep)[:2], stores(sweep), *([gpu_line] if gpu_line else [])]:
            console.print(line, highlight=False, markup=False)
        reporter = ConsoleReporter(console, live=args.workers == 1)
        try:
            summary = run_sweep(
                sweep,
                reporter,
                workers=args.workers,
                threads=args.threads,
                new_study=args.new_study,
                gpus=gpus,
            )
        finally:
            reporter.close()
        if summary.study_name != sweep.study.name:  # --new-study
            sweep = named(sweep, summary.study_name)
            console.print(
                f"new study {summary.study_name!r}; the other commands find it with "
                f"--set study.name={summary.study_name}",
                highlight=False,
            )
    except UserError as exc:
        return user_error(exc, args.debug)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume the study", file=sys.stderr)
        return 130
    if summary.already_done:
        console.print(
            f"{summary.already_done} of {summary.planned} trial(s) were already done "
            "in an earlier run and were kept",
            highlight=False,
        )
    if not summary.outcomes:
        console.print("nothing to run: every trial of this study is already done", highlight=False)
    unreadable = None
    try:
        unreadable = report_study(sweep, console)
    except Exception as exc:  # the trials are recorded; a report problem must not hide that
        if args.debug:
            raise
        print(
            f"warning: could not build the report ({type(exc).__name__}: {redact(str(exc))}); "
            "the trials are recorded, retry with python -m ablation.report",
            file=sys.stderr,
        )
    console.print(
        f"MLflow: {redact(sweep.tracking.tracking_uri())}  experiment "
        f"{sweep.experiment_name!r}  parent run {summary.parent_run_id}",
        highlight=False,
    )
    failed = sum(o.state == TrialState.FAIL for o in summary.outcomes)
    if unreadable:
        print(f"error: {unreadable}", file=sys.stderr)
    if failed:
        print(
            f"error: {failed} trial(s) failed; their errors are on their MLflow runs; "
            "run the same command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
