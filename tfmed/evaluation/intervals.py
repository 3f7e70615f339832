"""Confidence intervals for clinical metrics.

* :func:`wilson_interval` - Wilson score interval for a proportion
  (sensitivity, specificity, PPV, NPV, accuracy).
* :func:`delong_auc_ci` - ROC AUC with the DeLong interval, computed with the
  fast midrank algorithm of Sun & Xu (2014); ties count one half.
* :func:`delong_test` - paired DeLong test of two models scored on the same
  cases.
* :func:`macro_auc_ci`, :func:`macro_auc_test` - the same for the macro AUC
  of multi-class and multi-label models (:func:`macro_auc_covariance`).
* :func:`logit_interval` - a normal interval on the AUC's logit scale
  (DeLong's variance gives one side of every AUC interval).
* :func:`newcombe_interval` - the score interval that every AUC interval
  also spans, so that a handful of cases cannot shrink it to a point.
* :func:`separation_bound` - the lower bound that an AUC of 1 (every positive
  above every negative) gets instead of a zero-width interval.
* :func:`bootstrap_ci` - percentile bootstrap interval for any metric,
  resampling within each class by default (stratified).

Nothing here imports TensorFlow.

Example:
    >>> lo, hi = wilson_interval(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from scipy import integrate, optimize, special, stats

from tfmed.config import UNKNOWN_LABEL
from tfmed.errors import TfmedError


class EvaluationError(TfmedError):
    """Inputs to an evaluation function are inconsistent or invalid.

    The message names the argument at fault and what would fix it.

    Example:
        >>> try:
        ...     wilson_interval(11, 10)
        ... except EvaluationError as error:
        ...     print("successes" in str(error))
        True
    """


def z_value(level: float) -> float:
    """Two-sided standard normal quantile for a confidence ``level``.

    Example:
        >>> round(z_value(0.95), 4)
        1.96
    """
    level = _check_level(level)
    return float(stats.norm.ppf(0.5 + level / 2.0))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for the proportion ``successes / n``.

    Returns ``(nan, nan)`` when ``n`` is 0 (the proportion is undefined).

    Example:
        >>> lo, hi = wilson_interval(0, 20)
        >>> lo, round(hi, 3)
        (0.0, 0.161)
    """
    if isinstance(successes, bool) or isinstance(n, bool):
        raise EvaluationError("wilson_interval: successes and n must be counts, not booleans")
    if n != int(n) or successes != int(successes):
        raise EvaluationError(f"wilson_interval: successes ({successes}) and n ({n}) must be whole numbers")
    successes, n = int(successes), int(n)
    if n < 0 or successes < 0:
        raise EvaluationError(f"wilson_interval: successes ({successes}) and n ({n}) must not be negative")
    if successes > n:
        raise EvaluationError(f"wilson_interval: successes ({successes}) exceeds n ({n}); "
                              "pass the number of successes out of n trials")
    z = z_value(level)
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denominator
    half = z / denominator * np.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n))
    return float(max(0.0, center - half)), float(min(1.0, center + half))


def delong_covariance(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of one or more score arrays and the DeLong covariance between them.

    ``scores`` is one array of shape (n,) or several stacked as (k, n), all
    for the same cases ``y_true`` (0/1). Returns ``(aucs, covariance)`` with
    shapes (k,) and (k, k).

    Example:
        >>> aucs, cov = delong_covariance([0, 0, 1, 1], [[0.1, 0.4, 0.35, 0.8]])
        >>> float(aucs[0])
        0.75
    """
    return _delong(y_true, scores)[:2]


def _delong(y_true, scores) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """:func:`delong_covariance` and the ROC's ``((n_pos, n_neg),)``."""
    y = _binary_labels(y_true, "y_true")
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] != y.size:
        raise EvaluationError(f"delong: scores have shape {np.shape(scores)}; expected ({y.size},) "
                              f"or (k, {y.size}) to match y_true")
    if not np.all(np.isfinite(matrix)):
        raise EvaluationError("delong: scores contain NaN or infinite values; "
                              "remove or fix those predictions first")
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        only = "positive (1)" if n_neg == 0 else "negative (0)"
        raise EvaluationError(f"delong: AUC is undefined because y_true has only {only} cases "
                              f"(n={y.size}); both classes are needed")
    aucs, v_pos, v_neg = _placements(matrix, y == 1)
    cov_pos = np.atleast_2d(np.cov(v_pos)) if n_pos > 1 else np.zeros((len(matrix), len(matrix)))
    cov_neg = np.atleast_2d(np.cov(v_neg)) if n_neg > 1 else np.zeros((len(matrix), len(matrix)))
    covariance = cov_pos / n_pos + cov_neg / n_neg
    return aucs, covariance, ((n_pos, n_neg),)


def macro_auc_covariance(y_true, probas) -> tuple[np.ndarray, np.ndarray]:
    """Macro AUCs of one or more multi-class or multi-label models and their covariance.

    ``y_true`` holds class indices 0..K-1 (multi-class, one-vs-rest AUCs) or
    a 0/1 matrix (n, K) (multi-label, one AUC per label, with -1 where a
    label is unknown: that case is left out of that label's AUC and adds no
    component for it). ``probas`` is one
    (n, K) score array or several stacked as (m, n, K), all for the same
    cases. The macro AUC averages the AUCs of the columns that have cases on
    both sides (as :func:`multiclass_metrics` and :func:`multilabel_metrics`
    do). Its variance extends DeLong's structural components to that mean:
    each case gets one component per model, the mean over columns of its
    centred placement in that column's ROC divided by
    ``sqrt(c * (c - 1))``, where ``c`` counts the cases on its side; the
    covariance is the sum over cases of the products of components. For one
    binary column, or two classes, it equals :func:`delong_covariance`.
    Returns ``(aucs, covariance)`` with shapes (m,) and (m, m).

    Example:
        >>> y = [0, 0, 1, 1, 2, 2]
        >>> proba = [[.7, .2, .1], [.3, .3, .4], [.2, .6, .2], [.4, .4, .2], [.1, .2, .7], [.3, .3, .4]]
        >>> aucs, cov = macro_auc_covariance(y, proba)
        >>> round(float(aucs[0]), 3), cov.shape
        (0.917, (1, 1))
    """
    return _macro_covariance(y_true, probas)[:2]


def _macro_covariance(y_true, probas) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """:func:`macro_auc_covariance` and ``(n_inside, n_outside)`` of each column in the mean."""
    y = np.asarray(y_true)
    stack = np.asarray(probas, dtype=float)
    if stack.ndim == 2:
        stack = stack[None]
    n = stack.shape[1] if stack.ndim == 3 else -1
    if stack.ndim != 3 or y.ndim not in (1, 2) or len(y) != n or (y.ndim == 2 and y.shape != stack.shape[1:]):
        raise EvaluationError(f"macro AUC: scores have shape {np.shape(probas)} and y_true {y.shape}; "
                              "expected (n, K) or (m, n, K) scores for n cases with one class index "
                              "each (multi-class) or a 0/1 row of K labels each (multi-label)")
    if not np.all(np.isfinite(stack)):
        raise EvaluationError("macro AUC: scores contain NaN or infinite values; "
                              "remove or fix those predictions first")
    width = stack.shape[2]
    if y.ndim == 1:
        if y.dtype.kind not in "iu" or y.size == 0 or y.min() < 0 or y.max() >= width:
            raise EvaluationError(f"macro AUC: y_true must hold class indices 0..{width - 1}, one per case "
                                  f"(got {y.size} values of type {y.dtype})")
        indicator = np.eye(width, dtype=int)[y]
    else:
        if not np.isin(y, (0, 1, UNKNOWN_LABEL)).all():
            raise EvaluationError("macro AUC: a multi-label y_true must hold only 0 and 1 (-1 where unknown)")
        indicator = y.astype(int)
    known = indicator != UNKNOWN_LABEL   # a multi-label case counts for the labels known for it
    sizes = (indicator == 1).sum(axis=0)  # cases inside each column
    outside = (indicator == 0).sum(axis=0)
    columns = [k for k in range(width) if sizes[k] > 0 and outside[k] > 0]
    if not columns:
        raise EvaluationError(f"macro AUC: undefined because every case is of class {int(y[0])} "
                              f"(n={n}); at least two classes are needed" if y.ndim == 1 else
                              f"macro AUC: undefined because every label is all 0 or all 1 (n={n})")
    aucs = np.zeros(len(stack))
    components = np.zeros((len(stack), n))
    for k in columns:
        rows = np.flatnonzero(known[:, k])
        inside = indicator[rows, k] == 1
        column_aucs, v_pos, v_neg = _placements(stack[:, rows, k], inside)
        for side, values in ((rows[inside], v_pos), (rows[~inside], v_neg)):
            count = len(side)
            if count > 1:
                components[:, side] += (values - column_aucs[:, None]) / np.sqrt(count * (count - 1))
        aucs += column_aucs
    aucs /= len(columns)
    components /= len(columns)
    counts = tuple((int(sizes[k]), int(outside[k])) for k in columns)
    if y.ndim == 1 and len(columns) == 2:  # two classes: both columns split the same cases the same way
        counts = counts[:1]
    return aucs, components @ components.T, counts


def _placements(matrix: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs of score rows ``matrix`` (k, n) and DeLong's placement values, ties counting one half.

    For each positive, the share of negatives it outranks; for each negative,
    the share of positives that outrank it (fast midrank algorithm of Sun &
    Xu 2014).
    """
    n_pos, n_neg = int(positive.sum()), int(positive.size - positive.sum())
    positives, negatives = matrix[:, positive], matrix[:, ~positive]
    rank_pos = stats.rankdata(positives, axis=1)          # midranks within positives
    rank_neg = stats.rankdata(negatives, axis=1)          # midranks within negatives
    rank_all = stats.rankdata(np.hstack([positives, negatives]), axis=1)
    aucs = (rank_all[:, :n_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    v_pos = (rank_all[:, :n_pos] - rank_pos) / n_neg
    v_neg = 1.0 - (rank_all[:, n_pos:] - rank_neg) / n_pos
    return aucs, v_pos, v_neg


def delong_auc_ci(y_true, scores, level: float = 0.95) -> tuple[float, float, float]:
    """ROC AUC and its confidence interval, ``(auc, lo, hi)``.

    Each end is the farther of DeLong's interval, normal on the logit scale
    of the AUC so that it stays inside (0, 1), and :func:`newcombe_interval`,
    which a handful of cases cannot shrink (see ``_auc_interval``); ties
    count one half.

    Example:
        >>> auc, lo, hi = delong_auc_ci([0, 0, 0, 1, 1, 1], [0.1, 0.3, 0.6, 0.4, 0.8, 0.9])
        >>> round(auc, 3), lo < auc < hi
        (0.889, True)
    """
    check_aligned(y_true, scores, "delong_auc_ci: y_true and scores")
    aucs, covariance, counts = _delong(y_true, np.asarray(scores, dtype=float).reshape(-1))
    return _auc_interval(float(aucs[0]), float(covariance[0, 0]), level, counts)


def macro_auc_ci(y_true, proba, level: float = 0.95) -> tuple[float, float, float]:
    """Macro AUC (multi-class or multi-label) and its interval, ``(auc, lo, hi)``.

    The variance is :func:`macro_auc_covariance`'s. As for one AUC, each end
    is the farther of the normal interval on the logit scale and
    :func:`newcombe_interval` over the columns' counts.

    Example:
        >>> y = [0, 0, 1, 1, 2, 2, 0, 1, 2]
        >>> proba = [[.6, .3, .1], [.5, .2, .3], [.2, .6, .2], [.3, .4, .3], [.1, .2, .7], [.2, .3, .5],
        ...          [.3, .4, .3], [.5, .3, .2], [.2, .2, .6]]
        >>> auc, lo, hi = macro_auc_ci(y, proba)
        >>> round(auc, 3), lo < auc < hi
        (0.917, True)
    """
    check_aligned(y_true, proba, "macro_auc_ci: y_true and proba")
    aucs, covariance, counts = _macro_covariance(y_true, np.asarray(proba, dtype=float))
    return _auc_interval(float(aucs[0]), float(covariance[0, 0]), level, counts)


def delong_test(y_true, scores_a, scores_b) -> dict:
    """Paired DeLong test: do two models scored on the same cases differ in AUC?

    Returns ``dict(auc_a, auc_b, diff, z, p_value, ci_a, ci_b, test)`` with
    ``diff = auc_a - auc_b``, a two-sided p-value and each AUC's 95% interval
    ``[lo, hi]`` (as :func:`delong_auc_ci` gives it: the farther ends of DeLong's
    logit-scale interval and Newcombe's). When DeLong's variance of the difference is 0 (a
    handful of cases, where z would be infinite and p 0), the p-value comes from
    :func:`permutation_p` instead and ``test`` says so.

    Example:
        >>> y = [0, 0, 0, 1, 1, 1]
        >>> result = delong_test(y, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
        >>> result["diff"], result["p_value"]
        (0.0, 1.0)
    """
    for first, second, what in ((y_true, scores_a, "y_true and scores_a"), (y_true, scores_b, "y_true and scores_b")):
        check_aligned(first, second, f"delong_test: {what}")
    a = np.asarray(scores_a, dtype=float).reshape(-1)
    b = np.asarray(scores_b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise EvaluationError(f"delong_test: scores_a has {a.size} values and scores_b {b.size}; "
                              "the paired test needs both models' scores for the same cases")
    return _paired(_delong, y_true, a, b)


def macro_auc_test(y_true, proba_a, proba_b) -> dict:
    """Paired test of two multi-class (or multi-label) models' macro AUCs on the same cases.

    The counterpart of :func:`delong_test`, with the covariance of
    :func:`macro_auc_covariance`; returns the same keys.

    Example:
        >>> y = [0, 0, 1, 1, 2, 2]
        >>> proba = [[.7, .2, .1], [.5, .3, .2], [.2, .6, .2], [.4, .4, .2], [.1, .2, .7], [.3, .3, .4]]
        >>> result = macro_auc_test(y, proba, proba)
        >>> result["diff"], result["p_value"]
        (0.0, 1.0)
    """
    for first, second, what in ((y_true, proba_a, "y_true and proba_a"), (y_true, proba_b, "y_true and proba_b")):
        check_aligned(first, second, f"macro_auc_test: {what}")
    a = np.asarray(proba_a, dtype=float)
    b = np.asarray(proba_b, dtype=float)
    if a.shape != b.shape:
        raise EvaluationError(f"macro_auc_test: proba_a has shape {a.shape} and proba_b {b.shape}; "
                              "the paired test needs both models' class scores for the same cases")
    return _paired(_macro_covariance, y_true, a, b)


def _paired(covariance: Callable, y_true, a: np.ndarray, b: np.ndarray) -> dict:
    """The paired test of two models' AUCs from ``covariance(y_true, stacked scores) -> (aucs, covariance)``;
    when the variance of the difference is 0 (a handful of cases), the p-value of swapping their scores."""
    result = _paired_test(*covariance(y_true, np.stack([a, b])))
    if np.isinf(result["z"]):
        result["p_value"] = permutation_p(lambda x, z: float(np.subtract(*covariance(y_true, np.stack([x, z]))[0])),
                                          a, b)
        result["test"] = PERMUTATION_TEST
    return result


def permutation_p(difference: Callable, a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of ``difference(a, b)`` (e.g. of two AUCs) when the two models' scores are swapped
    case by case at random: every swap pattern for at most 12 cases (an exact test), else ``draws`` random
    patterns with the observed one counted. Cases lie along the first axis of ``a`` and ``b``.

    Example:
        >>> y = np.array([0, 1])
        >>> auc_gap = lambda x, z: float(np.mean(x[y == 1] > x[y == 0]) - np.mean(z[y == 1] > z[y == 0]))
        >>> permutation_p(auc_gap, np.array([0.1, 0.9]), np.array([0.9, 0.1]))
        0.5
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    observed, n = abs(difference(a, b)), len(a)
    if n <= 12:
        patterns, counted = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1 == 1, 0
    else:
        patterns, counted = np.random.default_rng(seed).random((draws, n)) < 0.5, 1
    hits = 0
    for swap in patterns:
        mask = swap.reshape((n,) + (1,) * (a.ndim - 1))
        hits += abs(difference(np.where(mask, b, a), np.where(mask, a, b))) >= observed - 1e-12
    return float((hits + counted) / (len(patterns) + counted))


def _auc_interval(auc: float, variance: float, level: float,
                  counts: tuple[tuple[int, int], ...]) -> tuple[float, float, float]:
    """``(auc, lo, hi)``: each end the farther of DeLong's and Newcombe's intervals.

    DeLong's interval is normal on the logit scale,
    ``expit(logit(auc) +/- z * se / (auc (1 - auc)))``: on the AUC's own scale
    a normal interval runs narrow near 1 and must be clipped; on the logit
    scale it stretches away from 1 and stays inside (0, 1). It measures the
    spread from the cases' own ranks, so with a handful of cases on one side,
    or with only a few misranked pairs, it can shrink far below the true
    spread. :func:`newcombe_interval` takes the spread that the AUC itself
    implies instead, so it cannot collapse. Taking the farther end of the two
    held the true AUC where either alone ran narrow (simulated coverage in
    docs/studies.md). An AUC of 1 (or 0) gets
    ``[separation_bound, 1]`` (or ``[0, 1 - separation_bound]``) for the
    ``(n_pos, n_neg)`` of its ROC curve, the mean over the ``counts`` of a
    macro AUC's columns.
    """
    if auc >= 1.0 or auc <= 0.0:
        bound = float(np.mean([separation_bound(n_pos, n_neg, level) for n_pos, n_neg in counts]))
        return (auc, bound, 1.0) if auc >= 1.0 else (auc, 0.0, 1.0 - bound)
    delong_lo, delong_hi = logit_interval(auc, variance, level)
    score_lo, score_hi = newcombe_interval(auc, counts, level)
    return auc, min(delong_lo, score_lo), max(delong_hi, score_hi)


def logit_interval(auc: float, variance: float, level: float = 0.95) -> tuple[float, float]:
    """A normal interval on the logit scale, ``expit(logit(auc) +/- z * se / (auc (1 - auc)))``.

    ``variance`` is the AUC's (e.g. DeLong's); ``auc`` must lie strictly
    between 0 and 1. Zero variance gives the point.

    Example:
        >>> lo, hi = logit_interval(0.9, 0.03 ** 2)
        >>> round(lo, 3), round(hi, 3)
        (0.824, 0.945)
    """
    if not 0.0 < auc < 1.0:
        raise EvaluationError(f"logit_interval: auc={auc}; the logit scale needs an AUC strictly between 0 and 1 "
                              "(an AUC of 0 or 1 gets separation_bound)")
    if not (np.isfinite(variance) and variance >= -1e-15):  # a rounding error below 0 is 0
        raise EvaluationError(f"logit_interval: variance={variance}; give the AUC's variance, a number >= 0")
    half = z_value(level) * float(np.sqrt(max(variance, 0.0))) / (auc * (1.0 - auc))
    return float(special.expit(special.logit(auc) - half)), float(special.expit(special.logit(auc) + half))


def newcombe_interval(auc: float, counts, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's score interval ``(lo, hi)`` for an AUC from ``counts`` = ``((n_pos, n_neg), ...)``.

    The AUCs ``t`` whose own variance puts the observed ``auc`` within
    ``z`` standard errors: ``(auc - t)^2 = z^2 V(t)``. ``V`` is Hanley and
    McNeil's variance of an AUC of ``t`` with both class sizes replaced by
    their mean (Newcombe 2006, Statistics in Medicine 25:559-573, method 5):
    ``V(t) = t (1 - t) (1 + (N - 1) ((1 - t) / (2 - t) + t / (1 + t))) / (n_pos n_neg)``
    with ``N = (n_pos + n_neg) / 2``. For a macro AUC (one pair of counts per
    column) ``V`` is the mean of the columns' variances over their number, as
    for a mean of independent AUCs (two classes give one column, the second
    being the first's mirror). The interval depends only on the AUC and
    the counts, so it keeps a width where DeLong's variance vanishes.

    Example:
        >>> lo, hi = newcombe_interval(0.9, ((10, 10),))
        >>> round(lo, 3), round(hi, 3)
        (0.656, 0.974)
    """
    if not 0.0 <= auc <= 1.0:
        raise EvaluationError(f"newcombe_interval: auc={auc} lies outside [0, 1]")
    try:
        sizes = np.atleast_2d(np.asarray(counts, dtype=float))
    except ValueError:
        sizes = np.zeros((0, 2))
    if sizes.ndim != 2 or sizes.shape[1] != 2 or sizes.size == 0 or (sizes < 1).any() \
            or not np.all(np.isfinite(sizes) & (sizes == np.round(sizes))):
        raise EvaluationError(f"newcombe_interval: counts={counts!r}; every column needs whole numbers of cases, "
                              "at least one of each class, as (n_pos, n_neg) pairs")
    z2 = z_value(level) ** 2
    products, half_sums = sizes[:, 0] * sizes[:, 1], sizes.sum(axis=1) / 2.0

    def gap(t: float) -> float:
        spread = 1.0 + (half_sums - 1.0) * ((1.0 - t) / (2.0 - t) + t / (1.0 + t))
        variance = float(np.mean(t * (1.0 - t) * spread / products)) / len(sizes)
        return (auc - t) ** 2 - z2 * variance

    lo = 0.0 if auc == 0.0 else float(optimize.brentq(gap, 0.0, min(auc, 1.0 - 1e-12)))
    hi = 1.0 if auc == 1.0 else float(optimize.brentq(gap, max(auc, 1e-12), 1.0))
    return lo, hi


def separation_bound(n_pos: int, n_neg: int, level: float = 0.95) -> float:
    """The lowest AUC that still fits ``n_pos`` positives all scored above ``n_neg`` negatives.

    When every positive outranks every negative the AUC is 1 and DeLong's
    variance is 0, so a normal interval would be the point 1. This bound is
    the AUC at which such complete separation has probability
    ``(1 - level) / 2`` under the binormal model (negatives N(0, 1),
    positives N(d, 1), AUC = Phi(d / sqrt 2)), as the Clopper-Pearson
    interval does for n successes out of n. In simulation
    (``benchmarks/auc_intervals.py``, 3-20 positives) the 95% interval held
    the true AUC in 97-98% of binormal data sets and 94.5-98% under other
    ROC shapes, where the point 1 held it in 6-94%.

    Example:
        >>> round(separation_bound(10, 10), 3), round(separation_bound(1, 1), 3)
        (0.866, 0.025)
    """
    counts = [_case_count(n_pos), _case_count(n_neg)]
    if None in counts or min(counts) < 1:
        raise EvaluationError(f"separation_bound: n_pos={n_pos!r} and n_neg={n_neg!r}; give whole numbers of cases, "
                              "at least one of each class")
    return _separation_bound(*counts, _check_level(level))


def _case_count(value) -> int | None:
    """``value`` as a whole number of cases (None when it is not one, e.g. 2.5, [10] or True)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


@functools.lru_cache(maxsize=512)
def _separation_bound(n_pos: int, n_neg: int, level: float) -> float:
    tail = (1.0 - level) / 2.0
    shift = optimize.brentq(lambda d: _separation_probability(d, n_pos, n_neg) - tail, -20.0, 20.0)
    return float(stats.norm.cdf(shift / np.sqrt(2.0)))


def _separation_probability(shift: float, n_pos: int, n_neg: int) -> float:
    """P(min of ``n_pos`` draws of N(shift, 1) > max of ``n_neg`` draws of N(0, 1)):
    the density of the negatives' maximum times the chance that every positive lies above it."""
    grid = np.linspace(-12.0, 12.0 + max(shift, 0.0), 24001)
    log_density = (np.log(n_neg) + stats.norm.logpdf(grid) + (n_neg - 1) * stats.norm.logcdf(grid)
                   + n_pos * stats.norm.logsf(grid - shift))
    return float(integrate.trapezoid(np.exp(log_density), grid))


PERMUTATION_TEST = "paired permutation (DeLong's variance is 0)"


def _paired_test(aucs: np.ndarray, covariance: np.ndarray, counts: tuple[tuple[int, int], ...]) -> dict:
    """Two-sided z test of ``aucs[0] - aucs[1]`` with their covariance (2, 2); each AUC's 95% interval (the
    farther ends of DeLong's logit-scale interval and Newcombe's)."""
    diff = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    if variance <= 1e-15:
        z = 0.0 if abs(diff) < 1e-12 else float(np.sign(diff) * np.inf)
    else:
        z = diff / np.sqrt(variance)
    p_value = float(2.0 * stats.norm.sf(abs(z)))
    intervals = [list(_auc_interval(float(aucs[k]), float(covariance[k, k]), 0.95, counts)[1:]) for k in (0, 1)]
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff,
            "z": float(z), "p_value": p_value, "ci_a": intervals[0], "ci_b": intervals[1], "test": "delong"}


def bootstrap_distribution(metric_fn: Callable, y_true, scores, n_resamples: int = 1000,
                           stratified: bool = True, seed: int = 0) -> list:
    """Values of ``metric_fn(y_true[idx], scores[idx])`` over bootstrap resamples.

    With ``stratified=True`` each resample draws, for every class, as many
    cases of that class as the data has (with replacement), so every resample
    keeps the class mix; this needs 1-D class labels. Multi-label targets
    (2-D) are resampled by row.

    Example:
        >>> values = bootstrap_distribution(lambda y, s: float(np.mean(y)), [0, 1, 1, 0], [0.2, 0.9, 0.6, 0.1],
        ...                                 n_resamples=5)
        >>> values
        [0.5, 0.5, 0.5, 0.5, 0.5]
    """
    y = np.asarray(y_true)
    s = np.asarray(scores)
    if len(y) != len(s):
        raise EvaluationError(f"bootstrap: y_true has {len(y)} rows but scores has {len(s)}; "
                              "they must describe the same cases")
    if len(y) == 0:
        raise EvaluationError("bootstrap: no cases to resample (y_true is empty)")
    if int(n_resamples) < 1:
        raise EvaluationError(f"bootstrap: n_resamples is {n_resamples}; it must be at least 1")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == value) for value in np.unique(y)] if (stratified and y.ndim == 1) \
        else [np.arange(len(y))]
    values = []
    for _ in range(int(n_resamples)):
        index = np.concatenate([rng.choice(group, size=group.size, replace=True) for group in groups])
        values.append(metric_fn(y[index], s[index]))
    return values


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``values``, ignoring None/NaN ones.

    Returns ``(nan, nan)`` when no value is defined.

    Example:
        >>> [round(v, 6) for v in percentile_interval(list(range(101)), level=0.9)]
        [5.0, 95.0]
    """
    level = _check_level(level)
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(metric_fn: Callable, y_true, scores, n_resamples: int = 1000, level: float = 0.95,
                 stratified: bool = True, seed: int = 0) -> tuple[float, float, float]:
    """Bootstrap percentile interval of a metric: ``(estimate, lo, hi)``.

    ``metric_fn(y_true, scores)`` returns a number; resamples where it is
    undefined (None or NaN, e.g. a class missing) are left out of the
    interval. The estimate is the metric on the full data.

    Example:
        >>> from sklearn.metrics import roc_auc_score
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 50)
        >>> s = y + rng.normal(0, 1, 100)
        >>> auc, lo, hi = bootstrap_ci(roc_auc_score, y, s, n_resamples=200)
        >>> lo < auc < hi
        True
    """
    level = _check_level(level)
    values = bootstrap_distribution(metric_fn, y_true, scores, n_resamples, stratified, seed)
    estimate = metric_fn(np.asarray(y_true), np.asarray(scores))
    estimate = float("nan") if estimate is None else float(estimate)
    lo, hi = percentile_interval(values, level)
    return estimate, lo, hi


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < level < 1.0:
        raise EvaluationError(f"confidence level is {level!r}; it must be a number strictly between "
                              "0 and 1, e.g. 0.95")
    return float(level)


def auc_defined(y) -> bool:
    """Whether the labels ``y`` have an AUC: more than one class among them; for a multi-label
    (n, L) matrix, some label known both present (1) and absent (0), unknown labels (-1) left out.

    Example:
        >>> auc_defined([1, 1, 1]), auc_defined([[1, -1], [0, -1]])
        (False, True)
    """
    y = np.asarray(y)
    if y.ndim == 2:
        return any({0, 1} <= set(np.unique(column).tolist()) for column in y.T)
    return np.unique(y).size > 1


def binary_scores(y_true, scores, where: str, noun: str = "scores",
                  labels: str = "y_true") -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and one finite score per case (shape (n,) or (n, 1)) as two 1-D arrays, or an
    EvaluationError that starts with ``where`` and says what is wrong (``noun`` and ``labels`` name
    the two arguments).

    Example:
        >>> binary_scores([0, 1], [[0.2], [0.7]], "roc_plot")[1]
        array([0.2, 0.7])
    """
    check_aligned(y_true, scores, f"{where}: {labels} and {noun}")
    y = _binary_labels(y_true, f"{where}: {labels}")
    s = np.asarray(scores, dtype=float)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != y.shape:
        raise EvaluationError(f"{where}: {y.size} labels but {noun} of shape {np.shape(scores)}; pass one "
                              "score per case, shape (n,) or (n, 1)")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise EvaluationError(f"{where}: {noun} contain NaN or infinite values ({bad.size} values, first at "
                              f"row {int(bad[0])}); fix or drop those predictions")
    return y, s


def check_aligned(y_true, scores, what: str) -> None:
    """Refuse labels and scores given as pandas objects with different indexes: they are read by position, so
    a sorted copy of one would pair each label with another case's score.

    Example:
        >>> import pandas as pd
        >>> check_aligned(pd.Series([0, 1]), pd.Series([0.2, 0.7], index=[1, 0]), "labels")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.evaluation.intervals.EvaluationError: labels are pandas objects with different indexes ...
    """
    index_a, index_b = getattr(y_true, "index", None), getattr(scores, "index", None)  # a list's is a method
    if hasattr(index_a, "equals") and hasattr(index_b, "equals") and not index_a.equals(index_b):
        raise EvaluationError(f"{what} are pandas objects with different indexes (the cases are paired by position); "
                              "align them first (scores.loc[y_true.index]), or pass .to_numpy() of each")


def _binary_labels(y_true, name: str) -> np.ndarray:
    """Check and return 0/1 integer labels as a 1-D array."""
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise EvaluationError(f"{name} has shape {y.shape}; expected one 0/1 label per case")
    if y.size == 0:
        raise EvaluationError(f"{name} is empty; there are no cases to evaluate")
    if y.dtype.kind == "b":
        return y.astype(int)
    if y.dtype.kind not in "iuf":
        raise EvaluationError(f"{name} has values of type {y.dtype}; expected 0/1 labels")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EvaluationError(f"{name} must hold only 0 and 1; row {first} is {y[first].item()!r} "
                              f"({int(bad.sum())} such rows)")
    return y.astype(int)
