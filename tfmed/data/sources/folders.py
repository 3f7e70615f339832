"""Folders of images (``data.source: folder``): one sub-folder per class, or labels in file names.

With ``data.filename_label_suffix`` the label is the integer after the last "_"
of each file name (``CHNCXR_0001_0.png`` -> 0), as the NLM tuberculosis sets name them.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.decode import SUPPORTED_EXTENSIONS, image_kind
from tfmed.data.sources.base import (SourceKind, class_files, class_folder_names, files_under,
                                     outside_classes, skipped_file, source_table)
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

SUFFIX_LABEL = re.compile(r"^(?P<stem>.+)_(?P<label>\d+)$")
# what validation suggests when class folders give no patient id (no patient sub-folders, no pattern)
PATIENT_FIX = ("put each patient's images in a sub-folder of its class folder (normal/PATIENT/image.png), or "
               "set data.patient_pattern to read the patient id from the file path, e.g. '(person\\d+)_' for "
               "person1_bacteria_1.jpeg ('(.+)' only when each file is known to be a patient of its own)")


def patient_from_path(relative: str, pattern: str) -> str | None:
    r"""The patient id that ``pattern`` finds in a "/"-separated path: its group "patient", else its
    first group, else the whole match; None when it finds none.

    Example:
        >>> patient_from_path("PNEUMONIA/person1_bacteria_1.jpeg", r"(person\d+)_")
        'person1'
        >>> patient_from_path("NORMAL/IM-0115-0001.jpeg", r"(?P<patient>IM-\d+)-")
        'IM-0115'
        >>> patient_from_path("NORMAL/scan.jpeg", r"(person\d+)_") is None
        True
    """
    match = re.search(pattern, relative)
    if match is None:
        return None
    compiled = match.re
    found = match.group("patient") if "patient" in compiled.groupindex else (
        match.group(1) if compiled.groups else match.group(0))
    return found or None


def _pattern_problem(record: dict, relative: str, pattern: str) -> None:
    """Set the record's patient id from ``pattern``, or give it a problem naming the pattern."""
    patient = patient_from_path(relative, pattern)
    if patient is None:
        record["patient_id"] = pd.NA
        record[SOURCE_PROBLEMS] = record[SOURCE_PROBLEMS] + (
            (f"data.patient_pattern '{pattern}' finds no patient id in '{relative}'",
             "change the pattern so that it finds the patient in every file's path, or move the file out"),)
    else:
        record["patient_id"] = patient


def load_class_folders(path: str | Path, classes: list[str] | None = None,
                       task: str | None = None, patient_pattern: str | None = None) -> ImageTable:
    """One sub-folder per class (class order: ``classes`` or sorted folder names).

    Files are found recursively; when an image sits in a further sub-folder
    (``normal/patient7/img1.png``) that folder name is its patient id,
    otherwise the patient id is unknown, unless ``patient_pattern`` finds it
    in the file's path (see :func:`patient_from_path`). Files of unsupported
    types are listed in ``table.excluded`` (and as warnings by validation).

    Example:
        >>> import cv2, numpy as np, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("normal", "tb"):
        ...     (root / c).mkdir(); _ = cv2.imwrite(str(root / c / "a.png"), np.zeros((4, 4), np.uint8))
        >>> load_class_folders(root).frame["label"].tolist()
        [0, 1]
    """
    path = Path(path)
    names = class_folder_names(path, classes)
    records, skipped = [], []
    for label, name, file, row in class_files(path, names, SUPPORTED_EXTENSIONS, skipped,
                                               lambda f: f"unsupported file type {f.suffix or '(none)'!r}"):
        parts = file.relative_to(path / name).parts
        patient = parts[0] if len(parts) > 1 else pd.NA
        record = dict(image=str(file), label=label, patient_id=patient, site=pd.NA, view=pd.NA,
                      row=row, **{SOURCE_PROBLEMS: ()})
        if patient_pattern is not None:
            _pattern_problem(record, file.relative_to(path).as_posix(), patient_pattern)
        records.append(record)
    table = source_table(records, skipped + outside_classes(path, names), names, task, source=str(path))
    table.frame.attrs["patient_fix"] = PATIENT_FIX
    return table


def suffix_classes(found: list[int]) -> list[str]:
    """The classes "0", "1", ... read from the label suffixes ``found``: up to the first class without a file above
    the lowest suffix (labels past it are reported, naming their files), at least two.

    Example:
        >>> suffix_classes([0, 1, 1, 102]), suffix_classes([1, 2]), suffix_classes([])
        (['0', '1'], ['0', '1', '2'], ['0', '1'])
    """
    present = set(found)
    count = next((i for i in range(min(present), max(present) + 2) if i not in present), 0) if present else 0
    return [str(i) for i in range(max(count, 2))]


def load_suffix_folder(path: str | Path, classes: list[str] | None = None,
                       task: str | None = None, patient_pattern: str | None = None) -> ImageTable:
    """Label from the integer after the last "_" of each file name, found recursively.

    This is how the NLM Shenzhen and Montgomery tuberculosis sets name
    their files (``CHNCXR_0001_0.png`` normal, ``MCUCXR_0104_1.png`` TB).
    ``site`` is the first sub-folder under ``path``; ``patient_id`` is the
    file stem without the suffix, or what ``patient_pattern`` finds in the
    file's path. A file without a valid suffix is kept as a row with a
    problem (validation names it).

    Example:
        >>> import cv2, numpy as np, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "shenzhen").mkdir()
        >>> _ = cv2.imwrite(str(root / "shenzhen" / "CHNCXR_0001_1.png"), np.zeros((4, 4), np.uint8))
        >>> table = load_suffix_folder(root, classes=["normal", "tb"])
        >>> row = table.frame.iloc[0]
        >>> int(row["label"]), row["patient_id"], row["site"]
        (1, 'CHNCXR_0001', 'shenzhen')
    """
    path = Path(path)
    records, skipped, found = [], [], []
    hidden: list[dict] = []
    for file in files_under(path, hidden):
        row = len(records) + len(skipped) + 1
        if image_kind(file) is None:
            skipped.append(skipped_file(file, row, f"unsupported file type {file.suffix or '(none)'!r}"))
            continue
        parts = file.relative_to(path).parts
        site = parts[0] if len(parts) > 1 else pd.NA
        match = SUFFIX_LABEL.match(file.stem)
        record = dict(image=str(file), label=pd.NA, patient_id=file.stem, site=site, view=pd.NA, row=row,
                      **{SOURCE_PROBLEMS: ()})
        if match is None:
            record[SOURCE_PROBLEMS] = ((f"file name {file.name!r} does not end in _<label> "
                                          "(e.g. CHNCXR_0001_0.png)",
                                          "rename the file with its label suffix or move it out"),)
        else:
            record["label"] = int(match.group("label"))
            record["patient_id"] = match.group("stem")
            found.append(record["label"])
        if patient_pattern is not None:
            _pattern_problem(record, file.relative_to(path).as_posix(), patient_pattern)
        records.append(record)
    inferred = classes is None
    if inferred:
        classes = suffix_classes(found)
    for record in records:
        label = record["label"]
        if label is pd.NA or label < len(classes):
            continue
        if inferred:  # past a class no file has: e.g. CHNCXR_0102.png, its suffix forgotten, read as label 102
            problem = (f"its label suffix lies past the classes read from the other files' suffixes ({classes}), and "
                       "no file's suffix gives the labels in between",
                       "if the file name lacks its label suffix (as CHNCXR_0102.png would, read as label 102: name "
                       "it e.g. CHNCXR_0102_0.png), add it; else name every class in data.classes")
        else:
            problem = (f"label suffix {label} is not an index into classes {classes}",
                       "rename the file or list the class in data.classes")
        record[SOURCE_PROBLEMS] += (problem,)  # after a patient_pattern problem, if any
        record["label"] = pd.NA
    if not records:
        raise DataSourceError(f"{path}: no image files found (looked recursively for "
                              f"{', '.join(SUPPORTED_EXTENSIONS)} named NAME_<label>)")
    return source_table(records, skipped + hidden, list(classes), task, source=str(path))


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    if config.filename_label_suffix:
        return load_suffix_folder(path, classes=config.classes, task=config.task,
                                  patient_pattern=config.patient_pattern)
    return load_class_folders(path, classes=config.classes, task=config.task,
                              patient_pattern=config.patient_pattern)


SOURCE = SourceKind("folder", "a folder with one sub-folder of images per class (or, with "
                              "data.filename_label_suffix, files named NAME_<label>.png)",
                    needs_folder=True, load=_load)
