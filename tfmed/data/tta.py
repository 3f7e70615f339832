"""Test-time augmentation: the fixed views each image is scored in (see :class:`~tfmed.config.TTAConfig`).

:func:`build_views` turns a ``tta`` config into named deterministic transforms,
the image itself first. The pipeline applies one view where training
augmentation would go (after resizing, before channel conversion and
normalisers); :meth:`~tfmed.data.pipeline.ImageInputs.views` gives one input
per view and :func:`~tfmed.modes.base.average_over_views` averages the scores.

Example:
    >>> from tfmed.config import TTAConfig
    >>> views = build_views(TTAConfig(enabled=True), 64)
    >>> [name for name, _ in views]  # doctest: +NORMALIZE_WHITESPACE
    ['identity', 'shift_left', 'shift_right', 'shift_up', 'shift_down', 'rotate_+5', 'rotate_-5', 'zoom',
     'gamma_0.8', 'gamma_1.25']
    >>> views[1][1], views[7][1]
    (Shift(dx=-3, dy=0), CentralZoom(keep_fraction=0.9))
"""
from __future__ import annotations

from tfmed.config import TTAConfig
from tfmed.data.transforms import CentralZoom, Compose, Flip, Gamma, Rot90, Rotate, Shift, Transform


def build_views(config: TTAConfig | None, image_size: int) -> list[tuple[str, Transform]]:
    """``(name, transform)`` per test-time view of ``image_size`` images; just the identity when TTA is off.

    Order: identity, shifts by ``round(shift * image_size)`` pixels (left, right,
    up, down), rotations by +/- ``rotation_degrees``, the central zoom, one
    gamma curve per ``gamma``, the horizontal and vertical flips, then (``dihedral``)
    the quarter turns and each turn after a left-right flip. There are
    ``config.view_count()`` of them.

    Example:
        >>> [name for name, _ in build_views(None, 32)]
        ['identity']
        >>> [name for name, _ in build_views(TTAConfig(enabled=True, shift=0, rotation_degrees=2.5, zoom=0,
        ...                                            gamma=[], hflip=True), 32)]
        ['identity', 'rotate_+2.5', 'rotate_-2.5', 'hflip']
        >>> [name for name, _ in build_views(TTAConfig(enabled=True, shift=0, rotation_degrees=0, zoom=0,
        ...                                            gamma=[], dihedral=True), 32)]  # doctest: +NORMALIZE_WHITESPACE
        ['identity', 'turn_90', 'turn_180', 'turn_270', 'hflip', 'hflip_turn_90', 'hflip_turn_180',
         'hflip_turn_270']
    """
    views: list[tuple[str, Transform]] = [("identity", Compose([]))]
    if config is None or not config.enabled:
        return views
    if config.shift > 0:
        pixels = config.shift_pixels(image_size)
        views += [("shift_left", Shift(dx=-pixels, dy=0)), ("shift_right", Shift(dx=pixels, dy=0)),
                  ("shift_up", Shift(dx=0, dy=-pixels)), ("shift_down", Shift(dx=0, dy=pixels))]
    if config.rotation_degrees > 0:
        degrees = float(config.rotation_degrees)
        views += [(f"rotate_{sign * degrees:+g}", Rotate(sign * degrees)) for sign in (1, -1)]
    if config.zoom > 0:
        views.append(("zoom", CentralZoom(1.0 - config.zoom)))
    views += [(f"gamma_{float(gamma):g}", Gamma(gamma)) for gamma in config.gamma]
    if config.hflip:
        views.append(("hflip", Flip(horizontal=True)))
    if config.vflip:
        views.append(("vflip", Flip(vertical=True)))
    if config.dihedral:
        flip = Flip(horizontal=True)
        views += [(f"turn_{90 * turns}", Rot90(turns)) for turns in (1, 2, 3)] + [("hflip", flip)]
        views += [(f"hflip_turn_{90 * turns}", Compose([flip, Rot90(turns)])) for turns in (1, 2, 3)]
    return views
