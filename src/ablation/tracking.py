"""MLflow records: one experiment per study, a parent run per study, a child run per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (never
the global active run), so trials running side by side cannot cross their records.

A trial's run holds its choices and identity (seed, epochs, dataset and weights
hashes) as params, the per-epoch ``accuracy``, ``loss``, ``val_accuracy``,
``val_loss`` (``step`` = epoch), the final ``test_accuracy``/``test_loss``, and
two artifacts: ``accuracy_curves.png`` and ``model.keras``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.config import Tracking
from ablation.errors import UserError, first_line

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

ROLE_TAG = "ablation.role"
STUDY_TAG = "ablation.study"
STATE_TAG = "ablation.state"
TRIAL_TAG = "ablation.trial"
PARENT_TAG = "mlflow.parentRunId"


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
        check_reachable(self.uri)
        try:
            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
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
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise UserError(f"tracking.uri: no MLflow store at {uri!r}; run the sweep first")
        return cls(tracking, experiment, create=False)

    def study_runs(self, study_name: str) -> tuple[Any | None, list[Any]]:
        """The study's parent run (or None) and its trial runs."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{study_name}'",
            max_results=50_000,
        )
        parent = next((r for r in runs if r.data.tags.get(ROLE_TAG) == "study"), None)
        return parent, [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]

    def study_run(self, study_name: str, params: Mapping[str, Any], sweep_yaml: str) -> str:
        """The study's parent run: found again on a re-run, created the first time."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'study' and tags.`{STUDY_TAG}` = '{study_name}'",
            max_results=1,
        )
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=study_name,
                tags={ROLE_TAG: "study", STUDY_TAG: study_name},
            )
            run_id = run.info.run_id
            self._log_params(run_id, params)
        self.client.log_text(run_id, sweep_yaml, "sweep.yaml")
        return run_id

    def end_study(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def start_trial(
        self, parent_id: str, *, study_name: str, number: int, name: str, params: Mapping[str, Any]
    ) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={
                PARENT_TAG: parent_id,
                ROLE_TAG: "trial",
                STUDY_TAG: study_name,
                TRIAL_TAG: str(number),
                STATE_TAG: "RUNNING",
            },
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        )

    def finish_trial(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float],
        figure: Figure | None = None,
        model: keras.Model | None = None,
        state: str = "COMPLETE",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log the final metrics, tags and artifacts, then end the run as FINISHED."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
        )
        if figure is not None:
            self.client.log_figure(run_id, figure, "accuracy_curves.png")
        if model is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                model.save(path)
                self.client.log_artifact(run_id, str(path))
        for name, value in (tags or {}).items():
            self.client.set_tag(run_id, name, value)
        self.client.set_tag(run_id, STATE_TAG, state)
        self.client.set_terminated(run_id, status="FINISHED")

    def fail_trial(self, run_id: str, error: str, status: str = "FAILED") -> None:
        """End a trial's run as FAILED (or KILLED) with the error message as a tag."""
        self.client.set_tag(run_id, "error", error[:5000])
        self.client.set_tag(run_id, STATE_TAG, "FAIL")
        self.client.set_terminated(run_id, status=status)

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def check_reachable(uri: str) -> None:
    """Fail fast on a tracking server that does not answer (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise UserError(f"tracking.uri: MLflow server {uri!r} does not answer ({reason})") from None
