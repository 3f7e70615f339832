"""Write a run's (or an evaluation's) outputs: metrics.json, predictions.csv, plots, report.html.

The metric computations live in :mod:`tfmed.evaluation`; this module lays
them out on disk for one run.

Example:
    >>> rows = headline_rows({"task": "binary", "threshold_method": "youden", "splits": {}})
    >>> rows
    []
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.data.near_duplicates import GROUP_COLUMN, twin_note
from tfmed.data.table import ImageTable
from tfmed.evaluation.comparison import comparison_sentences
from tfmed.evaluation.metrics import to_jsonable
from tfmed.evaluation.plots import (confusion_plot, decision_plot, multi_decision_plot, multi_reliability_plot,
                                   multi_roc_plot, pr_plot, reliability_plot, roc_plot, subgroup_plot)
from tfmed.evaluation.report import (OUT_OF_FOLD, ReportContext, value_with_interval, write_metrics_json,
                                    write_predictions, write_report)
from tfmed.evaluation.subgroups import ATTRIBUTE_WORDS

ARGMAX_DECISION = "a multiclass model decides for its most probable class"
THRESHOLD_NOTE = ("Thresholds were chosen on the validation split only and applied unchanged to the "
                  "test split; test data never influenced the model, its hyper-parameters or its thresholds.")
NO_TEST_NOTE = ("Thresholds were chosen on the validation split. This run has no test split: score held-out "
                "data with tfmed evaluate --data.")
FIXED_NOTE = ("The run decides at the preset threshold 0.5 (evaluation.threshold: fixed), which was not chosen on "
              "any data; the other operating points are shown beside it.")


def primary_metrics(metrics: dict, split: str) -> dict:
    """The metrics of ``split`` at the run's chosen operating point."""
    entry = metrics["splits"][split]
    if metrics["task"] == "multiclass":
        return entry
    return entry[metrics["threshold_method"]]


def headline_rows(metrics: dict) -> list[dict]:
    """Rows for the console summary: split, point, AUC with CI, sens/spec/PPV/NPV."""
    rows = []
    for split, entry in metrics["splits"].items():
        points = {"(argmax)": entry} if metrics["task"] == "multiclass" else entry
        for point, m in points.items():
            if metrics["task"] == "binary":
                auc = value_with_interval(m.get("roc_auc"), m.get("ci", {}).get("roc_auc"))
                rows.append({"split": split, "point": point, "auc": auc,
                             **{k: _fmt(m.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")}})
            else:
                auc = f"macro {value_with_interval(m.get('macro_auc'), m.get('macro_auc_ci'))}"
                rows.append({"split": split, "point": point, "auc": auc,
                             "sensitivity": "", "specificity": "", "ppv": "", "npv": ""})
    return rows


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_predictions_csv(path: Path, model, parts: dict[str, ImageTable], scores: dict) -> Path:
    """One CSV with a ``split`` column: id, patient, label, score, decision per image.

    The id is the image path; rows sharing one (several lesions of one volume)
    get ``#row N`` (their source row) appended, so each line names one row.
    """
    frames = []
    with tempfile.TemporaryDirectory() as scratch:
        for split, table in parts.items():
            if split not in scores:
                continue
            labels = table.labels()
            images = table.frame["image"].astype(str)
            shared = images.duplicated(keep=False).to_numpy()
            ids = [f"{image}#row {row}" if repeat else image
                   for image, row, repeat in zip(images, table.frame["row"], shared)]
            out = write_predictions(Path(scratch) / f"{split}.csv", ids,
                                    table.frame["patient_id"].tolist(), labels, scores[split],
                                    model.decide(scores[split]), class_names=model.classes)
            frame = pd.read_csv(out)
            frame.insert(0, "split", split)
            for name, values in model.coarse_columns(scores[split]).items():
                frame[name] = values
            frames.append(frame)
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return path


def make_plots(out: Path, model, table: ImageTable, scores: np.ndarray, metrics: dict, split: str) -> dict:
    """The split's ROC (operating points marked), PR, confusion and reliability plots; with a class hierarchy of
    two coarse classes also the coarse ROC (``roc_coarse``) at the coarse operating points; with subgroups in the
    split their AUCs (``subgroups``)."""
    groups = {attribute: splits[split] for attribute, splits in metrics.get("subgroups", {}).items()
              if split in splits}
    plots = {"subgroups": subgroup_plot(groups, out / f"subgroups_{split}.png", title=f"AUC by subgroup ({split})")
             } if groups else {}
    return {**_curves(out, model, table, scores, metrics, split), **plots}


def _curves(out: Path, model, table: ImageTable, scores: np.ndarray, metrics: dict, split: str) -> dict:
    y = table.labels()
    if metrics["task"] == "binary":
        chosen = primary_metrics(metrics, split)
        ci = chosen.get("ci", {}).get("roc_auc")
        points = _marked_points(model.thresholds, metrics["threshold_method"])
        confusion = {"confusion": confusion_plot(chosen["confusion_matrix"], model.classes,
                                                 out / f"confusion_{split}.png",
                                                 title=f"Confusion matrix ({split}, {metrics['threshold_method']})")}
        if len(np.unique(y)) < 2:  # e.g. another hospital's positives only: no curve (the metrics' notes say why)
            return confusion
        return {
            "roc": roc_plot(y, scores, out / f"roc_{split}.png", points, title=f"ROC ({split})",
                            auc_ci=ci if ci and None not in ci else None),
            "pr": pr_plot(y, scores, out / f"pr_{split}.png", points, title=f"Precision-recall ({split})"),
            **confusion,
            **({"reliability": reliability_plot(y, scores, out / f"reliability_{split}.png",
                                                title=f"Calibration ({split})"),
                "decision": decision_plot(y, scores, out / f"decision_{split}.png", points,
                                          title=f"Decision curve ({split})")} if _probabilities([chosen]) else {}),
        }
    per = "roc_per_class" if metrics["task"] == "multiclass" else "roc_per_label"  # no operating points on them
    plots = {per: multi_roc_plot(y, scores, model.classes, out / f"roc_{split}.png", title=f"ROC curves ({split})")}
    if metrics["task"] == "multiclass":
        plots["confusion"] = confusion_plot(metrics["splits"][split]["confusion_matrix"], model.classes,
                                            out / f"confusion_{split}.png", title=f"Confusion matrix ({split})")
    labelled = primary_metrics(metrics, split) if metrics["task"] == "multilabel" else None
    if labelled and _probabilities(labelled["per_label"].values()):
        method = metrics["threshold_method"]
        chosen = {label: {method: t} for label, t in labelled["thresholds"].items()}
        plots["reliability"] = multi_reliability_plot(y, scores, model.classes, out / f"reliability_{split}.png",
                                                      title=f"Calibration per label ({split})")
        plots["decision"] = multi_decision_plot(y, scores, model.classes, out / f"decision_{split}.png", chosen,
                                                title=f"Decision curves per label ({split})")
    coarse = metrics.get("coarse")
    if coarse and coarse["task"] == "binary" and split in coarse["splits"]:  # fine classes, a binary answer
        plots.update(_coarse_curves(out, model, y, scores, metrics, split))
    return plots


def _coarse_curves(out: Path, model, y: np.ndarray, scores: np.ndarray, metrics: dict, split: str) -> dict:
    """A binary answer from fine classes: its ROC at the coarse operating points, and for probabilities its
    calibration and decision curve."""
    negative, positive = metrics["coarse"]["classes"]
    chosen = metrics["coarse"]["splits"][split][metrics["threshold_method"]]
    ci = chosen.get("ci", {}).get("roc_auc")
    coarse_scores, _ = model.coarse(scores)
    coarse_labels = model.class_hierarchy.coarse_labels(y, fine_classes=model.classes)
    points = _marked_points(model.coarse_thresholds, metrics["threshold_method"])
    answer = f"{positive} against {negative}"
    plots = {"roc_coarse": roc_plot(coarse_labels, coarse_scores, out / f"roc_coarse_{split}.png", points,
                                    title=f"ROC, {answer} ({split})", auc_ci=ci if ci and None not in ci else None)}
    if _probabilities([chosen]):
        plots["reliability_coarse"] = reliability_plot(coarse_labels, coarse_scores,
                                                       out / f"reliability_coarse_{split}.png",
                                                       title=f"Calibration, {answer} ({split})")
        plots["decision_coarse"] = decision_plot(coarse_labels, coarse_scores, out / f"decision_coarse_{split}.png",
                                                 points, title=f"Decision curve, {answer} ({split})")
    return plots


def _marked_points(thresholds: dict, method: str) -> dict:
    """The operating points a curve marks: the preset 0.5 (``fixed``) only when it is the run's decision."""
    return {name: value for name, value in thresholds.items() if name != "fixed" or method == "fixed"}


def _probabilities(binary_entries) -> bool:
    """Whether the scores behind these binary metrics are probabilities (their decision figures exist)."""
    return any(entry.get("beneficial_thresholds") is not None for entry in binary_entries)


def thresholds_chosen_on(config, provenance: dict | None = None, whose: str = "the") -> str:
    """Where a run's thresholds were chosen, as report text: its val split, or its pooled out-of-fold scores
    (``split.method: kfold``); for a recalibrated run (``provenance``: its recalibrated_from.json) the
    images it was recalibrated on (its val split), or, when it kept them, where that run had them from.
    ``whose`` names the run, e.g. "that run's".

    Example:
        >>> from tfmed.config import ExperimentConfig
        >>> kfold = ExperimentConfig.from_dict({"split": {"method": "kfold"}})
        >>> thresholds_chosen_on(kfold), thresholds_chosen_on(kfold, {"thresholds": "chosen"}, "that run's")
        ('the pooled out-of-fold scores', "that run's val split (the images it was recalibrated on)")
        >>> thresholds_chosen_on(kfold, {"thresholds": "kept", "run": "runs/tb/1"})
        'the pooled out-of-fold scores of runs/tb/1 (carried over when recalibrated)'
    """
    provenance = provenance or {}
    if provenance.get("thresholds") == "chosen":
        return f"{whose} val split (the images it was recalibrated on)"
    if provenance.get("thresholds") == "kept":
        origin = provenance.get("thresholds_chosen_on") or thresholds_chosen_on(config)
        run = provenance.get("run") or "the run it was recalibrated from"
        return f"{origin} of {run} (carried over when recalibrated)"
    return f"{whose} pooled out-of-fold scores" if config.split.method == "kfold" else f"{whose} val split"


def write_outputs(out: Path, *, title: str, source: str, model, parts: dict[str, ImageTable],
                  scores: dict, metrics: dict, notes: list[str], excluded: list[dict] | None = None,
                  history: dict | None = None, stage_boundaries: list[int] | None = None,
                  model_facts: dict | None = None, extra_plots: dict | None = None,
                  member_scores: dict | None = None, chosen_on: str = "the val split") -> Path:
    """metrics.json, predictions.csv, plots and report.html into ``out``; ``extra_plots`` (name -> PNG)
    are shown after the evaluation plots. With ``member_scores`` (split -> member -> scores, from a
    model made of members) also ``member_scores.csv``; ``chosen_on``: where the model's thresholds were
    chosen (see :func:`thresholds_chosen_on`)."""
    out = Path(out)
    if member_scores:
        write_member_scores_csv(out / "member_scores.csv", parts, member_scores)
    write_metrics_json(out / "metrics.json", metrics)
    plots, report_split = {}, "test"
    if scores:  # a k-fold run without a test split has out-of-fold scores only (oof_predictions.csv)
        write_predictions_csv(out / "predictions.csv", model, parts, scores)
        report_split = "test" if "test" in scores else next(iter(scores))
        plots = make_plots(out, model, parts[report_split], scores[report_split], metrics, report_split)
    plots.update(extra_plots or {})
    context = ReportContext(
        title=title, task=metrics["task"], source=source, counts=metrics.get("counts", {}),
        images=metrics.get("images", {}), unknown_labels=metrics.get("unknown_labels", {}),
        model={**(model_facts or {"mode": model.mode, "backbone": model.backbone}),
               "test-time views": metrics.get("tta_views", 1)},
        metrics={split: primary_metrics(metrics, split) for split in metrics["splits"]},
        operating_points=(metrics["splits"][report_split] if metrics["task"] == "binary" and scores else {}),
        thresholds_chosen_on=chosen_on, operating_split=report_split,
        plots={name: str(path) for name, path in plots.items()},
        training_history=history, stage_boundaries=list(stage_boundaries or []),
        notes=notes + (decision_sentences(metrics, report_split) if scores else []), excluded=excluded or [])
    write_report(out, context)
    return out / "report.html"


def write_member_scores_csv(path: Path, parts: dict[str, ImageTable], member_scores: dict) -> Path:
    """``member_scores.csv``: split, image and one column per ensemble member (a list per image, at full
    precision, for multiclass and multilabel scores).

    Example:
        >>> write_member_scores_csv(Path("out/member_scores.csv"), parts, {"test": {"a": scores}})  # doctest: +SKIP
    """
    frames = []
    for split, members in member_scores.items():
        frame = pd.DataFrame({"split": split, "image": parts[split].frame["image"].to_numpy()})
        for name, values in members.items():
            values = np.asarray(values)
            frame[name] = values if values.ndim == 1 else [str(v) for v in values.tolist()]  # full precision
        frames.append(frame)
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return path


def member_sentences(metrics: dict) -> list[str]:
    """The report's sentences comparing each member with the combination, split by split
    (``metrics["members"]``, from :func:`~tfmed.evaluation.comparison.compare_to_members`); none
    for a model without members.

    Example:
        >>> member_sentences({"members": {"test": {"a": {"auc": 0.9, "ensemble_auc": 0.95,
        ...                                                "difference": 0.05, "p_value": 0.01}}}})
        ['test: ensemble AUC 0.950 vs member a 0.900 (difference +0.050, paired DeLong p = 0.0100).']
        >>> member_sentences({})
        []
    """
    return [line for split, comparison in metrics.get("members", {}).items()
            for line in comparison_sentences(comparison, split)]


def coarse_sentences(metrics: dict) -> list[str]:
    """The report's sentences on the coarse classes of a class hierarchy (``metrics["coarse"]``, from
    :func:`~tfmed.run.experiment.coarse_metrics`); none without one.

    Example:
        >>> coarse_sentences({"threshold_method": "youden", "coarse": {"classes": ["non_tb", "tb"], "task": "binary",
        ...     "fine": {"non_tb": ["healthy", "sick"], "tb": ["tb_active"]}, "thresholds": {"youden": 0.4},
        ...     "splits": {"test": {"youden": {"roc_auc": 0.9, "ci": {"roc_auc": [0.8, 0.95]},
        ...                                    "sensitivity": 0.75, "specificity": 0.8}}}}})[1]
        'test: tb against non_tb AUC 0.900 (0.800-0.950), sensitivity 0.750 and specificity 0.800 at the youden threshold.'
    """
    coarse = metrics.get("coarse")
    if not coarse:
        return []
    groups = "; ".join(f"{name} = {' + '.join(fine)}" for name, fine in coarse["fine"].items())
    lines = [f"Coarse classes, each the sum of its fine classes' probabilities (Esteva et al. 2017): {groups}."]
    figures = dict(coarse["splits"])
    if "out_of_fold" in coarse:
        figures["pooled out-of-fold"] = coarse["out_of_fold"]
    for split, entry in figures.items():
        if coarse["task"] == "binary":
            m = entry[metrics["threshold_method"]]
            negative, positive = coarse["classes"]
            lines.append(f"{split}: {positive} against {negative} AUC "
                         f"{value_with_interval(m.get('roc_auc'), m.get('ci', {}).get('roc_auc'))}, sensitivity "
                         f"{_fmt(m.get('sensitivity'))} and specificity {_fmt(m.get('specificity'))} at the "
                         f"{metrics['threshold_method']} threshold.")
        else:
            auc = value_with_interval(entry.get("macro_auc"), entry.get("macro_auc_ci"))
            lines.append(f"{split}: coarse macro AUC {auc}, accuracy {_fmt(entry.get('accuracy'))}.")
    return lines


def decision_sentences(metrics: dict, split: str) -> list[str]:
    """The report's sentences on a binary model's decision curve and calibration line in ``split`` (see
    :mod:`tfmed.evaluation.decision`); none for other tasks or scores that are not probabilities.

    Example:
        >>> m = {"net_benefit": 0.21, "net_benefit_treat_all": 0.12, "threshold": 0.31, "n_positive": 12,
        ...      "n_negative": 88, "beneficial_thresholds": [[0.11, 0.8]], "calibration_intercept": -0.1, "calibration_slope": 0.85}
        >>> lines = decision_sentences({"task": "binary", "threshold_method": "youden",
        ...                             "splits": {"test": {"youden": m}}}, "test")
        >>> lines[0]
        'Decision curve (test): the net benefit of acting on the model beats acting on every case and on none at threshold probabilities 0.11-0.80; at the youden threshold (0.310) it is 0.210, against 0.120 for acting on every case.'
        >>> lines[1][:56]
        'Calibration (test): slope 0.850 and intercept -0.100 (1 '
    """
    if metrics["task"] != "binary" or split not in metrics["splits"]:
        return []
    m = metrics["splits"][split][metrics["threshold_method"]]
    if m.get("beneficial_thresholds") is None or not (m.get("n_positive") and m.get("n_negative")):
        return []  # no decision curve for images of one class: acting on every case always wins there
    ranges = ", ".join(f"{lo:.2f}-{hi:.2f}" if hi > lo else f"{lo:.2f}" for lo, hi in m["beneficial_thresholds"])
    where = f"at threshold probabilities {ranges}" if ranges else "at no threshold probability"
    line = (f"Decision curve ({split}): the net benefit of acting on the model beats acting on every case and on "
            f"none {where}")
    if m.get("net_benefit") is not None:
        line += (f"; at the {metrics['threshold_method']} threshold ({m['threshold']:.3f}) it is "
                 f"{m['net_benefit']:.3f}, against {m['net_benefit_treat_all']:.3f} for acting on every case")
    lines = [line + "."]
    if m.get("calibration_slope") is not None:
        lines.append(f"Calibration ({split}): slope {m['calibration_slope']:.3f} and intercept "
                     f"{m['calibration_intercept']:.3f} (1 and 0 for probabilities that are right; a slope under 1 "
                     "means too extreme, an intercept under 0 too many cases predicted).")
    elif m.get("calibration_intercept") is not None:
        lines.append(f"Calibration ({split}): intercept {m['calibration_intercept']:.3f} (0 when as many cases are "
                     "predicted as occur); no slope, as the probabilities separate the classes (ties at the "
                     "boundary at most) or are all equal.")
    return lines


def recalibration_sentences(metrics: dict) -> list[str]:
    """The report's sentence on the recalibration of the probabilities (``metrics["recalibration"]``, from
    :func:`~tfmed.run.experiment.recalibrate`); none when the run asked for none.

    Example:
        >>> recalibration_sentences({"recalibration": {"method": "logistic", "fitted_on": "val", "applied": True,
        ...     "fit": {"method": "logistic", "task": "binary", "slope": [2.2], "intercept": [-0.6]},
        ...     "figures": {"val": {"before": {"log_loss": 0.128, "brier": 0.034},
        ...                         "after": {"log_loss": 0.083, "brier": 0.021}}}}})[0][:102]
        'Probabilities recalibrated on val (logistic: slope 2.200, intercept -0.600) before the thresholds were'
    """
    from tfmed.evaluation.recalibration import Recalibration

    r = metrics.get("recalibration")
    if not r:
        return []
    where = "the pooled out-of-fold scores" if r["fitted_on"] == OUT_OF_FOLD else r["fitted_on"]
    if not r["applied"]:
        return [f"The probabilities were not recalibrated ({r['method']} on {where}): {r['reason']}."]
    names = {OUT_OF_FOLD: "out-of-fold"}
    changes = "; ".join(f"{names.get(split, split)}{' (in-sample)' if split == r['fitted_on'] else ''} log loss "
                        f"{_fmt(f['before']['log_loss'])} to {_fmt(f['after']['log_loss'])}, Brier "
                        f"{_fmt(f['before']['brier'])} to {_fmt(f['after']['brier'])}" for split, f in r["figures"].items())
    fit = Recalibration.from_json(r["fit"]).describe()
    if r.get("thresholds") == "kept":  # tfmed recalibrate --keep-thresholds
        return [f"Probabilities recalibrated on {where} ({fit}); the thresholds were not chosen on them but "
                "carried over from the run, so every image is decided as the run decided it (a fixed threshold "
                f"applies to the recalibrated probabilities). {changes}."]
    if metrics.get("task") == "multiclass":
        return [f"Probabilities recalibrated on {where} ({fit}): each image keeps its predicted class, but a "
                "class's probabilities are renormalised image by image, so one-vs-rest and macro AUCs can differ a "
                f"little from those of the scores before. {changes}."]
    return [f"Probabilities recalibrated on {where} ({fit}) before the "
            "thresholds were chosen; the scores keep their order, so AUCs and the decisions at the thresholds chosen "
            f"there are as without it (a fixed threshold applies to the recalibrated probabilities). {changes}."]


def subgroup_sentences(metrics: dict) -> list[str]:
    """The report's sentences on each group of a split's subgroups (``metrics["subgroups"]``, from
    :func:`~tfmed.run.experiment.subgroup_metrics`): one per attribute and split; none without groups.

    Example:
        >>> line = subgroup_sentences({"subgroups": {"sex": {"val": {"groups": {"female": {"n": 20, "n_positive": 8,
        ...     "auc": 0.9, "auc_ci": [0.8, 0.95], "threshold": "youden", "sensitivity": 0.75, "specificity": 0.833}},
        ...     "sensitivity_p": 0.04, "specificity_p": None, "difference_test": "Fisher's exact test"}}}})[0]
        >>> line[:line.index(",")]
        'val by sex: female AUC 0.900 (0.800-0.950)'
        >>> line[line.index("Between"):]
        "Between the groups: sensitivity p = 0.0400, specificity p = n/a (Fisher's exact test)."
    """
    lines = []
    for attribute, splits in metrics.get("subgroups", {}).items():
        for split, figures in splits.items():
            parts = []
            for group, m in figures["groups"].items():
                text = f"{group} AUC {value_with_interval(m['auc'], m['auc_ci'])}, {m['n']} images"
                if "sensitivity" in m:
                    text += (f" ({m['n_positive']} positive), sensitivity {_fmt(m['sensitivity'])} and specificity "
                             f"{_fmt(m['specificity'])} at the {m['threshold']} threshold")
                parts.append(text)
            name = "pooled out-of-fold" if split == OUT_OF_FOLD else split
            line = f"{name} by {ATTRIBUTE_WORDS[attribute]}: " + "; ".join(parts) + "."
            if "difference_test" in figures:
                line += (f" Between the groups: sensitivity p = {_p(figures['sensitivity_p'])}, specificity p = "
                         f"{_p(figures['specificity_p'])} ({figures['difference_test']}).")
            lines.append(line)
    return lines


def write_run_outputs(run_dir: Path, config, model, parts: dict[str, ImageTable], scores: dict,
                      metrics: dict, member_scores: dict | None = None) -> Path:
    """All outputs of a training run (see :func:`write_outputs`); with an ensemble also
    ``member_scores.csv`` and, in the report, each member beside the combination; with
    ``report.explain`` an explanations section (overlays and their faithfulness figures)."""
    estimator = model.estimator
    history, boundaries = None, None
    if getattr(estimator, "history_", None):  # modes that train by epochs keep their history
        # per-epoch curves only; stage starts after the first become vertical lines
        history = {k: v for k, v in estimator.history_.items()
                   if k not in ("epoch", "stage", "stage_boundaries")}
        boundaries = [b for b in estimator.history_.get("stage_boundaries", []) if b > 0]
    weights = config.model_setting("weights")
    facts = {"mode": model.mode, "backbone": model.backbone,
             "weights": "none (random initialisation)" if weights is None else weights,
             "image size": config.preprocess.image_size, "intensity": config.preprocess.intensity,
             "threshold method": model.threshold_method if model.thresholds else ARGMAX_DECISION}
    facts.update(estimator.report_facts())
    if model.recalibration is not None:
        facts["recalibration"] = model.recalibration.describe()
    threshold_note = THRESHOLD_NOTE if "test" in metrics["splits"] else NO_TEST_NOTE
    notes = [threshold_note if model.thresholds else f"No threshold: {ARGMAX_DECISION}."]
    if model.thresholds and model.threshold_method == "fixed":
        notes.append(FIXED_NOTE)
    if metrics.get("test_origin") and "test" in metrics["splits"]:
        notes.append(test_origin_note(metrics["test_origin"]))
    notes += [twin_note(split, count, total) for split, count, total in _twins_in_train(metrics)]
    conflicts = (metrics.get("near_duplicates") or {}).get("groups_with_different_labels")
    if conflicts:
        notes.append(f"{conflicts} group(s) of near-identical images carry different labels ({GROUP_COLUMN} in "
                     "splits.csv; the run's log names them): the same picture under two labels is usually a "
                     "labelling error.")
    if "kfold" in metrics:
        notes.append(kfold_sentence(metrics))
        if model.thresholds:  # the sentence above says where they were chosen
            notes.remove(threshold_note)
    notes += (recalibration_sentences(metrics) + member_sentences(metrics) + subgroup_sentences(metrics)
              + coarse_sentences(metrics))
    extra_plots = {}
    if config.report.explain and scores:
        from tfmed.run.explain import explain_for_report

        overview, caption, sentence = explain_for_report(run_dir, model, parts, scores, config.report.explain_method)
        extra_plots[caption] = str(overview)
        notes.append(sentence)
    left_out = next(iter(parts.values())).excluded  # the rows the source left out, the same for every split
    excluded = to_jsonable(left_out.astype(str).to_dict("records")) if len(left_out) else []
    return write_outputs(run_dir, title=f"{config.name}", source=str(config.data.source), model=model,
                         parts=parts, scores=scores, metrics=metrics, notes=notes + [config.description.strip()]
                         if config.description else notes, excluded=excluded, history=history,
                         stage_boundaries=boundaries, model_facts=facts, extra_plots=extra_plots,
                         member_scores=member_scores, chosen_on=thresholds_chosen_on(config))


def kfold_sentence(metrics: dict) -> str:
    """The report's sentence on a k-fold run (``metrics["kfold"]``): its AUCs, where its thresholds (or a
    hierarchy's coarse thresholds) were chosen, and what was measured on test.

    Example:
        >>> line = kfold_sentence({"kfold": {"folds": 3, "final": "refit", "auc_mean": 0.8, "auc_sd": 0.05,
        ...     "pooled_oof_auc": 0.79}, "thresholds": {"youden": 0.4}, "splits": {"test": {}}})
        >>> print(line[line.index("Thresholds"):].replace(". ", ".\\n"))
        Thresholds were chosen on the pooled out-of-fold scores.
        The final model was refit on train+val, and it was measured once on test.
    """
    k = metrics["kfold"]
    pooled = value_with_interval(k["pooled_oof_auc"], k.get("pooled_oof_auc_ci"))
    line = (f"{k['folds']}-fold cross-validation over train+val: AUC {_fmt(k['auc_mean'])} +- {_fmt(k['auc_sd'])} "
            f"(mean +- sd over folds); pooled out-of-fold AUC {pooled}.")
    chosen = ("Thresholds" if metrics.get("thresholds")
              else "The coarse thresholds" if (metrics.get("coarse") or {}).get("thresholds") else None)
    if chosen:
        line += f" {chosen} were chosen on the pooled out-of-fold scores."
    refit = k.get("final", "refit") == "refit"
    kept = "The final model was refit on train+val, and it" if refit else \
        f"The {k['folds']} fold models were kept, and their mean score"
    measured = "was measured once on test" if "test" in metrics["splits"] else "was not measured (no test split)"
    return f"{line} {kept} {measured}."


def _twins_in_train(metrics: dict) -> list[tuple[str, int, int]]:
    """(split, images with a near-identical training image, images) for each scored split that has any."""
    twins = (metrics.get("near_duplicates") or {}).get("twins_in_train") or {}
    images = metrics.get("images") or {split: sum(counts.values()) for split, counts in metrics["counts"].items()}
    return [(split, count, images[split]) for split, count in twins.items() if split in metrics["splits"]]


def test_origin_note(origin: str) -> str:
    """The report's sentence on where a run's test split came from.

    Example:
        >>> test_origin_note("carved from the training images")[:58]
        'The test split is carved from the training images. Figures'
    """
    return (f"The test split is {origin}. Figures on an official test split from another collection (another "
            "hospital or scanner) are usually lower; compare only those with published tables.")


def summary_text(metrics: dict) -> str:
    """A short plain-text summary of the run's headline numbers (the AUC's interval at the run's level)."""
    entries = [entry for split in metrics["splits"].values()
               for entry in ([split] if metrics["task"] == "multiclass" else split.values())]
    level = next((entry["ci_level"] for entry in entries if entry.get("ci_level") is not None), 0.95)
    heading = f"AUC ({100 * level:g}% CI)"
    lines = [f"{'split':<6} {'point':<17} {heading:<22} {'sens':>6} {'spec':>6} {'PPV':>6} {'NPV':>6}"]
    for row in headline_rows(metrics):
        lines.append(f"{row['split']:<6} {row['point']:<17} {row['auc']:<22} {row['sensitivity']:>6} "
                     f"{row['specificity']:>6} {row['ppv']:>6} {row['npv']:>6}")
    if "recalibrated_from" in metrics and (metrics.get("recalibration") or {}).get("thresholds") == "kept":
        lines.append(f"val: the images the model of {metrics['recalibrated_from']} was recalibrated on, its "
                     "thresholds kept from that run (in-sample probabilities)")
    elif "recalibrated_from" in metrics:
        lines.append(f"val: the images the model of {metrics['recalibrated_from']} was recalibrated and its thresholds "
                     "chosen on (in-sample figures)")
    elif "val" in metrics["splits"] and not metrics.get("thresholds"):
        lines.append(f"val: the validation split (same collection as training); no threshold: {ARGMAX_DECISION}")
    elif "val" in metrics["splits"]:
        lines.append("val: the split the thresholds were chosen on (same collection as training)")
    if "test" in metrics["splits"] and metrics.get("test_origin"):
        lines.append(f"test: {metrics['test_origin']}")
    for split, count, total in _twins_in_train(metrics):
        lines.append(f"{split}: {count} of {total} images are near-identical to training images "
                     f"({GROUP_COLUMN} in splits.csv)")
    if "kfold" in metrics:
        k = metrics["kfold"]
        lines.append(f"{k['folds']}-fold pooled out-of-fold AUC "
                     f"{value_with_interval(k['pooled_oof_auc'], k.get('pooled_oof_auc_ci'))} "
                     "(train+val, in-distribution)")
    lines += coarse_sentences(metrics)
    return "\n".join(lines)
