"""The machine's cores, divided between the workers of a study.

With ``--workers N`` each trial process computes with its share of the cores
this process may run on: TensorFlow's intra-op pool (the threads of one op,
which oneDNN's kernels use), its inter-op pool (independent ops side by side)
and the data pipeline's thread pool each get ``threads`` =
``cores // N`` (at least 1), unless ``--threads`` says otherwise. Two workers
that each asked for every core would fight over them instead.

Example:
    >>> share_of_cores(workers=2, cores=16)
    8
    >>> share_of_cores(workers=3, cores=2)
    1
    >>> share_of_cores(workers=1, cores=8, threads=4)
    4
"""

from __future__ import annotations

import os

from ablation.data.pipeline import pipeline_threads, use_pipeline_threads


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def share_of_cores(workers: int, cores: int | None = None, threads: int | None = None) -> int:
    """Threads per worker: ``threads`` if given, else an even share of ``cores`` (at least 1)."""
    if threads is not None:
        return threads
    return max(1, (cores if cores is not None else available_cores()) // max(1, workers))


def use_threads(threads: int) -> None:
    """Limit this process's TensorFlow and tf.data to ``threads`` threads each.

    Must run before TensorFlow runs its first op (TensorFlow fixes its pools then).
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    use_pipeline_threads(threads)


def threads_in_use() -> dict[str, int]:
    """This process's thread settings as TensorFlow reports them (0: TensorFlow's default)."""
    import tensorflow as tf

    return {
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "pipeline": pipeline_threads() or 0,
    }
