"""One trial's training: the learning-rate factor and the fine-tuning phase, on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ablation.config import Sweep
from ablation.data import load_images
from ablation.factors import Configuration
from ablation.training import train
from conftest import frozen_sweep

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
    assert result.fine_tune_from is not None
    kept_phase = "first" if result.kept_epoch < result.fine_tune_from else "second"
    evaluated = result.model.evaluate(
        images.x_val.astype("float32"), images.y_val, verbose=0, return_dict=True
    )
    assert evaluated["accuracy"] == pytest.approx(result.model_val_accuracy), kept_phase
    assert result.model_val_accuracy == max(result.history["val_accuracy"][: result.kept_epoch + 1])
    assert np.isfinite(result.test_loss)
