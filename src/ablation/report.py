"""The comparison table of a study, read back from MLflow: what each choice bought.

Usage::

    python -m ablation.report sweeps/blog.yaml                       # Markdown on stdout
    python -m ablation.report sweeps/blog.yaml --format html -o report.html
    python -m ablation.report sweeps/blog.yaml --format csv -o results.csv --set tracking.uri=...

It reads the sweep's study from the sweep's tracking store (any store the sweep
could write to) and writes three tables and five figures (PNG, beside the
output file, or under ``mlruns/reports/<study>/`` when printing to stdout):

* configurations: one row per configuration, seeds aggregated, best validation first;
* ablation: each factor's levels against its baseline, from matched pairs, 95% CI;
* parameter importance: Optuna's fANOVA on validation accuracy, per sub-space
  (a conditional factor is assessed among the trials where it exists).

Failed, pruned and running trials are counted and never enter a mean.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation import space
from ablation.analysis import (
    ConfigurationRow,
    Effect,
    ablation_table,
    configuration_table,
    state_counts,
)
from ablation.cli import configure_logging, sweep_parser, user_error
from ablation.config import DEFAULT_OUTPUT_DIR, Sweep, load_sweep
from ablation.errors import UserError
from ablation.figures import data_figures, study_figures, write_figures
from ablation.importance import Importance, param_importances
from ablation.records import TrialRecord, TrialState
from ablation.tracking import Tracker, read_study

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

FORMATS = ("markdown", "csv", "html", "latex")


@dataclass
class Report:
    sweep: Sweep
    records: list[TrialRecord]
    configurations: list[ConfigurationRow]
    effects: list[Effect]
    importances: list[Importance]
    parent_run_id: str | None
    tracker: Tracker

    @property
    def counts(self) -> dict[TrialState, int]:
        return state_counts(self.records)


def build_report(sweep: Sweep) -> Report:
    """The study's tables, read back from the sweep's MLflow store (and its Optuna study).

    Raises:
        UserError: The store cannot be opened, or holds no trial of this study.
    """
    tracker, parent_run_id, records = read_study(sweep)
    # A sampled range has no levels to pair trials on: its share shows in the importances.
    levels = {name: list(p.choice) for name, p in sweep.space.items() if p.choice is not None}
    return Report(
        sweep=sweep,
        records=records,
        configurations=configuration_table(records),
        effects=ablation_table(records, levels, space.dependents(sweep.space)),
        importances=param_importances(sweep),
        parent_run_id=parent_run_id,
        tracker=tracker,
    )


def configuration_frame(report: Report, *, numeric: bool, short: bool = False) -> pd.DataFrame:
    """The per-configuration table; numbers as numbers (CSV) or as ``mean ± sd`` text.

    ``short`` leaves out the factor columns (the configuration's name says them) and run ids.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for row in report.configurations:
        entry: dict[str, Any] = {
            "configuration": space.label(row.params),
            "blog": space.blog_name(row.params) or "",
        }
        for name in [] if short else report.sweep.space:
            entry[name] = row.params.get(name, "" if numeric else "—")
        entry["seeds"] = row.n
        if numeric:
            entry |= {
                "val_acc_mean": row.val_mean,
                "val_acc_sd": row.val_sd,
                "test_acc_mean": row.test_mean,
                "test_acc_sd": row.test_sd,
            }
        else:
            entry["val acc (best epoch)"] = _mean_sd(row.val_mean, row.val_sd)
            entry["test acc"] = _mean_sd(row.test_mean, row.test_sd)
        entry["epochs"] = _number(sum(row.epochs_run) / row.n)
        entry["seconds"] = round(sum(row.seconds) / row.n, 1)
        if not short:
            entry["runs"] = (
                " ".join(row.run_ids) if numeric else " ".join(r[:8] for r in row.run_ids)
            )
        rows.append(entry)
    return pd.DataFrame(rows)


def ablation_frame(report: Report, *, numeric: bool) -> pd.DataFrame:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for effect in report.effects:
        interval = effect.interval
        entry: dict[str, Any] = {
            "factor": effect.factor,
            "level": effect.level,
            "baseline": effect.baseline,
        }
        if numeric:
            entry |= {
                "mean_test_acc": effect.level_mean,
                "effect": effect.effect,
                "ci_low": interval[0] if interval else None,
                "ci_high": interval[1] if interval else None,
                "pairs": effect.pairs,
                "verdict": effect.verdict(),
            }
        else:
            mean = effect.level_mean
            entry["mean test acc"] = f"{mean:.3f}" if mean is not None else "—"
            entry["effect vs baseline (95% CI)"] = effect.verdict()
        rows.append(entry)
    return pd.DataFrame(rows)


def importance_frame(report: Report) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for importance in report.importances:
        if not importance.values:
            rows.append(
                {
                    "trials": importance.scope,
                    "parameter": "—",
                    "importance": None,
                    "note": importance.note,
                }
            )
        for name, value in importance.values.items():
            rows.append(
                {
                    "trials": importance.scope,
                    "parameter": name,
                    "importance": round(value, 3),
                    "note": importance.note,
                }
            )
    return pd.DataFrame(rows)


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.3f} (one seed)" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 1)


def headline(report: Report) -> str:
    counts = report.counts
    excluded = ", ".join(
        f"{counts[s]} {s.value.lower()}"
        for s in (TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    )
    return (
        f"Study {report.sweep.study.name!r}: {len(report.configurations)} configuration(s) from "
        f"{counts[TrialState.COMPLETE]} complete trial(s); not in any mean: {excluded}."
    )


def render(report: Report, fmt: str, *, short: bool = False) -> str:
    """The report as Markdown, CSV, HTML or LaTeX text. ``short``: configurations only."""
    numeric = fmt == "csv"
    sections: list[tuple[str, str, pd.DataFrame]] = [
        (
            "configurations",
            "Configurations (best validation accuracy first; ± is the standard deviation over "
            "seeds)",
            configuration_frame(report, numeric=numeric, short=short),
        ),
    ]
    if not short:
        sections += [
            (
                "ablation",
                "Ablation: each level against the factor's baseline, test accuracy, matched pairs",
                ablation_frame(report, numeric=numeric),
            ),
            (
                "importance",
                "Parameter importance (fANOVA on validation accuracy)",
                importance_frame(report),
            ),
        ]
    out = io.StringIO()
    if fmt == "markdown":
        out.write(f"{headline(report)}\n")
        for _, title, frame in sections:
            out.write(f"\n### {title}\n\n{frame.to_markdown(index=False)}\n")
    elif fmt == "csv":  # one CSV table per section, each after a "# id: title" line
        for position, (name, title, frame) in enumerate(sections):
            out.write(("\n" if position else "") + f"# {name}: {title}\n")
            frame.to_csv(out, index=False)
    elif fmt == "html":
        out.write(f"<p>{headline(report)}</p>\n")
        for _, title, frame in sections:
            out.write(f"<h3>{title}</h3>\n{frame.to_html(index=False, na_rep='—')}\n")
    elif fmt == "latex":
        out.write(f"% {headline(report)}\n")
        for _, title, frame in sections:
            latex = frame.to_latex(index=False, na_rep="--", caption=title.replace("±", "$\\pm$"))
            out.write(latex.replace("±", "$\\pm$").replace("—", "--") + "\n")
    else:
        raise UserError(f"--format {fmt!r} is unknown (allowed: {', '.join(FORMATS)})")
    return out.getvalue()


def figures(report: Report) -> dict[str, Figure]:
    """The report's five figures, by file name."""
    return {
        **study_figures(report.sweep, report.configurations, report.effects),
        **data_figures(report.sweep),
    }


def write_report_files(report: Report, directory: Path) -> list[Path]:
    """The figures, ``report.md`` and ``report.html`` in ``directory``; attached to the
    study's parent run (under ``report/``)."""
    files = write_figures(figures(report), directory)
    for fmt, name in (("markdown", "report.md"), ("html", "report.html")):
        path = directory / name
        path.write_text(render(report, fmt))
        files.append(path)
    if report.parent_run_id is not None:
        report.tracker.attach_report(report.parent_run_id, files)
    return files


def default_plot_dir(sweep: Sweep) -> Path:
    return DEFAULT_OUTPUT_DIR / "reports" / sweep.study.name


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
        text = render(report, args.format)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        if not args.no_plots and report.configurations:
            directory = args.output.parent if args.output else default_plot_dir(sweep)
            written = write_figures(figures(report), directory)
            print(f"figures: {', '.join(str(p) for p in written)}", file=sys.stderr)
    except UserError as exc:
        return user_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
