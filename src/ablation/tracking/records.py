"""What a trial comes to, in words every module shares: its state, and its record in MLflow.

A study is one MLflow experiment (or shares one) with a parent run per study and a
child run per trial. The names below are the whole record layout: what
:mod:`ablation.tracking.tracker` writes and reads back, and nothing else names them.

Example:
    >>> TrialState("PRUNED") is TrialState.PRUNED, TrialState.COMPLETE.value
    (True, 'COMPLETE')
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ablation.sweep.factors import Params


class TrialState(str, enum.Enum):
    """How a trial stands; the names are Optuna's."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class MetricName:
    """Metric names on a trial's run.

    The per-epoch curves are Keras's own names (``accuracy``, ``loss``,
    ``val_accuracy``, ``val_loss``, step = epoch); the rest are logged once, at the end.
    """

    VAL_ACCURACY = "val_accuracy"  # per epoch
    TEST_ACCURACY = "test_accuracy"
    TEST_LOSS = "test_loss"
    MODEL_VAL_ACCURACY = "model_val_accuracy"  # of the weights tested and saved: the objective
    BEST_VAL_ACCURACY = "best_val_accuracy"  # of the best epoch
    EPOCHS_RUN = "epochs_run"
    KEPT_EPOCH = "kept_epoch"  # 1-based: the epoch whose weights were kept
    TRAIN_SECONDS = "train_seconds"
    SETUP_SECONDS = "setup_seconds"
    WALL_SECONDS = "wall_seconds"  # as the study saw the trial: process, training, recording
    FIXED_SECONDS = "fixed_seconds"  # wall_seconds - train_seconds: the cost of a trial as such
    FINE_TUNE_FROM_EPOCH = "fine_tune_from_epoch"  # 1-based
    CLASS_ACCURACY = "test_class_accuracy/"  # + :func:`class_metric`: per-class test recall


def class_metric(index: int, name: str) -> str:
    """The metric name of one class's test accuracy (recall), by its output index.

    >>> class_metric(0, "daisy"), class_metric(3, "sun flower, bright")
    ('test_class_accuracy/0_daisy', 'test_class_accuracy/3_sun_flower__bright')
    """
    safe = re.sub(r"[^\w\-]", "_", name)
    return f"{MetricName.CLASS_ACCURACY}{index}_{safe}"


class ParamName:
    """Param names on a trial's run, beside the factors of the space (each under its own name)."""

    SEED = "seed"
    SAMPLER_SEED = "sampler_seed"  # tpe, random: the seed of the process's sampler that drew it
    CLASSES = "classes"  # the class names as a JSON list, in the order of the model's outputs
    CLASS_NAMES = "class_names"  # the same, comma-joined: read from older records only
    LAYOUT = "data_layout"
    PRECISION = "precision"
    FEATURE_BATCH_SIZE = "feature_batch_size"  # where a frozen backbone computes features


def class_names_of(params: Mapping[str, str]) -> list[str]:
    """A run's class names, in the order of the model's outputs, from its params.

    >>> class_names_of({"classes": '["a,b", "c"]', "class_names": "a,b,c"})
    ['a,b', 'c']
    >>> class_names_of({"class_names": "cats,dogs"})  # a run recorded before the JSON list
    ['cats', 'dogs']
    """
    if ParamName.CLASSES in params:
        return [str(name) for name in json.loads(params[ParamName.CLASSES])]
    return params[ParamName.CLASS_NAMES].split(",") if ParamName.CLASS_NAMES in params else []


class TagName:
    """Tag names on the study's and the trials' runs."""

    ROLE = "ablation.role"  # ROLE_STUDY or ROLE_TRIAL
    STUDY = "ablation.study"
    TRIAL = "ablation.trial"  # the Optuna trial number
    STATE = "ablation.state"  # a TrialState
    CACHED_FEATURES = "ablation.cached_features"  # splits through features computed once
    FEATURES_PER_EPOCH = "ablation.features_per_epoch"  # "true": augmented, computed per epoch
    THREADS = (
        "ablation.threads"  # the trial process's TensorFlow intra-/inter-op and tf.data threads
    )
    GPU = "ablation.gpu"  # the GPU the trial computed on: nvidia-smi's index, or "none"
    COLLAPSED = "ablation.collapsed"  # "true" or "false" (:mod:`ablation.tracking.predictions`)
    COLLAPSE_REASON = "ablation.collapse_reason"  # why, where COLLAPSED is "true"
    # On the study's run: what decides its results (:mod:`ablation.study.fingerprint`).
    SETTINGS = "ablation.settings"  # JSON, where it fits in a tag
    SETTINGS_DIGEST = "ablation.settings_digest"
    SEED_RULE = "ablation.seed_rule"  # adaptive seeds' stopping rule, JSON (study.rounds)
    ERROR = "error"
    PARENT = "mlflow.parentRunId"
    # On a trial's logged model and on a registered model version:
    CLASS_NAMES = "ablation.class_names"  # a JSON list, in output order
    SEED = "ablation.seed"
    CONFIGURATION = "ablation.configuration"  # the trial's label, e.g. "cnn+aug(0.2) s0"
    VAL_ACCURACY = "ablation.val_accuracy"  # of the saved model: what chose it
    TEST_ACCURACY = "ablation.test_accuracy"
    RUN = "ablation.run_id"


ROLE_STUDY = "study"
ROLE_TRIAL = "trial"

ARTIFACT_SWEEP = "sweep.yaml"
ARTIFACT_DECISIONS = "seed_decisions.json"  # adaptive seeds: each effect's, after each round
ARTIFACT_CURVES = "accuracy_curves.png"
ARTIFACT_MODEL = "model.keras"
ARTIFACT_REPORT_DIR = "report"
ARTIFACT_LOGGED_MODEL = "model"  # the trial's MLflow LoggedModel (Keras flavour), by name

# A trial's dataset inputs: the split (as Images names it) -> MLflow's dataset context.
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
DEFAULT_ALIAS = "champion"  # the alias `ablation.best --register` moves to its version
ARTIFACT_PRECISION_DIR = "precision_timing"  # the study run's precision: auto, one JSON per machine
ARTIFACT_FEATURE_BATCH_DIR = "feature_batch_timing"  # its feature_batch_size: auto, the same
ARTIFACT_CONFUSION = "confusion_matrix.json"  # test set: class_names, counts[true][predicted]
ARTIFACT_CONFUSION_PLOT = "confusion_matrix.png"
ARTIFACT_PREDICTIONS = "test_predictions.csv"  # one row per test image (tracking.predictions)


@dataclass(frozen=True)
class TrialRecord:
    """One trial as MLflow recorded it: its configuration, seed, outcome and curve."""

    run_id: str
    params: Params
    seed: int
    state: TrialState
    number: int | None = None  # the Optuna trial number
    best_val_accuracy: float | None = None  # of the best epoch
    model_val_accuracy: float | None = None  # of the weights tested and saved
    test_accuracy: float | None = None
    epochs_run: int = 0
    seconds: float = 0.0
    val_curve: tuple[float, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)  # every metric's last value
    collapse_reason: str | None = None  # why the trained network counts as collapsed

    @property
    def collapsed(self) -> bool:
        """Whether the network predicts (nearly) one class, or learned nothing."""
        return self.collapse_reason is not None
