"""Hierarchical labels (Esteva et al. 2017): fine probabilities summed into coarse ones."""
import numpy as np
import pytest

from tfmed.evaluation.hierarchy import Hierarchy, HierarchyError

MAPPING = {"benign": ["nevus", "lentigo", "keratosis"], "malignant": ["melanoma", "carcinoma"]}


def test_coarse_probabilities_are_hand_computed_sums_in_any_column_order():
    h = Hierarchy(MAPPING)
    fine = ["melanoma", "nevus", "carcinoma", "keratosis", "lentigo"]
    proba = np.array([[0.10, 0.20, 0.30, 0.15, 0.25],
                      [0.70, 0.05, 0.05, 0.10, 0.10]])
    coarse, names = h.coarse_probabilities(proba, fine)
    assert names == ["benign", "malignant"]
    # benign = nevus + keratosis + lentigo; malignant = melanoma + carcinoma
    np.testing.assert_allclose(coarse, [[0.20 + 0.15 + 0.25, 0.10 + 0.30],
                                        [0.05 + 0.10 + 0.10, 0.70 + 0.05]])
    np.testing.assert_allclose(coarse.sum(axis=1), 1.0)


def test_single_row_is_accepted():
    coarse, _ = Hierarchy({"a": ["x"], "b": ["y", "z"]}).coarse_probabilities([0.5, 0.2, 0.3], ["x", "y", "z"])
    np.testing.assert_allclose(coarse, [[0.5, 0.5]])


def test_coarse_labels_from_names_and_indices():
    h = Hierarchy(MAPPING)
    assert h.coarse_labels(["carcinoma", "lentigo", "melanoma"]).tolist() == ["malignant", "benign", "malignant"]
    fine = ["melanoma", "nevus", "carcinoma", "keratosis", "lentigo"]
    assert h.coarse_labels(np.array([0, 1, 2, 3, 4]), fine_classes=fine).tolist() == [1, 0, 1, 0, 0]
    assert h.fine_classes == ["nevus", "lentigo", "keratosis", "melanoma", "carcinoma"]


def test_fine_class_in_two_coarse_classes_is_named():
    with pytest.raises(HierarchyError, match=r"'nevus'.*'benign'.*'other'"):
        Hierarchy({"benign": ["nevus"], "other": ["nevus", "x"]})
    with pytest.raises(HierarchyError, match="'x' appears twice under 'a'"):
        Hierarchy({"a": ["x", "x"]})


def test_bad_mappings_are_rejected():
    with pytest.raises(HierarchyError, match="non-empty mapping"):
        Hierarchy({})
    with pytest.raises(HierarchyError, match="'a' must list at least one fine class"):
        Hierarchy({"a": []})
    with pytest.raises(HierarchyError, match="'a' must list at least one fine class"):
        Hierarchy({"a": "x"})


def test_model_classes_must_match_the_hierarchy():
    h = Hierarchy({"a": ["x"], "b": ["y"]})
    with pytest.raises(HierarchyError, match="model class 'z' is not in the hierarchy; add it under one of"):
        h.coarse_probabilities(np.ones((1, 3)) / 3, ["x", "y", "z"])
    with pytest.raises(HierarchyError, match="model class 'x' is not in the hierarchy; it writes 'X' "
                                             r"\(names are matched exactly\): write 'x'"):
        Hierarchy({"a": ["X"], "b": ["y"]}).membership(["x", "y"])
    with pytest.raises(HierarchyError, match="fine class 'y' of the hierarchy is not among"):
        h.coarse_probabilities(np.ones((1, 1)), ["x"])
    with pytest.raises(HierarchyError, match=r"shape \(1, 3\).*\(n, 2\)"):
        h.coarse_probabilities(np.ones((1, 3)), ["x", "y"])
    with pytest.raises(HierarchyError, match="'x' is listed twice"):
        h.membership(["x", "x", "y"])
    with pytest.raises(HierarchyError, match="'q' is not in the hierarchy"):
        h.coarse_labels(["q"])
    with pytest.raises(HierarchyError, match="need fine_classes"):
        h.coarse_labels([0, 1])
    with pytest.raises(HierarchyError, match="fine label 5 is outside 0..1"):
        h.coarse_labels([0, 5], fine_classes=["x", "y"])


def test_fine_tuner_trained_on_fine_classes_reports_coarse_probabilities():
    import tensorflow as tf

    from test_finetune import tiny_backbone
    from tfmed.config import FinetuneConfig, StageConfig
    from tfmed.modes.finetune import FineTuner

    rng = np.random.default_rng(0)
    fine = ["normal", "bacterial", "viral"]
    labels = np.arange(18) % 3
    x = rng.uniform(0, 100, size=(18, 32, 32, 3)).astype(np.float32)
    for c in (1, 2):
        x[labels == c, 10 * c:10 * c + 8, 4:12] += 150
    y = np.eye(3, dtype=np.float32)[labels]
    config = FinetuneConfig(stages=[StageConfig(epochs=1)], batch_size=6, learning_rate=1e-2)
    hierarchy = Hierarchy({"healthy": ["normal"], "pneumonia": ["viral", "bacterial"]})
    tuner = FineTuner(tiny_backbone(), "multiclass", 3, config=config, image_size=32, weights=None,
                      classes=fine)
    tuner.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(6), (x, y))
    fine_proba = tuner.predict(x)
    assert fine_proba.shape == (18, 3)
    np.testing.assert_allclose(fine_proba.sum(axis=1), 1.0, atol=1e-5)
    coarse, names = hierarchy.coarse_probabilities(tuner.predict(x), tuner.classes)
    assert names == ["healthy", "pneumonia"]
    np.testing.assert_allclose(coarse[:, 0], fine_proba[:, 0], atol=1e-6)
    np.testing.assert_allclose(coarse[:, 1], fine_proba[:, 1] + fine_proba[:, 2], atol=1e-6)
    assert hierarchy.coarse_labels(labels, fine_classes=fine).tolist() == [0 if c == 0 else 1 for c in labels]
    with pytest.raises(HierarchyError, match="model class 'normal' is not in the hierarchy"):
        Hierarchy({"sick": ["bacterial", "viral"]}).coarse_probabilities(fine_proba, tuner.classes)
