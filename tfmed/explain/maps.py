"""Small operations on explanation maps: scaling to [0, 1], resizing and the peak location.

Example:
    >>> import numpy as np
    >>> maps = normalise(np.array([[[0.0, 2.0], [1.0, 4.0]]]))
    >>> maps.tolist(), peak(maps[0])
    ([[[0.0, 0.5], [0.25, 1.0]]], (1, 1))
"""
from __future__ import annotations

import cv2
import numpy as np


_ROUNDING = 1e-5  # a map whose values differ by less than this fraction of its largest is flat (float32 rounding)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each (H, W) map of an (N, H, W) stack scaled to [0, 1] by its own min and max; a flat map becomes 0,
    and so does one whose values differ by float rounding only (a 1 x 1 map resized), not stretched into noise.

    Example:
        >>> float(normalise(np.ones((1, 2, 2))).max()), float(normalise(np.array([[[0.3, 0.3 + 1e-12]]])).max())
        (0.0, 0.0)
    """
    maps = np.asarray(maps, np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    varies = span > _ROUNDING * np.abs(maps).max(axis=(1, 2), keepdims=True)
    return np.where(varies, (maps - low) / np.where(varies, span, 1.0), 0.0).astype(np.float32)


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) maps resized to (N, H, W) with bilinear interpolation (OpenCV).

    Example:
        >>> resize_maps(np.zeros((2, 3, 3)), (12, 12)).shape
        (2, 12, 12)
    """
    height, width = size
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == (height, width):
        return maps
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])


def is_flat(maps: np.ndarray) -> np.ndarray | bool:
    """Whether each map of an (N, H, W) stack (or one (H, W) map) is flat: one value, no ranking of pixels and
    no peak.

    Example:
        >>> is_flat(np.array([[[0.0, 0.0]], [[0.0, 1.0]]])).tolist(), is_flat(np.zeros((2, 2)))
        ([True, False], True)
    """
    maps = np.asarray(maps)
    if maps.ndim == 2:
        return bool(np.ptp(maps) == 0)
    return np.ptp(maps.reshape(len(maps), -1), axis=1) == 0


def peak(single_map: np.ndarray) -> tuple[int, int]:
    """(row, column) of a map's largest value (the first one, when tied).

    Example:
        >>> peak(np.array([[0, 1], [3, 2]]))
        (1, 0)
    """
    row, column = np.unravel_index(int(np.argmax(single_map)), np.shape(single_map))
    return int(row), int(column)
