"""The Optuna study: which trials to run, running them, recording them in MLflow.

With ``sampler: grid`` every configuration of the space is run once per seed.
The grid is enumerated here and each missing point is enqueued in the study,
so a re-run of the same sweep only runs what is not finished yet (and re-runs
what failed); grid points are never duplicated. With ``tpe`` or ``random``,
the study runs until it holds ``study.trials`` finished trials.

The objective is validation accuracy; test accuracy is recorded for every trial
and never used for selection.

Example:
    >>> from ablation import load_sweep, run_sweep
    >>> summary = run_sweep(load_sweep("sweeps/blog.yaml", ["train.epochs=1"]))
    >>> summary.best.label
    'mobilenet_v2+aug(0.2)+prep s0'
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from ablation import space as search_space
from ablation.config import Sweep
from ablation.errors import UserError, first_line
from ablation.space import Params

if TYPE_CHECKING:
    import optuna

    from ablation.data import Images
    from ablation.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    """What one trial of this invocation came to."""

    number: int
    label: str
    params: Params
    seed: int
    state: str  # COMPLETE, PRUNED or FAIL
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    epochs_run: int = 0
    seconds: float = 0.0
    run_id: str | None = None
    error: str | None = None


@dataclass
class StudySummary:
    study_name: str
    parent_run_id: str
    planned: int
    already_done: int
    outcomes: list[TrialOutcome] = field(default_factory=list)

    @property
    def best(self) -> TrialOutcome | None:
        """The best trial of this invocation by validation accuracy."""
        done = [o for o in self.outcomes if o.state == "COMPLETE" and o.val_accuracy is not None]
        return max(done, key=lambda o: o.val_accuracy or 0.0, default=None)


class Reporter(Protocol):
    """Receives progress; the command line prints it, tests may collect it."""

    def trial_started(self, index: int, total: int, label: str) -> None: ...

    def epoch_ended(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None: ...

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None: ...


class SilentReporter:
    def trial_started(self, index: int, total: int, label: str) -> None:
        pass

    def epoch_ended(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        pass

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None:
        pass


def grid_points(sweep: Sweep) -> list[tuple[Params, int]]:
    """Every (configuration, seed) pair a grid study runs, each once."""
    return [
        (params, seed) for params in search_space.grid(sweep.space) for seed in sweep.study.seeds
    ]


def point_key(params: Params, seed: int) -> str:
    return json.dumps({"params": params, "seed": seed}, sort_keys=True)


def plan(sweep: Sweep) -> list[str]:
    """Human-readable lines saying what the sweep will run (for ``--dry-run``)."""
    study = sweep.study
    if study.sampler == "grid":
        configurations = search_space.grid(sweep.space)
        lines = [
            f"study {study.name!r}: grid of {len(configurations)} configuration(s) x "
            f"{len(study.seeds)} seed(s) = {len(configurations) * len(study.seeds)} trial(s), "
            f"{sweep.train.epochs} epoch(s) each"
        ]
        for params in configurations:
            blog = search_space.blog_name(params)
            suffix = f"  [{blog}]" if blog else ""
            lines.append(f"  {search_space.label(params):<32} {_format_params(params)}{suffix}")
        return lines
    return [
        f"study {study.name!r}: {study.trials} trial(s) sampled by {study.sampler} over "
        f"{', '.join(sweep.space)}; seeds {study.seeds}; {sweep.train.epochs} epoch(s) each"
    ]


def _format_params(params: Params) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def open_study(sweep: Sweep) -> optuna.Study:
    """Create or load the sweep's study in its persistent storage."""
    from pathlib import Path

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = sweep.study.storage_url()
    seed = sweep.study.seeds[0]
    sampler: optuna.samplers.BaseSampler
    if sweep.study.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:  # a grid's points are all enqueued, so its sampler never picks a value
        sampler = optuna.samplers.RandomSampler(seed=seed)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner()
        if sweep.study.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.create_study(
            study_name=sweep.study.name,
            storage=url,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as exc:  # SQLAlchemy and Optuna raise many kinds for a bad URL
        raise UserError(
            f"study.storage: cannot open Optuna storage {url!r} ({first_line(exc)})"
        ) from None


def run_sweep(sweep: Sweep, reporter: Reporter | None = None) -> StudySummary:
    """Run (or continue) the sweep's study and record every trial in MLflow.

    Raises:
        UserError: Bad data, weights, storage or tracking URI; found before any training.
        KeyboardInterrupt: After recording the interrupted trial as failed.
    """

    from ablation.data import load_images
    from ablation.models import weights_fingerprint
    from ablation.tracking import Tracker

    reporter = reporter or SilentReporter()
    images = load_images(sweep.data)
    uses_mobilenet = _uses_mobilenet(sweep)
    if uses_mobilenet:
        _check_weights(sweep)
    study = open_study(sweep)
    tracker = Tracker(sweep.tracking, sweep.experiment_name)

    identity: dict[str, Any] = {
        "epochs": sweep.train.epochs,
        "batch_size": sweep.data.batch_size,
        "optimizer": sweep.train.optimizer,
        "learning_rate": sweep.train.learning_rate,
        "image_size": "x".join(map(str, sweep.data.image_size)),
        "data_source": sweep.data.source,
        "data_sha256": images.fingerprint,
        "n_train": len(images.y_train),
        "n_val": len(images.y_val),
        "n_test": len(images.y_test),
    }
    weights: dict[str, Any] = {}
    if uses_mobilenet:
        weights = {
            "weights": sweep.model.weights,
            "alpha": sweep.model.alpha,
            "weights_sha256": weights_fingerprint(sweep.data.image_size, sweep.model),
        }
    sweep_yaml = yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False)
    parent_id = tracker.study_run(
        sweep.study.name,
        {"sampler": sweep.study.sampler, "seeds": sweep.study.seeds, **identity, **weights},
        sweep_yaml,
    )

    finished = _finished_or_running(study)
    if sweep.study.sampler == "grid":
        points = grid_points(sweep)
        missing = [(p, s) for p, s in points if point_key(p, s) not in finished]
        for params, seed in missing:
            study.enqueue_trial(params, user_attrs={"seed": seed, "point": point_key(params, seed)})
        planned, to_run = len(points), len(missing)
    else:
        planned = sweep.study.trials or 0
        to_run = max(planned - len(finished), 0)
    summary = StudySummary(sweep.study.name, parent_id, planned, planned - to_run)

    context = _Context(sweep, images, tracker, parent_id, identity, weights, reporter)
    status = "FINISHED"
    try:
        for index in range(to_run):
            if sweep.study.sampler == "grid" and not _has_waiting(study):
                break
            trial = study.ask()
            outcome = _run_trial(trial, context, index, to_run)
            summary.outcomes.append(outcome)
            reporter.trial_ended(outcome, summary.best)
    except BaseException:
        status = "KILLED"
        raise
    finally:
        tracker.end_study(parent_id, status)
    return summary


@dataclass
class _Context:
    """What every trial of one invocation shares."""

    sweep: Sweep
    images: Images
    tracker: Tracker
    parent_id: str
    identity: dict[str, Any]  # params every trial run records
    weights: dict[str, Any]  # params of the trials with a pretrained backbone
    reporter: Reporter


def _run_trial(trial: optuna.Trial, context: _Context, index: int, total: int) -> TrialOutcome:
    import optuna

    from ablation.plots import accuracy_curves
    from ablation.trial import train

    sweep, tracker, reporter = context.sweep, context.tracker, context.reporter
    params = search_space.suggest(trial, sweep.space)
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = sweep.study.seeds[trial.number % len(sweep.study.seeds)]
        trial.set_user_attr("seed", seed)
    label = search_space.label(params, seed)
    outcome = TrialOutcome(trial.number, label, params, seed, state="FAIL")
    choices = search_space.choices(params)
    reporter.trial_started(index, total, label)
    run_id = tracker.start_trial(
        context.parent_id,
        study_name=sweep.study.name,
        number=trial.number,
        name=label,
        params={
            **params,
            "seed": seed,
            **context.identity,
            **(context.weights if choices.backbone == "mobilenet_v2" else {}),
        },
    )
    outcome.run_id = run_id
    trial.set_user_attr("mlflow_run_id", run_id)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_epoch(run_id, epoch, metrics)
        reporter.epoch_ended(epoch, sweep.train.epochs, metrics)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metric at epoch {epoch + 1}: {metrics}")
        trial.report(metrics["val_accuracy"], epoch)
        outcome.epochs_run = epoch + 1
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

    study = trial.study
    try:
        result = train(choices, seed=seed, sweep=sweep, images=context.images, on_epoch=on_epoch)
    except optuna.TrialPruned:
        outcome.state = "PRUNED"
        tracker.finish_trial(run_id, metrics={"epochs_run": outcome.epochs_run}, state="PRUNED")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return outcome
    except (KeyboardInterrupt, UserError) as exc:
        tracker.fail_trial(run_id, f"{type(exc).__name__}: {exc}", status="KILLED")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    except Exception as exc:  # one bad trial must not end the study
        outcome.error = f"{type(exc).__name__}: {exc}"
        log.warning("trial %d (%s) failed: %s", trial.number, label, outcome.error)
        log.debug("%s", traceback.format_exc())
        tracker.fail_trial(run_id, outcome.error + "\n" + traceback.format_exc())
        trial.set_user_attr("error", outcome.error[:1000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return outcome

    outcome.state = "COMPLETE"
    outcome.val_accuracy = result.val_accuracy
    outcome.test_accuracy = result.test_accuracy
    outcome.epochs_run = result.epochs_run
    outcome.seconds = result.seconds
    trial.set_user_attr("test_accuracy", result.test_accuracy)
    tracker.finish_trial(
        run_id,
        metrics={
            "test_accuracy": result.test_accuracy,
            "test_loss": result.test_loss,
            "final_val_accuracy": result.val_accuracy,
            "best_val_accuracy": max(result.history["val_accuracy"]),
            "epochs_run": result.epochs_run,
            "train_seconds": result.seconds,
        },
        figure=accuracy_curves(result.history, label),
        model=result.model,
    )
    study.tell(trial, result.val_accuracy)
    return outcome


def _finished_or_running(study: optuna.Study) -> set[str]:
    """Grid keys (or trial numbers) of trials that need no new run."""
    from optuna.trial import TrialState

    keep = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return {
        t.user_attrs.get("point", str(t.number))
        for t in study.get_trials(deepcopy=False, states=keep)
    }


def _has_waiting(study: optuna.Study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _uses_mobilenet(sweep: Sweep) -> bool:
    if "backbone" in sweep.space:
        return "mobilenet_v2" in sweep.space["backbone"].choice
    return search_space.choices({}).backbone == "mobilenet_v2"


def _check_weights(sweep: Sweep) -> None:
    """Load the backbone once before any trial, so a weights problem is one clear line."""
    import keras

    from ablation.models import mobilenet_v2_base

    mobilenet_v2_base(sweep.data.image_size, sweep.model)
    keras.backend.clear_session()
