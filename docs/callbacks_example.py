"""Plain ``model.fit`` with tfmed's callbacks on a tiny synthetic task.

Run:  python docs/callbacks_example.py [OUTPUT_FOLDER]

The model has two named convolution blocks ("block1_", "block2_") standing in
for a pretrained backbone (a tfmed.backbones entry works the same way, with
``get_spec(name).blocks`` as the block list). Training starts with the blocks
frozen; StagedUnfreeze opens the top block at epoch 2 and lowers the learning
rate; ClinicalMetrics writes val_auc for EarlyStopping and ModelCheckpoint;
ThresholdSelector stores the Youden threshold inside the saved model.

The positives carry a faint bright square (30 % of the images); the head starts
from a zero kernel and the training prevalence as its bias, so its first steps
learn the square rather than the class balance, and val_auc rises over the
epochs. ``keras.utils.set_random_seed`` makes a run repeatable.
"""
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np

from tfmed import training as tc
from tfmed.training import freezing

BLOCKS = ["block1_", "block2_"]


def make_data(n, rng):
    """Noise images; the 'positive' ones (about 30 %) have a brighter 16x16 centre square."""
    x = rng.normal(0.0, 1.0, (n, 32, 32, 1)).astype("float32")
    y = (rng.random(n) < 0.3).astype("float32")
    x[y == 1, 8:24, 8:24, :] += 1.0
    return x, y


def build_model(prevalence=0.5):
    """The tiny two-block model, blocks frozen, with a DecisionThreshold; the head's bias starts at the
    log-odds of ``prevalence`` (the training set's share of positives)."""
    inputs = keras.Input((32, 32, 1))
    x = inputs
    for b, filters in ((1, 4), (2, 8)):
        x = keras.layers.Conv2D(filters, 3, padding="same", name=f"block{b}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{b}_bn")(x)
        x = keras.layers.ReLU(name=f"block{b}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{b}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    bias = keras.initializers.Constant(float(np.log(prevalence / (1.0 - prevalence))))
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head_dense",
                                 kernel_initializer="zeros", bias_initializer=bias)(x)
    model = keras.Model(inputs, outputs, name="tiny")
    freezing.freeze(model, BLOCKS)               # stage 1: head only
    return tc.add_threshold_layer(model)         # the threshold will be saved with the model


def main(out_dir):
    """Train, checkpoint the best epoch by val_auc, reload it, and return a summary dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)               # Python, NumPy and TensorFlow: a repeatable run
    rng = np.random.default_rng(0)
    x_train, y_train = make_data(96, rng)
    x_val, y_val = make_data(48, rng)
    model = build_model(float(y_train.mean()))
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy")
    checkpoint = out_dir / "best.keras"
    callback_list = tc.ordered([
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=3, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_auc", mode="max", save_best_only=True),
        tc.StagedUnfreeze(BLOCKS, schedule=[(2, 1)], lr_factor=0.1),
        tc.ClinicalMetrics((x_val, y_val)),
        tc.ThresholdSelector((x_val, y_val), method="youden"),
    ])
    history = model.fit(x_train, y_train, batch_size=16, epochs=4, verbose=0, callbacks=callback_list)
    best = tc.load_model(checkpoint)             # keras.models.load_model after importing tfmed's layers
    summary = {"val_auc": history.history["val_auc"], "threshold": tc.get_threshold(best),
               "learning_rate": float(model.optimizer.learning_rate), "checkpoint": str(checkpoint)}
    print(summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="tfmed_callbacks_"))
