"""Fine-tuning benchmark: tfmed's FineTuner against a bare ``model.fit`` of the same model and data.

Throughput (default): training images per second through ``FineTuner.fit``
versus a plain Keras ``model.fit`` of the same architecture, the same frozen /
unfrozen layers, optimiser, loss, metric and tf.data pipeline, in the same
process. Epoch times come from a callback; the first epoch of each run
(tracing) is left out and the fastest of the remaining epochs is kept, so
noise from other processes on the machine counts against neither side.
Prints both figures and the ratio with PASS (>= 0.9x) or FAIL.

Experiment (``--experiment PATH``): trains an experiment YAML (mode finetune)
through FineTuner on its own data and split and prints the validation AUC
(scikit-learn) and the wall time. A relative PATH is read from the working
folder, else from the repository (as ``heldout.py`` reads its YAMLs).

Exit status: 0 when the throughput goal is met (or the experiment ran), 1 when
it fails, 2 for a refused argument or a tfmed error (one line).

Example:
    .venv/bin/python benchmarks/finetune.py --size 96 --images 512 --epochs 3
    .venv/bin/python benchmarks/finetune.py --experiment experiments/pneumonia_mnist_finetune.yaml
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from _common import at_least, one_line_errors  # noqa: E402
from _common import experiment as experiment_file  # noqa: E402
from tfmed.config import DataConfig, FinetuneConfig, PreprocessConfig, StageConfig  # noqa: E402

GOAL = 0.9


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def _images_per_second(times, n_images):
    steady = times[1:] if len(times) > 1 else times
    return n_images / min(steady)


def throughput(args) -> bool:
    from tfmed.training import freezing
    from tfmed.backbones import get_spec
    from tfmed.data.pipeline import make_dataset
    from tfmed.data.sources import load_source
    from tfmed.modes.finetune import FineTuner

    table = load_source(DataConfig()).split("train")
    train = table.subset(np.arange(min(args.images, len(table))))
    preprocess = PreprocessConfig(image_size=args.size)
    data = make_dataset(train, preprocess, training=True, batch_size=args.batch, cache=True, seed=0)
    config = FinetuneConfig(stages=[StageConfig(epochs=args.epochs, unfreeze=args.unfreeze)],
                            learning_rate=1e-4, batch_size=args.batch, early_stopping_patience=None)

    def tuner(run_dir=None):
        return FineTuner(args.backbone, "binary", 1, config=config, image_size=args.size,
                         weights=args.weights, run_dir=run_dir)

    def run_tfmed():
        timer = EpochTimer()
        with tempfile.TemporaryDirectory() as tmp:
            tuner(tmp if args.run_dir else None).fit(data, callbacks=[timer])
        return _images_per_second(timer.times, len(train))

    def run_bare():
        model = tuner().build()
        base = keras.Model(model.inputs, model.get_layer("head_pool").input)
        freezing.freeze(base)
        if args.unfreeze not in (0, "0"):
            freezing.unfreeze_top(base, get_spec(args.backbone).blocks, args.unfreeze)
        model.compile(keras.optimizers.Adam(1e-4), keras.losses.BinaryCrossentropy(),
                      metrics=[keras.metrics.AUC(name="auc")])
        timer = EpochTimer()
        model.fit(data, epochs=args.epochs, callbacks=[timer], verbose=0, shuffle=False)
        return _images_per_second(timer.times, len(train))

    bare, ours = [], []
    for _ in range(args.repeats):
        bare.append(run_bare())
        ours.append(run_tfmed())
    b, o = max(bare), max(ours)
    ratio = o / b
    print(f"backbone {args.backbone} ({args.weights or 'random'} weights), {args.size} px, batch {args.batch}, "
          f"{len(train)} images x {args.epochs} epochs, unfreeze {args.unfreeze!r}, "
          f"run_dir backups {'on' if args.run_dir else 'off'}, {os.cpu_count()} CPU cores")
    print(f"bare model.fit : {b:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"tfmed FineTuner: {o:8.1f} images/s  (runs: {', '.join(f'{v:.1f}' for v in ours)})")
    ok = ratio >= GOAL
    print(f"ratio {ratio:.3f}x (goal >= {GOAL}x): {'PASS' if ok else 'FAIL'}")
    return ok


def experiment(args, config) -> bool:
    """Train ``config`` (the experiment read from ``args.experiment``, mode finetune); print its validation AUC."""
    from sklearn.metrics import roc_auc_score

    from tfmed.data.pipeline import targets_array
    from tfmed.modes import FineTuner
    from tfmed.progress import configure_logging
    from tfmed.data.statistics import fit_inputs
    from tfmed.run.experiment import prepare_data

    configure_logging()
    start = time.perf_counter()
    table = prepare_data(config)
    train, val = table.split("train"), table.split("val")
    inputs = fit_inputs(config.preprocess, train, config.tta)
    run_dir = Path(args.run_dir_path) if args.run_dir_path else None
    tuner = FineTuner.from_experiment(config, train, run_dir).fit_tables(train, val, inputs)
    history = tuner.history_
    scores = tuner.predict_table(val, inputs)
    auc = roc_auc_score(targets_array(val).ravel() if table.task == "binary" else targets_array(val), scores)
    minutes = (time.perf_counter() - start) / 60
    print(f"{args.experiment}: {len(train)} train / {len(val)} val images at {config.preprocess.image_size} px, "
          f"{len(history['loss'])} epochs (stages start at {history['stage_boundaries']}), "
          f"{os.cpu_count()} CPU cores")
    print("val_auc per epoch: " + ", ".join(f"{v:.4f}" for v in history["val_auc"]))
    print(f"validation AUC (best epoch restored): {auc:.4f}; wall time {minutes:.1f} min")
    return True


@one_line_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet", type=lambda s: None if s == "none" else s,
                        help="'imagenet', 'none' or a weights file")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--unfreeze", default=2, type=lambda s: s if s == "all" else (float(s) if "." in s else int(s)))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run-dir", action="store_true", help="train FineTuner with a run_dir (epoch backups)")
    parser.add_argument("--experiment", help="an experiment YAML to train; prints its validation AUC")
    parser.add_argument("--run-dir-path", default=None, help="run_dir for --experiment (resumable)")
    args = parser.parse_args(argv)
    for option, value, why in (("--images", args.images, "the throughput is timed on that many training images"),
                               ("--batch", args.batch, "a batch holds images"),
                               ("--epochs", args.epochs, "the fastest epoch is kept"),
                               ("--repeats", args.repeats, "the fastest run is kept")):
        at_least(parser, option, value, 1, why)
    config = experiment_file(args.experiment) if args.experiment else None
    if config is not None:
        from tfmed.modes import FineTuner, get_mode

        if get_mode(config.model.mode) is not FineTuner:
            parser.error(f"--experiment {args.experiment}: model.mode is {config.model.mode!r}; this benchmark "
                         "needs 'finetune' (e.g. experiments/pneumonia_mnist_finetune.yaml)")
    ok = experiment(args, config) if config is not None else throughput(args)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
