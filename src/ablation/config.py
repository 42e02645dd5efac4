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
    >>> from ablation.config import load_sweep
    >>> sweep = load_sweep("sweeps/blog.yaml", overrides=["train.epochs=1"])
    >>> sweep.train.epochs
    1

Every factor a ``space`` may name is a field of :class:`Choices`; a factor a
sweep does not name keeps its default there, so a sweep only lists what it varies.
"""

from __future__ import annotations

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

Scalar = bool | int | float | str
Backbone = Literal["cnn", "mobilenet_v2"]
Precision = Literal["float32", "mixed_bfloat16", "mixed_float16"]  # Keras's dtype policies

DEFAULT_OUTPUT_DIR = Path("mlruns")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choices(_Section):
    """One point of the design space: what a single trial builds.

    The blog's four models are four points of it::

        model1: backbone=cnn
        model2: backbone=cnn, augment=true, rotation=0.2
        model3: backbone=cnn, augment=true, rotation=0.2, preprocess=mobilenet_v2
        model4: backbone=mobilenet_v2, augment=true, rotation=0.2, preprocess=mobilenet_v2
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backbone: Backbone = "cnn"
    preprocess: Literal["none", "mobilenet_v2"] = "none"
    augment: bool = False
    flip: Literal["horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"
    rotation: float = Field(0.2, ge=0.0, le=1.0, description="fraction of a full turn")
    # Beyond the blog; each default is the blog's model.
    pooling: Literal["max", "avg"] = Field("max", description="MobileNetV2's global pooling")
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
    def fine_tunes(self) -> bool:
        """Whether a second, fine-tuning phase follows (only a pretrained backbone has one)."""
        return self.backbone != "cnn" and self.fine_tune_layers > 0


class Param(_Section):
    """One searched factor: the values to try (``choice``) or a numeric range to sample
    (``low``, ``high``, ``log``; tpe and random samplers), and when the factor exists."""

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
            if any(value == s and type(value) is type(s) for s in seen):
                raise ValueError(f"value {value!r} is listed twice")
            seen.append(value)
        return values

    @model_validator(mode="after")
    def _choice_or_range(self) -> Param:
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
        description="a database URL or a journal file; default mlruns/optuna.journal",
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
        if self.storage:
            return self.storage
        return str((DEFAULT_OUTPUT_DIR / "optuna.journal").resolve())


class Data(_Section):
    source: str = Field(description="URL of a zip archive, or a local directory")
    image_size: tuple[PositiveInt, PositiveInt] = (160, 160)
    batch_size: PositiveInt = 32
    limit_per_class: PositiveInt | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 0
    cache_dir: str | None = Field(
        None, description="where decoded images are kept between runs; default mlruns/cache"
    )


class Train(_Section):
    epochs: PositiveInt = 20
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    learning_rate: PositiveFloat = 0.001
    patience: PositiveInt | None = Field(
        None,
        description="stop after this many epochs without a better val_accuracy and keep the "
        "best epoch's weights; off by default (the blog trains every epoch)",
    )
    precision: Literal["auto"] | Precision | dict[Backbone, Precision] = Field(
        "float32",
        description="Keras's compute dtype policy, one for all backbones or one per backbone "
        "(a backbone left out: float32); the logits stay float32. auto: mixed_bfloat16 for "
        "the CNN on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX) and no GPU, "
        "float32 otherwise (ablation.models.dtype_policy)",
    )
    cache_features: bool = Field(
        True,
        description="compute a frozen backbone's features once and train only the head on "
        "them where that is exact (see ablation.features); false runs the whole model",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _policy_or_policy_per_backbone(cls, value: Any) -> Any:
        policies, backbones = get_args(Precision), get_args(Backbone)
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

    def learning_rate_of(self, choices: Choices) -> float:
        """A configuration's learning rate: its own factor if set, else this section's."""
        return choices.learning_rate or self.learning_rate


class Model(_Section):
    weights: str = Field(
        "imagenet", description="'imagenet' (Keras's cache or download) or a weights file"
    )
    alpha: Literal[0.35, 0.5, 0.75, 1.0, 1.3, 1.4] = 1.0


class Tracking(_Section):
    uri: str | None = Field(None, description="MLflow tracking URI; default under mlruns/")
    experiment: str | None = None

    def tracking_uri(self) -> str:
        if self.uri:
            return self.uri
        return f"sqlite:///{(DEFAULT_OUTPUT_DIR / 'mlflow.db').resolve()}"

    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: beside a local SQLite store, else the server's."""
        uri = self.tracking_uri()
        if uri.startswith("sqlite:///"):
            return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
        return None


class Sweep(_Section):
    study: Study
    data: Data
    train: Train = Field(default_factory=Train)
    model: Model = Field(default_factory=Model)
    space: dict[str, Param] = Field(min_length=1)
    tracking: Tracking = Field(default_factory=Tracking)

    @field_validator("space")
    @classmethod
    def _known_factors(cls, space: dict[str, Param]) -> dict[str, Param]:
        allowed = list(Choices.model_fields)
        for name, param in space.items():
            if name not in Choices.model_fields:
                raise ValueError(f"unknown factor {name!r}; allowed: {', '.join(allowed)}")
            if param.is_range:
                _check_range(name, param)
            for value in param.choice or []:
                _check_value(name, value)
            for other in param.when:
                if other == name:
                    raise ValueError(f"{name}.when names {name} itself")
                if other not in space:
                    raise ValueError(
                        f"{name}.when names {other!r}, which is not in the space; "
                        f"allowed: {', '.join(n for n in space if n != name)}"
                    )
                if space[other].choice is None:
                    raise ValueError(f"{name}.when names {other!r}, a range; 'when' needs choices")
                for value in param.condition(other):
                    if value not in space[other].choice:
                        raise ValueError(
                            f"{name}.when: {other}={value!r} is not one of {other}'s choices "
                            f"{space[other].choice}"
                        )
        return space

    @model_validator(mode="after")
    def _grid_needs_choices(self) -> Sweep:
        ranges = [name for name, param in self.space.items() if param.is_range]
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
                param = self.space.get(name)
                if param is None:
                    raise ValueError(
                        f"{where}: {name!r} is not a factor of the space; "
                        f"allowed: {', '.join(self.space)}"
                    )
                if param.choice is not None and not matches(value, param.choice):
                    raise ValueError(f"{where}: {name}={value!r} is not one of {param.choice}")
                if param.is_range and not (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and (param.low or 0) <= value <= (param.high or 0)
                ):
                    raise ValueError(
                        f"{where}: {name}={value!r} is outside {param.low:g}..{param.high:g}"
                    )
                for parent in param.when:
                    if parent in point and not matches(point[parent], param.condition(parent)):
                        raise ValueError(
                            f"{where}: {name} is not a factor when {parent}={point[parent]!r}"
                        )
        return self

    @model_validator(mode="after")
    def _resolve_default_stores(self) -> Sweep:
        """Pin the default stores to absolute paths now, so a sweep means the same anywhere."""
        self.study.storage = self.study.storage_url()
        self.tracking.uri = self.tracking.tracking_uri()
        if self.data.cache_dir is None:
            self.data.cache_dir = str((DEFAULT_OUTPUT_DIR / "cache").resolve())
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.study.name


def matches(value: Scalar, allowed: list[Scalar]) -> bool:
    """Whether ``value`` is one of ``allowed``, ``True`` not counting as ``1``."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _check_value(name: str, value: Scalar) -> None:
    try:
        Choices.model_validate({name: value})
    except ValidationError as exc:
        raise ValueError(f"{name}: {value!r} is not allowed ({_allowed(name)})") from exc


def _check_range(name: str, param: Param) -> None:
    annotation = Choices.model_fields[name].annotation
    if annotation in (bool, str) or getattr(annotation, "__origin__", None) is Literal:
        raise ValueError(f"{name}: a range is for numeric factors; give 'choice: [...]'")
    for bound in (param.low, param.high):
        value: Scalar = bound if bound is not None else 0.0
        if annotation is int:
            if not float(value).is_integer():
                raise ValueError(f"{name}: the range of an integer factor needs whole numbers")
            value = int(value)
        _check_value(name, value)


def is_integer_factor(name: str) -> bool:
    return Choices.model_fields[name].annotation is int


def _allowed(name: str) -> str:
    field = Choices.model_fields[name]
    annotation = field.annotation
    if getattr(annotation, "__origin__", None) is Literal:
        return "allowed: " + ", ".join(map(str, annotation.__args__))
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


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read, override and validate a sweep file.

    Args:
        path: The YAML sweep file.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML, so
            ``train.epochs=1`` sets an int and ``space.augment.choice=[true]`` a list.

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
        raise UserError(f"{path}: a sweep file is a mapping with sections {_sections()}")
    for override in overrides:
        _apply_override(raw, override)
    try:
        return Sweep.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {describe_validation_error(exc)}") from None


def _sections() -> str:
    return ", ".join(Sweep.model_fields)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {override!r}: expected dotted.key=value, e.g. train.epochs=1")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
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
            shown = (
                ""
                if isinstance(got, dict | list) or error["type"] == "value_error"
                else (f" (got {got!r})")
            )
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
                return list(Choices.model_fields)
            parts.pop(0)
            model = Param
            continue
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)
