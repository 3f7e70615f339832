"""Image transforms: small composable callables on float32 tensors (H, W, C).

Each transform does one job and works inside ``tf.data.Dataset.map`` (native
TensorFlow ops; only :class:`CLAHE` calls OpenCV through ``tf.numpy_function``).
Deterministic transforms take ``image``; random (augmentation) transforms take
``image, seed`` where ``seed`` is a shape-[2] integer tensor, so a pipeline is
reproducible from one seed (``tf.random.stateless_*`` ops). :class:`Compose`
chains them and splits one seed among its random members.

The preprocessing chain built from a :class:`~tfmed.config.PreprocessConfig`
is, in order: intensity to the 0-255 pixel scale (``minmax``,
``minmax_dataset``, ``window``; nothing for ``none``), resize, channel count,
then the train-statistics normalisers (``standardize``, ``mean_image``).
Training augmentation is inserted after the resize and before the channel
conversion (a grey image is augmented once, not three times) and the
normalisers (brightness, contrast and CLAHE act on pixel values).

Example:
    >>> import numpy as np, tensorflow as tf
    >>> chain = Compose([CTWindow([[40, 400]]), Resize(4)])
    >>> hu = tf.constant(np.full((8, 8, 1), 40.0, np.float32))
    >>> out = chain(hu)
    >>> tuple(out.shape), float(out[0, 0, 0])
    ((4, 4, 3), 127.5)
"""
from __future__ import annotations

import abc
import json
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import tensorflow as tf

from tfmed.config import AugmentConfig, PreprocessConfig


class TransformError(ValueError):
    """A transform was given invalid parameters or an image it cannot handle."""


class StatisticsError(ValueError):
    """Train-split statistics are missing, mismatched or computed on the wrong rows."""


STATS_FILE = "preprocess_stats.json"
MEAN_IMAGE_FILE = "mean_image.npy"
PIXEL_MAX = 255.0


def window_hu(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """NumPy reference for one CT window: HU -> [0, 255], clipped.

    ``value = (hu - (center - width / 2)) / width * 255``.

    Example:
        >>> window_hu(np.array([-1000.0, 40.0, 1000.0]), 40, 400).tolist()
        [0.0, 127.5, 255.0]
    """
    if width <= 0:
        raise TransformError(f"CT window width must be > 0, got {width}")
    low = center - width / 2.0
    values = (np.asarray(hu, dtype=np.float64) - low) / width * PIXEL_MAX
    return np.clip(values, 0.0, PIXEL_MAX).astype(np.float32)


class Transform(abc.ABC):
    """Base class: a deterministic callable ``image -> image`` on float32 (H, W, C).

    Subclasses set ``random = True`` when they need a seed, and
    ``normalizer = True`` when they map pixel values to model units using
    train-split statistics (augmentation goes before them).

    Example:
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


def _as_image(image) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.float32:
        image = tf.cast(image, tf.float32)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise TransformError(f"transforms expect one image of shape (H, W, C); got shape {image.shape}")
    return image


def _seed_or_random(seed) -> tf.Tensor:
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


class Compose(Transform):
    """Apply transforms in order; one seed is split among the random ones.

    Example:
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
        image = _as_image(image)
        randoms = [t for t in self.transforms if getattr(t, "random", False)]
        seeds = iter(())
        if randoms:
            seeds = iter(tf.unstack(tf.random.split(_seed_or_random(seed), len(randoms))))
        for t in self.transforms:
            image = t(image, next(seeds)) if getattr(t, "random", False) else t(image)
        return image


# ----------------------------------------------------------------- intensity
class MinMax(Transform):
    """Per image: ``(x - min) / (max - min) * 255``; a constant image becomes 0.

    Example:
        >>> MinMax()(tf.constant([[[10.0], [20.0], [30.0]]])).numpy().ravel().tolist()
        [0.0, 127.5, 255.0]
    """

    def __call__(self, image, seed=None):
        image = _as_image(image)
        low = tf.reduce_min(image)
        span = tf.reduce_max(image) - low
        return tf.math.divide_no_nan(image - low, span) * PIXEL_MAX


class MinMaxRange(Transform):
    """Fixed range (train-split min/max) to [0, 255], clipped.

    Example:
        >>> MinMaxRange(0, 1000)(tf.constant([[[-5.0], [500.0], [2000.0]]])).numpy().ravel().tolist()
        [0.0, 127.5, 255.0]
    """

    def __init__(self, lo: float, hi: float):
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise TransformError(f"MinMaxRange needs finite lo < hi, got lo={lo}, hi={hi}; "
                                 "a train split whose images are all one value cannot be scaled")
        self.lo, self.hi = float(lo), float(hi)

    def __call__(self, image, seed=None):
        image = _as_image(image)
        scaled = (image - self.lo) / (self.hi - self.lo) * PIXEL_MAX
        return tf.clip_by_value(scaled, 0.0, PIXEL_MAX)


class Standardize(Transform):
    """Per channel: ``(x - mean[c]) / std[c]`` with train-split statistics.

    Example:
        >>> Standardize([10.0], [2.0])(tf.constant([[[14.0]]])).numpy().item()
        2.0
    """

    normalizer = True

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        std = np.asarray(std, dtype=np.float32).reshape(-1)
        if mean.shape != std.shape or mean.size == 0:
            raise TransformError(f"Standardize needs one mean and one std per channel, "
                                 f"got {mean.size} means and {std.size} stds")
        if np.any(~np.isfinite(std)) or np.any(std <= 0):
            raise TransformError(f"Standardize std must be finite and > 0 per channel, got {std.tolist()}; "
                                 "a constant channel in the train split cannot be standardised")
        self.mean, self.std = mean.tolist(), std.tolist()

    def __call__(self, image, seed=None):
        image = _as_image(image)
        return (image - tf.constant(self.mean)) / tf.constant(self.std)


class SubtractMeanImage(Transform):
    """Subtract the train-split mean image (same H, W, C as the input).

    Example:
        >>> mean = np.full((2, 2, 1), 3.0, np.float32)
        >>> float(SubtractMeanImage(mean)(tf.fill((2, 2, 1), 5.0)).numpy().max())
        2.0
    """

    normalizer = True

    def __init__(self, image: np.ndarray):
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise TransformError(f"SubtractMeanImage needs a (H, W, C) mean image, got shape {image.shape}")
        self.image = image

    def __call__(self, image, seed=None):
        image = _as_image(image)
        return image - tf.constant(self.image)

    def __repr__(self) -> str:
        return f"SubtractMeanImage(shape={self.image.shape})"


# ImageNet's per-channel pixel statistics (R, G, B) on the 0-255 scale.
IMAGENET_MEAN = (0.485 * PIXEL_MAX, 0.456 * PIXEL_MAX, 0.406 * PIXEL_MAX)
IMAGENET_STD = (0.229 * PIXEL_MAX, 0.224 * PIXEL_MAX, 0.225 * PIXEL_MAX)


class ToImagenetPixels(Transform):
    """Place normalised values at ImageNet's pixel statistics: ``x * scale[c] + mean[c]``.

    Every tfmed backbone applies its own ImageNet preprocessing to 0-255
    pixels, so z-scores (``Standardize``) or mean-subtracted images would
    reach it as a nearly constant input. This maps them back to the pixel
    scale: z-scores get ImageNet's per-channel mean and std (``scale="std"``),
    mean-subtracted pixels get ImageNet's mean added (``scale=None``). The
    backbone then sees data with the statistics it was trained on.

    Example:
        >>> out = ToImagenetPixels()(tf.zeros((1, 1, 3))).numpy().ravel()
        >>> [round(float(v), 2) for v in out]
        [123.68, 116.28, 103.53]
    """

    normalizer = True

    def __init__(self, scale: str | None = "std"):
        if scale not in ("std", None):
            raise TransformError(f"ToImagenetPixels scale is {scale!r}; allowed: 'std', None")
        self.scale = scale

    def __call__(self, image, seed=None):
        image = _as_image(image)
        channels = image.shape[-1]
        mean = np.asarray(IMAGENET_MEAN, np.float32)
        std = np.asarray(IMAGENET_STD, np.float32) if self.scale == "std" else np.ones(3, np.float32)
        if channels == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return image * tf.constant(std) + tf.constant(mean)


class CTWindow(Transform):
    """HU windows ``[[center, width], ...]`` to [0, 255], clipped.

    One window is replicated to 3 channels; three windows are stacked as
    R, G, B (e.g. lung [-600, 1500], mediastinum [40, 400], bone [400, 1800]).
    The first channel of the input holds the HU values.

    Example:
        >>> out = CTWindow([[-600, 1500], [40, 400], [400, 1800]])(tf.fill((2, 2, 1), 40.0))
        >>> [round(v, 2) for v in out[0, 0].numpy().tolist()]
        [236.3, 127.5, 76.5]
    """

    def __init__(self, windows: Sequence[Sequence[float]]):
        windows = [list(map(float, w)) for w in windows]
        if len(windows) not in (1, 3):
            raise TransformError(f"CTWindow needs 1 or 3 [center, width] windows, got {len(windows)}")
        for i, w in enumerate(windows):
            if len(w) != 2 or w[1] <= 0:
                raise TransformError(f"CT window {i} is {w}; write [center, width] with width > 0, "
                                     "e.g. [-600, 1500] for lung")
        self.windows = windows

    def __call__(self, image, seed=None):
        hu = _as_image(image)[..., :1]
        channels = []
        for center, width in self.windows:
            low = center - width / 2.0
            channels.append(tf.clip_by_value((hu - low) / width * PIXEL_MAX, 0.0, PIXEL_MAX))
        if len(channels) == 1:
            channels = channels * 3
        return tf.concat(channels, axis=-1)


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
        image = _as_image(image)
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
        if mode not in ("plain", "pad"):
            raise TransformError(f"Resize mode is {mode!r}; allowed: 'plain', 'pad'")
        self.size, self.mode, self.antialias = int(size), mode, bool(antialias)

    def _resize(self, image, antialias: bool):
        s = self.size
        if self.mode == "pad":
            return tf.image.resize_with_pad(image, s, s, antialias=antialias)
        return tf.image.resize(image, [s, s], antialias=antialias)

    def __call__(self, image, seed=None):
        image = _as_image(image)
        if self.antialias:
            # Bilinear interpolation reads every input pixel down to half size; below
            # that it skips pixels and aliases, so the (slower) antialiased kernel is used.
            strong = tf.reduce_max(tf.shape(image)[:2]) > 2 * self.size
            out = tf.cond(strong, lambda: self._resize(image, True), lambda: self._resize(image, False))
        else:
            out = self._resize(image, False)
        out.set_shape([self.size, self.size, image.shape[-1]])
        return out


# -------------------------------------------------------------- augmentation
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
        image = _as_image(image)
        seeds = tf.random.split(_seed_or_random(seed), 2)
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
        image = _as_image(image)
        k = tf.random.stateless_uniform([], _seed_or_random(seed), minval=0, maxval=4, dtype=tf.int32)
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
        image = _as_image(image)
        size = tf.stack([self.size, self.size, tf.shape(image)[-1]])
        out = tf.image.stateless_random_crop(image, size, _seed_or_random(seed))
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
        image = _as_image(image)
        limit = math.radians(self.max_degrees)
        angle = tf.random.stateless_uniform([], _seed_or_random(seed), -limit, limit)
        return rotate(image, angle)


def rotate(image, angle) -> tf.Tensor:
    """Rotate a (H, W, C) image by ``angle`` radians about its centre (zeros fill).

    Example:
        >>> img = tf.reshape(tf.range(9, dtype=tf.float32), (3, 3, 1))
        >>> np.rint(rotate(img, math.pi).numpy()[..., 0]).astype(int).tolist()
        [[8, 7, 6], [5, 4, 3], [2, 1, 0]]
    """
    image = _as_image(image)
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


class RandomBrightness(Transform):
    """Add a value uniform in [-delta, delta] * 255 (pixel scale), clipped to [0, 255].

    Example:
        >>> out = RandomBrightness(0.1)(tf.fill((2, 2, 1), 100.0), seed=[0, 1])
        >>> 74.5 <= float(out[0, 0, 0]) <= 125.5
        True
    """

    random = True

    def __init__(self, delta: float):
        if not 0 <= float(delta) <= 1:
            raise TransformError(f"RandomBrightness delta is a fraction of 255 in [0, 1], got {delta}")
        self.delta = float(delta)

    def __call__(self, image, seed=None):
        image = _as_image(image)
        shift = tf.random.stateless_uniform([], _seed_or_random(seed), -self.delta, self.delta) * PIXEL_MAX
        return tf.clip_by_value(image + shift, 0.0, PIXEL_MAX)


class RandomContrast(Transform):
    """Scale deviations from the per-channel mean by a factor in [1 - delta, 1 + delta], clipped.

    Example:
        >>> out = RandomContrast(0.2)(tf.fill((2, 2, 1), 50.0), seed=[0, 1])
        >>> float(out[0, 0, 0])
        50.0
    """

    random = True

    def __init__(self, delta: float):
        if not 0 <= float(delta) < 1:
            raise TransformError(f"RandomContrast delta must be in [0, 1), got {delta}")
        self.delta = float(delta)

    def __call__(self, image, seed=None):
        image = _as_image(image)
        factor = tf.random.stateless_uniform([], _seed_or_random(seed), 1.0 - self.delta, 1.0 + self.delta)
        mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
        return tf.clip_by_value((image - mean) * factor + mean, 0.0, PIXEL_MAX)


class CLAHE(Transform):
    """OpenCV contrast-limited adaptive histogram equalisation, per channel.

    The image is rounded and clipped to uint8 (pixel scale), equalised with
    ``cv2.createCLAHE(clip_limit, (tile, tile))`` and returned as float32.

    Example:
        >>> img = tf.constant(np.arange(64, dtype=np.float32).reshape(8, 8, 1))
        >>> tuple(CLAHE(2.0, 2)(img).shape)
        (8, 8, 1)
    """

    def __init__(self, clip_limit: float = 2.0, tile: int = 8):
        if float(clip_limit) <= 0 or int(tile) < 1:
            raise TransformError(f"CLAHE needs clip_limit > 0 and tile >= 1, got {clip_limit}, {tile}")
        self.clip_limit, self.tile = float(clip_limit), int(tile)

    def _numpy(self, image: np.ndarray) -> np.ndarray:
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile, self.tile))
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        out = np.stack([clahe.apply(np.ascontiguousarray(pixels[..., c]))
                        for c in range(pixels.shape[-1])], axis=-1)
        return out.astype(np.float32)

    def __call__(self, image, seed=None):
        image = _as_image(image)
        out = tf.numpy_function(self._numpy, [image], tf.float32, stateful=False)
        out.set_shape(image.shape)
        return out


class RandomApply(Transform):
    """Apply ``transform`` with probability ``probability``.

    Example:
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
        image = _as_image(image)
        seeds = tf.random.split(_seed_or_random(seed), 2)
        apply = tf.random.stateless_uniform([], seeds[0]) < self.probability
        inner = self.transform
        if getattr(inner, "random", False):
            return tf.cond(apply, lambda: inner(image, seeds[1]), lambda: image)
        return tf.cond(apply, lambda: inner(image), lambda: image)


# ------------------------------------------------------------------ builders
def build_preprocess(config: PreprocessConfig, stats: dict | None = None) -> Compose:
    """The deterministic preprocessing chain for ``config``; output (S, S, channels).

    ``stats`` (from :func:`fit_statistics` on the train split) is required for
    "minmax_dataset", "standardize" and "mean_image".

    Example:
        >>> chain = build_preprocess(PreprocessConfig(image_size=32, intensity="minmax"))
        >>> [type(t).__name__ for t in chain]
        ['MinMax', 'Resize', 'ToChannels']
    """
    intensity = config.intensity
    head: list[Transform] = []
    tail: list[Transform] = []
    if intensity in ("minmax_dataset", "standardize", "mean_image"):
        _check_stats(stats, config)
    if intensity == "minmax":
        head.append(MinMax())
    elif intensity == "minmax_dataset":
        head.append(MinMaxRange(stats["min"], stats["max"]))
    elif intensity == "window":
        if not config.windows:
            raise TransformError("preprocess.intensity is 'window' but preprocess.windows is empty; "
                                 "add e.g. windows: [[-600, 1500]]")
        head.append(CTWindow(config.windows))
    elif intensity == "standardize":
        tail += [Standardize(stats["mean"], stats["std"]), ToImagenetPixels("std")]
    elif intensity == "mean_image":
        tail += [SubtractMeanImage(stats["mean_image"]), ToImagenetPixels(None)]
    elif intensity != "none":
        raise TransformError(f"preprocess.intensity is {intensity!r}; allowed: minmax, minmax_dataset, "
                             "standardize, mean_image, window, none")
    head.append(Resize(config.image_size, config.resize))
    return Compose(head + [ToChannels(config.channels)] + tail)


def build_augment(config: AugmentConfig | None, image_size: int) -> Compose:
    """Training-only augmentation chain (empty when ``config.enabled`` is false).

    Order: CLAHE (applied to half the images), resize to ``crop_from`` and random
    ``image_size`` crop, flips (horizontal only when ``hflip``: chest X-rays
    are not left-right flipped by default), 90-degree turns, rotation,
    brightness, contrast.

    Example:
        >>> aug = build_augment(AugmentConfig(crop_from=256, rotation_degrees=10), 224)
        >>> [type(t).__name__ for t in aug]
        ['Resize', 'RandomCrop', 'RandomRotation']
        >>> len(build_augment(AugmentConfig(enabled=False, vflip=True), 224))
        0
    """
    if config is None or not config.enabled:
        return Compose([])
    chain: list[Transform] = []
    if config.clahe:
        chain.append(RandomApply(CLAHE(2.0, 8), 0.5))
    if config.crop_from is not None:
        if config.crop_from < image_size:
            raise TransformError(f"augment.crop_from ({config.crop_from}) must be at least "
                                 f"preprocess.image_size ({image_size})")
        if config.crop_from > image_size:
            chain += [Resize(config.crop_from, antialias=False), RandomCrop(image_size)]
    if config.hflip or config.vflip:
        chain.append(RandomFlip(horizontal=config.hflip, vertical=config.vflip))
    if config.rot90:
        chain.append(RandomRot90())
    if config.rotation_degrees:
        chain.append(RandomRotation(config.rotation_degrees))
    if config.brightness:
        chain.append(RandomBrightness(config.brightness))
    if config.contrast:
        chain.append(RandomContrast(config.contrast))
    return Compose(chain)


# ---------------------------------------------------------------- statistics
_NEEDS_STATS = ("minmax_dataset", "standardize", "mean_image")


def _check_stats(stats: dict | None, config: PreprocessConfig) -> None:
    intensity = config.intensity
    if not stats:
        raise StatisticsError(f"preprocess.intensity {intensity!r} needs train-split statistics: "
                              "call fit_statistics(train_table, config) (or load_statistics(run_dir)) "
                              "and pass stats=")
    if stats.get("intensity") != intensity:
        raise StatisticsError(f"statistics were computed for intensity {stats.get('intensity')!r}, "
                              f"but preprocess.intensity is {intensity!r}; recompute them with fit_statistics")
    if intensity in ("standardize", "mean_image"):
        for key in ("image_size", "channels", "resize"):
            if stats.get(key) != getattr(config, key):
                raise StatisticsError(f"statistics were computed with {key}={stats.get(key)!r}, "
                                      f"but preprocess.{key} is {getattr(config, key)!r}; recompute them")
    needed = {"minmax_dataset": ("min", "max"), "standardize": ("mean", "std"),
              "mean_image": ("mean_image",)}[intensity]
    missing = [k for k in needed if k not in stats]
    if missing:
        raise StatisticsError(f"statistics for {intensity!r} lack key(s) {missing}; recompute them")


def fit_statistics(table, config: PreprocessConfig, batch_size: int = 64) -> dict:
    """Statistics of the TRAIN table that the preprocessing chain needs, streamed.

    "minmax_dataset": raw min/max; "standardize": per-channel mean/std of the
    images after channel conversion and resize; "mean_image": mean image at
    the target size. Other intensities need nothing (the dict only records
    the setting). Images are read in batches, never all at once. A table with
    "val" or "test" rows is refused (statistics must not see held-out data).

    Example:
        >>> stats = fit_statistics(train_table, PreprocessConfig(intensity="standardize"))  # doctest: +SKIP
        >>> sorted(stats)  # doctest: +SKIP
        ['channels', 'image_size', 'intensity', 'mean', 'n_images', 'resize', 'std']
    """
    from tfmed.data.pipeline import raw_dataset

    split = table.frame["split"].dropna().astype(str)
    held_out = split[split != "train"]
    if len(held_out):
        first = table.frame.loc[held_out.index[0]]
        raise StatisticsError(f"fit_statistics got rows from split {held_out.iloc[0]!r} "
                              f"(e.g. row {first['row']}: {first['image']}); pass the train split only: "
                              "fit_statistics(table.split('train'), config)")
    if len(table) == 0:
        raise StatisticsError("fit_statistics got an empty table; the train split has no rows")
    stats = {"intensity": config.intensity, "image_size": config.image_size,
             "channels": config.channels, "resize": config.resize, "n_images": len(table)}
    if config.intensity not in _NEEDS_STATS:
        return stats
    if config.intensity == "minmax_dataset":
        ranges = raw_dataset(table).map(lambda image: tf.stack([tf.reduce_min(image), tf.reduce_max(image)]),
                                        num_parallel_calls=tf.data.AUTOTUNE).batch(256)
        lows, highs = np.concatenate([batch.numpy() for batch in ranges], axis=0).T
        stats.update(min=float(lows.min()), max=float(highs.max()))
        return stats
    shape_chain = Compose([Resize(config.image_size, config.resize), ToChannels(config.channels)])
    ds = raw_dataset(table).map(shape_chain, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    total = np.zeros((config.image_size, config.image_size, config.channels), np.float64)
    total_sq = np.zeros(config.channels, np.float64)
    count = 0
    for batch in ds:
        batch = batch.numpy().astype(np.float64)
        total += batch.sum(axis=0)
        total_sq += np.square(batch).sum(axis=(0, 1, 2))
        count += batch.shape[0]
    if config.intensity == "mean_image":
        stats["mean_image"] = (total / count).astype(np.float32)
    else:
        pixels = count * config.image_size * config.image_size
        mean = total.sum(axis=(0, 1)) / pixels
        var = np.maximum(total_sq / pixels - mean**2, 0.0)
        stats.update(mean=mean.tolist(), std=np.sqrt(var).tolist())
    return stats


def save_statistics(stats: dict, directory: str | Path) -> Path:
    """Write ``stats`` to ``directory/preprocess_stats.json`` (+ ``mean_image.npy``).

    Example:
        >>> save_statistics({"intensity": "minmax"}, run_dir)  # doctest: +SKIP
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in stats.items() if k != "mean_image"}
    if "mean_image" in stats:
        np.save(directory / MEAN_IMAGE_FILE, np.asarray(stats["mean_image"], np.float32))
        plain["mean_image"] = MEAN_IMAGE_FILE
    path = directory / STATS_FILE
    path.write_text(json.dumps(plain, indent=2), encoding="utf-8")
    return path


def load_statistics(directory: str | Path) -> dict:
    """Read statistics written by :func:`save_statistics`, exactly as saved.

    Example:
        >>> stats = load_statistics(run_dir)  # doctest: +SKIP
    """
    directory = Path(directory)
    path = directory / STATS_FILE
    if not path.is_file():
        raise StatisticsError(f"{path}: no preprocessing statistics here; the run directory should hold "
                              f"{STATS_FILE} written by save_statistics during training")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise StatisticsError(f"{path}: not valid JSON ({error}); re-save the statistics") from None
    if "mean_image" in stats:
        image_path = directory / stats["mean_image"]
        if not image_path.is_file():
            raise StatisticsError(f"{image_path}: mean image named in {path} is missing")
        stats["mean_image"] = np.load(image_path)
    return stats
