"""2.5-D views of a CT/MR volume: 2-D planes through a point, sampled for 2-D ImageNet networks.

Ciompi et al. (2015) classified lung nodules by passing planes through each
nodule to a CNN pre-trained on ImageNet; this module cuts such planes out of a
:class:`~tfmed.data.volumes.Volume` (patient coordinates are DICOM's LPS, in
mm: +x toward the patient's left, +y posterior, +z toward the head).

A view is a square of ``size`` x ``size`` pixels, ``spacing_mm`` apart, in the
plane through ``center_mm`` spanned by two orthonormal LPS vectors: ``u``, the
direction in which the view's columns grow (left to right on screen), and
``v``, the direction in which its rows grow (top to bottom). Pixel ``(r, c)``
lies at ``center + (c - (size - 1) / 2) * spacing_mm * u + (r - (size - 1) / 2)
* spacing_mm * v``, so for an odd size the middle pixel is the centre itself.

The plane sets (:data:`PLANE_SETS`; s = 1/sqrt(2); "top" is where v points away from):

==============  ==========  ==========  ===============================================
view            u           v           on screen
==============  ==========  ==========  ===============================================
axial           +x          +y          patient's right on the left, anterior at the top
coronal         +x          -z          patient's right on the left, head at the top
sagittal        +y          -z          anterior on the left, head at the top
diagonal_z_x+y  s(+x +y)    -z          holds z; right-anterior on the left, head at top
diagonal_z_x-y  s(+x -y)    -z          holds z; right-posterior on the left, head at top
diagonal_x_y+z  +x          s(-y -z)    holds x; right on the left, posterior-head at top
diagonal_x_y-z  +x          s(+y -z)    holds x; right on the left, anterior-head at top
diagonal_y_x+z  +y          s(-x -z)    holds y; anterior on the left, left-head at top
diagonal_y_x-z  +y          s(+x -z)    holds y; anterior on the left, right-head at top
adjacent_axial  +x          +y          as axial; three slices as the three channels
==============  ==========  ==========  ===============================================

"orthogonal" gives the first three views, "ciompi9" the first nine (the
planes normal to an axis and the six that hold one axis and a diagonal of the
other two; no two share a normal), "adjacent" the last: one axial view whose
channels are the planes at centre - gap, centre and centre + gap along +z
(channel 0 toward the feet, 2 toward the head; by default the gap is the voxel
spacing along z, so the three are neighbouring slices).

Resampling: each view's pixels are sampled at the chosen isotropic spacing
straight from the original voxel grid by trilinear interpolation
(``scipy.ndimage.map_coordinates(order=1)``). This is resampling to an
isotropic grid restricted to the pixels a view needs, so a 512 x 512 x 300 CT
is never resampled as a whole. It works on the NumPy array of any volume,
whichever reader (pydicom, nibabel, SimpleITK) produced it.
Pixels outside the volume take ``fill``, by default the volume's minimum
(air for CT), computed at most once per call and only when a view reaches
past the volume's edge.

Example:
    >>> from tfmed.data.volumes import Volume
    >>> volume = Volume(np.zeros((9, 9, 9), np.float32), (1.0, 1.0, 1.0), np.zeros(3), np.eye(3))
    >>> extract_views(volume, volume_center(volume), "ciompi9", size=5, spacing_mm=1.0).shape
    (9, 5, 5, 1)
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from tfmed.data.volumes import Volume, VolumeError

PLANE_SETS = ("orthogonal", "ciompi9", "adjacent")


def _unit(x: float, y: float, z: float) -> np.ndarray:
    vector = np.array([x, y, z], float)
    return vector / np.linalg.norm(vector) + 0.0  # + 0.0 turns -0.0 into 0.0


_X, _Y, _Z, _DOWN = _unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1), _unit(0, 0, -1)
_ORTHOGONAL = (("axial", _X, _Y), ("coronal", _X, _DOWN), ("sagittal", _Y, _DOWN))
_DIAGONAL = (("diagonal_z_x+y", _unit(1, 1, 0), _DOWN), ("diagonal_z_x-y", _unit(1, -1, 0), _DOWN),
             ("diagonal_x_y+z", _X, _unit(0, -1, -1)), ("diagonal_x_y-z", _X, _unit(0, 1, -1)),
             ("diagonal_y_x+z", _Y, _unit(-1, 0, -1)), ("diagonal_y_x-z", _Y, _unit(1, 0, -1)))
_VOXEL_FIX = "voxel indices are 0-based (slice, row, column), in the canonical order `tfmed inspect` prints"


def plane_axes(planes: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, u, v) of each view of a plane set: u along which columns grow, v along which rows grow (LPS).

    Example:
        >>> [(name, u.tolist(), v.tolist()) for name, u, v in plane_axes("orthogonal")][1]
        ('coronal', [1.0, 0.0, 0.0], [0.0, 0.0, -1.0])
        >>> len(plane_axes("ciompi9")), [name for name, _, _ in plane_axes("adjacent")]
        (9, ['adjacent_axial'])
    """
    if planes == "orthogonal":
        chosen = _ORTHOGONAL
    elif planes == "ciompi9":
        chosen = _ORTHOGONAL + _DIAGONAL
    elif planes == "adjacent":
        chosen = (("adjacent_axial", _X, _Y),)
    else:
        raise ValueError(f"planes must be one of {', '.join(PLANE_SETS)}; got {planes!r}")
    return [(name, u.copy(), v.copy()) for name, u, v in chosen]


def rotate_about_z(u: np.ndarray, v: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """``u`` and ``v`` turned by ``degrees`` about the patient's z axis (right-handed in LPS: +x toward +y).

    Turning the axial view by +90 degrees makes its columns grow along +y and
    its rows along -x: the view's content turns 90 degrees counter-clockwise
    on screen (``np.rot90``), and the coronal view becomes the sagittal one.

    Example:
        >>> u, v = rotate_about_z(np.array([1.0, 0, 0]), np.array([0.0, 1, 0]), 90)
        >>> np.round(u, 6).tolist(), np.round(v, 6).tolist()
        ([0.0, 1.0, 0.0], [-1.0, 0.0, 0.0])
    """
    angle = math.radians(float(degrees))
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return rotation @ np.asarray(u, float), rotation @ np.asarray(v, float)


def sample_plane(volume: Volume, center_mm, u, v, size: int, spacing_mm: float, fill: float | None = None,
                 offset_mm=None) -> np.ndarray:
    """One view, float32 (size, size): the plane through ``center_mm + offset_mm`` spanned by ``u`` and ``v``.

    Values are interpolated trilinearly from the voxels; pixels outside the
    volume take ``fill``. Its default, the volume's minimum (air for CT), is
    only computed when a pixel falls outside; passing ``fill`` (e.g. -1024
    for CT) saves that scan of every voxel for views at the volume's edge.

    Example:
        >>> from tfmed.data.volumes import Volume
        >>> volume = Volume(np.arange(27, dtype=np.float32).reshape(3, 3, 3), (1, 1, 1), np.zeros(3), np.eye(3))
        >>> sample_plane(volume, [1.0, 1, 1], [0.0, 0, 1], [0.0, 1, 0], size=3, spacing_mm=0.5).tolist()
        [[11.0, 11.5, 12.0], [12.5, 13.0, 13.5], [14.0, 14.5, 15.0]]
    """
    size, spacing_mm = _check_size_spacing(size, spacing_mm)
    center = _point(center_mm, "center_mm")
    if offset_mm is not None:
        center = center + _point(offset_mm, "offset_mm")
    u, v = _point(u, "u"), _point(v, "v")
    if abs(np.linalg.norm(u) - 1) > 1e-6 or abs(np.linalg.norm(v) - 1) > 1e-6 or abs(u @ v) > 1e-6:
        raise ValueError(f"u and v must be orthonormal LPS vectors; got u={u.tolist()}, v={v.tolist()}")
    # One solve maps the centre and the two pixel steps to voxel indices; the grid is then linear.
    linear = np.asarray(volume.direction, float) * np.asarray(volume.spacing, float)
    start, step_u, step_v = np.linalg.solve(
        linear, np.column_stack([center - np.asarray(volume.origin, float), spacing_mm * u, spacing_mm * v])).T
    steps = np.arange(size, dtype=float) - (size - 1) / 2.0
    coords = (start[:, None, None] + step_u[:, None, None] * steps[None, None, :]
              + step_v[:, None, None] * steps[None, :, None])
    if fill is None:
        fill = _volume_minimum(volume)
    if callable(fill):  # the minimum is only needed when a pixel may fall outside (index < 0 or > n - 1)
        last = np.asarray(volume.shape, float)[:, None, None] - 1
        fill = fill() if np.any(coords < 1e-6) or np.any(coords > last - 1e-6) else 0.0
    return ndimage.map_coordinates(np.asarray(volume.array, np.float32), coords, output=np.float32, order=1,
                                   mode="constant", cval=float(fill))


def _volume_minimum(volume: Volume):
    """A function giving the volume's minimum voxel value, computed on its first call only."""
    return functools.cache(lambda: volume.intensity_range()[0])


def extract_views(volume: Volume, center_mm, planes: str, size: int, spacing_mm: float,
                  rotation_degrees: float = 0.0, slice_gap_mm: float | None = None,
                  fill: float | None = None) -> np.ndarray:
    """The views of a plane set through ``center_mm``: float32 (V, size, size, C), views in :func:`plane_axes` order.

    "orthogonal" gives (3, size, size, 1), "ciompi9" (9, size, size, 1) and
    "adjacent" (1, size, size, 3): axial planes at centre - gap, centre and
    centre + gap along +z, where the gap is ``slice_gap_mm`` (only for
    "adjacent"). Its default is the spacing of the volume axis closest to
    patient z, i.e. neighbouring slices: ``spacing[0]`` for an axial series or
    any NIfTI file read by tfmed, the row spacing for a sagittal DICOM series.
    ``rotation_degrees`` turns every view about the z axis (:func:`rotate_about_z`).

    Example:
        >>> from tfmed.data.volumes import Volume
        >>> volume = Volume(np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 5, 5), np.float32),
        ...                 (2.0, 1.0, 1.0), np.zeros(3), np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]))
        >>> views = extract_views(volume, volume_center(volume), "adjacent", size=3, spacing_mm=1.0)
        >>> views.shape, views[0, 1, 1].tolist()
        ((1, 3, 3, 3), [1.0, 2.0, 3.0])
    """
    axes = plane_axes(planes)
    size, spacing_mm = _check_size_spacing(size, spacing_mm)
    center = _point(center_mm, "center_mm")
    if planes == "adjacent":
        z_axis = int(np.argmax(np.abs(np.asarray(volume.direction, float)[2])))
        gap = float(volume.spacing[z_axis]) if slice_gap_mm is None else _number(slice_gap_mm)
        if not (math.isfinite(gap) and gap > 0):
            raise ValueError(f"slice_gap_mm must be a positive number of mm; got {slice_gap_mm!r}")
        offsets = [-gap * _Z, np.zeros(3), gap * _Z]
    elif slice_gap_mm is not None:
        raise ValueError(f"slice_gap_mm applies only to planes='adjacent'; got slice_gap_mm={slice_gap_mm!r} "
                         f"with planes={planes!r} (leave it unset, or use planes='adjacent')")
    else:
        offsets = [np.zeros(3)]
    if not math.isfinite(_number(rotation_degrees)):
        raise ValueError(f"rotation_degrees must be a finite number; got {rotation_degrees!r}")
    fill = _volume_minimum(volume) if fill is None else fill  # shared by all planes: computed once at most
    views = np.empty((len(axes), size, size, len(offsets)), np.float32)
    for index, (_, u, v) in enumerate(axes):
        if rotation_degrees:
            u, v = rotate_about_z(u, v, rotation_degrees)
        for channel, offset in enumerate(offsets):
            views[index, :, :, channel] = sample_plane(volume, center, u, v, size, spacing_mm, fill, offset)
    return views


def volume_center(volume: Volume) -> np.ndarray:
    """LPS position (mm) of the volume's middle, the fractional voxel index (shape - 1) / 2.

    Example:
        >>> from tfmed.data.volumes import Volume
        >>> volume_center(Volume(np.zeros((3, 5, 5), np.float32), (2, 1, 1), np.array([0.0, 0, 10]),
        ...                      np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]))).tolist()
        [2.0, 2.0, 12.0]
    """
    return volume.voxel_to_patient((np.asarray(volume.shape, float) - 1) / 2)


def center_from_voxel(volume: Volume, index) -> np.ndarray:
    """LPS position (mm) of a (slice, row, column) voxel index (fractions allowed, within [-0.5, n - 0.5]).

    Example:
        >>> from tfmed.data.volumes import Volume
        >>> volume = Volume(np.zeros((3, 4, 4), np.float32), (2, 0.5, 0.5), np.zeros(3), np.eye(3))
        >>> center_from_voxel(volume, [1, 2, 0.5]).tolist()
        [2.0, 1.0, 0.25]
    """
    index = _point(index, "voxel index")
    shape = np.asarray(volume.shape)
    if np.any(index < -0.5) or np.any(index > shape - 0.5):
        raise VolumeError(volume.source or "volume", f"voxel index {_numbers(index)} (slice, row, column) is "
                          f"outside the array of shape {' x '.join(map(str, volume.shape))}", _VOXEL_FIX)
    return volume.voxel_to_patient(index)


def check_center_inside(volume: Volume, center_mm, where: str = "") -> None:
    """VolumeError unless the LPS position ``center_mm`` lies within the volume's voxels (``where``: a prefix).

    Example:
        >>> from tfmed.data.volumes import Volume
        >>> volume = Volume(np.zeros((4, 4, 4), np.float32), (1, 1, 1), np.zeros(3), np.eye(3))
        >>> check_center_inside(volume, [1.0, 2.0, 3.4])
        >>> check_center_inside(volume, [1.0, 2.0, 9.0], "row 3")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.volumes.VolumeError: volume: row 3: centre (1, 2, 9) mm is outside the volume, ...
    """
    center = _point(center_mm, "center_mm")
    index = volume.patient_to_voxel(center)
    shape = np.asarray(volume.shape)
    if np.all(index >= -0.5) and np.all(index <= shape - 0.5):
        return
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)]) * shape - 0.5
    extent = volume.voxel_to_patient(corners)
    spans = ", ".join(f"{axis} {low:g} .. {high:g}"
                      for axis, low, high in zip("xyz", extent.min(axis=0).round(2), extent.max(axis=0).round(2)))
    prefix = f"{where.rstrip().rstrip(':')}: " if where.strip() else ""  # "row 3" and "row 3: " alike
    raise VolumeError(volume.source or "volume",
                      f"{prefix}centre {_numbers(center)} mm is outside the volume, which spans {spans} mm "
                      f"(LPS; the centre falls at voxel index {_numbers(index)}, shape "
                      f"{' x '.join(map(str, volume.shape))})",
                      "give the centre in patient LPS millimetres as in DICOM ImagePositionPatient (+x left, "
                      "+y posterior, +z head); for NIfTI/RAS world coordinates negate x and y")


def jitter_center(center_mm, jitter_mm: float, rng: np.random.Generator) -> np.ndarray:
    """``center_mm`` moved by uniform(-jitter_mm, jitter_mm) along each axis (a copy, unmoved for jitter 0).

    Example:
        >>> jitter_center([1.0, 2.0, 3.0], 0.0, np.random.default_rng(0)).tolist()
        [1.0, 2.0, 3.0]
        >>> bool(np.all(np.abs(jitter_center([0.0, 0, 0], 2.0, np.random.default_rng(0))) <= 2))
        True
    """
    center = _point(center_mm, "center_mm")
    jitter = _number(jitter_mm)
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"jitter_mm must be a number of mm >= 0; got {jitter_mm!r}")
    if jitter == 0:
        return center
    return center + rng.uniform(-jitter, jitter, size=3)


def _point(value, name: str) -> np.ndarray:
    """A finite 3-vector as float64 (a copy), or ValueError naming ``name``."""
    try:
        point = np.array(value, dtype=float)
    except (TypeError, ValueError):
        point = None
    if point is None or point.shape != (3,) or not np.all(np.isfinite(point)):
        raise ValueError(f"{name} must be 3 finite numbers (x, y, z for LPS mm; slice, row, column for a voxel "
                         f"index); got {value!r}")
    return point


def _check_size_spacing(size, spacing_mm) -> tuple[int, float]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a whole number of pixels >= 1; got {size!r}")
    spacing = _number(spacing_mm)
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing_mm must be a positive number of mm between view pixels; got {spacing_mm!r}")
    return int(size), spacing


def _number(value) -> float:
    """float(value), NaN when it is not a number (so that the caller's check reports it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _numbers(values) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"
