"""The fitted features + SVM pipeline as one Keras model, so that gradients reach the backbone.

:func:`svm_keras_model` rebuilds what :class:`~tfmed.modes.svm.FeatureSVM` computes
with NumPy and scikit-learn as TensorFlow operations: the backbone taps, their
global pooling, each block's ``StandardScaler`` (and the 1/sqrt(width) weight of
fused blocks), the SVM decision function and the sigmoid calibration. For an RBF
kernel the decision of one SVM is

    f(x) = sum_i dual_coef_i * exp(-gamma * ||x - sv_i||^2) + intercept

(a linear kernel uses the dot product ``<x, sv_i>``), and the calibrated
probability is ``1 / (1 + exp(a * f + b))``. Grad-CAM and gradient saliency
(:mod:`tfmed.explain`) then work on an SVM model as on a fine-tuned one. An SVM
of V views of a volume per row takes (V, S, S, 3) inputs: one backbone reads
every view, and the views' features go to one SVM (``view_fusion: concat``) or
each to its own (``per_view``, :class:`PerViewSVMs`).

Example:
    >>> import numpy as np
    >>> from tfmed.modes.svm import FeatureSVM
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 255, (24, 32, 32, 1)).astype("float32")
    >>> y = np.repeat([0, 1], 12)
    >>> X[y == 1, 8:24, 8:24] = 255.0
    >>> svm = FeatureSVM(weights=None, taps=("middle",), image_size=32, C=(1.0,), cv=3).fit(X, y)
    >>> graph = svm_keras_model(svm)
    >>> proba = graph.predict(np.repeat(X, 3, axis=-1), verbose=0)[:, 0]
    >>> bool(np.allclose(proba, svm.predict_proba(X)[:, 1], atol=1e-4))
    True
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfmed.errors import TfmedError

DECISION_LAYER = "svm_decision"
CALIBRATION_LAYER = "svm_calibration"


class SVMGraphError(TfmedError):
    """A fitted SVM model that has no TensorFlow form (texture features, an unknown kernel)."""


def _constant(layer: keras.layers.Layer, name: str, value) -> keras.Variable:
    """A non-trainable weight of ``layer`` holding ``value`` (saved and restored with the layer's weights)."""
    value = np.asarray(value, np.float32)
    variable = layer.add_weight(shape=value.shape, initializer="zeros", trainable=False, name=name)
    variable.assign(value)
    return variable


class Standardise(keras.layers.Layer):
    """``(x - mean) / scale``: fitted StandardScalers side by side, fixed (never trained)."""

    def __init__(self, mean, scale, **kwargs):
        super().__init__(**kwargs)
        self.mean = _constant(self, "mean", mean)
        self.scale = _constant(self, "scale", scale)

    def call(self, x):
        return (x - self.mean) / self.scale


class SVMDecision(keras.layers.Layer):
    """The decision functions of one or more fitted binary ``SVC`` s, one output column each."""

    def __init__(self, svcs: list, **kwargs):
        super().__init__(**kwargs)
        self.kernel = svcs[0].kernel
        if self.kernel not in ("rbf", "linear"):
            raise SVMGraphError(f"the SVM kernel {self.kernel!r} has no TensorFlow form here; use rbf or linear")
        self.parts = []
        for k, svc in enumerate(svcs):
            vectors = np.asarray(svc.support_vectors_, np.float32)
            dual = np.asarray(svc.dual_coef_, np.float32).reshape(-1)
            stored = {name: _constant(self, f"{name}_{k}", value)
                      for name, value in (("support_vectors", vectors), ("dual_coef", dual),
                                          ("intercept", np.asarray(svc.intercept_, np.float32).reshape(1)))}
            stored["gamma"] = float(getattr(svc, "_gamma", 0.0))
            self.parts.append(stored)

    def call(self, x):
        columns = []
        for part in self.parts:
            vectors = part["support_vectors"]
            if self.kernel == "rbf":
                distances = (ops.sum(x * x, axis=1, keepdims=True) - 2.0 * ops.matmul(x, ops.transpose(vectors))
                             + ops.sum(vectors * vectors, axis=1)[None, :])
                kernel = ops.exp(-part["gamma"] * ops.maximum(distances, 0.0))
            else:
                kernel = ops.matmul(x, ops.transpose(vectors))
            columns.append(ops.matmul(kernel, part["dual_coef"][:, None]) + part["intercept"])
        return ops.concatenate(columns, axis=1)


class SigmoidCalibration(keras.layers.Layer):
    """Calibrated probabilities ``1 / (1 + exp(a f + b))`` per column; ``normalise`` divides each row by
    its sum (scikit-learn's one-vs-rest calibration of more than two classes).

    :meth:`logits_of` gives the pre-sigmoid scores ``-(a f + b)`` that explanations differentiate.
    """

    def __init__(self, a, b, normalise: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.a = _constant(self, "a", a)
        self.b = _constant(self, "b", b)
        self.normalise = bool(normalise)

    def logits_of(self, decision):
        """The pre-sigmoid score of each column."""
        return -(decision * self.a + self.b)

    def probabilities_of(self, logits):
        """Probabilities from :meth:`logits_of`'s scores (normalised per row when ``normalise``)."""
        proba = ops.sigmoid(logits)
        if self.normalise:
            total = ops.sum(proba, axis=1, keepdims=True)
            count = ops.cast(ops.shape(proba)[1], proba.dtype)
            proba = ops.where(total > 0, proba / ops.where(total > 0, total, 1.0), 1.0 / count)
        return proba

    def call(self, decision):
        return self.probabilities_of(self.logits_of(decision))


def _calibration_parts(calibrated) -> tuple[list, list]:
    """The final SVC(s) and the sigmoid calibrators of one fitted CalibratedClassifierCV."""
    fitted = calibrated.calibrated_classifiers_[0]
    estimator = fitted.estimator
    svcs = list(getattr(estimator, "estimators_", [estimator]))
    return svcs, list(fitted.calibrators)


def svm_keras_model(svm) -> keras.Model:
    """A Keras model from (S, S, 3) 0-255 images to the fitted SVM's calibrated probabilities.

    The output is (B, 1) P(positive) for a binary task, (B, K) for multiclass and
    (B, L) for multilabel, equal to ``svm.predict_proba`` (up to float32 rounding).
    The decision values are the output of the layer named ``svm_decision``.

    Example:
        >>> graph = svm_keras_model(fitted_svm)            # doctest: +SKIP
        >>> graph.get_layer("svm_decision").output.shape   # doctest: +SKIP
        (None, 1)
    """
    from tfmed import backbones

    spec = svm.backbone_spec_
    if spec["texture"]:
        raise SVMGraphError("this SVM uses LBP texture features (texture: true), which have no TensorFlow "
                            "form, so it cannot be explained; refit with texture: false to explain it")
    base, _ = svm._base_model()
    pool = keras.layers.GlobalAveragePooling2D if spec["pooling"] == "avg" else keras.layers.GlobalMaxPooling2D
    pooled = [pool(name=f"svm_{tap}_pool")(base.get_layer(backbones.get_spec(spec["backbone"]).taps[tap]).output)
              for tap in spec["taps"]]
    taps = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="svm_tap_features")(pooled)
    if len(svm.input_shape_) == 4:
        return _views_model(svm, base, taps)
    decision, calibration = _svm_head(svm, svm.models_[0])
    features = _group_scaler(svm, svm.groups_[0])(taps)
    return keras.Model(base.inputs, calibration(decision(features)), name=f"{spec['backbone']}_svm")


def _svm_head(svm, models: list, suffix: str = "") -> tuple:
    """The decision and calibration layers of one classifier group's calibrated SVM(s)."""
    svcs, calibrators = [], []
    for calibrated in models:
        parts, scalers = _calibration_parts(calibrated)
        svcs += parts
        calibrators += scalers
    if svm.task_ == "binary":
        svcs, calibrators = svcs[:1], calibrators[:1]
    a = np.array([c.a_ for c in calibrators], np.float32)
    b = np.array([c.b_ for c in calibrators], np.float32)
    return (SVMDecision(svcs, name=DECISION_LAYER + suffix),
            SigmoidCalibration(a, b, normalise=svm.task_ == "multiclass" and len(a) > 2,
                               name=CALIBRATION_LAYER + suffix))


def _group_scaler(svm, names: list[str], suffix: str = "") -> "Standardise":
    """One Standardise layer for the blocks ``names`` side by side: each block's scaler and, when there
    are several, its 1/sqrt(width) (folded into the scale)."""
    mean = np.concatenate([svm.scalers_[name].mean_ for name in names])
    weight = 1.0 / np.sqrt(np.array([svm.block_widths_[name] for name in names], np.float64)) if len(names) > 1 \
        else np.ones(1)
    scale = np.concatenate([svm.scalers_[name].scale_ / w for name, w in zip(names, weight)])
    return Standardise(mean, scale, name="svm_standardise" + suffix)


def _views_model(svm, base, taps) -> keras.Model:
    """The Keras form of an SVM fitted on V views per row. One backbone reads every view
    (:class:`~tfmed.training.view_layers.FoldViews`) and gives each view's pooled taps side by side.
    ``view_fusion: concat``: the views' features one after the other, in the order the SVM fused its
    blocks (view by view, tap by tap), scaled per block, then one SVM. ``per_view``: each view's own
    scaler, SVM and calibration, and the mean of the views' probabilities (:class:`PerViewSVMs`). Both
    are chains of layers, so Grad-CAM reaches the backbone."""
    from tfmed.training.view_layers import FoldViews

    spec = svm.backbone_spec_
    features_of_one_view = keras.Model(base.inputs, taps, name=f"{spec['backbone']}_view_features")
    views = int(svm.input_shape_[0])
    inputs = keras.Input(svm.input_shape_, name="views")
    x = features_of_one_view(FoldViews(name="fold_views")(inputs))
    if len(svm.groups_) > 1:
        heads = [(_group_scaler(svm, names, f"_{g + 1}"),) + _svm_head(svm, models, f"_{g + 1}")
                 for g, (names, models) in enumerate(zip(svm.groups_, svm.models_))]
        proba = PerViewSVMs(heads, name=CALIBRATION_LAYER)(x)
    else:
        x = ViewsSideBySide(views, name="svm_views_side_by_side")(x)
        decision, calibration = _svm_head(svm, svm.models_[0])
        proba = calibration(decision(_group_scaler(svm, svm.groups_[0])(x)))
    return keras.Model(inputs, proba, name=f"{spec['backbone']}_svm")


class PerViewSVMs(keras.layers.Layer):
    """(B * V, F) features of V views per row -> (B, K) the mean of the V views' calibrated
    probabilities, each view scored by its own scaler, SVM and calibration (``view_fusion: per_view``).

    :meth:`logits_of` gives the score explanations differentiate: the logit of that mean (the log of
    it for a multiclass task, whose probabilities are normalised per view).
    """

    def __init__(self, heads: list, **kwargs):
        super().__init__(**kwargs)
        self.heads = [list(head) for head in heads]   # (Standardise, SVMDecision, SigmoidCalibration) per view
        self.normalise = heads[0][2].normalise

    def _mean_probability(self, x):
        views = len(self.heads)
        grouped = ops.reshape(x, (-1, views, ops.shape(x)[-1]))
        probabilities = [calibration(decision(scaler(grouped[:, v])))
                         for v, (scaler, decision, calibration) in enumerate(self.heads)]
        return ops.clip(ops.mean(ops.stack(probabilities, axis=1), axis=1), 1e-7, 1.0 - 1e-7)

    def logits_of(self, x):
        """The pre-sigmoid (multiclass: pre-softmax) score of each column of the mean probability."""
        mean = self._mean_probability(x)
        return ops.log(mean) if self.normalise else ops.log(mean) - ops.log(1.0 - mean)

    def probabilities_of(self, logits):
        """Probabilities from :meth:`logits_of`'s scores."""
        return ops.softmax(logits, axis=-1) if self.normalise else ops.sigmoid(logits)

    def call(self, x):
        return self.probabilities_of(self.logits_of(x))


class ViewsSideBySide(keras.layers.Layer):
    """(B * V, F) -> (B, V * F): each row's V feature vectors, one after the other."""

    def __init__(self, views: int, **kwargs):
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, x):
        return ops.reshape(x, (-1, self.views * ops.shape(x)[-1]))
