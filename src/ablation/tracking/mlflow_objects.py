"""MLflow's own objects for a trial: its logged model, its dataset inputs, registry versions.

These are what MLflow's UI, registry and ``mlflow.pyfunc`` understand: a trial's
trained model is an MLflow 3 *LoggedModel* of the Keras flavour (linked to the
trial's run: its "Models" column), and the data it saw are three *dataset inputs*
(its "Dataset" column). :class:`ablation.tracking.tracker.Tracker` calls these with its
client and run ids; nothing here holds a client of its own. And whether a
tracking server answers at all (:func:`check_reachable`).

Example:
    >>> signature = model_signature((48, 48), 2)
    >>> signature.inputs.inputs[0].shape, signature.outputs.inputs[0].shape
    ((-1, 48, 48, 3), (-1, 2))
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ablation.errors import UserError, first_line
from ablation.sweep.stores import is_server
from ablation.tracking.records import (
    ARTIFACT_LOGGED_MODEL,
    DATASET_CONTEXTS,
    ParamName,
    TagName,
    class_names_of,
)

if TYPE_CHECKING:
    import keras
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, Run
    from mlflow.models import ModelSignature

    from ablation.data.images import Images

# What `mlflow models serve` or a registry consumer installs to run the model: the
# Keras flavour needs Keras and a TensorFlow build. Given explicitly, so MLflow does
# not infer them by loading the model again in a subprocess (seconds per trial).
BACKENDS = ("tensorflow", "tensorflow-cpu")


def model_signature(image_size: tuple[int, int] | list[int], classes: int) -> ModelSignature:
    """RGB images (0-255, float32) at the sweep's image size in, one logit per class out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    height, width = image_size
    images = TensorSpec(np.dtype("float32"), (-1, height, width, 3))
    logits = TensorSpec(np.dtype("float32"), (-1, classes))
    return ModelSignature(inputs=Schema([images]), outputs=Schema([logits]))


def pip_requirements() -> list[str]:
    """The model's requirements, pinned to what trained it: Keras and the TensorFlow build."""
    import keras

    found = [f"keras=={keras.__version__}"]
    for name in BACKENDS:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def log_keras_model(
    client: MlflowClient, run: Run, model: keras.Model, *, test_accuracy: float, step: int
) -> str:
    """Log ``model`` as a Keras-flavour LoggedModel of a trial's run; returns its model id.

    This is :func:`mlflow.keras.log_model` with an explicit run, experiment and store
    (``Model.log`` with the Keras flavour), never the global active run. The run's
    params (factors, seed, class names) become the model's params. ``step`` should be
    one no metric of the run is logged at, so no per-epoch value is linked to the model.
    """
    import mlflow.keras
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    classes = class_names_of(run.data.params)
    tags = {
        TagName.STUDY: run.data.tags.get(TagName.STUDY, ""),
        TagName.CONFIGURATION: run.info.run_name,
        TagName.SEED: run.data.params.get(ParamName.SEED, ""),
        TagName.TEST_ACCURACY: f"{test_accuracy:.4f}",
        TagName.CLASS_NAMES: json.dumps(classes, ensure_ascii=False),
    }
    created = client.create_logged_model(
        run.info.experiment_id,  # MLflow would pick the global experiment
        name=ARTIFACT_LOGGED_MODEL,
        source_run_id=run.info.run_id,
        tags={**tags, "mlflow.source.name": "ablation"},
        params=dict(run.data.params),
    )
    # Model.log takes no client or store: it writes through the fluent API's tracking URI.
    # MLflow has no public way to point that at one store for one call without setting it
    # for the whole process (which workers side by side would cross), hence its private
    # context manager.
    with _use_tracking_uri(client.tracking_uri):
        info = Model.log(
            artifact_path=None,
            name=ARTIFACT_LOGGED_MODEL,
            flavor=mlflow.keras,
            run_id=run.info.run_id,
            model_id=created.model_id,
            model=model,
            signature=model_signature(model.input_shape[1:3], len(classes)),
            pip_requirements=pip_requirements(),
            metadata={"class_names": classes},
            step=step,
        )
    return info.model_id


def dataset_inputs(images: Images, source: str) -> list[DatasetInput]:
    """The train, validation and test splits as MLflow dataset inputs.

    Each has the data fingerprint as digest, ``source`` (already redacted) as
    source, and its size, classes and images per class in its profile.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    remote = is_server(source)
    found = []
    for split, context in DATASET_CONTEXTS.items():
        x, y = images.split(split)
        profile = {
            "num_rows": len(y),
            "classes": list(images.class_names),
            "per_class": {
                name: int((y == index).sum()) for index, name in enumerate(images.class_names)
            },
        }
        schema = {"mlflow_tensorspec": {"features": _tensor(x), "targets": _tensor(y)}}
        dataset = Dataset(
            name=f"{_base_name(source)}-{context}",
            digest=images.fingerprint,
            source_type="http" if remote else "local",
            source=json.dumps({"uri": source}),
            schema=json.dumps(schema),
            profile=json.dumps(profile),
        )
        found.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return found


def _tensor(array: Any) -> str:
    shape = [-1, *array.shape[1:]]
    spec = {"dtype": str(array.dtype), "shape": shape}
    return json.dumps([{"type": "tensor", "tensor-spec": spec}])


def _base_name(source: str) -> str:
    """``cats_and_dogs`` for ``/data/cats_and_dogs`` or ``.../cats_and_dogs_filtered.zip``."""
    name = source.rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".zip") or "data"


def run_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The id of the model a trial's run logged (its last, if several), or None."""
    outputs = client.get_run(run_id).outputs
    models = outputs.model_outputs if outputs is not None else []
    return models[-1].model_id if models else None


def register(
    client: MlflowClient, run_id: str, name: str, *, alias: str, tags: Mapping[str, str]
) -> str:
    """A new version of registered model ``name`` (created if new) from the logged model of
    a trial's run, tagged, with ``alias`` moved to it; returns the version.

    Raises:
        UserError: The run has no logged model, or the registry refuses.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    model_id = run_model_id(client, run_id)
    if model_id is None:
        raise UserError(f"run {run_id} has no logged model (recorded by an older ablation)")
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # The store resolves models:/ through the fluent tracking URI (no public per-call way).
        with _use_tracking_uri(client.tracking_uri):
            version = client.create_model_version(
                name, f"models:/{model_id}", run_id=run_id, tags=dict(tags), model_id=model_id
            )
        client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise UserError(f"cannot register {name!r} ({first_line(exc)})") from None
    return str(version.version)


def log_dataset_inputs(client: MlflowClient, run_id: str, datasets: list[DatasetInput]) -> None:
    """Log a run's dataset inputs. Two trials that start at once (``--workers``) may both
    create the experiment's dataset; on SQLite the second insert then fails on its unique
    key, and a second try finds the dataset and only links it."""
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as exc:
            if "UNIQUE constraint failed" not in str(exc) or attempt == 2:
                raise


def check_reachable(uri: str) -> None:
    """Fail fast on a tracking server that does not answer (MLflow itself retries for minutes)."""
    if not is_server(uri):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise UserError(f"tracking.uri: MLflow server {uri!r} does not answer ({reason})") from None
