"""A study's identity beyond its name: the settings that decide its trials' results.

A study is found again by its name, in Optuna and in MLflow. So that an edited sweep
never continues the old study (old and new trials mixed in one table and one set of
effects), the first run records :func:`study_settings` with the study, and every
later run compares before any trial: :func:`check_settings` names what changed and
the ways forward, a new ``study.name`` or ``--new-study`` (:func:`new_study_name`).

What decides the results, and is compared: the space (every factor, choice, range and
``when``), the data's identity (its photos' content, labels and split:
``data_sha256``), the image size, the batch size, the split's settings, the training
settings (epochs, optimizer, learning rate, patience, precision as written), the
sampler and pruner, and, where the space has a pretrained backbone, its weights
(source, width and the weights' own hash).

What adds work under the same settings, or changes no result, is not compared, and a
rerun continues: more (or fewer) ``study.seeds``, more ``study.trials`` and
``study.try_first`` of a guided search, ``study.min_effect`` (the report's), the
stores' addresses, ``study.isolation``, heartbeats, ``data.source`` itself (the same
photos elsewhere have the same identity), ``data.cache_dir``,
``train.cache_features`` and ``train.feature_batch_size`` (neither changes a trial's
numbers).

Example:
    >>> before = {"train.epochs": 20, "space.augment": {"choice": [False, True]}}
    >>> after = {"train.epochs": 10, "space.augment": {"choice": [False, True]}, "model.alpha": 1}
    >>> changes(before, after)
    ['model.alpha: (absent) -> 1', 'train.epochs: 20 -> 10']
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ablation.errors import UserError
from ablation.sweep.config import Sweep
from ablation.tracking.records import TagName
from ablation.tracking.tracker import Tracker

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SHOWN_CHANGES = 3  # a refusal names this many changes, then counts the rest
MAX_TAG_VAL_LENGTH = 8000  # MLflow's longest tag value (mlflow.utils.validation)


def study_settings(
    sweep: Sweep, identity: Mapping[str, Any], weights: Mapping[str, Any]
) -> dict[str, Any]:
    """The settings that decide a study's results, flat and JSON-ready (``key: value``).

    Args:
        sweep: The sweep as written (``precision: auto`` not yet resolved: two machines
            may resolve it differently, and the study is still one study).
        identity: The params every trial records (the runner's), with ``data_sha256``.
        weights: The pretrained trials' params (``weights``, ``alpha``,
            ``weights_sha256``); empty where the space has no pretrained backbone.
    """
    settings: dict[str, Any] = {
        "data.identity": identity["data_sha256"],
        "data.image_size": list(sweep.data.image_size),
        "data.batch_size": sweep.data.batch_size,
        "data.limit_per_class": sweep.data.limit_per_class,
        "data.test_fraction": sweep.data.test_fraction,
        "data.validation_fraction": sweep.data.validation_fraction,
        "data.split_seed": sweep.data.split_seed,
        "train.epochs": sweep.train.epochs,
        "train.optimizer": sweep.train.optimizer,
        "train.learning_rate": sweep.train.learning_rate,
        "train.patience": sweep.train.patience,
        "train.precision": sweep.train.precision,
        "study.sampler": sweep.study.sampler,
        "study.pruner": sweep.study.pruner,
    }
    if sweep.study.pruner != "none":
        settings["study.prune_after"] = sweep.study.prune_after
    for name, factor in sweep.space.items():
        settings[f"space.{name}"] = factor.model_dump(mode="json", exclude_defaults=True)
    for key, value in weights.items():
        settings[f"model.{key}"] = value
    # As JSON gives it back (tuples become lists), so a recorded copy compares equal.
    return json.loads(json.dumps(settings, sort_keys=True))


def hold_settings(study: optuna.Study, tracker: Tracker, settings: Mapping[str, Any]) -> None:
    """Check the sweep's settings against what the study recorded, in Optuna and in its
    MLflow parent run, and record them where nothing is recorded yet. Call it under the
    study's lock, before any trial.

    Raises:
        UserError: Either record holds other settings (:func:`check_settings`).
    """
    name = study.study_name
    recorded = study.user_attrs.get(TagName.SETTINGS)
    check_settings(name, recorded, settings, "the Optuna storage")
    tags = tracker.study_tags(name)
    if TagName.SETTINGS in tags:
        check_settings(name, json.loads(tags[TagName.SETTINGS]), settings, "MLflow")
    elif TagName.SETTINGS_DIGEST in tags:  # settings too long for a tag: their digest
        check_settings(
            name,
            {"settings digest": tags[TagName.SETTINGS_DIGEST]},
            {"settings digest": settings_digest(settings)},
            "MLflow",
        )
    if recorded is None:
        if study.get_trials(deepcopy=False):
            log.warning(
                "study %r was recorded before studies kept their settings; its trials are "
                "taken to have this sweep's settings, which are recorded from now on",
                name,
            )
        study.set_user_attr(TagName.SETTINGS, dict(settings))


def settings_tags(settings: Mapping[str, Any]) -> dict[str, str]:
    """The study run's tags that record its settings: the digest, and the settings as JSON
    where they fit in a tag."""
    text = json.dumps(dict(settings), sort_keys=True, ensure_ascii=False)
    tags = {TagName.SETTINGS_DIGEST: settings_digest(settings)}
    if len(text) <= MAX_TAG_VAL_LENGTH:
        tags[TagName.SETTINGS] = text
    return tags


def as_new_study(sweep: Sweep, settings: Mapping[str, Any]) -> Sweep:
    """The sweep as :func:`named` :func:`new_study_name`: an ordinary study of that name
    (in an MLflow experiment of that name, unless ``tracking.experiment`` says another)."""
    return named(sweep, new_study_name(sweep.study.name, settings))


def named(sweep: Sweep, name: str) -> Sweep:
    """The sweep with another ``study.name``."""
    return sweep.model_copy(update={"study": sweep.study.model_copy(update={"name": name})})


def settings_digest(settings: Mapping[str, Any]) -> str:
    """A short hash of the settings (the ``--new-study`` name's suffix).

    >>> settings_digest({"train.epochs": 20}) == settings_digest({"train.epochs": 20})
    True
    """
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def new_study_name(name: str, settings: Mapping[str, Any]) -> str:
    """The study ``--new-study`` runs: the name with the settings' digest appended, so the
    same edited sweep with ``--new-study`` continues its own study and never another.

    >>> new_study_name("blog", {"train.epochs": 10})
    'blog-8181ef9b'
    """
    return f"{name}-{settings_digest(settings)}"


def changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs, in key order."""
    absent = object()
    lines = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key, absent), current.get(key, absent)
        if old != new:
            lines.append(f"{key}: {_shown(old, absent)} -> {_shown(new, absent)}")
    return lines


def check_settings(
    name: str, recorded: Mapping[str, Any] | None, current: Mapping[str, Any], where: str
) -> None:
    """Refuse to continue a study whose recorded settings differ from the sweep's.

    Args:
        name: The study's name.
        recorded: What the study recorded (None: nothing yet; it takes ``current``).
        current: :func:`study_settings` of this run.
        where: Which record holds ``recorded``, for the message (Optuna's or MLflow's).

    Raises:
        UserError: One line naming what changed and the two ways forward.
    """
    if recorded is None:
        return
    changed = changes(recorded, current)
    if not changed:
        return
    shown = "; ".join(changed[:SHOWN_CHANGES])
    more = f" (and {len(changed) - SHOWN_CHANGES} more)" if len(changed) > SHOWN_CHANGES else ""
    raise UserError(
        f"study {name!r} in {where} was run with other settings: {shown}{more}; a study never "
        f"mixes trials of two settings: give this sweep a new study.name (--set "
        f"study.name=...), or run it with --new-study (study {new_study_name(name, current)!r})"
    )


def _shown(value: Any, absent: object) -> str:
    if value is absent:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
