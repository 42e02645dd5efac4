"""One trial: seed everything, build the configuration's model, train, test, record.

:func:`train` is the bare training (no I/O). :func:`run_trial` trains one trial
of a study and records it: per-epoch metrics to MLflow and to Optuna (which may
prune it), then the test metrics, the accuracy plot and the model.
:func:`run_trial_isolated` does the same in a fresh process, so that nothing a
trial leaves in TensorFlow (graphs, memory) outlives it, and a trial that
crashes, or is killed, fails alone.

Example:
    >>> from ablation.config import Choices, load_sweep
    >>> from ablation.data import load_images
    >>> sweep = load_sweep("sweeps/blog.yaml", ["data.source=../shared/data/cats_and_dogs",
    ...                                         "data.limit_per_class=10", "train.epochs=1"])
    >>> result = train(Choices(), seed=0, sweep=sweep, images=load_images(sweep.data))
    >>> 0.0 <= result.test_accuracy <= 1.0
    True
"""

from __future__ import annotations

import math
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.config import Choices, Sweep
from ablation.data import Images, eval_dataset, train_dataset
from ablation.errors import first_line
from ablation.features import cacheable_splits, feature_key, frozen_parts, load_features
from ablation.models import (
    build_model,
    compile_model,
    dtype_policy,
    inference_copy,
    unfreeze_top,
)

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
    best_epoch: int  # 0-based: the epoch whose weights the model has
    seconds: float  # all of train(): build, features, fit, test
    setup_seconds: float  # building the model and getting the cached features
    cached_splits: tuple[str, ...]  # the splits that went through cached backbone features
    model: keras.Model
    fine_tune_from: int | None = None  # 0-based: the first epoch of the fine-tuning phase


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

    The validation metrics are those of the model that is tested and saved: the
    last epoch's or, with ``train.patience`` (early stopping), the best epoch's,
    whose weights are restored. The test set is touched once, after training.
    With ``train.cache_features``, a frozen backbone's features come from
    :mod:`ablation.features` for the splits where that is exact. With
    ``fine_tune_layers``, a second phase follows (:func:`_fine_tune`); the epochs
    of both phases are numbered on, in one history.

    Raises:
        FloatingPointError: The loss or a metric became NaN or infinite.
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
        precision=dtype_policy(sweep.train, choices),
    )
    learning_rate = sweep.train.learning_rate_of(choices)
    compile_model(model, sweep.train.optimizer, learning_rate, choices.label_smoothing)
    batch_size = sweep.data.batch_size
    parts = frozen_parts(model) if sweep.train.cache_features else None
    features: dict[str, Any] = {}
    if parts is not None:
        compile_model(parts.head, sweep.train.optimizer, learning_rate, choices.label_smoothing)
        features = load_features(
            parts.extractor,
            images,
            cacheable_splits(choices),
            key=feature_key(sweep, images, choices),
            cache_dir=sweep.data.cache_dir,
            batch_size=batch_size,
        )
    setup_seconds = time.perf_counter() - started

    def end_of_epoch(epoch: int, logs: dict[str, Any]) -> None:
        metrics = {k: float(v) for k, v in logs.items()}
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metric after epoch {epoch + 1}: {metrics}")

    report_epoch = keras.callbacks.LambdaCallback(on_epoch_end=end_of_epoch)
    early_stopping = _early_stopping(sweep)
    callbacks = [report_epoch, *([early_stopping] if early_stopping else [])]
    fitted, x_train = model, images.x_train
    if parts is not None and "train" in features:
        fitted, x_train = parts.head, features["train"]
    validation = eval_dataset(features.get("val", images.x_val), images.y_val, batch_size)
    if parts is not None and "val" in features and fitted is model:
        # Augmented images in, cached features for validation: validate through the head.
        callbacks.insert(0, _validation_through(parts.head, validation))
        validation = None
    history = fitted.fit(
        train_dataset(x_train, images.y_train, batch_size, seed),
        validation_data=validation,
        epochs=sweep.train.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset reshuffles itself, seeded
        verbose=0,
    ).history
    kept = early_stopping.best_epoch if early_stopping else len(history["loss"]) - 1

    fine_tune_from = None
    if choices.fine_tunes:
        fine_tune_from = len(history["loss"])
        features.pop("test", None)  # the backbone changes: test through the whole model
        history, kept = _fine_tune(
            model, choices, sweep, images, history, kept, report_epoch, learning_rate, seed
        )
    tested = parts.head if parts is not None and "test" in features else model
    test = tested.evaluate(
        eval_dataset(features.get("test", images.x_test), images.y_test, batch_size),
        verbose=0,
        return_dict=True,
    )
    return TrialResult(
        history={k: [float(v) for v in values] for k, values in history.items()},
        val_accuracy=float(history["val_accuracy"][kept]),
        val_loss=float(history["val_loss"][kept]),
        test_accuracy=float(test["accuracy"]),
        test_loss=float(test["loss"]),
        epochs_run=len(history["loss"]),
        best_epoch=kept,
        seconds=time.perf_counter() - started,
        setup_seconds=setup_seconds,
        cached_splits=tuple(features),
        model=model,
        fine_tune_from=fine_tune_from,
    )


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


def _fine_tune(
    model: keras.Model,
    choices: Choices,
    sweep: Sweep,
    images: Images,
    history: dict[str, list[float]],
    kept: int,
    report_epoch: keras.callbacks.Callback,
    learning_rate: float,
    seed: int,
) -> tuple[dict[str, list[float]], int]:
    """The second phase: the backbone's top layers unfrozen, a tenth of the learning rate.

    It starts from the head the first phase kept and runs ``fine_tune_epochs`` more
    epochs (numbered on from the first phase's) through the whole model. With early
    stopping, the phase stops once it has gone ``patience`` epochs without improving
    on its own best (fine-tuning often dips before it gains), and of the two
    phases' best epochs the better one's weights are kept (the first on a tie).
    """
    first_epochs = len(history["loss"])
    first_best = history["val_accuracy"][kept]
    first_weights = {weight.path: weight.numpy() for weight in model.weights}
    unfreeze_top(model, choices.fine_tune_layers)
    compile_model(model, sweep.train.optimizer, learning_rate / 10, choices.label_smoothing)
    early_stopping = _early_stopping(sweep)
    batch_size = sweep.data.batch_size
    more = model.fit(
        train_dataset(images.x_train, images.y_train, batch_size, seed),
        validation_data=eval_dataset(images.x_val, images.y_val, batch_size),
        initial_epoch=first_epochs,
        epochs=first_epochs + choices.fine_tune_epochs,
        callbacks=[report_epoch, *([early_stopping] if early_stopping else [])],
        shuffle=False,
        verbose=0,
    ).history
    history = {name: values + more[name] for name, values in history.items()}
    if early_stopping is None:
        return history, len(history["loss"]) - 1
    if history["val_accuracy"][early_stopping.best_epoch] > first_best:
        return history, early_stopping.best_epoch
    for weight in model.weights:  # fine-tuning did not help: back to the first phase's model
        weight.assign(first_weights[weight.path])
    return history, kept


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


@dataclass(frozen=True)
class TrialSpec:
    """Everything a (possibly separate) process needs to run one trial of a study."""

    sweep: Sweep
    trial_id: int  # Optuna's storage-wide id
    number: int
    params: dict[str, Any]
    seed: int
    label: str
    run_id: str  # the trial's MLflow run, already created


@dataclass
class TrialReport:
    """How a trial ended, as far as the study needs to know."""

    state: str  # COMPLETE, PRUNED or FAIL
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    epochs_run: int = 0
    seconds: float = 0.0  # in train(): model build, features, fit and test
    setup_seconds: float = 0.0  # of which building the model and getting cached features
    error: str | None = None


def run_trial(spec: TrialSpec, images: Images, on_epoch: EpochHook | None = None) -> TrialReport:
    """Train one trial and record it in MLflow and Optuna (intermediate values, pruning).

    Never raises for a failing trial: the failure is recorded on its MLflow run
    and returned. ``KeyboardInterrupt`` still propagates.
    """
    import optuna

    from ablation.plots import accuracy_curves
    from ablation.study import open_study
    from ablation.tracking import Tracker

    tracker = Tracker(spec.sweep.tracking, spec.sweep.experiment_name)
    trial = optuna.trial.Trial(open_study(spec.sweep), spec.trial_id)
    report = TrialReport(state="FAIL")
    started = time.perf_counter()

    def record_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_epoch(spec.run_id, epoch, metrics)
        report.epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if math.isfinite(metrics.get("val_accuracy", math.nan)):
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

    try:
        result = train(
            Choices.model_validate(spec.params),
            seed=spec.seed,
            sweep=spec.sweep,
            images=images,
            on_epoch=record_epoch,
        )
    except optuna.TrialPruned:
        report.state = "PRUNED"
        report.seconds = time.perf_counter() - started
        tracker.finish_trial(spec.run_id, metrics={"epochs_run": report.epochs_run}, state="PRUNED")
        return report
    except Exception as exc:  # one bad trial must not end the study
        report.error = f"{type(exc).__name__}: {first_line(exc)}"
        report.seconds = time.perf_counter() - started
        tracker.fail_trial(spec.run_id, f"{report.error}\n{traceback.format_exc()}")
        return report

    tracker.finish_trial(
        spec.run_id,
        metrics={
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "model_val_accuracy": result.val_accuracy,  # of the weights tested and saved
            "best_val_accuracy": max(result.history["val_accuracy"]),
            "epochs_run": result.epochs_run,
            "kept_epoch": result.best_epoch + 1,
            "train_seconds": result.seconds,
            "setup_seconds": result.setup_seconds,
            **(
                {"fine_tune_from_epoch": result.fine_tune_from + 1}
                if result.fine_tune_from is not None
                else {}
            ),
        },
        tags={"ablation.cached_features": ",".join(result.cached_splits) or "none"},
        figure=accuracy_curves(result.history, spec.label, fine_tune_from=result.fine_tune_from),
        model=inference_copy(result.model),
    )
    return TrialReport(
        state="COMPLETE",
        val_accuracy=result.val_accuracy,
        test_accuracy=result.test_accuracy,
        epochs_run=result.epochs_run,
        seconds=result.seconds,
        setup_seconds=result.setup_seconds,
    )


def run_trial_isolated(
    spec: TrialSpec,
    images_file: Path,
    on_epoch: EpochHook | None = None,
    stop: threading.Event | None = None,
) -> TrialReport:
    """:func:`run_trial` in a fresh (spawned) process that reads the decoded images from a file.

    If the process dies (killed, out of memory, a crash in TensorFlow), the trial
    is recorded as failed with the reason. On ``KeyboardInterrupt`` (or when
    ``stop`` is set, by another thread) the process is stopped and
    ``KeyboardInterrupt`` propagates.
    """
    import multiprocessing

    from ablation.tracking import Tracker

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(spec, str(images_file), sender, os.getpid()), daemon=True
    )
    process.start()
    sender.close()
    report: TrialReport | None = None
    try:
        while True:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            if receiver.poll(0.5):
                try:
                    kind, payload = receiver.recv()
                except EOFError:
                    break
                if kind == "epoch" and on_epoch is not None:
                    on_epoch(*payload)
                elif kind == "done":
                    report = payload
            elif not process.is_alive():
                break
        process.join()
    except BaseException:
        process.terminate()
        process.join(10)
        raise
    finally:
        receiver.close()
    if report is None:
        code = process.exitcode
        reason = f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"
        report = TrialReport(state="FAIL", error=f"the trial's process died ({reason})")
        Tracker(spec.sweep.tracking, spec.sweep.experiment_name).fail_trial(
            spec.run_id, report.error or ""
        )
    return report


def _child_main(spec: TrialSpec, images_file: str, sender: Any, parent_pid: int) -> None:
    """Entry point of a trial's process."""
    import signal

    from ablation.data import read_images

    # Ctrl-C is the parent's to handle: it stops this process and records the trial.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent_pid)

    def send(message: tuple[str, Any]) -> None:
        try:
            sender.send(message)
        except OSError:  # the study's process is gone: stop here, its next run recovers the trial
            os._exit(1)

    images = read_images(Path(images_file))
    report = run_trial(
        spec, images, on_epoch=lambda epoch, metrics: send(("epoch", (epoch, metrics)))
    )
    send(("done", report))
    sender.close()


def _exit_with_parent(parent_pid: int) -> None:
    """End this process if the study's process dies (e.g. SIGKILL), instead of training on."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()
