"""Frozen-backbone features: computed once, so that a trial trains only its head.

A frozen backbone run in inference mode maps an image to the same features in
every epoch of every trial. So when nothing random stands between the input and
the backbone (no augmentation), a trial computes ``backbone(preprocess(image))``
once per (data, weights, width, preprocessing, image size, precision), keeps it
in ``data.cache_dir``, and trains only the head (pooling, dropout, logits) on it.
The validation and test sets never pass through augmentation, so their features
are used whatever the configuration. The head's layers are the full model's own
layers (:class:`ablation.models.Network`), so the model a trial records is still
the whole model, raw images in.

Nothing here changes what a trial means: the head sees exactly the tensors the
full model would feed it (``tests/test_features.py`` checks the predictions).

Example:
    >>> from ablation.config import Train
    >>> from ablation.factors import Configuration
    >>> plan_features(Configuration(backbone="mobilenet_v2"), Train()).splits
    ('train', 'val', 'test')
    >>> plan_features(Configuration(backbone="mobilenet_v2", augment=True), Train()).splits
    ('val', 'test')
    >>> plan_features(Configuration(backbone="mobilenet_v2", fine_tune_layers=20), Train()).splits
    ('train', 'val')
    >>> plan_features(Configuration(backbone="cnn"), Train()).splits
    ()
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablation.config import Sweep, Train
from ablation.data import SPLITS, Images, eval_dataset
from ablation.factors import Configuration
from ablation.models import weights_fingerprint
from ablation.precision import dtype_policy

if TYPE_CHECKING:
    import keras

_CACHE: dict[tuple[str, str], np.ndarray] = {}


@dataclass(frozen=True)
class FeaturePlan:
    """Which splits of a trial go through cached backbone features instead of the model."""

    splits: tuple[str, ...]

    @property
    def head_trains(self) -> bool:
        """The first phase trains the head alone, on the training set's features."""
        return "train" in self.splits

    @property
    def validates_through_head(self) -> bool:
        """Augmented images train the whole model, and validation runs through the head."""
        return "val" in self.splits and not self.head_trains

    @property
    def tests_through_head(self) -> bool:
        return "test" in self.splits


def plan_features(configuration: Configuration, train: Train) -> FeaturePlan:
    """The splits whose backbone features can stand in for the images, exactly.

    None without ``train.cache_features`` or a pretrained backbone; not the
    training set when random augmentation precedes the backbone; not the test set
    after fine-tuning, which changes the backbone.
    """
    if not train.cache_features or not configuration.pretrained:
        return FeaturePlan(())
    splits = [s for s in SPLITS if not (s == "train" and configuration.augment)]
    if configuration.fine_tunes:
        splits.remove("test")
    return FeaturePlan(tuple(splits))


def feature_key(sweep: Sweep, images: Images, configuration: Configuration) -> str:
    """What the cached features depend on: data, split, weights, width, preprocessing, size."""
    identity = (
        images.fingerprint,
        tuple(sweep.data.image_size),
        sweep.data.test_fraction,
        sweep.data.split_seed,
        sweep.data.validation_fraction,
        images.layout,
        configuration.backbone,
        weights_fingerprint(sweep.data.image_size, sweep.model),
        sweep.model.weights,
        sweep.model.alpha,
        configuration.preprocess,
        dtype_policy(sweep.train, configuration),
    )
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:16]


def load_features(
    extractor: keras.Model,
    images: Images,
    splits: tuple[str, ...],
    *,
    key: str,
    cache_dir: str | None,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """The backbone features of ``splits``: from this process, from ``cache_dir``, or computed.

    Computed features are written to ``cache_dir/features-KEY/SPLIT.npy`` (atomically:
    a concurrent reader sees the whole file or none).
    """
    features = {}
    for split in splits:
        if (key, split) not in _CACHE:
            path = Path(cache_dir) / f"features-{key}" / f"{split}.npy" if cache_dir else None
            if path is not None and path.is_file():
                _CACHE[key, split] = np.load(path)
            else:
                x, y = images.split(split)
                computed = extractor.predict(eval_dataset(x, y, batch_size), verbose=0)
                _CACHE[key, split] = np.asarray(computed)
                if path is not None:
                    _save(path, _CACHE[key, split])
        features[split] = _CACHE[key, split]
    return features


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(partial, array)
    partial.replace(path)
