"""The image data: fetch or find it, decode it once, split it, serve it as tf.data.

``data.source`` is either a URL of an archive (the blog's ``cats_and_dogs_filtered.zip``),
downloaded once (:mod:`ablation.data.sources`), or a local directory, in one of three
layouts (:mod:`ablation.data.folders`): ``train/`` + ``validation/``, the same +
``test/``, or class folders only.

Images are decoded and resized once into uint8 arrays; each trial then gets its
own shuffled view of the same arrays. Where the folder has no ``test/``, the test
set is split off once, per class and from ``data.split_seed``: from the blog's
validation folder, or, with class folders only, train, validation and test are
all split from them. The test set is never used for selection.

With ``data.cache_dir`` the decoded images live in a folder there,
``images-HxW-KEY/`` (``x_train.npy``, ``y_train.npy``, ... and ``meta.json``; KEY from
the data's identity, its files' content, and the size and split),
decoded into it a batch at a time (memory bounded by a batch, not by the data)
and read back memory-mapped: every process that reads it (each trial's process)
shares one copy in the operating system's page cache instead of holding its own.
The folder appears whole or not at all (:mod:`ablation.data.arrays`). Without
``cache_dir`` the arrays are decoded into this process's memory.
The datasets of :mod:`ablation.data.pipeline`
gather each batch from the arrays when it is needed, so TensorFlow never holds a
copy of them either.

Example:
    >>> from ablation.sweep.sections import Data
    >>> images = load_images(Data(source="../shared/data/cats_and_dogs", limit_per_class=5))
    >>> images.class_names, images.x_train.shape
    (['cats', 'dogs'], (10, 160, 160, 3))
    >>> import tempfile
    >>> cache = tempfile.mkdtemp()
    >>> cached = load_images(Data(source="../shared/data/cats_and_dogs", limit_per_class=5,
    ...                           cache_dir=cache))
    >>> cached.folder.name[:15], type(cached.x_train).__name__
    ('images-160x160-', 'memmap')
    >>> bool((cached.x_train == images.x_train).all())
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ablation.data.arrays import allocate, building, gather, write_rows
from ablation.data.folders import LAYOUTS, Listing, list_images, split_classes, split_validation
from ablation.data.sources import resolve_source
from ablation.errors import UserError
from ablation.redaction import redact
from ablation.sweep.sections import Data

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")  # the splits a trial sees
DECODE_BATCH = 256  # images decoded (and held) at a time


@dataclass(frozen=True)
class Images:
    """Decoded images (uint8, NHWC) and integer labels of the three splits.

    Read from a folder (:func:`read_images`), the images are read-only memory maps.
    """

    class_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fingerprint: str
    source: str
    folder: Path | None = None  # where these decoded images are saved, if they are
    layout: str = "train+validation"
    test_paths: tuple[str, ...] = ()  # each test image's file, relative to the data folder

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels of one of :data:`SPLITS`."""
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def decode_into(
    paths: list[Path], image_size: tuple[int, int], write: Callable[[int, np.ndarray], None]
) -> list[int]:
    """Decode and resize images as ``image_dataset_from_directory`` does (bilinear, RGB),
    a batch at a time: ``write(start, batch)`` gets the uint8 images of the files that
    decoded, in order, ``start`` counting only those.

    Returns:
        The indices of the files that did not decode.
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
        .batch(DECODE_BATCH)
    )
    decoded: list[int] = []
    for batch, indices in dataset.as_numpy_iterator():
        write(len(decoded), batch)
        decoded.extend(indices.tolist())
    return sorted(set(range(len(paths))) - set(decoded))


def decode(paths: list[Path], image_size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """:func:`decode_into` an array in memory.

    Returns:
        The uint8 images of the files that decoded, and the indices of those that did not.
    """
    x = np.empty((len(paths), *image_size, 3), np.uint8)

    def put(start: int, batch: np.ndarray) -> None:
        x[start : start + len(batch)] = batch

    failed = decode_into(paths, image_size, put)
    return x[: len(paths) - len(failed)], failed


_CACHE: dict[str, Images] = {}
_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_META = "meta.json"
_FORMAT = 3  # of a cache folder: 2 added the test images' paths; 3 keys it by content


def write_images(images: Images, path: Path) -> None:
    """Save decoded images as the folder ``path`` (one ``.npy`` per array, ``meta.json``).

    Atomic: a concurrent reader sees the whole folder or none. If another process
    saved the folder first, its copy is kept.
    """
    with building(path, done=_META) as partial:
        for name in _ARRAYS:
            np.save(partial / f"{name}.npy", getattr(images, name))
        _write_meta(partial, images)


def read_images(path: Path) -> Images:
    """The images saved in the folder ``path``, memory-mapped (read-only, shared between
    the processes that read them); the labels are read into memory."""
    meta = json.loads((path / _META).read_text())
    arrays: dict[str, Any] = {
        name: np.load(path / f"{name}.npy", mmap_mode="r" if name.startswith("x_") else None)
        for name in _ARRAYS
    }
    return Images(
        class_names=meta["class_names"],
        fingerprint=meta["fingerprint"],
        source=meta["source"],
        folder=path,
        layout=meta["layout"],
        test_paths=tuple(meta["test_paths"]),
        **arrays,
    )


def cache_folder(config: Data, fingerprint: str, layout: str) -> Path | None:
    """Where the decoded images of the data whose identity is ``fingerprint``
    (:meth:`Listing.fingerprint`), in this layout, size and split, are kept between runs."""
    if config.cache_dir is None:
        return None
    identity = (
        _FORMAT,
        fingerprint,
        config.image_size,
        config.test_fraction,
        config.split_seed,
        layout,
        config.validation_fraction,
    )
    key = hashlib.sha256(repr(identity).encode()).hexdigest()[:16]
    height, width = config.image_size
    return Path(config.cache_dir) / f"images-{height}x{width}-{key}"


def load_images(config: Data) -> Images:
    """Fetch, list, decode and split the data of a sweep.

    Decoding happens once: the result is kept in this process and, when
    ``data.cache_dir`` is set, in a folder keyed by the data's identity (its files'
    names, labels and content: a photo edited in place is decoded again), layout,
    image size and split, read back memory-mapped. Files that are not images, or that
    fail to decode, are skipped with one warning naming them.

    Raises:
        UserError: A class with no readable image, a class missing from a split, or an
            archive that is not the one ``data.sha256`` names.
    """
    source = resolve_source(config)
    listing = list_images(source.root, config.limit_per_class, source.layout)
    memo = Path(config.cache_dir) if config.cache_dir else None
    fingerprint = listing.fingerprint(memo)
    cached = cache_folder(config, fingerprint, listing.layout)
    key = str(cached) if cached else repr((str(source.root), fingerprint, config))
    if key in _CACHE:
        return _CACHE[key]
    if cached is not None:
        if not cached.is_dir():
            _decode_to_folder(config, listing, fingerprint, cached)
        _CACHE[key] = read_images(cached)
        return _CACHE[key]
    folders = _decode_folders(config, listing, into=None)
    labels = {folder: decoded.y for folder, decoded in folders.items()}
    splits = _split(config, listing, labels)
    arrays: dict[str, Any] = {}  # Images' x_/y_ fields by name
    for split, (folder, index) in splits.items():
        x, y = folders[folder].x, folders[folder].y
        whole = np.array_equal(index, np.arange(len(y)))  # the whole folder: no copy
        arrays[f"x_{split}"], arrays[f"y_{split}"] = (x, y) if whole else (x[index], y[index])
    _CACHE[key] = Images(
        class_names=listing.class_names,
        fingerprint=fingerprint,
        source=redact(config.source),
        layout=listing.layout,
        test_paths=_test_paths(folders, splits),
        **arrays,
    )
    return _CACHE[key]


def _decode_to_folder(config: Data, listing: Listing, fingerprint: str, path: Path) -> None:
    """Decode the images and save them as the folder ``path``, a batch and a chunk at a time."""
    with building(path, done=_META) as partial:
        folders = _decode_folders(config, listing, into=partial)
        labels = {folder: decoded.y for folder, decoded in folders.items()}
        splits = _split(config, listing, labels)
        for split, (folder, index) in splits.items():
            gather(_decoded_file(partial, folder), index, partial / f"x_{split}.npy")
            np.save(partial / f"y_{split}.npy", labels[folder][index])
        for folder in folders:
            _decoded_file(partial, folder).unlink()
        no_arrays: dict[str, Any] = {name: np.empty(0) for name in _ARRAYS}  # the meta only
        meta = Images(
            class_names=listing.class_names,
            fingerprint=fingerprint,
            source=redact(config.source),  # kept in the cache folder: never a password
            layout=listing.layout,
            test_paths=_test_paths(folders, splits),
            **no_arrays,
        )
        _write_meta(partial, meta)


def _write_meta(folder: Path, images: Images) -> None:
    meta = {name: getattr(images, name) for name in ("class_names", "fingerprint", "source")}
    meta |= {"layout": images.layout, "test_paths": list(images.test_paths)}
    (folder / _META).write_text(json.dumps(meta, ensure_ascii=False))


@dataclass(frozen=True)
class Decoded:
    """One folder's readable images, their labels and their files (relative to the data)."""

    x: np.ndarray
    y: np.ndarray
    paths: list[str]


def _test_paths(
    folders: dict[str, Decoded], splits: dict[str, tuple[str, np.ndarray]]
) -> tuple[str, ...]:
    folder, index = splits["test"]
    return tuple(folders[folder].paths[i] for i in index)


def _decode_folders(config: Data, listing: Listing, into: Path | None) -> dict[str, Decoded]:
    """Each folder's decoded images and labels; unreadable files skipped and named.

    With ``into``, each folder's images are decoded into a ``.npy`` file there, a
    batch at a time, and come back as a read-only map of it; else into memory.
    """
    arrays: dict[str, Decoded] = {}
    bad = list(listing.skipped)
    for folder in LAYOUTS[listing.layout]:
        paths = [p for p, _ in listing.files[folder]]
        labels = np.array([label for _, label in listing.files[folder]], dtype=np.int32)
        if into is None:
            x, failed = decode(paths, config.image_size)
        else:
            x, failed = _decode_file(paths, config.image_size, _decoded_file(into, folder))
        bad += [paths[i] for i in failed]
        kept = [p.relative_to(listing.root).as_posix() for p in np.delete(np.array(paths), failed)]
        arrays[folder] = Decoded(x, np.delete(labels, failed), kept)
    if bad:
        names = ", ".join(str(p.relative_to(listing.root)) for p in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        log.warning("skipped %d file(s) that are not readable images: %s%s", len(bad), names, more)
    for folder, decoded in arrays.items():
        missing = [n for i, n in enumerate(listing.class_names) if not np.any(decoded.y == i)]
        if missing:
            where = f"{folder}/" if folder else str(listing.root / missing[0])
            raise UserError(f"data: no readable images of class {missing[0]!r} in {where}")
    return arrays


def _decoded_file(into: Path, folder: str) -> Path:
    return into / f"decoded-{folder or 'all'}.npy"


def _decode_file(
    paths: list[Path], image_size: tuple[int, int], file: Path
) -> tuple[np.ndarray, list[int]]:
    """:func:`decode_into` the preallocated ``.npy`` ``file``; a read-only map of it."""
    allocate(file, (len(paths), *image_size, 3), np.uint8)
    failed = decode_into(paths, image_size, functools.partial(write_rows, file))
    return np.load(file, mmap_mode="r")[: len(paths) - len(failed)], failed


def _split(
    config: Data, listing: Listing, labels: dict[str, np.ndarray]
) -> dict[str, tuple[str, np.ndarray]]:
    """The train, val and test splits, by the layout: each split's folder and the indices
    of its images in that folder's decoded images (whose ``labels`` are given)."""
    if listing.layout == "train+validation+test":
        folders = zip(SPLITS, labels.items(), strict=True)
        return {split: (folder, np.arange(len(y))) for split, (folder, y) in folders}
    if listing.layout == "train+validation":
        val, test = split_validation(labels["validation"], config.test_fraction, config.split_seed)
        train = np.arange(len(labels["train"]))
        return {"train": ("train", train), "val": ("validation", val), "test": ("validation", test)}
    y = labels[""]
    parts = split_classes(y, config.validation_fraction, config.test_fraction, config.split_seed)
    counts = np.bincount(y, minlength=len(listing.class_names))
    for name, part in zip(SPLITS, parts, strict=True):
        missing = [i for i in range(len(listing.class_names)) if not np.any(y[part] == i)]
        if missing:
            raise UserError(
                f"data: class {listing.class_names[missing[0]]!r} has no image in the {name} "
                f"split ({counts[missing[0]]} readable image(s); at least 3 are needed to "
                "split it into train, validation and test)"
            )
    return {name: ("", part) for name, part in zip(SPLITS, parts, strict=True)}
