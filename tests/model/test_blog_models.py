"""The harness's four blog models against the blog's own code (``../shared/blog/tutorial.md``).

The blog's code is written out below as the tutorial has it, with one change that Keras 3
needs: the preprocessor's output is ``x``, not ``[x]`` (Keras 3 passes a one-element list
on to the next layer, and ``Conv2D`` cannot take it). Each pair is compared layer type by
layer type, in parameter counts, and in outputs once the blog's model has the harness's
weights: equal outputs mean the same layers in the same order, preprocessing included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ablation.model.builders import build_model
from ablation.sweep.space import BLOG_MODELS, configuration


def blog_models() -> dict[str, Any]:
    """The blog's model1-model4, its code as written (but ``outputs = x``, see above)."""
    import tensorflow as tf
    from tensorflow.keras import layers

    IMG_SIZE = (160, 160)  # noqa: N806 - the blog's names

    model1 = tf.keras.Sequential(
        [
            layers.Conv2D(32, (3, 3), activation="relu", input_shape=(160, 160, 3)),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ]
    )
    model2 = tf.keras.Sequential(
        [
            layers.RandomFlip(),
            layers.RandomRotation(0.2),
            layers.Conv2D(32, (3, 3), activation="relu", input_shape=(160, 160, 3)),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ]
    )
    i = tf.keras.Input(shape=(160, 160, 3))
    x = tf.keras.applications.mobilenet_v2.preprocess_input(i)
    preprocessor = tf.keras.Model(inputs=[i], outputs=x)
    model3 = tf.keras.Sequential(
        [
            preprocessor,
            layers.RandomFlip(),
            layers.RandomRotation(0.2),
            layers.Conv2D(32, (3, 3), activation="relu", input_shape=(160, 160, 3)),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ]
    )
    IMG_SHAPE = IMG_SIZE + (3,)  # noqa: N806
    base_model = tf.keras.applications.MobileNetV2(
        input_shape=IMG_SHAPE, include_top=False, weights="imagenet"
    )
    base_model.trainable = False
    i = tf.keras.Input(shape=IMG_SHAPE)
    x = base_model(i, training=False)
    base_model_layer = tf.keras.Model(inputs=[i], outputs=x)
    model4 = tf.keras.Sequential(
        [
            preprocessor,
            layers.RandomFlip(),
            layers.RandomRotation(0.2),
            base_model_layer,
            layers.GlobalMaxPooling2D(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ]
    )
    models = {"model1": model1, "model2": model2, "model3": model3, "model4": model4}
    for model in models.values():
        model.build((None, *IMG_SHAPE))
    return models


def leaf_types(model: Any) -> list[str]:
    """The model's layers, nested models opened, as class names; inputs and the
    preprocessing (the blog's is Keras ops, the harness's a Rescaling layer) left out."""
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found += leaf_types(layer)
        elif type(layer).__name__ not in ("InputLayer", "Rescaling"):
            found.append(type(layer).__name__)
    return found


@pytest.fixture(scope="module")
def the_blogs() -> dict[str, Any]:
    return blog_models()


@pytest.mark.filterwarnings("ignore:Do not pass an `input_shape`")
@pytest.mark.parametrize("name", sorted(BLOG_MODELS))
def test_the_harness_builds_the_blogs_model(name: str, the_blogs: dict[str, Any]) -> None:
    blog = the_blogs[name]
    ours = build_model(configuration(BLOG_MODELS[name]), image_size=(160, 160), num_classes=2).model
    assert leaf_types(ours) == leaf_types(blog)
    assert ours.count_params() == blog.count_params()
    if name != "model4":
        assert ours.count_params() == 194_530  # the figure, read off the blog's model
    blog_flips = [layer for layer in blog.layers if type(layer).__name__ == "RandomFlip"]
    for blog_flip in blog_flips:
        augmentation = ours.get_layer("augmentation")
        assert augmentation.get_layer("random_flip").mode == blog_flip.mode
        assert blog_flip.mode == "horizontal_and_vertical"
        assert augmentation.get_layer("random_rotation").factor == (-0.2, 0.2)

    blog.set_weights(ours.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 160, 160, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(ours(images, training=False)),
        np.asarray(blog(images, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )
