"""Threshold selection on validation data, checked by hand and by brute force."""
import numpy as np
import pytest
from sklearn.metrics import roc_curve

from tfmed.evaluation import (EvaluationError, apply_threshold, choose_threshold, operating_points,
                              per_label_thresholds)


def rates(y, s, t):
    called = s >= t
    return called[y == 1].mean(), 1 - called[y == 0].mean()  # sensitivity, specificity


def test_hand_checkable_example():
    # negatives 0.1 0.2 0.3 0.5, positives 0.4 0.6 0.7 0.9
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.9]
    # t=0.6: sens 3/4, spec 4/4 -> J=0.75, the best.
    assert choose_threshold(y, s, "youden") == 0.6
    # sens >= 0.75 first reached going down at 0.6; 1.0 needs 0.4.
    assert choose_threshold(y, s, "sensitivity", 0.75) == 0.6
    assert choose_threshold(y, s, "sensitivity", 1.0) == 0.4
    # spec >= 0.75 holds down to 0.4 (only 0.5 above it); spec 1.0 down to 0.6.
    assert choose_threshold(y, s, "specificity", 0.75) == 0.4
    assert choose_threshold(y, s, "specificity", 1.0) == 0.6
    assert choose_threshold(y, s, "fixed", 0.3) == 0.3


def test_agrees_with_roc_curve_and_brute_force():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    s = np.round(y + rng.normal(0, 1, 200), 2)
    candidates = np.unique(s)
    fpr, tpr, _ = roc_curve(y, s)
    t = choose_threshold(y, s, "youden")
    sens, spec = rates(y, s, t)
    assert sens + spec - 1 == pytest.approx(np.max(tpr - fpr))
    for target in (0.8, 0.95):
        t = choose_threshold(y, s, "sensitivity", target)
        assert rates(y, s, t)[0] >= target
        higher = candidates[candidates > t]
        assert all(rates(y, s, c)[0] < target for c in higher)  # the highest such threshold
        t = choose_threshold(y, s, "specificity", target)
        assert rates(y, s, t)[1] >= target
        lower = candidates[candidates < t]
        assert all(rates(y, s, c)[1] < target for c in lower)  # the lowest such threshold


def test_specificity_when_negatives_share_the_top_score():
    y = np.array([0, 1, 0, 1])
    s = np.array([0.9, 0.9, 0.1, 0.5])
    t = choose_threshold(y, s, "specificity", 1.0)
    assert t > 0.9 and apply_threshold(s, t).sum() == 0


def test_operating_points_names_and_multilabel():
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.9]
    points = operating_points(y, s, targets=(1.0,))
    assert points == {"youden": 0.6, "high_sensitivity": 0.4, "high_specificity": 0.6}
    points = operating_points(y, s, targets=(0.75, 1.0), specificity_targets=(0.75,))
    assert points["high_sensitivity@0.75"] == 0.6 and points["high_sensitivity@1"] == 0.4
    assert points["high_specificity"] == 0.4
    Y = np.array([y, [1, 0, 1, 0, 1, 0, 1, 0]]).T
    S = np.array([s, [0.8, 0.1, 0.7, 0.2, 0.9, 0.3, 0.6, 0.4]]).T
    per_label = operating_points(Y, S, targets=(1.0,), label_names=["a", "b"])
    assert per_label["a"] == {"youden": 0.6, "high_sensitivity": 0.4, "high_specificity": 0.6}
    assert per_label["b"]["youden"] == 0.6
    assert per_label_thresholds(Y, S, "youden", label_names=["a", "b"]) == {"a": 0.6, "b": 0.6}


def test_apply_threshold():
    assert apply_threshold([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]  # at the threshold counts as positive
    S = np.array([[0.2, 0.9], [0.7, 0.4]])
    assert apply_threshold(S, [0.1, 0.95]).tolist() == [[1, 0], [1, 0]]
    assert apply_threshold(S, {"a": 0.5, "b": 0.5}).tolist() == [[0, 1], [1, 0]]
    with pytest.raises(EvaluationError, match="one threshold per score column"):
        apply_threshold(S, [0.1, 0.2, 0.3])
    with pytest.raises(EvaluationError, match="NaN"):
        apply_threshold(S, float("nan"))


def test_threshold_errors():
    with pytest.raises(EvaluationError, match="only negative"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(EvaluationError, match="allowed: youden"):
        choose_threshold([0, 1], [0.1, 0.2], "f1")
    with pytest.raises(EvaluationError, match=r"\(0, 1\]"):
        choose_threshold([0, 1], [0.1, 0.2], "sensitivity", 95)
    with pytest.raises(EvaluationError, match="row 1"):
        choose_threshold([0, 1, 1], [0.1, np.inf, 0.3])
    with pytest.raises(EvaluationError, match="label 'b'"):
        per_label_thresholds([[0, 1], [1, 1]], [[0.1, 0.2], [0.8, 0.3]], label_names=["a", "b"])


# ------------------------------------------- one implementation, two callers
@pytest.mark.parametrize("scores", [
    np.full(10, 0.5),                                           # a chance-level model: one score for all
    np.array([0.1, 0.4, 0.4, 0.4, 0.6, 0.4, 0.8, 0.8, 0.2, 0.9]),  # ties across classes
    np.random.default_rng(3).random(10),
])
@pytest.mark.parametrize("method, target", [("youden", 0.95), ("sensitivity", 0.8), ("specificity", 0.8)])
def test_callbacks_choose_the_same_threshold_as_the_evaluation(scores, method, target):
    from tfmed.training import clinical_scores, select_threshold

    y = np.array([0, 0, 1, 0, 1, 1, 1, 0, 0, 1])
    expected = choose_threshold(y, scores, method, target)
    assert select_threshold(y, scores, method, target) == expected
    if method == "youden":
        assert clinical_scores(y, scores)["youden_threshold"] == expected


def test_a_chance_level_model_calls_everyone_positive_at_youden():
    from tfmed.training import clinical_scores

    scores = clinical_scores(np.array([0, 1, 0, 1]), np.full(4, 0.5))
    assert scores["youden_threshold"] == 0.5 and scores["sensitivity"] == 1.0 and scores["specificity"] == 0.0


def test_a_score_scored_again_a_rounding_step_lower_keeps_its_decision():
    """The Youden threshold is a validation score; the same case scored again in another batch came back one
    float32 step lower (0.7288019061 for 0.7288019657) and flipped to negative."""
    from tfmed.evaluation.metrics import binary_metrics

    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.728801965713501, 0.9, 0.2, 0.95])
    threshold = choose_threshold(y, s, "youden")
    assert threshold == s[2]
    again = s.copy()
    again[2] = np.nextafter(np.float32(s[2]), np.float32(0))  # one float32 step lower
    assert apply_threshold(again, threshold).tolist() == apply_threshold(s, threshold).tolist() == [0, 0, 1, 1, 0, 1]
    assert binary_metrics(y, again, threshold)["sensitivity"] == 1.0
    assert apply_threshold([0.7287], threshold).tolist() == [0]  # a real difference still counts


def test_a_point_gives_on_validation_what_it_was_chosen_for_when_scores_lie_within_rounding():
    """Float32 probabilities near 1 lie within the rounding a decision allows: the point must be chosen by the
    same rule that applies it (two negatives at 0.9999995-6 reach a threshold of 0.99999994)."""
    from tfmed.evaluation.decision import net_benefit
    from tfmed.evaluation.metrics import binary_metrics

    rng = np.random.default_rng(0)
    negatives = np.r_[rng.uniform(0.01, 0.9, 18), 0.9999995, 0.9999996].astype(np.float32)
    positives = np.r_[rng.uniform(0.5, 0.99, 2), np.full(18, 0.99999994)].astype(np.float32)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    s = np.r_[negatives, positives].astype(float)
    points = operating_points(y, s, targets=(0.95,), specificity_targets=(0.95,))
    for name, t in points.items():
        figures = binary_metrics(y, s, t)
        called = apply_threshold(s, t).astype(bool)
        assert (figures["sensitivity"], figures["specificity"]) == (called[y == 1].mean(), 1 - called[y == 0].mean())
        if name == "high_specificity":
            assert figures["specificity"] >= 0.95  # the target it was chosen for
        if name == "youden":  # a tie of 0.9 + 0.9 with the 0.99999994 threshold (exact >= said 0.9 + 1.0)
            assert figures["sensitivity"] + figures["specificity"] - 1 == pytest.approx(0.8)
            counts = figures["confusion_matrix"]
            assert net_benefit(y, s, t) == pytest.approx((counts["tp"] - counts["fp"] * t / (1 - t)) / y.size)


def test_multilabel_thresholds_name_the_label_they_cannot_choose():
    from tfmed.evaluation import select_thresholds

    Y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    P = np.array([[.9, .2], [.3, .8], [.6, .5], [.2, .1]])
    with pytest.raises(EvaluationError, match=r"label 'nodule': cannot choose a threshold: the labels hold only "
                                              r"negative \(0\) cases"):
        select_thresholds("multilabel", Y, P, label_names=["effusion", "nodule"])


@pytest.mark.parametrize("call", ["select_thresholds", "operating_points", "per_label_thresholds",
                                  "subgroup_figures", "paired_tests", "recalibration"])
def test_pandas_labels_and_scores_paired_by_position_with_different_indexes_are_refused(call):
    import pandas as pd

    from tfmed.evaluation import select_thresholds
    from tfmed.evaluation.comparison import paired_tests
    from tfmed.evaluation.recalibration import Recalibration, RecalibrationError
    from tfmed.evaluation.subgroups import subgroup_figures

    rng = np.random.default_rng(0)
    y = pd.Series(rng.integers(0, 2, 40))
    scores = pd.Series(np.clip(0.5 * y + 0.6 * rng.random(40), 0, 1)).sort_values()  # a sorted copy
    Y, S = pd.DataFrame({"a": y, "b": 1 - y}), pd.DataFrame({"a": scores, "b": 1 - scores}).sort_values("a")
    calls = {"select_thresholds": lambda: select_thresholds("binary", y, scores),
             "operating_points": lambda: operating_points(Y, S),
             "per_label_thresholds": lambda: per_label_thresholds(Y, S),
             "subgroup_figures": lambda: subgroup_figures("binary", y, scores, np.array(["a", "b"] * 20), 0.5),
             "paired_tests": lambda: paired_tests("binary", y, scores, y.astype(float)),
             "recalibration": lambda: Recalibration.fit("logistic", "binary", y, scores)}
    with pytest.raises((EvaluationError, RecalibrationError), match="pandas objects with different indexes"):
        calls[call]()


def test_the_sensitivity_targets_are_the_specificity_targets_unless_given():
    from tfmed.evaluation.thresholds import choose_threshold, operating_points

    rng = np.random.default_rng(1)
    y = np.r_[np.ones(50), np.zeros(50)].astype(int)
    s = 1 / (1 + np.exp(-np.r_[rng.normal(1, 1, 50), rng.normal(0, 1, 50)]))
    points = operating_points(y, s, targets=(0.8,))
    assert points["high_specificity"] == choose_threshold(y, s, "specificity", 0.8)
    assert points["high_specificity"] != choose_threshold(y, s, "specificity", 0.95)


def test_youden_takes_the_strict_maximum_over_a_near_tie():
    from tfmed.evaluation.thresholds import choose_threshold

    y = np.r_[np.ones(10000), np.zeros(10000)].astype(int)
    positives = np.r_[np.full(5000, 0.9), np.full(5000, 0.5)]  # J at 0.9: 0.5 - 0 = 0.5
    for negatives_at_half, best in ((4999, 0.5), (5001, 0.9)):  # J at 0.5: 1 - 0.4999 or 1 - 0.5001
        negatives = np.r_[np.full(negatives_at_half, 0.5), np.full(10000 - negatives_at_half, 0.1)]
        assert choose_threshold(y, np.r_[positives, negatives], "youden") == pytest.approx(best)
