"""The figures a study records in MLflow: each trial's curves and confusion matrix, and the
study run's pictures of its data. Drawn with matplotlib's object API (no global pyplot
state, no display), where they are recorded: the report draws its own
(:mod:`ablation.results.figures`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ablation.data.images import Images
from ablation.model.builders import augmentation
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration, Scalar

DATA_FIGURES = ("data_examples.png", "augmentation_examples.png")  # drawn at run time
MAX_CLASSES_SHOWN = 10  # classes in the data picture; more make it unreadable
EXAMPLES_PER_CLASS = 3


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


def data_figures(sweep: Sweep, images: Images) -> dict[str, Figure]:
    """The data pictures: three training images of each class (up to
    :data:`MAX_CLASSES_SHOWN` classes), and one image under the augmentation 9 times."""
    shown = images.class_names[:MAX_CLASSES_SHOWN]
    picked, titles = [], []
    for label, name in enumerate(shown):
        members = np.flatnonzero(images.y_train == label)[:EXAMPLES_PER_CLASS]
        picked += [images.x_train[i] for i in members]
        titles += [name] * len(members)
    more = len(images.class_names) - len(shown)
    title = f"{sweep.study.name}: training images" + (f" ({more} more classes)" if more else "")
    examples = image_grid(
        picked,
        titles,
        len(shown),
        EXAMPLES_PER_CLASS,
        title,
    )
    config = _widest_augmentation(sweep)
    layer = augmentation(config, seed=0)
    source = images.x_train[:1].astype("float32")
    augmented = [
        np.clip(np.asarray(layer(source, training=True))[0], 0, 255).astype("uint8")
        for _ in range(9)
    ]
    grid = image_grid(
        augmented,
        [""] * 9,
        3,
        3,
        f"one image under the augmentation (flip {config.flip}, rotation {config.rotation:g})",
    )
    return {"data_examples.png": examples, "augmentation_examples.png": grid}


def _widest_augmentation(sweep: Sweep) -> Configuration:
    """The sweep's augmentation at its largest rotation and first flip."""
    default = Configuration()
    rotations = sweep.space.get("rotation")
    rotation: Scalar = default.rotation
    if rotations is not None and rotations.choice is not None:
        rotation = max(rotations.choice)
    elif rotations is not None and rotations.high is not None:  # a range: both ends are set
        rotation = rotations.high
    flips = sweep.space.get("flip")
    flip = flips.choice[0] if flips is not None and flips.choice else default.flip
    return Configuration(augment=True, rotation=float(rotation), flip=str(flip))


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


def write_figures(figures: Mapping[str, Figure], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        path = directory / name
        path.write_bytes(png_bytes(figure))
        written.append(path)
    return written


def png_bytes(figure: Figure) -> bytes:
    """A figure as PNG, at the resolution every recorded figure has."""
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=110)
    return out.getvalue()
