"""One trial of a study: train its configuration and record it, in MLflow and in Optuna.

:func:`run_trial` is the body of a trial, in whichever process runs it
(:mod:`ablation.study.process` runs it in a fresh one): each epoch's metrics go to
the trial's MLflow run and to Optuna (whose pruner may stop the trial), then the
test metrics, the accuracy plot and the model. A failing trial is recorded and
returned, never raised: one bad trial must not end a study.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ablation.data.images import Images
from ablation.errors import first_line
from ablation.model.builders import inference_copy
from ablation.model.training import EpochHook, TrainingResult, train
from ablation.study.rounds import pack_correct
from ablation.study.storage import OptunaStudy, open_study
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Params
from ablation.sweep.space import configuration
from ablation.tracking.confusion import class_accuracies, confusion_counts
from ablation.tracking.figures import accuracy_curves, confusion_matrix
from ablation.tracking.predictions import collapse_reason, predictions_csv
from ablation.tracking.records import MetricName, TagName, TrialState, class_metric
from ablation.tracking.system_metrics import system_metrics
from ablation.tracking.tracker import Tracker

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class TrialSpec:
    """Everything a (possibly separate) process needs to run one trial of a study."""

    sweep: Sweep
    trial_id: int  # Optuna's storage-wide id
    number: int  # Optuna's trial number in the study
    params: Params
    seed: int
    label: str
    run_id: str  # the trial's MLflow run, already created

    def outcome(self, state: TrialState, **values: object) -> TrialOutcome:
        return TrialOutcome(
            number=self.number,
            label=self.label,
            params=self.params,
            seed=self.seed,
            run_id=self.run_id,
            state=state,
            **values,  # type: ignore[arg-type]
        )


@dataclass
class TrialOutcome:
    """How one trial went: which trial it was, how it ended, its scores and its time."""

    number: int
    label: str
    params: Params
    seed: int
    run_id: str
    state: TrialState
    model_val_accuracy: float | None = None  # of the weights tested and saved: the objective
    test_accuracy: float | None = None
    test_correct: str | None = None  # each test image right or not (study.rounds.pack_correct)
    collapsed: bool = False
    epochs_run: int = 0
    seconds: float = 0.0  # in training: model build, features, fit and test
    setup_seconds: float = 0.0  # of which building the model and getting cached features
    error: str | None = None
    wall_seconds: float = 0.0  # as the study saw it: process start, training, recording

    @property
    def fixed_seconds(self) -> float:
        """The trial's cost outside training: getting a process, opening, recording."""
        return max(self.wall_seconds - self.seconds, 0.0)

    def timed(self, wall_seconds: float) -> TrialOutcome:
        return dataclasses.replace(self, wall_seconds=wall_seconds)


@dataclass(frozen=True)
class Stores:
    """A process's open connections to the sweep's stores: MLflow's and Optuna's."""

    tracker: Tracker
    optuna: OptunaStudy


def open_stores(sweep: Sweep) -> Stores:
    """Open the sweep's MLflow store and Optuna study (a trial process does it ahead): to
    report epochs, not to ask for trials (it takes no sampler seed)."""
    return Stores(Tracker(sweep.tracking, sweep.experiment_name), open_study(sweep, asks=False))


def run_trial(
    spec: TrialSpec,
    images: Images,
    on_epoch: EpochHook | None = None,
    stores: Stores | None = None,
) -> TrialOutcome:
    """Train one trial and record it in MLflow and Optuna (intermediate values, pruning),
    in ``stores`` if this process opened them already (:func:`open_stores`).

    Never raises for a failing trial: the failure is recorded on its MLflow run
    and returned. ``KeyboardInterrupt`` still propagates.
    """
    import optuna

    stores = stores or open_stores(spec.sweep)
    tracker = stores.tracker
    trial = stores.optuna.trial(spec.trial_id)
    tracker.log_datasets(spec.run_id, images)
    epochs_run = 0
    started = time.perf_counter()

    def record_epoch(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal epochs_run
        tracker.log_epoch(spec.run_id, epoch, metrics)
        epochs_run = epoch + 1
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        val_accuracy = metrics.get(MetricName.VAL_ACCURACY, math.nan)
        if math.isfinite(val_accuracy):
            trial.report(val_accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

    try:
        with system_metrics(tracker.uri, spec.run_id, spec.sweep.tracking.system_metrics):
            result = train(
                configuration(spec.params),
                seed=spec.seed,
                sweep=spec.sweep,
                images=images,
                on_epoch=record_epoch,
            )
    except optuna.TrialPruned:
        tracker.prune_trial(spec.run_id, epochs_run)
        seconds = time.perf_counter() - started
        return spec.outcome(TrialState.PRUNED, epochs_run=epochs_run, seconds=seconds)
    except Exception as exc:  # one bad trial must not end the study
        error = f"{type(exc).__name__}: {first_line(exc)}"
        tracker.fail_trial(spec.run_id, f"{error}\n{traceback.format_exc()}")
        seconds = time.perf_counter() - started
        return spec.outcome(TrialState.FAIL, epochs_run=epochs_run, seconds=seconds, error=error)

    return _completed(tracker, spec, images, result)


def _completed(
    tracker: Tracker, spec: TrialSpec, images: Images, result: TrainingResult
) -> TrialOutcome:
    """A trained trial recorded (:func:`_record_completed`), and how it went."""
    collapsed = _record_completed(tracker, spec, images, result)
    return spec.outcome(
        TrialState.COMPLETE,
        model_val_accuracy=result.model_val_accuracy,
        test_accuracy=result.test_accuracy,
        test_correct=pack_correct(result.test_predictions == images.y_test),
        collapsed=collapsed,
        epochs_run=result.epochs_run,
        seconds=result.seconds,
        setup_seconds=result.setup_seconds,
    )


def _record_completed(
    tracker: Tracker, spec: TrialSpec, images: Images, result: TrainingResult
) -> bool:
    """A trained trial's test classes, curves and model, in MLflow; its run ends FINISHED.
    Whether the network collapsed (predicts one class whatever the image)."""
    _record_test_classes(tracker, spec, images, result)
    tags = {TagName.CACHED_FEATURES: ",".join(result.cached_splits) or "none"}
    if result.features_per_epoch:
        tags[TagName.FEATURES_PER_EPOCH] = "true"
    reason = collapse_reason(
        result.test_predictions.tolist(), images.class_names, last_loss=result.history["loss"][-1]
    )
    tags[TagName.COLLAPSED] = "true" if reason else "false"
    if reason:
        tags[TagName.COLLAPSE_REASON] = reason
    tracker.complete_trial(
        spec.run_id,
        final_metrics(result),
        figure=accuracy_curves(result.history, spec.label, fine_tune_from=result.fine_tune_from),
        model=inference_copy(result.model),
        tags=tags,
    )
    return bool(reason)


def final_metrics(result: TrainingResult) -> dict[str, float]:
    """A trained trial's metrics logged once, at the end (:class:`MetricName`)."""
    metrics = {
        MetricName.TEST_ACCURACY: result.test_accuracy,
        MetricName.TEST_LOSS: result.test_loss,
        MetricName.MODEL_VAL_ACCURACY: result.model_val_accuracy,
        MetricName.BEST_VAL_ACCURACY: result.best_val_accuracy,
        MetricName.EPOCHS_RUN: result.epochs_run,
        MetricName.KEPT_EPOCH: result.kept_epoch + 1,
        MetricName.TRAIN_SECONDS: result.seconds,
        MetricName.SETUP_SECONDS: result.setup_seconds,
    }
    if result.fine_tune_from is not None:
        metrics[MetricName.FINE_TUNE_FROM_EPOCH] = result.fine_tune_from + 1
    return metrics


def _record_test_classes(
    tracker: Tracker, spec: TrialSpec, images: Images, result: TrainingResult
) -> None:
    """Each class's test accuracy (recall), the test set's confusion matrix and each test
    image's prediction, in MLflow."""
    names = images.class_names
    counts = confusion_counts(images.y_test.tolist(), result.test_predictions.tolist(), len(names))
    metrics = {
        class_metric(index, name): accuracy
        for index, (name, accuracy) in enumerate(zip(names, class_accuracies(counts), strict=True))
        if accuracy is not None
    }
    figure = confusion_matrix(counts, names, f"{spec.label}: test set")
    confusion = {"class_names": names, "counts": counts, "rows": "true", "columns": "predicted"}
    predictions = predictions_csv(
        images.test_paths, images.y_test.tolist(), result.test_probabilities, names
    )
    tracker.log_test_classes(spec.run_id, metrics, confusion, figure, predictions)
