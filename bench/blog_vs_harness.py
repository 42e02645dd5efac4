"""The blog's four models: the blog's own recipe against the harness, same data, same run.

    python bench/blog_vs_harness.py --data ../shared/data/cats_and_dogs --epochs 20 --seeds 0 1
    python bench/blog_vs_harness.py --epochs 2 --limit 100          # a few minutes
    python bench/blog_vs_harness.py --set train.patience=null       # harness without early stopping

(a) is the recipe as the blog writes it (``image_dataset_from_directory``, a test
set taken from the validation batches, the four models, Adam, from logits),
with Keras 3 syntax. (b) is ``ablation`` on the same four configurations, set
up as ``sweeps/blog.yaml`` sets them up (early stopping, precision: auto, feature
cache), as a user runs it (each trial in its own process, MLflow records, model
saved).
Set KERAS_HOME to a folder with the MobileNetV2 weights when offline.
Prints per model and seed: wall seconds, test accuracy, and the ratio (a)/(b);
then the means over the seeds. Test accuracy is given twice for the recipe: on
its own test batches (a fifth of the validation batches, re-drawn at every
evaluation since the validation set is reshuffled) and on the harness's fixed
test split, the same images the harness's accuracy is measured on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BLOG_LABELS = {
    "model1": "cnn s{seed}",
    "model2": "cnn+aug(0.2) s{seed}",
    "model3": "cnn+aug(0.2)+prep s{seed}",
    "model4": "mobilenet_v2+aug(0.2)+prep s{seed}",
}
BLOG_SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "blog.yaml"
HARNESS_SPACES = {
    # model1..model3: augment off, or on with (no preprocessing | preprocessing).
    "cnn": "{backbone: {choice: [cnn]}, augment: {choice: [false, true]},"
    " rotation: {choice: [0.2], when: {augment: true}},"
    " preprocess: {choice: [none, mobilenet_v2], when: {augment: true}}}",
    "mobilenet": "{backbone: {choice: [mobilenet_v2]}, augment: {choice: [true]},"
    " rotation: {choice: [0.2]}, preprocess: {choice: [mobilenet_v2]}}",
}


def limited_copy(data: Path, limit: int | None, into: Path) -> Path:
    """The data itself, or a folder of links to the first ``limit`` images per class."""
    if limit is None:
        return data
    from ablation.data.folders import list_images

    listing = list_images(data, limit)
    for split, files in listing.files.items():
        for path, label in files:
            target = into / split / listing.class_names[label] / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return into


def blog_recipe(data: Path, epochs: int, seed: int) -> tuple[dict[str, tuple[float, float]], dict]:
    """The blog's code, model by model: {model: (seconds, test accuracy)}, {model: model}."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(seed)
    train_dataset = keras.utils.image_dataset_from_directory(
        data / "train", shuffle=True, batch_size=32, image_size=(160, 160), verbose=False
    )
    validation_dataset = keras.utils.image_dataset_from_directory(
        data / "validation", shuffle=True, batch_size=32, image_size=(160, 160), verbose=False
    )
    val_batches = int(validation_dataset.cardinality())
    test_batches = max(1, val_batches // 5)  # the blog's fifth; at least a batch on tiny data
    test_dataset = validation_dataset.take(test_batches)
    validation_dataset = validation_dataset.skip(test_batches)
    train_dataset = train_dataset.prefetch(tf.data.AUTOTUNE)
    validation_dataset = validation_dataset.prefetch(tf.data.AUTOTUNE)
    test_dataset = test_dataset.prefetch(tf.data.AUTOTUNE)

    def augmentation() -> keras.Sequential:
        return keras.Sequential([layers.RandomFlip(), layers.RandomRotation(0.2)])

    def preprocessor() -> keras.Model:
        i = keras.Input(shape=(160, 160, 3))
        return keras.Model(i, keras.applications.mobilenet_v2.preprocess_input(i))

    def cnn() -> list[layers.Layer]:
        return [
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ]

    def base() -> keras.Model:
        model = keras.applications.MobileNetV2(
            input_shape=(160, 160, 3), include_top=False, weights="imagenet"
        )
        model.trainable = False
        return model

    builders = {
        "model1": lambda: [*cnn()],
        "model2": lambda: [augmentation(), *cnn()],
        "model3": lambda: [preprocessor(), augmentation(), *cnn()],
        "model4": lambda: [
            preprocessor(),
            augmentation(),
            base(),
            layers.GlobalMaxPooling2D(),
            layers.Dropout(0.2),
            layers.Dense(2),
        ],
    }
    results, models = {}, {}
    for name, build in builders.items():
        started = time.perf_counter()
        model = keras.Sequential([keras.Input(shape=(160, 160, 3)), *build()])
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(train_dataset, epochs=epochs, validation_data=validation_dataset, verbose=0)
        _, accuracy = model.evaluate(test_dataset, verbose=0)
        results[name] = (time.perf_counter() - started, float(accuracy))
        models[name] = model
        print(f"  blog {name}: {results[name][0]:.0f} s, test accuracy {accuracy:.3f}", flush=True)
    return results, models


def on_harness_test_split(models: dict, sweep_overrides: list[str]) -> dict[str, float]:
    """The recipe's trained models on the harness's test split (same images, same order)."""
    from ablation import load_sweep
    from ablation.data.images import load_images
    from ablation.data.pipeline import eval_dataset

    sweep = load_sweep(BLOG_SWEEP, sweep_overrides)
    images = load_images(sweep.data)
    assert images.class_names == ["cats", "dogs"], images.class_names  # the recipe's labels
    test = eval_dataset(images.x_test, images.y_test, batch_size=32)
    return {name: float(model.evaluate(test, verbose=0)[1]) for name, model in models.items()}


def harness_overrides(data: Path, epochs: int, workdir: Path) -> list[str]:
    """What the bench sets in sweeps/blog.yaml: the data, the epochs, its own stores."""
    return [
        f"data.source={data}",
        f"data.cache_dir={workdir}/cache",
        f"train.epochs={epochs}",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
        "tracking.experiment=bench",
    ]


def harness(
    data: Path, epochs: int, seed: int, overrides: list[str], workdir: Path
) -> dict[str, tuple[float, float]]:
    """The same four models through ablation, set up as sweeps/blog.yaml sets them up
    (early stopping, precision, feature cache): {model: (seconds, test accuracy)}."""
    from ablation import load_sweep, run_sweep

    outcomes = {}
    for name, space in HARNESS_SPACES.items():
        sweep = load_sweep(
            BLOG_SWEEP,
            [
                f"study.name=bench-{name}",
                f"study.seeds=[{seed}]",
                f"study.storage={workdir}/{name}.journal",
                f"space={space}",
                *harness_overrides(data, epochs, workdir),
                *overrides,
            ],
        )
        for outcome in run_sweep(sweep).outcomes:
            outcomes[outcome.label] = outcome
    results = {}
    for blog_name, label in BLOG_LABELS.items():
        outcome = outcomes[label.format(seed=seed)]
        results[blog_name] = (outcome.wall_seconds, outcome.test_accuracy or 0.0)
        print(
            f"  harness {blog_name}: {outcome.wall_seconds:.0f} s, {outcome.epochs_run} "
            f"epoch(s), test accuracy {outcome.test_accuracy:.3f}; fixed cost "
            f"{outcome.wall_seconds - outcome.seconds + outcome.setup_seconds:.1f} s "
            f"(process start and recording {outcome.wall_seconds - outcome.seconds:.1f} s, "
            f"model build and cached features {outcome.setup_seconds:.1f} s)",
            flush=True,
        )
    return results


def time_machine(
    data: Path, epochs: int, overrides: list[str], workdir: Path, threads: int | None = None
) -> list[Path]:
    """Time ``precision: auto`` and ``feature_batch_size: auto`` once for this machine (as
    the first study on it does); the cache files that leaves, to copy into a study's cache."""
    from ablation import load_sweep
    from ablation.autotune import feature_batch, precision

    sweep = load_sweep(BLOG_SWEEP, [*harness_overrides(data, epochs, workdir), *overrides])
    started = time.perf_counter()
    sweep, _ = precision.resolve_auto(sweep, threads=threads)
    sweep, _ = feature_batch.resolve_auto(sweep, threads=threads)
    train = sweep.train
    print(
        f"timed once for this machine in {time.perf_counter() - started:.0f} s (not in the "
        f"harness's times): precision {train.precision}, feature batch {train.feature_batch_size}",
        flush=True,
    )
    cache = Path(sweep.data.cache_dir)
    return [cache / name for name in (precision.CACHE_FILE, feature_batch.CACHE_FILE)]


def main() -> None:
    from ablation.cli import add_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cats_and_dogs"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--limit", type=int, help="images per class and split (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    add_overrides(parser, "override sweeps/blog.yaml for the harness, e.g. train.patience=null")
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float, float, float, float]]] = {n: [] for n in BLOG_LABELS}
    totals: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = limited_copy(args.data.resolve(), args.limit, workdir / "data")
        timings = time_machine(data, args.epochs, args.overrides, workdir / "machine")
        for seed in args.seeds:
            # Each seed in fresh stores: the harness decodes the images and computes the
            # features again, as a first run does; the auto settings' timing is done once
            # per machine, so it is not repeated (its seconds are printed above).
            seed_dir = workdir / f"seed{seed}"
            (seed_dir / "cache").mkdir(parents=True)
            for timing in timings:
                if timing.is_file():
                    shutil.copy(timing, seed_dir / "cache" / timing.name)
            print(f"(a) the blog's recipe, {args.epochs} epoch(s), seed {seed}", flush=True)
            started = time.perf_counter()
            blog, models = blog_recipe(data, args.epochs, seed)
            blog_total = time.perf_counter() - started
            print(f"(b) the harness, {args.epochs} epoch(s), seed {seed}", flush=True)
            started = time.perf_counter()
            ours = harness(data, args.epochs, seed, args.overrides, seed_dir)
            ours_total = time.perf_counter() - started
            same_test = on_harness_test_split(
                models, [*harness_overrides(data, args.epochs, seed_dir), *args.overrides]
            )
            totals.append((blog_total, ours_total))
            for name in BLOG_LABELS:
                rows[name].append((*blog[name], same_test[name], *ours[name]))
            print_table(f"seed {seed}", {n: [r[-1]] for n, r in rows.items()}, [totals[-1]])
    if len(args.seeds) > 1:
        print_table(f"mean over seeds {args.seeds}", rows, totals)


def print_table(title: str, rows: dict[str, list], totals: list[tuple[float, float]]) -> None:
    """One markdown table: per model the means of the given runs, then the total wall time."""
    print(f"\n{title}\n")
    print(
        "| model | blog s | blog test acc (its batches) | blog test acc (harness split) "
        "| harness s | harness test acc | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        a_s, a_acc, a_same, b_s, b_acc = (statistics.mean(run[i] for run in runs) for i in range(5))
        print(
            f"| {name} | {a_s:.0f} | {a_acc:.3f} | {a_same:.3f} | {b_s:.0f} | {b_acc:.3f} "
            f"| {a_s / b_s:.2f} |"
        )
    blog_total, ours_total = (statistics.mean(t[i] for t in totals) for i in range(2))
    print(
        f"| total (wall, incl. data loading and start-up) | {blog_total:.0f} | | | "
        f"{ours_total:.0f} | | {blog_total / ours_total:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
