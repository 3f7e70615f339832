"""From config to transform chains: the preprocessing every image gets, and training augmentation.

The preprocessing chain built from a :class:`~tfmed.config.PreprocessConfig`
is, in order: intensity to the 0-255 pixel scale (``minmax``,
``minmax_dataset``, ``histogram``, ``window``; nothing for ``none``), resize, channel count,
then the train-statistics normalisers (``standardize``, ``mean_image``).
Training augmentation is inserted after the resize and before the channel
conversion (a grey image is augmented once, not three times) and the
normalisers (brightness, contrast and CLAHE act on pixel values).

Example:
    >>> [type(t).__name__ for t in build_preprocess(PreprocessConfig(image_size=32))]
    ['MinMax', 'Resize', 'ToChannels']
"""
from __future__ import annotations

from tfmed.config import AugmentConfig, PreprocessConfig
from tfmed.data.transforms import (CLAHE, Compose, CTWindow, HistogramStandardize, MinMax, MinMaxRange,
                                   RandomApply, RandomBlur, RandomBrightness, RandomContrast, RandomCrop,
                                   RandomFlip, RandomGamma, RandomNoise, RandomRot90, RandomRotation, Resize,
                                   Standardize, SubtractMeanImage, ToChannels, ToImagenetPixels, Transform,
                                   TransformError)
from tfmed.errors import TfmedError


class StatisticsError(TfmedError):
    """Train-split statistics are missing, mismatched or computed on the wrong rows."""


def needs_statistics(config: PreprocessConfig) -> bool:
    """Whether ``config`` normalises with train-split statistics (see :mod:`tfmed.data.statistics`).

    Example:
        >>> needs_statistics(PreprocessConfig(intensity="standardize")), needs_statistics(PreprocessConfig())
        (True, False)
    """
    return config.intensity in NEEDS_STATISTICS


NEEDS_STATISTICS = ("minmax_dataset", "histogram", "standardize", "mean_image")


def check_statistics(stats: dict | None, config: PreprocessConfig) -> None:
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
    needed = {"minmax_dataset": ("min", "max"), "histogram": ("landmarks", "percentiles"),
              "standardize": ("mean", "std"), "mean_image": ("mean_image",)}[intensity]
    missing = [k for k in needed if k not in stats]
    if missing:
        raise StatisticsError(f"statistics for {intensity!r} lack key(s) {missing}; recompute them")


def build_preprocess(config: PreprocessConfig, stats: dict | None = None, size: int | None = None) -> Compose:
    """The deterministic preprocessing chain for ``config``; output (S, S, channels).

    ``stats`` (from :func:`fit_statistics` on the train split) is required for
    "minmax_dataset", "histogram", "standardize" and "mean_image". ``size``: the side images are resized to,
    when not ``config.image_size`` (training images with ``augment.crop_from``, which
    :func:`build_augment`'s random crop brings to ``image_size``).

    Example:
        >>> chain = build_preprocess(PreprocessConfig(image_size=32, intensity="minmax"))
        >>> [type(t).__name__ for t in chain]
        ['MinMax', 'Resize', 'ToChannels']
    """
    config.check()  # choices and ranges live in tfmed.config ("none" adds no intensity step)
    intensity = config.intensity
    head: list[Transform] = []
    tail: list[Transform] = []
    if intensity in NEEDS_STATISTICS:
        check_statistics(stats, config)
    if intensity == "minmax":
        head.append(MinMax())
    elif intensity == "minmax_dataset":
        head.append(MinMaxRange(stats["min"], stats["max"]))
    elif intensity == "histogram":
        head.append(HistogramStandardize(stats["landmarks"], stats["percentiles"]))
    elif intensity == "window":
        if not config.windows:
            raise TransformError("preprocess.intensity is 'window' but preprocess.windows is empty; "
                                 "add e.g. windows: [[-600, 1500]]")
        head.append(CTWindow(config.windows))
    elif intensity == "standardize":
        tail += [Standardize(stats["mean"], stats["std"]), ToImagenetPixels("std")]
    elif intensity == "mean_image":
        tail += [SubtractMeanImage(stats["mean_image"]), ToImagenetPixels(None)]
    head.append(Resize(size or config.image_size, config.resize))
    return Compose(head + [ToChannels(config.channels)] + tail)


def build_augment(config: AugmentConfig | None, image_size: int) -> Compose:
    """Training-only augmentation chain (empty when ``config.enabled`` is false).

    Order: CLAHE (applied to half the images), a random ``image_size`` crop of an image
    resized to ``crop_from`` (``build_preprocess(..., size=crop_from)`` resizes it, from the
    original, so the crop keeps its detail; on an image at ``image_size`` the crop does nothing),
    flips (horizontal only when ``hflip``: chest X-rays
    are not left-right flipped by default), 90-degree turns, rotation,
    brightness, contrast, gamma, blur and noise (each of the last two on half
    the images).

    Example:
        >>> aug = build_augment(AugmentConfig(crop_from=256, rotation_degrees=10), 224)
        >>> [type(t).__name__ for t in aug]
        ['RandomCrop', 'RandomRotation']
        >>> len(build_augment(AugmentConfig(enabled=False), 224))
        0
        >>> [type(t).__name__ for t in build_augment(AugmentConfig(gamma=0.3, blur_sigma=1.0, noise=6), 96)]
        ['RandomGamma', 'RandomApply', 'RandomApply']
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
            chain.append(RandomCrop(image_size))
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
    if config.gamma:
        chain.append(RandomGamma(config.gamma))
    if config.blur_sigma:
        chain.append(RandomApply(RandomBlur(config.blur_sigma), 0.5))
    if config.noise:
        chain.append(RandomApply(RandomNoise(config.noise), 0.5))
    return Compose(chain)
