"""Frozen-backbone features: computed once, so that a trial trains only its head.

A frozen backbone run in inference mode maps an image to the same features in
every epoch of every trial. So when nothing random stands between the input and
the backbone (no augmentation), a trial computes ``backbone(preprocess(image))``
once per (data, backbone, weights, width, preprocessing, image size, precision; and
seed, for a randomly initialised backbone), keeps it in ``data.cache_dir`` (where
trials that need the same features at once, in several processes, wait for the one
that computes them: :func:`load_features`), and trains only the head (pooling,
dropout, logits) on it.
The validation and test sets never pass through augmentation, so their features
are used whatever the configuration. The head's layers are the full model's own
layers (:class:`ablation.model.builders.Network`), so the model a trial records is still
the whole model, raw images in.

With augmentation (the blog's model4), the training set's features change every
epoch, so they are computed anew at each epoch's start (:func:`epoch_training`):
the epoch's batches, in the order the whole model would see them, go through the
model's own augmentation layers batch by batch (the same random draws), then
through the backbone in inference mode (``train.feature_batch_size`` images per
pass, no gradient tape); the head then trains on them
batch by batch in the same order, in one ``fit`` (early stopping and the epoch
callbacks as for the whole model). This lasts only while the backbone is frozen:
fine-tuning's second phase trains the whole model.

Nothing here changes what a trial means: the head sees exactly the tensors the
full model would feed it (``tests/model/test_features.py`` checks the predictions and
the training curves).

Example:
    >>> from ablation.sweep.sections import Train
    >>> from ablation.sweep.factors import Configuration
    >>> plan_features(Configuration(backbone="mobilenet_v2"), Train()).splits
    ('train', 'val', 'test')
    >>> augmented = plan_features(Configuration(backbone="mobilenet_v2", augment=True), Train())
    >>> augmented.splits, augmented.train_per_epoch
    (('val', 'test'), True)
    >>> plan_features(Configuration(backbone="mobilenet_v2", fine_tune_layers=20), Train()).splits
    ('train', 'val')
    >>> plan_features(Configuration(backbone="cnn"), Train()).splits
    ()
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablation.data.images import SPLITS, Images
from ablation.data.pipeline import eval_dataset, train_dataset
from ablation.files import locked, write_atomically
from ablation.model.backbones import weights_fingerprint
from ablation.model.builders import Network, in_policy
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration
from ablation.sweep.sections import Train
from ablation.sweep.space import effective_preprocess

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str], np.ndarray] = {}


@dataclass(frozen=True)
class FeaturePlan:
    """Which splits of a trial go through cached backbone features instead of the model."""

    splits: tuple[str, ...]
    # The first phase trains the head on the training set's augmented features, computed
    # anew at each epoch's start (:func:`epoch_training`).
    train_per_epoch: bool = False

    @property
    def head_trains(self) -> bool:
        """The first phase trains the head alone, on the training set's cached features."""
        return "train" in self.splits

    @property
    def validates_through_head(self) -> bool:
        """The first phase trains another model than the head (the whole model, or the head
        on per-epoch features), and validation runs through the head."""
        return "val" in self.splits and not self.head_trains

    @property
    def tests_through_head(self) -> bool:
        return "test" in self.splits


def plan_features(configuration: Configuration, train: Train) -> FeaturePlan:
    """The splits whose backbone features can stand in for the images, exactly.

    None without ``train.cache_features`` or a pretrained backbone; not the
    training set when random augmentation precedes the backbone (its features are
    then computed per epoch); not the test set after fine-tuning, which changes
    the backbone.
    """
    if not train.cache_features or not configuration.pretrained:
        return FeaturePlan(())
    splits = [s for s in SPLITS if not (s == "train" and configuration.augment)]
    if configuration.fine_tunes:
        splits.remove("test")
    return FeaturePlan(tuple(splits), train_per_epoch=configuration.augment)


def feature_key(sweep: Sweep, images: Images, configuration: Configuration, seed: int) -> str:
    """What the cached features depend on: data, split, backbone, weights, width,
    preprocessing, size, precision; and the seed, which draws random weights (``none``)."""
    width = sweep.model.width_of(configuration)
    source = sweep.model.source(configuration.backbone, width)
    size = tuple(sweep.data.image_size)
    identity: tuple[object, ...] = (
        images.fingerprint,
        size,
        sweep.data.test_fraction,
        sweep.data.split_seed,
        sweep.data.validation_fraction,
        images.layout,
        configuration.backbone,
        weights_fingerprint(configuration.backbone, width, size, source),  # type: ignore[arg-type]
        source,
        width,
        effective_preprocess(configuration),
        sweep.train.dtype_policy(configuration),
    )
    if source is None:
        identity += (("seed", seed),)
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
    a concurrent reader sees the whole file or none), by one process of this machine:
    the first to take that file's lock computes, the others wait for it, then read it.
    """
    features = {}
    for split in splits:
        if (key, split) not in _CACHE:
            path = Path(cache_dir) / f"features-{key}" / f"{split}.npy" if cache_dir else None
            _CACHE[key, split] = _read_or_compute(extractor, images, split, path, batch_size)
        features[split] = _CACHE[key, split]
    return features


def _read_or_compute(
    extractor: keras.Model, images: Images, split: str, path: Path | None, batch_size: int
) -> np.ndarray:
    """A split's features, read from ``path`` or computed (and written there).

    The lock is an flock: the kernel releases it when its process dies (killed, out of
    memory), and a KeyboardInterrupt releases it on its way out, so no one waits forever.
    """
    if path is None:
        return _compute(extractor, images, split, batch_size)
    if path.is_file():
        log.info("features %s: read from %s", split, path)
        return np.load(path)
    with locked(path):
        if path.is_file():
            log.info(
                "features %s: read from %s, computed by another process meanwhile", split, path
            )
            return np.load(path)
        computed = _compute(extractor, images, split, batch_size)
        write_atomically(path, lambda partial: np.save(partial, computed))
        log.info("features %s: computed, written to %s", split, path)
        return computed


def _compute(extractor: keras.Model, images: Images, split: str, batch_size: int) -> np.ndarray:
    x, y = images.split(split)
    return np.asarray(extractor.predict(eval_dataset(x, y, batch_size), verbose=0))


@dataclass(frozen=True)
class EpochTraining:
    """What one ``fit`` needs to train the head on features computed at each epoch's start."""

    model: keras.Model  # image indices -> logits: those images' features this epoch, the head
    dataset: Any  # tf.data of (image indices, labels), batched as fit serves the images
    callback: keras.callbacks.Callback  # computes the epoch's features; must come first


def epoch_training(
    network: Network,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    feature_batch_size: int,
) -> EpochTraining:
    """The head trained on the augmented training set's features, computed per epoch.

    At each epoch's start, the callback takes the epoch's batches of ``x`` in the
    order ``fit`` serves ``train_dataset(x, y, batch_size, seed)`` to the whole model
    (:func:`epoch_orders`), augments them batch by batch with the model's own
    augmentation layers (so with the same random draws), and runs the backbone on
    them in inference mode, ``feature_batch_size`` images at a time. The
    model then looks each image's features up by its index: ``dataset`` serves the
    indices in the whole model's batches, and each label with its image whatever
    the order. The model's weights are the head's (the features are not weights,
    so early stopping neither copies nor restores them); compile it as the head.
    """
    import keras
    import tensorflow as tf

    augment, extract = feature_steps(network)
    backbone, head = network.backbone, network.head
    assert backbone is not None and head is not None  # else feature_steps raised
    shape = tuple(backbone.output.shape[1:])
    features = tf.Variable(tf.zeros((len(y), *shape)), trainable=False)  # by image index
    orders = epoch_orders(len(y), batch_size, seed)

    class EpochFeatures(keras.layers.Layer):
        def call(self, indices: Any) -> Any:
            return tf.gather(features, tf.cast(indices, "int32"))

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return (input_shape[0], *shape)

    class ComputeEpochFeatures(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            order = next(orders)
            passes = augmented_features(augment, extract, x, order, batch_size, feature_batch_size)
            for rows, computed in passes:
                features.scatter_nd_update(rows[:, None], tf.cast(computed, tf.float32))

    indices = keras.Input(shape=(), name="image_index")
    looked_up = EpochFeatures(dtype="float32", name="epoch_features")(indices)
    with in_policy(network.model.dtype_policy.name):  # compiled as the model it trains for
        model = keras.Model(indices, head(looked_up), name="head_on_epoch_features")
    dataset = train_dataset(np.arange(len(y)), y, batch_size, seed)
    return EpochTraining(model, dataset, ComputeEpochFeatures())


def feature_steps(network: Network) -> tuple[Any, Any]:
    """The model's augmentation (in training: random) and its backbone (in inference mode),
    each one graph for any batch size (traced once, not run op by op).

    Raises:
        ValueError: The model has no augmentation before a pretrained backbone.
    """
    import tensorflow as tf

    augmenter, backbone = network.augmenter, network.backbone
    if augmenter is None or backbone is None or network.head is None:
        raise ValueError(f"model {network.model.name!r} has no augmentation before a backbone")
    images = tf.TensorSpec((None, *augmenter.input.shape[1:]), "float32")
    augmented = tf.TensorSpec((None, *augmenter.output.shape[1:]), augmenter.output.dtype)

    def augment(batch: Any) -> Any:
        return augmenter(batch, training=True)

    def extract(batch: Any) -> Any:
        return backbone(batch, training=False)

    return (
        tf.function(augment, input_signature=[images]),
        tf.function(extract, input_signature=[augmented]),
    )


def epoch_orders(count: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """The order in which ``fit`` serves ``train_dataset(x, y, batch_size, seed)``'s
    ``count`` examples, epoch by epoch (indices into ``x``).

    The dataset reshuffles at each new iterator of it, and Keras's ``fit`` makes one
    at each epoch's start and one more, unused, at its end: epoch k is the dataset's
    iteration 2k (``tests/model/test_features.py`` checks this against ``fit`` itself).
    """
    dataset = train_dataset(np.arange(count), np.zeros(count, np.int32), batch_size, seed)
    while True:
        yield np.concatenate([i for i, _ in dataset.as_numpy_iterator()]).astype(np.int64)
        iter(dataset)  # the iterator fit makes at an epoch's end


def augmented_features(
    augment: Any,
    extract: Any,
    x: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    feature_batch_size: int,
) -> Iterator[tuple[np.ndarray, Any]]:
    """The features of ``x`` augmented in ``order``, ``batch_size`` images per ``augment``
    call: ``(rows, features)`` per ``extract`` pass of ``feature_batch_size`` images (the
    last may have fewer), ``rows`` indices into ``x`` (``augment`` and ``extract``:
    :func:`feature_steps`).

    The augmentation draws per call, so its batches are the training batches; the
    backbone's passes cut them or join them, which changes no image's features.
    """
    import tensorflow as tf

    joined = max(1, -(-feature_batch_size // batch_size)) * batch_size  # augmented, then cut
    for start in range(0, len(order), joined):
        rows = order[start : start + joined]
        augmented = tf.concat(
            [
                augment(x[rows[i : i + batch_size]].astype(np.float32))
                for i in range(0, len(rows), batch_size)
            ],
            axis=0,
        )
        for cut in range(0, len(rows), feature_batch_size):
            yield (
                rows[cut : cut + feature_batch_size],
                extract(augmented[cut : cut + feature_batch_size]),
            )
