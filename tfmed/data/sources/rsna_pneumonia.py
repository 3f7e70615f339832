"""The RSNA Pneumonia Detection Challenge's chest X-rays as published (``data.source: rsna_pneumonia``).

Shih et al., "Augmenting the National Institutes of Health Chest Radiograph
Dataset with Expert Annotations of Possible Pneumonia", Radiology: AI 2019.

``data.path`` is the publisher's ``stage_2_train_labels.csv``
(``patientId,x,y,width,height,Target``), read unchanged: one line per box of
lung opacity, or one line with empty box fields for an image without.

* Images: ``stage_2_train_images/<patientId>.dcm`` in ``data.root`` (default:
  the CSV's folder), else ``<patientId>.dcm`` in the root itself.
* Rows: one per image (``patientId``). ``label`` is ``Target`` (classes
  :data:`CLASSES` unless ``data.classes`` names two others; "no lung opacity"
  holds both normal images and abnormal ones without opacity); ``patient_id``
  is the ``patientId`` (one image per patient); ``boxes`` holds the image's
  opacity boxes (:mod:`tfmed.data.boxes`), against which ``tfmed explain`` and
  the report measure where the saliency maps point.
* A ``Target`` other than 0 or 1, lines of one image that disagree on it, an
  opacity line without its box, a box that is not four numbers and a
  ``Target`` 0 line with a box (the publisher's are empty) are row problems
  with the line number of the image's first line (the header is 1).

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "stage_2_train_labels.csv").write_text(HEADER + "\\n"
    ...     "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0\\n"
    ...     "00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1\\n"
    ...     "00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1\\n")
    >>> table = load_rsna_pneumonia(folder / "stage_2_train_labels.csv")
    >>> table.classes, table.labels().tolist(), table.frame["boxes"].tolist()
    (['no_lung_opacity', 'lung_opacity'], [0, 1], [<NA>, '264,152,213,379;562,152,256,453'])
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.boxes import BOXES_COLUMN, format_boxes, parse_boxes
from tfmed.data.sources.base import (SourceKind, read_csv_rows, repeated_lines, row_values, single_label_frame,
                                     two_classes, with_fixes)
from tfmed.data.table import ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

PATIENT, TARGET = "patientId", "Target"
BOX = ("x", "y", "width", "height")
HEADER = ",".join((PATIENT,) + BOX + (TARGET,))
CLASSES = ["no_lung_opacity", "lung_opacity"]
IMAGES = "stage_2_train_images"
WHAT = "the publisher's stage_2_train_labels.csv of the RSNA Pneumonia Detection Challenge, unchanged"


def load_rsna_pneumonia(path: str | Path, root: str | Path | None = None,
                        classes: list[str] | None = None) -> ImageTable:
    """Read ``stage_2_train_labels.csv`` into a binary :class:`ImageTable`, one row per image with its boxes.

    Raises:
        DataSourceError: the CSV is unreadable or lacks a column, or ``classes`` does not name two classes.

    Example:
        >>> load_rsna_pneumonia("rsna/stage_2_train_labels.csv", classes=["a"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: data.classes lists 1 names; ...
    """
    path = Path(path)
    names = two_classes(classes, CLASSES, "the challenge's Target is 0 or 1")
    header, rows = read_csv_rows(path, (PATIENT,) + BOX + (TARGET,), WHAT)
    root = Path(root) if root is not None else path.parent
    folder = root / IMAGES if (root / IMAGES).is_dir() else root
    column = {name: header.index(name) for name in (PATIENT,) + BOX + (TARGET,)}
    images: dict[str, dict] = {}
    repeats = repeated_lines(rows, "box")
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        image = images.setdefault(value[PATIENT], {"row": line, "targets": set(), "boxes": [], "problems": []})
        if line in repeats:
            image["problems"].append(repeats[line])
            continue
        image["problems"] += problems
        image["targets"].add(value[TARGET])
        box_text = ",".join(value[name] for name in BOX)
        if value[TARGET] == "1" and not any(value[name] for name in BOX):
            image["boxes"].append(None)
        elif value[TARGET] == "1":
            try:
                image["boxes"] += parse_boxes(box_text)
            except ValueError as error:
                image["problems"].append((f"line {line}: {error}", "keep the publisher's x, y, width, height "
                                                                     "in pixels"))
        elif value[TARGET] == "0" and any(value[name] for name in BOX):  # the publisher leaves them empty
            image["problems"].append((f"line {line}: {TARGET} 0 with a box ({box_text!r})",
                                      "empty x, y, width and height as published, or write Target 1 if it is an "
                                      "opacity's box"))
    records = [_record(patient, image, folder) for patient, image in images.items()]
    frame = single_label_frame(records, (BOXES_COLUMN,))
    frame[BOXES_COLUMN] = frame[BOXES_COLUMN].astype("string")
    return with_fixes(ImageTable(frame, names, "binary", source=str(path)),
                      missing_fix=f"RSNA's images are read as <patientId>.dcm from {folder} ({IMAGES}/ under "
                      "data.root when it is there, else data.root; by default the CSV's folder): put the DICOM file "
                      "there, set data.root, or remove the row")


def _record(patient: str, image: dict, folder: Path) -> dict:
    problems = list(image["problems"])
    targets = image["targets"]
    label = pd.NA
    if len(targets) > 1:
        problems.append((f"the image's lines disagree on {TARGET} ({', '.join(sorted(targets))})",
                         "keep the publisher's lines: every line of an image has the same Target"))
    elif targets <= {"0", "1"}:
        label = int(next(iter(targets)))
    else:
        problems.append((f"{TARGET} {next(iter(targets))!r} is not 0 or 1", "write 0 or 1 as published"))
    boxes = [box for box in image["boxes"] if box is not None]
    if None in image["boxes"]:
        problems.append((f"{TARGET} 1 without its box", "fill x, y, width and height as published"))
    if not patient:
        problems.append((f"empty {PATIENT}", "write the image's patientId as published"))
    return {"image": str(folder / f"{patient}.dcm") if patient else pd.NA, "label": label,
            "patient_id": patient or pd.NA, "row": image["row"], BOXES_COLUMN: format_boxes(boxes) or pd.NA,
            SOURCE_PROBLEMS: tuple(problems)}


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_rsna_pneumonia(path, root=root, classes=config.classes)


SOURCE = SourceKind("rsna_pneumonia", "the publisher's stage_2_train_labels.csv of the RSNA Pneumonia Detection "
                                      "Challenge (images in stage_2_train_images/ beside it, or in data.root)",
                    needs_folder=False, load=_load)
