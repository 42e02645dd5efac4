"""Frozen-backbone features: computed once, so that a trial trains only its head.

A frozen backbone run in inference mode maps an image to the same features in
every epoch of every trial. So when nothing random stands between the input and
the backbone (no augmentation), a trial computes ``backbone(preprocess(image))``
once per (data, weights, width, preprocessing, image size, precision), keeps it
in ``data.cache_dir``, and trains only the head (pooling, dropout, logits) on it.
The validation and test sets never pass through augmentation, so their features
are used whatever the configuration. The head's layers are the full model's own
layers, so the model a trial records is still the whole model, raw images in.

Nothing here changes what a trial means: the head sees exactly the tensors the
full model would feed it (``tests/test_features.py`` checks the predictions).

Example:
    >>> from ablation.config import Choices
    >>> cacheable_splits(Choices(backbone="mobilenet_v2"))
    ('train', 'val', 'test')
    >>> cacheable_splits(Choices(backbone="mobilenet_v2", augment=True))
    ('val', 'test')
    >>> cacheable_splits(Choices(backbone="cnn"))
    ()
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ablation.config import Choices, Sweep
from ablation.data import Images, eval_dataset
from ablation.models import AUGMENTATION, backbone_of, dtype_policy, weights_fingerprint

if TYPE_CHECKING:
    import keras

SPLITS = ("train", "val", "test")

_CACHE: dict[tuple[str, str], np.ndarray] = {}


@dataclass(frozen=True)
class FrozenParts:
    """A model cut at its frozen backbone: ``model(x) == head(extractor(x))`` at inference."""

    extractor: keras.Model  # image -> backbone features (preprocessing included, no augmentation)
    head: keras.Model  # backbone features -> logits, sharing the full model's layers


def cacheable_splits(choices: Choices) -> tuple[str, ...]:
    """The splits whose backbone features can be computed once for this configuration."""
    if choices.backbone == "cnn":
        return ()
    if choices.augment:  # random augmentation precedes the backbone while training
        return ("val", "test")
    return SPLITS


def frozen_parts(model: keras.Model) -> FrozenParts | None:
    """Cut a model built by :func:`ablation.models.build_model` at its frozen backbone.

    Returns None if the model has no backbone, or if it is not frozen (fine-tuning).
    """
    import keras

    layers = model.layers[1:]  # after the input
    found = backbone_of(model)
    if found is None or found.trainable:
        return None
    backbone = layers.index(found)
    image = keras.Input(shape=model.input_shape[1:], name="image")
    x = image
    for layer in layers[:backbone]:
        if layer.name != AUGMENTATION:  # random augmentation is the identity at inference
            x = layer(x)
    x = layers[backbone](x, training=False)
    extractor = keras.Model(image, x, name="feature_extractor")
    features = keras.Input(shape=x.shape[1:], name="features")
    y = features
    for layer in layers[backbone + 1 :]:
        y = layer(y)
    return FrozenParts(extractor=extractor, head=keras.Model(features, y, name="head"))


def feature_key(sweep: Sweep, images: Images, choices: Choices) -> str:
    """What the cached features depend on: data, split, weights, width, preprocessing, size."""
    identity = (
        images.fingerprint,
        tuple(sweep.data.image_size),
        sweep.data.test_fraction,
        sweep.data.split_seed,
        choices.backbone,
        weights_fingerprint(sweep.data.image_size, sweep.model),
        sweep.model.weights,
        sweep.model.alpha,
        choices.preprocess,
        dtype_policy(sweep.train, choices),
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
    arrays = {"train": images.x_train, "val": images.x_val, "test": images.x_test}
    features = {}
    for split in splits:
        if (key, split) not in _CACHE:
            path = Path(cache_dir) / f"features-{key}" / f"{split}.npy" if cache_dir else None
            if path is not None and path.is_file():
                _CACHE[key, split] = np.load(path)
            else:
                x = arrays[split]
                computed = extractor.predict(
                    eval_dataset(x, np.zeros(len(x), np.int32), batch_size), verbose=0
                )
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
