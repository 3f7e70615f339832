"""Clinical metrics for binary, multi-class and multi-label predictions.

Every function returns plain JSON-ready data (floats, ints, lists, dicts,
None). A metric that is undefined on the given data (PPV with no positive
calls, AUC with one class present) is None and a sentence in ``notes``
says why; nothing raises for it.

Binary layout (:func:`binary_metrics`), every metric a plain float or None:

* counts: ``n``, ``n_positive``, ``n_negative``, ``prevalence``,
  ``threshold``, ``confusion_matrix`` = ``{"tn", "fp", "fn", "tp"}``;
* metrics: ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``, ``npv``,
  ``f1``, ``roc_auc``, ``pr_auc`` (average precision), ``brier``;
* for probabilities (:mod:`tfmed.evaluation.decision`): ``net_benefit`` and
  ``net_benefit_treat_all`` at the threshold, ``beneficial_thresholds`` (the
  threshold probabilities where the model beats acting on every case and on
  none), ``calibration_intercept`` and ``calibration_slope``;
* intervals: ``ci_level``; ``ci[name] = [lo, hi]`` for the five proportions
  (Wilson) and ``roc_auc`` (each end the farther of DeLong's interval on the
  logit scale and :func:`~tfmed.evaluation.intervals.newcombe_interval`; an
  AUC of 0 or 1 gets :func:`~tfmed.evaluation.intervals.separation_bound`);
  ``ci_method[name]`` says which; with
  ``bootstrap > 0`` also ``bootstrap_ci[name] = [lo, hi]`` for all nine
  metrics and ``bootstrap_resamples``;
* ``notes``: sentences about undefined values, and about an AUC computed
  with fewer than ``FEW_CASES`` (10) positive or negative cases.

A case is called positive when ``score >= threshold``.

Example:
    >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5)
    >>> m["confusion_matrix"], m["sensitivity"], m["roc_auc"]
    ({'tn': 1, 'fp': 1, 'fn': 1, 'tp': 1}, 0.5, 0.75)
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, brier_score_loss,
                             confusion_matrix, roc_auc_score)

from tfmed.config import UNKNOWN_LABEL

from .decision import beneficial_ranges, calibration_line, decision_curve, net_benefit
from .intervals import (EvaluationError, _check_level, auc_defined, binary_scores, bootstrap_distribution,
                        check_aligned, delong_auc_ci, macro_auc_ci, macro_auc_covariance, percentile_interval,
                        wilson_interval)
from .thresholds import ROUNDING, known_column, reaches

TASKS = ("binary", "multiclass", "multilabel")
# Fewer cases than this on one side of an ROC curve get a note: with 4-9 positives a 95% AUC
# interval held the true AUC in 86-100% of simulated data sets, depending on the shape of the scores
# (docs/studies.md, "AUC intervals: coverage in simulation").
FEW_CASES = 10
# Proportions: metric -> (numerator, denominator) from the confusion counts.
PROPORTIONS = {
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "sensitivity": (("tp",), ("tp", "fn")),
    "specificity": (("tn",), ("tn", "fp")),
    "ppv": (("tp",), ("tp", "fp")),
    "npv": (("tn",), ("tn", "fn")),
}
BINARY_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc",
                  "brier")
MULTICLASS_BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "macro_auc")
MULTILABEL_BOOTSTRAP_METRICS = ("macro_auc", "micro_auc", "subset_accuracy", "hamming_loss")
_UNDEFINED = {
    "sensitivity": "sensitivity is undefined: there are no positive cases",
    "specificity": "specificity is undefined: there are no negative cases",
    "ppv": "PPV is undefined: no case was called positive at this threshold",
    "npv": "NPV is undefined: no case was called negative at this threshold",
    "f1": "F1 is undefined: no positive cases and no positive calls",
}


def binary_metrics(y_true, scores, threshold: float, ci_level: float = 0.95, bootstrap: int = 0,
                   seed: int = 0) -> dict:
    """Confusion counts, clinical metrics and their confidence intervals.

    Proportions (accuracy, sensitivity, specificity, PPV, NPV) get Wilson
    intervals, ROC AUC the farther ends of DeLong's logit-scale interval and
    Newcombe's (:func:`~tfmed.evaluation.intervals.delong_auc_ci`). With ``bootstrap > 0`` every
    metric also gets a stratified bootstrap percentile interval in
    ``"bootstrap_ci"``. Scores outside [0, 1] (e.g. SVM margins) have no
    Brier score.

    Example:
        >>> m = binary_metrics([0, 1, 1, 0, 1], [0.2, 0.9, 0.3, 0.1, 0.7], threshold=0.5)
        >>> m["sensitivity"], m["specificity"], m["ppv"]
        (0.6666666666666666, 1.0, 1.0)
    """
    y, s = binary_scores(y_true, scores, "binary")
    threshold = _check_threshold(threshold)
    ci_level = _check_level(ci_level)
    _check_bootstrap(bootstrap)
    notes: list[str] = []
    if 1 < threshold <= 1 + 3 * ROUNDING:  # just above a top score of 1: a chosen point that no threshold reached
        notes.append(f"the threshold {threshold!r} lies just above the highest possible score, where a point is "
                     "put when no observed score reaches its target (e.g. the negatives share the top score): "
                     "every case is called negative")
    elif not 0 <= threshold <= 1 and s.min() >= 0 and s.max() <= 1:  # a percentage, most likely
        notes.append(f"the threshold {threshold:g} lies outside [0, 1], where every score lies, so every case is "
                     f"called {'negative' if threshold > 1 else 'positive'}: give it on the scores' scale "
                     "(0.5, not 50)")
    values = _binary_point(y, s, threshold, notes)
    n_pos = int(y.sum())
    if values["roc_auc"] is not None:
        notes += [_few_cases_note(count, f"{side} cases")
                  for count, side in ((n_pos, "positive"), (y.size - n_pos, "negative")) if count < FEW_CASES]
    counts = values.pop("confusion_matrix")
    result = {"task": "binary", "n": int(y.size), "n_positive": n_pos, "n_negative": int(y.size - n_pos),
              "prevalence": float(n_pos / y.size), "threshold": threshold, "confusion_matrix": counts}
    result.update(values)
    result.update(_decision_figures(y, s, threshold))
    ci, method = {}, {}
    for name, (numerator, denominator) in PROPORTIONS.items():
        total = sum(counts[k] for k in denominator)
        lo, hi = wilson_interval(sum(counts[k] for k in numerator), total, ci_level)
        ci[name] = [_clean_float(lo), _clean_float(hi)]
        method[name] = "wilson"
    if result["roc_auc"] is not None:
        auc, lo, hi = delong_auc_ci(y, s, ci_level)
        ci["roc_auc"] = [lo, hi]
        method["roc_auc"] = "delong_logit+newcombe" if 0.0 < auc < 1.0 else "binormal_separation"
    result.update(ci_level=ci_level, ci=ci, ci_method=method)
    if bootstrap:
        replicates = bootstrap_distribution(lambda yy, ss: _binary_replicate(yy, ss, threshold), y, s,
                                            n_resamples=int(bootstrap), stratified=True, seed=seed)
        result["bootstrap_ci"] = {}
        for name in BINARY_METRICS:
            lo, hi = percentile_interval([r[name] for r in replicates], ci_level)
            result["bootstrap_ci"][name] = [_clean_float(lo), _clean_float(hi)]
        result["bootstrap_resamples"] = int(bootstrap)
    result["notes"] = notes
    return to_jsonable(result)


# the binary figures that read scores as probabilities (see _decision_figures), and the Brier score
DECISION_FIGURES = ("net_benefit", "net_benefit_treat_all", "beneficial_thresholds", "calibration_intercept",
                    "calibration_slope")
PROBABILITY_FIGURES = ("brier",) + DECISION_FIGURES


def without_probability_figures(figures: dict) -> dict:
    """Binary ``figures`` with those that read the scores as probabilities set to None (their bootstrap interval
    too): for scores that are not probabilities although they lie in [0, 1], such as mean ranks.

    Example:
        >>> without_probability_figures({"roc_auc": 0.9, "brier": 0.1, "net_benefit": 0.3})
        {'roc_auc': 0.9, 'brier': None, 'net_benefit': None}
    """
    for key in PROBABILITY_FIGURES:
        if key in figures:
            figures[key] = None
    if "brier" in figures.get("bootstrap_ci", {}):
        figures["bootstrap_ci"]["brier"] = [None, None]
    return figures


def _decision_figures(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """Net benefit at ``threshold`` and of acting on every case there, the thresholds where the model beats
    both simple rules, and the calibration line (see :mod:`tfmed.evaluation.decision`); None for each when
    the scores are not probabilities in [0, 1] (or the threshold is not inside (0, 1))."""
    figures = dict.fromkeys(DECISION_FIGURES)
    if s.min() < 0.0 or s.max() > 1.0:
        return figures
    if 0.0 < threshold < 1.0:
        figures["net_benefit"] = net_benefit(y, s, threshold)
        figures["net_benefit_treat_all"] = net_benefit(y, np.ones_like(s), threshold)
    figures["beneficial_thresholds"] = beneficial_ranges(decision_curve(y, s))
    line = calibration_line(y, s)
    figures["calibration_intercept"], figures["calibration_slope"] = line["intercept"], line["slope"]
    return figures


def macro_ci_method(macro_auc: float | None) -> str | None:
    """The name of the method behind a macro AUC's interval (None without a macro AUC).

    Example:
        >>> macro_ci_method(0.8), macro_ci_method(1.0)
        ('delong_structural+newcombe', 'binormal_separation')
    """
    if macro_auc is None:
        return None
    return "delong_structural+newcombe" if 0.0 < macro_auc < 1.0 else "binormal_separation"


def multiclass_metrics(y_true, proba, class_names: Sequence[str], ci_level: float = 0.95,
                       bootstrap: int = 0, seed: int = 0) -> dict:
    """Accuracy, confusion matrix and one-vs-rest metrics for each class.

    The predicted class is the argmax of ``proba`` (n, K). Per class: AUC
    (one-vs-rest, DeLong CI), sensitivity, specificity, PPV and NPV (Wilson
    CIs). ``macro_auc`` is the mean of the per-class AUCs and
    ``macro_auc_ci`` its interval (:func:`macro_auc_ci`, DeLong's structural
    components over all classes). With ``bootstrap > 0``,
    ``bootstrap_ci`` holds stratified percentile intervals of accuracy,
    balanced accuracy and macro AUC.

    Example:
        >>> m = multiclass_metrics([0, 1, 2, 2], [[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.5, .2, .3]],
        ...                        ["a", "b", "c"])
        >>> m["accuracy"], m["confusion_matrix"]
        (0.75, [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    """
    ci_level = _check_level(ci_level)
    _check_bootstrap(bootstrap)
    names = [str(c) for c in class_names]
    check_aligned(y_true, proba, "multiclass: y_true and proba")
    P = np.asarray(proba, dtype=float)
    y = np.asarray(y_true)
    if P.ndim != 2 or P.shape[1] != len(names):
        raise EvaluationError(f"multiclass: proba has shape {P.shape}; expected (n_cases, {len(names)}) "
                              f"for classes {names}")
    if y.ndim != 1 or y.size != P.shape[0]:
        raise EvaluationError(f"multiclass: y_true has shape {y.shape} but proba has {P.shape[0]} rows; "
                              "pass one class index per case")
    if y.size == 0:
        raise EvaluationError("multiclass: there are no cases to evaluate")
    _check_finite(P, "proba")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise EvaluationError(f"multiclass: y_true must hold class indices 0..{len(names) - 1}, "
                              f"got values of type {y.dtype}")
    y = y.astype(int)
    bad = (y < 0) | (y >= len(names))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EvaluationError(f"multiclass: y_true row {first} is {y[first]}; class indices must be in "
                              f"0..{len(names) - 1} ({', '.join(names)})")
    notes: list[str] = []
    predicted = P.argmax(axis=1)
    labels = list(range(len(names)))
    cm = confusion_matrix(y, predicted, labels=labels)
    correct = int(np.trace(cm))
    result = {"task": "multiclass", "n": int(y.size), "classes": names, "ci_level": ci_level,
              "accuracy": correct / y.size,
              "accuracy_ci": list(wilson_interval(correct, int(y.size), ci_level)),
              "balanced_accuracy": None, "confusion_matrix": cm.tolist(), "per_class": {}}
    present = np.unique(y)
    if present.size == len(names):
        result["balanced_accuracy"] = float(balanced_accuracy_score(y, predicted))
    else:
        missing = [names[k] for k in labels if k not in present]
        notes.append(f"classes absent from the labels: {', '.join(missing)}; their sensitivity and AUC "
                     "are undefined and balanced accuracy is not reported")
    aucs = []
    for k, name in enumerate(names):
        tp = int(cm[k, k])
        fn = int(cm[k].sum() - tp)
        fp = int(cm[:, k].sum() - tp)
        tn = int(cm.sum() - tp - fn - fp)
        entry = {"n": tp + fn, "prevalence": (tp + fn) / y.size,
                 "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp}, "ci": {}}
        counts = entry["confusion_matrix"]
        for metric, (numerator, denominator) in PROPORTIONS.items():
            if metric == "accuracy":
                continue
            total = sum(counts[c] for c in denominator)
            hits = sum(counts[c] for c in numerator)
            entry[metric] = hits / total if total else None
            entry["ci"][metric] = list(wilson_interval(hits, total, ci_level))
        binary = (y == k).astype(int)
        if 0 < binary.sum() < binary.size:
            auc, lo, hi = delong_auc_ci(binary, P[:, k], ci_level)
            entry["roc_auc"] = float(roc_auc_score(binary, P[:, k]))
            entry["ci"]["roc_auc"] = [lo, hi]
            aucs.append(entry["roc_auc"])
            if entry["n"] < FEW_CASES:
                notes.append(f"class {name!r}: {_few_cases_note(entry['n'], 'cases')}")
        else:
            entry["roc_auc"] = None
            notes.append(f"class {name!r}: one-vs-rest AUC is undefined (the class is "
                         f"{'absent' if binary.sum() == 0 else 'the only one present'})")
        result["per_class"][name] = entry
    result["macro_auc"] = float(np.mean(aucs)) if aucs else None
    result["macro_auc_ci"] = list(macro_auc_ci(y, P, ci_level)[1:]) if aucs else None
    result["ci_method"] = {"macro_auc": macro_ci_method(result["macro_auc"])}
    if aucs and len(aucs) < len(names):
        notes.append("macro AUC averages only the classes whose AUC is defined")
    if bootstrap:
        replicates = bootstrap_distribution(_multiclass_replicate, y, P, n_resamples=int(bootstrap),
                                            stratified=True, seed=seed)
        result["bootstrap_ci"] = {}
        for name in MULTICLASS_BOOTSTRAP_METRICS:
            lo, hi = percentile_interval([r[name] for r in replicates], ci_level)
            result["bootstrap_ci"][name] = [_clean_float(lo), _clean_float(hi)]
        result["bootstrap_resamples"] = int(bootstrap)
    result["notes"] = notes
    return to_jsonable(result)


def multilabel_metrics(Y_true, P, thresholds, label_names: Sequence[str], ci_level: float = 0.95,
                       bootstrap: int = 0, seed: int = 0) -> dict:
    """Per-label binary metrics plus macro and micro AUC for multi-label data.

    ``thresholds`` is one number for all labels, a sequence (one per label)
    or a mapping ``label name -> threshold``. ``macro_auc_ci`` is the
    interval of the macro AUC (:func:`macro_auc_ci`). With ``bootstrap > 0``
    each label gets its own bootstrap intervals, and ``bootstrap_ci`` holds
    percentile intervals of the macro and micro AUC, subset accuracy and
    Hamming loss over resamples of whole cases (rows), so the labels'
    correlation is kept. A label of -1 is unknown: that case is left out of
    that label's metrics, of the micro AUC and of the Hamming loss, and
    subset accuracy compares the labels that are known.

    Example:
        >>> Y = [[1, 0], [0, 1], [1, 1], [0, 0]]
        >>> P = [[0.9, 0.2], [0.3, 0.8], [0.6, 0.4], [0.2, 0.1]]
        >>> m = multilabel_metrics(Y, P, 0.5, ["effusion", "nodule"])
        >>> m["macro_auc"], m["per_label"]["nodule"]["sensitivity"]
        (1.0, 0.5)
    """
    names = [str(c) for c in label_names]
    check_aligned(Y_true, P, "multilabel: Y_true and P")
    Y = np.asarray(Y_true)
    S = np.asarray(P, dtype=float)
    if Y.ndim != 2 or S.shape != Y.shape or Y.shape[1] != len(names):
        raise EvaluationError(f"multilabel: Y_true has shape {Y.shape} and P {S.shape}; both must be "
                              f"(n_cases, {len(names)}) for labels {names}")
    per_threshold = _label_thresholds(thresholds, names)
    result = {"task": "multilabel", "n": int(Y.shape[0]), "labels": names, "ci_level": float(ci_level),
              "thresholds": dict(zip(names, per_threshold)), "per_label": {}}
    notes: list[str] = []
    for j, name in enumerate(names):
        labels, scores = known_column(Y, S, j)
        if not len(labels):  # e.g. a merged part that does not grade the label, held out as the test split
            result["per_label"][name] = _no_known_case(per_threshold[j], len(Y), ci_level)
            notes.append(f"label {name!r}: unknown for all {len(Y)} cases, so it has no figures here")
            continue
        try:
            metrics = binary_metrics(labels, scores, per_threshold[j], ci_level, bootstrap, seed)
        except EvaluationError as error:
            raise EvaluationError(f"multilabel: label {name!r}: {error}") from None
        notes.extend(f"label {name!r}: {note}" for note in metrics["notes"])
        if len(labels) < len(Y):
            metrics["unknown"] = len(Y) - len(labels)
            notes.append(f"label {name!r}: unknown for {len(Y) - len(labels)} of {len(Y)} cases, which its "
                         "metrics leave out")
        result["per_label"][name] = metrics
    aucs = [m["roc_auc"] for m in result["per_label"].values() if m["roc_auc"] is not None]
    result["macro_auc"] = float(np.mean(aucs)) if aucs else None
    result["macro_auc_ci"] = list(macro_auc_ci(Y.astype(int), S, ci_level)[1:]) if aucs else None
    result["ci_method"] = {"macro_auc": macro_ci_method(result["macro_auc"])}
    if aucs and len(aucs) < len(names):
        notes.append("macro AUC averages only the labels whose AUC is defined")
    Yi = Y.astype(int)
    macro_labels = _labels_with_auc(Yi)
    whole = _multilabel_replicate(Yi, S, per_threshold, macro_labels)
    for name in ("micro_auc", "hamming_loss", "subset_accuracy"):
        result[name] = whole[name]
    if whole["micro_auc"] is None:
        notes.append("micro AUC is undefined: all labels are of one value")
    if bootstrap:
        replicates = bootstrap_distribution(lambda yy, ss: _multilabel_replicate(yy, ss, per_threshold, macro_labels),
                                            Yi, S, n_resamples=int(bootstrap), seed=seed)
        result["bootstrap_ci"] = {}
        for name in MULTILABEL_BOOTSTRAP_METRICS:
            lo, hi = percentile_interval([r[name] for r in replicates], ci_level)
            result["bootstrap_ci"][name] = [_clean_float(lo), _clean_float(hi)]
        result["bootstrap_resamples"] = int(bootstrap)
        lost = sum(r["macro_auc"] is None for r in replicates) if macro_labels else 0
        if lost:
            notes.append(f"bootstrap: {lost} of {int(bootstrap)} resamples lack the positives or negatives of a "
                         "label, so their macro AUC is undefined; its interval comes from the other "
                         f"{int(bootstrap) - lost}")
    result["notes"] = notes
    return to_jsonable(result)


def _no_known_case(threshold: float, unknown: int, ci_level: float) -> dict:
    """A multilabel label's figures where no case's value is known: counts of 0, every figure None."""
    rates = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
    figures = ("prevalence", *rates, "f1", "roc_auc", "pr_auc", *PROBABILITY_FIGURES)
    return {"task": "binary", "n": 0, "n_positive": 0, "n_negative": 0, "threshold": float(threshold),
            "confusion_matrix": {"tn": 0, "fp": 0, "fn": 0, "tp": 0}, **dict.fromkeys(figures),
            "ci_level": float(ci_level), "ci": {name: [None, None] for name in rates + ("roc_auc",)},
            "unknown": int(unknown),
            "notes": ["no case's value is known"]}


def evaluate(task: str, y_true, scores, thresholds=None, class_names: Sequence[str] | None = None,
             **kw) -> dict:
    """Metrics for any task: dispatches to the binary/multiclass/multilabel function.

    binary: ``scores`` (n,) or (n, 1), ``thresholds`` one number (None
    means 0.5, noted in the result). multiclass: ``scores`` are class
    probabilities (n, K); thresholds are not used (argmax). multilabel:
    ``scores`` (n, L), one threshold per label (None means 0.5 each).
    Extra keywords (ci_level, bootstrap, seed) pass through.

    Example:
        >>> evaluate("binary", [0, 1, 1, 0], [[0.2], [0.8], [0.6], [0.4]], 0.5)["accuracy"]
        1.0
    """
    if task not in TASKS:
        raise EvaluationError(f"task is {task!r}; allowed: {', '.join(TASKS)}")
    defaulted = thresholds is None
    if task == "binary":
        if isinstance(thresholds, Mapping):
            if len(thresholds) != 1:
                raise EvaluationError(f"binary task: give one threshold, got {dict(thresholds)}")
            thresholds = next(iter(thresholds.values()))
        result = binary_metrics(y_true, scores, 0.5 if defaulted else thresholds, **kw)
        if class_names is not None:
            result["classes"] = [str(c) for c in class_names]
    elif task == "multiclass":
        if class_names is None:
            class_names = [str(k) for k in range(np.asarray(scores).shape[-1])]
        result = multiclass_metrics(y_true, scores, class_names, **kw)
        defaulted = False
    else:
        if class_names is None:
            class_names = [f"label_{j}" for j in range(np.asarray(scores).shape[-1])]
        result = multilabel_metrics(y_true, scores, 0.5 if defaulted else thresholds, class_names, **kw)
    if defaulted:
        result["notes"].append("no threshold was given; 0.5 was used (choose one on validation data)")
    return result


def headline_auc(metrics: Mapping) -> float | None:
    """A split's headline AUC: ROC AUC (binary) or macro AUC (the others); None when undefined.

    Example:
        >>> headline_auc(evaluate("binary", [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5))
        0.75
    """
    value = metrics.get("roc_auc", metrics.get("macro_auc"))
    return None if value is None else float(value)


def auc_interval(metrics: Mapping) -> list | None:
    """The interval ``[lo, hi]`` of a split's headline AUC: ROC AUC (binary) or macro AUC (the others).

    Example:
        >>> lo, hi = auc_interval(evaluate("multiclass", [0, 1, 2, 0, 1, 2], np.eye(3)[[0, 1, 2, 0, 1, 2]]))
        >>> round(lo, 3), hi  # a perfect ranking of 2 cases against 4 per class: the separation bound
        (0.372, 1.0)
    """
    return metrics.get("macro_auc_ci") or metrics.get("ci", {}).get("roc_auc")


def operating_point_metrics(y_true, scores, points: Mapping[str, float], ci_level: float = 0.95,
                            bootstrap: int = 0, seed: int = 0) -> dict:
    """Binary metrics at each named threshold, e.g. validation-chosen points applied to test.

    Returns ``{name: binary_metrics(y_true, scores, threshold)}``.

    Example:
        >>> table = operating_point_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], {"youden": 0.9, "low": 0.4})
        >>> table["youden"]["specificity"], table["low"]["sensitivity"]
        (1.0, 1.0)
    """
    if not isinstance(points, Mapping) or not points:
        raise EvaluationError("operating_point_metrics: points must be a non-empty mapping "
                              "name -> threshold, e.g. operating_points(y_val, s_val)")
    return {str(name): binary_metrics(y_true, scores, threshold, ci_level, bootstrap, seed)
            for name, threshold in points.items()}


def to_jsonable(value):
    """Plain Python data for ``json.dumps``: numpy types unwrapped, NaN/inf as None.

    Example:
        >>> to_jsonable({"a": np.float64("nan"), "b": np.arange(2), "c": (np.int64(3),)})
        {'a': None, 'b': [0, 1], 'c': [3]}
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _clean_float(value)
    return value


def _few_cases_note(count: int, cases: str) -> str:
    """The note for an AUC computed with fewer than FEW_CASES ``cases`` (a plural noun).

    Example:
        >>> _few_cases_note(6, "positive cases")[:31]
        'only 6 positive cases: the AUC '
    """
    return (f"only {count} {cases[:-1] if count == 1 else cases}: the AUC interval rests on few cases "
            "(95% intervals held the true AUC in 86-100% of simulated data sets with 4-9 such cases, "
            "depending on the shape of the scores); read it as a rough range")


def _binary_point(y: np.ndarray, s: np.ndarray, threshold: float, notes: list | None) -> dict:
    """Point estimates of every binary metric; undefined ones are None."""
    predicted = reaches(s, threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, predicted, labels=[0, 1]).ravel())
    counts = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    values: dict = {"confusion_matrix": counts}
    for name, (numerator, denominator) in PROPORTIONS.items():
        total = sum(counts[k] for k in denominator)
        values[name] = sum(counts[k] for k in numerator) / total if total else None
        if total == 0 and notes is not None:
            notes.append(_UNDEFINED[name])
    f1_denominator = 2 * tp + fp + fn
    values["f1"] = 2 * tp / f1_denominator if f1_denominator else None
    if f1_denominator == 0 and notes is not None:
        notes.append(_UNDEFINED["f1"])
    both = 0 < tp + fn < y.size
    values["roc_auc"] = float(roc_auc_score(y, s)) if both else None
    values["pr_auc"] = float(average_precision_score(y, s)) if both else None
    if not both and notes is not None:
        notes.append("ROC AUC and PR AUC are undefined: only one class is present "
                     f"({'positive' if tp + fn else 'negative'} cases only)")
    if s.min() >= 0.0 and s.max() <= 1.0:
        values["brier"] = float(brier_score_loss(y, s))
    else:
        values["brier"] = None
        if notes is not None:
            notes.append("Brier score not computed: scores are not probabilities in [0, 1]")
    return values


def _binary_replicate(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """The metrics of :func:`_binary_point` computed with plain numpy, for bootstrap resamples.

    Same definitions as scikit-learn (AUC by midranks, average precision as
    the step-wise sum over distinct thresholds) without its per-call input
    checks, which dominate the cost of a thousand small resamples. The
    tests check it against scikit-learn on tied and untied scores.
    """
    positive = y == 1
    called = reaches(s, threshold)
    tp = int(np.count_nonzero(called & positive))
    fp = int(np.count_nonzero(called & ~positive))
    n_pos = int(np.count_nonzero(positive))
    fn, tn = n_pos - tp, y.size - n_pos - fp
    counts = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    values: dict = {}
    for name, (numerator, denominator) in PROPORTIONS.items():
        total = sum(counts[k] for k in denominator)
        values[name] = sum(counts[k] for k in numerator) / total if total else None
    values["f1"] = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    values["roc_auc"] = values["pr_auc"] = None
    n_neg = y.size - n_pos
    if n_pos and n_neg:
        ranks = rankdata(s)
        values["roc_auc"] = float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
        order = np.argsort(-s, kind="stable")
        ordered_scores, ordered_labels = s[order], y[order]
        last_of_tie = np.r_[np.flatnonzero(np.diff(ordered_scores)), y.size - 1]
        true_pos = np.cumsum(ordered_labels)[last_of_tie]
        precision = true_pos / (last_of_tie + 1.0)
        recall = true_pos / n_pos
        values["pr_auc"] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    in_range = s.min() >= 0.0 and s.max() <= 1.0
    values["brier"] = float(np.mean((s - y) ** 2)) if in_range else None
    return values


def _multiclass_replicate(y: np.ndarray, P: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and macro AUC of one bootstrap resample (None where undefined)."""
    predicted = P.argmax(axis=1)
    present = np.unique(y)
    balanced = float(np.mean([np.mean(predicted[y == k] == k) for k in present])) \
        if present.size == P.shape[1] else None
    macro = float(macro_auc_covariance(y, P)[0][0]) if present.size > 1 else None
    return {"accuracy": float(np.mean(predicted == y)), "balanced_accuracy": balanced, "macro_auc": macro}


def _labels_with_auc(Y: np.ndarray) -> list[int]:
    """The label columns known both present (1) and absent (0) somewhere in ``Y``."""
    return [j for j in range(Y.shape[1]) if auc_defined(Y[Y[:, j] != UNKNOWN_LABEL, j])]


def _multilabel_replicate(Y: np.ndarray, S: np.ndarray, thresholds: Sequence[float],
                          macro_labels: Sequence[int] | None = None) -> dict:
    """Macro and micro AUC, subset accuracy and Hamming loss of a set of rows (None where undefined);
    unknown labels (-1) are left out of each. The macro AUC averages the ``macro_labels`` columns (None: those
    with an AUC here), and is None where one of them has no AUC in these rows: a resample's macro AUC must
    average the same labels as the whole data's."""
    known = Y != UNKNOWN_LABEL
    macro_labels = _labels_with_auc(Y) if macro_labels is None else list(macro_labels)
    defined = bool(macro_labels) and all(auc_defined(Y[known[:, j], j]) for j in macro_labels)
    macro = float(macro_auc_covariance(Y[:, macro_labels], S[:, macro_labels])[0][0]) if defined else None
    entries, entry_scores = Y[known], S[known]
    micro = float(roc_auc_score(entries, entry_scores)) if 0 < entries.sum() < entries.size else None
    decisions = reaches(S, thresholds).astype(int)
    graded = known.any(axis=1)  # an image with no known label has nothing to match
    exact = np.all((Y == decisions) | ~known, axis=1)[graded]
    return {"macro_auc": macro, "micro_auc": micro,
            "subset_accuracy": float(np.mean(exact)) if exact.size else None,
            "hamming_loss": float(np.mean(Y[known] != decisions[known])) if known.any() else None}


def _check_bootstrap(bootstrap) -> None:
    if isinstance(bootstrap, (bool, np.bool_)) or not isinstance(bootstrap, (int, float, np.integer, np.floating)) \
            or not np.isfinite(bootstrap) or int(bootstrap) != bootstrap or bootstrap < 0:
        raise EvaluationError(f"bootstrap is {bootstrap!r}; give the number of resamples (0 for none)")


def _check_finite(values: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise EvaluationError(f"{name} contain NaN or infinite values ({int(bad.sum())} values, first at "
                              f"row {row}); fix or drop those predictions before evaluating")


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(threshold)):
        raise EvaluationError(f"threshold is {threshold!r}; give a finite number, e.g. one chosen on "
                              "validation data with tfmed.evaluation.choose_threshold")
    return float(threshold)


def _label_thresholds(thresholds, names: list[str]) -> list[float]:
    if isinstance(thresholds, Mapping):
        missing = [name for name in names if name not in thresholds]
        if missing:
            raise EvaluationError(f"multilabel: no threshold for label(s) {', '.join(missing)}; "
                                  f"thresholds has keys {list(thresholds)}")
        values = [thresholds[name] for name in names]
    elif np.ndim(thresholds) == 0:
        values = [thresholds] * len(names)
    else:
        values = list(np.asarray(thresholds).reshape(-1))
        if len(values) != len(names):
            raise EvaluationError(f"multilabel: {len(values)} thresholds for {len(names)} labels {names}")
    return [_check_threshold(v) for v in values]


def _clean_float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
