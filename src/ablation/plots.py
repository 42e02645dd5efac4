"""Figures, drawn with matplotlib's object API (no global pyplot state, no display)."""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def accuracy_curves(
    history: dict[str, list[float]], title: str, fine_tune_from: int | None = None
) -> Figure:
    """Training vs. validation accuracy and loss per epoch, as the blog plots them.

    ``fine_tune_from`` (0-based epoch) marks where fine-tuning starts, as the blog does.
    """
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    accuracy, loss = figure.subplots(1, 2)
    epochs = range(1, len(history["accuracy"]) + 1)
    for axis, metric in ((accuracy, "accuracy"), (loss, "loss")):
        axis.plot(epochs, history[metric], marker="o", label=f"training {metric}")
        axis.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(metric)
        if fine_tune_from is not None:
            axis.axvline(fine_tune_from + 0.5, color="gray", linestyle="--", label="fine-tuning")
        axis.legend()
        axis.grid(alpha=0.3)
    accuracy.set_ylim(0, 1)
    figure.suptitle(title)
    return figure


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


def image_grid(images: list, titles: list[str], rows: int, columns: int, title: str) -> Figure:
    """A grid of uint8 images with a title over each, as the blog shows its data."""
    figure = Figure(figsize=(2.6 * columns, 2.7 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles, strict=False):
        axis.imshow(image)
        axis.set_title(caption)
    figure.suptitle(title)
    return figure


def confusion_matrix(counts: list[list[int]], class_names: list[str], title: str) -> Figure:
    """A confusion matrix: true classes down, predicted classes across, counts in the cells."""
    size = max(4.0, 0.7 * len(class_names) + 2.5)
    figure = Figure(figsize=(size + 1, size), layout="constrained")
    axis = figure.subplots()
    image = axis.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    peak = max((max(row) for row in counts), default=0)
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            colour = "white" if count > peak / 2 else "black"
            axis.text(j, i, str(count), ha="center", va="center", color=colour)
    axis.set_title(title)
    return figure
