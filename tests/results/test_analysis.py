from __future__ import annotations

import math

import pytest
from scipy import stats

from ablation.results.analysis import ablation_table, configuration_table, state_counts
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


def test_effects_are_means_of_matched_pairs_with_t_intervals() -> None:
    effects = {(e.factor, e.level): e for e in ablation_table(RECORDS, LEVELS, DEPENDENTS)}
    augment = effects[("augment", True)]
    # Pairs: same backbone and seed, rotation ignored: (b0-a0), (c0-a0), (b1-a1), (e0-d0).
    expected = [0.64 - 0.60, 0.61 - 0.60, 0.63 - 0.62, 0.97 - 0.95]
    assert sorted(augment.differences) == pytest.approx(sorted(expected))
    assert augment.effect == pytest.approx(0.02)  # (0.04 + 0.01 + 0.01 + 0.02) / 4
    # The one-sample t-test's interval, from SciPy: about [-0.0025, +0.0425].
    interval = stats.ttest_1samp(expected, 0.0).confidence_interval(0.95)
    assert augment.interval == pytest.approx((interval.low, interval.high))
    assert augment.interval == pytest.approx((-0.0025033, 0.0425033), abs=1e-6)
    assert "from 4 pairs" in augment.verdict()
    assert (
        augment.verdict() == "+2.0 points [-0.3, +4.3] from 4 pairs: not distinguishable from zero"
    )

    rotation = effects[("rotation", 0.2)]
    assert rotation.differences == pytest.approx([0.61 - 0.64])  # only cnn seed 0 has both
    assert rotation.interval is None
    assert "too few to tell" in rotation.verdict()

    backbone = effects[("backbone", "mobilenet_v2")]
    assert sorted(backbone.differences) == pytest.approx(sorted([0.95 - 0.60, 0.97 - 0.64]))
    assert effects[("backbone", "cnn")].verdict() == "baseline"
    assert effects[("augment", False)].level_mean == pytest.approx(2.17 / 3)  # 0.60, 0.62, 0.95


def test_no_pairs_is_said_plainly() -> None:
    lonely = [record("a", 0, 0.6, backbone="cnn"), record("b", 1, 0.9, backbone="mobilenet_v2")]
    effect = ablation_table(lonely, {"backbone": ["cnn", "mobilenet_v2"]}, {})[1]
    assert effect.pairs == 0 and effect.verdict() == "no matched pairs: cannot tell"


def test_a_clear_effect_is_called_clear() -> None:
    records = []
    for seed in range(5):
        records.append(record(f"c{seed}", seed, 0.60 + 0.01 * seed, backbone="cnn"))
        records.append(record(f"m{seed}", seed, 0.95 + 0.005 * seed, backbone="mobilenet_v2"))
    effect = ablation_table(records, {"backbone": ["cnn", "mobilenet_v2"]}, {})[1]
    assert effect.verdict().endswith(": clear")
