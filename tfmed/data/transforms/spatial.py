"""Spatial transforms: resize (plain or padded), flips, 90-degree turns, crops, rotation.

Example:
    >>> import tensorflow as tf
    >>> tuple(Resize(8)(tf.zeros((4, 6, 1))).shape)
    (8, 8, 1)
"""
from __future__ import annotations

import math

import tensorflow as tf

from tfmed.config import PreprocessConfig, choices
from tfmed.data.transforms.base import Transform, TransformError, as_image, seed_or_random


class Resize(Transform):
    """Resize to ``size`` x ``size``, bilinear.

    With ``antialias`` (default) an image shrunk to less than half its size is
    filtered first (``tf.image.resize(antialias=True)``), so large radiographs
    do not alias; milder shrinking and enlarging use plain bilinear
    interpolation, which already reads every input pixel and is 2x cheaper.

    mode "plain" stretches; "pad" keeps the aspect ratio and pads with zeros,
    centred (``tf.image.resize_with_pad``).

    Example:
        >>> tuple(Resize(8, mode="pad")(tf.ones((16, 4, 1))).shape)
        (8, 8, 1)
    """

    def __init__(self, size: int, mode: str = "plain", antialias: bool = True):
        if int(size) < 1:
            raise TransformError(f"Resize size must be >= 1, got {size}")
        if mode not in choices(PreprocessConfig, "resize"):
            raise TransformError(f"Resize mode is {mode!r}; allowed: "
                                 f"{', '.join(map(repr, choices(PreprocessConfig, 'resize')))}")
        self.size, self.mode, self.antialias = int(size), mode, bool(antialias)

    def _resize(self, image, antialias: bool):
        s = self.size
        if self.mode == "pad":
            return tf.image.resize_with_pad(image, s, s, antialias=antialias)
        return tf.image.resize(image, [s, s], antialias=antialias)

    def __call__(self, image, seed=None):
        image = as_image(image)
        if self.antialias:
            # Bilinear interpolation reads every input pixel down to half size; below
            # that it skips pixels and aliases, so the (slower) antialiased kernel is used.
            strong = tf.reduce_max(tf.shape(image)[:2]) > 2 * self.size
            out = tf.cond(strong, lambda: self._resize(image, True), lambda: self._resize(image, False))
        else:
            out = self._resize(image, False)
        out.set_shape([self.size, self.size, image.shape[-1]])
        return out


class RandomFlip(Transform):
    """Flip left-right and/or up-down, each with probability 0.5.

    Example:
        >>> out = RandomFlip(horizontal=True)(tf.zeros((4, 4, 1)), seed=[1, 2])
        >>> tuple(out.shape)
        (4, 4, 1)
    """

    random = True

    def __init__(self, horizontal: bool = False, vertical: bool = False):
        self.horizontal, self.vertical = bool(horizontal), bool(vertical)

    def __call__(self, image, seed=None):
        image = as_image(image)
        seeds = tf.random.split(seed_or_random(seed), 2)
        if self.horizontal:
            image = tf.image.stateless_random_flip_left_right(image, seeds[0])
        if self.vertical:
            image = tf.image.stateless_random_flip_up_down(image, seeds[1])
        return image


class RandomRot90(Transform):
    """Rotate by 0, 90, 180 or 270 degrees, uniformly (square images).

    Example:
        >>> tuple(RandomRot90()(tf.zeros((4, 4, 1)), seed=[0, 1]).shape)
        (4, 4, 1)
    """

    random = True

    def __call__(self, image, seed=None):
        image = as_image(image)
        k = tf.random.stateless_uniform([], seed_or_random(seed), minval=0, maxval=4, dtype=tf.int32)
        return tf.image.rot90(image, k)


class RandomCrop(Transform):
    """Random ``size`` x ``size`` crop (e.g. 224 from 256, Lakhani & Sundaram 2017).

    Example:
        >>> tuple(RandomCrop(3)(tf.zeros((5, 5, 1)), seed=[0, 1]).shape)
        (3, 3, 1)
    """

    random = True

    def __init__(self, size: int):
        if int(size) < 1:
            raise TransformError(f"RandomCrop size must be >= 1, got {size}")
        self.size = int(size)

    def __call__(self, image, seed=None):
        image = as_image(image)
        size = tf.stack([self.size, self.size, tf.shape(image)[-1]])
        out = tf.image.stateless_random_crop(image, size, seed_or_random(seed))
        out.set_shape([self.size, self.size, image.shape[-1]])
        return out


class RandomRotation(Transform):
    """Rotate about the centre by an angle uniform in [-max_degrees, max_degrees].

    Bilinear interpolation; corners outside the image are filled with 0.

    Example:
        >>> tuple(RandomRotation(10)(tf.zeros((6, 6, 1)), seed=[0, 1]).shape)
        (6, 6, 1)
    """

    random = True

    def __init__(self, max_degrees: float):
        if not 0 <= float(max_degrees) <= 180:
            raise TransformError(f"RandomRotation max_degrees must be in [0, 180], got {max_degrees}")
        self.max_degrees = float(max_degrees)

    def __call__(self, image, seed=None):
        image = as_image(image)
        limit = math.radians(self.max_degrees)
        angle = tf.random.stateless_uniform([], seed_or_random(seed), -limit, limit)
        return rotate(image, angle)


def rotate(image, angle) -> tf.Tensor:
    """Rotate a (H, W, C) image by ``angle`` radians about its centre (zeros fill).

    Example:
        >>> import numpy as np
        >>> img = tf.reshape(tf.range(9, dtype=tf.float32), (3, 3, 1))
        >>> np.rint(rotate(img, math.pi).numpy()[..., 0]).astype(int).tolist()
        [[8, 7, 6], [5, 4, 3], [2, 1, 0]]
    """
    image = as_image(image)
    shape = tf.shape(image)
    h = tf.cast(shape[0], tf.float32)
    w = tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    # Output pixel (x, y) samples input at R^-1 (p - c) + c.
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis], output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    out.set_shape(image.shape)
    return out
