"""A Keras callback that saves explanation overlays of a fixed batch every few epochs.

Example:
    >>> import numpy as np
    >>> callback = ExplainEveryEpoch(np.zeros((4, 32, 32, 3)), "runs/maps", method="gradcam")
    >>> callback.method, callback.every
    ('gradcam', 1)
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tfmed.explain.methods import checked_method, explain
from tfmed.explain.overlay import save_overlays
from tfmed.explain.target import ExplainError, as_images


class ExplainEveryEpoch(keras.callbacks.Callback):
    """Save ``epoch_NNN.png``, a grid of ``method``'s maps over ``images``, after every ``every`` epochs
    (``epoch_NNN_fitK.png`` when the K-th ``fit`` with this callback counts its epochs from 1 again).

    Watching the maps of one validation batch change during fine-tuning shows
    whether the network moves towards the findings or towards shortcuts (text,
    markers, borders). ``paths`` lists the PNGs written.

    Args:
        images: (N, H, W, C) inputs prepared as the model expects them (0-255 for tfmed backbones).
        output_dir: where the PNGs are written (created); one that holds maps of an earlier fit is refused.
        method: a name from :data:`tfmed.explain.METHODS`.
        index: the class/label explained (see :class:`tfmed.explain.ExplainTarget`).
        layer: Grad-CAM's target layer (default: the backbone's last stage).
        every: save after epochs every, 2 * every, ...

    Example:
        >>> model.fit(train_ds, epochs=5, callbacks=[ExplainEveryEpoch(val_images[:8], "runs/maps")])  # doctest: +SKIP
    """

    def __init__(self, images, output_dir: str | Path, method: str = "gradcam", index=None,
                 layer: str | None = None, every: int = 1):
        super().__init__()
        checked_method(method, layer)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ExplainError(f"every must be a positive number of epochs, got {every!r}")
        self.images = as_images(images)
        self.output_dir = Path(output_dir)
        earlier = sorted(self.output_dir.glob("epoch_*.png"))
        if earlier:
            raise ExplainError(f"{self.output_dir} already holds maps of an earlier fit ({earlier[0].name}, ...); "
                               "give a new output_dir, so that they are not overwritten")
        self.method, self.index, self.layer, self.every = method, index, layer, every
        self.paths: list[Path] = []
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        maps = explain(self.model, self.images, self.method, index=self.index, layer=self.layer)
        probabilities = np.asarray(self.model.predict(self.images, verbose=0))
        items = [(image, explanation, f"epoch {epoch + 1}, output {np.round(p, 3).tolist()}")
                 for image, explanation, p in zip(self.images, maps, probabilities)]
        path = self.output_dir / f"epoch_{epoch + 1:03d}.png"
        if path.exists():  # a later fit with this callback that counts its epochs from 1 again
            path = path.with_name(f"{path.stem}_fit{self.fits}.png")
        self.paths.append(save_overlays(path, items))
