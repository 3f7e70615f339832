"""NIH ChestX-ray14 as published (``data.source: chestxray14``).

Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks
on Weakly-Supervised Classification and Localization of Common Thorax
Diseases", CVPR 2017.

``data.path`` is the publisher's ``Data_Entry_2017.csv``, read unchanged. Its
header is ``Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,
Patient Gender,View Position,OriginalImage[Width,Height],
OriginalImagePixelSpacing[x,y],`` (with a trailing comma in the 2017 file);
only the first, second, fourth and seventh columns are read, by name, so the
trailing comma and the unquoted commas inside the last names do no harm.

* Images: each ``Image Index`` is looked up by file name anywhere under
  ``data.root``, which is indexed once. The default root is ``images/`` next
  to the CSV when that folder exists, else the CSV's own folder, so both the
  single ``images/`` folder and the ``images_001/images/`` ...
  ``images_012/images/`` layout of the download are found. A name not found
  keeps the path where it was expected (``ROOT/NAME``), so validation reports
  it as a missing file on its line.
* Labels: a multilabel task over the 14 findings of :data:`FINDINGS`, in that
  order (``data.classes`` may choose some of them, in the order given).
  ``Finding Labels`` lists a row's findings separated by ``|``
  (``Atelectasis|Effusion``); ``No Finding`` means all 14 are negative.
* ``patient_id`` is ``Patient ID``, ``view`` is ``View Position`` (PA or AP).
* Splits: when ``train_val_list.txt`` and ``test_list.txt`` (one image name per
  line, as published) sit next to the CSV, the images of ``test_list.txt`` get
  split ``test`` and those of ``train_val_list.txt`` split ``train``; with
  ``split.method: predefined`` the validation split is then carved from the
  train images by patient (``split.val_fraction`` of them). Without the two
  files no split is set.

Problems in the rows (an unknown finding, an empty ``Finding Labels`` cell, an
image in neither or both list files, a file name found twice under the root)
are row problems that :func:`tfmed.data.validate.validate_table` reports with
the CSV line number (the header is line 1); a header without a column that is
read raises :class:`~tfmed.data.table.DataSourceError` at once.

Example:
    >>> import cv2, numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()); (folder / "images").mkdir()
    >>> _ = (folder / "Data_Entry_2017.csv").write_text(HEADER + "\\n"
    ...     "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA,2682,2749,0.143,0.143,\\n"
    ...     "00000002_000.png,No Finding,0,2,81,M,AP,2500,2048,0.171,0.171,\\n")
    >>> for name in ("00000001_000.png", "00000002_000.png"):
    ...     _ = cv2.imwrite(str(folder / "images" / name), np.zeros((8, 8), np.uint8))
    >>> table = load_chestxray14(folder / "Data_Entry_2017.csv", classes=["Effusion", "Cardiomegaly"])
    >>> table.task, table.labels().tolist(), table.frame["view"].tolist(), table.frame["row"].tolist()
    ('multilabel', [[1, 1], [0, 0]], ['PA', 'AP'], [2, 3])
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.demographics import log_unreadable, published_demographics
from tfmed.data.sources.base import (SourceKind, chosen_labels, index_files, label_frame, list_lines, read_csv_rows,
                                     row_values, with_fixes)
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
IMAGE, FINDING_LABELS, PATIENT, VIEW = "Image Index", "Finding Labels", "Patient ID", "View Position"
SEX, AGE = "Patient Gender", "Patient Age"
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"


def load_chestxray14(path: str | Path, root: str | Path | None = None,
                     classes: list[str] | None = None) -> ImageTable:
    """Read the publisher's ``Data_Entry_2017.csv`` into a multilabel :class:`ImageTable`.

    Args:
        path: ``Data_Entry_2017.csv``.
        root: folder searched (with its sub-folders) for the PNG files; default
            ``images/`` next to the CSV, or the CSV's folder when there is none.
        classes: findings to use, in this order (default: all of :data:`FINDINGS`).

    Raises:
        DataSourceError: the CSV is unreadable or its header lacks a column that
            is read, ``classes`` names an unknown finding, the image folder does
            not exist or holds none of the listed images, or only one of the two
            list files is present.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "Data_Entry_2017.csv").write_text("Image Index,Patient ID\\n")
        >>> load_chestxray14(folder / "Data_Entry_2017.csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: ...(line 1, the header): no column 'Finding Labels', 'View Position'...
    """
    path = Path(path)
    names = chosen_labels(classes, FINDINGS, "ChestX-ray14")
    header, rows = read_csv_rows(path, (IMAGE, FINDING_LABELS, PATIENT, VIEW),
                                 "the publisher's Data_Entry_2017.csv of NIH ChestX-ray14, unchanged")
    root = Path(root) if root is not None else _default_root(path)
    if not root.is_dir():
        raise DataSourceError(f"{root}: image folder not found (data.root for {path}). Put the ChestX-ray14 "
                              "PNG files there (in any sub-folders, e.g. images_001/images/), or set data.root "
                              "to the folder that holds them.")
    found = index_files(root)
    splits = _read_lists(path)
    column = {name: header.index(name) for name in (IMAGE, FINDING_LABELS, PATIENT, VIEW, SEX, AGE) if name in header}
    records, located, unreadable = [], 0, Counter()
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        record = {"row": line, "image": pd.NA, "patient_id": value[PATIENT] or pd.NA,
                  "view": value[VIEW] or pd.NA, "split": pd.NA,
                  **published_demographics(value.get(SEX), value.get(AGE), unreadable)}
        image = value[IMAGE]
        if image:
            places = found.get(image, [])
            located += bool(places)
            record["image"] = places[0] if places else os.path.join(root, image)
            if len(places) > 1:
                problems.append((f"{image} is found {len(places)} times under {root}: "
                                 + ", ".join(places), "keep one copy of the file"))
            if splits is not None:
                record["split"] = _list_split(image, splits, problems)
        else:
            problems.append((f"empty {IMAGE!r}", "write the image's file name (e.g. 00000001_000.png)"))
        positives = _findings(value[FINDING_LABELS], problems)
        for name in names:
            record[LABEL_PREFIX + name] = pd.NA if positives is None else int(name in positives)
        record[SOURCE_PROBLEMS] = tuple(problems)
        records.append(record)
    if records and not located:
        raise DataSourceError(f"{root}: none of the {len(records)} images listed in {path} is in this folder "
                              "or its sub-folders. Set data.root to the folder holding the ChestX-ray14 PNG "
                              "files (e.g. the one with images_001/ ... images_012/).")
    log_unreadable(path, unreadable)
    table = ImageTable(label_frame(records, names), names, "multilabel", source=str(path))
    lists = (f"put each patient's images in one of {TRAIN_VAL_LIST} and {TEST_LIST} (beside {path.name}; the "
             "publisher's lists keep each patient in one)")
    return with_fixes(table, missing_fix=f"ChestX-ray14's images are looked for by file name in {root} and its "
                      "sub-folders (data.root; by default images/ beside the CSV, else the CSV's folder): put the "
                      "PNG file there, set data.root to the folder that holds it, or remove the row",
                      patient_fix=f"fill the row's {PATIENT} cell in {path.name} as published (the number its "
                      f"{IMAGE} begins with, e.g. 1 for 00000001_000.png)",
                      split_fix=lists if splits is not None else None)


def _default_root(path: Path) -> Path:
    images = path.parent / "images"
    return images if images.is_dir() else path.parent


def _read_lists(path: Path) -> dict[str, set[str]] | None:
    present = {name: path.parent / name for name in (TRAIN_VAL_LIST, TEST_LIST)
               if (path.parent / name).is_file()}
    if not present:
        return None
    if len(present) == 1:
        (have,) = present
        (lack,) = {TRAIN_VAL_LIST, TEST_LIST} - {have}
        raise DataSourceError(f"{path.parent}: {have} is here but {lack} is not; put both of the publisher's "
                              "list files next to the CSV (or neither, to let tfmed split by patient)")
    return {name: {line for _, line in list_lines(file)} for name, file in present.items()}


def _list_split(image: str, splits: dict[str, set[str]], problems: list):
    in_train, in_test = image in splits[TRAIN_VAL_LIST], image in splits[TEST_LIST]
    if in_train and in_test:
        problems.append((f"{image} is in both {TRAIN_VAL_LIST} and {TEST_LIST}",
                         "remove it from one of the two lists"))
    elif not (in_train or in_test):
        problems.append((f"{image} is in neither {TRAIN_VAL_LIST} nor {TEST_LIST}",
                         "add its name to one of the two lists next to the CSV, or remove the row"))
    else:
        return "test" if in_test else "train"
    return pd.NA


def _findings(cell: str, problems: list) -> set[str] | None:
    """The positive findings of a ``Finding Labels`` cell (empty for No Finding), None when unusable."""
    known = f"{NO_FINDING!r}, or findings from {', '.join(FINDINGS)} separated by '|'"
    if cell == "":
        problems.append((f"empty {FINDING_LABELS!r}", f"write {known}"))
        return None
    parts = [part.strip() for part in cell.split("|")]
    unknown = [part for part in parts if part not in FINDINGS and part != NO_FINDING]
    if unknown:
        problems.append((f"unknown finding {', '.join(map(repr, unknown))} in {FINDING_LABELS!r} {cell!r}",
                         f"write {known}"))
        return None
    if NO_FINDING in parts and len(parts) > 1:
        problems.append((f"{NO_FINDING!r} together with findings in {FINDING_LABELS!r} {cell!r}",
                         f"keep either {NO_FINDING!r} or the findings"))
        return None
    return set(parts) - {NO_FINDING}


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_chestxray14(path, root=root, classes=config.classes)


SOURCE = SourceKind("chestxray14", "the publisher's Data_Entry_2017.csv of NIH ChestX-ray14 (the PNG files "
                                   "in images/ next to it or under data.root, in any sub-folders)",
                    needs_folder=False, load=_load)
