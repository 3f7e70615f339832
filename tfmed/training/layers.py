"""A Keras layer that carries a model's decision threshold(s) inside the saved ``.keras`` file.

For models trained in your own Keras script: :func:`add_threshold_layer` appends a
:class:`DecisionThreshold`, :class:`tfmed.training.ThresholdSelector` fills it from
validation data, and :func:`get_threshold` reads it back after :func:`load_model`
(``keras.models.load_model`` with tfmed's Keras classes imported). (Runs made by
``tfmed run`` keep their thresholds in the run's model artifact instead; see
:mod:`tfmed.run.artifact`.)

The functions' docstrings show each step.
"""
from __future__ import annotations

import warnings

import keras
import numpy as np

from tfmed.errors import TfmedError
from tfmed.training import freezing


class ThresholdLayerError(TfmedError):
    """A model cannot take a threshold layer, or got the wrong number of thresholds."""


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


#: The modules whose import registers tfmed's Keras-serialisable classes (layers, losses, metrics).
SERIALISABLE_MODULES = ("tfmed.backbones", "tfmed.training.layers", "tfmed.training.losses",
                        "tfmed.training.known_labels_auc", "tfmed.training.view_layers", "tfmed.explain.mosaic")


def load_model(path, **kwargs) -> keras.Model:
    """``keras.models.load_model(path, **kwargs)`` after importing every tfmed module that registers Keras
    classes (backbone preprocessing layers, losses, DecisionThreshold, ...), so a ``.keras`` file saved from
    your own script with tfmed parts loads in a fresh process. Plain ``keras.models.load_model`` needs
    those imports first (``import tfmed.backbones, tfmed.training.losses``).

    Example:
        >>> from tfmed.training import load_model, get_threshold
        >>> model = load_model("best.keras")  # doctest: +SKIP
        >>> get_threshold(model)  # doctest: +SKIP
        0.42
    """
    import importlib

    for module in SERIALISABLE_MODULES:
        importlib.import_module(module)
    return keras.models.load_model(path, **kwargs)


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
    if threshold_layer(model) is not None:
        return model
    if not model.built or not getattr(model, "outputs", None):
        raise ThresholdLayerError(f"model {model.name!r} has no defined inputs/outputs yet; build a functional or "
                            "Sequential model with keras.Input first")
    if len(model.outputs) != 1:
        raise ThresholdLayerError(f"model {model.name!r} has {len(model.outputs)} outputs; thresholds need one")
    outputs = DecisionThreshold(name=name)(model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name)


def threshold_layer(model: keras.Model):
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
    layer = threshold_layer(model)
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
    layer = threshold_layer(model)
    values = np.atleast_1d(np.asarray(threshold, dtype=np.float32))
    if layer is not None and layer.built:
        size = int(layer.threshold.shape[0])
        if values.size == 1:
            values = np.full((size,), values[0], dtype=np.float32)
        if values.size != size:
            raise ThresholdLayerError(f"got {values.size} thresholds but the model has {size} outputs")
        layer.threshold.assign(values)
    else:
        warnings.warn("the model has no DecisionThreshold layer, so the threshold is kept only as "
                      "model.tfmed_threshold and is NOT saved with model.save; wrap the model with "
                      "tfmed.training.add_threshold_layer(model) before compiling to persist it",
                      stacklevel=2)
    model.tfmed_threshold = float(values[0]) if values.size == 1 else values.astype(float).tolist()
