"""The comparison table of a study, read back from MLflow: what each choice bought.

Usage::

    python -m ablation.report sweeps/blog.yaml                       # Markdown on stdout
    python -m ablation.report sweeps/blog.yaml --format html -o report.html
    python -m ablation.report sweeps/blog.yaml --format csv -o results.csv --set tracking.uri=...

It reads the sweep's study from the sweep's tracking store alone (any store the
sweep could write to; never the data) and writes its tables and six figures (PNG,
beside the output file, or under ``mlruns/reports/<study>/`` when printing to stdout):

* configurations: one row per configuration, seeds aggregated, best validation first,
  and the chance level (always guessing the test set's majority class) below them;
* ablation: each factor's levels against its baseline, from matched pairs, 95% CI;
* parameter importance: Optuna's fANOVA on validation accuracy, per sub-space
  (a conditional factor is assessed among the trials where it exists);
* the best configuration's per-class test accuracy and confusion matrix;
* trials: one row per trial, every factor, seed, state, final metrics and run id.

``--format csv -o results.csv`` writes the configurations as one tidy table there
and each other table beside it (``results.ablation.csv``, ``results.trials.csv``, ...).
Failed, pruned and running trials are counted and never enter a mean.

What it cannot fill from the runs' artifacts (test predictions, confusion matrices, data
pictures) it names first, under "Missing from this report", with the reason: absent (a
study recorded before they existed) or cannot read (recorded, but the artifact store did
not give them back). Exit status: 0 when every part recorded was read, 1 when some could
not be (one line on stderr says which), 2 for a mistake in the command or sweep file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ablation.cli import configure_logging, sweep_parser, user_error
from ablation.errors import UserError
from ablation.results.artifacts import unreadable_line
from ablation.results.report import (
    FORMATS,
    Report,
    build_report,
    default_plot_dir,
    figure_images,
    render,
    write_csv_tables,
    write_figure_files,
)
from ablation.sweep.config import load_sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sweep_parser(
        "python -m ablation.report",
        "Write the comparison table of a sweep's study, read back from MLflow.",
    )
    parser.add_argument(
        "--format", default="markdown", help=f"{', '.join(FORMATS)} (default markdown)"
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.debug)
    try:
        if args.format not in FORMATS:
            raise UserError(f"--format {args.format!r} is unknown (allowed: {', '.join(FORMATS)})")
        sweep = load_sweep(args.sweep, args.overrides)
        report = build_report(sweep)
        plots = not args.no_plots and bool(report.configurations)
        # Drawn once, for the HTML page and the figure files both.
        images = figure_images(report) if plots or args.format == "html" else None
        text = render(report, args.format, images=images)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text)
            if args.format == "csv":
                tables = write_csv_tables(report, args.output)
                print(f"tables: {', '.join(str(p) for p in tables)}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        if plots:
            directory = args.output.parent if args.output else default_plot_dir(sweep)
            written = write_figure_files(report, directory, images)
            print(f"figures: {', '.join(str(p) for p in written)}", file=sys.stderr)
    except UserError as exc:
        return user_error(exc, args.debug)
    return incomplete(report)


def incomplete(report: Report) -> int:
    """1, and one line on stderr naming them, when parts recorded could not be read; else 0."""
    line = unreadable_line(report.missing)
    if line:
        print(f"error: {line}", file=sys.stderr)
    return 1 if line else 0


if __name__ == "__main__":
    sys.exit(main())
