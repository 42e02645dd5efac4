"""Your own images: the three data folder layouts, messy folders, and what goes wrong."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from ablation.data.folders import find_layout, list_images, split_classes
from ablation.data.images import load_images
from ablation.errors import UserError
from ablation.study.plan import data_line
from ablation.sweep.config import load_sweep
from ablation.sweep.sections import Data
from conftest import REPO, SHARED, run_module

FLOWERS = SHARED / "data" / "flowers"
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


def unsplit(dest: Path, per_class: int | None = None) -> Path:
    """The flowers' classes in one folder of class folders (all three splits pooled)."""
    for split in ("train", "validation", "test"):
        for class_dir in sorted((FLOWERS / split).iterdir()):
            target = dest / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy(path, target / path.name)
    return dest


def test_the_layout_is_found_by_looking_at_the_folder(small_data: Path, tmp_path: Path) -> None:
    assert find_layout(small_data, "x") == (small_data, "train+validation")
    assert find_layout(FLOWERS, "x") == (FLOWERS, "train+validation+test")
    pooled = unsplit(tmp_path / "pooled", per_class=1)
    assert find_layout(pooled, "x") == (pooled, "classes")
    assert find_layout(tmp_path, "x") == (pooled, "classes")  # an archive's single top folder
    wrapped = tmp_path / "wrapped"
    shutil.copytree(FLOWERS / "train", wrapped / "flowers" / "train")
    shutil.copytree(FLOWERS / "validation", wrapped / "flowers" / "validation")
    assert find_layout(wrapped, "x") == (wrapped / "flowers", "train+validation")


def test_the_plan_says_the_layout() -> None:
    sweep = load_sweep(REPO / "sweeps" / "blog.yaml", [f"data.source={FLOWERS}"])
    assert data_line(sweep) == f"data: {FLOWERS}: train/ + validation/ + test/ (test set = test/)"


def test_class_folders_split_disjoint_stratified_and_the_same_for_a_seed() -> None:
    labels = np.repeat(np.arange(5), [70, 70, 70, 70, 40])
    train, val, test = split_classes(labels, 0.2, 0.25, seed=3)
    again = split_classes(labels, 0.2, 0.25, seed=3)
    assert all(a.tolist() == b.tolist() for a, b in zip((train, val, test), again, strict=True))
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert sorted([*train, *val, *test]) == list(range(len(labels)))
    assert np.bincount(labels[val]).tolist() == [14, 14, 14, 14, 8]
    assert np.bincount(labels[test]).tolist() == [18, 18, 18, 18, 10]  # round(17.5) is 18
    other = split_classes(labels, 0.2, 0.25, seed=4)
    assert other[2].tolist() != test.tolist()
    tiny = split_classes(np.array([0, 0, 0, 1, 1, 1]), 0.1, 0.1, seed=0)
    assert [
        np.bincount(part, minlength=2).tolist()
        for part in (np.array([0, 0, 0, 1, 1, 1])[p] for p in tiny)
    ] == [[1, 1]] * 3


def test_unsplit_flowers_load_as_three_disjoint_stratified_splits(tmp_path: Path) -> None:
    root = unsplit(tmp_path / "flowers", per_class=10)  # 10 of each split: 30 per class
    config = Data(source=str(root), image_size=(32, 32), validation_fraction=0.2, test_fraction=0.3)
    images = load_images(config)
    assert images.layout == "classes" and images.class_names == CLASSES
    assert [np.bincount(y).tolist() for y in (images.y_train, images.y_val, images.y_test)] == [
        [15] * 5,
        [6] * 5,
        [9] * 5,
    ]
    pixels = [{x.tobytes() for x in xs} for xs in (images.x_train, images.x_val, images.x_test)]
    assert sum(map(len, pixels)) == 150 and len(set.union(*pixels)) == 150  # disjoint
    other_seed = load_images(config.model_copy(update={"split_seed": 1}))
    assert other_seed.x_test.tobytes() != images.x_test.tobytes()
    assert load_images(config.model_copy()).x_test.tobytes() == images.x_test.tobytes()


def test_the_test_folder_is_the_test_set_and_validation_is_not_split() -> None:
    images = load_images(Data(source=str(FLOWERS), image_size=(32, 32), limit_per_class=4))
    assert images.layout == "train+validation+test" and images.class_names == CLASSES
    assert [len(y) for y in (images.y_train, images.y_val, images.y_test)] == [20, 20, 20]
    listing = list_images(FLOWERS, 4)
    assert [label for _, label in listing.files["test"]] == images.y_test.tolist()


def _write(path: Path, mode: str, fmt: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = {"L": 128, "RGBA": (200, 30, 30, 128), "RGB": (30, 200, 30), "P": 3}[mode]
    Image.new(mode, (40, 30), colour).save(path, format=fmt)


def messy_folder(root: Path) -> Path:
    """Two classes (a space, non-ASCII letters) of PNG (greyscale, RGBA), BMP, GIF and JPEG,
    plus an empty file, a text file named .jpg and a README."""
    kinds = [("L", "PNG", "png"), ("RGBA", "PNG", "png"), ("RGB", "BMP", "bmp")]
    kinds += [("P", "GIF", "gif"), ("RGB", "JPEG", "jpg")]
    for name in ("red roses", "ромашка"):
        for index, (mode, fmt, ext) in enumerate(kinds):
            _write(root / name / f"{mode.lower()}{index}.{ext}", mode, fmt)
    (root / "red roses" / "empty.jpg").write_bytes(b"")
    (root / "red roses" / "notes.jpg").write_text("this is text")
    (root / "ромашка" / "README.md").write_text("# about these photos")
    return root


def test_a_messy_folder_loads_with_the_bad_files_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = messy_folder(tmp_path / "messy")
    with caplog.at_level(logging.WARNING, logger="ablation.data"):
        images = load_images(Data(source=str(root), image_size=(24, 24)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 file(s)" in warnings[0]
    for bad in ("empty.jpg", "notes.jpg", "README.md"):
        assert bad in warnings[0]
    assert images.class_names == ["red roses", "ромашка"]
    assert sum(len(y) for y in (images.y_train, images.y_val, images.y_test)) == 10
    assert images.x_train.shape[1:] == (24, 24, 3) and images.x_train.dtype == np.uint8


@pytest.mark.slow
def test_a_messy_folder_runs_a_study(tmp_path: Path) -> None:
    root = messy_folder(tmp_path / "messy")
    sweep = tmp_path / "messy.yaml"
    sweep.write_text(
        "study: {name: messy, sampler: grid, seeds: [0], isolation: none}\n"
        f"data: {{source: '{root}', image_size: [32, 32], batch_size: 4}}\n"
        "train: {epochs: 1}\nspace: {backbone: {choice: [cnn]}}\n"
        "tracking: {experiment: messy}\n"
    )
    result = run_module("ablation.run", str(sweep), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "class folders only" in result.stdout.splitlines()[1]
    assert "skipped 3 file(s)" in result.stderr
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [run] = client.search_runs(
        [client.get_experiment_by_name("messy").experiment_id], "tags.`ablation.role` = 'trial'"
    )
    params = run.data.params
    assert [params[f"n_{split}"] for split in ("train", "val", "test")] == ["6", "2", "2"]
    assert params["classes"] == '["red roses", "ромашка"]'


def test_each_new_input_mistake_is_one_clear_line(tmp_path: Path) -> None:
    def message(root: Path, **data: object) -> str:
        with pytest.raises(UserError) as info:
            load_images(Data(source=str(root), image_size=(16, 16), **data))
        text = str(info.value)
        assert "\n" not in text
        return text

    lonely = unsplit(tmp_path / "lonely", per_class=5)
    shutil.rmtree(lonely / "rose")
    for path in list((lonely / "tulip").iterdir())[2:]:
        path.unlink()
    assert "class 'tulip' has no image in the" in message(lonely)
    assert "2 readable image(s); at least 3 are needed" in message(lonely)

    unreadable = unsplit(tmp_path / "unreadable", per_class=3)
    for path in (unreadable / "daisy").iterdir():
        path.write_bytes(b"garbage")
    assert "no readable images of class 'daisy' in" in message(unreadable)

    half = tmp_path / "half"
    shutil.copytree(FLOWERS / "train", half / "train")
    shutil.copytree(FLOWERS / "test", half / "test")
    assert "has train/ and test/ but no validation/ (expected" in message(half)

    missing = tmp_path / "missing"
    for split in ("train", "validation", "test"):
        shutil.copytree(FLOWERS / split, missing / split)
    shutil.rmtree(missing / "test" / "rose")
    assert "test has classes ['daisy', 'dandelion', 'sunflower', 'tulip'], but train/ has" in (
        message(missing)
    )

    with pytest.raises(ValueError, match="must be below 1"):
        Data(source=".", validation_fraction=0.5, test_fraction=0.5)


@pytest.mark.slow
def test_a_data_mistake_exits_2_with_one_line(tmp_path: Path) -> None:
    half = tmp_path / "half"
    shutil.copytree(FLOWERS / "train", half / "train")
    for args in (["--dry-run"], []):
        result = run_module(
            "ablation.run",
            str(REPO / "sweeps" / "blog.yaml"),
            "--set",
            f"data.source={half}",
            *args,
            cwd=tmp_path,
            timeout=300,
        )
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "has train/ but no validation/" in errors[0]
        assert "Traceback" not in result.stderr
