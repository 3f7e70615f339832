"""Is the model worth using, and are its probabilities right? Decision curves and the calibration line.

An AUC says how well scores rank cases; a clinician acting on a probability needs more. Two checks
on a binary model's probabilities:

* **Net benefit** (Vickers & Elkin 2006). Acting on every case whose probability reaches a
  threshold probability ``t`` (the risk at which one would act: ``t / (1 - t)`` is how many
  needless actions one accepts per case of disease found) gives
  ``net benefit = TP / n - FP / n * t / (1 - t)``. The decision curve plots it over ``t``
  beside acting on everyone (``treat all``) and on no one (0). :func:`beneficial_ranges` gives
  the thresholds where the model beats both: outside them, a simple rule does as well.
* **The calibration line** (Cox 1958): the logistic regression of the outcome on the logit of the
  probability. Its ``slope`` is 1 for probabilities that are neither too extreme (< 1, the usual
  sign of overfitting) nor too timid (> 1); its ``intercept`` ("calibration in the large", with
  the slope fixed at 1) is 0 when as many cases are predicted as occur (< 0: too many predicted).

Both read the scores as probabilities in [0, 1]: rank-averaged ensemble scores are not.

Example:
    >>> y = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    >>> p = np.array([.1, .2, .3, .8, .6, .4, .3, .2])
    >>> round(net_benefit(y, p, 0.5), 3), round(net_benefit(y, np.ones(8), 0.5), 3)
    (0.25, -0.25)
    >>> beneficial_ranges(decision_curve(y, p))
    [[0.11, 0.8]]
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression

from .intervals import EvaluationError, binary_scores
from .thresholds import lowest_reaching, reaches

THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # threshold probabilities of a decision curve
_EDGE = 1e-6  # probabilities are kept this far from 0 and 1 before their logit is taken


def _checked(y, probabilities, where: str) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and one probability in [0, 1] per case, or an EvaluationError naming what is wrong."""
    y, p = binary_scores(y, probabilities, where, "probabilities", labels="y")
    bad = np.flatnonzero((p < 0.0) | (p > 1.0))
    if bad.size:
        raise EvaluationError(f"{where}: probabilities must lie in [0, 1]; row {int(bad[0])} is {float(p[bad[0]])} "
                              f"({bad.size} such rows)")
    return y, p


def _checked_thresholds(thresholds, where: str) -> np.ndarray:
    t = np.asarray(thresholds, dtype=float).reshape(-1)
    if not np.all((t > 0.0) & (t < 1.0)):
        raise EvaluationError(f"{where}: threshold probabilities must lie strictly between 0 and 1 "
                              f"(got {t.tolist()[:5]})")
    return t


def net_benefit(y, probabilities, threshold: float) -> float:
    """Net benefit of acting on every case whose probability reaches ``threshold`` (0 < threshold < 1; reaching
    as :func:`~tfmed.evaluation.thresholds.reaches`, the rule every decision follows).

    Example:
        >>> net_benefit([1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1], 0.5)
        0.0
    """
    y, p = _checked(y, probabilities, "net_benefit")
    threshold = float(_checked_thresholds([threshold], "net_benefit")[0])
    called = reaches(p, threshold)
    odds = threshold / (1.0 - threshold)
    return float(((called & (y == 1)).sum() - (called & (y == 0)).sum() * odds) / y.size)


def decision_curve(y, probabilities, thresholds=THRESHOLDS) -> dict:
    """The decision curve: net benefit of the model and of acting on everyone at each threshold.

    Returns ``{"thresholds": [...], "model": [...], "treat_all": [...]}`` (acting on no one is 0).

    Example:
        >>> curve = decision_curve([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4], [0.5])
        >>> curve["model"], curve["treat_all"]
        ([0.5], [0.0])
    """
    y, p = _checked(y, probabilities, "decision_curve")
    t = _checked_thresholds(thresholds, "decision_curve")
    odds = t / (1.0 - t)
    positives, negatives = np.sort(p[y == 1]), np.sort(p[y == 0])
    lowest = lowest_reaching(t)  # as in net_benefit
    found = positives.size - np.searchsorted(positives, lowest, side="left")
    needless = negatives.size - np.searchsorted(negatives, lowest, side="left")
    return {"thresholds": t.tolist(), "model": ((found - needless * odds) / y.size).tolist(),
            "treat_all": ((positives.size - negatives.size * odds) / y.size).tolist()}


def beneficial_ranges(curve: dict) -> list[list[float]]:
    """The runs of thresholds where the model's net benefit beats acting on everyone and on no one, each
    ``[first, last]``; [] where it never does.

    Example:
        >>> beneficial_ranges({"thresholds": [.1, .2, .3, .4], "model": [.1, .2, 0, .1], "treat_all": [.2, .1, -.1, -.2]})
        [[0.2, 0.2], [0.4, 0.4]]
    """
    ranges: list[list[float]] = []
    previous = False
    for threshold, model, everyone in zip(curve["thresholds"], curve["model"], curve["treat_all"]):
        better = model > max(everyone, 0.0)
        if better and previous:
            ranges[-1][1] = threshold
        elif better:
            ranges.append([threshold, threshold])
        previous = better
    return ranges


def maximum_likelihood_logistic() -> LogisticRegression:
    """An unpenalised logistic regression solved to the maximum-likelihood fit (scikit-learn's default
    tolerance stops about 1e-3 short of it, off in the third decimal of a calibration slope).

    Example:
        >>> model = maximum_likelihood_logistic().fit([[0.0], [1.0], [2.0], [3.0]], [0, 1, 0, 1])
        >>> round(float(model.coef_[0, 0]), 4)
        0.9082
    """
    return LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000)


def calibration_line(y, probabilities) -> dict:
    """The calibration ``intercept`` (in the large, slope fixed at 1) and ``slope`` of probabilities;
    None for each when the outcomes are all of one class, and no slope when the probabilities separate
    the classes, completely or with ties only at the boundary (every positive at or above every negative,
    or the reverse: the fitted slope would grow without bound), which includes probabilities all equal
    (no slope can be fitted to one value).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> p = rng.uniform(0.05, 0.95, 4000)
        >>> line = calibration_line(rng.uniform(size=4000) < p, p)   # outcomes drawn at these probabilities
        >>> abs(line["intercept"]) < 0.1, abs(line["slope"] - 1) < 0.1
        (True, True)
        >>> calibration_line([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.9])["slope"] is None  # a tie at the boundary only
        True
    """
    y, p = _checked(y, probabilities, "calibration_line")
    if y.min() == y.max():
        return {"intercept": None, "slope": None}
    p = np.clip(p, _EDGE, 1 - _EDGE)
    logit = np.log(p / (1 - p))
    separated = logit[y == 1].min() >= logit[y == 0].max() or logit[y == 1].max() <= logit[y == 0].min()
    slope = None if separated else float(maximum_likelihood_logistic().fit(logit[:, None], y).coef_[0, 0])
    observed = y.sum()

    def excess(shift: float) -> float:  # predicted minus observed cases with the logits shifted
        return float((1.0 / (1.0 + np.exp(-(logit + shift)))).sum() - observed)

    return {"intercept": float(brentq(excess, -50.0, 50.0)), "slope": slope}
