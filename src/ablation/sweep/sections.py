"""The sections of a sweep file, one pydantic model each: ``study``, ``data``, ``train``
and ``tracking`` (the ``model`` section is :mod:`ablation.sweep.pretrained`'s, the
``space`` :mod:`ablation.sweep.factors`'s).

:class:`ablation.sweep.config.Sweep` puts them together and validates what spans
sections; each model here validates only its own keys.

Example:
    >>> from ablation.sweep.sections import Data
    >>> Data(source="photos/", validation_fraction=0.5, test_fraction=0.2).image_size
    (160, 160)
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal, get_args

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

from ablation.sweep.factors import BackboneName, Configuration, Scalar
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


class SeedRange(Section):
    """``seeds: {min: 2, max: 10}``: adaptive seeds (:mod:`ablation.effects.sequential`).

    A grid runs seeds ``0 .. min-1`` of every configuration, then one more seed at a time
    of the configurations that enter an undecided effect, up to ``max``.

    >>> SeedRange(min=2, max=4).first
    [0, 1]
    """

    min: int = Field(ge=2, description="seeds of every configuration before the first look")
    max: int = Field(ge=2, description="seeds of a configuration at most")

    @model_validator(mode="after")
    def _min_up_to_max(self) -> SeedRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        return self

    @property
    def first(self) -> list[int]:
        """The seeds of the first round."""
        return list(range(self.min))


class Study(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sampler: Literal["grid", "tpe", "random"] = "grid"
    seeds: list[int] | SeedRange = Field(
        default_factory=lambda: [0],
        description="the seeds of every configuration (a fixed design), or {min: 2, max: "
        "10}: adaptive seeds, one more round while an effect is undecided (grid only)",
    )
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

    @field_validator("seeds", mode="before")
    @classmethod
    def _list_or_range(cls, value: Any) -> Any:
        """One message for each shape (pydantic would report both union members)."""
        if isinstance(value, dict):
            try:
                return SeedRange.model_validate(value)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error["loc"])
                problem = error["msg"].removeprefix("Value error, ")
                keys = f"{where}: {problem}" if where else problem
                raise ValueError(f"{keys} (allowed: {{min: N, max: M}}, 2 <= N <= M)") from None
        if not isinstance(value, list) or not value:
            raise ValueError("a list of seeds, e.g. [0, 1, 2], or {min: 2, max: 10}")
        return value

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
        if isinstance(self.seeds, SeedRange) and self.sampler != "grid":
            raise ValueError(
                "'seeds: {min, max}' (adaptive seeds) is for the grid sampler; "
                f"{self.sampler} takes a list of seeds, e.g. 'seeds: [0]'"
            )
        if isinstance(self.seeds, list) and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("'seeds' lists a seed twice")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("'grace_seconds' must be longer than 'heartbeat_seconds'")
        return self

    @property
    def adaptive(self) -> SeedRange | None:
        """The adaptive seeds' range; None for a fixed list of seeds."""
        return self.seeds if isinstance(self.seeds, SeedRange) else None

    @property
    def first_seeds(self) -> list[int]:
        """The seeds every configuration runs: the list, or an adaptive study's first round."""
        return self.seeds.first if isinstance(self.seeds, SeedRange) else self.seeds

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
    sha256: str | None = Field(
        None,
        description="the SHA-256 of the archive data.source names (a URL only): an archive "
        "that differs, downloaded or cached, stops the study before it is used",
    )

    @field_validator("sha256")
    @classmethod
    def _sha256_is_64_hex_digits(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(
                f"{value!r} is not a SHA-256 (allowed: 64 hexadecimal digits, as sha256sum "
                "prints them)"
            )
        return value.lower() if value else value

    @model_validator(mode="after")
    def _fractions_leave_training_images(self) -> Data:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"validation_fraction ({self.validation_fraction}) + test_fraction "
                f"({self.test_fraction}) must be below 1: the rest is the training set"
            )
        if self.sha256 is not None and not self.is_url():
            raise ValueError(
                "sha256 checks a downloaded archive, and source is a local folder "
                "(allowed: sha256 with an http(s)://, ftp:// or file:// URL of an archive)"
            )
        return self

    def is_url(self) -> bool:
        """Whether ``source`` is the URL of an archive to download, not a local folder.

        >>> Data(source="file:///tmp/photos.zip").is_url(), Data(source="photos/").is_url()
        (True, False)
        """
        return urllib.parse.urlparse(self.source).scheme in ("http", "https", "ftp", "file")


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


class Tracking(Section):
    uri: str | None = Field(
        None, description=f"MLflow tracking URI; default ${TRACKING_URI_ENV}, else under mlruns/"
    )
    experiment: str | None = None
    system_metrics: PositiveFloat | None = Field(
        10.0,
        description="seconds between samples of MLflow's system metrics on each trial's run; "
        "null: none",
    )

    def tracking_uri(self) -> str:
        default = sqlite_url((DEFAULT_OUTPUT_DIR / "mlflow.db").resolve())
        return self.uri or os.environ.get(TRACKING_URI_ENV) or default

    def artifact_location(self) -> str | None:
        """Where new experiments keep artifacts: beside a local SQLite store, else the server's."""
        database = sqlite_file(self.tracking_uri())
        return (database.parent / "artifacts").resolve().as_uri() if database else None
