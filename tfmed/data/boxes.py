"""Bounding boxes of findings (e.g. RSNA's lung opacities), kept with their image for checking explanations.

A table's optional ``boxes`` column holds, per image, its boxes as text:
``x,y,width,height`` in pixels of the stored image (x from its left column, y
from its top row), several separated by ``;``, empty when the image has none.
A box may name the class or label it marks, ``LABEL:x,y,width,height``
(``Cardiomegaly:691,1375,962,456``): a map that explains that label is measured
against its boxes only, while a box without a name marks the image's finding
whatever the map explains. :func:`box_mask` turns boxes into a mask of the
image, which :mod:`tfmed.explain.localisation` compares with a saliency map.

Example:
    >>> boxes = parse_boxes("264,152,213,379; 562,152,256,453")
    >>> boxes[0], format_boxes(boxes)
    ((264.0, 152.0, 213.0, 379.0), '264,152,213,379;562,152,256,453')
    >>> parse_boxes("Cardiomegaly:1,2,3,4;Nodule/Mass:5,6,7,8", label="Nodule/Mass")
    [(5.0, 6.0, 7.0, 8.0)]
    >>> int(box_mask(parse_boxes("1,2,3,4"), height=8, width=8).sum())
    12
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd

BOXES_COLUMN = "boxes"
BOX_FORMAT = ("x,y,width,height in pixels of the image, several separated by ';', each optionally after the label "
              "it marks and ':' (e.g. 264,152,213,379 or Cardiomegaly:691,1375,962,456)")

Box = tuple[float, float, float, float]


def parse_labelled_boxes(text) -> list[tuple[str | None, Box]]:
    """The boxes of one image from their text, each with the label it names (None: no label); empty text, None
    or NA: none.

    Raises:
        ValueError: a box is not four numbers, has no area or names an empty label; the message names the box
            (the format to write is :data:`BOX_FORMAT`).

    Example:
        >>> parse_labelled_boxes("Edema:1,2,3,4;5,6,7,8")
        [('Edema', (1.0, 2.0, 3.0, 4.0)), (None, (5.0, 6.0, 7.0, 8.0))]
    """
    if text is None or (not isinstance(text, str) and pd.isna(text)) or not str(text).strip():
        return []
    boxes = []
    for part in str(text).split(";"):
        label, colon, numbers = part.rpartition(":")
        if colon and not label.strip():
            raise ValueError(f"box {part.strip()!r} names an empty label before ':'")
        try:
            values = tuple(float(v) for v in numbers.split(","))
        except ValueError:
            values = ()
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"box {part.strip()!r} is not four numbers")
        if values[2] <= 0 or values[3] <= 0:
            raise ValueError(f"box {part.strip()!r} has no area (width and height must be > 0)")
        boxes.append((label.strip() if colon else None, values))
    return boxes


def parse_boxes(text, label: str | None = None, unlabelled: bool = True) -> list[Box]:
    """The boxes of one image from their text: all of them, or with ``label`` those that name it and (unless
    ``unlabelled`` is False) those that name none.

    Raises:
        ValueError: as :func:`parse_labelled_boxes`.

    Example:
        >>> parse_boxes("")
        []
        >>> parse_boxes("Edema:1,2,3,4;5,6,7,8", label="Mass")
        [(5.0, 6.0, 7.0, 8.0)]
    """
    return [box for named, box in parse_labelled_boxes(text)
            if label is None or named == label or (named is None and unlabelled)]


def format_boxes(boxes, labels=None) -> str:
    """The text of a list of boxes (numbers without a trailing .0), each after its label when ``labels`` (one
    per box, None for none) are given.

    Example:
        >>> format_boxes([(1.0, 2.5, 3.0, 4.0)])
        '1,2.5,3,4'
        >>> format_boxes([(1, 2, 3, 4), (5, 6, 7, 8)], labels=["Edema", None])
        'Edema:1,2,3,4;5,6,7,8'
    """
    labels = [None] * len(boxes) if labels is None else list(labels)
    return ";".join(("" if label is None else f"{label}:") + ",".join(f"{v:g}" for v in box)
                    for label, box in zip(labels, boxes))


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


def box_from_corners(corners) -> Box:
    """(x, y, width, height) from a publisher's corners x_min, y_min, x_max, y_max (texts or numbers).

    Raises:
        ValueError: "has corners ..., not four numbers" or "has no area (...)", for the caller to prefix
            with the box's place.

    Example:
        >>> box_from_corners(["10", "20", "40", "25.5"])
        (10.0, 20.0, 30.0, 5.5)
    """
    try:
        x_min, y_min, x_max, y_max = (float(value) for value in corners)
    except (TypeError, ValueError):
        shown = ", ".join("(empty)" if value in ("", None) else str(value) for value in corners)
        raise ValueError(f"has corners {shown}, not four numbers") from None
    if x_max <= x_min or y_max <= y_min:
        raise ValueError(f"has no area (x {x_min:g}-{x_max:g}, y {y_min:g}-{y_max:g})")
    return x_min, y_min, x_max - x_min, y_max - y_min


def mask_boxes(mask: np.ndarray) -> list[Box]:
    """A box around each connected region (8-connected) of a boolean mask, top to bottom, left to right.

    Example:
        >>> mask = np.zeros((6, 8), bool); mask[1:3, 1:4] = True; mask[4, 6] = True
        >>> mask_boxes(mask)
        [(1.0, 1.0, 3.0, 2.0), (6.0, 4.0, 1.0, 1.0)]
    """
    count, _, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    boxes = [tuple(float(v) for v in stats[k, :4]) for k in range(1, count)]  # 0 is the background
    return sorted(boxes, key=lambda box: (box[1], box[0]))
