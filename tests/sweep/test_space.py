from __future__ import annotations

import itertools

import optuna
import pytest

from ablation.sweep.factors import Factor
from ablation.sweep.space import (
    BLOG_MODELS,
    blog_name,
    configuration,
    grid,
    is_active,
    label,
    ordered,
    suggest,
)

BLOG_SPACE = {
    "augment": Factor(choice=[False, True]),
    "rotation": Factor(choice=[0.1, 0.2], when={"augment": True}),
    "preprocess": Factor(choice=["none", "mobilenet_v2"]),
    "backbone": Factor(choice=["cnn", "mobilenet_v2"]),
}


def test_grid_is_the_conditional_factorial_each_point_once() -> None:
    points = grid(BLOG_SPACE)
    # 3 augmentation settings (off, 0.1, 0.2) x 2 preprocessings x 2 backbones.
    assert len(points) == 12
    keys = {tuple(sorted(p.items())) for p in points}
    assert len(keys) == 12
    expected = set()
    for aug, prep, bb in itertools.product(
        [None, 0.1, 0.2], ["none", "mobilenet_v2"], ["cnn", "mobilenet_v2"]
    ):
        point = {"augment": aug is not None, "preprocess": prep, "backbone": bb}
        if aug is not None:
            point["rotation"] = aug
        expected.add(tuple(sorted(point.items())))
    assert keys == expected


def test_inactive_factor_is_absent_not_defaulted() -> None:
    for point in grid(BLOG_SPACE):
        assert ("rotation" in point) == point["augment"]


def test_when_accepts_a_list_of_values_and_chains() -> None:
    space = {
        "backbone": Factor(choice=["cnn", "mobilenet_v2"]),
        "augment": Factor(choice=[False, True], when={"backbone": ["cnn"]}),
        "rotation": Factor(choice=[0.1, 0.3], when={"augment": True}),
    }
    points = grid(space)
    assert points == [
        {"backbone": "cnn", "augment": False},
        {"backbone": "cnn", "augment": True, "rotation": 0.1},
        {"backbone": "cnn", "augment": True, "rotation": 0.3},
        {"backbone": "mobilenet_v2"},
    ]


def test_order_puts_parents_first_whatever_the_file_order() -> None:
    space = {
        "rotation": Factor(choice=[0.1], when={"augment": True}),
        "augment": Factor(choice=[True]),
    }
    assert ordered(space) == ["augment", "rotation"]
    assert grid(space) == [{"rotation": 0.1, "augment": True}]


def test_bool_condition_does_not_match_integer_one() -> None:
    param = Factor(choice=[0.1], when={"augment": True})
    assert is_active(param, {"augment": True})
    assert not is_active(param, {"augment": False})
    assert not is_active(param, {})


@pytest.mark.parametrize(
    "sampler", [optuna.samplers.RandomSampler(seed=0), optuna.samplers.TPESampler(seed=0)]
)
def test_suggest_records_only_active_factors(sampler: optuna.samplers.BaseSampler) -> None:
    study = optuna.create_study(sampler=sampler)
    for _ in range(15):
        trial = study.ask()
        params = suggest(trial, BLOG_SPACE)
        assert trial.params == params
        assert ("rotation" in params) == params["augment"]
        study.tell(trial, 0.5)


def test_enqueued_point_is_suggested_back() -> None:
    study = optuna.create_study()
    point = {"augment": True, "rotation": 0.2, "preprocess": "none", "backbone": "cnn"}
    study.enqueue_trial(point)
    trial = study.ask()
    assert suggest(trial, BLOG_SPACE) == point


def test_labels_and_blog_names() -> None:
    assert label(BLOG_MODELS["model1"], seed=0) == "cnn s0"
    assert label(BLOG_MODELS["model3"], seed=1) == "cnn+aug(0.2)+prep s1"
    assert label(BLOG_MODELS["model4"]) == "mobilenet_v2+aug(0.2)+prep"
    names = [blog_name(p) for p in grid(BLOG_SPACE)]
    assert sorted(n for n in names if n) == ["model1", "model2", "model3", "model4"]
    # A setting that does nothing (rotation without augmentation) does not change the model.
    assert blog_name({"augment": False, "rotation": 0.1, "backbone": "cnn"}) == "model1"
    assert configuration({"augment": True}).rotation == 0.2


def test_ranges_are_sampled_within_bounds_on_their_scale() -> None:
    space = {
        "backbone": Factor(choice=["mobilenet_v2"]),
        "learning_rate": Factor(low=1e-4, high=1e-2, log=True),
        "dropout": Factor(low=0.0, high=0.5),
        "fine_tune_layers": Factor(low=0, high=60, when={"backbone": "mobilenet_v2"}),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rates = []
    for _ in range(40):
        trial = study.ask()
        params = suggest(trial, space)
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert 0.0 <= params["dropout"] <= 0.5
        assert isinstance(params["fine_tune_layers"], int) and 0 <= params["fine_tune_layers"] <= 60
        configuration(params)  # every sampled point is a valid configuration
        rates.append(params["learning_rate"])
        study.tell(trial, 0.5)
    # On a log scale about half the samples fall below the geometric middle (1e-3).
    assert 10 <= sum(rate < 1e-3 for rate in rates) <= 30
    distribution = study.trials[0].distributions["learning_rate"]
    assert isinstance(distribution, optuna.distributions.FloatDistribution) and distribution.log


def test_labels_name_the_factors_beyond_the_blog() -> None:
    params = {
        "backbone": "mobilenet_v2",
        "preprocess": "mobilenet_v2",
        "pooling": "avg",
        "dropout": 0.3,
        "learning_rate": 0.00031,
        "label_smoothing": 0.1,
        "fine_tune_layers": 40,
        "fine_tune_epochs": 5,
    }
    assert (
        label(params, seed=0) == "mobilenet_v2+prep+avgpool+drop0.3+lr0.00031+smooth0.1+ft40x5 s0"
    )
    # Settings that do nothing for the CNN (pooling, fine-tuning) neither show nor count.
    cnn = {"backbone": "cnn", "pooling": "avg", "fine_tune_layers": 10}
    assert label(cnn) == "cnn"
    assert blog_name(cnn) == "model1"
