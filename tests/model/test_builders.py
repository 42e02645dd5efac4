from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ablation.errors import UserError
from ablation.model.backbones import weights_fingerprint
from ablation.model.builders import (
    build_model,
    compile_model,
    inference_copy,
    unfreeze_top,
)
from ablation.sweep.factors import Configuration
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.sections import Precision, Train
from ablation.sweep.space import BLOG_MODELS, configuration
from conftest import SMALL_WEIGHTS, WEIGHTS


def conv_params(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def blog_cnn_params(size: int = 160, classes: int = 2) -> int:
    """The blog's CNN counted by hand: 3x3 valid convolutions, 2x2 max-pooling."""
    side = ((size - 2) // 2 - 2) // 2 - 2
    flat = side * side * 64
    return (
        conv_params(3, 3, 32)
        + conv_params(3, 32, 32)
        + conv_params(3, 32, 64)
        + flat * classes
        + classes
    )


def layer_names(model) -> list[str]:  # type: ignore[no-untyped-def]
    return [layer.name for layer in model.layers]


CNN_LAYERS = [
    "conv2d",
    "max_pooling2d",
    "conv2d_1",
    "max_pooling2d_1",
    "conv2d_2",
    "flatten",
    "dropout",
    "logits",
]


def test_blog_model1_to_model3_are_the_small_cnn_with_the_blog_extras() -> None:
    model1 = build_model(
        configuration(BLOG_MODELS["model1"]), image_size=(160, 160), num_classes=2
    ).model
    model2 = build_model(
        configuration(BLOG_MODELS["model2"]), image_size=(160, 160), num_classes=2
    ).model
    model3 = build_model(
        configuration(BLOG_MODELS["model3"]), image_size=(160, 160), num_classes=2
    ).model
    assert layer_names(model1) == ["image", *CNN_LAYERS]
    assert layer_names(model2) == ["image", "augmentation", *CNN_LAYERS]
    assert layer_names(model3) == ["image", "preprocess_mobilenet_v2", "augmentation", *CNN_LAYERS]
    assert [layer.name for layer in model2.get_layer("augmentation").layers] == [
        "random_flip",
        "random_rotation",
    ]
    assert model2.get_layer("augmentation").layers[1].factor == (-0.2, 0.2)
    for model in (model1, model2, model3):
        assert model.count_params() == blog_cnn_params() == 194_530
        assert model.output_shape == (None, 2)


def test_blog_model4_is_frozen_mobilenet_v2_with_max_pooling_head() -> None:
    model4 = build_model(
        configuration(BLOG_MODELS["model4"]), image_size=(160, 160), num_classes=2
    ).model
    assert layer_names(model4) == [
        "image",
        "preprocess_mobilenet_v2",
        "augmentation",
        "mobilenetv2_1.00_160",
        "global_max_pooling2d",
        "dropout",
        "logits",
    ]
    base = model4.get_layer("mobilenetv2_1.00_160")
    assert base.trainable is False
    assert base.count_params() == 2_257_984
    trainable = sum(int(np.prod(w.shape)) for w in model4.trainable_weights)
    assert trainable == 1280 * 2 + 2
    assert model4.get_layer("dropout").rate == 0.2


def test_preprocess_layer_is_mobilenet_v2_preprocess_input() -> None:
    import keras

    model = build_model(
        Configuration(preprocess="mobilenet_v2"), image_size=(32, 32), num_classes=2
    ).model
    layer = model.get_layer("preprocess_mobilenet_v2")
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    expected = keras.applications.mobilenet_v2.preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-5)


def test_augmentation_changes_images_only_in_training() -> None:
    model = build_model(
        Configuration(augment=True, rotation=0.2), image_size=(32, 32), num_classes=2, seed=0
    ).model
    augmentation = model.get_layer("augmentation")
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(augmentation(x, training=False)), x)
    assert not np.allclose(np.asarray(augmentation(x, training=True)), x)


def test_imagenet_weights_come_from_keras_home_and_are_fingerprinted() -> None:
    model = build_model(
        Configuration(backbone="mobilenet_v2"), image_size=(160, 160), num_classes=2
    ).model
    file = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    expected = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    assert weights_fingerprint("mobilenet_v2", 1.0, (160, 160), "imagenet") == expected
    assert model.get_layer("mobilenetv2_1.00_160").trainable is False


def test_a_weights_file_loads_at_another_size() -> None:
    model = build_model(
        Configuration(backbone="mobilenet_v2"),
        image_size=(64, 64),
        num_classes=3,
        weights=PretrainedWeights(weights=str(SMALL_WEIGHTS), alpha=0.35),
    ).model
    assert model.output_shape == (None, 3)
    assert (
        weights_fingerprint("mobilenet_v2", 0.35, (64, 64), str(SMALL_WEIGHTS))
        == (hashlib.sha256(SMALL_WEIGHTS.read_bytes()).hexdigest()[:16])
    )


def test_weights_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a file"):
        build_model(
            Configuration(backbone="mobilenet_v2"),
            image_size=(64, 64),
            num_classes=2,
            weights=PretrainedWeights(weights=str(tmp_path / "missing.h5")),
        )
    with pytest.raises(UserError, match="does not fit MobileNetV2"):
        build_model(
            Configuration(backbone="mobilenet_v2"),
            image_size=(64, 64),
            num_classes=2,
            weights=PretrainedWeights(weights=str(SMALL_WEIGHTS), alpha=1.0),
        )


@pytest.mark.parametrize(
    ("precision", "dtype"), [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
def test_mixed_precision_computes_in_its_dtype_with_float32_logits(
    precision: Precision, dtype: str
) -> None:
    import keras

    model = build_model(
        Configuration(augment=True), image_size=(32, 32), num_classes=2, precision=precision
    ).model
    assert model.get_layer("conv2d").compute_dtype == dtype
    assert model.get_layer("conv2d").variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert model.dtype_policy.name == precision
    assert inference_copy(model).dtype_policy.name == precision
    # The global policy is left as it was found: nothing to reset for the next model.
    assert keras.mixed_precision.global_policy().name == "float32"
    plain = build_model(Configuration(), image_size=(32, 32), num_classes=2).model
    assert plain.get_layer("conv2d").compute_dtype == "float32"


CNN, MOBILENET = Configuration(backbone="cnn"), Configuration(backbone="mobilenet_v2")


def test_precision_one_policy_or_one_per_backbone() -> None:
    assert Train().dtype_policy(CNN) == "float32"
    one = Train(precision="mixed_bfloat16")
    assert one.dtype_policy(CNN) == one.dtype_policy(MOBILENET) == "mixed_bfloat16"
    per_backbone = Train(precision={"cnn": "mixed_bfloat16"})
    assert per_backbone.dtype_policy(CNN) == "mixed_bfloat16"
    assert per_backbone.dtype_policy(MOBILENET) == "float32"


# Beyond the blog: each factor's effect on the built model.

SMALL_MOBILENET = PretrainedWeights(weights=str(SMALL_WEIGHTS), alpha=0.35)


def small_mobilenet(**factors: object):  # type: ignore[no-untyped-def]
    return small_network(**factors).model


def small_network(**factors: object):  # type: ignore[no-untyped-def]
    return build_model(
        Configuration(backbone="mobilenet_v2", **factors),  # type: ignore[arg-type]
        image_size=(64, 64),
        num_classes=2,
        weights=SMALL_MOBILENET,
    )


def test_pooling_average_or_max() -> None:
    assert "global_max_pooling2d" in layer_names(small_mobilenet())
    average = small_mobilenet(pooling="avg")
    assert "global_average_pooling2d" in layer_names(average)
    assert "global_max_pooling2d" not in layer_names(average)


def test_dropout_rate_on_both_backbones() -> None:
    assert small_mobilenet(dropout=0.5).get_layer("dropout").rate == 0.5
    cnn = build_model(Configuration(dropout=0.35), image_size=(32, 32), num_classes=2).model
    assert cnn.get_layer("dropout").rate == 0.35


def test_label_smoothing_is_categorical_crossentropy_with_smoothed_targets() -> None:
    import keras

    y = np.array([0, 1, 1, 0])
    logits = np.array([[2.0, -1.0], [0.5, 0.3], [-3.0, 3.0], [0.0, 0.0]], dtype="float32")
    for smoothing in (0.0, 0.1, 0.3):
        model = build_model(Configuration(), image_size=(32, 32), num_classes=2).model
        compile_model(model, "adam", 0.001, label_smoothing=smoothing)
        expected = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
        got = model.compute_loss(x=None, y=y, y_pred=logits)
        want = expected(np.eye(2)[y], logits)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


# MobileNetV2's last 11 layers (of 154), written out from its architecture: block 16's
# expand, depthwise and project convolutions, each with its BatchNorm, then Conv_1.
MOBILENET_V2_TOP = [
    "block_16_expand",  # Conv2D: the 11th from the top
    "block_16_expand_BN",
    "block_16_expand_relu",
    "block_16_depthwise",  # DepthwiseConv2D
    "block_16_depthwise_BN",
    "block_16_depthwise_relu",
    "block_16_project",  # Conv2D
    "block_16_project_BN",
    "Conv_1",  # Conv2D
    "Conv_1_bn",
    "out_relu",
]
MOBILENET_V2_TOP_BATCHNORM = [
    "block_16_expand_BN",
    "block_16_depthwise_BN",
    "block_16_project_BN",
    "Conv_1_bn",
]


def test_unfreeze_top_layers_keeps_batchnorm_frozen() -> None:
    network = small_network()
    model = network.model
    base = model.layers[1]
    assert base is network.backbone and base.trainable is False
    assert len(base.layers) == 154 and [layer.name for layer in base.layers[-11:]] == (
        MOBILENET_V2_TOP
    )
    assert [w.path for w in model.trainable_weights] == ["logits/kernel", "logits/bias"]

    unfrozen = unfreeze_top(network, 10)  # block_16_expand_BN up to out_relu
    assert unfrozen == ["block_16_depthwise", "block_16_project", "Conv_1"]  # those with weights
    assert {layer.name for layer in base.layers if layer.trainable} == {
        "block_16_expand_relu",
        "block_16_depthwise",
        "block_16_depthwise_relu",
        "block_16_project",
        "Conv_1",
        "out_relu",
    }  # every other layer, the four BatchNorms and block_16_expand included, stays frozen
    for name in MOBILENET_V2_TOP_BATCHNORM:
        assert base.get_layer(name).trainable is False, name
    assert base.get_layer("block_16_expand").trainable is False
    # MobileNetV2's convolutions have no bias: one kernel each, plus the head's two weights.
    assert sorted(w.path for w in model.trainable_weights) == sorted(
        [
            "block_16_depthwise/kernel",
            "block_16_project/kernel",
            "Conv_1/kernel",
            "logits/kernel",
            "logits/bias",
        ]
    )

    eleven = small_network()
    assert unfreeze_top(eleven, 11) == [
        "block_16_expand",
        "block_16_depthwise",
        "block_16_project",
        "Conv_1",
    ]
    assert len(eleven.model.trainable_weights) == 4 + 2
    assert eleven.backbone is not None
    assert not any(eleven.backbone.get_layer(n).trainable for n in MOBILENET_V2_TOP_BATCHNORM)

    none = small_network()
    assert unfreeze_top(none, 0) == []
    assert [w.path for w in none.model.trainable_weights] == ["logits/kernel", "logits/bias"]
    with pytest.raises(ValueError, match="no pretrained backbone"):
        unfreeze_top(build_model(Configuration(), image_size=(32, 32), num_classes=2), 3)
