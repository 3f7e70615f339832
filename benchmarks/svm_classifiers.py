"""Benchmark: exact vs approximate SVM classifiers on the same features, as the training set grows.

The default recipe's SVM member: ImageNet EfficientNet-Lite0 "middle" features of the embedded
PneumoniaMNIST at 96 px. Training sets of n images are the official training split (4708) and, for
larger n, copies of it shifted by up to 2 pixels with Gaussian noise (sigma 8 grey levels) added;
every model is scored on the official validation split (524 images). Features are extracted once
per training set into a feature cache, so the timed fits measure the classifier (grid search over
C with cross-validation, calibration, refit) and a cache read.

For each n it prints the fit seconds and val AUC of classifier "exact" (SVC) where n is at most
--exact-up-to, and of "approximate" (Nystroem map + LinearSVC), then the growth of the fit time
between consecutive sizes against n log n. Goals: at the real size the approximate classifier's
val AUC within 0.01 of the exact one's; beyond the exact limit its fit time grows no faster than
n log n (ratio of growths <= 1.3).

Exit status: 0 when every goal checked is met, 1 when one fails (its line says FAIL), 2 for a refused argument
or a tfmed error (one line).

Usage:
    python benchmarks/svm_classifiers.py [--sizes 4708 10000 20000] [--exact-up-to 10000]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from _common import at_least, one_line_errors  # noqa: E402
from tfmed.config import DataConfig  # noqa: E402
from tfmed.data.sources import load_source  # noqa: E402
from tfmed.modes import FeatureSVM  # noqa: E402
from tfmed.modes.features import FeatureCache, backbone_features  # noqa: E402


def grown(images: np.ndarray, labels: np.ndarray, n: int, seed: int = 0):
    """The training images and, beyond them, shifted noisy copies: n images in all."""
    rng = np.random.default_rng(seed)
    extra = n - len(images)
    if extra <= 0:
        return images[:n], labels[:n]
    picks = rng.integers(0, len(images), extra)
    copies = np.empty((extra, *images.shape[1:]), np.float32)
    for i, pick in enumerate(picks):
        dy, dx = rng.integers(-2, 3, 2)
        copies[i] = np.roll(images[pick], (dy, dx), axis=(0, 1))
    copies = np.clip(copies + rng.normal(0, 8, copies.shape), 0, 255).astype(np.float32)
    return np.concatenate([images, copies]), np.concatenate([labels, labels[picks]])


@one_line_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[4708, 10000, 20000])
    parser.add_argument("--exact-up-to", type=int, default=10000)
    parser.add_argument("--C", nargs="+", type=float, default=[0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--cv", type=int, default=5)
    args = parser.parse_args()
    at_least(parser, "--cv", args.cv, 2, "cross-validation needs 2 folds")

    table = load_source(DataConfig())
    images = table.images.astype(np.float32)[..., None]
    labels = table.labels()
    split = table.frame["split"].to_numpy()
    train_x, train_y = images[split == "train"], labels[split == "train"]
    val_x, val_y = images[split == "val"], labels[split == "val"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"EfficientNet-Lite0 middle features at 96 px; val = official validation split ({len(val_y)})")
    cache = tempfile.mkdtemp(prefix="tfmed_svm_classifiers_")
    common = dict(weights="imagenet", taps=("middle",), image_size=96, C=tuple(args.C), cv=args.cv,
                  cache_dir=cache, batch_size=64)
    rows = []
    for n in args.sizes:
        x, y = grown(train_x, train_y, n)
        start = time.perf_counter()
        backbone_features(x, backbone="efficientnet_lite0", weights="imagenet", taps=["middle"], image_size=96,
                          batch_size=64, cache=FeatureCache(cache))
        print(f"n={n:>6} features extracted in {time.perf_counter() - start:.1f} s", flush=True)
        for kind in ("exact", "approximate"):
            if kind == "exact" and n > args.exact_up_to:
                continue
            start = time.perf_counter()
            model = FeatureSVM(classifier=kind, **common).fit(x, y)
            seconds = time.perf_counter() - start
            auc = roc_auc_score(val_y, model.predict_proba(val_x)[:, 1])
            rows.append((n, kind, seconds, auc))
            print(f"n={n:>6} {kind:<11} fit {seconds:7.1f} s  val AUC {auc:.4f}  C={model.best_params_}",
                  flush=True)
    exact = {n: auc for n, kind, _, auc in rows if kind == "exact"}
    approx = {n: (seconds, auc) for n, kind, seconds, auc in rows if kind == "approximate"}
    real = args.sizes[0]
    ok = True
    if real in exact:
        gap = exact[real] - approx[real][1]
        ok &= gap <= 0.01
        print(f"val AUC at n={real}: exact {exact[real]:.4f}, approximate {approx[real][1]:.4f} "
              f"(cost {gap:+.4f}) -> {'PASS' if gap <= 0.01 else 'FAIL'} (goal: within 0.01)")
    sizes = [n for n in args.sizes if n in approx]
    for small, large in zip(sizes, sizes[1:]):
        growth = approx[large][0] / approx[small][0]
        nlogn = (large * math.log(large)) / (small * math.log(small))
        ok &= growth <= 1.3 * nlogn
        print(f"approximate fit {small} -> {large}: x{growth:.2f} vs n log n x{nlogn:.2f} -> "
              f"{'PASS' if growth <= 1.3 * nlogn else 'FAIL'} (goal: no faster than n log n)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
