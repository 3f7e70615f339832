"""Keras layers that let one backbone read several 2-D views of a volume per example.

A batch of views (B, V, H, W, C) is folded into (B * V, H, W, C) by
:class:`FoldViews`, goes through the shared backbone and its global pooling as
ordinary images, and :class:`PoolViews` combines each example's V feature
vectors into one (mean or max). Both are registered, so a model using them
saves and loads with ``safe_mode=True``.

Example:
    >>> import numpy as np
    >>> folded = FoldViews()(np.zeros((2, 3, 4, 4, 1), "float32"))
    >>> tuple(folded.shape)
    (6, 4, 4, 1)
    >>> pooled = PoolViews(3, "max")(np.arange(12, dtype="float32").reshape(6, 2))
    >>> pooled.numpy().tolist()
    [[4.0, 5.0], [10.0, 11.0]]
"""
from __future__ import annotations

import keras
from keras import ops

VIEW_POOLING = ("mean", "max")


@keras.saving.register_keras_serializable(package="tfmed")
class FoldViews(keras.layers.Layer):
    """(B, V, H, W, C) -> (B * V, H, W, C): every view becomes one image of the batch.

    Example:
        >>> import numpy as np
        >>> tuple(FoldViews()(np.zeros((1, 9, 8, 8, 3), "float32")).shape)
        (9, 8, 8, 3)
    """

    def call(self, inputs):
        shape = ops.shape(inputs)
        return ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))

    def compute_output_shape(self, input_shape):
        batch, views = input_shape[0], input_shape[1]
        folded = None if batch is None or views is None else batch * views
        return (folded,) + tuple(input_shape[2:])


@keras.saving.register_keras_serializable(package="tfmed")
class PoolViews(keras.layers.Layer):
    """(B * V, F) -> (B, F): the mean or the maximum of each example's ``views`` feature vectors.

    Example:
        >>> import numpy as np
        >>> PoolViews(2, "mean")(np.array([[1.0], [3.0]], "float32")).numpy().tolist()
        [[2.0]]
    """

    def __init__(self, views: int, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in VIEW_POOLING:
            raise ValueError(f"view pooling is {mode!r}; allowed: {', '.join(VIEW_POOLING)}")
        if int(views) < 1:
            raise ValueError(f"views is {views!r}; it must be at least 1")
        self.views = int(views)
        self.mode = mode

    def call(self, inputs):
        grouped = ops.reshape(inputs, (-1, self.views, ops.shape(inputs)[-1]))
        return ops.mean(grouped, axis=1) if self.mode == "mean" else ops.max(grouped, axis=1)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.views, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(views=self.views, mode=self.mode)
        return config
