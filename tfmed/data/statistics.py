"""Train-split statistics for the normalisers (min/max, histogram landmarks, per-channel mean/std, mean image).

Computed on the train split only, streamed in batches, saved with the model so
that inference normalises exactly as training did.

Example:
    >>> stats = fit_statistics(train_table, PreprocessConfig(intensity="standardize"))  # doctest: +SKIP
    >>> save_statistics(stats, "runs/demo/model/statistics")                            # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfmed.config import PreprocessConfig, TTAConfig, ViewsConfig
from tfmed.data.pipeline import ImageInputs, raw_dataset
from tfmed.data.preprocessing import StatisticsError, needs_statistics
from tfmed.data.table import ImageTable
from tfmed.data.transforms import (HISTOGRAM_PERCENTILES, PIXEL_MAX, Compose, Resize, ToChannels,
                                   image_landmarks)
from tfmed.files import DAMAGED, read_arrays, read_json


STATS_FILE = "preprocess_stats.json"


MEAN_IMAGE_FILE = "mean_image.npy"


def fit_statistics(table, config: PreprocessConfig, batch_size: int = 64) -> dict:
    """Statistics of the TRAIN table that the preprocessing chain needs, streamed.

    "minmax_dataset": raw min/max; "histogram": the standard landmarks (the
    mean of each image's percentiles, its 1st and 99th mapped to 0 and 255,
    Nyul & Udupa 1999); "standardize": per-channel mean/std of the
    images after channel conversion and resize; "mean_image": mean image at
    the target size. Other intensities need nothing (the dict only records
    the setting). Images are read in batches, never all at once. A table with
    "val" or "test" rows is refused (statistics must not see held-out data).

    Example:
        >>> stats = fit_statistics(train_table, PreprocessConfig(intensity="standardize"))  # doctest: +SKIP
        >>> sorted(stats)  # doctest: +SKIP
        ['channels', 'image_size', 'intensity', 'mean', 'n_images', 'resize', 'std']
    """
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
    if not needs_statistics(config):
        return stats
    if config.intensity == "histogram":
        stats.update(_standard_landmarks(table))
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
    count, largest = 0, -np.inf
    for batch in ds:
        batch = batch.numpy().astype(np.float64)
        largest = max(largest, float(batch.max()))
        total += batch.sum(axis=0)
        total_sq += np.square(batch).sum(axis=(0, 1, 2))
        count += batch.shape[0]
    stats["value_max"] = largest  # the training images' largest value: their bit depth, for new images' check
    if config.intensity == "mean_image":
        stats["mean_image"] = (total / count).astype(np.float32)
    else:
        pixels = count * config.image_size * config.image_size
        mean = total.sum(axis=(0, 1)) / pixels
        var = np.maximum(total_sq / pixels - mean**2, 0.0)
        stats.update(mean=mean.tolist(), std=np.sqrt(var).tolist())
    return stats


def bit_depth_mismatch(stats: dict, depths: dict) -> str | None:
    """Why images of bit ``depths`` ({bit depth: file count}) would be misread by statistics fitted on training
    images of another depth (their largest value, ``max`` or ``value_max``, up to 255 or above it); None when they
    fit, or when the statistics do not record it (intensities fitted per image, runs made before it was kept).

    Example:
        >>> bit_depth_mismatch({"intensity": "standardize", "value_max": 255.0}, {16: 3, 8: 2})[:40]
        '3 of the 5 files are 16-bit, but the tra'
    """
    largest = stats.get("max", stats.get("value_max"))
    if largest is None or not depths:
        return None
    trained = 8 if largest <= 255 else 16
    other = sum(count for depth, count in depths.items() if (depth <= 8) != (trained == 8))
    if not other:
        return None
    depth = 16 if trained == 8 else 8
    return (f"{other} of the {sum(depths.values())} files are {depth}-bit, but the training images held values up "
            f"to {largest:g} ({trained}-bit), and preprocess.intensity {stats['intensity']!r} scales every image with "
            "the training statistics, so these come out "
            f"{'far too bright' if depth == 16 else 'nearly black'}: convert them to {trained}-bit as the training "
            "images were")


def _standard_landmarks(table) -> dict:
    """Nyul & Udupa's standard scale: each train image's landmarks with its 1st and 99th percentiles
    mapped to 0 and 255, averaged over the images (a one-value image has no scale and is passed over)."""
    landmarks = raw_dataset(table).map(image_landmarks, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
    own = np.concatenate([batch.numpy() for batch in landmarks], axis=0).astype(np.float64)
    span = own[:, -1] - own[:, 0]
    usable = span > 0
    if not usable.any():
        raise StatisticsError(f"preprocess.intensity 'histogram': every one of the {len(own)} train images has its "
                              "1st and 99th percentiles equal, so no standard scale can be learnt; "
                              "use intensity 'minmax' or 'minmax_dataset'")
    scaled = (own[usable] - own[usable, :1]) / span[usable, None] * PIXEL_MAX
    return {"percentiles": list(HISTOGRAM_PERCENTILES), "landmarks": scaled.mean(axis=0).tolist(),
            "n_flat_images": int((~usable).sum())}


def fit_inputs(preprocess: PreprocessConfig, train, tta: TTAConfig | None = None,
               volume_views: ViewsConfig | None = None) -> ImageInputs:
    """The inputs of ``preprocess`` (rows as volumes cut into ``volume_views`` when enabled), with
    statistics fitted on the ``train`` table when it needs them.

    Example:
        >>> inputs = fit_inputs(PreprocessConfig(intensity="standardize"), table.split("train"))  # doctest: +SKIP
        >>> fit_inputs(PreprocessConfig(image_size=32), None).stats is None
        True
    """
    stats = fit_statistics(train, preprocess) if needs_statistics(preprocess) else None
    return ImageInputs(preprocess, stats, tta=tta,
                       volume_views=volume_views if volume_views is not None and volume_views.enabled else None)


def refit_inputs(inputs: ImageInputs, rows) -> ImageInputs:
    """``inputs`` with their statistics fitted again on the table ``rows``, the images a model is fitted on
    (a k-fold's training part, validation rows included), so that no held-out image shapes them; inputs
    without statistics come back as they are.

    Example:
        >>> inputs = ImageInputs(PreprocessConfig(image_size=32))
        >>> refit_inputs(inputs, None) is inputs
        True
    """
    if inputs.stats is None:
        return inputs
    return dataclasses.replace(inputs, stats=fit_statistics(as_training(rows), inputs.preprocess))


def as_training(rows: ImageTable) -> ImageTable:
    """The table ``rows`` with every row marked as a training row: the images a model is fitted on, for
    :func:`fit_statistics`, when they hold validation rows (a k-fold over train and val).

    Example:
        >>> import pandas as pd
        >>> rows = ImageTable(pd.DataFrame({"image": ["a", "b"], "label": [0, 1], "split": ["train", "val"]}),
        ...                   ["x", "y"], "binary")
        >>> as_training(rows).frame["split"].tolist()
        ['train', 'train']
    """
    return ImageTable(rows.frame.assign(split="train"), list(rows.classes), rows.task, rows.images, rows.source)


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
    stats = read_json(path, StatisticsError)
    if not isinstance(stats, dict):
        raise StatisticsError(f"{path}: not the statistics tfmed writes (a JSON object); {DAMAGED}")
    if "mean_image" in stats:
        if stats["mean_image"] != MEAN_IMAGE_FILE:
            raise StatisticsError(f"{path}: names mean image {stats['mean_image']!r}, tfmed writes "
                                  f"{MEAN_IMAGE_FILE!r}; {DAMAGED}")
        image_path = directory / MEAN_IMAGE_FILE
        if not image_path.is_file():
            raise StatisticsError(f"{image_path}: mean image named in {path} is missing")
        stats["mean_image"] = read_arrays(image_path, StatisticsError)["array"]
    return stats
