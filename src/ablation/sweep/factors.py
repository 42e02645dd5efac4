"""The design choices: what one trial builds (:class:`Configuration`), and how a sweep
searches one choice (:class:`Factor`).

Every factor a sweep's ``space`` may name is a field of :class:`Configuration`; a
factor the sweep does not name keeps its default there (the blog's model1), so a
sweep lists only what it varies.

Values are compared with :func:`same_value`, where ``True`` is not ``1``: a factor
``augment: {choice: [true, 1]}`` lists two different values, and ``when: {augment:
true}`` does not match ``augment: 1``.

Example:
    >>> configuration = Configuration(backbone="mobilenet_v2", fine_tune_layers=54)
    >>> configuration.pretrained, configuration.fine_tunes
    (True, True)
    >>> Factor(choice=[0.1, 0.2], when={"augment": True}).condition("augment")
    [True]
    >>> same_value(True, 1), same_value(1, 1.0)
    (False, True)
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ablation.sweep.backbones import BACKBONES, WIDTHS

Scalar = bool | int | float | str
Params = dict[str, Scalar]
"""The values a trial takes for the factors of the space (factors not active are absent)."""
# Spelled once, in ablation.sweep.backbones: its table's names, as a Literal for pydantic.
# A type checker cannot read a Literal built at run time: for it they are what they hold.
if TYPE_CHECKING:
    BackboneName = str
    Width = float
else:
    BackboneName = Literal[tuple(BACKBONES)]
    Width = Literal[WIDTHS]


class Configuration(BaseModel):
    """One point of the design space: what a single trial builds.

    The blog's four models are four points of it::

        model1: backbone=cnn
        model2: backbone=cnn, augment=true, rotation=0.2
        model3: backbone=cnn, augment=true, rotation=0.2, preprocess=mobilenet_v2
        model4: backbone=mobilenet_v2, augment=true, rotation=0.2, preprocess=mobilenet_v2
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: BackboneName = "cnn"
    preprocess: Literal["none", "mobilenet_v2", "backbone"] = Field(
        "none",
        description="none; mobilenet_v2 (x / 127.5 - 1, the blog's); backbone: the "
        "backbone's own (built into some, ablation.sweep.backbones; the CNN has none)",
    )
    augment: bool = False
    flip: Literal["horizontal", "vertical", "horizontal_and_vertical"] = Field(
        "horizontal_and_vertical", description="the blog's RandomFlip(): Keras's default mode"
    )
    rotation: float = Field(0.2, ge=0.0, le=1.0, description="fraction of a full turn")
    # Beyond the blog; each default is the blog's model.
    pooling: Literal["max", "avg"] = Field(
        "max", description="a pretrained backbone's global pooling"
    )
    alpha: Width | None = Field(
        None, description="a pretrained backbone's width, where it has one; unset: model.alpha"
    )
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout rate before the last layers")
    learning_rate: float | None = Field(
        None, gt=0.0, le=1.0, description="the optimizer's; unset: train.learning_rate"
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    fine_tune_layers: int = Field(
        0,
        ge=0,
        description="after the head has trained, unfreeze the backbone's top N layers "
        "(BatchNorm stays frozen) and train on at a tenth of the learning rate; 0: off",
    )
    fine_tune_epochs: int = Field(10, ge=1, description="epochs of the fine-tuning phase")

    @property
    def pretrained(self) -> bool:
        """Whether the backbone is a Keras Applications model (frozen; ImageNet weights
        unless ``model.weights`` says otherwise), not the blog's CNN."""
        return BACKBONES[self.backbone].pretrained

    @property
    def fine_tunes(self) -> bool:
        """Whether a second, fine-tuning phase follows (only a pretrained backbone has one)."""
        return self.pretrained and self.fine_tune_layers > 0


class Factor(BaseModel):
    """One searched factor: the values to try (``choice``) or a numeric range to sample
    (``low``, ``high``, ``log``; tpe and random samplers), and when the factor exists."""

    model_config = ConfigDict(extra="forbid")

    choice: list[Scalar] | None = Field(None, min_length=1)
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="sample the range on a log scale")
    when: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)

    @field_validator("choice")
    @classmethod
    def _distinct(cls, values: list[Scalar] | None) -> list[Scalar] | None:
        seen: list[Scalar] = []
        for value in values or []:
            if is_one_of(value, seen):
                raise ValueError(f"value {value!r} is listed twice")
            seen.append(value)
        return values

    @model_validator(mode="after")
    def _choice_or_range(self) -> Factor:
        has_range = self.low is not None or self.high is not None
        if self.choice is None and not has_range:
            raise ValueError("give 'choice: [...]' or a range 'low: X, high: Y'")
        if self.choice is not None and (has_range or self.log):
            raise ValueError("give either 'choice' or 'low'/'high'/'log', not both")
        if has_range:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both 'low' and 'high'")
            if self.low >= self.high:
                raise ValueError(f"'low' ({self.low:g}) must be below 'high' ({self.high:g})")
            if self.log and self.low <= 0:
                raise ValueError("a log-scale range needs 'low' above 0")
        return self

    @property
    def is_range(self) -> bool:
        return self.choice is None

    def condition(self, name: str) -> list[Scalar]:
        """The values of factor ``name`` under which this one is active."""
        wanted = self.when[name]
        return wanted if isinstance(wanted, list) else [wanted]


def value_key(value: Scalar) -> Hashable:
    """A hashable stand-in for a value: equal for equal values, ``True`` apart from ``1``."""
    return isinstance(value, bool), value


def same_value(a: Scalar, b: Scalar) -> bool:
    """Whether two values of a factor are the same value (``True`` is not ``1``)."""
    return value_key(a) == value_key(b)


def is_one_of(value: Scalar, allowed: Iterable[Scalar]) -> bool:
    """Whether ``value`` is one of ``allowed``, by :func:`same_value`."""
    return any(same_value(value, a) for a in allowed)


def is_integer_factor(name: str) -> bool:
    return Configuration.model_fields[name].annotation is int


def check_value(name: str, value: Scalar) -> None:
    """Raise ``ValueError`` (one line: what is allowed) if a factor cannot take ``value``."""
    try:
        Configuration.model_validate({name: value})
    except ValidationError as exc:
        raise ValueError(f"{name}: {value!r} is not allowed ({_allowed(name)})") from exc


def check_range(name: str, factor: Factor) -> None:
    """Raise ``ValueError`` if a factor cannot be sampled from ``factor``'s range."""
    annotation = Configuration.model_fields[name].annotation
    if annotation in (bool, str) or _literal(annotation) is not None:
        raise ValueError(f"{name}: a range is for numeric factors; give 'choice: [...]'")
    for bound in (factor.low, factor.high):
        value: Scalar = bound if bound is not None else 0.0
        if annotation is int:
            if not float(value).is_integer():
                raise ValueError(f"{name}: the range of an integer factor needs whole numbers")
            value = int(value)
        check_value(name, value)


def _allowed(name: str) -> str:
    field = Configuration.model_fields[name]
    annotation = field.annotation
    literal = _literal(annotation)
    if literal is not None:
        return "allowed: " + ", ".join(map(str, get_args(literal)))
    if annotation is bool:
        return "allowed: true, false"
    bounds = []
    for constraint in field.metadata:
        for attribute, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(constraint, attribute, None)
            if value is not None:
                bounds.append(f"{word} {value:g}")
    kind = "a whole number" if annotation is int else "a number"
    return " ".join([kind, " and ".join(bounds)]).strip()


def _literal(annotation: Any) -> Any:
    """The ``Literal`` of a field's annotation (``Literal[...]`` or ``Literal[...] | None``)."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is Literal:
            return candidate
    return None
