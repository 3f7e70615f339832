"""Test-time augmentation: the fixed view transforms, the views of a config, the pipeline's view, TTA scoring."""
import math

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmed.config import PreprocessConfig, TTAConfig
from tfmed.data.pipeline import ImageInputs, PipelineError, load_arrays, make_dataset
from tfmed.data.table import ImageTable
from tfmed.data.transforms import (CentralZoom, Compose, Flip, Gamma, RandomFlip, Rot90, Rotate, Shift,
                                   TransformError, rotate)
from tfmed.data.tta import build_views
from tfmed.modes import FeatureSVM, FineTuner
from tfmed.modes.features import FeatureError
from tfmed.modes.base import scores_from_probabilities

RAW = dict(intensity="none", resize="plain")


def ramp(h=4, w=5):
    return np.arange(1, h * w + 1, dtype=np.float32).reshape(h, w, 1)


def memory_table(n=6, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, (n, size, size)).astype(np.uint8)
    frame = pd.DataFrame({"image": [f"m#{i}" for i in range(n)], "array_index": range(n), "label": np.arange(n) % 2})
    return ImageTable(frame, ["neg", "pos"], "binary", images=images)


# ---------------------------------------------------------------- transforms
def test_shift_moves_whole_pixels_and_fills_zeros():
    img = ramp()
    right = Shift(dx=2)(img).numpy()
    np.testing.assert_array_equal(right[:, 2:], img[:, :-2])
    np.testing.assert_array_equal(right[:, :2], 0)
    up = Shift(dy=-1)(img).numpy()
    np.testing.assert_array_equal(up[:-1], img[1:])
    np.testing.assert_array_equal(up[-1], 0)
    both = Shift(dx=-1, dy=1)(img).numpy()
    np.testing.assert_array_equal(both[1:, :-1], img[:-1, 1:])
    assert not Shift(1, 1).random


def test_rotate_is_rotate_in_degrees_and_turns_counter_clockwise():
    img = ramp(5, 5)
    np.testing.assert_allclose(Rotate(-5)(img).numpy(), rotate(img, math.radians(-5)).numpy())
    marker = np.zeros((3, 3, 1), np.float32)
    marker[0, 1] = 1.0  # top middle -> middle left
    turned = np.rint(Rotate(90)(marker).numpy()[..., 0])
    assert turned[1, 0] == 1.0 and turned.sum() == 1.0


def test_central_zoom_crops_the_centre_and_resizes_back():
    img = np.random.default_rng(0).uniform(0, 255, (8, 8, 2)).astype(np.float32)
    out = CentralZoom(0.5)(img).numpy()
    expected = tf.image.resize(img[2:6, 2:6], [8, 8], method="bilinear").numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    ring = np.pad(np.ones((8, 8, 1), np.float32), [(1, 1), (1, 1), (0, 0)])  # 10 x 10, zero border
    np.testing.assert_array_equal(CentralZoom(0.8)(ring).numpy(), 1.0)
    np.testing.assert_allclose(CentralZoom(1.0)(img).numpy(), img, rtol=1e-6)


def test_gamma_is_a_curve_on_the_clipped_pixel_scale():
    x = np.array([-10.0, 0.0, 64.0, 128.0, 255.0, 300.0], np.float32).reshape(1, 6, 1)
    out = Gamma(2.0)(x).numpy().ravel()
    clipped = np.clip(x.ravel(), 0, 255)
    np.testing.assert_allclose(out, 255 * (clipped / 255) ** 2, rtol=1e-6)
    assert out[2] == pytest.approx(16.0627, abs=1e-4) and out[4] == 255.0 and out[0] == 0.0


def test_flip_is_exact():
    img = ramp()
    np.testing.assert_array_equal(Flip(horizontal=True)(img).numpy(), img[:, ::-1])
    np.testing.assert_array_equal(Flip(vertical=True)(img).numpy(), img[::-1])
    np.testing.assert_array_equal(Flip(True, True)(img).numpy(), img[::-1, ::-1])


def test_rot90_turns_exactly_counter_clockwise():
    img = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    for turns in range(-1, 5):
        np.testing.assert_array_equal(Rot90(turns)(img).numpy(), np.rot90(img, turns))


@pytest.mark.parametrize("make", [lambda: Rot90(1.5), lambda: Flip(), lambda: Gamma(0), lambda: CentralZoom(0),
                                  lambda: CentralZoom(1.5), lambda: Shift(float("nan")), lambda: Rotate(float("inf"))])
def test_invalid_view_parameters_are_refused(make):
    with pytest.raises(TransformError):
        make()


# --------------------------------------------------------------------- views
@pytest.mark.parametrize("config", [
    None, TTAConfig(), TTAConfig(enabled=True), TTAConfig(enabled=True, hflip=True, vflip=True),
    TTAConfig(enabled=True, shift=0, zoom=0), TTAConfig(enabled=True, rotation_degrees=0, gamma=[]),
    TTAConfig(enabled=True, shift=0.2, rotation_degrees=10, zoom=0.25, gamma=[0.5, 0.8, 2.0], vflip=True),
    TTAConfig(enabled=True, dihedral=True)])
@pytest.mark.parametrize("size", [16, 224])
def test_view_count_matches_the_config(config, size):
    views = build_views(config, size)
    assert len(views) == (1 if config is None else config.view_count())
    assert views[0][0] == "identity" and len({name for name, _ in views}) == len(views)
    assert not any(transform.random for _, transform in views)


@pytest.mark.parametrize("values, message", [
    ({"tta": {"enabled": True, "gamma": [1.0, 1.25]}}, r"tta.gamma is \[1.0, 1.25\]; a gamma of 1, or one given twice"),
    ({"tta": {"enabled": True, "gamma": [0.8, 0.8]}}, "a gamma of 1, or one given twice"),
    ({"tta": {"enabled": True, "shift": 0, "rotation_degrees": 0, "zoom": 0, "gamma": []}},
     "tta.enabled is true; it is true but every view is turned off"),
    ({"preprocess": {"image_size": 32}, "tta": {"enabled": True, "shift": 0.01}},
     r"tta.shift is 0.01, which at preprocess.image_size 32 rounds to 0 pixels: .* use 0.0313 \(1 pixel\) or more"),
], ids=["gamma_1", "gamma_twice", "no_view", "shift_0_px"])
def test_views_that_repeat_the_image_are_refused(values, message):
    from tfmed.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)
    ExperimentConfig.from_dict({"preprocess": {"image_size": 32}, "tta": {"enabled": True, "shift": 0.02}})  # 1 px


@pytest.mark.parametrize("image_size", [28, 32, 64, 96, 224, 512, 1500, 2048, 4096])
def test_the_smallest_shift_a_refusal_offers_is_accepted(image_size):
    import re

    from tfmed.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        TTAConfig(enabled=True, shift=0.1 / image_size).shift_pixels(image_size)
    offered = float(re.search(r"use ([0-9.]+) \(1 pixel\) or more", str(refused.value)).group(1))
    assert TTAConfig(enabled=True, shift=offered).shift_pixels(image_size) == 1


def test_building_views_whose_shift_rounds_to_0_pixels_is_refused_from_python_too():
    from tfmed.config import ConfigError

    with pytest.raises(ConfigError, match="tta.shift is 0.01, which at preprocess.image_size 32 rounds to 0 pixels"):
        build_views(TTAConfig(enabled=True, shift=0.01), 32)
    assert [name for name, _ in build_views(TTAConfig(enabled=True, shift=0.01), 64)][1] == "shift_left"


def test_views_are_built_in_order_from_the_settings():
    views = dict(build_views(TTAConfig(enabled=True, shift=0.1, rotation_degrees=7.5, zoom=0.2, gamma=[0.5],
                                       hflip=True, vflip=True), 40))
    assert list(views) == ["identity", "shift_left", "shift_right", "shift_up", "shift_down", "rotate_+7.5",
                           "rotate_-7.5", "zoom", "gamma_0.5", "hflip", "vflip"]
    assert (views["shift_left"].dx, views["shift_down"].dy) == (-4, 4)
    assert views["rotate_-7.5"].degrees == -7.5 and views["zoom"].keep_fraction == pytest.approx(0.8)
    assert views["gamma_0.5"].gamma == 0.5 and views["vflip"].vertical and not views["vflip"].horizontal


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    config = TTAConfig(enabled=True, shift=0, rotation_degrees=0, zoom=0, gamma=[], dihedral=True)
    image = np.random.default_rng(0).uniform(0, 255, (6, 6, 1)).astype(np.float32)
    seen = [transform(image).numpy() for _, transform in build_views(config, 6)]
    expected = [np.rot90(flipped, k) for flipped in (image, image[:, ::-1]) for k in range(4)]
    assert len(seen) == config.view_count() == 8
    assert sorted(x.tobytes() for x in seen) == sorted(x.tobytes() for x in expected)
    assert TTAConfig(enabled=True, dihedral=True).view_count() == 17


@pytest.mark.parametrize("flip", ["hflip", "vflip"])
def test_dihedral_refuses_a_flip_it_already_includes(flip):
    from tfmed.config import ConfigError

    with pytest.raises(ConfigError, match=f"tta.{flip}.*already scores both flips"):
        TTAConfig(enabled=True, dihedral=True, **{flip: True})


def test_image_inputs_views():
    pre = PreprocessConfig(image_size=32)
    plain = ImageInputs(pre)
    assert plain.views() == [plain] and plain.view_count == 1
    off = ImageInputs(pre, tta=TTAConfig())
    assert off.views() == [off] and off.view_count == 1
    on = ImageInputs(pre, stats={"min": 0.0}, tta=TTAConfig(enabled=True))
    views = on.views()
    assert len(views) == on.view_count == 10
    assert all(v.tta is None and v.preprocess == pre and v.stats == {"min": 0.0} for v in views)
    assert [repr(v.view) for v in views] == [repr(t) for _, t in build_views(on.tta, 32)]
    assert all(v.views() == [v] for v in views)
    assert ImageInputs(pre) == ImageInputs(pre) and ImageInputs(pre) != on


# ------------------------------------------------------------------ pipeline
@pytest.mark.parametrize("cache", [False, True])
def test_make_dataset_applies_the_view_before_the_tail(cache):
    table = memory_table()
    pre = PreprocessConfig(image_size=8, channels=3, **RAW)

    def images(view):
        ds = make_dataset(table, pre, training=False, batch_size=4, cache=cache, view=view)
        return np.concatenate([x.numpy() for x, _ in ds])

    plain, shifted = images(None), images(Shift(dx=2))
    assert shifted.shape == plain.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(shifted[:, :, 2:], plain[:, :, :-2])
    np.testing.assert_array_equal(shifted[:, :, :2], 0)
    np.testing.assert_array_equal(images(Compose([])), plain)
    x, y = load_arrays(table, pre, view=Shift(dy=1))
    np.testing.assert_array_equal(x[:, 1:], plain[:, :-1])
    np.testing.assert_array_equal(y, table.labels())


def test_a_view_is_never_applied_when_training():
    table = memory_table()
    pre = PreprocessConfig(image_size=8, channels=1, **RAW)
    with pytest.raises(PipelineError, match="not training"):
        make_dataset(table, pre, training=True, view=Shift(dx=1))
    with pytest.raises(PipelineError, match="deterministic"):
        make_dataset(table, pre, training=False, view=RandomFlip(horizontal=True))
    inputs = ImageInputs(pre, view=Gamma(2.0))
    train_x = np.concatenate([x.numpy() for x, _ in inputs.dataset(table, training=True, batch_size=6).take(1)])
    raw = np.sort(table.images.astype(np.float32).reshape(6, -1), axis=0)
    np.testing.assert_array_equal(np.sort(train_x.reshape(6, -1), axis=0), raw)  # no gamma: a permutation
    view_x, _ = inputs.arrays(table)
    np.testing.assert_allclose(view_x[..., 0], 255 * (table.images / 255.0) ** 2, rtol=1e-5)


# -------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def svm_and_table():
    table = memory_table(n=12, size=32, seed=1)
    pre = PreprocessConfig(image_size=32)
    x, y = load_arrays(table, pre)
    model = FeatureSVM(weights=None, taps=("early",), image_size=32, C=(1.0,), cv=2, batch_size=16).fit(x, y)
    return model, table, pre


def test_svm_tta_scores_are_the_mean_over_the_views(svm_and_table):
    model, table, pre = svm_and_table
    inputs = ImageInputs(pre, tta=TTAConfig(enabled=True, rotation_degrees=0, gamma=[0.5]))
    scores = model.predict_table(table, inputs)
    per_view = [model.predict_table(table, view) for view in inputs.views()]
    assert len(per_view) == 7 and scores.shape == (12,)
    np.testing.assert_allclose(scores, np.mean(per_view, axis=0), rtol=1e-12)
    assert not np.allclose(scores, per_view[0])


def test_svm_scores_without_tta_are_unchanged(svm_and_table):
    model, table, pre = svm_and_table
    before = scores_from_probabilities("binary", model.predict_proba(load_arrays(table, pre)[0]))
    for inputs in (ImageInputs(pre), ImageInputs(pre, tta=TTAConfig())):
        np.testing.assert_array_equal(model.predict_table(table, inputs), before)


def test_finetune_scores_through_every_view(monkeypatch):
    table = memory_table()
    pre = PreprocessConfig(image_size=8, channels=1, **RAW)
    tuner = FineTuner("mobilenet_v2", "binary", 1, weights=None)
    monkeypatch.setattr(tuner, "predict", lambda ds: np.concatenate(
        [x.numpy().mean(axis=(1, 2, 3))[:, None] for x, _ in ds]))
    inputs = ImageInputs(pre, tta=TTAConfig(enabled=True, shift=0, rotation_degrees=0, zoom=0, gamma=[2.0]))
    scores = tuner.predict_table(table, inputs)
    pixels = table.images.astype(np.float64)
    expected = (pixels.mean(axis=(1, 2)) + (255 * (pixels / 255) ** 2).mean(axis=(1, 2))) / 2
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    np.testing.assert_allclose(tuner.predict_table(table, ImageInputs(pre)), pixels.mean(axis=(1, 2)), rtol=1e-5)


# ------------------------------------------------------------------ runs
def test_gamma_views_are_refused_where_images_are_not_on_the_pixel_scale():
    from tfmed.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="tta.gamma views work on the 0-255 pixel scale"):
        ExperimentConfig.from_dict({"preprocess": {"intensity": "standardize"}, "tta": {"enabled": True}})
    config = ExperimentConfig.from_dict({"preprocess": {"intensity": "standardize"},
                                         "tta": {"enabled": True, "gamma": []}})
    assert config.tta.view_count() == 8


@pytest.mark.slow
def test_a_run_with_tta_reports_its_views_and_evaluate_reproduces_it(tmp_path):
    from pathlib import Path

    from tfmed.config import ExperimentConfig
    from tfmed.run.artifact import TrainedModel
    from tfmed.run.evaluate import evaluate_run, load_metrics
    from tfmed.run.experiment import run_experiment
    from test_experiment import _small, _tiny_medmnist

    root = Path(__file__).resolve().parent.parent
    config = _small(ExperimentConfig.from_yaml(root / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path, n=80)}"
    config.tta = TTAConfig(enabled=True, gamma=[0.8])
    run = run_experiment(config)
    metrics = load_metrics(run)
    assert metrics["tta_views"] == 9
    model = TrainedModel.load(run)
    assert model.tta == config.tta  # saved with the model, so evaluate and predict use the same views
    again = evaluate_run(run, output=tmp_path / "again")
    assert load_metrics(again)["splits"]["test"] == metrics["splits"]["test"]
    assert load_metrics(again)["tta_views"] == 9  # the evaluation says it too, and its report
    assert "<td>test-time views</td><td>9</td>" in (again / "report.html").read_text().replace("\n", "")
    plain = TrainedModel.load(run)
    plain.tta = TTAConfig()
    test = pd.read_csv(run / "predictions.csv").query("split == 'test'")
    from tfmed.run.evaluate import run_test_table

    table, _ = run_test_table(run)
    assert np.allclose(model.predict(table), test["score"])
    assert not np.allclose(plain.predict(table), test["score"])  # the views changed the scores
    assert "test-time views" in (run / "report.html").read_text()


# ------------------------------------------------------- fitting on the views
DIHEDRAL = TTAConfig(enabled=True, shift=0, rotation_degrees=0, zoom=0, gamma=[], dihedral=True)
FIT_VIEWS_SVM = dict(weights=None, taps=("early",), image_size=32, C=(0.1, 1.0, 10.0), cv=2, batch_size=16)


@pytest.fixture(scope="module")
def fitted_on_views():
    table = memory_table(n=16, size=32, seed=2)
    inputs = ImageInputs(PreprocessConfig(image_size=32), tta=DIHEDRAL)
    folds = []
    original = FeatureSVM._splits

    def spy(self, y, groups, *args, **kwargs):
        splits = original(self, y, groups, *args, **kwargs)
        folds.append((groups, splits))
        return splits

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureSVM, "_splits", spy)
        model = FeatureSVM(**FIT_VIEWS_SVM, fit_views=True).fit_tables(table, None, inputs)
    return model, table, inputs, folds


def test_fit_views_fits_on_every_view_of_each_training_image(fitted_on_views):
    model, table, inputs, _ = fitted_on_views
    views = inputs.views()
    X = np.concatenate([view.arrays(table)[0] for view in views])
    y = np.tile(table.labels(), len(views))
    reference = FeatureSVM(**FIT_VIEWS_SVM).fit(X, y, groups=np.tile(np.arange(len(table)).astype(str), len(views)))
    pd.testing.assert_frame_equal(model.cv_results_.drop(columns="mean_fit_time"),
                                  reference.cv_results_.drop(columns="mean_fit_time"))
    np.testing.assert_allclose(model.predict_table(table, inputs), reference.predict_table(table, inputs), rtol=1e-9)
    plain = FeatureSVM(**FIT_VIEWS_SVM).fit_tables(table, None, inputs)
    assert not np.allclose(model.predict_table(table, inputs), plain.predict_table(table, inputs))
    assert "training rows" in model.report_facts() and "training rows" not in plain.report_facts()


def test_fit_views_keeps_the_views_of_one_image_in_one_fold(fitted_on_views):
    _, table, inputs, folds = fitted_on_views
    assert folds  # the search and the calibration folds
    for groups, splits in folds:
        assert len(groups) == len(table) * inputs.view_count
        for train, held_out in splits:
            assert not set(groups[train]) & set(groups[held_out])


def test_fit_views_needs_test_time_views():
    table = memory_table(n=8, size=32)
    model = FeatureSVM(**FIT_VIEWS_SVM, fit_views=True)
    with pytest.raises(FeatureError, match="enable tta"):
        model.fit_tables(table, None, ImageInputs(PreprocessConfig(image_size=32)))
    with pytest.raises(FeatureError, match="append augmented copies"):
        model.fit(np.zeros((8, 32, 32, 1)), np.arange(8) % 2)


def test_fit_views_config_needs_tta_and_reaches_ensemble_members():
    from tfmed.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="model.svm.fit_views.*tta.enabled is false"):
        ExperimentConfig.from_dict({"model": {"svm": {"fit_views": True}}})
    members = [{"mode": "svm", "svm": {"fit_views": True}}, {"mode": "svm", "backbone": "efficientnet_lite1"}]
    with pytest.raises(ConfigError, match=r"members\[0\].*fit_views"):
        ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": members}}})
    config = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": members}},
                                         "tta": {"enabled": True, "dihedral": True}})
    assert config.member_experiment(0).tta == config.tta
    assert FeatureSVM.from_config(config.member_experiment(0)).fit_views


def test_sweep_refuses_fit_views():
    from tfmed.modes.sweep import sweep_layers

    x = np.zeros((8, 32, 32, 1))
    with pytest.raises(FeatureError, match="remove fit_views"):
        sweep_layers(x, np.arange(8) % 2, x, np.arange(8) % 2, taps=["early"], fit_views=True, weights=None)


def test_extract_tables_stores_every_view_that_fit_views_reads(tmp_path, monkeypatch):
    table = memory_table(n=8, size=32, seed=3)
    inputs = ImageInputs(PreprocessConfig(image_size=32), tta=DIHEDRAL)
    model = FeatureSVM(**FIT_VIEWS_SVM, fit_views=True, cache_dir=str(tmp_path))
    model.extract_tables({"train": table}, inputs)

    def no_pass(*args, **kwargs):
        raise AssertionError("a backbone pass after extract_tables")
    monkeypatch.setattr(FeatureSVM, "_dataset_blocks", no_pass)
    monkeypatch.setattr(FeatureSVM, "_blocks", no_pass)
    model.fit_tables(table, None, inputs)  # every view of the training images is read from the store
    assert len(model.models_) == 1
