"""Tables of volumes: rows that point at a DICOM series folder or a volume file, and the views cut from them.

With ``views.enabled`` (see :class:`~tfmed.config.ViewsConfig`) each row's
``image`` is a volume: a folder holding one DICOM series (or several, with the
row's ``series_uid`` naming one) or a volume file: NIfTI (``.nii``,
``.nii.gz``), MetaImage (``.mhd``, ``.mha``) or NRRD (``.nrrd``, ``.nhdr``). Optional
columns give the lesion centre, either in patient coordinates (LPS mm, as
DICOM's ImagePositionPatient) or as a voxel index of the array that
``tfmed inspect`` describes:

=================  ==========================================================
``center_x/y/z``   lesion centre in mm: +x patient's left, +y posterior, +z head
``center_slice``,  lesion centre as a 0-based (slice, row, column) voxel index
``center_row``,    (fractions allowed)
``center_column``
``series_uid``     the SeriesInstanceUID to read from a folder holding several
=================  ==========================================================

:class:`VolumeSampler` reads one row's volume when the tf.data pipeline asks
for it, cuts the views (:func:`tfmed.data.volume_views.extract_views`) and
keeps only the last two volumes read (:class:`RecentVolumes`): a data set of
volumes is never held in memory, and rows of one volume that follow each
other read it once.
:func:`check_volume_rows` reads every volume once before training, so that a
bad series or a centre outside its volume is reported with the row's number
instead of stopping training halfway.

Example:
    >>> is_volume_path("scan.nii.gz"), is_volume_path("chest.png")
    (True, False)
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import AugmentConfig, ViewsConfig
from tfmed.data.decode import has_dicom_marker
from tfmed.data.volume_views import (center_from_voxel, check_center_inside, extract_views, jitter_center,
                                     volume_center)
from tfmed.data.volumes import NOT_FINITE, VOLUME_FILES, VolumeError, is_volume_file, read_volume

CENTER_MM = ("center_x", "center_y", "center_z")
CENTER_VOXEL = ("center_slice", "center_row", "center_column")
SERIES_UID = "series_uid"
VOLUME_COLUMNS = CENTER_MM + CENTER_VOXEL + (SERIES_UID,)
_NOT_FINITE_FIX = ("replace them with a value (e.g. the background's: -1024 for CT in HU, 0 for MR) and save the "
                   "volume again: views through them would give NaN scores")
_CENTER_FIX = ("fill center_x, center_y, center_z (LPS mm) or center_slice, center_row, center_column "
               "(voxel index) for the row, or set views.center: volume")


def candidate_columns(frame) -> list[str]:
    """The columns that tell candidates sharing a volume apart: ``row`` (the listing's line) and the centre
    columns that hold values.

    Example:
        >>> import pandas as pd
        >>> candidate_columns(pd.DataFrame({"image": ["a.nii"], "row": [2], "center_x": [1.0], "center_y": [None]}))
        ['row', 'center_x']
    """
    given = [name for name in CENTER_MM + CENTER_VOXEL if name in frame.columns and frame[name].notna().any()]
    return ["row"] + given


def is_volume_path(path) -> bool:
    """True for a folder (a DICOM series) or a volume file name (NIfTI, MetaImage, NRRD).

    Example:
        >>> is_volume_path("/")
        True
    """
    return Path(str(path)).is_dir() or is_volume_file(path)


def header_patient_id(path) -> str | None:
    """PatientID of the first DICOM file in a series folder (headers only), else None.

    Example:
        >>> header_patient_id("brain.nii.gz") is None
        True
    """
    import pydicom

    folder = Path(str(path))
    if not folder.is_dir():
        return None
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        if has_dicom_marker(file):
            try:
                value = pydicom.dcmread(file, stop_before_pixels=True).get("PatientID")
            except Exception:  # an unreadable file is reported when the volume is checked
                return None
            return (str(value).strip() or None) if value is not None else None
    return None


def row_center(volume, values: dict, center: str, where: str = "") -> np.ndarray:
    """The LPS position (mm) the views of one row are centred on.

    ``values`` holds the row's centre columns (NaN or missing when empty);
    ``center`` is ``views.center``. Millimetres win over voxels when a row has both.

    Example:
        >>> from tfmed.data.volumes import Volume
        >>> v = Volume(np.zeros((4, 5, 6), np.float32), (2.0, 1.0, 1.0), np.zeros(3), np.eye(3))
        >>> row_center(v, {}, "volume").tolist()
        [3.0, 2.0, 2.5]
        >>> row_center(v, {"center_slice": 1, "center_row": 2, "center_column": 3}, "lesion").tolist()
        [2.0, 2.0, 3.0]
    """
    if center == "volume":
        return volume_center(volume)
    mm = [_number(values.get(name)) for name in CENTER_MM]
    voxel = [_number(values.get(name)) for name in CENTER_VOXEL]
    if all(v is not None for v in mm):
        point = np.array(mm, dtype=float)
        check_center_inside(volume, point, where)
        return point
    if all(v is not None for v in voxel):
        return center_from_voxel(volume, voxel)
    raise VolumeError(volume.source, f"{where}no lesion centre (views.center is 'lesion')", _CENTER_FIX)


def _number(value) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _row_values(frame: pd.DataFrame, position: int) -> dict:
    return {name: frame[name].iloc[position] for name in VOLUME_COLUMNS if name in frame.columns}


def _series(values: dict) -> str | None:
    uid = values.get(SERIES_UID)
    return None if uid is None or pd.isna(uid) or not str(uid).strip() else str(uid).strip()


class RecentVolumes:
    """The last ``size`` volumes read, shared by the pipeline's parallel calls.

    Rows of one volume that follow each other (LUNA16 lists a scan's
    candidates together; a split keeps the table's order) read it once, even
    when parallel calls ask for it at the same time: the first reads, the
    others wait for its result. Shuffled training rows mostly miss, and then
    cost nothing more than a read. A failed read is not kept.

    Example:
        >>> import os
        >>> from nibabel.testing import data_path
        >>> volumes, key = RecentVolumes(size=2), (os.path.join(data_path, "anatomical.nii"), None)
        >>> volumes.get(key) is volumes.get(key)
        True
    """

    def __init__(self, size: int = 2):
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, Future] = OrderedDict()

    def get(self, key: tuple):
        """The volume of ``key`` = (path, series uid or None), read by :func:`read_volume` when not recent."""
        with self._lock:
            future = self._entries.get(key)
            reader = future is None
            if reader:
                future = self._entries[key] = Future()
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
        if reader:
            try:
                future.set_result(read_volume(*key))
            except BaseException as error:
                with self._lock:
                    if self._entries.get(key) is future:
                        del self._entries[key]
                future.set_exception(error)
        return future.result()


class VolumeSampler:
    """Cuts the views of a table's rows, one volume at a time (the tf.data pipeline calls it).

    Args:
        table: an :class:`~tfmed.data.table.ImageTable` whose ``image`` column holds volume paths.
        views: which planes, where, how large (``views.enabled`` must be true).
        augment: training augmentation; its ``view_rotation_degrees`` and
            ``center_jitter_mm`` draw a new rotation and centre for every call with a seed.

    ``shape`` is (views, pixels, pixels, channels) of what :meth:`views_at` returns.

    Example:
        >>> sampler = VolumeSampler(table, ViewsConfig(enabled=True, center="volume"))  # doctest: +SKIP
        >>> sampler.views_at(0).shape                                                  # doctest: +SKIP
        (3, 50, 50, 1)
    """

    def __init__(self, table, views: ViewsConfig, augment: AugmentConfig | None = None):
        if not views.enabled:
            raise ValueError("VolumeSampler needs views.enabled: true")
        self.views = views
        self.paths = table.frame["image"].astype(str).tolist()
        self.values = [_row_values(table.frame, i) for i in range(len(table))]
        self.rows = table.frame["row"].tolist()
        on = augment is not None and augment.enabled
        self.rotation = float(augment.view_rotation_degrees) if on else 0.0
        self.jitter = float(augment.center_jitter_mm) if on else 0.0
        self.shape = (views.count, views.patch_pixels, views.patch_pixels, 3 if views.planes == "adjacent" else 1)
        self.recent = RecentVolumes()

    def views_at(self, position, seed=None) -> np.ndarray:
        """Float32 views of row ``position``; with a ``seed`` (and augmentation) a random rotation and jitter.

        Errors name the row and the volume (the rows were checked before, so
        this means a file changed since).
        """
        position = int(position)
        where = f"row {self.rows[position]}: "
        volume = self.recent.get((self.paths[position], _series(self.values[position])))
        center = row_center(volume, self.values[position], self.views.center, where)
        rotation = 0.0
        if seed is not None and (self.rotation or self.jitter):
            rng = np.random.default_rng(np.asarray(seed, dtype=np.int64).tolist())
            rotation = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation else 0.0
            center = jitter_center(center, self.jitter, rng)
        out = extract_views(volume, center, self.views.planes, self.views.patch_pixels, self.views.spacing_mm,
                            rotation_degrees=rotation, slice_gap_mm=self.views.slice_gap_mm)
        return np.asarray(out, dtype=np.float32)


def check_volume_rows(table, views: ViewsConfig, workers: int = 2) -> tuple[list[tuple[int, str, str]],
                                                                            list[tuple[int, str, str]]]:
    """Read every row's volume once: ``(problems, warnings)``, each a list of ``(position, what, fix)``.

    Problems (the row cannot give views): paths that are not volumes, series
    that cannot be read (with the reason :func:`~tfmed.data.volumes.read_volume`
    gives), volumes holding NaN or infinite voxels, missing or out-of-volume
    lesion centres, and repeated rows (the same volume and centre twice).
    Warnings (the row is kept): what reading the volume noted, e.g. an assumed
    pixel spacing, uneven slice spacing or ignored files (``Volume.problems``).

    Example:
        >>> check_volume_rows(table, ViewsConfig(enabled=True))  # doctest: +SKIP
        ([(3, 'no lesion centre (views.center is lesion)', 'fill center_x, ...')], [])
    """
    frame = table.frame
    values = [_row_values(frame, i) for i in range(len(frame))]
    problems: list[tuple[int, str, str]] = []
    groups: dict[tuple, list[int]] = {}
    for position, path in enumerate(frame["image"].tolist()):
        if path is None or pd.isna(path) or not str(path).strip():
            problems.append((position, "no volume path", "fill the path column"))
        elif not is_volume_path(path):
            kind = "not found" if not Path(str(path)).exists() else "not a volume"
            problems.append((position, f"{kind}: views need a DICOM series folder or {VOLUME_FILES}",
                             "point the row at the series folder or volume file, or turn views off"))
        else:
            groups.setdefault((str(path), _series(values[position])), []).append(position)

    def check(key):
        try:
            volume = read_volume(*key)
        except VolumeError as error:
            return [(p, error.reason, error.fix) for p in groups[key]], []
        noted = [(p, note, f"check the volume with `tfmed inspect {key[0]}`; if the note is wrong for it, "
                  "re-export it with the missing information") for p in groups[key] for note in volume.problems
                 if not note.endswith(NOT_FINITE)]
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            return [(p, f"{bad} {NOT_FINITE}", _NOT_FINITE_FIX) for p in groups[key]], noted
        found, seen = [], {}
        for position in groups[key]:
            try:
                center = tuple(np.round(row_center(volume, values[position], views.center), 3).tolist())
            except VolumeError as error:
                found.append((position, error.reason, error.fix))
                continue
            if center in seen:
                found.append((position, f"duplicate: the same volume and centre as row "
                              f"{frame['row'].iloc[seen[center]]}",
                              "remove the repeated row (it would count the lesion twice)"))
            seen.setdefault(center, position)
        return found, noted

    warnings: list[tuple[int, str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found, noted in pool.map(check, list(groups)):
            problems.extend(found)
            warnings.extend(noted)
    return sorted(problems), sorted(warnings)
