"""What the report reads from the runs' artifacts in MLflow, and what it could not.

It reads each complete trial's per-image test predictions (for the effects' test-set
intervals), the best configuration's confusion matrices and the study run's data
pictures. What it cannot have is a :class:`Missing` part that the report names, one
per part and kind: *absent* (the run's record holds no such artifact: a study
recorded before it existed) or *unreadable* (recorded, but the store did not give it
back: deleted or moved files, a permission, a server that stopped answering, a file
that does not parse). Nothing is left out silently.

Example:
    >>> gap = Missing("test predictions (test_predictions.csv)", ("cnn s0 (trial 0)",), 4,
    ...               (UNREADABLE + "[Errno 13] Permission denied",), True, "no test-set interval")
    >>> missing_frame([gap]).loc[0, ["status", "runs"]].tolist()
    ['cannot read', '1 of 4 trial(s): cnn s0 (trial 0)']
    >>> print(unreadable_line([gap]))
    1 part(s) of the report could not be read from the artifact store
    (test predictions (test_predictions.csv)); the report names them under
    'Missing from this report'
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ablation.effects.estimates import Outcome
from ablation.errors import UserError, first_line
from ablation.results.analysis import ConfigurationRow
from ablation.results.tables import Confusion
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.tracking.figures import DATA_FIGURES
from ablation.tracking.predictions import read_predictions
from ablation.tracking.records import (
    ARTIFACT_CONFUSION,
    ARTIFACT_PREDICTIONS,
    ARTIFACT_REPORT_DIR,
    TrialRecord,
    TrialState,
)
from ablation.tracking.tracker import ArtifactMissing, Tracker

if TYPE_CHECKING:
    import pandas as pd

ABSENT = "not recorded by this study (recorded before it existed)"
UNREADABLE = "cannot read artifact: "  # then the error's first line
STUDY_RUN = "the study run"
LABELS_SHOWN = 8  # runs named in a row; more are counted
REASONS_SHOWN = 3  # distinct errors quoted in a row; more are counted
PARSE_ERRORS = (ValueError, KeyError, IndexError, TypeError)  # a file that is not what it says
MISSING_TITLE = "Missing from this report"
MISSING_NOTE = (
    "Absent: the run's record holds no such artifact (a study recorded before it existed); "
    "the report does without it. Cannot read: the run recorded it but the artifact store "
    "did not give it back; `python -m ablation.report` then exits 1."
)


@dataclass(frozen=True)
class Missing:
    """A part of the report that some runs could not fill, and why (one kind of why)."""

    part: str  # e.g. "test predictions (test_predictions.csv)"
    runs: tuple[str, ...]  # the runs lacking it: trial labels, or STUDY_RUN
    of: int  # the runs it was looked for in
    reasons: tuple[str, ...]  # distinct: ABSENT, or UNREADABLE + the error's first line
    unreadable: bool  # recorded, but not read: the report is incomplete
    consequence: str  # what the report does without it


def test_outcomes(
    tracker: Tracker, records: list[TrialRecord]
) -> tuple[list[Outcome], list[Missing]]:
    """The complete trials' test outcomes, each image's correctness read from its
    predictions and put in one image order (the images every trial with them was
    tested on); and the trials whose predictions are absent or unreadable.

    Such a trial's outcome has no per-image correctness: the effects it enters then have
    no test-set interval, and say so.
    """
    complete = [
        r for r in records if r.state == TrialState.COMPLETE and r.test_accuracy is not None
    ]
    by_run: dict[str, dict[str, float]] = {}
    failures: list[tuple[TrialRecord, ArtifactMissing]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, record in enumerate(complete):
            try:
                found = _read(tracker, record.run_id, ARTIFACT_PREDICTIONS, f"{tmp}/{index}")
                by_run[record.run_id] = _correct(found)
            except (ArtifactMissing, *PARSE_ERRORS) as exc:
                failures.append((record, _as_missing(exc)))
    common = set.intersection(*(set(c) for c in by_run.values())) if by_run else set()
    order = sorted(common)
    outcomes = []
    for record in complete:
        correct = by_run.get(record.run_id)
        outcomes.append(
            Outcome(
                params=dict(record.params),
                seed=record.seed,
                test_accuracy=record.test_accuracy or 0.0,
                correct=np.array([correct[p] for p in order]) if correct and order else None,
                collapsed=record.collapsed,
            )
        )
    failures.sort(key=lambda failure: (failure[0].number is None, failure[0].number or 0))
    named = [(_trial_label(record), exc) for record, exc in failures]  # in trial order
    consequence = "the effects these trials enter have no test-set interval"
    part = f"test predictions ({ARTIFACT_PREDICTIONS})"
    return outcomes, _grouped(part, len(complete), named, consequence)


def best_confusion(
    tracker: Tracker, rows: list[ConfigurationRow], records: Sequence[TrialRecord]
) -> tuple[Confusion | None, list[Missing]]:
    """The best configuration's test confusion matrix, the counts of its seeds that have
    one summed (None: none has); and its seeds whose matrix is absent or unreadable."""
    if not rows:
        return None, []
    labels = {r.run_id: _trial_label(r) for r in records}
    total: dict[str, Any] | None = None
    failures: list[tuple[str, ArtifactMissing]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, run_id in enumerate(rows[0].run_ids):
            try:
                found = json.loads(_read(tracker, run_id, ARTIFACT_CONFUSION, f"{tmp}/{index}"))
                total = _summed(total, found)
            except (ArtifactMissing, *PARSE_ERRORS) as exc:
                failures.append((labels[run_id], _as_missing(exc)))
    consequence = (
        "no per-class accuracy, confusion matrix or chance level"
        if total is None
        else f"the matrix sums the {total['runs']} seed(s) read"
    )
    part = f"confusion matrix of the best configuration ({ARTIFACT_CONFUSION})"
    return total, _grouped(part, len(rows[0].run_ids), failures, consequence)


def data_pictures(
    tracker: Tracker, parent_run_id: str | None
) -> tuple[dict[str, bytes], list[Missing]]:
    """The data pictures drawn when the study ran (PNG bytes, from the study's run: the data
    itself is never read); and those absent or unreadable."""
    images: dict[str, bytes] = {}
    missing: list[Missing] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in DATA_FIGURES:
            part = f"data picture {name}"
            try:
                if parent_run_id is None:
                    raise ArtifactMissing("the store holds no study run", absent=True)
                images[name] = _read(tracker, parent_run_id, f"{ARTIFACT_REPORT_DIR}/{name}", tmp)
            except ArtifactMissing as exc:
                missing += _grouped(part, 1, [(STUDY_RUN, exc)], "not shown")
    return images, missing


def _read(tracker: Tracker, run_id: str, path: str, directory: str) -> bytes:
    """An artifact's bytes (ArtifactMissing: absent or unreadable)."""
    found = tracker.download(run_id, path, directory)
    try:
        return found.read_bytes()
    except OSError as exc:
        raise ArtifactMissing(first_line(exc)) from None


def _correct(data: bytes) -> dict[str, float]:
    """Each test image's correctness (1.0/0.0) from a predictions CSV (ValueError: not one)."""
    predictions = read_predictions(data.decode())
    if not predictions.paths:
        raise ValueError("it lists no test image")
    return dict(zip(predictions.paths, predictions.correct, strict=True))


def _summed(total: dict[str, Any] | None, found: dict[str, Any]) -> dict[str, Any]:
    """A confusion matrix added to the running total (ValueError: they do not fit)."""
    if total is None:
        return {"class_names": found["class_names"], "counts": found["counts"], "runs": 1}
    if found["class_names"] != total["class_names"]:
        raise ValueError("its classes differ from the other seeds'")
    counts = [
        [a + b for a, b in zip(mine, theirs, strict=True)]
        for mine, theirs in zip(total["counts"], found["counts"], strict=True)
    ]
    return {**total, "counts": counts, "runs": total["runs"] + 1}


def _as_missing(exc: Exception) -> ArtifactMissing:
    """A parse error as an unreadable artifact; ArtifactMissing as it is."""
    if isinstance(exc, ArtifactMissing):
        return exc
    return ArtifactMissing(f"it does not parse ({first_line(exc)})")


def _trial_label(record: TrialRecord) -> str:
    """``cnn+prep s1 (trial 3)``: the trial's configuration, seed and number."""
    number = "" if record.number is None else f" (trial {record.number})"
    return space.label(record.params, record.seed) + number


def _grouped(
    part: str, of: int, failures: list[tuple[str, ArtifactMissing]], consequence: str
) -> list[Missing]:
    """The failures of one part as at most two rows: the absent, then the unreadable."""
    found = []
    for unreadable in (False, True):
        these = [(label, exc) for label, exc in failures if exc.absent is not unreadable]
        if not these:
            continue
        reasons = dict.fromkeys(UNREADABLE + str(exc) if unreadable else ABSENT for _, exc in these)
        found.append(
            Missing(
                part=part,
                runs=tuple(label for label, _ in these),
                of=of,
                reasons=tuple(reasons),
                unreadable=unreadable,
                consequence=consequence,
            )
        )
    return found


def missing_frame(missing: Sequence[Missing]) -> pd.DataFrame:
    """One row per part and kind: the part, which runs, why, what the report does instead."""
    import pandas as pd

    rows = []
    for gap in missing:
        rows.append(
            {
                "part": gap.part,
                "status": "cannot read" if gap.unreadable else "absent",
                "runs": _runs_text(gap),
                "reason": _reasons_text(gap.reasons),
                "without it": gap.consequence,
            }
        )
    return pd.DataFrame(rows, columns=["part", "status", "runs", "reason", "without it"])


def _runs_text(gap: Missing) -> str:
    if gap.runs == (STUDY_RUN,):
        return STUDY_RUN
    shown = ", ".join(gap.runs[:LABELS_SHOWN])
    more = len(gap.runs) - LABELS_SHOWN
    return f"{len(gap.runs)} of {gap.of} trial(s): {shown}" + (
        f", and {more} more" if more > 0 else ""
    )


def _reasons_text(reasons: Sequence[str]) -> str:
    more = len(reasons) - REASONS_SHOWN
    return "; ".join(reasons[:REASONS_SHOWN]) + (f"; and {more} other error(s)" if more > 0 else "")


def unreadable_line(missing: Sequence[Missing]) -> str | None:
    """One line naming the parts recorded but not read (None: every recorded part was read)."""
    parts = [gap.part for gap in missing if gap.unreadable]
    if not parts:
        return None
    return (
        f"{len(parts)} part(s) of the report could not be read from the artifact store "
        f"({'; '.join(parts)}); the report names them under {MISSING_TITLE!r}"
    )


def read_study(sweep: Sweep) -> tuple[Tracker, str | None, list[TrialRecord]]:
    """A sweep's study as MLflow holds it: the store, the parent run id and the trials.

    Raises:
        UserError: The store cannot be opened, or holds no run of this study.
    """
    tracker = Tracker.existing(sweep.tracking, sweep.experiment_name)
    parent_id, records = tracker.trial_records(sweep.study.name, sweep.space)
    if not records:
        raise UserError(
            f"no trials of study {sweep.study.name!r} in experiment {sweep.experiment_name!r} "
            f"at {tracker.uri!r}; run `python -m ablation.run` on this sweep first"
        )
    return tracker, parent_id, records
