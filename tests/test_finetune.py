"""Staged fine-tuning: stages, frozen BatchNorm, learning rates, early stopping, save/load, kill and resume."""
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmed.backbones import BackboneSpec, get_spec, list_backbones, register
from tfmed.config import ConfigError, FinetuneConfig, StageConfig
from tfmed.files import read_arrays
from tfmed.modes.finetune import FineTuner, FinetuneError
from tfmed.training.losses import class_balance_weights

REAL_BACKBONE = "mobilenet_v2"  # a real keras.applications backbone for the stage / BatchNorm checks
BACKBONE = "tiny_test_cnn"  # a three-block conv net registered below: fast for the other tests
SIZE = 32


def _tiny_builder(inputs, include_top):
    x = inputs
    for i, filters in enumerate((8, 12, 16), start=1):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"tiny_b{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"tiny_b{i}_bn")(x)
        x = keras.layers.ReLU(name=f"tiny_b{i}_relu")(x)
    return x


def tiny_backbone() -> str:
    """Register (once) and name a three-block backbone for fast tests."""
    if BACKBONE not in list_backbones():
        register(BackboneSpec(name=BACKBONE, builder=_tiny_builder, preprocessing="none", default_size=SIZE,
                              taps={"early": "tiny_b1_relu", "middle": "tiny_b2_relu", "late": "tiny_b3_relu",
                                    "stage1": "tiny_b1_relu"},
                              blocks=["tiny_b1_", "tiny_b2_", "tiny_b3_"], imagenet_file="", imagenet_url="",
                              min_size=8))
    return BACKBONE


tiny_backbone()


def make_data(n=24, outputs=1, task="binary", seed=0):
    """Images 0-255 whose class shows as a bright square; targets shaped as the pipeline gives them."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 120, size=(n, SIZE, SIZE, 3)).astype(np.float32)
    if task == "multilabel":
        y = rng.integers(0, 2, size=(n, outputs)).astype(np.float32)
        for j in range(outputs):
            x[y[:, j] == 1, 4 * j:4 * j + 8, 4:12] += 120
        return np.minimum(x, 255.0), y   # overlapping squares stay on the 0-255 scale FineTuner checks
    labels = np.arange(n) % max(outputs, 2)
    for c in range(1, max(outputs, 2)):
        x[labels == c, 8 * c:8 * c + 8, 8:16] += 130
    y = labels[:, None].astype(np.float32) if task == "binary" else np.eye(outputs, dtype=np.float32)[labels]
    return x, y


def batched(x, y, batch=8):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def block_of(name, blocks):
    matches = [b for b in blocks if name.startswith(b)]
    return max(matches, key=len) if matches else None


class Snapshots(keras.callbacks.Callback):
    """Weights, BatchNorm statistics and learning rate at the start and end of every stage (fit call)."""

    def __init__(self):
        super().__init__()
        self.begin, self.end, self.rates = [], [], []

    def _weights(self):
        return {(layer.name, i): keras.ops.convert_to_numpy(w) for layer in self.model.layers
                for i, w in enumerate(layer.weights)}

    def on_train_begin(self, logs=None):
        self.begin.append(self._weights())
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    def on_train_end(self, logs=None):
        self.end.append(self._weights())


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("binary_run")
    x, y = make_data()
    config = FinetuneConfig(stages=[StageConfig(epochs=1, unfreeze=0), StageConfig(epochs=1, unfreeze=2)],
                            learning_rate=1e-2, batch_size=8, early_stopping_patience=None)
    tuner = FineTuner(REAL_BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None,
                      run_dir=run_dir, classes=["normal", "pneumonia"])
    snapshots = Snapshots()
    history = tuner.fit(batched(x, y), batched(x[:16], y[:16]), callbacks=[snapshots])
    return tuner, history, snapshots, run_dir, x


@pytest.mark.slow
def test_binary_history_stages_and_predictions(binary_run):
    tuner, history, _, run_dir, x = binary_run
    assert history["stage_boundaries"] == [0, 1]
    assert history["stage"] == [0, 1] and history["epoch"] == [0, 1]
    for key in ("loss", "val_loss", "auc", "val_auc"):
        assert len(history[key]) == 2 and np.all(np.isfinite(history[key])), key
    proba = tuner.predict(x)
    assert proba.shape == (len(x), 1)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(tuner.predict(tf.data.Dataset.from_tensor_slices(x).batch(5)), proba, atol=1e-6)
    assert (run_dir / "training_curves.png").stat().st_size > 1000


def test_stage_one_trains_head_only_and_stage_two_the_top_blocks(binary_run):
    tuner, _, snaps, _, _ = binary_run
    blocks = get_spec(REAL_BACKBONE).blocks
    top = set(blocks[-2:])
    bn_names = {layer.name for layer in tuner.model_.layers
                if isinstance(layer, keras.layers.BatchNormalization)}
    changed_stage1 = {key[0] for key in snaps.begin[0] if not np.array_equal(snaps.begin[0][key], snaps.end[0][key])}
    assert changed_stage1 == {"predictions"}
    changed = {}
    for key, before in snaps.begin[1].items():
        changed[key] = not np.array_equal(before, snaps.end[1][key])
    top_conv = [k for k in changed if block_of(k[0], blocks) in top and k[0] not in bn_names]
    low_conv = [k for k in changed if block_of(k[0], blocks) not in top and k[0] not in bn_names
                and k[0] != "predictions"]
    assert top_conv and all(changed[k] for k in top_conv), "every unfrozen top-block weight must train"
    assert low_conv and not any(changed[k] for k in low_conv), "frozen blocks must not change"
    bn_keys = [k for k in changed if k[0] in bn_names]
    assert bn_keys and not any(changed[k] for k in bn_keys), "BatchNorm statistics must stay fixed"
    assert changed[("predictions", 0)]


def test_stage_two_learning_rate_is_a_tenth(binary_run):
    tuner, history, snaps, _, _ = binary_run
    assert snaps.rates[0] == pytest.approx(1e-2)
    assert snaps.rates[1] == pytest.approx(1e-3)
    assert history["learning_rate"] == pytest.approx([1e-2, 1e-3])


def test_save_and_load_give_the_same_predictions(binary_run, tmp_path):
    tuner, _, _, _, x = binary_run
    tuner.save(tmp_path / "model")
    spec = json.loads((tmp_path / "model" / "finetune.json").read_text())
    assert spec["backbone"] == REAL_BACKBONE and spec["classes"] == ["normal", "pneumonia"]
    assert spec["image_size"] == SIZE
    assert "threshold" not in spec  # thresholds live in the run's artifact only (tfmed_model.json)
    loaded = FineTuner.load(tmp_path / "model")
    assert loaded.task == "binary"
    np.testing.assert_allclose(loaded.predict(x), tuner.predict(x), atol=1e-6)
    unknown_size = tf.data.Dataset.from_tensor_slices(x).filter(lambda image: True).batch(5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "input ran out of data" at the end of a dataset of unknown size
        np.testing.assert_allclose(loaded.predict(unknown_size), tuner.predict(x), atol=1e-6)


def test_fitting_arrays_twice_with_one_seed_gives_one_model():
    x, y = make_data(n=24)
    config = FinetuneConfig(stages=[StageConfig(epochs=2)], batch_size=8, early_stopping_patience=None)
    scores = []
    for other_seed in (123, 7):  # whatever seeded the process before (a notebook's earlier cell, say)
        keras.utils.set_random_seed(other_seed)
        tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None, seed=0)
        tuner.fit((x, y))
        scores.append(tuner.predict(x))
    np.testing.assert_array_equal(scores[0], scores[1])


@pytest.mark.parametrize("task, outputs", [("binary", 1), ("multilabel", 3)])
def test_a_weighted_bce_model_loads_again(tmp_path, task, outputs):
    x, y = make_data(n=16, outputs=outputs, task=task)
    pos, neg = class_balance_weights(y)
    config = FinetuneConfig(stages=[StageConfig(epochs=1)], batch_size=8, loss="weighted_bce")
    tuner = FineTuner(BACKBONE, task, outputs, config=config, image_size=SIZE, weights=None,
                      pos_weight=pos, neg_weight=neg)
    tuner.fit((x, y))
    tuner.save(tmp_path / "model")  # the loss's weights are saved with it: weighted_bce cannot be built without
    loaded = FineTuner.load(tmp_path / "model")
    np.testing.assert_allclose(loaded.pos_weight, pos)
    np.testing.assert_allclose(loaded.neg_weight, neg)
    np.testing.assert_allclose(loaded.predict(x), tuner.predict(x), atol=1e-6)
    spec_file = tmp_path / "model" / "finetune.json"
    spec = json.loads(spec_file.read_text())
    del spec["loss_weights"]  # a file saved before they were kept
    spec_file.write_text(json.dumps(spec))
    np.testing.assert_allclose(FineTuner.load(tmp_path / "model").predict(x), tuner.predict(x), atol=1e-6)


def test_multilabel_fit_predict_shapes():
    x, y = make_data(n=16, outputs=3, task="multilabel")
    config = FinetuneConfig(stages=[StageConfig(epochs=1)], batch_size=8, schedule="cosine",
                            optimizer="sgd", weight_decay=1e-4, pooling="max")
    tuner = FineTuner(BACKBONE, "multilabel", 3, config=config, image_size=SIZE, weights=None)
    history = tuner.fit((x, y), (x, y))
    assert len(history["loss"]) == 1 and np.isfinite(history["val_auc"][0])
    proba = tuner.predict(x)
    assert proba.shape == (16, 3) and np.all((proba >= 0) & (proba <= 1))


class ScriptedAUC(keras.callbacks.Callback):
    """Overrides val_auc with a fixed sequence and keeps each epoch's weights."""

    def __init__(self, values):
        super().__init__()
        self.values, self.weights = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_auc"] = self.values[epoch]
        self.weights.append([np.array(w) for w in self.model.get_weights()])


class RateTrainedAt(ScriptedAUC):
    """ScriptedAUC that also keeps the learning rate each epoch's first batch trains at."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.rates = getattr(self, "rates", []) + [float(self.model.optimizer.learning_rate)]


def test_the_history_gives_the_rate_each_epoch_trained_at_under_a_plateau_schedule():
    x, y = make_data(n=16)
    config = FinetuneConfig(stages=[StageConfig(epochs=4)], learning_rate=1e-2, batch_size=8, schedule="plateau",
                            early_stopping_patience=None)
    tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None)
    probe = RateTrainedAt([0.5, 0.4, 0.3, 0.2])  # no gain after epoch 0: the rate drops at each epoch's end
    history = tuner.fit((x, y), (x, y), callbacks=[probe])
    np.testing.assert_allclose(probe.rates, [1e-2, 1e-2, 2e-3, 4e-4], rtol=1e-5)
    np.testing.assert_allclose(history["learning_rate"], probe.rates, rtol=1e-5)


def test_early_stopping_restores_the_best_epoch():
    x, y = make_data(n=16)
    config = FinetuneConfig(stages=[StageConfig(epochs=5)], learning_rate=5e-2, batch_size=8,
                            early_stopping_patience=1)
    tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None)
    scripted = ScriptedAUC([0.5, 0.9, 0.6, 0.95, 0.99])
    history = tuner.fit((x, y), (x, y), callbacks=[scripted])
    assert history["val_auc"] == [0.5, 0.9, 0.6]  # stopped one epoch after the best
    final = tuner.model_.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(final, scripted.weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(final, scripted.weights[2]))


RESUME_SCRIPT = textwrap.dedent("""
    import os, sys
    import keras, numpy as np
    sys.path.insert(0, {tests!r})
    from test_finetune import make_data, BACKBONE, SIZE, resume_config  # registers the tiny backbone
    from tfmed.modes.finetune import FineTuner

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                np.savez({weights!r}, *self.model.get_weights())
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                os._exit(3)

    x, y = make_data()
    tuner = FineTuner(BACKBONE, "binary", 1, config=resume_config(), image_size=SIZE, weights=None,
                      run_dir={run_dir!r})
    tuner.fit((x, y), (x[:16], y[:16]), callbacks=[Kill()])
    sys.exit(0)
""")


def resume_config():
    return FinetuneConfig(stages=[StageConfig(epochs=1), StageConfig(epochs=2, unfreeze=1)], batch_size=8)


class EpochLog(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.fits, self.epochs, self.first_weights = 0, [], None

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_weights is None:
            self.first_weights = [np.array(w) for w in self.model.get_weights()]
        self.epochs.append(epoch)


@pytest.mark.slow
def test_killed_run_resumes_in_stage_two_at_the_next_epoch(tmp_path):
    run_dir, weights = tmp_path / "run", tmp_path / "epoch1.npz"
    script = RESUME_SCRIPT.format(tests=os.path.dirname(__file__), weights=str(weights), run_dir=str(run_dir))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-3000:]
    x, y = make_data()
    tuner = FineTuner(BACKBONE, "binary", 1, config=resume_config(), image_size=SIZE, weights=None,
                      run_dir=run_dir)
    log = EpochLog()
    history = tuner.fit((x, y), (x[:16], y[:16]), callbacks=[log])
    assert log.fits == 1, "stage 1 finished before the kill and must not run again"
    assert log.epochs == [2], "training must resume at epoch 2 (in stage 2), not restart"
    with np.load(weights) as saved:
        expected = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    assert all(np.array_equal(a, b) for a, b in zip(log.first_weights, expected))
    assert history["epoch"] == [0, 1, 2] and history["stage_boundaries"] == [0, 1]
    assert history["stage"] == [0, 1, 1] and len(history["loss"]) == 3
    # A finished run is not trained again.
    again = FineTuner(BACKBONE, "binary", 1, config=resume_config(), image_size=SIZE, weights=None,
                      run_dir=run_dir)
    log2 = EpochLog()
    assert again.fit((x, y), (x[:16], y[:16]), callbacks=[log2])["epoch"] == [0, 1, 2]
    assert log2.fits == 0
    np.testing.assert_allclose(again.predict(x), tuner.predict(x), atol=1e-6)
    # Resuming with other settings is refused, naming what differs.
    other = FineTuner(BACKBONE, "binary", 1, config=FinetuneConfig(stages=[StageConfig(epochs=3)]),
                      image_size=SIZE, weights=None, run_dir=run_dir)
    with pytest.raises(FinetuneError, match="different stages"):
        other.fit((x, y), (x[:16], y[:16]))


def test_min_steps_lengthens_a_stage_on_a_small_training_set():
    x, y = make_data(n=16)
    config = FinetuneConfig(stages=[StageConfig(epochs=1, unfreeze=0, min_steps=5),
                                    StageConfig(epochs=2, unfreeze=2, min_steps=2)],
                            learning_rate=1e-2, batch_size=8, early_stopping_patience=None)
    tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None)
    history = tuner.fit(batched(x, y))  # 2 batches an epoch: stage 1 needs 3 epochs for 5 steps
    assert history["stage"] == [0, 0, 0, 1, 1]  # stage 2 already reaches 2 steps in its 2 epochs
    assert history["stage_boundaries"] == [0, 3]
    # an epoch of unknown length cannot be counted: a clear error, not a silent `epochs`
    unknown = batched(x, y).filter(lambda images, targets: True)
    with pytest.raises(FinetuneError, match=r"stages\[0\]\.min_steps needs a training dataset of known, "
                                            r"finite length .* unknown"):
        FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None).fit(unknown)
    with pytest.raises(ConfigError, match=r"model.finetune.stages\[1\]\.min_steps is 0; it must be an "
                                          r"integer >= 1"):
        FinetuneConfig(stages=[StageConfig(epochs=1), StageConfig(epochs=1, min_steps=0)])


def test_early_stopping_never_cuts_a_stage_below_its_min_steps():
    x, y = make_data(n=16)
    val = batched(*make_data(n=16, seed=1))

    def epochs_run(stage):
        config = FinetuneConfig(stages=[stage], learning_rate=1e-12, batch_size=8, early_stopping_patience=1)
        tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None)
        return len(tuner.fit(batched(x, y), val)["epoch"])

    # at a learning rate of about 0 the validation AUC never improves, so early stopping
    # ends a plain 3-epoch stage after 2 epochs
    assert epochs_run(StageConfig(epochs=3, unfreeze=0)) == 2
    # but not a stage that needs all 3 epochs (2 batches each) to reach min_steps
    assert epochs_run(StageConfig(epochs=1, unfreeze=0, min_steps=5)) == 3


def test_a_fit_depends_on_its_seed_not_on_what_ran_before():
    """An ensemble member or k-fold model is fitted after others of other seeds: that must not change it."""
    import pandas as pd
    from tfmed.config import AugmentConfig, PreprocessConfig
    from tfmed.data.pipeline import ImageInputs
    from tfmed.data.table import ImageTable

    x, y = make_data(n=24)
    frame = pd.DataFrame({"image": [f"mem#{i}" for i in range(24)], "array_index": np.arange(24),
                          "label": y.ravel().astype(int)})
    table = ImageTable(frame, ["normal", "pneumonia"], "binary", images=x.astype(np.uint8))
    inputs = ImageInputs(PreprocessConfig(image_size=SIZE))
    config = FinetuneConfig(stages=[StageConfig(epochs=2, unfreeze=0)], learning_rate=1e-2, batch_size=8,
                            early_stopping_patience=None)

    def scores(seed, seed_before):
        keras.utils.set_random_seed(seed_before)  # as left by a member of that seed fitted just before
        tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None, seed=seed,
                          augment=AugmentConfig(rotation_degrees=10, brightness=0.1))
        return tuner.fit_tables(table, None, inputs).predict_table(table, inputs)

    first = scores(0, seed_before=1)
    np.testing.assert_array_equal(scores(0, seed_before=2), first)
    assert not np.allclose(scores(3, seed_before=1), first)  # the seed does reach the fit


def test_bad_settings_and_data_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'"):
        FineTuner("resnet9000", "binary", 1)
    with pytest.raises(FinetuneError, match="task is 'regression'"):
        FineTuner(BACKBONE, "regression", 1)
    with pytest.raises(FinetuneError, match="binary task has one sigmoid output; num_outputs is 2"):
        FineTuner(BACKBONE, "binary", 2)
    for task, outputs, weights in (("binary", 1, [1.0, 2.0]), ("multiclass", 3, [1.0, 2.0]),
                                   ("multiclass", 2, [1.0, float("inf")])):
        with pytest.raises(FinetuneError, match=r"class_weights .* must give one finite weight > 0 per class of a "
                                                 "multiclass model"):
            FineTuner(BACKBONE, task, outputs, class_weights=weights)
    # the settings themselves are checked by the config, built in Python as from YAML
    with pytest.raises(ConfigError, match=r"model.finetune.stages\[1\]\.unfreeze is 'most'"):
        FinetuneConfig(stages=[StageConfig(epochs=1), StageConfig(epochs=1, unfreeze="most")])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.epochs is 0"):
        FinetuneConfig(stages=[StageConfig(epochs=0)])
    with pytest.raises(ConfigError, match="model.finetune.optimizer is 'rmsprop'; allowed: adam, sgd"):
        FinetuneConfig(optimizer="rmsprop")
    edited = FinetuneConfig()
    edited.dropout = 1.5  # changed after it was built: FineTuner checks again
    with pytest.raises(ConfigError, match=r"model.finetune.dropout is 1.5; it must be in \[0, 1\)"):
        FineTuner(BACKBONE, "binary", 1, config=edited)
    with pytest.raises(ValueError, match="categorical"):
        FineTuner(BACKBONE, "multilabel", 2, config=FinetuneConfig(loss="categorical"))
    tuner = FineTuner(BACKBONE, "binary", 1, image_size=SIZE, weights=None)
    x, y = make_data(n=8)
    with pytest.raises(FinetuneError, match=r"train_ds yields images of shape \(None, 16, 16, 3\)"):
        tuner.fit(batched(x[:, :16, :16], y))
    with pytest.raises(FinetuneError, match=r"val_ds yields targets of shape \(None, 2\)"):
        tuner.fit(batched(x, y), batched(x, np.concatenate([y, y], axis=1)))
    with pytest.raises(FinetuneError, match="8 images but 4 targets"):
        tuner.fit((x, y[:4]))
    with pytest.raises(FinetuneError, match="not trained yet"):
        tuner.predict(x)
    with pytest.raises(FinetuneError, match="finetune.json not found|model.keras not found"):
        FineTuner.load(tmp_path)


@pytest.mark.parametrize("unfreeze, words", [
    (4, ["model.finetune.stages[1].unfreeze is 4 for backbone tiny_test_cnn", "the backbone has 3", "use 0..3"]),
])
def test_an_unfreeze_the_backbone_cannot_take_is_refused_before_data(unfreeze, words):
    from tfmed.config import ExperimentConfig

    stages = [{"epochs": 1}, {"epochs": 1, "unfreeze": unfreeze}]
    config = ExperimentConfig.from_dict({"model": {"mode": "finetune", "backbone": BACKBONE, "weights": None,
                                                   "finetune": {"stages": stages}}, "preprocess": {"image_size": SIZE}})
    with pytest.raises(ConfigError) as info:
        FineTuner.check_before_data(config)
    assert all(word in str(info.value) for word in words), str(info.value)
    for fine in (3, "all", 1.0, 0.5):  # what the backbone can take passes
        config.model.finetune.stages[1].unfreeze = fine
        FineTuner.check_before_data(config)


def test_a_balance_target_that_does_not_fit_the_groups_is_refused_before_training():
    import pandas as pd

    from tfmed.config import ExperimentConfig
    from tfmed.data.table import ImageTable

    frame = pd.DataFrame({"image": [f"i{k}" for k in range(12)], "label": [0, 1] * 6,
                          "split": ["train"] * 8 + ["val"] * 2 + ["test"] * 2,
                          "patient_id": [f"p{k}" for k in range(12)]})
    table = ImageTable(frame, ["normal", "sick"], "binary")
    values = {"name": "bal", "model": {"mode": "finetune", "backbone": BACKBONE, "weights": None},
              "balance": {"method": "oversample", "target": [0.3, 0.3, 0.4]}}
    with pytest.raises(ConfigError, match=r"bal: balance.target has 3 values but the table has 2 balance groups "
                                          r"\['normal', 'sick'\]; give one share per group"):
        FineTuner.check_experiment(ExperimentConfig.from_dict(values), table)
    values["balance"]["target"] = [0.4, 0.6]
    FineTuner.check_experiment(ExperimentConfig.from_dict(values), table)


@pytest.mark.parametrize("task, outputs, targets, message", [
    ("binary", 1, lambda y: y + 1, r"train_ds yields a batch of targets the binary model cannot train on \(.*2.*\); "
                                   r"binary targets must be 0 or 1"),
    ("binary", 1, lambda y: np.where(np.arange(8)[:, None] == 6, np.nan, y), r"\(.*nan.*\).*NaN is a missing label"),
    ("multiclass", 3, lambda y: np.ones((8, 3)), r"multiclass targets must be rows of 3 values in \[0, 1\] that sum"),
    ("multilabel", 2, lambda y: np.concatenate([y, 2 * y], axis=1), r"multilabel targets must be in \[0, 1\], with "
                                                                    r"-1 for an unknown label"),
], ids=["binary_1_2", "binary_nan", "not_one_hot", "multilabel_2"])
def test_dataset_targets_the_task_cannot_train_on_stop_training_in_one_line(task, outputs, targets, message):
    x, y = make_data(n=8)
    good = np.eye(outputs)[y[:, 0].astype(int) % outputs] if task != "binary" else y
    tuner = FineTuner(BACKBONE, task, outputs, image_size=SIZE, weights=None)
    with pytest.raises(FinetuneError, match=message):
        tuner.fit(batched(x, targets(y).astype(np.float32)))
    with pytest.raises(FinetuneError, match=message.replace("train_ds", "val_ds")):
        tuner.fit(batched(x, good.astype(np.float32)), batched(x, targets(y).astype(np.float32)))


def test_array_training_targets_of_one_class_are_refused():
    x, y = make_data(n=8)
    with pytest.raises(FinetuneError, match=r"train_ds: every target is 1, one class only; a binary model needs "
                                            "training images of at least two classes"):
        FineTuner(BACKBONE, "binary", 1, image_size=SIZE, weights=None).fit((x, np.ones_like(y)), (x, y))
    with pytest.raises(FinetuneError, match="every target is 2, one class only; a multiclass model"):
        FineTuner(BACKBONE, "multiclass", 3, image_size=SIZE, weights=None).fit((x, np.full(8, 2)))


def test_soft_and_unknown_dataset_targets_train():
    x, y = make_data(n=8)
    soft = np.where(y == 1, 0.9, 0.1).astype(np.float32)  # smoothed labels, as a user's own pipeline may give
    history = FineTuner(BACKBONE, "binary", 1, image_size=SIZE, weights=None).fit(batched(x, soft))
    assert np.isfinite(history["loss"]).all()
    known = np.concatenate([y, np.where(np.arange(8)[:, None] % 3 == 0, -1.0, 1 - y)], axis=1).astype(np.float32)
    history = FineTuner(BACKBONE, "multilabel", 2, image_size=SIZE, weights=None).fit(batched(x, known))
    assert np.isfinite(history["loss"]).all()


@pytest.mark.parametrize("task, outputs, targets, message", [
    ("binary", 1, lambda y: y + 1, r"train_ds: targets \[2\] in row\(s\) \[1, 3, 5, 7\] are not allowed; "
                                   r"binary targets must be 0 or 1"),
    ("binary", 1, lambda y: np.where(np.arange(8)[:, None] == 6, np.nan, y),
     r"train_ds: targets \[nan\] in row\(s\) \[6\] .*0 or 1 \(NaN: a missing label"),
    ("binary", 1, lambda y: np.where(y == 1, "pneumonia", "normal"),
     r"train_ds: targets must be numbers, got <U9 values such as \['normal'\] in row\(s\) \[0, 1, 2, 3, 4, 5, 6, 7\]"),
    ("multiclass", 3, lambda y: np.array([0, 1, 3, 2, 0, 1, 5, 2]),
     r"targets \[3, 5\] in row\(s\) \[2, 6\] are not classes of the 3-class model; multiclass targets must be "
     r"class indices 0\.\.2"),
    ("multiclass", 3, lambda y: np.ones((8, 3)), r"one-hot target rows \[0, 1, 2, 3, 4, 5, 6, 7\] do not have "
                                               r"exactly one 1"),
    ("multilabel", 2, lambda y: np.concatenate([y, 2 * y], axis=1),
     r"targets \[2\] in row\(s\) \[1, 3, 5, 7\] are not allowed; multilabel targets must be 0/1, with -1 for an "
     r"unknown label"),
], ids=["binary_1_2", "binary_nan", "strings", "class_out_of_range", "not_one_hot", "multilabel_2"])
def test_array_targets_the_task_cannot_train_on_are_refused_naming_rows(task, outputs, targets, message):
    x, y = make_data(n=8)
    tuner = FineTuner(BACKBONE, task, outputs, image_size=SIZE, weights=None)
    with pytest.raises(FinetuneError, match=message):
        tuner.fit((x, targets(y)))
    with pytest.raises(FinetuneError, match=message.replace("train_ds", "val_ds")):
        tuner.fit((x, np.eye(outputs)[y[:, 0].astype(int) % outputs] if task != "binary" else y), (x, targets(y)))


def test_multiclass_class_indices_and_multilabel_unknowns_train():
    x, y = make_data(n=16, outputs=3, task="multiclass")
    config = FinetuneConfig(stages=[StageConfig(epochs=1)], batch_size=8)
    tuner = FineTuner(BACKBONE, "multiclass", 3, config=config, image_size=SIZE, weights=None)
    history = tuner.fit((x, y.argmax(axis=1)), (x, y.argmax(axis=1)))
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["val_auc"][0])
    x, y = make_data(n=16, outputs=2, task="multilabel")
    y[::5, 1] = -1   # unknown labels
    tuner = FineTuner(BACKBONE, "multilabel", 2, config=config, image_size=SIZE, weights=None)
    assert np.isfinite(tuner.fit((x, y))["loss"][0])


def test_image_arrays_on_another_scale_than_0_255_are_refused(binary_run):
    from tfmed.backbones.features import PixelRangeError

    x, y = make_data(n=8)
    tuner = FineTuner(BACKBONE, "binary", 1, image_size=SIZE, weights=None)
    with pytest.raises(PixelRangeError, match=r"train_ds images holds values from .* only: images scaled to 0-1"):
        tuner.fit((x / 255.0, y))
    with pytest.raises(PixelRangeError, match=r"val_ds images holds values from .*16-bit pixels"):
        tuner.fit((x, y), (x * 300.0, y))
    trained = binary_run[0]
    with pytest.raises(PixelRangeError, match=r"predict images holds values .*multiply by 255"):
        trained.predict(x / 255.0)
    assert trained.predict(x).shape == (8, 1)


def test_image_arrays_grey_one_image_or_another_size(binary_run):
    """Arrays are read as FeatureSVM reads them: grey batches (N, S, S) or (N, S, S, 1) as R = G = B; one image
    without its batch axis is refused with the fix, not read as S images; another size is named."""
    x, y = make_data(n=8)
    grey = x[..., :1]
    trained = binary_run[0]
    as_rgb = trained.predict(np.repeat(grey, 3, axis=-1))
    np.testing.assert_allclose(trained.predict(grey), as_rgb, atol=1e-6)
    np.testing.assert_allclose(trained.predict(grey[..., 0]), as_rgb, atol=1e-6)
    tuner = FineTuner(BACKBONE, "binary", 1, image_size=SIZE, weights=None,
                      config=FinetuneConfig(stages=[StageConfig(epochs=1)], batch_size=8))
    assert np.isfinite(tuner.fit((grey[..., 0], y), (grey, y))["loss"][0])
    with pytest.raises(FinetuneError, match=r"train_ds images must be a batch \(N, 32, 32, 3\), got shape "
                                            r"\(32, 32, 3\): one image; add the batch axis \(X\[None\]\)"):
        tuner.fit((x[0], y[:1]))
    with pytest.raises(FinetuneError, match=r"predict images must be a batch .*one image; add the batch axis"):
        trained.predict(x[0])
    with pytest.raises(FinetuneError, match=r"predict images have shape \(8, 16, 16, 3\); the model takes "
                                            r"\(N, 32, 32, 3\) .*resize them to 32 x 32"):
        trained.predict(x[:, :16, :16])
    with pytest.raises(FinetuneError, match=r"val_ds images have shape \(8, 32, 32, 2\)"):
        tuner.fit((x, y), (x[..., :2], y))


def test_image_arrays_with_nan_pixels_or_no_images_are_refused_up_front(binary_run):
    """Not trained into a model of NaN weights (or stopped as 'diverged' an epoch later), nor failing deep in
    tf.data: the rows are named before anything runs."""
    from tfmed.backbones.features import FeatureInputError

    x, y = make_data(n=8)
    spoilt = x.copy()
    spoilt[3, 0, 0, 0] = np.nan
    tuner = FineTuner(BACKBONE, "binary", 1, image_size=SIZE, weights=None)
    with pytest.raises(FeatureInputError, match="train_ds images rows 3 contain NaN or infinite pixels"):
        tuner.fit((spoilt, y))
    with pytest.raises(FeatureInputError, match="val_ds images rows 3 contain NaN"):
        tuner.fit((x, y), (spoilt, y))
    with pytest.raises(FeatureInputError, match=r"train_ds images holds no images \(shape \(0, "):
        tuner.fit((x[:0], y[:0]))
    assert tuner.model_ is None  # nothing was trained
    with pytest.raises(FeatureInputError, match="predict images rows 3 contain NaN"):
        binary_run[0].predict(spoilt)


@pytest.mark.parametrize("monitor, watched", [("val_auc", "loss"), ("auc", "auc"), ("loss", "loss")])
def test_without_validation_data_a_training_figure_stays_watched_and_a_val_one_becomes_the_loss(
        monitor, watched, capsys):
    from tfmed.progress import configure_logging

    configure_logging()
    config = FinetuneConfig(stages=[StageConfig(epochs=1)], monitor=monitor, early_stopping_patience=2)
    tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None)
    stopping = [c for c in tuner._stage_callbacks(0, 1, 0, 1e-3, None, [], 0) if hasattr(c, "patience")]
    assert [c.monitor for c in stopping] == [watched]
    assert ("watch the training loss, not" in capsys.readouterr().out) == (monitor == "val_auc")


class StopAt(keras.callbacks.Callback):
    """Stops a fit as Ctrl-C would, as epoch ``epoch`` begins."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def cut_short(path):
    """Cut a file to half its length, as a kill does while the file is written in place."""
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("name", ["backup/latest.weights.h5", "backup/training_metadata.json", "best_weights.npz"])
def test_a_cut_short_backup_or_best_epoch_file_restarts_its_stage_instead_of_failing(tmp_path, name, caplog,
                                                                                     monkeypatch):
    run_dir, (x, y) = tmp_path / "run", make_data()

    def tuner():
        config = FinetuneConfig(stages=[StageConfig(epochs=1), StageConfig(epochs=3, unfreeze=1)], batch_size=8,
                                early_stopping_patience=3)
        return FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None, run_dir=run_dir)

    with pytest.raises(KeyboardInterrupt):  # stopped as stage 2's third epoch begins: two epochs backed up
        tuner().fit((x, y), (x[:16], y[:16]), callbacks=[StopAt(3)])
    bad = run_dir / "finetune" / "stage_2" / name
    cut_short(bad)
    caplog.set_level("INFO", logger="tfmed")
    monkeypatch.setattr(logging.getLogger("tfmed"), "propagate", True)  # configure_logging (the CLI) stops it
    log = EpochLog()
    history = tuner().fit((x, y), (x[:16], y[:16]), callbacks=[log])
    assert log.epochs == [1, 2, 3], "stage 2 starts again from stage 1's end; stage 1 is not trained again"
    assert history["epoch"] == [0, 1, 2, 3] and history["stage"] == [0, 1, 1, 1]
    lines = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(lines) == 1 and "cannot be read" in lines[0], lines
    assert "stage 2 starts again from the end of stage 1" in lines[0]
    assert not (run_dir / "finetune" / "stage_2" / "backup").exists()  # a finished stage keeps no backup


@pytest.mark.parametrize("which", ["backup", "best"])
def test_a_write_that_fails_midway_leaves_the_previous_backup_or_best_epoch_file_whole(tmp_path, which,
                                                                                       monkeypatch):
    run_dir, (x, y) = tmp_path / "run", make_data(n=16)
    config = FinetuneConfig(stages=[StageConfig(epochs=3)], batch_size=8, early_stopping_patience=3)
    tuner = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None, run_dir=run_dir)

    def stop_midway(target, *args, **kwargs):
        open(target, "wb").write(b"\x89HDF\r\n cut short")  # a few bytes written, then Ctrl-C
        raise KeyboardInterrupt

    class FailSecondWrite(ScriptedAUC):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch == 1 and which == "best":  # epoch 1 is the best so far: its weights are saved
                monkeypatch.setattr(np, "savez", stop_midway)
            elif epoch == 1:
                monkeypatch.setattr(type(self.model), "save_weights",
                                    lambda model, filepath, **kwargs: stop_midway(filepath))

    scripted = FailSecondWrite([0.5, 0.9, 0.95] if which == "best" else [0.9, 0.5, 0.95])
    with pytest.raises(KeyboardInterrupt):
        tuner.fit((x, y), (x, y), callbacks=[scripted])
    monkeypatch.undo()
    stage_dir = run_dir / "finetune" / "stage_1"
    if which == "best":
        kept = read_arrays(stage_dir / "best_weights.npz")
        kept = [kept[f"w{i}"] for i in range(len(kept))]
    else:
        fresh = FineTuner(BACKBONE, "binary", 1, config=config, image_size=SIZE, weights=None)
        fresh.build().load_weights(stage_dir / "backup" / "latest.weights.h5")
        kept = fresh.model_.get_weights()
        assert json.loads((stage_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert len(kept) == len(scripted.weights[0])
    assert all(np.array_equal(a, b) for a, b in zip(kept, scripted.weights[0])), "epoch 0's file is kept whole"
    assert not list(run_dir.rglob(".tmp-*")), "no temporary file is left behind"
