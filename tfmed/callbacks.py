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

import numbers
import warnings
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score, roc_curve

from tfmed import freezing

THRESHOLD_METHODS = ("youden", "sensitivity", "specificity")


class CallbackError(ValueError):
    """A callback got unusable arguments or validation data."""


# ----------------------------------------------------------------------------- helpers


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
    first = [cb for cb in callbacks if isinstance(cb, (ClinicalMetrics, ThresholdSelector))]
    return first + [cb for cb in callbacks if cb not in first]


def _predict(model: keras.Model, validation_data, batch_size: int):
    """Predictions and targets for ``validation_data`` from a single pass."""
    if isinstance(validation_data, tf.data.Dataset):
        scores, targets = [], []
        for element in validation_data:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise CallbackError("validation dataset elements must be (x, y) or (x, y, sample_weight) "
                                    f"tuples, got {type(element).__name__}")
            # A direct call, not predict_on_batch: under MirroredStrategy the latter returns
            # one copy of the outputs per replica for a single batch.
            scores.append(np.asarray(model(element[0], training=False)))
            targets.append(np.asarray(element[1]))
        if not scores:
            raise CallbackError("the validation dataset is empty; it must yield (x, y) batches")
        return np.concatenate(scores), np.concatenate(targets)
    x, y = validation_data
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0)), np.asarray(y)


def _check_validation_data(validation_data):
    if isinstance(validation_data, tf.data.Dataset):
        return validation_data
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        x, y = validation_data
        if len(x) != len(y):
            raise CallbackError(f"validation x has {len(x)} rows but y has {len(y)}; they must match")
        if len(y) == 0:
            raise CallbackError("validation data is empty")
        return tuple(validation_data)
    raise CallbackError("validation_data must be a tf.data.Dataset of (x, y) batches or an (x, y) "
                        f"tuple of arrays, got {type(validation_data).__name__}")


def _as_label_matrix(y_true: np.ndarray, y_score: np.ndarray, task: str | None):
    """Return (task, Y, S): Y and S are (n, k) 0/1 targets and scores, one column per ROC curve."""
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    y_true = np.asarray(y_true)
    if y_score.shape[1] == 1:
        task = task or "binary"
        return task, y_true.reshape(-1, 1).astype(np.float64), y_score
    k = y_score.shape[1]
    if y_true.ndim == 1 or (y_true.ndim == 2 and y_true.shape[1] == 1):
        labels = y_true.reshape(-1).astype(int)
        if labels.min() < 0 or labels.max() >= k:
            raise CallbackError(f"validation labels range {labels.min()}..{labels.max()} but the model "
                                f"predicts {k} classes")
        return task or "multiclass", np.eye(k)[labels], y_score
    if y_true.shape[1] != k:
        raise CallbackError(f"validation targets have {y_true.shape[1]} columns but the model predicts {k}")
    if task is None:
        one_hot = np.all(y_true.sum(axis=1) == 1)
        softmax = np.allclose(y_score.sum(axis=1), 1.0, atol=1e-3)
        task = "multiclass" if one_hot and softmax else "multilabel"
    return task, y_true.astype(np.float64), y_score


def _check_both_classes(Y: np.ndarray, task: str) -> None:
    for column in range(Y.shape[1]):
        present = np.unique(Y[:, column])
        if present.size < 2:
            which = "" if Y.shape[1] == 1 else f" for {('class' if task == 'multiclass' else 'label')} {column}"
            raise CallbackError(f"validation targets{which} contain only value {present.tolist()}; ROC AUC "
                                "and thresholds need positives and negatives - use a stratified validation split")


def _pick_threshold(y: np.ndarray, score: np.ndarray, method: str, target: float):
    """(threshold, sensitivity, specificity) for one ROC curve; positive means score >= threshold."""
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    if method == "youden":
        index = int(np.argmax(tpr - fpr))
    elif method == "sensitivity":
        reach = np.flatnonzero(tpr >= target - 1e-12)
        index = int(reach[0])
    else:
        reach = np.flatnonzero(1.0 - fpr >= target - 1e-12)
        index = int(reach[-1])
    threshold = thresholds[index]
    if not np.isfinite(threshold):
        threshold = np.nextafter(thresholds[1], np.inf)
    return float(threshold), float(tpr[index]), float(1.0 - fpr[index])


def clinical_scores(y_true, y_score, task: str | None = None) -> dict:
    """ROC AUC and sensitivity/specificity at the Youden-optimal threshold.

    Binary: one ROC curve. Multi-label: macro AUC over labels and mean of the
    per-label Youden operating points. Multiclass: macro one-vs-rest AUC and
    mean of the one-vs-rest Youden points. Per-column values are returned
    under ``"per_column"``.

    Example:
        >>> import numpy as np
        >>> scores = clinical_scores(np.array([0, 0, 0, 1, 1]), np.array([0.1, 0.4, 0.5, 0.45, 0.9]))
        >>> [round(scores[k], 3) for k in ("auc", "youden_threshold", "sensitivity", "specificity")]
        [0.833, 0.45, 1.0, 0.667]
    """
    task, Y, S = _as_label_matrix(y_true, y_score, task)
    _check_both_classes(Y, task)
    if task == "multiclass":
        auc = roc_auc_score(Y.argmax(axis=1), S, multi_class="ovr", average="macro")
    elif task == "multilabel":
        auc = roc_auc_score(Y, S, average="macro")
    else:
        auc = roc_auc_score(Y[:, 0], S[:, 0])
    points = np.array([_pick_threshold(Y[:, c], S[:, c], "youden", 0.0) for c in range(Y.shape[1])])
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
    values = [_pick_threshold(Y[:, c], S[:, c], method, target)[0] for c in range(Y.shape[1])]
    return values[0] if len(values) == 1 else values


def _check_method(method: str, target: float) -> None:
    if method not in THRESHOLD_METHODS:
        raise CallbackError(f"threshold method {method!r} is unknown; allowed: {', '.join(THRESHOLD_METHODS)}")
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0.0 < target <= 1.0:
        raise CallbackError(f"threshold target must be in (0, 1], got {target!r}")


# ----------------------------------------------------------------------------- EpochLogger


class EpochLogger(keras.callbacks.Callback):
    """Print one timestamped line per epoch: loss and the validation metrics in ``logs``.

    Put it after ClinicalMetrics (``ordered`` does that) so ``val_auc`` is shown.

    Example:
        >>> model.fit(train_ds, epochs=3, verbose=0, callbacks=ordered([EpochLogger(), ...]))  # doctest: +SKIP
        [tfmed 10:15:02] epoch 1: loss 0.4127, val_auc 0.9312, ...
    """

    KEYS = ("loss", "val_loss", "val_auc", "val_sensitivity", "val_specificity")

    def on_epoch_end(self, epoch, logs=None):
        from tfmed.progress import log

        logs = logs or {}
        shown = ", ".join(f"{k} {float(logs[k]):.4f}" for k in self.KEYS if k in logs)
        log(f"epoch {epoch + 1}: {shown}")


# ----------------------------------------------------------------------------- ClinicalMetrics


class ClinicalMetrics(keras.callbacks.Callback):
    """Each epoch: validation ROC AUC and sensitivity/specificity at the Youden threshold.

    Writes ``logs[prefix + "auc"]``, ``prefix + "sensitivity"``,
    ``prefix + "specificity"`` and ``prefix + "youden_threshold"`` (prefix
    ``"val_"`` by default). Multi-label: macro AUC; multiclass: macro
    one-vs-rest AUC; sensitivity/specificity/threshold are means over labels
    (classes), the per-label values are in ``self.last_["per_column"]``.

    Put it before EarlyStopping / ModelCheckpoint in the callback list (or
    pass the list through :func:`ordered`).

    Args:
        validation_data: a ``tf.data.Dataset`` of (x, y) batches, or (x, y) arrays.
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
        self.validation_data = _check_validation_data(validation_data)
        self.prefix = prefix
        self.task = task
        self.batch_size = batch_size
        self.last_: dict | None = None

    def on_epoch_end(self, epoch, logs=None):
        y_score, y_true = _predict(self.model, self.validation_data, self.batch_size)
        scores = clinical_scores(y_true, y_score, self.task)
        self.last_ = scores
        if logs is not None:
            for key in ("auc", "sensitivity", "specificity", "youden_threshold"):
                logs[self.prefix + key] = scores[key]


# ----------------------------------------------------------------------------- thresholds


@keras.saving.register_keras_serializable(package="tfmed")
class DecisionThreshold(keras.layers.Layer):
    """Pass-through layer that stores the operating threshold(s) as a non-trainable weight.

    It returns its input unchanged (so predictions stay probabilities) and
    saves and loads with the model. :func:`add_threshold_layer` appends it to a
    model; :class:`ThresholdSelector` fills it; :func:`get_threshold` reads it.

    Example:
        >>> import numpy as np
        >>> layer = DecisionThreshold()
        >>> out = layer(np.zeros((2, 3), "float32"))
        >>> layer.threshold.numpy().tolist()
        [0.5, 0.5, 0.5]
    """

    def __init__(self, initial: float = 0.5, **kwargs):
        kwargs.setdefault("dtype", "float32")
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        self.initial = float(initial)

    def build(self, input_shape):
        size = input_shape[-1] if len(input_shape) > 1 and input_shape[-1] is not None else 1
        self.threshold = self.add_weight(name="threshold", shape=(size,), trainable=False,
                                         initializer=keras.initializers.Constant(self.initial))

    def call(self, inputs):
        return inputs

    def get_config(self):
        config = super().get_config()
        config.update(initial=self.initial)
        config.pop("trainable", None)
        return config


def add_threshold_layer(model: keras.Model, name: str = "decision_threshold") -> keras.Model:
    """A model with the same layers and weights whose output passes through a DecisionThreshold.

    Call it before ``compile``; the threshold then travels with every
    ``model.save`` / ``keras.models.load_model``.

    Example:
        >>> import keras
        >>> base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
        >>> model = add_threshold_layer(base)
        >>> get_threshold(model)
        0.5
    """
    if _threshold_layer(model) is not None:
        return model
    if not model.built or not getattr(model, "outputs", None):
        raise CallbackError(f"model {model.name!r} has no defined inputs/outputs yet; build a functional or "
                            "Sequential model with keras.Input first")
    if len(model.outputs) != 1:
        raise CallbackError(f"model {model.name!r} has {len(model.outputs)} outputs; thresholds need one")
    outputs = DecisionThreshold(name=name)(model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name)


def _threshold_layer(model: keras.Model):
    for layer in freezing.iter_layers(model):
        if isinstance(layer, DecisionThreshold):
            return layer
    return None


def get_threshold(model: keras.Model, default=None):
    """The threshold stored in ``model`` (float, or list per label), or ``default`` if none.

    Looks for a DecisionThreshold layer first, then the ``tfmed_threshold``
    attribute set by ThresholdSelector on models without that layer.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> get_threshold(model, default=0.5)
        0.5
    """
    layer = _threshold_layer(model)
    if layer is not None and layer.built:
        values = np.asarray(layer.threshold.numpy(), dtype=float).tolist()
        return values[0] if len(values) == 1 else values
    return getattr(model, "tfmed_threshold", default)


def set_threshold(model: keras.Model, threshold) -> None:
    """Store ``threshold`` (float or one per label) in ``model``.

    Uses the DecisionThreshold layer when the model has one (it then survives
    saving); otherwise sets ``model.tfmed_threshold`` and warns that it will
    not be saved.

    Example:
        >>> import keras
        >>> model = add_threshold_layer(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        >>> set_threshold(model, 0.3)
        >>> round(get_threshold(model), 6)
        0.3
    """
    layer = _threshold_layer(model)
    values = np.atleast_1d(np.asarray(threshold, dtype=np.float32))
    if layer is not None and layer.built:
        size = int(layer.threshold.shape[0])
        if values.size == 1:
            values = np.full((size,), values[0], dtype=np.float32)
        if values.size != size:
            raise CallbackError(f"got {values.size} thresholds but the model has {size} outputs")
        layer.threshold.assign(values)
    else:
        warnings.warn("the model has no DecisionThreshold layer, so the threshold is kept only as "
                      "model.tfmed_threshold and is NOT saved with model.save; wrap the model with "
                      "tfmed.callbacks.add_threshold_layer(model) before compiling to persist it", stacklevel=2)
    model.tfmed_threshold = float(values[0]) if values.size == 1 else values.astype(float).tolist()


class ThresholdSelector(keras.callbacks.Callback):
    """Choose the validation-optimal decision threshold and store it with the model.

    Each epoch writes ``logs[prefix + "threshold"]`` (the mean over labels for
    multi-label); at the end of training stores the threshold(s) in the
    model's DecisionThreshold layer (see :func:`add_threshold_layer`), which
    saves and loads with the model, and in ``model.tfmed_threshold``.
    Binary and multi-label outputs only (multiclass decisions use argmax).

    Args:
        validation_data: a ``tf.data.Dataset`` of (x, y) batches, or (x, y) arrays.
        method: "youden", "sensitivity" or "specificity" (see :func:`select_threshold`).
        target: the sensitivity or specificity to reach (ignored for youden).
        every_epoch_store: also store each epoch's threshold in the model, so a
            ModelCheckpoint(save_best_only=True) file holds the threshold of
            the saved epoch (default True).

    Example:
        >>> import keras, numpy as np
        >>> x = np.random.rand(16, 3).astype("float32"); y = np.array([0, 1] * 8)
        >>> model = add_threshold_layer(keras.Sequential([keras.Input((3,)),
        ...                                               keras.layers.Dense(1, activation="sigmoid")]))
        >>> model.compile("sgd", "binary_crossentropy")
        >>> h = model.fit(x, y, epochs=1, verbose=0, callbacks=[ThresholdSelector((x, y))])
        >>> abs(get_threshold(model) - h.history["val_threshold"][-1]) < 1e-6
        True
    """

    def __init__(self, validation_data, method: str = "youden", target: float = 0.95, prefix: str = "val_",
                 batch_size: int = 64, every_epoch_store: bool = True):
        super().__init__()
        _check_method(method, target)
        self.validation_data = _check_validation_data(validation_data)
        self.method = method
        self.target = float(target)
        self.prefix = prefix
        self.batch_size = batch_size
        self.every_epoch_store = every_epoch_store
        self.threshold_ = None

    def _compute(self):
        y_score, y_true = _predict(self.model, self.validation_data, self.batch_size)
        if np.ndim(y_score) == 2 and y_score.shape[1] > 1 and (np.ndim(y_true) == 1 or y_true.shape[1] == 1):
            raise CallbackError("ThresholdSelector needs a binary or multi-label (sigmoid) output; a "
                                "multiclass softmax output is decided by argmax, not a threshold")
        return select_threshold(y_true, y_score, self.method, self.target)

    def on_epoch_end(self, epoch, logs=None):
        self.threshold_ = self._compute()
        if logs is not None:
            logs[self.prefix + "threshold"] = float(np.mean(self.threshold_))
        if self.every_epoch_store:
            self._store()

    def on_train_end(self, logs=None):
        if self.threshold_ is None:
            self.threshold_ = self._compute()
        self._store()

    def _store(self):
        if _threshold_layer(self.model) is None:
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


# ----------------------------------------------------------------------------- StagedUnfreeze


def _has_schedule(optimizer) -> bool:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = getattr(inner, "_learning_rate", None)
    return isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or (
        callable(rate) and not isinstance(rate, keras.Variable))


class StagedUnfreeze(keras.callbacks.Callback):
    """Unfreeze the top backbone blocks during ``fit``, on a schedule or when a metric plateaus.

    At each change it calls :func:`tfmed.freezing.unfreeze_top` on the model
    (BatchNormalization stays frozen), replaces the optimizer with a fresh
    copy of the same class and settings whose learning rate is the current
    one times ``lr_factor`` (as re-compiling would; its slot variables and
    step counter start afresh), and rebuilds the train function so the newly
    trainable weights train from the next step on - all inside one ``fit``.

    Scheduled changes happen at the start of the named epoch (0-based).
    With ``on_plateau=True`` a change happens at the end of an epoch after
    ``patience`` epochs without improvement of ``monitor``; successive changes
    take the next entry of ``amounts`` (default: one more block each time).

    Put ClinicalMetrics before it when monitoring ``val_auc``. Learning-rate
    schedules cannot be scaled: use ``lr_factor=1.0`` with a schedule.

    Args:
        blocks: the backbone's block prefixes, input to output.
        schedule: list of (epoch, amount) pairs; amount as in unfreeze_top.
        on_plateau: unfreeze when ``monitor`` stops improving.
        amounts: the amounts applied one after another on plateaus.
        patience: epochs without improvement before a plateau change.
        lr_factor: multiplies the learning rate at each change.
        monitor, mode, min_delta: what counts as an improvement.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(4, name="block1_dense")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(x))
        >>> _ = freezing.freeze(model, ["block1_"])
        >>> model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
        >>> cb = StagedUnfreeze(["block1_"], schedule=[(1, "all")], lr_factor=0.1)
        >>> _ = model.fit(np.ones((8, 4)), np.ones(8), epochs=2, verbose=0, callbacks=[cb])
        >>> round(float(model.optimizer.learning_rate), 6), cb.unfrozen_
        (0.0001, ['block1_'])
    """

    def __init__(self, blocks: Sequence[str], schedule: Sequence[tuple[int, int | float | str]] | None = None, *,
                 on_plateau: bool = False, amounts: Sequence[int | float | str] | None = None,
                 patience: int = 2, lr_factor: float = 0.1, monitor: str = "val_auc", mode: str = "max",
                 min_delta: float = 0.0, verbose: int = 0):
        super().__init__()
        self.blocks = freezing._check_blocks(blocks)
        if not schedule and not on_plateau:
            raise CallbackError("StagedUnfreeze needs a schedule [(epoch, amount), ...] or on_plateau=True")
        self.schedule = {}
        for entry in schedule or []:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise CallbackError(f"schedule entries are (epoch, amount) pairs, got {entry!r}")
            epoch, amount = entry
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
                raise CallbackError(f"schedule epoch must be an int >= 0, got {epoch!r} in {entry!r}")
            if epoch in self.schedule:
                raise CallbackError(f"schedule lists epoch {epoch} twice")
            freezing.blocks_for_amount(self.blocks, amount)
            self.schedule[int(epoch)] = amount
        self.on_plateau = bool(on_plateau)
        self.amounts = list(amounts) if amounts is not None else list(range(1, len(self.blocks) + 1))
        for amount in self.amounts:
            freezing.blocks_for_amount(self.blocks, amount)
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, numbers.Real) or lr_factor <= 0:
            raise CallbackError(f"lr_factor must be a number > 0, got {lr_factor!r}")
        if mode not in ("max", "min"):
            raise CallbackError(f"mode must be 'max' or 'min', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
            raise CallbackError(f"patience must be an int >= 1, got {patience!r}")
        self.patience = int(patience)
        self.lr_factor = float(lr_factor)
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.verbose = verbose
        self.unfrozen_: list[str] = []
        self.changes_: list[dict] = []
        self._plateau_step = 0
        self._best = None
        self._wait = 0

    def on_train_begin(self, logs=None):
        self._best, self._wait = None, 0
        if self.lr_factor != 1.0 and _has_schedule(self.model.optimizer):
            raise CallbackError("StagedUnfreeze cannot scale a learning-rate schedule; use lr_factor=1.0 "
                                "or a constant learning rate")

    def on_epoch_begin(self, epoch, logs=None):
        if epoch in self.schedule:
            self.apply(self.schedule[epoch], epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.on_plateau and self._plateau_step < len(self.amounts):
            current = logs.get(self.monitor)
            if current is None:
                raise CallbackError(f"StagedUnfreeze monitors {self.monitor!r} but the epoch logs only have "
                                    f"{sorted(logs)}; put ClinicalMetrics before StagedUnfreeze or change monitor")
            current = float(current)
            better = self._best is None or (current > self._best + self.min_delta if self.mode == "max"
                                            else current < self._best - self.min_delta)
            if better:
                self._best, self._wait = current, 0
            else:
                self._wait += 1
                if self._wait >= self.patience:
                    amount = self.amounts[self._plateau_step]
                    self._plateau_step += 1
                    self._wait = 0
                    self.apply(amount, epoch + 1)
        logs["unfrozen_blocks"] = float(len(self.unfrozen_))

    def apply(self, amount, epoch: int | None = None) -> list[str]:
        """Unfreeze ``amount`` top blocks now, scale the learning rate and rebuild training."""
        model = self.model
        self.unfrozen_ = freezing.unfreeze_top(model, self.blocks, amount)
        old = model.optimizer
        new_lr = float(old.learning_rate) * self.lr_factor if self.lr_factor != 1.0 else None
        with model.distribute_strategy.scope():
            optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(old))
            if new_lr is not None:
                optimizer.learning_rate = new_lr
            optimizer.build(model.trainable_variables)
        model.optimizer = optimizer
        model.make_train_function(force=True)
        change = {"epoch": epoch, "amount": amount, "unfrozen": list(self.unfrozen_),
                  "learning_rate": float(optimizer.learning_rate)}
        self.changes_.append(change)
        if self.verbose:
            print(f"StagedUnfreeze: epoch {epoch}: unfrozen {self.unfrozen_}, "
                  f"learning rate {change['learning_rate']:.3g}")
        return self.unfrozen_
