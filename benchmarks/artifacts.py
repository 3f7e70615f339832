"""Benchmark: the SVM-mode artifact as tfmed 0.1 wrote it (one joblib pickle) beside the safe format.

A features + SVM model with the default experiment's SVM settings (ImageNet
EfficientNet-Lite0, middle stage, RBF-SVM, C by 5-fold CV) is fitted on the
PneumoniaMNIST training images at 96 px. It is then saved both ways:

- **pickle** (tfmed 0.1): one ``joblib.dump`` of the parameters, fitted scikit-learn
  objects and backbone weights; loading it can run code hidden in the file;
- **safe** (tfmed 0.2): ``feature_svm.json`` + ``backbone_weights.npz`` +
  ``fitted.skops`` (skops.io with an explicit list of trusted scikit-learn types).

The script prints each artifact's size, the time to read the files alone, the time of
a full ``FeatureSVM.load`` (which also rebuilds the backbone), and checks that the
reloaded models give identical ``decision_function`` and ``predict_proba`` values.

Exit status: 0 (no goal is checked; a reloaded model that differs stops it with an AssertionError); 2 for
a refused argument or a tfmed error (one line).

Usage:
    python benchmarks/artifacts.py [--images 4708] [--size 96] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import joblib  # noqa: E402
import numpy as np  # noqa: E402
import skops.io  # noqa: E402

from _common import at_least, one_line_errors  # noqa: E402
from tfmed.config import PreprocessConfig  # noqa: E402
from tfmed.data.pipeline import ImageInputs  # noqa: E402
from tfmed.data.sources.embedded import load_pneumonia_mnist  # noqa: E402
from tfmed.files import read_arrays  # noqa: E402
from tfmed.modes import features  # noqa: E402
from tfmed.modes.svm import FITTED_FILE, TRUSTED_TYPES, WEIGHTS_FILE, FeatureSVM  # noqa: E402

LEGACY_STATE = ("backbone_spec_", "task_", "classes_", "input_shape_", "block_widths_", "scalers_",
                "cv_results_", "best_params_", "best_score_", "models_")


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        features.clear_model_cache()
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def save_pickled(model: FeatureSVM, path: Path) -> None:
    """The tfmed 0.1 artifact: one joblib pickle."""
    base, _ = model._base_model()
    joblib.dump({"format": 1, "kind": "tfmed.FeatureSVM", "params": model.get_params(),
                 "state": {**{name: getattr(model, name) for name in LEGACY_STATE},
                           "models_": model.models_[0]},  # 0.1 kept one flat list of calibrated SVMs
                 "backbone_weights": [np.asarray(w) for w in base.get_weights()]}, path)


@one_line_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4708, help="training images (4708 = all)")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    at_least(parser, "--repeats", args.repeats, 1, "each load is timed as the median of that many")

    table = load_pneumonia_mnist().split("train")
    seen = np.cumsum(np.eye(2, dtype=int)[table.labels()], axis=0)  # images of each class among the first n
    least = int(np.argmax(seen.min(axis=1) >= 5)) + 1
    at_least(parser, "--images", args.images, least,
             f"the SVM's 5-fold CV needs 5 images of each class, which the first {least} training images hold")
    table = table.subset(np.arange(min(args.images, len(table))))
    inputs = ImageInputs(PreprocessConfig(image_size=args.size, intensity="minmax"))
    X, y = inputs.arrays(table)
    start = time.perf_counter()
    model = FeatureSVM(taps=("middle",), image_size=args.size, C=(0.3, 1.0, 3.0, 10.0), cv=5).fit(X, y)
    fit_seconds = time.perf_counter() - start
    support = sum(len(m.calibrated_classifiers_[0].estimator.support_) for m in model.models_[0])

    with tempfile.TemporaryDirectory() as scratch:
        pickled, safe = Path(scratch) / "svm.joblib", Path(scratch) / "estimator"
        save_pickled(model, pickled)
        model.save(safe)
        read_pickle = _median_seconds(lambda: joblib.load(pickled), args.repeats)
        read_safe = _median_seconds(lambda: (skops.io.load(safe / FITTED_FILE, trusted=list(TRUSTED_TYPES)),
                                             read_arrays(safe / WEIGHTS_FILE)), args.repeats)
        load_pickle = _median_seconds(lambda: FeatureSVM.load(pickled, trust_pickles=True), args.repeats)
        load_safe = _median_seconds(lambda: FeatureSVM.load(safe), args.repeats)
        probe = X[:64]
        for path, options in ((pickled, {"trust_pickles": True}), (safe, {})):
            loaded = FeatureSVM.load(path, **options)
            assert np.array_equal(loaded.decision_function(probe), model.decision_function(probe))
            assert np.array_equal(loaded.predict_proba(probe), model.predict_proba(probe))
        sizes = {"pickle": _size(pickled), "safe": _size(safe)}
        parts = {p.name: p.stat().st_size for p in sorted(safe.iterdir())}

    print(f"{os.cpu_count()} CPU cores; {len(X)} training images at {args.size} px, {support} support vectors, "
          f"fitted in {fit_seconds:.0f} s; medians of {args.repeats} loads")
    print(f"{'artifact':<10} {'size (MB)':>10} {'read files (s)':>15} {'FeatureSVM.load (s)':>20}")
    print(f"{'pickle':<10} {sizes['pickle'] / 1e6:>10.2f} {read_pickle:>15.3f} {load_pickle:>20.2f}")
    print(f"{'safe':<10} {sizes['safe'] / 1e6:>10.2f} {read_safe:>15.3f} {load_safe:>20.2f}")
    print("safe files: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in parts.items()))
    print("both reload to identical decision_function and predict_proba values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
