"""A study's report, read back from its MLflow store: the tables, the figures, the files.

:func:`build_report` reads the sweep's study from the tracking store alone (never the
data, never the Optuna storage): the trials' records and each trial's per-image test
predictions. :func:`render` writes it as Markdown, CSV, LaTeX or one self-contained HTML
page (:mod:`ablation.results.html`); :func:`write_report_files` writes the figures,
``report.md`` and ``report.html`` and attaches them to the study's parent run. The
command is :mod:`ablation.report`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ablation.effects.estimates import (
    ContextEffect,
    Effect,
    context_effects,
    effects,
    sign_changes,
)
from ablation.effects.sequential import Decision, seed_rule
from ablation.errors import UserError
from ablation.results.adaptive import decided_effects, seeds_frame, seeds_notes
from ablation.results.analysis import ConfigurationRow, configuration_table, state_counts
from ablation.results.artifacts import (
    MISSING_NOTE,
    MISSING_TITLE,
    Missing,
    best_confusion,
    data_pictures,
    missing_frame,
    read_study,
    test_outcomes,
)
from ablation.results.figures import FIGURE_CAPTIONS, study_figures
from ablation.results.html import Block, html_page
from ablation.results.importance import Importance, param_importances
from ablation.results.tables import (
    INTERVALS_NOTE,
    Confusion,
    Section,
    ablation_frame,
    chance_row,
    class_frame,
    configuration_frame,
    confusion_frame,
    context_frame,
    importance_frame,
    trial_frame,
)
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.sections import DEFAULT_OUTPUT_DIR
from ablation.tracking.figures import confusion_matrix, png_bytes
from ablation.tracking.records import TrialRecord, TrialState
from ablation.tracking.tracker import Tracker

if TYPE_CHECKING:
    pass

FORMATS = ("markdown", "csv", "html", "latex")


@dataclass
class Report:
    sweep: Sweep
    records: list[TrialRecord]
    configurations: list[ConfigurationRow]
    effects: list[Effect]
    context_effects: list[ContextEffect]  # each effect within each context: interactions
    importances: list[Importance]
    parent_run_id: str | None
    tracker: Tracker
    confusion: Confusion | None = None  # the best configuration's, summed over its seeds
    data_pictures: dict[str, bytes] = field(default_factory=dict)  # drawn when the study ran
    missing: list[Missing] = field(default_factory=list)  # the parts it could not fill
    decisions: list[Decision] = field(default_factory=list)  # adaptive seeds: each effect's

    @property
    def counts(self) -> dict[TrialState, int]:
        return state_counts(self.records)


def build_report(sweep: Sweep) -> Report:
    """The study's tables, read back from the sweep's MLflow store alone; the parts it could
    not fill from the runs' artifacts in ``missing``, absent or unreadable.

    Raises:
        UserError: The store cannot be opened, or holds no trial of this study.
    """
    tracker, parent_run_id, records = read_study(sweep)
    # A sampled range has no levels to pair trials on: its share shows in the importances.
    levels = {name: list(p.choice) for name, p in sweep.space.items() if p.choice is not None}
    dependents = space.dependents(sweep.space)
    configurations = configuration_table(records)
    outcomes, missing = test_outcomes(tracker, records)
    confusion, missing_confusion = best_confusion(tracker, configurations, records)
    pictures, missing_pictures = data_pictures(tracker, parent_run_id)
    min_effect = sweep.study.min_effect
    found = effects(outcomes, levels, dependents, min_effect=min_effect)
    made: list[Decision] = []
    rule = seed_rule(sweep)
    if rule is not None:
        found, made = decided_effects(found, outcomes, levels, dependents, rule)
    return Report(
        sweep=sweep,
        records=records,
        configurations=configurations,
        effects=found,
        decisions=made,
        context_effects=context_effects(outcomes, levels, dependents, min_effect=min_effect),
        importances=param_importances(sweep, records),
        parent_run_id=parent_run_id,
        tracker=tracker,
        confusion=confusion,
        data_pictures=pictures,
        missing=[*missing, *missing_confusion, *missing_pictures],
    )


def headline(report: Report) -> str:
    counts = report.counts
    excluded = ", ".join(
        f"{counts[s]} {s.value.lower()}"
        for s in (TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    )
    collapsed = sum(sum(row.collapsed) for row in report.configurations)
    return (
        f"Study {report.sweep.study.name!r}: {len(report.configurations)} configuration(s) from "
        f"{counts[TrialState.COMPLETE]} complete trial(s); not in any mean: {excluded}; "
        f"collapsed: {collapsed} (a network that predicts one class for 99% of the test "
        "images, or whose training loss stayed at chance; their numbers stay in the means)."
    )


def sections(report: Report, *, numeric: bool, short: bool = False) -> list[Section]:
    """The report's tables, after the parts it could not fill; ``short``: configurations only."""
    configurations = configuration_frame(
        report.sweep.space, report.configurations, numeric=numeric, short=short
    )
    if not numeric:
        configurations = chance_row(configurations, report.confusion)
    title = (
        "Configurations (best validation accuracy first; ± is the standard deviation over seeds)"
    )
    found = [
        *_missing_section(report),
        Section(
            "configurations",
            title,
            configurations,
            figures=("test_accuracy.png", "validation_curves.png"),
        ),
    ]
    if short:
        return found
    points = 100 * report.sweep.study.min_effect
    found += [
        Section(
            "ablation",
            "Ablation: each level against the factor's baseline, test accuracy",
            ablation_frame(report.effects, numeric=numeric),
            [INTERVALS_NOTE.format(points=points)],
            ("ablation_effects.png",),
        ),
        *_seeds_section(report),
        Section(
            "interactions",
            "Interactions: each effect within each context of the other factors",
            context_frame(report.context_effects, numeric=numeric),
            sign_changes(report.context_effects)
            or ["No effect changes sign between contexts (by its point estimates)."],
            ("interactions.png",),
        ),
        Section(
            "importance",
            "Parameter importance (fANOVA on validation accuracy)",
            importance_frame(report.importances),
        ),
    ]
    found += _best_sections(report, numeric=numeric)
    trials = trial_frame(report.sweep.space, report.records, numeric=numeric)
    return [*found, Section("trials", "Trials (one row per trial)", trials)]


def _best_sections(report: Report, *, numeric: bool) -> list[Section]:
    """The best configuration's test accuracy per class and its confusion matrix."""
    if report.confusion is None or not report.configurations:
        return []
    best = space.label(report.configurations[0].params)
    runs = f"{report.confusion['runs']} seed(s) summed"
    return [
        Section(
            "classes",
            f"Best configuration ({best}): test accuracy per class",
            class_frame(report.confusion, numeric=numeric),
        ),
        Section(
            "confusion",
            f"Best configuration ({best}): test confusion matrix ({runs})",
            confusion_frame(report.confusion),
            figures=("confusion_matrix.png",),
        ),
    ]


def _seeds_section(report: Report) -> list[Section]:
    """Adaptive seeds: each effect's decision and what the study spent on it."""
    if (rule := seed_rule(report.sweep)) is None:
        return []
    notes = seeds_notes(report.sweep, rule, report.decisions, report.configurations)
    return [
        Section(
            "seeds",
            "Adaptive seeds: each effect's decision",
            seeds_frame(report.decisions, numeric=False),
            notes,
        )
    ]


def _missing_section(report: Report) -> list[Section]:
    """What the report could not fill, and why: first, so that no reader misses it."""
    if not report.missing:
        return []
    return [Section("missing", MISSING_TITLE, missing_frame(report.missing), [MISSING_NOTE])]


def render(
    report: Report, fmt: str, *, short: bool = False, images: dict[str, bytes] | None = None
) -> str:
    """The report as Markdown, CSV, HTML or LaTeX text. ``short``: configurations only.

    CSV is the configurations table alone (:func:`write_csv_tables` writes the others).
    HTML is one page with the figures in it (``images``, if drawn already, else drawn).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is unknown (allowed: {', '.join(FORMATS)})")
    if fmt == "csv":
        return sections(report, numeric=True, short=True)[-1].frame.to_csv(index=False)
    found = sections(report, numeric=False, short=short)
    if fmt == "html":
        return _html(report, found, images)
    out = io.StringIO()
    if fmt == "markdown":
        out.write(f"{headline(report)}\n")
        for section in found:
            out.write(f"\n### {section.title}\n\n{section.frame.to_markdown(index=False)}\n")
            out.writelines(f"\n{note}\n" for note in section.notes)
    else:
        out.write(f"% {headline(report)}\n")
        for section in found:
            caption = section.title.replace("±", "$\\pm$")
            latex = section.frame.to_latex(index=False, na_rep="--", caption=caption)
            out.write(latex.replace("±", "$\\pm$").replace("—", "--") + "\n")
            out.writelines(f"% {note}\n" for note in section.notes)
    return out.getvalue()


def _html(report: Report, found: list[Section], images: dict[str, bytes] | None = None) -> str:
    if images is None:
        images = figure_images(report) if report.configurations else {}
    blocks = [
        Block(
            section.title,
            frame=section.frame,
            notes=section.notes,
            figures=[
                (name, FIGURE_CAPTIONS.get(name, name), images[name])
                for name in section.figures
                if name in images
            ],
        )
        for section in found
    ]
    shown = {name for section in found for name in section.figures}
    data = [
        (name, FIGURE_CAPTIONS.get(name, name), png)
        for name, png in images.items()
        if name not in shown
    ]
    if data:
        blocks.append(Block("The data (drawn when the study ran)", figures=data))
    return html_page(f"Ablation study {report.sweep.study.name!r}", headline(report), blocks)


def write_csv_tables(report: Report, output: Path) -> list[Path]:
    """The tables other than the configurations, each a tidy CSV beside ``output``
    (``results.csv`` -> ``results.ablation.csv``, ``results.trials.csv``, ...;
    ``results.missing.csv`` where parts are missing)."""
    written = []
    for section in sections(report, numeric=True):
        if section.name == "configurations":
            continue
        path = output.with_name(f"{output.stem}.{section.name}.csv")
        section.frame.to_csv(path, index=False)
        written.append(path)
    return written


def figure_images(report: Report) -> dict[str, bytes]:
    """The report's figures as PNG bytes: drawn from the records, the best configuration's
    confusion matrix, and the data pictures drawn at run time (read with the report)."""
    figures = study_figures(
        report.sweep, report.configurations, report.effects, report.context_effects
    )
    if report.confusion is not None and report.configurations:
        best = space.label(report.configurations[0].params)
        figures["confusion_matrix.png"] = confusion_matrix(
            report.confusion["counts"],
            report.confusion["class_names"],
            f"{report.sweep.study.name}: {best}, test set ({report.confusion['runs']} seed(s))",
        )
    return {name: png_bytes(figure) for name, figure in figures.items()} | report.data_pictures


def write_figure_files(
    report: Report, directory: Path, images: dict[str, bytes] | None = None
) -> list[Path]:
    """The report's figures (``images``, else :func:`figure_images`) as PNG files in
    ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, png in (images if images is not None else figure_images(report)).items():
        path = directory / name
        path.write_bytes(png)
        written.append(path)
    return written


def write_report_files(report: Report, directory: Path) -> list[Path]:
    """The figures, ``report.md`` and ``report.html`` (self-contained) in ``directory``;
    attached to the study's parent run (under ``report/``)."""
    images = figure_images(report)
    files = write_figure_files(report, directory, images)
    (directory / "report.md").write_text(render(report, "markdown"))
    (directory / "report.html").write_text(render(report, "html", images=images))
    files += [directory / "report.md", directory / "report.html"]
    if report.parent_run_id is not None:
        report.tracker.attach_report(report.parent_run_id, files)
    return files


def default_plot_dir(sweep: Sweep) -> Path:
    return DEFAULT_OUTPUT_DIR / "reports" / sweep.study.name
