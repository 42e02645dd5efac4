"""Running a study: Optuna's side, the trials, their processes and workers.

* :mod:`~ablation.study.storage`: the Optuna storage, locks shared across machines,
  heartbeats, dead trials;
* :mod:`~ablation.study.plan`: what a sweep will run, in words (``--dry-run``);
* :mod:`~ablation.study.trial`: one trial trained and recorded (MLflow and Optuna);
* :mod:`~ablation.study.process`: a trial in its own process, started ahead;
* :mod:`~ablation.study.workers`: trials one after another or side by side;
* :mod:`~ablation.study.runner`: ``run_sweep``: open, enqueue the grid, resume.

Nothing here reads a study back (:mod:`ablation.results` does).
"""
