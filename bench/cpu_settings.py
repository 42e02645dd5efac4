"""XLA, op determinism, threads and precision on this machine: which make an epoch faster?

    python bench/cpu_settings.py                    # every setting, every model
    python bench/cpu_settings.py --images 480 --epochs 7
    python bench/cpu_settings.py --setting default --setting bfloat16   # names containing these

Each setting runs in a fresh process (TensorFlow's settings are per process) on
random 160x160 images, and prints the seconds of each epoch; the first epoch
includes tracing and compiling, so compare the median of the others. Set
KERAS_HOME to a folder with the MobileNetV2 weights when offline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "default (deterministic ops, no XLA)": {"determinism": True, "jit": False},
    "non-deterministic ops": {"determinism": False, "jit": False},
    "XLA": {"determinism": False, "jit": True},
    "XLA + deterministic ops": {"determinism": True, "jit": True},
    "1 intra-op / 1 inter-op thread": {"determinism": True, "jit": False, "threads": (1, 1)},
    "4 intra-op / 2 inter-op threads": {"determinism": True, "jit": False, "threads": (4, 2)},
    "bfloat16 (mixed_bfloat16 policy)": {
        "determinism": True,
        "jit": False,
        "precision": "mixed_bfloat16",
    },
}
MODELS = {
    "cnn": {"backbone": "cnn"},
    "mobilenet_v2+aug": {"backbone": "mobilenet_v2", "augment": True, "preprocess": "mobilenet_v2"},
    "mobilenet_v2": {"backbone": "mobilenet_v2", "preprocess": "mobilenet_v2"},
}


def one_run(config: dict, images: int, epochs: int) -> list[float]:
    """Runs in the child process: one model, one setting; the seconds of each epoch."""
    import numpy as np
    import tensorflow as tf

    if "threads" in config:
        tf.config.threading.set_intra_op_parallelism_threads(config["threads"][0])
        tf.config.threading.set_inter_op_parallelism_threads(config["threads"][1])
    if config["determinism"]:
        tf.config.experimental.enable_op_determinism()
    import keras

    from ablation.model.builders import build_model
    from ablation.sweep.factors import Configuration

    keras.utils.set_random_seed(0)
    model = build_model(
        Configuration(**config["choices"]),
        image_size=(160, 160),
        num_classes=2,
        seed=0,
        precision=config.get("precision", "float32"),
    ).model
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=config["jit"],
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 160, 160, 3)).astype("float32")
    y = rng.integers(0, 2, images)
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=[Timer()])
    return seconds


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        config = json.loads(sys.argv[2])
        print(json.dumps(one_run(config, config["images"], config["epochs"])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument(
        "--setting", action="append", help="run the settings whose name contains this (repeatable)"
    )
    parser.add_argument("--model", action="append", choices=list(MODELS), help="(repeatable)")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print("| model | setting | median s/epoch (after the first) | vs default |")
    print("|---|---|---|---|")
    for model_name, choices in MODELS.items():
        if args.model and model_name not in args.model:
            continue
        baseline = None
        for setting_name, setting in SETTINGS.items():
            is_baseline = setting_name.startswith("default")  # always run: the ratios' base
            chosen = not args.setting or any(part in setting_name for part in args.setting)
            if not (is_baseline or chosen):
                continue
            config = {**setting, "choices": choices, "images": args.images, "epochs": args.epochs}
            done = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(config)],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if done.returncode != 0:
                print(f"| {model_name} | {setting_name} | failed | |")
                continue
            seconds = json.loads(done.stdout.strip().splitlines()[-1])
            median = statistics.median(seconds[1:])
            baseline = baseline or median
            print(f"| {model_name} | {setting_name} | {median:.2f} | {median / baseline:.2f}x |")


if __name__ == "__main__":
    main()
