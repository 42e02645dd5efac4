"""TensorFlow imported without its C++ start-up chatter on the terminal.

On CPUs where TensorFlow turns oneDNN on (AVX-512 VNNI, AVX512-BF16, AMX), importing it
writes lines such as ``I0000 ... port.cc:153] oneDNN custom operations are on`` to the
process's standard error, from C++ and before ``absl::InitializeLog()``, so
``TF_CPP_MIN_LOG_LEVEL`` does not hold them back. They say nothing a user can act on,
and they would turn a one-line error (every mistake a user makes ends in one) into
five. :func:`quiet_tensorflow_import` makes the first ``import tensorflow`` of the
process run with file descriptor 2 sent to a temporary file, then writes back
everything it caught but those lines (a real warning or error still shows).

``TF_CPP_MIN_LOG_LEVEL=0`` (TensorFlow's own switch for its logs) keeps every line.

Example:
    >>> drop_chatter("WARNING: All log messages before absl::InitializeLog() is called"
    ...              " are written to STDERR\\nreal problem\\n")
    'real problem\\n'
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType

# TensorFlow's start-up lines: absl's notice, then INFO lines (I<mmdd> <time> <thread> <file>).
CHATTER = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I\d{4} [\d:.]+ +\d+ (port|cpu_feature_guard)\.cc:\d+\]"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def drop_chatter(text: str) -> str:
    """``text`` without TensorFlow's start-up lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not CHATTER.match(line))


@contextlib.contextmanager
def _stderr_filtered() -> Iterator[None]:
    """File descriptor 2 caught while the block runs, then written back without chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = drop_chatter(caught.read().decode(errors="replace"))
            if kept:
                os.write(2, kept.encode())


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` through the other finders and runs its module quietly, once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: and find_spec below must not come back here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            with _stderr_filtered():
                run_module(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def quiet_tensorflow_import() -> None:
    """Make this process's first ``import tensorflow`` quiet (nothing if it happened)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0" or "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietFirstImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFirstImport())
