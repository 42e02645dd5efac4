"""Training one configuration with one seed: seed, build, fit, (fine-tune,) test. No I/O.

:func:`train` is what a trial computes; :mod:`ablation.study.trial` records it. The
validation metrics are those of the model that is tested and saved: the last
epoch's or, with ``train.patience`` (early stopping), the best epoch's, whose
weights are restored. The test set is touched once, after training: its loss,
accuracy and each image's predicted class (for per-class results).

Example::

    from ablation.sweep.config import load_sweep
    from ablation.data.images import load_images
    from ablation.sweep.factors import Configuration

    sweep = load_sweep("sweeps/blog.yaml", ["data.source=../shared/data/cats_and_dogs",
                                            "data.limit_per_class=10", "train.epochs=1"])
    result = train(Configuration(), seed=0, sweep=sweep, images=load_images(sweep.data))
    print(result.test_accuracy, result.history["val_accuracy"])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ablation.data.images import Images
from ablation.data.pipeline import eval_dataset, train_dataset
from ablation.model.builders import Network, build_model, compile_model, unfreeze_top
from ablation.model.features import (
    FeaturePlan,
    epoch_training,
    feature_key,
    load_features,
    plan_features,
)
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration

if TYPE_CHECKING:
    import keras

EpochHook = Callable[[int, dict[str, float]], None]
"""Called after each epoch with the epoch index (0-based) and its metrics; may raise
(``optuna.TrialPruned``) to stop the training."""

History = dict[str, list[float]]


@dataclass
class TrainingResult:
    """What training one configuration produced: its curves, its scores and its model."""

    history: History  # per epoch, both phases numbered on
    model_val_accuracy: float  # of the kept weights (the model tested and saved)
    val_loss: float
    test_accuracy: float
    test_loss: float
    epochs_run: int
    kept_epoch: int  # 0-based: the epoch whose weights the model has
    seconds: float  # all of train(): build, features, fit, test
    setup_seconds: float  # building the model and getting the cached features
    cached_splits: tuple[str, ...]  # the splits that went through cached backbone features
    features_per_epoch: bool  # the training set's augmented features, computed per epoch
    network: Network
    # the kept model's probability of each class (softmax of its logits) for each test image
    test_probabilities: np.ndarray
    fine_tune_from: int | None = None  # 0-based: the first epoch of the fine-tuning phase

    @property
    def model(self) -> keras.Model:
        """The trained model: raw images in, logits out."""
        return self.network.model

    @property
    def test_predictions(self) -> np.ndarray:
        """The kept model's class for each test image."""
        return np.argmax(self.test_probabilities, axis=1)

    @property
    def best_val_accuracy(self) -> float:
        """The best epoch's validation accuracy (the kept model's, unless fine-tuning lost)."""
        return max(self.history["val_accuracy"])


@dataclass(frozen=True)
class Fit:
    """One configuration trained with one seed: what each phase fits with."""

    network: Network
    configuration: Configuration
    sweep: Sweep
    images: Images
    seed: int
    report_epoch: keras.callbacks.Callback  # hands each epoch on (:func:`_epoch_reporter`)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def train(
    configuration: Configuration,
    *,
    seed: int,
    sweep: Sweep,
    images: Images,
    on_epoch: EpochHook | None = None,
) -> TrainingResult:
    """Train and test one configuration with one seed.

    With ``train.cache_features``, a frozen backbone's features stand in for the
    images where that is exact (:func:`ablation.model.features.plan_features`); with
    augmentation, the training set's are computed at each epoch's start. With
    ``fine_tune_layers``, a second phase follows (:func:`_fine_tune`); the epochs
    of both phases are numbered on, in one history.

    Raises:
        FloatingPointError: The loss or a metric became NaN or infinite.
    """
    started = time.perf_counter()
    network = _build(configuration, seed, sweep, len(images.class_names))
    plan = plan_features(configuration, sweep.train)
    features = _features(network, plan, configuration, sweep, images, seed)
    setup_seconds = time.perf_counter() - started

    fit = Fit(network, configuration, sweep, images, seed, _epoch_reporter(on_epoch))
    history, kept = _fit_first_phase(fit, plan, features)
    fine_tune_from = None
    if configuration.fine_tunes:
        fine_tune_from = len(history["loss"])
        history, kept = _fine_tune(fit, history, kept)
    tested = network.head if plan.tests_through_head else network.model
    x_test = features["test"] if plan.tests_through_head else images.x_test
    test_loss, probabilities = _test(tested, x_test, images.y_test, sweep.data.batch_size)
    return TrainingResult(
        history=history,
        model_val_accuracy=history["val_accuracy"][kept],
        val_loss=history["val_loss"][kept],
        test_accuracy=float(np.mean(np.argmax(probabilities, axis=1) == images.y_test)),
        test_loss=test_loss,
        epochs_run=len(history["loss"]),
        kept_epoch=kept,
        seconds=time.perf_counter() - started,
        setup_seconds=setup_seconds,
        cached_splits=plan.splits,
        features_per_epoch=plan.train_per_epoch,
        network=network,
        fine_tune_from=fine_tune_from,
        test_probabilities=probabilities,
    )


def _test(
    model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[float, np.ndarray]:
    """The test loss (the compiled loss, as ``evaluate`` gives it) and each image's
    class probabilities, from one pass over the test set (``evaluate`` would be a second)."""
    import keras

    logits = model.predict(eval_dataset(x, y, batch_size), verbose=0).astype("float32")
    loss = keras.ops.mean(model.loss(keras.ops.convert_to_tensor(y), logits))
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    return float(keras.ops.convert_to_numpy(loss)), probabilities


def _build(configuration: Configuration, seed: int, sweep: Sweep, num_classes: int) -> Network:
    """A fresh, seeded, compiled model (and head, if it has one)."""
    import keras

    keras.backend.clear_session()
    seed_everything(seed)
    network = build_model(
        configuration,
        image_size=sweep.data.image_size,
        num_classes=num_classes,
        weights=sweep.model,
        seed=seed,
        precision=sweep.train.dtype_policy(configuration),
    )
    for model in (network.model, network.head):
        if model is not None:
            _compile(model, configuration, sweep)
    return network


def _compile(model: keras.Model, configuration: Configuration, sweep: Sweep) -> None:
    """Compile for the first phase: the configuration's optimizer, learning rate and loss."""
    compile_model(
        model,
        sweep.train.optimizer,
        sweep.train.learning_rate_of(configuration),
        configuration.label_smoothing,
    )


def _features(
    network: Network,
    plan: FeaturePlan,
    configuration: Configuration,
    sweep: Sweep,
    images: Images,
    seed: int,
) -> dict[str, np.ndarray]:
    if not plan.splits or network.extractor is None:
        return {}
    return load_features(
        network.extractor,
        images,
        plan.splits,
        key=feature_key(sweep, images, configuration, seed),
        cache_dir=sweep.data.cache_dir,
        batch_size=sweep.feature_batch_size(configuration),
    )


def _fit_first_phase(
    fit: Fit, plan: FeaturePlan, features: dict[str, np.ndarray]
) -> tuple[History, int]:
    """Fit the model (or its head, on cached or per-epoch features); the history and the
    kept epoch."""
    batch_size = fit.sweep.data.batch_size
    validation = eval_dataset(features.get("val", fit.images.x_val), fit.images.y_val, batch_size)
    early_stopping = _early_stopping(fit.sweep)
    callbacks = [fit.report_epoch, *([early_stopping] if early_stopping else [])]
    if plan.validates_through_head and fit.network.head is not None:
        callbacks.insert(0, _validation_through(fit.network.head, validation))
        validation = None
    if plan.train_per_epoch:
        per_epoch = epoch_training(
            fit.network,
            fit.images.x_train,
            fit.images.y_train,
            batch_size=batch_size,
            seed=fit.seed,
            feature_batch_size=fit.sweep.feature_batch_size(fit.configuration),
        )
        fitted, train_set = per_epoch.model, per_epoch.dataset
        _compile(fitted, fit.configuration, fit.sweep)
        callbacks.insert(0, per_epoch.callback)
    else:
        head_trains = plan.head_trains and fit.network.head is not None
        fitted = fit.network.head if head_trains else fit.network.model
        x_train = features["train"] if plan.head_trains else fit.images.x_train
        train_set = train_dataset(x_train, fit.images.y_train, batch_size, fit.seed)
    history = fitted.fit(
        train_set,
        validation_data=validation,
        epochs=fit.sweep.train.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset reshuffles itself, seeded
        verbose=0,
    ).history
    history = {name: [float(v) for v in values] for name, values in history.items()}
    kept = early_stopping.best_epoch if early_stopping else len(history["loss"]) - 1
    return history, kept


def _fine_tune(fit: Fit, history: History, kept: int) -> tuple[History, int]:
    """The second phase: the backbone's top layers unfrozen, a tenth of the learning rate.

    It starts from the head the first phase kept and runs ``fine_tune_epochs`` more
    epochs (numbered on from the first phase's) through the whole model. With early
    stopping, the phase stops once it has gone ``patience`` epochs without improving
    on its own best (fine-tuning often dips before it gains), and of the two
    phases' best epochs the better one's weights are kept (the first on a tie).
    """
    model = fit.network.model
    first_epochs = len(history["loss"])
    first_best = history["val_accuracy"][kept]
    first_weights = {weight.path: weight.numpy() for weight in model.weights}
    unfreeze_top(fit.network, fit.configuration.fine_tune_layers)
    learning_rate = fit.sweep.train.learning_rate_of(fit.configuration) / 10
    compile_model(
        model, fit.sweep.train.optimizer, learning_rate, fit.configuration.label_smoothing
    )
    early_stopping = _early_stopping(fit.sweep)
    batch_size = fit.sweep.data.batch_size
    more = model.fit(
        train_dataset(fit.images.x_train, fit.images.y_train, batch_size, fit.seed),
        validation_data=eval_dataset(fit.images.x_val, fit.images.y_val, batch_size),
        initial_epoch=first_epochs,
        epochs=first_epochs + fit.configuration.fine_tune_epochs,
        callbacks=[fit.report_epoch, *([early_stopping] if early_stopping else [])],
        shuffle=False,
        verbose=0,
    ).history
    history = {name: values + [float(v) for v in more[name]] for name, values in history.items()}
    if early_stopping is None:
        return history, len(history["loss"]) - 1
    if history["val_accuracy"][early_stopping.best_epoch] > first_best:
        return history, early_stopping.best_epoch
    for weight in model.weights:  # fine-tuning did not help: back to the first phase's model
        weight.assign(first_weights[weight.path])
    return history, kept


def _epoch_reporter(on_epoch: EpochHook | None) -> keras.callbacks.Callback:
    """A callback that hands each epoch's metrics on, and stops on a non-finite one."""
    import keras

    def end_of_epoch(epoch: int, logs: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in logs.items()}
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metric after epoch {epoch + 1}: {metrics}")

    return keras.callbacks.LambdaCallback(on_epoch_end=end_of_epoch)


def _early_stopping(sweep: Sweep) -> keras.callbacks.Callback | None:
    import keras

    if sweep.train.patience is None:
        return None
    return keras.callbacks.EarlyStopping(
        monitor="val_accuracy",
        mode="max",
        patience=sweep.train.patience,
        restore_best_weights=True,
    )


def _validation_through(head: keras.Model, validation: Any) -> keras.callbacks.Callback:
    """A callback that validates through ``head`` (on cached features) after each epoch.

    It runs first, so the ``val_*`` metrics it adds to the logs are there for early
    stopping, pruning and the history, as if ``fit`` had computed them.
    """
    import keras

    class ValidateThroughHead(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            results = head.evaluate(validation, verbose=0, return_dict=True)
            if logs is not None:
                logs.update({f"val_{name}": float(value) for name, value in results.items()})

    return ValidateThroughHead()
