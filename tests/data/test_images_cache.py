"""The decoded images on disk: a folder read memory-mapped, written atomically, decoded
into a batch at a time; and a real process that reads it without a private copy."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest

from ablation.data import arrays
from ablation.data import images as data
from ablation.data.arrays import building
from ablation.data.folders import LAYOUTS, list_images, split_classes, split_validation
from ablation.data.images import Images, decode, load_images, read_images, write_images
from ablation.data.pipeline import train_dataset
from ablation.study.runner import _images_folder
from ablation.sweep.config import load_sweep
from ablation.sweep.sections import Data
from conftest import REPO, SHARED, copy_images

FLOWERS = SHARED / "data" / "flowers"


def expected_splits(root: Path, config: Data) -> dict[str, np.ndarray]:
    """The arrays as decoding each folder whole in memory and then splitting gives them."""
    listing = list_images(root, config.limit_per_class)
    folders = {}
    for folder in LAYOUTS[listing.layout]:
        paths = [p for p, _ in listing.files[folder]]
        x, failed = decode(paths, config.image_size)
        labels = np.array([label for _, label in listing.files[folder]], np.int32)
        folders[folder] = x, np.delete(labels, failed)
    if listing.layout == "train+validation+test":
        parts = {split: folders[folder] for split, folder in zip(data.SPLITS, folders, strict=True)}
    elif listing.layout == "train+validation":
        x, y = folders["validation"]
        val, test = split_validation(y, config.test_fraction, config.split_seed)
        parts = {"train": folders["train"], "val": (x[val], y[val]), "test": (x[test], y[test])}
    else:
        x, y = folders[""]
        split = split_classes(
            y, config.validation_fraction, config.test_fraction, config.split_seed
        )
        parts = {name: (x[i], y[i]) for name, i in zip(data.SPLITS, split, strict=True)}
    return {f"{a}_{name}": part[k] for name, part in parts.items() for k, a in enumerate("xy")}


def three_layouts(tmp_path: Path, small_data: Path) -> dict[str, Path]:
    """A small folder of each layout, each with an unreadable image among the others."""
    blog = copy_images(tmp_path / "blog", per_class=7)
    (blog / "train" / "cats" / "cat.2b.jpg").write_bytes(b"not a jpeg")
    (blog / "validation" / "dogs" / "dog.3b.jpg").write_bytes(b"not a jpeg")
    flowers = tmp_path / "flowers"
    for class_dir in sorted(FLOWERS.glob("*/*")):
        target = flowers / class_dir.parent.name / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:3]:
            shutil.copy(path, target / path.name)
    (flowers / "test" / "rose" / "0.jpg").write_bytes(b"not a jpeg")
    classes = tmp_path / "classes"
    shutil.copytree(small_data / "train", classes)
    (classes / "dogs" / "dog.5b.jpg").write_bytes(b"not a jpeg")
    return {"train+validation": blog, "train+validation+test": flowers, "classes": classes}


def test_decoding_into_the_cache_folder_gives_the_arrays_of_decoding_in_memory(
    tmp_path: Path, small_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for layout, root in three_layouts(tmp_path, small_data).items():
        config = Data(source=str(root), image_size=(32, 24), cache_dir=str(tmp_path / "cache"))
        expected = expected_splits(root, config)
        with monkeypatch.context() as small:
            # Several decode batches and copy chunks, and the unreadable image inside a batch.
            small.setattr(data, "DECODE_BATCH", 5)
            small.setattr(arrays, "CHUNK_BYTES", 3 * 32 * 24 * 3 + 1)
            cached = load_images(config)
            in_memory = load_images(config.model_copy(update={"cache_dir": None}))
        assert cached.layout == in_memory.layout == layout
        assert cached.folder is not None and cached.folder.parent == tmp_path / "cache"
        assert in_memory.folder is None
        for name, array in expected.items():
            for images in (cached, in_memory):
                got = getattr(images, name)
                assert got.dtype == array.dtype and got.shape == array.shape, (layout, name)
                assert got.tobytes() == array.tobytes(), (layout, name)
        assert sorted(p.name for p in cached.folder.iterdir()) == sorted(
            ["meta.json", *(f"{name}.npy" for name in data._ARRAYS)]
        )
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_the_cache_folder_is_read_memory_mapped_and_read_only(
    tmp_path: Path, small_data: Path
) -> None:
    config = Data(source=str(small_data), image_size=(40, 40), cache_dir=str(tmp_path))
    images = load_images(config)
    assert images.folder is not None and images.folder.name.startswith("images-40x40-")
    again = read_images(images.folder)
    for loaded in (images, again):
        for split in data.SPLITS:
            x, y = loaded.split(split)
            assert isinstance(x, np.memmap) and not x.flags.writeable
            assert x.dtype == np.uint8 and y.dtype == np.int32
    assert again.class_names == ["cats", "dogs"] and again.layout == "train+validation"
    assert again.fingerprint == images.fingerprint and again.folder == images.folder
    in_memory = load_images(config.model_copy(update={"cache_dir": None}))
    for name in data._ARRAYS:
        assert getattr(again, name).tobytes() == getattr(in_memory, name).tobytes()
    with pytest.raises(ValueError, match="read-only"):
        again.x_train[0, 0, 0, 0] = 1


def tiny_images(value: int, n: int = 4) -> Images:
    x = np.full((n, 2, 2, 3), value, np.uint8)
    y = np.arange(n, dtype=np.int32) % 2
    return Images(["a", "b"], x, y, x[:2], y[:2], x[2:], y[2:], fingerprint="f", source="s")


def test_a_writer_that_loses_the_race_keeps_the_winners_folder(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "images"
    with building(path, done="meta.json") as first:
        write_images(tiny_images(7), path)  # another process, faster
        assert read_images(path).x_train.max() == 7
        (first / "meta.json").write_text("{}")
    assert read_images(path).x_train.max() == 7  # the first, slower writer kept it
    write_images(tiny_images(9), path)
    assert read_images(path).x_train.max() == 7
    assert [p.name for p in path.parent.iterdir()] == ["images"]  # no temporary folder left


def test_a_folder_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "images"
    with pytest.raises(RuntimeError, match="disk full"):
        with building(path) as partial:
            np.save(partial / "x.npy", np.zeros(3))
            assert not path.exists()  # a reader meanwhile finds nothing
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.npy").write_bytes(b"half")
    with pytest.raises(OSError):  # not a complete folder: never taken for one
        write_images(tiny_images(1), path)
    assert [p.name for p in tmp_path.iterdir()] == ["images"]


def test_without_a_cache_dir_trial_processes_read_a_private_copy(small_data: Path) -> None:
    sweep = load_sweep(REPO / "sweeps" / "blog.yaml", [f"data.source={small_data}"])
    sweep.data.cache_dir = None  # in memory in the study's process
    sweep.data.image_size = (24, 24)
    images = load_images(sweep.data)
    assert images.folder is None
    private = _images_folder(sweep, images)
    assert private is not None and private.is_dir()
    copy = read_images(private)
    assert isinstance(copy.x_train, np.memmap)
    for name in data._ARRAYS:
        assert getattr(copy, name).tobytes() == getattr(images, name).tobytes()


def _load_in_a_process(config: Data) -> tuple[str, int]:
    images = load_images(config)
    return str(images.folder), int(images.x_train.sum()) + int(images.x_test.sum())


@pytest.mark.slow
def test_two_processes_decoding_the_same_cache_at_once_both_end_fine(
    tmp_path: Path, small_data: Path
) -> None:
    config = Data(source=str(small_data), image_size=(48, 48), cache_dir=str(tmp_path))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_load_in_a_process, [config, config])
    assert results[0] == results[1]
    folders = [p.name for p in tmp_path.iterdir() if p.name != "file-sha256"]  # and the memo
    assert folders == [Path(results[0][0]).name]


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """Resident (Rss), proportional (Pss), unique (Uss), private dirty and anonymous
    memory of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        fields[name] = int(value.split()[0])
    uss = fields["Private_Clean"] + fields["Private_Dirty"]
    return {
        "rss": fields["Rss"],
        "pss": fields["Pss"],
        "uss": uss,
        "dirty": fields["Private_Dirty"],
        "anon": fields["Anonymous"],
    }


def _read_and_iterate(folder: str) -> dict[str, dict[str, int]]:
    """In a fresh process: memory before reading the cache, after an epoch over it, and
    after making a private copy of it (the control: what a copy costs)."""
    import gc

    shape = np.load(Path(folder) / "x_train.npy", mmap_mode="r").shape
    # TensorFlow and the pipeline's buffers warmed up on zeros (untouched pages: no memory).
    warm = np.zeros(shape, np.uint8)
    for _ in train_dataset(warm, np.zeros(len(warm), np.int32), 32, seed=0):
        pass
    del _
    gc.collect()
    before = memory_kib()
    images = read_images(Path(folder))
    total = 0.0
    for batch, _ in train_dataset(images.x_train, images.y_train, 32, seed=0):
        total += float(batch.numpy().sum(dtype=np.float64))
    assert total == float(images.x_train.sum(dtype=np.float64))  # every image was read
    del batch, _
    gc.collect()
    after = memory_kib()
    copy = np.array(images.x_train)
    return {"before": before, "after": after, "copied": memory_kib(), "size": copy.nbytes // 1024}


@pytest.mark.slow
def test_a_process_reading_the_cache_holds_no_private_copy(tmp_path: Path) -> None:
    """The images' pages are the file's, in the page cache: clean, shared with every
    process that maps them, never the process's own (dirty, anonymous) memory. Clean
    private pages are not counted: they are the page cache's, and the libraries' ones
    turn shared and private as other processes on the machine come and go."""
    rng = np.random.default_rng(0)
    # 92 MB in many small images: the pipeline's own buffers (a few float32 batches, as
    # many as tf.data's autotuning keeps on this machine) stay far below a copy's size.
    x = rng.integers(0, 256, (30000, 32, 32, 3), dtype=np.uint8)
    y = np.arange(len(x), dtype=np.int32) % 2
    write_images(Images(["a", "b"], x, y, x[:8], y[:8], x[:8], y[:8], "f", "s"), tmp_path / "c")
    del x
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        memory = pool.apply(_read_and_iterate, (str(tmp_path / "c"),))
    size = memory["size"]
    grew = {key: memory["after"][key] - memory["before"][key] for key in memory["before"]}
    assert grew["rss"] > 0.9 * size, memory  # the images were all mapped in
    assert grew["dirty"] < size / 2 and grew["anon"] < size / 2, memory  # a copy: > 0.9 size
    copied = {key: memory["copied"][key] - memory["after"][key] for key in memory["before"]}
    assert copied["dirty"] > 0.9 * size and copied["anon"] > 0.9 * size, memory  # the control
