"""The comparison table of a study, read back from MLflow: what each choice bought.

Usage::

    python -m ablation.report sweeps/blog.yaml                       # Markdown on stdout
    python -m ablation.report sweeps/blog.yaml --format html -o report.html
    python -m ablation.report sweeps/blog.yaml --format csv -o results.csv --set tracking.uri=...

It reads the sweep's study from the sweep's tracking store (any store the sweep
could write to) and writes three tables and five figures (PNG, beside the
output file, or under ``mlruns/reports/<study>/`` when printing to stdout):

* configurations: one row per configuration, seeds aggregated, best validation first;
* ablation: each factor's levels against its baseline, from matched pairs, 95% CI;
* parameter importance: Optuna's fANOVA on validation accuracy, per sub-space
  (a conditional factor is assessed among the trials where it exists).

Failed, pruned and running trials are counted and never enter a mean.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablation import space as search_space
from ablation.analysis import (
    ConfigurationRow,
    Effect,
    TrialRecord,
    ablation_table,
    configuration_table,
    state_counts,
)
from ablation.cli import configure_logging, sweep_parser, user_error
from ablation.config import DEFAULT_OUTPUT_DIR, Scalar, Sweep, is_integer_factor, load_sweep
from ablation.errors import UserError, first_line

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

FORMATS = ("markdown", "csv", "html", "latex")
PLOTS = (
    "validation_curves.png",
    "test_accuracy.png",
    "ablation_effects.png",
    "data_examples.png",
    "augmentation_examples.png",
)


@dataclass
class Importance:
    """Parameter importances among a set of trials (or why there are none)."""

    scope: str
    values: dict[str, float]
    note: str = ""


@dataclass
class Report:
    sweep: Sweep
    records: list[TrialRecord]
    configurations: list[ConfigurationRow]
    effects: list[Effect]
    importances: list[Importance]
    parent_run_id: str | None

    @property
    def counts(self) -> dict[str, int]:
        return state_counts(self.records)


def read_records(sweep: Sweep) -> tuple[str | None, list[TrialRecord]]:
    """The study's parent run id and its trials, as MLflow holds them.

    Raises:
        UserError: The store cannot be opened, or holds no run of this study.
    """
    from ablation.tracking import STATE_TAG, TRIAL_TAG, Tracker

    tracker = Tracker.existing(sweep.tracking, sweep.experiment_name)
    try:
        parent, runs = tracker.study_runs(sweep.study.name)
    except Exception as exc:  # MLflow raises many kinds for a broken store
        raise UserError(f"tracking.uri: cannot read {tracker.uri!r} ({first_line(exc)})") from None
    if not runs:
        raise UserError(
            f"no trials of study {sweep.study.name!r} in experiment {sweep.experiment_name!r} "
            f"at {tracker.uri!r}; run `python -m ablation.run` on this sweep first"
        )
    records = []
    for run in runs:
        state = run.data.tags.get(STATE_TAG, "RUNNING")
        if run.info.status == "RUNNING":
            state = "RUNNING"
        elif run.info.status in ("FAILED", "KILLED"):
            state = "FAIL"
        metrics = run.data.metrics
        if state == "COMPLETE" and "test_accuracy" not in metrics:
            state = "FAIL"
        curve: tuple[float, ...] = ()
        if state == "COMPLETE":
            history = tracker.client.get_metric_history(run.info.run_id, "val_accuracy")
            curve = tuple(m.value for m in sorted(history, key=lambda m: m.step))
        records.append(
            TrialRecord(
                run_id=run.info.run_id,
                params=_typed_params(sweep, run.data.params),
                seed=int(run.data.params.get("seed", 0)),
                state=state,
                number=int(run.data.tags[TRIAL_TAG]) if TRIAL_TAG in run.data.tags else None,
                val_accuracy=metrics.get("best_val_accuracy"),
                model_val_accuracy=metrics.get("model_val_accuracy"),
                test_accuracy=metrics.get("test_accuracy"),
                epochs_run=int(metrics.get("epochs_run", len(curve))),
                seconds=float(metrics.get("train_seconds", 0.0)),
                val_curve=curve,
            )
        )
    return (parent.info.run_id if parent else None), records


def _typed_params(sweep: Sweep, params: dict[str, str]) -> dict[str, Scalar]:
    """MLflow keeps params as text; map them back to the sweep's typed choices."""
    typed: dict[str, Scalar] = {}
    for name, param in sweep.space.items():
        if name not in params:
            continue
        if param.choice is None:  # a range: a number
            text = params[name]
            typed[name] = int(text) if is_integer_factor(name) else float(text)
        else:
            by_text = {str(choice): choice for choice in param.choice}
            typed[name] = by_text.get(params[name], params[name])
    return typed


def build_report(sweep: Sweep) -> Report:
    parent_run_id, records = read_records(sweep)
    # A sampled range has no levels to pair trials on: its share shows in the importances.
    levels = {name: list(p.choice) for name, p in sweep.space.items() if p.choice is not None}
    return Report(
        sweep=sweep,
        records=records,
        configurations=configuration_table(records),
        effects=ablation_table(records, levels, search_space.dependents(sweep.space)),
        importances=param_importances(sweep),
        parent_run_id=parent_run_id,
    )


def param_importances(sweep: Sweep) -> list[Importance]:
    """fANOVA importances on validation accuracy, conditional factors in their own sub-space."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    from ablation.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(
            study_name=sweep.study.name, storage=open_storage(sweep.study.storage_url())
        )
    except Exception as exc:  # a missing study is a KeyError, a bad URL many other kinds
        return [Importance("all trials", {}, f"no Optuna study to read ({first_line(exc)})")]
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = [name for name, p in sweep.space.items() if p.is_range or len(p.choice or []) > 1]
    top = [name for name in varied if not sweep.space[name].when]
    scopes: list[tuple[str, list[str]]] = [("all trials", top)]
    for name in varied:
        if sweep.space[name].when:
            condition = ", ".join(
                f"{k}={'/'.join(map(str, sweep.space[name].condition(k)))}"
                for k in sweep.space[name].when
            )
            scopes.append((f"trials with {condition}", [name, *top]))
    importances = []
    for scope, params in scopes:
        subset = [t for t in trials if all(p in t.params for p in params)]
        params = [p for p in params if len({repr(t.params[p]) for t in subset}) > 1]
        if not params or len(subset) < 3:
            importances.append(Importance(scope, {}, f"too few trials ({len(subset)}) to tell"))
            continue
        try:
            values = get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=0), params=params
            )
        except Exception as exc:  # fANOVA refuses some degenerate studies
            importances.append(Importance(scope, {}, f"not computable ({first_line(exc)})"))
            continue
        importances.append(Importance(scope, dict(values), f"{len(subset)} trials"))
    return importances


def configuration_frame(report: Report, *, numeric: bool, short: bool = False) -> pd.DataFrame:
    """The per-configuration table; numbers as numbers (CSV) or as ``mean ± sd`` text.

    ``short`` leaves out the factor columns (the configuration's name says them) and run ids.
    """
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for row in report.configurations:
        entry: dict[str, Any] = {
            "configuration": search_space.label(row.params),
            "blog": search_space.blog_name(row.params) or "",
        }
        for name in [] if short else report.sweep.space:
            entry[name] = row.params.get(name, "" if numeric else "—")
        entry["seeds"] = row.n
        if numeric:
            entry |= {
                "val_acc_mean": row.val_mean,
                "val_acc_sd": row.val_sd,
                "test_acc_mean": row.test_mean,
                "test_acc_sd": row.test_sd,
            }
        else:
            entry["val acc (best epoch)"] = _mean_sd(row.val_mean, row.val_sd)
            entry["test acc"] = _mean_sd(row.test_mean, row.test_sd)
        entry["epochs"] = _number(sum(row.epochs_run) / row.n)
        entry["seconds"] = round(sum(row.seconds) / row.n, 1)
        if not short:
            entry["runs"] = (
                " ".join(row.run_ids) if numeric else " ".join(r[:8] for r in row.run_ids)
            )
        rows.append(entry)
    return pd.DataFrame(rows)


def ablation_frame(report: Report, *, numeric: bool) -> pd.DataFrame:
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for effect in report.effects:
        interval = effect.interval
        entry: dict[str, Any] = {
            "factor": effect.factor,
            "level": effect.level,
            "baseline": effect.baseline,
        }
        if numeric:
            entry |= {
                "mean_test_acc": effect.level_mean,
                "effect": effect.effect,
                "ci_low": interval[0] if interval else None,
                "ci_high": interval[1] if interval else None,
                "pairs": effect.pairs,
                "verdict": effect.verdict(),
            }
        else:
            mean = effect.level_mean
            entry["mean test acc"] = f"{mean:.3f}" if mean is not None else "—"
            entry["effect vs baseline (95% CI)"] = effect.verdict()
        rows.append(entry)
    return pd.DataFrame(rows)


def importance_frame(report: Report) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for importance in report.importances:
        if not importance.values:
            rows.append(
                {
                    "trials": importance.scope,
                    "parameter": "—",
                    "importance": None,
                    "note": importance.note,
                }
            )
        for name, value in importance.values.items():
            rows.append(
                {
                    "trials": importance.scope,
                    "parameter": name,
                    "importance": round(value, 3),
                    "note": importance.note,
                }
            )
    return pd.DataFrame(rows)


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.3f} (one seed)" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 1)


def headline(report: Report) -> str:
    counts = report.counts
    excluded = ", ".join(f"{counts[s]} {s.lower()}" for s in ("PRUNED", "FAIL", "RUNNING"))
    return (
        f"Study {report.sweep.study.name!r}: {len(report.configurations)} configuration(s) from "
        f"{counts['COMPLETE']} complete trial(s); not in any mean: {excluded}."
    )


def render(report: Report, fmt: str, *, short: bool = False) -> str:
    """The report as Markdown, CSV, HTML or LaTeX text. ``short``: configurations only."""
    numeric = fmt == "csv"
    sections: list[tuple[str, str, pd.DataFrame]] = [
        (
            "configurations",
            "Configurations (best validation accuracy first; ± is the standard deviation over "
            "seeds)",
            configuration_frame(report, numeric=numeric, short=short),
        ),
    ]
    if not short:
        sections += [
            (
                "ablation",
                "Ablation: each level against the factor's baseline, test accuracy, matched pairs",
                ablation_frame(report, numeric=numeric),
            ),
            (
                "importance",
                "Parameter importance (fANOVA on validation accuracy)",
                importance_frame(report),
            ),
        ]
    out = io.StringIO()
    if fmt == "markdown":
        out.write(f"{headline(report)}\n")
        for _, title, frame in sections:
            out.write(f"\n### {title}\n\n{frame.to_markdown(index=False)}\n")
    elif fmt == "csv":  # one CSV table per section, each after a "# id: title" line
        for position, (name, title, frame) in enumerate(sections):
            out.write(("\n" if position else "") + f"# {name}: {title}\n")
            frame.to_csv(out, index=False)
    elif fmt == "html":
        out.write(f"<p>{headline(report)}</p>\n")
        for _, title, frame in sections:
            out.write(f"<h3>{title}</h3>\n{frame.to_html(index=False, na_rep='—')}\n")
    elif fmt == "latex":
        out.write(f"% {headline(report)}\n")
        for _, title, frame in sections:
            latex = frame.to_latex(index=False, na_rep="--", caption=title.replace("±", "$\\pm$"))
            out.write(latex.replace("±", "$\\pm$").replace("—", "--") + "\n")
    else:
        raise UserError(f"--format {fmt!r} is unknown (allowed: {', '.join(FORMATS)})")
    return out.getvalue()


def figures(report: Report) -> dict[str, Figure]:
    """The report's five figures, by file name."""
    from ablation import plots

    study = report.sweep.study.name
    rows = report.configurations
    names = [_row_name(row) for row in rows]
    effects = [e for e in report.effects if e.level != e.baseline and e.effect is not None]
    return {
        "validation_curves.png": plots.validation_curves(
            {name: row.mean_curve() for name, row in zip(names, rows, strict=True)},
            f"{study}: validation accuracy per epoch (mean over seeds)",
        ),
        "test_accuracy.png": plots.test_accuracy_bars(
            names,
            [r.test_mean for r in rows],
            [r.test_sd for r in rows],
            f"{study}: test accuracy per configuration",
        ),
        "ablation_effects.png": plots.ablation_effects(
            [f"{e.factor}: {e.level} vs {e.baseline}" for e in effects],
            [e.effect or 0.0 for e in effects],
            [e.interval for e in effects],
            f"{study}: what each choice changes in test accuracy",
        ),
        **data_figures(report.sweep),
    }


def _row_name(row: ConfigurationRow) -> str:
    blog = search_space.blog_name(row.params)
    return search_space.label(row.params) + (f" [{blog}]" if blog else "")


def data_figures(sweep: Sweep) -> dict[str, Figure]:
    """The blog's two data pictures: three images of two classes, one image augmented 9 times."""
    import numpy as np

    from ablation import plots
    from ablation.config import Choices
    from ablation.data import decode, list_images, resolve_source
    from ablation.models import augmentation

    listing = list_images(resolve_source(sweep.data.source), limit_per_class=4)
    train = listing.files["train"]
    picked = [path for label in (0, 1) for path in [p for p, lab in train if lab == label][:3]]
    images, failed = decode(picked, sweep.data.image_size)
    labels = [listing.class_names[lab] for p, lab in train if p in picked]
    labels = [name for index, name in enumerate(labels) if index not in failed]
    examples = plots.image_grid(list(images), labels, 2, 3, f"{sweep.study.name}: training images")

    rotations = sweep.space["rotation"] if "rotation" in sweep.space else None
    rotation = Choices().rotation
    if rotations is not None:
        rotation = rotations.high if rotations.is_range else max(rotations.choice or [rotation])
    flips = sweep.space.get("flip")
    flip = flips.choice[0] if flips is not None and flips.choice else Choices().flip
    config = Choices(augment=True, rotation=float(rotation), flip=str(flip))
    layer = augmentation(config, seed=0)
    source = images[:1].astype("float32")
    augmented = [
        np.clip(np.asarray(layer(source, training=True))[0], 0, 255).astype("uint8")
        for _ in range(9)
    ]
    grid = plots.image_grid(
        augmented,
        [""] * 9,
        3,
        3,
        f"one image under the augmentation (flip {config.flip}, rotation {config.rotation:g})",
    )
    return {"data_examples.png": examples, "augmentation_examples.png": grid}


def write_figures(report: Report, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures(report).items():
        path = directory / name
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def attach_to_parent(report: Report, files: Sequence[Path]) -> None:
    """Log the report's files as artifacts of the study's parent run (under ``report/``)."""
    from ablation.tracking import Tracker

    if report.parent_run_id is None:
        return
    tracker = Tracker.existing(report.sweep.tracking, report.sweep.experiment_name)
    for path in files:
        tracker.client.log_artifact(report.parent_run_id, str(path), "report")


def default_plot_dir(sweep: Sweep) -> Path:
    return DEFAULT_OUTPUT_DIR / "reports" / sweep.study.name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = sweep_parser(
        "python -m ablation.report",
        "Write the comparison table of a sweep's study, read back from MLflow.",
    )
    parser.add_argument(
        "--format", default="markdown", help=f"{', '.join(FORMATS)} (default markdown)"
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.debug)
    try:
        if args.format not in FORMATS:
            raise UserError(f"--format {args.format!r} is unknown (allowed: {', '.join(FORMATS)})")
        sweep = load_sweep(args.sweep, args.overrides)
        report = build_report(sweep)
        text = render(report, args.format)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text)
        else:
            sys.stdout.write(text)
        if not args.no_plots and report.configurations:
            directory = args.output.parent if args.output else default_plot_dir(sweep)
            written = write_figures(report, directory)
            print(f"figures: {', '.join(str(p) for p in written)}", file=sys.stderr)
    except UserError as exc:
        return user_error(exc, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
