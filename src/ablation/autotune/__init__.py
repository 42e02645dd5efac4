"""The machine at hand: its cores shared between workers, and the settings decided by
timing it once.

* :mod:`~ablation.autotune.cores`: threads per trial process, set before TensorFlow starts;
* :mod:`~ablation.autotune.timings`: what a timing depends on (the machine's identity),
  the per-machine cache of decisions, a timing in a spawned process;
* :mod:`~ablation.autotune.precision`: ``train.precision: auto``, a dtype policy per backbone;
* :mod:`~ablation.autotune.feature_batch`: ``train.feature_batch_size: auto``, images per
  backbone pass.
"""
