"""Effects over the right units: hand computations, the one-seed and missing cases, the
test-set bootstrap, and simulated studies with known true effects (bench/effects_simulation.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ablation.effects.estimates import (
    ONE_SEED_CONTEXTS,
    ONE_SEED_ONE_CONTEXT,
    SEEDS_AND_IMAGES,
    SEEDS_ONLY,
    ContextEffect,
    Effect,
    Outcome,
    context_effects,
    effects,
    sign_changes,
)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "effects_simulation.py"
_spec = importlib.util.spec_from_file_location("effects_simulation", BENCH)
assert _spec is not None and _spec.loader is not None
simulation = importlib.util.module_from_spec(_spec)
sys.modules["effects_simulation"] = simulation
_spec.loader.exec_module(simulation)

AB = {"a": ["x", "y"], "b": ["p", "q"]}
AB_ACCURACY = {
    0: {("x", "p"): 0.60, ("y", "p"): 0.66, ("x", "q"): 0.70, ("y", "q"): 0.72},
    1: {("x", "p"): 0.62, ("y", "p"): 0.65, ("x", "q"): 0.71, ("y", "q"): 0.78},
    2: {("x", "p"): 0.61, ("y", "p"): 0.68, ("x", "q"): 0.69, ("y", "q"): 0.74},
}


def ab_outcomes(
    seeds: tuple[int, ...] = (0, 1, 2), without: tuple[tuple[int, str, str], ...] = ()
) -> list[Outcome]:
    return [
        Outcome({"a": a, "b": b}, seed, accuracy)
        for seed in seeds
        for (a, b), accuracy in AB_ACCURACY[seed].items()
        if (seed, a, b) not in without
    ]


def by_level(found: list[Effect]) -> dict[tuple[str, object], Effect]:
    return {(e.factor, e.level): e for e in found}


def test_per_seed_effects_and_the_seed_interval_by_hand() -> None:
    found = by_level(effects(ab_outcomes(), AB, {}))
    a = found[("a", "y")]
    # Per seed, the mean over the two contexts (b=p, b=q) of y - x.
    by_hand = {
        0: ((0.66 - 0.60) + (0.72 - 0.70)) / 2,  # 0.04
        1: ((0.65 - 0.62) + (0.78 - 0.71)) / 2,  # 0.05
        2: ((0.68 - 0.61) + (0.74 - 0.69)) / 2,  # 0.06
    }
    assert a.per_seed == pytest.approx(by_hand)
    assert a.estimate == pytest.approx(0.05)
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # the sd of (.04, .05, .06) is .01
    assert a.seed_interval == pytest.approx((0.05 - half, 0.05 + half))
    assert a.interval == pytest.approx(a.seed_interval)  # no per-image data: seeds only
    assert (a.verdict, a.basis, a.seeds) == ("gain", SEEDS_ONLY, 3)
    assert (a.contexts_used, a.contexts_missing) == (2, 0)
    assert a.test_interval is None and a.n_images is None
    assert a.describe() == "+5.0 points [+2.5, +7.5] over 3 seeds: gain"
    assert a.level_mean == pytest.approx(np.mean([0.66, 0.72, 0.65, 0.78, 0.68, 0.74]))
    # b=q within a=x and a=y: (.10, .06), (.09, .13), (.08, .06).
    assert found[("b", "q")].per_seed == pytest.approx({0: 0.08, 1: 0.11, 2: 0.07})
    assert found[("a", "x")].verdict == "baseline" and found[("a", "x")].describe() == "baseline"


LEVELS = {"augment": [False, True], "rotation": [0.1, 0.2], "backbone": ["cnn", "mobilenet_v2"]}
DEPENDENTS = {"augment": {"rotation"}}


def augment_outcomes() -> list[Outcome]:
    def at(seed: int, backbone: str, accuracy: float, rotation: float | None = None) -> Outcome:
        params = {"backbone": backbone, "augment": rotation is not None}
        return Outcome(
            params | ({} if rotation is None else {"rotation": rotation}), seed, accuracy
        )

    return [
        at(0, "cnn", 0.60), at(0, "cnn", 0.64),  # one point trained twice: 0.62
        at(0, "cnn", 0.66, 0.1), at(0, "cnn", 0.62, 0.1), at(0, "cnn", 0.70, 0.2),  # (0.64 + 0.70) / 2
        at(0, "mobilenet_v2", 0.90), at(0, "mobilenet_v2", 0.93, 0.1), at(0, "mobilenet_v2", 0.91, 0.2),
        at(1, "cnn", 0.61), at(1, "cnn", 0.65, 0.1), at(1, "cnn", 0.69, 0.2),
        at(1, "mobilenet_v2", 0.91), at(1, "mobilenet_v2", 0.92, 0.1), at(1, "mobilenet_v2", 0.96, 0.2),
    ]  # fmt: skip


def test_dependent_levels_are_averaged_within_a_context_and_repeats_count_once() -> None:
    found = by_level(effects(augment_outcomes(), LEVELS, DEPENDENTS))
    augment = found[("augment", True)]
    # One difference per context and seed: cnn 0.67 - 0.62 and mobilenet 0.92 - 0.90 for
    # seed 0; 0.67 - 0.61 and 0.94 - 0.91 for seed 1. Pooling the repeat with the other
    # rotation ((0.66 + 0.62 + 0.70) / 3) would give seed 0 a 0.040 for cnn.
    assert augment.per_seed == pytest.approx({0: (0.05 + 0.02) / 2, 1: (0.06 + 0.03) / 2})
    assert (augment.contexts_used, augment.contexts_missing) == (2, 0)
    half = stats.t.ppf(0.975, 1) * np.std([0.035, 0.045], ddof=1) / math.sqrt(2)
    assert augment.interval == pytest.approx((0.04 - half, 0.04 + half))
    # rotation's contexts are augment x backbone: 0.2 - 0.1 per backbone and seed.
    rotation = found[("rotation", 0.2)]
    assert rotation.per_seed == pytest.approx({0: (0.06 - 0.02) / 2, 1: (0.04 + 0.04) / 2})


def test_collapsed_outcomes_that_enter_an_effect_are_counted() -> None:
    outcomes = augment_outcomes()
    outcomes[0] = Outcome(outcomes[0].params, 0, 0.5, collapsed=True)
    outcomes.append(
        Outcome({"backbone": "cnn", "augment": True, "rotation": 0.1}, 7, 0.5, collapsed=True)
    )
    augment = by_level(effects(outcomes, LEVELS, DEPENDENTS))[("augment", True)]
    assert augment.collapsed == 1  # seed 7 has no control: its collapse enters no pair
    assert augment.contexts_missing == 2  # both contexts lack a side for seed 7


def test_one_seed_says_the_seed_spread_is_unknown_and_how_it_decided() -> None:
    found = [e for e in effects(ab_outcomes(seeds=(0,)), AB, {}) if e.verdict != "baseline"]
    assert found and all("one seed: the seed spread is unknown" in e.basis for e in found)
    a = by_level(found)[("a", "y")]
    assert a.basis.startswith(ONE_SEED_CONTEXTS) and "assumes the effect is the same" in a.basis
    assert a.seed_interval is None
    # The two contexts' differences (.06, .02) as replicates.
    half = stats.t.ppf(0.975, 1) * np.std([0.06, 0.02], ddof=1) / math.sqrt(2)
    assert a.interval == pytest.approx((0.04 - half, 0.04 + half))

    rng = np.random.default_rng(0)
    one_context = [
        Outcome(o.params, o.seed, o.test_accuracy, (rng.random(50) < o.test_accuracy).astype(float))
        for o in ab_outcomes(seeds=(0,))
        if o.params["b"] == "p"
    ]
    lonely = by_level(effects(one_context, AB, {}))[("a", "y")]
    assert (lonely.verdict, lonely.interval) == ("undecided", None)
    assert lonely.basis == ONE_SEED_ONE_CONTEXT
    assert "needs a second seed" in lonely.basis and lonely.test_interval is not None
    assert "(test images only) over 1 seed and 50 test images: undecided" in lonely.describe()

    within = context_effects(ab_outcomes(seeds=(0,)), AB, {})
    assert within and all(e.verdict == "undecided" and e.interval is None for e in within)
    assert all("one seed" in e.basis and "the seed spread is unknown" in e.basis for e in within)


def test_contexts_missing_a_side_are_left_out_and_counted() -> None:
    outcomes = ab_outcomes(without=((1, "y", "q"),))
    a = by_level(effects(outcomes, AB, {}))[("a", "y")]
    assert a.per_seed == pytest.approx({0: 0.04, 1: 0.03, 2: 0.06})  # seed 1: b=p alone
    assert (a.contexts_used, a.contexts_missing) == (2, 1)
    lonely = by_level(effects([Outcome({"a": "x"}, 0, 0.6), Outcome({"a": "y"}, 1, 0.7)], AB, {}))
    assert (lonely[("a", "y")].verdict, lonely[("a", "y")].contexts_missing) == ("no pairs", 1)
    assert lonely[("a", "y")].describe() == "no pairs: cannot tell"


def test_the_test_set_interval_is_a_paired_bootstrap_over_images() -> None:
    rng = np.random.default_rng(1)
    images, outcomes, z_by_seed = 1000, [], []
    for seed in range(3):
        control = (rng.random(images) < 0.70).astype(float)
        # Paired: the treated model mostly gets the same images right.
        treated = np.where(rng.random(images) < 0.8, control, 1.0 - control)
        outcomes += [
            Outcome({"a": "x"}, seed, control.mean(), control),
            Outcome({"a": "y"}, seed, treated.mean(), treated),
        ]
        z_by_seed.append(treated - control)
    effect = effects(outcomes, {"a": ["x", "y"]}, {}, resamples=4000)[1]
    z = np.mean(z_by_seed, axis=0)
    half = 1.96 * z.std(ddof=1) / math.sqrt(images)
    assert effect.n_images == images and effect.estimate == pytest.approx(z.mean())
    assert effect.test_interval == pytest.approx((z.mean() - half, z.mean() + half), abs=0.1 * half)
    # The combined interval: t of Welch-Satterthwaite's df over sqrt(s^2/n + var(z)/N), and
    # never narrower than the seeds' own interval.
    seed_variance = np.var([d.mean() for d in z_by_seed], ddof=1) / 3
    image_variance = z.var() / images
    total = seed_variance + image_variance
    welch = stats.t.ppf(0.975, total**2 / (seed_variance**2 / 2)) * math.sqrt(total)
    half = max(welch, stats.t.ppf(0.975, 2) * math.sqrt(seed_variance))
    assert effect.interval == pytest.approx((z.mean() - half, z.mean() + half))
    assert effect.basis == SEEDS_AND_IMAGES
    assert f"over 3 seeds and {images} test images" in effect.describe()


def test_negligible_loss_and_gain() -> None:
    def study(differences: list[float]) -> str:
        outcomes = [Outcome({"a": "x"}, s, 0.7) for s in range(len(differences))]
        outcomes += [Outcome({"a": "y"}, s, 0.7 + d) for s, d in enumerate(differences)]
        return effects(outcomes, {"a": ["x", "y"]}, {})[1].verdict

    assert study([-0.002, 0.001, 0.003]) == "negligible"  # within ±1 point
    assert study([-0.03, -0.04, -0.035]) == "loss"
    assert study([0.001, 0.0012, 0.0011]) == "gain"  # small, but sure
    assert study([-0.02, 0.01, 0.03]) == "undecided"


def test_context_effects_and_sign_changes() -> None:
    outcomes = []
    for seed in range(3):
        for b, effect in (("p", 0.05), ("q", -0.04), ("r", 0.01)):
            outcomes += [
                Outcome({"a": "x", "b": b}, seed, 0.70),
                Outcome({"a": "y", "b": b}, seed, 0.70 + effect + 0.005 * seed),
            ]
    within = context_effects(outcomes, {"a": ["x", "y"], "b": ["p", "q", "r"]}, {})
    a = {e.context["b"]: e for e in within if e.factor == "a"}
    assert all(isinstance(e, ContextEffect) for e in within)
    assert a["p"].per_seed == pytest.approx({0: 0.05, 1: 0.055, 2: 0.06})
    assert (a["p"].verdict, a["q"].verdict, a["r"].verdict) == ("gain", "loss", "gain")
    assert a["p"].basis == SEEDS_ONLY and a["p"].seeds == 3
    assert sign_changes(within) == [
        "a=y: + in b=p (gain) and b=r (gain); - in b=q (loss); each decided"
    ]
    # Seed 1's b=q treated 3 points better: the loss in b=q is no longer decided.
    shifted = {"a": "y", "b": "q"}
    noisy = [
        Outcome(o.params, o.seed, o.test_accuracy + 0.03 * (o.seed == 1 and o.params == shifted))
        for o in outcomes
    ]
    sentence = sign_changes(context_effects(noisy, {"a": ["x", "y"]}, {}))
    assert sentence == [
        "a=y: + in b=p (gain) and b=r (gain); - in b=q (undecided); not each decided (gain or loss)"
    ]


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_simulated_studies_cover_the_true_effect(seeds: int) -> None:
    """1,000 simulated studies per row (see bench/effects_simulation.py for the model), by
    the product's interval logic on the simulated (seed, context) arrays; a few of them also
    through effects() itself, which must agree exactly."""
    rng = np.random.default_rng(seeds)
    for noise in (0.01, 0.05):
        for effect in (0.0, 0.02, 0.20):
            study = simulation.simulate_study(rng, seeds, effect, noise)
            fast = simulation.fast_augment_effect(simulation.study_pairs(*study), resamples=50)
            real = simulation.augment_effect(simulation.study_outcomes(*study), resamples=50)
            for name in ("estimate", "interval", "seed_interval", "test_interval", "collapsed"):
                assert fast[name] == pytest.approx(getattr(real, name), abs=1e-12), name
            assert (fast["verdict"], fast["basis"]) == (real.verdict, real.basis)

            row = simulation.run(1000, seeds, noise, effect, resamples=20, fast=True)
            assert row["coverage"] >= 0.93, (noise, effect, row)
            if effect == 0.0:
                assert row["clear"] <= 0.05, (noise, row)


def test_shared_controls_no_longer_make_false_clear_calls() -> None:
    """The old method's flaw: each control paired with both rotations, as if independent.
    Null effect, 4 contexts, 3 points of seed noise, 200 test photos, 3 seeds."""
    rng = np.random.default_rng(6)
    old_clear = new_clear = 0
    studies = 1000
    for _ in range(studies):
        correct, collapsed = simulation.simulate_study(rng, 3, 0.0, 0.03)
        outcomes = simulation.study_outcomes(correct, collapsed)
        new_clear += simulation.augment_effect(outcomes, resamples=20).verdict in ("gain", "loss")
        # The old rule: every treated x control cross pair of a context and seed, one t-test.
        by_cell = np.array([o.test_accuracy for o in outcomes]).reshape(3, 4, 3)
        pairs = (by_cell[:, :, 1:] - by_cell[:, :, :1]).ravel()
        old_clear += stats.ttest_1samp(pairs, 0.0).pvalue < 0.05
    assert new_clear / studies <= 0.05
    assert old_clear / studies > 0.07  # the flaw is real in this scenario: a test with teeth
