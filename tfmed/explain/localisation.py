"""Do the maps point at the finding? Saliency maps against expert boxes (pointing game, energy in the boxes).

For each image with boxes (:mod:`tfmed.data.boxes`), its mask is put through
the same resize as the image the model saw, then compared with the map:

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


def localisation(maps: np.ndarray, masks: np.ndarray) -> list[dict]:
    """Per image: ``peak_in_box``, ``energy_in_boxes`` and ``box_fraction`` (None for every figure where the
    image has no box; energy None where the map is all zero).

    Example:
        >>> localisation(np.ones((1, 2, 2)), np.zeros((1, 2, 2), bool))
        [{'peak_in_box': None, 'energy_in_boxes': None, 'box_fraction': None}]
    """
    rows = []
    for image_map, mask in zip(np.asarray(maps, float), np.asarray(masks, bool)):
        if not mask.any():
            rows.append({"peak_in_box": None, "energy_in_boxes": None, "box_fraction": None})
            continue
        total = float(image_map.sum())
        peak = np.unravel_index(int(np.argmax(image_map)), image_map.shape)
        rows.append({"peak_in_box": bool(mask[peak]),
                     "energy_in_boxes": float(image_map[mask].sum() / total) if total > 0 else None,
                     "box_fraction": float(mask.mean())})
    return rows


def summary(per_image: list[dict]) -> dict:
    """Means over the images with boxes: the pointing game's hit rate, energy in the boxes and its chance level.

    Example:
        >>> summary([{"peak_in_box": None, "energy_in_boxes": None, "box_fraction": None}])
        {'images_with_boxes': 0, 'pointing_game': None, 'energy_in_boxes': None, 'box_fraction': None}
    """
    boxed = [row for row in per_image if row["box_fraction"] is not None]
    energies = [row["energy_in_boxes"] for row in boxed if row["energy_in_boxes"] is not None]

    def mean(values):
        return float(np.mean(values)) if values else None

    return {"images_with_boxes": len(boxed), "pointing_game": mean([float(row["peak_in_box"]) for row in boxed]),
            "energy_in_boxes": mean(energies), "box_fraction": mean([row["box_fraction"] for row in boxed])}
