"""Running a study's trials: one after another, or ``--workers N`` side by side.

Each worker loop asks Optuna for the next trial, opens its MLflow run, trains it
(in its own process, started while the previous trial trained,
:mod:`ablation.study.process`; or in this one) and tells Optuna how it ended.
Each worker's processes compute with ``threads`` threads (:mod:`ablation.autotune.cores`)
on its GPU, if the machine has any (:mod:`ablation.autotune.gpus`: worker ``w`` on the
``w % G``-th; a trial in this process on worker 0's, which this process was given).
Ctrl-C (or another worker's failure) stops every worker; the running trials are
recorded as KILLED and run again on the next invocation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ablation.autotune.gpus import NO_GPU
from ablation.data.images import Images
from ablation.model.features import plan_features
from ablation.study.process import SpareProcesses
from ablation.study.rounds import ATTR_COLLAPSED, ATTR_CORRECT, ATTR_TEST_ACCURACY
from ablation.study.storage import OptunaStudy, ask, heartbeat
from ablation.study.trial import TrialOutcome, TrialSpec, run_trial
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Params
from ablation.tracking.records import ParamName, TrialState
from ablation.tracking.tracker import Tracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


@dataclass
class StudySummary:
    study_name: str
    parent_run_id: str
    planned: int
    already_done: int
    outcomes: list[TrialOutcome] = field(default_factory=list)

    @property
    def best(self) -> TrialOutcome | None:
        """The best trial of this invocation by validation accuracy (of its saved model)."""
        done = [
            o
            for o in self.outcomes
            if o.state == TrialState.COMPLETE and o.model_val_accuracy is not None
        ]
        return max(done, key=lambda o: o.model_val_accuracy or 0.0, default=None)


class Reporter(Protocol):
    """Receives progress; the command line prints it, tests may collect it."""

    def trial_started(self, index: int, total: int, label: str) -> None: ...

    def epoch_ended(
        self, label: str, epoch: int, epochs: int, metrics: dict[str, float]
    ) -> None: ...

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None: ...


class SilentReporter:
    def trial_started(self, index: int, total: int, label: str) -> None:
        pass

    def epoch_ended(self, label: str, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        pass

    def trial_ended(self, outcome: TrialOutcome, best: TrialOutcome | None) -> None:
        pass


@dataclass(frozen=True)
class RecordedParams:
    """The params a trial's run records beside its factors: the study's identity."""

    every_trial: dict[str, Any]  # training setting and data
    pretrained: dict[str, Any]  # the weights a pretrained backbone stands on


@dataclass(frozen=True)
class StudyRecords:
    """Where an invocation records its trials: the study's MLflow run and Optuna study."""

    tracker: Tracker
    parent_id: str  # the study's MLflow run
    optuna: OptunaStudy


@dataclass
class Context:
    """What every trial of one invocation shares, and how far it has come."""

    sweep: Sweep
    images: Images
    images_folder: Path | None  # set when trials run in their own process: the decoded images
    records: StudyRecords
    params: RecordedParams
    reporter: Reporter
    total: int  # trials this invocation means to run
    spares: list[SpareProcesses] = field(default_factory=list)  # per worker, when isolated
    gpu: str = NO_GPU  # this process's GPU (worker 0's), for trials run in it: its tag
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def work(study: optuna.Study, context: Context, summary: StudySummary, worker: int = 0) -> None:
    """Run trials one after another until the study has none left for this invocation."""
    spares = context.spares[worker] if context.spares else None
    try:
        while not context.stop.is_set():
            next_trial = _next_trial(study, context)
            if next_trial is None:
                return
            index, trial = next_trial
            outcome = _run_trial(study, trial, context, index, spares)
            with context.lock:
                summary.outcomes.append(outcome)
                context.reporter.trial_ended(outcome, summary.best)
    finally:
        if spares is not None:
            spares.close()


def work_in_threads(
    study: optuna.Study, context: Context, summary: StudySummary, workers: int
) -> None:
    """``workers`` loops side by side; each trial still runs in its own process.

    Ctrl-C (in the main thread) stops every worker's trial and records it as KILLED.
    """
    errors: list[BaseException] = []

    def loop(worker: int) -> None:
        try:
            work(study, context, summary, worker)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)
            context.stop.set()

    threads = [threading.Thread(target=loop, args=(n,), name=f"worker-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        context.stop.set()
        for thread in threads:
            thread.join()
        raise
    if errors:
        raise errors[0]


def _next_trial(study: optuna.Study, context: Context) -> tuple[int, optuna.Trial] | None:
    """The next trial to run and its index in this invocation, or None when done."""
    import optuna

    with context.lock:
        if context.started >= context.total:
            return None
        grid = context.sweep.study.sampler == "grid"
        if grid and not waiting_trials(study):
            return None
        trial = ask(study)
        if grid and "point" not in trial.user_attrs:
            # Another process took the last grid point between our look and our ask:
            # this trial has no point to run. It ends at once, with no MLflow run.
            trial.set_user_attr("error", "no grid point left to run")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        context.started += 1
        context.records.optuna.record_worker(trial)
        return context.started - 1, trial


def _run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    context: Context,
    index: int,
    spares: SpareProcesses | None,
) -> TrialOutcome:
    """Open the trial's MLflow run, train it (isolated or not), tell Optuna how it ended."""
    import optuna

    sweep, records = context.sweep, context.records
    params = space.suggest(trial, sweep.space)
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seeds = sweep.study.first_seeds
        seed = seeds[trial.number % len(seeds)]
        trial.set_user_attr("seed", seed)
    label = space.label(params, seed)
    context.reporter.trial_started(index, context.total, label)
    run_id: str | None = None
    started = time.perf_counter()
    try:
        trial_id = records.optuna.trial_id(trial.number)
        with heartbeat(records.optuna.storage, trial_id, trial.number):
            run_id = records.tracker.start_trial(
                records.parent_id,
                study_name=sweep.study.name,
                number=trial.number,
                name=label,
                params=_trial_params(context, params, seed),
            )
            trial.set_user_attr("mlflow_run_id", run_id)
            spec = TrialSpec(sweep, trial_id, trial.number, params, seed, label, run_id)
            outcome = _train_trial(spec, context, spares).timed(time.perf_counter() - started)
    except BaseException as exc:  # interrupted, or the store failed: the trial did not happen
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if run_id is not None:
            records.tracker.fail_trial(run_id, f"interrupted ({type(exc).__name__})", killed=True)
        raise
    records.tracker.log_wall_time(run_id, outcome.wall_seconds, outcome.fixed_seconds)
    _tell(study, trial, outcome)
    return outcome


def _trial_params(context: Context, params: Params, seed: int) -> dict[str, Any]:
    """A trial run's params: the study's identity, then the trial's factors, which
    override the train section's value (``learning_rate``); with a guided sampler, the
    seed of the sampler of the process that asked for the trial."""
    configuration = space.configuration(params)
    plan = plan_features(configuration, context.sweep.train)
    computes_features = bool(plan.splits) or plan.train_per_epoch
    batch = context.sweep.feature_batch_size(configuration) if computes_features else None
    sampler_seed = context.records.optuna.sampler_seed
    return {
        **context.params.every_trial,
        **(context.params.pretrained if configuration.pretrained else {}),
        ParamName.PRECISION: context.sweep.train.dtype_policy(configuration),
        **({ParamName.FEATURE_BATCH_SIZE: batch} if batch is not None else {}),
        **params,
        ParamName.SEED: seed,
        **({ParamName.SAMPLER_SEED: sampler_seed} if sampler_seed is not None else {}),
    }


def _train_trial(spec: TrialSpec, context: Context, spares: SpareProcesses | None) -> TrialOutcome:
    """Run the trial in its own process or in this one, passing its epochs to the reporter."""
    epochs = spec.sweep.train.epochs
    configuration = space.configuration(spec.params)
    if configuration.fine_tunes:
        epochs += configuration.fine_tune_epochs

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        context.reporter.epoch_ended(spec.label, epoch, epochs, metrics)

    if spares is not None and context.images_folder is not None:
        with context.lock:
            more_to_come = context.started < context.total
        process = spares.take(more_to_come=more_to_come)
        return process.run(spec, context.images_folder, on_epoch, context.stop)
    context.records.tracker.tag_gpu(spec.run_id, context.gpu)
    return run_trial(spec, context.images, on_epoch)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Tell Optuna how the trial ended."""
    import optuna

    if outcome.state == TrialState.COMPLETE:
        trial.set_user_attr(ATTR_TEST_ACCURACY, outcome.test_accuracy)
        trial.set_user_attr(ATTR_COLLAPSED, outcome.collapsed)
        if outcome.test_correct is not None:  # what adaptive seeds decide on
            trial.set_user_attr(ATTR_CORRECT, outcome.test_correct)
        study.tell(trial, outcome.model_val_accuracy)
    elif outcome.state == TrialState.PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        log.warning("trial %d (%s) failed: %s", trial.number, outcome.label, outcome.error)
        trial.set_user_attr("error", (outcome.error or "")[:1000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)


def waiting_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState as OptunaState

    return study.get_trials(deepcopy=False, states=(OptunaState.WAITING,))
