"""precision: auto: timed once per machine and shape, float32 unless another policy clearly wins.

The fast tests inject the timing (a fake ``measure``, counting its calls); the slow
ones time real training steps in a spawned process and run a real study.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from ablation import load_sweep, run_sweep
from ablation.autotune.precision import (
    CACHE_FILE,
    Shape,
    Timings,
    measure_in_process,
    pick,
    resolve_auto,
    timed_shapes,
)
from ablation.autotune.timings import machine_identity, machine_key
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.sections import Train
from conftest import CATS_AND_DOGS, SMALL_WEIGHTS, frozen_sweep


class FakeTiming:
    """Seconds per step as a fraction of float32's, per backbone; remembers what it timed."""

    def __init__(self, bfloat16: dict[str, float], pause: float = 0.0) -> None:
        self.bfloat16 = bfloat16
        self.pause = pause
        self.timed: list[list[str]] = []

    def __call__(self, shapes: Sequence[Shape], weights: PretrainedWeights) -> list[Timings]:
        self.timed.append([shape.key for shape in shapes])
        time.sleep(self.pause)
        return [{"float32": 1.0, "mixed_bfloat16": self.bfloat16[s.backbone]} for s in shapes]


def blog(cache_dir: Path, *overrides: str) -> Sweep:
    """sweeps/blog.yaml (precision: auto, both backbones, augmentation searched)."""
    return frozen_sweep(CATS_AND_DOGS, cache_dir, *overrides)


def test_bfloat16_not_clearly_faster_keeps_float32(tmp_path: Path) -> None:
    fake = FakeTiming({"cnn": 0.98, "mobilenet_v2": 1.00})
    resolved, record = resolve_auto(blog(tmp_path), measure=fake)
    assert resolved.train.precision == {"cnn": "float32", "mobilenet_v2": "float32"}
    for backbone in ("cnn", "mobilenet_v2"):
        assert resolved.train.dtype_policy(Configuration(backbone=backbone)) == "float32"
    assert record["backbones"]["cnn"]["seconds_per_step"] == {
        "float32": 1.0,
        "mixed_bfloat16": 0.98,
    }
    assert record["margin"] == 0.10 and record["machine"] == machine_identity()


def test_bfloat16_clearly_faster_is_picked_per_backbone(tmp_path: Path) -> None:
    fake = FakeTiming({"cnn": 0.55, "mobilenet_v2": 1.98})  # the AMD EPYC's figures
    sweep = blog(tmp_path)
    resolved, record = resolve_auto(sweep, measure=fake)
    assert resolved.train.precision == {"cnn": "mixed_bfloat16", "mobilenet_v2": "float32"}
    assert resolved.train.dtype_policy(Configuration(backbone="cnn")) == "mixed_bfloat16"
    assert record["backbones"]["cnn"]["policy"] == "mixed_bfloat16"
    assert sweep.train.precision == "auto"  # the sweep as written is left as it was
    assert resolved.model_dump(exclude={"train"}) == sweep.model_dump(exclude={"train"})


def test_the_margin_is_ten_percent() -> None:
    assert pick({"float32": 1.0, "mixed_bfloat16": 0.91}) == "float32"
    assert pick({"float32": 1.0, "mixed_bfloat16": 0.90}) == "mixed_bfloat16"
    assert pick({"float32": 1.0, "mixed_bfloat16": 0.8, "mixed_float16": 0.5}) == "mixed_float16"
    assert pick({"float32": 1.0, "mixed_bfloat16": 1.5}) == "float32"


def test_a_second_study_on_the_machine_reads_the_cache(tmp_path: Path) -> None:
    fake = FakeTiming({"cnn": 0.5, "mobilenet_v2": 2.0})
    first, _ = resolve_auto(blog(tmp_path), measure=fake)
    again, record = resolve_auto(blog(tmp_path), measure=fake)
    assert len(fake.timed) == 1 and len(fake.timed[0]) == 2
    assert again.train.precision == first.train.precision
    assert all(entry["cached"] for entry in record["backbones"].values())
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    [entry] = cache["machines"].values()
    assert entry["machine"] == machine_identity()
    assert {s["policy"] for s in entry["shapes"].values()} == {"mixed_bfloat16", "float32"}


@pytest.mark.parametrize(
    "override", ["data.image_size=[96, 96]", "data.batch_size=16", "model.alpha=1.0"]
)
def test_another_shape_is_timed_and_only_it(tmp_path: Path, override: str) -> None:
    fake = FakeTiming({"cnn": 0.5, "mobilenet_v2": 2.0})
    resolve_auto(blog(tmp_path), measure=fake)
    resolve_auto(blog(tmp_path, override), measure=fake)
    if override.startswith("model."):  # the width of MobileNetV2 only
        assert fake.timed[1] == ["mobilenet_v2 160x160 batch 32 alpha 1 augment"]
    else:
        assert [key.split()[0] for key in fake.timed[1]] == ["cnn", "mobilenet_v2"]
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    [entry] = cache["machines"].values()
    assert len(entry["shapes"]) == 2 + len(fake.timed[1])


def test_which_step_is_timed_for_each_backbone(tmp_path: Path) -> None:
    assert [s.key for s in timed_shapes(blog(tmp_path)).values()] == [
        "cnn 160x160 batch 32 augment",
        "mobilenet_v2 160x160 batch 32 alpha 0.35 augment",
    ]
    cnn_only = blog(tmp_path, "space={augment: {choice: [false]}}")
    assert [s.key for s in timed_shapes(cnn_only).values()] == ["cnn 160x160 batch 32 no augment"]
    conditional = blog(tmp_path, "space.augment={choice: [false, true], when: {backbone: cnn}}")
    shapes = timed_shapes(conditional)
    assert shapes["cnn"].augment and not shapes["mobilenet_v2"].augment


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "machines": []}', "[1, 2]", ""])
def test_a_corrupt_cache_is_timed_again_and_rewritten(tmp_path: Path, content: str) -> None:
    (tmp_path / CACHE_FILE).write_text(content)
    fake = FakeTiming({"cnn": 0.5, "mobilenet_v2": 2.0})
    resolved, _ = resolve_auto(blog(tmp_path), measure=fake)
    assert len(fake.timed) == 1
    assert resolved.train.precision == {"cnn": "mixed_bfloat16", "mobilenet_v2": "float32"}
    resolve_auto(blog(tmp_path), measure=fake)
    assert len(fake.timed) == 1  # what was rewritten reads back


def test_a_bad_entry_is_timed_again(tmp_path: Path) -> None:
    fake = FakeTiming({"cnn": 0.5, "mobilenet_v2": 2.0})
    resolve_auto(blog(tmp_path), measure=fake)
    cache = json.loads((tmp_path / CACHE_FILE).read_text())
    [entry] = cache["machines"].values()
    entry["shapes"]["cnn 160x160 batch 32 augment"]["policy"] = "bfloat16"  # no such policy
    (tmp_path / CACHE_FILE).write_text(json.dumps(cache))
    resolve_auto(blog(tmp_path), measure=fake)
    assert fake.timed[1] == ["cnn 160x160 batch 32 augment"]


def test_another_machines_timing_is_kept_and_not_used(tmp_path: Path) -> None:
    other = {**machine_identity(), "cpu": "AMD EPYC 9R14"}
    shapes = {"cnn 160x160 batch 32 augment": {"policy": "mixed_bfloat16", "seconds_per_step": {}}}
    cache = {"format": 1, "machines": {machine_key(other): {"machine": other, "shapes": shapes}}}
    (tmp_path / CACHE_FILE).write_text(json.dumps(cache))
    fake = FakeTiming({"cnn": 1.0, "mobilenet_v2": 1.0})
    resolved, _ = resolve_auto(blog(tmp_path), measure=fake)
    assert len(fake.timed) == 1 and resolved.train.precision["cnn"] == "float32"  # type: ignore[index]
    machines = json.loads((tmp_path / CACHE_FILE).read_text())["machines"]
    assert set(machines) == {machine_key(other), machine_key(machine_identity())}


def test_studies_starting_together_time_once(tmp_path: Path) -> None:
    fake = FakeTiming({"cnn": 0.5, "mobilenet_v2": 2.0}, pause=0.5)
    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_auto(blog(tmp_path), fake)[0]))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake.timed) == 1 and len(results) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_failed_timing_falls_back_to_float32_uncached(tmp_path: Path) -> None:
    def broken(shapes: Sequence[Shape], weights: PretrainedWeights) -> list[Timings]:
        raise RuntimeError("the timing's process died")

    resolved, record = resolve_auto(blog(tmp_path), measure=broken)
    assert resolved.train.precision == {"cnn": "float32", "mobilenet_v2": "float32"}
    assert not (tmp_path / CACHE_FILE).exists()
    assert record["backbones"]["cnn"]["policy"] == "float32"


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "{cnn: mixed_bfloat16}"])
def test_an_explicit_precision_is_never_timed(tmp_path: Path, precision: str) -> None:
    fake = FakeTiming({"cnn": 0.5, "mobilenet_v2": 0.5})
    sweep = blog(tmp_path, f"train.precision={precision}")
    assert resolve_auto(sweep, measure=fake) == (sweep, {})
    assert fake.timed == [] and not (tmp_path / CACHE_FILE).exists()


def test_unresolved_auto_computes_in_float32() -> None:
    for backbone in ("cnn", "mobilenet_v2"):
        configuration = Configuration(backbone=backbone)  # type: ignore[arg-type]
        assert Train(precision="auto").dtype_policy(configuration) == "float32"


@pytest.mark.slow
def test_a_real_timing_in_a_spawned_process() -> None:
    shapes = [
        Shape("cnn", (64, 64), 8, augment=False),
        Shape("mobilenet_v2", (64, 64), 8, augment=True, alpha=0.35),
    ]
    weights = PretrainedWeights(weights=str(SMALL_WEIGHTS), alpha=0.35)
    started = time.perf_counter()
    timings = measure_in_process(shapes, weights)
    print(f"timed 2 shapes in {time.perf_counter() - started:.1f} s: {timings}")
    assert len(timings) == 2
    for timing in timings:
        assert set(timing) == {"float32", "mixed_bfloat16"}  # no GPU here
        assert all(0 < seconds < 60 for seconds in timing.values())
        assert pick(timing) in ("float32", "mixed_bfloat16")


STUDY = """
study: {{name: auto, sampler: grid, seeds: [0]}}
data: {{source: {data}, image_size: [64, 64], batch_size: 8, limit_per_class: 4}}
train: {{epochs: 1, precision: auto}}
model: {{weights: {weights}, alpha: 0.35}}
space:
  backbone: {{choice: [cnn, mobilenet_v2]}}
  augment:  {{choice: [true]}}
tracking: {{experiment: auto}}
"""


@pytest.mark.slow
def test_a_study_records_the_measured_policy_on_each_trial(
    small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "auto.yaml"
    path.write_text(STUDY.format(data=small_data, weights=SMALL_WEIGHTS))
    summary = run_sweep(load_sweep(path))
    assert [o.state for o in summary.outcomes] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    [timing] = client.list_artifacts(summary.parent_run_id, "precision_timing")
    record = json.loads(
        Path(client.download_artifacts(summary.parent_run_id, timing.path)).read_text()
    )
    assert record["machine"] == machine_identity()
    decided = {b: entry["policy"] for b, entry in record["backbones"].items()}
    cache = json.loads((tmp_path / "mlruns" / "cache" / CACHE_FILE).read_text())
    [entry] = cache["machines"].values()
    assert {s["policy"] for s in entry["shapes"].values()} == set(decided.values())
    [batch_timing] = client.list_artifacts(summary.parent_run_id, "feature_batch_timing")
    batches = json.loads(
        Path(client.download_artifacts(summary.parent_run_id, batch_timing.path)).read_text()
    )
    assert set(batches["backbones"]) == {"mobilenet_v2"}  # the CNN computes no features
    for outcome in summary.outcomes:
        run = client.get_run(outcome.run_id)
        backbone = run.data.params["backbone"]
        assert run.data.params["precision"] == decided[backbone]
        per_epoch = run.data.tags.get("ablation.features_per_epoch")  # augmented: model4's way
        assert per_epoch == ("true" if backbone == "mobilenet_v2" else None)
        batch = run.data.params.get("feature_batch_size")
        assert batch == (
            str(batches["backbones"]["mobilenet_v2"]["batch_size"])
            if backbone == "mobilenet_v2"
            else None
        )
        local = client.download_artifacts(outcome.run_id, "model.keras", str(tmp_path / backbone))
        dtype = keras.saving.load_model(local).layers[-2].compute_dtype  # before the logits
        assert dtype == ("bfloat16" if decided[backbone] == "mixed_bfloat16" else "float32")
    sweep_yaml = client.download_artifacts(summary.parent_run_id, "sweep.yaml", str(tmp_path))
    assert "precision: auto" in Path(sweep_yaml).read_text()  # as written
    again = run_sweep(load_sweep(path))  # timed no more: read from the cache
    record = json.loads(
        Path(client.download_artifacts(again.parent_run_id, timing.path)).read_text()
    )
    assert all(entry["cached"] for entry in record["backbones"].values())
