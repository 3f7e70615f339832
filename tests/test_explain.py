"""Explanations (tfmed.explain): known-answer maps for every method in both modes, trust checks, errors,
the run-level ``tfmed explain`` and the report section."""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd
import pytest

from tfmed import explain
from tfmed.backbones.registry import _REGISTRY, BackboneSpec, register
from tfmed.config import ExperimentConfig, ExplainMethod, FinetuneConfig, PreprocessConfig, ReportConfig, StageConfig
from tfmed.explain.faithfulness import randomised_weights
from tfmed.explain.target import ExplainError, ExplainTarget
from tfmed.modes.finetune import FineTuner
from tfmed.modes.svm import FeatureSVM
from tfmed.modes.svm_graph import DECISION_LAYER

SIZE, SQUARE = 32, 8


def _tiny_backbone(x, include_top):
    # Non-negative kernels on [-1, 1] inputs: the dark background switches every ReLU off and only
    # the bright square switches them on, so the square is all the model can use (a known answer).
    init = keras.initializers.RandomUniform(0.0, 0.2)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init, name="block1_conv")(x)
    return keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init,
                               name="block2_conv")(x)


if "explain_test_net" not in _REGISTRY:
    register(BackboneSpec(name="explain_test_net", builder=_tiny_backbone, preprocessing="tf", default_size=SIZE,
                          taps={"early": "block1_conv", "middle": "block1_conv", "late": "block2_conv",
                                "stage1": "block1_conv", "stage2": "block2_conv"},
                          blocks=["block1_", "block2_"], imagenet_file="", imagenet_url="", min_size=8))


def tiny_svm_experiment(name: str, tmp_path, data: dict, split: dict, **sections) -> ExperimentConfig:
    """A features + SVM experiment on explain_test_net (no weights, 32 px, the late tap, C = 1) for end-to-end
    tests; ``sections`` (e.g. ``views``, ``preprocess``, ``report``) are added or replaced."""
    values = {"name": name, "runs_dir": str(tmp_path / "runs"), "data": data, "split": split,
              "preprocess": {"image_size": 32},
              "model": {"mode": "svm", "backbone": "explain_test_net", "weights": None,
                        "svm": {"taps": ["late"], "C": [1.0], "cv": 2}}, **sections}
    return ExperimentConfig.from_dict(values)


def squares(n: int, seed: int):
    """Dark noisy images; the positive ones (odd rows) hold a bright square at a random place."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 80, (n, SIZE, SIZE, 1)).astype("float32")
    labels = np.arange(n) % 2
    boxes = []
    for i in range(n):
        row, column = rng.integers(0, SIZE - SQUARE, 2)
        boxes.append((int(row), int(column)))
        if labels[i]:
            images[i, row:row + SQUARE, column:column + SQUARE] = 255.0
    return images, labels, boxes


def peak_in_square(maps, boxes) -> bool:
    for single, (row, column) in zip(maps, boxes):
        r, c = explain.peak(single)
        if not (row <= r < row + SQUARE and column <= c < column + SQUARE):
            return False
    return True


@pytest.fixture(scope="module")
def data():
    images, labels, _ = squares(60, seed=0)
    test, test_labels, boxes = squares(12, seed=1)
    positives = np.flatnonzero(test_labels == 1)
    return images, labels, test[positives], [boxes[i] for i in positives], test


@pytest.fixture(scope="module")
def tuner(data):
    images, labels = data[0], data[1]
    config = FinetuneConfig(stages=[StageConfig(epochs=8, unfreeze=1.0)], batch_size=16, learning_rate=0.01)
    model = FineTuner("explain_test_net", "binary", 1, config=config, image_size=SIZE, weights=None)
    model.fit((np.repeat(images, 3, axis=-1), labels.astype("float32")), None)
    return model


@pytest.fixture(scope="module")
def svm(data):
    # a linear kernel: its decision grows with the square's features, so the known answer holds
    return FeatureSVM(backbone="explain_test_net", weights=None, taps=("late",), image_size=SIZE, kernel="linear",
                      C=(1.0,), cv=3).fit(data[0], data[1])


@pytest.mark.parametrize("method", sorted(explain.METHODS))
def test_every_method_finds_the_square_in_both_modes(method, data, tuner, svm):
    positives, boxes = data[2], data[3]
    for model in (tuner, svm):
        maps = explain.explain(model, positives, method)
        assert maps.shape == positives.shape[:3]
        assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
        assert peak_in_square(maps, boxes), f"{method} on {type(model).__name__}"


@pytest.fixture(scope="module")
def rbf_svm(data):
    return FeatureSVM(backbone="explain_test_net", weights=None, taps=("late",), image_size=SIZE, kernel="rbf",
                      C=(1.0,), cv=3).fit(data[0], data[1])


@pytest.mark.parametrize("method", ["saliency", "smoothgrad", "integrated_gradients", "occlusion"])
def test_pixel_methods_find_the_square_through_an_rbf_svm(method, data, rbf_svm):
    # An RBF score need not grow with a feature, so Grad-CAM's positive-part weighting can miss
    # (the README says so); methods on the pixels still find the square.
    assert peak_in_square(explain.explain(rbf_svm, data[2], method), data[3])


def test_the_method_table_matches_the_config_choices():
    assert set(explain.METHODS) == set(ExplainMethod.__args__)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_svm_graph_equals_scikit_learn(task, kernel):
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (36, SIZE, SIZE, 1)).astype("float32")
    if task == "binary":
        y = np.arange(36) % 2
    elif task == "multiclass":
        y = np.arange(36) % 3
    else:
        y = np.stack([np.arange(36) % 2, (np.arange(36) // 2) % 2], axis=1)
    for k in range(3):
        images[(y if y.ndim == 1 else y[:, 0]) == k, k * 8:k * 8 + 8] += 60
    images = np.clip(images, 0, 255)
    model = FeatureSVM(backbone="explain_test_net", weights=None, taps=("early", "late"), image_size=SIZE,
                       kernel=kernel, C=(1.0,), cv=3, task=task).fit(images, y)
    graph = model.keras_model()
    rgb = np.repeat(images, 3, axis=-1)
    decision = keras.Model(graph.inputs, graph.get_layer(DECISION_LAYER).output).predict(rgb, verbose=0)
    expected = model.decision_function(images)
    np.testing.assert_allclose(decision.reshape(expected.shape), expected, rtol=1e-4, atol=1e-4)
    proba = graph.predict(rgb, verbose=0)
    wanted = model.predict_proba(images)
    np.testing.assert_allclose(proba, wanted[:, 1:] if task == "binary" else wanted, atol=1e-4)


def test_randomised_model_gives_low_rank_correlation_and_deletion_beats_random(data, tuner):
    positives = data[2]
    assert explain.sanity_check(tuner, positives, "gradcam") < 0.5
    maps = explain.gradcam(tuner, positives)
    scores = explain.faithfulness(tuner, positives, maps)
    assert scores["deletion_auc"] < scores["random_deletion_auc"]
    assert scores["insertion_auc"] >= scores["random_insertion_auc"]


def test_no_sanity_figure_when_the_randomised_model_scores_every_image_alike(data, tuner, svm, monkeypatch):
    import contextlib
    import importlib

    module = importlib.import_module("tfmed.explain.faithfulness")  # the package's name is also a function's

    @contextlib.contextmanager
    def constant_head(target, seed=0):  # as an RBF-SVM whose re-drawn features lie far from every support vector
        kernel, bias = target.last.get_weights()
        target.last.set_weights([np.zeros_like(kernel), bias])
        try:
            yield target
        finally:
            target.last.set_weights([kernel, bias])

    monkeypatch.setattr(module, "randomised_weights", constant_head)
    positives = data[2]
    with pytest.warns(explain.SanityCheckWarning,
                      match=r"the randomised model scores every image \(and its blurred copy\) 0\.\d{3}, so any"):
        assert explain.sanity_check(tuner, positives, "gradcam") is None  # not a pass: the check could not fail
    both = data[4]  # an SVM's images explained for their decided class: a constant 0.8 reads 0.8 or 0.2
    monkeypatch.undo()  # the real randomisation: one image given twice is no constant model
    twice = np.repeat(positives[:1], 2, axis=0)
    assert explain.sanity_check(tuner, twice, "gradcam") is not None
    monkeypatch.setattr(module, "randomised_weights", constant_head)
    decided = svm.predict_proba(both).argmax(axis=1)
    assert set(decided) == {0, 1}
    with pytest.warns(explain.SanityCheckWarning, match=r"scores every image \(and its blurred copy\) 0\.\d{3}, so"):
        assert explain.sanity_check(svm, both, "gradcam", index=decided) is None
    record = explain.explain_table(tuner, ArrayInputs(positives), None, "gradcam", index=1).trust(index=1, steps=5)
    assert record["sanity_rank_correlation"] is None
    assert record["sanity_notes"][0].startswith("the model-randomisation check was not made")


def test_randomisation_restores_the_weights(tuner, data):
    target = ExplainTarget(tuner)
    before = [w.copy() for w in tuner.keras_model().get_weights()]
    with randomised_weights(target):
        changed = tuner.keras_model().get_weights()
        assert any(not np.array_equal(a, b) for a, b in zip(before, changed))
    after = tuner.keras_model().get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_randomisation_reaches_the_last_stage_when_the_grad_cam_layer_lies_outside_every_block():
    from tfmed.backbones import create
    from tfmed.explain.faithfulness import _randomised_layers

    base = create("mobilenet_v2", weights=None, input_shape=(32, 32, 3), include_top=False)
    head = keras.layers.Dense(1, activation="sigmoid", name="predictions")(
        keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output))
    target = ExplainTarget(keras.Model(base.inputs, head, name="mobilenet_v2_finetune"))  # as FineTuner builds it
    assert target.layer == "out_relu"  # the late tap: in no block of the backbone's list
    assert [layer.name for layer in _randomised_layers(target)] == ["Conv_1", "Conv_1_bn", "out_relu", "head_pool",
                                                                    "predictions"]


def test_randomisation_reaches_the_last_stage_below_a_final_normalisation_block():
    from tfmed.backbones import create
    from tfmed.explain.faithfulness import _randomised_layers

    base = create("densenet121", weights=None, input_shape=(32, 32, 3), include_top=False)  # ... conv5_, "bn"
    head = keras.layers.Dense(1, activation="sigmoid", name="predictions")(
        keras.layers.GlobalAveragePooling2D(name="head_pool")(base.output))
    target = ExplainTarget(keras.Model(base.inputs, head, name="densenet121_finetune"))
    layers = _randomised_layers(target)
    assert target.layer == "relu" and layers[0].name.startswith("conv5_block1_")
    assert {layer.name for layer in layers if layer.name.startswith("conv5_") and layer.get_weights()} \
        >= {"conv5_block1_1_conv", "conv5_block16_2_conv"}  # the last stage's kernels are re-drawn, not the head's alone


def test_an_unrelated_map_is_less_faithful_than_gradcam(data, tuner):
    positives = data[2]
    good = explain.gradcam(tuner, positives)
    inverted = 1.0 - good  # most important where Grad-CAM says least
    assert (explain.faithfulness(tuner, positives, good)["deletion_auc"]
            < explain.faithfulness(tuner, positives, inverted)["deletion_auc"])


def _multilabel_model():
    # label 0 looks at the left half of the image, label 1 at the right half
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(2, 1, use_bias=False, name="conv", kernel_initializer="ones")(inputs)
    left = keras.layers.Lambda(lambda t: t[:, :, : SIZE // 2, 0])(x)
    right = keras.layers.Lambda(lambda t: t[:, :, SIZE // 2:, 1])(x)
    pooled = keras.layers.Concatenate()([keras.layers.Flatten()(left), keras.layers.Flatten()(right)])
    dense = keras.layers.Dense(2, activation="sigmoid", name="labels")
    out = dense(pooled)
    half = SIZE * SIZE // 2
    kernel = np.zeros((2 * half, 2), "float32")
    kernel[:half, 0] = 0.01
    kernel[half:, 1] = 0.01
    dense.set_weights([kernel, np.zeros(2, "float32")])
    return keras.Model(inputs, out)


def test_multilabel_index_chooses_the_label():
    model = _multilabel_model()
    image = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 1)).astype("float32")
    for label, half in ((0, slice(0, SIZE // 2)), (1, slice(SIZE // 2, SIZE))):
        maps = explain.saliency(model, image, index=label)
        other = slice(SIZE // 2, SIZE) if label == 0 else slice(0, SIZE // 2)
        assert maps[0][:, half].sum() > 0 and maps[0][:, other].sum() == 0


def test_a_softmax_head_is_differentiated_on_its_logits_however_it_is_written():
    import tensorflow as tf

    def model(head):
        image = keras.Input((SIZE, SIZE, 1))
        features = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, name="conv")(image))
        return keras.Model(image, head(features))

    written = {"activation='softmax'": lambda x: keras.layers.Dense(3, activation="softmax", name="out")(x),
               "tf.nn.softmax": lambda x: keras.layers.Dense(3, activation=tf.nn.softmax, name="out")(x),
               "Softmax layer": lambda x: keras.layers.Softmax()(keras.layers.Dense(3, name="out")(x))}
    models = {name: model(head) for name, head in written.items()}
    weights = models["activation='softmax'"].get_weights()
    image = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 1)).astype("float32")
    maps = {}
    for name, each in models.items():
        each.set_weights(weights)
        assert ExplainTarget(each).kind == "softmax", name
        maps[name] = explain.saliency(each, image, index=1)
    for name in ("tf.nn.softmax", "Softmax layer"):
        np.testing.assert_allclose(maps[name], maps["activation='softmax'"], atol=1e-6)


def test_a_mosaic_of_a_flat_view_model_is_refused_by_name():
    from tfmed.explain.mosaic import mosaic_model
    from tfmed.training.view_layers import FoldViews, PoolViews

    views = keras.Input((3, SIZE, SIZE, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(FoldViews()(views))  # no nested backbone
    x = PoolViews(3, "mean")(keras.layers.GlobalAveragePooling2D()(x))
    mosaic, _ = mosaic_model(keras.Model(views, keras.layers.Dense(1, activation="sigmoid")(x), name="flat"))
    with pytest.raises(ExplainError, match="layer 'conv' of model 'flat_mosaic' was first called in another model"):
        ExplainTarget(mosaic)


def test_one_output_sigmoid_classes(tuner, data):
    positives = data[2]
    target = ExplainTarget(tuner)
    positive = target.predict(positives, index=1)
    negative = target.predict(positives, index=0)
    np.testing.assert_allclose(positive + negative, 1.0, atol=1e-6)
    per_image = target.predict(positives, index=np.array([1, 0] * (len(positives) // 2) + [1] * (len(positives) % 2)))
    assert per_image[0] == pytest.approx(positive[0]) and per_image[1] == pytest.approx(negative[1])
    with pytest.raises(ExplainError, match="use 1 .the positive class, default. or 0"):
        explain.gradcam(tuner, positives, index=2)


def test_a_decision_threshold_layer_changes_no_explanation(data):
    from tfmed.training import add_threshold_layer

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    plain = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(x))
    wrapped = add_threshold_layer(plain)
    images = data[2][:2]
    assert ExplainTarget(wrapped).kind == "sigmoid"  # the head's logits, not the probabilities passed through
    for index in (1, 0):
        np.testing.assert_allclose(explain.gradcam(wrapped, images, index=index),
                                   explain.gradcam(plain, images, index=index), atol=1e-5)
    assert not np.allclose(explain.gradcam(wrapped, images, index=1), explain.gradcam(wrapped, images, index=0))
    head = plain.get_layer("head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + 60.0])  # a confident model: its probabilities round to 1
    assert all(np.ptp(m) > 0 for m in explain.saliency(wrapped, images, index=1))  # gradients of the logit


def test_nested_backbone_in_a_chain_model(data):
    base = keras.Sequential([keras.Input((SIZE, SIZE, 1)),
                             keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="inner_conv")],
                            name="base")
    inputs = keras.Input((SIZE, SIZE, 1))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    maps = explain.gradcam(model, data[2][:2], layer="inner_conv")
    assert maps.shape == (2, SIZE, SIZE)


def test_nested_backbone_in_a_model_that_is_not_a_chain_is_refused(data):
    base = keras.Sequential([keras.Input((SIZE, SIZE, 1)),
                             keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="inner_conv")],
                            name="base")
    inputs = keras.Input((SIZE, SIZE, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
    skip = keras.layers.GlobalAveragePooling2D()(inputs)
    joined = keras.layers.Concatenate()([pooled, skip])
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(joined))
    with pytest.raises(ExplainError, match="is not a plain chain of layers; build it flat"):
        explain.gradcam(model, data[2][:1], layer="inner_conv")


def test_svm_with_texture_features_has_no_graph(data):
    from tfmed.modes.svm_graph import SVMGraphError

    model = FeatureSVM(backbone="explain_test_net", weights=None, taps=("late",), image_size=SIZE, C=(1.0,), cv=3,
                       texture=True).fit(data[0], data[1])
    with pytest.raises(SVMGraphError, match="texture: false"):
        explain.gradcam(model, data[2])


def test_bad_layer_and_bad_method_list_the_valid_ones(tuner, data):
    with pytest.raises(ExplainError, match=r"layer 'nope' is not in model .*block2_conv"):
        explain.gradcam(tuner, data[2], layer="nope")
    with pytest.raises(ExplainError, match="allowed: gradcam, gradcam_pp, integrated_gradients, occlusion"):
        explain.explain(tuner, data[2], "lime")
    with pytest.raises(ExplainError, match="takes no layer"):
        explain.explain(tuner, data[2], "saliency", layer="block2_conv")
    with pytest.raises(ExplainError, match="out of range"):
        explain.explain(_multilabel_model(), data[2], "saliency", index=5)
    with pytest.raises(ExplainError, match="cannot explain a str"):
        explain.gradcam("model.keras", data[2])
    with pytest.raises(ExplainError, match="NaN or infinite"):
        explain.saliency(tuner, np.full((1, SIZE, SIZE, 1), np.nan))
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices((data[2], np.ones(len(data[2])))).batch(2)
    for make in (lambda: explain.gradcam(tuner, batches), lambda: explain.ExplainEveryEpoch(batches, "unused")):
        with pytest.raises(ExplainError, match=r"got a tf.data.Dataset: .*next\(iter\(dataset\)\)\[0\]\.numpy\(\)"):
            make()


def test_callback_saves_overlays_during_training(tmp_path, data):
    images, labels = data[0], data[1]
    config = FinetuneConfig(stages=[StageConfig(epochs=2, unfreeze=1.0)], batch_size=16)
    tuner = FineTuner("explain_test_net", "binary", 1, config=config, image_size=SIZE, weights=None)
    callback = explain.ExplainEveryEpoch(np.repeat(data[2][:3], 3, axis=-1), tmp_path / "maps")
    tuner.fit((np.repeat(images, 3, axis=-1), labels.astype("float32")), None, callbacks=[callback])
    assert [p.name for p in callback.paths] == ["epoch_001.png", "epoch_002.png"]
    assert all(p.stat().st_size > 1000 for p in callback.paths)
    first = callback.paths[0].read_bytes()
    tuner.keras_model().fit(np.repeat(images, 3, axis=-1), labels[:, None].astype("float32"), epochs=1, verbose=0,
                            callbacks=[callback])  # a fit of its own, counting epochs from 1 again
    assert callback.paths[-1].name == "epoch_001_fit2.png" and callback.paths[0].read_bytes() == first
    with pytest.raises(ExplainError, match=r"maps already holds maps of an earlier fit \(epoch_001.png, ...\); "
                                           "give a new output_dir"):
        explain.ExplainEveryEpoch(images[:2], tmp_path / "maps")
    with pytest.raises(ExplainError, match="every must be a positive"):
        explain.ExplainEveryEpoch(images[:2], tmp_path, every=0)


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def explained_run(tmp_path_factory):
    from test_experiment import _small

    from tfmed.config import ExperimentConfig
    from tfmed.run.experiment import run_experiment

    config = _small(ExperimentConfig.from_yaml("experiments/pneumonia_mnist_svm.yaml"),
                    tmp_path_factory.mktemp("explain_run"))
    config.report = ReportConfig(explain=True)
    return run_experiment(config)


def test_a_run_whose_images_are_gone_says_to_give_explain_the_images(explained_run, tmp_path):
    import shutil

    from tfmed.run.explain import explain_run
    from tfmed.run.rundir import RunDirectoryError

    copy = shutil.copytree(explained_run, tmp_path / "copy")  # as an anonymised copy: the images are not found
    splits = pd.read_csv(copy / "splits.csv", keep_default_na=False)
    splits["image"] = "gone/" + splits["image"].astype(str)
    splits.to_csv(copy / "splits.csv", index=False)
    with pytest.raises(RunDirectoryError, match=r"no longer has, e.g. .*gone/.*; restore the data, or give the images "
                                                r"to explain \(tfmed explain --model RUN IMAGE ...\)$"):
        explain_run(copy, verify=False, output=tmp_path / "out")


def test_a_group_without_a_case_is_said_in_the_report_caption_and_sentence(explained_run, tmp_path):
    from tfmed.run.artifact import TrainedModel
    from tfmed.run.explain import explain_for_report
    from tfmed.run.rundir import run_split_tables

    model = TrainedModel.load(explained_run)
    test = run_split_tables(explained_run, ("test",), remedy="")["test"]
    perfect = np.where(test.labels() == 1, 0.99, 0.01)  # scores that decide every image rightly: no FP, no FN
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _, caption, sentence = explain_for_report(run_dir, model, {"test": test}, {"test": perfect}, "gradcam")
    assert caption == "explanations (TP, TN)"
    assert "There is no FP or FN case in the test split at the stored threshold, so none is shown." in sentence
    shown = pd.read_csv(run_dir / "explanations" / "explanations.csv")
    assert shown["group"].tolist() == ["TP", "TN"]
    assert shown["score"].tolist() == [pytest.approx(0.99), pytest.approx(0.99)]  # P(explained class)


def test_a_layer_given_to_a_pixel_method_is_refused_before_any_map(explained_run, tmp_path, monkeypatch):
    import tfmed.explain.tables as tables
    from tfmed.run.artifact import TrainedModel
    from tfmed.run.explain import explain_run
    from tfmed.run.rundir import run_split_tables

    monkeypatch.setattr(tables, "explain", lambda *args, **kwargs: pytest.fail("a map was made"))
    with pytest.raises(ExplainError, match=r"method 'occlusion' works on the pixels and takes no layer"):
        explain_run(explained_run, method="occlusion", layer="block2_conv", output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model = TrainedModel.load(explained_run)
    table = run_split_tables(explained_run, ("test",), remedy="")["test"]
    with pytest.raises(ExplainError, match=r"method 'saliency' works on the pixels and takes no layer"):
        tables.explain_table(model.estimator, model.inputs, table, "saliency", layer="block2_conv")


def test_run_report_has_an_explanations_section(explained_run):
    html = (explained_run / "report.html").read_text()
    assert "explanations (TP, FP, FN, TN)" in html and "deletion AUC" in html
    record = json.loads((explained_run / "explanations" / "faithfulness.json").read_text())
    assert record["method"] == "gradcam" and record["split"] == "test"
    groups = pd.read_csv(explained_run / "explanations" / "explanations.csv")["group"].tolist()
    assert groups == ["TP", "FP", "FN", "TN"]
    # at 32 px EfficientNet-Lite0's last stage is 1 x 1: every Grad-CAM map is flat, and the run says why
    assert record["flat_maps"] == 4
    table = pd.read_csv(explained_run / "explanations" / "explanations.csv")
    assert table[["peak_row", "peak_col"]].isna().all().all()  # a flat map has no peak (not pixel 0, 0)
    assert record["notes"] == ["the layer Grad-CAM weighs (block6d_add) is 1 x 1 at 32 x 32 px, so each map is "
                               "one value spread over the image and cannot show where the model looks; use a larger "
                               "preprocess.image_size, an earlier layer (--layer), or a pixel method (occlusion, "
                               "integrated_gradients)"]
    assert "Note: the layer Grad-CAM weighs (block6d_add) is 1 x 1 at 32 x 32 px" in html


def test_cases_of_class_0_are_the_most_confident_of_class_0():
    from tfmed.run.explain import explained_scores, select_cases
    from tfmed.run.artifact import TrainedModel

    model = TrainedModel("svm", "binary", ["normal", "pneumonia"], None, None, None)
    labels, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.03, 0.08, 0.96, 0.98, 0.7, 0.2])
    decisions = (scores >= 0.5).astype(int)
    cases = dict((group, row) for row, group in select_cases(model, labels, scores, decisions, 0, 1))
    # class 0's true positives are the normals called normal, the surest first (P(normal) = 0.97, not 0.92)
    assert cases == {"TP": 0, "FP": 5, "FN": 4, "TN": 3}
    assert explained_scores(scores, 0)[[0, 3]].round(2).tolist() == [0.97, 0.02]
    assert explained_scores(scores, decisions).round(2).tolist() == [0.97, 0.92, 0.96, 0.98, 0.7, 0.8]
    assert explained_scores(np.array([[0.1, 0.9], [0.6, 0.4]]), np.array([1, 0])).tolist() == [0.9, 0.6]


def test_cli_explains_test_cases_and_given_images(explained_run, tmp_path):
    from tfmed.run.cli import main
    from tfmed.run.explain import explain_run

    out = tmp_path / "cases"
    assert main(["explain", "--model", str(explained_run), "--method", "occlusion", "--per-group", "1",
                 "--output", str(out)]) == 0
    frame = pd.read_csv(out / "explanations.csv")
    assert list(frame.columns) == ["file", "group", "label", "score", "decision", "explained_class", "method",
                                   "peak_row", "peak_col", "overlay"]
    assert set(frame["method"]) == {"occlusion"} and all((out / name).is_file() for name in frame["overlay"])
    # numbered, not named after images whose names may hold a patient's id
    assert all(re.fullmatch(r"\d{3}_(TP|FP|FN|TN)\.png", name) for name in frame["overlay"]), frame["overlay"]
    record = json.loads((out / "faithfulness.json").read_text())
    for key in ("method", "deletion_auc", "random_deletion_auc", "insertion_auc"):
        assert key in record and record[key] is not None
    # the run's RBF SVM re-drawn lies far from its support vectors: it scores every image and its blurred copy
    # alike, so the sanity check is not made, and the record says why (it passed as a figure of flat maps before)
    assert record["sanity_rank_correlation"] is None
    assert record["sanity_notes"][0].startswith("the model-randomisation check was not made")
    import cv2

    image = tmp_path / "xray.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).uniform(0, 255, (40, 40))).astype(np.uint8))
    given = tmp_path / "given"
    assert main(["explain", "--model", str(explained_run), str(image), "--output", str(given)]) == 0
    frame = pd.read_csv(given / "explanations.csv")
    assert len(frame) == 1 and frame["file"][0].endswith("xray.png")
    with pytest.raises(ExplainError, match=r"--per-group \(3\) picks cases of the run's own split, and images "
                       "were given"):
        explain_run(explained_run, [str(image)], per_group=3, output=tmp_path / "unused")
    assert not (tmp_path / "unused").exists()


def test_cli_index_takes_a_class_name(explained_run, tmp_path, capsys):
    import cv2

    from tfmed.run.cli import main

    image = tmp_path / "xray.png"
    cv2.imwrite(str(image), (np.random.default_rng(1).uniform(0, 255, (40, 40))).astype(np.uint8))
    for index, name in (("normal", "normal"), ("1", "pneumonia")):
        out = tmp_path / f"by_{index}"
        assert main(["explain", "--model", str(explained_run), str(image), "--index", index,
                     "--output", str(out)]) == 0
        assert pd.read_csv(out / "explanations.csv")["explained_class"].tolist() == [name]
    assert main(["explain", "--model", str(explained_run), str(image), "--index", "nodule",
                 "--output", str(tmp_path / "refused")]) == 2
    assert "--index nodule is not a class of this model: give a class's number or name (0 = normal, " \
           "1 = pneumonia)" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_cli_errors_are_one_line(explained_run, tmp_path, capsys):
    from tfmed.run.cli import main

    assert main(["explain", "--model", str(explained_run), "--method", "lime"]) == 2
    assert "unknown explanation method 'lime'; allowed:" in capsys.readouterr().err
    assert main(["explain", "--model", str(explained_run), "--layer", "nope", "--per-group", "1",
                 "--output", str(tmp_path / "bad")]) == 2
    assert "layer 'nope' is not in model" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    before = sorted((explained_run / "explanations").iterdir())
    assert main(["explain", "--model", str(explained_run), "--layer", "nope", "--per-group", "1"]) == 2
    assert sorted((explained_run / "explanations").iterdir()) == before  # no empty timestamped folder left
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "file").write_text("x")
    assert main(["explain", "--model", str(explained_run), "--output", str(taken)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_an_explanation_interrupted_while_writing_leaves_an_empty_output_empty(explained_run, tmp_path,
                                                                                monkeypatch):
    import tfmed.run.explain as explain_module
    from tfmed.run.explain import explain_run

    def interrupted(out, *_, **__):
        (out / "explanations.csv").write_text("file\n")  # some files written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(explain_module, "write_explanations", interrupted)
    given = tmp_path / "given"
    given.mkdir()  # an --output made beforehand: left as empty as it was given, not half-written
    with pytest.raises(KeyboardInterrupt):
        explain_run(explained_run, per_group=1, output=given)
    assert list(given.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        explain_run(explained_run, per_group=1, output=tmp_path / "new")
    assert not (tmp_path / "new").exists()


@dataclass
class ArrayInputs:
    """Stands in for ImageInputs: every table reads as the same arrays."""

    images: np.ndarray
    tta: object = None
    view: object = None
    volume_views: object = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def arrays(self, table, batch_size: int = 64):
        return self.images, None


def test_explain_table_averages_ensemble_members(data, tuner, svm):
    from tfmed.modes.ensemble import Ensemble

    positives, boxes = data[2], data[3]
    ensemble = Ensemble.of_fitted([tuner, svm], ["tuned", "features"], "binary")
    result = explain.explain_table(ensemble, ArrayInputs(positives), None, "gradcam")
    assert [part.name for part in result.parts] == ["tuned", "features"]
    expected = explain.normalise((result.parts[0].maps + result.parts[1].maps) / 2)
    np.testing.assert_allclose(result.maps, expected, atol=1e-6)
    assert peak_in_square(result.maps, boxes)
    trust = result.trust(steps=5)
    assert [m["member"] for m in trust["members"]] == ["tuned", "features"]
    assert trust["deletion_auc"] == pytest.approx(np.mean([m["deletion_auc"] for m in trust["members"]]))
    with pytest.raises(ExplainError, match="2 members"):
        explain.explain_table(ensemble, ArrayInputs(positives), None, layer="block2_conv")
    letterboxed = ArrayInputs(positives, preprocess=PreprocessConfig(resize="pad"))
    framed_apart = Ensemble.of_fitted([tuner, svm], ["tuned", "features"], "binary", [letterboxed, None])
    with pytest.raises(ExplainError, match=r"in different ways \(tuned: preprocess.resize pad, features: "
                                           r"preprocess.resize plain\), so their maps do not lie over the same"):
        explain.explain_table(framed_apart, ArrayInputs(positives), None, "gradcam")
    assert explain.explain_table(Ensemble.of_fitted([tuner, svm], ["tuned", "features"], "binary", [
        letterboxed, letterboxed]), ArrayInputs(positives), None, "gradcam").resize == "pad"  # the boxes' frame


def test_multiclass_and_multilabel_runs_need_an_index():
    from tfmed.run.artifact import TrainedModel
    from tfmed.run.explain import explained_classes, group_class

    multiclass = TrainedModel("svm", "multiclass", ["a", "b", "c"], None, None, None)
    with pytest.raises(ExplainError, match="give --index .*0 = a, 1 = b, 2 = c"):
        group_class(multiclass, None)
    with pytest.raises(ExplainError, match="--index 7 is not a class"):
        group_class(multiclass, 7)
    assert group_class(multiclass, 2) == 2
    assert group_class(multiclass, "c") == group_class(multiclass, "2") == 2  # by name, or a number given as text
    with pytest.raises(ExplainError, match=r"--index d is not a class of this model: give a class's number or name "
                                           r"\(0 = a, 1 = b, 2 = c\)"):
        group_class(multiclass, "d")
    binary = TrainedModel("svm", "binary", ["normal", "pneumonia"], None, None, None)
    with pytest.raises(ExplainError, match="--index 5 is not a class"):
        group_class(binary, 5)  # a binary model's index is checked too (it was passed on)
    graded = TrainedModel("svm", "multiclass", ["1", "2", "3"], None, None, None)
    assert group_class(graded, "1") == 1  # digits are a number, never a name: class "2"
    assert group_class(binary, "Pneumonia") == 1  # a name in another case, as evaluate reads labels
    spelt_twice = TrainedModel("svm", "multiclass", ["mass", "Mass", "nodule"], None, None, None)
    assert group_class(spelt_twice, "Mass") == 1
    with pytest.raises(ExplainError, match="--index MASS is not a class"):
        group_class(spelt_twice, "MASS")  # two classes in other cases: which one is not guessed
    with pytest.raises(ExplainError, match="--index 3 is not a class"):
        group_class(graded, "3")
    assert explained_classes(multiclass, np.array([2, 0]), None).tolist() == [2, 0]
    multilabel = TrainedModel("svm", "multilabel", ["x", "y"], None, None, None)
    with pytest.raises(ExplainError, match="multilabel model needs --index"):
        explained_classes(multilabel, np.zeros((2, 2)), None)


def test_gradcam_of_a_layer_that_is_1_x_1_warns_that_its_maps_are_flat(data):
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, SIZE, strides=SIZE, activation="relu", name="whole_image")(inputs)  # 1 x 1
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(x)))
    with pytest.warns(explain.FlatMapWarning, match=r"\(whole_image\) is 1 x 1 at 32 x 32 px, so each map is one"):
        maps = explain.gradcam(model, data[2][:2])
    assert np.ptp(maps, axis=(1, 2)).max() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", explain.FlatMapWarning)
        explain.occlusion(model, data[2][:2])  # a pixel method: no warning


def test_a_mosaics_removed_pixels_are_blurred_view_by_view():
    """A removed pixel of a view takes its own view's blur, as a 2-D image's does, not a blur of the whole
    mosaic mixing the neighbouring planes at three times the strength."""
    from tfmed.explain.faithfulness import removed_image
    from tfmed.explain.mosaic import ViewGrid, to_mosaic

    rng = np.random.default_rng(0)
    views = rng.uniform(0, 255, (1, 3, 16, 16, 1)).astype(np.float32)
    views[0, 0] = 230.0  # a bright first view beside two darker ones
    grid = ViewGrid.for_views(3, 16)
    removed = removed_image(to_mosaic(views, grid)[0], grid)
    for v in range(3):
        np.testing.assert_allclose(removed[:, 16 * v:16 * (v + 1)], removed_image(views[0, v]), atol=1e-4)
    assert removed[:, :16].min() == pytest.approx(230.0)  # nothing of the darker views leaks in


def test_an_ensemble_explains_its_own_top_class_in_every_member():
    # members that disagree on a row's class: every member's map is of the class the ensemble decided
    from tfmed.data.pipeline import ImageInputs
    from tfmed.data.table import ImageTable
    from tfmed.modes.ensemble import Ensemble

    rng = np.random.default_rng(3)
    y = np.arange(36) % 3
    images = rng.uniform(0, 255, (36, SIZE, SIZE, 1)).astype("float32")
    for k in range(3):
        images[y == k, k * 8:k * 8 + 8] += 60
    images = np.clip(images, 0, 255)
    members = [FeatureSVM(backbone="explain_test_net", weights=None, taps=(tap,), image_size=SIZE, kernel="linear",
                          C=(1.0,), cv=3, task="multiclass").fit(np.repeat(images, 3, axis=-1), y)
               for tap in ("early", "late")]
    ensemble = Ensemble.of_fitted(members, ["early", "late"], "multiclass")
    table = ImageTable(pd.DataFrame({"label": y[:8], "array_index": np.arange(8)}), ["a", "b", "c"], "multiclass",
                       images=images[:8, ..., 0].astype(np.uint8))
    inputs = ImageInputs(PreprocessConfig(image_size=SIZE, intensity="minmax"))
    decided = np.argmax(ensemble.predict_table(table, inputs), axis=1)
    result = explain.explain_table(ensemble, inputs, table, "saliency")
    np.testing.assert_array_equal(result.index, decided)
    for part in result.parts:
        np.testing.assert_allclose(part.maps, explain.explain(part.model, part.images, "saliency", index=decided),
                                   atol=1e-5)
    own = [np.argmax(part.model.predict(part.images, verbose=0), axis=1) for part in result.parts]
    assert any((classes != decided).any() for classes in own), "the members agree everywhere: nothing is tested"


def _min_max(maps):
    maps = np.asarray(maps, float)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)


def test_occlusion_averages_the_drops_of_the_patches_covering_each_pixel():
    """Each pixel's occlusion value is the MEAN drop over the patches that cover it; with patch 4 and stride 2
    on 8 x 8 a corner is covered once and the centre four times, so summing instead changes the map."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    model.layers[-1].set_weights([rng.normal(0, 0.05, (64, 1)).astype("float32"), np.zeros(1, "float32")])
    image = rng.uniform(0, 255, (1, 8, 8, 1)).astype("float32")
    base = float(model.predict(image, verbose=0)[0, 0])
    total, cover = np.zeros((8, 8)), np.zeros((8, 8))
    for r in (0, 2, 4):
        for c in (0, 2, 4):
            occluded = image.copy()
            occluded[0, r:r + 4, c:c + 4] = image[0].mean()
            total[r:r + 4, c:c + 4] += base - float(model.predict(occluded, verbose=0)[0, 0])
            cover[r:r + 4, c:c + 4] += 1
    assert cover.min() == 1 and cover.max() == 4
    expected = _min_max(np.maximum(total / cover, 0.0))
    np.testing.assert_allclose(explain.occlusion(model, image, patch=4, stride=2)[0], expected, atol=1e-3)


def test_gradcam_pp_weights_follow_the_alpha_formula_with_the_activation_sum():
    """Grad-CAM++ alpha = g^2 / (2 g^2 + sum(A) g^3). With global average pooling into a Dense logit the
    gradient is the Dense weight / (H * W) at every position, so the map follows by hand; dropping sum(A)
    from the denominator changed it."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 1))
    activations = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    logit = keras.layers.Dense(1, name="logit")(keras.layers.GlobalAveragePooling2D()(activations))
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(logit))
    kernel = np.array([0.5, -0.3, 0.8, 0.2], "float32")[:, None]
    model.get_layer("logit").set_weights([kernel, np.zeros(1, "float32")])
    images = np.random.default_rng(2).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    A = keras.Model(inputs, activations).predict(images, verbose=0).astype(float)  # (2, 16, 16, 4)
    g = np.broadcast_to(kernel[:, 0] / (16 * 16), A.shape).astype(float)          # d logit / d A
    denominator = 2 * g ** 2 + A.sum(axis=(1, 2), keepdims=True) * g ** 3
    alpha = g ** 2 / np.where(denominator != 0, denominator, 1)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    expected = _min_max(np.maximum((weights[:, None, None, :] * A).sum(-1), 0.0))
    np.testing.assert_allclose(explain.gradcam_pp(model, images, layer="conv"), expected, atol=1e-3)
