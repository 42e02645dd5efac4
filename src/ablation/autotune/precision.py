"""Which Keras dtype policy a configuration's model computes in (``train.precision``).

A policy as written (``float32``, ``mixed_bfloat16``, ``mixed_float16``) or one per
backbone (``{cnn: mixed_bfloat16}``; a backbone left out computes in float32) is
looked up by :meth:`ablation.sweep.sections.Train.dtype_policy`. ``auto`` is decided
by measurement: before any
trial, :func:`ablation.study.runner.run_sweep` calls :func:`resolve_auto`, which times a
few training steps of each backbone's :class:`Shape` in each candidate policy
(float32 and mixed_bfloat16, plus mixed_float16 where TensorFlow sees a GPU) in a
spawned process, and picks the fastest only if it takes at least :data:`MARGIN`
less time per step than float32 (:func:`pick`); otherwise float32. Decision and
timings are kept in ``data.cache_dir/precision.json`` per machine
(:func:`machine_identity`) and shape, so later studies on the machine skip the
timing. ``auto`` left unresolved (a model built outside a study: tests, bench, a
dry run) computes in float32, which every machine computes.

Example:
    >>> from ablation.sweep.sections import Train
    >>> from ablation.sweep.factors import Configuration
    >>> per_backbone = Train(precision={"cnn": "mixed_bfloat16"})
    >>> [per_backbone.dtype_policy(Configuration(backbone=b)) for b in ("cnn", "mobilenet_v2")]
    ['mixed_bfloat16', 'float32']
    >>> Train(precision="auto").dtype_policy(Configuration())  # not resolved: float32
    'float32'
    >>> pick({"float32": 1.00, "mixed_bfloat16": 0.98})  # 2% faster: not a clear win
    'float32'
    >>> pick({"float32": 1.00, "mixed_bfloat16": 0.53})
    'mixed_bfloat16'
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from ablation.autotune.timings import AutoSetting, in_spawned_process, resolve
from ablation.model.builders import timing_network
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.factors import BackboneName, Configuration, is_one_of
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.sections import Precision

MARGIN = 0.10
"""A policy other than float32 is picked only if its step takes at least 10% less time:
closer than that is within run-to-run noise, and float32 is the blog's arithmetic."""
WARMUP_STEPS = 2  # traced and warmed up, not timed
TIMED_STEPS = 5  # the median of these is a policy's time per step
CACHE_FILE = "precision.json"
Timings = dict[str, float]  # policy -> seconds per training step
# Times each shape's training step in every candidate policy (tests fake it).
Measure = Callable[[Sequence["Shape"], PretrainedWeights], list[Timings]]


def pick(timings: Timings) -> Precision:
    """The fastest policy if it beats float32 by :data:`MARGIN`, else float32."""
    fastest = min(timings, key=timings.__getitem__)
    if timings[fastest] <= (1 - MARGIN) * timings["float32"]:
        return fastest  # type: ignore[return-value]
    return "float32"


@dataclass(frozen=True)
class Shape:
    """The training step timed for a backbone: what its speed depends on.

    Not part of it: the number of classes (only the logits' width; timed with 2)
    and the weights file (its values do not change the arithmetic).

    >>> Shape("mobilenet_v2", (160, 160), 32, augment=True, alpha=1.0).key
    'mobilenet_v2 160x160 batch 32 alpha 1 augment'
    """

    backbone: BackboneName
    image_size: tuple[int, int]
    batch_size: int
    augment: bool  # random flip and rotation in front: the frozen backbone runs every step
    alpha: float | None = None  # the backbone's width; None for one without (the CNN)

    @property
    def key(self) -> str:
        size, augment = "x".join(map(str, self.image_size)), "" if self.augment else " no"
        alpha = f" alpha {self.alpha:g}" if self.alpha is not None else ""
        return f"{self.backbone} {size} batch {self.batch_size}{alpha}{augment} augment"


def timed_shapes(sweep: Sweep) -> dict[str, Shape]:
    """For each backbone the space can produce, the step timed: with augmentation if any
    of its configurations augments (the heaviest step; without it a frozen backbone's
    features are computed once), at the widest width it can have. Fine-tuning steps
    are not timed.

    >>> from ablation.sweep.config import load_sweep
    >>> [shape.key for shape in timed_shapes(load_sweep("sweeps/blog.yaml")).values()]
    ['cnn 160x160 batch 32 augment', 'mobilenet_v2 160x160 batch 32 alpha 1 augment']
    """
    widths = space.widest_widths(sweep.space, sweep.model.alpha)
    return {
        backbone: Shape(
            backbone,
            tuple(sweep.data.image_size),  # type: ignore[arg-type]
            sweep.data.batch_size,
            augment=is_one_of(True, space.values_with(sweep.space, "augment", backbone)),
            alpha=widths.get(backbone),
        )
        for backbone in space.backbones(sweep.space)
    }


def resolve_auto(
    sweep: Sweep, measure: Measure | None = None, threads: int | None = None
) -> tuple[Sweep, dict[str, Any]]:
    """The sweep with ``precision: auto`` replaced by the measured ``{backbone: policy}``,
    and what decided it (for the study's record); any other sweep as it is, and ``{}``.

    ``measure`` times the shapes not in the cache (default :func:`measure_in_process`, with
    ``threads``: a trial process's). The sweep's pretrained weights must load.
    """
    measure = measure or functools.partial(measure_in_process, threads=threads)
    return resolve(PRECISION, sweep, measure, threads)


def _decision(timings: Timings) -> dict[str, Any]:
    return {
        "policy": pick(timings),
        "seconds_per_step": {p: float(f"{t:.4g}") for p, t in timings.items()},
    }


def _valid(entry: dict[str, Any]) -> bool:
    """A cached decision names a policy (else it is timed again)."""
    return entry.get("policy") in get_args(Precision)


PRECISION = AutoSetting(
    train_field="precision",
    shapes=timed_shapes,
    decide=_decision,
    fallback={"policy": "float32"},
    valid=_valid,
    notes={"margin": MARGIN},
)


def measure_in_process(
    shapes: Sequence[Shape], weights: PretrainedWeights, threads: int | None = None
) -> list[Timings]:
    """:func:`time_shapes` in a fresh spawned process with a trial's ``threads``."""
    return in_spawned_process(time_shapes, list(shapes), weights, threads=threads)


def time_shapes(
    shapes: Sequence[Shape],
    weights: PretrainedWeights,
    warmup: int = WARMUP_STEPS,
    steps: int = TIMED_STEPS,
) -> list[Timings]:
    """Seconds per training step of each shape in each candidate policy, in this process:
    one batch of random 0-255 images per step, deterministic ops as in a trial, the
    policies' steps alternating (a change of load falls on all alike), medians kept."""
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    policies: list[Precision] = ["float32", "mixed_bfloat16"]
    if tf.config.list_physical_devices("GPU"):
        policies.append("mixed_float16")
    return [_time_policies(shape, weights, policies, warmup, steps) for shape in shapes]


def _time_policies(
    shape: Shape, weights: PretrainedWeights, policies: list[Precision], warmup: int, steps: int
) -> Timings:
    import keras
    import numpy as np

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (shape.batch_size, *shape.image_size, 3)).astype("float32")
    y = rng.integers(0, 2, shape.batch_size)
    configuration = Configuration(backbone=shape.backbone, augment=shape.augment, alpha=shape.alpha)
    models = {}
    for policy in policies:
        models[policy] = timing_network(configuration, shape.image_size, weights, policy).model
    for model in models.values():
        for _ in range(warmup):
            model.train_on_batch(x, y)
    seconds: dict[str, list[float]] = {policy: [] for policy in models}
    for _ in range(steps):
        for policy, model in models.items():
            started = time.perf_counter()
            model.train_on_batch(x, y)
            seconds[policy].append(time.perf_counter() - started)
    return {policy: statistics.median(times) for policy, times in seconds.items()}
