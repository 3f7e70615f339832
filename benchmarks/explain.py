"""Benchmark: the cost of each explanation method at 224 px, beside one plain forward pass.

A fine-tune-shaped model (ImageNet EfficientNet-Lite0, 224 px, a one-output
sigmoid head) explains a batch of chest-X-ray-sized images with every method
of :data:`tfmed.explain.METHODS` at its default settings; the script prints
maps per second and the cost of one map in forward passes (the time of one map
divided by the time of scoring one image with ``model.predict`` in the same
batch size). The TensorFlow form of a features + SVM model (Lite0 middle stage,
RBF-SVM fitted on a few images) is timed with Grad-CAM too.

Timings are of this machine (its CPU is printed); compare the ratios.

Exit status: 0 (no goal is checked); 2 for a refused argument or a tfmed error (one line).

Usage:
    python benchmarks/explain.py [--images 8] [--size 224]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import at_least, one_line_errors  # noqa: E402
from tfmed import backbones, explain  # noqa: E402
from tfmed.modes.svm import FeatureSVM  # noqa: E402


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _model(size: int) -> keras.Model:
    base = backbones.create("efficientnet_lite0", weights="imagenet", input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output)
    out = keras.layers.Dense(1, activation="sigmoid", name="predictions")(x)
    return keras.Model(base.inputs, out, name="efficientnet_lite0_finetune")


def _timed(function, repeats: int = 1) -> float:
    function()  # warm-up: graph tracing is a one-off cost
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


@one_line_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    at_least(parser, "--images", args.images, 4, "the SVM's 2-fold CV needs 2 images of each of its two classes")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.images, args.size, args.size, 3)).astype("float32")
    model = _model(args.size)
    forward = _timed(lambda: model.predict(images, batch_size=args.images, verbose=0), repeats=3) / args.images
    print(f"{_cpu()}, {os.cpu_count()} cores; EfficientNet-Lite0 at {args.size} px, {args.images} images")
    print(f"plain forward pass: {1 / forward:8.1f} images/s")
    print(f"{'method':24s} {'maps/s':>8s} {'forward passes per map':>24s}")
    for name in explain.METHODS:
        seconds = _timed(lambda: explain.explain(model, images, name)) / args.images
        print(f"{name:24s} {1 / seconds:8.2f} {seconds / forward:24.1f}")
    svm = FeatureSVM(taps=("middle",), image_size=args.size, C=(1.0,), cv=2)
    svm.fit(images[..., :1], np.arange(args.images) % 2)
    seconds = _timed(lambda: explain.gradcam(svm, images)) / args.images
    print(f"{'gradcam (svm mode)':24s} {1 / seconds:8.2f} {seconds / forward:24.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
