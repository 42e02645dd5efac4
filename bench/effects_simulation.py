"""Simulated ablation studies with known true effects: how often each interval covers the truth.

    .venv/bin/python bench/effects_simulation.py                # 1,000 studies per row
    .venv/bin/python bench/effects_simulation.py --studies 200  # a quicker look

Each simulated study is the blog's augmentation question: 4 contexts (backbone x
preprocess), control ``augment=false`` and two treated levels ``augment=true`` with
``rotation`` 0.1 or 0.2 sharing each control, every configuration trained with each seed
and tested on the same fresh draw of 200 test images from a population of images.

A trial gets image i right with probability

    p = BASE + u_i + context offset + rotation offset + seed noise + effect_i (treated only)

where u_i ~ U(-0.2, 0.2) is the image's difficulty, the seed noise is one draw per trial
(uniform, sd 1 or 5 points), and the effect is heterogeneous, larger on hard images and in
some contexts: effect_i = effect * m_context * (1 - u_i / 0.2), with the m's averaging 1
and E[1 - u / 0.2] = 1, so the population mean of the effect is exactly ``effect``. The
rotation offsets (+1, -1 point) cancel in the treated side's mean. With probability 0.03
a trial collapses to one class (right exactly on the images of class 0, half of them),
on either side alike, so the true effect of the estimand (the mean over contexts of
treated - control, in expectation over seeds and test sets) is (1 - 0.03) * effect. The
bounds keep p within [0.25, 1] for noise up to 5 points: nothing is clipped.

The table reports, per row, the share of studies whose 95% combined interval (seeds and
test images) covers the true effect, the same for the seed interval alone, the share of
null studies called gain or loss, the share of the others called gain (power), and the
mean width of the combined interval. Each study goes through ``effects()`` itself;
``--fast`` builds the (seed, context) arrays here and runs effects.py's own interval logic
on them (``_statistics``), which tests/results/test_effects.py checks agrees exactly.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ablation.effects.estimates import Effect, Outcome, _Pairs, _Settings, _statistics, effects
from ablation.sweep.factors import Params

IMAGES = 200
BASE = 0.60
DIFFICULTY = 0.20  # half-width of the images' difficulties u_i
# (context, accuracy offset, effect multiplier): more room to gain where accuracy is lower
CONTEXTS: list[tuple[Params, float, float]] = [
    ({"backbone": "cnn", "preprocess": "none"}, -0.05, 1.25),
    ({"backbone": "cnn", "preprocess": "mobilenet_v2"}, 0.00, 1.10),
    ({"backbone": "mobilenet_v2", "preprocess": "none"}, 0.05, 0.90),
    ({"backbone": "mobilenet_v2", "preprocess": "mobilenet_v2"}, 0.10, 0.75),
]
ROTATIONS = {0.1: 0.01, 0.2: -0.01}
COLLAPSE = 0.03
LEVELS = {"augment": [False, True]}
DEPENDENTS = {"augment": {"rotation"}}


def true_effect(effect: float, collapse: float = COLLAPSE) -> float:
    """The estimand's expectation: a collapsed trial (either side) carries no effect."""
    return (1.0 - collapse) * effect


def trial_plan() -> list[tuple[Params, float, float]]:
    """Each configuration of one seed, context by context (control, then the rotations):
    (params, accuracy offset, effect multiplier)."""
    plan: list[tuple[Params, float, float]] = []
    for context, offset, multiplier in CONTEXTS:
        plan.append(({**context, "augment": False}, offset, 0.0))
        for rotation, rotation_offset in ROTATIONS.items():
            params = {**context, "augment": True, "rotation": rotation}
            plan.append((params, offset + rotation_offset, multiplier))
    return plan


PLAN = trial_plan()


def simulate_study(
    rng: np.random.Generator,
    seeds: int,
    effect: float,
    noise: float,
    images: int = IMAGES,
    collapse: float = COLLAPSE,
) -> tuple[np.ndarray, np.ndarray]:
    """One study: per trial (seed by seed, each seed's trials as :data:`PLAN`) and per test
    image whether the trial got it right, on a test set drawn fresh from the population;
    and which trials collapsed."""
    trials = len(PLAN) * seeds
    offsets = np.tile([offset for _, offset, _ in PLAN], seeds)[:, None]
    multipliers = np.tile([multiplier for _, _, multiplier in PLAN], seeds)[:, None]
    difficulty = rng.uniform(-DIFFICULTY, DIFFICULTY, images)
    is_class_zero = rng.random(images) < 0.5
    # Uniform seed noise of sd `noise`: bounded, so that no probability needs clipping.
    seed_noise = rng.uniform(-math.sqrt(3.0) * noise, math.sqrt(3.0) * noise, (trials, 1))
    gain = effect * multipliers * (1.0 - difficulty / DIFFICULTY)
    p = BASE + difficulty + offsets + seed_noise + gain
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"probabilities outside [0, 1]: {p.min():.3f} to {p.max():.3f}")
    correct = (rng.random(p.shape) < p).astype(float)
    collapsed = rng.random(trials) < collapse
    correct[collapsed] = is_class_zero
    return correct, collapsed


def study_outcomes(correct: np.ndarray, collapsed: np.ndarray) -> list[Outcome]:
    """The trials of :func:`simulate_study` as the product reads them."""
    per_seed = len(PLAN)
    return [
        Outcome(PLAN[index % per_seed][0], index // per_seed, float(row.mean()), row, bool(flag))
        for index, (row, flag) in enumerate(zip(correct, collapsed, strict=True))
    ]


def study_pairs(correct: np.ndarray, collapsed: np.ndarray) -> _Pairs:
    """The fast path: the same (seed, context) differences as effects() forms from
    :func:`study_outcomes` (the rotations averaged within a context), straight from the
    arrays, for the product's own interval logic."""
    seeds, contexts = len(correct) // len(PLAN), len(CONTEXTS)
    by_cell = correct.reshape(seeds, contexts, 1 + len(ROTATIONS), -1)
    images = by_cell[:, :, 1:].mean(axis=2) - by_cell[:, :, 0]
    return _Pairs(
        seeds=np.arange(seeds),
        contexts=[context for context, _, _ in CONTEXTS],
        differences=images.mean(axis=2),
        images=images,
        collapsed=collapsed.reshape(seeds, contexts, -1).sum(axis=2),
    )


def augment_effect(outcomes: Sequence[Outcome], resamples: int = 200) -> Effect:
    """augment=true's effect as the product computes it."""
    return effects(outcomes, LEVELS, DEPENDENTS, resamples=resamples)[1]


def fast_augment_effect(pairs: _Pairs, resamples: int = 200) -> dict[str, Any]:
    """augment=true's statistics from :func:`study_pairs`, by effects()'s own interval logic
    (the fields of its Effect)."""
    return _statistics(pairs, _Settings(resamples=resamples), slice(None))


def run(
    studies: int,
    seeds: int,
    noise: float,
    effect: float,
    rng_seed: int = 0,
    resamples: int = 200,
    fast: bool = False,
) -> dict[str, float]:
    """Over ``studies`` simulated studies: the share whose combined interval covers the true
    effect, the same for the seed interval, the shares called gain or loss and gain, and
    the mean width of the combined interval. ``fast``: by :func:`fast_augment_effect`."""
    rng = np.random.default_rng([rng_seed, seeds, round(1000 * noise), round(1000 * effect)])
    truth = true_effect(effect)
    covered, seed_covered, seed_intervals, clear, gains, widths = 0, 0, 0, 0, 0, []
    for _ in range(studies):
        study = simulate_study(rng, seeds, effect, noise)
        if fast:
            found = fast_augment_effect(study_pairs(*study), resamples)
        else:
            found = vars(augment_effect(study_outcomes(*study), resamples))
        if found.get("interval") is not None:
            low, high = found["interval"]
            covered += low <= truth <= high
            widths.append(high - low)
        if found.get("seed_interval") is not None:
            seed_intervals += 1
            seed_covered += found["seed_interval"][0] <= truth <= found["seed_interval"][1]
        clear += found["verdict"] in ("gain", "loss")
        gains += found["verdict"] == "gain"
    return {
        "coverage": covered / studies,
        "seed_coverage": seed_covered / seed_intervals if seed_intervals else math.nan,
        "clear": clear / studies,
        "gain": gains / studies,
        "width": float(np.mean(widths)) if widths else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--fast", action="store_true", help="by study_pairs, not effects()")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        "| seeds | seed noise (points) | effect (true), points | combined covers "
        "| seed interval covers | false clear calls | gain calls | mean width (points) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seeds in args.seeds:
        for noise in (0.01, 0.05):
            for effect in (0.0, 0.02, 0.20):
                row = run(args.studies, seeds, noise, effect, fast=args.fast)
                seed_coverage = row["seed_coverage"]
                cells = [
                    str(seeds),
                    f"{100 * noise:.0f}",
                    f"{100 * effect:.0f} ({100 * true_effect(effect):.2f})",
                    f"{row['coverage']:.1%}",
                    "-" if math.isnan(seed_coverage) else f"{seed_coverage:.1%}",
                    f"{row['clear']:.1%}" if effect == 0.0 else "-",
                    "-" if effect == 0.0 else f"{row['gain']:.1%}",
                    f"{100 * row['width']:.1f}",
                ]
                print("| " + " | ".join(cells) + " |")
    print(f"\n{args.studies} studies per row, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
