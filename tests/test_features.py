"""The frozen-backbone feature cache: exact, keyed by what the features depend on, skipped
where augmentation precedes the backbone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ablation import features
from ablation.config import Sweep, Train
from ablation.data import load_images
from ablation.factors import Configuration
from ablation.features import feature_key, load_features, plan_features
from ablation.models import build_model
from ablation.training import train
from conftest import SMALL_WEIGHTS, frozen_sweep

FROZEN = Configuration(backbone="mobilenet_v2", preprocess="mobilenet_v2")


def small_sweep(data: Path, cache_dir: Path, *extra: str) -> Sweep:
    return frozen_sweep(data, cache_dir, "data.image_size=[96, 96]", "train.epochs=3", *extra)


@pytest.fixture(autouse=True)
def _fresh_memory_cache() -> None:
    features._CACHE.clear()


def test_which_splits_are_cacheable() -> None:
    def splits(configuration: Configuration, **train: object) -> tuple[str, ...]:
        return plan_features(configuration, Train(**train)).splits  # type: ignore[arg-type]

    assert splits(FROZEN) == ("train", "val", "test")
    augmented = FROZEN.model_copy(update={"augment": True})
    assert splits(augmented) == ("val", "test")
    assert plan_features(augmented, Train()).validates_through_head
    fine_tuned = FROZEN.model_copy(update={"fine_tune_layers": 10})
    assert splits(fine_tuned) == ("train", "val")  # the backbone changes before the test
    assert splits(Configuration(backbone="cnn")) == ()
    assert splits(FROZEN, cache_features=False) == ()


def test_the_extractor_computes_the_full_models_backbone_features(small_data: Path) -> None:
    import keras

    parts = build_model(
        FROZEN.model_copy(update={"augment": True}),
        image_size=(96, 96),
        num_classes=2,
        weights=small_sweep(small_data, Path("unused")).model,
    )
    model = parts.model
    assert parts.extractor is not None and parts.head is not None
    # The full model's own path to its pooling layer (the layer's first call), at inference.
    inside = keras.Model(model.input, model.get_layer("global_max_pooling2d").input)
    images = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3)).astype("float32")
    expected = inside.predict(images, verbose=0)
    np.testing.assert_allclose(parts.extractor.predict(images, verbose=0), expected, atol=1e-5)
    np.testing.assert_allclose(
        parts.head.predict(expected, verbose=0), model.predict(images, verbose=0), atol=1e-5
    )
    assert [w.name for w in parts.head.weights] == [
        w.name for w in model.get_layer("logits").weights
    ]


def test_no_cut_without_a_pretrained_backbone() -> None:
    network = build_model(Configuration(), image_size=(96, 96), num_classes=2)
    assert network.backbone is None and network.extractor is None and network.head is None


@pytest.mark.slow  # trains the model twice: cached features and not
@pytest.mark.parametrize("augment", [False, True])
def test_a_cached_trial_is_the_full_models_trial(
    small_data: Path, tmp_path: Path, augment: bool
) -> None:
    choices = FROZEN.model_copy(update={"augment": augment})
    full_sweep = small_sweep(small_data, tmp_path / "a", "train.cache_features=false")
    cached_sweep = small_sweep(small_data, tmp_path / "b")
    full = train(choices, seed=0, sweep=full_sweep, images=load_images(full_sweep.data))
    cached = train(choices, seed=0, sweep=cached_sweep, images=load_images(cached_sweep.data))

    assert full.cached_splits == ()
    assert cached.cached_splits == (("val", "test") if augment else ("train", "val", "test"))
    assert abs(cached.test_accuracy - full.test_accuracy) <= 0.01
    np.testing.assert_allclose(
        cached.history["val_accuracy"], full.history["val_accuracy"], atol=0.01
    )
    np.testing.assert_allclose(cached.history["loss"], full.history["loss"], rtol=1e-3)
    # The recorded model is the whole model: raw images in, the cached trial's predictions out.
    images = load_images(cached_sweep.data)
    assert cached.model.input_shape == (None, 96, 96, 3)
    np.testing.assert_allclose(
        cached.model.predict(images.x_test.astype("float32"), verbose=0),
        full.model.predict(images.x_test.astype("float32"), verbose=0),
        atol=1e-3,
    )
    written = sorted(p.name for p in (tmp_path / "b").glob("features-*/*.npy"))
    assert written == (["test.npy", "val.npy"] if augment else ["test.npy", "train.npy", "val.npy"])


def test_features_are_read_back_from_the_cache_dir(small_data: Path, tmp_path: Path) -> None:
    sweep = small_sweep(small_data, tmp_path)
    images = load_images(sweep.data)
    parts = build_model(FROZEN, image_size=(96, 96), num_classes=2, weights=sweep.model)
    assert parts.extractor is not None
    key = feature_key(sweep, images, FROZEN)
    computed = load_features(
        parts.extractor, images, ("val",), key=key, cache_dir=str(tmp_path), batch_size=8
    )
    features._CACHE.clear()
    (file,) = tmp_path.glob(f"features-{key}/val.npy")
    np.save(file, computed["val"] + 1.0)  # what is on disk is what is used
    again = load_features(
        parts.extractor, images, ("val",), key=key, cache_dir=str(tmp_path), batch_size=8
    )
    np.testing.assert_array_equal(again["val"], computed["val"] + 1.0)


def test_the_key_changes_with_data_weights_size_and_preprocessing(
    small_data: Path, tmp_path: Path
) -> None:
    sweep = small_sweep(small_data, tmp_path)
    images = load_images(sweep.data)
    key = feature_key(sweep, images, FROZEN)

    # Unrelated to the features: augmentation (train split only), seed-free factors.
    assert feature_key(sweep, images, FROZEN.model_copy(update={"rotation": 0.1})) == key
    assert feature_key(sweep, images, FROZEN.model_copy(update={"augment": True})) == key

    changed = {}
    more = tmp_path / "more"
    shutil.copytree(small_data, more)
    extra = next((more / "train" / "cats").iterdir())
    shutil.copy(extra, extra.with_name("cat.9999.jpg"))
    other_data = small_sweep(more, tmp_path)
    changed["data"] = feature_key(other_data, load_images(other_data.data), FROZEN)
    resized = small_sweep(small_data, tmp_path, "data.image_size=[128, 128]")
    changed["size"] = feature_key(resized, load_images(resized.data), FROZEN)
    resplit = small_sweep(small_data, tmp_path, "data.split_seed=1")
    changed["split"] = feature_key(resplit, load_images(resplit.data), FROZEN)
    weights = tmp_path / "weights.h5"
    shutil.copy(SMALL_WEIGHTS, weights)
    reweighted = small_sweep(small_data, tmp_path, f"model.weights={weights}")
    changed["weights path"] = feature_key(reweighted, images, FROZEN)
    with weights.open("ab") as file:
        file.write(b"\0")  # the same file, other bytes
    changed["weights bytes"] = feature_key(reweighted, images, FROZEN)
    imagenet = small_sweep(small_data, tmp_path, "model.weights=imagenet", "model.alpha=1.0")
    changed["imagenet"] = feature_key(imagenet, images, FROZEN)
    changed["preprocess"] = feature_key(
        sweep, images, FROZEN.model_copy(update={"preprocess": "none"})
    )
    assert key not in changed.values()
    assert len(set(changed.values())) == len(changed)
