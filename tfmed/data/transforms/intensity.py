"""Intensity transforms: min-max, histogram standardisation, train-statistics normalisers, CT windows,
brightness, contrast, CLAHE, gamma.

Example:
    >>> import numpy as np
    >>> window_hu(np.array([-1000.0, 40.0, 1000.0]), 40, 400).tolist()
    [0.0, 127.5, 255.0]
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import tensorflow as tf

from tfmed.data.transforms.base import (PIXEL_MAX, ToChannels, Transform, TransformError, as_image,
                                        seed_or_random)


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


class MinMax(Transform):
    """Per image: ``(x - min) / (max - min) * 255``; a constant image becomes 0.

    Example:
        >>> MinMax()(tf.constant([[[10.0], [20.0], [30.0]]])).numpy().ravel().tolist()
        [0.0, 127.5, 255.0]
    """

    def __call__(self, image, seed=None):
        image = as_image(image)
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
        image = as_image(image)
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
        image = as_image(image)
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
        image = as_image(image)
        return image - tf.constant(self.image)

    def __repr__(self) -> str:
        return f"SubtractMeanImage(shape={self.image.shape})"


# Nyul & Udupa's landmarks: the 1st and 99th percentiles bound the scale, the deciles shape it
HISTOGRAM_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def image_landmarks(image, percentiles: Sequence[float] = HISTOGRAM_PERCENTILES) -> tf.Tensor:
    """The ``percentiles`` of ``image``'s pixels (each pixel's mean over its channels), interpolated linearly.

    They match ``numpy.percentile``'s default. A grey picture saved as RGB (R = G = B) has the landmarks of the
    same picture saved grey.

    Example:
        >>> image_landmarks(tf.reshape(tf.range(101.0), (101, 1, 1)), [1, 50, 99]).numpy().tolist()
        [1.0, 50.0, 99.0]
        >>> grey = tf.reshape(tf.range(101.0), (101, 1, 1))
        >>> bool(tf.reduce_all(image_landmarks(tf.concat([grey] * 3, axis=-1)) == image_landmarks(grey)))
        True
    """
    values = tf.sort(tf.reshape(tf.reduce_mean(as_image(image), axis=-1), [-1]))
    last = tf.cast(tf.size(values) - 1, tf.float32)
    position = tf.constant(percentiles, tf.float32) / 100.0 * last
    below = tf.floor(position)
    above = tf.minimum(below + 1.0, last)
    low = tf.gather(values, tf.cast(below, tf.int32))
    high = tf.gather(values, tf.cast(above, tf.int32))
    return low + (high - low) * (position - below)


class HistogramStandardize(Transform):
    """Histogram standardisation (Nyul & Udupa 1999): each image's intensity landmarks to standard ones.

    The image's own landmarks (:func:`image_landmarks`: the 1st and 99th
    percentiles and the deciles of its pixels, each the mean of its channels) are mapped piecewise
    linearly onto ``landmarks``, the standard scale learnt from the train split
    (:func:`tfmed.data.statistics.fit_statistics`), whose first and last values
    are 0 and 255. Values beyond the 1st and 99th percentiles follow the end
    segments and are clipped to [0, 255]. Two images that differ by a monotone
    change of tone curve (another scanner's look-up table, gamma, contrast)
    come out alike at the landmarks; per-image min-max removes only a linear
    change.

    Example:
        >>> standard = np.linspace(0, 255, len(HISTOGRAM_PERCENTILES))
        >>> image = tf.reshape(tf.range(101.0), (101, 1, 1))
        >>> out = HistogramStandardize(standard)(image ** 2).numpy().ravel()  # a curved tone scale
        >>> [round(float(out[i]), 1) for i in (1, 50, 99)]  # its landmarks land on the standard ones
        [0.0, 127.5, 255.0]
    """

    def __init__(self, landmarks: Sequence[float], percentiles: Sequence[float] = HISTOGRAM_PERCENTILES):
        landmarks = np.asarray(landmarks, np.float64).reshape(-1)
        percentiles = np.asarray(percentiles, np.float64).reshape(-1)
        if landmarks.shape != percentiles.shape or landmarks.size < 2:
            raise TransformError(f"HistogramStandardize needs one standard landmark per percentile, got "
                                 f"{landmarks.size} landmarks for {percentiles.size} percentiles")
        if not np.all(np.isfinite(landmarks)) or np.any(np.diff(landmarks) < 0) or landmarks[-1] <= landmarks[0]:
            raise TransformError(f"HistogramStandardize landmarks must be finite, never decreasing and end above "
                                 f"where they start, got {np.round(landmarks, 3).tolist()}")
        if np.any(np.diff(percentiles) <= 0) or percentiles[0] < 0 or percentiles[-1] > 100:
            raise TransformError(f"HistogramStandardize percentiles must increase within [0, 100], "
                                 f"got {percentiles.tolist()}")
        self.landmarks, self.percentiles = landmarks.tolist(), percentiles.tolist()

    def __call__(self, image, seed=None):
        image = as_image(image)
        own = image_landmarks(image, self.percentiles)
        standard = tf.constant(self.landmarks, tf.float32)
        values = tf.reshape(image, [-1])
        # segment k runs from landmark k to k + 1; ties between landmarks take the lower standard value
        segment = tf.clip_by_value(tf.searchsorted(own, values, side="left") - 1, 0, len(self.landmarks) - 2)
        start, end = tf.gather(own, segment), tf.gather(own, segment + 1)
        low, high = tf.gather(standard, segment), tf.gather(standard, segment + 1)
        mapped = low + tf.math.divide_no_nan(values - start, end - start) * (high - low)
        return tf.reshape(tf.clip_by_value(mapped, 0.0, PIXEL_MAX), tf.shape(image))


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
        image = as_image(image)
        channels = image.shape[-1]
        mean = np.asarray(IMAGENET_MEAN, np.float32)
        std = np.asarray(IMAGENET_STD, np.float32) if self.scale == "std" else np.ones(3, np.float32)
        if channels == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return image * tf.constant(std) + tf.constant(mean)


class CTWindow(Transform):
    """HU windows ``[[center, width], ...]`` to [0, 255], clipped.

    One window is applied to every channel (a grey image's one channel is
    then replicated to 3; three adjacent CT slices stay three channels);
    three windows are stacked as R, G, B of the first channel's HU values
    (e.g. lung [-600, 1500], mediastinum [40, 400], bone [400, 1800]).

    Example:
        >>> out = CTWindow([[-600, 1500], [40, 400], [400, 1800]])(tf.fill((2, 2, 1), 40.0))
        >>> [round(v, 2) for v in out[0, 0].numpy().tolist()]
        [236.3, 127.5, 76.5]
        >>> slices = tf.stack([tf.fill((2, 2), -1000.0), tf.fill((2, 2), 40.0), tf.fill((2, 2), 1000.0)], -1)
        >>> [round(v, 1) for v in CTWindow([[40, 400]])(slices)[0, 0].numpy().tolist()]
        [0.0, 127.5, 255.0]
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
        image = as_image(image)
        if len(self.windows) == 1:
            return ToChannels(3)(self._window(image, *self.windows[0]))
        hu = image[..., :1]
        return tf.concat([self._window(hu, center, width) for center, width in self.windows], axis=-1)

    @staticmethod
    def _window(hu, center: float, width: float):
        low = center - width / 2.0
        return tf.clip_by_value((hu - low) / width * PIXEL_MAX, 0.0, PIXEL_MAX)


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
        image = as_image(image)
        shift = tf.random.stateless_uniform([], seed_or_random(seed), -self.delta, self.delta) * PIXEL_MAX
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
        image = as_image(image)
        factor = tf.random.stateless_uniform([], seed_or_random(seed), 1.0 - self.delta, 1.0 + self.delta)
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
        image = as_image(image)
        out = tf.numpy_function(self._numpy, [image], tf.float32, stateful=False)
        out.set_shape(image.shape)
        return out


class Gamma(Transform):
    """Gamma curve on the pixel scale: ``255 * (x / 255) ** gamma``, ``x`` clipped to [0, 255] first.

    Example:
        >>> [round(v, 2) for v in Gamma(2.0)(tf.constant([[[255.0], [64.0], [-3.0]]])).numpy().ravel().tolist()]
        [255.0, 16.06, 0.0]
    """

    def __init__(self, gamma: float):
        if not (math.isfinite(float(gamma)) and float(gamma) > 0):
            raise TransformError(f"Gamma needs a finite gamma > 0, got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, image, seed=None):
        image = tf.clip_by_value(as_image(image), 0.0, PIXEL_MAX)
        return PIXEL_MAX * tf.pow(image / PIXEL_MAX, self.gamma)


class RandomGamma(Transform):
    """Gamma curve with ``log(gamma)`` uniform in [-max_log_gamma, max_log_gamma] (pixel scale).

    Another scanner or post-processing often changes the intensity curve more
    than the level; gamma 0.74-1.35 (``max_log_gamma`` 0.3) covers common exposure
    differences of radiographs.

    Example:
        >>> out = RandomGamma(0.3)(tf.constant([[[0.0], [255.0]]]), seed=[0, 1])
        >>> out.numpy().ravel().tolist()
        [0.0, 255.0]
    """

    random = True

    def __init__(self, max_log_gamma: float):
        if not 0 <= float(max_log_gamma) <= 1:
            raise TransformError(f"RandomGamma max_log_gamma must be in [0, 1], got {max_log_gamma}")
        self.max_log_gamma = float(max_log_gamma)

    def __call__(self, image, seed=None):
        image = tf.clip_by_value(as_image(image), 0.0, PIXEL_MAX)
        log_gamma = tf.random.stateless_uniform([], seed_or_random(seed), -self.max_log_gamma, self.max_log_gamma)
        return PIXEL_MAX * tf.pow(image / PIXEL_MAX, tf.exp(log_gamma))


class RandomBlur(Transform):
    """Gaussian blur with sigma uniform in [0, max_sigma] pixels (a softer detector or reconstruction).

    Example:
        >>> image = tf.constant(np.eye(5, dtype=np.float32)[..., None] * 255)
        >>> out = RandomBlur(1.5)(image, seed=[0, 1])
        >>> tuple(out.shape), bool(abs(float(tf.reduce_sum(out)) - 5 * 255) < 120)
        ((5, 5, 1), True)
    """

    random = True

    def __init__(self, max_sigma: float):
        if not 0 <= float(max_sigma) <= 5:
            raise TransformError(f"RandomBlur max_sigma must be in [0, 5] pixels, got {max_sigma}")
        self.max_sigma = float(max_sigma)
        self.radius = max(1, math.ceil(2 * self.max_sigma))

    def __call__(self, image, seed=None):
        image = as_image(image)
        sigma = tf.random.stateless_uniform([], seed_or_random(seed), 0.0, self.max_sigma) + 1e-3
        offsets = tf.range(-self.radius, self.radius + 1, dtype=tf.float32)
        kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
        kernel /= tf.reduce_sum(kernel)
        channels = tf.shape(image)[-1]
        x = tf.transpose(image, [2, 0, 1])[..., tf.newaxis]  # (C, H, W, 1): each channel alike
        x = tf.pad(x, [[0, 0], [self.radius, self.radius], [self.radius, self.radius], [0, 0]], mode="SYMMETRIC")
        x = tf.nn.conv2d(x, tf.reshape(kernel, [-1, 1, 1, 1]), strides=1, padding="VALID")
        x = tf.nn.conv2d(x, tf.reshape(kernel, [1, -1, 1, 1]), strides=1, padding="VALID")
        out = tf.transpose(x[..., 0], [1, 2, 0])
        out = tf.reshape(out, tf.concat([tf.shape(image)[:2], [channels]], axis=0))
        out.set_shape(image.shape)
        return out


class RandomNoise(Transform):
    """Additive Gaussian noise with a standard deviation uniform in [0, max_sd] (pixel scale), clipped.

    Example:
        >>> out = RandomNoise(8.0)(tf.fill((16, 16, 1), 128.0), seed=[0, 1])
        >>> bool(float(tf.math.reduce_std(out)) < 10.0), bool(float(tf.reduce_max(out)) <= 255.0)
        (True, True)
    """

    random = True

    def __init__(self, max_sd: float):
        if not 0 <= float(max_sd) <= 64:
            raise TransformError(f"RandomNoise max_sd must be in [0, 64] on the 0-255 scale, got {max_sd}")
        self.max_sd = float(max_sd)

    def __call__(self, image, seed=None):
        image = as_image(image)
        seeds = tf.random.split(seed_or_random(seed), 2)
        sd = tf.random.stateless_uniform([], seeds[0], 0.0, self.max_sd)
        noise = tf.random.stateless_normal(tf.shape(image), seeds[1]) * sd
        return tf.clip_by_value(image + noise, 0.0, PIXEL_MAX)
