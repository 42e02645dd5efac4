"""Sweep files: read the YAML, apply ``--set`` overrides, validate with pydantic.

A sweep file has six sections::

    study:    {name: blog, sampler: grid, seeds: [0]}
    data:     {source: ../shared/data/cats_and_dogs, image_size: [160, 160], batch_size: 32}
    train:    {epochs: 20, optimizer: adam, learning_rate: 0.001}
    model:    {weights: imagenet}
    space:
      augment:  {choice: [false, true]}
      rotation: {choice: [0.1, 0.2], when: {augment: true}}
    tracking: {experiment: blog}

Example:
    >>> from ablation.sweep.config import load_sweep
    >>> sweep = load_sweep("sweeps/blog.yaml", overrides=["train.epochs=1"])
    >>> sweep.train.epochs
    1

The sections other than the space are :mod:`ablation.sweep.sections`'s models. The
``space`` maps factor names to :class:`ablation.sweep.factors.Factor`; the factors
themselves are the fields of :class:`ablation.sweep.factors.Configuration`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from ablation.errors import UserError
from ablation.sweep.factors import Configuration, Factor, check_range, check_value, is_one_of
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.sections import DEFAULT_OUTPUT_DIR, Data, Section, Study, Tracking, Train
from ablation.sweep.stores import storage_problem


class Sweep(Section):
    study: Study
    data: Data
    train: Train = Field(default_factory=Train)
    model: PretrainedWeights = Field(default_factory=PretrainedWeights)
    space: dict[str, Factor] = Field(min_length=1)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator("space")
    @classmethod
    def _known_factors(cls, space: dict[str, Factor]) -> dict[str, Factor]:
        allowed = list(Configuration.model_fields)
        for name, factor in space.items():
            if name not in Configuration.model_fields:
                raise ValueError(f"unknown factor {name!r}; allowed: {', '.join(allowed)}")
            if factor.is_range:
                check_range(name, factor)
            for value in factor.choice or []:
                check_value(name, value)
            for other in factor.when:
                if other == name:
                    raise ValueError(f"{name}.when names {name} itself")
                if other not in space:
                    raise ValueError(
                        f"{name}.when names {other!r}, which is not in the space; "
                        f"allowed: {', '.join(n for n in space if n != name)}"
                    )
                choices = space[other].choice
                if choices is None:
                    raise ValueError(f"{name}.when names {other!r}, a range; 'when' needs choices")
                for value in factor.condition(other):
                    if not is_one_of(value, choices):
                        raise ValueError(
                            f"{name}.when: {other}={value!r} is not one of {other}'s choices "
                            f"{choices}"
                        )
        return space

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> Sweep:
        ranges = [name for name, factor in self.space.items() if factor.is_range]
        if self.study.sampler == "grid" and ranges:
            raise ValueError(
                f"space.{ranges[0]}: a grid needs a choice list for every factor "
                "(ranges are for the tpe and random samplers)"
            )
        return self

    @model_validator(mode="after")
    def _points_to_try_first_are_in_the_space(self) -> Sweep:
        for index, point in enumerate(self.study.try_first):
            where = f"study.try_first[{index}]"
            for name, value in point.items():
                factor = self.space.get(name)
                if factor is None:
                    raise ValueError(
                        f"{where}: {name!r} is not a factor of the space; "
                        f"allowed: {', '.join(self.space)}"
                    )
                if factor.choice is not None and not is_one_of(value, factor.choice):
                    raise ValueError(f"{where}: {name}={value!r} is not one of {factor.choice}")
                if factor.is_range and not (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and (factor.low or 0) <= value <= (factor.high or 0)
                ):
                    raise ValueError(
                        f"{where}: {name}={value!r} is outside {factor.low:g}..{factor.high:g}"
                    )
                for parent in factor.when:
                    if parent in point and not is_one_of(point[parent], factor.condition(parent)):
                        raise ValueError(
                            f"{where}: {name} is not a factor when {parent}={point[parent]!r}"
                        )
        return self

    @model_validator(mode="after")
    def _resolve_default_stores(self) -> Sweep:
        """Pin the default stores to absolute paths now, so a sweep means the same anywhere."""
        self.study.storage = self.study.storage_url()
        if problem := storage_problem(self.study.storage):  # from the file or the environment
            raise ValueError(f"study.storage: {problem}")
        self.tracking.uri = self.tracking.tracking_uri()
        if self.data.cache_dir is None:
            self.data.cache_dir = str((DEFAULT_OUTPUT_DIR / "cache").resolve())
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.study.name

    def feature_batch_size(self, configuration: Configuration) -> int:
        """Images per backbone pass for a configuration's features; ``auto`` not yet
        resolved by :func:`ablation.autotune.feature_batch.resolve_auto`: the training
        batch size."""
        value = self.train.feature_batch_size
        if isinstance(value, dict):
            return value.get(configuration.backbone, self.data.batch_size)
        return self.data.batch_size if value == "auto" else value


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read, override and validate a sweep file.

    Args:
        path: The YAML sweep file.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML (invalid YAML is
            refused): ``train.epochs=1`` sets an int, ``space.augment.choice=[true]`` a list.

    Raises:
        UserError: One line naming the file, the key and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such sweep file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the sweep file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        sections = ", ".join(Sweep.model_fields)
        raise UserError(f"{path}: a sweep file is a mapping with sections {sections}")
    for override in overrides:
        _apply_override(raw, override)
    try:
        return Sweep.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {describe_validation_error(exc)}") from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {override!r}: expected dotted.key=value, e.g. train.epochs=1")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as exc:  # taken as a string, a typo (an unclosed '[') would pass
        raise UserError(
            f"--set {override!r}: {text!r} is not valid YAML "
            f"({getattr(exc, 'problem', None) or type(exc).__name__}); allowed: a YAML value "
            'such as 1, true, [a, b] or {k: v}, or a string in double quotes ("...")'
        ) from None
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise UserError(f"--set {override!r}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def describe_validation_error(exc: ValidationError) -> str:
    """All of pydantic's errors on one line: ``key: what is wrong (allowed ...)``."""
    messages = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            parent = error["loc"][:-1]
            allowed = _fields_at(parent)
            message = f"unknown key {loc!r}; allowed: {', '.join(allowed)}"
        elif error["type"] == "missing":
            message = f"{loc}: missing (required)"
        else:
            text = error["msg"].removeprefix("Value error, ")
            got = error.get("input")
            plain = isinstance(got, dict | list) or error["type"] == "value_error"
            shown = "" if plain else f" (got {got!r})"
            message = f"{loc}: {text}{shown}" if loc else f"{text}{shown}"
        messages.append(message)
    return "; ".join(messages)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at a location of the sweep file (for "unknown key" messages)."""
    model: type[BaseModel] = Sweep
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        if model is Sweep and part == "space":
            if not parts:
                return list(Configuration.model_fields)
            parts.pop(0)
            model = Factor
            continue
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)
