"""A class hierarchy in any mode (evaluation.hierarchy): trained on fine classes, answering for coarse ones whose
probabilities are the sums of their fine classes' (Esteva et al. 2017), with coarse thresholds chosen on
validation (or the pooled out-of-fold scores) and kept with the model."""
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from test_experiment import _three_class_npz
from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, ExperimentConfig
from tfmed.evaluation.hierarchy import Hierarchy
from tfmed.evaluation.thresholds import select_thresholds
from tfmed.run.cli import main
from tfmed.run.ensemble_runs import EnsembleRunsError, ensemble_runs
from tfmed.run.evaluate import evaluate_run, load_metrics
from tfmed.run.experiment import coarse_metrics, run_experiment
from tfmed.run.predict import predict_images

FINE = ["healthy", "sick_non_tb", "tuberculosis"]
HIERARCHY = {"well": ["healthy"], "sick": ["sick_non_tb", "tuberculosis"]}


def coarse_experiment(tmp_path, name="coarse", hierarchy=HIERARCHY, split=None):
    data = _three_class_npz(tmp_path, per_class=24, mean=100, noise=40, stripe=50, seed=3)  # classes overlap
    config = tiny_svm_experiment(name, tmp_path, {"source": f"medmnist:{data}",
                                                  "classes": FINE}, split or {"method": "predefined"})
    config.evaluation.hierarchy = hierarchy
    return config


def summed(frame):
    return frame["score:sick_non_tb"] + frame["score:tuberculosis"]


@pytest.mark.slow
def test_an_svm_run_answers_for_the_coarse_classes_at_thresholds_chosen_on_validation(tmp_path):
    run = run_experiment(coarse_experiment(tmp_path))
    metrics = load_metrics(run)
    coarse = metrics["coarse"]
    assert coarse["classes"] == ["well", "sick"] and coarse["task"] == "binary"
    predictions = pd.read_csv(run / "predictions.csv")
    np.testing.assert_allclose(predictions["coarse_score"], summed(predictions), atol=2e-6)
    val, test = (predictions[predictions["split"] == name] for name in ("val", "test"))
    # the coarse thresholds come from validation's coarse scores alone, and are kept with the model
    chosen = select_thresholds("binary", (val["label"] != 0).astype(int), summed(val))
    assert coarse["thresholds"] == pytest.approx(chosen)
    saved = json.loads((run / "model" / "tfmed_model.json").read_text())
    assert saved["hierarchy"] == HIERARCHY and saved["coarse_thresholds"] == pytest.approx(chosen)
    figures = coarse["splits"]["test"]["youden"]
    y_test = (test["label"] != 0).astype(int)
    assert figures["roc_auc"] == pytest.approx(roc_auc_score(y_test, summed(test)))
    assert 0.5 < figures["roc_auc"] < 1.0  # overlapping classes: a test that a constant could not pass
    decided = summed(test) >= chosen["youden"]
    assert (test["coarse_decision"] == np.where(decided, "sick", "well")).all()
    assert figures["sensitivity"] == pytest.approx(decided[y_test == 1].mean())
    html = (run / "report.html").read_text()
    assert "sick against well AUC" in html and "alt='roc_coarse'" in html
    assert (run / "roc_coarse_test.png").stat().st_size > 1000
    assert "alt='decision_coarse'" in html and "alt='reliability_coarse'" in html
    assert "Decision curve of the coarse answer (test)" in html
    # scoring the run again, and predicting images, give the same coarse answers
    again = load_metrics(evaluate_run(run, output=tmp_path / "again"))
    assert again["coarse"]["splits"]["test"] == coarse["splits"]["test"]
    for k, image in enumerate(np.load(tmp_path / "three.npz")["test_images"][::10]):
        cv2.imwrite(str(tmp_path / f"scan{k}.png"), image)
    predicted = predict_images(run, [str(tmp_path / f"scan{k}.png") for k in range(4)])
    np.testing.assert_allclose(predicted["coarse_score"], summed(predicted), atol=1e-6)
    assert set(predicted["coarse_decision"]) <= {"well", "sick"}
    # a threshold is one of validation's coarse scores: written rounded, that score could fall below it
    from tfmed.run.artifact import TrainedModel

    model = TrainedModel.load(run / "model")
    fine = np.array([[0.19999998, 0.30000041, 0.49999961]])  # sick: 0.80000002, 0.8 when rounded to 6 places
    model.coarse_thresholds = {**model.coarse_thresholds, model.threshold_method: float(fine[0, 1:].sum())}
    columns = model.coarse_columns(fine)
    assert columns["coarse_decision"] == ["sick"] and columns["coarse_score"][0] >= fine[0, 1:].sum()


@pytest.mark.slow
def test_a_kfold_run_chooses_the_coarse_thresholds_on_the_pooled_out_of_fold_scores(tmp_path):
    run = run_experiment(coarse_experiment(tmp_path, split={"method": "kfold", "folds": 2}))
    coarse = load_metrics(run)["coarse"]
    oof = pd.read_csv(run / "oof_predictions.csv")
    scores = np.array([json.loads(text) for text in oof["oof_score"]])
    y = (oof["label"].astype(int) != 0).astype(int)
    chosen = select_thresholds("binary", y, scores[:, 1] + scores[:, 2])
    assert coarse["thresholds"] == pytest.approx(chosen)
    assert coarse["out_of_fold"]["youden"]["roc_auc"] == pytest.approx(roc_auc_score(y, scores[:, 1] + scores[:, 2]))
    assert set(coarse["splits"]) == {"test"}
    assert "pooled out-of-fold: sick against well AUC" in (run / "report.html").read_text()


def test_three_coarse_classes_are_scored_by_argmax_and_macro_auc():
    mapping = {"a": ["w"], "b": ["x", "y"], "c": ["z"]}
    model = SimpleNamespace(hierarchy=mapping, class_hierarchy=Hierarchy(mapping), classes=["w", "x", "y", "z"],
                            coarse_thresholds={})
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    fine = rng.dirichlet(np.ones(4), 40) + np.eye(4)[labels]
    fine /= fine.sum(axis=1, keepdims=True)
    table = SimpleNamespace(labels=lambda: labels)
    result = coarse_metrics(model, {"test": table}, {"test": fine}, ExperimentConfig().evaluation)
    figures = result["splits"]["test"]
    coarse = np.stack([fine[:, 0], fine[:, 1] + fine[:, 2], fine[:, 3]], axis=1)
    y = np.array([0, 1, 1, 2])[labels]
    assert result["task"] == "multiclass" and result["classes"] == ["a", "b", "c"]
    assert figures["accuracy"] == pytest.approx((coarse.argmax(axis=1) == y).mean())
    assert figures["macro_auc"] == pytest.approx(np.mean([roc_auc_score(y == k, coarse[:, k]) for k in range(3)]))


def test_validate_counts_the_images_of_each_coarse_class(tmp_path, capsys):
    coarse_experiment(tmp_path).to_yaml(tmp_path / "coarse.yaml")
    assert main(["validate", str(tmp_path / "coarse.yaml")]) == 0
    # 24 + 12 + 12 images of each of the three classes
    assert "coarse classes: well 48 (healthy), sick 96 (sick_non_tb + tuberculosis)" in capsys.readouterr().out


def test_hierarchy_settings_are_checked_before_any_run(tmp_path):
    # where an earlier tfmed kept it: read as evaluation.hierarchy, so that older experiments and runs still load
    moved = ExperimentConfig.from_dict({"model": {"mode": "finetune", "finetune": {"hierarchy": HIERARCHY}}})
    assert moved.evaluation.hierarchy == HIERARCHY
    snapshot = ExperimentConfig().to_dict()  # a run's config.yaml lists every setting, then with a null hierarchy
    snapshot["model"]["finetune"]["hierarchy"] = None
    snapshot["model"]["mode"] = "ensemble"
    snapshot["model"]["ensemble"]["members"] = [{"name": "ft", "mode": "finetune", "finetune": {"hierarchy": None}},
                                                {"name": "svm", "mode": "svm"}]
    assert ExperimentConfig.from_dict(snapshot).evaluation.hierarchy is None
    with pytest.raises(ConfigError, match="model.finetune.hierarchy and evaluation.hierarchy differ"):
        ExperimentConfig.from_dict({"model": {"finetune": {"hierarchy": HIERARCHY}},
                                    "evaluation": {"hierarchy": {"a": ["x"], "b": ["y"]}}})
    with pytest.raises(ConfigError, match="evaluation.hierarchy is .*; name at least two coarse classes"):
        ExperimentConfig.from_dict({"evaluation": {"hierarchy": {"all": FINE}}})
    config = coarse_experiment(tmp_path, hierarchy={"well": ["healthy"], "sick": ["tuberculosis"]})
    with pytest.raises(ConfigError, match="evaluation.hierarchy: model class 'sick_non_tb' is not in the hierarchy"):
        run_experiment(config)
    config = tiny_svm_experiment("binary", tmp_path, {"source": "pneumonia_mnist"}, {"method": "predefined"})
    config.evaluation.hierarchy = {"well": ["normal"], "sick": ["pneumonia"]}
    with pytest.raises(ConfigError, match="evaluation.hierarchy sums the probabilities of fine classes into coarse "
                                          "ones and needs multiclass data, but the data is binary"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()  # stopped before any run directory was made


@pytest.mark.slow
def test_saved_runs_combine_only_with_the_same_hierarchy(tmp_path):
    first = run_experiment(coarse_experiment(tmp_path, "first"))
    second_config = coarse_experiment(tmp_path, "second")
    second_config.model.svm.taps = ["middle"]
    second = run_experiment(second_config)
    combined = load_metrics(ensemble_runs([first, second], output=tmp_path / "combined"))
    predictions = pd.read_csv(tmp_path / "combined" / "predictions.csv")
    val = predictions[predictions["split"] == "val"]
    assert combined["coarse"]["thresholds"] == pytest.approx(
        select_thresholds("binary", (val["label"] != 0).astype(int), summed(val)))
    plain_config = coarse_experiment(tmp_path, "plain", hierarchy=None)
    plain = run_experiment(plain_config)
    with pytest.raises(EnsembleRunsError, match="group their classes differently"):
        ensemble_runs([first, plain], output=tmp_path / "mixed")
