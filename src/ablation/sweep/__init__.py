"""The sweep file and what it declares: the design choices and the space they span.

* :mod:`~ablation.sweep.backbones`: what each backbone is (its Keras constructor,
  preprocessing, minimum size, widths, ImageNet cache file), without importing Keras;
* :mod:`~ablation.sweep.factors`: one point of the design space (``Configuration``) and
  one searched choice (``Factor``), compared by value (``True`` is not ``1``);
* :mod:`~ablation.sweep.stores`: the addresses of the Optuna and MLflow stores, read in
  one place;
* :mod:`~ablation.sweep.sections`: the file's sections other than the space, one
  pydantic model each (``Study``, ``Data``, ``Train``, ``Tracking``);
* :mod:`~ablation.sweep.pretrained`: the ``model`` section (``PretrainedWeights``);
* :mod:`~ablation.sweep.config`: the YAML file, ``--set`` overrides, what spans sections
  (``Sweep``, ``load_sweep``);
* :mod:`~ablation.sweep.space`: conditional factors, the grid, Optuna's suggestions,
  labels, the backbones a space can produce, the blog's four models.
"""
