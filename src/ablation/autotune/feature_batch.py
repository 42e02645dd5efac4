"""Images per backbone pass when a frozen backbone computes features (``train.feature_batch_size``).

Features are computed in inference mode, where the size of a batch changes no
image's features, only the speed: on a CPU a small batch whose activations stay
in the caches can be twice as fast per image as a large one (bench/README.md:
MobileNetV2 at 160x160 on a 2-core AMD EPYC without AVX-512, 127 images/s at 8
per pass, 88 at 32, 54 at 256), while a GPU wants large batches. An integer is
used as it is. ``auto`` (the default) is decided by measurement: before any
trial, :func:`ablation.study.runner.run_sweep` calls :func:`resolve_auto`, which times
each pretrained backbone's inference (:class:`BackboneShape`: image size, width,
dtype policy) at each of :data:`CANDIDATES` images per pass, in a spawned process
with a trial's threads, and takes the fastest per image. Decisions are kept in
``data.cache_dir/feature_batch.json`` per machine (:mod:`ablation.autotune.timings`).
``auto`` left unresolved (a model built outside a study) is the training batch
size.

Example:
    >>> from ablation.sweep.config import load_sweep
    >>> from ablation.sweep.factors import Configuration
    >>> model4 = Configuration(backbone="mobilenet_v2", augment=True)
    >>> sweep = load_sweep("sweeps/blog.yaml", ["train.feature_batch_size={mobilenet_v2: 8}"])
    >>> sweep.feature_batch_size(model4)
    8
    >>> load_sweep("sweeps/blog.yaml").feature_batch_size(model4)  # auto, unresolved
    32
    >>> pick_batch({8: 0.0079, 32: 0.0114, 128: 0.0160})
    8
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ablation.autotune.timings import AutoSetting, in_spawned_process, resolve
from ablation.model.builders import timing_network
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.factors import BackboneName, Configuration
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.sections import Precision

CANDIDATES = (8, 32, 128)
"""Images per pass timed: small enough for a CPU's caches, large enough for a GPU."""
IMAGES_PER_ROUND = 128  # each candidate computes this many images per round
ROUNDS = 3  # candidates alternate round by round; each one's median is kept
CACHE_FILE = "feature_batch.json"
SecondsPerImage = dict[int, float]  # images per pass -> seconds per image
# Times each shape's inference at every candidate (tests fake it).
Measure = Callable[[Sequence["BackboneShape"], PretrainedWeights], list[SecondsPerImage]]


def pick_batch(timings: SecondsPerImage) -> int:
    """The candidate with the least time per image (the smaller on a tie)."""
    return min(sorted(timings), key=timings.__getitem__)


@dataclass(frozen=True)
class BackboneShape:
    """What a backbone's inference speed depends on.

    >>> BackboneShape("mobilenet_v2", (160, 160), 1.0, "float32").key
    'mobilenet_v2 160x160 alpha 1 float32'
    """

    backbone: BackboneName
    image_size: tuple[int, int]
    alpha: float | None  # None for a backbone without a width
    policy: Precision

    @property
    def key(self) -> str:
        size = "x".join(map(str, self.image_size))
        alpha = f" alpha {self.alpha:g}" if self.alpha is not None else ""
        return f"{self.backbone} {size}{alpha} {self.policy}"


def computed_shapes(sweep: Sweep) -> dict[str, BackboneShape]:
    """The pretrained backbones the space can produce (each at its widest width), if their
    features are computed."""
    if not sweep.train.cache_features:
        return {}
    widths = space.widest_widths(sweep.space, sweep.model.alpha)
    return {
        backbone: BackboneShape(
            backbone,
            tuple(sweep.data.image_size),  # type: ignore[arg-type]
            width,
            sweep.train.dtype_policy(Configuration(backbone=backbone)),
        )
        for backbone, width in widths.items()
    }


def resolve_auto(
    sweep: Sweep, measure: Measure | None = None, threads: int | None = None
) -> tuple[Sweep, dict[str, Any]]:
    """The sweep with ``feature_batch_size: auto`` replaced by the measured
    ``{backbone: images per pass}``, and what decided it (for the study's record); any
    other sweep, or one without a pretrained backbone, as it is, and ``{}``.

    Resolve ``precision: auto`` first: the inference is timed in each backbone's policy.
    """
    measure = measure or functools.partial(measure_in_process, threads=threads)
    return resolve(FEATURE_BATCH, sweep, measure, threads)


def _decision(timings: SecondsPerImage) -> dict[str, Any]:
    return {
        "batch_size": pick_batch(timings),
        "seconds_per_image": {str(n): float(f"{t:.4g}") for n, t in timings.items()},
    }


def _valid(entry: dict[str, Any]) -> bool:
    """A cached decision is a positive number of images (else it is timed again)."""
    size = entry.get("batch_size")
    return isinstance(size, int) and not isinstance(size, bool) and size > 0


FEATURE_BATCH = AutoSetting(
    train_field="feature_batch_size",
    shapes=computed_shapes,
    decide=_decision,
    fallback={"batch_size": CANDIDATES[1]},
    valid=_valid,
    cache_file=CACHE_FILE,  # not feature_batch_size.json: caches written before stay valid
)


def measure_in_process(
    shapes: Sequence[BackboneShape], weights: PretrainedWeights, threads: int | None = None
) -> list[SecondsPerImage]:
    """:func:`time_shapes` in a fresh spawned process with a trial's ``threads``."""
    return in_spawned_process(time_shapes, list(shapes), weights, threads=threads)


def time_shapes(
    shapes: Sequence[BackboneShape], weights: PretrainedWeights, rounds: int = ROUNDS
) -> list[SecondsPerImage]:
    """Seconds per image of each shape's feature extractor (preprocessing and backbone, in
    inference mode, as a trial computes features) at each of :data:`CANDIDATES`, in this
    process: random 0-255 images, candidates alternating round by round, medians kept."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    return [_time_candidates(shape, weights, rounds) for shape in shapes]


def _time_candidates(
    shape: BackboneShape, weights: PretrainedWeights, rounds: int
) -> SecondsPerImage:
    import keras
    import numpy as np
    import tensorflow as tf

    keras.backend.clear_session()
    configuration = Configuration(backbone=shape.backbone, alpha=shape.alpha)
    extractor = timing_network(configuration, shape.image_size, weights, shape.policy).extractor
    assert extractor is not None  # a pretrained backbone's
    images = tf.TensorSpec((None, *shape.image_size, 3), "float32")
    extract = tf.function(lambda batch: extractor(batch, training=False), input_signature=[images])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (IMAGES_PER_ROUND, *shape.image_size, 3)).astype("float32")
    for size in CANDIDATES:
        extract(x[:size])  # traced and warmed up
    seconds: dict[int, list[float]] = {size: [] for size in CANDIDATES}
    for round_ in range(rounds):
        for size in CANDIDATES if round_ % 2 == 0 else CANDIDATES[::-1]:
            started = time.perf_counter()
            for start in range(0, IMAGES_PER_ROUND, size):
                np.asarray(extract(x[start : start + size]))
            seconds[size].append((time.perf_counter() - started) / IMAGES_PER_ROUND)
    return {size: statistics.median(times) for size, times in seconds.items()}
