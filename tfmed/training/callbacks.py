"""Keras callbacks for clinical validation metrics, thresholds and staged unfreezing.

All callbacks subclass ``keras.callbacks.Callback`` and write their values into
the epoch ``logs`` so that ``EarlyStopping``, ``ModelCheckpoint`` and
``ReduceLROnPlateau`` can monitor them (e.g. ``monitor="val_auc", mode="max"``).

Keras calls callbacks in list order with one shared ``logs`` dict, so put
:class:`ClinicalMetrics` and :class:`ThresholdSelector` BEFORE the callbacks
that read their values (EarlyStopping, ModelCheckpoint, StagedUnfreeze with
``on_plateau``). :func:`ordered` does that for any list.

Example:
    >>> import keras, numpy as np
    >>> x = np.random.rand(32, 4).astype("float32"); y = (x[:, 0] > 0.5).astype("float32")
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    >>> model.compile("adam", "binary_crossentropy")
    >>> callbacks = ordered([keras.callbacks.EarlyStopping(monitor="val_auc", mode="max"),
    ...                      ClinicalMetrics((x, y))])
    >>> history = model.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)
    >>> 0.0 <= history.history["val_auc"][0] <= 1.0
    True
"""
from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from tfmed.config import THRESHOLD_TARGET_METHODS
from tfmed.errors import TfmedError
from tfmed.evaluation.intervals import EvaluationError, _binary_labels
from tfmed.evaluation.thresholds import choose_threshold, known_column
from tfmed.progress import LOGGER, configure_logging, log
from tfmed.training.layers import set_threshold, threshold_layer


class CallbackError(TfmedError):
    """A callback got unusable arguments or validation data."""


def ordered(callbacks: Sequence[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """Return ``callbacks`` with tfmed metric callbacks moved to the front (order otherwise kept).

    Example:
        >>> import keras, numpy as np
        >>> stop = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max")
        >>> metrics = ClinicalMetrics((np.zeros((2, 3)), np.array([0, 1])))
        >>> ordered([stop, metrics])[0] is metrics
        True
    """
    callbacks = list(callbacks)
    first = [cb for cb in callbacks if isinstance(cb, _ValidationScorer)]
    return first + [cb for cb in callbacks if cb not in first]


class _ValidationScorer(keras.callbacks.Callback):
    """Scores ``self.validation_data`` each epoch through the model's compiled forward pass."""

    def set_model(self, model):
        _refuse_several_outputs(model, type(self).__name__)  # when fit starts, not after its first epoch
        super().set_model(model)

    def _validation_scores(self):
        """Predictions and targets for ``self.validation_data`` from a single pass. A dataset's sample weights
        leave out the cases weighted 0 (padding, excluded cases); other weights must be equal, since the
        clinical figures count each case once."""
        if not isinstance(self.validation_data, tf.data.Dataset):
            x, y = self.validation_data
            return (_one_output(self.model.predict(x, batch_size=self.batch_size, verbose=0), type(self).__name__),
                    _one_output(y, type(self).__name__, "targets"))
        forward = _compiled_forward(self.model)
        scores, targets, weights = [], [], []
        for element in self.validation_data:
            if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
                raise CallbackError("validation dataset elements must be (x, y) or (x, y, sample_weight) "
                                    f"tuples, got {type(element).__name__}"
                                    + (f" of {len(element)}" if isinstance(element, (tuple, list)) else ""))
            if not scores:
                _check_batched(element[0], self.model)
            scores.append(_one_output(forward(element[0]), type(self).__name__))
            targets.append(_one_output(element[1], type(self).__name__, "targets"))
            if len(element) == 3:
                weights.append(_case_weights(element[2], len(targets[-1]), type(self).__name__))
        if not scores:
            raise CallbackError("the validation dataset is empty; it must yield (x, y) batches")
        scores, targets = np.concatenate(scores), np.concatenate(targets)
        if not weights:
            return scores, targets
        kept = _weighted_cases(np.concatenate(weights), type(self).__name__)
        return scores[kept], targets[kept]


def _refuse_several_outputs(model, callback: str) -> None:
    """Refuse a model of several outputs: its clinical figures are one output's, which the user must choose."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) > 1:
        names = ", ".join(getattr(model, "output_names", None) or [getattr(output, "name", "?") for output in outputs])
        raise CallbackError(f"{callback} scores a model of one output; this one has {len(outputs)} ({names}). Give "
                            "it a model of the output to score, sharing the weights, e.g. "
                            "keras.Model(model.inputs, model.get_layer(NAME).output)")


def _one_output(value, callback: str, what: str = "predictions") -> np.ndarray:
    """``value`` as one array; several arrays (a list, tuple or dict of outputs or targets) are refused."""
    if isinstance(value, (list, tuple, dict)):
        raise CallbackError(f"{callback} scores one output, but the validation {what} are a {type(value).__name__} "
                            f"of {len(value)} arrays; score a model of one output against its own targets, e.g. "
                            "validation data (x, y_finding) for keras.Model(model.inputs, "
                            "model.get_layer(NAME).output)")
    return np.asarray(value)


def _case_weights(weights, cases: int, callback: str) -> np.ndarray:
    """One sample weight per case of a validation batch; weights per label (a mask of unknown labels) are refused,
    naming tfmed's own way to mark them."""
    weights = np.asarray(weights, dtype=np.float64).reshape(cases, -1)
    if weights.shape[1] > 1 and np.ptp(weights, axis=1).any():
        raise CallbackError(f"{callback}: the validation sample weights differ between the labels of a case (a mask "
                            "of unknown labels?); give an unknown label as -1 in y instead, which the clinical "
                            "figures leave out label by label")
    return weights[:, 0]


def _weighted_cases(weights: np.ndarray, callback: str) -> np.ndarray:
    """The cases a validation dataset's sample weights keep: those not weighted 0, all weighted alike.

    Example:
        >>> _weighted_cases(np.array([1.0, 0.0, 1.0]), "ClinicalMetrics").tolist()
        [True, False, True]
    """
    kept = weights != 0
    if not kept.any():
        raise CallbackError(f"{callback}: every validation case has sample weight 0, so none is left to score")
    if np.ptp(weights[kept]) > 0:
        raise CallbackError(f"{callback}: the validation sample weights take values from {weights[kept].min():g} "
                            f"to {weights[kept].max():g}; the clinical figures (AUC, sensitivity, specificity, "
                            "the threshold) count each case once, so only weight 0 (leave the case out) is used: "
                            "give the validation dataset as (x, y), or weights of 0 and one other value")
    return kept


_compiled_forwards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled_forward(model: keras.Model):
    """The model's inference pass (``training=False``) as one compiled function, shared by its scorers.

    Calling the model eagerly batch by batch costs about three times as much on a CPU
    (EfficientNet-Lite0, 96 px). Every callback that scores the same model uses the same
    function, traced once per input shape (a smaller last batch makes the batch axis free),
    and it reads the model's current weights at each call, so unfreezing layers does not
    retrace it. It holds the model weakly: a model that is no longer used is freed with it.

    Example:
        >>> import keras, numpy as np
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> _compiled_forward(model) is _compiled_forward(model)
        True
        >>> _compiled_forward(model)(np.zeros((2, 4), "float32")).shape
        TensorShape([2, 1])
    """
    forward = _compiled_forwards.get(model)
    if forward is None:
        model_ref = weakref.ref(model)

        @tf.function(reduce_retracing=True)
        def forward(x):
            # A direct call of the model, not predict_on_batch: under MirroredStrategy the
            # latter returns one copy of the outputs per replica for a single batch.
            return model_ref()(x, training=False)

        _compiled_forwards[model] = forward
    return forward


def _check_batched(x, model) -> None:
    """Refuse a validation dataset whose elements lack the batch axis the model's input has."""
    try:
        expected = len(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):  # a subclassed model without known inputs
        return
    if isinstance(x, tf.Tensor) and len(x.shape) == expected - 1:
        raise CallbackError(f"the validation dataset is not batched: its x has shape {tuple(x.shape)} while "
                            f"the model takes {tuple(model.inputs[0].shape)}; call .batch(n) on the dataset")


def _check_validation_data(validation_data, callback: str):
    if isinstance(validation_data, tf.data.Dataset):
        if int(validation_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise CallbackError("the validation dataset repeats forever (infinite cardinality), so scoring it "
                                "would never end; build it without .repeat(), or take a finite part with "
                                ".take(n_batches)")
        return validation_data
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        x, y = validation_data
        if isinstance(y, dict) or (isinstance(y, (list, tuple)) and y and all(np.ndim(part) > 0 for part in y)
                                   and len(y) != len(tf.nest.flatten(x)[0])):  # one target array per output
            _one_output(y, callback, "targets")
        rows = {len(part) for part in tf.nest.flatten(x)}  # a multi-input model's x: a list or dict of arrays
        if len(rows) > 1:
            raise CallbackError(f"validation x holds inputs of {sorted(rows)} rows; every input needs one row per "
                                "case")
        if rows != {len(y)}:
            raise CallbackError(f"validation x has {next(iter(rows), 0)} rows but y has {len(y)}; they must match")
        if len(y) == 0:
            raise CallbackError("validation data is empty")
        return tuple(validation_data)
    raise CallbackError("validation_data must be a tf.data.Dataset of (x, y) batches or an (x, y) "
                        f"tuple of arrays, got {type(validation_data).__name__}")


def numeric_targets(targets) -> np.ndarray:
    """``targets`` as numbers: as given when numeric, booleans as 0/1, text such as "1" converted.

    Raises:
        ValueError: a target is not a number (e.g. a class name).

    Example:
        >>> numeric_targets(np.array([True, False])).tolist(), numeric_targets(np.array(["1", "0"])).tolist()
        ([1.0, 0.0], [1.0, 0.0])
    """
    y = np.asarray(targets)
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        try:
            return y.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"targets of dtype {y.dtype} are not all numbers") from None
    return y


def _as_label_matrix(y_true: np.ndarray, y_score: np.ndarray, task: str | None):
    """Return (task, Y, S): Y and S are (n, k) 0/1 targets and scores, one column per ROC curve."""
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    if not np.isfinite(y_score).all():
        rows = np.flatnonzero(~np.isfinite(y_score).all(axis=1))
        raise CallbackError(f"the model's scores are NaN or infinite for {len(rows)} of {len(y_score)} validation "
                            f"case(s) (row(s) {rows[:10].tolist()}{' ...' if len(rows) > 10 else ''}): training has "
                            "diverged; lower the learning rate, or look for NaN pixels in the images")
    try:
        y_true = numeric_targets(y_true)
    except ValueError:
        given = np.asarray(y_true)
        raise CallbackError(f"validation targets must be numbers (0/1 for binary and multi-label outputs, "
                            f"class indices 0..K-1 or one-hot rows for multiclass), got {given.dtype} values "
                            f"such as {given.ravel()[:3].tolist()}; encode the labels as numbers") from None
    if not np.isfinite(y_true).all():
        rows = np.flatnonzero(~np.isfinite(y_true.reshape(len(y_true), -1)).all(axis=1))
        raise CallbackError(f"validation targets are missing (NaN or infinite) in row(s) {rows[:10].tolist()}"
                            f"{' ...' if len(rows) > 10 else ''}; leave those cases out of the validation data")
    if y_score.shape[1] == 1:
        if y_true.ndim == 2 and y_true.shape[1] > 1:
            raise CallbackError(f"validation targets have shape {y_true.shape} but the model has one output; "
                                "give 0/1 targets of shape (N,) (for one-hot targets, their positive column "
                                "y[:, 1])")
        task = task or "binary"
        return task, y_true.reshape(-1, 1).astype(np.float64), y_score
    k = y_score.shape[1]
    if y_true.ndim == 1 or (y_true.ndim == 2 and y_true.shape[1] == 1):
        labels = y_true.reshape(-1).astype(int)
        if labels.min() < 0 or labels.max() >= k:
            raise CallbackError(f"validation labels range {labels.min()}..{labels.max()} but the model "
                                f"predicts {k} classes")
        if k == 2:   # a two-class softmax: binary, scored by the probability of class 1
            return "binary", labels.reshape(-1, 1).astype(np.float64), y_score[:, 1:]
        return task or "multiclass", np.eye(k)[labels], y_score
    if y_true.shape[1] != k:
        raise CallbackError(f"validation targets have {y_true.shape[1]} columns but the model predicts {k}")
    if k == 2 and task != "multilabel" and np.all(y_true.sum(axis=1) == 1) and (
            task is not None or np.allclose(y_score.sum(axis=1), 1.0, atol=1e-3)):
        return "binary", y_true[:, 1:].astype(np.float64), y_score[:, 1:]   # one-hot rows of a 2-class softmax
    if task is None:
        one_hot = np.all(y_true.sum(axis=1) == 1)
        softmax = np.allclose(y_score.sum(axis=1), 1.0, atol=1e-3)
        task = "multiclass" if one_hot and softmax else "multilabel"
    return task, y_true.astype(np.float64), y_score


def _check_binary_targets(y: np.ndarray) -> None:
    """Refuse binary validation targets other than 0/1, naming the first such row (as choose_threshold does)."""
    try:
        _binary_labels(y, "binary validation targets")
    except EvaluationError as error:
        raise CallbackError(f"{error}; fix or drop those rows (a multiclass task needs one softmax output per "
                            "class)") from None


def _check_both_classes(Y: np.ndarray, task: str) -> None:
    for column in range(Y.shape[1]):
        present = np.unique(known_column(Y, Y, column)[0])
        if present.size < 2:
            which = "" if Y.shape[1] == 1 else f" for {('class' if task == 'multiclass' else 'label')} {column}"
            raise CallbackError(f"validation targets{which} contain only value {present.tolist()}; ROC AUC "
                                "and thresholds need positives and negatives - use a stratified validation split")


def _operating_point(y: np.ndarray, score: np.ndarray, method: str, target: float):
    """(threshold, sensitivity, specificity) of one ROC curve at the threshold
    :func:`tfmed.evaluation.choose_threshold` picks (positive means score >= threshold)."""
    threshold = choose_threshold(y, score, method, target)
    positive = score >= threshold
    truth = y.astype(bool)
    return threshold, float(positive[truth].mean()), float((~positive[~truth]).mean())


def clinical_scores(y_true, y_score, task: str | None = None) -> dict:
    """ROC AUC and sensitivity/specificity at the Youden-optimal threshold.

    Binary: one ROC curve. Multi-label: macro AUC over labels and mean of the
    per-label Youden operating points. Multiclass: macro one-vs-rest AUC and
    mean of the one-vs-rest Youden points. Per-column values are returned
    under ``"per_column"``. Two softmax outputs (``Dense(2, softmax)``) with
    class indices 0/1 or one-hot targets are binary, scored by column 1 (the
    probability of class 1).

    Example:
        >>> import numpy as np
        >>> scores = clinical_scores(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.4, 0.5, 0.45, 0.9]))
        >>> [round(scores[k], 3) for k in ("auc", "youden_threshold", "sensitivity", "specificity")]
        [0.833, 0.45, 1.0, 0.667]
    """
    task, Y, S = _as_label_matrix(y_true, y_score, task)
    if task == "binary":
        _check_binary_targets(Y[:, 0])
    _check_both_classes(Y, task)
    if task == "multiclass":
        auc = roc_auc_score(Y.argmax(axis=1), S, multi_class="ovr", average="macro")
    elif task == "multilabel":   # the mean of the labels' AUCs, each on the images where it is known
        auc = np.mean([roc_auc_score(*known_column(Y, S, c)) for c in range(Y.shape[1])])
    else:
        auc = roc_auc_score(Y[:, 0], S[:, 0])
    points = np.array([_operating_point(*known_column(Y, S, c), "youden", 0.95) for c in range(Y.shape[1])])
    return {"task": task, "auc": float(auc), "youden_threshold": float(points[:, 0].mean()),
            "sensitivity": float(points[:, 1].mean()), "specificity": float(points[:, 2].mean()),
            "per_column": {"threshold": points[:, 0].tolist(), "sensitivity": points[:, 1].tolist(),
                           "specificity": points[:, 2].tolist()}}


def select_threshold(y_true, y_score, method: str = "youden", target: float = 0.95):
    """Validation-optimal decision threshold(s) (positive means score >= threshold).

    ``method``: "youden" (max sensitivity + specificity - 1), "sensitivity"
    (highest threshold with sensitivity >= target, i.e. best specificity
    there) or "specificity" (lowest threshold with specificity >= target).
    Returns a float for a binary output, one float per label for multi-label.

    Example:
        >>> import numpy as np
        >>> select_threshold(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.4, 0.5, 0.45, 0.9]))
        0.45
    """
    _check_method(method, target)
    task, Y, S = _as_label_matrix(y_true, y_score, None if np.ndim(y_score) < 2 or
                                  np.shape(y_score)[1] == 1 else "multilabel")
    _check_both_classes(Y, task)
    values = [choose_threshold(*known_column(Y, S, c), method, target) for c in range(Y.shape[1])]
    return values[0] if len(values) == 1 else values


def _check_method(method: str, target: float) -> None:
    if method not in THRESHOLD_TARGET_METHODS:
        raise CallbackError(f"threshold method {method!r} is unknown; allowed: {', '.join(THRESHOLD_TARGET_METHODS)}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise CallbackError(f"threshold target must be in (0, 1], got {target!r}")


class EpochLogger(keras.callbacks.Callback):
    """Print one timestamped line per epoch: loss and the validation metrics in ``logs``.

    Put it after ClinicalMetrics (``ordered`` does that) so ``val_auc`` is shown.
    The lines go to the ``"tfmed"`` logger; when that logger has no handler of its
    own yet, :func:`tfmed.progress.configure_logging` is called so they show on
    standard output (attach your own handler to ``"tfmed"`` first to send them elsewhere).

    Example:
        >>> model.fit(train_ds, epochs=3, verbose=0, callbacks=ordered([EpochLogger(), ...]))  # doctest: +SKIP
        [tfmed 10:15:02] epoch 1: loss 0.4127, val_auc 0.9312, ...
    """

    KEYS = ("loss", "val_loss", "val_auc", "val_sensitivity", "val_specificity")

    def on_train_begin(self, logs=None):
        if not any(not isinstance(handler, logging.NullHandler) for handler in LOGGER.handlers):
            configure_logging()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = ", ".join(f"{k} {float(logs[k]):.4f}" for k in self.KEYS if k in logs)
        log(f"epoch {epoch + 1}: {shown}")


class ClinicalMetrics(_ValidationScorer):
    """Each epoch: validation ROC AUC and sensitivity/specificity at the Youden threshold.

    Writes ``logs[prefix + "auc"]``, ``prefix + "sensitivity"``,
    ``prefix + "specificity"`` and ``prefix + "youden_threshold"`` (prefix
    ``"val_"`` by default). Multi-label: macro AUC; multiclass: macro
    one-vs-rest AUC; sensitivity/specificity/threshold are means over labels
    (classes), the per-label values are in ``self.last_["per_column"]``.
    A two-class softmax output counts as binary, scored by its column 1
    (see :func:`clinical_scores`).

    Put it before EarlyStopping / ModelCheckpoint in the callback list (or
    pass the list through :func:`ordered`).

    Args:
        validation_data: a ``tf.data.Dataset`` of (x, y) batches (or (x, y, sample_weight): cases weighted 0
            are left out, the others must share one weight), or (x, y) arrays (x a list or dict of arrays
            for a model of several inputs). The model must have one output.
        prefix: key prefix in ``logs``.
        task: "binary" | "multiclass" | "multilabel", or None to infer from shapes.
        batch_size: batch size when ``validation_data`` are arrays.

    Example:
        >>> import keras, numpy as np
        >>> x = np.random.rand(16, 3).astype("float32"); y = np.array([0, 1] * 8)
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
        >>> model.compile("sgd", "binary_crossentropy")
        >>> h = model.fit(x, y, epochs=1, verbose=0, callbacks=[ClinicalMetrics((x, y))])
        >>> sorted(k for k in h.history if k.startswith("val_"))
        ['val_auc', 'val_sensitivity', 'val_specificity', 'val_youden_threshold']
    """

    def __init__(self, validation_data, prefix: str = "val_", task: str | None = None, batch_size: int = 64):
        super().__init__()
        if task not in (None, "binary", "multiclass", "multilabel"):
            raise CallbackError(f"task {task!r} is unknown; allowed: binary, multiclass, multilabel or None")
        self.validation_data = _check_validation_data(validation_data, type(self).__name__)
        self.prefix = prefix
        self.task = task
        self.batch_size = batch_size
        self.last_: dict | None = None

    def on_epoch_end(self, epoch, logs=None):
        y_score, y_true = self._validation_scores()
        scores = clinical_scores(y_true, y_score, self.task)
        self.last_ = scores
        if logs is not None:
            for key in ("auc", "sensitivity", "specificity", "youden_threshold"):
                logs[self.prefix + key] = scores[key]


class ThresholdSelector(_ValidationScorer):
    """Choose the validation-optimal decision threshold and store it with the model.

    Each epoch writes ``logs[prefix + "threshold"]`` (the mean over labels for
    multi-label); at the end of training stores the threshold(s) in the
    model's DecisionThreshold layer (see :func:`add_threshold_layer`), which
    saves and loads with the model, and in ``model.tfmed_threshold``.
    Binary and multi-label outputs only (multiclass decisions use argmax): a
    two-class softmax (``Dense(2, softmax)``, class-index or one-hot targets) is
    binary, its one threshold applying to column 1 (the probability of class 1);
    a softmax of more classes is refused.

    The thresholds of every epoch are kept in ``thresholds_`` ({epoch: threshold}).
    Given the ``EarlyStopping(restore_best_weights=True)`` of the same ``fit`` as
    ``restored_by``, the threshold stored at the end is that of the epoch whose
    weights it restores; without it, the last epoch's (a DecisionThreshold layer
    is restored with the weights anyway, as long as ``every_epoch_store`` is True).

    Args:
        validation_data: a ``tf.data.Dataset`` of (x, y) batches (or (x, y, sample_weight): cases weighted 0
            are left out, the others must share one weight), or (x, y) arrays (x a list or dict of arrays
            for a model of several inputs). The model must have one output.
        method: "youden", "sensitivity" or "specificity" (see :func:`select_threshold`).
        target: the sensitivity or specificity to reach (ignored for youden).
        every_epoch_store: also store each epoch's threshold in the model, so a
            ModelCheckpoint(save_best_only=True) file holds the threshold of
            the saved epoch (default True).
        restored_by: the ``EarlyStopping(restore_best_weights=True)`` of the same
            ``fit``, if any (see above).

    Example:
        >>> import keras, numpy as np
        >>> x = np.random.rand(16, 3).astype("float32"); y = np.array([0, 1] * 8)
        >>> from tfmed.training import add_threshold_layer, get_threshold
        >>> model = add_threshold_layer(keras.Sequential([keras.Input((3,)),
        ...                                               keras.layers.Dense(1, activation="sigmoid")]))
        >>> model.compile("sgd", "binary_crossentropy")
        >>> h = model.fit(x, y, epochs=1, verbose=0, callbacks=[ThresholdSelector((x, y))])
        >>> abs(get_threshold(model) - h.history["val_threshold"][-1]) < 1e-6
        True
    """

    def __init__(self, validation_data, method: str = "youden", target: float = 0.95, prefix: str = "val_",
                 batch_size: int = 64, every_epoch_store: bool = True, restored_by=None):
        super().__init__()
        _check_method(method, target)
        if restored_by is not None and not (isinstance(restored_by, keras.callbacks.EarlyStopping)
                                            and restored_by.restore_best_weights):
            raise CallbackError(f"restored_by must be an EarlyStopping(restore_best_weights=True), got "
                                f"{restored_by!r}; leave it out when no callback restores earlier weights")
        self.restored_by = restored_by
        self.validation_data = _check_validation_data(validation_data, type(self).__name__)
        self.method = method
        self.target = float(target)
        self.prefix = prefix
        self.batch_size = batch_size
        self.every_epoch_store = every_epoch_store
        self.threshold_ = None
        self.thresholds_: dict = {}

    def _compute(self):
        y_score, y_true = self._validation_scores()
        columns = y_score.shape[1] if np.ndim(y_score) == 2 else 1
        if columns > 2 and np.allclose(np.sum(y_score, axis=1), 1.0, atol=1e-3):
            raise CallbackError(f"ThresholdSelector needs a binary or multi-label (sigmoid) output; the model's "
                                f"{columns} outputs sum to 1 (a multiclass softmax), decided by argmax, not a "
                                "threshold: leave ThresholdSelector out (ClinicalMetrics scores it), or use sigmoid "
                                "outputs for a multi-label task")
        if columns > 1:  # a two-class softmax is binary on column 1 (clinical_scores' rule); else multi-label
            task, labels, scores = _as_label_matrix(y_true, y_score, None)
            if task == "multiclass":
                raise CallbackError("ThresholdSelector needs a binary or multi-label (sigmoid) output; a "
                                    "multiclass softmax output is decided by argmax, not a threshold")
            if task == "binary":
                return select_threshold(labels[:, 0], scores[:, 0], self.method, self.target)
        return select_threshold(y_true, y_score, self.method, self.target)

    def on_train_begin(self, logs=None):
        self.thresholds_ = {}

    def on_epoch_end(self, epoch, logs=None):
        self.threshold_ = self._compute()
        self.thresholds_[epoch] = self.threshold_
        if logs is not None:
            logs[self.prefix + "threshold"] = float(np.mean(self.threshold_))
        if self.every_epoch_store:
            self._store()

    def on_train_end(self, logs=None):
        stopper = self.restored_by
        if stopper is not None and stopper.best_weights is not None and stopper.best_epoch in self.thresholds_:
            self.threshold_ = self.thresholds_[stopper.best_epoch]  # the weights it sets (or has set) back
        elif self.threshold_ is None:
            self.threshold_ = self._compute()
        self._store()

    def _store(self):
        if threshold_layer(self.model) is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                set_threshold(self.model, self.threshold_)
            if not getattr(self, "_warned", False):
                self._warned = True
                warnings.warn("ThresholdSelector: the model has no DecisionThreshold layer, so the threshold "
                              "is NOT saved with the model; wrap it with add_threshold_layer(model) before "
                              "compiling", stacklevel=2)
        else:
            set_threshold(self.model, self.threshold_)
