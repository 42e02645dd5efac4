"""The frozen-backbone feature cache: exact, keyed by what the features depend on; where
augmentation precedes the backbone, the training set's features are computed per epoch, with
the whole model's batches and random draws."""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ablation.data.images import load_images
from ablation.data.pipeline import train_dataset
from ablation.model import features
from ablation.model.builders import build_model
from ablation.model.features import (
    augmented_features,
    epoch_orders,
    epoch_training,
    feature_key,
    feature_steps,
    load_features,
    plan_features,
)
from ablation.model.training import train
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration
from ablation.sweep.sections import Train
from conftest import REPO, SMALL_WEIGHTS, copy_images, frozen_sweep, wait_until

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
    assert plan_features(augmented, Train()).train_per_epoch
    assert not plan_features(FROZEN, Train()).train_per_epoch
    assert not plan_features(augmented, Train(cache_features=False)).train_per_epoch
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
    expected = np.asarray(inside(images, training=False))  # eager: no graph traced to predict
    extracted = np.asarray(parts.extractor(images, training=False))
    np.testing.assert_allclose(extracted, expected, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(parts.head(expected, training=False)),
        np.asarray(model(images, training=False)),
        atol=1e-5,
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
        np.asarray(cached.model(images.x_test.astype("float32"), training=False)),  # eager
        np.asarray(full.model(images.x_test.astype("float32"), training=False)),
        atol=1e-3,
    )
    written = sorted(p.name for p in (tmp_path / "b").glob("features-*/*.npy"))
    assert written == (["test.npy", "val.npy"] if augment else ["test.npy", "train.npy", "val.npy"])


def test_features_are_read_back_from_the_cache_dir(small_data: Path, tmp_path: Path) -> None:
    sweep = small_sweep(small_data, tmp_path)
    images = load_images(sweep.data)
    parts = build_model(FROZEN, image_size=(96, 96), num_classes=2, weights=sweep.model)
    assert parts.extractor is not None
    key = feature_key(sweep, images, FROZEN, 0)
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


# One trial's process getting its features: build the model, wait for the go (a line on
# stdin), load them; its log says whether it computed them or read them. Interrupted
# (SIGINT), it says whether it still holds the lock, then tries again.
GET_FEATURES = """
import fcntl, json, logging, sys
from pathlib import Path
from ablation.data.images import load_images
from ablation.model.builders import build_model
from ablation.model.features import feature_key, load_features
from ablation.sweep.config import load_sweep
from ablation.sweep.factors import Configuration

sweep = load_sweep(sys.argv[1], json.loads(sys.argv[2]))
configuration = Configuration(backbone="mobilenet_v2", preprocess="mobilenet_v2")
images = load_images(sweep.data)
network = build_model(configuration, image_size=(96, 96), num_classes=2, weights=sweep.model)
key = feature_key(sweep, images, configuration, 0)
logging.basicConfig(format="%(message)s")
logging.getLogger("ablation.model.features").setLevel(logging.INFO)
print("ready", flush=True)
sys.stdin.readline()
while True:
    try:
        load_features(network.extractor, images, ("train", "val", "test"), key=key,
                      cache_dir=sweep.data.cache_dir, batch_size=8)
        break
    except KeyboardInterrupt:
        lock = Path(sweep.data.cache_dir) / f"features-{key}" / "train.npy.lock"
        with open(lock, "a") as handle:  # another open file: refused while this one holds it
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
        print("interrupted, lock released", flush=True)
"""
SPLITS = ("train", "val", "test")


def features_overrides(data: Path, cache_dir: Path) -> list[str]:
    """:func:`small_sweep`'s sweep, spelled out for another process."""
    return [
        f"data.source={data}",
        f"data.cache_dir={cache_dir}",
        f"model.weights={SMALL_WEIGHTS}",
        "model.alpha=0.35",
        "train.patience=null",
        "data.image_size=[96, 96]",
    ]


def start_getting_features(data: Path, cache_dir: Path) -> subprocess.Popen[str]:
    """A process that gets the features of :func:`features_overrides`' sweep, once told to
    (it has imported TensorFlow and built its model when it says ``ready``)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            GET_FEATURES,
            str(REPO / "sweeps" / "blog.yaml"),
            json.dumps(features_overrides(data, cache_dir)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def go(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def held(lock: Path) -> bool:
    """Whether another open file (another process) holds the flock on ``lock``."""
    if not lock.exists():
        return False
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@pytest.mark.slow  # two processes import TensorFlow and build MobileNetV2
def test_two_processes_that_need_the_same_features_compute_them_once(
    small_data: Path, tmp_path: Path
) -> None:
    load_images(small_sweep(small_data, tmp_path).data)  # the images decoded, for both
    processes = [start_getting_features(small_data, tmp_path) for _ in range(2)]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
        for process in processes:  # both at once, neither finding the features yet
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        logs = []
        for process in processes:
            _, err = process.communicate(timeout=300)
            assert process.returncode == 0, err
            logs.append(err)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    (folder,) = tmp_path.glob("features-*")
    for split in SPLITS:
        computed = [i for i, log in enumerate(logs) if f"features {split}: computed" in log]
        assert len(computed) == 1, logs  # one process computed them, the other read them
        assert f"features {split}: read from {folder / f'{split}.npy'}" in logs[1 - computed[0]]
        assert (folder / f"{split}.npy").is_file()
    (computer,) = [log for log in logs if "features train: computed" in log]
    (waiter,) = [log for log in logs if log is not computer]
    # The second found no features, waited for the lock, then found them: it waited.
    assert "features train: read from" in waiter and "by another process meanwhile" in waiter


@pytest.mark.slow  # a process imports TensorFlow and builds MobileNetV2
def test_a_process_interrupted_or_killed_computing_features_leaves_the_lock_free(
    small_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sweep = small_sweep(small_data, tmp_path)
    images = load_images(sweep.data)
    key = feature_key(sweep, images, FROZEN, 0)
    folder = tmp_path / f"features-{key}"
    lock = folder / "train.npy.lock"
    process = start_getting_features(small_data, tmp_path)
    try:
        go(process)
        wait_until(
            lambda: held(lock), timeout=120.0, every=0.01
        )  # computing the training set's features
        process.send_signal(signal.SIGINT)  # Ctrl-C: the lock is given back at once
        assert process.stdout is not None
        assert process.stdout.readline() == "interrupted, lock released\n"
        wait_until(lambda: held(lock), timeout=120.0, every=0.01)  # computing them again
        process.kill()  # as the out-of-memory killer would: no clean-up in the process
        process.wait()
    finally:
        process.kill()
        process.wait()
    assert not held(lock) and not (folder / "train.npy").exists()  # nothing half written
    network = build_model(FROZEN, image_size=(96, 96), num_classes=2, weights=sweep.model)
    assert network.extractor is not None
    with caplog.at_level(logging.INFO, logger="ablation.model.features"):
        computed = load_features(
            network.extractor, images, ("train",), key=key, cache_dir=str(tmp_path), batch_size=8
        )
    assert "features train: computed" in caplog.text  # not waiting on the dead process
    np.testing.assert_array_equal(np.load(folder / "train.npy"), computed["train"])


def test_the_key_changes_with_data_weights_size_and_preprocessing(
    small_data: Path, tmp_path: Path
) -> None:
    sweep = small_sweep(small_data, tmp_path)
    images = load_images(sweep.data)
    key = feature_key(sweep, images, FROZEN, 0)

    # Unrelated to the features: augmentation (train split only), seed-free factors.
    assert feature_key(sweep, images, FROZEN.model_copy(update={"rotation": 0.1}), 0) == key
    assert feature_key(sweep, images, FROZEN.model_copy(update={"augment": True}), 0) == key

    changed = {}
    more = tmp_path / "more"
    shutil.copytree(small_data, more)
    extra = next((more / "train" / "cats").iterdir())
    shutil.copy(extra, extra.with_name("cat.9999.jpg"))
    other_data = small_sweep(more, tmp_path)
    changed["data"] = feature_key(other_data, load_images(other_data.data), FROZEN, 0)
    resized = small_sweep(small_data, tmp_path, "data.image_size=[128, 128]")
    changed["size"] = feature_key(resized, load_images(resized.data), FROZEN, 0)
    resplit = small_sweep(small_data, tmp_path, "data.split_seed=1")
    changed["split"] = feature_key(resplit, load_images(resplit.data), FROZEN, 0)
    weights = tmp_path / "weights.h5"
    shutil.copy(SMALL_WEIGHTS, weights)
    reweighted = small_sweep(small_data, tmp_path, f"model.weights={weights}")
    changed["weights path"] = feature_key(reweighted, images, FROZEN, 0)
    with weights.open("ab") as file:
        file.write(b"\0")  # the same file, other bytes
    changed["weights bytes"] = feature_key(reweighted, images, FROZEN, 0)
    imagenet = small_sweep(small_data, tmp_path, "model.weights=imagenet", "model.alpha=1.0")
    changed["imagenet"] = feature_key(imagenet, images, FROZEN, 0)
    changed["preprocess"] = feature_key(
        sweep, images, FROZEN.model_copy(update={"preprocess": "none"}), 0
    )
    assert key not in changed.values()
    assert len(set(changed.values())) == len(changed)


@pytest.fixture(scope="module")
def data_40(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real photos per class in train/ and validation/: 80 training images, so batches of
    32 leave a partial last one."""
    return copy_images(tmp_path_factory.mktemp("data40") / "cats_and_dogs", per_class=40)


def test_epoch_orders_are_the_orders_fit_serves() -> None:
    import keras

    served: list[np.ndarray] = []

    class Recorder(keras.Model):  # records the examples each training step gets
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, x):  # type: ignore[no-untyped-def]
            return self.dense(x[:, None])

        def train_step(self, data):  # type: ignore[no-untyped-def]
            served.append(np.asarray(data[0]).astype(int))
            return super().train_step(data)

    count, batch_size, epochs = 21, 8, 4
    model = Recorder()
    model.compile("sgd", "mse", run_eagerly=True)
    x = np.arange(count)
    y = np.zeros(count, "float32")
    model.fit(train_dataset(x, y, batch_size, 7), epochs=epochs, shuffle=False, verbose=0)
    per_epoch = [np.concatenate(served[e * 3 : (e + 1) * 3]) for e in range(epochs)]
    orders = epoch_orders(count, batch_size, 7)
    predicted = [next(orders) for _ in range(epochs)]
    for epoch in range(epochs):
        np.testing.assert_array_equal(predicted[epoch], per_epoch[epoch])
    assert len({tuple(order) for order in predicted}) == epochs  # reshuffled every epoch


@pytest.mark.parametrize(
    ("feature_batch_size", "passes"),
    [(8, 6), (16, 3), (40, 2)],  # batches cut in two; as they are; joined then cut (40, 8)
)
def test_an_epochs_features_are_the_whole_models(
    data_40: Path, tmp_path: Path, feature_batch_size: int, passes: int
) -> None:
    """The features of an epoch, augmented batch by batch and run through the backbone
    in passes of any size, are what the whole model's pooling gets in training."""
    import keras

    sweep = small_sweep(data_40, tmp_path)
    x = load_images(sweep.data).x_train[:48]
    choices = FROZEN.model_copy(update={"augment": True, "rotation": 0.2})
    order = np.random.default_rng(0).permutation(len(x))
    batch_size = 16

    def network():  # type: ignore[no-untyped-def]
        keras.utils.set_random_seed(3)
        return build_model(choices, image_size=(96, 96), num_classes=2, weights=sweep.model, seed=3)

    ours = network()
    assert ours.backbone is not None
    augment, extract = feature_steps(ours)
    computed = np.empty((len(x), *ours.backbone.output.shape[1:]), "float32")
    sizes = []
    for rows, passed in augmented_features(
        augment, extract, x, order, batch_size, feature_batch_size
    ):
        computed[rows] = passed
        sizes.append(len(rows))
    assert len(sizes) == passes and sum(sizes) == len(x)
    assert max(sizes) == feature_batch_size

    model = network().model  # a fresh model: its augmentation draws from the same start
    inside = keras.Model(model.input, model.get_layer("global_max_pooling2d").input)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    expected = np.empty_like(computed)
    for rows in batches:
        expected[rows] = inside(x[rows].astype("float32"), training=True)
    not_augmented = np.asarray(ours.extractor(x.astype("float32")))  # type: ignore[misc]
    assert np.abs(not_augmented - expected).max() > 0.1  # the augmentation did change them
    np.testing.assert_allclose(computed, expected, atol=1e-4)


@pytest.mark.slow  # trains the model twice: per-epoch features and whole
@pytest.mark.parametrize("fine_tune", [False, True])
def test_per_epoch_features_train_as_the_whole_model(
    data_40: Path, tmp_path: Path, fine_tune: bool
) -> None:
    """Model4 (augmentation before the frozen backbone): the same curves and test accuracy.

    Tolerances: the losses to a relative 1e-4 and the accuracies to one image. The two
    paths differ only in float rounding (the backbone's passes of 8 against 32, the
    augmentation run eagerly against inside fit's graph), about 1e-7 relative; a different
    order or different random draws change the loss by 1e-2 or more.
    """
    choices = FROZEN.model_copy(update={"augment": True, "rotation": 0.2})
    stopping = ["train.patience=1", "train.epochs=4"]  # may stop early, keeps the best epoch
    if fine_tune:
        choices = choices.model_copy(update={"fine_tune_layers": 10, "fine_tune_epochs": 1})
        stopping = []
    whole_sweep = small_sweep(data_40, tmp_path / "a", "train.cache_features=false", *stopping)
    sweep = small_sweep(data_40, tmp_path / "b", "train.feature_batch_size=8", *stopping)
    images = load_images(sweep.data)
    reported: dict[str, list] = {"whole": [], "per epoch": []}
    whole, ours = (
        train(
            choices,
            seed=1,
            sweep=trial_sweep,
            images=images,
            on_epoch=lambda epoch, metrics, name=name: reported[name].append((epoch, metrics)),
        )
        for name, trial_sweep in (("whole", whole_sweep), ("per epoch", sweep))
    )

    assert ours.cached_splits == (("val",) if fine_tune else ("val", "test"))
    assert (
        sorted(ours.history)
        == sorted(whole.history)
        == ["accuracy", "loss", "val_accuracy", "val_loss"]
    )
    val_image = 1 / len(images.y_val)
    assert (ours.epochs_run, ours.kept_epoch) == (whole.epochs_run, whole.kept_epoch)
    assert ours.model_val_accuracy == pytest.approx(whole.model_val_accuracy, abs=val_image)
    assert ours.epochs_run >= (4 if fine_tune else 2)  # 3 + 1 fine-tuning epoch; patience 1
    for name in ("loss", "val_loss"):
        np.testing.assert_allclose(ours.history[name], whole.history[name], rtol=1e-4)
    np.testing.assert_allclose(ours.history["accuracy"], whole.history["accuracy"], atol=1 / 80)
    np.testing.assert_allclose(
        ours.history["val_accuracy"], whole.history["val_accuracy"], atol=val_image
    )
    assert [e for e, _ in reported["per epoch"]] == [e for e, _ in reported["whole"]]
    assert abs(ours.test_accuracy - whole.test_accuracy) <= 0.01
    assert ours.model.input_shape == (None, 96, 96, 3)  # the recorded model: the whole model
    x_test = images.x_test.astype("float32")
    np.testing.assert_allclose(
        np.asarray(ours.model(x_test, training=False)),  # eager: no graph traced to predict
        np.asarray(whole.model(x_test, training=False)),
        atol=1e-3,
    )


def test_the_per_epoch_model_trains_the_heads_weights_only(data_40: Path, tmp_path: Path) -> None:
    sweep = small_sweep(data_40, tmp_path)
    images = load_images(sweep.data)
    network = build_model(
        FROZEN.model_copy(update={"augment": True}),
        image_size=(96, 96),
        num_classes=2,
        weights=sweep.model,
    )
    per_epoch = epoch_training(
        network, images.x_train, images.y_train, batch_size=32, seed=0, feature_batch_size=8
    )
    assert network.head is not None
    # The features are no weight: early stopping's copies of the best weights stay small.
    assert [w.path for w in per_epoch.model.weights] == [w.path for w in network.head.weights]
    with pytest.raises(ValueError, match="no augmentation"):
        epoch_training(
            build_model(FROZEN, image_size=(96, 96), num_classes=2, weights=sweep.model),
            images.x_train,
            images.y_train,
            batch_size=32,
            seed=0,
            feature_batch_size=8,
        )
