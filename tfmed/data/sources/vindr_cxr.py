"""VinDr-CXR as published for the VinBigData challenge (``data.source: vindr_cxr``).

Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's
annotations", Scientific Data 2022; the Kaggle "VinBigData Chest X-ray
Abnormalities Detection" release.

``data.path`` is the challenge's ``train.csv``
(``image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max``), read
unchanged: one line per finding a radiologist boxed, or one ``No finding``
line (class 14, no box) from a radiologist who found nothing. Each image was
read by three of 17 radiologists.

* Images: ``train/<image_id>.dicom`` in ``data.root`` (default: the CSV's
  folder), else ``<image_id>.dicom`` in the root itself, the DICOM files as
  published (the boxes are in their pixels).
* Rows: one per image, numbered by its first line. A multilabel task over the
  14 findings of :data:`FINDINGS` (class ids 0-13), or those ``data.classes``
  chooses: a finding is positive when at least ``data.min_readers`` of the
  image's radiologists marked it (default 1: any of them; 2: a majority of
  three). ``boxes`` holds every box of the chosen findings, from every
  radiologist (:mod:`tfmed.data.boxes`), each named by its finding, so that the
  map of a finding is measured against that finding's boxes.
  ``patient_id`` is the ``image_id`` (the release has no patient ids).
* Row problems, with the image's first line: a class id outside 0-14 or a
  class name that is not its id's, a finding without its box or with an empty
  one, a ``No finding`` line with a box, a radiologist who gave an image both
  ``No finding`` and a finding, an empty ``image_id`` or ``rad_id``.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "train.csv").write_text(HEADER + "\\n"
    ...     "9a5094b2563a1ef3ff50dc5c7ff71345,Cardiomegaly,3,R10,691.0,1375.0,1653.0,1831.0\\n"
    ...     "9a5094b2563a1ef3ff50dc5c7ff71345,No finding,14,R9,,,,\\n")
    >>> table = load_vindr_cxr(folder / "train.csv", classes=["Cardiomegaly", "Pneumothorax"])
    >>> table.labels().tolist(), table.frame["boxes"].tolist()
    ([[1, 0]], ['Cardiomegaly:691,1375,962,456'])
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.boxes import BOXES_COLUMN, box_from_corners, format_boxes
from tfmed.data.sources.base import (SourceKind, chosen_labels, label_frame, read_csv_rows, repeated_lines, row_values,
                                     with_fixes)
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

FINDINGS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
            "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
            "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis")
NO_FINDING, NO_FINDING_ID = "No finding", 14
IMAGE, CLASS_NAME, CLASS_ID, READER = "image_id", "class_name", "class_id", "rad_id"
BOX = ("x_min", "y_min", "x_max", "y_max")
HEADER = ",".join((IMAGE, CLASS_NAME, CLASS_ID, READER) + BOX)
IMAGES = "train"
WHAT = "the challenge's train.csv of VinDr-CXR (VinBigData), unchanged"


def load_vindr_cxr(path: str | Path, root: str | Path | None = None, classes: list[str] | None = None,
                   min_readers: int = 1) -> ImageTable:
    """Read the challenge's ``train.csv`` into a multilabel :class:`ImageTable`, one row per image with its boxes.

    Args:
        path: ``train.csv``.
        root: the folder holding ``train/`` (default: the CSV's folder).
        classes: findings to use, in this order (default: all 14, in class id order).
        min_readers: radiologists who must mark a finding for it to be positive (1: any).

    Raises:
        DataSourceError: the CSV is unreadable or lacks a column, or ``classes`` names an unknown finding.

    Example:
        >>> load_vindr_cxr("vinbigdata/train.csv", classes=["Nodule"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: data.classes names 'Nodule', which VinDr-CXR does not have; ...
    """
    path = Path(path)
    names = chosen_labels(classes, FINDINGS, "VinDr-CXR")
    header, rows = read_csv_rows(path, (IMAGE, CLASS_NAME, CLASS_ID, READER) + BOX, WHAT)
    root = Path(root) if root is not None else path.parent
    folder = root / IMAGES if (root / IMAGES).is_dir() else root
    column = {name: header.index(name) for name in (IMAGE, CLASS_NAME, CLASS_ID, READER) + BOX}
    images: dict[str, dict] = {}
    repeats = repeated_lines(rows, "radiologist's finding")
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        image = images.setdefault(value[IMAGE], {"row": line, "readers": {}, "boxes": [], "problems": []})
        if line in repeats:
            image["problems"].append(repeats[line])
            continue
        finding = _finding(value, line, problems)
        if not value[READER]:
            problems.append((f"line {line}: empty {READER}", "write the radiologist's id as published (R1 ... R17)"))
        elif finding is not None:
            marked = image["readers"].setdefault(value[READER], set())
            if (finding == NO_FINDING) != (NO_FINDING in marked) and marked:
                problems.append((f"line {line}: radiologist {value[READER]} gives the image both {NO_FINDING!r} "
                                 "and a finding", "keep the publisher's lines"))
            marked.add(finding)
            if finding in names:
                image["boxes"].append((finding, _box(value, line, problems)))
        image["problems"] += problems
    most = max((len(image["readers"]) for image in images.values()), default=0)
    if min_readers > most:
        raise DataSourceError(f"data.min_readers is {min_readers}, but no image of {path} was read by more than "
                              f"{most} radiologist(s), so no finding could be positive; set it to 1-{most} "
                              "(VinDr-CXR's training images were each read by three)")
    records = [_record(image_id, image, folder, names, min_readers) for image_id, image in images.items()]
    frame = label_frame(records, names, extra=(BOXES_COLUMN,))
    frame[BOXES_COLUMN] = frame[BOXES_COLUMN].astype("string")
    return with_fixes(ImageTable(frame, names, "multilabel", source=str(path)),
                      missing_fix=f"VinDr-CXR's images are read as <image_id>.dicom from {folder} ({IMAGES}/ under "
                      "data.root when it is there, else data.root; by default the CSV's folder): put the DICOM file "
                      "there, set data.root, or remove the image's lines")


def _finding(value: dict, line: int, problems: list) -> str | None:
    """The finding a line names (NO_FINDING included); None, and a problem, when its id and name do not agree."""
    known = dict(enumerate(FINDINGS + (NO_FINDING,)))
    code = value[CLASS_ID]
    if not code.isdigit() or int(code) not in known:
        problems.append((f"line {line}: {CLASS_ID} {code!r} is not 0-{NO_FINDING_ID}",
                         f"write the publisher's class id (0-13 for the findings, {NO_FINDING_ID} for {NO_FINDING})"))
        return None
    name = known[int(code)]
    if value[CLASS_NAME] != name:
        problems.append((f"line {line}: {CLASS_NAME} {value[CLASS_NAME]!r} is not class {code}'s ({name!r})",
                         "keep the publisher's class_name and class_id together"))
        return None
    if name == NO_FINDING and any(value[key] for key in BOX):
        problems.append((f"line {line}: a {NO_FINDING!r} line with a box", "leave its box fields empty as published"))
    return name


def _box(value: dict, line: int, problems: list):
    """The line's box as (x, y, width, height) in pixels; None, and a problem, when it is missing or empty."""
    try:
        return box_from_corners([value[key] for key in BOX])
    except ValueError as error:
        problems.append((f"line {line}: the finding's box {error}", "keep the publisher's x_min, y_min, x_max, "
                                                                     "y_max in pixels"))
        return None


def _record(image_id: str, image: dict, folder: Path, names: list[str], min_readers: int) -> dict:
    problems = list(image["problems"])
    boxed = [(finding, box) for finding, box in image["boxes"] if box is not None]
    if not image_id:
        problems.append((f"empty {IMAGE}", "write the image's id as published"))
    record = {"image": str(folder / f"{image_id}.dicom") if image_id else pd.NA, "patient_id": image_id or pd.NA,
              "site": pd.NA, "view": pd.NA, "split": pd.NA, "row": image["row"],
              BOXES_COLUMN: format_boxes([box for _, box in boxed], [finding for finding, _ in boxed]) or pd.NA,
              SOURCE_PROBLEMS: tuple(problems)}
    for name in names:
        readers = sum(name in marked for marked in image["readers"].values())
        record[LABEL_PREFIX + name] = int(readers >= min_readers)
    return record


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_vindr_cxr(path, root=root, classes=config.classes, min_readers=config.min_readers)


SOURCE = SourceKind("vindr_cxr", "the challenge's train.csv of VinDr-CXR (VinBigData), with the DICOM images in "
                                 "train/ beside it, or in data.root",
                    needs_folder=False, load=_load)
