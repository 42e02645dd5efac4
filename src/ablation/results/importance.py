"""Which factors matter most: Optuna's fANOVA importances on validation accuracy.

Computed from the trials as MLflow recorded them (an Optuna study is rebuilt from the
records in memory), so a report needs the tracking store alone. A conditional factor
(``rotation``, which exists only with ``augment: true``) is assessed in its own
sub-space: among the trials where it exists, beside the unconditional factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ablation.errors import first_line
from ablation.sweep import space
from ablation.sweep.config import Sweep
from ablation.tracking.records import TrialRecord, TrialState


@dataclass
class Importance:
    """Parameter importances among a set of trials (or why there are none)."""

    scope: str
    values: dict[str, float]
    note: str = ""


def param_importances(sweep: Sweep, records: Sequence[TrialRecord]) -> list[Importance]:
    """fANOVA importances on validation accuracy (of the saved model, the study's
    objective), conditional factors in their own sub-space."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    complete = [
        r for r in records if r.state == TrialState.COMPLETE and r.model_val_accuracy is not None
    ]
    importances = []
    for scope, params in _scopes(sweep):
        subset = [r for r in complete if all(p in r.params for p in params)]
        params = [p for p in params if len({repr(r.params[p]) for r in subset}) > 1]
        if not params or len(subset) < 3:
            importances.append(Importance(scope, {}, f"too few trials ({len(subset)}) to tell"))
            continue
        try:
            values = get_param_importances(
                _rebuilt_study(sweep, subset),
                evaluator=FanovaImportanceEvaluator(seed=0),
                params=params,
            )
        except Exception as exc:  # fANOVA refuses some degenerate studies
            importances.append(Importance(scope, {}, f"not computable ({first_line(exc)})"))
            continue
        importances.append(Importance(scope, dict(values), f"{len(subset)} trials"))
    return importances


def _rebuilt_study(sweep: Sweep, records: Sequence[TrialRecord]):
    """An in-memory Optuna study holding ``records`` as its complete trials."""
    import optuna

    distributions = space.distributions(sweep.space)
    study = optuna.create_study(direction="maximize")
    study.add_trials(
        [
            optuna.trial.create_trial(
                params=dict(record.params),
                distributions={name: distributions[name] for name in record.params},
                value=record.model_val_accuracy,
            )
            for record in records
        ]
    )
    return study


def _scopes(sweep: Sweep) -> list[tuple[str, list[str]]]:
    """The sets of trials to assess, each with its factors: all trials with the
    unconditional factors, then each conditional factor's trials."""
    varied = [name for name, f in sweep.space.items() if f.is_range or len(f.choice or []) > 1]
    top = [name for name in varied if not sweep.space[name].when]
    scopes: list[tuple[str, list[str]]] = [("all trials", top)]
    for name in varied:
        factor = sweep.space[name]
        if factor.when:
            condition = ", ".join(
                f"{k}={'/'.join(map(str, factor.condition(k)))}" for k in factor.when
            )
            scopes.append((f"trials with {condition}", [name, *top]))
    return scopes
