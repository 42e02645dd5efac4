"""TensorFlow's C++ start-up lines stay off the terminal; what else it writes stays on."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # imports TensorFlow in fresh processes

IMPORT = (
    "import ablation, sys, tensorflow as tf; tf.constant(1.0) + 1; sys.stderr.write('after\\n')"
)


def stderr_of(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_importing_tensorflow_through_the_package_prints_nothing() -> None:
    assert stderr_of(IMPORT) == ["after"]


def test_a_real_problem_during_the_import_still_shows() -> None:
    # Written to file descriptor 2, as C++ writes, while TensorFlow's own import runs.
    code = (
        "import ablation, importlib.abc, os, sys\n"
        "class Loud(importlib.abc.MetaPathFinder):\n"
        "    said = False\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.startswith('tensorflow.') and not Loud.said:\n"
        "            Loud.said = True\n"
        "            os.write(2, b'E0000 a real problem\\n')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Loud())\n"
        "import tensorflow\n"
        "sys.stderr.write('after\\n')\n"
    )
    assert stderr_of(code) == ["E0000 a real problem", "after"]
