"""ablation: a deep-learning tutorial's design choices as an ablation study.

Run a sweep from the command line::

    python -m ablation.run sweeps/blog.yaml --set train.epochs=1

or from Python::

    from ablation import load_sweep, run_sweep
    summary = run_sweep(load_sweep("sweeps/blog.yaml", overrides=["train.epochs=1"]))

The data flow is the folder structure: ``sweep`` (the sweep file, its factors and
search space) -> ``data`` (folders, decoded images, tf.data) -> ``model`` (builders,
features, training) -> ``autotune`` (the machine's cores and timed settings) ->
``tracking`` (MLflow's records) -> ``study`` (Optuna, trials, processes, workers) ->
``results`` (reading a study back). The commands are ``run``, ``report``, ``best`` and
``ui``; this module re-exports the public API, and nothing else re-exports.
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (oneDNN, CPU features) says nothing a user can act on.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ablation.chatter import quiet_tensorflow_import  # noqa: E402

quiet_tensorflow_import()  # the lines TF_CPP_MIN_LOG_LEVEL does not hold back

from ablation.errors import UserError  # noqa: E402
from ablation.study.runner import StudySummary, run_sweep  # noqa: E402
from ablation.study.trial import TrialOutcome  # noqa: E402
from ablation.sweep.config import Sweep, load_sweep  # noqa: E402
from ablation.sweep.factors import Configuration, Factor  # noqa: E402
from ablation.tracking.records import TrialRecord, TrialState  # noqa: E402

__all__ = [
    "Configuration",
    "Factor",
    "StudySummary",
    "Sweep",
    "TrialOutcome",
    "TrialRecord",
    "TrialState",
    "UserError",
    "load_sweep",
    "run_sweep",
]
