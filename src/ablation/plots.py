"""Figures, drawn with matplotlib's object API (no global pyplot state, no display)."""

from __future__ import annotations

from matplotlib.figure import Figure


def accuracy_curves(history: dict[str, list[float]], title: str) -> Figure:
    """Training vs. validation accuracy and loss per epoch, as the blog plots them."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    accuracy, loss = figure.subplots(1, 2)
    epochs = range(1, len(history["accuracy"]) + 1)
    for axis, metric in ((accuracy, "accuracy"), (loss, "loss")):
        axis.plot(epochs, history[metric], marker="o", label=f"training {metric}")
        axis.plot(epochs, history[f"val_{metric}"], marker="o", label=f"validation {metric}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.legend()
        axis.grid(alpha=0.3)
    accuracy.set_ylim(0, 1)
    figure.suptitle(title)
    return figure
