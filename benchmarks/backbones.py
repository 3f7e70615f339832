"""Feature-extraction speed: tfmed (feature_model + extract_features) vs a bare keras.Model.predict.

Same backbone, same inputs (224 px, raw 0-255), same batch size, same process;
both warmed up first, then timed in alternating rounds (best round kept, which
damps noise from other processes). Goal: tfmed >= 0.9x the bare images/s.

Run:  TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/backbones.py [--images 64] [--batch 32] [--rounds 3]
EfficientNet-Lite0 uses its ImageNet weights (converted offline on first use);
ResNet50 uses random weights (ImageNet files are not downloaded).
Exit status: 0 when every backbone meets the goal, 1 when one fails it ("overall: FAIL"), 2 for a refused
argument or a tfmed error (one line).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from _common import at_least, one_line_errors  # noqa: E402
from tfmed import backbones  # noqa: E402


def images_per_second(fn, n):
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


@one_line_errors
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    at_least(parser, "--images", args.images, 1, "the backbones are timed on that many images")
    at_least(parser, "--batch", args.batch, 1, "a batch holds images")
    at_least(parser, "--rounds", args.rounds, 1, "the best timed round is kept")
    x = np.random.default_rng(0).uniform(0, 255, (args.images, 224, 224, 3)).astype("float32")
    print(f"{args.images} images 224x224, batch {args.batch}, CPU cores visible: {os.cpu_count()}")
    ok = True
    for name, weights in [("efficientnet_lite0", "imagenet"), ("resnet50", None)]:
        base = backbones.create(name, weights=weights, input_shape=(224, 224, 3))
        fm = backbones.feature_model(base, taps=("late",), pooling="avg")
        bare = lambda: base.predict(x, batch_size=args.batch, verbose=0)  # noqa: E731
        ours = lambda: backbones.extract_features(fm, x, batch_size=args.batch)  # noqa: E731
        bare(), ours()  # warm-up: tracing and first-call costs
        bare_ips, ours_ips = [], []
        for _ in range(args.rounds):
            bare_ips.append(images_per_second(bare, args.images))
            ours_ips.append(images_per_second(ours, args.images))
        ratio = max(ours_ips) / max(bare_ips)
        ok &= ratio >= 0.9
        print(f"{name:20s} bare predict {max(bare_ips):7.1f} img/s | tfmed features {max(ours_ips):7.1f} img/s | "
              f"ratio {ratio:.2f}x {'PASS' if ratio >= 0.9 else 'FAIL'} (goal >= 0.9x)")
    print("overall:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
