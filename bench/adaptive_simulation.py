"""Adaptive seeds with known true effects: coverage, false clear calls and seeds spent when
the study stops on what it has seen (``ablation.effects.sequential``).

    .venv/bin/python bench/adaptive_simulation.py                  # 1,000 studies per row
    .venv/bin/python bench/adaptive_simulation.py --studies 200    # a quicker look
    .venv/bin/python bench/adaptive_simulation.py --min 2 --max 4  # another rule

The simulated study is ``effects_simulation.py``'s (4 contexts, two rotations sharing each
control, 200 fresh test images, seed noise of 1 or 5 points, 3% collapsed trials): up to
``max`` seeds are drawn, and the product's own :func:`ablation.effects.sequential.decisions`
looks after ``min`` seeds and after each further one, until the effect is decided. One
effect per study (m = 1) is the least widened case: the hardest test of the false calls.

Per row: the share of studies whose interval at the stop covers the true effect, the share
of null studies called gain or loss (false clear calls), the shares called gain,
negligible and "test set too small", the mean seeds spent, and the share still undecided
at ``max``.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from effects_simulation import DEPENDENTS, LEVELS, simulate_study, study_outcomes, true_effect

from ablation.effects.sequential import SeedRule, decisions


def run(
    studies: int, rule: SeedRule, noise: float, effect: float, rng_seed: int = 0
) -> dict[str, float]:
    """The row's shares and seeds over ``studies`` simulated adaptive studies."""
    rng = np.random.default_rng(
        [rng_seed, rule.max_seeds, round(1000 * noise), round(1000 * effect)]
    )
    truth = true_effect(effect)
    covered, states, seeds = 0, Counter[str](), []
    for _ in range(studies):
        outcomes = study_outcomes(*simulate_study(rng, rule.max_seeds, effect, noise))
        [decision] = decisions(outcomes, LEVELS, DEPENDENTS, rule, resamples=200)
        low, high = decision.effect.interval or (np.nan, np.nan)
        covered += low <= truth <= high
        states[decision.state] += 1
        seeds.append(decision.seeds)
    return {
        "coverage": covered / studies,
        "clear": (states["gain"] + states["loss"]) / studies,
        "gain": states["gain"] / studies,
        "negligible": states["negligible"] / studies,
        "too_small": states["test set too small"] / studies,
        "seeds": float(np.mean(seeds)),
        "undecided": states["undecided"] / studies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--min", type=int, default=2, dest="min_seeds")
    parser.add_argument("--max", type=int, default=10, dest="max_seeds")
    args = parser.parse_args()
    rule = SeedRule(args.min_seeds, args.max_seeds)
    started = time.perf_counter()
    print(
        f"seeds {{min: {rule.min_seeds}, max: {rule.max_seeds}}}, min_effect "
        f"{100 * rule.min_effect:g} point, {args.studies} studies per row\n"
    )
    print(
        "| seed noise (points) | effect (true), points | covers | false clear calls "
        "| gain | negligible | test set too small | mean seeds | undecided at max |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for noise in (0.01, 0.05):
        for effect in (0.0, 0.02, 0.20):
            row = run(args.studies, rule, noise, effect)
            clear = f"{100 * row['clear']:.1f}%" if effect == 0 else "-"
            gain = f"{100 * row['gain']:.1f}%" if effect else "-"
            print(
                f"| {100 * noise:g} | {100 * effect:g} ({100 * true_effect(effect):.2f}) "
                f"| {100 * row['coverage']:.1f}% | {clear} | {gain} "
                f"| {100 * row['negligible']:.1f}% | {100 * row['too_small']:.1f}% "
                f"| {row['seeds']:.2f} of {rule.max_seeds} | {100 * row['undecided']:.1f}% |",
                flush=True,
            )
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
