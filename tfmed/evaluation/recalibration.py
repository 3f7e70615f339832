"""Recalibration: probabilities that mean what they say, fitted on validation.

Averaging the views of test-time augmentation and the members of an ensemble
pulls probabilities towards the middle; a fine-tune on a few hundred images
pushes them to the edges. Neither changes how the scores rank images (the
AUC), but a clinician reading "0.70" as a risk, a decision curve and a fixed
threshold of 0.5 all need the probabilities to be right. Three fits, each on
the split thresholds are chosen on (validation, or the pooled out-of-fold
scores of a k-fold run), all monotone, so every image keeps its rank:

* ``logistic`` (binary and multilabel; Cox 1958, the calibration line of
  :mod:`tfmed.evaluation.decision` turned round): ``p' = sigmoid(a * logit(p) + b)``,
  one slope ``a`` and intercept ``b`` per label, fitted by unpenalised logistic
  regression of the outcome on the logit of the score.
* ``intercept`` (binary and multilabel; "recalibration in the large"): the
  same line with its slope held at 1, so only ``b`` is fitted: as many cases
  predicted as occur. One number per label, so it needs the fewest images: the
  safe update for a new hospital's small sample, where the prevalence differs
  but the model ranks as well (Steyerberg, Clinical Prediction Models, 2019).
* ``temperature`` (any task; Guo et al. 2017): the logits divided by one
  temperature ``T`` (> 1 softens, < 1 sharpens) chosen to minimise the log
  loss; a multiclass model's log-probabilities are its logits, so the
  predicted class never changes.

A fit that the data cannot support raises :class:`RecalibrationError`: one
class only, scores that separate the classes completely (the best fit makes
every probability 0 or 1) or so nearly that the fit rounds distinct scores of
the fitting split together at 0 or 1 (it would change their ranks), or scores
that fall as the outcome rises. A
multilabel model's labels are fitted one by one: a label that cannot be fitted
keeps its scores (the line of slope 1, intercept 0) and its reason is kept in
``unfitted``; only when no label can be fitted is the error raised.

Example:
    >>> y = np.array([0, 0, 1, 0, 1, 1, 0, 1])
    >>> p = np.array([0.40, 0.45, 0.50, 0.52, 0.55, 0.60, 0.58, 0.48])   # timid, as an average of views is
    >>> fitted = Recalibration.fit("logistic", "binary", y, p)
    >>> fitted.slope[0] > 1, bool(fitted.apply(p).std() > p.std())
    (True, True)
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax

from tfmed.config import UNKNOWN_LABEL, RecalibrationMethod
from tfmed.errors import TfmedError
from tfmed.evaluation.intervals import EvaluationError, check_aligned
from tfmed.evaluation.decision import calibration_line, maximum_likelihood_logistic
from tfmed.evaluation.metrics import TASKS

METHODS = typing.get_args(RecalibrationMethod)  # none, logistic, intercept, temperature
LINES = ("logistic", "intercept")  # the methods that fit a line on the logit (binary and multilabel)
_EDGE = 1e-6  # scores are kept this far from 0 and 1 before their logit is taken
_TIE = 1e-9  # carried thresholds are lowered this much (see carried_thresholds)
_LOG_T = 5.0  # the temperature is searched in exp(-5)..exp(5); an optimum at an end means no finite fit


class RecalibrationError(TfmedError):
    """The scores cannot be recalibrated (one class, complete separation, or a falling fit)."""


@dataclass
class Recalibration:
    """A fitted recalibration of ``task`` scores: ``slope``/``intercept`` per column for ``logistic``,
    ``temperature`` for ``temperature``; ``unfitted``: label -> why its scores were kept (multilabel lines);
    ``columns``: the width of the scores a temperature was fitted on (None in a fit saved before it was kept).
    Build it with :meth:`fit`; save it with :meth:`to_json`.

    Example:
        >>> Recalibration("temperature", "binary", temperature=2.0).apply(np.array([0.9])).round(3).tolist()
        [0.75]
    """

    method: str
    task: str
    slope: list[float] | None = None
    intercept: list[float] | None = None
    temperature: float | None = None
    unfitted: dict[str, str] | None = None
    columns: int | None = None

    @classmethod
    def fit(cls, method: str, task: str, y, scores, labels: list[str] | None = None) -> "Recalibration":
        """Fit ``method`` on labels ``y`` and ``scores`` (binary (n,), multiclass (n, K) probabilities,
        multilabel (n, L) with -1 for an unknown label, left out of the fit). ``labels``: a multilabel
        model's label names, which name a label that cannot be fitted (else its number from 1).

        Raises:
            RecalibrationError: as the module says (for a multilabel model: when no label can be fitted), and for
                a ``method`` that :func:`check_method` refuses.

        Example:
            >>> y, p = [0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.9, 0.6, 0.7, 0.95]
            >>> round(Recalibration.fit("temperature", "binary", y, p).temperature, 2)   # < 1: too timid
            0.79
        """
        check_method(method, task)
        y, scores = _labelled(task, y, scores)
        if method in LINES:
            fit_line = _logistic_line if method == "logistic" else _intercept_line
            lines, unfitted = [], {}
            for y_k, s_k, prefix, name in _known_columns(task, y, _columns(scores), labels):
                try:
                    lines.append(fit_line(y_k, logit(np.clip(s_k, _EDGE, 1 - _EDGE)), prefix))
                except RecalibrationError as error:
                    if task != "multilabel":
                        raise
                    unfitted[name] = str(error)
                    lines.append((1.0, 0.0))  # this label's scores stay as they are
            if unfitted and len(unfitted) == len(lines):
                raise RecalibrationError("; ".join(unfitted.values()))
            return cls(method, task, slope=[a for a, _ in lines], intercept=[b for _, b in lines],
                       unfitted=unfitted or None)
        return cls(method, task, temperature=_fit_temperature(task, y, scores), columns=_columns(scores).shape[1])

    def after(self, first: "Recalibration | None") -> "Recalibration":
        """One recalibration that does ``first`` and then this one (a line: logistic or intercept), e.g. a
        new hospital's intercept on top of the run's own recalibration. Lines compose into a line:
        ``a2 (a1 z + b1) + b2``; a temperature ``T`` is the line of slope ``1 / T``.

        Example:
            >>> shift = Recalibration("intercept", "binary", slope=[1.0], intercept=[0.5])
            >>> shift.after(Recalibration("logistic", "binary", slope=[2.0], intercept=[-1.0])).describe()
            'logistic: slope 2.000, intercept -0.500'
        """
        if first is None:
            return self
        if first.method in LINES:
            a1, b1 = np.asarray(first.slope), np.asarray(first.intercept)
        else:
            a1, b1 = np.full(len(self.slope), 1.0 / first.temperature), np.zeros(len(self.slope))
        a2, b2 = np.asarray(self.slope), np.asarray(self.intercept)
        return Recalibration("logistic", self.task, slope=(a2 * a1).tolist(), intercept=(a2 * b1 + b2).tolist(),
                             unfitted=self.unfitted)

    def apply(self, scores) -> np.ndarray:
        """The recalibrated probabilities of ``scores`` (same shape).

        Raises:
            RecalibrationError: ``scores`` are not probabilities of this fit's task (:func:`checked_scores`), or
                have another number of columns than the fit.
        """
        scores = checked_scores(self.task, scores, columns=len(self.slope) if self.method in LINES else self.columns)
        if self.method in LINES:
            columns = _columns(scores)
            z = logit(np.clip(columns, _EDGE, 1 - _EDGE))
            out = expit(z * np.asarray(self.slope) + np.asarray(self.intercept))
            return out.reshape(scores.shape)
        if self.task == "multiclass":
            return softmax(_log_probabilities(scores) / self.temperature, axis=1)
        return expit(logit(np.clip(scores, _EDGE, 1 - _EDGE)) / self.temperature)

    def invert(self, probabilities) -> np.ndarray:
        """The scores that this recalibration turns into ``probabilities`` (binary, multilabel: same shape;
        between the clipping edges, where :meth:`apply` is strictly increasing).

        Example:
            >>> line = Recalibration("logistic", "binary", slope=[2.0], intercept=[-1.0])
            >>> line.invert(line.apply(np.array([0.3, 0.8]))).round(6).tolist()
            [0.3, 0.8]
        """
        if self.task == "multiclass":
            raise RecalibrationError("a multiclass recalibration is not inverted: a class's probability depends on "
                                     "every class's score")
        probabilities = np.asarray(probabilities, dtype=float)
        z = logit(np.clip(_columns(probabilities), _EDGE, 1 - _EDGE))
        if self.method in LINES:
            return expit((z - np.asarray(self.intercept)) / np.asarray(self.slope)).reshape(probabilities.shape)
        return expit(z * self.temperature).reshape(probabilities.shape)

    def describe(self) -> str:
        """The fit in a few words, for logs and reports.

        Example:
            >>> Recalibration("logistic", "binary", slope=[2.25], intercept=[-0.6]).describe()
            'logistic: slope 2.250, intercept -0.600'
        """
        if self.method == "temperature":
            return f"temperature {self.temperature:.3f}"
        if self.method == "intercept":
            text = "intercept: " + "; ".join(f"{b:+.3f}" for b in self.intercept)
        else:
            text = "logistic: " + "; ".join(f"slope {a:.3f}, intercept {b:.3f}"
                                            for a, b in zip(self.slope, self.intercept))
        for reason in (self.unfitted or {}).values():
            text += f"; not fitted, scores kept as they were: {reason}"
        return text

    def to_json(self) -> dict:
        """The fit as JSON-ready data (read back by :meth:`from_json`)."""
        out = {"method": self.method, "task": self.task}
        if self.method in LINES:
            out.update(slope=self.slope, intercept=self.intercept)
            if self.unfitted:
                out["unfitted"] = self.unfitted
        else:
            out["temperature"] = self.temperature
            if self.columns is not None:
                out["columns"] = self.columns
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> "Recalibration | None":
        """The fit saved by :meth:`to_json` (None for None: a model saved without recalibration)."""
        if data is None:
            return None
        return cls(data["method"], data["task"], slope=data.get("slope"), intercept=data.get("intercept"),
                   temperature=data.get("temperature"), unfitted=data.get("unfitted"), columns=data.get("columns"))


def carried_thresholds(thresholds: dict, before: "Recalibration | None", after: Recalibration) -> dict:
    """Thresholds on ``after``'s probabilities that decide every image as ``thresholds`` did on ``before``'s,
    both being recalibrations of the same model scores (``before`` None: the scores themselves). Binary:
    one number per operating point; multilabel: a list per point, one per label. ``fixed`` stays 0.5: it is
    a probability, not a decision carried over. A threshold at or beyond 0 or 1 is kept.

    Raises:
        RecalibrationError: ``after`` moves a threshold within 1e-6 of 0 or 1, where the probabilities of
            distinct scores round together, so images could not keep their decisions.

    Example:
        >>> shift = Recalibration("intercept", "binary", slope=[1.0], intercept=[1.0])
        >>> carried = carried_thresholds({"youden": 0.5, "fixed": 0.5}, None, shift)
        >>> round(carried["youden"], 3), carried["fixed"]
        (0.731, 0.5)
    """
    def carry(name, value):
        value = np.asarray(value, dtype=float)
        inside = np.isfinite(value) & (value > 0) & (value < 1)
        # one "image" whose scores are the thresholds (those at or beyond 0 and 1 are kept below)
        row = np.where(inside, value, 0.5).reshape(1, -1)
        scores = row if before is None else before.invert(row)
        applied = after.apply(scores).reshape(value.shape)
        near_edge = inside & ((applied < _EDGE) | (applied > 1 - _EDGE))
        if near_edge.any():
            raise RecalibrationError(f"the recalibration ({after.describe()}) moves the {name} threshold "
                                     f"{value[near_edge].flat[0]:.4f} to {applied[near_edge].flat[0]:.10f}, within "
                                     f"{_EDGE:g} of 0 or 1, where distinct scores round together, so the images "
                                     "could not keep the decisions they had")
        # a threshold is usually some image's own score; lowered by a hair, that image stays at or above it
        # whatever the rounding of the round trip
        return np.where(inside, applied - _TIE, value).tolist()

    return {name: value if name == "fixed" else carry(name, value) for name, value in thresholds.items()}


def check_method(method: str, task: str) -> None:
    """Refuse a recalibration ``method`` that is unknown or does not fit ``task`` scores.

    Example:
        >>> check_method("logistic", "multiclass")
        Traceback (most recent call last):
        tfmed.evaluation.recalibration.RecalibrationError: logistic fits one line per score, but a multiclass model's probabilities must still sum to 1; use temperature
    """
    if method not in METHODS[1:]:
        raise RecalibrationError(f"{method!r} is not a recalibration; use one of {', '.join(METHODS[1:])}")
    if method in LINES and task == "multiclass":
        raise RecalibrationError(f"{method} fits one line per score, but a multiclass model's probabilities must "
                                 "still sum to 1; use temperature")


def probability_scores(task: str, y, scores) -> dict:
    """Log loss and Brier score of probabilities (lower is better; multilabel: the mean over labels of
    their known entries), the figures that show what recalibration did.

    Example:
        >>> probability_scores("binary", [0, 1], [0.2, 0.6])
        {'log_loss': 0.367, 'brier': 0.1}
    """
    y, scores = _labelled(task, y, scores)
    if task == "multiclass":
        onehot = np.eye(scores.shape[1])[y.astype(int)]
        p = np.clip(scores, _EDGE, 1.0)
        return {"log_loss": round(float(-(onehot * np.log(p)).sum(axis=1).mean()), 4),
                "brier": round(float(((onehot - scores) ** 2).sum(axis=1).mean()), 4)}
    losses, briers = [], []
    for y_k, s_k, _, _ in _known_columns(task, y, _columns(scores)):
        if not y_k.size:  # a label unknown for every image of the split
            continue
        p = np.clip(s_k, _EDGE, 1 - _EDGE)
        losses.append(-np.mean(y_k * np.log(p) + (1 - y_k) * np.log(1 - p)))
        briers.append(np.mean((y_k - s_k) ** 2))
    if not losses:
        return {"log_loss": None, "brier": None}
    return {"log_loss": round(float(np.mean(losses)), 4), "brier": round(float(np.mean(briers)), 4)}


def checked_scores(task: str, scores, columns: int | None = None) -> np.ndarray:
    """``scores`` as float probabilities of a ``task`` model: binary (n,) or (n, 1), multiclass (n, K) rows
    that sum to 1, multilabel (n, L); ``columns``: the number of columns a fit was made on.

    Raises:
        RecalibrationError: an unknown task, another shape, values outside [0, 1] (percentages, logits) or
            not finite, or multiclass rows that do not sum to 1; the message says what to give instead.

    Example:
        >>> checked_scores("binary", [[62.0], [8.0]])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed...RecalibrationError: scores must be probabilities in [0, 1]; rows 0, 1 hold values from 8 to 62 ...
    """
    if task not in TASKS:
        raise RecalibrationError(f"task is {task!r}; allowed: {', '.join(TASKS)}")
    try:
        array = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise RecalibrationError("scores must be numbers (probabilities in [0, 1]), one row per case") from None
    if task == "binary" and not (array.ndim == 1 or array.ndim == 2 and array.shape[1] == 1):
        raise RecalibrationError(f"binary scores must be one probability per case, shape (n,), got {array.shape}"
                                 + ("; give the positive class's column (scores[:, 1])"
                                    if array.ndim == 2 and array.shape[1] == 2 else ""))
    if task != "binary" and array.ndim != 2:
        raise RecalibrationError(f"{task} scores must be one probability per case and "
                                 f"{'class' if task == 'multiclass' else 'label'}, shape (n, K), got {array.shape}")
    width = array.reshape(len(array), -1).shape[1]
    if columns is not None and width != columns:
        raise RecalibrationError(f"scores have {width} column(s), but the recalibration was fitted on {columns}; "
                                 "give the scores of the model it was fitted for")
    missing = np.flatnonzero((~np.isfinite(array)).reshape(len(array), -1).any(axis=1))
    if missing.size:
        raise RecalibrationError(f"scores of rows {_row_list(missing)} are NaN or infinite; fix or drop those "
                                 "predictions")
    bad = np.flatnonzero(((array < 0) | (array > 1)).reshape(len(array), -1).any(axis=1))
    if bad.size:
        hint = "percentages? divide them by 100" if 0 <= array.min() and array.max() <= 100 \
            else "logits? turn them into probabilities first"
        raise RecalibrationError(f"scores must be probabilities in [0, 1]; rows {_row_list(bad)} hold values from "
                                 f"{array.min():g} to {array.max():g} ({hint})")
    if task == "multiclass":
        sums = array.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1) > 1e-3)
        if off.size:
            raise RecalibrationError(f"multiclass scores must be each case's probabilities of all {width} classes, "
                                     f"rows that sum to 1; rows {_row_list(off)} sum to {sums[off[0]]:g} and so on")
    return array


def _labelled(task: str, y, scores) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes ``y`` and :func:`checked_scores` of one split, checked against each other: as many cases,
    binary 0/1, multiclass class numbers of the score columns, multilabel 0/1 with -1 for unknown."""
    try:
        check_aligned(y, scores, "y and the scores")
    except EvaluationError as error:
        raise RecalibrationError(str(error)) from None
    scores = checked_scores(task, scores)
    y = np.asarray(y)
    if len(y) != len(scores):
        raise RecalibrationError(f"y has {len(y)} cases but the scores {len(scores)}; give one score per case")
    try:
        values = y.astype(float)
    except (TypeError, ValueError):
        raise RecalibrationError(f"y must be class numbers, got values such as {y.ravel()[0]!r}; encode the "
                                 "classes as numbers first") from None
    if task == "multilabel" and values.shape != scores.shape:
        raise RecalibrationError(f"multilabel y has shape {values.shape} but the scores {scores.shape}")
    if task != "multilabel" and values.reshape(len(values), -1).shape[1] != 1:
        raise RecalibrationError(f"{task} y must be one class number per case, shape (n,), got {values.shape}"
                                 + ("; for one-hot rows give y.argmax(axis=1)" if task == "multiclass" else ""))
    allowed = {"binary": np.array([0.0, 1.0]), "multiclass": np.arange(scores.shape[-1], dtype=float),
               "multilabel": np.array([0.0, 1.0, float(UNKNOWN_LABEL)])}[task]
    bad = np.flatnonzero(~np.isin(values.reshape(len(values), -1), allowed).all(axis=1))
    if bad.size:
        rule = {"binary": "0 or 1", "multiclass": f"a class number 0-{scores.shape[-1] - 1}",
                "multilabel": "0 or 1, or -1 for an unknown label"}[task]
        raise RecalibrationError(f"y rows {_row_list(bad)} are not {rule}")
    return values, scores


def _row_list(rows: np.ndarray) -> str:
    shown = ", ".join(map(str, rows[:5].tolist()))
    return shown + (f" and {rows.size - 5} more" if rows.size > 5 else "")


def _columns(scores: np.ndarray) -> np.ndarray:
    return scores.reshape(len(scores), -1)


def _known_columns(task: str, y: np.ndarray, columns: np.ndarray, labels: list[str] | None = None):
    """(labels, scores, prefix for messages, name) per column, the unknown (-1) entries of a multilabel column left
    out; the name is the column's entry of ``labels`` (else its number from 1), which the prefix quotes."""
    y = y.reshape(len(y), -1)
    for k in range(columns.shape[1]):
        known = y[:, k] >= 0
        name = str(labels[k]) if labels is not None else str(k + 1)
        quoted = repr(name) if labels is not None else name
        yield y[known, k].astype(int), columns[known, k], (f"label {quoted}: " if task == "multilabel" else ""), name


def _two_classes(y: np.ndarray, label: str) -> None:
    if y.size == 0 or y.min() == y.max():
        raise RecalibrationError(f"{label}the fitting split holds one class only, so there is no calibration "
                                 "to learn")


def _logistic_line(y: np.ndarray, z: np.ndarray, label: str) -> tuple[float, float]:
    _two_classes(y, label)
    if z.min() == z.max():
        raise RecalibrationError(f"{label}every case of the fitting split has the same score, so no line can be "
                                 "fitted to them")
    if z[y == 1].min() >= z[y == 0].max():  # ties at the boundary too: the likelihood still grows without end
        raise RecalibrationError(f"{label}the fitting split's scores separate the classes completely (every "
                                 "positive case at or above every negative one), so the best fit would make every "
                                 "probability 0 or 1")
    fitted = maximum_likelihood_logistic().fit(z[:, None], y)
    slope, intercept = float(fitted.coef_[0, 0]), float(fitted.intercept_[0])
    if slope <= 0:
        raise RecalibrationError(f"{label}the fitting split's scores fall as the outcome rises (slope "
                                 f"{slope:.3f}); recalibrating would reverse the model's ranking")
    _refuse_rounded_ties(z, expit(slope * z + intercept), f"{label}the fitted line is so steep (slope {slope:.1f})")
    return slope, intercept


def _refuse_rounded_ties(before: np.ndarray, after: np.ndarray, fit: str) -> None:
    """Refuse a fit whose probabilities tie cases the scores (``before``, logits) told apart, rounded together
    within 1e-6 of 0 or 1: it would change how the model ranks images, and the decisions carried over to it.
    Logits closer than 1e-6 (float noise of one score computed two ways) count as one.

    Example:
        >>> z = np.array([-1.0, 0.0, 1.0, 2.0])
        >>> _refuse_rounded_ties(z, expit(3 * z), "a gentle line")  # nothing tied: no error
        >>> _refuse_rounded_ties(z, expit(40 * z), "a steep line")
        Traceback (most recent call last):
        tfmed.evaluation.recalibration.RecalibrationError: a steep line that it rounds 1 distinct score(s) ...
    """
    merged = 0
    for b, a in zip(_columns(before).T, _columns(after).T):
        edge = (a < _EDGE) | (a > 1 - _EDGE)
        merged += max(0, np.unique(np.round(b[edge], 6)).size - np.unique(a[edge]).size)
    if merged > 0:
        raise RecalibrationError(f"{fit} that it rounds {merged} distinct score(s) of the fitting split together "
                                 "(at probability 0 or 1 in floating point), which would change how the model ranks "
                                 "images: the scores nearly separate the classes; give more images, or fit the "
                                 "intercept alone")


def _intercept_line(y: np.ndarray, z: np.ndarray, label: str) -> tuple[float, float]:
    """Slope 1 and the shift of the logits that predicts as many cases as occur."""
    _two_classes(y, label)
    return 1.0, float(calibration_line(y, expit(z))["intercept"])


def _log_probabilities(scores: np.ndarray) -> np.ndarray:
    return np.log(np.clip(scores, _EDGE, 1.0))


def _fit_temperature(task: str, y: np.ndarray, scores: np.ndarray) -> float:
    if task == "multiclass":
        z, onehot = _log_probabilities(scores), np.eye(scores.shape[1])[y.astype(int)]

        def loss(log_t: float) -> float:
            return float(-(onehot * log_softmax(z / np.exp(log_t), axis=1)).sum(axis=1).mean())
        _two_classes(y, "")
    else:
        pairs = list(_known_columns(task, y, _columns(scores)))
        labels = np.concatenate([pair[0] for pair in pairs])
        z = logit(np.clip(np.concatenate([pair[1] for pair in pairs]), _EDGE, 1 - _EDGE))
        _two_classes(labels, "")

        def loss(log_t: float) -> float:
            zt = z / np.exp(log_t)
            return float(np.mean(np.logaddexp(0, zt) - labels * zt))  # -log-likelihood of sigmoid(zt)
    log_t = minimize_scalar(loss, bounds=(-_LOG_T, _LOG_T), method="bounded").x
    if log_t < -_LOG_T + 0.01:
        raise RecalibrationError("the fitting split's scores are right on every image, so the best temperature "
                                 "sharpens them without bound (every probability 0 or 1)")
    if log_t > _LOG_T - 0.01:
        raise RecalibrationError("the fitting split's scores carry no information about the outcome, or fall as "
                                 "it rises (the best temperature flattens them without bound)")
    temperature = float(np.exp(log_t))
    sharpened = softmax(z / temperature, axis=1) if task == "multiclass" else expit(z / temperature)
    _refuse_rounded_ties(z, sharpened, f"the fitted temperature is so low ({temperature:.3f})")
    return temperature
