from __future__ import annotations

import math

import pytest

from ablation.results.analysis import configuration_table, state_counts
from ablation.tracking.records import TrialRecord, TrialState

LEVELS = {"augment": [False, True], "rotation": [0.1, 0.2], "backbone": ["cnn", "mobilenet_v2"]}
DEPENDENTS = {"augment": {"rotation"}, "rotation": set(), "backbone": set()}


def record(run: str, seed: int, test: float, state: str = "COMPLETE", **params) -> TrialRecord:  # type: ignore[no-untyped-def]
    return TrialRecord(
        run, params, seed, TrialState(state), best_val_accuracy=test + 0.01, test_accuracy=test
    )


RECORDS = [
    record("a0", 0, 0.60, augment=False, backbone="cnn"),
    record("a1", 1, 0.62, augment=False, backbone="cnn"),
    record("b0", 0, 0.64, augment=True, rotation=0.1, backbone="cnn"),
    record("b1", 1, 0.63, augment=True, rotation=0.1, backbone="cnn"),
    record("c0", 0, 0.61, augment=True, rotation=0.2, backbone="cnn"),
    record("d0", 0, 0.95, augment=False, backbone="mobilenet_v2"),
    record("e0", 0, 0.97, augment=True, rotation=0.1, backbone="mobilenet_v2"),
    record("f0", 0, 0.10, "FAIL", augment=True, rotation=0.2, backbone="mobilenet_v2"),
    record("g0", 0, 0.10, "PRUNED", augment=False, backbone="cnn"),
]


def test_configuration_rows_aggregate_complete_seeds_only() -> None:
    rows = {tuple(sorted(r.params.items())): r for r in configuration_table(RECORDS)}
    assert len(rows) == 5
    cnn = rows[(("augment", False), ("backbone", "cnn"))]
    assert cnn.test_accuracies == [0.60, 0.62]  # the pruned trial is not in it
    assert cnn.test.mean == pytest.approx(0.61)
    assert cnn.test.sd == pytest.approx(0.02 / math.sqrt(2))  # two values: |a - b| / sqrt(2)
    assert rows[(("augment", True), ("backbone", "cnn"), ("rotation", 0.2))].test.sd is None
    assert [r.params["backbone"] for r in configuration_table(RECORDS)][:2] == ["mobilenet_v2"] * 2
    assert state_counts(RECORDS) == {"COMPLETE": 7, "PRUNED": 1, "FAIL": 1, "RUNNING": 0}


def test_collapsed_seeds_stay_in_the_means_and_are_counted() -> None:
    dead = "predicts cats for 100.0% of the test images"
    records = [
        TrialRecord("a", {"augment": True}, 0, TrialState.COMPLETE, test_accuracy=0.64),
        TrialRecord(
            "b", {"augment": True}, 1, TrialState.COMPLETE, test_accuracy=0.50, collapse_reason=dead
        ),
        TrialRecord("c", {"augment": True}, 2, TrialState.COMPLETE, test_accuracy=0.62),
        TrialRecord("d", {"augment": False}, 0, TrialState.COMPLETE, test_accuracy=0.60),
    ]
    rows = {r.params["augment"]: r for r in configuration_table(records)}
    assert rows[True].test.mean == pytest.approx((0.64 + 0.50 + 0.62) / 3)
    assert rows[True].collapsed_text == "collapsed in 1 of 3 seeds"
    assert rows[False].collapsed_text == ""
