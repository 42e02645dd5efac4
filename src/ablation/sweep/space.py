"""The search space: conditional factors, grid enumeration, Optuna suggestions.

A factor with ``when: {augment: true}`` exists only in configurations where
``augment`` is true; elsewhere it is absent (not set to a dummy value), both in
the grid and in the parameters Optuna records.

Example:
    >>> from ablation.sweep.factors import Factor
    >>> space = {
    ...     "augment": Factor(choice=[False, True]),
    ...     "rotation": Factor(choice=[0.1, 0.2], when={"augment": True}),
    ... }
    >>> grid(space)
    [{'augment': False}, {'augment': True, 'rotation': 0.1}, {'augment': True, 'rotation': 0.2}]
    >>> label({"augment": True, "rotation": 0.2}, seed=0)
    'cnn+aug(0.2) s0'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ablation.errors import UserError
from ablation.sweep.backbones import BACKBONES, variant
from ablation.sweep.factors import (
    BackboneName,
    Configuration,
    Factor,
    Params,
    Scalar,
    is_integer_factor,
    is_one_of,
)

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution


def ordered(space: Mapping[str, Factor]) -> list[str]:
    """Factor names with every factor after those its ``when`` depends on.

    Raises:
        UserError: If the ``when`` conditions form a cycle.
    """
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise UserError(f"space: the 'when' conditions of {name!r} form a cycle")
        visiting.add(name)
        for parent in space[name].when:
            visit(parent)
        visiting.discard(name)
        order.append(name)

    for name in space:
        visit(name)
    return order


def dependents(space: Mapping[str, Factor]) -> dict[str, set[str]]:
    """For each factor, the factors that exist only under a condition on it (transitively)."""
    result: dict[str, set[str]] = {name: set() for name in space}
    for name in reversed(ordered(space)):
        for parent in space[name].when:
            result[parent] |= {name, *result[name]}
    return result


def is_active(factor: Factor, params: Mapping[str, Scalar]) -> bool:
    """Whether a factor exists given the values already chosen for its parents."""
    return all(
        name in params and is_one_of(params[name], factor.condition(name)) for name in factor.when
    )


def grid(space: Mapping[str, Factor]) -> list[Params]:
    """Every configuration of the space, each once, in a stable order."""
    names = ordered(space)
    points: list[Params] = []

    def expand(index: int, params: Params) -> None:
        if index == len(names):
            points.append({name: params[name] for name in space if name in params})
            return
        name = names[index]
        if not is_active(space[name], params):
            expand(index + 1, params)
            return
        for value in space[name].choice or []:  # a sweep with ranges is not a grid (config)
            expand(index + 1, {**params, name: value})

    expand(0, {})
    return points


def suggest(trial: optuna.Trial, space: Mapping[str, Factor]) -> Params:
    """Ask Optuna for a value of every factor that is active in this trial."""
    params: Params = {}
    for name in ordered(space):
        factor = space[name]
        if not is_active(factor, params):
            continue
        if factor.choice is not None:
            value = trial.suggest_categorical(name, factor.choice)
            assert value is not None  # one of factor.choice, which holds no None
            params[name] = value
        elif is_integer_factor(name):
            low, high = int(factor.low or 0), int(factor.high or 0)
            params[name] = trial.suggest_int(name, low, high, log=factor.log)
        else:
            params[name] = trial.suggest_float(
                name, factor.low or 0.0, factor.high or 0.0, log=factor.log
            )
    return {name: params[name] for name in space if name in params}


def distributions(space: Mapping[str, Factor]) -> dict[str, BaseDistribution]:
    """Each factor's Optuna distribution, as :func:`suggest` samples it."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    found: dict[str, BaseDistribution] = {}
    for name, factor in space.items():
        if factor.choice is not None:
            found[name] = CategoricalDistribution(factor.choice)
        elif is_integer_factor(name):
            found[name] = IntDistribution(
                int(factor.low or 0), int(factor.high or 0), log=factor.log
            )
        else:
            found[name] = FloatDistribution(factor.low or 0.0, factor.high or 0.0, log=factor.log)
    return found


def configuration(params: Mapping[str, Any]) -> Configuration:
    """The full trial configuration: the searched values over the defaults."""
    return Configuration.model_validate(dict(params))


def backbones(space: Mapping[str, Factor]) -> list[BackboneName]:
    """The backbones the space's configurations can have, in the sweep's order: the one
    home of that question (the autotuning, the plan and the runner ask here).

    >>> backbones({"backbone": Factor(choice=["cnn", "mobilenet_v2"])}), backbones({})
    (['cnn', 'mobilenet_v2'], ['cnn'])
    """
    factor = space.get("backbone")
    if factor is None or not factor.choice:
        return [Configuration().backbone]
    return [configuration({"backbone": choice}).backbone for choice in factor.choice]


def uses_pretrained(space: Mapping[str, Factor]) -> bool:
    """Whether any configuration of the space has a pretrained backbone."""
    return any(BACKBONES[backbone].pretrained for backbone in backbones(space))


def values_with(space: Mapping[str, Factor], name: str, backbone: str) -> list[Scalar]:
    """The values factor ``name`` can take in the space's configurations with ``backbone``:
    its choices where it exists for that backbone, and its default where it may be absent.

    >>> space = {"backbone": Factor(choice=["cnn", "mobilenet_v2"]),
    ...          "augment": Factor(choice=[True], when={"backbone": "mobilenet_v2"})}
    >>> values_with(space, "augment", "cnn"), values_with(space, "augment", "mobilenet_v2")
    ([False], [True])
    """
    default = Configuration.model_fields[name].default
    factor = space.get(name)
    if factor is None or factor.choice is None:
        return [default]
    if "backbone" in factor.when and not is_one_of(backbone, factor.condition("backbone")):
        return [default]  # the factor does not exist for this backbone
    conditional = any(parent != "backbone" for parent in factor.when)
    return [*factor.choice, *([default] if conditional else [])]


def pretrained_variants(
    space: Mapping[str, Factor], default_width: float
) -> list[tuple[BackboneName, float | None]]:
    """Each pretrained backbone the space can produce, at each width it can have
    (``alpha``, else ``default_width``; None for a backbone without widths).

    >>> space = {"backbone": Factor(choice=["cnn", "mobilenet_v2", "resnet50"]),
    ...          "alpha": Factor(choice=[0.35, 1.0], when={"backbone": "mobilenet_v2"})}
    >>> pretrained_variants(space, 1.0)
    [('mobilenet_v2', 0.35), ('mobilenet_v2', 1.0), ('resnet50', None)]
    """
    found: list[tuple[BackboneName, float | None]] = []
    for backbone in backbones(space):
        facts = BACKBONES[backbone]
        if not facts.pretrained:
            continue
        widths: list[float | None] = [None]
        if facts.widths:
            given = values_with(space, "alpha", backbone)
            widths = [float(default_width if w is None else w) for w in given]
        found += [(backbone, w) for w in dict.fromkeys(widths)]
    return found


def widest_widths(space: Mapping[str, Factor], default_width: float) -> dict[str, float | None]:
    """Each pretrained backbone of the space at its widest width (its slowest; None: it
    has no width), in the sweep's order: what the autotuning times.

    >>> widest_widths({"backbone": Factor(choice=["mobilenet_v2", "resnet50"]),
    ...                "alpha": Factor(choice=[1.0, 0.35])}, 1.0)
    {'mobilenet_v2': 1.0, 'resnet50': None}
    """
    widest: dict[str, float | None] = {}
    for backbone, width in pretrained_variants(space, default_width):
        known = widest.get(backbone)
        widest[backbone] = width if known is None or width is None else max(width, known)
    return widest


def typed_params(space: Mapping[str, Factor], text: Mapping[str, str]) -> Params:
    """A trial's params as MLflow keeps them (text), mapped back to the space's values."""
    typed: Params = {}
    for name, factor in space.items():
        if name not in text:
            continue
        if factor.choice is None:  # a range: a number
            typed[name] = int(text[name]) if is_integer_factor(name) else float(text[name])
        else:
            by_text = {str(choice): choice for choice in factor.choice}
            typed[name] = by_text.get(text[name], text[name])
    return typed


def label(params: Mapping[str, Any], seed: int | None = None) -> str:
    """A short name for a configuration, e.g. ``cnn+aug(0.2)+prep s0`` (sampled numbers
    rounded to 2-3 significant digits: the run's params have them in full)."""
    config = configuration(params)
    parts = [variant(config.backbone, config.alpha)]
    if config.augment:
        flip = "" if config.flip == Configuration().flip else f",{config.flip}"
        parts.append(f"aug({config.rotation:.3g}{flip})")
    preprocess = effective_preprocess(config)
    if preprocess != "none":
        parts.append("prep" if preprocess == "mobilenet_v2" else "ownprep")
    if config.pretrained and config.pooling != "max":
        parts.append(f"{config.pooling}pool")
    if config.dropout != Configuration().dropout:
        parts.append(f"drop{config.dropout:.2g}")
    if config.learning_rate is not None:
        parts.append(f"lr{config.learning_rate:.2g}")
    if config.label_smoothing:
        parts.append(f"smooth{config.label_smoothing:.2g}")
    if config.fine_tunes:
        parts.append(f"ft{config.fine_tune_layers}x{config.fine_tune_epochs}")
    name = "+".join(parts)
    return name if seed is None else f"{name} s{seed}"


BLOG_MODELS: dict[str, Params] = {
    "model1": {"backbone": "cnn", "augment": False, "preprocess": "none"},
    "model2": {"backbone": "cnn", "augment": True, "rotation": 0.2, "preprocess": "none"},
    "model3": {"backbone": "cnn", "augment": True, "rotation": 0.2, "preprocess": "mobilenet_v2"},
    "model4": {
        "backbone": "mobilenet_v2",
        "augment": True,
        "rotation": 0.2,
        "preprocess": "mobilenet_v2",
    },
}


def blog_name(params: Mapping[str, Any]) -> str | None:
    """``model1``..``model4`` when a configuration is one of the blog's four models."""
    config = _effective(configuration(params))
    for name, blog_params in BLOG_MODELS.items():
        if _effective(configuration(blog_params)) == config:
            return name
    return None


def _effective(config: Configuration) -> Configuration:
    """The configuration with settings that do nothing (rotation without augmentation) reset."""
    default = Configuration()
    updates: dict[str, Any] = {"preprocess": effective_preprocess(config)}
    if not config.augment:
        updates.update(flip=default.flip, rotation=default.rotation)
    if not config.pretrained:  # no global pooling, nothing to fine-tune
        updates.update(pooling=default.pooling, fine_tune_layers=0)
    if not BACKBONES[config.backbone].widths:
        updates.update(alpha=default.alpha)
    if not config.fine_tunes:
        updates.update(fine_tune_epochs=default.fine_tune_epochs)
    return config.model_copy(update=updates)


def effective_preprocess(config: Configuration) -> str:
    """What ``preprocess`` puts in front of the backbone: ``backbone`` is ``mobilenet_v2``
    for MobileNetV2 (its own is the blog's layer) and ``none`` where the backbone has
    it built in or has none (the CNN).

    >>> [effective_preprocess(Configuration(backbone=b, preprocess="backbone"))
    ...  for b in ("cnn", "mobilenet_v2", "efficientnet_b0", "resnet50")]
    ['none', 'mobilenet_v2', 'none', 'backbone']
    """
    if config.preprocess != "backbone":
        return config.preprocess
    module = BACKBONES[config.backbone].preprocess_module
    if not module:
        return "none"
    return "mobilenet_v2" if module == "mobilenet_v2" else "backbone"
