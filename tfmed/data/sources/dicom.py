"""Folders of DICOM files (``data.source: dicom``), one sub-folder per class."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.decode import DICOM_EXTENSIONS, python_warnings_caught
from tfmed.data.demographics import log_unreadable, published_demographics
from tfmed.data.sources.base import SourceKind, class_files, class_folder_names, outside_classes, source_table
from tfmed.data.table import ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS


def load_dicom_folder(path: str | Path, classes: list[str] | None = None,
                      task: str | None = None) -> ImageTable:
    """One sub-folder per class of DICOM files (``.dcm``/``.dicom`` or no extension with the DICM marker).

    ``patient_id`` comes from PatientID, ``view`` from ViewPosition and
    ``site`` from InstitutionName, ``sex`` and ``age`` from PatientSex and PatientAge when present (a value
    that cannot be read is logged and left unknown). Headers are read without
    pixel data (pydicom's warnings unshown: validation's decode reports them with
    the file); a file whose header cannot be read is kept as a row with a
    problem.

    Example:
        >>> import shutil, tempfile, pathlib
        >>> from pydicom.data import get_testdata_file
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("a", "b"):
        ...     (root / c).mkdir(); _ = shutil.copy(get_testdata_file("CT_small.dcm"), root / c / "x.dcm")
        >>> load_dicom_folder(root).frame["patient_id"].tolist()
        ['1CT1', '1CT1']
    """
    import pydicom

    path = Path(path)
    names = class_folder_names(path, classes)
    records, skipped, unreadable = [], [], Counter()
    for label, _, file, row in class_files(path, names, DICOM_EXTENSIONS, skipped,
                                            lambda f: "not a DICOM file (no .dcm/.dicom extension or "
                                                      "DICM marker)",
                                            "data.source dicom reads DICOM files only: use data.source folder "
                                            "for PNG/JPEG class folders, or move the file out"):
        record = dict(image=str(file), label=label, patient_id=pd.NA, site=pd.NA, view=pd.NA, row=row,
                      **{SOURCE_PROBLEMS: ()})
        try:
            # What pydicom warns of here (e.g. "Expected explicit VR, but found implicit VR") it warns of again
            # when validation decodes the file, which names the file with it: not printed here.
            with python_warnings_caught():
                header = pydicom.dcmread(str(file), stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types for damaged headers
            record[SOURCE_PROBLEMS] = ((f"DICOM header cannot be read ({type(error).__name__}: "
                                          f"{error})", "re-export the file or remove it"),)
        else:
            for column, keyword in (("patient_id", "PatientID"), ("view", "ViewPosition"),
                                    ("site", "InstitutionName")):
                value = str(header.get(keyword, "") or "").strip()
                if value:
                    record[column] = value
            record.update(published_demographics(header.get("PatientSex"), header.get("PatientAge"), unreadable))
        records.append(record)
    log_unreadable(path, unreadable)
    return source_table(records, skipped + outside_classes(path, names), names, task, source=str(path))


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_dicom_folder(path, classes=config.classes, task=config.task)


SOURCE = SourceKind("dicom", "a folder with one sub-folder of DICOM files per class", needs_folder=True,
                    load=_load)
