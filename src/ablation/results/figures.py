"""The report's figures, drawn from the records (:mod:`ablation.results.analysis`):
validation curves, test accuracy per configuration, the ablation's effects.

The pictures of the data and each trial's figures are drawn when they are recorded
(:mod:`ablation.tracking.figures`); the report copies those from the study's run.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablation.results.analysis import ConfigurationRow, Effect
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.factors import same_value
from ablation.tracking.figures import DATA_FIGURES

FIGURES = (
    "validation_curves.png",
    "test_accuracy.png",
    "ablation_effects.png",
    "confusion_matrix.png",  # the best configuration's
    *DATA_FIGURES,
)


def study_figures(
    sweep: Sweep, rows: Sequence[ConfigurationRow], effects: Sequence[Effect]
) -> dict[str, Figure]:
    """Validation curves, test accuracy per configuration, and the ablation's effects."""
    study = sweep.study.name
    names = [row_name(row) for row in rows]
    shown = [e for e in effects if not same_value(e.level, e.baseline) and e.effect is not None]
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
            [e.effect or 0.0 for e in shown],
            [e.interval for e in shown],
            f"{study}: what each choice changes in test accuracy",
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


def ablation_effects(
    names: list[str],
    effects: list[float],
    intervals: list[tuple[float, float] | None],
    title: str,
) -> Figure:
    """Each level's effect on test accuracy against its baseline, with its 95% interval."""
    figure = Figure(figsize=(9, 0.5 * len(names) + 1.5), layout="constrained")
    axis = figure.subplots()
    for position, (effect, interval) in enumerate(zip(effects, intervals, strict=True)):
        if interval is not None:
            axis.plot([100 * interval[0], 100 * interval[1]], [position] * 2, color="tab:blue")
        axis.plot([100 * effect], [position], "o", color="tab:blue" if interval else "tab:gray")
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(names)), names, fontsize="small")
    axis.invert_yaxis()
    axis.set_xlabel(
        "effect on test accuracy, points (dot: mean of matched pairs; line: 95% CI; grey: one pair)"
    )
    axis.grid(axis="x", alpha=0.3)
    axis.set_title(title)
    return figure
