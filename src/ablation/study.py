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
    >>> sweep = load_sweep("sweeps/blog.yaml", ["data.source=../shared/data/cats_and_dogs",
    ...                                         "data.limit_per_class=20", "train.epochs=1"])
    >>> summary = run_sweep(sweep)
    >>> len(summary.outcomes), summary.outcomes[0].label
    (12, 'cnn s0')
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from ablation import space as search_space
from ablation.config import Choices, Sweep
from ablation.errors import UserError, first_line
from ablation.models import dtype_policy, mobilenet_v2_base, weights_fingerprint
from ablation.space import Params
from ablation.storage import ask, fail_stale_trials, lock
from ablation.tracking import TRIAL_TAG
from ablation.trial import TrialReport

if TYPE_CHECKING:
    import optuna

    from ablation.data import Images
    from ablation.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrialOutcome(TrialReport):
    """What one trial of this invocation came to: its report, and which trial it was."""

    number: int
    label: str
    params: Params
    seed: int
    run_id: str | None = None
    wall_seconds: float = 0.0  # as the study saw it: process start, training, recording


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
            f"{_epochs(sweep)}{_precision(sweep)}"
        ]
        for params in configurations:
            blog = search_space.blog_name(params)
            suffix = f"  [{blog}]" if blog else ""
            lines.append(f"  {search_space.label(params):<32} {_format_params(params)}{suffix}")
        return lines
    lines = [
        f"study {study.name!r}: {study.trials} trial(s) sampled by {study.sampler} over "
        f"{', '.join(sweep.space)}; seeds {study.seeds}; {_epochs(sweep)}{_precision(sweep)}"
    ]
    for params in study.try_first:
        lines.append(f"  first: {search_space.label(params):<32} {_format_params(params)}")
    return lines


def _epochs(sweep: Sweep) -> str:
    """How long each trial trains, e.g. ``20 epoch(s) each``."""
    text = f"{sweep.train.epochs} epoch(s) each"
    stops = []
    if sweep.train.patience is not None:
        stops.append(f"early stopping after {sweep.train.patience} without progress")
    if sweep.study.pruner != "none":
        stops.append(f"{sweep.study.pruner} pruning from epoch {sweep.study.prune_after + 1}")
    return f"{text} at most ({'; '.join(stops)})" if stops else text


def _precision(sweep: Sweep) -> str:
    """Each backbone's dtype policy where it is not plain float32, e.g. ``; cnn in
    mixed_bfloat16 (precision: auto)``."""
    if sweep.train.precision == "float32":
        return ""
    searched = sweep.space.get("backbone")
    backbones = searched.choice if searched and searched.choice else [Choices().backbone]
    policies = ", ".join(
        f"{backbone} in {dtype_policy(sweep.train, Choices.model_validate({'backbone': backbone}))}"
        for backbone in backbones
    )
    auto = " (precision: auto)" if sweep.train.precision == "auto" else ""
    return f"; {policies}{auto}"


def _format_params(params: Params) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def open_study(sweep: Sweep) -> optuna.Study:
    """Create or load the sweep's study in its persistent storage."""
    import optuna

    from ablation.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = sweep.study.seeds[0]
    sampler: optuna.samplers.BaseSampler
    if sweep.study.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:  # a grid's points are all enqueued, so its sampler never picks a value
        sampler = optuna.samplers.RandomSampler(seed=seed)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=sweep.study.prune_after)
        if sweep.study.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    storage = open_storage(
        sweep.study.storage_url(),
        heartbeat_seconds=sweep.study.heartbeat_seconds,
        grace_seconds=sweep.study.grace_seconds,
    )
    try:
        return optuna.create_study(
            study_name=sweep.study.name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except Exception as exc:  # a database that refuses the schema, a broken journal
        raise UserError(
            f"study.storage: cannot open study {sweep.study.name!r} in "
            f"{sweep.study.storage_url()!r} ({first_line(exc)})"
        ) from None


def run_sweep(sweep: Sweep, reporter: Reporter | None = None, *, workers: int = 1) -> StudySummary:
    """Run (or continue) the sweep's study and record every trial in MLflow.

    Args:
        sweep: The validated sweep.
        reporter: Receives progress.
        workers: Trials run side by side in this invocation, each in its own process.

    Raises:
        UserError: Bad data, weights, storage or tracking URI; found before any training.
        KeyboardInterrupt: After recording the interrupted trial as failed.
    """

    from ablation.data import load_images, write_images
    from ablation.tracking import Tracker

    if workers > 1 and sweep.study.isolation != "process":
        raise UserError("--workers above 1 needs study.isolation: process")
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
        "patience": sweep.train.patience or "off",
        "image_size": "x".join(map(str, sweep.data.image_size)),
        "data_source": sweep.data.source,
        "data_sha256": images.fingerprint,
        "n_train": len(images.y_train),
        "n_val": len(images.y_val),
        "n_test": len(images.y_test),
        "class_names": ",".join(images.class_names),
    }
    weights: dict[str, Any] = {}
    if uses_mobilenet:
        weights = {
            "weights": sweep.model.weights,
            "alpha": sweep.model.alpha,
            "weights_sha256": weights_fingerprint(sweep.data.image_size, sweep.model),
        }
    sweep_yaml = yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False)
    # Under the study's lock, so that processes joining at once (several machines)
    # share one parent run and never enqueue a grid point twice.
    with lock(sweep.study.storage_url(), f"study-{sweep.study.name}"):
        parent_id = tracker.study_run(
            sweep.study.name,
            {"sampler": sweep.study.sampler, "seeds": sweep.study.seeds, **identity, **weights},
            sweep_yaml,
        )
        recovered = recover_stale_trials(study, tracker)
        if recovered:
            log.warning(
                "%d trial(s) of an earlier run were interrupted; they will run again", recovered
            )
        finished = _finished_or_running(study)
        if sweep.study.sampler == "grid":
            points = grid_points(sweep)
            for params, seed in points:
                if point_key(params, seed) not in finished:
                    study.enqueue_trial(
                        params, user_attrs={"seed": seed, "point": point_key(params, seed)}
                    )
            planned = len(points)
            to_run = len(_waiting(study))  # the new points and any an earlier run left waiting
        else:
            planned = sweep.study.trials or 0
            to_run = max(planned - len(finished), 0)
            seed = sweep.study.seeds[0]
            for params in sweep.study.try_first[:to_run]:
                if point_key(params, seed) not in finished:
                    study.enqueue_trial(
                        params, user_attrs={"seed": seed, "point": point_key(params, seed)}
                    )
    summary = StudySummary(sweep.study.name, parent_id, planned, planned - to_run)

    images_file = None
    if sweep.study.isolation == "process":
        images_file = images.file
        if images_file is None:  # no cache folder: a private copy for the trial processes
            images_file = Path(tempfile.mkdtemp(prefix="ablation-")) / "images.npz"
            write_images(images, images_file)
    context = _Context(
        sweep, images, images_file, tracker, parent_id, identity, weights, reporter, to_run
    )
    status = "FINISHED"
    try:
        if workers == 1:
            _work(study, context, summary)
        else:
            _work_in_threads(study, context, summary, workers)
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
    images_file: Path | None  # set when trials run in their own process: the decoded images
    tracker: Tracker
    parent_id: str
    identity: dict[str, Any]  # params every trial run records
    weights: dict[str, Any]  # params of the trials with a pretrained backbone
    reporter: Reporter
    total: int  # trials this invocation means to run
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _work(study: optuna.Study, context: _Context, summary: StudySummary) -> None:
    """Run trials one after another until the study has none left for this invocation."""
    while not context.stop.is_set():
        trial = _next_trial(study, context)
        if trial is None:
            return
        index, trial = trial
        outcome = _run_trial(study, trial, context, index)
        with context.lock:
            summary.outcomes.append(outcome)
            context.reporter.trial_ended(outcome, summary.best)


def _work_in_threads(
    study: optuna.Study, context: _Context, summary: StudySummary, workers: int
) -> None:
    """``workers`` loops side by side; each trial still runs in its own process.

    Ctrl-C (in the main thread) stops every worker's trial and records it as KILLED.
    """
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _work(study, context, summary)
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)
            context.stop.set()

    threads = [threading.Thread(target=work, name=f"worker-{n}") for n in range(workers)]
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


def _next_trial(study: optuna.Study, context: _Context) -> tuple[int, optuna.Trial] | None:
    """The next trial to run and its index in this invocation, or None when done."""
    import optuna

    with context.lock:
        if context.started >= context.total:
            return None
        grid = context.sweep.study.sampler == "grid"
        if grid and not _waiting(study):
            return None
        trial = ask(study)
        if grid and "point" not in trial.user_attrs:
            # Another process took the last grid point between our look and our ask:
            # this trial has no point to run. It ends at once, with no MLflow run.
            trial.set_user_attr("error", "no grid point left to run")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        context.started += 1
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        return context.started - 1, trial


def _run_trial(
    study: optuna.Study, trial: optuna.Trial, context: _Context, index: int
) -> TrialOutcome:
    """Open the trial's MLflow run, train it (isolated or not), tell Optuna how it ended."""
    import optuna

    from ablation.storage import heartbeat
    from ablation.trial import TrialSpec, run_trial, run_trial_isolated

    sweep, tracker, reporter = context.sweep, context.tracker, context.reporter
    params = search_space.suggest(trial, sweep.space)
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = sweep.study.seeds[trial.number % len(sweep.study.seeds)]
        trial.set_user_attr("seed", seed)
    label = search_space.label(params, seed)
    choices = search_space.choices(params)
    reporter.trial_started(index, context.total, label)
    run_id: str | None = None
    started = time.perf_counter()
    try:
        with heartbeat(study, trial._trial_id):
            run_id = tracker.start_trial(
                context.parent_id,
                study_name=sweep.study.name,
                number=trial.number,
                name=label,
                params={  # the trial's factors last: they override the train section's value
                    **context.identity,
                    **(context.weights if choices.backbone == "mobilenet_v2" else {}),
                    "precision": dtype_policy(sweep.train, choices),
                    **params,
                    "seed": seed,
                },
            )
            trial.set_user_attr("mlflow_run_id", run_id)
            spec = TrialSpec(sweep, trial._trial_id, trial.number, params, seed, label, run_id)

            epochs = sweep.train.epochs
            if choices.fine_tunes:
                epochs += choices.fine_tune_epochs

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                reporter.epoch_ended(label, epoch, epochs, metrics)

            if context.images_file is not None:
                report = run_trial_isolated(spec, context.images_file, on_epoch, context.stop)
            else:
                report = run_trial(spec, context.images, on_epoch)
    except BaseException as exc:  # interrupted, or the store failed: the trial did not happen
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if run_id is not None:
            tracker.fail_trial(run_id, f"interrupted ({type(exc).__name__})", status="KILLED")
        raise

    outcome = TrialOutcome(
        **asdict(report),
        number=trial.number,
        label=label,
        params=params,
        seed=seed,
        run_id=run_id,
        wall_seconds=time.perf_counter() - started,
    )
    if report.state == "COMPLETE":
        trial.set_user_attr("test_accuracy", report.test_accuracy)
        study.tell(trial, report.val_accuracy)
    elif report.state == "PRUNED":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        log.warning("trial %d (%s) failed: %s", trial.number, label, report.error)
        trial.set_user_attr("error", (report.error or "")[:1000])
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return outcome


def recover_stale_trials(study: optuna.Study, tracker: Tracker) -> int:
    """Fail the trials whose process on this machine has died, and end their MLflow runs.

    A study process that was killed (SIGKILL, power loss) leaves its trial
    RUNNING in Optuna and its run RUNNING in MLflow. Such a trial is failed, so
    that its grid point is run again; its run ends as KILLED. MLflow trial runs
    left RUNNING whose Optuna trial is no longer running are ended the same way.

    Returns:
        How many Optuna trials were failed.
    """
    import optuna

    running_state = (optuna.trial.TrialState.RUNNING,)
    before = {t.number for t in study.get_trials(deepcopy=False, states=running_state)}
    fail_stale_trials(study)  # trials whose heartbeat stopped, on any machine
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=running_state):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") == host and not _alive(int(worker.get("pid", 0))):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    still_running = {t.number for t in study.get_trials(deepcopy=False, states=running_state)}
    _, runs = tracker.study_runs(study.study_name)
    for run in runs:
        number = run.data.tags.get(TRIAL_TAG)
        if run.info.status == "RUNNING" and number is not None and int(number) not in still_running:
            tracker.fail_trial(
                run.info.run_id, "interrupted: the process running it died", status="KILLED"
            )
    return len(before - still_running)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def _finished_or_running(study: optuna.Study) -> set[str]:
    """Grid keys (or trial numbers) of trials that need no new run."""
    from optuna.trial import TrialState

    keep = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return {
        t.user_attrs.get("point", str(t.number))
        for t in study.get_trials(deepcopy=False, states=keep)
    }


def _waiting(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.WAITING,))


def _uses_mobilenet(sweep: Sweep) -> bool:
    if "backbone" in sweep.space:
        return "mobilenet_v2" in (sweep.space["backbone"].choice or [])
    return search_space.choices({}).backbone == "mobilenet_v2"


def _check_weights(sweep: Sweep) -> None:
    """Load the backbone once before any trial, so a weights problem is one clear line."""
    import keras

    mobilenet_v2_base(sweep.data.image_size, sweep.model)
    keras.backend.clear_session()
