"""The report's figures: the study's results, and the data it ran on.

Results come from the records (:mod:`ablation.analysis`); the data pictures
decode a few images of the sweep's data and run them through the configured
augmentation. :mod:`ablation.plots` draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablation import plots, space
from ablation.analysis import ConfigurationRow, Effect
from ablation.config import Sweep
from ablation.data import Images
from ablation.factors import Configuration, same_value
from ablation.models import augmentation

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DATA_FIGURES = ("data_examples.png", "augmentation_examples.png")  # drawn at run time
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
        "validation_curves.png": plots.validation_curves(
            {name: row.mean_curve() for name, row in zip(names, rows, strict=True)},
            f"{study}: validation accuracy per epoch (mean over seeds)",
        ),
        "test_accuracy.png": plots.test_accuracy_bars(
            names,
            [r.test_mean for r in rows],
            [r.test_sd for r in rows],
            f"{study}: test accuracy per configuration",
        ),
        "ablation_effects.png": plots.ablation_effects(
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


MAX_CLASSES_SHOWN = 10  # classes in the data picture; more make it unreadable
EXAMPLES_PER_CLASS = 3


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
    examples = plots.image_grid(
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
    grid = plots.image_grid(
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
    rotation = default.rotation
    if rotations is not None:
        rotation = rotations.high if rotations.is_range else max(rotations.choice or [rotation])
    flips = sweep.space.get("flip")
    flip = flips.choice[0] if flips is not None and flips.choice else default.flip
    return Configuration(augment=True, rotation=float(rotation), flip=str(flip))


def write_figures(figures: Mapping[str, Figure], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        path = directory / name
        figure.savefig(path, dpi=110)
        written.append(path)
    return written
