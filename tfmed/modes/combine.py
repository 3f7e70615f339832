"""How an ensemble turns its members' scores into one score per image.

Three rules, chosen by ``model.ensemble.combine``:

* ``mean``: the average of the members' probabilities (nothing is fitted).
* ``rank``: each member's score becomes its quantile among that member's
  reference scores (out-of-fold scores on the training split, or the
  validation scores of saved runs), then the quantiles are averaged. Members
  whose scores live on different scales (an SVM's calibrated probability, a
  fine-tune's sigmoid) then count equally. Binary and multilabel tasks.
* ``stacking``: a logistic regression on the logits of the members' scores
  (one per label for multilabel, multinomial for multiclass), fitted on
  out-of-fold scores, never on the scores it is judged on.

Everything fitted is a plain array, so a combiner saves to JSON and loads
without unpickling anything.

Example:
    >>> import numpy as np
    >>> a, b = np.array([0.1, 0.9]), np.array([0.3, 0.5])
    >>> ScoreCombiner("mean", "binary").combine([a, b]).tolist()
    [0.2, 0.7]
"""
from __future__ import annotations

import numpy as np

from tfmed.config import UNKNOWN_LABEL, ConfigError, EnsembleConfig, choices

RANK_TASKS = ("binary", "multilabel")  # rank averaging ranks one score per image and label
_EPS = 1e-6


def refuse_rank(task: str, key: str, instead: str) -> None:
    """Refuse rank averaging for a ``task`` it does not fit, naming the setting ``key`` and what to use ``instead``.

    Example:
        >>> refuse_rank("multilabel", "--combine", "--combine mean")  # fits: nothing happens
        >>> refuse_rank("multiclass", "--combine", "--combine mean")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.config.ConfigError: --combine 'rank' averages one rank per image and label, ...; use --combine mean
    """
    if task not in RANK_TASKS:
        raise ConfigError(f"{key} 'rank' averages one rank per image and label, so it works for binary and "
                          f"multilabel tasks, not {task}; use {instead}")


def refuse_fixed_threshold_on_ranks(threshold: str, combine: str, recalibration: str, *,
                                    threshold_key: str = "evaluation.threshold",
                                    combine_key: str = "model.ensemble.combine",
                                    recalibration_key: str = "evaluation.recalibration") -> None:
    """Refuse deciding at the fixed 0.5 on an ensemble's mean ranks, which are no probabilities.

    Example:
        >>> refuse_fixed_threshold_on_ranks("youden", "rank", "none")  # chosen on validation: fine
        >>> refuse_fixed_threshold_on_ranks("fixed", "rank", "none")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.config.ConfigError: evaluation.threshold is 'fixed' (decide at 0.5), but model.ensemble.combine ...
    """
    if threshold == "fixed" and combine == "rank" and recalibration == "none":
        raise ConfigError(f"{threshold_key} is 'fixed' (decide at 0.5), but {combine_key} 'rank' gives mean ranks, "
                          "not probabilities: 0.5 would be the middle of the members' reference scores, whatever "
                          "the prevalence; use a threshold chosen on validation (youden, sensitivity or "
                          f"specificity), {combine_key} mean, or {recalibration_key} to turn the ranks into "
                          "probabilities")


class ScoreCombiner:
    """Combine member scores by ``rule`` ("mean", "rank" or "stacking") for ``task``.

    ``fit(reference_scores, y)`` learns from out-of-sample member scores (not
    needed for "mean"); ``combine(scores)`` applies the rule. Scores are lists
    with one array per member: (n,) for binary, (n, K) or (n, L) otherwise.

    Example:
        >>> import numpy as np
        >>> ref = [np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.4, 0.3, 0.6, 0.7])]
        >>> combiner = ScoreCombiner("rank", "binary").fit(ref, np.array([0, 0, 1, 1]))
        >>> combiner.combine([np.array([0.85]), np.array([0.65])]).round(3).tolist()
        [0.75]
    """

    def __init__(self, rule: str = "mean", task: str = "binary"):
        if rule not in choices(EnsembleConfig, "combine"):
            raise ConfigError(f"model.ensemble.combine is {rule!r}; allowed: "
                              f"{', '.join(choices(EnsembleConfig, 'combine'))}")
        if rule == "rank":
            refuse_rank(task, "model.ensemble.combine", "mean or stacking")
        self.rule, self.task = rule, task
        self.reference_: list[np.ndarray] | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None

    @property
    def needs_fit(self) -> bool:
        """Whether the rule learns from out-of-sample member scores."""
        return self.rule != "mean"

    def fit(self, scores: list[np.ndarray], y: np.ndarray) -> "ScoreCombiner":
        """Learn the rule from out-of-sample ``scores`` (one array per member) with labels ``y``."""
        columns = [_columns(s) for s in scores]
        if self.rule == "rank":
            self.reference_ = [np.sort(c, axis=0) for c in columns]
        elif self.rule == "stacking":
            self.coef_, self.intercept_ = _fit_stacker(self.task, columns, np.asarray(y))
        return self

    def combine(self, scores: list[np.ndarray]) -> np.ndarray:
        """One score per image (and label/class) from the members' ``scores``."""
        if not scores:
            raise ConfigError("an ensemble needs member scores to combine")
        columns = [_columns(s) for s in scores]
        if self.rule == "mean":
            out = np.mean(columns, axis=0)
        elif self.rule == "rank":
            self._require("reference_")
            out = np.mean([_quantiles(ref, c) for ref, c in zip(self.reference_, columns)], axis=0)
        else:
            self._require("coef_")
            out = _apply_stacker(self.task, self.coef_, self.intercept_, columns)
        return out[:, 0] if self.task == "binary" else out

    def _require(self, name: str) -> None:
        if getattr(self, name) is None:
            raise ConfigError(f"the {self.rule} combination is not fitted: call fit() with out-of-fold scores")

    def state(self) -> dict:
        """Everything fitted, as plain lists (for JSON).

        Example:
            >>> ScoreCombiner("mean", "binary").state()
            {'rule': 'mean', 'task': 'binary'}
        """
        state = {"rule": self.rule, "task": self.task}
        if self.reference_ is not None:
            state["reference"] = [r.tolist() for r in self.reference_]
        if self.coef_ is not None:
            state["coef"], state["intercept"] = self.coef_.tolist(), self.intercept_.tolist()
        return state

    @classmethod
    def from_state(cls, state: dict) -> "ScoreCombiner":
        """The combiner that :meth:`state` describes."""
        combiner = cls(state["rule"], state["task"])
        if "reference" in state:
            combiner.reference_ = [np.asarray(r, dtype=np.float64) for r in state["reference"]]
        if "coef" in state:
            combiner.coef_ = np.asarray(state["coef"], dtype=np.float64)
            combiner.intercept_ = np.asarray(state["intercept"], dtype=np.float64)
        return combiner


def _columns(scores) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    return array.reshape(-1, 1) if array.ndim == 1 else array


def _quantiles(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-rank quantile of each value among the sorted reference column (ties count half)."""
    n = len(reference)
    out = np.empty_like(values)
    for j in range(values.shape[1]):
        below = np.searchsorted(reference[:, j], values[:, j], side="left")
        at_or_below = np.searchsorted(reference[:, j], values[:, j], side="right")
        out[:, j] = (below + at_or_below) / (2.0 * n)
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _stack_features(task: str, columns: list[np.ndarray], label: int | None = None) -> np.ndarray:
    if task == "multiclass":
        return np.concatenate([np.log(np.clip(c, _EPS, 1.0)) for c in columns], axis=1)
    return np.stack([_logit(c[:, label]) for c in columns], axis=1)


def _fit_stacker(task: str, columns: list[np.ndarray], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    if task == "multiclass":
        present = np.unique(y)
        if len(present) < columns[0].shape[1]:
            raise ConfigError(f"stacking needs every class in the out-of-fold scores; classes "
                              f"{sorted(set(range(columns[0].shape[1])) - set(present.tolist()))} are missing "
                              "from the training split")
        model = LogisticRegression(C=1.0, max_iter=1000).fit(_stack_features(task, columns), y)
        return model.coef_, model.intercept_
    targets = y.reshape(len(y), -1)
    coef, intercept = [], []
    for label in range(targets.shape[1]):
        known = targets[:, label] != UNKNOWN_LABEL   # each label's stacker on the images where it is known
        if len(np.unique(targets[known, label])) < 2:
            raise ConfigError(f"stacking needs positive and negative out-of-fold examples; label {label} "
                              "has only one known value in the training split")
        model = LogisticRegression(C=1.0, max_iter=1000).fit(_stack_features(task, columns, label)[known],
                                                             targets[known, label])
        coef.append(model.coef_[0])
        intercept.append(model.intercept_[0])
    return np.array(coef), np.array(intercept)


def _apply_stacker(task: str, coef: np.ndarray, intercept: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    if task == "multiclass":
        z = _stack_features(task, columns) @ coef.T + intercept
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    out = np.empty((len(columns[0]), len(coef)))
    for label in range(len(coef)):
        z = _stack_features(task, columns, label) @ coef[label] + intercept[label]
        out[:, label] = 1.0 / (1.0 + np.exp(-z))
    return out
