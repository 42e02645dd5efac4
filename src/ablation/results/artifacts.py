"""What the report reads from the trials' artifacts in MLflow: each test image's prediction
(for the effects' test-set intervals) and the confusion matrices of the best configuration.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

import numpy as np

from ablation.effects.estimates import Outcome
from ablation.results.analysis import ConfigurationRow
from ablation.results.tables import Confusion
from ablation.tracking.predictions import read_predictions
from ablation.tracking.records import (
    ARTIFACT_CONFUSION,
    ARTIFACT_PREDICTIONS,
    TrialRecord,
    TrialState,
)
from ablation.tracking.tracker import Tracker


def test_outcomes(tracker: Tracker, records: list[TrialRecord]) -> list[Outcome]:
    """The complete trials' test outcomes, each image's correctness read from its
    predictions and put in one image order (the images every trial was tested on).

    A trial recorded before per-image predictions has none: the effects it enters
    then have no test-set interval, and say so.
    """
    complete = [
        r for r in records if r.state == TrialState.COMPLETE and r.test_accuracy is not None
    ]
    by_run: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, record in enumerate(complete):
            path = tracker.download(record.run_id, ARTIFACT_PREDICTIONS, f"{tmp}/{index}")
            if path is not None:
                found = read_predictions(path.read_text())
                by_run[record.run_id] = dict(zip(found.paths, found.correct, strict=True))
    common = set.intersection(*(set(c) for c in by_run.values())) if by_run else set()
    order = sorted(common)
    outcomes = []
    for record in complete:
        correct = by_run.get(record.run_id)
        outcomes.append(
            Outcome(
                params=dict(record.params),
                seed=record.seed,
                test_accuracy=record.test_accuracy or 0.0,
                correct=np.array([correct[p] for p in order]) if correct and order else None,
                collapsed=record.collapsed,
            )
        )
    return outcomes


def best_confusion(tracker: Tracker, rows: list[ConfigurationRow]) -> Confusion | None:
    """The best configuration's test confusion matrix, its seeds' counts summed (None: a
    study recorded before confusion matrices were)."""
    if not rows:
        return None
    total: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for index, run_id in enumerate(rows[0].run_ids):
            path = tracker.download(run_id, ARTIFACT_CONFUSION, f"{tmp}/{index}")
            if path is None:
                return None
            found = json.loads(path.read_text())
            if total is None:
                total = {"class_names": found["class_names"], "counts": found["counts"], "runs": 0}
            else:
                total["counts"] = [
                    [a + b for a, b in zip(mine, theirs, strict=True)]
                    for mine, theirs in zip(total["counts"], found["counts"], strict=True)
                ]
            total["runs"] += 1
    return total
