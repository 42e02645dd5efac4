"""The best trial of a study, and its trained model to take away.

Usage::

    python -m ablation.best sweeps/beyond.yaml                 # prints it, writes beyond-best.keras
    python -m ablation.best sweeps/beyond.yaml -o cats_vs_dogs.keras
    python -m ablation.best sweeps/beyond.yaml --register cats-vs-dogs   # + MLflow's registry

The best trial is the COMPLETE trial whose saved model has the highest validation
accuracy (ties: the earlier trial). Its test accuracy is printed, never used to
choose. The file written is the trial's own model: it takes raw RGB images
(0-255, float or uint8 cast to float, at the sweep's image size), preprocessing
included, and gives one logit per class::

    import keras, numpy as np
    model = keras.saving.load_model("beyond-best.keras")
    logits = model.predict(np.zeros((1, 160, 160, 3), "float32"), verbose=0)   # shape (1, 2)

``--register NAME`` also makes the trial's logged model (MLflow's Keras flavour) a
new version of the registered model ``NAME``, tagged with the study, configuration
and accuracies, and moves the alias (``--alias``, default ``champion``) to it::

    import mlflow
    model = mlflow.pyfunc.load_model("models:/cats-vs-dogs@champion")

Example:
    >>> from ablation.tracking.records import TrialRecord, TrialState
    >>> done = TrialState.COMPLETE
    >>> records = [TrialRecord("a", {}, 0, done, number=0, model_val_accuracy=0.8),
    ...            TrialRecord("b", {}, 0, done, number=1, model_val_accuracy=0.9)]
    >>> best_record(records).run_id
    'b'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ablation.cli import configure_logging, sweep_parser, user_error
from ablation.errors import UserError, first_line
from ablation.results.artifacts import read_study
from ablation.sweep import space
from ablation.sweep.config import load_sweep
from ablation.tracking.records import (
    DEFAULT_ALIAS,
    TagName,
    TrialRecord,
    TrialState,
    class_names_of,
)


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The COMPLETE trial whose saved model has the best validation accuracy; on a tie,
    the earlier trial (lower trial number)."""
    complete = [
        r for r in records if r.state == TrialState.COMPLETE and r.model_val_accuracy is not None
    ]
    if not complete:
        return None
    return min(complete, key=lambda r: (-(r.model_val_accuracy or 0.0), r.number or 0))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sweep_parser(
        "python -m ablation.best",
        "Print a study's best trial (by validation accuracy) and write its trained model.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="where to write the model (a .keras file); default STUDY-best.keras",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="also register the trial's logged model as a new version of NAME in MLflow",
    )
    parser.add_argument(
        "--alias",
        default=DEFAULT_ALIAS,
        help=f"the alias moved to the new version (with --register; default {DEFAULT_ALIAS})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.debug)
    try:
        return _main(args)
    except UserError as exc:
        return user_error(exc, args.debug)


def _main(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep, args.overrides)
    output: Path = args.output or Path(f"{sweep.study.name}-best.keras")
    if output.suffix != ".keras":
        raise UserError(f"-o {output}: the model file must end in .keras (Keras's format)")
    tracker, _, records = read_study(sweep)
    best = best_record(records)
    complete = sum(r.state == TrialState.COMPLETE for r in records)
    if best is None:
        raise UserError(
            f"study {sweep.study.name!r} has no complete trial yet ({len(records)} recorded); "
            "run `python -m ablation.run` on this sweep"
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        saved = tracker.download_model(best.run_id, tmp)
        input_shape = _check_loads(saved)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved, output)

    configuration = space.configuration(best.params)
    shown = configuration.model_dump()
    shown["learning_rate"] = sweep.train.learning_rate_of(configuration)
    shown["alpha"] = sweep.model.width_of(configuration)
    if shown["alpha"] is None:  # a backbone without a width
        del shown["alpha"]
    classes = class_names_of(tracker.run_params(best.run_id))
    print(
        f"best of {complete} complete trial(s) of study {sweep.study.name!r}: "
        f"{space.label(best.params, best.seed)}"
    )
    print(f"  validation accuracy {best.model_val_accuracy:.4f} (chosen on this)")
    print(f"  test accuracy       {best.test_accuracy:.4f} (reported only)")
    print(f"  epochs {best.epochs_run}; MLflow run {best.run_id}")
    print("  configuration: " + " ".join(f"{k}={v}" for k, v in shown.items()))
    print(
        f"wrote {output}: RGB images {input_shape[1]}x{input_shape[2]} (0-255) in, "
        f"one logit per class out ({', '.join(f'{i}={c}' for i, c in enumerate(classes))})"
    )
    if args.register:
        tags = {
            TagName.STUDY: sweep.study.name,
            TagName.CONFIGURATION: space.label(best.params, best.seed),
            TagName.SEED: str(best.seed),
            TagName.VAL_ACCURACY: f"{best.model_val_accuracy:.4f}",
            TagName.TEST_ACCURACY: f"{best.test_accuracy:.4f}",
            TagName.RUN: best.run_id,
            TagName.CLASS_NAMES: json.dumps(classes, ensure_ascii=False),
        }
        version = tracker.register_model(best.run_id, args.register, args.alias, tags)
        uri = f"models:/{args.register}@{args.alias}"
        print(f"registered {args.register!r} version {version}, alias {args.alias!r}: {uri}")
    return 0


def _check_loads(path: Path) -> tuple[int | None, ...]:
    import keras

    try:
        # The file comes from a store, perhaps a remote one: never run code it holds (a
        # Lambda layer's); safe_mode is Keras's default, said here so it stays.
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # a corrupt or foreign file
        raise UserError(f"the best trial's model does not load ({first_line(exc)})") from None
    return tuple(model.input_shape)


if __name__ == "__main__":
    sys.exit(main())
