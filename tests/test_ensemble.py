"""Ensembles: combination rules, ensemble mode end to end, k-fold bagging, ``tfmed ensemble``."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.linear_model import LogisticRegression

from tfmed.config import ConfigError, ExperimentConfig
from tfmed.evaluation.comparison import compare_to_members, comparison_sentences, paired_tests
from tfmed.evaluation.intervals import PERMUTATION_TEST, EvaluationError, macro_auc_test
from tfmed.evaluation.thresholds import select_thresholds
from tfmed.modes import Ensemble
from tfmed.modes.combine import ScoreCombiner
from tfmed.run.artifact import TrainedModel
from tfmed.run.cli import main
from tfmed.run.evaluate import evaluate_run, load_metrics
from tfmed.run.experiment import run_experiment

from test_experiment import _small, _three_class_npz, _tiny_medmnist
from test_finetune import tiny_backbone

ROOT = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ combination rules
def test_mean_is_the_average_of_member_probabilities():
    a, b = RNG.uniform(size=20), RNG.uniform(size=20)
    assert np.allclose(ScoreCombiner("mean", "binary").combine([a, b]), (a + b) / 2)
    p, q = RNG.dirichlet([1, 1, 1], 5), RNG.dirichlet([1, 1, 1], 5)
    assert np.allclose(ScoreCombiner("mean", "multiclass").combine([p, q]), (p + q) / 2)


def test_rank_averages_quantiles_among_each_members_reference_scores():
    ref_a, ref_b = np.array([0.1, 0.2, 0.3, 0.4]), np.array([10.0, 20.0, 30.0, 40.0])
    combiner = ScoreCombiner("rank", "binary").fit([ref_a, ref_b], np.array([0, 0, 1, 1]))
    # 0.25 lies above 2 of 4 reference scores (quantile 0.5); 40 ties the top one (quantile 0.875)
    out = combiner.combine([np.array([0.25, 0.05]), np.array([40.0, 5.0])])
    assert out.tolist() == pytest.approx([(0.5 + 0.875) / 2, 0.0])
    # a member on another scale counts as much as one on the probability scale
    assert ScoreCombiner("rank", "binary").fit([ref_a, ref_b * 100], [0, 0, 1, 1]).combine(
        [np.array([0.25]), np.array([4000.0])]).tolist() == pytest.approx(out[:1].tolist())


def test_rank_is_refused_for_multiclass():
    with pytest.raises(ConfigError, match="binary and multilabel"):
        ScoreCombiner("rank", "multiclass")


def test_stacking_is_a_logistic_regression_on_member_logits():
    y = RNG.integers(0, 2, 60)
    a = np.clip(y * 0.6 + RNG.uniform(0, 0.4, 60), 0.01, 0.99)
    b = np.clip(RNG.uniform(size=60), 0.01, 0.99)
    combiner = ScoreCombiner("stacking", "binary").fit([a, b], y)
    logits = np.column_stack([np.log(a / (1 - a)), np.log(b / (1 - b))])
    expected = LogisticRegression(C=1.0, max_iter=1000).fit(logits, y).predict_proba(logits)[:, 1]
    assert np.allclose(combiner.combine([a, b]), expected, atol=1e-6)
    assert abs(combiner.coef_[0, 0]) > abs(combiner.coef_[0, 1])  # the informative member weighs more


def test_fitted_combiners_round_trip_through_plain_json():
    y = RNG.integers(0, 2, 30)
    members = [RNG.uniform(0.05, 0.95, 30), RNG.uniform(0.05, 0.95, 30)]
    for rule in ("rank", "stacking"):
        combiner = ScoreCombiner(rule, "binary").fit(members, y)
        again = ScoreCombiner.from_state(json.loads(json.dumps(combiner.state())))
        assert np.array_equal(again.combine(members), combiner.combine(members))


def test_unfitted_rank_or_stacking_says_what_to_do():
    with pytest.raises(ConfigError, match="not fitted"):
        ScoreCombiner("stacking", "binary").combine([np.ones(3), np.ones(3)])


def test_comparison_reports_member_auc_and_paired_delong_p():
    y = np.array([0, 1] * 30)
    strong = y * 0.5 + RNG.uniform(0, 0.6, 60)
    weak = RNG.uniform(size=60)
    result = compare_to_members("binary", y, strong, {"weak": weak, "same": strong})
    assert result["same"]["difference"] == 0.0 and result["same"]["p_value"] == 1.0
    assert result["weak"]["difference"] > 0.2 and result["weak"]["p_value"] < 0.01


def test_multiclass_comparison_has_a_paired_macro_auc_test():
    y = np.repeat([0, 1, 2], 40)
    strong = np.eye(3)[y] * 0.5 + RNG.uniform(0, 0.6, (120, 3))
    strong /= strong.sum(axis=1, keepdims=True)
    weak = RNG.dirichlet(np.ones(3), 120)
    result = compare_to_members("multiclass", y, strong, {"weak": weak, "same": strong.copy()})
    expected = macro_auc_test(y, strong, weak)
    assert result["weak"] == {"macro_auc": round(expected["auc_b"], 3),
                              "ensemble_macro_auc": round(expected["auc_a"], 3),
                              "difference": round(expected["diff"], 3), "p_value": round(expected["p_value"], 4),
                              "test": "delong"}
    assert result["weak"]["p_value"] < 0.01 and result["same"]["p_value"] == 1.0
    sentences = comparison_sentences(result, "test")
    assert "paired test of macro AUCs p = 1.0000" in sentences[1]
    one_class = compare_to_members("multiclass", np.zeros(5, int), strong[:5], {"weak": weak[:5]})
    assert one_class["weak"]["p_value"] is None
    assert comparison_sentences(one_class, "val") == ["val: member weak: no macro AUC (one class only)."]


def test_multilabel_comparison_tests_each_label_and_the_macro_auc():
    Y = RNG.integers(0, 2, (80, 2))
    strong = Y * 0.6 + RNG.uniform(0, 0.5, (80, 2))
    weak = RNG.uniform(size=(80, 2))
    entry = compare_to_members("multilabel", Y, strong, {"weak": weak})["weak"]
    assert len(entry["p_value"]) == 2 and all(p < 0.01 for p in entry["p_value"])
    expected = macro_auc_test(Y, strong, weak)
    assert entry["macro"]["p_value"] == round(expected["p_value"], 4) and entry["macro"]["difference"] > 0.3
    sentence = comparison_sentences({"weak": entry}, "test")[0]
    assert sentence.startswith("test: member weak vs ensemble AUC per label:")
    assert "(paired DeLong p unless a label says permutation" in sentence and ", permutation)" not in sentence
    assert f"ensemble macro AUC {entry['macro']['ensemble_macro_auc']:.3f}" in sentence
    # a label whose DeLong variance is 0 (AUC 1 against AUC 0) takes the permutation test
    separated = np.c_[Y[:, :1] * 0.6 + RNG.uniform(0, 0.3, (80, 1)), strong[:, 1:]]
    also = np.c_[1 - separated[:, :1], weak[:, 1:]]   # label 0 ranked backwards: AUC 1 against 0
    entry = compare_to_members("multilabel", Y, separated, {"also": also})["also"]
    assert entry["test"][0] == PERMUTATION_TEST and entry["test"][1] != PERMUTATION_TEST
    assert ", permutation)" in comparison_sentences({"also": entry}, "test")[0].split(";")[0]


def test_a_comparison_of_bad_scores_is_refused_not_reported_as_one_class():
    """Only a split of one class has no AUC; scores of another length, NaN scores or a misspelt task are
    faults of the input and say so."""
    y = np.array([0, 1] * 5)
    scores = np.linspace(0.05, 0.95, 10)
    with pytest.raises(EvaluationError):
        paired_tests("binary", y, scores, scores[:9])
    with pytest.raises(EvaluationError, match="NaN"):
        compare_to_members("binary", y, scores, {"m": np.full(10, np.nan)})
    with pytest.raises(EvaluationError, match="task is 'multi-class'; allowed: binary, multiclass, multilabel"):
        paired_tests("multi-class", y % 3, np.c_[scores, scores, scores], np.c_[scores, scores, scores])
    assert paired_tests("binary", np.zeros(10, int), scores, scores) == {"auc": None}
    unknown_or_absent = np.c_[np.zeros(10, int), np.full(10, -1)]  # each label known absent or unknown
    assert paired_tests("multilabel", unknown_or_absent, np.c_[scores, scores], np.c_[scores, scores]) == {
        "macro": None, 0: None, 1: None}


# ------------------------------------------------------------------ configuration
def _ensemble_dict(source: str, tmp_path: Path, combine: str = "mean", **extra) -> dict:
    ensemble = {"combine": combine, "members": [
        {"name": "middle", "mode": "svm", "svm": {"taps": ["middle"], "C": [1.0], "cv": 3}},
        {"name": "late48", "mode": "svm", "svm": {"taps": ["late"], "C": [1.0], "cv": 3},
         "preprocess": {"image_size": 48}}]}
    if combine != "mean":
        ensemble["folds"] = 3
    return {"name": f"ens_{combine}", "data": {"source": source}, "preprocess": {"image_size": 32},
            "runs_dir": str(tmp_path / "runs"), "model": {"mode": "ensemble", "ensemble": ensemble}, **extra}


@pytest.mark.parametrize("change, message", [
    ({"members": [{"mode": "svm"}]}, "at least 2"),
    ({"members": [{"name": "a", "mode": "svm"}, {"name": "a", "mode": "svm"}]}, "distinct name"),
    ({"members": [{"mode": "svm", "finetune": {"dropout": 0.5}}, {"mode": "finetune"}]},
     r"model.ensemble.members\[0\].finetune.dropout is set, but model.ensemble.members\[0\].mode 'svm'"),
    ({"members": [{"mode": "svm"}, {"mode": "finetune"}], "folds": 3}, "only combine: rank and stacking"),
    ({"members": [{"mode": "svm"}, {"mode": "finetune"}], "combine": "vote"}, "allowed: mean, rank, stacking"),
])
def test_bad_ensemble_settings_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": change}})


def test_a_fixed_threshold_on_mean_ranks_is_refused_for_a_new_run_only_and_taken_once_they_are_probabilities():
    from tfmed.data.table import ImageTable
    from tfmed.run.experiment import check_config_fits_data

    members = [{"mode": "svm"}, {"mode": "svm", "svm": {"taps": ["late"]}}]
    table = ImageTable(pd.DataFrame({"image": [f"{i}.png" for i in range(40)], "label": [0, 1] * 20,
                                     "patient_id": [f"p{i}" for i in range(40)],
                                     "split": ["train"] * 30 + ["val"] * 10}), ["normal", "tb"], "binary")
    for combine, recalibration, refused in (("rank", "none", True), ("rank", "logistic", False),
                                            ("mean", "none", False)):
        config = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {
            "members": members, "combine": combine, **({"folds": 3} if combine == "rank" else {})}},
            "evaluation": {"threshold": "fixed", "recalibration": recalibration}})  # read, as a run's config is
        if refused:
            with pytest.raises(ConfigError, match=r"evaluation.threshold is 'fixed' \(decide at 0.5\), but "
                                                  r"model.ensemble.combine 'rank' gives mean ranks"):
                check_config_fits_data(config, table)
            check_config_fits_data(config, table, new_run=False)  # a run made before the refusal resumes
        else:
            check_config_fits_data(config, table)


def test_experiment_sections_no_member_reads_are_rejected():
    members = [{"name": "a", "mode": "svm"}, {"name": "b", "mode": "svm"}]
    with pytest.raises(ConfigError, match="no ensemble member uses the experiment's augment"):
        ExperimentConfig.from_dict({"augment": {"hflip": True},
                                    "model": {"mode": "ensemble", "ensemble": {"members": members}}})


def test_members_inherit_what_they_leave_out():
    config = ExperimentConfig.from_dict({"preprocess": {"image_size": 64}, "augment": {"brightness": 0.1},
                                         "model": {"mode": "ensemble", "backbone": "efficientnet_lite1",
                                                   "ensemble": {"members": [
                                                       {"mode": "svm"},
                                                       {"mode": "finetune", "preprocess": {"image_size": 96}}]}}})
    svm, tune = config.member_experiment(0), config.member_experiment(1)
    assert (svm.model.backbone, svm.preprocess.image_size, svm.augment.brightness) == ("efficientnet_lite1", 64, 0.0)
    assert (tune.preprocess.image_size, tune.augment.brightness) == (96, 0.1)


def test_a_members_preprocess_changes_only_the_settings_it_writes():
    members = [{"name": "a", "mode": "svm", "preprocess": {"image_size": 48}},
               {"name": "b", "mode": "svm", "preprocess": {"intensity": "minmax"}},
               {"name": "c", "mode": "svm", "preprocess": {"windows": [[40, 400]]}}]
    config = ExperimentConfig.from_dict({
        "preprocess": {"image_size": 32, "intensity": "window", "windows": [[-600, 1500]], "resize": "pad"},
        "model": {"mode": "ensemble", "ensemble": {"members": members}}})
    windowed, minmax, other_window = (config.member_experiment(i).preprocess for i in range(3))
    assert (windowed.image_size, windowed.intensity, windowed.windows, windowed.resize) == (
        48, "window", [[-600.0, 1500.0]], "pad")  # not min-max of raw Hounsfield units
    assert (minmax.image_size, minmax.intensity, minmax.windows, minmax.resize) == (32, "minmax", [], "pad")
    assert (other_window.intensity, other_window.windows) == ("window", [[40.0, 400.0]])
    tuned = {"name": "ft", "mode": "finetune", "preprocess": {"image_size": 96}}
    grey = ExperimentConfig.from_dict({"preprocess": {"image_size": 64, "channels": 1}, "model": {
        "mode": "ensemble", "ensemble": {"members": [{"name": "svm", "mode": "svm"}, tuned]}}})
    assert grey.member_experiment(1).preprocess.channels == 3  # an ImageNet fine-tune takes R, G, B
    members = [{"name": "svm", "mode": "svm"}, {"name": "ft", "mode": "finetune"}]
    plain = ExperimentConfig.from_dict({"preprocess": {"image_size": 64, "channels": 1},
                                        "model": {"mode": "ensemble", "ensemble": {"members": members}}})
    assert [plain.member_experiment(i).preprocess.channels for i in (0, 1)] == [1, 3]  # also without its own section
    assert plain.member_experiment(1).preprocess.image_size == 64
    # a run's config.yaml lists the member's section in full, and reads back the same
    snapshot = ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())), snapshot=True)
    assert snapshot.member_experiment(0).preprocess == windowed


def test_a_member_seed_replaces_the_experiments_only_for_that_member():
    config = ExperimentConfig.from_dict({"seed": 3, "model": {"mode": "ensemble", "ensemble": {"members": [
        {"name": "a", "mode": "finetune"}, {"name": "b", "mode": "finetune", "seed": 7}]}}})
    assert (config.member_experiment(0).seed, config.member_experiment(1).seed) == (3, 7)


@pytest.mark.parametrize("values, key", [
    ({"seed": -1}, r"^config: seed is -1"),
    ({"split": {"seed": 2**32}}, r"split.seed is 4294967296"),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"name": "a", "mode": "finetune", "seed": -5},
                                                             {"name": "b", "mode": "svm"}]}}},
     r"members\[0\] \(a\): seed is -5"),
])
def test_a_seed_outside_numpys_range_is_refused_naming_the_key(values, key):
    with pytest.raises(ConfigError, match=key + ".*whole number from 0 to 4294967295"):
        ExperimentConfig.from_dict(values)


def test_bagging_needs_kfold():
    with pytest.raises(ConfigError, match="split.final.*needs split.method: kfold"):
        ExperimentConfig.from_dict({"split": {"final": "bag"}})


# ------------------------------------------------------------------ ensemble mode end to end
@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    return f"medmnist:{_tiny_medmnist(tmp_path_factory.mktemp('tiny'))}"


@pytest.fixture(scope="module")
def mean_run(tiny_source, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mean")
    return run_experiment(ExperimentConfig.from_dict(_ensemble_dict(tiny_source, tmp_path)))


@pytest.mark.slow
def test_ensemble_scores_are_the_mean_of_member_scores_and_thresholds_come_from_val(mean_run):
    members = pd.read_csv(mean_run / "member_scores.csv")
    predictions = pd.read_csv(mean_run / "predictions.csv")
    assert list(members.columns) == ["split", "image", "middle", "late48"]
    assert np.allclose(predictions["score"], (members["middle"] + members["late48"]) / 2)
    metrics = load_metrics(mean_run)
    val = predictions[predictions["split"] == "val"]
    expected = select_thresholds("binary", val["label"].to_numpy(), val["score"].to_numpy())
    assert metrics["thresholds"]["youden"] == pytest.approx(expected["youden"])
    for split in ("val", "test"):
        for name in ("middle", "late48"):
            entry = metrics["members"][split][name]
            assert 0 <= entry["p_value"] <= 1 and entry["ensemble_auc"] is not None
    report = (mean_run / "report.html").read_text()
    assert "paired DeLong p" in report and "late48" in report


@pytest.mark.slow
def test_fine_tunes_that_differ_only_in_seed_differ_and_a_repeated_seed_repeats(tiny_source, tmp_path):
    tune = {"stages": [{"epochs": 1, "unfreeze": 0}], "batch_size": 32, "early_stopping_patience": None}
    members = [{"name": "first", "mode": "finetune", "finetune": tune},
               {"name": "other_seed", "mode": "finetune", "finetune": tune, "seed": 1},
               {"name": "same_seed", "mode": "finetune", "finetune": tune, "seed": 0}]
    run = run_experiment(ExperimentConfig.from_dict({
        "name": "seeds", "data": {"source": tiny_source}, "preprocess": {"image_size": 32},
        "split": {"test_fraction": 0.2}, "runs_dir": str(tmp_path / "runs"),
        "model": {"mode": "ensemble", "backbone": tiny_backbone(), "weights": None,  # seeds, not the network
                  "ensemble": {"members": members}}}))
    scores = pd.read_csv(run / "member_scores.csv")
    # to the last bit, though another seed's member was fitted in between
    assert np.array_equal(scores["first"], scores["same_seed"])
    assert np.abs(scores["first"] - scores["other_seed"]).max() > 1e-3
    # the run's config snapshot repeats it, into a new run directory
    again = run_experiment(ExperimentConfig.from_yaml(run / "config.yaml"))
    assert again != run and pd.read_csv(again / "member_scores.csv").equals(scores)


@pytest.mark.slow
def test_saved_ensemble_reproduces_its_test_metrics(mean_run, tmp_path):
    model = TrainedModel.load(mean_run)
    assert isinstance(model.estimator, Ensemble) and model.estimator.member_names == ["middle", "late48"]
    assert model.estimator.members[1].inputs.preprocess.image_size == 48  # its own preprocessing survives
    out = evaluate_run(mean_run, output=tmp_path / "again")
    assert load_metrics(out)["splits"]["test"] == load_metrics(mean_run)["splits"]["test"]
    # each member is scored beside the ensemble, as the run scored it on its test split
    assert load_metrics(out)["members"]["test"] == load_metrics(mean_run)["members"]["test"]
    run_members = pd.read_csv(mean_run / "member_scores.csv").query("split == 'test'").reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "member_scores.csv"), run_members)
    assert "vs member late48" in (out / "report.html").read_text()


@pytest.mark.slow
def test_stacking_is_fitted_on_out_of_fold_training_scores_only(tiny_source, tmp_path, monkeypatch):
    seen = {}
    original = ScoreCombiner.fit

    def spy(self, scores, y):
        seen["n"], seen["y"] = len(y), np.asarray(y)
        return original(self, scores, y)

    monkeypatch.setattr(ScoreCombiner, "fit", spy)
    fits = []
    fit_member = Ensemble._fit_member

    def watch(self, member, train, val, inputs, run_dir):  # which validation data each member fit may watch
        fits.append(val is not None)
        return fit_member(self, member, train, val, inputs, run_dir)

    monkeypatch.setattr(Ensemble, "_fit_member", watch)
    run = run_experiment(ExperimentConfig.from_dict(_ensemble_dict(tiny_source, tmp_path, "stacking")))
    splits = pd.read_csv(run / "splits.csv")
    train_labels = splits.loc[splits["split"] == "train", "label"].to_numpy()
    assert seen["n"] == len(train_labels) and np.array_equal(seen["y"], train_labels)
    # 3 folds x 2 members fitted for the out-of-fold scores without validation data, then the 2 final fits with it
    assert fits == [False] * 6 + [True] * 2
    state = json.loads((run / "model/estimator/ensemble.json").read_text())
    assert len(state["combiner"]["coef"][0]) == 2


def test_out_of_fold_member_scores_use_statistics_of_the_folds_training_part(tiny_source, tmp_path, monkeypatch):
    import tfmed.data.statistics as statistics

    seen, fit = [], statistics.fit_statistics
    monkeypatch.setattr(statistics, "fit_statistics",
                        lambda table, config: seen.append(set(table.frame["image"])) or fit(table, config))
    values = _ensemble_dict(tiny_source, tmp_path, "rank", split={"test_fraction": 0.2})
    values["preprocess"]["intensity"] = "standardize"  # late48 inherits it at its own size: its own statistics
    run = run_experiment(ExperimentConfig.from_dict(values))
    splits = pd.read_csv(run / "splits.csv")
    train = set(splits.loc[splits["split"] == "train", "image"])
    assert seen[0] == seen[1] == train  # the ensemble's and late48's statistics, for the final fits
    folds = seen[2:]  # per fold: the shared statistics, then late48's
    assert len(folds) == 6 and all(folds[2 * k] == folds[2 * k + 1] < train for k in range(3))
    assert set.union(*(train - images for images in folds)) == train  # each training image held out once


# ------------------------------------------------------------------ k-fold bagging
def test_a_kfold_bag_of_rank_ensembles_gives_no_probability_figures():
    from tfmed.config import EvaluationConfig, PreprocessConfig
    from tfmed.data.table import ImageTable
    from tfmed.run.experiment import RANK_NOTE, evaluate_split

    y = np.repeat([0, 1], 50)
    ranks = np.clip(0.5 + 0.3 * (y - 0.5) + np.random.default_rng(0).normal(0, 0.2, 100), 0, 1)
    table = ImageTable(pd.DataFrame({"image": [f"{i}.png" for i in range(100)], "label": y, "split": "test"}),
                       ["normal", "disease"], "binary")
    folds = [Ensemble.of_fitted([object(), object()], ["svm", "tuned"], "binary", combine="rank") for _ in range(3)]
    for estimator, ranked in ((Ensemble.of_fitted(folds, ["fold_1", "fold_2", "fold_3"], "binary"), True),
                              (Ensemble.of_fitted([object(), object()], ["a", "b"], "binary"), False)):
        model = TrainedModel(mode="ensemble", task="binary", classes=["normal", "disease"],
                             preprocess=PreprocessConfig(image_size=32), stats=None, estimator=estimator,
                             thresholds=select_thresholds("binary", y, ranks))
        point = evaluate_split(model, table, ranks, EvaluationConfig())["youden"]
        assert model.combines_ranks == ranked and (RANK_NOTE in point["notes"]) == ranked
        assert (point["brier"] is None) == ranked and (point["net_benefit"] is None) == ranked


@pytest.mark.slow
def test_kfold_bagging_averages_the_fold_models_on_test(tiny_source, tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = tiny_source
    config.split.method, config.split.folds, config.split.final = "kfold", 3, "bag"
    run = run_experiment(config)
    members = pd.read_csv(run / "member_scores.csv")
    assert list(members.columns) == ["split", "image", "fold_1", "fold_2", "fold_3"]
    predictions = pd.read_csv(run / "predictions.csv")
    assert np.allclose(predictions["score"], members[["fold_1", "fold_2", "fold_3"]].mean(axis=1))
    metrics = load_metrics(run)
    assert metrics["kfold"]["final"] == "bag" and list(metrics["splits"]) == ["test"]
    # the report says where the thresholds came from (no validation split) in whole sentences
    report = (run / "report.html").read_text()
    assert ("Thresholds were chosen on the pooled out-of-fold scores. The 3 fold models were kept, and their mean "
            "score was measured once on test.") in report
    assert "ROC curve (test) with the operating points chosen on the pooled out-of-fold scores" in report
    assert "validation-chosen" not in report and "val split" not in report
    evaluated = evaluate_run(run, output=tmp_path / "evaluated")  # its evaluation says the same
    assert "with the operating points chosen on that run&#x27;s pooled out-of-fold scores" in \
        (evaluated / "report.html").read_text()


# ------------------------------------------------------------------ tfmed ensemble
@pytest.fixture(scope="module")
def two_runs(tiny_source, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("two")
    runs = []
    for name, taps in (("middle", ["middle"]), ("late", ["late"])):
        config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
        config.name, config.data.source, config.model.svm.taps = name, tiny_source, taps
        runs.append(run_experiment(config))
    return runs


@pytest.mark.slow
def test_tfmed_ensemble_combines_saved_runs_and_rechooses_thresholds_on_val(two_runs, tmp_path, capsys):
    out = tmp_path / "combined"
    assert main(["ensemble", *map(str, two_runs), "--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    saved = [pd.read_csv(run / "predictions.csv") for run in two_runs]
    combined = pd.read_csv(out / "predictions.csv")
    assert np.allclose(combined["score"], (saved[0]["score"] + saved[1]["score"]) / 2)
    metrics = load_metrics(out)
    val = combined[combined["split"] == "val"]
    assert metrics["thresholds"]["youden"] == pytest.approx(
        select_thresholds("binary", val["label"].to_numpy(), val["score"].to_numpy())["youden"])
    assert set(metrics["members"]["test"]) == {"middle", "late"}
    assert metrics["near_duplicates"] == load_metrics(two_runs[0])["near_duplicates"] is not None
    assert metrics["test_origin"] == load_metrics(two_runs[0])["test_origin"] is not None  # e.g. in-distribution
    assert json.loads((out / "environment.json").read_text())["verified"] is True  # False after --no-verify
    config = ExperimentConfig.from_yaml(out / "config.yaml")
    assert config.model.mode == "ensemble" and len(config.model.ensemble.members) == 2
    # the combined run is a run like any other: evaluate reproduces its test metrics
    again = evaluate_run(out, output=tmp_path / "evaluated")
    assert load_metrics(again)["splits"]["test"] == metrics["splits"]["test"]
    # but it is not combined again: its members are
    assert main(["ensemble", str(out), str(two_runs[0]), "--output", str(tmp_path / "again")]) == 2
    assert f"{out} is itself a combination (model.mode ensemble); combine the runs it is made of" in \
        capsys.readouterr().err
    # an --output that holds anything is refused before any run is read
    assert main(["ensemble", *map(str, two_runs), "--output", str(out)]) == 2
    refused = capsys.readouterr()
    assert "already exists and is not empty; runs never overwrite each other" in refused.err and refused.out == ""
    # mean ranks are no probabilities: no Brier score, calibration or decision curve, unless recalibrated
    ranked = tmp_path / "ranked"
    assert main(["ensemble", *map(str, two_runs), "--combine", "rank", "--output", str(ranked)]) == 0
    point = load_metrics(ranked)["splits"]["test"]["youden"]
    assert (point["brier"], point["calibration_slope"], point["beneficial_thresholds"]) == (None, None, None)
    assert any("the scores are mean ranks" in note for note in point["notes"]) and point["roc_auc"] is not None
    assert not (ranked / "reliability_test.png").exists() and not (ranked / "decision_test.png").exists()
    assert (out / "reliability_test.png").exists()  # the mean of probabilities has them
    recalibrated = tmp_path / "ranked_recalibrated"
    assert main(["ensemble", *map(str, two_runs), "--combine", "rank", "--recalibrate", "logistic",
                 "--output", str(recalibrated)]) == 0
    assert load_metrics(recalibrated)["splits"]["test"]["youden"]["brier"] is not None


def test_tfmed_ensemble_refuses_a_fixed_threshold_on_mean_ranks(two_runs, tmp_path, monkeypatch, capsys):
    load = TrainedModel.load

    def deciding_at_half(*args, **kwargs):
        model = load(*args, **kwargs)
        model.threshold_method = "fixed"
        return model
    monkeypatch.setattr(TrainedModel, "load", deciding_at_half)
    out = tmp_path / "ranked"
    assert main(["ensemble", *map(str, two_runs), "--combine", "rank", "--output", str(out)]) == 2
    assert "the first run's evaluation.threshold is 'fixed' (decide at 0.5), but --combine 'rank' gives mean ranks" \
        in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_tfmed_ensemble_rank_notes_and_description_name_only_what_was_done(two_runs, tmp_path):
    ranked = tmp_path / "ranked"
    assert main(["ensemble", *map(str, two_runs), "--combine", "rank", "--output", str(ranked)]) == 0
    notes = load_metrics(ranked)["splits"]["test"]["youden"]["notes"]
    assert any("--recalibrate for tfmed ensemble" in note for note in notes)  # the option this command has
    description = ExperimentConfig.from_yaml(ranked / "config.yaml").description
    assert description.endswith("fitted on their validation scores: the rank references and the thresholds.")
    assert "recalibration" not in description
    recalibrated = tmp_path / "recalibrated"
    assert main(["ensemble", *map(str, two_runs), "--combine", "rank", "--recalibrate", "logistic",
                 "--output", str(recalibrated)]) == 0
    assert ExperimentConfig.from_yaml(recalibrated / "config.yaml").description.endswith(
        "the rank references, the logistic recalibration and the thresholds.")


@pytest.mark.slow
def test_tfmed_ensemble_of_multiclass_runs_offers_only_the_mean(tmp_path, capsys):
    from test_explain import tiny_svm_experiment

    data = {"source": f"medmnist:{_three_class_npz(tmp_path)}"}
    run = run_experiment(tiny_svm_experiment("three", tmp_path, data, {"method": "predefined"}))
    again = shutil.copytree(run, tmp_path / "copy" / "again")  # another run of the same split
    assert main(["ensemble", str(run), str(again), "--combine", "rank", "--output", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert "--combine 'rank' averages one rank per image and label" in error
    assert error.rstrip().endswith("not multiclass; use --combine mean")
    assert "model.ensemble.combine" not in error and "stacking" not in error and not (tmp_path / "x").exists()
    assert main(["ensemble", str(run), str(again), "--combine", "mean", "--output", str(tmp_path / "mean")]) == 0
    assert ExperimentConfig.from_yaml(tmp_path / "mean" / "config.yaml").description.endswith(
        "fitted on their validation scores: nothing.")  # argmax decides: no thresholds


@pytest.mark.slow
def test_tfmed_ensemble_refuses_runs_on_different_splits(two_runs, tiny_source, tmp_path, capsys):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source, config.split.seed = tiny_source, 7
    other = run_experiment(config)
    assert main(["ensemble", str(two_runs[0]), str(other), "--output", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    assert "does not share the split" in error and str(other) in error and "row " in error
    assert not (tmp_path / "x" / "model").exists()


@pytest.mark.slow
def test_tfmed_ensemble_refuses_runs_whose_images_carry_other_labels(two_runs, tmp_path, capsys):
    """The same image ids, splits and order, but another file behind them (MedMNIST ids name the file's base
    name only): one val label differs, so the runs' scores are of different images and are not combined."""
    from tfmed.run.manifest import write_manifest

    other = shutil.copytree(two_runs[1], tmp_path / "other")
    splits = pd.read_csv(other / "splits.csv", keep_default_na=False, dtype=str)
    row = int(np.flatnonzero(splits["split"] == "val")[3])
    splits.loc[row, "label"] = {"0": "1", "1": "0"}[splits.loc[row, "label"]]
    splits.to_csv(other / "splits.csv", index=False)
    write_manifest(other)
    assert main(["ensemble", str(two_runs[0]), str(other), "--output", str(tmp_path / "x")]) == 2
    error = capsys.readouterr().err
    image = splits.loc[row, "image"]
    assert (f"{other} does not share the split of {two_runs[0]} (row {row + 1}: {image} in val labelled "
            f"{splits.loc[row, 'label']}, against {image} in val labelled") in error
    assert not (tmp_path / "x").exists()


def test_tfmed_ensemble_refuses_runs_evaluated_differently(two_runs, tmp_path, capsys):
    """The combination is evaluated one way: taking the first run's settings would make it depend on the order."""
    import yaml

    from tfmed.run.manifest import write_manifest

    other = shutil.copytree(two_runs[1], tmp_path / "other")
    values = yaml.safe_load((other / "config.yaml").read_text())
    values["evaluation"]["bootstrap"] = 20
    (other / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    write_manifest(other)
    for order in ([two_runs[0], other], [other, two_runs[0]]):
        assert main(["ensemble", *map(str, order), "--output", str(tmp_path / "x")]) == 2
        assert "are evaluated differently (evaluation.bootstrap" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_tfmed_ensemble_without_output_writes_beside_the_first_run(two_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not the folder the runs were made in
    assert main(["ensemble", *map(str, two_runs)]) == 0
    made = list((two_runs[0].parent.parent / "ensemble").iterdir())
    assert len(made) == 1 and (made[0] / "MANIFEST.sha256").is_file() and not (tmp_path / "runs").exists()
    shutil.rmtree(made[0].parent)  # the runs folder as the other tests find it


def test_an_ensemble_typed_in_another_folder_reads_its_runs_relative_data_from_where_they_began(
        two_runs, tiny_source, tmp_path, monkeypatch):
    """Runs made with a relative data path: their combination, made and evaluated elsewhere, still finds it."""
    import yaml

    from tfmed.run.manifest import write_manifest

    began = tmp_path / "project"
    (began / "data").mkdir(parents=True)
    shutil.copy(tiny_source.split(":", 1)[1], began / "data" / "tiny.npz")
    copies = []
    for run in two_runs:
        copy = shutil.copytree(run, tmp_path / "runs" / run.parent.name / run.name)
        values = yaml.safe_load((copy / "config.yaml").read_text())
        values["data"]["source"] = "medmnist:data/tiny.npz"
        (copy / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        environment = json.loads((copy / "environment.json").read_text())
        environment.pop("config_sha256", None)
        (copy / "environment.json").write_text(json.dumps({**environment, "cwd": str(began)}))
        write_manifest(copy)
        copies.append(copy)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["ensemble", *map(str, copies), "--output", str(tmp_path / "combined")]) == 0
    environment = json.loads((tmp_path / "combined" / "environment.json").read_text())
    assert (environment["cwd"], environment["command_cwd"]) == (str(began), str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path)  # a third folder: the test split is read from the project's data
    again = evaluate_run(tmp_path / "combined", output=tmp_path / "evaluated")
    assert load_metrics(again)["splits"]["test"] == load_metrics(tmp_path / "combined")["splits"]["test"]


def test_tfmed_ensemble_refuses_stacking_and_a_single_run(tmp_path, capsys):
    assert main(["ensemble", "a", "b", "--combine", "stacking", "--output", str(tmp_path / "x")]) == 2
    assert "out-of-fold training scores" in capsys.readouterr().err
    assert main(["ensemble", str(tmp_path), "--output", str(tmp_path / "y")]) == 2
    assert "not a tfmed run directory" in capsys.readouterr().err


# ------------------------------------------------------------------ checks before a run directory exists
def _split_table(train: int = 8):
    from tfmed.data.table import ImageTable

    n = train + 4
    frame = pd.DataFrame({"image": [f"i{k}" for k in range(n)], "label": [0, 1] * (n // 2),
                          "split": ["train"] * train + ["val"] * 2 + ["test"] * 2,
                          "patient_id": [f"p{k}" for k in range(n)]})
    return ImageTable(frame, ["normal", "sick"], "binary")


def _member_config(tuned: dict, **extra) -> ExperimentConfig:
    members = [{"name": "feat", "mode": "svm", "svm": {"cv": 3}}, {"name": "tuned", "mode": "finetune", **tuned}]
    return ExperimentConfig.from_dict({"name": "e", "model": {"mode": "ensemble", "backbone": "efficientnet_lite0",
                                                              "weights": None, "ensemble": {"members": members,
                                                                                            **extra}}})


def test_a_members_unfreeze_the_backbone_cannot_take_names_the_members_key():
    config = _member_config({"finetune": {"stages": [{"epochs": 1}, {"epochs": 1, "unfreeze": 50}]}})
    with pytest.raises(ConfigError, match=r"^model.ensemble.members\[1\].finetune.stages\[1\].unfreeze is 50 for "
                                          r"backbone efficientnet_lite0: .* has 9 .*; use 0..9 or 'all'"):
        Ensemble.check_before_data(config)


def test_stacking_folds_beyond_the_training_patients_are_refused_naming_model_ensemble_folds():
    table = _split_table(train=8)  # 12 patients outside the test split, 8 in the train split that is folded
    with pytest.raises(ConfigError) as info:
        Ensemble.check_experiment(_member_config({}, combine="stacking", folds=10), table)
    assert str(info.value) == ("model.ensemble.folds is 10, but the training images it splits hold 8 patient(s), "
                               "and each of the folds that give the out-of-fold member scores needs one; set "
                               "model.ensemble.folds to 8 or fewer")
    with pytest.raises(ConfigError, match=r"model.ensemble.folds is 5: 5 folds need every class in each fold"):
        Ensemble.check_experiment(_member_config({}, combine="stacking", folds=5), table)
    Ensemble.check_experiment(_member_config({}, combine="stacking", folds=4), table)


def test_an_svm_members_cv_too_large_for_a_stacking_fold_is_refused_before_anything_is_fitted():
    table = _split_table(train=16)  # 8 patients a class in train: 6 in each of the 4 stacking folds' fit parts

    def config(**combine):
        members = [{"name": "feat", "mode": "svm", "svm": {"cv": 7}}, {"name": "other", "mode": "svm"}]
        return ExperimentConfig.from_dict({"name": "e", "model": {"mode": "ensemble", "weights": None,
                                                                  "ensemble": {"members": members, **combine}}})

    Ensemble.check_experiment(config(combine="mean"), table)  # the whole train split holds cv=7
    with pytest.raises(ConfigError, match=r"^e: model.ensemble.members\[0\].svm.cv: the training split \(the part an "
                                          r"out-of-fold score of model.ensemble.combine 'stacking' is fitted on\) is "
                                          r"too small for the SVM's 7-fold cross-validation"):
        Ensemble.check_experiment(config(combine="stacking", folds=4), table)


def test_stacking_folds_are_refused_by_validate_and_before_the_run_directory(tiny_source, tmp_path, capsys):
    import yaml

    values = _ensemble_dict(tiny_source, tmp_path, combine="stacking")
    values["model"]["ensemble"]["folds"] = 500
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(values))
    assert main(["validate", str(path)]) != 0
    assert "model.ensemble.folds is 500, but the training images" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="set model.ensemble.folds to"):
        run_experiment(ExperimentConfig.from_dict(values))
    assert not (tmp_path / "runs").exists()


def test_a_members_balance_target_of_another_length_names_the_members_key():
    config = _member_config({"balance": {"method": "oversample", "target": [1, 1, 1]}})
    with pytest.raises(ConfigError, match=r"e: model.ensemble.members\[1\].balance.target has 3 values but the table "
                                          r"has 2 balance groups"):
        Ensemble.check_experiment(config, _split_table())


def test_tfmed_ensemble_refuses_the_same_run_given_twice(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("name: run\n")
    assert main(["ensemble", str(run), str(run), "--output", str(tmp_path / "x")]) == 2
    assert f"run {run} is given twice; combine different runs, each once" in capsys.readouterr().err
    assert main(["ensemble", str(run), str(run / "model"), "--output", str(tmp_path / "x")]) == 2
    assert "is given twice" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_member_scores_of_several_classes_are_written_at_full_precision(tmp_path):
    import ast

    from tfmed.data.table import ImageTable
    from tfmed.run.reporting import write_member_scores_csv

    table = ImageTable(pd.DataFrame({"image": ["a", "b"], "label": [0, 2]}), ["x", "y", "z"], "multiclass")
    scores = np.array([[0.1234567891234, 0.5, 0.3765432108766], [1 / 3, 1 / 3, 1 / 3]])
    path = write_member_scores_csv(tmp_path / "member_scores.csv", {"test": table}, {"test": {"m": scores}})
    written = np.array([ast.literal_eval(cell) for cell in pd.read_csv(path)["m"]])
    assert np.array_equal(written, scores)  # rounded to 6 decimals before, which could make ties


@pytest.mark.slow
def test_tfmed_ensemble_of_runs_without_a_test_split_keeps_each_runs_seed(tiny_source, tmp_path, monkeypatch):
    runs = []
    for name, seed in (("a", 0), ("b", 7)):
        config = ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml")  # test_fraction 0
        config = _small(config, tmp_path)
        config.name, config.seed, config.data.source, config.split.test_fraction = name, seed, tiny_source, 0.0
        runs.append(run_experiment(config))
    out = tmp_path / "combined"
    assert main(["ensemble", *map(str, runs), "--output", str(out)]) == 0
    assert set(load_metrics(out)["splits"]) == {"val"}
    members = ExperimentConfig.from_yaml(out / "config.yaml").model.ensemble.members
    assert [member.seed for member in members] == [0, 7]
    backwards = tmp_path / "backwards"  # a first run of another seed than the default: combined as well
    assert main(["ensemble", *map(str, runs[::-1]), "--output", str(backwards)]) == 0
    assert [m.seed for m in ExperimentConfig.from_yaml(backwards / "config.yaml").model.ensemble.members] == [7, 0]
    # a failure while the combined run is written leaves no half-written run behind
    import tfmed.run.reporting as reporting

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(reporting, "write_run_outputs", full_disk)
    assert main(["ensemble", *map(str, runs), "--output", str(tmp_path / "failed")]) == 2
    assert not (tmp_path / "failed").exists()


def test_an_ensemble_records_its_members_backbones_and_refuses_one_no_member_takes():
    from types import SimpleNamespace

    from tfmed.config import UnusedSettingError
    from tfmed.run.experiment import trained_model

    members = [{"name": "a", "mode": "svm", "backbone": "efficientnet_lite1"},
               {"name": "b", "mode": "svm", "backbone": "efficientnet_lite2"}]
    with pytest.raises(UnusedSettingError, match="model.backbone is set, but every ensemble member names its own"):
        ExperimentConfig.from_dict({"model": {"mode": "ensemble", "backbone": "mobilenet_v2",
                                              "ensemble": {"members": members}}})
    members[1].pop("backbone")  # b takes the experiment's
    config = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "backbone": "efficientnet_lite0",
                                                   "ensemble": {"members": members + [dict(members[0], name="c")]}}})
    model = trained_model(config, SimpleNamespace(task="binary", classes=["n", "p"]),
                          SimpleNamespace(preprocess=config.preprocess, stats=None), SimpleNamespace(name="ensemble"))
    assert model.backbone == "efficientnet_lite1, efficientnet_lite0"
    unweighted = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "weights": None, "ensemble": {"members": [
        {"name": "a", "mode": "svm"}, {"name": "b", "mode": "svm", "backbone": "efficientnet_lite1"}]}}})
    assert unweighted.model_setting("weights") == "None"  # the report's weights fact: what the members take


def test_multiclass_stacking_is_a_multinomial_logistic_regression_on_the_members_log_probabilities():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)

    def member(strength):
        logits = rng.normal(size=(90, 3))
        logits[np.arange(90), y] += strength
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    a, b = member(2.0), member(0.3)
    combined = ScoreCombiner("stacking", "multiclass").fit([a, b], y).combine([a, b])
    features = np.concatenate([np.log(a), np.log(b)], axis=1)
    expected = LogisticRegression(C=1.0, max_iter=1000).fit(features, y).predict_proba(features)
    np.testing.assert_allclose(combined, expected, atol=1e-4)


def test_multilabel_rank_averaging_ranks_each_label_among_its_own_reference_scores():
    from scipy.stats import percentileofscore

    rng = np.random.default_rng(0)
    # two labels on very different scales (label 0 around 0.1, label 1 around 0.9), two members
    reference = [np.column_stack([rng.uniform(0.0, 0.2, 40), rng.uniform(0.8, 1.0, 40)]) for _ in range(2)]
    new = [np.array([[0.1, 0.9]]), np.array([[0.1, 0.9]])]
    combined = ScoreCombiner("rank", "multilabel").fit(reference, rng.integers(0, 2, (40, 2))).combine(new)
    expected = np.mean([[percentileofscore(r[:, j], n[0, j], kind="mean") / 100 for j in range(2)]
                        for r, n in zip(reference, new)], axis=0)
    np.testing.assert_allclose(combined[0], expected, atol=1e-9)


def test_a_member_with_its_own_preprocessing_scores_each_test_time_view_of_the_ensemble():
    from tfmed.config import PreprocessConfig, TTAConfig
    from tfmed.data.pipeline import ImageInputs
    from tfmed.modes.ensemble import Member

    given = ImageInputs(PreprocessConfig(image_size=32), tta=TTAConfig(enabled=True))
    own = Member("tuned", inputs=ImageInputs(PreprocessConfig(image_size=32, intensity="histogram"), stats={}))
    views = given.views()
    assert len(views) > 2 and all(own.inputs_for(view).view == view.view for view in views)
    assert len({repr(own.inputs_for(view).view) for view in views}) == len(views)  # each view its own
