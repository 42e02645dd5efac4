"""The image data: fetch or find it, decode it once, split it, serve it as tf.data.

``data.source`` is either a URL of a zip archive (the blog's
``cats_and_dogs_filtered.zip``), downloaded once into Keras's cache with
``keras.utils.get_file``, or a local directory, in one of three layouts
(:mod:`ablation.layout`): ``train/`` + ``validation/``, the same + ``test/``, or
class folders only.

Images are decoded and resized once per process into uint8 arrays; each trial
then gets its own shuffled view of the same arrays, served by
:mod:`ablation.pipeline` (which gathers each batch from them, never copying them
whole into TensorFlow). Where the folder has no
``test/``, the test set is split off once, per class and from ``data.split_seed``:
from the blog's validation folder, or, with class folders only, train, validation
and test are all split from them. The test set is never used for selection.

Example:
    >>> from ablation.config import Data
    >>> images = load_images(Data(source="../shared/data/cats_and_dogs", limit_per_class=5))
    >>> images.class_names, images.x_train.shape
    (['cats', 'dogs'], (10, 160, 160, 3))
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablation.config import Data
from ablation.errors import UserError
from ablation.layout import (
    IMAGE_EXTENSIONS,
    LAYOUTS,
    Listing,
    list_images,
    resolve_source,
    split_classes,
    split_validation,
)
from ablation.pipeline import eval_dataset, train_dataset
from ablation.redaction import redact

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Images",
    "Listing",
    "eval_dataset",
    "list_images",
    "load_images",
    "resolve_source",
    "split_classes",
    "split_validation",
    "train_dataset",
]

BLOG_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
SPLITS = ("train", "val", "test")  # the splits a trial sees


@dataclass(frozen=True)
class Images:
    """Decoded images (uint8, NHWC) and integer labels of the three splits."""

    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fingerprint: str
    source: str
    file: Path | None = None  # where these decoded images are saved, if they are
    layout: str = "train+validation"

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels of one of :data:`SPLITS`."""
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def decode(paths: list[Path], image_size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """Decode and resize images as ``image_dataset_from_directory`` does (bilinear, RGB).

    Returns:
        The uint8 images of the files that decoded, and the indices of those that did not.
    """
    import tensorflow as tf

    def load(path: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, image_size, method="bilinear")
        return tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8), index

    dataset = (
        tf.data.Dataset.from_tensor_slices(([str(p) for p in paths], np.arange(len(paths))))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .batch(256)
    )
    images, decoded = [], []
    for batch, indices in dataset.as_numpy_iterator():
        images.append(batch)
        decoded.extend(indices.tolist())
    failed = sorted(set(range(len(paths))) - set(decoded))
    if not images:
        return np.zeros((0, *image_size, 3), np.uint8), failed
    return np.concatenate(images), failed


_CACHE: dict[str, Images] = {}
_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def write_images(images: Images, path: Path) -> None:
    """Save decoded images (uncompressed: reading them back is a plain copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        partial,
        class_names=np.array(images.class_names),
        fingerprint=np.array(images.fingerprint),
        source=np.array(images.source),
        layout=np.array(images.layout),
        **{name: getattr(images, name) for name in _ARRAYS},
    )
    partial.replace(path)  # atomic: a concurrent reader sees the whole file or none


def read_images(path: Path) -> Images:
    with np.load(path) as saved:
        return Images(
            class_names=[str(name) for name in saved["class_names"]],
            fingerprint=str(saved["fingerprint"]),
            source=str(saved["source"]),
            file=path,
            layout=str(saved["layout"]) if "layout" in saved else "train+validation",
            **{name: saved[name] for name in _ARRAYS},
        )


def cache_file(config: Data, listing: Listing) -> Path | None:
    """Where the decoded images of this data, layout, size and split are kept between runs."""
    if config.cache_dir is None:
        return None
    identity = (
        listing.fingerprint(),
        config.image_size,
        config.test_fraction,
        config.split_seed,
        listing.layout,
        config.validation_fraction,
    )
    key = hashlib.sha256(repr(identity).encode()).hexdigest()[:16]
    height, width = config.image_size
    return Path(config.cache_dir) / f"images-{height}x{width}-{key}.npz"


def load_images(config: Data) -> Images:
    """Fetch, list, decode and split the data of a sweep.

    Decoding happens once: the result is kept in this process and, when
    ``data.cache_dir`` is set, in a file keyed by the data listing, layout, image
    size and split. Files that are not images, or that fail to decode, are skipped
    with one warning naming them.

    Raises:
        UserError: A class with no readable image, or a class missing from a split.
    """
    root, layout = resolve_source(config.source)
    listing = list_images(root, config.limit_per_class, layout)
    cached = cache_file(config, listing)
    key = str(cached) if cached else repr((str(root), listing.fingerprint(), config))
    if key in _CACHE:
        return _CACHE[key]
    if cached is not None and cached.is_file():
        _CACHE[key] = read_images(cached)
        return _CACHE[key]
    splits = _split(config, listing, _decode_folders(config, listing))
    images = Images(
        class_names=listing.class_names,
        **{f"x_{name}": x for name, (x, _) in splits.items()},
        **{f"y_{name}": y for name, (_, y) in splits.items()},
        fingerprint=listing.fingerprint(),
        source=redact(config.source),  # kept in the cache file: never a password
        layout=layout,
    )
    if cached is not None:
        write_images(images, cached)
        images = dataclasses.replace(images, file=cached)
    _CACHE[key] = images
    return images


Pair = tuple[np.ndarray, np.ndarray]


def _decode_folders(config: Data, listing: Listing) -> dict[str, Pair]:
    """Each folder's decoded images and labels; unreadable files skipped and named."""
    arrays: dict[str, Pair] = {}
    bad = list(listing.skipped)
    for folder in LAYOUTS[listing.layout]:
        paths = [p for p, _ in listing.files[folder]]
        labels = np.array([label for _, label in listing.files[folder]], dtype=np.int32)
        x, failed = decode(paths, config.image_size)
        bad += [paths[i] for i in failed]
        arrays[folder] = x, np.delete(labels, failed)
    if bad:
        names = ", ".join(str(p.relative_to(listing.root)) for p in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        log.warning("skipped %d file(s) that are not readable images: %s%s", len(bad), names, more)
    for folder, (_, y) in arrays.items():
        missing = [n for i, n in enumerate(listing.class_names) if not np.any(y == i)]
        if missing:
            where = f"{folder}/" if folder else str(listing.root / missing[0])
            raise UserError(f"data: no readable images of class {missing[0]!r} in {where}")
    return arrays


def _split(config: Data, listing: Listing, arrays: dict[str, Pair]) -> dict[str, Pair]:
    """The train, val and test splits of the decoded folders, by the layout."""
    if listing.layout == "train+validation+test":
        return {"train": arrays["train"], "val": arrays["validation"], "test": arrays["test"]}
    if listing.layout == "train+validation":
        x, y = arrays["validation"]
        val, test = split_validation(y, config.test_fraction, config.split_seed)
        return {"train": arrays["train"], "val": (x[val], y[val]), "test": (x[test], y[test])}
    x, y = arrays[""]
    parts = split_classes(y, config.validation_fraction, config.test_fraction, config.split_seed)
    splits = {name: (x[part], y[part]) for name, part in zip(SPLITS, parts, strict=True)}
    for name, (_, labels) in splits.items():
        counts = np.bincount(y, minlength=len(listing.class_names))
        missing = [i for i in range(len(listing.class_names)) if not np.any(labels == i)]
        if missing:
            raise UserError(
                f"data: class {listing.class_names[missing[0]]!r} has no image in the {name} "
                f"split ({counts[missing[0]]} readable image(s); at least 3 are needed to "
                "split it into train, validation and test)"
            )
    return splits
