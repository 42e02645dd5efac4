"""feature_batch_size: auto: the fastest images-per-pass for a backbone's features, timed
once per machine and shape.

The fast tests inject the timing (a fake ``measure``, counting its calls); the slow one
times a real backbone in a spawned process (a real study's record is checked in
``tests/autotune/test_precision.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from ablation.autotune.feature_batch import (
    CACHE_FILE,
    CANDIDATES,
    BackboneShape,
    SecondsPerImage,
    computed_shapes,
    measure_in_process,
    resolve_auto,
)
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration
from ablation.sweep.pretrained import PretrainedWeights
from conftest import CATS_AND_DOGS, SMALL_WEIGHTS, frozen_sweep

MOBILENET = Configuration(backbone="mobilenet_v2")


class FakeTiming:
    """Seconds per image with the fastest at ``best``; remembers what it timed."""

    def __init__(self, best: int) -> None:
        self.best = best
        self.timed: list[list[str]] = []

    def __call__(
        self, shapes: Sequence[BackboneShape], weights: PretrainedWeights
    ) -> list[SecondsPerImage]:
        self.timed.append([shape.key for shape in shapes])
        return [{n: 0.01 * (1 + abs(n - self.best) / 100) for n in CANDIDATES} for _ in shapes]


def blog(cache_dir: Path, *overrides: str) -> Sweep:
    """sweeps/blog.yaml (both backbones), float32 for a fixed shape key."""
    return frozen_sweep(CATS_AND_DOGS, cache_dir, "train.precision=float32", *overrides)


@pytest.mark.parametrize("best", CANDIDATES)
def test_the_fastest_size_is_used_for_the_pretrained_backbone(tmp_path: Path, best: int) -> None:
    fake = FakeTiming(best)
    resolved, record = resolve_auto(blog(tmp_path), measure=fake)
    assert resolved.train.feature_batch_size == {"mobilenet_v2": best}
    assert resolved.feature_batch_size(MOBILENET) == best
    assert fake.timed == [["mobilenet_v2 160x160 alpha 0.35 float32"]]  # not the CNN
    entry = record["backbones"]["mobilenet_v2"]
    assert entry["batch_size"] == best and not entry["cached"]
    assert set(entry["seconds_per_image"]) == {str(n) for n in CANDIDATES}


def test_a_second_study_reads_the_cache_and_another_shape_is_timed(tmp_path: Path) -> None:
    fake = FakeTiming(8)
    resolve_auto(blog(tmp_path), measure=fake)
    again, record = resolve_auto(blog(tmp_path), measure=fake)
    assert len(fake.timed) == 1 and record["backbones"]["mobilenet_v2"]["cached"]
    assert again.feature_batch_size(MOBILENET) == 8
    resolve_auto(blog(tmp_path, "data.image_size=[96, 96]"), measure=fake)
    assert fake.timed[1] == ["mobilenet_v2 96x96 alpha 0.35 float32"]
    [entry] = json.loads((tmp_path / CACHE_FILE).read_text())["machines"].values()
    assert len(entry["shapes"]) == 2


def test_the_inference_is_timed_in_the_backbones_policy(tmp_path: Path) -> None:
    sweep = blog(tmp_path, "train.precision={mobilenet_v2: mixed_bfloat16}")
    assert computed_shapes(sweep)["mobilenet_v2"].policy == "mixed_bfloat16"


@pytest.mark.parametrize(
    "override",
    [
        "train.feature_batch_size=16",
        "train.feature_batch_size={mobilenet_v2: 16}",
        "train.cache_features=false",  # no features computed: nothing to time
        "space.backbone={choice: [cnn]}",
    ],
)
def test_nothing_is_timed_where_nothing_is_auto(tmp_path: Path, override: str) -> None:
    fake = FakeTiming(8)
    sweep = blog(tmp_path, override)
    assert resolve_auto(sweep, measure=fake) == (sweep, {})
    assert fake.timed == [] and not (tmp_path / CACHE_FILE).exists()
    if "16" in override:
        assert sweep.feature_batch_size(MOBILENET) == 16


def test_unresolved_auto_is_the_training_batch_size(tmp_path: Path) -> None:
    assert blog(tmp_path, "data.batch_size=24").feature_batch_size(MOBILENET) == 24


def test_a_failed_timing_uses_a_middle_size_uncached(tmp_path: Path) -> None:
    def broken(shapes: Sequence[BackboneShape], weights: PretrainedWeights) -> list:
        raise RuntimeError("the timing's process died")

    resolved, _ = resolve_auto(blog(tmp_path), measure=broken)
    assert resolved.feature_batch_size(MOBILENET) == CANDIDATES[1]
    assert not (tmp_path / CACHE_FILE).exists()


@pytest.mark.parametrize("content", ["{", '{"format": 1, "machines": {"k": {"shapes": {}}}}'])
def test_a_bad_cache_is_timed_again(tmp_path: Path, content: str) -> None:
    (tmp_path / CACHE_FILE).write_text(content)
    fake = FakeTiming(32)
    resolved, _ = resolve_auto(blog(tmp_path), measure=fake)
    assert len(fake.timed) == 1 and resolved.feature_batch_size(MOBILENET) == 32


def test_an_unknown_backbone_or_a_bad_size_is_refused(tmp_path: Path) -> None:
    from ablation.errors import UserError

    for value in ("0", "{resnet: 8}", "big"):
        with pytest.raises(UserError, match="train.feature_batch_size"):
            blog(tmp_path, f"train.feature_batch_size={value}")


@pytest.mark.slow
def test_a_real_timing_in_a_spawned_process() -> None:
    shape = BackboneShape("mobilenet_v2", (64, 64), 0.35, "float32")
    weights = PretrainedWeights(weights=str(SMALL_WEIGHTS), alpha=0.35)
    [timings] = measure_in_process([shape], weights, threads=1)
    assert set(timings) == set(CANDIDATES)
    assert all(0 < seconds < 1 for seconds in timings.values())
