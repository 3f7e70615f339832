"""The transform protocol: :class:`Transform`, :class:`Compose`, :class:`RandomApply`, channels.

Example:
    >>> import tensorflow as tf
    >>> tuple(Compose([ToChannels(3)])(tf.zeros((4, 4, 1))).shape)
    (4, 4, 3)
"""
from __future__ import annotations

import abc
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfmed.errors import TfmedError


class TransformError(TfmedError):
    """A transform was given invalid parameters or an image it cannot handle."""


PIXEL_MAX = 255.0


class Transform(abc.ABC):
    """Base class: a deterministic callable ``image -> image`` on float32 (H, W, C).

    Subclasses set ``random = True`` when they need a seed, and
    ``normalizer = True`` when they map pixel values to model units using
    train-split statistics (augmentation goes before them).

    Example:
        >>> from tfmed.data.transforms import MinMax
        >>> MinMax()(tf.constant([[[0.0], [2.0]]])).numpy().ravel().tolist()
        [0.0, 255.0]
    """

    random = False
    normalizer = False

    @abc.abstractmethod
    def __call__(self, image, seed=None):
        """Return the transformed float32 (H, W, C) image."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()
                           if not isinstance(v, (np.ndarray, tf.Tensor)))
        return f"{type(self).__name__}({params})"


def as_image(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise TransformError(f"transforms expect one image of shape (H, W, C); got shape {image.shape}")
    return image


def seed_or_random(seed) -> tf.Tensor:
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


class Compose(Transform):
    """Apply transforms in order; one seed is split among the random ones.

    Example:
        >>> from tfmed.data.transforms import MinMax, Resize
        >>> chain = Compose([MinMax(), Resize(8), ToChannels(3)])
        >>> tuple(chain(tf.zeros((16, 12, 1))).shape)
        (8, 8, 3)
        >>> len(Compose([]))
        0
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TransformError(f"Compose needs callables, got {t!r}")
        self.random = any(getattr(t, "random", False) for t in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"

    def __call__(self, image, seed=None):
        image = as_image(image)
        randoms = [t for t in self.transforms if getattr(t, "random", False)]
        seeds = iter(())
        if randoms:
            seeds = iter(tf.unstack(tf.random.split(seed_or_random(seed), len(randoms))))
        for t in self.transforms:
            image = t(image, next(seeds)) if getattr(t, "random", False) else t(image)
        return image


class RandomApply(Transform):
    """Apply ``transform`` with probability ``probability``.

    Example:
        >>> from tfmed.data.transforms import MinMax
        >>> out = RandomApply(MinMax(), 1.0)(tf.constant([[[1.0], [3.0]]]), seed=[0, 1])
        >>> out.numpy().ravel().tolist()
        [0.0, 255.0]
    """

    random = True

    def __init__(self, transform: Transform, probability: float = 0.5):
        if not 0 <= float(probability) <= 1:
            raise TransformError(f"RandomApply probability must be in [0, 1], got {probability}")
        self.transform, self.probability = transform, float(probability)

    def __call__(self, image, seed=None):
        image = as_image(image)
        seeds = tf.random.split(seed_or_random(seed), 2)
        apply = tf.random.stateless_uniform([], seeds[0]) < self.probability
        inner = self.transform
        if getattr(inner, "random", False):
            return tf.cond(apply, lambda: inner(image, seeds[1]), lambda: image)
        return tf.cond(apply, lambda: inner(image), lambda: image)


class ToChannels(Transform):
    """Grey -> RGB by replication, RGB(A) -> grey (ITU-R 601 luma), or keep.

    Example:
        >>> tuple(ToChannels(3)(tf.zeros((4, 4, 1))).shape)
        (4, 4, 3)
    """

    def __init__(self, n: int):
        if n not in (1, 3):
            raise TransformError(f"ToChannels supports 1 or 3 channels, got {n}")
        self.n = int(n)

    def __call__(self, image, seed=None):
        image = as_image(image)
        static = image.shape[-1]
        if static is not None:
            return self._convert(image, static)
        channels = tf.shape(image)[-1]
        out = tf.cond(channels >= 3, lambda: self._convert(image, 3), lambda: self._convert(image, 1))
        out.set_shape([image.shape[0], image.shape[1], self.n])
        return out

    def _convert(self, image, channels: int):
        if channels >= 3:
            rgb = image[..., :3]
            return rgb if self.n == 3 else tf.image.rgb_to_grayscale(rgb)
        grey = image[..., :1]
        return grey if self.n == 1 else tf.tile(grey, [1, 1, 3])
