"""A study's report, read back from its MLflow store: the tables, the figures, the files.

:func:`build_report` reads the sweep's study from the tracking store alone (never the
data); :func:`render` writes it as Markdown, CSV, HTML or LaTeX;
:func:`write_report_files` writes the figures, ``report.md`` and ``report.html`` and
attaches them to the study's parent run. The command is :mod:`ablation.report`.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.errors import UserError
from ablation.results.analysis import (
    ConfigurationRow,
    Effect,
    ablation_table,
    configuration_table,
    state_counts,
)
from ablation.results.figures import study_figures
from ablation.results.importance import Importance, param_importances
from ablation.results.tables import (
    Confusion,
    ablation_frame,
    chance_row,
    class_frame,
    configuration_frame,
    confusion_frame,
    importance_frame,
    trial_frame,
)
from ablation.sweep import space
from ablation.sweep.config import DEFAULT_OUTPUT_DIR, Sweep
from ablation.tracking.figures import DATA_FIGURES, confusion_matrix, write_figures
from ablation.tracking.records import (
    ARTIFACT_CONFUSION,
    ARTIFACT_REPORT_DIR,
    TrialRecord,
    TrialState,
)
from ablation.tracking.tracker import Tracker, read_study

if TYPE_CHECKING:
    import pandas as pd

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
    confusion: Confusion | None = None  # the best configuration's, summed over its seeds

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
    configurations = configuration_table(records)
    return Report(
        sweep=sweep,
        records=records,
        configurations=configurations,
        effects=ablation_table(records, levels, space.dependents(sweep.space)),
        importances=param_importances(sweep),
        parent_run_id=parent_run_id,
        tracker=tracker,
        confusion=best_confusion(tracker, configurations),
    )


def best_confusion(tracker: Tracker, rows: list[ConfigurationRow]) -> Confusion | None:
    """The best configuration's test confusion matrix, its seeds' counts summed (None: a
    study recorded before confusion matrices were)."""
    if not rows:
        return None
    total: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, run_id in enumerate(rows[0].run_ids):
            path = tracker.download(run_id, ARTIFACT_CONFUSION, f"{tmp}/{index}")
            if path is None:
                return None
            found = json.loads(path.read_text())
            if total is None:
                total = {"class_names": found["class_names"], "counts": found["counts"], "runs": 0}
            else:
                total["counts"] = [
                    [a + b for a, b in zip(mine, theirs, strict=True)]
                    for mine, theirs in zip(total["counts"], found["counts"], strict=True)
                ]
            total["runs"] += 1
    return total


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


Section = tuple[str, str, "pd.DataFrame"]


def sections(report: Report, *, numeric: bool, short: bool = False) -> list[Section]:
    """The report's tables: (name, title, frame). ``short``: the configurations only."""
    configurations = configuration_frame(
        report.sweep.space, report.configurations, numeric=numeric, short=short
    )
    if not numeric:
        configurations = chance_row(configurations, report.confusion)
    title = "Configurations (best validation accuracy first; ± is the standard deviation over seeds"
    found = [("configurations", title + ")", configurations)]
    if short:
        return found
    found += [
        (
            "ablation",
            "Ablation: each level against the factor's baseline, test accuracy, matched pairs",
            ablation_frame(report.effects, numeric=numeric),
        ),
        (
            "importance",
            "Parameter importance (fANOVA on validation accuracy)",
            importance_frame(report.importances),
        ),
    ]
    if report.confusion is not None and report.configurations:
        best = space.label(report.configurations[0].params)
        runs = f"{report.confusion['runs']} seed(s) summed"
        found += [
            (
                "classes",
                f"Best configuration ({best}): test accuracy per class",
                class_frame(report.confusion, numeric=numeric),
            ),
            (
                "confusion",
                f"Best configuration ({best}): test confusion matrix ({runs})",
                confusion_frame(report.confusion),
            ),
        ]
    trials = trial_frame(report.sweep.space, report.records, numeric=numeric)
    return [*found, ("trials", "Trials (one row per trial)", trials)]


def render(report: Report, fmt: str, *, short: bool = False) -> str:
    """The report as Markdown, CSV, HTML or LaTeX text. ``short``: configurations only.

    CSV is the configurations table alone (:func:`write_csv_tables` writes the others).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is unknown (allowed: {', '.join(FORMATS)})")
    if fmt == "csv":
        return sections(report, numeric=True, short=True)[0][2].to_csv(index=False)
    out = io.StringIO()
    found = sections(report, numeric=False, short=short)
    if fmt == "markdown":
        out.write(f"{headline(report)}\n")
        for _, title, frame in found:
            out.write(f"\n### {title}\n\n{frame.to_markdown(index=False)}\n")
    elif fmt == "html":
        out.write(f"<p>{headline(report)}</p>\n")
        for _, title, frame in found:
            out.write(f"<h3>{title}</h3>\n{frame.to_html(index=False, na_rep='—')}\n")
    else:
        out.write(f"% {headline(report)}\n")
        for _, title, frame in found:
            latex = frame.to_latex(index=False, na_rep="--", caption=title.replace("±", "$\\pm$"))
            out.write(latex.replace("±", "$\\pm$").replace("—", "--") + "\n")
    return out.getvalue()


def write_csv_tables(report: Report, output: Path) -> list[Path]:
    """The tables other than the configurations, each a tidy CSV beside ``output``
    (``results.csv`` -> ``results.ablation.csv``, ``results.trials.csv``, ...)."""
    written = []
    for name, _, frame in sections(report, numeric=True)[1:]:
        path = output.with_name(f"{output.stem}.{name}.csv")
        frame.to_csv(path, index=False)
        written.append(path)
    return written


def write_figure_files(report: Report, directory: Path) -> list[Path]:
    """The report's figures in ``directory``: drawn from the records, the best
    configuration's confusion matrix, and the data pictures drawn at run time (copied
    from the study's parent run: the data itself is never read)."""
    figures = study_figures(report.sweep, report.configurations, report.effects)
    if report.confusion is not None and report.configurations:
        best = space.label(report.configurations[0].params)
        figures["confusion_matrix.png"] = confusion_matrix(
            report.confusion["counts"],
            report.confusion["class_names"],
            f"{report.sweep.study.name}: {best}, test set ({report.confusion['runs']} seed(s))",
        )
    written = write_figures(figures, directory)
    if report.parent_run_id is None:
        return written
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATA_FIGURES:
            path = report.tracker.download(
                report.parent_run_id, f"{ARTIFACT_REPORT_DIR}/{name}", tmp
            )
            if path is not None:
                written.append(Path(shutil.copy(path, directory / name)))
    return written


def write_report_files(report: Report, directory: Path) -> list[Path]:
    """The figures, ``report.md`` and ``report.html`` in ``directory``; attached to the
    study's parent run (under ``report/``)."""
    files = write_figure_files(report, directory)
    for fmt, name in (("markdown", "report.md"), ("html", "report.html")):
        path = directory / name
        path.write_text(render(report, fmt))
        files.append(path)
    if report.parent_run_id is not None:
        report.tracker.attach_report(report.parent_run_id, files)
    return files


def default_plot_dir(sweep: Sweep) -> Path:
    return DEFAULT_OUTPUT_DIR / "reports" / sweep.study.name
