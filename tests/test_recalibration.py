"""Recalibration of the probabilities (``evaluation.recalibration``): the fits, their refusals, and runs, k-fold
runs, saved models and ``tfmed ensemble`` that apply them."""
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit, softmax
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from tfmed.config import ConfigError, ExperimentConfig
from tfmed.data.table import ImageTable
from tfmed.evaluation.decision import calibration_line
from tfmed.evaluation.intervals import EvaluationError
from tfmed.evaluation.recalibration import (Recalibration, RecalibrationError, carried_thresholds, check_method,
                                           probability_scores)
from tfmed.evaluation.thresholds import select_thresholds
from tfmed.progress import configure_logging
from tfmed.run.artifact import TrainedModel
from tfmed.run.cli import main
from tfmed.run.evaluate import evaluate_run, load_metrics
from tfmed.run.experiment import check_config_fits_data, recalibrate, run_experiment
from tfmed.run.ensemble_runs import EnsembleRunsError, ensemble_runs
from tfmed.run.recalibrate_run import RecalibrateRunError, recalibrate_run
from tfmed.run.rundir import run_split_tables

from test_experiment import _small, _tiny_medmnist, folder_with_a_corrupt_image

ROOT = Path(__file__).resolve().parent.parent


def drawn(n: int, slope: float, intercept: float, seed: int = 0):
    """Scores p and outcomes drawn at the probabilities sigmoid(slope * logit(p) + intercept)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return (rng.uniform(size=n) < expit(slope * logit(p) + intercept)).astype(int), p


# ------------------------------------------------------------------ the fits
def test_logistic_recovers_the_line_the_outcomes_were_drawn_on_and_makes_it_the_identity():
    y, p = drawn(20000, slope=2.0, intercept=0.5)
    fitted = Recalibration.fit("logistic", "binary", y, p)
    assert fitted.slope[0] == pytest.approx(2.0, abs=0.1) and fitted.intercept[0] == pytest.approx(0.5, abs=0.1)
    after = fitted.apply(p)
    line = calibration_line(y, after)
    assert line["slope"] == pytest.approx(1.0, abs=1e-3) and line["intercept"] == pytest.approx(0.0, abs=1e-3)
    assert log_loss(y, after) < log_loss(y, p) and brier_score_loss(y, after) < brier_score_loss(y, p)
    assert (np.argsort(after, kind="stable") == np.argsort(p, kind="stable")).all()  # ranks, so the AUC, kept
    assert roc_auc_score(y, after) == roc_auc_score(y, p)


def test_temperature_recovers_the_softening_of_binary_and_multiclass_logits():
    y, p = drawn(20000, slope=0.5, intercept=0.0)  # overconfident scores: the right temperature is 2
    assert Recalibration.fit("temperature", "binary", y, p).temperature == pytest.approx(2.0, rel=0.1)
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (20000, 4))
    truth = softmax(logits / 3.0, axis=1)
    labels = np.array([rng.choice(4, p=row) for row in truth])
    scores = softmax(logits, axis=1)
    fitted = Recalibration.fit("temperature", "multiclass", labels, scores)
    assert fitted.temperature == pytest.approx(3.0, rel=0.1)
    after = fitted.apply(scores)
    assert np.allclose(after.sum(axis=1), 1) and (after.argmax(axis=1) == scores.argmax(axis=1)).all()
    assert probability_scores("multiclass", labels, after)["log_loss"] < \
        probability_scores("multiclass", labels, scores)["log_loss"]


def test_intercept_shifts_the_logits_so_that_as_many_cases_are_predicted_as_occur():
    y, p = drawn(20000, slope=1.0, intercept=0.7)  # a higher prevalence than the scores say
    fitted = Recalibration.fit("intercept", "binary", y, p)
    assert fitted.slope == [1.0] and fitted.intercept[0] == pytest.approx(0.7, abs=0.1)
    after = fitted.apply(p)
    assert after.sum() == pytest.approx(y.sum(), rel=1e-6)  # calibration in the large, exactly
    assert np.allclose(after, expit(logit(p) + fitted.intercept[0]))
    assert fitted.describe() == f"intercept: {fitted.intercept[0]:+.3f}"


@pytest.mark.parametrize("first", [
    Recalibration("logistic", "multilabel", slope=[2.0, 0.5], intercept=[-1.0, 0.3]),
    Recalibration("intercept", "multilabel", slope=[1.0, 1.0], intercept=[0.4, -0.2]),
    Recalibration("temperature", "multilabel", temperature=1.7),
    None,
])
def test_a_line_after_another_recalibration_is_one_recalibration_doing_both(first):
    p = np.random.default_rng(4).uniform(0.01, 0.99, (50, 2))
    then = Recalibration("intercept", "multilabel", slope=[1.0, 1.0], intercept=[0.6, -0.9])
    both = then.after(first)
    step = p if first is None else first.apply(p)
    assert np.allclose(both.apply(p), then.apply(step), atol=1e-5)
    assert Recalibration.from_json(both.to_json()).apply(p) == pytest.approx(both.apply(p))


def test_multilabel_logistic_fits_each_label_on_its_known_entries_only():
    y0, p0 = drawn(6000, slope=2.0, intercept=0.0, seed=2)
    y1, p1 = drawn(6000, slope=0.5, intercept=-1.0, seed=3)
    y1_unknown = y1.copy()
    y1_unknown[:1500] = -1  # unknown: left out of the fit, not read as negative
    fitted = Recalibration.fit("logistic", "multilabel", np.stack([y0, y1_unknown], 1), np.stack([p0, p1], 1))
    alone = Recalibration.fit("logistic", "binary", y1[1500:], p1[1500:])
    assert fitted.slope[1] == pytest.approx(alone.slope[0]) and fitted.intercept[1] == pytest.approx(alone.intercept[0])
    assert fitted.slope[0] == pytest.approx(2.0, abs=0.2)
    after = fitted.apply(np.stack([p0, p1], 1))
    assert after.shape == (6000, 2) and np.allclose(after[:, 1], alone.apply(p1))


@pytest.mark.parametrize("recalibration", [
    Recalibration("logistic", "binary", slope=[2.25], intercept=[-0.6]),
    Recalibration("intercept", "binary", slope=[1.0], intercept=[0.8]),
    Recalibration("temperature", "binary", temperature=0.4),
    Recalibration("logistic", "multilabel", slope=[0.5, 3.0], intercept=[0.2, -1.0]),
    Recalibration("temperature", "multilabel", temperature=2.5),
])
def test_invert_gives_back_the_scores_a_recalibration_was_applied_to(recalibration):
    scores = np.random.default_rng(0).uniform(0.05, 0.95, (50,) if recalibration.task == "binary" else (50, 2))
    assert np.allclose(recalibration.invert(recalibration.apply(scores)), scores, atol=1e-9)
    assert not np.allclose(recalibration.apply(scores), scores, atol=1e-3)


def test_a_multiclass_recalibration_is_not_inverted():
    with pytest.raises(RecalibrationError, match="depends on every class's score"):
        Recalibration("temperature", "multiclass", temperature=2.0).invert(np.full((2, 3), 1 / 3))


@pytest.mark.parametrize("task, before, after", [
    ("binary", None, Recalibration("intercept", "binary", slope=[1.0], intercept=[1.3])),
    ("binary", Recalibration("logistic", "binary", slope=[2.25], intercept=[-0.6]),
     Recalibration("temperature", "binary", temperature=0.5)),
    ("multilabel", Recalibration("logistic", "multilabel", slope=[2.0, 0.7], intercept=[0.1, -0.4]),
     Recalibration("logistic", "multilabel", slope=[1.5, 0.6], intercept=[-0.9, 0.3])),
])
def test_carried_thresholds_decide_every_image_as_before_on_the_new_probabilities(task, before, after):
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.001, 0.999, (400,) if task == "binary" else (400, 2))
    old = scores if before is None else before.apply(scores)
    thresholds = select_thresholds(task, (rng.uniform(size=old.shape) < old).astype(int), old)
    carried = carried_thresholds(thresholds, before, after)
    new = after.apply(scores)
    for point in ("youden", "high_sensitivity", "high_specificity"):
        assert np.array_equal(old >= np.asarray(thresholds[point]), new >= np.asarray(carried[point])), point
        assert not np.allclose(carried[point], thresholds[point], atol=1e-3)  # the numbers moved with the scores
    assert carried["fixed"] == thresholds["fixed"]  # 0.5 is a probability, not a decision carried over
    edge = 1.0 if task == "binary" else [1.0, 1.0]
    assert carried_thresholds({"youden": edge}, before, after) == {"youden": edge}  # nothing called positive stays so


def test_a_fit_round_trips_through_json():
    y, p = drawn(500, slope=1.5, intercept=0.2)
    for method in ("logistic", "temperature"):
        fitted = Recalibration.fit(method, "binary", y, p)
        again = Recalibration.from_json(json.loads(json.dumps(fitted.to_json())))
        assert np.array_equal(again.apply(p), fitted.apply(p)) and again == fitted
    assert Recalibration.from_json(None) is None


def test_probability_scores_are_scikit_learns_log_loss_and_brier():
    y, p = drawn(300, slope=1.0, intercept=0.0)
    figures = probability_scores("binary", y, p)
    assert figures == {"log_loss": round(log_loss(y, p), 4), "brier": round(brier_score_loss(y, p), 4)}
    labels = np.array([0, 1, 2, 1])
    scores = np.array([[.7, .2, .1], [.1, .8, .1], [.3, .3, .4], [.5, .4, .1]])
    onehot = np.eye(3)[labels]
    assert probability_scores("multiclass", labels, scores) == {
        "log_loss": round(log_loss(labels, scores), 4), "brier": round(float(((onehot - scores) ** 2).sum(1).mean()), 4)}


@pytest.mark.parametrize("method, task, y, p, message", [
    ("logistic", "binary", [1, 1, 1], [.2, .5, .7], "one class only"),
    ("temperature", "binary", [0, 0, 0], [.2, .5, .7], "one class only"),
    ("logistic", "binary", [0, 0, 1, 1], [.1, .2, .6, .9], "separate the classes completely"),
    ("logistic", "binary", [0, 0, 0, 0, 1, 1, 1, 1], [.1, .2, .3, .6, .6, .7, .8, .9],
     r"separate the classes completely \(every positive case at or above every negative one\)"),  # a tie
    ("logistic", "binary", [0, 1, 0, 1], [.4, .4, .4, .4], "every case of the fitting split has the same score"),
    ("temperature", "binary", [0, 0, 1, 1], [.1, .2, .6, .9], "right on every image"),
    ("logistic", "binary", [0, 1, 0, 1, 0, 1], [.9, .3, .7, .2, .4, .6], "fall as the outcome rises"),
    ("temperature", "binary", [0, 1, 0, 1, 0, 1], [.9, .3, .7, .2, .4, .6], "fall as it rises"),
    ("logistic", "multiclass", [0, 1], [[.6, .4], [.3, .7]], "use temperature"),
    ("intercept", "multiclass", [0, 1], [[.6, .4], [.3, .7]], "intercept fits one line per score"),
    ("intercept", "binary", [1, 1, 1], [.2, .5, .7], "one class only"),
    ("platt", "binary", [0, 1], [.2, .8], "'platt' is not a recalibration; use one of logistic, intercept, "
                                          "temperature"),
])
def test_fits_the_data_cannot_support_are_refused_saying_why(method, task, y, p, message):
    with pytest.raises(RecalibrationError, match=message):
        Recalibration.fit(method, task, y, p)


@pytest.mark.parametrize("call, message", [
    (lambda y, p: Recalibration.fit("logistic", "binary", y[:-5], p), "y has 115 cases but the scores 120"),
    (lambda y, p: probability_scores("binary", y[:-1], p), "y has 119 cases but the scores 120"),
    (lambda y, p: Recalibration.fit("logistic", "binary", y, p * 100),
     r"probabilities in \[0, 1\]; rows .* hold values from .* \(percentages\? divide them by 100\)"),
    (lambda y, p: Recalibration.fit("temperature", "binary", y, logit(p) * 300), r"\(logits\? turn them into"),
    (lambda y, p: probability_scores("binary", y, p * 100), "percentages"),
    (lambda y, p: Recalibration.fit("logistic", "binary", y, np.c_[1 - p, p]),
     r"binary scores must be one probability per case, shape \(n,\), got \(120, 2\); give the positive "
     r"class's column \(scores\[:, 1\]\)"),
    (lambda y, p: probability_scores("binnary", y, p), "task is 'binnary'; allowed: binary, multiclass, multilabel"),
    (lambda y, p: Recalibration.fit("logistic", "binary", y * 2, p),
     r"y rows 0, 4, 5, 7, 8 and 53 more are not 0 or 1"),
    (lambda y, p: Recalibration.fit("logistic", "binary", np.where(y == 1, "sick", "well"), p),
     "y must be class numbers, got values such as"),
    (lambda y, p: Recalibration.fit("temperature", "multiclass", y, np.c_[1 - p, p, p]),
     r"rows that sum to 1; rows 0, 1, .* sum to"),
    (lambda y, p: Recalibration.fit("temperature", "multiclass", y + 2, np.c_[1 - p, p]),
     r"are not a class number 0-1"),
    (lambda y, p: Recalibration.fit("logistic", "multilabel", np.c_[y, y], np.c_[p, p, p]),
     r"multilabel y has shape \(120, 2\) but the scores \(120, 3\)"),
    (lambda y, p: Recalibration.fit("logistic", "binary", y, p).apply(p * 100), "percentages"),
    (lambda y, p: Recalibration.fit("logistic", "binary", y, p).apply(np.c_[1 - p, p]), r"got \(120, 2\)"),
    (lambda y, p: Recalibration.fit("logistic", "multilabel", np.c_[y, y], np.c_[p, p ** 2]).apply(p[:, None]),
     r"scores have 1 column\(s\), but the recalibration was fitted on 2"),
    (lambda y, p: Recalibration("temperature", "multiclass", temperature=2.0).apply(
        np.c_[.2 * p, .8 * p, 1 - p][:, :2]), "rows that sum to 1"),
    (lambda y, p: Recalibration.fit("temperature", "multiclass", np.eye(3)[y], np.c_[.5 * p, .5 * p, 1 - p]),
     r"multiclass y must be one class number per case, shape \(n,\), got \(120, 3\); for one-hot rows give "
     r"y.argmax\(axis=1\)"),
    (lambda y, p: Recalibration.fit("logistic", "binary", y, np.where(np.arange(120) == 3, np.nan, p)),
     r"scores of rows 3 are NaN or infinite; fix or drop those predictions"),
    (lambda y, p: Recalibration.fit("temperature", "multiclass", y, np.c_[1 - p, .9 * p, .1 * p]).apply(
        np.c_[p, 1 - p]), r"scores have 2 column\(s\), but the recalibration was fitted on 3"),
], ids=["fit_lengths", "scores_lengths", "percentages", "logits", "scores_percentages", "two_columns",
        "unknown_task", "labels_2", "text_labels", "rows_not_summing_to_1", "class_out_of_range",
        "multilabel_shapes", "apply_percentages", "apply_two_columns", "apply_other_width", "apply_part_of_classes",
        "one_hot_outcomes", "nan_score", "temperature_other_width"])
def test_scores_or_outcomes_that_are_not_what_the_task_takes_are_refused_naming_the_fix(call, message):
    y, p = drawn(120, slope=1.0, intercept=0.0)
    with pytest.raises(RecalibrationError, match=message):
        call(y, p)


def test_a_multilabel_label_that_cannot_be_fitted_keeps_its_scores_and_the_others_are_fitted():
    y = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 1]])
    p = np.array([[.5, .1], [.4, .2], [.3, .8], [.6, .9], [.45, .3], [.55, .7]])  # label 2 separates completely
    fitted = Recalibration.fit("logistic", "multilabel", y, p, labels=["effusion", "mass"])
    alone = Recalibration.fit("logistic", "binary", y[:, 0], p[:, 0])
    assert fitted.slope == [pytest.approx(alone.slope[0]), 1.0] and fitted.intercept[1] == 0.0
    after = fitted.apply(p)
    assert np.allclose(after[:, 1], p[:, 1]) and np.allclose(after[:, 0], alone.apply(p[:, 0]))
    assert list(fitted.unfitted) == ["mass"]
    assert fitted.unfitted["mass"].startswith("label 'mass': the fitting split's scores separate")
    assert "not fitted, scores kept as they were: label 'mass': the fitting split's" in fitted.describe()
    assert Recalibration.from_json(fitted.to_json()) == fitted
    own = Recalibration("temperature", "multilabel", temperature=2.0)  # a run's own, kept under tfmed recalibrate
    assert fitted.after(own).unfitted == fitted.unfitted
    unnamed = Recalibration.fit("intercept", "multilabel", np.array([[0, 1], [1, 1], [0, 1]]), p[:3])
    assert unnamed.unfitted == {"2": "label 2: the fitting split holds one class only, so there is no calibration "
                                     "to learn"} and unnamed.intercept[1] == 0.0


def test_a_multilabel_refusal_names_every_label_when_none_can_be_fitted():
    y = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    p = np.array([[.1, .1], [.8, .2], [.3, .8], [.9, .9]])  # both labels separate completely
    with pytest.raises(RecalibrationError, match="^label 1: the fitting split's scores separate.*; label 2: the"):
        Recalibration.fit("logistic", "multilabel", y, p)
    with pytest.raises(RecalibrationError, match="^label 'effusion': .*; label 'mass': the fitting split's scores"):
        Recalibration.fit("logistic", "multilabel", y, p, labels=["effusion", "mass"])


def test_a_run_whose_scores_cannot_be_recalibrated_keeps_them_and_says_so(capsys):
    configure_logging()
    model = types.SimpleNamespace(task="binary", classes=["normal", "pneumonia"], recalibration=None)
    summary, scores = recalibrate(model, "logistic", "val", {"val": ([0, 0, 1, 1], [.1, .2, .6, .9])})
    assert model.recalibration is None and summary["applied"] is False and scores == {"val": [.1, .2, .6, .9]}
    assert "separate the classes completely" in summary["reason"]
    assert "the scores were not recalibrated (logistic): the fitting split's scores separate" in \
        capsys.readouterr().out
    from tfmed.run.reporting import recalibration_sentences

    assert recalibration_sentences({"recalibration": summary}) == [
        f"The probabilities were not recalibrated (logistic on val): {summary['reason']}."]
    findings = types.SimpleNamespace(task="multilabel", classes=["effusion", "mass"], recalibration=None,
                                     combines_ranks=False)
    y, p = np.array([[0, 0], [1, 0], [0, 1], [1, 1]]), np.array([[.1, .1], [.8, .2], [.3, .8], [.9, .9]])
    summary, _ = recalibrate(findings, "logistic", "val", {"val": (y, p)})
    assert summary["reason"].startswith("label 'effusion': the fitting split's scores separate the classes")
    y, p = np.array([[0, 0], [1, 0], [0, 1], [1, 1]]), np.array([[.5, .1], [.4, .2], [.3, .8], [.6, .9]])
    summary, scores = recalibrate(findings, "logistic", "val", {"val": (y, p)})
    assert summary["applied"] is True and list(summary["fit"]["unfitted"]) == ["mass"]
    assert np.allclose(scores["val"][:, 1], p[:, 1]) and not np.allclose(scores["val"][:, 0], p[:, 0])
    assert "label 'mass' was not recalibrated: the fitting split's scores separate" in capsys.readouterr().out
    assert "not fitted, scores kept as they were: label 'mass'" in recalibration_sentences({"recalibration": summary})[0]


def test_logistic_recalibration_of_multiclass_data_is_refused_before_anything_is_trained():
    config = ExperimentConfig.from_dict({"name": "grades", "evaluation": {"recalibration": "logistic"}})
    frame = pd.DataFrame({"image": ["a", "b", "c"], "label": [0, 1, 2], "split": "train"})
    table = ImageTable(frame, ["g0", "g1", "g2"], "multiclass")
    with pytest.raises(ConfigError, match="grades: evaluation.recalibration: logistic fits one line per score"):
        check_config_fits_data(config, table)
    check_method("temperature", "multiclass")  # the one a multiclass model can have
    with pytest.raises(ConfigError, match="evaluation.recalibration"):
        ExperimentConfig.from_dict({"evaluation": {"recalibration": "platt"}})


# ------------------------------------------------------------------ runs
def _svm_config(source: str, tmp_path: Path, name: str, **evaluation) -> ExperimentConfig:
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.name, config.data.source = name, source
    for key, value in evaluation.items():
        setattr(config.evaluation, key, value)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same SVM run without and with logistic recalibration, and one on another tap (not recalibrated)."""
    tmp_path = tmp_path_factory.mktemp("recalibration")
    source = f"medmnist:{_tiny_medmnist(tmp_path)}"
    raw = run_experiment(_svm_config(source, tmp_path, "raw"))
    recalibrated = run_experiment(_svm_config(source, tmp_path, "recalibrated", recalibration="logistic"))
    late = _svm_config(source, tmp_path, "late")
    late.model.svm.taps = ["late"]
    return {"source": source, "raw": raw, "recalibrated": recalibrated, "late": run_experiment(late)}


def _split(run: Path, split: str) -> pd.DataFrame:
    predictions = pd.read_csv(run / "predictions.csv")
    return predictions[predictions["split"] == split].reset_index(drop=True)


@pytest.mark.slow
def test_a_run_recalibrates_on_val_then_chooses_its_thresholds_and_keeps_every_decision(runs):
    raw, recalibrated = runs["raw"], runs["recalibrated"]
    raw_val, val = _split(raw, "val"), _split(recalibrated, "val")
    expected = Recalibration.fit("logistic", "binary", raw_val["label"], raw_val["score"])
    metrics = load_metrics(recalibrated)
    summary = metrics["recalibration"]
    assert summary["applied"] and summary["fitted_on"] == "val" and summary["fit"]["method"] == "logistic"
    assert summary["fit"]["slope"] == pytest.approx(expected.slope) and \
        summary["fit"]["intercept"] == pytest.approx(expected.intercept)
    for split in ("val", "test"):
        before, after = _split(raw, split), _split(recalibrated, split)
        assert np.allclose(after["score"], expected.apply(before["score"]), atol=1e-6)
        assert (after["decision"] == before["decision"]).all()  # the Youden point moved with the scores
        assert metrics["splits"][split]["youden"]["roc_auc"] == \
            pytest.approx(load_metrics(raw)["splits"][split]["youden"]["roc_auc"])
        assert summary["figures"][split] == {"before": probability_scores("binary", before["label"], before["score"]),
                                             "after": probability_scores("binary", after["label"], after["score"])}
    assert summary["figures"]["val"]["after"]["log_loss"] <= summary["figures"]["val"]["before"]["log_loss"]
    chosen = select_thresholds("binary", val["label"].to_numpy(), val["score"].to_numpy())
    assert metrics["thresholds"] == pytest.approx(chosen)
    assert metrics["thresholds"]["fixed"] == 0.5
    assert "recalibration" not in load_metrics(raw)
    report = (recalibrated / "report.html").read_text()
    assert "Probabilities recalibrated on val (logistic: slope" in report and "val (in-sample) log loss" in report
    assert f"<td>{expected.describe()}</td>" in report  # the model's facts


@pytest.mark.slow
def test_the_saved_model_and_tfmed_evaluate_give_the_recalibrated_scores(runs, tmp_path):
    run = runs["recalibrated"]
    model = TrainedModel.load(run)
    assert model.recalibration is not None and model.recalibration.method == "logistic"
    test = run_split_tables(run, ("test",))["test"]
    assert np.allclose(model.predict(test), _split(run, "test")["score"], atol=1e-6)
    evaluated = evaluate_run(run, output=tmp_path / "evaluated")
    assert load_metrics(evaluated)["splits"]["test"] == load_metrics(run)["splits"]["test"]
    assert f"The scores are recalibrated as in that run ({model.recalibration.describe()})." in \
        (evaluated / "report.html").read_text()


@pytest.mark.slow
def test_a_kfold_run_recalibrates_on_the_pooled_out_of_fold_scores(runs, tmp_path):
    config = _svm_config(runs["source"], tmp_path, "folds", recalibration="temperature")
    config.split.method, config.split.folds = "kfold", 3
    run = run_experiment(config)
    oof = pd.read_csv(run / "oof_predictions.csv")  # the fold models' scores, as they gave them
    labels, raw = oof["label"].astype(int).to_numpy(), oof["oof_score"].astype(float).to_numpy()
    expected = Recalibration.fit("temperature", "binary", labels, raw)
    metrics = load_metrics(run)
    assert metrics["recalibration"]["fitted_on"] == "out_of_fold"
    assert metrics["recalibration"]["fit"]["temperature"] == pytest.approx(expected.temperature)
    assert metrics["thresholds"] == pytest.approx(select_thresholds("binary", labels, expected.apply(raw)))
    # the scores the thresholds were chosen on are in the file too, so they can be reproduced from it
    recalibrated = oof["oof_score_recalibrated"].astype(float).to_numpy()
    assert np.allclose(recalibrated, expected.apply(raw), atol=1e-6)
    assert metrics["thresholds"] == pytest.approx(select_thresholds("binary", labels, recalibrated))
    assert set(metrics["recalibration"]["figures"]) == {"out_of_fold", "test"}
    assert "Probabilities recalibrated on the pooled out-of-fold scores (temperature" in \
        (run / "report.html").read_text()


@pytest.mark.slow
def test_reports_say_where_the_thresholds_of_a_recalibrated_kfold_run_come_from(runs, hospital, tmp_path):
    config = _svm_config(runs["source"], tmp_path, "folds")
    config.split.method, config.split.folds = "kfold", 3
    run = run_experiment(config)
    assert "with the operating points chosen on the pooled out-of-fold scores" in (run / "report.html").read_text()
    chosen = recalibrate_run(run, hospital["fit"], tmp_path / "chosen", "logistic")
    assert "operating points chosen on the val split (the images it was recalibrated on)" in \
        (chosen / "report.html").read_text()
    measured = evaluate_run(chosen, data=hospital["measure"], output=tmp_path / "chosen_measure")
    report = (measured / "report.html").read_text()
    assert "with the operating points chosen on that run&#x27;s val split (the images it was recalibrated on)" in report
    assert "pooled out-of-fold" not in report
    kept = recalibrate_run(run, hospital["fit"], tmp_path / "kept", "logistic", keep_thresholds=True)
    carried = f"the pooled out-of-fold scores of {run} (carried over when recalibrated)"
    for report in (kept / "report.html", evaluate_run(kept, data=hospital["measure"],
                                                      output=tmp_path / "kept_measure") / "report.html"):
        assert f"with the operating points chosen on {carried}" in report.read_text(), report


def test_the_recalibration_benchmark_cross_fits_a_kfold_run_on_its_out_of_fold_scores(runs, tmp_path, monkeypatch):
    """benchmarks/recalibration.py fits what tfmed would fit a k-fold run's recalibration on, not a val split."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import recalibration as benchmark  # the script, which imports heldout.py beside it

    config = _svm_config(runs["source"], tmp_path, "folds_raw")
    config.split.method, config.split.folds = "kfold", 3
    run = run_experiment(config)
    oof = pd.read_csv(run / "oof_predictions.csv")
    labels, raw = oof["label"].astype(int).to_numpy(), oof["oof_score"].astype(float).to_numpy()
    rows = benchmark.study(run, folds=3, repeats=2).set_index(["method", "measured on"])
    assert rows.loc[("none", "out of fold"), "log_loss"] == pytest.approx(log_loss(labels, raw), abs=1e-4)  # 4 places
    assert ("temperature", "out of fold, cross-fitted (3 folds x 2)") in rows.index
    test = pd.read_csv(run / "predictions.csv").query("split == 'test'")
    fitted = Recalibration.fit("temperature", "binary", labels, raw).apply(test["score"].to_numpy())
    assert rows.loc[("temperature", "test (fitted on out of fold)"), "log_loss"] == \
        pytest.approx(log_loss(test["label"].to_numpy(), fitted), abs=1e-4)


def test_the_heldout_benchmark_refuses_altered_val_for_a_recipe_that_trains_on_val():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/heldout.py"), "experiments/retina_mnist.yaml",
                             "--shifted-val"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--shifted-val scores altered copies of val, but retina_mnist trains on val" in result.stderr
    assert "runs under" not in result.stdout  # refused before anything was trained


@pytest.mark.slow
def test_the_heldout_benchmark_scores_altered_val_at_the_threshold_chosen_on_the_unaltered_val(runs, tmp_path,
                                                                                                 monkeypatch):
    """--shifted-val's accuracy on an altered copy is that of the run's own decisions (its val threshold kept)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import heldout

    config = ExperimentConfig.from_yaml(runs["raw"] / "config.yaml")
    figures = heldout.shifted_val_figures(runs["raw"], config, tmp_path)
    assert set(figures) == set(heldout.SHIFTS)
    threshold = load_metrics(runs["raw"])["thresholds"]["youden"]
    blurred = _scores(tmp_path / "val_blur_1px")
    assert ((blurred["score"] >= threshold).astype(int) == blurred["decision"]).all()
    assert figures["blur 1px"]["acc"] == pytest.approx((blurred["decision"] == blurred["label"]).mean())
    assert figures["blur 1px"]["auc"] == pytest.approx(roc_auc_score(blurred["label"], blurred["score"]), abs=1e-3)
    assert len({entry["acc"] for entry in figures.values()}) > 1  # each copy scored on its own images


@pytest.mark.slow
def test_tfmed_ensemble_recalibrates_the_combination_but_refuses_recalibrated_runs(runs, tmp_path, capsys):
    out = tmp_path / "combined"
    assert main(["ensemble", str(runs["raw"]), str(runs["late"]), "--recalibrate", "temperature",
                 "--output", str(out)]) == 0
    mean = {split: (_split(runs["raw"], split)["score"] + _split(runs["late"], split)["score"]) / 2
            for split in ("val", "test")}
    val = _split(runs["raw"], "val")
    expected = Recalibration.fit("temperature", "binary", val["label"], mean["val"])
    metrics = load_metrics(out)
    assert metrics["recalibration"]["fit"]["temperature"] == pytest.approx(expected.temperature)
    assert np.allclose(_split(out, "test")["score"], expected.apply(mean["test"]), atol=1e-6)
    assert ExperimentConfig.from_yaml(out / "config.yaml").evaluation.recalibration == "temperature"
    model = TrainedModel.load(out)  # the saved combination recalibrates as the run did
    assert np.allclose(model.predict(run_split_tables(out, ("test",))["test"]), _split(out, "test")["score"],
                       atol=1e-6)
    capsys.readouterr()
    assert main(["ensemble", str(runs["raw"]), str(runs["recalibrated"]), "--output", str(tmp_path / "x")]) == 2
    assert f"{runs['recalibrated']} recalibrated its probabilities" in capsys.readouterr().err
    with pytest.raises(EnsembleRunsError, match="--recalibrate: 'platt' is not a recalibration"):
        ensemble_runs([runs["raw"], runs["late"]], tmp_path / "z", recalibration="platt")  # the Python API
    with pytest.raises(SystemExit) as stop:
        main(["ensemble", str(runs["raw"]), str(runs["late"]), "--recalibrate", "platt", "--output", str(tmp_path)])
    assert stop.value.code == 2 and "invalid choice: 'platt'" in capsys.readouterr().err


def test_a_label_unknown_in_every_image_has_no_figures_and_the_report_says_n_a():
    from tfmed.run.reporting import recalibration_sentences

    y = np.array([[0, -1], [1, -1], [1, -1]])
    p = np.array([[.2, .5], [.7, .5], [.6, .4]])
    figures = probability_scores("multilabel", y, p)
    assert figures == probability_scores("binary", y[:, 0], p[:, 0])  # the unknown label is left out
    assert probability_scores("multilabel", y[:, 1:], p[:, 1:]) == {"log_loss": None, "brier": None}
    sentence = recalibration_sentences({"recalibration": {
        "method": "temperature", "fitted_on": "val", "applied": True,
        "fit": {"method": "temperature", "task": "multilabel", "temperature": 1.5},
        "figures": {"test": {"before": {"log_loss": None, "brier": None}, "after": {"log_loss": None, "brier": None}}}}})
    assert "temperature 1.500" in sentence[0] and "test log loss n/a to n/a" in sentence[0]
    # a multiclass temperature renormalises each image's probabilities: the report does not promise equal AUCs
    grades = {"task": "multiclass", "recalibration": {
        "method": "temperature", "fitted_on": "val", "applied": True,
        "fit": {"method": "temperature", "task": "multiclass", "temperature": 1.5},
        "figures": {"val": {"before": {"log_loss": 1.2, "brier": 0.6}, "after": {"log_loss": 1.1, "brier": 0.6}}}}}
    words = recalibration_sentences(grades)[0]
    assert "each image keeps its predicted class" in words and "AUCs can differ a little" in words
    assert "AUCs and the decisions" not in words


def test_the_report_and_summary_of_kept_thresholds_say_they_were_kept_not_chosen():
    from tfmed.run.reporting import recalibration_sentences, summary_text

    summary = {"method": "intercept", "fitted_on": "val", "applied": True,
               "fit": {"method": "intercept", "task": "binary", "intercept": [0.4]},
               "figures": {"val": {"before": {"log_loss": 0.3, "brier": 0.1},
                                   "after": {"log_loss": 0.2, "brier": 0.05}}}}
    metrics = {"task": "binary", "threshold_method": "youden", "splits": {}, "counts": {},
               "recalibrated_from": "runs/a/1"}
    chosen, kept = ({**metrics, "recalibration": {**summary, "thresholds": how}} for how in ("chosen", "kept"))
    assert "before the thresholds were chosen" in recalibration_sentences(chosen)[0]
    assert "the thresholds were not chosen on them but carried over from the run" in recalibration_sentences(kept)[0]
    assert "recalibrated and its thresholds chosen on (in-sample figures)" in summary_text(chosen)
    assert summary_text(kept).endswith("val: the images the model of runs/a/1 was recalibrated on, its thresholds "
                                       "kept from that run (in-sample probabilities)")


# ------------------------------------------------------------------ tfmed recalibrate (another hospital)
@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """Another hospital's images: PneumoniaMNIST validation images the tiny runs never saw, darker (gamma 1.5);
    its val split to recalibrate on, its test split to measure on, and a file of one class only."""
    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    images = (255.0 * (data["val_images"][100:340] / 255.0) ** 1.5).astype(np.uint8)
    labels = data["val_labels"][100:340]
    folder = tmp_path_factory.mktemp("hospital")
    np.savez(folder / "site.npz", val_images=images[:120], val_labels=labels[:120],
             test_images=images[120:], test_labels=labels[120:])
    negatives = labels[:, 0] == 0
    np.savez(folder / "normal.npz", val_images=images[negatives][:30], val_labels=labels[negatives][:30])
    return {"fit": f"medmnist:{folder / 'site.npz'}#val", "measure": f"medmnist:{folder / 'site.npz'}#test",
            "one_class": f"medmnist:{folder / 'normal.npz'}#val"}


def _scores(directory: Path) -> pd.DataFrame:
    return pd.read_csv(directory / "predictions.csv")


@pytest.mark.slow
def test_tfmed_recalibrate_fits_another_hospitals_images_into_a_new_run(runs, hospital, tmp_path, capsys):
    raw_fit = _scores(evaluate_run(runs["raw"], data=hospital["fit"], output=tmp_path / "raw_fit"))
    expected = Recalibration.fit("logistic", "binary", raw_fit["label"], raw_fit["score"])
    out = tmp_path / "site"
    assert main(["recalibrate", "--model", str(runs["raw"]), "--data", hospital["fit"], "--method", "logistic",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"val: the images the model of {runs['raw']} was recalibrated" in printed and f"wrote {out}" in printed
    metrics = load_metrics(out)
    assert metrics["recalibration"]["fit"]["slope"] == pytest.approx(expected.slope)
    fitted = _scores(out)
    assert (fitted["split"] == "val").all() and np.allclose(fitted["score"], expected.apply(raw_fit["score"]), atol=1e-6)
    assert metrics["thresholds"] == pytest.approx(select_thresholds("binary", fitted["label"].to_numpy(),
                                                                    fitted["score"].to_numpy()))
    config = ExperimentConfig.from_yaml(out / "config.yaml")
    assert config.evaluation.recalibration == "logistic" and config.data.source == "medmnist"
    assert json.loads((out / "recalibrated_from.json").read_text()) == {
        "run": str(runs["raw"]), "data": hospital["fit"], "method": "logistic", "thresholds": "chosen"}
    assert "every figure here is in-sample" in (out / "report.html").read_text()
    # the model facts say in how many views an image is scored
    assert "<td>test-time views</td><td>1</td>" in (out / "report.html").read_text().replace("\n", "")
    # measured on the hospital's other images: the same ranking (AUC), the recalibrated probabilities
    raw_test = evaluate_run(runs["raw"], data=hospital["measure"], output=tmp_path / "raw_test")
    new_test = evaluate_run(out, data=hospital["measure"], output=tmp_path / "new_test")
    assert np.allclose(_scores(new_test)["score"], expected.apply(_scores(raw_test)["score"]), atol=1e-6)
    assert load_metrics(new_test)["splits"]["test"]["youden"]["roc_auc"] == \
        pytest.approx(load_metrics(raw_test)["splits"]["test"]["youden"]["roc_auc"])
    assert TrainedModel.load(runs["raw"]).recalibration is None  # the original run is left as it was
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out)]) == 2  # its only split is the hospital's images it was fitted on
    assert f"{out} is {runs['raw']} recalibrated on another hospital's images, which are its val split" \
        in capsys.readouterr().err


@pytest.mark.slow
def test_tfmed_recalibrate_leaves_out_and_lists_the_bad_rows_a_data_yaml_lets_it(runs, hospital, tmp_path):
    site = np.load(hospital["fit"].removeprefix("medmnist:").removesuffix("#val"))
    folder_with_a_corrupt_image(tmp_path / "site", site["val_images"], site["val_labels"][:, 0], classes=("0", "1"))
    yaml = tmp_path / "site.yaml"
    yaml.write_text(f"data:\n  source: folder\n  path: {tmp_path / 'site'}\n  exclude_bad_rows: true\n")
    out = recalibrate_run(runs["raw"], str(yaml), tmp_path / "recalibrated", "logistic")
    excluded = pd.read_csv(out / "excluded_rows.csv")
    assert [Path(image).name for image in excluded["image"]] == ["broken.png"]
    assert "broken.png" in (out / "report.html").read_text()
    # fitted on the readable images alone: the same fit as on the same images in the MedMNIST-style file
    from_file = recalibrate_run(runs["raw"], hospital["fit"], tmp_path / "from_file", "logistic", verify=False)
    verified = [json.loads((folder / "environment.json").read_text())["verified"] for folder in (out, from_file)]
    assert verified == [True, False]  # --no-verify is recorded with the new run
    assert load_metrics(out)["recalibration"]["fit"]["slope"] == pytest.approx(
        load_metrics(from_file)["recalibration"]["fit"]["slope"], rel=1e-4)
    assert sum(load_metrics(out)["counts"]["val"].values()) == len(site["val_images"])


@pytest.mark.slow
def test_tfmed_recalibrate_by_default_shifts_the_runs_own_recalibration_to_the_hospitals_prevalence(
        runs, hospital, tmp_path):
    home = _scores(evaluate_run(runs["recalibrated"], data=hospital["fit"], output=tmp_path / "home"))
    out = tmp_path / "shifted"
    assert main(["recalibrate", "--model", str(runs["recalibrated"]), "--data", hospital["fit"],
                 "--output", str(out)]) == 0
    shift = Recalibration.fit("intercept", "binary", home["label"], home["score"]).intercept[0]
    fitted = _scores(out)
    assert np.allclose(fitted["score"], expit(logit(np.clip(home["score"], 1e-6, 1 - 1e-6)) + shift), atol=1e-5)
    assert fitted["score"].sum() == pytest.approx(fitted["label"].sum(), rel=1e-4)  # as many predicted as occur
    own = TrainedModel.load(runs["recalibrated"]).recalibration
    saved = TrainedModel.load(out).recalibration  # the run's line with the hospital's shift: one line
    assert saved.slope == pytest.approx(own.slope) and saved.intercept[0] == pytest.approx(own.intercept[0] + shift)
    assert ExperimentConfig.from_yaml(out / "config.yaml").evaluation.recalibration == "intercept"


@pytest.mark.slow
def test_tfmed_recalibrate_can_keep_the_runs_decisions_and_change_only_its_probabilities(runs, hospital, tmp_path,
                                                                                          capsys):
    out = tmp_path / "kept"
    assert main(["recalibrate", "--model", str(runs["recalibrated"]), "--data", hospital["fit"],
                 "--keep-thresholds", "--output", str(out)]) == 0
    assert f"{runs['recalibrated']} was recalibrated on, its thresholds kept from that run" in capsys.readouterr().out
    report = (out / "report.html").read_text()
    assert "its thresholds carried over from that run" in report and "before the thresholds were chosen" not in report
    assert "the thresholds were not chosen on them but carried over from the run" in report
    assert load_metrics(out)["recalibration"]["thresholds"] == "kept"
    assert json.loads((out / "recalibrated_from.json").read_text())["thresholds"] == "kept"
    home = evaluate_run(runs["recalibrated"], data=hospital["measure"], output=tmp_path / "home")
    kept = evaluate_run(out, data=hospital["measure"], output=tmp_path / "kept_measure")
    assert not np.allclose(_scores(kept)["score"], _scores(home)["score"], atol=1e-3)  # new probabilities
    assert _scores(kept)["decision"].tolist() == _scores(home)["decision"].tolist()  # the same decisions
    home_figures, kept_figures = (load_metrics(d)["splits"]["test"] for d in (home, kept))
    for point in ("youden", "high_sensitivity", "high_specificity"):
        assert kept_figures[point]["sensitivity"] == home_figures[point]["sensitivity"]
        assert kept_figures[point]["specificity"] == home_figures[point]["specificity"]
    assert load_metrics(out)["thresholds"]["fixed"] == 0.5
    # without the option the thresholds are chosen on the hospital's images instead
    chosen = tmp_path / "chosen"
    assert main(["recalibrate", "--model", str(runs["recalibrated"]), "--data", hospital["fit"],
                 "--output", str(chosen)]) == 0
    fitted = _scores(chosen)
    assert load_metrics(chosen)["thresholds"] == pytest.approx(select_thresholds(
        "binary", fitted["label"].to_numpy(), fitted["score"].to_numpy()))
    assert load_metrics(chosen)["thresholds"]["youden"] != pytest.approx(load_metrics(out)["thresholds"]["youden"])


@pytest.mark.slow
def test_keeping_thresholds_is_refused_for_a_multiclass_model(tmp_path):
    from test_coarse_classes import coarse_experiment

    run = run_experiment(coarse_experiment(tmp_path, hierarchy=None))
    with pytest.raises(RecalibrateRunError, match="--keep-thresholds: a multiclass model decides by its most "
                                                  "probable class"):
        recalibrate_run(run, "medmnist:not_read.npz#val", tmp_path / "out", "temperature",  # refused first
                        keep_thresholds=True)
    assert not (tmp_path / "out").exists()
    # without it: the description says how the recalibrated model decides, not that thresholds were chosen
    source = ExperimentConfig.from_run(run).data.source
    out = recalibrate_run(run, f"{source}#val", tmp_path / "out", "temperature")
    description = ExperimentConfig.from_yaml(out / "config.yaml").description
    assert "each image's class its most probable one (a multi-class model has no thresholds)" in description
    assert "thresholds chosen on them" not in description and load_metrics(out)["thresholds"] == {}


@pytest.mark.slow
def test_tfmed_recalibrate_replaces_a_runs_own_recalibration_and_refuses_what_cannot_be_fitted(
        runs, hospital, tmp_path, capsys):
    configure_logging()
    out = tmp_path / "again"
    assert main(["recalibrate", "--model", str(runs["recalibrated"]), "--data", hospital["fit"],
                 "--method", "temperature", "--output", str(out)]) == 0
    assert "the run's own recalibration (logistic: slope" in capsys.readouterr().out
    raw_fit = _scores(evaluate_run(runs["raw"], data=hospital["fit"], output=tmp_path / "raw_fit"))
    # the same network as the raw run, so the fit starts from the same scores
    assert load_metrics(out)["recalibration"]["fit"]["temperature"] == pytest.approx(
        Recalibration.fit("temperature", "binary", raw_fit["label"], raw_fit["score"]).temperature)
    # "before" is the run's model as it was (its own recalibration included), not its network's raw scores
    shipped = _scores(evaluate_run(runs["recalibrated"], data=hospital["fit"], output=tmp_path / "shipped"))
    assert load_metrics(out)["recalibration"]["figures"]["val"]["before"] == probability_scores(
        "binary", shipped["label"], shipped["score"])
    assert main(["recalibrate", "--model", str(runs["raw"]), "--data", hospital["one_class"],
                 "--output", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert f"{hospital['one_class']}: the fitting split holds one class only" in error and "give more" in error
    assert not (tmp_path / "x").exists()
    assert main(["recalibrate", "--model", str(runs["raw"]), "--data", hospital["fit"], "--output", str(out)]) == 2
    refused = capsys.readouterr()  # before anything is scored or fitted
    assert "already exists and is not empty; runs never overwrite each other" in refused.err and refused.out == ""
    with pytest.raises(RecalibrateRunError, match="--method: 'platt' is not a recalibration"):
        recalibrate_run(runs["raw"], hospital["fit"], tmp_path / "y", "platt")  # the Python API
    assert not (tmp_path / "y").exists()


@pytest.mark.slow
def test_tfmed_recalibrate_takes_the_subgroups_of_data_that_lack_the_runs_attributes(runs, hospital, tmp_path,
                                                                                       capsys):
    import shutil

    import yaml

    from tfmed.run.manifest import write_manifest

    run = shutil.copytree(runs["raw"], tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["evaluation"]["subgroups"] = ["site", "sex", "age"]  # an experiment audited by sex and age
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_manifest(run)
    out = tmp_path / "site_b"
    for verb in ("recalibrate", "evaluate"):  # the hospital's file records neither
        assert main([verb, "--model", str(run), "--data", hospital["fit"], "--output", str(out)]) == 2
        error = capsys.readouterr().err
        assert (f"{hospital['fit']}: evaluation.subgroups of the run's config.yaml names sex and age, but no image"
                in error), verb
        assert error.rstrip().endswith("For these data, give the attributes they record with --subgroups site."), verb
        assert not out.exists()
    assert main(["recalibrate", "--model", str(run), "--data", hospital["fit"], "--output", str(out),
                 "--subgroups", "site"]) == 0
    assert ExperimentConfig.from_yaml(out / "config.yaml").evaluation.subgroups == ["site"]  # the new run keeps it
    assert main(["recalibrate", "--model", str(run), "--data", hospital["fit"], "--output", str(tmp_path / "x"),
                 "--subgroups", "site,race"]) == 2
    assert "--subgroups is ['site', 'race']; allowed: site, view, sex, age" in capsys.readouterr().err
    assert main(["recalibrate", "--model", str(run), "--data", hospital["fit"], "--output", str(tmp_path / "y"),
                 "--subgroups", "sex"]) == 2
    assert f"{hospital['fit']}: --subgroups names sex, but no image" in capsys.readouterr().err


def test_a_rank_ensemble_is_recalibrated_only_where_every_label_can_be():
    """A label whose fit is refused keeps its scores: of a rank ensemble they are mean ranks, which beside the
    other labels' probabilities would get a Brier score and decision curve; so none is recalibrated."""
    rng = np.random.default_rng(0)
    y = np.c_[rng.integers(0, 2, 40), np.repeat([0, 1], 20)]
    scores = np.c_[np.clip(0.3 * y[:, 0] + rng.uniform(0, 0.7, 40), 0, 1), np.linspace(0.05, 0.95, 40)]  # b separates
    for ranks, applied in ((True, False), (False, True)):
        model = types.SimpleNamespace(task="multilabel", classes=["a", "b"], recalibration=None, combines_ranks=ranks)
        summary, after = recalibrate(model, "logistic", "val", {"val": (y, scores)})
        assert summary["applied"] is applied and (model.recalibration is None) is not applied
        if ranks:
            assert summary["reason"].startswith("a rank ensemble's mean ranks become probabilities only where every "
                                                "label is recalibrated, and label 'b': ")
            assert after["val"] is scores
        else:
            assert list(model.recalibration.unfitted) == ["b"] and not np.allclose(after["val"][:, 0], scores[:, 0])


@pytest.mark.parametrize("evaluation, refused", [
    ({"threshold": "sensitivity"}, "threshold"), ({"target_specificity": 0.9}, "target_specificity"),
    ({"threshold": "sensitivity", "hierarchy": {"a": ["g0"], "b": ["g1", "g2"]}}, None),  # two coarse classes
    ({"target_sensitivity": 0.9, "hierarchy": {"a": ["g0"], "b": ["g1"], "c": ["g2"]}}, "target_sensitivity")])
def test_threshold_settings_of_multiclass_data_are_refused_without_two_coarse_classes(evaluation, refused):
    config = ExperimentConfig.from_dict({"name": "grades", "evaluation": evaluation})
    frame = pd.DataFrame({"image": ["a", "b", "c"], "label": [0, 1, 2], "split": "train"})
    table = ImageTable(frame, ["g0", "g1", "g2"], "multiclass")
    if refused is None:  # past the evaluation checks, to the SVM's, which three images cannot pass
        with pytest.raises(ConfigError, match="grades: model.svm.cv"):
            check_config_fits_data(config, table)
        return
    with pytest.raises(ConfigError, match=rf"grades: evaluation.{refused} is set, but multiclass data is answered "
                                          "by the most probable class"):
        check_config_fits_data(config, table)
    with pytest.raises(ConfigError, match="grades: model.svm.cv"):  # a run begun before the refusal resumes
        check_config_fits_data(config, table, new_run=False)


@pytest.mark.slow
def test_tfmed_recalibrate_says_what_to_do_when_no_threshold_can_be_chosen(runs, hospital, tmp_path, monkeypatch):
    import tfmed.run.recalibrate_run as module

    def no_threshold(*args, **kwargs):
        raise EvaluationError("label 'nodule': cannot choose a threshold: the labels hold only negative (0) cases")
    monkeypatch.setattr(module, "select_thresholds", no_threshold)
    with pytest.raises(RecalibrateRunError, match=r"thresholds cannot be chosen on these images \(label 'nodule': "
                                                  r".*keep the run's thresholds with --keep-thresholds"):
        recalibrate_run(runs["raw"], hospital["fit"], tmp_path / "none", "logistic")
    assert not (tmp_path / "none").exists()


def test_a_recalibrated_run_goes_beside_its_run_whatever_folder_the_command_runs_in(runs, hospital, tmp_path,
                                                                                   monkeypatch):
    import json

    from tfmed.run.rundir import runs_folder_of

    monkeypatch.chdir(tmp_path)  # not the folder the run was made in
    out = recalibrate_run(runs["raw"], hospital["fit"], method="logistic")
    assert out.parent == runs["raw"].parent.parent / "raw_recalibrated" and not (tmp_path / "runs").exists()
    assert ExperimentConfig.from_run(out).runs_dir == ExperimentConfig.from_run(runs["raw"]).runs_dir
    made_in = tmp_path / "project"
    made_in.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "environment.json").write_text(json.dumps({"cwd": str(made_in)}))
    assert runs_folder_of(tmp_path / "run", "runs") == made_in / "runs"  # a relative runs_dir, read from there


NEARLY_SEPARATED = (np.r_[np.zeros(12), np.ones(12)], np.r_[np.linspace(0.05, 0.50, 12), np.linspace(0.49, 0.97, 12)])


@pytest.mark.parametrize("method, message", [
    ("logistic", r"the fitted line is so steep \(slope 17.4\) that it rounds 1 distinct score\(s\) of the fitting "
                 r"split together \(at probability 0 or 1 in floating point\)"),
    ("temperature", r"the fitted temperature is so low \(0.060\) that it rounds 1 distinct score")])
def test_a_fit_that_would_round_distinct_scores_together_is_refused(method, message):
    """One overlap between the classes: the best line is so steep that 0.93 and 0.97 both become exactly 1.0."""
    y, p = NEARLY_SEPARATED
    assert expit(17.4 * logit(0.93)) == expit(17.4 * logit(0.97)) == 1.0  # what the check guards against
    with pytest.raises(RecalibrationError, match=message):
        Recalibration.fit(method, "binary", y, p)
    # a label of a multilabel model that nearly separates keeps its scores, the other is fitted
    y2, p2 = drawn(24, slope=1.0, intercept=0.0)
    fitted = Recalibration.fit("logistic", "multilabel", np.c_[y, y2], np.c_[p, p2], labels=["effusion", "mass"])
    assert fitted.unfitted is not None and list(fitted.unfitted) == ["effusion"] and fitted.slope[0] == 1.0
    after = fitted.apply(np.c_[p, p2])
    assert all(len(np.unique(after[:, k])) == len(np.unique(np.c_[p, p2][:, k])) for k in range(2))


def test_thresholds_are_not_carried_where_the_new_probabilities_round_together():
    """A steep line takes a threshold of 0.954 within 1e-6 of 1, where images below it would tie with it."""
    home = Recalibration("logistic", "binary", slope=[1.127], intercept=[0.365])
    steep = Recalibration("logistic", "binary", slope=[43.07], intercept=[-24.71])
    with pytest.raises(RecalibrationError, match=r"moves the high_specificity threshold 0.9543 to 1.0000000000, "
                                                 r"within 1e-06 of 0 or 1, where distinct scores round together"):
        carried_thresholds({"high_specificity": 0.9543, "youden": 0.6734, "fixed": 0.5}, home, steep)
    carried = carried_thresholds({"youden": 0.6734, "fixed": 0.5}, home, steep)  # 0.6734 stays clear of 1
    raw = np.linspace(0.4, 0.75, 50)
    assert np.array_equal(steep.apply(raw) >= carried["youden"], home.apply(raw) >= 0.6734)


@pytest.mark.slow
def test_tfmed_recalibrate_refuses_to_keep_thresholds_a_steep_fit_cannot_keep(runs, hospital, tmp_path, monkeypatch):
    import tfmed.run.recalibrate_run as module

    steep = Recalibration("logistic", "binary", slope=[60.0], intercept=[0.0])

    def steep_fit(model, method, split, scored):  # as a hospital's nearly separated images could give
        model.recalibration = steep
        return {"applied": True, "figures": {"val": {}}}, {"val": steep.apply(scored["val"][1])}
    monkeypatch.setattr(module, "recalibrate", steep_fit)
    with pytest.raises(RecalibrateRunError, match=r"--keep-thresholds: the recalibration \(logistic: slope 60.000, "
                                                  r".*could not keep the decisions they had; choose thresholds on "
                                                  r".* instead \(leave the option out\), or fit --method intercept"):
        recalibrate_run(runs["raw"], hospital["fit"], tmp_path / "kept", "logistic", keep_thresholds=True)
    assert not (tmp_path / "kept").exists()
