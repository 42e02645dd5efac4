"""Keras Applications backbones built from their facts (:mod:`ablation.sweep.backbones`).

:func:`pretrained_base` builds a backbone without its top, at the sweep's image size and
width, with its weights (``imagenet``, a file, or none: random initialisation) loaded
and frozen; :func:`own_preprocessing` is its own input preprocessing as a layer of the
model (``preprocess: backbone``); :func:`weights_fingerprint` says which weights
results stand on.

``imagenet`` is Keras's own loading (``weights="imagenet"``): Keras looks for its cache
file (:meth:`ablation.sweep.backbones.Backbone.imagenet_file`) in ``$KERAS_HOME/models``
and downloads it when it is missing, or, for the backbones whose file Keras pins a hash
of (all but MobileNetV2), when the file there has another hash. Where a backbone's
ImageNet model differs from its randomly initialised one (EfficientNet's input
normalisation), only Keras's own loading builds the right one.

Example::

    base = pretrained_base("efficientnet_b0", (128, 128), source=None, width=None)
    base.name, base.trainable      # ('efficientnetb0', False)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.errors import UserError, first_line
from ablation.redaction import redact
from ablation.sweep import space
from ablation.sweep.backbones import BACKBONES, Backbone, variant
from ablation.sweep.config import Sweep
from ablation.sweep.pretrained import IMAGENET

if TYPE_CHECKING:
    import keras


def pretrained_base(
    backbone: str, image_size: tuple[int, int], source: str | None, width: float | None
) -> keras.Model:
    """A backbone without its top, weights loaded (None: random) and frozen.

    Raises:
        UserError: The image size is below the backbone's minimum, the width is not one of
            its widths, or the weights file is missing, cannot be downloaded, or does not fit.
    """
    import keras

    facts = BACKBONES[backbone]
    if problem := facts.size_problem(image_size) or facts.width_problem(width):
        raise UserError(problem)
    if source not in (IMAGENET, None) and not Path(source).is_file():
        raise UserError(
            f"model.weights: {source!r} is not a file (for {variant(backbone, width)}; "
            "allowed: imagenet, none, or a path)"
        )
    widths = {"alpha": width} if facts.widths else {}
    construct = getattr(keras.applications, facts.application)
    try:
        base = construct(input_shape=(*image_size, 3), include_top=False, weights=source, **widths)
    except Exception as exc:  # h5py, Keras and get_file raise many kinds (a bare Exception too)
        raise UserError(_load_problem(facts, image_size, source, width, exc)) from None
    base.trainable = False
    return base


def _load_problem(
    facts: Backbone,
    image_size: tuple[int, int],
    source: str | None,
    width: float | None,
    exc: Exception,
) -> str:
    """One line for weights that do not load: which file, where, and what to do."""
    name = f"{facts.application}" + (f" with alpha {width:g}" if width is not None else "")
    if source != IMAGENET or isinstance(exc, ValueError):
        return (
            f"model.weights: {source!r} does not fit {name} ({first_line(exc)}); allowed: "
            f"imagenet, none, or a {facts.application} weights file without its top"
        )
    path = imagenet_path(facts, width, image_size)
    found = (
        f"{path} is there but is not Keras's file (Keras checks its hash), and downloading it"
        if path.is_file()
        else f"looked for {path} and downloading it"
    )
    return (
        f"model.weights: cannot load {name}'s ImageNet weights: {found} failed "
        f"({first_line(exc)}); offline, set KERAS_HOME to a folder with "
        f"models/{path.name}, or set model.weights to a weights file"
    )


def keras_models_folder() -> Path:
    """Where Keras caches weights: ``$KERAS_HOME/models``, else ``~/.keras/models`` (Keras
    falls back to ``/tmp/.keras`` when the home is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if home:
        return Path(home) / "models"
    user = Path(os.path.expanduser("~"))
    return (user if os.access(user, os.W_OK) else Path("/tmp")) / ".keras" / "models"


def imagenet_path(facts: Backbone, width: float | None, image_size: tuple[int, int]) -> Path:
    """The file Keras reads a backbone's ImageNet weights from (it may not exist yet)."""
    name = facts.imagenet_file(width, image_size)
    path = keras_models_folder() / name
    fallback = Path("/tmp/.keras/models") / name  # Keras's, when KERAS_HOME is not writable
    return fallback if not path.is_file() and fallback.is_file() else path


def weights_fingerprint(
    backbone: str, width: float | None, image_size: tuple[int, int], source: str | None
) -> str:
    """A short hash of the weights file a backbone loads, so results say what they stand on:
    ``random`` without one (random initialisation), ``unknown`` if the file is missing."""
    if source is None:
        return "random"
    path = imagenet_path(BACKBONES[backbone], width, image_size)
    if source != IMAGENET:
        path = Path(source)
    if not path.is_file():
        return "unknown"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def own_preprocessing(backbone: str, image_size: tuple[int, int]) -> keras.Model:
    """``keras.applications.<module>.preprocess_input`` as one layer of the model (Keras
    records its operations, so the saved model loads with ``safe_mode``)."""
    import keras

    module = getattr(keras.applications, BACKBONES[backbone].preprocess_module)
    image = keras.Input(shape=(*image_size, 3), name=f"{backbone}_input")
    return keras.Model(image, module.preprocess_input(image), name=f"preprocess_{backbone}")


def weights_identity(sweep: Sweep) -> dict[str, Any]:
    """The params of the trials with a pretrained backbone: which weights each backbone
    (at each width) the space can produce stands on, flat. With one, ``weights``,
    ``alpha`` (its width, if it has one) and ``weights_sha256``, as a study of the blog's
    records; with several, ``weights.<variant>`` and ``weights_sha256.<variant>`` per
    variant (e.g. ``mobilenet_v2_0.35``), the width in the name, so that no ``alpha``
    param stands beside the ``alpha`` factor on a trial without a width."""
    variants = space.pretrained_variants(sweep.space, sweep.model.alpha)
    size = sweep.data.image_size
    found: dict[str, Any] = {}
    for backbone, width in variants:
        source = sweep.model.source(backbone, width)
        key = "" if len(variants) == 1 else f".{variant(backbone, width)}"
        found[f"weights{key}"] = redact(source) if source is not None else "none"
        if len(variants) == 1 and width is not None:
            found["alpha"] = width
        found[f"weights_sha256{key}"] = weights_fingerprint(backbone, width, size, source)
    return found


def check_weights(sweep: Sweep) -> None:
    """Load each pretrained backbone (at each width) once before any trial, so a weights
    or size problem is one clear line."""
    import keras

    for backbone, width in space.pretrained_variants(sweep.space, sweep.model.alpha):
        source = sweep.model.source(backbone, width)
        pretrained_base(backbone, sweep.data.image_size, source, width)
        keras.backend.clear_session()
