"""The Optuna study: which trials to run, running them, recording them in MLflow.

With ``sampler: grid`` every configuration of the space is run once per seed.
The grid is enumerated here and each missing point is enqueued in the study,
so a re-run of the same sweep only runs what is not finished yet (and re-runs
what failed); grid points are never duplicated. With ``tpe`` or ``random``,
the study runs until it holds ``study.trials`` finished trials.

On a machine with GPUs the workers share them (:mod:`ablation.autotune.gpus`): this
process takes worker 0's GPU environment (memory growth, ``CUDA_VISIBLE_DEVICES``) for
the time of the study, before it decodes, times or trains anything, and each worker's
trial processes start with their own.

The objective is validation accuracy; test accuracy is recorded for every trial
and never used for selection.

Example::

    from ablation import load_sweep, run_sweep
    sweep = load_sweep("sweeps/blog.yaml", ["data.source=../shared/data/cats_and_dogs",
                                            "data.limit_per_class=20", "train.epochs=1"])
    summary = run_sweep(sweep)
    print(len(summary.outcomes), summary.outcomes[0].label)   # 12 cnn s0
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ablation.autotune import feature_batch
from ablation.autotune.cores import share_of_cores
from ablation.autotune.gpus import GpuPlan, applied, plan_gpus
from ablation.autotune.precision import resolve_auto
from ablation.autotune.timings import machine_key
from ablation.data.images import Images, load_images, write_images
from ablation.errors import UserError
from ablation.model.backbones import check_weights, weights_identity
from ablation.redaction import redact, redacted
from ablation.study.fingerprint import as_new_study, hold_settings, settings_tags, study_settings
from ablation.study.plan import grid_points
from ablation.study.process import SpareProcesses
from ablation.study.rounds import (
    decisions_record,
    enqueue_points,
    finished_or_running,
    next_round,
    recorded_points,
    rule_tags,
    study_decisions,
    unfinished_points,
    wait_for_round,
)
from ablation.study.storage import (
    fail_dead_trials,
    lock,
    open_study,
)
from ablation.study.workers import (
    Context,
    RecordedParams,
    Reporter,
    SilentReporter,
    StudyRecords,
    StudySummary,
    waiting_trials,
    work,
    work_in_threads,
)
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.tracking.figures import data_figures, write_figures
from ablation.tracking.records import (
    ARTIFACT_DECISIONS,
    ARTIFACT_FEATURE_BATCH_DIR,
    ARTIFACT_PRECISION_DIR,
    ParamName,
)
from ablation.tracking.tracker import Tracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def sweep_yaml(sweep: Sweep) -> str:
    """The resolved sweep as YAML (the study run's ``sweep.yaml``), every password redacted.

    >>> from ablation.sweep.config import load_sweep
    >>> sweep = load_sweep("sweeps/blog.yaml", ["study.storage=postgresql://u:pw@db/optuna"])
    >>> [line for line in sweep_yaml(sweep).splitlines() if "storage:" in line]
    ['  storage: postgresql://u:***@db/optuna']
    """
    return yaml.safe_dump(redacted(sweep.model_dump(mode="json")), sort_keys=False)


def run_sweep(
    sweep: Sweep,
    reporter: Reporter | None = None,
    *,
    workers: int = 1,
    threads: int | None = None,
    new_study: bool = False,
    gpus: GpuPlan | str | None = None,
) -> StudySummary:
    """Run (or continue) the sweep's study and record every trial in MLflow.

    Args:
        sweep: The validated sweep.
        reporter: Receives progress.
        workers: Trials side by side, each process with ``threads``
            (:mod:`ablation.autotune.cores`).
        new_study: Run under :func:`ablation.study.fingerprint.new_study_name` (the
            summary's ``study_name``), not ``study.name``.
        gpus: The GPUs the workers share: a plan, ``--gpus``'s text (``"0,2"``, ``"none"``)
            or None, every GPU found (:func:`ablation.autotune.gpus.plan_gpus`).

    Raises:
        UserError: Bad data, weights, storage or tracking URI, ``gpus``, or a study of this name
            recorded with other settings (:mod:`ablation.study.fingerprint`); found before
            any training.
        KeyboardInterrupt: After recording the interrupted trial as failed.
    """
    if workers > 1 and sweep.study.isolation != "process":
        raise UserError("--workers above 1 needs study.isolation: process")
    plan = gpus if isinstance(gpus, GpuPlan) else plan_gpus(gpus)
    spares: list[SpareProcesses] = []  # each worker's next trial process
    try:
        with applied(plan.environment(0)):  # before anything here touches TensorFlow
            return _run_sweep(
                sweep,
                reporter or SilentReporter(),
                workers,
                share_of_cores(workers, threads=threads),
                spares,
                new_study=new_study,
                gpus=plan,
            )
    finally:
        for spare in spares:
            spare.close()


def _run_sweep(
    sweep: Sweep,
    reporter: Reporter,
    workers: int,
    threads: int,
    spares: list[SpareProcesses],
    *,
    new_study: bool,
    gpus: GpuPlan,
) -> StudySummary:
    images = load_images(sweep.data)
    if space.uses_pretrained(sweep.space):
        check_weights(sweep)
    identity, weights = _identity(sweep, images), weights_identity(sweep)
    settings = study_settings(sweep, identity, weights)
    if new_study:
        sweep = as_new_study(sweep, settings)
    opened = open_study(sweep)
    study = opened.study
    tracker = Tracker(sweep.tracking, sweep.experiment_name)
    with lock(sweep.study.storage_url(), f"study-{sweep.study.name}"):
        hold_settings(study, tracker, settings)
    written = sweep  # as the user wrote it (precision: auto): the study run's sweep.yaml
    # From here on one policy and one feature batch size per backbone, for the trials
    # too (timed with no trial process yet to disturb the timing).
    sweep, precision = resolve_auto(sweep, threads=threads)
    sweep, batches = feature_batch.resolve_auto(sweep, threads=threads)
    if sweep.study.isolation == "process":  # each worker's first trial process gets ready now
        spares += [SpareProcesses(sweep, threads, gpus.placement(w)) for w in range(workers)]
    parent_id, planned, to_run = _start_study(
        study, tracker, sweep, sweep_yaml(written), {**identity, **weights}, settings
    )
    for spare in spares:
        spare.stores_ready()
    _attach_data_pictures(sweep, images, tracker, parent_id)
    _log_timings(
        tracker, parent_id, {ARTIFACT_PRECISION_DIR: precision, ARTIFACT_FEATURE_BATCH_DIR: batches}
    )
    summary = StudySummary(sweep.study.name, parent_id, planned, planned - to_run)
    context = Context(
        sweep=sweep,
        images=images,
        images_folder=_images_folder(sweep, images),
        records=StudyRecords(tracker, parent_id, opened),
        params=RecordedParams(every_trial=identity, pretrained=weights),
        reporter=reporter,
        total=to_run,
        spares=spares,
        gpu=gpus.tag(0),
    )
    interrupted = True
    try:
        _work(study, context, summary, workers)
        while _next_round(study, sweep, context, summary):
            _work(study, context, summary, workers)
        interrupted = False
    finally:
        tracker.end_study(parent_id, interrupted=interrupted)
    return summary


def _work(study: optuna.Study, context: Context, summary: StudySummary, workers: int) -> None:
    if workers == 1:
        work(study, context, summary)
    else:
        work_in_threads(study, context, summary, workers)


def _next_round(study: optuna.Study, sweep: Sweep, context: Context, summary: StudySummary) -> bool:
    """Adaptive seeds: once the round's trials have all ended (on every worker and machine),
    enqueue the next round if an effect is undecided; whether there is one to run.

    A round with a failed trial is not decided: the command exits 1, and running it again
    retries the trial and goes on.
    """
    if sweep.study.adaptive is None or context.stop.is_set():
        return False
    wait_for_round(study)
    with lock(sweep.study.storage_url(), f"study-{sweep.study.name}"):
        if unfinished_points(study):
            return False
        points = next_round(study, sweep)
        added = enqueue_points(study, points)
    found = study_decisions(study, sweep)
    records = context.records
    records.tracker.log_json(records.parent_id, decisions_record(found, study), ARTIFACT_DECISIONS)
    said = "; ".join(f"{d.effect.factor}={d.effect.level}: {d.describe()}" for d in found)
    log.info("adaptive seeds: %s", said)
    if not points:
        return False
    summary.planned += len(points)
    with context.lock:
        context.total += added
    return True


def _start_study(
    study: optuna.Study,
    tracker: Tracker,
    sweep: Sweep,
    written: str,
    params: dict[str, Any],
    settings: dict[str, Any],
) -> tuple[str, int, int]:
    """Find or create the study's parent run, recover dead trials and enqueue what is
    missing; the parent run's id, and how many trials are planned and to run.

    Under the study's lock, so that processes joining at once (several machines) share
    one parent run and never enqueue a grid point twice.
    """
    with lock(sweep.study.storage_url(), f"study-{sweep.study.name}"):
        parent_id = tracker.study_run(
            sweep.study.name,
            {"sampler": sweep.study.sampler, "seeds": sweep.study.seeds, **params},
            written,
            {**settings_tags(settings), **rule_tags(sweep)},
        )
        _recover_dead_trials(study, tracker)
        planned, to_run = _enqueue(study, sweep)
    return parent_id, planned, to_run


def _log_timings(
    tracker: Tracker, parent_id: str, timings: dict[str, dict[str, Any] | None]
) -> None:
    """The auto settings' timings on the study's run, one file per folder and machine."""
    for folder, timing in timings.items():
        if timing:
            tracker.log_json(parent_id, timing, f"{folder}/{machine_key(timing['machine'])}.json")


def _attach_data_pictures(sweep: Sweep, images: Images, tracker: Tracker, parent_id: str) -> None:
    """Draw the report's data pictures now, while the data is here, onto the study's run
    (under ``report/``): the report reads them from there, never the data."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker.attach_report(parent_id, write_figures(data_figures(sweep, images), Path(tmp)))


def _identity(sweep: Sweep, images: Images) -> dict[str, Any]:
    """The params every trial run of this sweep records: training setting and data."""
    return {
        "epochs": sweep.train.epochs,
        "batch_size": sweep.data.batch_size,
        "optimizer": sweep.train.optimizer,
        "learning_rate": sweep.train.learning_rate,
        "patience": sweep.train.patience or "off",
        "image_size": "x".join(map(str, sweep.data.image_size)),
        "data_source": redact(sweep.data.source),
        "data_sha256": images.fingerprint,
        "n_train": len(images.y_train),
        "n_val": len(images.y_val),
        "n_test": len(images.y_test),
        ParamName.CLASSES: json.dumps(images.class_names, ensure_ascii=False),
        ParamName.LAYOUT: images.layout,
    }


def _recover_dead_trials(study: optuna.Study, tracker: Tracker) -> None:
    """Fail the trials whose process died, so that they run again; end their MLflow runs."""
    failed, running = fail_dead_trials(study)
    tracker.end_orphaned_trials(study.study_name, running)
    if failed:
        log.warning("%d trial(s) of an earlier run were interrupted; they will run again", failed)


def _enqueue(study: optuna.Study, sweep: Sweep) -> tuple[int, int]:
    """Enqueue what this invocation should run; how many trials are planned and to run."""
    if sweep.study.sampler == "grid":
        points = grid_points(sweep)
        if sweep.study.adaptive is not None:  # and the later rounds' points run so far
            points += [p for p in recorded_points(study) if p not in points]
        enqueue_points(study, points)
        return len(points), len(waiting_trials(study))  # new points and any left waiting earlier
    planned = sweep.study.trials or 0
    to_run = max(planned - len(finished_or_running(study)), 0)
    first = sweep.study.first_seeds[0]
    enqueue_points(study, [(params, first) for params in sweep.study.try_first[:to_run]])
    return planned, to_run


def _images_folder(sweep: Sweep, images: Images) -> Path | None:
    """Where trial processes read the decoded images (None: trials run in this process)."""
    if sweep.study.isolation != "process":
        return None
    if images.folder is not None:
        return images.folder
    private = Path(tempfile.mkdtemp(prefix="ablation-"))  # no cache folder: a private copy
    atexit.register(shutil.rmtree, private, ignore_errors=True)
    write_images(images, private / "images")
    return private / "images"
