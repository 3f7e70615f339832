"""Losses for binary, multi-label and multiclass medical image classification.

* :class:`WeightedBinaryCrossentropy` - class-balanced BCE; for multi-label
  targets the per-label weighted BCE terms are SUMMED over labels (as in
  CheXNet) and averaged over the batch.

Both BCE losses and :class:`FocalLoss` leave out a target of
:data:`~tfmed.config.UNKNOWN_LABEL` (-1): a label not known for an image
(CheXpert's U-Ignore) adds nothing to the loss and its gradient.
* :class:`FocalLoss` - binary / multi-label focal loss (Lin et al. 2017).
* :func:`class_balance_weights` - w_pos = N_neg / N, w_neg = N_pos / N from the
  training labels.
* :func:`get_loss` - picks a loss from a name and a task, as written in the
  experiment config (``model.finetune.loss``).

Both classes are registered with Keras (package "tfmed"), so a model compiled
with them saves with ``model.save("x.keras")`` and loads again with
``keras.models.load_model``.

Models are expected to output probabilities (sigmoid for binary and
multi-label, softmax for multiclass) unless ``from_logits=True``.

Example:
    >>> import numpy as np
    >>> y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    >>> w_pos, w_neg = class_balance_weights(y)
    >>> (w_pos, w_neg)
    (0.75, 0.25)
    >>> loss = get_loss("auto", "binary", pos_weight=w_pos, neg_weight=w_neg)
    >>> type(loss).__name__
    'WeightedBinaryCrossentropy'
"""
from __future__ import annotations

import numbers
import typing

import keras
import numpy as np
from keras import ops

from tfmed.config import UNKNOWN_LABEL, FinetuneConfig, Task, choices
from tfmed.errors import TfmedError

LOSS_NAMES = choices(FinetuneConfig, "loss")
TASKS = typing.get_args(Task)


class LossConfigError(TfmedError):
    """A loss name, task, weight or parameter is invalid or does not fit the task."""


def class_balance_weights(y, names: list[str] | None = None) -> tuple:
    """Class-balancing weights from training labels: w_pos = N_neg/N, w_neg = N_pos/N.

    ``y`` holds 0/1 labels: shape (n,) or (n, 1) gives two floats; shape
    (n, L) for multi-label gives two float32 arrays of length L, where an
    unknown label (-1) is left out: N counts the images whose label is known.
    ``names`` (one per column) name a label without positives or negatives in the error.

    Raises LossConfigError when ``y`` is empty, not 0/1, or a label has no
    positive or no negative example (the loss would then ignore one class).

    Example:
        >>> import numpy as np
        >>> class_balance_weights(np.array([[1, 0], [0, 0], [1, 1], [0, 0]]))
        (array([0.5 , 0.75], dtype=float32), array([0.5 , 0.25], dtype=float32))
    """
    labels = np.asarray(y)
    if labels.size == 0:
        raise LossConfigError("class_balance_weights got no labels; pass the training split's labels")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2):
        raise LossConfigError(f"labels must have shape (n,) or (n, labels), got {labels.shape}")
    values = np.unique(labels)
    allowed = (0, 1, UNKNOWN_LABEL) if labels.ndim == 2 else (0, 1)
    if not np.all(np.isin(values, allowed)):
        raise LossConfigError(f"class_balance_weights needs 0/1 labels, found values {values[:10].tolist()}; "
                              "for multiclass use categorical cross-entropy, weighted per class by "
                              "multiclass_balance_weights")
    n = (labels != UNKNOWN_LABEL).sum(axis=0).astype(np.float64)
    positives = (labels == 1).sum(axis=0).astype(np.float64)
    negatives = n - positives
    empty = np.atleast_1d((positives == 0) | (negatives == 0))
    if empty.any():
        columns = np.flatnonzero(empty).tolist()
        if labels.ndim == 1:
            where = ""
        elif names is not None and len(names) == labels.shape[1]:
            where = f" of label(s) {', '.join(repr(names[j]) for j in columns)}"
        else:
            where = f" (label column(s) {columns})"
        raise LossConfigError(f"the training labels{where} have no positive or no negative example, so "
                              "class-balanced weights are undefined; check the split or drop that label")
    w_pos, w_neg = negatives / n, positives / n
    if labels.ndim == 1:
        return float(w_pos), float(w_neg)
    return w_pos.astype(np.float32), w_neg.astype(np.float32)


def multiclass_balance_weights(y, num_classes: int) -> list[float]:
    """Class-balancing weights of a multiclass task: w_c = N / (K N_c), each image's loss weighted by its
    class's (scikit-learn's "balanced" class weights), so every class weighs as much in the loss as another.

    Raises LossConfigError naming the rows when a label is not a class index 0..K-1 (or is NaN), and when a
    class has no training image (its weight would be infinite).

    Example:
        >>> multiclass_balance_weights([0, 0, 0, 1, 2, 2], 3)
        [0.6667, 2.0, 1.0]
    """
    from sklearn.utils.class_weight import compute_class_weight

    values = np.asarray(y)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise LossConfigError(f"multiclass_balance_weights takes class indices of shape (n,), got shape {values.shape}"
                              "; for one-hot rows pass y.argmax(axis=1)")
    try:
        values = values.astype(np.float64)
    except (TypeError, ValueError):
        raise LossConfigError(f"multiclass_balance_weights needs class indices 0..{num_classes - 1}, got "
                              f"{values.dtype} values such as {values[:3].tolist()}; encode the classes as "
                              "numbers first") from None
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0)
                         | (values >= num_classes))
    if bad.size:
        shown = list(dict.fromkeys(f"{v:g}" for v in values[bad]))[:5]
        missing = " (NaN is a missing label)" if np.isnan(values[bad]).any() else ""
        raise LossConfigError(f"label(s) {', '.join(shown)} in row(s) {bad[:10].tolist()}"
                              f"{' ...' if bad.size > 10 else ''} are not class indices 0..{num_classes - 1} "
                              f"of the {num_classes} classes{missing}; fix or drop those rows")
    labels = values.astype(int)
    absent = [c for c in range(num_classes) if not (labels == c).any()]
    if absent:
        raise LossConfigError(f"class(es) {absent} have no training image, so class-balanced weights are "
                              "undefined; check the split or leave the class out of data.classes")
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
    return [round(float(w), 4) for w in weights]


def _weight_value(value, name: str):
    """A float or a list of floats, validated (non-negative, finite)."""
    if isinstance(value, bool) or value is None:
        raise LossConfigError(f"{name} must be a number or a list of numbers, got {value!r}")
    array = np.asarray(value, dtype=np.float64)
    if array.ndim > 1 or array.size == 0:
        raise LossConfigError(f"{name} must be a number or a 1-D list (one per label), got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise LossConfigError(f"{name} must be finite and >= 0, got {array.tolist()}")
    return float(array) if array.ndim == 0 else [float(v) for v in array]


def _check_smoothing(label_smoothing) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
            or not 0.0 <= float(label_smoothing) < 1.0:
        raise LossConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return float(label_smoothing)


def _prepare(y_true, y_pred, from_logits: bool, label_smoothing: float):
    """Cast to float32, match ranks, smooth labels; return (y, probability, known) with known 1 or 0."""
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_pred.shape) == 1:
        y_pred = ops.expand_dims(y_pred, -1)
        y_true = ops.reshape(y_true, ops.shape(y_pred))
    known = ops.cast(ops.not_equal(y_true, float(UNKNOWN_LABEL)), "float32")
    y_true = y_true * known   # an unknown target becomes 0; ``known`` then removes its term
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        y_pred = ops.sigmoid(y_pred)
    epsilon = keras.backend.epsilon()
    return y_true, ops.clip(y_pred, epsilon, 1.0 - epsilon), known


@keras.saving.register_keras_serializable(package="tfmed")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Class-weighted binary cross-entropy, summed over labels, averaged over the batch.

    Per example: ``sum_l -(w_pos[l] * y_l * log p_l + w_neg[l] * (1 - y_l) * log(1 - p_l))``
    over the labels l that are known; ``label_reduction="mean"`` divides the
    sum by the number of labels (with unit weights: Keras's binary
    cross-entropy, with unknown labels left out).
    ``pos_weight`` / ``neg_weight`` are floats (binary) or one value per label
    (multi-label); take them from :func:`class_balance_weights` on the
    training split.

    Example:
        >>> import numpy as np
        >>> loss = WeightedBinaryCrossentropy(pos_weight=0.75, neg_weight=0.25)
        >>> y_true = np.array([[1.0], [0.0]])
        >>> y_pred = np.array([[0.8], [0.2]])
        >>> round(float(loss(y_true, y_pred)), 4)   # mean of 0.75*-log(.8), 0.25*-log(.8)
        0.1116
    """

    def __init__(self, pos_weight=1.0, neg_weight=1.0, from_logits: bool = False,
                 label_smoothing: float = 0.0, reduction="sum_over_batch_size",
                 name: str = "weighted_binary_crossentropy", dtype=None, label_reduction: str = "sum"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if label_reduction not in ("sum", "mean"):
            raise LossConfigError(f"label_reduction is {label_reduction!r}; use sum or mean")
        self.label_reduction = label_reduction
        self.pos_weight = _weight_value(pos_weight, "pos_weight")
        self.neg_weight = _weight_value(neg_weight, "neg_weight")
        sizes = {np.size(self.pos_weight), np.size(self.neg_weight)} - {1}
        if len(sizes) > 1:
            raise LossConfigError(f"pos_weight has {np.size(self.pos_weight)} values but neg_weight has "
                                  f"{np.size(self.neg_weight)}; give one per label for both")
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def call(self, y_true, y_pred):
        y_true, p, known = _prepare(y_true, y_pred, self.from_logits, self.label_smoothing)
        _check_label_count(self.pos_weight, p, "pos_weight")
        _check_label_count(self.neg_weight, p, "neg_weight")
        w_pos = ops.convert_to_tensor(np.asarray(self.pos_weight, dtype=np.float32))
        w_neg = ops.convert_to_tensor(np.asarray(self.neg_weight, dtype=np.float32))
        per_label = -(w_pos * y_true * ops.log(p) + w_neg * (1.0 - y_true) * ops.log(1.0 - p))
        total = ops.sum(per_label * known, axis=-1)
        return total / float(p.shape[-1]) if self.label_reduction == "mean" else total

    def get_config(self):
        config = super().get_config()
        config.update(pos_weight=self.pos_weight, neg_weight=self.neg_weight,
                      from_logits=self.from_logits, label_smoothing=self.label_smoothing,
                      label_reduction=self.label_reduction)
        return config


@keras.saving.register_keras_serializable(package="tfmed")
class FocalLoss(keras.losses.Loss):
    """Binary / multi-label focal loss, summed over labels, averaged over the batch.

    Per label: ``-alpha_t * (1 - p_t) ** gamma * log(p_t)`` where ``p_t`` is the
    predicted probability of the true class, and ``alpha_t`` is ``alpha`` for
    positives and ``neg_alpha`` for negatives (default ``1 - alpha``; 1 for both
    when ``alpha`` is None). ``alpha`` and ``neg_alpha`` may be one value per
    label. ``gamma=0`` with no alpha is plain BCE summed over labels.

    Example:
        >>> import numpy as np
        >>> loss = FocalLoss(gamma=2.0)
        >>> round(float(loss(np.array([[1.0]]), np.array([[0.9]]))), 6)   # 0.1**2 * -log(0.9)
        0.001054
        >>> round(float(FocalLoss(gamma=0.0, alpha=0.3, neg_alpha=0.9)(np.array([[0.0]]), np.array([[0.4]]))), 4)
        0.4597
    """

    def __init__(self, gamma: float = 2.0, alpha=None, from_logits: bool = False,
                 label_smoothing: float = 0.0, reduction="sum_over_batch_size",
                 name: str = "focal_loss", dtype=None, neg_alpha=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or gamma < 0:
            raise LossConfigError(f"focal gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        if neg_alpha is not None and alpha is None:
            raise LossConfigError("focal neg_alpha needs alpha (the weight of positives) as well; give both, "
                                  "or alpha alone (negatives then weigh 1 - alpha)")
        if alpha is not None:
            alpha = _weight_value(alpha, "alpha")
            if neg_alpha is None and np.any(np.asarray(alpha) > 1):
                raise LossConfigError(f"focal alpha must be in [0, 1] when neg_alpha is not given (negatives weigh "
                                      f"1 - alpha), got {alpha}")
        if neg_alpha is not None:
            neg_alpha = _weight_value(neg_alpha, "neg_alpha")
            if len({np.size(alpha), np.size(neg_alpha)} - {1}) > 1:
                raise LossConfigError(f"focal alpha has {np.size(alpha)} values but neg_alpha has "
                                      f"{np.size(neg_alpha)}; give one per label for both")
        self.alpha = alpha
        self.neg_alpha = neg_alpha
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_smoothing(label_smoothing)

    def call(self, y_true, y_pred):
        y_true, p, known = _prepare(y_true, y_pred, self.from_logits, self.label_smoothing)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
        per_label = ops.power(1.0 - p_t, self.gamma) * bce
        if self.alpha is not None:
            _check_label_count(self.alpha, p, "alpha")
            alpha = ops.convert_to_tensor(np.asarray(self.alpha, dtype=np.float32))
            if self.neg_alpha is None:
                neg_alpha = 1.0 - alpha
            else:
                _check_label_count(self.neg_alpha, p, "neg_alpha")
                neg_alpha = ops.convert_to_tensor(np.asarray(self.neg_alpha, dtype=np.float32))
            per_label = (y_true * alpha + (1.0 - y_true) * neg_alpha) * per_label
        return ops.sum(per_label * known, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma, alpha=self.alpha, neg_alpha=self.neg_alpha, from_logits=self.from_logits,
                      label_smoothing=self.label_smoothing)
        return config


def _check_label_count(weight, p, name: str) -> None:
    labels = p.shape[-1]
    if np.size(weight) > 1 and labels is not None and np.size(weight) != labels:
        raise LossConfigError(f"{name} has {np.size(weight)} values but the model predicts {labels} "
                              "label(s); give one value per output label")


def get_loss(name: str, task: str, *, pos_weight=None, neg_weight=None, label_smoothing: float = 0.0,
             gamma: float = 2.0, from_logits: bool = False) -> keras.losses.Loss:
    """The loss for ``name`` ("auto" | "bce" | "weighted_bce" | "categorical" | "focal") and ``task``.

    * auto: weighted BCE for binary / multilabel when both weights are given,
      plain BCE otherwise; categorical cross-entropy for multiclass.
    * bce: binary cross-entropy averaged over labels, as Keras's, with
      unknown labels (-1) left out (binary / multilabel).
    * weighted_bce: :class:`WeightedBinaryCrossentropy` (needs both weights).
    * categorical: ``keras.losses.CategoricalCrossentropy`` (multiclass,
      one-hot targets, softmax outputs), with ``label_smoothing``.
    * focal: :class:`FocalLoss` (binary / multilabel; ``alpha`` from ``pos_weight``
      and ``neg_alpha`` from ``neg_weight`` when given; ``neg_weight`` alone is
      refused) or ``keras.losses.CategoricalFocalCrossentropy`` for multiclass,
      which takes no pos/neg weights (refused).

    Example:
        >>> get_loss("categorical", "multiclass", label_smoothing=0.1).label_smoothing
        0.1
        >>> get_loss("auto", "multilabel").name
        'binary_crossentropy'
    """
    if name not in LOSS_NAMES:
        raise LossConfigError(f"unknown loss {name!r}; allowed: {', '.join(LOSS_NAMES)}")
    if task not in TASKS:
        raise LossConfigError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    label_smoothing = _check_smoothing(label_smoothing)
    have_weights = pos_weight is not None and neg_weight is not None
    if (pos_weight is None) != (neg_weight is None) and name in ("auto", "weighted_bce"):
        raise LossConfigError("give both pos_weight and neg_weight (see class_balance_weights), or neither")
    if task == "multiclass":
        if name in ("bce", "weighted_bce"):
            raise LossConfigError(f"loss {name!r} is for binary / multilabel tasks; a multiclass task "
                                  "(softmax output) uses 'categorical' or 'focal' (or 'auto')")
        if pos_weight is not None or neg_weight is not None:
            given = [n for n, v in (("pos_weight", pos_weight), ("neg_weight", neg_weight)) if v is not None]
            raise LossConfigError(f"{' and '.join(given)} {'do' if len(given) > 1 else 'does'} not apply to a "
                                  f"multiclass task (loss {name!r}); balance classes by resampling or class_weight "
                                  "instead")
        if name == "focal":
            return keras.losses.CategoricalFocalCrossentropy(gamma=gamma, from_logits=from_logits,
                                                             label_smoothing=label_smoothing)
        return keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=label_smoothing)
    if name == "categorical":
        raise LossConfigError(f"loss 'categorical' needs a multiclass task with a softmax output; a {task} "
                              "task (sigmoid output) uses 'bce', 'weighted_bce', 'focal' or 'auto'")
    if name == "bce" and have_weights:
        raise LossConfigError("loss 'bce' is unweighted, so pos_weight and neg_weight would be ignored; use "
                              "'weighted_bce' or 'auto' to weigh the classes, or give no weights")
    if name == "weighted_bce" and not have_weights:
        raise LossConfigError("loss 'weighted_bce' needs pos_weight and neg_weight; compute them from the "
                              "training labels with tfmed.training.losses.class_balance_weights(y_train)")
    if name == "focal":
        if neg_weight is not None and pos_weight is None:
            raise LossConfigError("loss 'focal' got neg_weight without pos_weight; give both (see "
                                  "class_balance_weights), pos_weight alone (negatives weigh 1 - pos_weight), "
                                  "or neither")
        return FocalLoss(gamma=gamma, alpha=pos_weight, neg_alpha=neg_weight, from_logits=from_logits,
                         label_smoothing=label_smoothing)
    if name == "weighted_bce" or (name == "auto" and have_weights):
        return WeightedBinaryCrossentropy(pos_weight, neg_weight, from_logits=from_logits,
                                          label_smoothing=label_smoothing)
    return WeightedBinaryCrossentropy(1.0, 1.0, from_logits=from_logits, label_smoothing=label_smoothing,
                                      name="binary_crossentropy", label_reduction="mean")
