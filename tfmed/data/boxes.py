"""Bounding boxes of findings (e.g. RSNA's lung opacities), kept with their image for checking explanations.

A table's optional ``boxes`` column holds, per image, its boxes as text:
``x,y,width,height`` in pixels of the stored image (x from its left column, y
from its top row), several separated by ``;``, empty when the image has none.
:func:`box_mask` turns them into a mask of the image, which
:mod:`tfmed.explain.localisation` compares with a saliency map.

Example:
    >>> boxes = parse_boxes("264,152,213,379; 562,152,256,453")
    >>> boxes[0], format_boxes(boxes)
    ((264.0, 152.0, 213.0, 379.0), '264,152,213,379;562,152,256,453')
    >>> int(box_mask(parse_boxes("1,2,3,4"), height=8, width=8).sum())
    12
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

BOXES_COLUMN = "boxes"
BOX_FORMAT = "x,y,width,height in pixels of the image, several separated by ';' (e.g. 264,152,213,379)"


def parse_boxes(text) -> list[tuple[float, float, float, float]]:
    """The boxes of one image from their text (empty text, None or NA: none).

    Raises:
        ValueError: a box is not four numbers or has no area; the message names the box
            (the format to write is :data:`BOX_FORMAT`).

    Example:
        >>> parse_boxes("")
        []
    """
    if text is None or (not isinstance(text, str) and pd.isna(text)) or not str(text).strip():
        return []
    boxes = []
    for part in str(text).split(";"):
        try:
            values = tuple(float(v) for v in part.split(","))
        except ValueError:
            values = ()
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"box {part.strip()!r} is not four numbers")
        if values[2] <= 0 or values[3] <= 0:
            raise ValueError(f"box {part.strip()!r} has no area (width and height must be > 0)")
        boxes.append(values)
    return boxes


def format_boxes(boxes) -> str:
    """The text of a list of boxes (numbers without a trailing .0).

    Example:
        >>> format_boxes([(1.0, 2.5, 3.0, 4.0)])
        '1,2.5,3,4'
    """
    return ";".join(",".join(f"{v:g}" for v in box) for box in boxes)


def box_mask(boxes, height: int, width: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixels whose centres lie inside any of ``boxes``.

    Example:
        >>> box_mask([(0, 0, 2, 1)], height=2, width=3).astype(int).tolist()
        [[1, 1, 0], [0, 0, 0]]
    """
    rows = np.arange(height)[:, None] + 0.5
    columns = np.arange(width)[None, :] + 0.5
    mask = np.zeros((height, width), bool)
    for x, y, w, h in boxes:
        mask |= (columns >= x) & (columns < x + w) & (rows >= y) & (rows < y + h)
    return mask
