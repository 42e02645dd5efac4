"""Arrays on disk: ``.npy`` files in a folder that appears whole or not at all, written
and copied a chunk at a time, so that a process never holds more than a chunk of them.

Fill a folder with :func:`building`; :func:`allocate` a ``.npy`` file there,
:func:`write_rows` into it, :func:`gather` chosen rows of one into a new one.
Read them back with ``np.load(file, mmap_mode="r")``: processes that map the same
file share one copy of it in the operating system's page cache.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "squares"
    >>> with building(folder) as partial:
    ...     allocate(partial / "all.npy", (5,), np.int64)
    ...     write_rows(partial / "all.npy", 0, np.array([0, 1, 4]))
    ...     write_rows(partial / "all.npy", 3, np.array([9, 16]))
    ...     gather(partial / "all.npy", np.array([4, 1]), partial / "some.npy")
    >>> np.load(folder / "some.npy", mmap_mode="r").tolist()
    [16, 1]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK_BYTES = 16 * 2**20  # bytes copied at a time from one file to another


@contextlib.contextmanager
def building(path: Path, done: str | None = None) -> Iterator[Path]:
    """A new temporary folder beside ``path``, renamed to ``path`` once filled (atomic);
    its files, in sub-folders too, are on disk before it is.

    The temporary folder is removed if filling it fails, or if another process made
    ``path`` first (then that one is kept; if ``done`` names a file, it must be in it,
    as a sign that it is complete).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    partial.mkdir()
    try:
        yield partial
        for file in partial.rglob("*"):  # on disk before the folder appears (pages clean)
            if file.is_file():
                with file.open("rb") as opened:
                    os.fsync(opened.fileno())
        try:
            partial.rename(path)
        except OSError:  # a non-empty folder is there: another process won the race
            if not path.is_dir() or (done is not None and not (path / done).is_file()):
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def allocate(file: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
    """A new ``.npy`` file of ``shape`` and ``dtype``, zeros, to be filled with
    :func:`write_rows` (sparse until then)."""
    np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape)


def write_rows(file: Path, start: int, rows: np.ndarray) -> None:
    """Write ``rows`` into the ``.npy`` ``file`` from row ``start`` on, through a
    short-lived map: its pages leave this process once written."""
    out = np.lib.format.open_memmap(file, mode="r+")
    out[start : start + len(rows)] = rows


def gather(source: Path, index: np.ndarray, dest: Path) -> None:
    """The rows ``index`` of the ``.npy`` ``source`` as the new ``.npy`` ``dest``, copied
    a chunk at a time; a second name (hard link) for ``source`` if that is all of it."""
    x = np.load(source, mmap_mode="r")
    shape, dtype = x.shape, x.dtype
    if np.array_equal(index, np.arange(shape[0])):
        os.link(source, dest)
        return
    allocate(dest, (len(index), *shape[1:]), dtype)
    rows = max(1, CHUNK_BYTES // max(1, int(np.prod(shape[1:])) * dtype.itemsize))
    for start in range(0, len(index), rows):
        # A fresh map per chunk, so that the rows read leave this process with it.
        chunk = np.load(source, mmap_mode="r")[index[start : start + rows]]
        write_rows(dest, start, chunk)
