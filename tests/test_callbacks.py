"""tfmed.training.callbacks: clinical metrics vs scikit-learn, threshold persistence, in-fit unfreezing."""
import ast
import gc
import logging
import runpy
import subprocess
import sys
import textwrap
import warnings
import weakref
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from tfmed import training as tc
from tfmed.training import callbacks as training_callbacks
from tfmed.training import freezing

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ["block1_", "block2_"]


def brute_force_youden(y, s):
    """Independent reference: try every score as threshold (positive when s >= t)."""
    best = None
    for t in np.unique(s):
        pred = s >= t
        sens = (pred & (y == 1)).sum() / (y == 1).sum()
        spec = (~pred & (y == 0)).sum() / (y == 0).sum()
        if best is None or sens + spec - 1 > best[0] + 1e-12:
            best = (sens + spec - 1, t, sens, spec)
    return best


def test_clinical_scores_binary_match_sklearn_and_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random(60) > 0.6).astype(int)
    s = np.clip(y * 0.3 + rng.random(60) * 0.7, 0, 1)
    scores = tc.clinical_scores(y, s[:, None])
    assert scores["auc"] == pytest.approx(roc_auc_score(y, s))
    j, t, sens, spec = brute_force_youden(y, s)
    assert scores["sensitivity"] + scores["specificity"] - 1 == pytest.approx(j)
    assert scores["youden_threshold"] == pytest.approx(t)
    assert (scores["sensitivity"], scores["specificity"]) == pytest.approx((sens, spec))


def test_clinical_scores_multilabel_and_multiclass_use_macro_auc():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 3)) > 0.5).astype(int)
    s = np.clip(y * 0.2 + rng.random((50, 3)), 0, 1)
    scores = tc.clinical_scores(y, s, task="multilabel")
    assert scores["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, i], s[:, i]) for i in range(3)]))
    refs = [brute_force_youden(y[:, i], s[:, i]) for i in range(3)]
    assert scores["sensitivity"] == pytest.approx(np.mean([r[2] for r in refs]))
    labels = rng.integers(0, 3, 50)
    probs = rng.dirichlet([1, 1, 1], 50)
    probs[np.arange(50), labels] += 0.5
    probs /= probs.sum(1, keepdims=True)
    scores = tc.clinical_scores(np.eye(3)[labels], probs)
    assert scores["task"] == "multiclass"
    assert scores["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


@pytest.mark.parametrize("method,target", [("sensitivity", 0.9), ("specificity", 0.8)])
def test_select_threshold_reaches_target(method, target):
    rng = np.random.default_rng(2)
    y = (rng.random(80) > 0.5).astype(int)
    s = np.clip(y * 0.25 + rng.random(80), 0, 1.3)
    t = tc.select_threshold(y, s, method, target)
    sens = ((s >= t) & (y == 1)).sum() / y.sum()
    spec = ((s < t) & (y == 0)).sum() / (1 - y).sum()
    candidates = np.unique(s)
    if method == "sensitivity":
        assert sens >= target
        # no higher threshold still reaches the target
        higher = candidates[candidates > t]
        assert all(((s >= h) & (y == 1)).sum() / y.sum() < target for h in higher)
    else:
        assert spec >= target
        lower = candidates[candidates < t]
        assert all(((s < lo) & (y == 0)).sum() / (1 - y).sum() < target for lo in lower)


def tiny_model():
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for b in (1, 2):
        x = keras.layers.Conv2D(3, 3, padding="same", name=f"block{b}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{b}_bn")(x)
        x = keras.layers.ReLU(name=f"block{b}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head_dense")(x))


def tiny_data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    y = np.array([0, 1] * (n // 2), dtype="float32")
    x[y == 1] += 0.7
    return x, y


def test_clinical_metrics_in_fit_feeds_early_stopping_and_matches_sklearn():
    x, y = tiny_data()
    model = tiny_model()
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    # A dataset reshuffled on every pass: predictions and labels must come from one pass.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(32, seed=1).batch(8)
    metrics = tc.ClinicalMetrics(dataset)
    stop = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # EarlyStopping warns when val_auc is missing
        history = model.fit(x, y, epochs=2, verbose=0, callbacks=tc.ordered([stop, metrics]))
    expected = roc_auc_score(y, model.predict(x, verbose=0)[:, 0])
    assert history.history["val_auc"][-1] == pytest.approx(expected, abs=1e-6)
    for key in ("val_sensitivity", "val_specificity", "val_youden_threshold"):
        assert len(history.history[key]) == len(history.history["loss"])


def test_validation_dataset_is_scored_by_one_compiled_pass_per_model():
    x, y = tiny_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(12)  # 32 rows: a partial last batch
    metrics = tc.ClinicalMetrics(dataset)
    selector = tc.ThresholdSelector(dataset, every_epoch_store=False)
    # the same callbacks for two models, then new ones for a third (as each stage of a fine-tune
    # and each fold builds them)
    plans = [(metrics, selector), (metrics, selector),
             (tc.ClinicalMetrics(dataset), tc.ThresholdSelector(dataset, every_epoch_store=False))]
    retraced, told, forwards = [], [], []
    recorder = logging.Handler()
    recorder.emit = lambda record: retraced.append(record.getMessage()) if (  # Keras's own functions may warn
        "retracing" in record.getMessage() and "<locals>.forward at" in record.getMessage()) else None
    tf.get_logger().addHandler(recorder)
    try:
        for scorer, chooser in plans:
            model = tiny_model()
            model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                history = model.fit(x, y, epochs=3, verbose=0, callbacks=[scorer, chooser])
            told.append(sum("no DecisionThreshold layer" in str(item.message) for item in caught))
            scores = model.predict(x, verbose=0)[:, 0]
            # the last epoch's figures come from the trained weights, not those of the first trace
            assert history.history["val_auc"][-1] == pytest.approx(roc_auc_score(y, scores), abs=1e-6)
            assert chooser.threshold_ == pytest.approx(tc.select_threshold(y, scores, "youden"), abs=1e-6)
            forwards.append(training_callbacks._compiled_forward(model))
            # both callbacks, three epochs: traced for the full and the partial batch, never once per epoch
            assert forwards[-1].experimental_get_tracing_count() == 2
    finally:
        tf.get_logger().removeHandler(recorder)
    assert len(set(map(id, forwards))) == 3  # one function per model
    assert retraced == []  # TensorFlow's warning about frequent retracing of the scorers' pass
    assert told == [1, 0, 1]  # bare models keep no threshold: a selector says so once, not at every fit


def test_compiled_forward_lets_a_model_go():
    x, y = tiny_data()
    model = tiny_model()
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[tc.ClinicalMetrics(tf.data.Dataset.from_tensor_slices((x, y)).batch(12))])
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # the shared compiled pass holds its model weakly


def test_clinical_metrics_errors():
    x, y = tiny_data(8)
    with pytest.raises(tc.CallbackError, match="x has 8 rows but y has 7"):
        tc.ClinicalMetrics((x, y[:7]))
    with pytest.raises(tc.CallbackError, match="tf.data.Dataset"):
        tc.ClinicalMetrics(x)
    model = tiny_model()
    model.compile("sgd", "binary_crossentropy")
    metrics = tc.ClinicalMetrics((x, np.zeros(8)))
    with pytest.raises(tc.CallbackError, match="only value \\[0.0\\].*stratified"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[metrics])



@pytest.mark.parametrize("validation, message", [
    (lambda x, y: (x, np.stack([1 - y, y], axis=1)),
     r"targets have shape \(16, 2\) but the model has one output; give 0/1 targets of shape \(N,\)"),
    (lambda x, y: (x, np.where(np.arange(16) % 5 == 0, np.nan, y)),
     r"missing \(NaN or infinite\) in row\(s\) \[0, 5, 10, 15\]"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)),
     r"not batched: its x has shape \(8, 8, 1\) while the model takes \(None, 8, 8, 1\); call .batch\(n\)"),
], ids=["one_hot_targets", "nan_targets", "unbatched_dataset"])
def test_validation_data_a_model_cannot_be_scored_on_is_named(validation, message):
    x, y = tiny_data(16)
    model = tc.add_threshold_layer(tiny_model())
    model.compile("sgd", "binary_crossentropy")
    for callback in (tc.ClinicalMetrics(validation(x, y)), tc.ThresholdSelector(validation(x, y))):
        with pytest.raises(tc.CallbackError, match=message):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_binary_validation_labels_other_than_0_1_are_named_not_left_to_scikit_learn():
    x, y = tiny_data(16)
    y_val = y.copy()
    y_val[[3, 9]] = 2
    model = tiny_model()
    model.compile("sgd", "binary_crossentropy")
    message = r"binary validation targets must hold only 0 and 1; row 3 is 2.0 \(2 such rows\); fix or drop"
    for validation in ((x, y_val), tf.data.Dataset.from_tensor_slices((x, y_val)).batch(4)):
        with pytest.raises(tc.CallbackError, match=message):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[tc.ClinicalMetrics(validation)])
    with pytest.raises(tc.CallbackError, match=r"row 0 is -1.0"):
        tc.clinical_scores(np.where(np.arange(16) == 0, -1, y), np.linspace(0, 1, 16))


def test_a_diverged_model_is_named_not_left_to_scikit_learn():
    x, y = tiny_data(16)
    model = tc.add_threshold_layer(tiny_model())
    dense = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dense))
    kernel, bias = dense.get_weights()
    dense.set_weights([np.full_like(kernel, np.nan), bias])  # as after a diverged step
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
    for callback in (tc.ClinicalMetrics((x, y)), tc.ThresholdSelector((x, y))):
        with pytest.raises(tc.CallbackError, match=r"the model's scores are NaN or infinite for 16 of 16 validation "
                                                   r"case\(s\) .* training has diverged; lower the learning rate"):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_threshold_survives_save_and_load(tmp_path):
    x, y = tiny_data()
    model = tc.add_threshold_layer(tiny_model())
    model.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    selector = tc.ThresholdSelector((x, y), method="sensitivity", target=0.9)
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[selector])
    scores = model.predict(x, verbose=0)[:, 0]
    expected = tc.select_threshold(y, scores, "sensitivity", 0.9)
    assert selector.threshold_ == pytest.approx(expected)
    assert history.history["val_threshold"][-1] == pytest.approx(expected)
    assert expected != pytest.approx(0.5)  # the stored value is not the layer's default
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert tc.get_threshold(loaded) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(loaded.predict(x, verbose=0)[:, 0], scores, rtol=1e-6)


def test_multilabel_thresholds_per_label_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 5)).astype("float32")
    y = (x[:, :2] + rng.normal(scale=0.5, size=(40, 2)) > 0).astype("float32")
    keras.utils.set_random_seed(4)
    base = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, activation="sigmoid")])
    model = tc.add_threshold_layer(base)
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
    selector = tc.ThresholdSelector((x, y))
    model.fit(x, y, epochs=5, verbose=0, callbacks=[selector])
    p = model.predict(x, verbose=0)
    model.save(tmp_path / "ml.keras")
    loaded = tc.get_threshold(keras.models.load_model(tmp_path / "ml.keras"))
    np.testing.assert_allclose(loaded, tc.get_threshold(model), rtol=1e-6)
    for i in range(2):
        # Youden's J can peak at several thresholds: the stored one must reach the maximum.
        best_j = brute_force_youden(y[:, i], p[:, i])[0]
        pred = p[:, i] >= loaded[i]
        j = pred[y[:, i] == 1].mean() + (~pred)[y[:, i] == 0].mean() - 1
        assert j == pytest.approx(best_j, abs=1e-9)
        assert best_j > 0.3  # the trained model is informative, so the check is not vacuous


def test_threshold_selector_errors_and_unsaved_fallback():
    with pytest.raises(tc.CallbackError, match="unknown; allowed: youden"):
        tc.ThresholdSelector((np.zeros((2, 1)), np.array([0, 1])), method="f1")
    with pytest.raises(tc.CallbackError, match="target must be in"):
        tc.ThresholdSelector((np.zeros((2, 1)), np.array([0, 1])), method="sensitivity", target=95)
    x, y = tiny_data(16)
    softmax = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(3, activation="softmax")])
    softmax.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(tc.CallbackError, match="multiclass softmax"):
        softmax.fit(x, y, epochs=1, verbose=0, callbacks=[tc.ThresholdSelector((x, y))])
    plain = tiny_model()
    plain.compile("sgd", "binary_crossentropy")
    with pytest.warns(UserWarning, match="NOT saved"):
        plain.fit(x, y, epochs=1, verbose=0, callbacks=[tc.ThresholdSelector((x, y))])
    assert isinstance(plain.tfmed_threshold, float)


def _weight_trace(model):
    trace = []
    rec = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: trace.append({v.path: v.numpy().copy() for v in model.weights}))
    return trace, rec


def _changed(trace, key, epoch):
    """Did weight ``key`` change during ``epoch`` (0-based)?"""
    before = trace[epoch - 1][key] if epoch else None
    return before is not None and not np.array_equal(before, trace[epoch][key])


def test_staged_unfreeze_schedule_trains_new_weights_only_after_the_boundary():
    x, y = tiny_data()
    model = tiny_model()
    freezing.freeze(model, BLOCKS)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    trace, rec = _weight_trace(model)
    staged = tc.StagedUnfreeze(BLOCKS, schedule=[(2, 1)], lr_factor=0.1)
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[staged, rec])
    assert not _changed(trace, "block2_conv/kernel", 1)
    assert _changed(trace, "block2_conv/kernel", 2) and _changed(trace, "block2_conv/kernel", 3)
    assert _changed(trace, "head_dense/kernel", 1)
    for epoch in (1, 2, 3):
        assert not _changed(trace, "block1_conv/kernel", epoch)
        assert not _changed(trace, "block2_bn/moving_mean", epoch)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001, rel=1e-5)
    assert history.history["unfrozen_blocks"] == [0.0, 0.0, 1.0, 1.0]
    assert staged.changes_[0]["epoch"] == 2 and staged.changes_[0]["unfrozen"] == ["block2_"]


class ConstantMetric(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        logs["val_auc"] = 0.7


def test_staged_unfreeze_on_plateau():
    x, y = tiny_data()
    model = tiny_model()
    freezing.freeze(model, BLOCKS)
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    trace, rec = _weight_trace(model)
    staged = tc.StagedUnfreeze(BLOCKS, on_plateau=True, patience=1, lr_factor=0.5)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[ConstantMetric(), staged, rec])
    # epoch 0 sets the best, epoch 1 plateaus -> block2 from epoch 2 on; epoch 2 plateaus -> both.
    assert [c["unfrozen"] for c in staged.changes_] == [["block2_"], ["block1_", "block2_"]]
    assert not _changed(trace, "block2_conv/kernel", 1)
    assert _changed(trace, "block2_conv/kernel", 2)
    assert not _changed(trace, "block1_conv/kernel", 2)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.025, rel=1e-5)


def test_staged_unfreeze_errors():
    with pytest.raises(tc.CallbackError, match="needs a schedule"):
        tc.StagedUnfreeze(BLOCKS)
    with pytest.raises(tc.CallbackError, match="epoch must be an int"):
        tc.StagedUnfreeze(BLOCKS, schedule=[(-1, 1)])
    with pytest.raises(freezing.FreezingError, match="asks for 5 blocks"):
        tc.StagedUnfreeze(BLOCKS, schedule=[(1, 5)])
    x, y = tiny_data(8)
    model = tiny_model()
    model.compile("sgd", "binary_crossentropy")
    with pytest.raises(tc.CallbackError, match="put ClinicalMetrics before StagedUnfreeze"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tc.StagedUnfreeze(BLOCKS, on_plateau=True)])
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model.compile(keras.optimizers.SGD(schedule), "binary_crossentropy")
    with pytest.raises(tc.CallbackError, match="learning-rate schedule"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tc.StagedUnfreeze(BLOCKS, schedule=[(0, 1)])])


def test_docs_callbacks_example_runs(tmp_path):
    example = runpy.run_path(str(ROOT / "docs" / "callbacks_example.py"), run_name="example")
    summary = example["main"](tmp_path)
    assert Path(summary["checkpoint"]).is_file()
    assert len(summary["val_auc"]) >= 3
    # seeded, and on a task the head learns: val_auc rises and a second run gives the same curve
    assert summary["val_auc"][-1] > summary["val_auc"][0] and max(summary["val_auc"]) >= 0.9
    assert example["main"](tmp_path / "again")["val_auc"] == pytest.approx(summary["val_auc"], abs=1e-6)
    assert 0.0 < summary["threshold"] < 1.0
    assert summary["learning_rate"] == pytest.approx(1e-3, rel=1e-5)


def _two_class_softmax_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_a_two_class_softmax_is_scored_as_binary_by_its_column_1():
    rng = np.random.default_rng(0)
    y = (rng.random(40) > 0.5).astype(int)
    p1 = np.clip(0.3 * y + 0.7 * rng.random(40), 0.01, 0.99)
    two = np.stack([1 - p1, p1], axis=1)
    one = tc.clinical_scores(y, p1)
    for targets in (y, np.eye(2)[y]):
        scores = tc.clinical_scores(targets, two)
        assert scores["task"] == "binary"
        assert {k: scores[k] for k in ("auc", "youden_threshold", "sensitivity", "specificity")} == pytest.approx(
            {k: one[k] for k in ("auc", "youden_threshold", "sensitivity", "specificity")})
    x = rng.normal(size=(40, 4)).astype("float32")
    model = _two_class_softmax_model()
    metrics = tc.ClinicalMetrics((x, y))
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[metrics])
    expected = roc_auc_score(y, model.predict(x, verbose=0)[:, 1])
    assert history.history["val_auc"][0] == pytest.approx(expected)
    onehot = tc.ClinicalMetrics((x, np.eye(2)[y]))
    model.fit(x, y, epochs=1, verbose=0, callbacks=[onehot])
    assert onehot.last_["auc"] == pytest.approx(roc_auc_score(y, model.predict(x, verbose=0)[:, 1]))


def test_string_validation_targets_are_refused_with_the_fix():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    names = np.array(["normal", "pneumonia"] * 4)
    with pytest.raises(tc.CallbackError, match=r"targets must be numbers \(0/1 .*class indices.*\['normal'"):
        tc.clinical_scores(names, np.linspace(0, 1, 8))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")
    for callback in (tc.ClinicalMetrics((x, names)), tc.ThresholdSelector((x, names))):
        with pytest.raises(tc.CallbackError, match="encode the labels as numbers"):
            model.fit(x, (names == "pneumonia").astype("float32"), epochs=1, verbose=0, callbacks=[callback])


def test_a_repeating_validation_dataset_is_refused_when_the_callback_is_built():
    x, y = tiny_data(16)
    repeating = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    for make in (tc.ClinicalMetrics, tc.ThresholdSelector):
        with pytest.raises(tc.CallbackError, match=r"repeats forever.*without \.repeat\(\).*\.take\("):
            make(repeating)
    assert isinstance(tc.ClinicalMetrics(repeating.take(2)), tc.ClinicalMetrics)


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_staged_unfreeze_warns_when_a_scheduled_epoch_is_never_reached():
    from tfmed.progress import LOGGER

    x, y = tiny_data(8)
    lines = _Lines()
    LOGGER.addHandler(lines)
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    try:
        model = tiny_model()
        freezing.freeze(model, BLOCKS)
        model.compile("sgd", "binary_crossentropy")
        late = tc.StagedUnfreeze(BLOCKS, schedule=[(1, 1), (2, "all"), (5, "all")])
        with pytest.warns(UserWarning, match=r"unfreeze\(s\) at epoch\(s\) \[2, 5\] never happened.*ran 2 epoch"):
            model.fit(x, y, epochs=2, verbose=0, callbacks=[late])
        assert late.unfrozen_ == ["block2_"]
        assert any("[2, 5] never happened" in line for line in lines.lines)
        reached = tc.StagedUnfreeze(BLOCKS, schedule=[(1, 1)])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model.fit(x, y, epochs=2, verbose=0, callbacks=[reached])
    finally:
        LOGGER.removeHandler(lines)
        LOGGER.setLevel(level)


def test_epoch_logger_prints_without_configure_logging(capsys):
    from tfmed.progress import LOGGER

    saved = (list(LOGGER.handlers), LOGGER.propagate, LOGGER.level)
    for handler in saved[0]:
        if not isinstance(handler, logging.NullHandler):
            LOGGER.removeHandler(handler)
    LOGGER.setLevel(logging.NOTSET)
    LOGGER.propagate = True
    try:
        x, y = tiny_data(8)
        model = tiny_model()
        model.compile("sgd", "binary_crossentropy")
        model.fit(x, y, epochs=2, verbose=0, callbacks=[tc.EpochLogger()])
        lines = [line for line in capsys.readouterr().out.splitlines() if "epoch" in line]
        assert len(lines) == 2 and lines[0].startswith("[tfmed ") and "epoch 1: loss" in lines[0]
    finally:
        for handler in list(LOGGER.handlers):
            LOGGER.removeHandler(handler)
        for handler in saved[0]:
            LOGGER.addHandler(handler)
        LOGGER.propagate, LOGGER.level = saved[1], saved[2]


def test_load_model_reloads_a_readme_recipe_model_in_a_fresh_process(tmp_path):
    from tfmed.backbones import ImagenetPreprocessing
    from tfmed.training.losses import WeightedBinaryCrossentropy

    inputs = keras.Input((8, 8, 3))
    x = ImagenetPreprocessing("lite")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3, name="block1_conv")(x))
    model = tc.add_threshold_layer(keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x)))
    model.compile("sgd", WeightedBinaryCrossentropy(0.7, 0.3))
    tc.set_threshold(model, 0.375)
    path = tmp_path / "best.keras"
    model.save(path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.save(tmp_path / "x.npy", images)
    script = textwrap.dedent(f"""
        import numpy as np
        from tfmed import training as tc
        model = tc.load_model({str(path)!r})
        print("RESULT", tc.get_threshold(model), type(model.loss).__name__,
              model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0).ravel().tolist())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT")).split(" ", 3)
    assert float(result[1]) == pytest.approx(0.375)
    assert result[2] == "WeightedBinaryCrossentropy"
    assert ast.literal_eval(result[3]) == pytest.approx(model.predict(images, verbose=0).ravel().tolist(), rel=1e-5)


def test_threshold_selector_reads_a_two_class_softmax_as_binary_and_refuses_more_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 4)).astype("float32")
    y = (x[:, 0] + 0.5 * rng.normal(size=48) > 0.3).astype(int)
    for targets in (np.eye(2)[y], y):
        model = _two_class_softmax_model()
        selector = tc.ThresholdSelector((x, targets))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = model.fit(x, y, epochs=1, verbose=0, callbacks=[selector])
        expected = tc.select_threshold(y, model.predict(x, verbose=0)[:, 1])
        assert isinstance(selector.threshold_, float) and selector.threshold_ == pytest.approx(expected)
        assert history.history["val_threshold"][0] == pytest.approx(expected)
        assert model.tfmed_threshold == pytest.approx(expected)
    three = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    three.compile("adam", "categorical_crossentropy")
    y3 = np.eye(3)[rng.integers(0, 3, 48)]
    for targets in (y3, y3.argmax(axis=1)):   # one-hot targets were taken as three labels
        with pytest.raises(tc.CallbackError, match="multiclass softmax"):
            three.fit(x, y3, epochs=1, verbose=0, callbacks=[tc.ThresholdSelector((x, targets))])


@pytest.mark.parametrize("with_layer", [False, True])
def test_threshold_follows_the_weights_early_stopping_restores(with_layer):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x[:, 0] + rng.normal(size=64) > 0).astype("float32")
    xv = rng.normal(size=(40, 3)).astype("float32")
    yv = (xv[:, 0] + rng.normal(size=40) > 0).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model = tc.add_threshold_layer(model) if with_layer else model
    model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
    class Scripted(keras.callbacks.Callback):  # val_auc best at epoch 1, so the stopper restores epoch 1
        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = [0.5, 0.9, 0.6, 0.6, 0.6, 0.6][epoch]

    stopper = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=2, restore_best_weights=True)
    selector = tc.ThresholdSelector((xv, yv), restored_by=stopper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = model.fit(x, y, epochs=6, verbose=0, callbacks=[Scripted(), selector, stopper])
    assert stopper.best_epoch == 1 and len(history.history["val_threshold"]) == 4
    per_epoch = history.history["val_threshold"]
    assert per_epoch[1] != pytest.approx(per_epoch[-1])   # otherwise the check says nothing
    restored = tc.select_threshold(yv, model.predict(xv, verbose=0))
    assert restored == pytest.approx(per_epoch[1], abs=1e-6)
    assert tc.get_threshold(model) == pytest.approx(restored, abs=1e-6)
    assert model.tfmed_threshold == pytest.approx(restored, abs=1e-6)
    assert selector.threshold_ == pytest.approx(restored, abs=1e-6) and set(selector.thresholds_) == {0, 1, 2, 3}
    with pytest.raises(tc.CallbackError, match="restored_by must be an EarlyStopping"):
        tc.ThresholdSelector((xv, yv), restored_by=keras.callbacks.EarlyStopping())


def test_staged_unfreeze_catches_up_scheduled_epochs_a_resumed_fit_skipped():
    x, y = tiny_data(8)
    model = tiny_model()
    freezing.freeze(model, BLOCKS)
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    staged = tc.StagedUnfreeze(BLOCKS, schedule=[(1, 1), (2, "all")], lr_factor=0.1)
    seen = []
    watch = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(
        (epoch, freezing.trainable_blocks(model, BLOCKS), float(model.optimizer.learning_rate))))
    with pytest.warns(UserWarning, match=r"fit starts at epoch 3 .*epoch\(s\) \[1, 2\]"):
        model.fit(x, y, initial_epoch=3, epochs=4, verbose=0, callbacks=[staged, watch])
    assert seen[0][:2] == (3, BLOCKS) and seen[0][2] == pytest.approx(1e-4, rel=1e-5)
    assert [change["epoch"] for change in staged.changes_] == [1, 2]
    # a later fit of the same model with the same callback does not apply them a second time
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.fit(x, y, initial_epoch=4, epochs=5, verbose=0, callbacks=[staged])
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-4, rel=1e-5)


def _two_block_model():
    from tfmed.training import freezing

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="b2_dense")(keras.layers.Dense(4, name="b1_dense")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(hidden))
    freezing.freeze(model, ["b1_", "b2_"])
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
    return model


def test_a_fit_that_starts_at_a_scheduled_epoch_applies_that_entry_once():
    from tfmed.training.staged_unfreeze import StagedUnfreeze

    model = _two_block_model()
    unfreeze = StagedUnfreeze(["b1_", "b2_"], schedule=[(1, "all")], lr_factor=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(np.ones((8, 4)), np.ones(8), epochs=2, initial_epoch=1, verbose=0, callbacks=[unfreeze])
    assert len(unfreeze.changes_) == 1 and float(model.optimizer.learning_rate) == pytest.approx(1e-4)


def test_on_plateau_each_change_waits_patience_epochs_without_gain():
    from tfmed.training.staged_unfreeze import StagedUnfreeze

    class FlatAUC(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_auc"] = 0.5  # never better after the first epoch

    model = _two_block_model()
    unfreeze = StagedUnfreeze(["b1_", "b2_"], on_plateau=True, amounts=[1, 2], patience=2, lr_factor=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(np.ones((8, 4)), np.ones(8), epochs=6, verbose=0, callbacks=[FlatAUC(), unfreeze])
    assert [change["epoch"] for change in unfreeze.changes_] == [3, 5]


def test_the_threshold_logged_for_several_labels_is_their_mean():
    from tfmed.training.callbacks import ThresholdSelector

    rng = np.random.default_rng(0)
    x = rng.random((40, 3)).astype("float32")
    y = np.c_[(x[:, 0] > 0.5), (x[:, 1] > 0.3)].astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")
    selector = ThresholdSelector((x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no DecisionThreshold layer: the threshold is logged, not stored
        history = model.fit(x, y, epochs=1, verbose=0, callbacks=[selector])
    per_label = np.asarray(selector.thresholds_[0], dtype=float)
    assert per_label.shape == (2,) and per_label[0] != per_label[1]
    assert history.history["val_threshold"][0] == pytest.approx(per_label.mean())


def _two_output_model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, [keras.layers.Dense(1, activation="sigmoid", name="finding")(x),
                                keras.layers.Dense(1, activation="sigmoid", name="aux")(x)])


def test_a_model_of_several_outputs_is_refused_when_fit_starts_not_scored_as_labels():
    """Two heads stacked into one array were scored as a multi-label task of batch-size columns."""
    x, y = tiny_data(16)
    model = _two_output_model()
    model.compile("sgd", ["binary_crossentropy", "binary_crossentropy"])
    dataset = tf.data.Dataset.from_tensor_slices((x, (y, 1 - y))).batch(8)
    for callback in (tc.ClinicalMetrics(dataset), tc.ThresholdSelector(dataset)):
        epochs = []
        with pytest.raises(tc.CallbackError, match=r"scores a model of one output; this one has 2 \(finding, aux\)"):
            model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[callback, keras.callbacks.LambdaCallback(
                on_epoch_begin=lambda epoch, logs: epochs.append(epoch))])
        assert epochs == []  # refused before the first epoch trains
    with pytest.raises(tc.CallbackError, match="validation targets are a list of 2 arrays; score a model of one"):
        tc.ClinicalMetrics((x, [y, 1 - y]))
    # one output of it, sharing the weights, is scored against its own targets
    finding = keras.Model(model.inputs, model.get_layer("finding").output)
    finding.compile("sgd", "binary_crossentropy")
    history = finding.fit(x, y, epochs=1, verbose=0, callbacks=[tc.ClinicalMetrics((x, y))])
    assert history.history["val_auc"][-1] == pytest.approx(roc_auc_score(y, finding.predict(x, verbose=0)[:, 0]))


def test_validation_sample_weights_leave_out_the_cases_weighted_zero_and_refuse_others():
    x, y = tiny_data(32)
    model = tc.add_threshold_layer(tiny_model())  # ThresholdSelector stores its threshold there
    model.compile("sgd", "binary_crossentropy")
    weights = np.r_[np.ones(20), np.zeros(12)].astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    metrics = tc.ClinicalMetrics(dataset)
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[metrics])
    scores = model.predict(x, verbose=0)[:, 0]
    assert history.history["val_auc"][-1] == pytest.approx(roc_auc_score(y[:20], scores[:20]), abs=1e-6)
    assert roc_auc_score(y[:20], scores[:20]) != pytest.approx(roc_auc_score(y, scores), abs=1e-3)
    selector = tc.ThresholdSelector(dataset)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[selector])
    scores = model.predict(x, verbose=0)[:, 0]
    assert selector.threshold_ == pytest.approx(tc.select_threshold(y[:20], scores[:20], "youden"))
    j = brute_force_youden(y[:20], scores[:20])[0]  # the threshold is Youden-optimal on the cases kept
    decided = scores[:20] >= selector.threshold_
    assert decided[y[:20] == 1].mean() + (~decided[y[:20] == 0]).mean() - 1 == pytest.approx(j)
    uneven = tf.data.Dataset.from_tensor_slices((x, y, np.linspace(0.5, 2, 32).astype("float32"))).batch(8)
    with pytest.raises(tc.CallbackError, match="sample weights take values from 0.5 to 2; .*only weight 0"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tc.ClinicalMetrics(uneven)])
    masks = np.ones((32, 2), "float32")
    masks[3, 1] = 0  # a mask of unknown labels: not one weight per case
    masked = tf.data.Dataset.from_tensor_slices((x, np.c_[y, y], masks)).batch(8)
    with pytest.raises(tc.CallbackError, match="differ between the labels of a case .* give an unknown label as -1"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tc.ClinicalMetrics(masked)])


def test_a_model_of_several_inputs_is_scored_on_validation_arrays():
    x, y = tiny_data(16)
    age = np.linspace(20, 80, 16).astype("float32")[:, None]
    image, years = keras.Input((8, 8, 1), name="image"), keras.Input((1,), name="age")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(image))
    model = keras.Model([image, years], keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Concatenate()([pooled, years / 100])))
    model.compile("sgd", "binary_crossentropy")
    for inputs in ([x, age], {"image": x, "age": age}):
        history = model.fit(inputs, y, epochs=1, verbose=0, callbacks=[tc.ClinicalMetrics((inputs, y))])
        expected = roc_auc_score(y, model.predict(inputs, verbose=0)[:, 0])
        assert history.history["val_auc"][-1] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(tc.CallbackError, match=r"validation x holds inputs of \[15, 16\] rows"):
        tc.ClinicalMetrics(([x, age[:15]], y))
    with pytest.raises(tc.CallbackError, match="validation x has 16 rows but y has 15"):
        tc.ClinicalMetrics(([x, age], y[:15]))


def test_the_readme_names_every_module_plain_load_model_needs():
    from tfmed.training.layers import SERIALISABLE_MODULES

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sentence = readme[readme.index("Plain\n`keras.models.load_model` fails"):][:600]
    assert all(f"`{module}`" in sentence for module in SERIALISABLE_MODULES), sentence
