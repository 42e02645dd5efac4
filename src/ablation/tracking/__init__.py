"""What MLflow records of a study, and the one client that writes and reads it.

* :mod:`~ablation.tracking.records`: the record's vocabulary (``TrialState``,
  ``TrialRecord``, metric, param, tag and artifact names);
* :mod:`~ablation.tracking.confusion`: the test set's confusion counts, per-class
  accuracy, chance level;
* :mod:`~ablation.tracking.predictions`: each test image's prediction (CSV), and whether
  a trained network collapsed;
* :mod:`~ablation.tracking.mlflow_objects`: MLflow's own objects (a trial's logged
  model, its dataset inputs, registry versions);
* :mod:`~ablation.tracking.figures`: the figures recorded with a trial and a study
  (curves, confusion matrix, data pictures);
* :mod:`~ablation.tracking.tracker`: ``Tracker``, the MLflow client with explicit run ids.
"""
