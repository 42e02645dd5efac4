"""One trial: seed everything, build the configuration's model, train, test.

Example:
    >>> from ablation.config import Choices, load_sweep
    >>> from ablation.data import load_images
    >>> sweep = load_sweep("sweeps/blog.yaml", ["data.limit_per_class=10", "train.epochs=1"])
    >>> result = train(Choices(), seed=0, sweep=sweep, images=load_images(sweep.data))
    >>> 0.0 <= result.test_accuracy <= 1.0
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ablation.config import Choices, Sweep
from ablation.data import Images, eval_dataset, train_dataset
from ablation.models import build_model, compile_model

if TYPE_CHECKING:
    import keras

EpochHook = Callable[[int, dict[str, float]], None]
"""Called after each epoch with the epoch index (0-based) and its metrics; may raise
``optuna.TrialPruned`` to stop the trial."""


@dataclass
class TrialResult:
    history: dict[str, list[float]]
    val_accuracy: float
    val_loss: float
    test_accuracy: float
    test_loss: float
    epochs_run: int
    seconds: float
    model: keras.Model


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(
    choices: Choices,
    *,
    seed: int,
    sweep: Sweep,
    images: Images,
    on_epoch: EpochHook | None = None,
) -> TrialResult:
    """Train and test one configuration with one seed.

    The validation metrics are those of the final epoch, i.e. of the model that
    is tested and saved; the test set is touched once, after training.
    """
    import keras

    started = time.perf_counter()
    keras.backend.clear_session()
    seed_everything(seed)
    model = build_model(
        choices,
        image_size=sweep.data.image_size,
        num_classes=len(images.class_names),
        model=sweep.model,
        seed=seed,
    )
    compile_model(model, sweep.train.optimizer, sweep.train.learning_rate)
    batch_size = sweep.data.batch_size
    callbacks: list[Any] = []
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(
                    epoch, {k: float(v) for k, v in logs.items()}
                )
            )
        )
    history = model.fit(
        train_dataset(images, batch_size, seed),
        validation_data=eval_dataset(images.x_val, images.y_val, batch_size),
        epochs=sweep.train.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset reshuffles itself, seeded
        verbose=0,
    ).history
    test = model.evaluate(
        eval_dataset(images.x_test, images.y_test, batch_size), verbose=0, return_dict=True
    )
    return TrialResult(
        history={k: [float(v) for v in values] for k, values in history.items()},
        val_accuracy=float(history["val_accuracy"][-1]),
        val_loss=float(history["val_loss"][-1]),
        test_accuracy=float(test["accuracy"]),
        test_loss=float(test["loss"]),
        epochs_run=len(history["loss"]),
        seconds=time.perf_counter() - started,
        model=model,
    )
