"""MIMIC-CXR-JPG as published (``data.source: mimic_cxr``).

Johnson et al., "MIMIC-CXR-JPG, a large publicly available database of
labeled chest radiographs", arXiv:1901.07042 (PhysioNet, credentialed access).

``data.path`` is the publisher's label file, ``mimic-cxr-2.0.0-chexpert.csv.gz``
(or ``-negbio``, gzipped or not), read unchanged: one line per study,
``subject_id,study_id`` and the 14 CheXpert observations.

* Images: the publisher's ``mimic-cxr-2.0.0-metadata.csv(.gz)`` beside the label
  file lists them (``dicom_id``, ``subject_id``, ``study_id``, ``ViewPosition``);
  each is ``files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg`` under ``data.root``
  (default: the label file's folder), ``NN`` the first two digits of the subject.
* Rows: one per image of a labelled study, numbered by its line in the metadata
  file; labels are its study's, read as for CheXpert (same observations, codes
  and ``data.uncertain`` policies, :mod:`tfmed.data.sources.chexpert`), in
  CheXpert's order, so that a model trained on one set scores the other.
  ``patient_id`` is the ``subject_id``, ``view`` the ``ViewPosition``.
* Splits: with ``mimic-cxr-2.0.0-split.csv(.gz)`` beside the label file, its
  ``train`` / ``validate`` / ``test`` become train / val / test; without it no
  split is set. ``#test`` (or ``#train``, ``#validate``) after the path keeps one
  split, e.g. to score the publisher's test set with ``tfmed evaluate``.
* Left out and listed in ``table.excluded`` (one entry per kind, with its count):
  images of the splits not asked for, images of studies the label file has no
  line for, images of ``files/pNN`` folders that are not there (not
  downloaded; a missing image of a folder that is there is a row problem),
  and with ``data.frontal_only`` images whose ``ViewPosition`` is not PA or AP.
* Row problems, with the line that holds them: an unknown label code, a study
  with two label lines, an image listed twice, an image in no split line.

Example:
    >>> import tempfile, pathlib
    >>> top = pathlib.Path(tempfile.mkdtemp()); (top / "files" / "p10").mkdir(parents=True)
    >>> _ = (top / "mimic-cxr-2.0.0-chexpert.csv").write_text("subject_id,study_id," + ",".join(OBSERVATIONS)
    ...                                                       + "\\n10000032,50414267,,,,,,,,,,,,,,1.0\\n")
    >>> _ = (top / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id,study_id,ViewPosition\\n"
    ...                                                       "02aa804e,10000032,50414267,PA\\n")
    >>> table = load_mimic_cxr(top / "mimic-cxr-2.0.0-chexpert.csv", classes=["Support Devices", "Edema"])
    >>> table.labels().tolist(), table.frame.loc[0, ["patient_id", "view"]].tolist()
    ([[1, 0]], ['10000032', 'PA'])
    >>> table.frame.loc[0, "image"].endswith("files/p10/p10000032/s50414267/02aa804e.jpg")
    True
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.sources.base import (SourceKind, chosen_labels, counted_skips, excluded_frame, label_frame,
                                     read_csv_rows, row_values, with_fixes)
from tfmed.data.sources.chexpert import OBSERVATIONS, observation_label, uncertainty_policies
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

LABELS = "mimic-cxr-2.0.0-chexpert.csv.gz"
METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLITS = "mimic-cxr-2.0.0-split.csv.gz"
SUBJECT, STUDY, DICOM_ID, VIEW_POSITION, SPLIT = "subject_id", "study_id", "dicom_id", "ViewPosition", "split"
# the publisher's split names -> tfmed's
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
FRONTAL = ("PA", "AP")
WHAT = "the publisher's mimic-cxr-2.0.0-chexpert.csv.gz (or -negbio) of MIMIC-CXR-JPG, unchanged"


def load_mimic_cxr(path: str | Path, root: str | Path | None = None, classes: list[str] | None = None,
                   uncertain: str | dict[str, str] = "zeros", frontal_only: bool = False,
                   split: str = "") -> ImageTable:
    """Read MIMIC-CXR-JPG's label, metadata and split files into a multilabel :class:`ImageTable`.

    Args:
        path: the label file (``mimic-cxr-2.0.0-chexpert.csv.gz`` or ``-negbio``, gzipped or not).
        root: the folder holding ``files/`` (default: the label file's folder).
        classes: observations to use, in this order (default: all 14, in CheXpert's order).
        uncertain: what an uncertain label (-1.0) becomes, as for CheXpert.
        frontal_only: keep PA and AP images only; the others go to ``table.excluded``.
        split: "" for every image, else the publisher's split to keep (train, validate or test).

    Raises:
        DataSourceError: a file is missing or unreadable or lacks a column, ``files/`` is not under
            the root, ``split`` names an unknown split or there is no split file, or no image is left.

    Example:
        >>> load_mimic_cxr("mimic/mimic-cxr-2.0.0-chexpert.csv.gz", split="valid")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: ...#valid: not a MIMIC-CXR split; write #train, #validate or #test
    """
    path = Path(path)
    wanted = _split_name(split, path)
    names = chosen_labels(classes, OBSERVATIONS, "MIMIC-CXR")
    policies = uncertainty_policies(uncertain, names)
    studies, study_problems = _study_labels(path, names, policies)
    metadata = _beside(path, METADATA, required=True)
    split_file = _beside(path, SPLITS, required=bool(wanted))
    image_splits = _image_splits(split_file) if split_file else None
    root = Path(root) if root is not None else path.parent
    if not (root / "files").is_dir():
        raise DataSourceError(f"{root}: no files/ folder (the MIMIC-CXR-JPG images, files/p10 ... files/p19); "
                              f"put it beside {path.name}, or set data.root to the folder that holds it")
    files = os.path.normpath(root / "files")  # each image's path is joined as text: 377,110 of them
    header, rows = read_csv_rows(metadata, (DICOM_ID, SUBJECT, STUDY, VIEW_POSITION),
                                 "the publisher's mimic-cxr-2.0.0-metadata.csv.gz, unchanged")
    column = {name: header.index(name) for name in (DICOM_ID, SUBJECT, STUDY, VIEW_POSITION)}
    skipped: Counter = Counter()
    groups: dict[str, bool] = {}
    seen: dict[str, int] = {}
    records = []
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        dicom_id, subject, study = value[DICOM_ID], value[SUBJECT], value[STUDY]
        if not (dicom_id and subject.isdigit() and study):
            problems.append((f"{DICOM_ID} {dicom_id!r}, {SUBJECT} {subject!r}, {STUDY} {study!r}: an image needs "
                             "all three (the subject a number)", f"restore the line of {metadata.name} as published"))
            records.append(_record(line, pd.NA, subject, value, pd.NA, problems, dict.fromkeys(names, pd.NA)))
            continue
        image_split = pd.NA
        if image_splits is not None:
            image_split = image_splits.get(dicom_id, pd.NA)
            if pd.isna(image_split):
                problems.append((f"{dicom_id} is in no line of {split_file.name}",
                                 f"restore {split_file.name} as published, or remove the row"))
        if wanted and not pd.isna(image_split) and image_split != SPLIT_NAMES[wanted]:
            skipped[(f"of the {_publisher_split(image_split)} split, not asked for (#{wanted})",
                     "none needed; leave out #SPLIT to use every split")] += 1
            continue
        if study not in studies:
            skipped[(f"of studies without a line in {path.name}",
                     "none needed: the label file holds the studies whose reports could be labelled")] += 1
            continue
        if frontal_only and value[VIEW_POSITION] not in FRONTAL:
            skipped[(f"with ViewPosition {value[VIEW_POSITION] or '(empty)'}, not PA or AP (data.frontal_only "
                     "is true)", "none needed; set data.frontal_only: false to use the other views too")] += 1
            continue
        group = f"p{subject[:2]}"
        if group not in groups:
            groups[group] = (root / "files" / group).is_dir()
        if not groups[group]:
            skipped[(f"in files/{group}, which is not under {root} (not downloaded)",
                     "download that folder of files/ to use its images")] += 1
            continue
        if dicom_id in seen:
            problems.append((f"{dicom_id} is listed twice in {metadata.name} (lines {seen[dicom_id]} and {line})",
                             "remove the repeated line"))
        seen.setdefault(dicom_id, line)
        labels, label_problems = studies[study]
        problems += study_problems.get(study, []) + label_problems
        image = f"{files}/{group}/p{subject}/s{study}/{dicom_id}.jpg"
        records.append(_record(line, image, subject, value, image_split, problems, labels))
    excluded = counted_skips(metadata, skipped, "image")
    if not records:
        reasons = "; ".join(entry["problem"] for entry in excluded) or f"{metadata.name} lists no image"
        raise DataSourceError(f"{path}: no image left to read ({reasons})")
    table = ImageTable(label_frame(records, names), names, "multilabel", source=str(path),
                       excluded=excluded_frame(excluded))
    restore = f"restore {split_file.name} as published (it keeps each subject_id in one split)" if split_file else None
    return with_fixes(table, missing_fix=f"MIMIC-CXR-JPG's images are read as files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg "
                      f"under {root} (data.root; by default the label file's folder): download the image there, or "
                      "remove its line", split_fix=restore)


def _record(line: int, image, subject: str, value: dict, split, problems: list, labels: dict) -> dict:
    record = {"row": line, "image": image, "patient_id": subject or pd.NA, "site": pd.NA,
              "view": value[VIEW_POSITION] or pd.NA, "split": split, SOURCE_PROBLEMS: tuple(problems)}
    record.update({LABEL_PREFIX + name: label for name, label in labels.items()})
    return record


def _split_name(split: str, path: Path) -> str:
    split = split.strip()
    if split and split not in SPLIT_NAMES:
        raise DataSourceError(f"{path}#{split}: not a MIMIC-CXR split; write #train, #validate or #test")
    return split


def _publisher_split(name: str) -> str:
    return next(publisher for publisher, ours in SPLIT_NAMES.items() if ours == name)


def _beside(path: Path, name: str, required: bool) -> Path | None:
    """The publisher's file ``name`` (gzipped or not) in the label file's folder."""
    for candidate in (path.parent / name, path.parent / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    if required:
        raise DataSourceError(f"{path.parent}: no {name} (nor {name.removesuffix('.gz')}) beside {path.name}; "
                              "put the publisher's file there, unchanged")
    return None


def _study_labels(path: Path, names: list[str], policies: dict[str, str]):
    """study_id -> (labels, problems of its line), and study_id -> problems of repeated lines."""
    header, rows = read_csv_rows(path, (SUBJECT, STUDY) + tuple(names), WHAT)
    column = {name: header.index(name) for name in (SUBJECT, STUDY) + tuple(names)}
    studies, first_line, repeated = {}, {}, {}
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        labels = {name: observation_label(value[name], name, policies[name], problems) for name in names}
        study = value[STUDY]
        if study in first_line:
            repeated.setdefault(study, []).append(
                (f"study {study} has two lines in {path.name} (lines {first_line[study]} and {line})",
                 "remove the repeated line"))
            continue
        first_line[study] = line
        studies[study] = (labels, [(f"{problem} ({path.name} line {line})", fix) for problem, fix in problems])
    return studies, repeated


def _image_splits(path: Path) -> dict[str, str]:
    """dicom_id -> tfmed's split name, from the publisher's split file."""
    header, rows = read_csv_rows(path, (DICOM_ID, SPLIT), "the publisher's mimic-cxr-2.0.0-split.csv.gz, unchanged")
    image, split = header.index(DICOM_ID), header.index(SPLIT)
    splits = {}
    for line, fields in rows:
        name = fields[split] if split < len(fields) else ""
        if name not in SPLIT_NAMES:
            raise DataSourceError(f"{path} (line {line}): split {name!r} is not train, validate or test; "
                                  "restore the file as published")
        splits[fields[image]] = SPLIT_NAMES[name]
    return splits


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_mimic_cxr(path, root=root, classes=config.classes, uncertain=config.uncertain,
                          frontal_only=config.frontal_only, split=fragment)


SOURCE = SourceKind("mimic_cxr", "the publisher's mimic-cxr-2.0.0-chexpert.csv.gz of MIMIC-CXR-JPG, beside "
                                 "mimic-cxr-2.0.0-metadata.csv.gz (and -split.csv.gz) and the files/ folder of "
                                 "images, or with data.root naming the folder of files/; #test keeps one split",
                    needs_folder=False, load=_load, takes_fragment=True)
