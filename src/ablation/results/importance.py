"""Which factors matter most: Optuna's fANOVA importances on validation accuracy.

A conditional factor (``rotation``, which exists only with ``augment: true``) is
assessed in its own sub-space: among the trials where it exists, beside the
unconditional factors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ablation.errors import first_line
from ablation.study.storage import open_storage
from ablation.sweep.config import Sweep


@dataclass
class Importance:
    """Parameter importances among a set of trials (or why there are none)."""

    scope: str
    values: dict[str, float]
    note: str = ""


def param_importances(sweep: Sweep) -> list[Importance]:
    """fANOVA importances on validation accuracy, conditional factors in their own sub-space."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(
            study_name=sweep.study.name, storage=open_storage(sweep.study.storage_url())
        )
    except Exception as exc:  # a missing study is a KeyError, a bad URL many other kinds
        return [Importance("all trials", {}, f"no Optuna study to read ({first_line(exc)})")]
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    importances = []
    for scope, params in _scopes(sweep):
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
