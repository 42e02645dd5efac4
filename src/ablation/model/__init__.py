"""The Keras side of one trial: the model of a configuration, and training it.

* :mod:`~ablation.model.backbones`: a Keras Applications backbone built from its facts,
  its weights (ImageNet, a file, random) loaded, its own preprocessing, the weights' hash;
* :mod:`~ablation.model.builders`: ``build_model`` (the blog's layers) and its parts,
  compiling, fine-tuning's unfreezing;
* :mod:`~ablation.model.features`: a frozen backbone's features, computed once (or
  per epoch under augmentation) where that is exact;
* :mod:`~ablation.model.training`: seeded fit, fine-tuning and test of one
  configuration with one seed; no I/O.
"""
