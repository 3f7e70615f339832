"""Spatial transforms: resize (plain or padded), flips, 90-degree turns, crops, rotation, and the
fixed shifts, rotations, zoom and flips of test-time augmentation (:mod:`tfmed.data.tta`).

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
    centred (as ``tf.image.resize_with_pad``; a very thin strip keeps at least one pixel).

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
            return self._padded(image, antialias)
        return tf.image.resize(image, [s, s], antialias=antialias)

    def _padded(self, image, antialias: bool):
        """``tf.image.resize_with_pad``'s sizes and offsets, with each side at least one pixel (its own
        rounds the short side of a 10 x 1000 strip to 0 at 32 px and fails)."""
        s = self.size
        height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
        ratio = tf.maximum(height / s, width / s)
        new_height, new_width = height / ratio, width / ratio
        sides = [tf.maximum(tf.cast(tf.floor(side), tf.int32), 1) for side in (new_height, new_width)]
        offsets = [tf.clip_by_value(tf.cast(tf.floor((s - side) / 2), tf.int32), 0, s - whole)
                   for side, whole in zip((new_height, new_width), sides)]
        resized = tf.image.resize(image, sides, antialias=antialias)
        return tf.image.pad_to_bounding_box(resized, offsets[0], offsets[1], s, s)

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


def _projective(image, transform, interpolation: str = "BILINEAR") -> tf.Tensor:
    """Sample ``image`` at ``transform`` (8 values mapping output (x, y) to input), zeros outside."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=tf.cast(transform, tf.float32)[tf.newaxis],
        output_shape=tf.shape(image)[:2], fill_value=0.0, interpolation=interpolation, fill_mode="CONSTANT")[0]
    out.set_shape(image.shape)
    return out


class Rot90(Transform):
    """Rotate by ``turns`` quarter turns, counter-clockwise as displayed (square images), exactly.

    Example:
        >>> Rot90(1)(tf.reshape(tf.range(4.0), (2, 2, 1))).numpy().ravel().tolist()
        [1.0, 3.0, 0.0, 2.0]
    """

    def __init__(self, turns: int):
        if int(turns) != turns:
            raise TransformError(f"Rot90 needs a whole number of quarter turns, got {turns}")
        self.turns = int(turns) % 4

    def __call__(self, image, seed=None):
        return tf.image.rot90(as_image(image), self.turns)


class Shift(Transform):
    """Move the image ``dx`` pixels right and ``dy`` pixels down (negative: left, up); zeros fill.

    Example:
        >>> Shift(dx=1)(tf.reshape(tf.range(4.0), (1, 4, 1))).numpy().ravel().tolist()
        [0.0, 0.0, 1.0, 2.0]
    """

    def __init__(self, dx: float = 0, dy: float = 0):
        if not (math.isfinite(float(dx)) and math.isfinite(float(dy))):
            raise TransformError(f"Shift needs finite dx, dy, got dx={dx}, dy={dy}")
        self.dx, self.dy = dx, dy

    def __call__(self, image, seed=None):
        image = as_image(image)
        # Output pixel (x, y) samples input (x - dx, y - dy).
        return _projective(image, [1.0, 0.0, -float(self.dx), 0.0, 1.0, -float(self.dy), 0.0, 0.0])


class Rotate(Transform):
    """Rotate about the centre by ``degrees``, counter-clockwise as displayed (as :func:`rotate`).

    Example:
        >>> img = tf.reshape(tf.range(9, dtype=tf.float32), (3, 3, 1))
        >>> [round(v) for v in Rotate(180)(img).numpy().ravel().tolist()]
        [8, 7, 6, 5, 4, 3, 2, 1, 0]
    """

    def __init__(self, degrees: float):
        if not math.isfinite(float(degrees)):
            raise TransformError(f"Rotate needs a finite angle in degrees, got {degrees}")
        self.degrees = degrees

    def __call__(self, image, seed=None):
        return rotate(image, tf.constant(math.radians(float(self.degrees)), tf.float32))


class CentralZoom(Transform):
    """Crop the centre keeping ``keep_fraction`` of each side (rounded to pixels), resize back, bilinear.

    Example:
        >>> ring = tf.pad(tf.ones((4, 4, 1)), [[1, 1], [1, 1], [0, 0]])  # 6 x 6, a zero border
        >>> float(tf.reduce_min(CentralZoom(4 / 6)(ring))), tuple(CentralZoom(0.5)(ring).shape)
        (1.0, (6, 6, 1))
    """

    def __init__(self, keep_fraction: float):
        if not 0 < float(keep_fraction) <= 1:
            raise TransformError(f"CentralZoom keep_fraction must be in (0, 1], got {keep_fraction}")
        self.keep_fraction = float(keep_fraction)

    def __call__(self, image, seed=None):
        image = as_image(image)
        size = tf.shape(image)[:2]
        crop = tf.maximum(tf.cast(tf.round(self.keep_fraction * tf.cast(size, tf.float32)), tf.int32), 1)
        top_left = (size - crop) // 2
        cropped = image[top_left[0]:top_left[0] + crop[0], top_left[1]:top_left[1] + crop[1]]
        out = tf.image.resize(cropped, size, method="bilinear")
        out.set_shape(image.shape)
        return out


class Flip(Transform):
    """Flip left-right (``horizontal``) and/or up-down (``vertical``), always.

    Example:
        >>> Flip(horizontal=True)(tf.reshape(tf.range(3.0), (1, 3, 1))).numpy().ravel().tolist()
        [2.0, 1.0, 0.0]
    """

    def __init__(self, horizontal: bool = False, vertical: bool = False):
        if not (horizontal or vertical):
            raise TransformError("Flip needs horizontal=True and/or vertical=True")
        self.horizontal, self.vertical = bool(horizontal), bool(vertical)

    def __call__(self, image, seed=None):
        image = as_image(image)
        if self.horizontal:
            image = tf.reverse(image, axis=[1])
        if self.vertical:
            image = tf.reverse(image, axis=[0])
        return image
