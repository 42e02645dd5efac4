"""Reading a study back from its MLflow records: what each choice contributed.

* :mod:`~ablation.results.analysis`: configurations over seeds, effects from matched pairs;
* :mod:`~ablation.results.importance`: fANOVA importances;
* :mod:`~ablation.results.tables`: the report's tables as pandas frames;
* :mod:`~ablation.results.figures`: the report's own figures;
* :mod:`~ablation.results.report`: ``build_report``, rendering, the report's files.

The command is :mod:`ablation.report`.
"""
