"""Binary, multi-class and multi-label metrics compared with scikit-learn."""
import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss, confusion_matrix,
                             f1_score, hamming_loss, precision_score, recall_score, roc_auc_score)

from tfmed.evaluation import (EvaluationError, binary_metrics, bootstrap_ci, delong_auc_ci, delong_test, evaluate,
                              macro_auc_ci, macro_auc_test, multiclass_metrics, multilabel_metrics,
                              operating_point_metrics, operating_points, separation_bound)


def wilson_closed_form(k, n, level=0.95):
    """Wilson bounds as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n (a quadratic in p)."""
    z2 = stats.norm.ppf(0.5 + level / 2) ** 2
    p_hat = k / n
    a, b, c = 1 + z2 / n, -(2 * p_hat + z2 / n), p_hat ** 2
    roots = np.roots([a, b, c])
    return sorted(float(np.real(r)) for r in roots)


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(42)
    y = rng.integers(0, 2, 300)
    scores = 1 / (1 + np.exp(-(1.5 * y - 0.75 + rng.normal(0, 1, 300))))
    return y, scores


def test_binary_metrics_match_sklearn(binary_data):
    y, s = binary_data
    m = binary_metrics(y, s, threshold=0.55)
    pred = (s >= 0.55).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert m["ppv"] == pytest.approx(precision_score(y, pred))
    assert m["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["brier"] == pytest.approx(brier_score_loss(y, s))
    assert m["prevalence"] == pytest.approx(y.mean())
    assert m["n"] == 300 and m["n_positive"] == y.sum()
    assert m["notes"] == []


def test_binary_intervals(binary_data):
    y, s = binary_data
    m = binary_metrics(y, s, threshold=0.5, ci_level=0.9)
    counts = m["confusion_matrix"]
    expected = wilson_closed_form(counts["tp"], counts["tp"] + counts["fn"], 0.9)
    assert m["ci"]["sensitivity"] == pytest.approx(expected, abs=1e-9)
    expected = wilson_closed_form(counts["tn"], counts["tn"] + counts["fp"], 0.9)
    assert m["ci"]["specificity"] == pytest.approx(expected, abs=1e-9)
    assert m["ci"]["roc_auc"] == pytest.approx(list(delong_auc_ci(y, s, 0.9)[1:]))
    assert m["ci_method"]["roc_auc"] == "delong_logit+newcombe" and m["ci_method"]["ppv"] == "wilson"
    assert "bootstrap_ci" not in m
    perfect = binary_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9], threshold=0.5)
    assert perfect["ci"]["roc_auc"] == pytest.approx([separation_bound(2, 3), 1.0])
    assert perfect["ci_method"]["roc_auc"] == "binormal_separation"
    from tfmed.evaluation.metrics import multiclass_metrics

    y3 = np.array([0, 0, 1, 1, 2, 2])
    assert multiclass_metrics(y3, np.eye(3)[y3] * .8 + .1, ["a", "b", "c"])["ci_method"] == {
        "macro_auc": "binormal_separation"}  # every class separated: the macro interval is the separation bound
    assert multiclass_metrics(y3, np.eye(3)[[0, 1, 1, 2, 2, 0]] * .8 + .1, ["a", "b", "c"])["ci_method"] == {
        "macro_auc": "delong_structural+newcombe"}


def test_binary_bootstrap_intervals(binary_data):
    y, s = binary_data
    m = binary_metrics(y, s, threshold=0.5, bootstrap=200, seed=3)
    assert set(m["bootstrap_ci"]) == {"accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                                      "roc_auc", "pr_auc", "brier"}
    for name, (lo, hi) in m["bootstrap_ci"].items():
        assert lo <= m[name] <= hi, name
    boot_width = np.diff(m["bootstrap_ci"]["roc_auc"])[0]
    delong_width = np.diff(m["ci"]["roc_auc"])[0]
    assert boot_width == pytest.approx(delong_width, rel=0.3)
    # Stratified resampling keeps the positives fixed, so the sensitivity
    # interval tracks the Wilson one.
    assert np.diff(m["bootstrap_ci"]["sensitivity"])[0] == pytest.approx(np.diff(m["ci"]["sensitivity"])[0],
                                                                          rel=0.3)
    assert binary_metrics(y, s, 0.5, bootstrap=200, seed=3)["bootstrap_ci"] == m["bootstrap_ci"]


def test_undefined_metrics_are_none_with_notes():
    m = binary_metrics([0, 0, 0], [0.2, 0.4, 0.9], threshold=0.5)
    assert m["sensitivity"] is None and m["roc_auc"] is None and m["pr_auc"] is None
    assert m["specificity"] == pytest.approx(2 / 3)
    assert any("no positive cases" in note for note in m["notes"])
    assert any("only one class" in note for note in m["notes"])
    assert m["ci"]["sensitivity"] == [None, None] and "roc_auc" not in m["ci"]
    m = binary_metrics([0, 1, 1], [0.2, 0.4, 0.9], threshold=0.95)
    assert m["ppv"] is None and any("no case was called positive" in note for note in m["notes"])
    json.dumps(m, allow_nan=False)  # undefined values are null, not NaN


def test_a_threshold_off_the_scores_scale_is_noted():
    said = "the threshold 50 lies outside [0, 1], where every score lies, so every case is called negative"
    assert any(note.startswith(said) for note in binary_metrics([0, 1, 1], [0.2, 0.4, 0.9], threshold=50)["notes"])
    margins = binary_metrics([0, 1, 1], [-2.0, 0.4, 3.0], threshold=1.5)  # SVM margins: a threshold of their scale
    assert not any("lies outside" in note for note in margins["notes"])
    # a high-specificity point put just above a top score of 1 (negatives share it) is tfmed's, not a percentage
    y, s = [0, 0, 1, 1], [1.0, 1.0, 1.0, 0.3]
    point = operating_points(y, s, targets=(0.95,))["high_specificity"]
    notes = binary_metrics(y, s, point)["notes"]
    assert any("lies just above the highest possible score, where a point is put when no observed score reaches its "
               "target" in note for note in notes)
    assert not any("0.5, not 50" in note for note in notes)


def test_pandas_labels_and_scores_with_different_indexes_are_refused():
    import pandas as pd

    frame = pd.DataFrame({"y": [0, 1, 1, 0], "score": [0.2, 0.9, 0.7, 0.4]})
    shuffled = frame.sort_values("score")  # a sorted copy: its rows are other cases by position
    refused = "are pandas objects with different indexes"
    with pytest.raises(EvaluationError, match="binary: y_true and scores " + refused):
        evaluate("binary", frame["y"], shuffled["score"])
    with pytest.raises(EvaluationError, match="multilabel: Y_true and P " + refused):
        evaluate("multilabel", frame[["y"]], shuffled[["score"]], class_names=["y"])
    proba = shuffled[["score"]].assign(other=1 - shuffled["score"])
    with pytest.raises(EvaluationError, match="multiclass: y_true and proba " + refused):
        evaluate("multiclass", frame["y"], proba)
    for call in (lambda: delong_auc_ci(frame["y"], shuffled["score"]),
                 lambda: delong_test(frame["y"], frame["score"], shuffled["score"]),
                 lambda: macro_auc_ci(frame["y"], proba), lambda: macro_auc_test(frame["y"], proba, proba)):
        with pytest.raises(EvaluationError, match=refused):
            call()
    assert evaluate("binary", frame["y"], frame["score"])["roc_auc"] == 1.0  # aligned: read as given


def test_brier_needs_probabilities_and_column_scores_accepted():
    y = np.array([0, 1, 0, 1])
    margins = np.array([-1.2, 0.8, 0.3, 2.0])
    m = binary_metrics(y, margins, threshold=0.0)
    assert m["brier"] is None and any("Brier" in note for note in m["notes"])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, margins))
    column = binary_metrics(y, margins[:, None], threshold=0.0)
    assert column["confusion_matrix"] == m["confusion_matrix"]


def test_binary_bad_input_errors():
    with pytest.raises(EvaluationError, match="row 2 is 2"):
        binary_metrics([0, 1, 2], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(EvaluationError, match="first at row 1"):
        binary_metrics([0, 1, 1], [0.1, np.nan, 0.3], 0.5)
    with pytest.raises(EvaluationError, match="one score per case"):
        binary_metrics([0, 1, 1], [0.1, 0.3], 0.5)
    with pytest.raises(EvaluationError, match="threshold"):
        binary_metrics([0, 1], [0.1, 0.3], float("nan"))
    with pytest.raises(EvaluationError, match="bootstrap"):
        binary_metrics([0, 1], [0.1, 0.3], 0.5, bootstrap=-5)


@pytest.fixture
def multiclass_data():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 240)
    logits = rng.normal(0, 1, (240, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, proba


def test_multiclass_metrics_match_sklearn(multiclass_data):
    y, proba = multiclass_data
    names = ["normal", "bacterial", "viral"]
    m = multiclass_metrics(y, proba, names)
    pred = proba.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    recalls = recall_score(y, pred, average=None)
    precisions = precision_score(y, pred, average=None)
    for k, name in enumerate(names):
        entry = m["per_class"][name]
        assert entry["roc_auc"] == pytest.approx(roc_auc_score(y == k, proba[:, k]))
        assert entry["sensitivity"] == pytest.approx(recalls[k])
        assert entry["ppv"] == pytest.approx(precisions[k])
        negatives = y != k
        assert entry["specificity"] == pytest.approx(np.mean(pred[negatives] != k))
        assert entry["npv"] == pytest.approx(np.mean(y[pred != k] != k))
        lo, hi = entry["ci"]["roc_auc"]
        assert lo < entry["roc_auc"] < hi
    json.dumps(m, allow_nan=False)


def test_multiclass_macro_auc_interval_and_bootstrap(multiclass_data):
    y, proba = multiclass_data
    m = multiclass_metrics(y, proba, ["a", "b", "c"], ci_level=0.9)
    _, lo, hi = macro_auc_ci(y, proba, 0.9)
    assert m["macro_auc_ci"] == pytest.approx([lo, hi]) and lo < m["macro_auc"] < hi
    assert "bootstrap_ci" not in m
    booted = evaluate("multiclass", y, proba, class_names=["a", "b", "c"], ci_level=0.9, bootstrap=300, seed=1)
    assert set(booted["bootstrap_ci"]) == {"accuracy", "balanced_accuracy", "macro_auc"}
    assert booted["bootstrap_resamples"] == 300 and not any("bootstrap" in n for n in booted["notes"])
    for name, (b_lo, b_hi) in booted["bootstrap_ci"].items():
        assert b_lo <= booted[name] <= b_hi, name
    # the percentile and analytic intervals of the macro AUC have about the same width
    assert np.diff(booted["bootstrap_ci"]["macro_auc"])[0] == pytest.approx(hi - lo, rel=0.3)
    assert np.diff(booted["bootstrap_ci"]["accuracy"])[0] == pytest.approx(np.diff(m["accuracy_ci"])[0],
                                                                           rel=0.3)
    with pytest.raises(EvaluationError, match="bootstrap is -1"):
        multiclass_metrics(y, proba, ["a", "b", "c"], bootstrap=-1)


def test_an_auc_on_few_cases_gets_a_note_in_every_task():
    few = binary_metrics(np.repeat([0, 1], [40, 6]), np.linspace(0, 1, 46), threshold=0.5)
    assert [note[:32] for note in few["notes"]] == ["only 6 positive cases: the AUC i"]
    assert "86-100%" in few["notes"][0]
    both = binary_metrics([0, 0, 0, 1, 1], [0.1, 0.5, 0.3, 0.8, 0.4], threshold=0.5)["notes"]
    assert any("only 2 positive cases" in n for n in both) and any("only 3 negative cases" in n for n in both)
    y = np.repeat([0, 1, 2], [30, 30, 5])
    proba = np.eye(3)[y] * 0.5 + np.random.default_rng(0).uniform(0, 0.5, (65, 3))
    notes = multiclass_metrics(y, proba, ["a", "b", "rare"])["notes"]
    assert [n[:25] for n in notes] == ["class 'rare': only 5 case"]
    Y = np.zeros((60, 2), int)
    Y[:30, 0], Y[:8, 1] = 1, 1
    notes = multilabel_metrics(Y, Y * 0.6 + 0.2, 0.5, ["common", "rare"])["notes"]
    assert [n[:30] for n in notes] == ["label 'rare': only 8 positive "]
    assert multiclass_metrics(np.repeat([0, 1], 10), np.eye(2)[np.repeat([0, 1], 10)], ["a", "b"])["notes"] == []


def test_multiclass_missing_class_and_errors():
    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    m = multiclass_metrics([0, 1, 0, 1], proba, ["a", "b", "c"])
    assert m["per_class"]["c"]["roc_auc"] is None and m["per_class"]["c"]["sensitivity"] is None
    # both present classes perfectly ranked: the bound for 2 cases against 2
    assert m["macro_auc"] == pytest.approx(1.0) and m["macro_auc_ci"] == pytest.approx([separation_bound(2, 2), 1.0])
    assert any("'c'" in note for note in m["notes"])
    assert multiclass_metrics([1, 1, 1, 1], proba, ["a", "b", "c"])["macro_auc_ci"] is None
    with pytest.raises(EvaluationError, match=r"expected \(n_cases, 3\)"):
        multiclass_metrics([0, 1], proba[:2, :2], ["a", "b", "c"])
    with pytest.raises(EvaluationError, match="row 1 is 5"):
        multiclass_metrics([0, 5, 0, 1], proba, ["a", "b", "c"])


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(11)
    Y = rng.integers(0, 2, (200, 3))
    P = 1 / (1 + np.exp(-(2 * Y - 1 + rng.normal(0, 1.2, (200, 3)))))
    names = ["effusion", "nodule", "cardiomegaly"]
    thresholds = {"effusion": 0.5, "nodule": 0.4, "cardiomegaly": 0.6}
    m = multilabel_metrics(Y, P, thresholds, names)
    assert m["macro_auc"] == pytest.approx(roc_auc_score(Y, P, average="macro"))
    assert m["macro_auc_ci"] == pytest.approx(list(macro_auc_ci(Y, P)[1:]))
    assert m["micro_auc"] == pytest.approx(roc_auc_score(Y, P, average="micro"))
    decisions = (P >= np.array([0.5, 0.4, 0.6])).astype(int)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(Y, decisions))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(Y, decisions))
    for j, name in enumerate(names):
        assert m["per_label"][name]["sensitivity"] == pytest.approx(recall_score(Y[:, j], decisions[:, j]))
        assert m["per_label"][name]["threshold"] == thresholds[name]
    none_positive = multilabel_metrics(np.zeros((4, 2), int), P[:4, :2], 0.5, ["a", "b"], bootstrap=20)
    assert none_positive["micro_auc"] is None and none_positive["macro_auc"] is None
    assert any("micro AUC is undefined" in note for note in none_positive["notes"])
    assert none_positive["bootstrap_ci"]["macro_auc"] == [None, None]
    assert none_positive["subset_accuracy"] == pytest.approx(np.mean(np.all(P[:4, :2] < 0.5, axis=1)))
    # an image with no known label has nothing to match: left out, not counted as an exact match
    unknown = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [-1, -1], [-1, -1], [-1, -1]])
    scores = np.array([[.9, .1], [.2, .8], [.7, .6], [.9, .2], [.9, .9], [.1, .1], [.5, .5]])
    graded = multilabel_metrics(unknown, scores, 0.5, ["a", "b"], bootstrap=20)
    assert graded["subset_accuracy"] == pytest.approx(3 / 4)
    assert multilabel_metrics(np.c_[unknown[:, :1], np.full(7, -1)], scores, 0.5, ["a", "b"])["subset_accuracy"] \
        == pytest.approx(3 / 4)  # label b unknown everywhere: each image judged on label a alone
    with pytest.raises(EvaluationError, match="no threshold for label"):
        multilabel_metrics(Y, P, {"effusion": 0.5}, names)
    with pytest.raises(EvaluationError, match="2 thresholds for 3 labels"):
        multilabel_metrics(Y, P, [0.5, 0.5], names)


def test_multilabel_bootstrap_resamples_whole_cases():
    rng = np.random.default_rng(5)
    Y = rng.integers(0, 2, (240, 3))
    P = 1 / (1 + np.exp(-(2 * Y - 1 + rng.normal(0, 1.5, (240, 3)))))
    names = ["effusion", "nodule", "cardiomegaly"]
    plain = multilabel_metrics(Y, P, 0.5, names)
    assert "bootstrap_ci" not in plain
    m = multilabel_metrics(Y, P, 0.5, names, bootstrap=300, seed=2)
    assert set(m["bootstrap_ci"]) == {"macro_auc", "micro_auc", "subset_accuracy", "hamming_loss"}
    assert m["bootstrap_resamples"] == 300
    for name, (lo, hi) in m["bootstrap_ci"].items():
        assert lo < m[name] < hi, name
    assert "bootstrap_ci" in m["per_label"]["nodule"]
    # the percentile interval of the macro AUC is about as wide as the analytic one
    assert np.diff(m["bootstrap_ci"]["macro_auc"])[0] == pytest.approx(np.diff(m["macro_auc_ci"])[0], rel=0.3)
    assert multilabel_metrics(Y, P, 0.5, names, bootstrap=300, seed=2)["bootstrap_ci"] == m["bootstrap_ci"]
    # rows are resampled whole: two copies of one label give that label's row-bootstrap of its AUC
    y, s = Y[:, 0], P[:, 0]
    twin = multilabel_metrics(np.stack([y, y], 1), np.stack([s, s], 1), 0.5, ["a", "b"], bootstrap=200, seed=4)
    _, lo, hi = bootstrap_ci(roc_auc_score, y, s, n_resamples=200, stratified=False, seed=4)
    assert twin["bootstrap_ci"]["macro_auc"] == pytest.approx([lo, hi])
    assert twin["bootstrap_ci"]["subset_accuracy"] == pytest.approx(
        list(bootstrap_ci(lambda yy, ss: np.mean(yy == (ss >= 0.5)), y, s, n_resamples=200, stratified=False,
                          seed=4)[1:]))


def test_multilabel_bootstrap_macro_auc_averages_the_same_labels_in_every_resample():
    # a rare label (3 positives) is missing from some resamples: those have no macro AUC over all three labels
    from tfmed.evaluation.intervals import bootstrap_distribution, percentile_interval

    rng = np.random.default_rng(0)
    Y = np.zeros((100, 3), int)
    Y[:, 0], Y[:, 1], Y[:3, 2] = rng.random(100) < 0.5, rng.random(100) < 0.5, 1
    P = np.clip(np.c_[Y[:, :2] * 0.5 + rng.random((100, 2)) * 0.6, rng.random(100)], 0, 1)
    P[:3, 2] = [0.2, 0.4, 0.6]
    m = multilabel_metrics(Y, P, 0.5, ["a", "b", "rare"], bootstrap=400, seed=0)

    def all_three(yy, pp):
        return roc_auc_score(yy, pp, average="macro") if yy[:, 2].any() else None
    values = bootstrap_distribution(all_three, Y, P, n_resamples=400, stratified=False, seed=0)
    lost = sum(v is None for v in values)
    assert lost > 0
    assert m["bootstrap_ci"]["macro_auc"] == pytest.approx(list(percentile_interval(values)))
    assert f"bootstrap: {lost} of 400 resamples lack the positives or negatives of a label" in " ".join(m["notes"])


def test_evaluate_dispatches_and_is_json_ready(binary_data, multiclass_data):
    y, s = binary_data
    result = evaluate("binary", y, s[:, None], None)
    assert result["threshold"] == 0.5 and any("0.5 was used" in n for n in result["notes"])
    assert result["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    y3, proba = multiclass_data
    result = evaluate("multiclass", y3, proba, class_names=["a", "b", "c"], ci_level=0.9)
    assert result["task"] == "multiclass" and result["ci_level"] == 0.9
    Y = np.stack([y, 1 - y], axis=1)
    P = np.stack([s, 1 - s], axis=1)
    result = evaluate("multilabel", Y, P, [0.5, 0.5], ["x", "y"])
    assert result["per_label"]["x"]["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["labels"] == ["x", "y"]
    with pytest.raises(EvaluationError, match="allowed: binary"):
        evaluate("regression", y, s)


def test_operating_point_metrics():
    y = [0, 0, 1, 1, 1, 0]
    s = [0.1, 0.6, 0.4, 0.9, 0.7, 0.3]
    table = operating_point_metrics(y, s, {"youden": 0.7, "sensitive": 0.4})
    assert table["youden"]["sensitivity"] == pytest.approx(2 / 3)
    assert table["youden"]["specificity"] == 1.0
    assert table["sensitive"]["sensitivity"] == 1.0
    assert table["sensitive"]["specificity"] == pytest.approx(2 / 3)
    with pytest.raises(EvaluationError, match="non-empty mapping"):
        operating_point_metrics(y, s, {})


def test_docstring_examples_run():
    import doctest

    import tfmed.evaluation as package
    from tfmed.evaluation import intervals, metrics, thresholds

    for module in (package, intervals, metrics, thresholds):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_bootstrap_fast_path_matches_sklearn():
    from tfmed.evaluation.metrics import _binary_replicate

    rng = np.random.default_rng(8)
    for trial in range(20):
        n = int(rng.integers(5, 60))
        y = rng.integers(0, 2, n)
        s = np.round(rng.uniform(0, 1, n), 1 if trial % 2 else 6)  # odd trials: many ties
        threshold = float(rng.uniform(0.2, 0.8))
        fast = _binary_replicate(y, s, threshold)
        pred = (s >= threshold).astype(int)
        both = 0 < y.sum() < n
        assert fast["roc_auc"] == (pytest.approx(roc_auc_score(y, s)) if both else None)
        assert fast["pr_auc"] == (pytest.approx(average_precision_score(y, s)) if both else None)
        assert fast["brier"] == pytest.approx(brier_score_loss(y, s))
        assert fast["accuracy"] == pytest.approx(accuracy_score(y, pred))
        if y.sum() and pred.sum():
            assert fast["sensitivity"] == pytest.approx(recall_score(y, pred))
            assert fast["ppv"] == pytest.approx(precision_score(y, pred))
            assert fast["f1"] == pytest.approx(f1_score(y, pred))
        if (1 - y).sum() and (1 - pred).sum():
            assert fast["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0))
            assert fast["npv"] == pytest.approx(precision_score(y, pred, pos_label=0))


def test_multilabel_bootstrap_leaves_a_label_known_only_positive_out_of_the_macro_auc():
    # label b is known positive or unknown (-1), never negative: it has no AUC, so the macro AUC and every
    # resample's average label a alone
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 60)
    Y = np.c_[a, np.where(rng.random(60) < 0.5, 1, -1)]
    P = np.c_[np.clip(0.4 * a + 0.6 * rng.random(60), 0, 1), rng.random(60)]
    m = multilabel_metrics(Y, P, 0.5, ["a", "b"], bootstrap=100, seed=0)
    lo, hi = m["bootstrap_ci"]["macro_auc"]
    assert lo is not None and lo < m["macro_auc"] < hi
    assert not any(note.startswith("bootstrap:") for note in m["notes"])


def test_balanced_accuracy_is_the_mean_recall_in_the_figure_and_in_each_bootstrap_replicate():
    from sklearn.metrics import balanced_accuracy_score

    from tfmed.evaluation.metrics import _multiclass_replicate

    rng = np.random.default_rng(0)
    y = np.array([0] * 20 + [1] * 10 + [2] * 5)
    proba = rng.dirichlet([1, 1, 1], size=len(y))
    proba[np.arange(len(y)), y] += 0.4
    expected = balanced_accuracy_score(y, proba.argmax(1))
    assert expected != pytest.approx(balanced_accuracy_score(proba.argmax(1), y))  # recall, not precision
    assert multiclass_metrics(y, proba, ["a", "b", "c"])["balanced_accuracy"] == pytest.approx(expected)
    assert _multiclass_replicate(y, proba)["balanced_accuracy"] == pytest.approx(expected)


def test_the_bootstrap_intervals_come_from_resamples_stratified_by_class():
    from tfmed.evaluation.intervals import bootstrap_distribution, percentile_interval
    from tfmed.evaluation.metrics import _binary_replicate, _multiclass_replicate

    rng = np.random.default_rng(0)
    y = np.array([1] * 8 + [0] * 40)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    stratified = bootstrap_distribution(lambda yy, ss: _binary_replicate(yy, ss, 0.5), y, s, 300, stratified=True,
                                        seed=2)
    shown = binary_metrics(y, s, 0.5, bootstrap=300, seed=2)["bootstrap_ci"]
    for name in ("sensitivity", "roc_auc"):
        assert shown[name] == pytest.approx(list(percentile_interval([r[name] for r in stratified])))
    assert all(r["sensitivity"] in {k / 8 for k in range(9)} for r in stratified)  # always the 8 positives
    labels = np.array([0] * 20 + [1] * 10 + [2] * 5)
    proba = rng.dirichlet([1, 1, 1], size=len(labels))
    replicates = bootstrap_distribution(_multiclass_replicate, labels, proba, 200, stratified=True, seed=1)
    shown = multiclass_metrics(labels, proba, ["a", "b", "c"], bootstrap=200, seed=1)["bootstrap_ci"]
    assert shown["accuracy"] == pytest.approx(list(percentile_interval([r["accuracy"] for r in replicates])))
