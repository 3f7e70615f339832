"""Operating thresholds: chosen on validation data, applied unchanged to test.

A case is called positive when ``score >= threshold`` (the convention of
scikit-learn's ``roc_curve``), up to float32 rounding (:func:`reaches`). Thresholds returned are observed
scores, and they are chosen by the sensitivity and specificity that same rule gives on the validation data,
so a point gives there exactly what it was chosen for.

* ``youden``: maximises sensitivity + specificity - 1 (ties: the highest
  threshold).
* ``sensitivity``: the highest threshold whose sensitivity reaches ``target``.
* ``specificity``: the lowest threshold whose specificity reaches ``target``.
* ``fixed``: ``target`` itself is the threshold.

Example:
    >>> y_val = [0, 0, 0, 1, 1, 1]
    >>> s_val = [0.1, 0.3, 0.6, 0.4, 0.8, 0.9]
    >>> choose_threshold(y_val, s_val, "youden")
    0.8
    >>> apply_threshold([0.2, 0.85], 0.8).tolist()
    [0, 1]
"""
from __future__ import annotations

import typing
from typing import Mapping, Sequence

import numpy as np

from tfmed.config import UNKNOWN_LABEL, ThresholdMethod

from .intervals import EvaluationError, binary_scores, check_aligned

METHODS = typing.get_args(ThresholdMethod)
ROUNDING = 1e-6  # a score within this fraction of a threshold below it reaches it (float32 rounding)
# evaluation.threshold -> the operating point's name in a run's thresholds
THRESHOLD_KEYS = {"youden": "youden", "sensitivity": "high_sensitivity",
                  "specificity": "high_specificity", "fixed": "fixed"}


def choose_threshold(y_true, scores, method: str = "youden", target: float = 0.95) -> float:
    """Pick one operating threshold from validation labels and scores.

    Example:
        >>> y_val = [0, 0, 0, 0, 1, 1, 1, 1]
        >>> s_val = [0.1, 0.2, 0.3, 0.5, 0.4, 0.6, 0.7, 0.9]
        >>> choose_threshold(y_val, s_val, "sensitivity", target=1.0)
        0.4
        >>> choose_threshold(y_val, s_val, "specificity", target=1.0)
        0.6
    """
    if method not in METHODS:
        raise EvaluationError(f"threshold method is {method!r}; allowed: {', '.join(METHODS)}")
    if isinstance(target, bool) or not isinstance(target, (int, float, np.floating)) or not np.isfinite(target):
        raise EvaluationError(f"threshold target is {target!r}; it must be a number")
    if method == "fixed":
        return float(target)
    if not 0.0 < target <= 1.0:
        raise EvaluationError(f"target {method} is {target}; it must be in (0, 1], e.g. 0.95")
    y, s = _check_pair(y_true, scores)
    fpr, tpr, thresholds = _curve(y, s)
    if method == "youden":
        youden = tpr - fpr
        best = np.flatnonzero(youden >= youden.max() - 1e-12)   # ties: highest threshold
        return float(thresholds[best[0]])
    if method == "sensitivity":
        reaching = np.flatnonzero(tpr >= target - 1e-12)
        return float(thresholds[reaching[0]])
    reaching = np.flatnonzero(1.0 - fpr >= target - 1e-12)
    if reaching.size == 0:
        # Negatives share the highest score: only a threshold above every
        # score, beyond rounding (see reaches), reaches the target specificity
        # (it calls nothing positive).
        top = thresholds[0]
        return float(np.nextafter(top + 2 * ROUNDING * abs(top), np.inf))
    return float(thresholds[reaching[-1]])


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, threshold) at each distinct score, highest first, a case
    called positive when its score reaches the threshold (:func:`reaches`, as decisions are made)."""
    thresholds = np.unique(s)[::-1]
    lowest = lowest_reaching(thresholds)
    positives, negatives = np.sort(s[y == 1]), np.sort(s[y == 0])
    tpr = (positives.size - np.searchsorted(positives, lowest, side="left")) / positives.size
    fpr = (negatives.size - np.searchsorted(negatives, lowest, side="left")) / negatives.size
    return fpr, tpr, thresholds


def operating_points(y_val, s_val, targets: Sequence[float] = (0.95,),
                     specificity_targets: Sequence[float] | None = None,
                     label_names: Sequence[str] | None = None) -> dict:
    """Named operating thresholds chosen on validation data.

    Returns ``{"youden": t, "high_sensitivity": t, "high_specificity": t}``.
    ``targets`` are the sensitivity targets and, unless
    ``specificity_targets`` is given, the specificity targets too. With more
    than one target the names carry it: ``"high_sensitivity@0.9"``.
    For multi-label data (``y_val`` of shape (n, L)) the result maps each
    label name to such a dict.

    Example:
        >>> points = operating_points([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], targets=(1.0,))
        >>> points["youden"], points["high_sensitivity"], points["high_specificity"]
        (0.9, 0.4, 0.9)
    """
    targets = _as_targets(targets, "targets")
    spec_targets = targets if specificity_targets is None else _as_targets(specificity_targets,
                                                                          "specificity_targets")
    check_aligned(y_val, s_val, "operating_points: y_val and s_val")
    y = np.asarray(y_val)
    if y.ndim == 2 and y.shape[1] > 1:
        s = np.asarray(s_val, dtype=float)
        names = _label_names(label_names, y.shape[1])
        if s.shape != y.shape:
            raise EvaluationError(f"operating_points: s_val has shape {s.shape} but y_val has {y.shape}")
        result = {}
        for j, name in enumerate(names):
            try:
                result[name] = operating_points(*known_column(y, s, j), targets, spec_targets)
            except EvaluationError as error:
                raise EvaluationError(f"label {name!r}: {error}") from None
        return result
    points = {"youden": choose_threshold(y_val, s_val, "youden")}
    for target in targets:
        key = "high_sensitivity" if len(targets) == 1 else f"high_sensitivity@{target:g}"
        points[key] = choose_threshold(y_val, s_val, "sensitivity", target)
    for target in spec_targets:
        key = "high_specificity" if len(spec_targets) == 1 else f"high_specificity@{target:g}"
        points[key] = choose_threshold(y_val, s_val, "specificity", target)
    return points


def select_thresholds(task: str, y_val, s_val, target_sensitivity: float = 0.95,
                      target_specificity: float = 0.95, label_names: Sequence[str] | None = None) -> dict:
    """A run's operating thresholds, chosen on validation only: Youden, high sensitivity,
    high specificity and the fixed 0.5, one list entry per label for multilabel (an error names
    the label, from ``label_names``), none for multiclass (decided by argmax).

    Example:
        >>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
        >>> sorted(select_thresholds("binary", y, s))
        ['fixed', 'high_sensitivity', 'high_specificity', 'youden']
    """
    def pick(y, s):
        points = operating_points(y, s, targets=(target_sensitivity,), specificity_targets=(target_specificity,))
        return {**points, "fixed": 0.5}

    if task == "multiclass":
        return {}
    check_aligned(y_val, s_val, "select_thresholds: y_val and s_val")
    y_val, s_val = np.asarray(y_val), np.asarray(s_val)
    if task == "binary":
        return {k: float(v) for k, v in pick(y_val, s_val).items()}
    per_label = []
    for j, name in enumerate(_label_names(label_names, y_val.shape[1])):
        try:
            per_label.append(pick(*known_column(y_val, s_val, j)))
        except EvaluationError as error:
            raise EvaluationError(f"label {name!r}: {error}") from None
    return {k: [float(p[k]) for p in per_label] for k in per_label[0]}


def per_label_thresholds(Y_val, P_val, method: str = "youden", target: float = 0.95,
                         label_names: Sequence[str] | None = None) -> dict:
    """One threshold per label of a multi-label problem, chosen on validation.

    Returns ``{label_name: threshold}``.

    Example:
        >>> Y = [[0, 1], [1, 0], [1, 1], [0, 0]]
        >>> P = [[0.2, 0.7], [0.8, 0.1], [0.6, 0.9], [0.1, 0.3]]
        >>> per_label_thresholds(Y, P, label_names=["effusion", "nodule"])
        {'effusion': 0.6, 'nodule': 0.7}
    """
    check_aligned(Y_val, P_val, "per_label_thresholds: Y_val and P_val")
    Y = np.asarray(Y_val)
    P = np.asarray(P_val, dtype=float)
    if Y.ndim != 2 or P.shape != Y.shape:
        raise EvaluationError(f"per_label_thresholds: Y_val has shape {Y.shape} and P_val {P.shape}; "
                              "both must be (n_cases, n_labels)")
    names = _label_names(label_names, Y.shape[1])
    result = {}
    for j, name in enumerate(names):
        try:
            result[name] = choose_threshold(*known_column(Y, P, j), method, target)
        except EvaluationError as error:
            raise EvaluationError(f"label {name!r}: {error}") from None
    return result


def known_column(Y, S, column: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of one label of a multi-label problem, on the cases where it is known (not -1).

    Example:
        >>> known_column(np.array([[1, -1], [0, 1]]), np.array([[.9, .2], [.1, .8]]), 1)
        (array([1]), array([0.8]))
    """
    Y, S = np.asarray(Y), np.asarray(S)
    known = Y[:, column] != UNKNOWN_LABEL
    return Y[known, column], S[known, column]


def lowest_reaching(threshold):
    """The lowest score that reaches ``threshold`` (each of an array): a millionth of it below (float32 rounding).

    Example:
        >>> float(lowest_reaching(0.5))
        0.4999995
    """
    t = np.asarray(threshold, dtype=float)
    return t - ROUNDING * np.abs(t)


def reaches(scores, threshold) -> np.ndarray:
    """Whether each score reaches ``threshold`` (broadcasting, no checks): ``score >= threshold`` up to float32
    rounding, a millionth of the threshold. A threshold is an observed validation score, and the same image scored
    again (in another batch, by ``tfmed predict``) can come back a rounding step lower; it keeps its decision.

    Example:
        >>> bool(reaches(0.7288019061088562, 0.728801965713501)), bool(reaches(0.7287, 0.728801965713501))
        (True, False)
    """
    return np.asarray(scores, dtype=float) >= lowest_reaching(threshold)


def apply_threshold(scores, threshold) -> np.ndarray:
    """0/1 decisions: ``scores >= threshold`` (up to float32 rounding, see :func:`reaches`).

    ``scores`` of shape (n, L) take one threshold per column (a sequence, or
    a mapping in column order); a single number applies to all.

    Example:
        >>> apply_threshold([[0.2, 0.9], [0.7, 0.4]], [0.5, 0.5]).tolist()
        [[0, 1], [1, 0]]
    """
    s = np.asarray(scores, dtype=float)
    if isinstance(threshold, Mapping):
        threshold = list(threshold.values())
    t = np.asarray(threshold, dtype=float)
    if t.ndim > 1 or (t.ndim == 1 and (s.ndim != 2 or t.size != s.shape[1])):
        raise EvaluationError(f"apply_threshold: {t.size} thresholds for scores of shape {s.shape}; "
                              "give one number, or one threshold per score column")
    if np.isnan(t).any():
        raise EvaluationError("apply_threshold: a threshold is NaN; choose thresholds on validation first")
    return reaches(s, t).astype(int)


def _check_pair(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = binary_scores(y_true, scores, "choose_threshold")
    if y.min() == y.max():
        only = "positive (1)" if y[0] == 1 else "negative (0)"
        raise EvaluationError(f"cannot choose a threshold: the labels hold only {only} cases "
                              f"(n={y.size}); the validation split needs both classes")
    return y, s


def _as_targets(targets, name: str) -> tuple:
    if isinstance(targets, (int, float)):
        targets = (targets,)
    targets = tuple(float(t) for t in targets)
    if not targets:
        raise EvaluationError(f"operating_points: {name} is empty; give at least one target, e.g. (0.95,)")
    return targets


def _label_names(label_names, count: int) -> list[str]:
    if label_names is None:
        return [f"label_{j}" for j in range(count)]
    names = [str(name) for name in label_names]
    if len(names) != count:
        raise EvaluationError(f"{len(names)} label names given for {count} label columns")
    return names
