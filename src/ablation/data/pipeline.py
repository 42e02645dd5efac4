"""Arrays (decoded images or backbone features) served as tf.data batches, as float32.

The dataset holds indices, not the arrays: each batch is gathered from the numpy
array when it is needed, so TensorFlow never holds a copy of the whole array (which
may be a memory map of a file larger than a process should hold; see
:mod:`ablation.data.arrays`). The batches, and their order epoch after epoch, are those
of ``tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed)``.

Example:
    >>> x, y = np.arange(10).reshape(10, 1), np.arange(10) % 2
    >>> [labels.tolist() for _, labels in eval_dataset(x, y, batch_size=4).as_numpy_iterator()]
    [[0, 1, 0, 1], [0, 1, 0, 1], [0, 1]]
    >>> batches = list(train_dataset(x, y, batch_size=4, seed=0).as_numpy_iterator())
    >>> batches[0][0].dtype, [len(labels) for _, labels in batches]
    (dtype('float32'), [4, 4, 2])
    >>> sorted(np.concatenate([images[:, 0] for images, _ in batches]).astype(int).tolist())
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import numpy as np

_private_threads: int | None = None  # set by use_pipeline_threads; None: tf.data's own pool


def use_pipeline_threads(threads: int | None) -> None:
    """Size every later dataset's thread pool to ``threads`` (this process's share of the
    cores, :func:`ablation.autotune.cores.use_threads`); None: tf.data's default."""
    global _private_threads
    _private_threads = threads


def pipeline_threads() -> int | None:
    """The thread pool size set by :func:`use_pipeline_threads` (None: tf.data's default)."""
    return _private_threads


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):  # -> tf.data.Dataset
    """A training set (images or features), reshuffled every epoch in an order fixed by
    ``seed``; prefetched."""
    import tensorflow as tf

    indices = tf.data.Dataset.range(len(y))
    shuffled = indices.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return _batches(shuffled, x, y, batch_size)


def eval_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):  # -> tf.data.Dataset
    """A validation or test set (images or features): fixed order, prefetched."""
    import tensorflow as tf

    return _batches(tf.data.Dataset.range(len(y)), x, y, batch_size)


def _batches(indices, x: np.ndarray, y: np.ndarray, batch_size: int):
    """Batches of ``indices``, each gathered from ``x`` and ``y``; ``x`` as float32."""
    import tensorflow as tf

    x, y = np.asarray(x), np.asarray(y)  # a memory map stays one (no copy)

    def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[index], y[index]

    def load(index):
        dtypes = [tf.as_dtype(x.dtype), tf.as_dtype(y.dtype)]
        images, labels = tf.numpy_function(gather, [index], dtypes, stateful=False)
        images.set_shape((None, *x.shape[1:]))
        labels.set_shape((None, *y.shape[1:]))
        return _to_float(images, labels)

    return (
        indices.batch(batch_size)
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(_options())
    )


def _options():  # -> tf.data.Options
    """The pipeline's options: its thread pool sized to this worker's share of the cores."""
    import tensorflow as tf

    options = tf.data.Options()
    threads = pipeline_threads()
    if threads is not None:
        options.threading.private_threadpool_size = threads
    return options


def _to_float(x, y):
    import tensorflow as tf

    return tf.cast(x, tf.float32), y
