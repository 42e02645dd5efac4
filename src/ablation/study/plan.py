"""What a sweep will run, in words: the ``--dry-run`` listing and a run's first lines.

Example:
    >>> from ablation.sweep.config import load_sweep
    >>> sweep = load_sweep("sweeps/blog.yaml", ["train.precision=float32"])
    >>> lines = plan(sweep)
    >>> print(lines[0])
    study 'blog': grid of 12 configuration(s) x 2 to 3 seeds = 24 to 36 trial(s), until each
    effect is decided within 1 point(s) (adaptive seeds), 20 epoch(s) each at most ...
    >>> print(next(line for line in lines if "model3" in line))
      cnn+aug(0.2)+prep    backbone=cnn augment=True rotation=0.2
      flip=horizontal_and_vertical preprocess=mobilenet_v2  [model3]
"""

from __future__ import annotations

from ablation.data.folders import SAYS
from ablation.data.sources import downloaded_source
from ablation.redaction import redact
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.sweep.factors import Configuration, Params


def grid_points(sweep: Sweep) -> list[tuple[Params, int]]:
    """Every (configuration, seed) pair a grid study runs, each once (an adaptive study: its
    first round): seed by seed, so that a study stopped early has every configuration with
    its first seeds."""
    configurations = space.grid(sweep.space)
    return [(params, seed) for seed in sweep.study.first_seeds for params in configurations]


def plan(sweep: Sweep) -> list[str]:
    """Lines saying what the sweep will run: a summary, then one line per configuration
    (a grid) or per configuration to try first (a sampler)."""
    study = sweep.study
    if study.sampler == "grid":
        configurations = space.grid(sweep.space)
        lines = [
            f"study {study.name!r}: grid of {len(configurations)} configuration(s) x "
            f"{_seeds(sweep, len(configurations))}, {_epochs(sweep)}{_precision(sweep)}",
            data_line(sweep),
        ]
        for params in configurations:
            blog = space.blog_name(params)
            suffix = f"  [{blog}]" if blog else ""
            lines.append(f"  {space.label(params):<32} {_format_params(params)}{suffix}")
        return lines
    lines = [
        f"study {study.name!r}: {study.trials} trial(s) sampled by {study.sampler} over "
        f"{', '.join(sweep.space)}; seeds {study.seeds}; {_epochs(sweep)}{_precision(sweep)}",
        data_line(sweep),
    ]
    for params in study.try_first:
        lines.append(f"  first: {space.label(params):<32} {_format_params(params)}")
    return lines


def data_line(sweep: Sweep) -> str:
    """Which data, in which layout: a local folder is looked at, a URL's archive is not
    downloaded (its SHA-256 and layout are said once it is, checked against
    ``data.sha256``).

    >>> from ablation.sweep.config import load_sweep
    >>> print(data_line(load_sweep("sweeps/blog.yaml", ["data.sha256=" + "ab" * 32])))
    data: https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip (an
    archive, not downloaded yet: its layout and SHA-256 are seen when the study starts;
    data.sha256 expects abab...abab)

    Raises:
        UserError: A local ``data.source`` that is not a data folder, or a downloaded
            archive that is not the one ``data.sha256`` names.
    """
    data = sweep.data
    source = downloaded_source(data)
    if source is None:
        expects = f"data.sha256 expects {data.sha256}" if data.sha256 else "no data.sha256"
        return (
            f"data: {redact(data.source)} (an archive, not downloaded yet: its layout and "
            f"SHA-256 are seen when the study starts; {expects})"
        )
    if source.archive_sha256 is None:
        return f"data: {source.root}: {SAYS[source.layout]}"
    checked = "as data.sha256 expects" if data.sha256 else "data.sha256 not set"
    return (
        f"data: {redact(data.source)}: archive SHA-256 {source.archive_sha256} ({checked}), "
        f"extracted in {source.root}: {SAYS[source.layout]}"
    )


def stores(sweep: Sweep) -> str:
    """Where the study and its records go, any password shown as ``***``.

    >>> from ablation.sweep.config import load_sweep
    >>> sweep = load_sweep("sweeps/blog.yaml", ["study.storage=postgresql://u:pw@db/optuna",
    ...                                         "tracking.uri=https://u:pw@mlflow.example"])
    >>> print(stores(sweep))
    Optuna: postgresql://u:***@db/optuna  MLflow: https://u:***@mlflow.example
    """
    return (
        f"Optuna: {redact(sweep.study.storage_url())}  "
        f"MLflow: {redact(sweep.tracking.tracking_uri())}"
    )


def _seeds(sweep: Sweep, configurations: int) -> str:
    """The seeds and trials of a grid, e.g. ``2 seed(s) = 24 trial(s)``, or adaptive:
    ``2 to 10 seeds = 24 to 120 trial(s), until each effect is decided within 1 point``."""
    rule = sweep.study.adaptive
    if rule is None:
        seeds = len(sweep.study.first_seeds)
        return f"{seeds} seed(s) = {configurations * seeds} trial(s)"
    return (
        f"{rule.min} to {rule.max} seeds = {configurations * rule.min} to "
        f"{configurations * rule.max} trial(s), until each effect is decided within "
        f"{100 * sweep.study.min_effect:g} point(s) (adaptive seeds)"
    )


def _epochs(sweep: Sweep) -> str:
    """How long each trial trains, e.g. ``20 epoch(s) each``."""
    text = f"{sweep.train.epochs} epoch(s) each"
    stops = []
    if sweep.train.patience is not None:
        stops.append(f"early stopping after {sweep.train.patience} without progress")
    if sweep.study.pruner != "none":
        stops.append(f"{sweep.study.pruner} pruning from epoch {sweep.study.prune_after + 1}")
    return f"{text} at most ({'; '.join(stops)})" if stops else text


def _precision(sweep: Sweep) -> str:
    """Each backbone's dtype policy where it is not plain float32, e.g. ``; cnn in
    mixed_bfloat16, mobilenet_v2 in float32`` (``auto`` is timed when the study runs)."""
    if sweep.train.precision == "float32":
        return ""
    if sweep.train.precision == "auto":
        return "; precision: auto (timed once per machine when the study runs)"
    policies = ", ".join(
        f"{backbone} in {sweep.train.dtype_policy(Configuration(backbone=backbone))}"
        for backbone in space.backbones(sweep.space)
    )
    return f"; {policies}"


def _format_params(params: Params) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())
