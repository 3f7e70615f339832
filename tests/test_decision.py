"""Decision curves (net benefit over threshold probabilities) and the calibration line of a binary model's
probabilities, in the metrics, the report's sentences and its plot."""
import json

import numpy as np
import pandas as pd
import pytest

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from test_subgroups import write_patients
from tfmed.evaluation.decision import THRESHOLDS, beneficial_ranges, calibration_line, decision_curve, net_benefit
from tfmed.evaluation.intervals import EvaluationError
from tfmed.evaluation.metrics import binary_metrics
from tfmed.run.experiment import run_experiment


def test_net_benefit_counts_true_positives_less_weighted_false_positives():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([.9, .7, .2, .8, .6, .3, .2, .1, .1, .1])
    # at t = 0.25 (odds 1/3): 2 true and 3 false positives among 10 -> (2 - 3/3) / 10
    assert net_benefit(y, p, 0.25) == pytest.approx(0.1)
    assert net_benefit(y, np.ones(10), 0.25) == pytest.approx((3 - 7 / 3) / 10)
    curve = decision_curve(y, p)
    assert curve["thresholds"] == THRESHOLDS.tolist()
    assert curve["model"] == pytest.approx([net_benefit(y, p, t) for t in THRESHOLDS])  # ties at t count
    assert curve["treat_all"] == pytest.approx([0.3 - 0.7 * t / (1 - t) for t in THRESHOLDS])


def test_beneficial_ranges_are_where_the_model_beats_both_simple_rules():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([.9, .7, .2, .8, .6, .3, .2, .1, .1, .1])
    curve = decision_curve(y, p)
    ranges = beneficial_ranges(curve)
    for t, model, everyone in zip(curve["thresholds"], curve["model"], curve["treat_all"]):
        inside = any(lo <= t <= hi for lo, hi in ranges)
        assert inside == (model > max(everyone, 0.0)), t
    assert beneficial_ranges(decision_curve(y, np.full(10, 0.5))) == []  # a constant score never helps


def test_the_calibration_line_finds_overconfidence_and_too_many_predicted_cases():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.02, 0.98, 20000)
    y = rng.uniform(size=truth.size) < truth
    logit = np.log(truth / (1 - truth))
    right = calibration_line(y, truth)
    assert right["intercept"] == pytest.approx(0, abs=0.05) and right["slope"] == pytest.approx(1, abs=0.05)
    extreme = calibration_line(y, 1 / (1 + np.exp(-2 * logit)))  # logits doubled: too sure both ways
    assert extreme["slope"] == pytest.approx(0.5, abs=0.05)
    high = calibration_line(y, 1 / (1 + np.exp(-(logit + 1))))  # every risk overstated
    assert high["intercept"] == pytest.approx(-1, abs=0.05) and high["slope"] == pytest.approx(1, abs=0.05)
    assert calibration_line([0, 0, 1, 1], [.1, .2, .8, .9])["slope"] is None  # complete separation
    assert calibration_line([0, 0, 0, 1, 1, 1], [.1, .2, .5, .5, .8, .9])["slope"] is None  # a tie at the boundary
    assert calibration_line([0, 0, 1, 1], [.3] * 4)["slope"] is None  # one value: no slope (it was 0)
    assert calibration_line([0, 1, 0, 1], [.2, .6, .7, .9])["slope"] is not None  # the classes overlap
    assert calibration_line([1, 1], [.4, .9]) == {"intercept": None, "slope": None}


def test_the_calibration_slope_and_the_logistic_recalibration_are_the_maximum_likelihood_fit():
    from scipy.optimize import minimize

    from tfmed.evaluation.recalibration import Recalibration

    for seed in range(3):
        rng = np.random.default_rng(seed)
        p = rng.uniform(0.02, 0.98, 300)
        y = (rng.uniform(size=300) < p ** 0.6).astype(int)
        z = np.log(p / (1 - p))
        exact = minimize(lambda b: np.sum(np.logaddexp(0, b[0] + b[1] * z) - y * (b[0] + b[1] * z)), [0.0, 1.0],
                         method="BFGS", options={"gtol": 1e-10}).x
        assert calibration_line(y, p)["slope"] == pytest.approx(exact[1], abs=1e-6)  # 3e-5 to 9e-5 off before
        fitted = Recalibration.fit("logistic", "binary", y, p)
        assert (fitted.intercept[0], fitted.slope[0]) == pytest.approx(tuple(exact), abs=1e-6)


def test_binary_metrics_give_net_benefit_at_the_threshold_and_only_for_probabilities():
    y = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    p = [.9, .7, .2, .8, .6, .3, .2, .1, .1, .1]
    m = binary_metrics(y, p, 0.25)
    assert m["net_benefit"] == pytest.approx(0.1) and m["net_benefit_treat_all"] == pytest.approx((3 - 7 / 3) / 10)
    assert m["beneficial_thresholds"] == beneficial_ranges(decision_curve(y, p))
    assert m["calibration_slope"] == pytest.approx(calibration_line(y, p)["slope"])
    margins = binary_metrics(y, np.array(p) * 4 - 2, 0.0)  # SVM margins: no probabilities
    assert margins["net_benefit"] is None and margins["calibration_slope"] is None
    assert binary_metrics(y, p, 1.0)["net_benefit"] is None  # no threshold probability at 1


@pytest.mark.slow
def test_a_runs_report_has_the_decision_curve_and_its_sentences(tmp_path):
    csv = write_patients(tmp_path / "data")
    config = tiny_svm_experiment("decision", tmp_path, {"source": "manifest", "path": str(csv)},
                                 {"method": "patient", "test_fraction": 0.4, "val_fraction": 0.3})
    run = run_experiment(config)
    metrics = json.loads((run / "metrics.json").read_text())
    youden = metrics["splits"]["test"]["youden"]
    predictions = pd.read_csv(run / "predictions.csv")
    test = predictions[predictions["split"] == "test"]
    assert youden["net_benefit"] == pytest.approx(net_benefit(test["label"], test["score"], youden["threshold"]))
    assert youden["beneficial_thresholds"] == beneficial_ranges(decision_curve(test["label"], test["score"]))
    report = (run / "report.html").read_text()
    assert "alt='decision'" in report and "Decision curve (test): the net benefit of acting on the model" in report
    assert "Calibration (test): " in report


@pytest.mark.parametrize("call, message", [
    (lambda y, p: net_benefit(y, np.full(10, np.nan), 0.5),
     r"net_benefit: probabilities contain NaN or infinite values \(10 values, first at row 0\)"),
    (lambda y, p: net_benefit(y * 2, p, 0.5), "net_benefit: y must hold only 0 and 1; row 1 is 2"),
    (lambda y, p: net_benefit(y, p, 1.0), "net_benefit: threshold probabilities must lie strictly between 0 and 1"),
    (lambda y, p: net_benefit(y, p[:9], 0.5), r"net_benefit: 10 labels but probabilities of shape \(9,\)"),
    (lambda y, p: decision_curve(y, p[:9]), r"decision_curve: 10 labels but probabilities of shape \(9,\)"),
    (lambda y, p: decision_curve(y, p, [0.0, 0.5]), "decision_curve: threshold probabilities must lie strictly"),
    (lambda y, p: calibration_line(y, np.where(np.arange(10) == 3, np.nan, p)),
     "calibration_line: probabilities contain NaN .* first at row 3"),
    (lambda y, p: calibration_line(y * 2, p), "calibration_line: y must hold only 0 and 1"),
    (lambda y, p: calibration_line([], []), "calibration_line: y is empty"),
])
def test_bad_input_to_the_decision_functions_is_refused_with_its_reason(call, message):
    """Not a net benefit of 0.0 for NaN probabilities, a label 2 counted as a negative, or an error from
    deep inside numpy or scikit-learn."""
    with pytest.raises(EvaluationError, match=message):
        call(np.array([0, 1, 0, 1, 1, 0, 1, 0, 0, 1]), np.linspace(0.05, 0.95, 10))


def test_the_calibration_line_of_overconfident_probabilities_clips_them_at_one_in_a_million():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(5)
    p = 1 / (1 + np.exp(-rng.normal(0, 4, 3000)))  # a quarter outside [0.01, 0.99], as CNN outputs often are
    y = (rng.uniform(size=3000) < p).astype(int)
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    logit = np.log(clipped / (1 - clipped))
    slope = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit(logit[:, None], y).coef_[0, 0]
    assert calibration_line(y, p)["slope"] == pytest.approx(slope, abs=1e-4)
