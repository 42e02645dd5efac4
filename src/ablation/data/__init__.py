"""The images a study trains on: found, decoded once, split, served as tf.data batches.

* :mod:`~ablation.data.folders`: which of three layouts a data folder has, its listing
  of image files and the listing's identity (its files' content), the seeded splits;
* :mod:`~ablation.data.sources`: ``data.source``, a local folder or a URL's archive
  downloaded once and checked against ``data.sha256``;
* :mod:`~ablation.data.arrays`: ``.npy`` files in a folder that appears whole or not
  at all, written and copied a chunk at a time;
* :mod:`~ablation.data.images`: decode and resize once, keep the arrays memory-mapped
  in ``data.cache_dir`` (``Images``, ``load_images``);
* :mod:`~ablation.data.pipeline`: arrays as shuffled or fixed tf.data batches, gathered
  batch by batch, never copied whole.
"""
