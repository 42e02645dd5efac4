"""Adaptive seeds on the study's side: what each finished trial keeps for the decisions, and
the next round's grid points (:mod:`ablation.effects.sequential` decides).

Every COMPLETE trial keeps, as Optuna user attrs, its test accuracy, whether it collapsed,
and each test image's correctness packed into bits (a few dozen characters for 200
images): the decisions read the Optuna storage alone, which every worker and machine of
the study shares, so they all reach the same decisions from the same finished trials.

A round's decisions wait until none of the study's trials is running or waiting: a round
is decided on all of its trials, so that a resumed study (its killed trial run again) and
another machine decide exactly as an uninterrupted one.

Example:
    >>> import numpy as np
    >>> correct = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    >>> packed = pack_correct(correct)
    >>> packed, unpack_correct(packed).tolist()
    ('5:sA==', [1.0, 0.0, 1.0, 1.0, 0.0])
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from ablation.effects.estimates import Outcome
from ablation.effects.sequential import (
    Decision,
    decisions,
    next_seed_configurations,
    seed_rule,
)
from ablation.study.storage import fail_dead_trials
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Params
from ablation.tracking.records import TagName

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

ATTR_CORRECT = "test_correct"  # "N:base64 of the packed bits", each test image in one order
ATTR_TEST_ACCURACY = "test_accuracy"
ATTR_COLLAPSED = "collapsed"
POLL_SECONDS = 5.0


def point_key(params: Params, seed: int) -> str:
    """The identity of a (configuration, seed) pair in the study: enqueued once."""
    return json.dumps({"params": params, "seed": seed}, sort_keys=True)


def recorded_points(study: optuna.Study) -> list[tuple[Params, int]]:
    """Every grid point the study's trials were enqueued for, each once, in trial order."""
    seen: dict[str, tuple[Params, int]] = {}
    for trial in study.get_trials(deepcopy=False):
        key = trial.user_attrs.get("point")
        if key and key not in seen:
            point = json.loads(key)
            seen[key] = (point["params"], int(point["seed"]))
    return list(seen.values())


def pack_correct(correct: np.ndarray) -> str:
    """Each test image's correctness (1.0/0.0) as ``N:base64``."""
    bits = np.packbits(np.asarray(correct) > 0.5)
    return f"{len(correct)}:{base64.b64encode(bits.tobytes()).decode()}"


def unpack_correct(text: str) -> np.ndarray:
    """:func:`pack_correct`'s inverse."""
    count, _, encoded = text.partition(":")
    bits = np.unpackbits(np.frombuffer(base64.b64decode(encoded), dtype=np.uint8))
    return bits[: int(count)].astype(float)


def rule_tags(sweep: Sweep) -> dict[str, str]:
    """The study run's tag with the stopping rule's parameters (none: fixed seeds)."""
    rule = seed_rule(sweep)
    if rule is None:
        return {}
    described = {
        "min_seeds": rule.min_seeds,
        "max_seeds": rule.max_seeds,
        "min_effect": rule.min_effect,
        "alpha": rule.alpha,
        "looks": rule.looks,
        "method": "union bound over the looks, Bonferroni over the effects",
    }
    return {TagName.SEED_RULE: json.dumps(described)}


def decisions_record(found: list[Decision], study: optuna.Study) -> dict[str, object]:
    """The decisions after a round, as the study's run keeps them (``seed_decisions.json``):
    each effect's, and each configuration's seeds."""
    seeds: dict[str, int] = {}
    for outcome in study_outcomes(study):
        label = space.label(outcome.params)
        seeds[label] = seeds.get(label, 0) + 1
    return {
        "effects": [
            {
                "factor": d.effect.factor,
                "level": d.effect.level,
                "baseline": d.effect.baseline,
                "state": d.state,
                "seeds": d.seeds,
                "round": d.round,
                "estimate": d.effect.estimate,
                "interval": d.effect.interval,
                "images_needed": d.images_needed,
            }
            for d in found
        ],
        "seeds_per_configuration": seeds,
        "trials": sum(seeds.values()),
    }


def study_outcomes(study: optuna.Study) -> list[Outcome]:
    """The COMPLETE trials' outcomes as the decisions read them."""
    from optuna.trial import TrialState

    found = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        attrs = trial.user_attrs
        if ATTR_TEST_ACCURACY not in attrs or "seed" not in attrs:
            continue
        packed = attrs.get(ATTR_CORRECT)
        found.append(
            Outcome(
                params=dict(trial.params),
                seed=int(attrs["seed"]),
                test_accuracy=float(attrs[ATTR_TEST_ACCURACY]),
                correct=unpack_correct(packed) if packed else None,
                collapsed=bool(attrs.get(ATTR_COLLAPSED, False)),
            )
        )
    return found


def study_decisions(study: optuna.Study, sweep: Sweep) -> list[Decision]:
    """Every effect's decision from the study's finished trials (none: fixed seeds)."""
    rule = seed_rule(sweep)
    if rule is None:
        return []
    levels = {name: list(f.choice) for name, f in sweep.space.items() if f.choice is not None}
    return decisions(study_outcomes(study), levels, space.dependents(sweep.space), rule)


def next_round(study: optuna.Study, sweep: Sweep) -> list[tuple[Params, int]]:
    """The grid points of the next round: one more seed of the configurations that enter an
    undecided effect; empty when every effect is decided or ``max`` seeds have run."""
    rule = seed_rule(sweep)
    if rule is None:
        return []
    seeds = {o.seed for o in study_outcomes(study)}
    ran = max(seeds, default=-1) + 1
    if ran < rule.min_seeds or ran >= rule.max_seeds:
        return []
    undecided = [d for d in study_decisions(study, sweep) if not d.decided]
    configurations = next_seed_configurations(undecided, space.grid(sweep.space))
    return [(params, ran) for params in configurations]


def wait_for_round(study: optuna.Study) -> None:
    """Return once none of the study's trials runs or waits (on any machine); a trial whose
    process died is failed on the way (:func:`ablation.study.storage.fail_dead_trials`)."""
    from optuna.trial import TrialState

    told = False
    while True:
        fail_dead_trials(study)
        busy = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        if not busy:
            return
        if not told:
            log.info("waiting for %d trial(s) of this round on other workers", len(busy))
            told = True
        time.sleep(POLL_SECONDS)


def enqueue_points(study: optuna.Study, points: list[tuple[Params, int]]) -> int:
    """Enqueue each (configuration, seed) not finished, running or waiting; how many were."""
    finished = finished_or_running(study)
    added = 0
    for params, seed in points:
        key = point_key(params, seed)
        if key not in finished:
            study.enqueue_trial(params, user_attrs={"seed": seed, "point": key})
            finished.add(key)
            added += 1
    return added


def unfinished_points(study: optuna.Study) -> list[str]:
    """Grid points tried in this study that have not finished (a failed trial's)."""
    finished = finished_or_running(study)
    return [point_key(p, s) for p, s in recorded_points(study) if point_key(p, s) not in finished]


def finished_or_running(study: optuna.Study) -> set[str]:
    """Grid keys (or trial numbers) of trials that need no new run."""
    from optuna.trial import TrialState as OptunaState

    keep = (OptunaState.COMPLETE, OptunaState.PRUNED, OptunaState.RUNNING, OptunaState.WAITING)
    return {
        t.user_attrs.get("point", str(t.number))
        for t in study.get_trials(deepcopy=False, states=keep)
    }
