"""Overlays: an image in grey with a colour map of the explanation over it, saved as PNG.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "overlay.png"
    >>> save_overlay(path, np.zeros((16, 16, 1)), np.eye(16), "score 0.91").is_file()
    True
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfmed.explain.maps import normalise

ALPHA = 0.45
COLOUR_MAP = "jet"


def display_image(image: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) model input as an (H, W) grey picture in [0, 1] (channel mean, min-max).

    Example:
        >>> display_image(np.array([[0.0, 50.0], [100.0, 200.0]])).tolist()
        [[0.0, 0.25], [0.5, 1.0]]
    """
    grey = np.asarray(image, np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=-1)
    return normalise(grey[None])[0]


def overlay_figure(items: Sequence[tuple[np.ndarray, np.ndarray, str]], columns: int = 4,
                   panel_inches: float = 2.6) -> Figure:
    """A figure with one panel per (image, map, title), the map drawn over the grey image.

    Example:
        >>> overlay_figure([(np.zeros((8, 8)), np.eye(8), "a")]).axes[0].get_title()
        'a'
    """
    count = len(items)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = Figure(figsize=(panel_inches * columns, (panel_inches + 0.8) * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for k, (image, explanation, title) in enumerate(items):
        axes = figure.add_subplot(rows, columns, k + 1)
        axes.imshow(display_image(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes.imshow(np.asarray(explanation), cmap=COLOUR_MAP, vmin=0, vmax=1, alpha=ALPHA, interpolation="bilinear")
        axes.set_title(title, fontsize=7)
        axes.set_axis_off()
    return figure


def save_overlay(path: str | Path, image: np.ndarray, explanation: np.ndarray, title: str) -> Path:
    """One overlay PNG of ``image`` with ``explanation`` (H, W) over it and ``title`` above."""
    return save_overlays(path, [(image, explanation, title)], columns=1)


def save_overlays(path: str | Path, items: Sequence[tuple[np.ndarray, np.ndarray, str]], columns: int = 4) -> Path:
    """A grid of overlays (see :func:`overlay_figure`) saved as one PNG.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "grid.png"
        >>> save_overlays(out, [(np.zeros((8, 8)), np.eye(8), "a")] * 3).is_file()
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_figure(items, columns).savefig(path, dpi=110)
    return path
