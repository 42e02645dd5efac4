"""Model builders: one Keras model per point of the design space, and its parts.

The model takes raw RGB images (float, 0-255) and stacks, in the blog's order:
input preprocessing, random augmentation (active only while training), the
backbone, and a head with one logit per class::

    >>> from ablation.sweep.factors import Configuration
    >>> network = build_model(Configuration(backbone="cnn", augment=True), image_size=(160, 160),
    ...                       num_classes=2)
    >>> [layer.name for layer in network.model.layers]
    ['image', 'augmentation', 'conv2d', 'max_pooling2d', ..., 'logits']
    >>> network.backbone is None
    True

Backbones (:mod:`ablation.sweep.backbones` lists them):
    cnn: the blog's small CNN (three 3x3 convolutions, two max-poolings, flatten, dropout,
        Dense(num_classes)).
    a Keras Applications model (``mobilenet_v2``, the blog's, ``efficientnet_b0``, ...):
        frozen, its weights loaded (:func:`ablation.model.backbones.pretrained_base`),
        run in inference mode, then global max (or average) pooling, dropout,
        Dense(num_classes). Fine-tuning unfreezes its top layers afterwards
        (:func:`unfreeze_top`).

A model with a pretrained backbone comes with its two halves (:class:`Network`),
built from the same layers: the feature extractor (preprocessing and backbone,
no augmentation) and the head (pooling, dropout, logits); with augmentation,
also the augmenter (preprocessing and augmentation, the backbone's input). The
feature cache (:mod:`ablation.model.features`) trains the head alone on features
computed once, or, with augmentation, anew at each epoch's start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ablation.model.backbones import own_preprocessing, pretrained_base
from ablation.sweep.backbones import BACKBONES, BLOG_CNN, Backbone
from ablation.sweep.factors import Configuration
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.sections import Precision
from ablation.sweep.space import effective_preprocess

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Network:
    """A configuration's model and, with a pretrained backbone, its two halves.

    The halves share the model's layers: while the backbone is frozen,
    ``model(x) == head(extractor(x))`` at inference.
    """

    model: keras.Model  # raw RGB images (0-255) -> logits
    backbone: keras.Model | None = None  # the pretrained backbone; None for the CNN
    extractor: keras.Model | None = None  # images -> backbone features, no augmentation
    head: keras.Model | None = None  # backbone features -> logits
    # images -> preprocessed, augmented images (random with training=True): the backbone's
    # input in training; None without augmentation or a pretrained backbone
    augmenter: keras.Model | None = None
    facts: Backbone = BACKBONES[BLOG_CNN]  # what the backbone is


def build_model(
    configuration: Configuration,
    *,
    image_size: tuple[int, int],
    num_classes: int,
    weights: PretrainedWeights | None = None,
    seed: int | None = None,
    precision: Precision = "float32",
) -> Network:
    """Build (not compile) the model of one configuration.

    Args:
        configuration: The configuration.
        image_size: Height and width of the input images.
        num_classes: Number of output logits.
        weights: The pretrained backbone's weights and default width (default: imagenet).
        seed: Seed of the augmentation and dropout layers.
        precision: Keras's dtype policy for every layer but the logits, which (and so
            the loss) stay float32: ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.
    """
    with in_policy(precision):
        return _build(configuration, image_size, num_classes, weights, seed)


def _build(
    configuration: Configuration,
    image_size: tuple[int, int],
    num_classes: int,
    weights: PretrainedWeights | None,
    seed: int | None,
) -> Network:
    import keras
    from keras import layers

    inputs = keras.Input(shape=(*image_size, 3), name="image")
    stem = _preprocessing(configuration, image_size)  # before the backbone, every pass
    x = _apply(stem, inputs)
    augment = augmentation(configuration, seed=seed) if configuration.augment else None
    if augment is not None:
        x = augment(x)
    # Layers are made in the order they stack: each unseeded initializer draws its seed
    # when it is made, so this order is what makes a seed's model the same model.
    if not configuration.pretrained:
        x = _apply(_small_cnn(configuration, seed), x)
        logits = layers.Dense(num_classes, name="logits", dtype="float32")
        return Network(keras.Model(inputs, logits(x), name=configuration.backbone))

    weights = weights or PretrainedWeights()
    width = weights.width_of(configuration)
    source = weights.source(configuration.backbone, width)
    backbone = pretrained_base(configuration.backbone, image_size, source, width)
    pooling = (
        layers.GlobalAveragePooling2D(name="global_average_pooling2d")
        if configuration.pooling == "avg"
        else layers.GlobalMaxPooling2D(name="global_max_pooling2d")
    )
    dropout = layers.Dropout(configuration.dropout, seed=seed, name="dropout")
    head_layers = [pooling, dropout, layers.Dense(num_classes, name="logits", dtype="float32")]
    # BatchNorm in inference mode, fine-tuned or not.
    model = keras.Model(
        inputs, _apply(head_layers, backbone(x, training=False)), name=configuration.backbone
    )
    return _with_parts(
        model, backbone, stem, augment, head_layers, BACKBONES[configuration.backbone]
    )


def _preprocessing(configuration: Configuration, image_size: tuple[int, int]) -> list[Any]:
    """The layers ``preprocess`` puts in front of the augmentation and the backbone."""
    from keras import layers

    preprocess = effective_preprocess(configuration)
    if preprocess == "mobilenet_v2":
        # Exactly keras.applications.mobilenet_v2.preprocess_input (x / 127.5 - 1) as a layer.
        return [layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_mobilenet_v2")]
    if preprocess == "backbone":
        return [own_preprocessing(configuration.backbone, image_size)]
    return []


@contextlib.contextmanager
def in_policy(policy: str) -> Iterator[None]:
    """Keras's global dtype policy set to ``policy`` while the context is open, then put
    back as it was: layers (and models) take the policy in force when they are made.

    Keras has no scoped policy of its own, only the global one.
    """
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)


def timing_network(
    configuration: Configuration,
    image_size: tuple[int, int],
    weights: PretrainedWeights,
    precision: Precision,
) -> Network:
    """A configuration's network as the machine's timings use it (:mod:`ablation.autotune`):
    two classes, no seed, compiled as the blog compiles (Adam, learning rate 0.001)."""
    network = build_model(
        configuration, image_size=image_size, num_classes=2, weights=weights, precision=precision
    )
    compile_model(network.model, "adam", 0.001)
    return network


def _with_parts(
    model: keras.Model,
    backbone: keras.Model,
    stem: list[Any],
    augment: keras.Sequential | None,
    head_layers: list[Any],
    facts: Backbone,
) -> Network:
    """A pretrained model with its extractor, head and augmenter: the model's own layers."""
    import keras

    image = keras.Input(shape=model.input_shape[1:], name="image")
    features = backbone(_apply(stem, image), training=False)
    extractor = keras.Model(image, features, name="feature_extractor")
    features_in = keras.Input(shape=features.shape[1:], name="features")
    head = keras.Model(features_in, _apply(head_layers, features_in), name="head")
    augmenter = None
    if augment is not None:
        augmenter = keras.Model(image, augment(_apply(stem, image)), name="augmenter")
    return Network(model, backbone, extractor, head, augmenter, facts)


def _apply(layers: list[Any], x: Any) -> Any:
    for layer in layers:
        x = layer(x)
    return x


def _small_cnn(configuration: Configuration, seed: int | None) -> list[Any]:
    """The blog's CNN up to its logits (``Dense(num_classes)``, added by the caller)."""
    from keras import layers

    return [
        layers.Conv2D(32, 3, activation="relu", name="conv2d"),
        layers.MaxPooling2D(name="max_pooling2d"),
        layers.Conv2D(32, 3, activation="relu", name="conv2d_1"),
        layers.MaxPooling2D(name="max_pooling2d_1"),
        layers.Conv2D(64, 3, activation="relu", name="conv2d_2"),
        layers.Flatten(name="flatten"),
        layers.Dropout(configuration.dropout, seed=seed, name="dropout"),
    ]


def augmentation(configuration: Configuration, seed: int | None = None) -> keras.Sequential:
    """The blog's augmentation: a random flip (the blog's ``RandomFlip()``: horizontal and
    vertical, by default), then a random rotation."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            layers.RandomFlip(configuration.flip, seed=seed, name="random_flip"),
            layers.RandomRotation(configuration.rotation, seed=seed, name="random_rotation"),
        ],
        name="augmentation",
    )


def unfreeze_top(network: Network, count: int) -> list[str]:
    """Make the backbone's top ``count`` layers trainable, but the layer types its facts
    keep frozen (BatchNorm, input normalisation; inside nested blocks too).

    BatchNorm layers stay frozen, and so in inference mode (their moving statistics
    are ImageNet's): updating them on small batches of a small dataset wrecks what
    the backbone learned. Returns the names of the layers made trainable.

    Raises:
        ValueError: The model has no pretrained backbone.
    """
    import keras

    backbone = network.backbone
    if backbone is None:
        raise ValueError(f"model {network.model.name!r} has no pretrained backbone to fine-tune")
    kept = tuple(getattr(keras.layers, name) for name in network.facts.kept_frozen)
    backbone.trainable = True
    top = {id(layer) for layer in backbone.layers[-count:]} if count > 0 else set()
    unfrozen = []
    for layer in backbone.layers:
        layer.trainable = id(layer) in top and not isinstance(layer, kept)
        _freeze_nested(layer, kept)
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def _freeze_nested(layer: Any, kept: tuple[type[Any], ...]) -> None:
    """Freeze the ``kept`` layers inside a block (a nested model, e.g. ConvNeXt's stem)."""
    for inner in getattr(layer, "layers", []):
        if isinstance(inner, kept):
            inner.trainable = False
        _freeze_nested(inner, kept)


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

    with in_policy(model.dtype_policy.name):  # the model's own, as when it was built
        return keras.Model(model.inputs, model.outputs, name=model.name)
