"""The sweep file's ``model`` section: where each pretrained backbone's weights come from,
and the default width (:class:`PretrainedWeights`).

Example:
    >>> PretrainedWeights(weights="none").source("resnet50", None) is None
    True
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ablation.sweep.backbones import BACKBONES, Backbone
from ablation.sweep.factors import BackboneName, Configuration, Width
from ablation.sweep.sections import Section

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
