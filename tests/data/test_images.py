from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ablation.data.folders import list_images, split_validation
from ablation.data.images import load_images
from ablation.data.sources import resolve_source
from ablation.errors import UserError
from ablation.sweep.sections import Data
from conftest import copy_images


def test_listing_takes_the_first_n_per_class_in_natural_order(small_data: Path) -> None:
    listing = list_images(small_data, limit_per_class=3)
    assert listing.class_names == ["cats", "dogs"]
    train = [(p.name, label) for p, label in listing.files["train"]]
    assert train == [
        ("cat.1.jpg", 0),
        ("cat.2.jpg", 0),
        ("cat.3.jpg", 0),
        ("dog.1.jpg", 1),
        ("dog.2.jpg", 1),
        ("dog.3.jpg", 1),
    ]
    assert len(listing.files["validation"]) == 6
    assert listing.fingerprint() != list_images(small_data, limit_per_class=4).fingerprint()
    assert listing.fingerprint() == list_images(small_data, limit_per_class=3).fingerprint()


def test_images_are_decoded_once_as_the_blog_does(small_data: Path) -> None:
    import keras

    images = load_images(Data(source=str(small_data), image_size=(64, 48)))
    assert images.x_train.shape == (24, 64, 48, 3) and images.x_train.dtype == np.uint8
    assert images.y_train.tolist() == [0] * 12 + [1] * 12
    assert len(images.y_val) + len(images.y_test) == 24
    assert load_images(Data(source=str(small_data), image_size=(64, 48))) is images

    blog = keras.utils.image_dataset_from_directory(
        small_data / "train", image_size=(64, 48), shuffle=False, batch_size=None
    )
    by_name = {
        Path(p).name: x for p, (x, _) in zip(blog.file_paths, blog.as_numpy_iterator(), strict=True)
    }
    listing = list_images(small_data)
    for index, (path, _) in enumerate(listing.files["train"]):
        difference = np.abs(images.x_train[index].astype(np.float32) - by_name[path.name])
        assert difference.max() <= 0.5 + 1e-3  # the same pixels, rounded to uint8


def test_validation_split_is_deterministic_stratified_and_disjoint() -> None:
    labels = np.array([0] * 50 + [1] * 30)
    val, test = split_validation(labels, 0.2, seed=0)
    again_val, again_test = split_validation(labels, 0.2, seed=0)
    assert val.tolist() == again_val.tolist() and test.tolist() == again_test.tolist()
    assert not set(val) & set(test)
    assert sorted([*val, *test]) == list(range(80))
    assert np.bincount(labels[test]).tolist() == [10, 6]
    other_val, _ = split_validation(labels, 0.2, seed=1)
    assert other_val.tolist() != val.tolist()


def test_tiny_class_still_gets_both_parts() -> None:
    val, test = split_validation(np.array([0, 0, 1, 1]), 0.2, seed=0)
    assert len(val) == 2 and len(test) == 2


def test_corrupt_and_non_image_files_are_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_images(tmp_path / "d", per_class=4)
    (root / "train" / "cats" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "train" / "dogs" / "notes.txt").write_text("hello")
    with caplog.at_level(logging.WARNING, logger="ablation.data"):
        images = load_images(Data(source=str(root), image_size=(32, 32)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 2 file(s)" in warnings[0]
    assert "broken.jpg" in warnings[0] and "notes.txt" in warnings[0]
    assert images.y_train.tolist() == [0] * 4 + [1] * 4


def test_data_errors_say_what_is_wrong(tmp_path: Path) -> None:
    def message(source: Path | str) -> str:
        with pytest.raises(UserError) as info:
            load_images(Data(source=str(source)))
        return str(info.value)

    assert "is not a directory" in message(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    assert "flat has 0 class folder(s); a classifier needs at least two" in message(
        tmp_path / "flat"
    )

    one = copy_images(tmp_path / "one", per_class=2)
    shutil.rmtree(one / "train" / "dogs")
    shutil.rmtree(one / "validation" / "dogs")
    assert "has 1 class folder(s); a classifier needs at least two" in message(one)

    empty = copy_images(tmp_path / "empty", per_class=2)
    for path in (empty / "validation" / "dogs").iterdir():
        path.unlink()
    assert "validation/dogs has no images" in message(empty)

    mismatch = copy_images(tmp_path / "mismatch", per_class=2)
    (mismatch / "validation" / "dogs").rename(mismatch / "validation" / "wolves")
    assert "has classes ['cats', 'wolves'], but train/ has ['cats', 'dogs']" in message(mismatch)

    unreadable = copy_images(tmp_path / "unreadable", per_class=2)
    for path in (unreadable / "train" / "dogs").iterdir():
        path.write_bytes(b"garbage")
    assert "no readable images of class 'dogs' in train/" in message(unreadable)


def test_url_source_is_downloaded_once(small_data: Path, tmp_path: Path, keras_home: Path) -> None:
    archive = tmp_path / "cats_and_dogs_filtered.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(small_data.rglob("*.jpg")):
            zipped.write(path, Path("cats_and_dogs_filtered") / path.relative_to(small_data))
    source = resolve_source(Data(source=archive.as_uri()))
    assert source.layout == "train+validation"
    assert source.root.name == "cats_and_dogs_filtered"
    assert (source.root / "train" / "cats" / "cat.1.jpg").is_file()
    assert source.root.is_relative_to(keras_home / "datasets")  # Keras's own cache
    assert source.archive_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    archive.unlink()  # a second resolve uses the cache, not the (now gone) origin
    assert resolve_source(Data(source=archive.as_uri())) == source


def test_unreachable_url_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:9/data\.zip"):
        resolve_source(Data(source="http://127.0.0.1:9/data.zip"))
    with pytest.raises(UserError, match="cannot download file://"):
        resolve_source(Data(source=(tmp_path / "absent.zip").as_uri()))
    (tmp_path / "notes.zip").write_text("not an archive")
    with pytest.raises(UserError, match=r"notes\.zip is not a zip archive \(14 bytes"):
        resolve_source(Data(source=(tmp_path / "notes.zip").as_uri()))
