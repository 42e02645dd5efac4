"""What each design choice contributed, estimated over the right units: pure functions.

A level's effect is the treated-minus-control test accuracy within a *context* (the other
factors' values, dependents such as ``rotation`` left out) and a seed: a point's repeats
averaged, then a side's dependent levels. Each seed's effect is the mean over its contexts;
the interval combines the seeds' spread with the test set's sampling (an image bootstrap).

Example:
    >>> outcomes = []
    >>> for seed, (control, treated) in enumerate([(0.60, 0.66), (0.62, 0.67), (0.61, 0.68)]):
    ...     outcomes += [Outcome({"augment": False}, seed, control),
    ...                  Outcome({"augment": True, "rotation": 0.2}, seed, treated)]
    >>> effect = effects(outcomes, {"augment": [False, True]}, {"augment": {"rotation"}})[1]
    >>> effect.describe()
    '+6.0 points [+3.5, +8.5] over 3 seeds: gain'
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ablation.sweep.factors import Params, Scalar, same_value, value_key

Verdict = Literal["gain", "loss", "negligible", "undecided", "baseline", "no pairs"]
Interval = tuple[float, float]
Key = tuple[tuple[str, Hashable], ...]
Levels = Mapping[str, Sequence[Scalar]]  # each factor's choices, baseline first
Dependents = Mapping[str, set[str]]  # each factor's: the factors that exist only because of it

SEEDS_AND_IMAGES = "seeds and test images"
NOT_IMAGES = "no per-image predictions, the test set's sampling is not covered"
SEEDS_ONLY = f"seeds only: {NOT_IMAGES}"
UNKNOWN = "the seed spread is unknown"
ONE_SEED_CONTEXTS = (
    f"one seed: {UNKNOWN}; contexts taken as replicates, "
    "which assumes the effect is the same in every context"
)
ONE_SEED_ONE_CONTEXT = f"one seed, one context: {UNKNOWN}; needs a second seed to tell"


@dataclass(frozen=True, eq=False)
class Outcome:
    """One COMPLETE trial's test outcome."""

    params: Params  # factor -> value (factors not active are absent)
    seed: int
    test_accuracy: float
    correct: np.ndarray | None = None  # per test image 1.0/0.0, one image order for all
    collapsed: bool = False  # the model predicts one class whatever the image


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A level's effect against the baseline level, in fractions (0.05: 5 points)."""

    factor: str
    level: Scalar
    baseline: Scalar
    per_seed: dict[int, float] = field(default_factory=dict)  # mean over contexts of t - c
    collapsed: int = 0  # outcomes entering the effect that predict one class
    n_images: int | None = None  # test images behind test_interval; None: not recorded
    estimate: float | None = None  # the mean of per_seed
    seed_interval: Interval | None = None  # Student-t over per_seed (two seeds or more)
    test_interval: Interval | None = None  # paired bootstrap over the test images
    interval: Interval | None = None  # both sources of error combined: the verdict's
    verdict: Verdict = "no pairs"
    basis: str = "no context has both sides for a seed"  # what the interval covers, assumes

    @property
    def seeds(self) -> int:
        return len(self.per_seed)

    def describe(self) -> str:
        """One line in points: the estimate, its interval, what it stands on, the verdict."""
        if self.estimate is None:
            return "baseline" if self.verdict == "baseline" else "no pairs: cannot tell"
        units = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        units += f" and {self.n_images} test images" if self.n_images else ""
        interval = self.interval or self.test_interval
        only = " (test images only)" if interval and self.interval is None else ""
        shown = f" [{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]{only}" if interval else ""
        return f"{100 * self.estimate:+.1f} points{shown} over {units}: {self.verdict}"


@dataclass(frozen=True, kw_only=True)
class Effect(Estimate):
    """A level's effect over every context where both sides were trained."""

    level_mean: float | None  # mean test accuracy of the outcomes at this level
    contexts_used: int  # contexts with both sides for some seed
    contexts_missing: int  # contexts lacking a side for some seed (left out for that seed)


@dataclass(frozen=True, kw_only=True)
class ContextEffect(Estimate):
    """A level's effect within one context: where factors interact."""

    context: Params  # the other factors' values (the dependents left out)


@dataclass(frozen=True)
class _Settings:
    min_effect: float = 0.01
    confidence: float = 0.95
    resamples: int = 2000
    rng_seed: int = 0


@dataclass(frozen=True)
class _Pairs:
    """One level against the baseline as (seed, context) arrays, NaN where a side lacks."""

    seeds: np.ndarray  # (seeds,)
    contexts: list[Params]
    differences: np.ndarray  # (seeds, contexts): treated - control test accuracy
    images: np.ndarray | None  # (seeds, contexts, images): the same per image; None: unrecorded
    collapsed: np.ndarray  # (seeds, contexts): collapsed outcomes in the pair


def _key(params: Mapping[str, Scalar]) -> Key:
    return tuple(sorted((name, value_key(value)) for name, value in params.items()))


def _is_at(outcome: Outcome, factor: str, level: Scalar) -> bool:
    return factor in outcome.params and same_value(outcome.params[factor], level)


def _mean_of(points: list[list[Outcome]]) -> tuple[float, np.ndarray | None]:
    """The mean over points of each point's mean over its repeats: accuracy, correctness."""
    accuracy = statistics.fmean(statistics.fmean(o.test_accuracy for o in p) for p in points)
    if any(o.correct is None for p in points for o in p):
        return accuracy, None
    per_point = [np.mean([np.asarray(o.correct, float) for o in p], axis=0) for p in points]
    return accuracy, np.mean(per_point, axis=0)


def _pairs(
    outcomes: Sequence[Outcome], factor: str, sides: tuple[Scalar, Scalar], ignored: set[str]
) -> _Pairs:
    """Each (seed, context)'s treated - control; sides: (baseline, level)."""
    cells: dict[tuple[Key, int, bool], dict[Key, list[Outcome]]] = defaultdict(dict)
    contexts: dict[Key, Params] = {}
    for o in outcomes:
        is_treated = _is_at(o, factor, sides[1])
        if is_treated or _is_at(o, factor, sides[0]):
            context = {k: v for k, v in o.params.items() if k not in ignored}
            context_key = _key(context)
            contexts.setdefault(context_key, context)
            cells[(context_key, o.seed, is_treated)].setdefault(_key(o.params), []).append(o)
    seeds = sorted({seed for _, seed, _ in cells})
    differences = np.full((len(seeds), len(contexts)), np.nan)
    collapsed = np.zeros(differences.shape, dtype=int)
    images, unrecorded = None, False
    for (s, seed), (c, context_key) in itertools.product(enumerate(seeds), enumerate(contexts)):
        control = cells.get((context_key, seed, False))
        treated = cells.get((context_key, seed, True))
        if not control or not treated:
            continue
        (control_accuracy, control_correct), (treated_accuracy, treated_correct) = map(
            _mean_of, (list(control.values()), list(treated.values()))
        )
        differences[s, c] = treated_accuracy - control_accuracy
        both = [*control.values(), *treated.values()]
        collapsed[s, c] = sum(o.collapsed for point in both for o in point)
        if treated_correct is None or control_correct is None:
            unrecorded = True
        else:
            if images is None:
                images = np.full((*differences.shape, len(treated_correct)), np.nan)
            images[s, c] = treated_correct - control_correct
    images = None if unrecorded else images
    return _Pairs(np.array(seeds), list(contexts.values()), differences, images, collapsed)


def _combined(
    estimate: float, seed_variance: float, df: int, image_variance: float, confidence: float
) -> Interval:
    """estimate ± t * sqrt(seed_variance + image_variance), t of Welch-Satterthwaite's df."""
    from scipy import special  # stdtrit: Student-t's quantile

    total, tail = seed_variance + image_variance, (1.0 + confidence) / 2.0
    welch_df = total**2 / (seed_variance**2 / df) if seed_variance > 0.0 else math.inf
    welch = special.stdtrit(welch_df, tail) * math.sqrt(total)
    # Never narrower than the seeds' own: with few seeds, a seed variance small by chance
    # raises Welch's df, and 6% of null effects were called so in simulation.
    half = float(max(welch, special.stdtrit(df, tail) * math.sqrt(seed_variance)))
    return estimate - half, estimate + half


def _bootstrap(z: np.ndarray, settings: _Settings) -> tuple[Interval, float]:
    """Percentile interval of the mean of z over resampled images; the bootstrap variance,
    exactly var(z) / N (resamples only estimate it), so no verdict hangs on the resamples."""
    n, resamples = len(z), max(1, settings.resamples)
    rng = np.random.default_rng(settings.rng_seed)
    per_chunk = max(1, 2**22 // n)  # bounds the index matrix's memory
    means = [
        z[rng.integers(0, n, (min(per_chunk, resamples - start), n))].mean(axis=1)
        for start in range(0, resamples, per_chunk)
    ]
    tails = [(1.0 - settings.confidence) / 2.0, (1.0 + settings.confidence) / 2.0]
    low, high = np.quantile(np.concatenate(means), tails)
    return (float(low), float(high)), float(np.var(z)) / n


def _verdict(interval: Interval, min_effect: float) -> Verdict:
    low, high = interval
    if low > 0.0 or high < 0.0:
        return "gain" if low > 0.0 else "loss"
    return "negligible" if -min_effect <= low and high <= min_effect else "undecided"


def _statistics(pairs: _Pairs | None, settings: _Settings, columns: slice) -> dict[str, Any]:
    """The one interval logic, of an Effect (all columns) and a ContextEffect (one). Replicates:
    the seeds' effects (means over contexts); one seed: the contexts'; one of those: undecided."""
    if pairs is None:
        return {"verdict": "baseline", "basis": "the baseline level"}
    differences = pairs.differences[:, columns]
    present = ~np.isnan(differences)
    with_pairs = present.any(axis=1)
    if not with_pairs.any():
        return {}
    per_seed = np.nanmean(differences[with_pairs], axis=1)
    replicates = per_seed if len(per_seed) > 1 else differences[present]
    z = None
    if pairs.images is not None:
        summed = np.where(present[..., None], pairs.images[:, columns], 0.0).sum(axis=1)
        z = (summed[with_pairs] / present.sum(axis=1)[with_pairs, None]).mean(axis=0)
    test_interval, image_variance = _bootstrap(z, settings) if z is not None else (None, 0.0)
    found: dict[str, Any] = {
        "per_seed": dict(zip(pairs.seeds[with_pairs].tolist(), per_seed.tolist(), strict=True)),
        "collapsed": int(pairs.collapsed[:, columns].sum()),
        "estimate": float(np.mean(per_seed)),
        "n_images": None if z is None else len(z),
        "test_interval": test_interval,
        "verdict": "undecided",
        "basis": ONE_SEED_ONE_CONTEXT,
    }
    if len(per_seed) > 1:
        found["basis"] = SEEDS_AND_IMAGES if z is not None else SEEDS_ONLY
    elif len(replicates) > 1:
        found["basis"] = ONE_SEED_CONTEXTS + ("" if z is not None else f"; {NOT_IMAGES}")
    if len(replicates) > 1:
        n, estimate = len(replicates), found["estimate"]
        variance = float(np.var(replicates, ddof=1)) / n
        interval = _combined(estimate, variance, n - 1, image_variance, settings.confidence)
        found.update(interval=interval, verdict=_verdict(interval, settings.min_effect))
        if len(per_seed) > 1:
            found["seed_interval"] = _combined(estimate, variance, n - 1, 0.0, settings.confidence)
    return found


def _compared(
    outcomes: Sequence[Outcome], levels: Levels, dependents: Dependents
) -> Iterator[tuple[dict[str, Any], _Pairs | None]]:
    """Each level of each factor: its names, and its pairs (None for the baseline)."""
    for factor, choices in levels.items():
        ignored = {factor, *dependents.get(factor, set())}
        for level in choices if len(choices) > 1 else []:
            names = {"factor": factor, "level": level, "baseline": choices[0]}
            compared = not same_value(level, choices[0])
            pairs = _pairs(outcomes, factor, (choices[0], level), ignored) if compared else None
            yield names, pairs


def effects(
    outcomes: Sequence[Outcome],
    levels: Levels,
    dependents: Dependents,
    *,
    min_effect: float = 0.01,
    confidence: float = 0.95,
    resamples: int = 2000,
    rng_seed: int = 0,
) -> list[Effect]:
    """The effect of every level of every factor (of two levels or more) against its baseline.

    Args:
        outcomes: COMPLETE trials' outcomes.
        levels: Each factor's choices, baseline first.
        dependents: For each factor, the factors that exist only because of it.
        min_effect: A "negligible" interval lies within ±min_effect.
        confidence: Of every interval.
        resamples: Bootstrap resamples of the test images (seeded by rng_seed).
        rng_seed: Of those resamples.
    """
    settings = _Settings(min_effect, confidence, resamples, rng_seed)
    found = []
    for names, pairs in _compared(outcomes, levels, dependents):
        at_level = [o.test_accuracy for o in outcomes if _is_at(o, names["factor"], names["level"])]
        present = np.zeros((0, 0), bool) if pairs is None else ~np.isnan(pairs.differences)
        found.append(
            Effect(
                level_mean=statistics.fmean(at_level) if at_level else None,
                contexts_used=int(present.any(axis=0).sum()),
                contexts_missing=int((~present).any(axis=0).sum()),
                **names,
                **_statistics(pairs, settings, slice(None)),
            )
        )
    return found


def context_effects(
    outcomes: Sequence[Outcome], levels: Levels, dependents: Dependents, **options: Any
) -> list[ContextEffect]:
    """Each non-baseline level's effect within each context with a pair (arguments and
    keyword options as :func:`effects`). With one seed only the test-set interval exists."""
    settings = _Settings(**options)
    found = []
    for names, pairs in _compared(outcomes, levels, dependents):
        for c, context in enumerate([] if pairs is None else pairs.contexts):
            statistics_ = _statistics(pairs, settings, slice(c, c + 1))
            if statistics_:
                found.append(ContextEffect(context=context, **names, **statistics_))
    return found


def sign_changes(found: Sequence[ContextEffect]) -> list[str]:
    """Per (factor, level) whose estimates differ in sign across contexts, a sentence naming
    the contexts of each sign and whether the opposing ones are each decided."""
    by_level: dict[tuple[str, Hashable], list[ContextEffect]] = defaultdict(list)
    for effect in found:
        by_level[(effect.factor, value_key(effect.level))].append(effect)
    sentences = []
    for group in by_level.values():
        plus = [e for e in group if (e.estimate or 0.0) > 0]
        minus = [e for e in group if (e.estimate or 0.0) < 0]
        if not plus or not minus:
            continue
        named = [" and ".join(map(_named, side)) for side in (plus, minus)]
        each = all(e.verdict == "gain" for e in plus) and all(e.verdict == "loss" for e in minus)
        ending = "each decided" if each else "not each decided (gain or loss)"
        sentences.append(
            f"{group[0].factor}={group[0].level}: + in {named[0]}; - in {named[1]}; {ending}"
        )
    return sentences


def _named(effect: ContextEffect) -> str:
    context = ", ".join(f"{k}={v}" for k, v in effect.context.items()) or "(no other factor)"
    return f"{context} ({effect.verdict})"
