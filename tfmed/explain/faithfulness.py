"""Can a map be trusted? Deletion / insertion faithfulness and the model-randomisation sanity check.

* **Deletion** (Petsiuk et al. 2018): pixels are removed most-important first, in
  ``steps`` equal parts, and the model's probability of the explained class is
  tracked; the area under that curve (fraction removed on the x axis) is low when
  the map finds what the model uses. The same curve in a random pixel order is the
  reference: a faithful map has ``deletion_auc`` well below ``random_deletion_auc``.
  **Insertion** is the reverse, starting from the image with every pixel removed;
  a faithful map has a high ``insertion_auc``. A removed pixel takes the value of a
  strongly blurred copy of the image (Gaussian, sd 1/10 of the side), which keeps
  the image's intensities while erasing its structure.
* **Model randomisation** (Adebayo et al. 2018): the weights of the target layer's
  block and of everything above it (the head; for an SVM its dual coefficients) are
  re-drawn at random, the maps are made again, and the Spearman rank correlation
  between each image's map before and after is averaged. A map that depends on
  what the model learned changes: a low correlation passes the check. When the
  randomised model gives every image the same score (an RBF-kernel SVM whose
  re-drawn features lie far from all its support vectors), its maps are flat for
  any method, so the check cannot fail: it gives None and warns
  (:class:`SanityCheckWarning`) rather than a pass.

Flat maps (all one value, e.g. a Grad-CAM with no positive evidence) rank nothing and
are left out of both; ``flat_maps`` counts them.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 1))
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1))
    >>> maps = np.random.default_rng(1).uniform(size=(2, 8, 8))
    >>> sorted(faithfulness(model, images, maps, steps=4))
    ['deletion_auc', 'flat_maps', 'insertion_auc', 'random_deletion_auc', 'random_insertion_auc']
"""
from __future__ import annotations

import contextlib
import warnings

import cv2
import numpy as np
from scipy.stats import spearmanr

from tfmed.errors import TfmedError
from tfmed.explain.maps import is_flat
from tfmed.explain.target import (ExplainError, ExplainTarget, FlatMapWarning, _flat_layers, backbone_spec_of,
                                  keras_model_of, prepare, repeat_index)

RANDOMISED_WEIGHTS = ("kernel", "depthwise_kernel", "bias", "dual_coef")


class SanityCheckWarning(TfmedError, UserWarning):
    """The model-randomisation check could not be made: the randomised model scores every image alike."""


def removed_image(image: np.ndarray, grid=None) -> np.ndarray:
    """What a removed pixel becomes: a strongly blurred copy of ``image`` (H, W, C); of a mosaic of views laid
    out by ``grid`` (:class:`~tfmed.explain.mosaic.ViewGrid`), each view blurred on its own, as a 2-D image.

    Example:
        >>> removed_image(np.zeros((8, 8, 1), np.float32)).shape
        (8, 8, 1)
    """
    if grid is not None:
        removed, size = np.empty_like(image), grid.size
        for top in range(0, image.shape[0], size):
            for left in range(0, image.shape[1], size):
                cell = (slice(top, top + size), slice(left, left + size))
                removed[cell] = removed_image(image[cell])
        return removed
    sigma = max(image.shape[:2]) / 10.0
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(image.shape)


def checked_maps(maps, images: np.ndarray) -> np.ndarray:
    """``maps`` as float32, or an ExplainError unless there is one (H, W) map per image.

    Example:
        >>> checked_maps(np.zeros((2, 4, 4)), np.zeros((2, 4, 4, 1))).dtype
        dtype('float32')
    """
    maps = np.asarray(maps, np.float32)
    if maps.shape != images.shape[:3]:
        raise ExplainError(f"maps have shape {maps.shape} but the images are {images.shape[:3]}; give one "
                           "map per image at the image resolution")
    return maps


def perturbation_curves(model, images, maps, *, index=None, steps: int = 20, kind: str = "deletion",
                        order: str = "map", seed: int = 0, grid=None) -> tuple[np.ndarray, np.ndarray]:
    """(fractions (steps + 1,), probabilities (N, steps + 1)) as pixels are removed (``kind="deletion"``)
    or restored (``"insertion"``) in the map's order (``order="map"``) or a random one (``"random"``);
    ``grid``: the images are mosaics of views (see :func:`removed_image`).

    Example:
        >>> fractions, curves = perturbation_curves(svm, images, maps, index=1)  # doctest: +SKIP
    """
    if kind not in ("deletion", "insertion") or order not in ("map", "random") or steps < 1:
        raise ExplainError(f"perturbation_curves: kind must be deletion or insertion, order map or random and "
                           f"steps >= 1; got kind={kind!r}, order={order!r}, steps={steps}")
    target, images, index = prepare(model, images, index)
    maps = checked_maps(maps, images)
    rng = np.random.default_rng(seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    curves = []
    for i, image in enumerate(images):
        pixels = image.shape[0] * image.shape[1]
        ranking = rng.permutation(pixels) if order == "random" else np.argsort(-maps[i].ravel(), kind="stable")
        removed = removed_image(image, grid)
        start, end = (image, removed) if kind == "deletion" else (removed, image)
        frames = np.empty((steps + 1,) + image.shape, np.float32)
        for k, fraction in enumerate(fractions):
            mask = np.zeros(pixels, bool)
            mask[ranking[:int(round(fraction * pixels))]] = True
            mask = mask.reshape(image.shape[:2])[..., None]
            frames[k] = np.where(mask, end, start)
        curves.append(target.predict(frames, index=repeat_index(index, i, steps + 1)))
    return fractions, np.stack(curves)


def _area(fractions: np.ndarray, curves: np.ndarray) -> float:
    return float(np.mean(np.trapezoid(curves, fractions, axis=1)))


def faithfulness(model, images, maps, *, index=None, steps: int = 20, seed: int = 0, grid=None) -> dict:
    """Areas under the deletion and insertion curves, in the map's order and in a random one (means over
    images), and ``flat_maps``: how many maps were flat (no ranking to test) and so left out; the areas
    are None when every map is flat. ``grid``: the images are mosaics of views (see :func:`removed_image`).

    Example:
        >>> faithfulness(tuner, images, gradcam(tuner, images))["deletion_auc"]  # doctest: +SKIP
        0.21
    """
    target, images, index = prepare(model, images, index)
    maps = checked_maps(maps, images)
    ranked = ~is_flat(maps)
    out = {"flat_maps": int((~ranked).sum())}
    if np.ndim(index) == 1:
        index = index[ranked]
    for kind in ("deletion", "insertion"):
        for order in ("map", "random"):
            key = f"{'random_' if order == 'random' else ''}{kind}_auc"
            if not ranked.any():
                out[key] = None
                continue
            fractions, curves = perturbation_curves(target, images[ranked], maps[ranked], index=index,
                                                    steps=steps, kind=kind, order=order, seed=seed, grid=grid)
            out[key] = _area(fractions, curves)
    return out


def _randomised_layers(target: ExplainTarget) -> list:
    """The layers re-drawn by the sanity check: from the start of the target layer's block to the end. A layer
    outside every block (a backbone's last activation, e.g. MobileNetV2's ``out_relu``) counts in the block of the
    nearest layer below it that has one, so the last stage's weights are re-drawn with the head. A block without
    weights to re-draw (the final normalisation of DenseNet, ResNetV2 or ConvNeXt, a block of its own) reaches
    down to the block below it."""
    layers = _flat_layers(target.model)
    names = [layer.name for layer in layers]
    start = names.index(target.layer)
    spec = backbone_spec_of(target.model)
    if spec is not None:
        block = next((spec.block_of(name) for name in reversed(names[:start + 1]) if spec.block_of(name)), None)

        def redrawn(block):
            return any(_is_randomised(v) for layer in layers if spec.block_of(layer.name) == block
                       for v in layer.weights)

        while block in spec.blocks and spec.blocks.index(block) > 0 and not redrawn(block):
            block = spec.blocks[spec.blocks.index(block) - 1]
        if block is not None:
            start = names.index(next(name for name in names if spec.block_of(name) == block))
    return layers[start:]


def _is_randomised(variable) -> bool:
    return variable.name in RANDOMISED_WEIGHTS or variable.name.startswith("dual_coef")


@contextlib.contextmanager
def randomised_weights(target: ExplainTarget, seed: int = 0):
    """Within the block, the target layer's block and every layer above it have random weights
    (normal, with each weight array's own standard deviation); the weights are restored on exit.

    Example:
        >>> with randomised_weights(ExplainTarget(tuner)):  # doctest: +SKIP
        ...     maps = gradcam(tuner, images)
    """
    rng = np.random.default_rng(seed)
    variables = [v for layer in _randomised_layers(target) for v in layer.weights if _is_randomised(v)]
    if not variables:
        raise ExplainError(f"model {target.model.name!r} has no kernel or bias weights from layer "
                           f"{target.layer!r} upwards to randomise")
    saved = [np.asarray(v.numpy()) for v in variables]
    try:
        for variable, value in zip(variables, saved):
            spread = float(value.std()) or 0.05
            variable.assign(rng.normal(0.0, spread, value.shape).astype(value.dtype))
        yield target
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)


def rank_correlation(first: np.ndarray, second: np.ndarray) -> float | None:
    """The mean over images of the Spearman rank correlation between two (N, H, W) stacks of maps.

    An image whose first map is flat is left out (there is no ranking to compare); one whose
    second map alone is flat counts 0 (the ranking is gone). None when every first map is flat.

    Example:
        >>> a = np.arange(8.0).reshape(2, 2, 2)
        >>> rank_correlation(a, a), rank_correlation(a, -a), rank_correlation(a, np.zeros_like(a))
        (1.0, -1.0, 0.0)
    """
    values = []
    for one, two in zip(np.asarray(first), np.asarray(second)):
        if is_flat(one):
            continue
        values.append(0.0 if is_flat(two) else float(spearmanr(one.ravel(), two.ravel()).statistic))
    return float(np.mean(values)) if values else None


def sanity_check(model, images, method: str = "gradcam", *, index=None, layer: str | None = None,
                 seed: int = 0, maps=None) -> float | None:
    """Adebayo et al.'s model-randomisation check: the rank correlation between ``method``'s maps of the
    trained model and of the model with its top randomised (low passes).

    The explained class is fixed from the trained model, so both maps explain the same class.
    ``maps`` (the trained model's maps, when already made) saves making them again.

    Example:
        >>> sanity_check(tuner, images, "gradcam")  # doctest: +SKIP
        0.08
    """
    from tfmed.explain.methods import explain

    keras_model = keras_model_of(model)
    target, images, index = prepare(keras_model, images, index, layer)
    before = explain(keras_model, images, method, index=index, layer=layer) if maps is None \
        else checked_maps(maps, images)
    with randomised_weights(target, seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", FlatMapWarning)  # said once, of the trained model's maps
        # every output (each image's explained class may differ), of the images and of their blurred copies (so
        # that identical images do not pass for a model that gives every image the same scores)
        probes = np.concatenate([images, np.stack([removed_image(image) for image in images])])
        outputs = target.predict(probes, per_output=True)
        if np.ptp(outputs, axis=0).max() <= 1e-6:
            constant = ", ".join(f"{value:.3f}" for value in outputs[0])
        else:
            constant = None
            after = explain(keras_model, images, method, index=index, layer=layer)
    if constant is not None:
        warnings.warn(SanityCheckWarning(
            f"the model-randomisation check was not made: the randomised model scores every image (and its blurred "
            f"copy) {constant}, so any method's maps of it are flat and the check could not fail"), stacklevel=2)
        return None
    return rank_correlation(before, after)
