"""MLflow's own objects for a trial, built without a store: dataset inputs, signature, requirements."""

from __future__ import annotations

import json

import numpy as np

from ablation.best import parse_args
from ablation.data.images import Images
from ablation.redaction import redact
from ablation.tracking.mlflow_objects import dataset_inputs, model_signature, pip_requirements


def images(per_split: dict[str, list[int]]) -> Images:
    arrays = {}
    for split, labels in per_split.items():
        arrays[f"x_{split}"] = np.zeros((len(labels), 8, 8, 3), "uint8")
        arrays[f"y_{split}"] = np.array(labels, "int32")
    return Images(
        class_names=["cats", "dogs"], fingerprint="0123456789abcdef", source="-", **arrays
    )


def test_three_dataset_inputs_one_per_split_with_sizes_and_classes() -> None:
    data = images({"train": [0, 0, 1, 1, 1], "val": [0, 1], "test": [1]})
    source = redact("https://user:secret@example.org/data/cats_and_dogs_filtered.zip")
    inputs = dataset_inputs(data, source)
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert [i.tags[0].key for i in inputs] == ["mlflow.data.context"] * 3
    assert list(by_context) == ["training", "validation", "test"]
    for context, dataset in by_context.items():
        assert dataset.name == f"cats_and_dogs_filtered-{context}"
        assert dataset.digest == "0123456789abcdef"
        assert dataset.source_type == "http"
        assert json.loads(dataset.source) == {
            "uri": "https://user:***@example.org/data/cats_and_dogs_filtered.zip"
        }
        assert "secret" not in dataset.source + dataset.profile + dataset.schema
    profiles = {c: json.loads(d.profile) for c, d in by_context.items()}
    assert profiles["training"] == {
        "num_rows": 5,
        "classes": ["cats", "dogs"],
        "per_class": {"cats": 2, "dogs": 3},
    }
    assert profiles["validation"]["num_rows"] == 2 and profiles["test"]["num_rows"] == 1


def test_a_local_folder_is_a_local_source() -> None:
    data = images({"train": [0], "val": [1], "test": [0]})
    (first, *_) = dataset_inputs(data, "/data/flowers/")
    assert first.dataset.source_type == "local"
    assert first.dataset.name == "flowers-training"


def test_signature_and_requirements() -> None:
    import keras

    signature = model_signature((160, 160), 5)
    assert signature.inputs.inputs[0].shape == (-1, 160, 160, 3)
    assert signature.outputs.inputs[0].shape == (-1, 5)
    required = pip_requirements()
    assert required[0] == f"keras=={keras.__version__}"
    assert any(r.startswith(("tensorflow==", "tensorflow-cpu==")) for r in required)


def test_register_takes_a_name_and_an_alias_champion_by_default() -> None:
    args = parse_args(["sweep.yaml", "--register", "cats-vs-dogs"])
    assert (args.register, args.alias) == ("cats-vs-dogs", "champion")
    assert parse_args(["sweep.yaml"]).register is None
    assert parse_args(["sweep.yaml", "--register", "x", "--alias", "staging"]).alias == "staging"
