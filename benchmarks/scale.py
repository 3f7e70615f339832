"""Benchmark: the features + SVM mode as the training set grows (streamed features, scalable classifier).

Training sets of n images are generated from the embedded PneumoniaMNIST training split (4,708 chest
X-rays, 28 px): the real images, then copies shifted by up to 2 pixels with Gaussian noise
(sigma 8 grey levels). Every model is scored on the official validation split (524 images).

For each image size and n, one fresh process (so that its peak RSS is its own) runs the default
recipe's SVM member (ImageNet EfficientNet-Lite0, "middle" tap, C grid 0.3-10, 5-fold CV,
classifier auto) through the public path: ``FeatureSVM.extract_tables`` streams the images through
the tf.data pipeline and the backbone into the feature store, ``fit_tables`` fits the classifier
on the stored features, ``predict_table`` scores validation. It prints extraction images/s beside
the bare forward pass (``keras.Model.predict`` of the same backbone on random images of that size,
as in benchmarks/backbones.py, measured in the same process just before), the classifier fit
seconds, the peak RSS and the val AUC.

Goals on 2 cores: peak RSS < 3 GB at every n; extraction >= 0.9x the bare forward pass; beyond
the exact-SVM limit (10,000) fit time growing no faster than n log n (ratio of growths <= 1.3).

``--experiment N`` also runs ``tfmed run`` on the default SVM recipe (experiments/pneumonia_mnist_svm.yaml)
with its data replaced by N generated training images (plus the official validation split), and
prints its wall time and peak RSS beside the time the bare forward pass needs for as many images at
that size. Goal: RSS < 3 GB and wall time <= 1.3x the bare forward pass.

``--skip-sizes`` leaves out the per-size measurements: only the ``--experiment`` run (so it needs one).

Exit status: 0 when every goal is met, 1 when one fails (its line says FAIL), 2 for a refused argument or a
tfmed error (one line).

Usage:
    python benchmarks/scale.py [--sizes 5000 20000 100000] [--image-sizes 224 64] [--experiment 50000]
                               [--skip-sizes]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from _common import at_least, one_line_errors  # noqa: E402
from svm_classifiers import grown  # noqa: E402
from tfmed.config import DataConfig  # noqa: E402
from tfmed.data.sources import load_source  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RSS_GOAL_GB = 3.0


def write_training_set(n: int, folder: Path) -> Path:
    """A MedMNIST-format .npz: n generated training images and the official validation split."""
    table = load_source(DataConfig())
    split = table.frame["split"].to_numpy()
    images, labels = table.images, table.labels()
    train_x, train_y = grown(images[split == "train"].astype(np.float32), labels[split == "train"], n)
    path = folder / f"pneumonia_{n}.npz"
    np.savez(path, train_images=np.clip(np.rint(train_x), 0, 255).astype(np.uint8),
             train_labels=train_y.reshape(-1, 1), val_images=images[split == "val"],
             val_labels=labels[split == "val"].reshape(-1, 1))
    return path


def bare_forward_rate(image_size: int, batch: int = 32, seconds: float = 15.0) -> float:
    """Images/s of the bare backbone's ``predict`` on random images: best of 3 rounds of about ``seconds``."""
    from tfmed import backbones

    base = backbones.create("efficientnet_lite0", weights="imagenet", input_shape=(image_size, image_size, 3))
    x = np.random.default_rng(0).uniform(0, 255, (batch * 4, image_size, image_size, 3)).astype("float32")
    start = time.perf_counter()
    base.predict(x, batch_size=batch, verbose=0)  # warm-up, and a first guess of the rate
    count = max(batch * 2, int(len(x) / (time.perf_counter() - start) * seconds) // batch * batch)
    x = np.resize(x, (count, *x.shape[1:]))
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        base.predict(x, batch_size=batch, verbose=0)
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def measure(npz: str, image_size: int, cache: str) -> dict:
    """One (n, size) point, in this process: the figures printed by :func:`main`."""
    from sklearn.metrics import roc_auc_score

    from tfmed.config import PreprocessConfig
    from tfmed.data.statistics import fit_inputs
    from tfmed.modes import FeatureSVM

    bare = bare_forward_rate(image_size)
    table = load_source(DataConfig(source="medmnist", path=npz))
    train, val = table.split("train"), table.split("val")
    inputs = fit_inputs(PreprocessConfig(image_size=image_size, intensity="minmax"), train)
    model = FeatureSVM(weights="imagenet", taps=("middle",), image_size=image_size, C=(0.3, 1.0, 3.0, 10.0), cv=5,
                       cache_dir=cache, task="binary")
    start = time.perf_counter()
    model.extract_tables({"train": train}, inputs)
    extraction = time.perf_counter() - start
    start = time.perf_counter()
    model.fit_tables(train, None, inputs)
    fit = time.perf_counter() - start
    auc = roc_auc_score(val.labels(), model.predict_table(val, inputs))
    return {"n": len(train), "size": image_size, "bare": bare, "rate": len(train) / extraction, "fit": fit,
            "classifier": model.classifier_, "auc": float(auc),
            "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def in_fresh_process(args: list[str]) -> tuple[int, float, float, str]:
    """Run ``args``; return (exit code, wall seconds, the process's peak RSS in GB, its stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"})
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss / 2 ** 20, out


def run_experiment(n: int, folder: Path) -> bool:
    """The default SVM recipe through ``tfmed run`` on n generated images (see the module text); whether it met
    the goal."""
    npz = write_training_set(n, folder)
    config = yaml.safe_load((ROOT / "experiments" / "pneumonia_mnist_svm.yaml").read_text())
    config.update(name=f"pneumonia_svm_{n}", runs_dir=str(folder / "runs"),
                  data={"source": "medmnist", "path": str(npz)})
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    size = config["preprocess"]["image_size"]
    bare = float(in_fresh_process([sys.executable, __file__, "--bare", str(size)])[3].strip().splitlines()[-1])
    images = n + 524  # the training images and the validation split, each through the backbone once
    code, wall, rss, out = in_fresh_process([sys.executable, "-m", "tfmed.run.cli", "run", str(path)])
    print(out.strip())
    if code != 0:
        raise SystemExit(f"tfmed run failed ({code}):\n{out[-3000:]}")
    forward = images / bare
    ratio = wall / forward
    ok = ratio <= 1.3 and rss < RSS_GOAL_GB
    print(f"\ntfmed run, default SVM recipe, {n} training images at {size} px: wall {wall:.0f} s, peak RSS "
          f"{rss:.2f} GB; bare forward pass of {images} images at {bare:.0f} img/s: {forward:.0f} s -> "
          f"{ratio:.2f}x {'PASS' if ok else 'FAIL'} (goal <= 1.3x, RSS < 3 GB)")
    return ok


@one_line_errors
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[5000, 20000, 100000])
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[224, 64])
    parser.add_argument("--experiment", type=int, default=0, help="also run tfmed run on this many images")
    parser.add_argument("--skip-sizes", action="store_true", help="only the --experiment run")
    parser.add_argument("--measure", nargs=3, metavar=("NPZ", "SIZE", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args.measure[2])))
        return 0
    if args.bare:
        print(bare_forward_rate(args.bare))
        return 0
    at_least(parser, "--experiment", args.experiment, 0, "it is a number of training images (0: no tfmed run)")
    if args.skip_sizes and not args.experiment:
        parser.error("--skip-sizes leaves only the --experiment run, and there is none: give --experiment N "
                     "(training images) or leave --skip-sizes out")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; EfficientNet-Lite0 "
          "middle features; val = official PneumoniaMNIST validation split (524)")
    folder = Path(tempfile.mkdtemp(prefix="tfmed_scale_"))
    results = []
    ok = True
    for n in [] if args.skip_sizes else args.sizes:
        npz = write_training_set(n, folder)
        for size in args.image_sizes:
            code, wall, rss, out = in_fresh_process([sys.executable, __file__, "--measure", str(npz), str(size),
                                                     str(folder / f"cache_{n}_{size}")])
            if code != 0:
                raise SystemExit(f"n={n} size={size} failed ({code}):\n{out[-3000:]}")
            row = json.loads(out.strip().splitlines()[-1])
            row["rss_gb"] = rss
            results.append(row)
            ratio = row["rate"] / row["bare"]
            ok &= ratio >= 0.9 and rss < RSS_GOAL_GB
            print(f"n={n:>6} {size:>3} px  extraction {row['rate']:6.1f} img/s (bare {row['bare']:6.1f}, "
                  f"{ratio:.2f}x {'PASS' if ratio >= 0.9 else 'FAIL'})  fit {row['fit']:6.1f} s "
                  f"({row['classifier']})  peak RSS {rss:.2f} GB {'PASS' if rss < RSS_GOAL_GB else 'FAIL'}  "
                  f"val AUC {row['auc']:.4f}", flush=True)
    for size in args.image_sizes:
        rows = [r for r in results if r["size"] == size and r["classifier"] == "approximate"]
        for small, large in zip(rows, rows[1:]):
            growth = large["fit"] / small["fit"]
            nlogn = (large["n"] * math.log(large["n"])) / (small["n"] * math.log(small["n"]))
            ok &= growth <= 1.3 * nlogn
            print(f"{size} px fit {small['n']} -> {large['n']}: x{growth:.2f} vs n log n x{nlogn:.2f} -> "
                  f"{'PASS' if growth <= 1.3 * nlogn else 'FAIL'} (goal: no faster than n log n)")
    if args.experiment:
        ok &= run_experiment(args.experiment, folder)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
