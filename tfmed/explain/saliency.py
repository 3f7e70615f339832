"""Pixel attributions from input gradients: saliency, SmoothGrad and integrated gradients.

* :func:`saliency` (Simonyan et al. 2014): |d logit / d pixel|, the largest over channels.
* :func:`smoothgrad` (Smilkov et al. 2017): the gradient averaged over noisy copies of the image
  (noise sd ``noise`` times the image's value range), then as saliency.
* :func:`integrated_gradients` (Sundararajan et al. 2017): (x - baseline) times the gradient averaged
  along the straight path from the baseline (black by default) to the image, summed over channels;
  the positive part (evidence for the class) is kept.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Flatten()(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    >>> saliency(model, np.ones((3, 8, 8, 1))).shape
    (3, 8, 8)
"""
from __future__ import annotations

import numpy as np

from tfmed.explain.maps import normalise
from tfmed.explain.target import ExplainError, ExplainTarget, prepare, repeat_index


def _pixel_gradients(target: ExplainTarget, images: np.ndarray, index) -> np.ndarray:
    return target.gradients(images, index, wrt="input")[1]


def saliency(model, images, *, index=None, batch_size: int = 16) -> np.ndarray:
    """Gradient saliency maps (N, H, W) in [0, 1]; ``model`` and ``index`` as in :func:`tfmed.explain.gradcam`.

    Example:
        >>> saliency(tuner, images).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    target, images, index = prepare(model, images, index)
    maps = []
    for start in range(0, len(images), batch_size):
        part = index[start:start + batch_size] if index is not None and np.ndim(index) == 1 else index
        maps.append(np.abs(_pixel_gradients(target, images[start:start + batch_size], part)).max(axis=-1))
    return normalise(np.concatenate(maps))


def smoothgrad(model, images, *, index=None, samples: int = 16, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """SmoothGrad maps (N, H, W) in [0, 1] from ``samples`` noisy copies per image.

    Example:
        >>> smoothgrad(tuner, images, samples=8).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    if samples < 1 or noise < 0:
        raise ExplainError(f"smoothgrad needs samples >= 1 and noise >= 0, got samples={samples}, noise={noise}")
    target, images, index = prepare(model, images, index)
    rng = np.random.default_rng(seed)
    maps = []
    for i, image in enumerate(images):
        spread = noise * float(image.max() - image.min() or 1.0)
        noisy = image[None] + rng.normal(0.0, spread, (samples,) + image.shape).astype(np.float32)
        grads = _pixel_gradients(target, noisy, repeat_index(index, i, samples))
        maps.append(np.abs(grads.mean(axis=0)).max(axis=-1))
    return normalise(np.stack(maps))


def integrated_gradients(model, images, *, index=None, steps: int = 32, baseline: float = 0.0) -> np.ndarray:
    """Integrated-gradient maps (N, H, W) in [0, 1] over ``steps`` points from a constant ``baseline`` image.

    Example:
        >>> integrated_gradients(tuner, images, steps=16).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    if steps < 2:
        raise ExplainError(f"integrated_gradients needs steps >= 2, got {steps}")
    target, images, index = prepare(model, images, index)
    alphas = ((np.arange(steps, dtype=np.float32) + 0.5) / steps)[:, None, None, None]
    maps = []
    for i, image in enumerate(images):
        start = np.full_like(image, baseline)
        path = start[None] + alphas * (image - start)[None]
        grads = _pixel_gradients(target, path, repeat_index(index, i, steps))
        maps.append(np.maximum(((image - start) * grads.mean(axis=0)).sum(axis=-1), 0.0))
    return normalise(np.stack(maps))
