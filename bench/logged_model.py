"""What logging a trial's model as an MLflow LoggedModel costs, against the plain artifact.

For the blog's two model kinds at 160x160 (the CNN, and MobileNetV2 with the
alpha given), in a fresh SQLite store, per trial:

(a) today's artifact: ``model.save("model.keras")`` + ``log_artifact``;
(b) the LoggedModel as ``ablation`` logs it (Keras flavour, signature, explicit
    pip requirements): :func:`ablation.tracking.mlflow_objects.log_keras_model`;
(c) the same with MLflow inferring the requirements (``pip_requirements=None``),
    to show what the explicit list saves.

Usage::

    KERAS_HOME=/tmp/keras-home python bench/logged_model.py --weights WEIGHTS.h5 --alpha 0.35
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mlflow.keras
    from mlflow import MlflowClient
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from ablation.model.builders import build_model, inference_copy
    from ablation.sweep.factors import Configuration
    from ablation.sweep.pretrained import PretrainedWeights
    from ablation.tracking.mlflow_objects import log_keras_model, model_signature

    store = Path(tempfile.mkdtemp(prefix="bench-logged-model-"))
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.create_experiment("bench", artifact_location=str(store / "artifacts"))
    weights = PretrainedWeights(weights=args.weights, alpha=args.alpha)
    for backbone in ("cnn", "mobilenet_v2"):
        configuration = Configuration(backbone=backbone, preprocess="mobilenet_v2")
        network = build_model(
            configuration, image_size=(160, 160), num_classes=2, weights=weights, seed=0
        )
        model = inference_copy(network.model)
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        sizes: dict[str, int] = {}
        for _ in range(args.repeats):
            run = client.create_run(experiment)
            client.log_param(run.info.run_id, "class_names", "cats,dogs")
            run = client.get_run(run.info.run_id)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.keras"
                model.save(path)
                client.log_artifact(run.info.run_id, str(path))
                sizes["a"] = path.stat().st_size
            times["a"].append(time.perf_counter() - started)

            started = time.perf_counter()
            model_id = log_keras_model(client, run, model, test_accuracy=0.5, step=1)
            times["b"].append(time.perf_counter() - started)
            location = client.get_logged_model(model_id).artifact_location
            sizes["b"] = folder_bytes(Path(location.removeprefix("file://")))

            started = time.perf_counter()
            with _use_tracking_uri(client.tracking_uri):
                Model.log(
                    artifact_path=None,
                    name="inferred",
                    flavor=mlflow.keras,
                    run_id=run.info.run_id,
                    model=model,
                    signature=model_signature((160, 160), 2),
                )
            times["c"].append(time.perf_counter() - started)
        print(
            f"{backbone}: (a) model.keras {statistics.median(times['a']):.2f} s "
            f"{sizes['a'] / 1e6:.2f} MB; (b) LoggedModel {statistics.median(times['b']):.2f} s "
            f"{sizes['b'] / 1e6:.2f} MB; (c) inferred requirements "
            f"{statistics.median(times['c']):.2f} s  (median of {args.repeats})",
            flush=True,
        )


if __name__ == "__main__":
    main()
