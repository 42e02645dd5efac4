"""Adaptive seeds: after each round of seeds, which effects are decided, and which need more.

A study with ``study.seeds: {min: 2, max: 10}`` runs seeds ``0 .. min-1`` of every
configuration, then one more seed at a time of the configurations that enter an
undecided effect, up to ``max``. Looking at the intervals after every round and stopping
once one excludes zero would call null effects clear far more often than 5%, so every
look's intervals are widened for it:

* **A union bound over the planned looks.** A study looks at most ``K = max - min + 1``
  times (after ``min``, ``min + 1``, ..., ``max`` seeds). Each look's intervals are the
  fixed-sample intervals of :func:`ablation.effects.estimates.effects` (seeds and test
  images combined) at confidence ``1 - alpha / (K m)``; whatever the stopping, the chance
  that any look's interval misses its effect is then at most ``alpha / m`` per effect.
* **Bonferroni across the ``m`` effects**, so that all effects' intervals hold together,
  at every look, with probability at least ``1 - alpha`` (95%): a verdict is read off its
  interval, so calls and intervals never disagree (Holm's calls would be a little more
  powerful, but give no intervals to show beside them).

An effect is decided, and its configurations need no more seeds for it, when its interval

* excludes zero: ``gain`` or ``loss``;
* lies within ``± min_effect``: ``negligible``;
* can no longer be decided by seeds: the test set's own interval (the image bootstrap) is
  wider than ``min_effect`` on each side and holds zero, so even infinitely many seeds
  would leave it undecided: ``test set too small``, with the test images that would tell.

Decisions are a pure function of the outcomes: :func:`decisions` replays the looks from
the first seeds on, so a resumed study, another machine and the report all find the same
decisions, and the round each was made in.

Example:
    >>> rule = SeedRule(min_seeds=2, max_seeds=4)
    >>> rule.looks, round(rule.confidence(effects=4), 5)
    (3, 0.99583)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ablation.effects.estimates import Dependents, Effect, Levels, Outcome, effects
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Params, same_value

State = Literal["gain", "loss", "negligible", "test set too small", "undecided"]
ALPHA = 0.05  # all effects' intervals together, at every look


@dataclass(frozen=True)
class SeedRule:
    """The stopping rule's parameters: ``study.seeds: {min, max}`` and ``study.min_effect``."""

    min_seeds: int
    max_seeds: int
    min_effect: float = 0.01
    alpha: float = ALPHA

    @property
    def looks(self) -> int:
        """The most rounds whose intervals are looked at."""
        return self.max_seeds - self.min_seeds + 1

    def confidence(self, effects: int) -> float:
        """Of each look's interval of each of ``effects`` effects."""
        return 1.0 - self.alpha / (self.looks * max(1, effects))


@dataclass(frozen=True)
class Decision:
    """Where an effect stands after the looks so far."""

    effect: Effect  # at the look that decided it, else at the last look
    state: State
    seeds: int  # seeds behind the effect at that look
    round: int | None  # the look that decided it (1: after min seeds); None: undecided
    images_needed: int | None = None  # test set too small: about how many would tell

    @property
    def decided(self) -> bool:
        return self.state != "undecided"

    def describe(self) -> str:
        """The verdict with what it took, e.g. ``gain after 2 seeds (round 1)``."""
        if self.state == "undecided":
            return f"undecided after {self.seeds} seeds"
        said = f"{self.state} after {self.seeds} seeds (round {self.round})"
        if self.images_needed:
            said += f": about {self.images_needed} test images would tell"
        return said


def seed_rule(sweep: Sweep) -> SeedRule | None:
    """The sweep's stopping rule (``study.seeds: {min, max}``); None for a list of seeds."""
    seeds = sweep.study.adaptive
    return None if seeds is None else SeedRule(seeds.min, seeds.max, sweep.study.min_effect)


def state_of(effect: Effect, min_effect: float) -> tuple[State, int | None]:
    """An effect's state from its (look-widened) intervals; the test images that would
    decide one the test set is too small for.

    >>> e = Effect(factor="augment", level=True, baseline=False, level_mean=0.6,
    ...            contexts_used=1, contexts_missing=0, estimate=0.004, n_images=200,
    ...            interval=(-0.05, 0.058), test_interval=(-0.04, 0.048), verdict="undecided")
    >>> state_of(e, 0.01)
    ('test set too small', 10756)
    """
    if effect.verdict in ("gain", "loss", "negligible"):
        return effect.verdict, None
    if effect.test_interval is None or effect.estimate is None or not effect.n_images:
        return "undecided", None
    low, high = effect.test_interval
    half = (high - low) / 2.0
    if low <= 0.0 <= high and half > min_effect:
        # The easier of the two calls: excluding zero, or fitting within ±min_effect.
        target = max(abs(effect.estimate), min_effect - abs(effect.estimate))
        return "test set too small", math.ceil(effect.n_images * (half / target) ** 2)
    return "undecided", None


def decisions(
    outcomes: Sequence[Outcome],
    levels: Levels,
    dependents: Dependents,
    rule: SeedRule,
    *,
    resamples: int = 2000,
) -> list[Decision]:
    """Every effect's decision, replaying the looks: after ``min`` seeds (seeds ``0 ..
    min-1``), then after each further seed while an effect is undecided. An effect decided
    at a look keeps that decision."""
    found: dict[tuple[str, str], Decision] = {}
    for seeds in range(rule.min_seeds, rule.max_seeds + 1):
        seen = [o for o in outcomes if o.seed < seeds]
        if seeds > rule.min_seeds and not any(o.seed == seeds - 1 for o in seen):
            break  # this round has not run (yet)
        widened = effects(
            seen,
            levels,
            dependents,
            min_effect=rule.min_effect,
            confidence=rule.confidence(compared_levels(levels)),
            resamples=resamples,
        )
        for effect in widened:
            key = (effect.factor, repr(effect.level))
            if effect.estimate is None or (key in found and found[key].decided):
                continue
            state, needed = state_of(effect, rule.min_effect)
            decided_in = seeds - rule.min_seeds + 1 if state != "undecided" else None
            found[key] = Decision(effect, state, effect.seeds, decided_in, needed)
        if found and all(d.decided for d in found.values()):
            break
    return list(found.values())


def compared_levels(levels: Levels) -> int:
    """How many effects a design has (``m``): each factor's levels but its baseline.

    >>> compared_levels({"backbone": ["cnn", "mobilenet_v2"], "rotation": [0.1, 0.2, 0.3]})
    3
    """
    return sum(max(0, len(choices) - 1) for choices in levels.values())


def next_seed_configurations(
    undecided: Sequence[Decision], configurations: Sequence[Params]
) -> list[Params]:
    """The configurations that enter an undecided effect: at its level or its baseline."""

    def enters(params: Params, decision: Decision) -> bool:
        effect = decision.effect
        if effect.factor not in params:
            return False
        value = params[effect.factor]
        return same_value(value, effect.level) or same_value(value, effect.baseline)

    return [p for p in configurations if any(enters(p, d) for d in undecided if not d.decided)]
