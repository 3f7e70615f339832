"""Plots (PNG files), predictions CSV, metrics JSON and the self-contained HTML report."""
import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from sklearn.metrics import roc_auc_score

from tfmed.evaluation import (EvaluationError, ReportContext, binary_metrics, confusion_plot, evaluate,
                              multi_decision_plot, multi_reliability_plot, multi_roc_plot, operating_point_metrics,
                              pr_plot, reliability_plot, roc_plot, training_curves, write_metrics_json,
                              write_predictions, write_report)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def binary_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    s = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, 120))))
    return y, s


def test_binary_plots_are_pngs(tmp_path, binary_data):
    y, s = binary_data
    plain = roc_plot(y, s, tmp_path / "roc_plain.png")
    marked = roc_plot(y, s, tmp_path / "roc.png", {"youden": 0.5, "high_sensitivity": 0.2},
                      title="Test ROC", auc_ci=(0.8, 0.9))
    assert marked.read_bytes().startswith(PNG)
    assert marked.read_bytes() != plain.read_bytes()  # the operating points are drawn
    height, width = imread(marked).shape[:2]
    assert height > 300 and width > 300
    for path in (pr_plot(y, s, tmp_path / "pr.png", {"youden": 0.5}),
                 reliability_plot(y, s, tmp_path / "cal.png", bins=5),
                 confusion_plot({"tn": 50, "fp": 10, "fn": 8, "tp": 52}, ["normal", "pneumonia"],
                                tmp_path / "sub" / "cm.png")):
        assert path.is_file() and path.read_bytes().startswith(PNG)


def test_multi_output_plots(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    proba = np.eye(3)[y] * 0.5 + rng.uniform(0, 1, (90, 3))
    assert multi_roc_plot(y, proba, ["a", "b", "c"], tmp_path / "mc.png").read_bytes().startswith(PNG)
    Y = np.eye(3, dtype=int)[y]
    Y[:, 2] = 0  # a label that never occurs is listed as undefined, not a crash
    assert multi_roc_plot(Y, proba, ["a", "b", "c"], tmp_path / "ml.png").is_file()
    cm = np.array([[10, 2, 1], [3, 12, 0], [0, 1, 9]])
    assert confusion_plot(cm, ["a", "b", "c"], tmp_path / "cm3.png").is_file()


def test_multilabel_decision_and_calibration_plots_use_each_labels_known_cases(tmp_path):
    rng = np.random.default_rng(2)
    Y = rng.integers(0, 2, (80, 3))
    P = np.clip(Y * 0.4 + rng.uniform(0, 0.6, (80, 3)), 0, 1)
    Y[::4, 1] = -1                           # unknown for a quarter of the cases
    Y[:, 2] = 0                              # a label that never occurs
    other = P.copy()
    other[::4, 1] = rng.uniform(0, 1, 20)    # other scores where the label is unknown change nothing
    names = ["effusion", "nodule", "mass"]
    for plot in (multi_decision_plot, multi_reliability_plot):
        first = plot(Y, P, names, tmp_path / f"{plot.__name__}.png")
        again = plot(Y, other, names, tmp_path / f"{plot.__name__}_other.png")
        assert first.read_bytes().startswith(PNG) and first.read_bytes() == again.read_bytes()
        moved = P.copy()
        moved[1::4, 1] = rng.uniform(0, 1, 20)   # known cases' scores do change it
        assert plot(Y, moved, names, tmp_path / "moved.png").read_bytes() != first.read_bytes()
    marked = multi_decision_plot(Y, P, names, tmp_path / "marked.png", {"nodule": {"youden": 0.45}})
    assert marked.read_bytes() != (tmp_path / "multi_decision_plot.png").read_bytes()
    height, width = imread(marked).shape[:2]
    assert width > 2 * height                # three panels in a row


def test_multilabel_plots_refuse_mismatched_shapes_and_non_probabilities(tmp_path):
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    with pytest.raises(EvaluationError, match=r"multi_decision_plot: labels have shape \(4, 2\) and scores \(4, 3\)"):
        multi_decision_plot(Y, np.full((4, 3), 0.5), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(EvaluationError, match="multi_reliability_plot: .*probabilities in"):
        multi_reliability_plot(Y, Y * 4.0 - 2, ["a", "b"], tmp_path / "x.png")
    with pytest.raises(EvaluationError, match="NaN"):
        multi_decision_plot(Y, np.where(Y == 1, np.nan, 0.2), ["a", "b"], tmp_path / "x.png")


def test_decision_curve_keeps_every_marked_threshold_inside_the_plot():
    from matplotlib.figure import Figure

    from tfmed.evaluation.decision import net_benefit
    from tfmed.evaluation.plots import _draw_decision

    y = np.repeat([0, 1], [70, 30])
    s = np.concatenate([np.linspace(0.1, 0.5, 50), np.linspace(0.92, 0.99, 20), np.linspace(0.3, 1.0, 30)])
    points = {"youden": 0.7, "high_specificity": 0.95}
    # harmful there: below the usual floor (-0.05 - 0.1 x prevalence), the second even below -1
    assert -1 < net_benefit(y, s, 0.7) < -0.08 and net_benefit(y, s, 0.95) < -1
    axes = Figure().subplots()
    _draw_decision(axes, y, s, points, "decision")
    bottom, top = axes.get_ylim()
    marks = {line.get_label(): line.get_ydata()[0] for line in axes.get_lines()
             if line.get_label().startswith(tuple(points))}
    assert len(marks) == 2 and all(bottom <= value <= top for value in marks.values())
    assert marks["youden (t=0.7)"] == pytest.approx(net_benefit(y, s, 0.7))   # drawn where it is
    assert bottom == -1.0 and "high_specificity (t=0.95; net benefit -2.06, below the plot)" in marks


def test_training_curves(tmp_path):
    history = {"loss": [0.7, 0.6, 0.5, 0.45], "val_loss": [0.72, 0.65, 0.6, 0.62],
               "auc": [0.6, 0.7, 0.8, 0.85], "val_auc": [0.58, 0.66, 0.75, 0.74], "lr": [1e-3] * 4}
    with_stage = training_curves(history, tmp_path / "curves.png", stage_boundaries=[2])
    without = training_curves(history, tmp_path / "curves_plain.png")
    assert with_stage.read_bytes().startswith(PNG)
    assert with_stage.read_bytes() != without.read_bytes()
    with pytest.raises(EvaluationError, match="outside 1..4"):
        training_curves(history, tmp_path / "bad.png", stage_boundaries=[5])
    with pytest.raises(EvaluationError, match="history is empty"):
        training_curves({}, tmp_path / "bad.png")


def test_plot_errors(tmp_path):
    with pytest.raises(EvaluationError, match="probabilities in"):
        reliability_plot([0, 1], [-2.0, 3.0], tmp_path / "x.png")
    with pytest.raises(EvaluationError, match="only one class"):
        roc_plot([1, 1], [0.2, 0.3], tmp_path / "x.png")
    with pytest.raises(EvaluationError, match="does not match"):
        confusion_plot([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")
    with pytest.raises(EvaluationError, match="lacks key"):
        confusion_plot({"tp": 1}, ["a", "b"], tmp_path / "x.png")


def test_binary_report(tmp_path, binary_data):
    y, s = binary_data
    y_val, s_val, y_test, s_test = y[:60], s[:60], y[60:], s[60:]
    points = {"youden": 0.5, "high_sensitivity": 0.25}
    test_metrics = binary_metrics(y_test, s_test, 0.5)
    plots = {"roc": roc_plot(y_test, s_test, tmp_path / "roc.png", points),
             "confusion": confusion_plot(test_metrics["confusion_matrix"], ["normal", "pneumonia"],
                                         tmp_path / "cm.png")}
    context = ReportContext(
        title="PneumoniaMNIST <EfficientNet-Lite0>", task="binary", source="pneumoniamnist_trainval.npz",
        counts={"train": {"normal": 300, "pneumonia": 700}, "val": {"normal": 30, "pneumonia": 70},
                "test": {"normal": 40, "pneumonia": 80}},
        model={"backbone": "efficientnet_lite0", "mode": "svm", "taps": ["middle"]},
        metrics={"val": binary_metrics(y_val, s_val, 0.5), "test": test_metrics},
        operating_points=operating_point_metrics(y_test, s_test, points),
        plots=plots, training_history={"loss": [0.7, 0.5, 0.4], "val_auc": [0.7, 0.8, 0.85]},
        stage_boundaries=[1], notes=["threshold chosen on validation, applied unchanged to test"],
        excluded=[{"row": 17, "image": "img_017.png", "reason": "empty file"}])
    page = write_report(tmp_path / "run", context)
    assert page == tmp_path / "run" / "report.html"
    text = page.read_text(encoding="utf-8")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 3  # roc, confusion, training curves drawn from the history
    assert base64.b64decode(images[0]) == plots["roc"].read_bytes()
    assert (tmp_path / "run" / "training_curves.png").is_file()
    # No external references: every src/href is inline data; no scripts or stylesheets.
    assert all(ref.startswith("data:") for ref in re.findall(r"(?:src|href)=['\"]([^'\"]*)", text))
    assert "<script" not in text and "<link" not in text and "http" not in text
    assert "PneumoniaMNIST &lt;EfficientNet-Lite0&gt;" in text  # escaped
    auc = roc_auc_score(y_test, s_test)
    assert f"{auc:.3f}" in text
    sensitivity_at_low = np.mean(s_test[y_test == 1] >= 0.25)
    assert f"{100 * sensitivity_at_low:.1f}%" in text
    assert "<td>1000</td>" in text and "<td>1220</td>" in text  # train total and grand total
    assert "img_017.png" in text and "empty file" in text
    assert "threshold chosen on validation, applied unchanged to test" in text
    assert "efficientnet_lite0" in text
    assert "ROC AUC by DeLong's method" in text
    # the methods sentence names each interval's method, the separation bound of any AUC of 1 or 0 included
    assert ("the farther of DeLong's, normal on the logit scale, and Newcombe's score interval; an AUC of 1 or 0, "
            "of a split, class, label or subgroup, bounded by the binormal chance of complete separation") in text
    assert "<figcaption>ROC curve (test) with the operating points chosen on the val split" in text
    # a k-fold run chose them on its pooled out-of-fold scores, and its report says so wherever it names them
    context.thresholds_chosen_on = "the pooled out-of-fold scores"
    text = write_report(tmp_path / "kfold", context).read_text(encoding="utf-8")
    assert "<figcaption>ROC curve (test) with the operating points chosen on the pooled out-of-fold scores" in text
    assert "Operating thresholds were chosen on the pooled out-of-fold scores and applied unchanged" in text
    assert ("Thresholds were chosen on the pooled out-of-fold scores and applied unchanged to the test split, "
            "where these values were measured") in text
    assert "validation" not in text.replace("threshold chosen on validation", "") and "val split" not in text
    context.thresholds_chosen_on = "the val split"
    # a run without a test split draws its plots on validation, and the captions say so
    context.operating_split, context.metrics = "val", {"val": context.metrics["val"]}
    text = write_report(tmp_path / "val_only", context).read_text(encoding="utf-8")
    assert "<figcaption>ROC curve (val) with" in text and "<figcaption>Confusion matrix (val)" in text
    assert "(test)" not in text
    # ... and says that its operating points are measured where they were chosen
    assert "Operating thresholds were chosen on the val split and measured on the same images (in-sample)" in text
    assert "applied unchanged to the val split" not in text
    # a fixed threshold is a preset, not a choice made on data
    context.operating_points = {**context.operating_points, "fixed": context.operating_points["youden"]}
    text = write_report(tmp_path / "fixed", context).read_text(encoding="utf-8")
    assert "the val split (the fixed point is the preset 0.5, not chosen on data) and measured on the same" in text


def test_kfold_sentence_says_where_each_threshold_came_from_in_whole_sentences():
    from tfmed.run.reporting import kfold_sentence

    kfold = {"folds": 3, "final": "refit", "auc_mean": 0.694, "auc_sd": 0.027, "pooled_oof_auc": 0.683,
             "pooled_oof_auc_ci": [0.613, 0.746]}
    start = ("3-fold cross-validation over train+val: AUC 0.694 +- 0.027 (mean +- sd over folds); pooled "
             "out-of-fold AUC 0.683 (0.613-0.746).")
    refit = " The final model was refit on train+val, and it was measured once on test."
    test = {"test": {}}
    # multiclass with two coarse classes: argmax decides the fine classes, the coarse thresholds were chosen
    coarse = {"classes": ["benign", "malignant"], "task": "binary", "thresholds": {"youden": 0.55}}
    assert kfold_sentence({"kfold": kfold, "thresholds": {}, "coarse": coarse, "splits": test}) == \
        start + " The coarse thresholds were chosen on the pooled out-of-fold scores." + refit
    assert kfold_sentence({"kfold": kfold, "thresholds": {}, "splits": test}) == start + refit
    binary = {"kfold": kfold, "thresholds": {"youden": 0.4}, "splits": test}
    assert kfold_sentence(binary) == start + " Thresholds were chosen on the pooled out-of-fold scores." + refit
    bagged = {**binary, "kfold": {**kfold, "final": "bag"}}
    assert kfold_sentence(bagged).endswith(". The 3 fold models were kept, and their mean score was measured once "
                                           "on test.")
    assert kfold_sentence({**binary, "splits": {}}).endswith(", and it was not measured (no test split).")


def test_multiclass_and_multilabel_reports(tmp_path):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 60)
    proba = np.eye(3)[y] * 0.6 + rng.uniform(0, 0.5, (60, 3))
    proba /= proba.sum(axis=1, keepdims=True)
    metrics = evaluate("multiclass", y, proba, class_names=["normal", "bacterial", "viral"])
    text = write_report(tmp_path / "mc", ReportContext(title="mc", task="multiclass",
                                                       metrics={"test": metrics})).read_text()
    lo, hi = metrics["macro_auc_ci"]
    assert "viral" in text and f"{metrics['macro_auc']:.3f} ({lo:.3f}-{hi:.3f})" in text
    assert "Macro AUC (CI)" in text and "structural components" in text
    Y = (rng.uniform(0, 1, (60, 2)) < 0.4).astype(int)
    P = np.clip(Y * 0.5 + rng.uniform(0, 0.5, (60, 2)), 0, 1)
    metrics = evaluate("multilabel", Y, P, [0.5, 0.5], ["effusion", "nodule"])
    text = write_report(tmp_path / "ml", ReportContext(title="ml", task="multilabel",
                                                       metrics={"test": metrics})).read_text()
    assert "nodule" in text and f"{roc_auc_score(Y, P, average='micro'):.3f}" in text
    lo, hi = metrics["macro_auc_ci"]
    assert f"{metrics['macro_auc']:.3f} ({lo:.3f}-{hi:.3f})" in text and "over all labels" in text


def test_report_names_the_separation_bound_of_a_perfect_auc(tmp_path):
    y = np.repeat([0, 1], [6, 4])
    metrics = binary_metrics(y, np.linspace(0.05, 0.95, 10), threshold=0.5)
    text = write_report(tmp_path / "perfect", ReportContext(title="perfect", task="binary",
                                                            metrics={"val": metrics})).read_text()
    lo, hi = metrics["ci"]["roc_auc"]
    assert metrics["roc_auc"] == 1.0 and 0.5 < lo < hi == 1.0
    assert f"1.000 ({lo:.3f}-1.000)" in text and "binormal chance of complete separation" in text


def test_report_lists_a_splits_note_once_not_again_for_each_operating_point(tmp_path):
    y = np.repeat([0, 1], [6, 4])
    metrics = binary_metrics(y, np.linspace(0.05, 0.95, 10), threshold=0.5)
    points = operating_point_metrics(y, np.linspace(0.05, 0.95, 10), {"youden": 0.5, "fixed": 0.3})
    text = write_report(tmp_path / "points", ReportContext(title="points", task="binary", metrics={"val": metrics},
                                                           operating_points=points)).read_text()
    assert text.count("only 4 positive cases") == 1 and text.count("only 6 negative cases") == 1


def test_report_errors(tmp_path):
    with pytest.raises(EvaluationError, match="'roc' file .*missing.png does not exist"):
        write_report(tmp_path, ReportContext(title="t", task="binary", plots={"roc": tmp_path / "missing.png"}))
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(EvaluationError, match="not a PNG"):
        write_report(tmp_path, ReportContext(title="t", task="binary", plots={"roc": fake}))
    with pytest.raises(EvaluationError, match="ReportContext"):
        write_report(tmp_path, {"title": "t"})


def test_predictions_csv_round_trips(tmp_path):
    ids = ["img_1", "img_2", "img_3"]
    scores = np.array([0.12345678901, 0.5, 0.99])
    path = write_predictions(tmp_path / "pred.csv", ids, ["p1", "p1", "p2"], [0, 1, 1], scores, [0, 1, 1])
    frame = pd.read_csv(path, dtype={"id": str, "patient": str})
    assert list(frame.columns) == ["id", "patient", "label", "score", "decision"]
    assert frame["id"].tolist() == ids and frame["patient"].tolist() == ["p1", "p1", "p2"]
    np.testing.assert_array_equal(frame["score"].to_numpy(), scores)
    assert frame["decision"].tolist() == [0, 1, 1]
    # multilabel: one label/score/decision column per name; no patients known
    Y = np.array([[1, 0], [0, 1], [1, 1]])
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6]])
    path = write_predictions(tmp_path / "ml.csv", ids, None, Y, P, (P >= 0.5).astype(int),
                             class_names=["effusion", "nodule"])
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["id", "patient", "label:effusion", "label:nodule", "score:effusion",
                                   "score:nodule", "decision:effusion", "decision:nodule"]
    np.testing.assert_array_equal(frame[["score:effusion", "score:nodule"]].to_numpy(), P)
    assert frame["patient"].isna().all()
    # multiclass: class-index label and decision, one score column per class
    path = write_predictions(tmp_path / "mc.csv", ids, None, [0, 2, 1], np.eye(3), [0, 1, 2],
                             class_names=["a", "b", "c"])
    assert list(pd.read_csv(path).columns) == ["id", "patient", "label", "score:a", "score:b", "score:c",
                                               "decision"]
    with pytest.raises(EvaluationError, match="scores has 2 entries but ids has 3"):
        write_predictions(tmp_path / "bad.csv", ids, None, [0, 1, 1], [0.1, 0.2], [0, 1, 1])
    with pytest.raises(EvaluationError, match="2 class names for 3 score columns"):
        write_predictions(tmp_path / "bad.csv", ids, None, [0, 1, 1], np.eye(3), [0, 1, 2], ["a", "b"])


def test_metrics_json(tmp_path):
    metrics = {"test": {"roc_auc": np.float64(0.91), "ppv": float("nan"), "cm": np.array([[1, 2], [3, 4]])}}
    path = write_metrics_json(tmp_path / "metrics.json", metrics)
    assert json.loads(path.read_text()) == {"test": {"roc_auc": 0.91, "ppv": None, "cm": [[1, 2], [3, 4]]}}
    with pytest.raises(EvaluationError, match="metrics.json"):
        write_metrics_json(tmp_path / "metrics.json", {"model": object()})


def test_docstring_examples_run():
    import doctest

    from tfmed.evaluation import plots, report

    for module in (plots, report):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_the_console_summary_heads_the_auc_interval_with_its_level():
    from tfmed.evaluation import binary_metrics, evaluate
    from tfmed.run.reporting import summary_text

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = np.clip(0.4 * y + 0.6 * rng.random(80), 0, 1)
    for level in (0.8, 0.95):
        point = binary_metrics(y, s, 0.5, ci_level=level)
        text = summary_text({"task": "binary", "splits": {"val": {"youden": point}}, "images": {"val": 80}})
        assert f"AUC ({level:.0%} CI)" in text.splitlines()[0]
        assert f"{point['ci']['roc_auc'][0]:.3f}" in text
        proba = np.c_[1 - s, s]
        multiclass = evaluate("multiclass", y, proba, class_names=["a", "b"], ci_level=level)
        assert f"AUC ({level:.0%} CI)" in summary_text({"task": "multiclass", "splits": {"val": multiclass},
                                                        "images": {"val": 80}})


def test_the_plots_draw_the_numbers_they_are_given(tmp_path, monkeypatch):
    """What is drawn, read from each figure before it is saved: operating points, matrix orientation, stages."""
    from tfmed.evaluation import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or Path(path))
    y, s = np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.4, 0.6, 0.6, 0.8, 0.9])
    plots.roc_plot(y, s, tmp_path / "roc.png", {"youden": 0.6})
    legend = [text.get_text() for text in figures[-1].axes[0].get_legend().get_texts()]
    assert "sens 1.00, spec 0.67" in legend[-1]  # scores at or above 0.6 are positive
    plots.confusion_plot({"tn": 5, "fp": 1, "fn": 2, "tp": 4}, ["normal", "pneumonia"], tmp_path / "cm.png")
    assert np.asarray(figures[-1].axes[0].images[0].get_array()).tolist() == [[5, 1], [2, 4]]  # rows: true class
    plots.training_curves({"loss": [1, 0.8, 0.7, 0.6]}, tmp_path / "curves.png", stage_boundaries=[2])
    stage = [line for line in figures[-1].axes[0].get_lines() if line.get_label() == "new stage"][0]
    assert stage.get_xdata()[0] == 2.5  # between epochs 2 and 3
    # a multilabel curve leaves out the cases whose label is unknown (-1): on what is known, both separate
    unknown = np.array([[1, 0], [0, 1], [-1, 1], [0, 0], [1, -1]])
    plots.multi_roc_plot(unknown, np.array([[.9, .2], [.3, .8], [.95, .6], [.2, .1], [.7, .99]]), ["a", "b"],
                         tmp_path / "unknown.png")
    legend = [text.get_text() for text in figures[-1].axes[0].get_legend().get_texts()]
    assert len(legend) == 2 and all("1.000" in entry for entry in legend), legend


def test_rows_that_share_an_image_are_told_apart_in_predictions_csv(tmp_path):
    """Several lesions of one volume: each line of predictions.csv names its own row."""
    from types import SimpleNamespace

    from tfmed.data.table import ImageTable
    from tfmed.run.reporting import write_predictions_csv

    frame = pd.DataFrame({"image": ["ct/vol1.nii.gz", "ct/vol1.nii.gz", "ct/vol2.nii.gz"], "row": [2, 3, 4],
                          "patient_id": ["p1", "p1", "p2"], "label": [0, 1, 1]})
    model = SimpleNamespace(classes=["benign", "malignant"], decide=lambda s: (s >= 0.5).astype(int),
                            coarse_columns=lambda s: {})
    write_predictions_csv(tmp_path / "p.csv", model, {"test": ImageTable(frame, model.classes, "binary")},
                          {"test": np.array([0.2, 0.7, 0.9])})
    ids = pd.read_csv(tmp_path / "p.csv")["id"].tolist()
    assert len(set(ids)) == 3 and ids[0] != ids[1] and all("#row" in i for i in ids[:2]) and "#row" not in ids[2]


@pytest.mark.parametrize("method, marked", [("youden", {"youden", "high_sensitivity"}),
                                            ("fixed", {"youden", "high_sensitivity", "fixed"})])
def test_the_curves_mark_the_preset_threshold_only_when_it_is_the_runs_decision(tmp_path, monkeypatch, method,
                                                                               marked):
    """tb_xray decides at the preset 0.5 (after recalibration): its ROC, PR and decision curves show that point."""
    from types import SimpleNamespace

    from tfmed.data.table import ImageTable
    from tfmed.run import reporting

    drawn = {}
    for plot in ("roc_plot", "pr_plot", "decision_plot"):
        monkeypatch.setattr(reporting, plot, lambda y, s, path, points, plot=plot, **kw: drawn.update(
            {plot: set(points)}) or Path(path))
    y = np.array([0, 0, 0, 1, 1, 1])
    model = SimpleNamespace(classes=["normal", "tb"], thresholds={"youden": 0.6, "high_sensitivity": 0.3,
                                                                  "fixed": 0.5})
    table = ImageTable(pd.DataFrame({"image": [f"{i}.png" for i in range(6)], "label": y}), model.classes, "binary")
    point = {"confusion_matrix": {"tn": 3, "fp": 0, "fn": 1, "tp": 2}, "beneficial_thresholds": [0.1, 0.9]}
    metrics = {"task": "binary", "threshold_method": method, "splits": {"val": {method: point}}}
    reporting.make_plots(tmp_path, model, table, np.array([0.1, 0.4, 0.55, 0.5, 0.8, 0.9]), metrics, "val")
    assert drawn == {"roc_plot": marked, "pr_plot": marked, "decision_plot": marked}


def test_the_report_shows_ten_excluded_rows_per_problem_and_counts_the_rest(tmp_path):
    """CheXpert's frontal_only leaves out about 32,000 lateral views: one table row each made a 7 MiB report."""
    lateral = [{"image": f"p{r}/view2_lateral.jpg", "row": r, "problem": "skipped: lateral view",
                "fix": "set data.frontal_only: false"} for r in range(2, 40)]
    missing = [{"image": "p9/view1_frontal.jpg", "row": 40, "problem": "file not found", "fix": "check the path"}]
    text = write_report(tmp_path / "r", ReportContext(title="cx", task="binary", excluded=lateral + missing)
                        ).read_text(encoding="utf-8")
    assert "Excluded rows (39)" in text
    assert text.count("view2_lateral.jpg") == 10 and "p11/view2_lateral.jpg" in text and "p12/" not in text
    assert "and 28 more row(s): skipped: lateral view (excluded_rows.csv lists every one)" in text
    assert "p9/view1_frontal.jpg" in text and "more row(s): file not found" not in text
