"""The sections of a sweep file, one pydantic model each: ``study``, ``data``, ``train``,
``model`` and ``tracking`` (the ``space`` is :mod:`ablation.sweep.factors`'s).

:class:`ablation.sweep.config.Sweep` puts them together and validates what spans
sections; each model here validates only its own keys.

Example:
    >>> from ablation.sweep.sections import Data
    >>> Data(source="photos/", validation_fraction=0.5, test_fraction=0.2).image_size
    (160, 160)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from ablation.sweep.backbones import BACKBONES, Backbone
from ablation.sweep.factors import BackboneName, Configuration, Scalar, Width
from ablation.sweep.stores import sqlite_file, sqlite_url

Precision = Literal["float32", "mixed_bfloat16", "mixed_float16"]  # Keras's dtype policies

DEFAULT_OUTPUT_DIR = Path("mlruns")
# Where a store comes from when the sweep and the command line leave it out: the environment,
# so that a password never has to be on a command line (ps shows those to every user).
STORAGE_ENV = "ABLATION_STORAGE"  # the Optuna storage URL
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own; MLFLOW_TRACKING_PASSWORD etc. too


class Section(BaseModel):
    """A sweep file section: unknown keys are refused, never ignored."""

    model_config = ConfigDict(extra="forbid")


class Study(Section):
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


class Data(Section):
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


class Train(Section):
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


WeightsSource = str | None
"""Where a backbone's weights come from: ``imagenet`` (Keras's cache file under
``$KERAS_HOME/models``, else Keras downloads it), a weights file, or ``none``/null
(random initialisation, drawn from the trial's seed)."""
IMAGENET = "imagenet"


class PretrainedWeights(Section):
    """The ``model`` section: the pretrained backbones' weights and default width.

    ``weights`` is one source for every backbone, or one per backbone (a backbone left
    out: imagenet), and for a backbone with widths, one per width (a width left out:
    imagenet)::

        weights: {mobilenet_v2: {0.35: mobilenet_v2_0.35.h5}, efficientnet_b0: none}

    >>> weights = PretrainedWeights(
    ...     weights={"mobilenet_v2": {0.35: "small.h5"}, "resnet50": "none"})
    >>> [weights.source(b, w) for b, w in [("mobilenet_v2", 0.35), ("mobilenet_v2", 1.0),
    ...                                    ("resnet50", None), ("xception", None)]]
    ['small.h5', 'imagenet', None, 'imagenet']
    """

    weights: WeightsSource | dict[BackboneName, WeightsSource | dict[Width, WeightsSource]] = Field(
        IMAGENET,
        description="imagenet (Keras's cache or a download), a weights file, or none "
        "(random initialisation); or a mapping backbone: source (or backbone: {width: "
        "source}); a backbone or width left out: imagenet",
    )
    alpha: Width = Field(1.0, description="the width of a backbone that has one (MobileNets)")

    @field_validator("weights", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        """One line for what is wrong; ``none`` (as ``preprocess: none`` is written) is null."""
        if not isinstance(value, dict):
            return _source(value)
        pretrained = [name for name, facts in BACKBONES.items() if facts.pretrained]
        checked: dict[str, Any] = {}
        for backbone, source in value.items():
            if backbone not in pretrained:
                raise ValueError(
                    f"{backbone!r} is not a pretrained backbone (allowed: {', '.join(pretrained)})"
                )
            if isinstance(source, dict):
                facts = BACKBONES[backbone]
                for width in source:
                    if problem := _width_key_problem(facts, width):
                        raise ValueError(f"{backbone}: {problem}")
                source = {float(w): _source(s, f"{backbone}.{w}") for w, s in source.items()}
            checked[backbone] = (
                _source(source, backbone) if not isinstance(source, dict) else source
            )
        return checked

    def width_of(self, configuration: Configuration) -> float | None:
        """A configuration's backbone width: its ``alpha`` factor, else this section's;
        None for a backbone without one."""
        if not BACKBONES[configuration.backbone].widths:
            return None
        return configuration.alpha if configuration.alpha is not None else self.alpha

    def source(self, backbone: str, width: float | None) -> str | None:
        """Where a backbone's weights at a width come from: ``imagenet``, a file, or None."""
        chosen = (
            self.weights.get(backbone, IMAGENET)
            if isinstance(self.weights, dict)
            else (self.weights)
        )
        if isinstance(chosen, dict):
            return chosen.get(width, IMAGENET) if width is not None else IMAGENET
        return chosen


def _source(value: Any, where: str = "") -> str | None:
    if value is None or value == "none":
        return None
    if isinstance(value, str) and value:
        return value
    at = f"{where}: " if where else ""
    raise ValueError(
        f"{at}{value!r} is not a weights source (allowed: imagenet, a weights file, none; "
        "or a mapping backbone: source)"
    )


def _width_key_problem(facts: Backbone, width: Any) -> str | None:
    if not facts.widths:
        return f"has no width (given {width!r})"
    if isinstance(width, bool) or not isinstance(width, int | float):
        return f"{width!r} is not a width (allowed: {', '.join(f'{w:g}' for w in facts.widths)})"
    return facts.width_problem(width)


class Tracking(Section):
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
