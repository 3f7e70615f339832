"""Multilabel targets that are unknown for some images (-1: CheXpert's U-Ignore, merged data sets).

Every part that reads labels must leave an unknown one out: each test changes what an unknown
label or its score would contribute and checks that nothing moves, or compares with the same
computation on the known images only.
"""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tfmed.config import UNKNOWN_LABEL, DataConfig, ExperimentConfig
from tfmed.data.sources.manifest import load_manifest
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import validate_table
from tfmed.evaluation.comparison import paired_tests
from tfmed.evaluation.intervals import delong_auc_ci, macro_auc_covariance
from tfmed.evaluation.metrics import multilabel_metrics
from tfmed.evaluation.thresholds import select_thresholds
from tfmed.modes.combine import ScoreCombiner
from tfmed.modes.svm import KnownLabelsPerLabel, macro_auc
from tfmed.training import callbacks as tc

from test_experiment import _chest_manifest
from test_finetune import tiny_backbone


def _labels_and_scores(n=80, labels=3, seed=0, unknown=0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, labels))
    s = np.clip(0.3 * y + rng.random((n, labels)) * 0.8, 0, 1)
    y[rng.random((n, labels)) < unknown] = UNKNOWN_LABEL
    return y, s


def _with_other_unknown_scores(y, s, seed=9):
    """The same scores, except those of unknown labels, which are redrawn."""
    other = s.copy()
    other[y == UNKNOWN_LABEL] = np.random.default_rng(seed).random(int((y == UNKNOWN_LABEL).sum()))
    return other


def test_a_manifest_marks_unknown_findings_with_minus_one_and_keeps_blanks_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("path,effusion,mass,patient_id\na.png,1,-1,p1\nb.png,unknown,0,p2\n"
                                    "c.png,0,,p3\n")
    table = load_manifest(tmp_path / "m.csv", label_columns=["effusion", "mass"])
    graded = table.subset([0, 1])
    assert graded.labels().tolist() == [[1, UNKNOWN_LABEL], [UNKNOWN_LABEL, 0]]
    assert graded.class_counts() == {"effusion": 1, "mass": 0}   # an unknown label is not a positive one
    labels = [problem for problem in validate_table(table, check_images=False).problems
              if "file not found" not in problem.problem]
    assert [problem.row for problem in labels] == [4]
    assert "empty label in multilabel column 'mass'" in labels[0].problem
    assert "-1 (or unknown) when the finding is unknown" in labels[0].fix  # both spellings it reads


def test_label_metrics_use_only_the_cases_where_the_label_is_known():
    y, s = _labels_and_scores()
    metrics = multilabel_metrics(y, s, 0.5, ["a", "b", "c"], bootstrap=50)
    for j, name in enumerate("abc"):
        known = y[:, j] != UNKNOWN_LABEL
        entry = metrics["per_label"][name]
        assert entry["n"] == known.sum() and entry["unknown"] == (~known).sum()
        assert entry["roc_auc"] == pytest.approx(roc_auc_score(y[known, j], s[known, j]))
        assert entry["ci"]["roc_auc"] == pytest.approx(list(delong_auc_ci(y[known, j], s[known, j])[1:]))
    assert any("label 'a': unknown for" in note for note in metrics["notes"])
    again = multilabel_metrics(y, _with_other_unknown_scores(y, s), 0.5, ["a", "b", "c"], bootstrap=50)
    for key in ("macro_auc", "macro_auc_ci", "micro_auc", "hamming_loss", "subset_accuracy", "per_label",
                "bootstrap_ci"):
        assert again[key] == metrics[key], key
    known = y != UNKNOWN_LABEL
    assert metrics["micro_auc"] == pytest.approx(roc_auc_score(y[known], s[known]))
    assert metrics["hamming_loss"] == pytest.approx(np.mean(y[known] != (s[known] >= 0.5)))


def test_a_label_unknown_for_every_case_has_no_figures_and_the_others_keep_theirs():
    """A held-out collection that does not grade one label (a merged part) is scored, not a failed run."""
    y, s = _labels_and_scores()
    y[:, 1] = UNKNOWN_LABEL
    metrics = multilabel_metrics(y, s, 0.5, ["a", "b", "c"], bootstrap=20)
    entry = metrics["per_label"]["b"]
    assert (entry["n"], entry["unknown"], entry["roc_auc"], entry["sensitivity"]) == (0, len(y), None, None)
    assert "label 'b': unknown for all 80 cases, so it has no figures here" in metrics["notes"]
    alone = multilabel_metrics(y[:, [0, 2]], s[:, [0, 2]], 0.5, ["a", "c"], bootstrap=20)
    assert metrics["macro_auc"] == pytest.approx(alone["macro_auc"])
    assert metrics["per_label"]["a"] == alone["per_label"]["a"]


def test_the_macro_auc_variance_of_one_label_is_delong_on_its_known_cases():
    y, s = _labels_and_scores(n=60, labels=1, seed=2)
    known = y[:, 0] != UNKNOWN_LABEL
    aucs, covariance = macro_auc_covariance(y, s)
    reference_auc, reference_variance = _delong(y[known, 0], s[known, 0])
    assert aucs[0] == pytest.approx(reference_auc) and covariance[0, 0] == pytest.approx(reference_variance)
    y, s = _labels_and_scores(n=60, labels=3, seed=3)
    aucs, covariance = macro_auc_covariance(y, s)
    other_aucs, other_covariance = macro_auc_covariance(y, _with_other_unknown_scores(y, s))
    assert aucs == pytest.approx(other_aucs) and covariance == pytest.approx(other_covariance)
    assert aucs[0] == pytest.approx(np.mean([roc_auc_score(*_known(y, s, j)) for j in range(3)]))


def _known(y, s, j):
    known = y[:, j] != UNKNOWN_LABEL
    return y[known, j], s[known, j]


def _delong(y, s):
    from tfmed.evaluation.intervals import delong_covariance

    aucs, covariance = delong_covariance(y, s)
    return float(aucs[0]), float(covariance[0, 0])


def test_thresholds_callbacks_svm_auc_comparisons_and_stacking_ignore_unknown_labels():
    y, s = _labels_and_scores(seed=4)
    other = _with_other_unknown_scores(y, s)
    assert select_thresholds("multilabel", y, s) == select_thresholds("multilabel", y, other)
    picked = select_thresholds("multilabel", y, s)["youden"]
    assert picked == [select_thresholds("binary", *_known(y, s, j))["youden"] for j in range(3)]
    scores = tc.clinical_scores(y, s, task="multilabel")
    assert scores["auc"] == pytest.approx(np.mean([roc_auc_score(*_known(y, s, j)) for j in range(3)]))
    assert tc.clinical_scores(y, other, task="multilabel") == scores
    assert tc.select_threshold(y, s) == tc.select_threshold(y, other)
    assert macro_auc(y, s) == pytest.approx(scores["auc"]) and macro_auc(y, other) == macro_auc(y, s)
    assert paired_tests("multilabel", y, s, s ** 2) == paired_tests("multilabel", y, other, other ** 2)
    stacker = ScoreCombiner("stacking", "multilabel").fit([s, s ** 2], y)
    again = ScoreCombiner("stacking", "multilabel").fit([other, other ** 2], y)
    np.testing.assert_allclose(stacker.coef_, again.coef_)


def test_training_auc_leaves_unknown_targets_out():
    from tfmed.training.known_labels_auc import KnownLabelsAUC

    y, s = _labels_and_scores(n=400, seed=5)
    metric = KnownLabelsAUC(multi_label=True, num_labels=3, num_thresholds=1000)
    metric.update_state(y.astype("float32"), s.astype("float32"))
    expected = np.mean([roc_auc_score(*_known(y, s, j)) for j in range(3)])
    assert float(metric.result()) == pytest.approx(expected, abs=2e-3)
    metric.reset_state()
    metric.update_state(y.astype("float32"), _with_other_unknown_scores(y, s).astype("float32"))
    assert float(metric.result()) == pytest.approx(expected, abs=2e-3)


class _CountingEstimator:
    """Records the rows and labels it was fitted on."""

    def __init__(self):
        self.rows = None

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self

    def fit(self, X, y):
        self.rows, self.labels = len(X), sorted(set(np.asarray(y).tolist()))
        return self

    def decision_function(self, X):
        return np.zeros(len(X))


def test_each_label_svm_is_fitted_on_its_known_rows():
    y, _ = _labels_and_scores(n=30, seed=6)
    X = np.random.default_rng(0).random((30, 4))
    fitted = KnownLabelsPerLabel(_CountingEstimator()).fit(X, y)
    assert [e.rows for e in fitted.estimators_] == (y != UNKNOWN_LABEL).sum(axis=0).tolist()
    assert all(e.labels == [0, 1] for e in fitted.estimators_)
    assert fitted.decision_function(X).shape == (30, 3)
    # a label whose known rows hold one value (a small search fold) scores 0, as one-vs-rest does
    y[:, 2] = np.where(y[:, 2] == UNKNOWN_LABEL, UNKNOWN_LABEL, 0)
    fitted = KnownLabelsPerLabel(_CountingEstimator()).fit(X, y)
    assert fitted.estimators_[2] is None and (fitted.decision_function(X)[:, 2] == 0).all()


def test_unknown_labels_survive_a_tfds_export_and_read_back(tmp_path):
    from tfmed.data.sources import load_source
    from tfmed.data.tfds_export import export_tfds

    frame = pd.DataFrame({"image": [str(tmp_path / f"{i}.png") for i in range(4)], "label:a": [1, 0, -1, 1],
                          "label:b": [0, -1, 1, 0], "patient_id": list("pqrs")})
    for path in frame["image"]:
        cv2.imwrite(path, np.zeros((8, 8), np.uint8))
    table = ImageTable(frame, ["a", "b"], "multilabel", source="m.csv")
    export_tfds(table, tmp_path / "out", name="merged")
    again = load_source(DataConfig(source="tfds", path=str(tmp_path / "out")))
    assert again.classes == ["a", "b"] and again.labels().tolist() == table.labels().tolist()


def test_explanations_choose_cases_only_among_images_whose_label_is_known():
    from tfmed.run.artifact import TrainedModel
    from tfmed.run.explain import select_cases

    model = TrainedModel("svm", "multilabel", ["a", "b"], None, None, None)
    labels = np.array([[1, 0], [-1, 0], [0, 1], [-1, 1]])
    scores = np.array([[.9, .1], [.95, .2], [.1, .8], [.05, .7]])
    cases = select_cases(model, labels, scores, (scores >= 0.5).astype(int), 0, 2)
    assert cases == [(0, "TP"), (2, "TN")]


@pytest.mark.parametrize("mode", ["svm", "finetune"])
def test_an_experiment_trains_and_scores_with_unknown_labels(tmp_path, mode):
    from tfmed.run.experiment import run_experiment
    from tfmed.run.evaluate import load_metrics

    model = ({"svm": {"taps": ["middle"], "C": [1.0], "cv": 2}} if mode == "svm" else
             {"mode": "finetune", "backbone": tiny_backbone(), "weights": None,
              "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}], "batch_size": 8}})
    config = ExperimentConfig.from_dict({
        "name": f"merged_{mode}", "runs_dir": str(tmp_path / "runs"),
        "data": {"source": "manifest", "path": str(_chest_manifest(tmp_path, unknown_nodule_every=3)),
                 "label_columns": ["effusion", "nodule"]},
        "split": {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
        "preprocess": {"image_size": 32}, "model": model})
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    splits = pd.read_csv(run_dir / "splits.csv")
    study = pd.read_csv(tmp_path / "study.csv")
    study.index = [str(tmp_path / path) for path in study["path"]]
    test = splits.loc[splits["split"] == "test", "image"]
    unknown_in_test = int((study.loc[test, "nodule"] == UNKNOWN_LABEL).sum())
    assert 0 < unknown_in_test < len(test)
    youden = metrics["splits"]["test"]["youden"]
    assert youden["per_label"]["nodule"]["n"] == len(test) - unknown_in_test
    assert youden["per_label"]["effusion"]["n"] == len(test)
    assert youden["per_label"]["nodule"].get("unknown", 0) == unknown_in_test
    train = splits.loc[splits["split"] == "train", "image"]
    assert metrics["counts"]["train"]["nodule"] == int((study.loc[train, "nodule"] == 1).sum())
    assert metrics["images"] == {name: int((splits["split"] == name).sum()) for name in ("train", "val", "test")}
    assert metrics["unknown_labels"]["test"] == {"effusion": 0, "nodule": unknown_in_test}
    report = (run_dir / "report.html").read_text()
    assert "Label (images positive)" in report and "<td>nodule: unknown</td>" in report
    assert f"<td>Images</td><td>{len(train)}</td>" in report
    assert "alt='decision'" in report and "alt='reliability'" in report   # one curve per label
    assert (run_dir / "decision_test.png").stat().st_size > 1000
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert set(predictions["label:nodule"]) <= {0, 1, UNKNOWN_LABEL}
    if mode == "svm":  # another hospital's manifest as a bare spec: its label columns are the model's findings
        from tfmed.run.cli import main

        assert main(["evaluate", "--model", str(run_dir), "--data", f"manifest:{tmp_path / 'study.csv'}"]) == 0
        evaluated = load_metrics(sorted((run_dir / "evaluations").iterdir())[-1])
        assert evaluated["images"]["test"] == len(study) and evaluated["task"] == "multilabel"


def test_validate_counts_each_labels_positive_and_unknown_images(tmp_path, capsys):
    from tfmed.run.cli import main

    manifest = _chest_manifest(tmp_path, unknown_nodule_every=3)
    (tmp_path / "merged.yaml").write_text(f"name: merged\ndata:\n  source: manifest\n  path: {manifest}\n"
                                          "  label_columns: [effusion, nodule]\n")
    assert main(["validate", str(tmp_path / "merged.yaml")]) == 0
    study = pd.read_csv(manifest)
    assert (f"labels: effusion {int((study['effusion'] == 1).sum())} positive, 0 unknown; nodule "
            f"{int((study['nodule'] == 1).sum())} positive, 16 unknown") in capsys.readouterr().out


def _chexpert_stand_in(folder, name="train.csv", patients=40, seed=0):
    """A CSV in the publisher's layout with small images; findings drawn at random, some uncertain."""
    from tfmed.data.sources.chexpert import HEADER, OBSERVATIONS

    rng = np.random.default_rng(seed)
    top = folder / "CheXpert-v1.0-small"
    lines = [HEADER]
    for p in range(patients):
        for view in (1, 2):
            path = f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view{view}_frontal.jpg"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / path), rng.integers(0, 255, (24, 24), dtype=np.uint8))
            codes = rng.choice(["1.0", "0.0", "", "-1.0"], size=len(OBSERVATIONS), p=[.3, .3, .2, .2])
            lines.append(",".join([path, ("Female", "Male")[p % 2], str(30 + p), "Frontal", "AP"] + codes.tolist()))
    (top / name).write_text("\n".join(lines) + "\n")
    return top / name


def test_the_chexpert_experiment_ignores_uncertain_labels_where_it_says_and_scores_valid_csv(tmp_path):
    from tfmed.data.sources.chexpert import load_chexpert
    from tfmed.run.evaluate import evaluate_run, load_metrics
    from tfmed.run.experiment import run_experiment

    config = ExperimentConfig.from_yaml(Path(__file__).parent.parent / "experiments" / "chexpert.yaml")
    config.data.path = str(_chexpert_stand_in(tmp_path))
    config.runs_dir = str(tmp_path / "runs")
    config.preprocess.image_size = 32
    config.model.weights = None
    config.split.test_fraction = config.split.val_fraction = 0.25
    for stage in config.model.finetune.stages:
        stage.epochs = 1
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    table = load_chexpert(config.data.path, classes=config.data.classes, uncertain=config.data.uncertain)
    splits = pd.read_csv(run_dir / "splits.csv")
    test = table.subset(np.flatnonzero(splits["split"].to_numpy() == "test")).labels()
    # U-Ones: an uncertain Atelectasis is positive, never unknown; U-Ignore: an uncertain Cardiomegaly is unknown
    assert metrics["unknown_labels"]["test"]["Atelectasis"] == 0
    assert metrics["unknown_labels"]["test"]["Cardiomegaly"] == int((test[:, 1] == UNKNOWN_LABEL).sum()) > 0
    youden = metrics["splits"]["test"]["youden"]["per_label"]
    assert youden["Cardiomegaly"]["n"] == int((test[:, 1] != UNKNOWN_LABEL).sum())
    # figures by sex and age band, as the experiment asks (macro AUC over the five findings per group)
    by_sex = metrics["subgroups"]["sex"]["test"]["groups"]
    assert {sex: entry["n"] for sex, entry in by_sex.items()} == splits[splits["split"] == "test"].groupby(
        "sex").size().to_dict()
    assert "difference_test" not in metrics["subgroups"]["sex"]["test"]  # no test between groups of a multilabel model
    # the publisher's valid.csv holds all 14 observations: the five the model predicts are scored
    valid = _chexpert_stand_in(tmp_path / "valid", "valid.csv", patients=10, seed=1)
    scored = load_metrics(evaluate_run(run_dir, data=f"chexpert:{valid}", output=tmp_path / "valid_scores"))
    assert list(scored["splits"]["test"]["youden"]["per_label"]) == config.data.classes
    assert scored["images"] == {"test": 20}
    # a bare spec reads the external set with the run's uncertainty policy: its labels mean the same
    external = load_chexpert(str(valid), classes=config.data.classes, uncertain=config.data.uncertain).labels()
    assert scored["unknown_labels"]["test"] == {name: int((external[:, j] == UNKNOWN_LABEL).sum())
                                                for j, name in enumerate(config.data.classes)}
    assert scored["unknown_labels"]["test"]["Cardiomegaly"] > 0  # U-Ignore there, not the source's U-Zeros


def test_the_chexpert_experiment_without_data_says_where_to_get_it(tmp_path):
    from tfmed.run.experiment import run_experiment

    config = ExperimentConfig.from_yaml(Path(__file__).parent.parent / "experiments" / "chexpert.yaml")
    config.data.path = str(tmp_path / "data/chexpert/CheXpert-v1.0-small/train.csv")
    config.runs_dir = str(tmp_path / "runs")
    with pytest.raises(DataSourceError, match="Stanford AIMI Center.*make experiment NAME=chexpert"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()
