"""Reading a study back from its MLflow records: what each choice contributed (the
statistics are :mod:`ablation.effects`'s).

* :mod:`~ablation.results.analysis`: configurations over seeds, collapsed seeds counted;
* :mod:`~ablation.results.importance`: fANOVA importances, from the records alone;
* :mod:`~ablation.results.tables`: the report's tables as pandas frames;
* :mod:`~ablation.results.adaptive`: adaptive seeds' decisions and their cost;
* :mod:`~ablation.results.figures`: the report's own figures;
* :mod:`~ablation.results.html`: the self-contained HTML page;
* :mod:`~ablation.results.artifacts`: per-image predictions, confusion matrices and data
  pictures read back, and the parts missing (absent or unreadable);
* :mod:`~ablation.results.report`: ``build_report``, rendering, the report's files.

The command is :mod:`ablation.report`.
"""
