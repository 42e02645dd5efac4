"""What each design choice contributed, and how sure we are: pure functions on trial records.

A :class:`ablation.tracking.records.TrialRecord` is one trial as MLflow recorded it. From a
list of them:

* :func:`configuration_table` aggregates the seeds of each configuration
  (mean and sample standard deviation of validation and test accuracy);
* :func:`ablation_table` estimates, for each factor, the effect of each level
  against the baseline level (the factor's first choice in the sweep) from
  *matched pairs*: two configurations that differ only in that factor (and in
  the factors that exist only because of it, such as ``rotation`` under
  ``augment``), trained with the same seed. The effect is the mean of the
  paired differences in test accuracy, with a 95% Student-t interval.

Only COMPLETE trials enter any mean; the others are counted apart.

Example:
    >>> complete = TrialState.COMPLETE
    >>> records = [
    ...     TrialRecord("a", {"augment": False}, 0, complete, test_accuracy=0.58),
    ...     TrialRecord("b", {"augment": True, "rotation": 0.2}, 0, complete, test_accuracy=0.63),
    ... ]
    >>> effect = ablation_table(records, {"augment": [False, True], "rotation": [0.2]},
    ...                         {"augment": {"rotation"}})[1]
    >>> effect.level, round(effect.effect, 2), effect.pairs
    (True, 0.05, 1)
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from ablation.sweep.factors import Params, Scalar, same_value, value_key
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

    @property
    def n(self) -> int:
        return len(self.test_accuracies)

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
    return sorted(rows.values(), key=lambda r: (-r.val.mean, -r.test.mean))


@dataclass
class Effect:
    """The effect of one level of a factor against the factor's baseline level."""

    factor: str
    level: Scalar
    baseline: Scalar
    level_mean: float | None  # mean test accuracy of all complete trials at this level
    differences: list[float]  # matched-pair differences in test accuracy

    @property
    def pairs(self) -> int:
        return len(self.differences)

    @property
    def effect(self) -> float | None:
        return statistics.fmean(self.differences) if self.differences else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% Student-t interval of the mean paired difference (needs two pairs)."""
        if self.pairs < 2:
            return None
        from scipy import stats

        half = stats.t.ppf(0.975, self.pairs - 1) * statistics.stdev(self.differences)
        half /= math.sqrt(self.pairs)
        mean = statistics.fmean(self.differences)
        return mean - half, mean + half

    def verdict(self) -> str:
        """In plain words: the effect, its interval, and whether it can be told from zero."""
        if same_value(self.level, self.baseline):
            return "baseline"
        if not self.differences:
            return "no matched pairs: cannot tell"
        points = 100 * (self.effect or 0.0)
        if self.pairs == 1:
            return f"{points:+.1f} points from one pair: too few to tell"
        low, high = self.interval or (0.0, 0.0)
        sure = "clear" if low > 0 or high < 0 else "not distinguishable from zero"
        return (
            f"{points:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}] "
            f"from {self.pairs} pairs: {sure}"
        )


def ablation_table(
    records: Sequence[TrialRecord],
    levels: Mapping[str, Sequence[Scalar]],
    dependents: Mapping[str, set[str]],
) -> list[Effect]:
    """The effect of every level of every factor against its baseline level.

    Args:
        records: The trials (only COMPLETE ones are used).
        levels: Each factor's choices, baseline first (the sweep's order).
        dependents: For each factor, the factors whose ``when`` depends on it
            (directly or not); they are ignored when matching pairs.
    """
    complete = _complete(records)
    effects: list[Effect] = []
    for factor, choices in levels.items():
        if len(choices) < 2:
            continue
        baseline = choices[0]
        ignored = {factor, *dependents.get(factor, set())}
        by_rest: dict[tuple[Key, int], dict[Hashable, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for record in complete:
            if factor not in record.params:
                continue
            rest = configuration_key({k: v for k, v in record.params.items() if k not in ignored})
            by_rest[(rest, record.seed)][value_key(record.params[factor])].append(
                record.test_accuracy or 0.0
            )
        for level in choices:
            at_level = [
                r.test_accuracy or 0.0
                for r in complete
                if factor in r.params and value_key(r.params[factor]) == value_key(level)
            ]
            differences: list[float] = []
            if not same_value(level, baseline):
                for by_level in by_rest.values():
                    treated = by_level.get(value_key(level), [])
                    control = by_level.get(value_key(baseline), [])
                    differences += [t - c for t in treated for c in control]
            effects.append(
                Effect(
                    factor=factor,
                    level=level,
                    baseline=baseline,
                    level_mean=statistics.fmean(at_level) if at_level else None,
                    differences=differences,
                )
            )
    return effects
