"""What an explanation differentiates: a Keras model, its target layer and the score of one class.

:class:`ExplainTarget` wraps any Keras model (built by tfmed or by the user; a
fine-tuned model or the TensorFlow form of an SVM) and gives, for a batch of
images, the activations of a target layer and the pre-activation score (logit)
and probability of the class or label being explained, inside a
``tf.GradientTape`` so that gradients reach both the layer and the pixels.

* **Target layer**: by default the backbone's last convolutional stage (the
  ``late`` tap of the backbone registry entry whose name the model carries), or
  else the last layer with a (B, h, w, c) output. A layer inside a nested
  backbone (``x = base(inputs)``) is found when the outer model is a chain of
  layers.
* **Class / label** (``index``): for a one-output sigmoid model 1 (default) is the
  positive class and 0 the negative one (score 1 - p, logit -z); for several
  outputs an integer picks the class (softmax) or the label (sigmoid), and None
  takes each image's highest-scoring output.
* **Logits**: when the last layer is a Dense (or Activation) layer with a sigmoid
  or softmax, its pre-activation is computed from its input; a layer may instead
  offer ``logits_of`` / ``probabilities_of`` (the SVM's calibration does).

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((16, 16, 1))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    >>> target = ExplainTarget(model)
    >>> target.layer, target.kind, target.outputs
    ('conv', 'sigmoid', 1)
    >>> activations, logit, proba = target.forward(np.zeros((2, 16, 16, 1), "float32"), index=1)
    >>> tuple(activations.shape), tuple(logit.shape)
    ((2, 16, 16, 4), (2,))
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfmed.errors import TfmedError
from tfmed.explain.maps import resize_maps
from tfmed.explain.mosaic import MosaicToViews, tile_maps


class ExplainError(TfmedError):
    """A model, layer, class index, method or image batch that cannot be explained."""


class FlatMapWarning(TfmedError, UserWarning):
    """Maps that cannot show where the model looks (Grad-CAM of a layer that is 1 x 1 at the input size): a
    warning, and a condition the user can fix (a larger input, an earlier layer, a pixel method)."""


def keras_model_of(model) -> keras.Model:
    """The Keras model to explain: ``model`` itself, or ``model.keras_model()`` (FineTuner, FeatureSVM).

    Example:
        >>> keras_model_of(object())
        Traceback (most recent call last):
        tfmed.explain.target.ExplainError: cannot explain a object: pass a keras.Model, a FineTuner or a FeatureSVM; an ensemble or a saved run is explained with explain_table or `tfmed explain`
    """
    if isinstance(model, keras.Model):
        return model
    if hasattr(model, "keras_model"):
        return model.keras_model()
    raise ExplainError(f"cannot explain a {type(model).__name__}: pass a keras.Model, a FineTuner or a "
                       "FeatureSVM; an ensemble or a saved run is explained with explain_table or "
                       "`tfmed explain`")


def as_images(images, what: str = "images") -> np.ndarray:
    """A float32 (N, H, W, C) batch from (H, W), (H, W, C), (N, H, W) or (N, H, W, C) input.

    Example:
        >>> as_images(np.zeros((8, 8))).shape
        (1, 8, 8, 1)
    """
    if isinstance(images, tf.data.Dataset):
        raise ExplainError(f"{what} must be an image array, got a tf.data.Dataset: maps are made of a few chosen "
                           "images; pass them as an array (of a dataset of (images, labels) batches, the first "
                           "batch's: next(iter(dataset))[0].numpy())")
    array = np.asarray(images)
    if not np.issubdtype(array.dtype, np.number):
        raise ExplainError(f"{what} must be a numeric image array, got dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None, ..., None]
    elif array.ndim == 3:
        array = array[None] if array.shape[-1] in (1, 3) else array[..., None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise ExplainError(f"{what} must be a batch (N, H, W, C) of at least one image, got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))
        raise ExplainError(f"{what} rows {bad[:10].tolist()} contain NaN or infinite pixels")
    return array


def _flat_layers(model: keras.Model) -> list:
    """The model's layers with nested models expanded in place (input layers left out)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += _flat_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            out.append(layer)
    return out


def _output_rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used several times, or not built
        return None


def backbone_spec_of(model: keras.Model):
    """The registered backbone ``model`` is or holds (by its name or a nested model's, the longest registered name
    first: efficientnet_lite0 before efficientnet_l...), or None.

    Example:
        >>> from tfmed.backbones import create
        >>> backbone_spec_of(create("mobilenet_v2", weights=None, input_shape=(32, 32, 3))).name
        'mobilenet_v2'
    """
    from tfmed import backbones

    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    for owner in [model.name] + nested:
        for name in sorted(backbones.list_backbones(), key=len, reverse=True):
            if owner.startswith(name):
                return backbones.get_spec(name)
    return None


def default_layer(model: keras.Model) -> str:
    """The layer Grad-CAM explains by default: the backbone's ``late`` tap when the model is (or contains)
    a registered backbone, otherwise the last layer with a (B, h, w, c) output.

    Example:
        >>> import keras
        >>> from tfmed.backbones import create
        >>> default_layer(create("mobilenet_v2", weights=None, input_shape=(32, 32, 3)))
        'out_relu'
    """
    layers = _flat_layers(model)
    spec = backbone_spec_of(model)
    if spec is not None and spec.taps["late"] in {layer.name for layer in layers}:
        return spec.taps["late"]
    for layer in reversed(layers):
        if _output_rank(layer) == 4:
            return layer.name
    raise ExplainError(f"model {model.name!r} has no layer with a (batch, height, width, channels) output, so "
                       "Grad-CAM has no feature map to weight; use saliency, integrated_gradients or occlusion")


def _without_threshold_layer(model: keras.Model) -> keras.Model:
    """The model without a trailing DecisionThreshold (:func:`tfmed.training.add_threshold_layer`), which
    passes its input through: the layer before it gives the logits and the classes."""
    from tfmed.training.layers import DecisionThreshold

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if len(layers) > 1 and isinstance(layers[-1], DecisionThreshold):
        return keras.Model(model.inputs, layers[-1].input, name=model.name)
    return model


# The names an activation function goes by: keras.activations', keras.ops' and tf.nn's (tf.nn.softmax is softmax_v2)
_ACTIVATION_KINDS = {"sigmoid": "sigmoid", "softmax": "softmax", "softmax_v2": "softmax"}


def _last_layer_kind(layer) -> str:
    if hasattr(layer, "logits_of"):
        return "ovr" if getattr(layer, "normalise", False) else "sigmoid"
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return _ACTIVATION_KINDS.get(getattr(activation, "__name__", str(activation)), "linear")


class ExplainTarget:
    """A Keras model prepared for explanation: target layer, logits and class selection.

    Args:
        model: a ``keras.Model``, or an object with ``keras_model()`` (FineTuner, FeatureSVM).
        layer: the layer whose activations Grad-CAM weights; None: :func:`default_layer`.

    Example:
        >>> target = ExplainTarget(model, layer="top_activation")  # doctest: +SKIP
    """

    def __init__(self, model, layer: str | None = None):
        self.model = _without_threshold_layer(keras_model_of(model))
        self.layer = default_layer(self.model) if layer is None else layer
        layers = _flat_layers(self.model)
        names = [item.name for item in layers]
        if self.layer not in names:
            convolutional = [item.name for item in layers if _output_rank(item) == 4]
            raise ExplainError(f"layer {self.layer!r} is not in model {self.model.name!r}; layers with a "
                               f"feature map: {', '.join(convolutional[-12:]) or 'none'}"
                               + (f" (the last 12 of {len(convolutional)})" if len(convolutional) > 12 else ""))
        self.last = self.model.layers[-1]
        self.kind = _last_layer_kind(self.last)
        if len(self.model.inputs) != 1 or len(self.model.outputs) != 1:
            raise ExplainError(f"model {self.model.name!r} has {len(self.model.inputs)} inputs and "
                               f"{len(self.model.outputs)} outputs; explanations need one image input and one output")
        self.outputs = int(self.model.outputs[0].shape[-1])
        self.input_shape = tuple(int(d) for d in self.model.inputs[0].shape[1:])
        if len(self.input_shape) != 3:
            raise ExplainError(f"model {self.model.name!r} takes inputs of shape {self.input_shape}; explanations "
                               "need (H, W, C) images: explain a model of views of a volume with explain_table, "
                               "which lays its views out as one mosaic (tfmed.explain.mosaic)")
        first = next(layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer))
        self.grid = getattr(first, "grid", None) if isinstance(first, MosaicToViews) else None
        self._runner = self._build_runner()

    def layer_maps(self, maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Maps of the target layer (B, h, w) at the images' ``size``; a mosaic model's layer sees each
        view as one image (B * V maps), laid out in its grid."""
        return tile_maps(maps, self.grid) if self.grid is not None else resize_maps(maps, size)

    # ------------------------------------------------------------------ graph
    def _build_runner(self):
        """A callable images -> (activations, input of the last layer)."""
        owner = self._nested_owner()
        if owner is None:
            try:
                tapped = keras.Model(self.model.inputs, [self.model.get_layer(self.layer).output, self.last.input])
            except ValueError:  # the layer's output is that of its first call, in another model's graph
                raise ExplainError(f"layer {self.layer!r} of model {self.model.name!r} was first called in another "
                                   "model (e.g. a flat view model re-used by mosaic_model), so its activations "
                                   "cannot be read here; nest the backbone as a model of its own (as tfmed's modes "
                                   "build it)") from None
            return lambda x: tapped(x, training=False)
        chain = [layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)]
        # A nested model with one input is called with one tensor: build it so (a list of one would warn).
        owner_inputs = owner.inputs[0] if len(owner.inputs) == 1 else owner.inputs
        inner = keras.Model(owner_inputs, [owner.get_layer(self.layer).output, owner.outputs[0]])

        def run(x):
            activations = None
            for layer in chain[:-1]:
                if layer is owner:
                    activations, x = inner(x, training=False)
                else:
                    x = layer(x, training=False)
            return activations, x

        # Running the layers one after the other is the model only when it is a plain chain: check it.
        probe = np.random.default_rng(0).uniform(0, 255, (1,) + tuple(int(d) for d in self.model.inputs[0].shape[1:]))
        try:
            same = np.allclose(np.asarray(self.last(run(probe.astype("float32"))[1])),
                               np.asarray(self.model(probe.astype("float32"), training=False)), atol=1e-4)
        except (ValueError, TypeError):
            same = False
        if not same:
            raise ExplainError(f"layer {self.layer!r} is inside the nested model {owner.name!r}, and model "
                               f"{self.model.name!r} is not a plain chain of layers; build it flat "
                               "(keras.Model(base.inputs, head(base.output))) or explain a layer of the outer model")
        return run

    def _nested_owner(self):
        """The nested model holding the target layer, or None when it is a layer of the model itself."""
        if self.layer in {layer.name for layer in self.model.layers}:
            return None
        for layer in self.model.layers:
            if isinstance(layer, keras.Model) and self.layer in {item.name for item in _flat_layers(layer)}:
                return layer
        return None

    # ------------------------------------------------------------------ forward
    def adapt(self, images: tf.Tensor) -> tf.Tensor:
        """Images in the model's input shape: grey repeated to 3 channels, resized when the size differs."""
        height, width, channels = self.input_shape
        if images.shape[-1] == 1 and channels == 3:
            images = tf.repeat(images, 3, axis=-1)
        elif images.shape[-1] != channels:
            raise ExplainError(f"images have {images.shape[-1]} channel(s) but model {self.model.name!r} "
                               f"takes {channels}")
        if tuple(images.shape[1:3]) != (height, width):
            images = tf.image.resize(images, (height, width))
        return images

    def logits(self, last_input) -> tf.Tensor:
        """The last layer's pre-activation scores (B, outputs) from its input."""
        last = self.last
        if hasattr(last, "logits_of"):
            return tf.cast(last.logits_of(last_input), tf.float32)
        if self.kind != "linear" and isinstance(last, keras.layers.Dense):
            out = tf.matmul(tf.cast(last_input, tf.float32), tf.cast(last.kernel, tf.float32))
            return out + tf.cast(last.bias, tf.float32) if last.use_bias else out
        if self.kind != "linear" and isinstance(last, (keras.layers.Activation, keras.layers.Softmax)):
            return tf.cast(last_input, tf.float32)
        return tf.cast(last(last_input), tf.float32)

    def probabilities(self, logits: tf.Tensor) -> tf.Tensor:
        """Probabilities (B, outputs) from :meth:`logits`."""
        if hasattr(self.last, "probabilities_of"):
            return self.last.probabilities_of(logits)
        if self.kind == "sigmoid":
            return tf.sigmoid(logits)
        if self.kind == "softmax":
            return tf.nn.softmax(logits, axis=-1)
        return logits

    def check_index(self, index) -> None:
        """Raise ExplainError for a class index this model does not have."""
        if index is None:
            return
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ExplainError(f"index must be an integer class/label index or None, got {index!r}")
        if self.outputs == 1 and self.kind == "sigmoid":
            if index not in (0, 1):
                raise ExplainError(f"index {index} is not a class of this one-output sigmoid model; use 1 "
                                   "(the positive class, default) or 0 (the negative class)")
        elif not 0 <= index < self.outputs:
            raise ExplainError(f"index {index} is out of range: the model has {self.outputs} outputs "
                               f"(classes/labels 0..{self.outputs - 1})")

    def _columns(self, values: tf.Tensor, negate) -> tf.Tensor:
        """One column per class: a one-output sigmoid model's single column becomes (negative, positive)."""
        if self.outputs == 1 and self.kind == "sigmoid":
            return tf.concat([negate(values), values], axis=1)
        return values

    def _pick(self, logits: tf.Tensor, proba: tf.Tensor, index) -> tuple[tf.Tensor, tf.Tensor]:
        logits = self._columns(logits, lambda z: -z)
        proba = self._columns(proba, lambda p: 1.0 - p)
        if index is None:
            index = 1 if self.outputs == 1 and self.kind == "sigmoid" else None
        if index is None:
            chosen = tf.argmax(proba, axis=-1)
        elif np.ndim(index) == 1:
            chosen = tf.convert_to_tensor(np.asarray(index, np.int64))
        else:
            return logits[:, int(index)], proba[:, int(index)]
        return tf.gather(logits, chosen, axis=1, batch_dims=1), tf.gather(proba, chosen, axis=1, batch_dims=1)

    def resolve_index(self, images: np.ndarray, index):
        """``index`` (checked) when given; else 1 for a one-output sigmoid model, or each image's top
        output (a (N,) array) for several outputs."""
        if index is not None and np.ndim(index) == 1:
            for value in np.unique(index):
                self.check_index(int(value))
            if len(index) != len(images):
                raise ExplainError(f"index lists {len(index)} classes for {len(images)} images; give one per image")
            return np.asarray(index, np.int64)
        self.check_index(index)
        if index is not None or (self.outputs == 1 and self.kind == "sigmoid"):
            return index
        return np.argmax(self.predict(images, per_output=True), axis=1)

    def _scores(self, images) -> tuple:
        x = self.adapt(tf.convert_to_tensor(images, tf.float32))
        activations, last_input = self._runner(x)
        logits = self.logits(last_input)
        return activations, logits, self.probabilities(logits)

    def forward(self, images, index=None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(activations of the target layer, (B,) logit, (B,) probability) of the explained class;
        ``index`` may be a (B,) array giving each image its own class."""
        activations, logits, proba = self._scores(images)
        return (activations,) + self._pick(logits, proba, index)

    def predict(self, images: np.ndarray, index=None, batch_size: int = 32, per_output: bool = False) -> np.ndarray:
        """The probability of the explained class for every image (no gradients), in batches;
        ``per_output`` gives all outputs' probabilities (N, outputs) instead."""
        out = []
        for start in range(0, len(images), batch_size):
            _, logits, proba = self._scores(images[start:start + batch_size])
            if per_output:
                out.append(proba.numpy())
            else:
                part = index[start:start + batch_size] if index is not None and np.ndim(index) == 1 else index
                out.append(self._pick(logits, proba, part)[1].numpy())
        return np.concatenate(out)

    def gradients(self, images: np.ndarray, index=None, wrt: str = "layer") -> tuple[np.ndarray, np.ndarray]:
        """(values, gradients of the explained logit) at the target layer (``wrt="layer"``) or the pixels."""
        x = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            activations, logit, _ = self.forward(x, index)
        source = activations if wrt == "layer" else x
        grads = tape.gradient(logit, source)
        if grads is None:
            raise ExplainError(f"the explained score of model {self.model.name!r} does not depend on "
                               f"{'layer ' + repr(self.layer) if wrt == 'layer' else 'the pixels'}")
        return np.asarray(source, np.float32), np.asarray(grads, np.float32)


def prepare(model, images, index, layer: str | None = None):
    """(target, float32 images, resolved index) for a method; an input-gradient method
    (``layer`` None) takes any layer, since it never reads the layer's activations."""
    if not isinstance(model, ExplainTarget):
        keras_model = keras_model_of(model)
        if layer is None:
            try:
                layer = default_layer(keras_model)
            except ExplainError:
                layer = _flat_layers(keras_model)[0].name
        model = ExplainTarget(keras_model, layer)
    images = as_images(images)
    return model, images, model.resolve_index(images, index)


def repeat_index(index, i: int, count: int):
    """The class index of image ``i`` for ``count`` copies of it: ``index`` itself unless it is per image."""
    if index is None or np.ndim(index) == 0:
        return index
    return np.full(count, index[i])
