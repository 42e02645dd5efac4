"""MLflow records: one experiment per study, a parent run per study, a child run per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (never
the global active run), so trials running side by side cannot cross their
records; the client and the record layout (:mod:`ablation.tracking.records`) stay in here.

A trial's run holds its factors and identity (seed, epochs, dataset and weights
hashes) as params, the per-epoch ``accuracy``, ``loss``, ``val_accuracy``,
``val_loss`` (``step`` = epoch), the final ``test_accuracy``/``test_loss`` and per
class ``test_class_accuracy/<index>_<class>``, the artifacts ``accuracy_curves.png``,
``model.keras`` and the test set's ``confusion_matrix.json``/``.png``, and MLflow's
own records (:mod:`ablation.tracking.mlflow_objects`): the model as a LoggedModel, the splits as
dataset inputs.

Example::

    tracker = Tracker(sweep.tracking, sweep.experiment_name)
    parent_id = tracker.study_run("blog", {"sampler": "grid"}, sweep_yaml="...")
    run_id = tracker.start_trial(parent_id, study_name="blog", number=0, name="cnn s0",
                                 params={"backbone": "cnn", "seed": 0})
    tracker.log_epoch(run_id, 0, {"accuracy": 0.5, "val_accuracy": 0.5})
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.errors import UserError, first_line
from ablation.redaction import redact
from ablation.sweep.factors import Factor
from ablation.sweep.sections import Tracking
from ablation.sweep.space import typed_params
from ablation.sweep.stores import sqlite_file
from ablation.tracking.mlflow_objects import (
    check_reachable,
    dataset_inputs,
    log_dataset_inputs,
    log_keras_model,
    register,
)
from ablation.tracking.records import (
    ARTIFACT_CONFUSION,
    ARTIFACT_CONFUSION_PLOT,
    ARTIFACT_CURVES,
    ARTIFACT_MODEL,
    ARTIFACT_PREDICTIONS,
    ARTIFACT_REPORT_DIR,
    ARTIFACT_SWEEP,
    ROLE_STUDY,
    ROLE_TRIAL,
    MetricName,
    ParamName,
    TagName,
    TrialRecord,
    TrialState,
)

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure
    from mlflow.entities import Run

    from ablation.data.images import Images


class ArtifactMissing(Exception):
    """A run's artifact that cannot be had. ``absent``: the run's record holds no such
    artifact (recorded before it existed, or never made); else it cannot be read."""

    def __init__(self, reason: str, *, absent: bool = False) -> None:
        super().__init__(redact(reason))
        self.absent = absent


class Tracker:
    """The MLflow side of one study.

    Args:
        tracking: The sweep's ``tracking`` section.
        experiment: The experiment's name; created (artifacts beside a local store) if new.

    Raises:
        UserError: The tracking URI cannot be opened.
    """

    def __init__(self, tracking: Tracking, experiment: str, *, create: bool = True) -> None:
        from mlflow import MlflowClient

        self.uri = tracking.tracking_uri()
        if redact(self.uri) != self.uri:  # MLflow prints run addresses, password included
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        check_reachable(self.uri)
        try:
            database = sqlite_file(self.uri)
            if database is not None:
                database.parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None and not create:
                raise UserError(f"tracking: no experiment {experiment!r} in {self.uri!r}")
            self.experiment_id = (
                found.experiment_id if found else self._create_experiment(experiment, tracking)
            )
        except UserError:
            raise
        except Exception as exc:  # MLflow raises many kinds for a bad or unreachable store
            raise UserError(
                f"tracking.uri: cannot open MLflow store {self.uri!r} ({first_line(exc)})"
            ) from None

    def _create_experiment(self, name: str, tracking: Tracking) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(
                name, artifact_location=tracking.artifact_location()
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = self.client.get_experiment_by_name(name)  # another machine was first
            if found is None:
                raise
            return found.experiment_id

    @classmethod
    def existing(cls, tracking: Tracking, experiment: str) -> Tracker:
        """Open a store and experiment that must already exist (for reading a study back).

        Raises:
            UserError: No such store or experiment, or the store cannot be reached.
        """
        uri = tracking.tracking_uri()
        database = sqlite_file(uri)
        if database is not None and not database.is_file():
            raise UserError(f"tracking.uri: no MLflow store at {uri!r}; run the sweep first")
        return cls(tracking, experiment, create=False)

    # -- the study's parent run ---------------------------------------------------------

    def study_run(
        self,
        study_name: str,
        params: Mapping[str, Any],
        sweep_yaml: str,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """The study's parent run: found again on a re-run, created the first time; ``tags``
        are set on it either way."""
        from mlflow.entities import RunStatus

        run = self._find_study_run(study_name)
        if run is not None:
            run_id = run.info.run_id
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=study_name,
                tags={TagName.ROLE: ROLE_STUDY, TagName.STUDY: study_name},
            )
            run_id = run.info.run_id
            self._log_params(run_id, params)
        for key, value in (tags or {}).items():
            self.client.set_tag(run_id, key, value)
        self.client.log_text(run_id, sweep_yaml, ARTIFACT_SWEEP)
        return run_id

    def study_tags(self, study_name: str) -> dict[str, str]:
        """The tags of the study's parent run; empty where it has none yet."""
        run = self._find_study_run(study_name)
        return dict(run.data.tags) if run is not None else {}

    def _find_study_run(self, study_name: str) -> Run | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TagName.ROLE}` = '{ROLE_STUDY}' "
            f"and tags.`{TagName.STUDY}` = '{study_name}'",
            max_results=1,
        )
        return runs[0] if runs else None

    def end_study(self, run_id: str, *, interrupted: bool = False) -> None:
        from mlflow.entities import RunStatus

        status = RunStatus.KILLED if interrupted else RunStatus.FINISHED
        self.client.set_terminated(run_id, status=RunStatus.to_string(status))

    def log_json(self, run_id: str, data: Mapping[str, Any], path: str) -> None:
        """Log ``data`` as a JSON artifact of a run (e.g. the study run's precision timing)."""
        self.client.log_dict(run_id, dict(data), path)

    def attach_report(self, run_id: str, files: Sequence[Path]) -> None:
        """Log the report's files as artifacts of the study's parent run (under ``report/``)."""
        for path in files:
            self.client.log_artifact(run_id, str(path), ARTIFACT_REPORT_DIR)

    # -- a trial's run ------------------------------------------------------------------

    def start_trial(
        self, parent_id: str, *, study_name: str, number: int, name: str, params: Mapping[str, Any]
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                TagName.PARENT: parent_id,
                TagName.ROLE: ROLE_TRIAL,
                TagName.STUDY: study_name,
                TagName.TRIAL: str(number),
                TagName.STATE: TrialState.RUNNING.value,
            },
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
        self._log_metrics(run_id, metrics, step=epoch)

    def complete_trial(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        *,
        figure: Figure,
        model: keras.Model,
        tags: Mapping[str, str],
    ) -> None:
        """Log a trained trial's final metrics (:class:`MetricName`: the test accuracy and
        the epochs run among them), curves plot, model and tags; end its run as FINISHED."""
        self.client.log_figure(run_id, figure, ARTIFACT_CURVES)
        test_accuracy = metrics[MetricName.TEST_ACCURACY]
        model_id = self.log_model(run_id, model, test_accuracy, int(metrics[MetricName.EPOCHS_RUN]))
        self._log_metrics(run_id, metrics, step=0, model_id=model_id)  # the model's too
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / ARTIFACT_MODEL
            model.save(path)
            self.client.log_artifact(run_id, str(path))
        for name, value in tags.items():
            self.client.set_tag(run_id, name, value)
        self._end_trial(run_id, TrialState.COMPLETE)

    def log_model(self, run_id: str, model: keras.Model, test_accuracy: float, step: int) -> str:
        """The trial's model as a Keras-flavour LoggedModel of its run; returns the model id."""
        run = self.client.get_run(run_id)
        return log_keras_model(self.client, run, model, test_accuracy=test_accuracy, step=step)

    def log_datasets(self, run_id: str, images: Images) -> None:
        """The trial's train, validation and test splits as the run's dataset inputs."""
        log_dataset_inputs(self.client, run_id, dataset_inputs(images, redact(images.source)))

    def register_model(self, run_id: str, name: str, alias: str, tags: Mapping[str, str]) -> str:
        """A new version of ``name`` from a trial's logged model, ``alias`` on it (UserError)."""
        return register(self.client, run_id, name, alias=alias, tags=tags)

    def log_test_classes(
        self,
        run_id: str,
        metrics: Mapping[str, float],
        confusion: dict,
        figure: Figure,
        predictions: str,
    ) -> None:
        """Log a trial's per-class test metrics, its confusion matrix (JSON and PNG) and
        each test image's prediction (CSV)."""
        self._log_metrics(run_id, metrics, step=0)
        self.client.log_dict(run_id, confusion, ARTIFACT_CONFUSION)
        self.client.log_figure(run_id, figure, ARTIFACT_CONFUSION_PLOT)
        self.client.log_text(run_id, predictions, ARTIFACT_PREDICTIONS)

    def log_wall_time(self, run_id: str, wall_seconds: float, fixed_seconds: float) -> None:
        """A finished trial's wall time as the study saw it, and the part outside training."""
        self._log_metrics(
            run_id,
            {MetricName.WALL_SECONDS: wall_seconds, MetricName.FIXED_SECONDS: fixed_seconds},
            step=0,
        )

    def tag_threads(self, run_id: str, threads: Mapping[str, int]) -> None:
        """The threads the trial's process computed with (TagName.THREADS, as JSON)."""
        self.client.set_tag(run_id, TagName.THREADS, json.dumps(dict(threads), sort_keys=True))

    def tag_gpu(self, run_id: str, gpu: str) -> None:
        """The GPU the trial computed on (TagName.GPU: nvidia-smi's index, or none)."""
        self.client.set_tag(run_id, TagName.GPU, gpu)

    def prune_trial(self, run_id: str, epochs_run: int) -> None:
        """End a trial's run that the pruner stopped after ``epochs_run`` epochs."""
        self._log_metrics(run_id, {MetricName.EPOCHS_RUN: epochs_run}, step=0)
        self._end_trial(run_id, TrialState.PRUNED)

    def fail_trial(self, run_id: str, error: str, *, killed: bool = False) -> None:
        """End a trial's run as FAILED (or KILLED: interrupted) with the error as a tag."""
        self.client.set_tag(run_id, TagName.ERROR, redact(error)[:5000])
        self._end_trial(run_id, TrialState.FAIL, killed=killed)

    def end_orphaned_trials(self, study_name: str, running: set[int]) -> None:
        """End as KILLED the RUNNING trial runs not in ``running`` (their process died)."""
        for run in self._study_runs(study_name)[1]:
            number = run.data.tags.get(TagName.TRIAL)
            if _is_running(run) and number is not None and int(number) not in running:
                self.fail_trial(
                    run.info.run_id, "interrupted: the process running it died", killed=True
                )

    def _end_trial(self, run_id: str, state: TrialState, *, killed: bool = False) -> None:
        """Tag the trial's state and end its run: FINISHED, or FAILED/KILLED for a failure."""
        from mlflow.entities import RunStatus

        status = RunStatus.FINISHED
        if state == TrialState.FAIL:
            status = RunStatus.KILLED if killed else RunStatus.FAILED
        self.client.set_tag(run_id, TagName.STATE, state.value)
        self.client.set_terminated(run_id, status=RunStatus.to_string(status))

    # -- reading a study back -----------------------------------------------------------

    def trial_records(
        self, study_name: str, space: Mapping[str, Factor]
    ) -> tuple[str | None, list[TrialRecord]]:
        """The study's parent run id (or None) and its trials, typed by the sweep's space.

        Raises:
            UserError: The store cannot be read.
        """
        try:
            parent, runs = self._study_runs(study_name)
            records = [self._record(run, space) for run in runs]
        except Exception as exc:  # MLflow raises many kinds for a broken store
            raise UserError(f"tracking.uri: cannot read {self.uri!r} ({first_line(exc)})") from None
        return (parent.info.run_id if parent else None), records

    def run_params(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.params)

    def download(self, run_id: str, path: str, directory: str) -> Path:
        """A run's artifact (file or folder) downloaded into ``directory``.

        Raises:
            ArtifactMissing: ``absent``: the run's artifacts are listed, this one not among
                them; else it cannot be read: the listing or the download fails, or the
                store holds none of the run's artifacts (deleted, moved).
        """
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not on stderr
        try:
            listed = self.client.list_artifacts(run_id, posixpath.dirname(path) or None)
            if path in {found.path for found in listed}:
                return Path(self.client.download_artifacts(run_id, path, directory))
            if self.client.list_artifacts(run_id):
                raise ArtifactMissing(f"{path}: not recorded by this run", absent=True)
            location = self.client.get_experiment(self.experiment_id).artifact_location
            raise ArtifactMissing(f"none of the run's artifacts is in the store ({location})")
        except ArtifactMissing:
            raise
        except Exception as exc:  # MLflow raises many kinds for a store it cannot read
            raise ArtifactMissing(first_line(exc)) from None

    def download_model(self, run_id: str, directory: str) -> Path:
        """A trial's saved model, downloaded into ``directory``.

        Raises:
            UserError: The run's model is not in the store, or cannot be read.
        """
        try:
            return self.download(run_id, ARTIFACT_MODEL, directory)
        except ArtifactMissing as exc:
            raise UserError(
                f"the trial's model is not in the store (run {run_id}: {exc})"
            ) from None

    def _study_runs(self, study_name: str) -> tuple[Any | None, list[Any]]:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TagName.STUDY}` = '{study_name}'",
            max_results=50_000,
        )
        parent = next((r for r in runs if r.data.tags.get(TagName.ROLE) == ROLE_STUDY), None)
        return parent, [r for r in runs if r.data.tags.get(TagName.ROLE) == ROLE_TRIAL]

    def _record(self, run: Any, space: Mapping[str, Factor]) -> TrialRecord:
        from mlflow.entities import RunStatus

        state = TrialState(run.data.tags.get(TagName.STATE, TrialState.RUNNING.value))
        if _is_running(run):
            state = TrialState.RUNNING
        elif RunStatus.from_string(run.info.status) in (RunStatus.FAILED, RunStatus.KILLED):
            state = TrialState.FAIL
        metrics = run.data.metrics
        if state == TrialState.COMPLETE and MetricName.TEST_ACCURACY not in metrics:
            state = TrialState.FAIL
        curve: tuple[float, ...] = ()
        if state == TrialState.COMPLETE:
            history = self.client.get_metric_history(run.info.run_id, MetricName.VAL_ACCURACY)
            curve = tuple(m.value for m in sorted(history, key=lambda m: m.step))
        tags, params = run.data.tags, run.data.params
        return TrialRecord(
            run_id=run.info.run_id,
            params=typed_params(space, params),
            seed=int(params.get(ParamName.SEED, 0)),
            state=state,
            number=int(tags[TagName.TRIAL]) if TagName.TRIAL in tags else None,
            best_val_accuracy=metrics.get(MetricName.BEST_VAL_ACCURACY),
            model_val_accuracy=metrics.get(MetricName.MODEL_VAL_ACCURACY),
            test_accuracy=metrics.get(MetricName.TEST_ACCURACY),
            epochs_run=int(metrics.get(MetricName.EPOCHS_RUN, len(curve))),
            seconds=float(metrics.get(MetricName.TRAIN_SECONDS, 0.0)),
            val_curve=curve,
            metrics=dict(metrics),
            collapse_reason=(
                tags.get(TagName.COLLAPSE_REASON, "collapsed")
                if tags.get(TagName.COLLAPSED) == "true"
                else None
            ),
        )

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def _log_metrics(
        self, run_id: str, metrics: Mapping[str, float], *, step: int, model_id: str | None = None
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step, model_id=model_id) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)


def _is_running(run: Any) -> bool:
    from mlflow.entities import RunStatus

    return RunStatus.from_string(run.info.status) == RunStatus.RUNNING
