"""Adaptive seeds in the report: each effect's decision, what it cost, and the effects with
the intervals the stopping needs (:mod:`ablation.effects.sequential`).

In an adaptive study the ablation table's intervals are each look's widened ones, at the
look that decided the effect (else the last look), so that the table and the decisions
never disagree; a fixed-sample 95% interval would claim more than a study that stopped on
what it saw can support.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ablation.effects.estimates import Dependents, Effect, Levels, Outcome
from ablation.effects.sequential import Decision, SeedRule, compared_levels, decisions
from ablation.results.analysis import ConfigurationRow
from ablation.sweep import space
from ablation.sweep.config import Sweep

if TYPE_CHECKING:
    import pandas as pd


def decided_effects(
    found: Sequence[Effect],
    outcomes: Sequence[Outcome],
    levels: Levels,
    dependents: Dependents,
    rule: SeedRule,
) -> tuple[list[Effect], list[Decision]]:
    """The ablation table's effects with each decided effect as its decision has it, and
    the decisions themselves."""
    made = decisions(outcomes, levels, dependents, rule)
    by_key = {(d.effect.factor, repr(d.effect.level)): d for d in made}
    effects = []
    for effect in found:
        decision = by_key.get((effect.factor, repr(effect.level)))
        if decision is None:
            effects.append(effect)
            continue
        # level_mean and the contexts are the table's (all trials); the interval the look's.
        effects.append(
            dataclasses.replace(
                decision.effect,
                level_mean=effect.level_mean,
                contexts_used=effect.contexts_used,
                contexts_missing=effect.contexts_missing,
            )
        )
    return effects, made


def seeds_frame(made: Sequence[Decision], *, numeric: bool) -> pd.DataFrame:
    """Each effect's decision: its state, the seeds it took, the round it was decided in."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for decision in made:
        effect = decision.effect
        low, high = effect.interval or (None, None)
        entry: dict[str, Any] = {
            "factor": effect.factor,
            "level": effect.level,
            "decision": decision.state,
            "seeds": decision.seeds,
            "round": decision.round if decision.round is not None else "—",
        }
        if numeric:
            entry |= {"effect": effect.estimate, "low": low, "high": high}
        else:
            entry["effect (points)"] = effect.describe().split(" over ")[0]
        entry["test images that would tell"] = decision.images_needed or "—"
        rows.append(entry)
    return pd.DataFrame(rows)


def seeds_notes(
    sweep: Sweep, rule: SeedRule, made: Sequence[Decision], rows: Sequence[ConfigurationRow]
) -> list[str]:
    """What the rule is, and what it cost: trials against ``max``, seeds per configuration."""
    levels = {name: list(f.choice) for name, f in sweep.space.items() if f.choice is not None}
    effects = compared_levels(levels)
    configurations = len(space.grid(sweep.space))
    trials = sum(row.n for row in rows)
    per_configuration = ", ".join(f"{space.label(row.params)}: {row.n}" for row in rows)
    undecided = sum(not d.decided for d in made)
    return [
        f"Adaptive seeds: {rule.min_seeds} to {rule.max_seeds} seeds; each of the {rule.looks} "
        f"planned look(s) widens every interval to {100 * rule.confidence(effects):.2f}% "
        f"(a union bound over the looks, Bonferroni over the {effects} effect(s)), so that "
        "all effects' intervals hold together at every look with 95% probability. Decided: "
        "gain or loss (the interval excludes zero), negligible (within plus or minus "
        f"{100 * rule.min_effect:g} point(s)), or test set too small (its own interval holds "
        "zero and is wider than that band, so no number of seeds would tell).",
        f"Cost: {trials} trial(s) of at most {configurations * rule.max_seeds} "
        f"({configurations} configuration(s) x {rule.max_seeds}); {undecided} effect(s) "
        f"still undecided. Seeds per configuration: {per_configuration}.",
    ]
