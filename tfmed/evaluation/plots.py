"""Evaluation and training plots written as PNG files.

Figures are drawn with matplotlib's object API and the Agg canvas (no
pyplot, no display, no global backend change), so plotting works in
headless jobs and threads. Every function returns the written path.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "roc.png"
    >>> roc_plot([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], out, {"youden": 0.9}).exists()
    True
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from .decision import decision_curve, net_benefit
from .intervals import EvaluationError, binary_scores
from .thresholds import known_column, reaches

_DPI = 110
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def roc_plot(y, scores, path, operating_points: Mapping[str, float] | None = None,
             title: str = "ROC curve", auc_ci: Sequence[float] | None = None) -> Path:
    """ROC curve with the named operating thresholds marked on it.

    Each point is placed at the (1 - specificity, sensitivity) that its
    threshold gives on these data (called positive when score >= threshold).
    ``auc_ci`` (lo, hi) is shown in the legend when given.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "roc.png"
        >>> roc_plot([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], out, {"youden": 0.7}, auc_ci=(0.5, 1.0)).name
        'roc.png'
    """
    y, s = _pair(y, scores, "roc_plot")
    fpr, tpr, _ = roc_curve(y, s)
    value = roc_auc_score(y, s)
    label = f"AUC {value:.3f}" + (f" ({auc_ci[0]:.3f}-{auc_ci[1]:.3f})" if auc_ci is not None else "")
    figure, axes = _figure()
    axes.plot(fpr, tpr, color="tab:blue", lw=2, label=label)
    axes.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="chance")
    for i, (name, threshold) in enumerate((operating_points or {}).items()):
        called = reaches(s, float(threshold))
        sensitivity = called[y == 1].mean()
        false_positive_rate = called[y == 0].mean()
        axes.plot(false_positive_rate, sensitivity, marker=_MARKERS[i % len(_MARKERS)], ms=9, ls="none",
                  label=f"{name} (t={float(threshold):.3g}): sens {sensitivity:.2f}, "
                        f"spec {1 - false_positive_rate:.2f}")
    _finish(axes, "1 - specificity (false positive rate)", "Sensitivity (true positive rate)", title)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def pr_plot(y, scores, path, operating_points: Mapping[str, float] | None = None,
            title: str = "Precision-recall curve") -> Path:
    """Precision-recall curve, the prevalence baseline and the operating points.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "pr.png"
        >>> pr_plot([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], out).exists()
        True
    """
    y, s = _pair(y, scores, "pr_plot")
    precision, recall, _ = precision_recall_curve(y, s)
    figure, axes = _figure()
    axes.step(recall, precision, where="post", color="tab:blue", lw=2,
              label=f"average precision {average_precision_score(y, s):.3f}")
    axes.axhline(y.mean(), color="grey", lw=1, ls="--", label=f"prevalence {y.mean():.2f}")
    for i, (name, threshold) in enumerate((operating_points or {}).items()):
        called = reaches(s, float(threshold))
        if not called.any():
            continue
        axes.plot(called[y == 1].mean(), y[called].mean(), marker=_MARKERS[i % len(_MARKERS)], ms=9,
                  ls="none", label=f"{name} (t={float(threshold):.3g})")
    _finish(axes, "Recall (sensitivity)", "Precision (PPV)", title)
    axes.legend(loc="lower left", fontsize=8)
    return _save(figure, path)


def confusion_plot(cm, class_names: Sequence[str], path, title: str = "Confusion matrix") -> Path:
    """Confusion matrix (rows: true class, columns: predicted) with counts.

    ``cm`` is a (K, K) array/list or a binary ``{"tn", "fp", "fn", "tp"}``
    dict as returned by :func:`binary_metrics`.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "cm.png"
        >>> confusion_plot({"tn": 5, "fp": 1, "fn": 2, "tp": 4}, ["normal", "pneumonia"], out).exists()
        True
    """
    if isinstance(cm, Mapping):
        try:
            cm = [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]]
        except KeyError as missing:
            raise EvaluationError(f"confusion_plot: the dict lacks key {missing}; "
                                  "expected tn, fp, fn, tp") from None
    matrix = np.asarray(cm)
    names = [str(c) for c in class_names]
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise EvaluationError(f"confusion_plot: matrix shape {matrix.shape} does not match "
                              f"{len(names)} class names {names}")
    size = max(4.0, 1.0 + 0.8 * len(names))
    figure, axes = _figure((size + 1.0, size))
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046)
    threshold = matrix.max() / 2.0 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, f"{value:g}", ha="center", va="center",
                  color="white" if value > threshold else "black")
    axes.set_xticks(range(len(names)), names, rotation=45 if len(names) > 3 else 0, ha="right"
                    if len(names) > 3 else "center")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title(title)
    return _save(figure, path)


def reliability_plot(y, scores, path, bins: int = 10, title: str = "Calibration") -> Path:
    """Reliability diagram (observed frequency vs mean predicted probability).

    Uses ``sklearn.calibration.calibration_curve`` with uniform bins, and
    shows the histogram of scores below. Scores must be probabilities.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "cal.png"
        >>> reliability_plot([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], out, bins=5).exists()
        True
    """
    y, s = _pair(y, scores, "reliability_plot")
    _check_probabilities(s, bins, "reliability_plot")
    observed, predicted = calibration_curve(y, s, n_bins=int(bins), strategy="uniform")
    figure = Figure(figsize=(5.5, 6.0))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    top.plot(predicted, observed, marker="o", color="tab:blue", label="model")
    top.set_ylabel("Observed frequency of positives")
    top.set_ylim(-0.02, 1.02)
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    bottom.hist(s, bins=int(bins), range=(0, 1), color="tab:blue", alpha=0.7)
    bottom.set_xlabel("Mean predicted probability")
    bottom.set_ylabel("Cases")
    bottom.set_xlim(0, 1)
    return _save(figure, path)


def training_curves(history: Mapping[str, Sequence[float]], path, stage_boundaries: Sequence[int] = (),
                    title: str = "Training") -> Path:
    """Loss and AUC per epoch, with dashed lines where a new stage begins.

    ``history`` is Keras's ``History.history`` (``loss``, ``val_loss``,
    ``auc``, ``val_auc`` and any others), concatenated over stages.
    ``stage_boundaries`` are the epoch counts after which a new stage starts
    (e.g. ``[5]`` when stage 2 begins at epoch 6). Series without "loss" or
    "auc" in their name are drawn in a third panel.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "curves.png"
        >>> history = {"loss": [0.7, 0.5, 0.4], "val_loss": [0.7, 0.6, 0.55], "auc": [0.6, 0.8, 0.9]}
        >>> training_curves(history, out, stage_boundaries=[2]).exists()
        True
    """
    if not isinstance(history, Mapping) or not history:
        raise EvaluationError("training_curves: history is empty; pass History.history, "
                              "a dict of metric name -> values per epoch")
    series = {}
    for name, values in history.items():
        array = np.asarray(values, dtype=float) if np.ndim(values) == 1 else None
        if array is None:
            raise EvaluationError(f"training_curves: history[{name!r}] must be a list of numbers per epoch")
        series[str(name)] = array
    epochs = max(len(v) for v in series.values())
    for boundary in stage_boundaries:
        if not 0 < int(boundary) <= epochs:
            raise EvaluationError(f"training_curves: stage boundary {boundary} is outside 1..{epochs} "
                                  f"(the history has {epochs} epochs)")
    groups = {"Loss": [k for k in series if "loss" in k.lower()],
              "AUC": [k for k in series if "auc" in k.lower()]}
    groups["Other metrics"] = [k for k in series if k not in groups["Loss"] + groups["AUC"]
                               and k.lower() not in ("lr", "learning_rate")]
    groups = {panel: names for panel, names in groups.items() if names}
    figure = Figure(figsize=(5.0 * len(groups), 4.0))
    FigureCanvasAgg(figure)
    panels = np.atleast_1d(figure.subplots(1, len(groups)))
    for axes, (panel, names) in zip(panels, groups.items()):
        for name in names:
            values = series[name]
            axes.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3,
                      ls="--" if name.startswith("val_") else "-", label=name)
        for i, boundary in enumerate(stage_boundaries):
            axes.axvline(int(boundary) + 0.5, color="tab:red", ls=":", lw=1.5,
                         label="new stage" if i == 0 else None)
        axes.set_xlabel("Epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(panel)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def multi_roc_plot(y_true, scores, class_names: Sequence[str], path, title: str = "ROC curves") -> Path:
    """One-vs-rest ROC curves, one per class (multiclass) or label (multilabel).

    ``y_true`` is class indices (n,) for multiclass, or a 0/1 matrix (n, L)
    for multilabel (-1 where a label is unknown: left out of its curve);
    ``scores`` is (n, K). Classes with only one value in the
    data are listed as undefined in the legend.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "roc_all.png"
        >>> P = [[.8, .1, .1], [.2, .7, .1], [.1, .2, .7], [.5, .2, .3]]
        >>> multi_roc_plot([0, 1, 2, 2], P, ["a", "b", "c"], out).exists()
        True
    """
    S = np.asarray(scores, dtype=float)
    names = [str(c) for c in class_names]
    y = np.asarray(y_true)
    if S.ndim != 2 or S.shape[1] != len(names):
        raise EvaluationError(f"multi_roc_plot: scores have shape {S.shape}; expected (n_cases, {len(names)})")
    if y.ndim == 1:
        if y.size != S.shape[0]:
            raise EvaluationError(f"multi_roc_plot: y_true has {y.size} cases but scores {S.shape[0]}")
        Y = (y[:, None] == np.arange(len(names))[None, :]).astype(int)
    elif y.shape == S.shape:
        Y = y.astype(int)
    else:
        raise EvaluationError(f"multi_roc_plot: y_true has shape {y.shape}; expected ({S.shape[0]},) class "
                              f"indices or {S.shape} 0/1 labels")
    figure, axes = _figure((6.0, 5.5))
    axes.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    for k, name in enumerate(names):
        column, column_scores = known_column(Y, S, k)   # a multilabel label's curve: the cases where it is known
        if column.size == 0 or column.min() == column.max():
            axes.plot([], [], ls="none", label=f"{name}: AUC undefined (one class)")
            continue
        fpr, tpr, _ = roc_curve(column, column_scores)
        axes.plot(fpr, tpr, lw=1.8, label=f"{name}: AUC {roc_auc_score(column, column_scores):.3f}")
    _finish(axes, "1 - specificity", "Sensitivity", title)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def decision_plot(y, scores, path, operating_points: Mapping[str, float] | None = None,
                  title: str = "Decision curve") -> Path:
    """The decision curve (:func:`~tfmed.evaluation.decision.decision_curve`): the model's net benefit over
    threshold probabilities beside acting on every case and on none, the named thresholds marked.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "decision.png"
        >>> decision_plot([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], out, {"youden": 0.7}).exists()
        True
    """
    y, s = _pair(y, scores, "decision_plot")
    figure, axes = _figure((6.0, 4.5))
    _draw_decision(axes, y, s, operating_points or {}, title)
    axes.set_xlabel("Threshold probability (the risk at which one would act)")
    return _save(figure, path)


def multi_decision_plot(y_true, scores, label_names: Sequence[str], path,
                        thresholds: Mapping[str, Mapping[str, float]] | None = None,
                        title: str = "Decision curves") -> Path:
    """One decision curve per label of a multi-label model (:func:`decision_plot`'s panels, three a row).

    ``y_true`` is a 0/1 matrix (n, L), -1 where a label is unknown (left out of its panel); ``scores`` the
    (n, L) probabilities; ``thresholds`` maps a label to its named thresholds to mark. A label with one
    class in the data says so in its panel.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "decision_labels.png"
        >>> Y, P = [[1, 0], [0, 1], [1, -1], [0, 0]], [[.9, .2], [.3, .8], [.6, .5], [.2, .1]]
        >>> multi_decision_plot(Y, P, ["effusion", "nodule"], out, {"effusion": {"youden": 0.6}}).exists()
        True
    """
    Y, S, names = _label_matrix(y_true, scores, label_names, "multi_decision_plot")
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows))
    FigureCanvasAgg(figure)
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    for k, name in enumerate(names):
        column, column_scores = known_column(Y, S, k)
        if column.size == 0 or column.min() == column.max():
            panels[k].text(0.5, 0.5, "undefined (one class)", ha="center", va="center", color="grey")
            panels[k].set_title(name)
            panels[k].set_axis_off()
            continue
        _draw_decision(panels[k], column.astype(int), column_scores, (thresholds or {}).get(name, {}), name,
                       legend_size=7)
        panels[k].set_xlabel("Threshold probability")
    for spare in panels[len(names):]:
        spare.set_visible(False)
    figure.suptitle(title)
    return _save(figure, path)


def multi_reliability_plot(y_true, scores, label_names: Sequence[str], path, bins: int = 10,
                           title: str = "Calibration") -> Path:
    """Reliability curves of a multi-label model, one line per label (:func:`reliability_plot`'s upper panel).

    ``y_true`` and ``scores`` as for :func:`multi_decision_plot`; scores must be probabilities.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "calibration_labels.png"
        >>> Y, P = [[1, 0], [0, 1], [1, -1], [0, 0]], [[.9, .2], [.3, .8], [.6, .5], [.2, .1]]
        >>> multi_reliability_plot(Y, P, ["effusion", "nodule"], out, bins=5).exists()
        True
    """
    Y, S, names = _label_matrix(y_true, scores, label_names, "multi_reliability_plot")
    _check_probabilities(S, bins, "multi_reliability_plot")
    figure, axes = _figure((6.0, 5.5))
    axes.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for k, name in enumerate(names):
        column, column_scores = known_column(Y, S, k)
        if column.size == 0 or column.min() == column.max():
            axes.plot([], [], ls="none", label=f"{name}: undefined (one class)")
            continue
        observed, predicted = calibration_curve(column.astype(int), column_scores, n_bins=int(bins),
                                                strategy="uniform")
        axes.plot(predicted, observed, marker=_MARKERS[k % len(_MARKERS)], ms=4, lw=1.5, label=name)
    _finish(axes, "Mean predicted probability", "Observed frequency of positives", title)
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def subgroup_plot(figures: Mapping[str, Mapping], path, title: str = "AUC by subgroup") -> Path:
    """A forest plot: each group's AUC with its interval, one row per group, attributes one after another.

    ``figures`` maps an attribute (``sex``) to :func:`~tfmed.evaluation.subgroups.subgroup_figures`'s result;
    a group whose AUC is undefined (one class) is listed with "AUC undefined".

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "subgroups.png"
        >>> groups = {"female": {"n": 20, "auc": 0.9, "auc_ci": [0.8, 0.95]}, "male": {"n": 3, "auc": None}}
        >>> subgroup_plot({"sex": {"groups": groups}}, out).exists()
        True
    """
    rows = [(f"{attribute}: {group} (n={entry['n']})", entry.get("auc"), entry.get("auc_ci"))
            for attribute, result in figures.items() for group, entry in result["groups"].items()]
    figure, axes = _figure((6.0, 1.2 + 0.35 * len(rows)))
    for position, (label, auc, interval) in enumerate(rows):
        if auc is None:
            axes.text(0.5, position, "AUC undefined (one class)", ha="center", va="center", fontsize=8, color="grey")
            continue
        if interval and None not in interval:
            axes.plot(interval, [position, position], color="tab:blue", lw=2)
        axes.plot(auc, position, marker="o", color="tab:blue", ms=7)
    axes.axvline(0.5, color="grey", lw=1, ls="--")
    axes.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    axes.set_ylim(len(rows) - 0.5, -0.5)
    axes.set_xlim(-0.02, 1.02)
    axes.set_xlabel("AUC (dots) with its interval (bars)")
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="x")
    return _save(figure, path)


def _pair(y, scores, where: str) -> tuple[np.ndarray, np.ndarray]:
    y, s = binary_scores(y, scores, where)
    if y.min() == y.max():
        raise EvaluationError(f"{where}: the labels hold only one class (n={y.size}); a curve needs "
                              "positive and negative cases")
    return y, s


_LOWEST_NET_BENEFIT = -1.0  # a decision plot reaches down to its marked thresholds, but no lower than this


def _draw_decision(axes, y: np.ndarray, s: np.ndarray, operating_points: Mapping[str, float], title: str,
                   legend_size: int = 8) -> None:
    """The decision curve on ``axes``, each threshold in (0, 1) marked inside the plot: the y-range reaches down
    to its net benefit (to ``_LOWEST_NET_BENEFIT``); one lower still sits on the floor, its value in the legend."""
    curve = decision_curve(y, s)
    axes.plot(curve["thresholds"], curve["model"], color="tab:blue", lw=2, label="model")
    axes.plot(curve["thresholds"], curve["treat_all"], color="tab:orange", lw=1.5, label="act on every case")
    axes.axhline(0.0, color="grey", lw=1.5, ls="--", label="act on none")
    prevalence = float(y.mean())
    top = 1.1 * prevalence + 0.01  # net benefit is at most the prevalence
    marks = {i: (name, float(t), net_benefit(y, s, float(t)))
             for i, (name, t) in enumerate(operating_points.items()) if 0.0 < float(t) < 1.0}
    lowest = min((benefit for _, _, benefit in marks.values()), default=0.0)
    bottom = max(min(-0.05 - 0.1 * prevalence, lowest - 0.05 * (top - lowest)), _LOWEST_NET_BENEFIT)
    for i, (name, threshold, benefit) in marks.items():
        marker, label = _MARKERS[i % len(_MARKERS)], f"{name} (t={threshold:.3g})"
        if benefit < bottom:
            marker, label = "v", f"{name} (t={threshold:.3g}; net benefit {benefit:.3g}, below the plot)"
            benefit = bottom + 0.03 * (top - bottom)
        axes.plot(threshold, benefit, marker=marker, ms=9, ls="none", label=label)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(bottom, top)
    axes.set_ylabel("Net benefit")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=legend_size)


def _check_probabilities(s: np.ndarray, bins, where: str) -> None:
    if s.min() < 0.0 or s.max() > 1.0:
        raise EvaluationError(f"{where}: scores span {s.min():.3g} to {s.max():.3g}; a reliability "
                              "diagram needs probabilities in [0, 1] (calibrate the model first)")
    if isinstance(bins, bool) or int(bins) != bins or bins < 2:
        raise EvaluationError(f"{where}: bins is {bins!r}; use an integer of at least 2")


def _label_matrix(y_true, scores, label_names: Sequence[str], where: str) -> tuple[np.ndarray, np.ndarray, list]:
    names = [str(c) for c in label_names]
    Y, S = np.asarray(y_true), np.asarray(scores, dtype=float)
    if S.ndim != 2 or S.shape[1] != len(names) or Y.shape != S.shape:
        raise EvaluationError(f"{where}: labels have shape {Y.shape} and scores {S.shape}; both must be "
                              f"(n_cases, {len(names)}) for labels {names}")
    if not np.all(np.isfinite(S)):
        raise EvaluationError(f"{where}: scores contain NaN or infinite values")
    return Y, S, names


def _figure(size=(5.5, 5.0)):
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _finish(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=_DPI)
    return path
