"""FeatureSVM: the features + SVM mode as a scikit-learn estimator."""
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC

import tfmed.backbones
from tfmed.config import ExperimentConfig
from tfmed.modes import FeatureSVM
from tfmed.backbones.features import PixelRangeError
from tfmed.modes import features as F
from tfmed.modes import svm as S

SIZE = 32


def make_images(n, n_classes=2, seed=0, size=SIZE, channels=1):
    """Noisy images whose class is a bright band at a class-specific height."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    X = rng.uniform(0, 100, (n, size, size, channels)).astype(np.float32)
    band = size // (n_classes + 1)
    for c in range(n_classes):
        X[y == c, c * band + 2: c * band + band, 2:-2] += 150.0
    return X, y


def small(**params):
    base = dict(weights=None, taps=("early",), image_size=SIZE, C=(1.0,), cv=3, batch_size=16)
    base.update(params)
    return FeatureSVM(**base)


@pytest.fixture(scope="module")
def binary_data():
    return make_images(36, 2, seed=0)


@pytest.fixture(scope="module")
def binary_model(binary_data):
    X, y = binary_data
    return small(C=(0.1, 1.0, 10.0)).fit(X, y)


def test_binary_fit_predict_shapes_and_quality(binary_model):
    X_new, y_new = make_images(20, 2, seed=5)
    proba = binary_model.predict_proba(X_new)
    assert proba.shape == (20, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    scores = binary_model.decision_function(X_new)
    assert scores.shape == (20,)
    assert binary_model.predict(X_new).shape == (20,)
    # the predictions follow the SVM's own decision boundary
    np.testing.assert_array_equal(binary_model.predict(X_new), binary_model.classes_[(scores > 0).astype(int)])
    assert (binary_model.predict(X_new) == y_new).mean() >= 0.8
    assert binary_model.task_ == "binary"


def test_final_svm_is_an_svc_refit_on_standardised_training_features(binary_model, binary_data):
    X, y = binary_data
    features = binary_model.features(X)
    np.testing.assert_allclose(features.mean(axis=0), 0.0, atol=1e-4)
    spread = features.std(axis=0)
    np.testing.assert_allclose(spread[spread > 0], 1.0, atol=1e-3)
    reference = SVC(kernel="rbf", class_weight="balanced", **binary_model.best_params_).fit(features, y)
    np.testing.assert_allclose(binary_model.decision_function(X), reference.decision_function(features),
                               rtol=1e-6, atol=1e-6)


def test_grid_table_matches_sklearn_cross_validation(binary_model, binary_data):
    X, y = binary_data
    table = binary_model.cv_results_
    assert isinstance(table, pd.DataFrame) and list(table["C"]) == [0.1, 1.0, 10.0]
    features = binary_model.features(X)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    for row in table.itertuples():
        expected = cross_val_score(SVC(C=row.C, gamma="scale", class_weight="balanced"), features, y,
                                   cv=folds, scoring="roc_auc").mean()
        assert row.mean_auc == pytest.approx(expected)
    best = table.loc[table["rank"] == 1, "C"].iloc[0]
    assert binary_model.best_params_["C"] == best
    assert binary_model.best_score_ == pytest.approx(table["mean_auc"].max())


def test_groups_use_stratified_group_folds():
    X, y = make_images(40, 2, seed=2)
    groups = np.arange(40) // 2  # two images per patient
    model = small(C=(1.0, 10.0), taps=("early",)).fit(X, y, groups=groups)
    features = model.features(X)
    folds = list(StratifiedGroupKFold(3, shuffle=True, random_state=0).split(features, y, groups))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    for row in model.cv_results_.itertuples():
        expected = cross_val_score(SVC(C=row.C, class_weight="balanced"), features, y, cv=folds,
                                   scoring="roc_auc").mean()
        assert row.mean_auc == pytest.approx(expected)


def test_the_seed_draws_the_search_folds_of_multilabel_images_with_patients_too():
    from tfmed.modes.svm import FeatureSVM

    y = np.random.default_rng(0).integers(0, 2, (60, 3))
    groups = np.array([f"p{i // 2}" for i in range(60)])  # 30 patients, 2 images each
    drawn = []
    for seed in (0, 1, 2):
        splits = FeatureSVM(cv=3, random_state=seed)._splits(y, groups, np.arange(3))
        assert all(not set(groups[train]) & set(groups[test]) for train, test in splits)
        drawn.append(sorted(tuple(sorted(test)) for _, test in splits))
    assert drawn[0] != drawn[1] and drawn[1] != drawn[2]
    assert sorted(tuple(sorted(test)) for _, test in FeatureSVM(cv=3, random_state=1)._splits(
        y, groups, np.arange(3))) == drawn[1]  # one seed, one draw


def test_multiclass_one_vs_rest_with_string_labels():
    X, y = make_images(36, 3, seed=3)
    names = np.array(["normal", "covid", "other"])[y]
    model = small().fit(X, names)
    assert model.classes_.tolist() == ["covid", "normal", "other"]
    proba = model.predict_proba(X)
    assert proba.shape == (36, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert model.decision_function(X).shape == (36, 3)
    assert set(model.predict(X)) <= set(names)
    assert model.score(X, names) >= 0.8


def test_one_hot_rows_of_a_multiclass_task_are_read_as_class_indices(capsys):
    from tfmed.progress import configure_logging

    X, y = make_images(36, 3, seed=3)
    one_hot = np.eye(3, dtype=int)[y]
    by_index = small(task="multiclass").fit(X, y)
    by_rows = small(task="multiclass").fit(X, one_hot)
    assert by_rows.task_ == "multiclass"
    np.testing.assert_allclose(by_rows.predict_proba(X), by_index.predict_proba(X))
    assert by_rows.score(X, one_hot) == by_index.score(X, y)  # scored as fit reads them
    configure_logging()
    assert small().fit(X, one_hot).task_ == "multilabel"  # task=None: independent labels, and the log says so
    assert "y's rows are one-hot (3 columns): read as multilabel" in capsys.readouterr().out
    two_labels = one_hot.copy()
    two_labels[0] = [1, 1, 0]
    with pytest.raises(F.FeatureError, match="task is 'multiclass' but y looks multilabel .*set task='multilabel' "
                                             "if the data are multilabel"):
        small(task="multiclass").fit(X, two_labels)


def test_svm_fits_run_as_threads_on_every_usable_core_and_give_the_same_model(monkeypatch):
    import threading

    X, y = make_images(36, 3, seed=3)
    threads = []
    fit = SVC.fit

    def recording_fit(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(SVC, "fit", recording_fit)
    monkeypatch.setattr(S, "usable_cores", lambda: 2)
    parallel = small(C=(0.3, 1.0)).fit(X, y)
    # the grid search (2 C x 3 folds x 3 classes) and the calibration's fits all ran in worker threads
    assert len(threads) > 18 and threading.get_ident() not in threads
    threads.clear()
    monkeypatch.setattr(S, "usable_cores", lambda: 1)
    serial = small(C=(0.3, 1.0)).fit(X, y)
    assert len(threads) > 18 and set(threads) == {threading.get_ident()}
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_array_equal(parallel.predict_proba(X), serial.predict_proba(X))


def test_multilabel_one_svm_per_label():
    X, y = make_images(36, 3, seed=4)
    Y = np.stack([y == 0, y == 1, y >= 1], axis=1).astype(int)
    model = small().fit(X, Y)
    assert model.task_ == "multilabel" and len(model.models_) == 1 and len(model.models_[0]) == 3
    assert model.predict_proba(X).shape == (36, 3)
    assert model.decision_function(X).shape == (36, 3)
    predicted = model.predict(X)
    assert predicted.shape == (36, 3) and set(np.unique(predicted)) <= {0, 1}
    assert (predicted == Y).mean() >= 0.8


def test_texture_fusion_adds_lbp_columns(binary_data):
    X, y = binary_data
    plain = small().fit(X, y)
    fused = small(texture=True, taps=("early", "middle")).fit(X, y)
    widths = fused.block_widths_
    assert widths["texture"] == 10 and set(widths) == {"early", "middle", "texture"}
    assert fused.features(X[:4]).shape[1] == plain.features(X[:4]).shape[1] + widths["middle"] + 10


def test_params_round_trip_and_clone():
    model = small(C=(0.5, 2.0), texture=True)
    params = model.get_params()
    assert params["C"] == (0.5, 2.0) and params["texture"] is True
    model.set_params(C=3.0, pooling="max")
    assert model.C == 3.0 and model.pooling == "max"
    twin = clone(model)
    assert twin.get_params() == model.get_params() and twin is not model
    assert not hasattr(twin, "models_")


def test_from_config_reads_the_experiment():
    cfg = ExperimentConfig.from_dict({"model": {"svm": {"taps": ["middle"], "C": [2.0], "cv": 4}},
                                      "preprocess": {"image_size": 64}, "seed": 3})
    model = FeatureSVM.from_config(cfg, cache_dir="cache")
    assert (model.taps, model.C, model.cv, model.image_size, model.random_state) == \
        (("middle",), (2.0,), 4, 64, 3)
    assert model.preprocess["image_size"] == 64


def test_inside_pipeline_and_grid_search(binary_data):
    X, y = binary_data
    pipe = Pipeline([("scale", FunctionTransformer(lambda images: images * 1.0)), ("svm", small())])
    search = GridSearchCV(pipe, {"svm__C": [(1.0,), (10.0,)]}, cv=2).fit(X, y)
    assert set(search.cv_results_["param_svm__C"]) == {(1.0,), (10.0,)}
    assert search.best_estimator_.predict(X[:5]).shape == (5,)
    assert search.best_score_ >= 0.7


def _counting_backbone(monkeypatch):
    calls = []
    original = tfmed.backbones.extract_features

    def counted(model, images, batch_size=32):
        calls.append(len(images))
        return original(model, images, batch_size=batch_size)

    monkeypatch.setattr(tfmed.backbones, "extract_features", counted)
    return calls


def test_feature_cache_hit_and_invalidation(monkeypatch, tmp_path, binary_data):
    X, y = binary_data
    calls = _counting_backbone(monkeypatch)
    first = small(cache_dir=str(tmp_path)).fit(X, y)
    assert len(calls) == 1
    second = small(cache_dir=str(tmp_path)).fit(X, y)
    assert len(calls) == 1, "the second fit must read the cache, not run the backbone"
    np.testing.assert_array_equal(first.decision_function(X), second.decision_function(X))
    assert len(calls) == 1  # predicting on the training images hits too
    small(cache_dir=str(tmp_path), taps=("middle",)).fit(X, y)
    assert len(calls) == 2
    small(cache_dir=str(tmp_path), pooling="max").fit(X, y)
    assert len(calls) == 3
    changed = X.copy()
    changed[0, 0, 0, 0] += 1.0
    small(cache_dir=str(tmp_path)).fit(changed, y)
    assert len(calls) == 4


def test_save_load_gives_identical_predictions(tmp_path, binary_data):
    X, y = binary_data
    model = small(texture=True, preprocess={"image_size": SIZE, "intensity": "minmax"}).fit(X, y)
    path = tmp_path / "model" / "estimator"
    model.save(path)
    F.clear_model_cache()  # force the loaded model to rebuild its backbone
    loaded = FeatureSVM.load(path)
    X_new, _ = make_images(10, 2, seed=9)
    np.testing.assert_allclose(loaded.predict_proba(X_new), model.predict_proba(X_new), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.predict(X_new), model.predict(X_new))
    assert loaded.preprocess == {"image_size": SIZE, "intensity": "minmax"}
    assert loaded.backbone_spec_["taps"] == ["early"] and loaded.backbone_spec_["image_size"] == SIZE


# ---------------------------------------------------------------------- errors

def test_nan_pixels_name_the_rows(binary_data):
    X, y = binary_data
    X = X.copy()
    X[[3, 11], 5, 5, 0] = np.nan
    with pytest.raises(F.NonFiniteError, match=r"rows 3, 11"):
        small().fit(X, y)


def test_non_finite_features_name_the_rows(monkeypatch, binary_data):
    X, y = binary_data

    def exploding(images, **kwargs):
        out = np.ones((len(images), 4), np.float32)
        out[7] = np.inf
        return {tap: out for tap in kwargs["taps"]}

    monkeypatch.setattr(S, "backbone_features", exploding)
    with pytest.raises(F.NonFiniteError, match=r"rows 7 .*'early'"):
        small().fit(X, y)


def test_too_few_samples_for_folds_names_class_and_counts(binary_data):
    X, y = binary_data
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:2]]
    labels = np.where(y[keep] == 1, "pneumonia", "normal")
    with pytest.raises(S.TooFewSamplesError, match=r"'pneumonia' has 2 .*normal=18, pneumonia=2.*cv=2"):
        small(cv=3).fit(X[keep], labels)


def test_too_few_patients_for_group_folds(binary_data):
    X, y = binary_data
    groups = np.where(y == 1, (np.arange(36) // 2) % 2, 100 + np.arange(36))  # class 1: two patients
    with pytest.raises(S.TooFewSamplesError, match=r"class 1 has 2 training patients/groups"):
        small(cv=3).fit(X, y, groups=groups)


def test_multilabel_label_without_enough_positives():
    X, y = make_images(24, 2, seed=1)
    Y = np.stack([y, np.r_[1, np.zeros(23, int)]], axis=1)
    with pytest.raises(S.TooFewSamplesError, match=r"label 1 has 1 positive"):
        small().fit(X, Y)


def test_unknown_tap_lists_the_allowed_ones(binary_data):
    X, y = binary_data
    with pytest.raises(F.UnknownTapError, match=r"'stage99'.*allowed taps: .*middle"):
        small(taps=("stage99",)).fit(X, y)


def test_new_images_of_another_shape_or_channels(binary_model):
    X_rgb, _ = make_images(4, 2, channels=3)
    with pytest.raises(S.ModelMismatchError, match=r"3 channel\(s\) but the model was fitted on 32x32 with 1"):
        binary_model.predict(X_rgb)
    X_big, _ = make_images(4, 2, size=48)
    with pytest.raises(S.ModelMismatchError, match=r"48x48"):
        binary_model.predict_proba(X_big)


def test_one_image_without_a_batch_axis_is_refused_with_the_fix(binary_model, binary_data):
    """One (H, W, C) image is not read as H grey images of W x C pixels, at fit or at predict."""
    X, y = binary_data
    rgb, _ = make_images(2, 2, channels=3)
    with pytest.raises(S.FeatureError, match=r"got shape \(32, 32, 3\): one image; add the batch axis \(X\[None\]\)"):
        small().fit(rgb[0], y[:1])
    for call in (binary_model.predict, binary_model.predict_proba, binary_model.decision_function):
        with pytest.raises(S.FeatureError, match=r"must be a batch of images \(N, H, W, C\).*got shape \(32, 32, 1\)"):
            call(X[0])
    assert binary_model.predict(X[0][None]).shape == (1,)
    assert binary_model.predict(X[:2, ..., 0]).shape == (2,)  # grey images (N, H, W) are read as before


def test_feature_width_mismatch(monkeypatch, binary_model, binary_data):
    X, _ = binary_data
    original = S.backbone_features

    def narrower(images, **kwargs):
        return {tap: block[:, :5] for tap, block in original(images, **kwargs).items()}

    monkeypatch.setattr(S, "backbone_features", narrower)
    with pytest.raises(S.ModelMismatchError, match=r"widths \{'early': 5\}"):
        binary_model.predict(X[:3])


def test_unseen_classes_and_label_count_mismatch(binary_model, binary_data):
    X, y = binary_data
    with pytest.raises(S.ModelMismatchError, match=r"\[7\].*classes are \[0, 1\]"):
        binary_model.score(X[:4], np.array([0, 1, 7, 1]))
    with pytest.raises(S.FeatureError, match="task is 'multiclass' but y looks binary"):
        small(task="multiclass").fit(X, y)


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "feature_svm.json").write_text('{"kind": "something else"}')
    with pytest.raises(S.ModelMismatchError, match="not a saved FeatureSVM"):
        FeatureSVM.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no saved FeatureSVM"):
        FeatureSVM.load(tmp_path / "empty")


def test_bad_parameters_are_named(binary_data):
    X, y = binary_data
    with pytest.raises(S.FeatureError, match="kernel"):
        small(kernel="poly").fit(X, y)
    with pytest.raises(S.FeatureError, match="C holds -1"):
        small(C=(1.0, -1)).fit(X, y)
    for settings, message in (({"C": ()}, r"C is \(\); give one value or a list"),
                              ({"gamma": []}, r"gamma is \[\]; give one value or a list"),
                              ({"nystroem_components": 0, "classifier": "approximate"},
                               "nystroem_components is 0; it must be an integer >= 2"),
                              ({"search_rows": 0}, "search_rows is 0; it must be an integer >= 30"),
                              ({"exact_limit": -1}, "exact_limit is -1; it must be an integer >= 1")):
        with pytest.raises(S.FeatureError, match=message):
            small(**settings).fit(X, y)
    with pytest.raises(S.FeatureError, match="36 images but y has 35"):
        small().fit(X, y[:-1])


def test_images_on_another_scale_are_refused_at_fit_predict_and_feature_extraction(binary_model, binary_data):
    """A model fitted on 0-255 images refuses 0-1 floats and 16-bit (0-65535) values instead of scoring them."""
    X, y = binary_data
    scaled = {"0-1 floats": (X / 255.0, "images scaled to 0-1"),
              "uint16": ((X * 257).astype(np.uint16), "16-bit pixels")}
    for images, match in scaled.values():
        for call in (binary_model.predict_proba, binary_model.predict, binary_model.decision_function,
                     lambda images: small().fit(images, y)):
            with pytest.raises(PixelRangeError, match=match):
                call(images)
    fm = tfmed.backbones.feature_model(tfmed.backbones.create("efficientnet_lite0", weights=None,
                                                              input_shape=(SIZE, SIZE, 3)), taps=("early",))
    rgb = np.repeat(X[:3], 3, axis=-1)
    assert tfmed.backbones.extract_features(fm, rgb)["early"].shape[0] == 3
    for images, match in ((rgb / 255.0, "images scaled to 0-1"), ((rgb * 257).astype(np.uint16), "16-bit")):
        with pytest.raises(PixelRangeError, match=match):
            tfmed.backbones.extract_features(fm, images)


def test_the_fold_check_of_a_table_names_the_class_too_small():
    import pandas as pd

    from tfmed.data.table import ImageTable
    from tfmed.modes.svm import FeatureSVM, TooFewSamplesError

    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(40)], "label": [0] * 30 + [1] * 10,
                          "patient_id": [f"n{i}" for i in range(30)] + [f"s{i % 3}" for i in range(10)]})
    with pytest.raises(TooFewSamplesError, match="class 'sick' has 3 training patients/groups .* fewer than cv=5"):
        FeatureSVM(cv=5).check_folds(ImageTable(frame, ["normal", "sick"], "binary"))
