"""Do the maps point at the finding? Saliency maps against expert boxes (pointing game, energy in the boxes).

For each image with boxes (:mod:`tfmed.data.boxes`), its mask is put through
the same resize as the image the model saw (:func:`box_localisation`), then
compared with the map:

* ``peak_in_box``: the map's highest pixel lies in a box (the pointing game,
  Zhang et al. 2018);
* ``energy_in_boxes``: the share of the map's total inside the boxes
  (proportional energy);
* ``box_fraction``: the share of the image the boxes cover, which is what a
  map spread evenly would reach, so energy is judged against it.

Example:
    >>> maps = np.zeros((1, 4, 4)); maps[0, 0, 0] = 1.0
    >>> masks = np.zeros((1, 4, 4), bool); masks[0, :2, :2] = True
    >>> per_image = localisation(maps, masks)
    >>> per_image[0]
    {'peak_in_box': True, 'energy_in_boxes': 1.0, 'box_fraction': 0.25}
    >>> summary(per_image)["pointing_game"]
    1.0
"""
from __future__ import annotations

import numpy as np

from tfmed.data.boxes import BOXES_COLUMN, box_mask, parse_boxes
from tfmed.data.decode import image_info
from tfmed.explain.maps import is_flat


def localisation(maps: np.ndarray, masks: np.ndarray) -> list[dict]:
    """Per image: ``peak_in_box``, ``energy_in_boxes`` and ``box_fraction`` (None for every figure where the
    image has no box; the peak and the energy None where the map is flat: it points nowhere).

    Example:
        >>> localisation(np.ones((1, 2, 2)), np.zeros((1, 2, 2), bool))
        [{'peak_in_box': None, 'energy_in_boxes': None, 'box_fraction': None}]
    """
    rows = []
    for image_map, mask in zip(np.asarray(maps, float), np.asarray(masks, bool)):
        if not mask.any():
            rows.append({"peak_in_box": None, "energy_in_boxes": None, "box_fraction": None})
            continue
        if is_flat(image_map):  # its "peak" would be the first pixel, a hit wherever a box covers it
            rows.append({"peak_in_box": None, "energy_in_boxes": None, "box_fraction": float(mask.mean())})
            continue
        total = float(image_map.sum())
        peak = np.unravel_index(int(np.argmax(image_map)), image_map.shape)
        rows.append({"peak_in_box": bool(mask[peak]),
                     "energy_in_boxes": float(image_map[mask].sum() / total) if total > 0 else None,
                     "box_fraction": float(mask.mean())})
    return rows


def summary(per_image: list[dict]) -> dict:
    """Means over the images with boxes: the pointing game's hit rate and the energy in the boxes (over the maps
    that are not flat), and the energy's chance level.

    Example:
        >>> summary([{"peak_in_box": None, "energy_in_boxes": None, "box_fraction": None}])
        {'images_with_boxes': 0, 'pointing_game': None, 'energy_in_boxes': None, 'box_fraction': None}
    """
    boxed = [row for row in per_image if row["box_fraction"] is not None]
    energies = [row["energy_in_boxes"] for row in boxed if row["energy_in_boxes"] is not None]

    def mean(values):
        return float(np.mean(values)) if values else None

    hits = [float(row["peak_in_box"]) for row in boxed if row["peak_in_box"] is not None]
    return {"images_with_boxes": len(boxed), "pointing_game": mean(hits),
            "energy_in_boxes": mean(energies), "box_fraction": mean([row["box_fraction"] for row in boxed])}


def box_localisation(table, maps: np.ndarray, resize: str, explained: list[str] | None = None) -> list[dict] | None:
    """Each map of ``table``'s images (an :class:`~tfmed.data.table.ImageTable`) against the image's boxes
    (:func:`localisation`), the boxes resized as the image was (``preprocess.resize``); None when no row
    has boxes. With ``explained`` (the class or label each map explains) a box that names a label counts
    only for the map of that label (see :mod:`tfmed.data.boxes`), and in a binary or multiclass table a box that
    names none marks the finding of its image's own class: a map of another class (e.g. a missed case's) is not
    scored against it.

    Example:
        >>> box_localisation(table, result.maps, "plain")[0]  # doctest: +SKIP
        {'peak_in_box': True, 'energy_in_boxes': 0.62, 'box_fraction': 0.21}
    """
    import tensorflow as tf

    from tfmed.data.transforms.spatial import Resize

    if BOXES_COLUMN not in table.frame.columns:
        return None
    texts = table.frame[BOXES_COLUMN].tolist()
    # a box that names no class marks its image's own class (multilabel: any of the image's labels)
    own = [str(table.classes[label]) for label in table.labels()] if table.task != "multilabel" else None
    boxes = [parse_boxes(text, None if explained is None else explained[i],
                         unlabelled=own is None or explained is None or str(explained[i]) == own[i])
             for i, text in enumerate(texts)]
    if not any(boxes):
        return None
    size = maps.shape[1:]
    masks = np.zeros((len(boxes),) + size, bool)
    for i, (path, image_boxes) in enumerate(zip(table.frame["image"].astype(str), boxes)):
        if image_boxes:
            info = image_info(path, max_pixels=None)
            for box in image_boxes:  # one by one: a box smaller than a map pixel keeps the pixel it lies in
                full = box_mask([box], info.height, info.width).astype(np.float32)[..., None]
                covered = np.asarray(Resize(size[0], mode=resize)(tf.constant(full)))[..., 0]
                masks[i] |= covered > 0.5 if (covered > 0.5).any() else (covered >= covered.max()) & (covered > 0)
    return localisation(maps, masks)
