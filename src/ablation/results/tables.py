"""The report's tables as pandas frames: configurations, ablation, importance, trials, classes.

Each frame is tidy where it is exported as CSV (``numeric``: one header row, plain
numbers, one row per configuration, level, parameter, trial or class) and reads as
text (``mean ± sd``, short run ids) where it is shown.

Example:
    >>> confusion_frame({"class_names": ["cat", "dog"], "counts": [[3, 1], [0, 4]]})
      true / predicted  cat  dog
    0              cat    3    1
    1              dog    0    4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ablation.effects.estimates import ContextEffect, Effect, Estimate
from ablation.results.analysis import ConfigurationRow
from ablation.results.importance import Importance
from ablation.sweep import space
from ablation.sweep.factors import Factor
from ablation.tracking.confusion import chance_level, class_accuracies
from ablation.tracking.records import MetricName, TrialRecord

if TYPE_CHECKING:
    import pandas as pd

Confusion = Mapping[str, Any]  # {"class_names": [...], "counts": [[true][predicted]], "runs": n}


def configuration_frame(
    factors: Mapping[str, Factor],
    rows: Sequence[ConfigurationRow],
    *,
    numeric: bool,
    short: bool = False,
) -> pd.DataFrame:
    """The per-configuration table; numbers as numbers (CSV) or as ``mean ± sd`` text.

    ``short`` leaves out the factor columns (the configuration's name says them) and run ids.
    """
    import pandas as pd

    entries: list[dict[str, Any]] = []
    for row in rows:
        entry: dict[str, Any] = {
            "configuration": space.label(row.params),
            "blog": space.blog_name(row.params) or "",
        }
        for name in [] if short else factors:
            entry[name] = row.params.get(name, "" if numeric else "—")
        entry["seeds"] = row.n
        if numeric:
            entry |= {
                "val_acc_mean": row.val.mean,
                "val_acc_sd": row.val.sd,
                "test_acc_mean": row.test.mean,
                "test_acc_sd": row.test.sd,
            }
        else:
            entry["val acc (best epoch)"] = _mean_sd(row.val.mean, row.val.sd)
            entry["test acc"] = _mean_sd(row.test.mean, row.test.sd)
        if numeric:
            entry["collapsed_seeds"] = sum(row.collapsed)
        else:
            entry["collapsed"] = row.collapsed_text
        entry["epochs"] = _number(sum(row.epochs_run) / row.n)
        entry["seconds"] = round(sum(row.seconds) / row.n, 1)
        if not short:
            entry["runs"] = (
                " ".join(row.run_ids) if numeric else " ".join(r[:8] for r in row.run_ids)
            )
        entries.append(entry)
    return pd.DataFrame(entries)


def chance_row(frame: pd.DataFrame, confusion: Confusion | None) -> pd.DataFrame:
    """``frame`` (shown, not numeric) with the chance level as a last, reference row:
    always guessing the test set's majority class."""
    import pandas as pd

    if confusion is None or frame.empty:
        return frame
    majority, accuracy = chance_level(confusion["counts"])
    name = confusion["class_names"][majority]
    tied = len(_majorities(confusion["counts"])) - 1
    row = {column: "" for column in frame.columns}
    row["configuration"] = f"chance (always {name!r}" + (f", tied with {tied})" if tied else ")")
    row["test acc"] = f"{accuracy:.3f}"
    return pd.concat([frame, pd.DataFrame([row])], ignore_index=True)


@dataclass
class Section:
    """One table of the report, with the notes that say how to read it."""

    name: str  # in file names: results.<name>.csv
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    figures: tuple[str, ...] = ()  # of :func:`figure_images`, shown with it on the page


INTERVALS_NOTE = (
    "An effect is the treated minus the control test accuracy within each context (the "
    "other factors' levels) and seed, averaged over the contexts per seed, then over the "
    "seeds. The seed interval (Student-t over the per-seed effects) covers training "
    "randomness; the test-set interval (a paired bootstrap over the test images) covers "
    "the sampling of the test images; the 95% interval (both) combines the two, and "
    "decides the verdict: gain or loss where it excludes zero, negligible where it lies "
    "within plus or minus {points:g} point(s) (study.min_effect), else undecided. These "
    "intervals are about these photos' population, this test-set size and these seeds; "
    "they say nothing of other data."
)


def ablation_frame(effects: Sequence[Effect], *, numeric: bool) -> pd.DataFrame:
    """Each level against its factor's baseline: the effect, its three intervals (seeds,
    test images, both), what it stands on, and the verdict."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for effect in effects:
        entry: dict[str, Any] = {
            "factor": effect.factor,
            "level": effect.level,
            "baseline": effect.baseline,
        }
        if numeric:
            entry["mean_test_acc"] = effect.level_mean
        else:
            mean = effect.level_mean
            entry["mean test acc"] = f"{mean:.3f}" if mean is not None else "—"
        entry |= _estimate_columns(effect, numeric=numeric)
        entry["contexts" if not numeric else "contexts_used"] = effect.contexts_used
        entry["contexts_missing" if numeric else "contexts left out"] = effect.contexts_missing
        entry |= _verdict_columns(effect)
        rows.append(entry)
    return pd.DataFrame(rows)


def context_frame(found: Sequence[ContextEffect], *, numeric: bool) -> pd.DataFrame:
    """Each level's effect within each context (the other factors' values): interactions."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for effect in found:
        entry: dict[str, Any] = {
            "factor": effect.factor,
            "level": effect.level,
            "baseline": effect.baseline,
            "context": context_name(effect.context),
        }
        entry |= _estimate_columns(effect, numeric=numeric)
        entry |= _verdict_columns(effect)
        rows.append(entry)
    return pd.DataFrame(rows)


def context_name(context: Mapping[str, Any]) -> str:
    """A context as ``backbone=cnn, preprocess=none`` (``all`` when there are no others)."""
    return ", ".join(f"{name}={value}" for name, value in context.items()) or "all"


def _estimate_columns(effect: Estimate, *, numeric: bool) -> dict[str, Any]:
    intervals = {
        "seed": effect.seed_interval,
        "test": effect.test_interval,
        "": effect.interval,
    }
    if numeric:
        entry: dict[str, Any] = {"effect": effect.estimate}
        for name, interval in intervals.items():
            prefix = f"{name}_ci" if name else "ci"
            entry[f"{prefix}_low"] = interval[0] if interval else None
            entry[f"{prefix}_high"] = interval[1] if interval else None
        entry |= {"seeds": effect.seeds, "test_images": effect.n_images}
        return entry | {"collapsed": effect.collapsed}
    points = "—" if effect.estimate is None else f"{100 * effect.estimate:+.1f}"
    return {
        "effect (points)": points,
        "95% interval (both)": _points(intervals[""]),
        "verdict": effect.verdict,
        "seed interval": _points(intervals["seed"]),
        "test-set interval": _points(intervals["test"]),
        "seeds": effect.seeds,
        "collapsed trials": effect.collapsed or "",
    }


def _verdict_columns(effect: Estimate) -> dict[str, Any]:
    """The verdict (the shown form has it beside the effect already) and its basis."""
    return {"verdict": effect.verdict, "what the interval covers": effect.basis}


def _points(interval: tuple[float, float] | None) -> str:
    return "—" if interval is None else f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}]"


def importance_frame(importances: Sequence[Importance]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for importance in importances:
        values: Mapping[str, float | None] = importance.values or {"—": None}
        for name, value in values.items():
            rows.append(
                {
                    "trials": importance.scope,
                    "parameter": name,
                    "importance": None if value is None else round(value, 3),
                    "note": importance.note,
                }
            )
    return pd.DataFrame(rows)


TRIAL_METRICS_SHOWN = (MetricName.MODEL_VAL_ACCURACY, MetricName.TEST_ACCURACY)


def trial_frame(
    factors: Mapping[str, Factor], records: Sequence[TrialRecord], *, numeric: bool
) -> pd.DataFrame:
    """One row per trial: its factors, seed, state, final metrics, epochs, seconds, run id.

    ``numeric`` (CSV) has every metric the trial's run holds (its last value); the shown
    table has the kept model's validation and the test accuracy.
    """
    import pandas as pd

    ordered = sorted(records, key=lambda r: (r.number is None, r.number or 0, r.run_id))
    metric_names = sorted({name for r in ordered for name in r.metrics})
    rows = []
    for record in ordered:
        entry: dict[str, Any] = {
            "trial": record.number,
            "configuration": space.label(record.params),
        }
        entry |= {name: record.params.get(name, "" if numeric else "—") for name in factors}
        entry |= {"seed": record.seed, "state": record.state.value}
        entry["collapsed"] = record.collapse_reason or ""
        for name in metric_names if numeric else TRIAL_METRICS_SHOWN:
            value = record.metrics.get(name)
            entry[name] = value if numeric or value is None else round(value, 3)
        entry |= {"epochs": record.epochs_run, "seconds": round(record.seconds, 1)}
        entry["run_id"] = record.run_id if numeric else record.run_id[:8]
        rows.append(entry)
    return pd.DataFrame(rows)


def class_frame(confusion: Confusion, *, numeric: bool) -> pd.DataFrame:
    """Per class of the test set: its images, the best configuration's accuracy (recall)
    on it, and whether it is the majority class (the chance level)."""
    import pandas as pd

    counts, names = confusion["counts"], confusion["class_names"]
    runs = int(confusion.get("runs", 1))
    majorities = _majorities(counts)
    rows = []
    for index, (name, accuracy) in enumerate(zip(names, class_accuracies(counts), strict=True)):
        shown = accuracy if numeric or accuracy is None else f"{accuracy:.3f}"
        images, recall = ("test_images", "test_acc") if numeric else ("images", "test acc (recall)")
        rows.append(
            {
                "class": name,
                images: sum(counts[index]) // runs,
                recall: shown,
                "majority": index in majorities,
            }
        )
    return pd.DataFrame(rows)


def confusion_frame(confusion: Confusion) -> pd.DataFrame:
    """The confusion matrix: one row per true class, one column per predicted class."""
    import pandas as pd

    names = list(confusion["class_names"])
    rows = [
        {"true / predicted": name, **dict(zip(names, counts, strict=True))}
        for name, counts in zip(names, confusion["counts"], strict=True)
    ]
    return pd.DataFrame(rows)


def _majorities(counts: Sequence[Sequence[int]]) -> list[int]:
    """The classes with the most test images (several where they tie)."""
    sizes = [sum(row) for row in counts]
    return [index for index, size in enumerate(sizes) if size == max(sizes)]


def _mean_sd(mean: float, sd: float | None) -> str:
    return f"{mean:.3f} (one seed)" if sd is None else f"{mean:.3f} ± {sd:.3f}"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 1)
