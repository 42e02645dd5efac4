"""Which Keras dtype policy a configuration's model computes in (``train.precision``).

``auto`` picks what was measured faster on this project's machines
(``bench/README.md``): bfloat16 for the small CNN (1.9x on a CPU with AVX512-BF16),
float32 for MobileNetV2 (bfloat16 was slower), and float32 for every model on a
machine whose CPU lacks native bfloat16 or that has a GPU (not measured there).

Example:
    >>> from ablation.config import Train
    >>> from ablation.factors import Configuration
    >>> dtype_policy(Train(precision={"cnn": "mixed_bfloat16"}), Configuration(backbone="cnn"))
    'mixed_bfloat16'
    >>> dtype_policy(Train(precision={"cnn": "mixed_bfloat16"}),
    ...              Configuration(backbone="mobilenet_v2"))
    'float32'
    >>> has_bfloat16_flags("flags\\t\\t: fpu sse2 avx512f avx512_bf16\\n")
    True
"""

from __future__ import annotations

import functools
from pathlib import Path

from ablation.config import Precision, Train
from ablation.factors import Configuration


def dtype_policy(train: Train, configuration: Configuration) -> Precision:
    """The Keras dtype policy of a configuration's model (its logits stay float32)."""
    if train.precision == "auto":
        # The small CNN (the one backbone that is not pretrained) is the one that gains.
        if not configuration.pretrained and _cpu_computes_bfloat16():
            return "mixed_bfloat16"
        return "float32"
    if isinstance(train.precision, dict):
        return train.precision.get(configuration.backbone, "float32")
    return train.precision


@functools.cache
def _cpu_computes_bfloat16() -> bool:
    """No GPU, and a CPU with bfloat16 instructions (Linux's /proc/cpuinfo flags)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return has_bfloat16_flags(cpuinfo)


def has_bfloat16_flags(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's flags name native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16"})
