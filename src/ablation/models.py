"""Model builders: one Keras model per point of the design space.

The model takes raw RGB images (float, 0-255) and stacks, in the blog's order:
input preprocessing, random augmentation (active only while training), the
backbone, and a two-logit head::

    >>> from ablation.config import Choices
    >>> model = build_model(Choices(backbone="cnn", augment=True), image_size=(160, 160),
    ...                     num_classes=2)
    >>> [layer.name for layer in model.layers]
    ['image', 'augmentation', 'conv2d', 'max_pooling2d', ..., 'logits']

Backbones:
    cnn: the blog's small CNN (three 3x3 convolutions, two max-poolings, dropout, two dense).
    mobilenet_v2: MobileNetV2 with frozen ImageNet weights (run in inference mode),
        global max (or average) pooling, dropout, Dense(num_classes). Fine-tuning
        unfreezes its top layers afterwards (:func:`unfreeze_top`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation.config import Choices, Model, Precision, Train
from ablation.errors import UserError, first_line

if TYPE_CHECKING:
    import keras

MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)
AUGMENTATION = "augmentation"  # the name of the random augmentation block


def build_model(
    choices: Choices,
    *,
    image_size: tuple[int, int],
    num_classes: int,
    model: Model | None = None,
    seed: int | None = None,
    precision: Precision = "float32",
) -> keras.Model:
    """Build (not compile) the model of one configuration.

    Args:
        choices: The configuration.
        image_size: Height and width of the input images.
        num_classes: Number of output logits.
        model: Backbone weights and width (MobileNetV2 only).
        seed: Seed of the augmentation layers.
        precision: Keras's dtype policy for every layer but the logits, which (and so
            the loss) stay float32: ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.
    """
    import keras
    from keras import layers

    keras.mixed_precision.set_global_policy(precision)
    model = model or Model()
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = inputs
    if choices.preprocess == "mobilenet_v2":
        # Exactly keras.applications.mobilenet_v2.preprocess_input (x / 127.5 - 1) as a layer.
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_mobilenet_v2")(x)
    if choices.augment:
        x = augmentation(choices, seed=seed)(x)
    if choices.backbone == "cnn":
        x = layers.Conv2D(32, 3, activation="relu", name="conv2d")(x)
        x = layers.MaxPooling2D(name="max_pooling2d")(x)
        x = layers.Conv2D(32, 3, activation="relu", name="conv2d_1")(x)
        x = layers.MaxPooling2D(name="max_pooling2d_1")(x)
        x = layers.Conv2D(64, 3, activation="relu", name="conv2d_2")(x)
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(choices.dropout, seed=seed, name="dropout")(x)
        x = layers.Dense(64, activation="relu", name="dense")(x)
    else:
        base = mobilenet_v2_base(image_size, model)
        x = base(x, training=False)  # BatchNorm in inference mode, fine-tuned or not
        if choices.pooling == "avg":
            x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        else:
            x = layers.GlobalMaxPooling2D(name="global_max_pooling2d")(x)
        x = layers.Dropout(choices.dropout, seed=seed, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=choices.backbone)


def dtype_policy(train: Train, choices: Choices) -> Precision:
    """The Keras dtype policy a configuration's model computes in (``train.precision``).

    ``auto`` picks what was measured faster here (bench/README.md): bfloat16 for the
    CNN (1.9x on a CPU with AVX512-BF16), float32 for MobileNetV2 (bfloat16 was slower)
    and for any model on a machine whose CPU lacks native bfloat16 or that has a GPU
    (not measured there)::

        >>> from ablation.config import Train
        >>> dtype_policy(Train(precision={"cnn": "mixed_bfloat16"}), Choices(backbone="cnn"))
        'mixed_bfloat16'
    """
    if train.precision == "auto":
        if choices.backbone == "cnn" and _cpu_computes_bfloat16():
            return "mixed_bfloat16"
        return "float32"
    if isinstance(train.precision, dict):
        return train.precision.get(choices.backbone, "float32")
    return train.precision


@functools.cache
def _cpu_computes_bfloat16() -> bool:
    """No GPU, and a CPU with bfloat16 instructions (Linux's /proc/cpuinfo flags)."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return has_bfloat16_flags(cpuinfo)


def has_bfloat16_flags(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's flags name native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def augmentation(choices: Choices, seed: int | None = None) -> keras.Sequential:
    """The blog's augmentation: a random flip, then a random rotation."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip(choices.flip, seed=seed, name="random_flip"),
            layers.RandomRotation(choices.rotation, seed=seed, name="random_rotation"),
        ],
        name=AUGMENTATION,
    )


def mobilenet_v2_base(image_size: tuple[int, int], model: Model) -> keras.Model:
    """MobileNetV2 without its top, weights loaded and frozen.

    Raises:
        UserError: The weights file is missing, cannot be downloaded, or does not fit.
    """
    import keras

    weights = model.weights
    if weights != "imagenet" and not Path(weights).is_file():
        raise UserError(f"model.weights: {weights!r} is not a file (allowed: imagenet or a path)")
    if weights == "imagenet" and image_size[0] != image_size[1]:
        raise UserError(
            f"data.image_size {list(image_size)}: MobileNetV2's ImageNet weights need square "
            f"images (one of {', '.join(map(str, MOBILENET_V2_SIZES))})"
        )
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(*image_size, 3), include_top=False, weights=weights, alpha=model.alpha
        )
    except Exception as exc:  # h5py, Keras and get_file raise many kinds (a bare Exception too)
        if weights != "imagenet" or isinstance(exc, ValueError):
            raise UserError(
                f"model.weights: {weights!r} does not fit MobileNetV2 with alpha {model.alpha} "
                f"({first_line(exc)}); allowed: imagenet, or a MobileNetV2 weights file "
                "without its top"
            ) from None
        cached = imagenet_weights_file(image_size, model)
        raise UserError(
            f"model.weights: cannot load MobileNetV2 ImageNet weights ({first_line(exc)}); "
            f"offline, set KERAS_HOME to a folder with models/{cached}"
            " or set model.weights to a weights file"
        ) from None
    base.trainable = False
    return base


def imagenet_weights_file(image_size: tuple[int, int], model: Model) -> str:
    """The file name Keras caches MobileNetV2's ImageNet weights under."""
    rows = image_size[0] if image_size[0] in MOBILENET_V2_SIZES else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{model.alpha}_{rows}_no_top.h5"


def weights_fingerprint(image_size: tuple[int, int], model: Model) -> str:
    """A short hash of the backbone's weights file, so results say what they stand on."""
    if model.weights == "imagenet":
        keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        path = Path(keras_home) / "models" / imagenet_weights_file(image_size, model)
        if not path.is_file():  # Keras falls back to /tmp when the home is not writable
            path = Path("/tmp/.keras/models") / imagenet_weights_file(image_size, model)
    else:
        path = Path(model.weights)
    if not path.is_file():
        return "unknown"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The pretrained backbone inside a model from :func:`build_model` (None for the CNN)."""
    import keras

    return next(
        (
            layer
            for layer in model.layers
            if isinstance(layer, keras.Model) and layer.name != AUGMENTATION
        ),
        None,
    )


def unfreeze_top(model: keras.Model, count: int) -> list[str]:
    """Make the backbone's top ``count`` layers trainable, BatchNorm layers excepted.

    BatchNorm layers stay frozen, and so in inference mode (their moving statistics
    are ImageNet's): updating them on small batches of a small dataset wrecks what
    the backbone learned. Returns the names of the layers made trainable.

    Raises:
        ValueError: The model has no pretrained backbone.
    """
    from keras import layers

    backbone = backbone_of(model)
    if backbone is None:
        raise ValueError(f"model {model.name!r} has no pretrained backbone to fine-tune")
    backbone.trainable = True
    top = {id(layer) for layer in backbone.layers[-count:]} if count > 0 else set()
    unfrozen = []
    for layer in backbone.layers:
        layer.trainable = id(layer) in top and not isinstance(layer, layers.BatchNormalization)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def compile_model(
    model: keras.Model, optimizer: str, learning_rate: float, label_smoothing: float = 0.0
) -> None:
    """Compile with the blog's loss (cross-entropy from logits, integer labels) and accuracy.

    With ``label_smoothing`` the targets are ``(1 - s) * one_hot + s / classes``, as in
    ``keras.losses.CategoricalCrossentropy(label_smoothing=s)``.
    """
    import keras

    optimizers = {
        "adam": keras.optimizers.Adam,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    loss: Any = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if label_smoothing:

        def loss(y_true: Any, logits: Any) -> Any:
            labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
            targets = keras.ops.one_hot(labels, keras.ops.shape(logits)[-1])
            return keras.losses.categorical_crossentropy(
                targets, logits, from_logits=True, label_smoothing=label_smoothing
            )

    model.compile(
        optimizer=optimizers[optimizer](learning_rate=learning_rate),
        loss=loss,
        metrics=["accuracy"],
    )


def inference_copy(model: keras.Model) -> keras.Model:
    """The model without its training setup (optimizer, loss): what is saved and exported.

    It shares the trained weights, takes raw RGB images (0-255) and gives logits;
    ``keras.saving.load_model`` reads it back with no custom objects.
    """
    import keras

    return keras.Model(model.inputs, model.outputs, name=model.name)
