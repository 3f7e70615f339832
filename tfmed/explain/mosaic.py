"""Explaining a model of several 2-D views of a volume: its views laid out as one 2-D mosaic.

A 2.5-D model takes (V, S, S, C) per case: V planes through a volume or a
lesion. Every explanation method, the overlays and the faithfulness checks work
on 2-D images, so a case is shown to them as a mosaic: the views in a grid of
``rows`` x ``columns`` cells of S x S pixels, row by row (empty cells stay 0).
:func:`mosaic_model` puts :class:`MosaicToViews` in front of the view model, so
the model that is explained reads the mosaic and gives the same scores as the
view model on the views. Gradients, occlusion patches and deletion curves then
fall on the pixels of each view, and Grad-CAM's per-view feature maps are laid
out in the same grid (:func:`tile_maps`). A map's peak names its view with
:meth:`ViewGrid.locate`.

Example:
    >>> import numpy as np
    >>> grid = ViewGrid.for_views(9, 4)
    >>> (grid.rows, grid.columns), to_mosaic(np.zeros((2, 9, 4, 4, 3)), grid).shape
    ((3, 3), (2, 12, 12, 3))
    >>> grid.locate((5, 9))   # view 6 (row 2, column 3 of the grid), pixel (1, 1) in it
    (6, 1, 1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from tfmed.explain.maps import resize_maps


@dataclass(frozen=True)
class ViewGrid:
    """How V views of S x S pixels are laid out in a mosaic."""

    views: int
    size: int
    rows: int
    columns: int

    @classmethod
    def for_views(cls, views: int, size: int) -> "ViewGrid":
        """The most nearly square grid with rows <= columns: 9 views 3 x 3, 3 views 1 x 3.

        Example:
            >>> ViewGrid.for_views(3, 64)
            ViewGrid(views=3, size=64, rows=1, columns=3)
        """
        rows = max(1, math.isqrt(views))
        return cls(int(views), int(size), rows, math.ceil(views / rows))

    def locate(self, pixel: tuple[int, int]) -> tuple[int, int, int]:
        """(view number from 1, row, column inside that view) of a mosaic pixel."""
        row, column = pixel
        view = (row // self.size) * self.columns + column // self.size + 1
        return int(view), int(row % self.size), int(column % self.size)


def to_mosaic(views: np.ndarray, grid: ViewGrid) -> np.ndarray:
    """(N, V, S, S, C) views -> (N, rows * S, columns * S, C) mosaics.

    Example:
        >>> to_mosaic(np.arange(4.0).reshape(1, 4, 1, 1, 1), ViewGrid.for_views(4, 1))[0, :, :, 0].tolist()
        [[0.0, 1.0], [2.0, 3.0]]
    """
    views = np.asarray(views)
    count, _, size, _, channels = views.shape
    cells = np.zeros((count, grid.rows * grid.columns, size, size, channels), views.dtype)
    cells[:, :grid.views] = views
    cells = cells.reshape(count, grid.rows, grid.columns, size, size, channels).transpose(0, 1, 3, 2, 4, 5)
    return cells.reshape(count, grid.rows * size, grid.columns * size, channels)


def tile_maps(maps: np.ndarray, grid: ViewGrid) -> np.ndarray:
    """(N * V, h, w) per-view maps (Grad-CAM's, view by view) -> (N, rows * S, columns * S) mosaic maps.

    Example:
        >>> tile_maps(np.ones((2, 2, 2)), ViewGrid.for_views(2, 4)).shape
        (1, 4, 8)
    """
    views = resize_maps(maps, (grid.size, grid.size)).reshape(-1, grid.views, grid.size, grid.size, 1)
    return to_mosaic(views, grid)[..., 0]


@keras.saving.register_keras_serializable(package="tfmed")
class MosaicToViews(keras.layers.Layer):
    """(B, rows * S, columns * S, C) mosaics -> (B, V, S, S, C) views, the inverse of :func:`to_mosaic`."""

    def __init__(self, views: int, size: int, rows: int, columns: int, **kwargs):
        super().__init__(**kwargs)
        self.grid = ViewGrid(int(views), int(size), int(rows), int(columns))

    def call(self, inputs):
        grid = self.grid
        channels = ops.shape(inputs)[-1]
        cells = ops.reshape(inputs, (-1, grid.rows, grid.size, grid.columns, grid.size, channels))
        cells = ops.transpose(cells, (0, 1, 3, 2, 4, 5))
        cells = ops.reshape(cells, (-1, grid.rows * grid.columns, grid.size, grid.size, channels))
        return cells[:, :grid.views]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.grid.views, self.grid.size, self.grid.size, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(views=self.grid.views, size=self.grid.size, rows=self.grid.rows,
                      columns=self.grid.columns)
        return config


def mosaic_model(model: keras.Model) -> tuple[keras.Model, ViewGrid]:
    """A model that reads mosaics and scores them as ``model`` (a plain chain of layers taking
    (V, S, S, C) views) scores the views, and its grid.

    The view model's layers are called again on the mosaic's views (their weights shared), so a
    backbone nested in it stays a layer of the new model, where Grad-CAM finds its target layer.

    Example:
        >>> inputs = keras.Input((3, 4, 4, 1))
        >>> views = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(inputs)), name="m")
        >>> mosaic, grid = mosaic_model(views)
        >>> mosaic.input_shape, (grid.rows, grid.columns)
        ((None, 4, 12, 1), (1, 3))
    """
    views, size, _, channels = (int(d) for d in model.inputs[0].shape[1:])
    grid = ViewGrid.for_views(views, size)
    inputs = keras.Input((grid.rows * size, grid.columns * size, channels), name="mosaic")
    x = MosaicToViews(views, size, grid.rows, grid.columns, name="mosaic_to_views")(inputs)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.InputLayer):
            x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_mosaic"), grid
