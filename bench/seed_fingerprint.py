"""A seed's models, fingerprinted: train four configurations with seed 0 and print a hash
of each trained model's weights, to compare two checkouts (a restructure must change none).

Usage (each checkout's own code, through PYTHONPATH; ../shared as the data and weights)::

    PYTHONPATH=OLD/src .venv/bin/python bench/seed_fingerprint.py OLD > old.txt
    PYTHONPATH=NEW/src .venv/bin/python bench/seed_fingerprint.py NEW > new.txt
    diff old.txt new.txt

Reads the API of this layout (``ablation.sweep``, ...) or of the flat one before it.
"""

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SMALL = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def main(checkout: str) -> None:
    home = tempfile.mkdtemp()
    shutil.copytree(SHARED / "weights" / "keras" / "models", f"{home}/models")
    os.environ["KERAS_HOME"] = home
    import numpy as np

    try:
        from ablation.data.images import load_images
        from ablation.model.training import train
        from ablation.sweep.config import load_sweep
        from ablation.sweep.factors import Configuration
    except ImportError:  # the flat layout before sub-packages
        from ablation.config import load_sweep  # type: ignore[no-redef]
        from ablation.factors import Configuration  # type: ignore[no-redef]
        from ablation.training import train  # type: ignore[no-redef]

        from ablation.data import load_images  # type: ignore[no-redef]

    sweep = load_sweep(
        f"{checkout}/sweeps/blog.yaml",
        [
            f"data.source={SHARED / 'data' / 'cats_and_dogs'}",
            "data.limit_per_class=16",
            "data.cache_dir=null",
            "train.epochs=2",
            "train.patience=null",
            "train.feature_batch_size=8",
            f"model.weights={SHARED / 'weights' / 'keras' / 'models' / SMALL}",
            "model.alpha=0.35",
        ],
    )
    images = load_images(sweep.data)
    for configuration in [
        Configuration(),
        Configuration(augment=True, rotation=0.2, flip="horizontal"),
        Configuration(backbone="mobilenet_v2", augment=True, preprocess="mobilenet_v2"),
        Configuration(backbone="mobilenet_v2", fine_tune_layers=10, fine_tune_epochs=1),
    ]:
        result = train(configuration, seed=0, sweep=sweep, images=images)
        digest = hashlib.sha256()
        for weight in result.model.weights:
            digest.update(np.asarray(weight.numpy()).tobytes())
        print(
            configuration.backbone,
            configuration.augment,
            configuration.fine_tune_layers,
            digest.hexdigest()[:16],
            result.test_accuracy,
            result.history["loss"],
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
