"""Files that several processes share: a lock, and a write that appears whole or not at all.

Example:
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "notes" / "decided.json"
    >>> with locked(path):
    ...     write_atomically(path, lambda partial: partial.write_text("{}"))
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('{}', ['decided.json', 'decided.json.lock'])
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock of ``path`` (an flock on ``path.lock`` beside it): every process on
    this machine that asks for it waits its turn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(partial)`` a file beside ``path``, then rename it over ``path``: a reader
    (another process, another machine on a shared folder) sees the old file or the new
    one, never half of one. ``partial`` keeps ``path``'s suffix (``np.save`` needs it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
