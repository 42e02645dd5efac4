"""The report's figures, drawn from the records (:mod:`ablation.results.analysis`,
:mod:`ablation.effects.estimates`): validation curves, test accuracy per configuration,
the ablation's effects and their interactions, coloured by verdict.

The pictures of the data and each trial's figures are drawn when they are recorded
(:mod:`ablation.tracking.figures`); the report copies those from the study's run.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ablation.effects.estimates import ContextEffect, Effect, Estimate
from ablation.results.analysis import ConfigurationRow
from ablation.results.tables import context_name
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.tracking.figures import DATA_FIGURES

FIGURES = (
    "validation_curves.png",
    "test_accuracy.png",
    "ablation_effects.png",
    "interactions.png",
    "confusion_matrix.png",  # the best configuration's
    *DATA_FIGURES,
)


FIGURE_CAPTIONS = {
    "validation_curves.png": "Validation accuracy per epoch, mean over seeds.",
    "test_accuracy.png": "Test accuracy per configuration; whisker: standard deviation over seeds.",
    "ablation_effects.png": "Each level's effect against its baseline, with its 95% interval "
    "over seeds and test images, coloured by verdict.",
    "interactions.png": "The same effects within each context of the other factors.",
    "confusion_matrix.png": "The best configuration's test confusion matrix, seeds summed.",
    "data_examples.png": "Training images of each class.",
    "augmentation_examples.png": "One training image under the sweep's widest augmentation.",
}


def study_figures(
    sweep: Sweep,
    rows: Sequence[ConfigurationRow],
    effects: Sequence[Effect],
    context_effects: Sequence[ContextEffect],
) -> dict[str, Figure]:
    """Validation curves, test accuracy per configuration, the ablation's effects, and
    each effect within each context (interactions)."""
    study = sweep.study.name
    names = [row_name(row) for row in rows]
    shown = [e for e in effects if e.estimate is not None]
    within = [e for e in context_effects if e.estimate is not None]
    return {
        "validation_curves.png": validation_curves(
            {name: row.mean_curve() for name, row in zip(names, rows, strict=True)},
            f"{study}: validation accuracy per epoch (mean over seeds)",
        ),
        "test_accuracy.png": test_accuracy_bars(
            names,
            [r.test.mean for r in rows],
            [r.test.sd for r in rows],
            f"{study}: test accuracy per configuration",
        ),
        "ablation_effects.png": ablation_effects(
            [f"{e.factor}: {e.level} vs {e.baseline}" for e in shown],
            shown,
            f"{study}: what each choice changes in test accuracy",
        ),
        "interactions.png": ablation_effects(
            [f"{e.factor}: {e.level} vs {e.baseline} | {context_name(e.context)}" for e in within],
            within,
            f"{study}: each choice's effect within each context of the others",
        ),
    }


def row_name(row: ConfigurationRow) -> str:
    """A configuration's label, with the blog's model name where it is one."""
    blog = space.blog_name(row.params)
    return space.label(row.params) + (f" [{blog}]" if blog else "")


def validation_curves(curves: dict[str, list[float]], title: str) -> Figure:
    """Validation accuracy per epoch of every configuration (mean over seeds), on one axis."""
    figure = Figure(figsize=(9, 5.5), layout="constrained")
    axis = figure.subplots()
    for name, curve in curves.items():
        axis.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("validation accuracy")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small", loc="lower right")
    axis.set_title(title)
    return figure


def test_accuracy_bars(
    names: list[str], means: list[float], spreads: list[float | None], title: str
) -> Figure:
    """Test accuracy per configuration; error bars are the standard deviation over seeds."""
    figure = Figure(figsize=(9, 0.45 * len(names) + 1.5), layout="constrained")
    axis = figure.subplots()
    positions = range(len(names))
    errors = [s if s is not None else 0.0 for s in spreads]
    axis.barh(positions, means, xerr=errors, capsize=3, color="tab:blue", alpha=0.8)
    axis.set_yticks(list(positions), names, fontsize="small")
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel("test accuracy (bar: mean over seeds; whisker: standard deviation)")
    for position, mean in zip(positions, means, strict=True):
        axis.text(min(mean + 0.01, 0.93), position, f"{mean:.3f}", va="center", fontsize="small")
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title)
    return figure


VERDICT_COLOURS = {
    "gain": "#1a7f37",
    "loss": "#c62828",
    "negligible": "#57606a",
    "undecided": "#9a6700",
}


def ablation_effects(
    names: list[str], estimates: Sequence[Estimate], title: str, *, xlabel: str | None = None
) -> Figure:
    """Each effect on test accuracy with its 95% interval (seeds and test images),
    coloured by its verdict."""
    figure = Figure(figsize=(9, 0.42 * len(names) + 1.8), layout="constrained")
    axis = figure.subplots()
    for position, estimate in enumerate(estimates):
        colour = VERDICT_COLOURS.get(estimate.verdict, "tab:gray")
        interval = estimate.interval or estimate.test_interval
        if interval is not None:
            style = "-" if estimate.interval is not None else ":"
            axis.plot([100 * interval[0], 100 * interval[1]], [position] * 2, style, color=colour)
        axis.plot([100 * (estimate.estimate or 0.0)], [position], "o", color=colour)
    axis.axvline(0, color="black", linewidth=0.8)
    low, high = axis.get_xlim()
    axis.set_xlim(max(low, -100), min(high, 100))  # a difference of accuracies: within ±100
    axis.set_yticks(range(len(names)), names, fontsize="small")
    axis.invert_yaxis()
    handles = [
        Line2D([], [], color=colour, marker="o", label=verdict)
        for verdict, colour in VERDICT_COLOURS.items()
    ]
    axis.legend(handles=handles, fontsize="small", loc="best")
    axis.set_xlabel(
        xlabel
        or "effect on test accuracy, points (dot: mean over seeds; line: 95% interval, "
        "seeds and test images; dotted: test images only)"
    )
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title)
    return figure
