"""What a backbone is: one table of facts per name a sweep may give ``backbone``.

Each pretrained backbone is one of Keras Applications' image models, named in
snake_case. Its facts live here and nowhere else: the Keras constructor (an attribute of
``keras.applications``), its preprocessing, its minimum input size, its widths
(``alpha``), the file name Keras caches its ImageNet weights under, and the layer types
that fine-tuning keeps frozen. :mod:`ablation.model.backbones` builds them; the sweep
file's validation reads the names and numbers without importing Keras (TensorFlow's
import takes seconds, and ``sweep.*`` sits below ``model.*``).

Preprocessing (``preprocess: backbone``): EfficientNet, EfficientNetV2, ConvNeXt and
MobileNetV3 have theirs built in (their first layers rescale 0-255 pixels
themselves), so ``backbone`` adds nothing; for the others it applies
``keras.applications.<module>.preprocess_input`` inside the model (MobileNetV2's is
the blog's ``preprocess: mobilenet_v2`` layer). The blog's CNN has none of its own.

Example:
    >>> BACKBONES["xception"].min_size, BACKBONES["efficientnet_b0"].built_in_preprocessing
    (71, True)
    >>> BACKBONES["mobilenet_v2"].imagenet_file(0.35, (128, 128))
    'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5'
    >>> BACKBONES["mobilenet_v2"].imagenet_file(1.0, (100, 100))  # no weights of that size
    'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5'
    >>> variant("mobilenet_v2", 0.35), variant("resnet50", None)
    ('mobilenet_v2_0.35', 'resnet50')
"""

from __future__ import annotations

from dataclasses import dataclass

BLOG_CNN = "cnn"
KEPT_FROZEN = ("BatchNormalization", "Normalization")
"""Layer types fine-tuning never unfreezes: their statistics are ImageNet's (updating
BatchNorm's on small batches of a small dataset wrecks what the backbone learned)."""


@dataclass(frozen=True)
class Backbone:
    """The facts of one backbone.

    Attributes:
        name: What a sweep calls it (snake_case).
        application: Its constructor, an attribute of ``keras.applications``; empty for
            the blog's CNN, which is built layer by layer (the one backbone not pretrained).
        preprocess_module: The ``keras.applications`` module whose ``preprocess_input``
            ``preprocess: backbone`` applies; empty where the preprocessing is built in
            (or, for the CNN, there is none).
        built_in_preprocessing: Its first layers take 0-255 pixels and rescale them.
        min_size: The smallest height and width Keras builds it at.
        widths: Its ``alpha`` choices (empty: no width parameter).
        imagenet_template: Keras's cache file name for its ImageNet weights without the
            top, with ``{alpha}`` and ``{rows}`` where the name depends on them.
        sized_weights: Image sizes with ImageNet weights of their own (others: 224).
        kept_frozen: Layer types fine-tuning keeps frozen.
    """

    name: str
    application: str = ""
    preprocess_module: str = ""
    built_in_preprocessing: bool = False
    min_size: int = 32
    widths: tuple[float, ...] = ()
    imagenet_template: str = ""
    sized_weights: tuple[int, ...] = ()
    kept_frozen: tuple[str, ...] = KEPT_FROZEN

    @property
    def pretrained(self) -> bool:
        """A Keras Applications model (frozen; ImageNet weights unless ``model.weights``
        says otherwise), not the blog's CNN."""
        return bool(self.application)

    def imagenet_file(self, width: float | None, image_size: tuple[int, int]) -> str:
        """The file name Keras looks for in ``$KERAS_HOME/models`` (then downloads)."""
        square = image_size[0] == image_size[1] and image_size[0] in self.sized_weights
        rows = image_size[0] if square else 224
        alpha = "" if width is None else str(float(width))
        return self.imagenet_template.format(alpha=alpha, rows=rows)

    def size_problem(self, image_size: tuple[int, int] | list[int]) -> str | None:
        """Why ``image_size`` is too small for this backbone, or None."""
        if min(image_size) >= self.min_size:
            return None
        return (
            f"data.image_size {list(image_size)} is below {self.name}'s minimum of "
            f"{self.min_size}x{self.min_size}"
        )

    def width_problem(self, width: float | None) -> str | None:
        """Why ``width`` is not a width of this backbone, or None."""
        if width is None or not self.widths or float(width) in self.widths:
            return None
        allowed = ", ".join(f"{w:g}" for w in self.widths)
        return f"alpha {width:g} is not a width of {self.name} (allowed: {allowed})"


def _keras(
    name: str,
    application: str,
    preprocess_module: str,
    imagenet_template: str,
    min_size: int = 32,
    widths: tuple[float, ...] = (),
    sized_weights: tuple[int, ...] = (),
) -> Backbone:
    """A Keras Applications backbone; no ``preprocess_module``: its preprocessing is built in."""
    return Backbone(
        name,
        application,
        preprocess_module,
        built_in_preprocessing=not preprocess_module,
        min_size=min_size,
        widths=widths,
        imagenet_template=imagenet_template,
        sized_weights=sized_weights,
    )


_TF_KERNELS = "_weights_tf_dim_ordering_tf_kernels_notop.h5"
_MOBILENET_V2_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
_MOBILENET_V3_WIDTHS = (0.75, 1.0)  # those with ImageNet weights

BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in [
        Backbone(BLOG_CNN, min_size=1),
        _keras(
            "mobilenet_v2",
            "MobileNetV2",
            "mobilenet_v2",
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5",
            widths=_MOBILENET_V2_WIDTHS,
            sized_weights=(96, 128, 160, 192, 224),
        ),
        *(
            _keras(
                f"mobilenet_v3_{size}",
                f"MobileNetV3{size.title()}",
                "",
                f"weights_mobilenet_v3_{size}_224_{{alpha}}_float_no_top_v2.h5",
                widths=_MOBILENET_V3_WIDTHS,
            )
            for size in ("small", "large")
        ),
        *(
            _keras(f"efficientnet_b{n}", f"EfficientNetB{n}", "", f"efficientnetb{n}_notop.h5")
            for n in range(4)
        ),
        *(
            _keras(
                f"efficientnet_v2_b{n}", f"EfficientNetV2B{n}", "", f"efficientnetv2-b{n}_notop.h5"
            )
            for n in range(4)
        ),
        _keras("resnet50", "ResNet50", "resnet", "resnet50" + _TF_KERNELS),
        _keras("resnet50_v2", "ResNet50V2", "resnet_v2", "resnet50v2" + _TF_KERNELS),
        _keras("convnext_tiny", "ConvNeXtTiny", "", "convnext_tiny_notop.h5"),
        _keras("densenet121", "DenseNet121", "densenet", "densenet121" + _TF_KERNELS),
        _keras("xception", "Xception", "xception", "xception" + _TF_KERNELS, min_size=71),
        _keras(
            "inception_v3", "InceptionV3", "inception_v3", "inception_v3" + _TF_KERNELS, min_size=75
        ),
    ]
}
WIDTHS = tuple(sorted({width for b in BACKBONES.values() for width in b.widths}))
"""Every width some backbone has (``model.alpha`` and the ``alpha`` factor take one)."""


def variant(backbone: str, width: float | None) -> str:
    """A backbone at a width, as labels and records name it: ``mobilenet_v2_0.35``;
    the name alone where it has no width (or none is given)."""
    if width is None or not BACKBONES[backbone].widths:
        return backbone
    return f"{backbone}_{float(width)}"
