"""One trial's training: the learning-rate factor and the fine-tuning phase, on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ablation.data.images import load_images
from ablation.model.training import train
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration
from conftest import frozen_sweep

pytestmark = pytest.mark.slow  # every test trains a model

FROZEN = Configuration(backbone="mobilenet_v2", preprocess="mobilenet_v2")


def small_sweep(data: Path, cache_dir: Path, *extra: str) -> Sweep:
    return frozen_sweep(
        data, cache_dir, "data.image_size=[64, 64]", "data.batch_size=8", "train.epochs=2", *extra
    )


def test_the_learning_rate_factor_overrides_the_train_section(
    small_data: Path, tmp_path: Path
) -> None:
    sweep = small_sweep(small_data, tmp_path, "train.epochs=1", "train.learning_rate=0.002")
    images = load_images(sweep.data)
    default = train(FROZEN, seed=0, sweep=sweep, images=images)
    assert float(default.model.optimizer.learning_rate) == pytest.approx(0.002)
    chosen = FROZEN.model_copy(update={"learning_rate": 0.0005})
    factor = train(chosen, seed=0, sweep=sweep, images=images)
    assert float(factor.model.optimizer.learning_rate) == pytest.approx(0.0005)


def test_fine_tuning_is_a_second_phase_at_a_tenth_of_the_learning_rate(
    small_data: Path, tmp_path: Path
) -> None:
    sweep = small_sweep(small_data, tmp_path, "train.learning_rate=0.002")
    choices = FROZEN.model_copy(update={"fine_tune_layers": 12, "fine_tune_epochs": 3})
    epochs_seen: list[int] = []
    result = train(
        choices,
        seed=0,
        sweep=sweep,
        images=load_images(sweep.data),
        on_epoch=lambda epoch, metrics: epochs_seen.append(epoch),
    )
    assert result.fine_tune_from == 2
    assert epochs_seen == [0, 1, 2, 3, 4]  # both phases, numbered on
    assert all(len(values) == 5 for values in result.history.values())
    assert float(result.model.optimizer.learning_rate) == pytest.approx(0.0002)
    backbone = result.network.backbone
    assert backbone is not None
    trainable = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable and all(layer in backbone.layers[-12:] for layer in trainable)
    assert result.cached_splits == ("train", "val")  # the first phase; test through the model
    assert result.kept_epoch == 4  # no early stopping: the last epoch's weights


def test_fine_tuning_that_does_not_help_keeps_the_first_phases_model(
    small_data: Path, tmp_path: Path
) -> None:
    # A learning rate this high wrecks the unfrozen layers; early stopping must then
    # fall back to the first phase's weights, and the reported accuracy must be theirs.
    sweep = small_sweep(small_data, tmp_path, "train.patience=1", "train.learning_rate=0.5")
    choices = FROZEN.model_copy(update={"fine_tune_layers": 30, "fine_tune_epochs": 3})
    images = load_images(sweep.data)
    result = train(choices, seed=0, sweep=sweep, images=images)
    kept_weights = {weight.path: weight.numpy() for weight in result.model.weights}
    x_val, x_test = images.x_val.astype("float32"), images.x_test.astype("float32")
    kept_val = result.model.predict(x_val, verbose=0)
    kept_test = result.model.predict(x_test, verbose=0)
    # The same first phase alone (same seed, no fine-tuning): the model to fall back to.
    first = train(FROZEN, seed=0, sweep=sweep, images=images)
    assert first.fine_tune_from is None

    # Preconditions: both phases ran, the first is the same, and the second never beat it.
    assert result.fine_tune_from == 2 == first.epochs_run
    first_phase = result.history["val_accuracy"][:2]
    second_phase = result.history["val_accuracy"][2:]
    assert {name: values[:2] for name, values in result.history.items()} == first.history
    assert 1 <= len(second_phase) <= 3
    assert max(second_phase) < max(first_phase), result.history["val_accuracy"]

    # The kept epoch is the first phase's best, and so is the reported accuracy.
    assert result.kept_epoch < result.fine_tune_from
    assert result.kept_epoch == first.kept_epoch == first_phase.index(max(first_phase))
    assert result.model_val_accuracy == max(first_phase) == first.model_val_accuracy
    assert result.val_loss == first.val_loss
    assert result.model_val_accuracy == max(result.history["val_accuracy"][: result.kept_epoch + 1])

    # The model holds the first phase's weights, backbone included (fine-tuning changed it).
    first_weights = {weight.path: weight.numpy() for weight in first.model.weights}
    assert kept_weights.keys() == first_weights.keys()
    for path, value in first_weights.items():
        np.testing.assert_array_equal(kept_weights[path], value, err_msg=path)
    np.testing.assert_allclose(kept_val, first.model.predict(x_val, verbose=0), atol=1e-5)
    # ... and its predictions reproduce the recorded validation and test accuracies.
    val_accuracy = float(np.mean(np.argmax(kept_val, axis=1) == images.y_val))
    assert val_accuracy == pytest.approx(result.model_val_accuracy)
    test_accuracy = float(np.mean(np.argmax(kept_test, axis=1) == images.y_test))
    assert test_accuracy == pytest.approx(result.test_accuracy)
    evaluated = result.model.evaluate(x_val, images.y_val, verbose=0, return_dict=True)
    assert evaluated["accuracy"] == pytest.approx(result.model_val_accuracy)
    assert np.isfinite(result.test_loss)
