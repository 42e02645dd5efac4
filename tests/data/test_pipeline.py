"""The tf.data pipeline: batches gathered from the arrays (never copied whole into
TensorFlow), the same batches as the whole-array pipeline gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ablation.data.pipeline import eval_dataset, train_dataset


def old_pipeline(x, y, batch_size: int, seed: int | None):  # type: ignore[no-untyped-def]
    """The pipeline before this one: the whole array in TensorFlow."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        dataset = dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))


@pytest.mark.parametrize("shape", [(2, 3, 3), (5,), (2, 2, 4)])
def test_the_batches_are_those_of_the_whole_array_pipeline(tmp_path: Path, shape: tuple) -> None:
    rng = np.random.default_rng(0)
    dtype = np.uint8 if len(shape) == 3 and shape[-1] == 3 else np.float32
    np.save(tmp_path / "x.npy", (rng.random((53, *shape)) * 255).astype(dtype))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")  # images are memory-mapped, features not
    y = rng.integers(0, 3, 53).astype(np.int32)
    for seed in (0, 7):
        new, old = train_dataset(x, y, 8, seed), old_pipeline(np.array(x), y, 8, seed)
        assert new.element_spec == old.element_spec
        epochs = [(list(new.as_numpy_iterator()), list(old.as_numpy_iterator())) for _ in range(3)]
        for got, want in epochs:
            assert len(got) == len(want) == 7
            for (gx, gy), (wx, wy) in zip(got, want, strict=True):
                assert gx.dtype == np.float32 and np.array_equal(gx, wx)
                assert np.array_equal(gy, wy)
        first_batches = [got[0][1].tolist() for got, _ in epochs]
        assert first_batches[0] != first_batches[1]  # reshuffled every epoch
    got = list(eval_dataset(x, y, 8).as_numpy_iterator())
    want = list(old_pipeline(np.array(x), y, 8, None).as_numpy_iterator())
    assert len(got) == len(want) == 7
    assert all(np.array_equal(g[i], w[i]) for g, w in zip(got, want, strict=True) for i in (0, 1))


def test_the_pipeline_gathers_from_the_array_instead_of_copying_it() -> None:
    x = np.ones((10, 4), np.float32)
    dataset = eval_dataset(x, np.zeros(10, np.int32), batch_size=4)
    x[:] = 2  # after the dataset was made: a copy would not see it
    assert {float(v) for batch, _ in dataset.as_numpy_iterator() for v in batch.ravel()} == {2.0}
