"""The SIIM-ACR Pneumothorax Segmentation challenge's chest X-rays as published (``data.source: siim_pneumothorax``).

Society for Imaging Informatics in Medicine (SIIM) and American College of Radiology, Pneumothorax
Segmentation challenge, 2019: frontal chest X-rays of NIH ChestX-ray14 with radiologists' masks of
pneumothorax.

``data.path`` is the publisher's mask list, read unchanged: the first stage's ``train-rle.csv`` or the
second stage's ``stage_2_train.csv`` (``ImageId,EncodedPixels``): one line per pneumothorax mask of an
image, or one line of ``-1`` for an image without.

* Images: ``<ImageId>.dcm`` anywhere under ``data.root`` (default: the CSV's folder; the release nests
  them as ``dicom-images-train/<study>/<series>/<ImageId>.dcm``). Each header is read (without pixels)
  for the image's size, ``patient_id`` (PatientID), ``view`` (ViewPosition), ``sex`` and ``age``.
* Rows: one per image. ``label`` is pneumothorax or not (classes :data:`CLASSES` unless
  ``data.classes`` names two others). ``boxes`` holds a box around each connected region of the
  image's masks (:mod:`tfmed.data.boxes`), against which ``tfmed explain`` and the report measure
  where the saliency maps point.
* Masks are run-length encoded down the image's columns (column-major), each run's start relative to
  the end of the run before. ``train-rle.csv`` is read so by its name (:data:`PUBLISHED`); any other file,
  ``stage_2_train.csv`` (which public pipelines read with the same relative decoder) included, is read as
  its masks say: runs that would pass the image's end when read as relative mean absolute starts, starts
  that do not increase mean relative ones (relative when every mask reads both ways), the choice logged;
  such a file with both is refused.
* Row problems, with the line of the image's first line (the header is 1): an image listed both
  with ``-1`` and with a mask, or with ``-1`` twice (both with their lines); a mask that is not pairs
  of whole numbers, or runs past the image's end (or, with absolute starts, starts before the run
  before it ends), with its own line when the image has several; an image found twice under the
  root; a header that cannot be read. An image not found is reported by validation ("file not
  found", saying where it is looked for), and so is a header without PatientID when the split is by
  patient (the fix texts the table records).

Example:
    >>> mask_from_rle("5 2 3 1", 4, 3, relative=True).astype(int).T.ravel().tolist()  # column by column
    [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0]
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.boxes import BOXES_COLUMN, format_boxes, mask_boxes
from tfmed.data.demographics import log_unreadable, published_demographics
from tfmed.data.sources.base import (SourceKind, index_files, read_csv_rows, row_values, single_label_frame,
                                     two_classes, with_fixes)
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS
from tfmed.progress import log

IMAGE, PIXELS = "ImageId", "EncodedPixels"
NO_MASK = "-1"
# the publisher's file names and their encodings (relative starts: True)
PUBLISHED = {"train-rle.csv": True}
CLASSES = ["no_pneumothorax", "pneumothorax"]
WHAT = ("the publisher's train-rle.csv (or stage_2_train.csv) of the SIIM-ACR Pneumothorax Segmentation "
        "challenge, unchanged")


def mask_from_rle(text: str, height: int, width: int, relative: bool) -> np.ndarray:
    """The (height, width) boolean mask of a column-major run-length encoding: pairs of start and length,
    each start counted from the end of the run before (``relative``) or from the image's first pixel.

    Raises:
        ValueError: the text is not pairs of whole numbers, a run passes the image's end, or (absolute starts)
            a run starts before the run before it ends.

    Example:
        >>> mask_from_rle("1 2", 2, 2, relative=False).astype(int).tolist()
        [[0, 1], [1, 0]]
    """
    try:
        numbers = [int(v) for v in text.split()]
    except ValueError:
        raise ValueError(f"{PIXELS} {_short(text)!r} is not whole numbers") from None
    if len(numbers) % 2 or any(v < 0 for v in numbers):
        raise ValueError(f"{PIXELS} {_short(text)!r} is not pairs of start and length")
    flat = np.zeros(height * width, bool)
    position = 0
    for start, length in zip(numbers[0::2], numbers[1::2]):
        if not relative and start < position:
            raise ValueError(f"{PIXELS} {_short(text)!r}: run start {start} is before the end of the run before it "
                             "(relative starts, in a file of absolute ones?)")
        position = position + start if relative else start
        if position + length > flat.size:
            raise ValueError(f"{PIXELS} {_short(text)!r} runs past the end of the {width} x {height} image")
        flat[position:position + length] = True
        if relative:
            position += length
    return flat.reshape(width, height).T


def load_siim_pneumothorax(path: str | Path, root: str | Path | None = None,
                           classes: list[str] | None = None) -> ImageTable:
    """Read the challenge's mask list into a binary :class:`ImageTable`, one row per image with its boxes.

    Raises:
        DataSourceError: the CSV is unreadable or lacks a column, ``classes`` does not name two classes,
            or a file not named as the publisher's mixes the two encodings.

    Example:
        >>> load_siim_pneumothorax("siim/train-rle.csv", classes=["a"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: data.classes lists 1 names; ...
    """
    path = Path(path)
    names = two_classes(classes, CLASSES, "an image has pneumothorax or not")
    header, rows = read_csv_rows(path, (IMAGE, PIXELS), WHAT)
    root = Path(root) if root is not None else path.parent
    if not root.is_dir():
        raise DataSourceError(f"{root}: image folder not found (data.root for {path}). Put the challenge's "
                              "DICOM files there (e.g. dicom-images-train/), or set data.root to their folder.")
    column = {name: header.index(name) for name in (IMAGE, PIXELS)}
    images: dict[str, dict] = {}
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        image = images.setdefault(value[IMAGE], {"row": line, "masks": [], "lines": [], "problems": []})
        image["problems"] += problems
        image["masks"].append(value[PIXELS])
        image["lines"].append(line)
    found = index_files(root)
    headers = {name: _header(name, found, root) for name in images if name}
    relative = _relative(path, images, headers)
    unreadable: Counter = Counter()
    records = [_record(name, image, headers.get(name), relative, unreadable) for name, image in images.items()]
    log_unreadable(path, unreadable)
    frame = single_label_frame(records, (BOXES_COLUMN,))
    frame[BOXES_COLUMN] = frame[BOXES_COLUMN].astype("string")
    return with_fixes(ImageTable(frame, names, "binary", source=str(path)),
                      missing_fix=f"<ImageId>.dcm is looked for in {root} and its sub-folders (data.root; by default "
                      "the CSV's folder): put the DICOM file there, or leave the row out (data.exclude_bad_rows: "
                      "true; some listed images are missing from the release)",
                      patient_fix="SIIM-ACR takes the patient from the PatientID of the image's DICOM header, which "
                      "is empty or missing here: restore the DICOM file as published")


def _header(name: str, found: dict[str, list[str]], root: Path) -> dict:
    """Where the image is and what its DICOM header says (size, patient, view, sex, age), or its problem."""
    import pydicom

    places = found.get(f"{name}.dcm", [])
    if not places:
        return {"file": os.path.join(root, f"{name}.dcm")}  # validation reports it missing
    if len(places) > 1:
        return {"file": places[0], "problem": (f"{name}.dcm is found {len(places)} times under {root}: "
                                               + ", ".join(places), "keep one copy of the file")}
    try:
        header = pydicom.dcmread(places[0], stop_before_pixels=True)
        size = (int(header.Rows), int(header.Columns))
    except Exception as error:  # pydicom raises many types for damaged headers
        return {"file": places[0], "problem": (f"DICOM header cannot be read ({type(error).__name__}: {error})",
                                               "restore the file as published")}
    return {"file": places[0], "size": size, "patient_id": str(header.get("PatientID", "") or "").strip(),
            "view": str(header.get("ViewPosition", "") or "").strip(), "sex": header.get("PatientSex"),
            "age": header.get("PatientAge")}


def _relative(path: Path, images: dict[str, dict], headers: dict[str, dict]) -> bool:
    """Whether the file's masks give relative starts (see the module text): as its name says for the publisher's
    two files, else as its masks say (relative when every mask reads both ways), the choice logged."""
    absolute_impossible = relative_impossible = 0
    for name, image in images.items():
        size = headers.get(name, {}).get("size")
        for text in image["masks"]:
            numbers = text.split()
            if size is None or text == NO_MASK or len(numbers) < 4 or not all(v.isdigit() for v in numbers):
                continue
            starts, lengths = [int(v) for v in numbers[0::2]], [int(v) for v in numbers[1::2]]
            relative_impossible += sum(starts) + sum(lengths) > size[0] * size[1]
            absolute_impossible += any(b < a + n for a, n, b in zip(starts, lengths, starts[1:]))
    if path.name in PUBLISHED:  # its masks that read only the other way are row problems (see _record)
        relative = PUBLISHED[path.name]
        against = relative_impossible if relative else absolute_impossible
        if against:
            log(f"{path}: {against} masks read only as {'absolute' if relative else 'relative'} run starts, but the "
                f"publisher's {path.name} gives {'relative' if relative else 'absolute'} ones; they are reported "
                "with their lines")
        return relative
    if absolute_impossible and relative_impossible:
        raise DataSourceError(f"{path}: {absolute_impossible} masks read only as relative run starts and "
                              f"{relative_impossible} only as absolute ones; keep one of the publisher's files "
                              "(train-rle.csv or stage_2_train.csv) as published")
    relative = not relative_impossible
    why = (f"{relative_impossible} masks run past the image's end read as relative" if relative_impossible else
           f"{absolute_impossible} masks have starts that do not increase" if absolute_impossible else
           "every mask reads both ways")
    log(f"{path}: the masks are read with {'relative' if relative else 'absolute'} run starts ({why}; the file is "
        "not named train-rle.csv, which is relative by its name)")
    return relative


def _record(name: str, image: dict, header: dict | None, relative: bool, unreadable: Counter) -> dict:
    problems = list(image["problems"])
    header = header or {}
    masks = image["masks"]
    label = pd.NA
    lines = " and ".join(map(str, image["lines"]))
    if masks.count(NO_MASK) == len(masks) > 1:
        problems.append((f"the image is listed {len(masks)} times without pneumothorax ({NO_MASK}) (lines {lines})",
                         "remove the repeated line: -1 once"))
    elif NO_MASK in masks and len(masks) > 1:
        problems.append((f"the image is listed both without pneumothorax ({NO_MASK}) and with a mask (lines {lines})",
                         "keep the publisher's lines: -1 alone, or the image's masks"))
    elif not any(masks):
        problems.append((f"empty {PIXELS}", f"write {NO_MASK} for an image without pneumothorax, or its mask"))
    else:
        label = int(masks != [NO_MASK])
    boxes = []
    if label is not pd.NA and label == 1 and "size" in header:
        mask, unread = np.zeros(header["size"], bool), len(problems)
        for text, line in zip(masks, image["lines"]):
            try:
                mask |= mask_from_rle(text, *header["size"], relative=relative)
            except ValueError as error:  # each mask that does not read, with its line when the image has several
                problems.append((f"line {line}: {error}" if len(masks) > 1 else str(error),
                                 "keep the publisher's run-length encoding (read here with "
                                 f"{'relative' if relative else 'absolute'} run starts)"))
        if len(problems) == unread:
            boxes = mask_boxes(mask)
    if "problem" in header:
        problems.append(header["problem"])
    if not name:
        problems.append((f"empty {IMAGE}", "write the image's ImageId as published"))
    return {"image": header.get("file", pd.NA), "label": label, "patient_id": header.get("patient_id") or pd.NA,
            "view": header.get("view") or pd.NA, "row": image["row"], BOXES_COLUMN: format_boxes(boxes) or pd.NA,
            **published_demographics(header.get("sex"), header.get("age"), unreadable),
            SOURCE_PROBLEMS: tuple(problems)}


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_siim_pneumothorax(path, root=root, classes=config.classes)


SOURCE = SourceKind("siim_pneumothorax", "the publisher's train-rle.csv (or stage_2_train.csv) of the SIIM-ACR "
                                         "Pneumothorax Segmentation challenge (DICOM files under data.root, "
                                         "default the CSV's folder)",
                    needs_folder=False, load=_load)
