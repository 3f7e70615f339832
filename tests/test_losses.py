"""tfmed.training.losses against hand-computed NumPy values, plus save/load round trips."""
import keras
import numpy as np
import pytest

from tfmed.training.losses import (FocalLoss, LossConfigError, WeightedBinaryCrossentropy, class_balance_weights,
                          get_loss)


def np_weighted_bce(y, p, w_pos, w_neg):
    """Independent NumPy reference: sum over labels, mean over the batch."""
    y = y.reshape(p.shape)
    per = -(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log(1 - p))
    return per.sum(axis=-1).mean()


def test_classic_eight_examples_balance_the_two_classes():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0], dtype="float32")
    w_pos, w_neg = class_balance_weights(y)
    assert (w_pos, w_neg) == (6 / 8, 2 / 8)
    # Equally confident predictions: 0.8 on positives, 0.2 on negatives.
    p = np.where(y == 1, 0.8, 0.2).astype("float32")[:, None]
    per_example = WeightedBinaryCrossentropy(w_pos, w_neg, reduction=None)(y[:, None], p).numpy()
    positive_total = per_example[y == 1].sum()
    negative_total = per_example[y == 0].sum()
    assert positive_total == pytest.approx(2 * 0.75 * -np.log(0.8), rel=1e-5)
    assert positive_total == pytest.approx(negative_total, rel=1e-5)
    # Unweighted BCE would let the 6 negatives dominate 3:1.
    plain = keras.losses.BinaryCrossentropy(reduction=None)(y[:, None], p).numpy()
    assert plain[y == 0].sum() == pytest.approx(3 * plain[y == 1].sum(), rel=1e-4)
    mean = float(WeightedBinaryCrossentropy(w_pos, w_neg)(y, p))
    assert mean == pytest.approx(np_weighted_bce(y, p, w_pos, w_neg), rel=1e-5)


def test_multiclass_weights_make_every_class_weigh_the_same():
    from tfmed.training.losses import multiclass_balance_weights

    y = np.array([0] * 12 + [1] * 6 + [2] * 3)
    weights = multiclass_balance_weights(y, 3)
    assert weights == pytest.approx([21 / 36, 21 / 18, 21 / 9], abs=1e-4)   # N / (K N_c)
    assert [weights[c] * (y == c).sum() for c in range(3)] == pytest.approx([7, 7, 7], abs=1e-3)
    with pytest.raises(LossConfigError, match=r"class\(es\) \[3\] have no training image"):
        multiclass_balance_weights(y, 4)


def test_multilabel_loss_is_sum_of_per_label_weighted_bce():
    rng = np.random.default_rng(1)
    y = (rng.random((12, 3)) > 0.6).astype("float32")
    y[0] = 1.0
    y[1] = 0.0
    p = rng.uniform(0.05, 0.95, (12, 3)).astype("float32")
    w_pos, w_neg = class_balance_weights(y)
    expected_w_pos = (12 - y.sum(0)) / 12
    np.testing.assert_allclose(w_pos, expected_w_pos, rtol=1e-6)
    np.testing.assert_allclose(w_neg, y.sum(0) / 12, rtol=1e-6)
    value = float(WeightedBinaryCrossentropy(w_pos.tolist(), w_neg.tolist())(y, p))
    assert value == pytest.approx(np_weighted_bce(y, p, w_pos, w_neg), rel=1e-5)
    # The sum over labels equals the sum of three single-label losses.
    singles = sum(float(WeightedBinaryCrossentropy(float(w_pos[i]), float(w_neg[i]))(y[:, i:i + 1], p[:, i:i + 1]))
                  for i in range(3))
    assert value == pytest.approx(singles, rel=1e-5)


def test_label_smoothing_and_logits():
    y = np.array([[1.0], [0.0], [1.0]])
    logits = np.array([[2.0], [-1.0], [0.3]], dtype="float32")
    p = 1 / (1 + np.exp(-logits))
    smooth = y * 0.9 + 0.05
    value = float(WeightedBinaryCrossentropy(0.6, 0.4, from_logits=True, label_smoothing=0.1)(y, logits))
    assert value == pytest.approx(np_weighted_bce(smooth, p, 0.6, 0.4), rel=1e-4)


def test_focal_loss_matches_numpy_and_reduces_to_bce():
    rng = np.random.default_rng(2)
    y = (rng.random((10, 2)) > 0.5).astype("float32")
    p = rng.uniform(0.05, 0.95, (10, 2)).astype("float32")
    p_t = np.where(y == 1, p, 1 - p)
    alpha_t = np.where(y == 1, 0.25, 0.75)
    expected = (-alpha_t * (1 - p_t) ** 2 * np.log(p_t)).sum(-1).mean()
    assert float(FocalLoss(gamma=2.0, alpha=0.25)(y, p)) == pytest.approx(expected, rel=1e-5)
    # gamma 0, no alpha: keras' BCE (mean over labels) times the label count.
    bce = float(keras.losses.BinaryCrossentropy()(y, p))
    assert float(FocalLoss(gamma=0.0)(y, p)) == pytest.approx(2 * bce, rel=1e-4)
    # Confident correct predictions are down-weighted much more than wrong ones.
    easy = float(FocalLoss(gamma=2.0)(np.array([[1.0]]), np.array([[0.95]])))
    hard = float(FocalLoss(gamma=2.0)(np.array([[1.0]]), np.array([[0.2]])))
    assert easy == pytest.approx(0.05 ** 2 * -np.log(0.95), rel=1e-4)
    assert hard == pytest.approx(0.8 ** 2 * -np.log(0.2), rel=1e-4)


@pytest.mark.parametrize("name,task,kwargs,cls,extra", [
    ("auto", "binary", {}, WeightedBinaryCrossentropy, {"label_reduction": "mean", "pos_weight": 1.0}),
    ("auto", "binary", {"pos_weight": 0.7, "neg_weight": 0.3}, WeightedBinaryCrossentropy, {"pos_weight": 0.7}),
    ("auto", "multilabel", {"pos_weight": [0.7, 0.5], "neg_weight": [0.3, 0.5]}, WeightedBinaryCrossentropy, {}),
    ("auto", "multiclass", {"label_smoothing": 0.1}, keras.losses.CategoricalCrossentropy,
     {"label_smoothing": 0.1}),
    ("bce", "multilabel", {}, WeightedBinaryCrossentropy, {"label_reduction": "mean", "name": "binary_crossentropy"}),
    ("focal", "binary", {"gamma": 1.5}, FocalLoss, {"gamma": 1.5}),
    ("focal", "multiclass", {}, keras.losses.CategoricalFocalCrossentropy, {}),
    ("categorical", "multiclass", {}, keras.losses.CategoricalCrossentropy, {}),
])
def test_get_loss_picks_the_documented_loss(name, task, kwargs, cls, extra):
    loss = get_loss(name, task, **kwargs)
    assert type(loss) is cls
    for key, value in extra.items():
        assert getattr(loss, key) == value


def test_categorical_label_smoothing_matches_hand_computation():
    loss = get_loss("categorical", "multiclass", label_smoothing=0.3)
    y = np.array([[0.0, 1.0, 0.0]])
    p = np.array([[0.2, 0.7, 0.1]])
    target = y * 0.7 + 0.1
    assert float(loss(y, p)) == pytest.approx(-(target * np.log(p)).sum(), rel=1e-5)


@pytest.mark.parametrize("name,task,kwargs,message", [
    ("hinge", "binary", {}, "unknown loss 'hinge'"),
    ("auto", "regression", {}, "unknown task"),
    ("bce", "multiclass", {}, "multiclass task"),
    ("weighted_bce", "multiclass", {"pos_weight": 1, "neg_weight": 1}, "multiclass task"),
    ("categorical", "binary", {}, "needs a multiclass task"),
    ("weighted_bce", "binary", {}, "class_balance_weights"),
    ("bce", "binary", {"pos_weight": 0.7, "neg_weight": 0.3}, "loss 'bce' is unweighted, so pos_weight and neg"),
    ("auto", "binary", {"pos_weight": 0.5}, "both pos_weight and neg_weight"),
    ("auto", "multiclass", {"pos_weight": 0.5, "neg_weight": 0.5}, "do not apply to a multiclass"),
    ("auto", "binary", {"label_smoothing": 1.5}, "label_smoothing"),
    ("focal", "binary", {"gamma": -1.0}, "gamma"),
])
def test_get_loss_rejects_bad_combinations(name, task, kwargs, message):
    with pytest.raises(LossConfigError, match=message):
        get_loss(name, task, **kwargs)


def test_bad_weights_and_labels_raise_clear_errors():
    with pytest.raises(LossConfigError, match="neg_weight has 3"):
        WeightedBinaryCrossentropy([0.5, 0.5], [0.5, 0.5, 0.5])
    with pytest.raises(LossConfigError, match=">= 0"):
        WeightedBinaryCrossentropy(-1.0, 1.0)
    with pytest.raises(LossConfigError, match="one value per output label"):
        WeightedBinaryCrossentropy([0.5, 0.5], [0.5, 0.5])(np.ones((2, 3)), np.full((2, 3), 0.5))
    with pytest.raises(LossConfigError, match="0/1 labels"):
        class_balance_weights(np.array([0, 1, 2]))
    with pytest.raises(LossConfigError, match="no labels"):
        class_balance_weights(np.array([]))
    with pytest.raises(LossConfigError, match=r"label column\(s\) \[1\]"):
        class_balance_weights(np.array([[1, 0], [0, 0]]))


@pytest.mark.parametrize("loss", [
    WeightedBinaryCrossentropy([0.8, 0.6, 0.3], [0.2, 0.4, 0.7], label_smoothing=0.05),
    FocalLoss(gamma=1.5, alpha=[0.25, 0.5, 0.75]),
])
def test_models_compiled_with_tfmed_losses_save_and_load(tmp_path, loss):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = (rng.random((16, 3)) > 0.5).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="sigmoid")])
    model.compile(optimizer="sgd", loss=loss)
    before = model.evaluate(x, y, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(before, rel=1e-6)


def test_unknown_labels_are_left_out_of_every_binary_loss_and_its_gradient():
    import tensorflow as tf

    y = np.array([[1, -1, 0], [0, 1, -1], [-1, 0, 1], [1, 0, 0]], dtype="float32")
    p = np.array([[.7, .2, .4], [.3, .6, .9], [.1, .5, .8], [.6, .3, .2]], dtype="float32")
    known = y != -1
    w_pos, w_neg = class_balance_weights(y)
    # N per label counts the known images only: label 0 is known for 3 images, 2 of them positive
    np.testing.assert_allclose(w_pos, [1 / 3, 2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(w_neg, [2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    terms = -(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log(1 - p))
    expected = np.where(known, terms, 0.0).sum(axis=1).mean()
    assert float(WeightedBinaryCrossentropy(w_pos.tolist(), w_neg.tolist())(y, p)) == pytest.approx(expected, rel=1e-5)
    plain = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    bce = get_loss("bce", "multilabel")
    assert float(bce(y, p)) == pytest.approx((np.where(known, plain, 0.0).sum(axis=1) / 3).mean(), rel=1e-5)
    focal = -(np.where(y == 1, 1 - p, p) ** 2) * np.log(np.where(y == 1, p, 1 - p))
    assert float(FocalLoss(gamma=2.0)(y, p)) == pytest.approx(np.where(known, focal, 0.0).sum(axis=1).mean(),
                                                               rel=1e-5)
    for loss in (WeightedBinaryCrossentropy(w_pos.tolist(), w_neg.tolist()), bce, FocalLoss(gamma=2.0)):
        scores = tf.Variable(p)
        with tf.GradientTape() as tape:
            value = loss(y, scores)
        gradient = tape.gradient(value, scores).numpy()
        assert np.all(gradient[~known] == 0) and np.all(gradient[known] != 0), loss.name


def test_plain_bce_equals_keras_binary_crossentropy_when_every_label_is_known():
    rng = np.random.default_rng(3)
    y = (rng.random((16, 4)) > 0.5).astype("float32")
    p = rng.uniform(0.05, 0.95, (16, 4)).astype("float32")
    for smoothing in (0.0, 0.1):
        ours = float(get_loss("bce", "multilabel", label_smoothing=smoothing)(y, p))
        theirs = float(keras.losses.BinaryCrossentropy(label_smoothing=smoothing)(y, p))
        assert ours == pytest.approx(theirs, rel=1e-5)
    with pytest.raises(LossConfigError, match="label_reduction is 'max'; use sum or mean"):
        WeightedBinaryCrossentropy(label_reduction="max")


@pytest.mark.parametrize("labels, classes, message", [
    ([0, 1, 3, 1], 3, r"label\(s\) 3 in row\(s\) \[2\] are not class indices 0\.\.2 of the 3 classes; fix or drop"),
    ([0.0, 1.0, np.nan, 1.0, np.nan], 2, r"label\(s\) nan in row\(s\) \[2, 4\] .*\(NaN is a missing label\)"),
    ([0, -1, 1, 0.5], 2, r"label\(s\) -1, 0\.5 in row\(s\) \[1, 3\] are not class indices 0\.\.1"),
    (["a", "b"], 2, r"needs class indices 0\.\.1, got <U1 values such as \['a', 'b'\]; encode the classes"),
], ids=["out_of_range", "nan", "negative_and_fractional", "strings"])
def test_multiclass_weights_name_labels_that_are_not_classes(labels, classes, message):
    from tfmed.training.losses import multiclass_balance_weights

    with pytest.raises(LossConfigError, match=message):
        multiclass_balance_weights(np.array(labels), classes)


def test_a_label_without_positives_is_named_by_its_name():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    with pytest.raises(LossConfigError, match="training labels of label\\(s\\) 'mass' have no positive"):
        class_balance_weights(y, ["effusion", "mass"])
    with pytest.raises(LossConfigError, match="label column\\(s\\) \\[1\\]"):
        class_balance_weights(y)


def test_focal_loss_honours_neg_weight_and_multiclass_refuses_pos_neg_weights():
    y, p = np.array([[0.0], [1.0]]), np.array([[0.4], [0.7]])
    loss = get_loss("focal", "binary", pos_weight=0.3, neg_weight=0.9, gamma=0.0)
    expected = (0.9 * -np.log(0.6) + 0.3 * -np.log(0.7)) / 2
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)
    # class_balance_weights (they sum to 1) give the same loss as alpha alone, as FineTuner uses it
    pos, neg = class_balance_weights(np.array([0, 0, 0, 1]))
    alone = FocalLoss(gamma=2.0, alpha=pos)
    assert float(get_loss("focal", "binary", pos_weight=pos, neg_weight=neg)(y, p)) == pytest.approx(
        float(alone(y, p)), rel=1e-6)
    # weights 1/1 (the stand-ins of FineTuner's configuration check) are plain focal loss
    assert float(get_loss("focal", "binary", pos_weight=1.0, neg_weight=1.0)(y, p)) == pytest.approx(
        float(FocalLoss(gamma=2.0)(y, p)), rel=1e-6)
    restored = FocalLoss.from_config(loss.get_config())
    assert float(restored(y, p)) == pytest.approx(float(loss(y, p)))
    with pytest.raises(LossConfigError, match="neg_weight without pos_weight"):
        get_loss("focal", "binary", neg_weight=0.9)
    for kwargs in ({"pos_weight": [0.1, 0.9, 0.5], "neg_weight": [0.9, 0.1, 0.5]}, {"pos_weight": 0.5}):
        with pytest.raises(LossConfigError, match="pos_weight.* not apply to a multiclass task"):
            get_loss("focal", "multiclass", **kwargs)


def test_weighted_bce_checks_the_number_of_neg_weights_too():
    y, p = np.array([[0.0], [1.0]]), np.array([[0.2], [0.7]])
    with pytest.raises(LossConfigError, match="neg_weight has 2 values but the model predicts 1"):
        WeightedBinaryCrossentropy(0.3, [0.7, 0.7])(y, p)
    with pytest.raises(LossConfigError, match="neg_alpha has 2 values but the model predicts 1"):
        FocalLoss(alpha=0.3, neg_alpha=[0.7, 0.7])(y, p)
