"""The study's configurations: pure functions on trial records.

A :class:`ablation.tracking.records.TrialRecord` is one trial as MLflow recorded it.
:func:`configuration_table` aggregates the seeds of each configuration (mean and sample
standard deviation of validation and test accuracy, and how many seeds collapsed); what
each design choice contributed is :mod:`ablation.effects.estimates`.

Only COMPLETE trials enter any mean; the others are counted apart. A collapsed trial (its
network predicts one class, or learned nothing) is complete: its numbers are real
outcomes and stay in the means, and the rows say how many there are.

Example:
    >>> complete = TrialState.COMPLETE
    >>> records = [
    ...     TrialRecord("a", {"augment": False}, 0, complete, test_accuracy=0.58),
    ...     TrialRecord("b", {"augment": False}, 1, complete, test_accuracy=0.50,
    ...                 collapse_reason="predicts cats for 100.0% of the test images"),
    ... ]
    >>> row = configuration_table(records)[0]
    >>> round(row.test.mean, 2), row.collapsed_text
    (0.54, 'collapsed in 1 of 2 seeds')
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ablation.sweep.factors import Params, Scalar
from ablation.tracking.records import TrialRecord, TrialState

Key = tuple[tuple[str, Scalar], ...]


def configuration_key(params: Mapping[str, Scalar]) -> Key:
    return tuple(sorted(params.items()))


def _complete(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials that enter a mean: COMPLETE, with a test accuracy."""
    return [r for r in records if r.state == TrialState.COMPLETE and r.test_accuracy is not None]


def _key(record: TrialRecord) -> Key:
    return configuration_key(record.params)


@dataclass(frozen=True)
class Spread:
    """The mean of some values and their sample standard deviation (None for one value)."""

    mean: float
    sd: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


@dataclass
class ConfigurationRow:
    params: Params
    run_ids: list[str]
    seeds: list[int]
    val_accuracies: list[float]
    test_accuracies: list[float]
    epochs_run: list[int]
    seconds: list[float]
    val_curves: list[tuple[float, ...]] = field(default_factory=list)
    collapsed: list[bool] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.test_accuracies)

    @property
    def collapsed_text(self) -> str:
        """``collapsed in 1 of 3 seeds``, or empty where none collapsed."""
        count = sum(self.collapsed)
        return f"collapsed in {count} of {self.n} seed{'s' if self.n > 1 else ''}" if count else ""

    @property
    def val(self) -> Spread:
        """Validation accuracy (of the best epoch) over the seeds."""
        return Spread.of(self.val_accuracies)

    @property
    def test(self) -> Spread:
        """Test accuracy over the seeds."""
        return Spread.of(self.test_accuracies)

    def mean_curve(self) -> list[float]:
        """Validation accuracy per epoch, averaged over the seeds that reached each epoch."""
        longest = max((len(c) for c in self.val_curves), default=0)
        return [
            statistics.fmean(c[epoch] for c in self.val_curves if len(c) > epoch)
            for epoch in range(longest)
        ]


def state_counts(records: Sequence[TrialRecord]) -> dict[TrialState, int]:
    counts = Counter(r.state for r in records)
    return {state: counts.get(state, 0) for state in TrialState}


def configuration_table(records: Sequence[TrialRecord]) -> list[ConfigurationRow]:
    """One row per configuration over its COMPLETE trials, best validation accuracy first."""
    rows: dict[Key, ConfigurationRow] = {}
    for record in _complete(records):
        assert record.test_accuracy is not None  # _complete keeps only trials with one
        row = rows.setdefault(
            _key(record), ConfigurationRow(dict(record.params), [], [], [], [], [], [])
        )
        row.run_ids.append(record.run_id)
        row.seeds.append(record.seed)
        row.val_accuracies.append(record.best_val_accuracy or 0.0)
        row.test_accuracies.append(record.test_accuracy)
        row.epochs_run.append(record.epochs_run)
        row.seconds.append(record.seconds)
        row.val_curves.append(record.val_curve)
        row.collapsed.append(record.collapsed)
    return sorted(rows.values(), key=lambda r: (-r.val.mean, -r.test.mean))
