"""Model4 (augmentation before a frozen MobileNetV2): the whole model against per-epoch features.

    KERAS_HOME=/tmp/keras-home python bench/model4_features.py --data ../shared/data/cats_and_dogs
    KERAS_HOME=/tmp/keras-home python bench/model4_features.py --per-class 100 --epochs 3  # quick
    KERAS_HOME=/tmp/keras-home python bench/model4_features.py --feature-batch 64

Both runs in one process, on the same real images (``--per-class`` per class and
split: 300 gives 600 training images), with the same seed and ``sweeps/blog.yaml``'s
settings, without early stopping:

(a) ``train.cache_features=false``: the whole model trains on the augmented images,
    the backbone at the training batch size, under the gradient tape;
(b) the default: validation and test through cached features, and the training
    set's augmented features computed at each epoch's start, the backbone in
    inference mode, ``--feature-batch`` images per pass (``train.feature_batch_size``).

The backbone is MobileNetV2 with alpha 1.0 and ImageNet weights at 160x160 when
``$KERAS_HOME/models`` has that file, else the alpha-0.35 file there (any size).
Prints each epoch's seconds (from the previous epoch's end; the first from the
end of the setup, so it includes tracing), their median from the second epoch
on, and how far apart the two runs' curves are.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SMALL = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def backbone_overrides(size: int) -> list[str]:
    """MobileNetV2 alpha 1.0 (ImageNet) if its weights are cached for ``size``, else 0.35."""
    from ablation.sweep.backbones import BACKBONES

    models = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    if (models / BACKBONES["mobilenet_v2"].imagenet_file(1.0, (size, size))).is_file():
        return ["model.weights=imagenet", "model.alpha=1.0"]
    if (models / SMALL).is_file():
        return [f"model.weights={models / SMALL}", "model.alpha=0.35"]
    raise SystemExit(f"no MobileNetV2 weights in {models} (set KERAS_HOME)")


def timed_trial(overrides: list[str], seed: int) -> dict:
    """One model4 trial; its per-epoch seconds, setup seconds and result."""
    from ablation.data.images import load_images
    from ablation.model.training import train
    from ablation.sweep.config import load_sweep
    from ablation.sweep.factors import Configuration

    sweep = load_sweep(REPO / "sweeps" / "blog.yaml", overrides)
    images = load_images(sweep.data)
    model4 = Configuration(backbone="mobilenet_v2", augment=True, preprocess="mobilenet_v2")
    ends: list[float] = []
    started = time.perf_counter()
    result = train(
        model4,
        seed=seed,
        sweep=sweep,
        images=images,
        on_epoch=lambda epoch, metrics: ends.append(time.perf_counter()),
    )
    starts = [started + result.setup_seconds, *ends[:-1]]
    epochs = [end - start for start, end in zip(starts, ends, strict=True)]
    return {"epochs": epochs, "result": result, "train_images": len(images.y_train)}


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/cats_and_dogs")
    parser.add_argument("--per-class", type=int, default=300, help="images per class and split")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--feature-batch", type=int, default=32, help="images per backbone pass in (b)"
    )
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs: at least 2 (the first epoch includes tracing)")

    overrides = [
        f"data.source={args.data.resolve()}",
        f"data.limit_per_class={args.per_class}",
        f"data.image_size=[{args.size}, {args.size}]",
        f"train.epochs={args.epochs}",
        "train.patience=null",
        *backbone_overrides(args.size),
        f"train.feature_batch_size={args.feature_batch}",
    ]
    print("settings:", " ".join(overrides[1:]), flush=True)
    runs = {}
    for name, extra in (("whole model", ["train.cache_features=false"]), ("per-epoch", [])):
        runs[name] = timed_trial([*overrides, *extra], args.seed)
        run = runs[name]
        later = statistics.median(run["epochs"][1:]) if len(run["epochs"]) > 1 else float("nan")
        print(
            f"{name}: {run['train_images']} training images; setup "
            f"{run['result'].setup_seconds:.1f} s; epochs "
            + ", ".join(f"{s:.1f}" for s in run["epochs"])
            + f" s; median from the 2nd {later:.2f} s; test accuracy "
            f"{run['result'].test_accuracy:.3f}",
            flush=True,
        )
    whole, ours = (runs[name]["result"].history for name in ("whole model", "per-epoch"))
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        apart = max(abs(a - b) for a, b in zip(whole[metric], ours[metric], strict=True))
        print(f"largest difference in {metric}: {apart:.2e}")
    speed_up = statistics.median(runs["whole model"]["epochs"][1:]) / statistics.median(
        runs["per-epoch"]["epochs"][1:]
    )
    print(f"per-epoch speed-up (medians from the 2nd epoch): {speed_up:.2f}x")


if __name__ == "__main__":
    main()
