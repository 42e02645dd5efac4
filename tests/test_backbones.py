"""Any Keras Applications image model as a backbone (issue 25): the table of facts
(``ablation.sweep.backbones``), the sweep file's words for it, and each backbone built,
trained, saved, loaded, fine-tuned and fed from cached features as MobileNetV2 is.

The slow tests build every listed backbone with random weights (``model.weights: none``)
at its smallest input size; only MobileNetV2 has real weights offline (``../shared``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ablation.autotune.feature_batch import computed_shapes
from ablation.autotune.precision import timed_shapes
from ablation.data.images import load_images
from ablation.errors import UserError
from ablation.model import features
from ablation.model.backbones import pretrained_base, weights_fingerprint, weights_identity
from ablation.model.builders import build_model, compile_model, inference_copy, unfreeze_top
from ablation.model.training import train
from ablation.study.plan import plan
from ablation.sweep.backbones import BACKBONES
from ablation.sweep.config import load_sweep
from ablation.sweep.factors import Configuration
from ablation.sweep.pretrained import PretrainedWeights
from ablation.sweep.space import blog_name, label, pretrained_variants
from conftest import REPO, SMALL_WEIGHTS, WEIGHTS, frozen_sweep, run_module

LISTED = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    *(f"efficientnet_b{n}" for n in range(4)),
    *(f"efficientnet_v2_b{n}" for n in range(4)),
    "resnet50",
    "resnet50_v2",
    "convnext_tiny",
    "densenet121",
    "xception",
    "inception_v3",
]
BLOG = REPO / "sweeps" / "blog.yaml"
BACKBONES_SWEEP = REPO / "sweeps" / "backbones.yaml"


def test_the_table_holds_the_listed_backbones_and_the_blogs_cnn() -> None:
    assert list(BACKBONES) == ["cnn", *LISTED]
    assert [name for name, facts in BACKBONES.items() if not facts.pretrained] == ["cnn"]
    built_in = [name for name in LISTED if BACKBONES[name].built_in_preprocessing]
    assert built_in == [
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        *(f"efficientnet_b{n}" for n in range(4)),
        *(f"efficientnet_v2_b{n}" for n in range(4)),
        "convnext_tiny",
    ]
    assert {
        name: BACKBONES[name].min_size for name in LISTED if BACKBONES[name].min_size != 32
    } == {
        "xception": 71,
        "inception_v3": 75,
    }


def test_each_fact_names_a_keras_application_and_its_preprocess_input() -> None:
    import keras

    for name in LISTED:
        facts = BACKBONES[name]
        assert callable(getattr(keras.applications, facts.application)), name
        if not facts.built_in_preprocessing:
            module = getattr(keras.applications, facts.preprocess_module)
            assert callable(module.preprocess_input), name


def test_a_sweep_takes_any_listed_backbone_and_lists_the_allowed_ones() -> None:
    sweep = load_sweep(BLOG, ["space.backbone.choice=[cnn, efficientnet_b0]"])
    assert sweep.space["backbone"].choice == ["cnn", "efficientnet_b0"]
    with pytest.raises(UserError) as info:
        load_sweep(BLOG, ["space.backbone.choice=[cnn, vgg16]"])
    message = str(info.value)
    assert "\n" not in message
    assert "'vgg16' is not allowed (allowed: cnn, mobilenet_v2, mobilenet_v3_small" in message
    assert message.endswith("densenet121, xception, inception_v3)")
    for override in ("train.precision={efficientnet_b0: mixed_bfloat16}",
                     "train.feature_batch_size={resnet50: 8}"):  # fmt: skip
        load_sweep(BLOG, [override])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.weights={cnn: x.h5}", "model.weights: 'cnn' is not a pretrained backbone"),
        ("model.weights={resnet50: {0.35: x.h5}}", "model.weights: resnet50: has no width"),
        (
            "model.weights={mobilenet_v3_small: {0.35: x.h5}}",
            "alpha 0.35 is not a width of mobilenet_v3_small (allowed: 0.75, 1)",
        ),
        ("model.weights=3", "model.weights: 3 is not a weights source"),
        ("space.alpha.choice=[0.6]", "alpha: 0.6 is not allowed (allowed: 0.35, 0.5, 0.75, 1.0"),
        ("space.alpha={low: 0.35, high: 1.0}", "alpha: a range is for numeric factors"),
    ],
)
def test_weights_and_widths_that_cannot_be_are_one_line(override: str, expected: str) -> None:
    overrides = (
        [override, "study.sampler=tpe", "study.trials=2"] if "low" in override else [override]
    )
    with pytest.raises(UserError) as info:
        load_sweep(BLOG, overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_weights_per_backbone_and_width() -> None:
    weights = PretrainedWeights(
        weights={"mobilenet_v2": {0.35: "small.h5", 1: "none"}, "resnet50": None}
    )
    assert weights.source("mobilenet_v2", 0.35) == "small.h5"
    assert weights.source("mobilenet_v2", 1.0) is None  # none: random initialisation
    assert weights.source("mobilenet_v2", 0.5) == "imagenet"  # a width left out
    assert weights.source("resnet50", None) is None
    assert weights.source("xception", None) == "imagenet"  # a backbone left out
    assert PretrainedWeights(weights="none").source("densenet121", None) is None
    assert weights.width_of(Configuration(backbone="mobilenet_v2", alpha=0.35)) == 0.35
    assert weights.width_of(Configuration(backbone="mobilenet_v2")) == 1.0  # model.alpha
    assert weights.width_of(Configuration(backbone="resnet50", alpha=0.35)) is None


def test_the_imagenet_cache_names_are_keras_own() -> None:
    names = {name: BACKBONES[name].imagenet_file(1.0, (128, 128)) for name in LISTED}
    assert names == {
        "mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_128_no_top.h5",
        "mobilenet_v3_small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "mobilenet_v3_large": "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        **{f"efficientnet_b{n}": f"efficientnetb{n}_notop.h5" for n in range(4)},
        **{f"efficientnet_v2_b{n}": f"efficientnetv2-b{n}_notop.h5" for n in range(4)},
        "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_v2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "convnext_tiny": "convnext_tiny_notop.h5",
        "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    }


def test_a_size_below_the_minimum_or_a_foreign_width_is_one_line() -> None:
    with pytest.raises(
        UserError, match=r"^data.image_size \[64, 64\] is below xception's minimum of 71x71$"
    ):
        pretrained_base("xception", (64, 64), None, None)
    with pytest.raises(
        UserError, match=r"alpha 0.35 is not a width of mobilenet_v3_large \(allowed: 0.75, 1\)$"
    ):
        pretrained_base("mobilenet_v3_large", (64, 64), None, 0.35)


def test_labels_and_the_blogs_model4_with_its_own_preprocessing() -> None:
    assert label({"backbone": "mobilenet_v2", "alpha": 0.35}) == "mobilenet_v2_0.35"
    assert label({"backbone": "resnet50", "preprocess": "backbone"}) == "resnet50+ownprep"
    assert label({"backbone": "efficientnet_b0", "preprocess": "backbone"}) == "efficientnet_b0"
    assert label({"backbone": "cnn", "preprocess": "backbone"}) == "cnn"  # the CNN has none
    # MobileNetV2's own preprocessing is the blog's layer: the same model, model4.
    model4 = {"backbone": "mobilenet_v2", "augment": True, "preprocess": "backbone"}
    assert blog_name(model4) == "model4" and label(model4) == "mobilenet_v2+aug(0.2)+prep"
    assert blog_name({"backbone": "cnn", "preprocess": "backbone"}) == "model1"


def backbones_sweep(*overrides: str):  # type: ignore[no-untyped-def]
    return load_sweep(BACKBONES_SWEEP, ["train.precision=float32", *overrides])


def test_the_backbone_sweep_lists_every_backbone_and_both_mobilenet_v2_widths() -> None:
    sweep = backbones_sweep()
    variants = pretrained_variants(sweep.space, sweep.model.alpha)
    assert variants[:2] == [("mobilenet_v2", 0.35), ("mobilenet_v2", 1.0)]
    assert [backbone for backbone, _ in variants[2:]] == LISTED[1:]
    lines = [line.split()[0] for line in plan(sweep)[2:]]
    assert plan(sweep)[0].startswith("study 'backbones': grid of 19 configuration(s) x 3 seed(s)")
    assert lines[:4] == [
        "cnn",
        "mobilenet_v2_0.35+prep",
        "mobilenet_v2_1.0+prep",
        "mobilenet_v3_small",
    ]
    assert "resnet50+ownprep" in lines and "efficientnet_b0" in lines


def test_each_backbone_is_timed_once_at_its_widest_width() -> None:
    sweep = backbones_sweep("train.precision=auto")
    shapes = timed_shapes(sweep)
    assert list(shapes) == ["cnn", *LISTED]
    assert shapes["mobilenet_v2"].key == "mobilenet_v2 128x128 batch 32 alpha 1 no augment"
    assert shapes["resnet50"].key == "resnet50 128x128 batch 32 no augment"
    computed = computed_shapes(backbones_sweep())
    assert list(computed) == LISTED
    assert computed["mobilenet_v3_small"].key == "mobilenet_v3_small 128x128 alpha 1 float32"
    assert computed["xception"].key == "xception 128x128 float32"


def test_the_weights_identity_of_the_blog_is_as_before_and_covers_every_variant() -> None:
    blog = weights_identity(load_sweep(BLOG))
    file = WEIGHTS / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    sha = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    assert blog == {"weights": "imagenet", "alpha": 1.0, "weights_sha256": sha}
    assert list(blog) == ["weights", "alpha", "weights_sha256"]  # as a study of the blog's

    sweep = backbones_sweep(
        "space.backbone.choice=[cnn, mobilenet_v2, efficientnet_b0]",
        f"model.weights={{mobilenet_v2: {{0.35: {SMALL_WEIGHTS}}}, efficientnet_b0: none}}",
        "data.image_size=[160, 160]",
    )
    small = hashlib.sha256(SMALL_WEIGHTS.read_bytes()).hexdigest()[:16]
    assert weights_identity(sweep) == {
        "weights.mobilenet_v2_0.35": str(SMALL_WEIGHTS),
        "weights_sha256.mobilenet_v2_0.35": small,
        "weights.mobilenet_v2_1.0": "imagenet",
        "weights_sha256.mobilenet_v2_1.0": sha,
        "weights.efficientnet_b0": "none",
        "weights_sha256.efficientnet_b0": "random",
    }  # no "alpha": the factor's name, which a trial of efficientnet_b0 does not have
    assert weights_fingerprint("resnet50", None, (160, 160), "imagenet") == "unknown"  # offline


def tiny_batch(size: int, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (4, size, size, 3)).astype("float32"), np.arange(4) % classes


@pytest.mark.slow  # each builds a whole Keras Applications model twice (about 10-40 s on 2 cores)
@pytest.mark.parametrize("name", LISTED)
def test_each_backbone_builds_trains_a_step_saves_and_loads(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras
    from keras.src.utils import file_utils

    facts = BACKBONES[name]
    size = facts.min_size
    width = 1.0 if facts.widths else None
    network = build_model(
        Configuration(backbone=name, preprocess="backbone"),
        image_size=(size, size),
        num_classes=3,
        weights=PretrainedWeights(weights="none"),
    )
    model = network.model
    layers = [layer.name for layer in model.layers]
    own = [] if facts.built_in_preprocessing else [f"preprocess_{name}"]
    if name == "mobilenet_v2":
        own = ["preprocess_mobilenet_v2"]
    assert layers == [
        "image",
        *own,
        network.backbone.name,
        "global_max_pooling2d",
        "dropout",
        "logits",
    ]  # type: ignore[union-attr]
    assert network.backbone is not None and network.backbone.trainable is False
    compile_model(model, "adam", 0.001)
    x, y = tiny_batch(size)
    before = [w.copy() for w in model.get_layer("logits").get_weights()]
    model.train_on_batch(x, y)
    after = model.get_layer("logits").get_weights()
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))  # trained
    path = tmp_path / f"{name}.keras"
    inference_copy(model).save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)  # as ablation.best does
    # Called eagerly: predict() would first trace each (large) model into a graph, the
    # costliest step of this test, for the same four outputs. The loaded model takes its
    # inputs as the list it was saved with.
    np.testing.assert_allclose(
        np.asarray(loaded([x], training=False)), np.asarray(model(x, training=False)), atol=1e-5
    )
    # The cache file Keras asks for with weights="imagenet" is the one the table names.
    asked: list[str] = []

    def no_download(fname: str, *args: object, **kwargs: object) -> str:
        asked.append(fname)
        raise RuntimeError("offline")

    monkeypatch.setattr(file_utils, "get_file", no_download)
    with pytest.raises(UserError, match=f"models/{facts.imagenet_file(width, (size, size))}"):
        pretrained_base(name, (size, size), "imagenet", width)
    assert asked == [facts.imagenet_file(width, (size, size))]


KERAS_HOME_CHECK = """
import hashlib, json, os, sys
from pathlib import Path
home = Path(sys.argv[1])
os.environ["KERAS_HOME"] = str(home)
import h5py, keras, numpy as np
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils
from ablation.model.backbones import pretrained_base, weights_fingerprint
from ablation.sweep.backbones import BACKBONES

def offline(*args, **kwargs):
    raise RuntimeError("offline: no download")

file_utils.urlretrieve = offline
# Keras pins a hash of its own files (all but MobileNetV2's): a test file passes as one.
file_utils.validate_file = lambda *args, **kwargs: True
found = {}
for name, width, size in [("mobilenet_v2", 0.35, 96), ("mobilenet_v3_small", 0.75, 64),
                          ("efficientnet_b0", None, 64)]:
    facts = BACKBONES[name]
    keras.utils.set_random_seed(7)
    widths = {"alpha": width} if width else {}
    saved = getattr(keras.applications, facts.application)(
        input_shape=(size, size, 3), include_top=False, weights=None, **widths)
    file = home / "models" / facts.imagenet_file(width, (size, size))
    file.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(file, "w") as h5:
        legacy_h5_format.save_weights_to_hdf5_group(h5, saved)
    keras.utils.set_random_seed(8)  # another draw: only the file can make them equal
    loaded = pretrained_base(name, (size, size), "imagenet", width)
    same = all(np.array_equal(a, b) for a, b in zip(saved.get_weights(), loaded.get_weights()))
    found[name] = {
        "same": same and len(saved.weights) == len(loaded.weights),
        "sha": weights_fingerprint(name, width, (size, size), "imagenet"),
        "file_sha": hashlib.sha256(file.read_bytes()).hexdigest()[:16],
    }
print(json.dumps(found))
"""


@pytest.mark.slow  # a fresh process (Keras reads KERAS_HOME once) builds three backbones twice
def test_imagenet_is_the_file_under_kerass_cache_name_in_keras_home(tmp_path: Path) -> None:
    import os

    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(KERAS_HOME_CHECK))
    home = tmp_path / "keras-home"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, str(script), str(home)], capture_output=True, text=True, env=env,
        timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(found) == {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"}
    for name, entry in found.items():
        assert entry["same"], name
        assert entry["sha"] == entry["file_sha"], name


@pytest.mark.slow  # builds EfficientNetB0
def test_missing_imagenet_weights_offline_say_which_file_and_where(
    keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.src.utils import file_utils

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(UserError) as info:
        pretrained_base("efficientnet_b0", (32, 32), "imagenet", None)
    message = str(info.value)
    assert "\n" not in message
    assert f"looked for {keras_home / 'models' / 'efficientnetb0_notop.h5'}" in message
    assert "offline, set KERAS_HOME to a folder with models/efficientnetb0_notop.h5" in message


def small_backbone_sweep(data: Path, cache_dir: Path, *extra: str):  # type: ignore[no-untyped-def]
    return frozen_sweep(
        data,
        cache_dir,
        "data.image_size=[32, 32]",  # MobileNetV3's smallest: the paths' equality is no size's
        "train.epochs=2",
        "model.weights=none",
        "model.alpha=1.0",  # frozen_sweep's 0.35 is no width of MobileNetV3
        *extra,
    )


RANDOM = Configuration(backbone="mobilenet_v3_small", preprocess="backbone")


@pytest.mark.slow  # trains the model twice: cached features and not
@pytest.mark.parametrize("augment", [False, True])
def test_a_second_backbone_random_init_trains_the_same_on_cached_features(
    small_data: Path, tmp_path: Path, augment: bool
) -> None:
    features._CACHE.clear()
    choices = RANDOM.model_copy(update={"augment": augment})
    full_sweep = small_backbone_sweep(small_data, tmp_path / "a", "train.cache_features=false")
    cached_sweep = small_backbone_sweep(small_data, tmp_path / "b", "train.feature_batch_size=8")
    images = load_images(full_sweep.data)
    full = train(choices, seed=0, sweep=full_sweep, images=images)
    cached = train(choices, seed=0, sweep=cached_sweep, images=images)
    assert full.cached_splits == ()
    assert cached.cached_splits == (("val", "test") if augment else ("train", "val", "test"))
    np.testing.assert_allclose(cached.history["loss"], full.history["loss"], rtol=1e-3)
    np.testing.assert_allclose(
        cached.history["val_accuracy"], full.history["val_accuracy"], atol=0.01
    )
    assert abs(cached.test_accuracy - full.test_accuracy) <= 0.01
    x_test = images.x_test.astype("float32")
    np.testing.assert_allclose(
        np.asarray(cached.model(x_test, training=False)),  # eager: no graph traced to predict
        np.asarray(full.model(x_test, training=False)),
        atol=1e-3,
    )


@pytest.mark.slow  # builds MobileNetV3Small three times
def test_random_weights_are_the_seeds_whatever_comes_before_the_backbone() -> None:
    """The feature cache keys random weights by seed, not by the augmentation in front."""
    import keras

    def backbone_weights(seed: int, augment: bool) -> list[np.ndarray]:
        keras.utils.set_random_seed(seed)
        network = build_model(
            RANDOM.model_copy(update={"augment": augment}),
            image_size=(32, 32),
            num_classes=2,
            weights=PretrainedWeights(weights="none"),
            seed=seed,
        )
        return network.backbone.get_weights()  # type: ignore[union-attr]

    plain, augmented, other = (
        backbone_weights(0, False),
        backbone_weights(0, True),
        backbone_weights(1, False),
    )
    assert all(np.array_equal(a, b) for a, b in zip(plain, augmented, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, other, strict=True))


# The top layers of two more backbones, written out from Keras's architectures.
RESNET50_TOP = [
    "conv5_block3_1_conv",  # Conv2D: the 10th from the top
    "conv5_block3_1_bn",
    "conv5_block3_1_relu",
    "conv5_block3_2_conv",
    "conv5_block3_2_bn",
    "conv5_block3_2_relu",
    "conv5_block3_3_conv",
    "conv5_block3_3_bn",
    "conv5_block3_add",
    "conv5_block3_out",
]
EFFICIENTNET_B0_TOP = [
    "block7a_se_excite",  # Multiply: the 7th from the top
    "block7a_project_conv",
    "block7a_project_bn",
    "top_conv",
    "top_bn",
    "top_activation",
]


@pytest.mark.slow  # builds ResNet50 and EfficientNetB0
@pytest.mark.parametrize(
    ("name", "top", "count", "unfrozen", "trainable"),
    [
        (
            "resnet50",
            RESNET50_TOP,
            10,
            ["conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"],
            [f"conv5_block3_{n}_conv/{w}" for n in (1, 2, 3) for w in ("kernel", "bias")],
        ),
        (
            "efficientnet_b0",
            EFFICIENTNET_B0_TOP,
            5,  # block7a_project_conv up: its convolutions (no bias), not their BatchNorms
            ["block7a_project_conv", "top_conv"],
            ["block7a_project_conv/kernel", "top_conv/kernel"],
        ),
    ],
)
def test_fine_tuning_unfreezes_the_top_layers_but_batchnorm(
    name: str, top: list[str], count: int, unfrozen: list[str], trainable: list[str]
) -> None:
    network = build_model(
        Configuration(backbone=name), image_size=(32, 32), num_classes=2,
        weights=PretrainedWeights(weights="none"),
    )  # fmt: skip
    base = network.backbone
    assert base is not None
    assert [layer.name for layer in base.layers[-len(top) :]] == top
    assert [w.path for w in network.model.trainable_weights] == ["logits/kernel", "logits/bias"]
    assert unfreeze_top(network, count) == unfrozen
    assert sorted(w.path for w in network.model.trainable_weights) == sorted(
        [*trainable, "logits/kernel", "logits/bias"]
    )
    assert not any(layer.trainable for layer in base.layers if "bn" in layer.name)


@pytest.mark.slow  # the command line in a fresh process
def test_the_command_line_refuses_a_size_below_the_minimum_with_exit_2(
    small_data: Path, tmp_path: Path
) -> None:
    done = run_module(
        "ablation.run",
        str(BLOG),
        "--set", f"data.source={small_data}",
        "--set", "data.image_size=[64, 64]",
        "--set", "space.backbone.choice=[cnn, xception]",
        "--set", "model.weights=none",
        cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "data.image_size [64, 64] is below xception's minimum of 71x71" in last
    assert "Traceback" not in done.stderr
