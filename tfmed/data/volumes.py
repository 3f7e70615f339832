"""CT/MR volumes: a DICOM series folder or a NIfTI, MetaImage or NRRD file read into one (slices, rows, columns) array.

Both kinds of volume share one set of conventions:

* ``array`` is float32 with shape (slices, rows, columns); voxel ``(s, r, c)``
  is ``array[s, r, c]``. DICOM values pass through the modality LUT
  (``RescaleSlope``/``RescaleIntercept`` of each slice), so CT is in
  Hounsfield units; NIfTI values are scaled by ``scl_slope``/``scl_inter``.
* Patient coordinates are DICOM's (LPS), in mm: +x toward the patient's
  left, +y toward the back (posterior), +z toward the head (superior).
  NIfTI's world coordinates (RAS: +x right, +y anterior, +z superior) are
  converted with (x, y, z) -> (-x, -y, z).
* ``spacing`` is the distance in mm between neighbouring voxels along the
  (slice, row, column) axes; ``origin`` is the patient position of voxel
  (0, 0, 0); column ``a`` of ``direction`` is the unit vector (LPS) along
  which index ``a`` grows, so a voxel lies at
  ``origin + direction @ (index * spacing)``.
* DICOM: column 2 of ``direction`` (columns grow) is the first triplet of
  ImageOrientationPatient, column 1 (rows grow) the second, column 0 (slices
  grow) their cross product, the slice normal. Slices are ordered by their
  position along that normal (ImagePositionPatient . normal), ascending, never
  by file name or InstanceNumber; ``origin`` is ImagePositionPatient of the
  first slice. Each frame of an enhanced multi-frame file is a slice, its
  position, orientation, pixel spacing and rescale read from its functional
  groups (per-frame over shared). A series acquired with gantry tilt is
  stacked along the table, not along the normal: column 0 is then the unit
  vector from the first slice's position to the last one's, ``spacing[0]``
  the distance between neighbouring positions, and ``direction`` is not
  orthogonal. Every voxel keeps its DICOM position, and views cut in patient
  space (:mod:`tfmed.data.volume_views`) come out tilt-corrected.
* NIfTI: the image is first reoriented to the closest canonical orientation
  (RAS+: i toward the right, j anterior, k superior); then slice = k,
  row = j reversed, column = i reversed. An axial NIfTI image thus reads
  like an axial DICOM series: slices from feet to head, rows from front to
  back, columns from the patient's right to left (``axis_codes()`` is
  ``("S", "P", "L")``), and both kinds of the same geometry give the same
  array, origin, spacing and direction.
* MetaImage and NRRD (SimpleITK): ITK's coordinates are LPS already, and
  index (i, j, k) becomes (column, row, slice) without reorientation, as a
  DICOM series is read (LUNA16's axial scans read ``("S", "P", "L")``).

Example:
    >>> import shutil, tempfile, pathlib
    >>> from pydicom.data import get_testdata_file
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = shutil.copy(get_testdata_file("CT_small.dcm"), folder / "IM0001")
    >>> volume = read_dicom_series(folder)
    >>> volume.shape, volume.spacing, volume.intensity_range()
    ((1, 128, 128), (5.0, 0.661468, 0.661468), (-896.0, 1167.0))
    >>> volume.axis_codes()
    ('S', 'P', 'L')
"""
from __future__ import annotations

import math
import re
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfmed.data.decode import (NO_RESCALE, RESCALE_KEYWORDS, RESCALE_SEQUENCE, ImageReadError, dicom_pixels,
                               dicom_values, has_dicom_marker, lacks_rescale, read_image_and_info)
from tfmed.errors import TfmedError, count_noun

NIFTI_SUFFIXES = (".nii", ".nii.gz")
METAIMAGE_SUFFIXES = (".mhd", ".mha")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
# How a volume's problems name its voxels that are not numbers (a row problem when views are cut from it).
NOT_FINITE = "voxels are NaN or infinite"
# What a volume file may be, for messages.
VOLUME_FILES = "a NIfTI (.nii, .nii.gz), MetaImage (.mhd, .mha) or NRRD (.nrrd, .nhdr) file"
# Two slices closer than this along the slice axis (mm) are at the same position.
DUPLICATE_MM = 0.01
# A step between consecutive slices over this many times the median spacing is a missing slice.
GAP_FACTOR = 1.5
# A slice further than this fraction of the spacing from its place on one even grid stops reading.
DRIFT_FRACTION = 0.5
# Steps differing from the median spacing by more than this fraction are reported as uneven.
UNEVEN_FRACTION = 0.01
# Slice positions further than this angle (degrees) from the slice normal make a tilted series.
TILT_DEGREES = 0.5
# A slice of a tilted series further from the line through the first and last slice positions
# than this fraction of the distance between neighbouring slices means they do not form one stack.
STACK_LINE_FRACTION = 0.1
# Largest difference of ImageOrientationPatient cosines / PixelSpacing (mm) counted as equal.
ORIENTATION_TOLERANCE = 1e-4
PIXEL_SPACING_TOLERANCE = 1e-3
# LPS axis letters for the positive and the negative direction of x, y and z.
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))
# RAS (NIfTI) <-> LPS (DICOM) patient coordinates.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class VolumeError(TfmedError):
    """A DICOM series folder or volume file cannot be read as one volume.

    Attributes:
        path: the file or folder at fault.
        reason: what is wrong.
        fix: what would make it readable.

    Example:
        >>> print(VolumeError("scans/a", "no DICOM files", "point at a series folder"))
        scans/a: no DICOM files. Fix: point at a series folder
    """

    def __init__(self, path: str | Path, reason: str, fix: str):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}. Fix: {fix}")


@dataclass
class Volume:
    """One 3-D image and its place in patient space (see the module docstring for the conventions).

    Attributes:
        array: float32 (slices, rows, columns); Hounsfield units for CT DICOM.
        spacing: mm between voxels along (slice, row, column).
        origin: patient position (LPS, mm) of voxel (0, 0, 0).
        direction: 3 x 3; column a is the LPS unit vector along which index a grows.
        modality: DICOM Modality (e.g. "CT", "MR"); None for NIfTI.
        patient_id, series_uid, study_uid: from the DICOM header; None for NIfTI.
        transfer_syntax: name of the DICOM transfer syntax; None for NIfTI.
        source: the folder or file read.
        problems: warnings that did not stop reading (e.g. uneven slice spacing).

    Example:
        >>> v = Volume(np.zeros((2, 3, 4), np.float32), (2.5, 0.5, 0.5), np.array([10.0, 20.0, 30.0]),
        ...            np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]]))
        >>> v.shape, v.voxel_to_patient([1, 2, 3]).tolist(), v.patient_to_voxel([11.5, 21.0, 32.5]).tolist()
        ((2, 3, 4), [11.5, 21.0, 32.5], [1.0, 2.0, 3.0])
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: np.ndarray
    direction: np.ndarray
    modality: str | None = None
    patient_id: str | None = None
    series_uid: str | None = None
    study_uid: str | None = None
    transfer_syntax: str | None = None
    source: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return tuple(int(n) for n in self.array.shape)

    @property
    def affine(self) -> np.ndarray:
        """4 x 4 matrix taking (slice, row, column, 1) to (x, y, z, 1) in LPS mm.

        Example:
            >>> Volume(np.zeros((1, 1, 1), np.float32), (2.0, 1.0, 1.0), np.zeros(3), np.eye(3)).affine[0, 0]
            np.float64(2.0)
        """
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(self.direction, float) * np.asarray(self.spacing, float)
        affine[:3, 3] = self.origin
        return affine

    @property
    def intensity_unit(self) -> str | None:
        """"HU" for CT (values after the modality LUT), else None (raw intensity, or CT values as stored without
        rescale tags)."""
        return "HU" if self.modality == "CT" and NO_RESCALE not in self.problems else None

    def voxel_to_patient(self, index) -> np.ndarray:
        """Patient position (LPS, mm) of a voxel index (s, r, c), or of N indices (N, 3); fractions allowed.

        Example:
            >>> v = Volume(np.zeros((1, 1, 1), np.float32), (2.0, 1.0, 1.0), np.array([0.0, 0, 5]), np.eye(3))
            >>> v.voxel_to_patient([[0, 0, 0], [1, 0, 0]]).tolist()
            [[0.0, 0.0, 5.0], [2.0, 0.0, 5.0]]
        """
        index = np.asarray(index, dtype=float)
        return np.asarray(self.origin, float) + (index * np.asarray(self.spacing, float)) @ np.asarray(
            self.direction, float).T

    def patient_to_voxel(self, point_mm) -> np.ndarray:
        """Fractional voxel index (s, r, c) of a patient position (LPS, mm), or of N positions (N, 3).

        Example:
            >>> v = Volume(np.zeros((1, 1, 1), np.float32), (2.0, 1.0, 1.0), np.array([0.0, 0, 5]), np.eye(3))
            >>> v.patient_to_voxel([3.0, 1.0, 5.0]).tolist()
            [1.5, 1.0, 0.0]
        """
        offset = np.asarray(point_mm, dtype=float) - np.asarray(self.origin, float)
        return np.linalg.solve(self.affine[:3, :3], offset.T).T

    def intensity_range(self) -> tuple[float, float]:
        """(min, max) of the voxel values, ignoring NaN (NaN, NaN when every voxel is NaN).

        Example:
            >>> Volume(np.array([[[1, np.nan, -3]]], np.float32), (1, 1, 1), np.zeros(3), np.eye(3)).intensity_range()
            (-3.0, 1.0)
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN volume
            return float(np.nanmin(self.array)), float(np.nanmax(self.array))

    def axis_codes(self) -> tuple[str, str, str]:
        """The patient direction (L/R, P/A, S/I) nearest to each of the slice, row and column axes.

        Example:
            >>> Volume(np.zeros((1, 1, 1), np.float32), (1, 1, 1), np.zeros(3),
            ...        np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]])).axis_codes()
            ('S', 'P', 'R')
        """
        codes = []
        for axis in np.asarray(self.direction, float).T:
            dominant = int(np.argmax(np.abs(axis)))
            codes.append(_AXIS_LETTERS[dominant][0 if axis[dominant] > 0 else 1])
        return tuple(codes)


# ----------------------------------------------------------------------------------------------
# DICOM series folders


@dataclass
class _Series:
    """The headers (no pixels) of one SeriesInstanceUID in a folder."""

    uid: str
    files: list[Path]
    headers: list

    def summary(self) -> dict:
        first = self.headers[0]
        return {"series_uid": self.uid or None, "modality": _text(first, "Modality"),
                "description": _text(first, "SeriesDescription"), "files": len(self.files),
                "rows": int(first.Rows), "columns": int(first.Columns)}


@dataclass(frozen=True)
class _Slice:
    """One slice of a series: a single-frame file, or one frame of an enhanced multi-frame file."""

    path: Path
    frame: int | None = None  # 0-based frame number in a multi-frame file

    @property
    def name(self) -> str:
        return self.path.name if self.frame is None else f"{self.path.name} (frame {self.frame + 1})"

    def __str__(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} (frame {self.frame + 1})"


# Per-frame functional groups of enhanced multi-frame images (CT, MR, PET, legacy converted) and the
# attributes each holds that a single-frame slice carries at the top level.
_FUNCTIONAL_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness"),
    RESCALE_SEQUENCE: RESCALE_KEYWORDS,
    "FrameContentSequence": ("StackID", "TemporalPositionIndex"),
}
_MULTI_FRAME_FIX = ("export the series as one file per slice, or convert it to NIfTI (e.g. dcm2niix) and read "
                    "that file")


def _noted(volume: Volume) -> Volume:
    """The volume a reader made, with a problem line when it holds one slice only."""
    if volume.shape[0] == 1:
        volume.problems.append("a single slice: views across slices (coronal, sagittal, oblique, adjacent "
                               "planes) hold it and fill beyond it")
    return volume


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read the DICOM files of one series in ``folder`` (files of any name) into a :class:`Volume`.

    Files are recognised by the DICM marker, grouped by SeriesInstanceUID and
    ordered by their position along the slice normal. An enhanced multi-frame
    file (e.g. Enhanced CT or MR) gives one slice per frame, placed by its
    per-frame functional groups. A folder holding several series needs
    ``series_uid``. Missing or duplicate slices, mixed orientations or sizes,
    and multi-frame files without per-frame positions or holding several
    stacks or time points are refused with a :class:`VolumeError` naming the
    files; uneven spacing within tolerance, gantry tilt (read as acquired, see
    the module docstring) and ignored files are listed in ``problems``.

    Example:
        >>> import shutil, tempfile, pathlib
        >>> from pydicom.data import get_testdata_file
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = shutil.copy(get_testdata_file("CT_small.dcm"), folder / "CT.1.3.6.1.4.1.5962.1.1.1")
        >>> (folder / "notes.txt").write_text("scanned 2004")
        12
        >>> volume = read_dicom_series(folder)
        >>> volume.modality, volume.patient_id, volume.problems[0]
        ('CT', '1CT1', '1 file without the DICOM marker (DICM) ignored: notes.txt')
    """
    folder = Path(folder)
    series, problems = _scan_folder(folder)
    return _read_series(folder, _select_series(folder, series, series_uid), problems)


def _scan_folder(folder: Path) -> tuple[dict[str, _Series], list[str]]:
    """The image series of ``folder`` (headers only) and what was ignored."""
    import pydicom

    if not folder.is_dir():
        raise VolumeError(folder, "not a folder" if folder.exists() else "folder not found",
                          "point at the folder holding the files of one DICOM series")
    series: dict[str, _Series] = {}
    ignored = {"others": [], "folders": [], "unreadable": [], "no_pixels": []}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            ignored["folders"].append(path.name)
        elif not has_dicom_marker(path):
            ignored["others"].append(path.name)
        else:
            try:
                header = pydicom.dcmread(str(path), stop_before_pixels=True)
            except Exception as error:  # pydicom raises many types for damaged headers
                ignored["unreadable"].append(f"{path.name} ({type(error).__name__}: {error})")
                continue
            if "Rows" not in header or "Columns" not in header:
                ignored["no_pixels"].append(f"{path.name} ({_text(header, 'Modality') or 'no modality'})")
                continue
            uid = str(header.get("SeriesInstanceUID", ""))
            entry = series.setdefault(uid, _Series(uid, [], []))
            entry.files.append(path)
            entry.headers.append(header)
    problems = _ignored_lines(ignored)
    if not series:
        found = "; ".join(problems) if problems else "the folder is empty"
        raise VolumeError(folder, f"no DICOM image files ({found})",
                          "point at the folder holding the files of one DICOM series")
    return series, problems


def _ignored_lines(ignored: dict[str, list[str]]) -> list[str]:
    what = {"others": "without the DICOM marker (DICM) ignored",
            "folders": "not read (only the files directly in the folder are; point at a series folder)",
            "unreadable": "with an unreadable DICOM header ignored",
            "no_pixels": "without pixel data (e.g. structured report, presentation state, DICOMDIR) ignored"}
    lines = []
    for key, names in ignored.items():
        if names:
            noun = "sub-folder" if key == "folders" else "file"
            lines.append(f"{count_noun(len(names), noun)} {what[key]}: {_names(names)}")
    return lines


def _select_series(folder: Path, series: dict[str, _Series], series_uid: str | None) -> _Series:
    listing = "; ".join(_series_line(s.summary()) for s in series.values())
    if series_uid is None:
        if len(series) == 1:
            return next(iter(series.values()))
        raise VolumeError(folder, f"{len(series)} series in one folder: {listing}",
                          "name the one to read (a series_uid column beside the row's path in a manifest or "
                          "a CSV given to tfmed predict; series_uid=UID in Python; tfmed inspect FOLDER --series "
                          "UID), or move each series into its own folder")
    if series_uid not in series:
        raise VolumeError(folder, f"no series {series_uid} in the folder, which holds: {listing}",
                          "pass one of these series UIDs")
    return series[series_uid]


def _series_line(summary: dict) -> str:
    description = f' "{summary["description"]}"' if summary["description"] else ""
    return (f"{summary['series_uid'] or '(no SeriesInstanceUID)'} ({summary['modality'] or 'no modality'}"
            f"{description}, {count_noun(summary['files'], 'file')}, "
            f"{summary['rows']} x {summary['columns']})")


def _read_series(folder: Path, series: _Series, problems: list[str]) -> Volume:
    """Check the geometry of ``series``, then read its pixels in slice order."""
    problems = list(problems)
    slices, headers = [], []
    for path, header in zip(series.files, series.headers):
        _check_greyscale(path, header)
        if _frames(header) > 1 or "PerFrameFunctionalGroupsSequence" in header:  # one-frame enhanced files too
            frame_headers = _frame_headers(path, header)
            slices += [_Slice(path, frame) for frame in range(len(frame_headers))]
            headers += frame_headers
        else:
            slices.append(_Slice(path))
            headers.append(header)
    order, spacing, origin, direction = _geometry(folder, slices, headers, problems)
    _check_rescale(slices, headers, problems)
    first = headers[order[0]]
    array = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.float32)
    for path, places in _places_by_file(slices, order).items():
        values = _file_values(path, [slices[i].frame for i, _ in places], [headers[i] for i, _ in places],
                              array.shape[1:])
        for (_, index), frame_values in zip(places, values):
            array[index] = frame_values
    if any(str(h.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" for h in series.headers):
        problems.append("MONOCHROME1 slices (higher values display darker): values are kept as stored, "
                        "after the modality LUT")
    syntaxes = sorted({_syntax_name(h) for h in series.headers} - {None})
    return _noted(Volume(array=array, spacing=spacing, origin=origin, direction=direction,
                         modality=_text(first, "Modality"), patient_id=_text(first, "PatientID"),
                         series_uid=series.uid or None, study_uid=_text(first, "StudyInstanceUID"),
                         transfer_syntax=", ".join(syntaxes) or None, source=str(folder), problems=problems))


def _check_greyscale(path: Path, header) -> None:
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise VolumeError(path, f"colour image ({samples} samples per pixel) in a series; volumes are greyscale",
                          "remove the file from the series folder")


def _frame_headers(path: Path, header) -> list:
    """One header per frame of an enhanced multi-frame file, its functional groups flattened to the top level.

    Each frame's header holds the file's own attributes, then those of the
    shared functional groups, then its per-frame groups (the later wins), so
    it reads like the header of a single-frame slice.
    """
    from pydicom.dataset import Dataset

    frames = int(header.NumberOfFrames)
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise VolumeError(path, f"multi-frame DICOM ({frames} frames in one file) without per-frame positions "
                          "(no PerFrameFunctionalGroupsSequence, e.g. a cine loop or a dose grid) cannot be "
                          "placed in a volume", _MULTI_FRAME_FIX)
    if len(per_frame) != frames:
        raise VolumeError(path, f"{len(per_frame)} per-frame functional groups for {frames} frames",
                          "re-export the series")
    shared = header.get("SharedFunctionalGroupsSequence")
    skip = {"PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"}
    base = Dataset()
    for element in header:
        if element.keyword not in skip:
            base.add(element)
    base.file_meta = getattr(header, "file_meta", Dataset())
    headers = []
    for item in per_frame:
        frame = Dataset()
        frame.update(base)
        frame.file_meta = base.file_meta
        for group in ([shared[0]] if shared else []) + [item]:
            for sequence, keywords in _FUNCTIONAL_GROUPS.items():
                if group.get(sequence):
                    inner = group[sequence][0]
                    for keyword in keywords:
                        if keyword in inner:
                            frame[keyword] = inner[keyword]
        headers.append(frame)
    for keyword, what in (("StackID", "stacks"), ("TemporalPositionIndex", "time points")):
        values = {str(h[keyword].value) for h in headers if keyword in h}
        if len(values) > 1:
            raise VolumeError(path, f"the file holds {len(values)} {what} ({keyword} {', '.join(sorted(values))}); "
                              "a volume is one stack at one time", "export each stack or time point as its own "
                              "series, or convert the file to NIfTI (e.g. dcm2niix writes one file per stack)")
    return headers


def _places_by_file(slices: list[_Slice], order: list[int]) -> dict[Path, list[tuple[int, int]]]:
    """For each file, (position in ``slices``, index in the volume) of its slices: each file is decoded once."""
    places: dict[Path, list[tuple[int, int]]] = {}
    for index, position in enumerate(order):
        places.setdefault(slices[position].path, []).append((position, index))
    return places


def _geometry(folder: Path, files: list[_Slice], headers: list, problems: list[str]):
    """(slice order, spacing, origin, direction) from the slices' headers; refuses inconsistent series."""
    orientations = [_numbers(path, h, "ImageOrientationPatient", 6) for path, h in zip(files, headers)]
    positions = np.array([_numbers(path, h, "ImagePositionPatient", 3) for path, h in zip(files, headers)])
    pixel_spacing = [_pixel_spacing(h) for h in headers]
    _check_same(files, orientations, "ImageOrientationPatient", ORIENTATION_TOLERANCE,
                "remove the files of the other orientation (e.g. a localizer) or re-export the series")
    _check_same(files, [(int(h.Rows), int(h.Columns)) for h in headers], "Rows x Columns", 0,
                "remove the files of the other size (e.g. a localizer or a dose report) or re-export the series")
    _check_same(files, [s or (1.0, 1.0) for s in pixel_spacing], "PixelSpacing", PIXEL_SPACING_TOLERANCE,
                "remove the files of the other pixel spacing or re-export the series")
    if pixel_spacing[0] is None:
        problems.append("no PixelSpacing: 1.0 x 1.0 mm assumed within slices")
    row_axis, column_axis, normal = _axes(files[0], orientations[0])
    order = [int(i) for i in np.argsort(positions @ normal, kind="stable")]
    sorted_files = [files[i] for i in order]
    if len(files) == 1:
        stack = normal
        slice_spacing = _single_slice_spacing(headers[0], problems)
    else:
        stack = _stack_axis(folder, sorted_files, positions[order], normal, problems)
        slice_spacing = _slice_spacing(folder, sorted_files, positions[order] @ stack, problems)
    row_mm, column_mm = pixel_spacing[0] or (1.0, 1.0)
    direction = np.column_stack([stack, column_axis, row_axis])
    return order, (slice_spacing, row_mm, column_mm), positions[order[0]].copy(), direction


def _numbers(path: Path, header, keyword: str, count: int) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in header[keyword].value)
    except KeyError:
        raise VolumeError(path, f"no {keyword}, so the slice cannot be placed in the volume",
                          "re-export the series with its geometry tags, or remove the file (e.g. a "
                          "secondary capture)") from None
    except (TypeError, ValueError) as error:
        raise VolumeError(path, f"unreadable {keyword} ({error})", "re-export the series") from None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise VolumeError(path, f"{keyword} has {len(values)} values {list(values)}, {count} numbers expected",
                          "re-export the series")
    return values


def _pixel_spacing(header) -> tuple[float, float] | None:
    try:
        values = tuple(float(v) for v in header["PixelSpacing"].value)
    except (KeyError, TypeError, ValueError):
        return None
    return values if len(values) == 2 and all(v > 0 for v in values) else None


def _check_same(files: list[Path], values: list, what: str, tolerance: float, fix: str) -> None:
    """Refuse a series whose files differ in ``what``, naming a file that differs from most."""
    keys = [tuple(np.round(np.asarray(v, float), 3)) for v in values]
    common = Counter(keys).most_common(1)[0][0]
    reference = keys.index(common)
    odd = [i for i, v in enumerate(values)
           if np.max(np.abs(np.asarray(v, float) - np.asarray(values[reference], float))) > tolerance]
    if odd:
        others = f" ({len(odd) - 1} more differ: {_names([files[i].name for i in odd[1:]])})" if len(odd) > 1 else ""
        raise VolumeError(files[odd[0]], f"{what} {_show(values[odd[0]])} differs from {_show(values[reference])} "
                          f"of the other files of the series, e.g. {files[reference].name}{others}", fix)


def _axes(path: Path, orientation: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row direction, column direction, slice normal) from ImageOrientationPatient."""
    row, column = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, column)
    if min(np.linalg.norm(row), np.linalg.norm(column), np.linalg.norm(normal)) < 1e-6:
        raise VolumeError(path, f"ImageOrientationPatient {list(orientation)} does not give two directions",
                          "re-export the series")
    return row / np.linalg.norm(row), column / np.linalg.norm(column), normal / np.linalg.norm(normal)


def _stack_axis(folder: Path, files: list[Path], positions: np.ndarray, normal: np.ndarray,
                problems: list[str]) -> np.ndarray:
    """The unit vector along which the sorted slices are stacked: the slice normal, or the tilted stack's line.

    A series acquired with gantry tilt stacks its slices along the table, at
    the tilt angle to their normal. Its slice axis then follows the stack
    (``direction`` is not orthogonal), so every voxel keeps the patient
    position its header gives. Positions that leave the line through the
    first and last slice (a varying tilt, or two stacks in one series) are
    refused.
    """
    step = positions[-1] - positions[0]
    along = float(step @ normal)
    angle = math.degrees(math.atan2(float(np.linalg.norm(step - along * normal)), abs(along)))
    if angle <= TILT_DEGREES:
        return normal
    stack = step / np.linalg.norm(step)
    offsets = positions - positions[0]
    off_line = np.linalg.norm(offsets - np.outer(offsets @ stack, stack), axis=1)
    worst = int(np.argmax(off_line))
    if off_line[worst] > STACK_LINE_FRACTION * np.linalg.norm(step) / (len(positions) - 1):
        raise VolumeError(files[worst], f"the slice positions do not lie on one line: this slice is "
                          f"{off_line[worst]:.2f} mm from the line through {files[0].name} and {files[-1].name} "
                          f"(a tilted stack whose tilt varies, or slices of two stacks in one series)",
                          "separate the stacks into their own series, or re-export the series")
    problems.append(f"gantry tilt: the slices are stacked at {angle:.1f} degrees to their normal; voxels keep "
                    "their DICOM positions (the slice axis follows the stack), so views are cut upright in "
                    "patient space")
    return stack


def _slice_spacing(folder: Path, files: list[Path], along: np.ndarray, problems: list[str]) -> float:
    """Median step between sorted slice positions; refuses duplicates, missing slices and steps so uneven
    that a slice would sit more than ``DRIFT_FRACTION`` of a step from its place on one grid (two
    reconstructions in one folder)."""
    steps = np.diff(along)
    duplicates = np.flatnonzero(steps < DUPLICATE_MM)
    if duplicates.size:
        i = int(duplicates[0])
        raise VolumeError(files[i + 1], f"same slice position ({along[i]:.2f} mm along the slice axis) as "
                          f"{files[i].name}", "remove one of the two files, or separate them if they belong to "
                          "different acquisitions (echoes, time points)")
    spacing = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * spacing)
    if gaps.size:
        i = int(gaps[0])
        more = f" and {count_noun(gaps.size - 1, 'more gap')}" if gaps.size > 1 else ""
        raise VolumeError(folder, f"missing slices: a gap of {steps[i]:.2f} mm between {files[i].name} and "
                          f"{files[i + 1].name}, where slices are {spacing:.2f} mm apart (about "
                          f"{count_noun(round(steps[i] / spacing) - 1, 'slice')} missing){more}",
                          "re-export the complete series")
    drift = np.abs(along - along[0] - spacing * np.arange(len(along)))  # each slice from its place on one grid
    if drift.max() > DRIFT_FRACTION * spacing:
        i = int(np.argmax(drift))
        raise VolumeError(folder, f"slices at uneven steps ({steps.min():.2f} to {steps.max():.2f} mm): on one grid "
                          f"of {spacing:.2f} mm, {files[i].name} would sit {drift[i]:.2f} mm from its position, so "
                          "views would cut the wrong slices", "give each reconstruction (slice thickness) a folder "
                          "of its own, or resample the series to even steps")
    if np.max(np.abs(steps - spacing)) > UNEVEN_FRACTION * spacing:
        problems.append(f"uneven slice spacing: steps between slices range from {steps.min():.3f} to "
                        f"{steps.max():.3f} mm; the median {spacing:.3f} mm is used")
    return spacing


def _single_slice_spacing(header, problems: list[str]) -> float:
    try:
        thickness = float(header.get("SliceThickness", 0) or 0)
    except (TypeError, ValueError):
        thickness = 0.0
    if thickness > 0:
        return thickness
    problems.append("one slice without SliceThickness: 1.0 mm assumed along slices")
    return 1.0


def _file_values(path: Path, frames: list[int | None], headers: list, shape: tuple[int, int]) -> list[np.ndarray]:
    """The values of one file's slices after their modality LUT (RescaleSlope/Intercept): one array per entry
    of ``frames`` (None: the single frame of a single-frame file), rescaled with its header in ``headers``."""
    import pydicom

    try:
        dataset = pydicom.dcmread(str(path))
    except Exception as error:  # pydicom raises many types for damaged files
        raise VolumeError(path, f"not a readable DICOM file ({type(error).__name__}: {error})",
                          "re-export the series") from None
    if "PixelData" not in dataset:
        raise VolumeError(path, "DICOM file has no pixel data", "remove the file or re-export the series")
    try:
        if frames == [None]:
            stack = dicom_values(path, dataset, "re-export the series")[None]
        else:
            pixels = dicom_pixels(path, dataset, "re-export the series")
            pixels = pixels[None] if pixels.ndim == 2 else pixels  # an enhanced file of one frame
            stack = np.stack([pixels[frame] * _rescale(h)[0] + _rescale(h)[1]
                              for frame, h in zip(frames, headers)]).astype(np.float32)
    except ImageReadError as error:
        raise VolumeError(path, error.reason, error.fix) from None
    if stack.shape[1:] != tuple(shape):
        raise VolumeError(path, f"pixel data of shape {stack.shape[1:]}, {shape} expected from Rows x Columns",
                          "re-export the series")
    return list(stack)


def _check_rescale(slices: list[_Slice], headers: list, problems: list[str]) -> None:
    """Refuse a RescaleSlope of 0 and a series whose slices disagree on having RescaleSlope/Intercept; note
    a CT series without them (its stored values are taken as they are, which are rarely Hounsfield units)."""
    rescaled = []
    for item, header in zip(slices, headers):
        slope = header.get("RescaleSlope")
        if slope not in (None, "") and float(slope) == 0:
            raise VolumeError(item.path, "RescaleSlope is 0, so every value would become the intercept",
                              "re-export the series with its true RescaleSlope (1 for most CT)")
        rescaled.append("RescaleIntercept" in header or "RescaleSlope" in header or "ModalityLUTSequence" in header)
    if any(rescaled) and not all(rescaled):
        missing = [item.path.name for item, has in zip(slices, rescaled) if not has]
        raise VolumeError(slices[0].path.parent,
                          f"{count_noun(len(missing), 'slice')} without RescaleSlope/RescaleIntercept among "
                          f"{len(slices)} ({_names(missing)}): their values would not be on the others' scale",
                          "re-export the series so that every slice carries its rescale tags")
    if not any(rescaled) and str(headers[0].get("Modality", "")).upper() == "CT":
        problems.append(NO_RESCALE)


def _rescale(header) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a frame's header; (1, 0) where absent."""
    return float(header.get("RescaleSlope", 1) or 1), float(header.get("RescaleIntercept", 0) or 0)


# ----------------------------------------------------------------------------------------------
# NIfTI files


def read_nifti(path: str | Path) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file into a :class:`Volume` (see the module docstring for the axes).

    The image is reoriented to the closest canonical orientation (RAS+), its
    axes put in (slice, row, column) order as described above and its
    coordinates converted to LPS. 4-D images (more than one volume) are refused.

    Example:
        >>> import os
        >>> from nibabel.testing import data_path
        >>> volume = read_nifti(os.path.join(data_path, "anatomical.nii"))
        >>> volume.shape, volume.spacing, volume.axis_codes()
        ((25, 41, 33), (2.0, 2.0, 2.0), ('S', 'P', 'L'))
    """
    import nibabel

    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "file not found" if not path.exists() else "not a file",
                          "check the path of the NIfTI file")
    image = _load_nifti(path)
    problems = []
    if int(image.header["sform_code"]) == 0 and int(image.header["qform_code"]) == 0:
        problems.append("no orientation in the header (qform and sform codes are 0): positions come from the "
                        "voxel sizes only, so patient coordinates and left/right are not reliable")
    if abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise VolumeError(path, "the affine of the image is singular (a voxel size is 0)",
                          "fix the header (pixdim, qform/sform) or re-export the file")
    data = _nifti_data(path, image)
    canonical = nibabel.as_closest_canonical(nibabel.Nifti1Image(data, image.affine))
    # Canonical (i, j, k) point right, anterior, superior; (slice, row, column) = (k, -j, -i).
    array = np.ascontiguousarray(np.asarray(canonical.dataobj, np.float32)[::-1, ::-1, :].transpose(2, 1, 0))
    columns, rows = array.shape[2], array.shape[1]
    index_to_canonical = np.array([[0.0, 0, -1], [0, -1, 0], [1, 0, 0]])  # d(i, j, k) / d(s, r, c)
    linear = _RAS_TO_LPS @ canonical.affine[:3, :3] @ index_to_canonical
    zooms = canonical.header.get_zooms()[:3]
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    origin = _RAS_TO_LPS @ (canonical.affine[:3, :3] @ [columns - 1, rows - 1, 0] + canonical.affine[:3, 3])
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        problems.append(f"{bad} {NOT_FINITE}")
    return _noted(Volume(array=array, spacing=spacing, origin=origin, direction=linear / np.array(spacing),
                         source=str(path), problems=problems))


def _load_nifti(path: Path):
    import nibabel
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nibabel.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise VolumeError(path, f"not a readable NIfTI file ({type(error).__name__}: {error})",
                          "check that the file was copied completely, or re-export it as NIfTI "
                          "(.nii or .nii.gz)") from None
    if not isinstance(image, (nibabel.Nifti1Image, nibabel.Nifti2Image)):
        raise VolumeError(path, f"a {type(image).__name__}, not a NIfTI image",
                          "convert it to NIfTI (.nii or .nii.gz)")
    return image


def _nifti_data(path: Path, image) -> np.ndarray:
    """The image's scaled values as float32 (slope and intercept applied), made 3-D."""
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3:
        raise VolumeError(path, f"{len(shape)}-D image of size {' x '.join(map(str, shape))}; one 3-D volume is "
                          "expected", "classify 2-D images without views (views.enabled: false), or export "
                          "the 3-D volume")
    if len(shape) > 3 and math.prod(shape[3:]) > 1:
        raise VolumeError(path, f"{len(shape)}-D image of shape {' x '.join(map(str, shape))} "
                          f"({math.prod(shape[3:])} volumes); one 3-D volume is expected",
                          "extract one volume first (e.g. fslroi IN OUT T 1, or nibabel's image.slicer[..., T])")
    try:
        data = image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise VolumeError(path, f"the voxel data cannot be read ({type(error).__name__}: {error})",
                          "check that the file was copied completely, or re-export it") from None
    return data.reshape(shape[:3] + (1,) * (3 - len(shape[:3])))


# ----------------------------------------------------------------------------------------------
# MetaImage and NRRD files (SimpleITK)


def read_itk(path: str | Path) -> Volume:
    """Read a MetaImage (``.mhd`` + data file, ``.mha``) or NRRD (``.nrrd``, ``.nhdr``) file into a :class:`Volume`.

    SimpleITK reads the file; its patient coordinates are LPS, as DICOM's, and
    its index (i, j, k) becomes (column, row, slice) without reorientation,
    as a DICOM series is read. MetaImage's ``Modality = MET_MOD_CT`` makes the
    modality CT (values are taken as stored, e.g. Hounsfield units in LUNA16).

    Example:
        >>> import tempfile, pathlib, SimpleITK as sitk
        >>> path = str(pathlib.Path(tempfile.mkdtemp()) / "scan.mhd")
        >>> image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
        >>> image.SetSpacing((0.7, 0.7, 2.5)); image.SetOrigin((-180.0, -200.0, -300.0))
        >>> sitk.WriteImage(image, path)
        >>> volume = read_itk(path)
        >>> volume.shape, volume.spacing, volume.origin.tolist(), volume.axis_codes()
        ((4, 5, 6), (2.5, 0.7, 0.7), [-180.0, -200.0, -300.0], ('S', 'P', 'L'))
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "file not found" if not path.exists() else "not a file",
                          "check the path of the volume file")
    kind = _itk_kind(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise VolumeError(path, f"not a readable {kind} file ({_itk_reason(error)})",
                          f"check that it is a {kind} file, or re-export the volume") from None
    if reader.GetDimension() != 3:
        size = " x ".join(str(n) for n in reader.GetSize())
        raise VolumeError(path, f"{reader.GetDimension()}-D image of size {size}; one 3-D volume is expected",
                          "export one 3-D volume")
    if reader.GetNumberOfComponents() != 1:
        raise VolumeError(path, f"{reader.GetNumberOfComponents()} components per voxel; volumes are greyscale",
                          "export one channel")
    data_file = detached_data_file(path)
    if data_file is not None and not data_file.is_file():
        raise VolumeError(path, f"its voxel data file {data_file.name} (ElementDataFile) is missing",
                          f"put {data_file.name} beside the header, as the data set ships them")
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeError(path, f"the voxel data cannot be read ({_itk_reason(error)})",
                          "check that the data file was copied completely, or re-export the volume") from None
    expected = sitk.GetArrayViewFromImage(image).nbytes
    if data_file is not None and _plain_metaimage(path) and data_file.stat().st_size != expected:
        raise VolumeError(path, f"its data file {data_file.name} holds {data_file.stat().st_size} bytes, but the "
                          f"header's DimSize and ElementType describe {expected}, so its voxels would be read "
                          "into the wrong rows", "correct DimSize / ElementType, or re-export the volume")
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image), dtype=np.float32)  # (k, j, i)
    spacing_i, spacing_j, spacing_k = (float(v) for v in image.GetSpacing())
    matrix = np.array(image.GetDirection(), float).reshape(3, 3)  # column a: the LPS direction of index a
    problems = []
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        problems.append(f"{bad} {NOT_FINITE}")
    modality = image.GetMetaData("Modality") if image.HasMetaDataKey("Modality") else ""
    return _noted(Volume(array=array, spacing=(spacing_k, spacing_j, spacing_i),
                         origin=np.array(image.GetOrigin(), float), direction=matrix[:, ::-1].copy(),
                         modality="CT" if modality.strip() == "MET_MOD_CT" else None, source=str(path),
                         problems=problems))


def _plain_metaimage(path: Path) -> bool:
    """Whether a MetaImage header's data file is uncompressed with nothing before the voxels, so its size is
    theirs (``CompressedData`` and ``HeaderSize`` not set)."""
    if path.suffix.lower() != ".mhd":
        return False
    settings = _metaimage_fields(path)
    return settings.get("CompressedData", "False").lower() != "true" and settings.get("HeaderSize", "0") == "0"


def _metaimage_fields(path: Path) -> dict[str, str]:
    """A MetaImage ``.mhd`` header's ``key = value`` lines."""
    with open(path, encoding="latin-1") as header:
        return {key.strip(): value.strip() for key, _, value in (line.partition("=") for line in header)}


def _itk_kind(path: Path) -> str:
    return "NRRD" if str(path).lower().endswith(NRRD_SUFFIXES) else "MetaImage"


def _itk_reason(error: RuntimeError) -> str:
    """SimpleITK's message without its object addresses and source locations."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "no reason given")
    return re.sub(r"\(0x[0-9a-fA-F]+\)", "", reason).strip()


def detached_data_file(path: str | Path) -> Path | None:
    r"""The voxel data file a detached header names: a MetaImage ``.mhd`` (ElementDataFile) or an NRRD ``.nhdr``
    (``data file``); None for any other file, or when the data are inside the header or in a list or pattern.

    Example:
        >>> import tempfile
        >>> header = Path(tempfile.mkdtemp()) / "scan.mhd"
        >>> _ = header.write_text("NDims = 3\nElementDataFile = scan.raw\n")
        >>> detached_data_file(header).name, detached_data_file(header.with_suffix(".png"))
        ('scan.raw', None)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mhd":
        value = _metaimage_fields(path).get("ElementDataFile")
    elif suffix == ".nhdr":
        value = None
        with open(path, encoding="latin-1") as header:
            for line in header:
                if not line.strip():  # an NRRD header ends at its first blank line
                    break
                key, _, field = line.partition(":")
                if key.strip().lower() in ("data file", "datafile"):
                    value = field.strip()
                    break
    else:
        return None
    inside = value is None or value in ("LOCAL", "LIST") or value.startswith("LIST") or " " in value
    return None if inside else path.parent / value


# ----------------------------------------------------------------------------------------------
# Any volume, and inspection


def is_nifti(path: str | Path) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name.

    Example:
        >>> is_nifti("brain.NII.GZ"), is_nifti("scan.dcm")
        (True, False)
    """
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_volume_file(path: str | Path) -> bool:
    """True for a file name of a volume format: NIfTI, MetaImage or NRRD.

    Example:
        >>> is_volume_file("1.3.6.1.4.1.14519.5.2.1.6279.mhd"), is_volume_file("chest.png")
        (True, False)
    """
    return is_nifti(path) or str(path).lower().endswith(METAIMAGE_SUFFIXES + NRRD_SUFFIXES)


def read_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """A DICOM series folder (:func:`read_dicom_series`), a NIfTI file (:func:`read_nifti`) or a
    MetaImage or NRRD file (:func:`read_itk`).

    Example:
        >>> read_volume("scans/chest.png")  # doctest: +SKIP
        Traceback (most recent call last):
        tfmed.data.volumes.VolumeError: scans/chest.png: not a volume ...
    """
    path = Path(path)
    if path.is_dir() or is_volume_file(path):
        return (read_dicom_series(path, series_uid) if path.is_dir()
                else read_nifti(path) if is_nifti(path) else read_itk(path))
    if not path.exists():
        raise VolumeError(path, "not found", "check the path")
    raise VolumeError(path, f"not a volume (a folder of DICOM files or {VOLUME_FILES} is expected)",
                      f"point at the folder of one DICOM series or at {VOLUME_FILES}")


def inspect(path: str | Path, series_uid: str | None = None) -> dict:
    """Describe an image, a DICOM series folder or a volume file (see :func:`format_inspection`).

    A folder holding several series is described by listing them (nothing is
    decoded); otherwise the pixels of one series, volume file (NIfTI,
    MetaImage, NRRD) or 2-D image
    (PNG, JPEG, TIFF, BMP, single DICOM file) are read for the intensity range.
    Anything unreadable raises the reader's error.

    The report's keys: path, kind, problems; modality, patient_id, study_uid,
    series_uid, transfer_syntax (DICOM); shape, axes, spacing_mm,
    intensity_range, intensity_unit ("HU" for CT); orientation, origin_mm and
    files (volumes); format and bit_depth (2-D images); series (a folder of
    several series: one summary each, instead of shape and values).

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> report = inspect(get_testdata_file("CT_small.dcm"))
        >>> report["kind"], report["shape"], report["intensity_range"], report["intensity_unit"]
        ('image', [128, 128, 1], [-896.0, 1167.0], 'HU')
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(path, "not found", "check the path")
    if path.is_dir():
        series, problems = _scan_folder(path)
        if series_uid is None and len(series) > 1:
            return {"path": str(path), "kind": f"DICOM folder ({len(series)} series)",
                    "series": [s.summary() for s in series.values()],
                    "problems": problems + [_several_series_advice(path, series)]}
        chosen = _select_series(path, series, series_uid)
        report = _volume_report(_read_series(path, chosen, problems), "DICOM series")
        report["files"] = len(chosen.files)
        return report
    if series_uid is not None:
        raise VolumeError(path, f"a file, and --series ({series_uid}; series_uid=) chooses a series of a folder of "
                          "DICOM files", "pass the folder that holds the series, or leave --series out to describe "
                          "this file")
    if is_nifti(path):
        return _volume_report(read_nifti(path), "NIfTI")
    if is_volume_file(path):
        return _volume_report(read_itk(path), _itk_kind(path))
    headers = [header for header in path.parent.glob(path.stem + ".*")
               if header.suffix.lower() in (".mhd", ".nhdr") and detached_data_file(header) == path]
    if headers:
        raise VolumeError(path, f"the voxel data of {headers[0].name}, which describes them", f"inspect {headers[0]}")
    return _image_report(path)


def _several_series_advice(folder: Path, series: dict[str, _Series]) -> str:
    """What to do with a folder of several series: choose one, or, when each is one 2-D image (radiographs
    exported one file per series), use the folder as a data source instead of as a volume."""
    single = [s for s in series.values() if len(s.files) == 1 and _frames(s.headers[0]) == 1]
    if len(single) < len(series):
        return f"{len(series)} series in this folder: pass --series UID (series_uid=) to inspect one"
    return (f"each of the {len(series)} series is one 2-D image (one file of one frame), so this folder is not a "
            f"volume: train on such images as a data source (a manifest, or the dicom: source's class "
            f"sub-folders), and run tfmed inspect {folder / single[0].files[0].name} to describe one")


def _frames(header) -> int:
    try:
        return int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _volume_report(volume: Volume, kind: str) -> dict:
    return {"path": volume.source, "kind": kind, "modality": volume.modality, "patient_id": volume.patient_id,
            "series_uid": volume.series_uid, "study_uid": volume.study_uid,
            "shape": list(volume.shape), "axes": "slices x rows x columns",
            "spacing_mm": [round(float(s), 6) for s in volume.spacing],
            "orientation": dict(zip(("slices", "rows", "columns"), volume.axis_codes())),
            "origin_mm": [round(float(v), 3) for v in volume.origin],
            "intensity_range": list(volume.intensity_range()), "intensity_unit": volume.intensity_unit,
            "transfer_syntax": volume.transfer_syntax, "problems": list(volume.problems)}


def _image_report(path: Path) -> dict:
    array, info = read_image_and_info(path)
    report = {"path": str(path), "kind": "image", "format": info.kind, "modality": None,
              "shape": [info.height, info.width, info.channels], "axes": "rows x columns x channels",
              "bit_depth": info.bit_depth, "spacing_mm": None,
              "intensity_range": [float(array.min()), float(array.max())], "intensity_unit": None,
              "problems": [f"decoder: {line}" for line in info.decoder_output.splitlines()] + list(info.notes)}
    if info.kind == "dicom":
        import pydicom

        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        report.update(modality=_text(header, "Modality"), patient_id=_text(header, "PatientID"),
                      series_uid=_text(header, "SeriesInstanceUID"), study_uid=_text(header, "StudyInstanceUID"),
                      transfer_syntax=_syntax_name(header), spacing_mm=_pixel_spacing(header),
                      intensity_unit="HU" if _text(header, "Modality") == "CT" and not lacks_rescale(header) else None)
        if report["spacing_mm"] is not None:
            report["spacing_mm"] = list(report["spacing_mm"])
    return report


SERIES_SHOWN = 10  # series of a folder that format_inspection lists; the report holds all of them
# Report keys in printing order, with their labels.
_LABELS = (("kind", "kind"), ("format", "format"), ("modality", "modality"), ("patient_id", "patient id"),
           ("study_uid", "study uid"), ("series_uid", "series uid"), ("shape", "shape"),
           ("spacing_mm", "spacing"), ("orientation", "orientation"), ("origin_mm", "origin"),
           ("intensity_range", "intensity range"), ("bit_depth", "bits per sample"),
           ("transfer_syntax", "transfer syntax"))


def format_inspection(report: dict) -> str:
    """The lines ``tfmed inspect`` prints for a report of :func:`inspect`.

    Example:
        >>> from pydicom.data import get_testdata_file
        >>> print(format_inspection(inspect(get_testdata_file("CT_small.dcm"))))  # doctest: +ELLIPSIS
        /.../CT_small.dcm
          kind: image (dicom)
          modality: CT
          patient id: 1CT1
          study uid: 1.3.6.1.4.1.5962.1.2.1.20040119072730.12322
          series uid: 1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322
          shape: 128 rows x 128 columns x 1 channels
          spacing: 0.661468 x 0.661468 mm (row x column)
          intensity range: -896 .. 1167 HU
          bits per sample: 16
          transfer syntax: Explicit VR Little Endian
          problems: none
    """
    lines = [report["path"]]
    for key, label in _LABELS:
        if report.get(key) is not None and key != "format":
            lines.append(f"  {label}: {_format_value(key, report)}")
    listed = report.get("series", [])
    lines.extend(f"  series {_series_line(summary)}" for summary in listed[:SERIES_SHOWN])
    if len(listed) > SERIES_SHOWN:
        lines.append(f"  ... and {len(listed) - SERIES_SHOWN} more series")
    problems = report.get("problems", [])
    lines.append("  problems:" if problems else "  problems: none")
    lines.extend(f"    - {problem}" for problem in problems)
    return "\n".join(lines)


def _format_value(key: str, report: dict) -> str:
    value = report[key]
    axes = report.get("axes", "").split(" x ")
    if key == "kind":
        detail = report.get("format") or (count_noun(report['files'], 'file') if "files" in report else "")
        return f"{value} ({detail})" if detail else value
    if key == "shape":
        return " x ".join(f"{n} {axis}" for n, axis in zip(value, axes))
    if key == "spacing_mm":
        names = ("slice", "row", "column")[-len(value):]
        return f"{' x '.join(f'{v:g}' for v in value)} mm ({' x '.join(names)})"
    if key == "orientation":
        return ", ".join(f"{axis} toward {code}" for axis, code in value.items()) + " (patient L/R, P/A, S/I)"
    if key == "origin_mm":
        return f"({', '.join(f'{v:g}' for v in value)}) mm, patient coordinates (LPS) of voxel 0, 0, 0"
    if key == "intensity_range":
        unit = f" {report['intensity_unit']}" if report.get("intensity_unit") else ""
        return f"{value[0]:g} .. {value[1]:g}{unit}"
    return str(value)


# ----------------------------------------------------------------------------------------------
# Small helpers


def _text(header, keyword: str) -> str | None:
    value = header.get(keyword)
    return (str(value).strip() or None) if value is not None else None


def _syntax_name(header) -> str | None:
    syntax = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
    return syntax.name if syntax is not None else None


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _show(value) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return " x ".join(map(str, value))
    return "[" + ", ".join(f"{float(v):g}" for v in value) + "]"
