"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the class probability drops when a patch is hidden.

A square patch slides over the image with a stride; each position is filled
with the image's mean value and scored. A pixel's value is the mean drop in
probability over the patches that cover it (the positive part). Only forward
passes are needed, so it works for any model, the SVM's included.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 1))
    >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(keras.layers.Flatten()(inputs)))
    >>> occlusion(model, np.ones((2, 8, 8, 1)), patch=4).shape
    (2, 8, 8)
"""
from __future__ import annotations

import numpy as np

from tfmed.explain.maps import normalise
from tfmed.explain.target import ExplainError, prepare, repeat_index


def occlusion(model, images, *, index=None, patch: int | None = None, stride: int | None = None,
              batch_size: int = 64) -> np.ndarray:
    """Occlusion maps (N, H, W) in [0, 1]; ``patch`` defaults to 1/8 of the image side, ``stride`` to half a patch.

    Example:
        >>> occlusion(svm, images, index=1).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    target, images, index = prepare(model, images, index)
    _, height, width, _ = images.shape
    patch = int(patch or max(2, min(height, width) // 8))
    stride = int(stride or max(1, patch // 2))
    if not 1 <= patch <= min(height, width) or stride < 1:
        raise ExplainError(f"occlusion needs 1 <= patch <= {min(height, width)} and stride >= 1, "
                           f"got patch={patch}, stride={stride}")
    rows = list(range(0, max(height - patch, 0) + 1, stride))
    columns = list(range(0, max(width - patch, 0) + 1, stride))
    if rows[-1] + patch < height:
        rows.append(height - patch)
    if columns[-1] + patch < width:
        columns.append(width - patch)
    positions = [(r, c) for r in rows for c in columns]
    maps = []
    for i, image in enumerate(images):
        base = target.predict(image[None], index=repeat_index(index, i, 1))[0]
        fill = image.mean(axis=(0, 1))
        occluded = np.repeat(image[None], len(positions), axis=0)
        for k, (r, c) in enumerate(positions):
            occluded[k, r:r + patch, c:c + patch] = fill
        drops = base - target.predict(occluded, index=repeat_index(index, i, len(positions)),
                                      batch_size=batch_size)
        total = np.zeros((height, width))
        covered = np.zeros((height, width))
        for drop, (r, c) in zip(drops, positions):
            total[r:r + patch, c:c + patch] += drop
            covered[r:r + patch, c:c + patch] += 1
        maps.append(np.maximum(total / np.maximum(covered, 1), 0.0))
    return normalise(np.stack(maps))
