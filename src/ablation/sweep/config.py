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

The ``space`` maps factor names to :class:`ablation.sweep.factors.Factor`; the factors
themselves are the fields of :class:`ablation.sweep.factors.Configuration`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ablation.errors import UserError
from ablation.sweep.factors import (
    BackboneName,
    Configuration,
    Factor,
    Scalar,
    check_range,
    check_value,
    is_one_of,
)
from ablation.sweep.stores import sqlite_file, sqlite_url, storage_problem

Precision = Literal["float32", "mixed_bfloat16", "mixed_float16"]  # Keras's dtype policies

DEFAULT_OUTPUT_DIR = Path("mlruns")
# Where a store comes from when the sweep and the command line leave it out: the environment,
# so that a password never has to be on a command line (ps shows those to every user).
STORAGE_ENV = "ABLATION_STORAGE"  # the Optuna storage URL
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own; MLFLOW_TRACKING_PASSWORD etc. too


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Study(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sampler: Literal["grid", "tpe", "random"] = "grid"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    trials: PositiveInt | None = Field(
        None, description="number of trials for tpe/random; a grid runs every point"
    )
    try_first: list[dict[str, Scalar]] = Field(
        default_factory=list,
        description="tpe/random: configurations to run before the sampler picks (e.g. the "
        "blog's best); a factor left out is sampled",
    )
    min_effect: float = Field(
        0.01,
        gt=0.0,
        lt=1.0,
        description="an effect whose 95% interval lies within plus or minus this (a "
        "fraction of test accuracy: 0.01 is one point) is called negligible",
    )
    pruner: Literal["none", "median"] = Field(
        "none",
        description="median: stop a trial whose val_accuracy after an epoch is below the median "
        "of earlier trials' at that epoch (once 5 trials have run)",
    )
    prune_after: NonNegativeInt = Field(
        5, description="epochs every trial runs before the pruner may stop it"
    )
    isolation: Literal["process", "none"] = Field(
        "process", description="run each trial in a fresh process (robust) or in this one"
    )
    storage: str | None = Field(
        None,
        description=f"a database URL or a journal file; default ${STORAGE_ENV}, else "
        "mlruns/optuna.journal",
    )
    heartbeat_seconds: PositiveInt = Field(
        20, description="how often a running trial says it is alive (database storages)"
    )
    grace_seconds: PositiveInt = Field(
        90, description="silence after which a trial counts as dead and runs again"
    )

    @model_validator(mode="after")
    def _trials_match_sampler(self) -> Study:
        if self.sampler == "grid" and self.trials is not None:
            raise ValueError("'trials' is for the tpe and random samplers; a grid runs every point")
        if self.sampler != "grid" and self.trials is None:
            raise ValueError(f"sampler {self.sampler!r} needs 'trials: N'")
        if self.sampler == "grid" and self.try_first:
            raise ValueError(
                "'try_first' is for the tpe and random samplers; a grid runs every point"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("'seeds' lists a seed twice")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("'grace_seconds' must be longer than 'heartbeat_seconds'")
        return self

    def storage_url(self) -> str:
        default = str((DEFAULT_OUTPUT_DIR / "optuna.journal").resolve())
        return self.storage or os.environ.get(STORAGE_ENV) or default


class Data(_Section):
    source: str = Field(description="URL of a zip archive, or a local directory")
    image_size: tuple[PositiveInt, PositiveInt] = (160, 160)
    batch_size: PositiveInt = 32
    limit_per_class: PositiveInt | None = None
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="of validation/ (or, class folders only, of each class)"
    )
    validation_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="class folders only: of each class, for validation"
    )
    split_seed: int = 0
    cache_dir: str | None = Field(
        None, description="where decoded images are kept between runs; default mlruns/cache"
    )

    @model_validator(mode="after")
    def _fractions_leave_training_images(self) -> Data:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"validation_fraction ({self.validation_fraction}) + test_fraction "
                f"({self.test_fraction}) must be below 1: the rest is the training set"
            )
        return self


class Train(_Section):
    epochs: PositiveInt = 20
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    learning_rate: PositiveFloat = 0.001
    patience: PositiveInt | None = Field(
        None,
        description="stop after this many epochs without a better val_accuracy and keep the "
        "best epoch's weights; off by default (the blog trains every epoch)",
    )
    precision: Literal["auto"] | Precision | dict[BackboneName, Precision] = Field(
        "float32",
        description="Keras's compute dtype policy, one for all backbones or one per backbone "
        "(a backbone left out: float32); the logits stay float32. auto: each backbone in the "
        "policy a few timed training steps found at least 10% faster than float32, else "
        "float32; timed once per machine and shape (ablation.autotune.precision)",
    )
    feature_batch_size: Literal["auto"] | PositiveInt | dict[BackboneName, PositiveInt] = Field(
        "auto",
        description="images per pass when a frozen backbone computes features (inference: "
        "the features do not depend on it, the speed does); auto: the fastest of a few "
        "sizes, timed once per machine and backbone (ablation.autotune.feature_batch)",
    )
    cache_features: bool = Field(
        True,
        description="compute a frozen backbone's features once and train only the head on "
        "them where that is exact (see ablation.model.features); false runs the whole model",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _policy_or_policy_per_backbone(cls, value: Any) -> Any:
        policies, backbones = get_args(Precision), get_args(BackboneName)
        allowed = f"allowed: {', '.join(policies)}"
        if value == "auto":
            return value
        if isinstance(value, dict):
            for backbone, policy in value.items():
                if backbone not in backbones:
                    raise ValueError(
                        f"unknown backbone {backbone!r} (allowed: {', '.join(backbones)})"
                    )
                if policy not in policies:
                    raise ValueError(f"{backbone}: {policy!r} is not a dtype policy ({allowed})")
        elif value not in policies:
            raise ValueError(
                f"{value!r} is not a dtype policy ({allowed}, auto, or a mapping backbone: policy)"
            )
        return value

    def learning_rate_of(self, configuration: Configuration) -> float:
        """A configuration's learning rate: its own factor if set, else this section's."""
        return configuration.learning_rate or self.learning_rate

    def dtype_policy(self, configuration: Configuration) -> Precision:
        """The Keras dtype policy of a configuration's model (its logits stay float32);
        ``auto`` not yet resolved by :func:`ablation.autotune.precision.resolve_auto`:
        float32, which every machine computes.

        >>> [Train(precision={"cnn": "mixed_bfloat16"}).dtype_policy(Configuration(backbone=b))
        ...  for b in ("cnn", "mobilenet_v2")]
        ['mixed_bfloat16', 'float32']
        >>> Train(precision="auto").dtype_policy(Configuration())
        'float32'
        """
        if self.precision == "auto":
            return "float32"
        if isinstance(self.precision, dict):
            return self.precision.get(configuration.backbone, "float32")
        return self.precision


class PretrainedWeights(_Section):
    """The ``model`` section: the pretrained backbone's weights and width."""

    weights: str = Field(
        "imagenet", description="'imagenet' (Keras's cache or download) or a weights file"
    )
    alpha: Literal[0.35, 0.5, 0.75, 1.0, 1.3, 1.4] = 1.0


class Tracking(_Section):
    uri: str | None = Field(
        None, description=f"MLflow tracking URI; default ${TRACKING_URI_ENV}, else under mlruns/"
    )
    experiment: str | None = None

    def tracking_uri(self) -> str:
        default = sqlite_url((DEFAULT_OUTPUT_DIR / "mlflow.db").resolve())
        return self.uri or os.environ.get(TRACKING_URI_ENV) or default

    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: beside a local SQLite store, else the server's."""
        database = sqlite_file(self.tracking_uri())
        return (database.parent / "artifacts").resolve().as_uri() if database else None


class Sweep(_Section):
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
                if space[other].choice is None:
                    raise ValueError(f"{name}.when names {other!r}, a range; 'when' needs choices")
                for value in factor.condition(other):
                    if not is_one_of(value, space[other].choice):
                        raise ValueError(
                            f"{name}.when: {other}={value!r} is not one of {other}'s choices "
                            f"{space[other].choice}"
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
