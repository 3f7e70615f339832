"""Classifiers that scale: the approximate kernel SVM, chosen by training-set size, saved, loaded and
turned into Keras layers like the exact one."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from tfmed.config import ConfigError, SVMConfig
from tfmed.modes import FeatureSVM
from tfmed.modes import svm as S
from tfmed.modes.kernel_approximation import ApproximateKernelSVC
from tfmed.modes.svm_graph import svm_keras_model
from test_svm import make_images, small


def rings(n, seed=0):
    """Two classes no line separates: inside or outside a circle."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    return X, (np.linalg.norm(X[:, :2], axis=1) > 1.2).astype(int)


def test_the_approximate_rbf_svm_matches_the_exact_one_on_held_out_data():
    X, y = rings(600)
    X_test, y_test = rings(400, seed=1)
    exact = SVC(C=1.0, gamma="scale").fit(X, y).decision_function(X_test)
    approximate = ApproximateKernelSVC(C=1.0, n_components=300).fit(X, y).decision_function(X_test)
    assert roc_auc_score(y_test, exact) > 0.95
    assert roc_auc_score(y_test, approximate) > roc_auc_score(y_test, exact) - 0.02
    linear = ApproximateKernelSVC(kernel="linear").fit(X, y).decision_function(X_test)
    assert roc_auc_score(y_test, linear) < 0.75  # a line cannot: the kernel map is what does it


def test_beyond_sgd_above_rows_the_linear_svm_is_fitted_by_sgd_with_the_same_decision(tmp_path, monkeypatch):
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import LinearSVC
    from tfmed.modes import kernel_approximation

    X, y = rings(2000)
    X_test, y_test = rings(400, seed=1)
    liblinear = ApproximateKernelSVC(C=1.0, n_components=300).fit(X, y)
    monkeypatch.setattr(kernel_approximation, "SGD_ABOVE", 1000)
    sgd = ApproximateKernelSVC(C=1.0, n_components=300).fit(X, y)
    assert isinstance(liblinear.svm_, LinearSVC) and isinstance(sgd.svm_, SGDClassifier)
    assert sgd.svm_.alpha == pytest.approx(1 / 2000)  # the SVM's C as SGD's regularisation
    scores = sgd.decision_function(X_test)
    assert roc_auc_score(y_test, scores) > roc_auc_score(y_test, liblinear.decision_function(X_test)) - 0.01
    assert np.abs(scores).max() < 100  # an SVM's margin scale (SGD on the squared hinge reaches ~1e12 here)
    kernel = np.exp(-sgd._gamma * ((X_test[:5, None] - sgd.support_vectors_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(kernel @ sgd.dual_coef_[0] + sgd.intercept_, scores[:5], rtol=1e-6, atol=1e-8)
    images, labels = make_images(40, 2, seed=0)
    fits = []
    fit = ApproximateKernelSVC.fit

    def recorded_fit(self, X, y, sample_weight=None):
        fits.append((len(X), type(fit(self, X, y, sample_weight).svm_)))
        return self

    monkeypatch.setattr(ApproximateKernelSVC, "fit", recorded_fit)
    monkeypatch.setattr(kernel_approximation, "SGD_ABOVE", 30)  # 40 training rows, CV folds of 20 or fewer
    model = small(classifier="approximate", nystroem_components=20).fit(images, labels)
    assert isinstance(model.models_[0][0].calibrated_classifiers_[0].estimator.svm_, SGDClassifier)
    assert min(rows for rows, _ in fits) <= 30 and len(fits) > 3
    assert {solver for _, solver in fits} == {SGDClassifier}  # search and calibration score like the final fit
    loaded = FeatureSVM.load(model.save(tmp_path / "svm"))  # a trusted type for the safe loader
    np.testing.assert_allclose(loaded.predict_proba(images), model.predict_proba(images), atol=1e-6)


def test_auto_chooses_by_training_size_and_the_choice_is_saved(tmp_path):
    X, y = make_images(36, 2, seed=0)
    assert small().fit(X, y).classifier_ == "exact"
    model = small(exact_limit=30, nystroem_components=20).fit(X, y)
    assert model.classifier_ == "approximate"
    assert isinstance(model.models_[0][0].calibrated_classifiers_[0].estimator, ApproximateKernelSVC)
    X_new, y_new = make_images(20, 2, seed=5)
    assert (model.predict(X_new) == y_new).mean() >= 0.8
    assert "approximate kernel map" in model.report_facts()["classifier"]
    loaded = FeatureSVM.load(model.save(tmp_path / "svm"))
    assert loaded.classifier_ == "approximate"
    np.testing.assert_allclose(loaded.predict_proba(X_new), model.predict_proba(X_new), atol=1e-6)


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_an_approximate_svm_becomes_keras_layers_with_the_same_probabilities(kernel):
    X, y = make_images(36, 2, seed=0)
    model = small(classifier="approximate", kernel=kernel).fit(X, y)
    graph = svm_keras_model(model)
    proba = graph.predict(np.repeat(X, 3, axis=-1), verbose=0)[:, 0]
    np.testing.assert_allclose(proba, model.predict_proba(X)[:, 1], atol=1e-4)


def test_multiclass_with_the_approximate_svm():
    X, y = make_images(45, 3, seed=2)
    model = small(classifier="approximate").fit(X, y)
    X_new, y_new = make_images(30, 3, seed=6)
    assert model.predict_proba(X_new).shape == (30, 3)
    assert (model.predict(X_new) == y_new).mean() >= 0.7


def test_settings_the_chosen_classifier_never_reads_are_refused():
    with pytest.raises(ConfigError, match="model.svm.exact_limit.*classifier: auto"):
        SVMConfig(classifier="exact", exact_limit=500).check()
    with pytest.raises(ConfigError, match="model.svm.nystroem_components.*never uses"):
        SVMConfig(kernel="linear", nystroem_components=200).check()
    with pytest.raises(ConfigError, match="model.svm.classifier"):
        SVMConfig(classifier="fast").check()


# ------------------------------------------------------------------ streamed features and the feature store

def _table_and_inputs():
    import pandas as pd
    from tfmed.config import PreprocessConfig
    from tfmed.data.pipeline import ImageInputs
    from tfmed.data.table import ImageTable

    X, y = make_images(30, 2, seed=3)
    frame = pd.DataFrame({"image": [f"mem#{i}" for i in range(30)], "array_index": range(30), "label": y,
                          "patient_id": [f"p{i}" for i in range(30)]})
    table = ImageTable(frame, ["a", "b"], "binary", images=X[..., 0].astype(np.uint8))
    return table, ImageInputs(PreprocessConfig(image_size=32))


def test_a_table_fit_names_the_label_without_enough_positives(tmp_path):
    from tfmed.data.table import ImageTable

    table, inputs = _table_and_inputs()
    frame = table.frame.drop(columns="label").assign(**{"label:effusion": table.labels(),
                                                       "label:nodule": np.r_[1, np.zeros(29, int)]})
    multilabel = ImageTable(frame, ["effusion", "nodule"], "multilabel", images=table.images)
    with pytest.raises(S.TooFewSamplesError, match=r"label 'nodule' has 1 positive training images"):
        small(cache_dir=str(tmp_path)).fit_tables(multilabel, None, inputs)


@pytest.mark.parametrize("texture", [False, True])  # one predict per shard; per batch with the LBP block
def test_streamed_features_equal_the_in_memory_ones(tmp_path, texture):
    table, inputs = _table_and_inputs()
    model = small(cache_dir=str(tmp_path), texture=texture).fit_tables(table, None, inputs)
    streamed, shape = model._table_blocks(table, inputs)
    in_memory = model._blocks(inputs.arrays(table)[0], cached=False)
    assert shape == model.input_shape_ and sorted(streamed) == sorted(in_memory)
    for name in streamed:
        np.testing.assert_allclose(streamed[name], in_memory[name], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.predict_table(table, inputs),
                               model.predict_proba(inputs.arrays(table)[0])[:, 1], atol=1e-4)


def test_parts_of_a_table_read_the_whole_tables_features_computed_once(tmp_path):
    """A k-fold's parts: fitted and scored as if alone, with the backbone run over the whole table once."""
    table, inputs = _table_and_inputs()
    fit_part, held_part = table.part(np.arange(20)), table.part(np.arange(20, 30))
    pooled = small(cache_dir=str(tmp_path / "store")).fit_tables(fit_part, None, inputs)
    alone = small(cache_dir=None).fit_tables(table.subset(np.arange(20)), None, inputs)
    np.testing.assert_allclose(pooled.predict_table(held_part, inputs),
                               alone.predict_table(table.subset(np.arange(20, 30)), inputs), atol=1e-5)
    assert len(list((tmp_path / "store").glob("table-*"))) == 1  # the whole table's folder, and no part's
    assert (pooled.last_store_.shards_read, pooled.last_store_.shards_computed) == (1, 0)


def test_a_killed_extraction_leaves_only_complete_shards(tmp_path, monkeypatch, capsys):
    from tfmed.modes import feature_store
    from tfmed.progress import configure_logging

    table, inputs = _table_and_inputs()
    monkeypatch.setattr(feature_store, "SHARD_ROWS", 8)
    original = FeatureSVM._dataset_blocks
    calls = []

    def dies_in_the_third_shard(self, dataset):
        calls.append(dataset)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, dataset)
    monkeypatch.setattr(FeatureSVM, "_dataset_blocks", dies_in_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        small(cache_dir=str(tmp_path)).fit_tables(table, None, inputs)
    shards = sorted(path.name for path in tmp_path.rglob("shard-*"))
    assert shards == ["shard-0000000000-0000000008.npy", "shard-0000000008-0000000016.npy"]
    monkeypatch.setattr(FeatureSVM, "_dataset_blocks", original)
    configure_logging()
    capsys.readouterr()
    resumed = small(cache_dir=str(tmp_path)).fit_tables(table, None, inputs)
    assert (resumed.last_store_.shards_read, resumed.last_store_.shards_computed) == (2, 2)
    assert "features of 30 rows: 2 shard(s) read from the feature store, 2 computed" in capsys.readouterr().out
    fresh = small(cache_dir=str(tmp_path / "fresh")).fit_tables(table, None, inputs)
    np.testing.assert_allclose(resumed.predict_table(table, inputs), fresh.predict_table(table, inputs), atol=1e-5)


# ------------------------------------------------------------------ the fit's budget on large training sets

def test_beyond_search_rows_the_search_sees_a_sample_and_calibration_two_folds(monkeypatch):
    X, y = make_images(60, 2, seed=8)
    seen = []
    original = FeatureSVM._splits

    def recorded(self, y_, groups, classes, label=None, folds=None):
        seen.append((len(y_), folds or self.cv))
        return original(self, y_, groups, classes, label, folds)
    monkeypatch.setattr(FeatureSVM, "_splits", recorded)
    monkeypatch.setattr("tfmed.modes.svm.MIN_SEARCH_ROWS_PER_CLASS", 5)
    model = small(search_rows=30).fit(X, y)
    assert seen[0][1] == 3 and 30 <= seen[0][0] < 60  # the C search: cv folds on a sample
    assert seen[1] == (60, 2)  # calibration: every row, 2 folds
    X_new, y_new = make_images(20, 2, seed=9)
    assert (model.predict(X_new) == y_new).mean() >= 0.8
    seen.clear()
    small(search_rows=60).fit(X, y)
    assert seen == [(60, 3), (60, 3)]  # at or below search_rows: as before, one set of cv folds


def test_the_search_sample_keeps_classes_in_proportion_and_patients_whole():
    from tfmed.modes.svm import search_sample

    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.1).astype(int)
    rows = search_sample(y, None, 1000)
    assert 1000 <= len(rows) <= 1010 and abs(y[rows].mean() - y.mean()) < 0.01
    groups = np.repeat(np.arange(1000), 3)  # three images per patient
    y = np.repeat(rng.random(1000) < 0.3, 3).astype(int)
    rows = search_sample(y, groups, 600)
    patients = groups[rows]
    assert np.all(np.bincount(patients, minlength=1000)[np.unique(patients)] == 3)  # no patient split
    assert 600 <= len(rows) <= 606
    assert np.array_equal(search_sample(y, groups, 3000), np.arange(3000))
    with pytest.raises(ConfigError, match="model.svm.search_rows"):
        SVMConfig(search_rows=20).check()


@pytest.mark.parametrize("seed", range(5))
def test_the_search_sample_keeps_a_rare_labels_positives(seed):
    from tfmed.modes.svm import MIN_SEARCH_ROWS_PER_CLASS, search_sample

    rng = np.random.default_rng(seed)
    y = np.zeros((20000, 3), int)
    y[:, 0] = rng.random(20000) < 0.4
    y[rng.choice(20000, 15, replace=False), 1] = 1  # 15 positives: a random draw of 5,000 keeps about 4
    y[:, 2] = rng.random(20000) < 0.99  # 200 or so negatives
    y[rng.choice(20000, 500, replace=False), 0] = -1  # unknown labels count as neither
    groups = np.repeat(np.arange(10000), 2)  # two images per patient
    rows = search_sample(y, groups, 5000, seed=seed)
    assert (y[rows, 1] == 1).sum() == 15 and (y[rows, 2] == 0).sum() >= MIN_SEARCH_ROWS_PER_CLASS
    assert 5000 <= len(rows) <= 5000 + 2 * (15 + MIN_SEARCH_ROWS_PER_CLASS)
    assert np.all(np.bincount(groups[rows])[np.unique(groups[rows])] == 2)  # patients whole


@pytest.mark.parametrize("seed", range(3))
def test_the_search_sample_gives_each_class_its_rows_and_a_patient_per_fold(seed):
    from tfmed.modes.svm import MIN_SEARCH_ROWS_PER_CLASS, search_sample

    groups = np.concatenate([np.repeat(np.arange(10), 30), np.arange(10, 610)])  # 10 patients of 30 images
    y = np.concatenate([np.ones(300, int), np.zeros(600, int)])
    rows = search_sample(y, groups, 100, seed=seed, min_groups=5)
    assert len(np.unique(groups[rows][y[rows] == 1])) >= 5  # enough patients of the class for 5 folds
    assert np.all(np.bincount(groups[rows])[np.unique(groups[rows])] == np.bincount(groups)[np.unique(groups[rows])])
    mixed = np.repeat(np.arange(1000), 2)  # each patient a normal image first, then a sick one
    labels = np.tile([0, 1], 1000)
    rows = search_sample(labels, mixed, 300, seed=seed)
    assert (labels[rows] == 1).sum() >= MIN_SEARCH_ROWS_PER_CLASS  # counted in the class of each of its rows


def test_the_kernel_map_is_applied_in_blocks_with_the_whole_matrix_result(monkeypatch):
    from tfmed.modes import kernel_approximation

    X, y = rings(300)
    whole = ApproximateKernelSVC(C=1.0, n_components=50).fit(X, y)
    expected = whole.svm_.decision_function(whole.map_.transform(X))
    monkeypatch.setattr(kernel_approximation, "MAP_ROWS", 7)  # 300 rows: 43 blocks, the last one short
    kernel_approximation._MAPS.clear()
    blocks = ApproximateKernelSVC(C=1.0, n_components=50).fit(X, y)
    np.testing.assert_allclose(blocks.svm_.coef_, whole.svm_.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(blocks.decision_function(X), expected, rtol=1e-6, atol=1e-9)
    _, mapped = kernel_approximation._nystroem_map(X, whole._gamma, 50, 0, np.float32)
    assert mapped.dtype == np.float32  # what SGD fits: half the memory of float64
    np.testing.assert_allclose(mapped, whole.map_.transform(X), atol=1e-5)


def test_an_unknown_kernel_or_solver_is_refused_by_name():
    X, y = rings(50)
    with pytest.raises(ValueError, match="solver is 'newton'.*auto, liblinear and sgd"):
        ApproximateKernelSVC(solver="newton").fit(X, y)
    with pytest.raises(ValueError, match="kernel is 'poly'.*rbf and linear"):
        ApproximateKernelSVC(kernel="poly").fit(X, y)


def test_the_store_key_covers_the_files_inside_a_series_folder_and_a_headers_data_file(tmp_path):
    import os
    import pandas as pd
    from tfmed.data.table import ImageTable
    from tfmed.modes.feature_store import table_identity

    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"A" * 100)
    (series / ".DS_Store").write_bytes(b"x")  # hidden files are not read as slices, so not part of the key
    (tmp_path / "scan.mhd").write_text("NDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                                       "ElementDataFile = scan.raw\n")
    (tmp_path / "scan.raw").write_bytes(bytes(64))
    (tmp_path / "scan.nhdr").write_text("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 4\n"
                                        "encoding: raw\ndata file: voxels.raw\n\n")
    (tmp_path / "voxels.raw").write_bytes(bytes(64))
    table = ImageTable(pd.DataFrame({"image": [str(series), str(tmp_path / "scan.mhd"), str(tmp_path / "scan.nhdr")],
                                     "label": [0, 1, 0]}), ["a", "b"], "binary")

    def key_after(change):
        before = table_identity(table)["files"]
        change()
        return before, table_identity(table)["files"]

    def rewrite(path, data):  # new voxels, same name and size, a later modification time
        path.write_bytes(data)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))

    for row, change in ((0, lambda: rewrite(series / "IM0001.dcm", b"B" * 100)),
                        (0, lambda: (series / "IM0002.dcm").write_bytes(b"C" * 100)),
                        (1, lambda: rewrite(tmp_path / "scan.raw", bytes([1]) * 64)),
                        (2, lambda: rewrite(tmp_path / "voxels.raw", bytes([1]) * 64))):
        before, after = key_after(change)
        assert before[row] != after[row] and [b for i, b in enumerate(before) if i != row] == \
            [a for i, a in enumerate(after) if i != row]
    before, after = key_after(lambda: rewrite(series / ".DS_Store", b"yy"))
    assert before == after
