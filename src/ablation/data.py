"""The image data: fetch or find it, decode it once, split it, serve it as tf.data.

``data.source`` is either a URL of a zip archive (the blog's
``cats_and_dogs_filtered.zip``), downloaded once into Keras's cache with
``keras.utils.get_file``, or a local directory. Either way the data is a folder
with ``train/`` and ``validation/``, each holding one sub-folder per class.

Images are decoded and resized once per process into uint8 arrays; each trial
then gets its own shuffled view of the same arrays. The blog's validation
folder is split once, per class and from ``data.split_seed``, into a
validation set (used for selection) and a test set (never used for selection).

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
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablation.config import Data
from ablation.errors import UserError, first_line
from ablation.redaction import redact

log = logging.getLogger(__name__)

BLOG_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
FOLDERS = ("train", "validation")  # a data folder's split folders
SPLITS = ("train", "val", "test")  # the splits a trial sees
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclass(frozen=True)
class Listing:
    """The files of a data folder, after ``limit_per_class``: what a study trains on."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)]
    skipped: list[Path] = field(default_factory=list)

    def fingerprint(self) -> str:
        """A short hash of the listing (relative names and sizes): the dataset's identity."""
        digest = hashlib.sha256()
        for folder in FOLDERS:
            for path, label in self.files[folder]:
                relative = path.relative_to(self.root).as_posix()
                digest.update(f"{relative}\0{label}\0{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


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

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The images and labels of one of :data:`SPLITS`."""
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


def resolve_source(source: str, cache_dir: str | None = None) -> Path:
    """The local folder behind ``data.source``, downloading and extracting a URL once.

    Raises:
        UserError: The directory does not exist, or the URL cannot be fetched.
    """
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https", "ftp", "file"):
        return _download(source, cache_dir)
    root = Path(source).expanduser()
    if not root.is_dir():
        raise UserError(
            f"data.source: {source!r} is not a directory (give a folder with "
            f"{'/ and '.join(FOLDERS)}/ or an http(s):// or file:// URL of a zip archive)"
        )
    return _find_root(root, source)


def _download(url: str, cache_dir: str | None) -> Path:
    import keras

    if cache_dir is not None:  # get_file falls back to /tmp/.keras when the folder is missing
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlparse(url).path).name or "dataset.zip"
    stem = name.split(".")[0]
    try:
        extracted = keras.utils.get_file(fname=stem, origin=url, extract=True, cache_dir=cache_dir)
    except Exception as exc:  # get_file wraps network failures in a bare Exception
        reason = getattr(exc, "reason", None) or first_line(exc)
        raise UserError(f"data.source: cannot download {url} ({reason})") from None
    return _find_root(Path(extracted), url)


def _find_root(folder: Path, source: str) -> Path:
    """``folder`` or the folder below it (as in an extracted archive) with the splits."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    for candidate in candidates:
        if all((candidate / folder).is_dir() for folder in FOLDERS):
            return candidate
    raise UserError(
        f"data.source: {source!r} has no {' and '.join(f + '/' for f in FOLDERS)} folders "
        f"(expected {'/ and '.join(FOLDERS)}/, each with one sub-folder per class)"
    )


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_images(root: Path, limit_per_class: int | None = None) -> Listing:
    """List the class folders and image files of each split.

    Files are taken in natural order (``cat.2`` before ``cat.10``), so
    ``limit_per_class`` keeps the first N of each class in each split.

    Raises:
        UserError: Fewer than two classes, classes that differ between splits,
            or a class folder with no images.
    """
    class_names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(class_names) < 2:
        raise UserError(
            f"data: {root / 'train'} has {len(class_names)} class folder(s); "
            "a classifier needs at least two (one sub-folder per class)"
        )
    files: dict[str, list[tuple[Path, int]]] = {}
    skipped: list[Path] = []
    for split in FOLDERS:
        found = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        if found != class_names:
            raise UserError(
                f"data: {root / split} has classes {found}, but train/ has {class_names}"
            )
        files[split] = []
        for label, name in enumerate(class_names):
            entries = sorted(
                (p for p in (root / split / name).iterdir() if p.is_file()), key=_natural_key
            )
            images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
            skipped += [p for p in entries if p.suffix.lower() not in IMAGE_EXTENSIONS]
            if not images:
                raise UserError(
                    f"data: {root / split / name} has no images "
                    f"(allowed: {', '.join(IMAGE_EXTENSIONS)})"
                )
            files[split] += [(p, label) for p in images[:limit_per_class]]
    return Listing(root=root, class_names=class_names, files=files, skipped=skipped)


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


def split_validation(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of the validation folder, per class, into validation and test.

    Deterministic in ``seed``; the two parts never overlap and, where a class has at
    least two images, each part gets at least one of it.
    """
    rng = np.random.default_rng(seed)
    val, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test.append(members[:n_test])
        val.append(members[n_test:])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


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
            **{name: saved[name] for name in _ARRAYS},
        )


def cache_file(config: Data, listing: Listing) -> Path | None:
    """Where the decoded images of this data, size and split are kept between runs."""
    if config.cache_dir is None:
        return None
    identity = (listing.fingerprint(), config.image_size, config.test_fraction, config.split_seed)
    key = hashlib.sha256(repr(identity).encode()).hexdigest()[:16]
    height, width = config.image_size
    return Path(config.cache_dir) / f"images-{height}x{width}-{key}.npz"


def load_images(config: Data) -> Images:
    """Fetch, list, decode and split the data of a sweep.

    Decoding happens once: the result is kept in this process and, when
    ``data.cache_dir`` is set, in a file keyed by the data listing, image size
    and split. Files that are not images, or that fail to decode, are skipped
    with one warning.
    """
    root = resolve_source(config.source)
    listing = list_images(root, config.limit_per_class)
    cached = cache_file(config, listing)
    key = str(cached) if cached else repr((str(root), listing.fingerprint(), config))
    if key in _CACHE:
        return _CACHE[key]
    if cached is not None and cached.is_file():
        _CACHE[key] = read_images(cached)
        return _CACHE[key]

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    bad = list(listing.skipped)
    for split in FOLDERS:
        paths = [p for p, _ in listing.files[split]]
        labels = np.array([label for _, label in listing.files[split]], dtype=np.int32)
        x, failed = decode(paths, config.image_size)
        bad += [paths[i] for i in failed]
        arrays[split] = x, np.delete(labels, failed)
    if bad:
        names = ", ".join(str(p.relative_to(root)) for p in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        log.warning("skipped %d file(s) that are not readable images: %s%s", len(bad), names, more)
    for split, (_, y) in arrays.items():
        missing = [n for i, n in enumerate(listing.class_names) if not np.any(y == i)]
        if missing:
            raise UserError(f"data: no readable images of class {missing[0]!r} in {split}/")

    x_train, y_train = arrays["train"]
    x_all_val, y_all_val = arrays["validation"]
    val_idx, test_idx = split_validation(y_all_val, config.test_fraction, config.split_seed)
    images = Images(
        class_names=listing.class_names,
        x_train=x_train,
        y_train=y_train,
        x_val=x_all_val[val_idx],
        y_val=y_all_val[val_idx],
        x_test=x_all_val[test_idx],
        y_test=y_all_val[test_idx],
        fingerprint=listing.fingerprint(),
        source=redact(config.source),  # kept in the cache file: never a password
    )
    if cached is not None:
        write_images(images, cached)
        images = dataclasses.replace(images, file=cached)
    _CACHE[key] = images
    return images


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):  # -> tf.data.Dataset
    """A training set (images or features), reshuffled every epoch in an order fixed by
    ``seed``; prefetched."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):  # -> tf.data.Dataset
    """A validation or test set (images or features): fixed order, prefetched."""
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(batch_size)
        .map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def _to_float(x, y):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    return tf.cast(x, tf.float32), y
