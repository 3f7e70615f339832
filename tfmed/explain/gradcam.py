"""Class activation maps from gradients: Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018).

Both weight the channels of the target layer's activations A (by default the
backbone's last convolutional stage) with the gradients g of the explained
logit, keep the positive part and upsample it to the image size:
Grad-CAM weights channel c by the mean of g_c; Grad-CAM++ by
sum(alpha * relu(g_c)) with alpha = g^2 / (2 g^2 + sum(A) g^3). A target
layer that is 1 x 1 at the input size gives flat maps, with a
:class:`~tfmed.explain.target.FlatMapWarning` saying so.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((16, 16, 1))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    >>> x = keras.layers.GlobalAveragePooling2D()(x)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    >>> maps = gradcam(model, np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)))
    >>> maps.shape, bool(0 <= maps.min() and maps.max() <= 1)
    ((2, 16, 16), True)
"""
from __future__ import annotations

import warnings

import numpy as np

from tfmed.explain.maps import normalise
from tfmed.explain.target import ExplainTarget, FlatMapWarning, as_images


def _class_maps(model, images, index, layer, batch_size: int, weigh) -> np.ndarray:
    target = model if isinstance(model, ExplainTarget) else ExplainTarget(model, layer)
    images = as_images(images)
    index = target.resolve_index(images, index)
    maps = []
    for start in range(0, len(images), batch_size):
        part = index[start:start + batch_size] if index is not None and np.ndim(index) == 1 else index
        activations, grads = target.gradients(images[start:start + batch_size], part, wrt="layer")
        if start == 0 and activations.shape[1:3] == (1, 1):
            if target.grid is None:
                what = (f"at {images.shape[1]} x {images.shape[2]} px, so each map is one value spread over the "
                        "image and cannot show where the model looks")
            else:  # views of a volume: one value per view still tells the views apart
                what = (f"at each {target.grid.size} x {target.grid.size} px view, so a map shows which view the "
                        "model looks at, not where in it")
            warnings.warn(FlatMapWarning(
                f"the layer Grad-CAM weighs ({target.layer}) is 1 x 1 {what}; use a larger preprocess.image_size, "
                "an earlier layer (--layer), or a pixel method (occlusion, integrated_gradients)"), stacklevel=3)
        weights = weigh(activations, grads)
        cams = np.maximum((weights[:, None, None, :] * activations).sum(axis=-1), 0.0)
        maps.append(target.layer_maps(cams, images.shape[1:3]))
    return normalise(np.concatenate(maps))


def gradcam(model, images, *, index=None, layer: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (N, H, W) in [0, 1] at the images' resolution.

    Args:
        model: a keras.Model, a FineTuner or a FeatureSVM (its TensorFlow form).
        images: (N, H, W, C) as the model's inputs are prepared (0-255 for tfmed backbones).
        index: the class/label (see :class:`~tfmed.explain.target.ExplainTarget`); None: the
            positive class of a one-output model, else each image's top output.
        layer: the layer whose activations are weighted (default: the backbone's last stage).

    Example:
        >>> gradcam(tuner, images, index=1).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    return _class_maps(model, images, index, layer, batch_size,
                       lambda activations, grads: grads.mean(axis=(1, 2)))


def _plus_plus_weights(activations: np.ndarray, grads: np.ndarray) -> np.ndarray:
    squared, cubed = grads ** 2, grads ** 3
    total = activations.sum(axis=(1, 2), keepdims=True)
    denominator = 2.0 * squared + total * cubed
    alpha = squared / np.where(denominator != 0.0, denominator, 1.0)
    return (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2))


def gradcam_pp(model, images, *, index=None, layer: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Grad-CAM++ maps (N, H, W) in [0, 1]; arguments as :func:`gradcam`.

    Example:
        >>> gradcam_pp(tuner, images).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    return _class_maps(model, images, index, layer, batch_size, _plus_plus_weights)
