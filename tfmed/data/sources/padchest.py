"""PadChest as published (``data.source: padchest``).

Bustos et al., "PadChest: A large chest x-ray image dataset with multi-label
annotated reports", Medical Image Analysis 2020 (Hospital San Juan, Alicante).

``data.path`` is the publisher's
``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (gzipped or not),
read unchanged: one line per image with ``ImageID``, ``ImageDir``,
``PatientID``, ``Projection`` and ``Labels``, the findings read from its report
as a list (``['pleural effusion', 'cardiomegaly']``; ``['normal']`` for none).

* Images: ``<ImageDir>/<ImageID>`` under ``data.root`` (default: the CSV's
  folder), the publisher's numbered folders of 16-bit PNGs; where that folder
  is absent, ``<ImageID>`` in the root itself (a flat copy).
* Rows: one per line; a multilabel task over the findings ``data.classes``
  names, in that order, each positive when the image's list holds it; by
  default every term the lists use (some 190), the most frequent first, which
  ``tfmed validate`` prints with their counts to choose from. ``patient_id`` is ``PatientID``,
  ``view`` the ``Projection`` (PA, AP, AP_horizontal, L, COSTAL).
* ``data.frontal_only`` keeps PA, AP and AP_horizontal; the others are counted
  in ``table.excluded`` (one entry per projection).
* ``data.physician_labelled_only`` keeps the lines whose findings a physician
  read from the report (``MethodLabel`` ``Physician``, some 27%), not a model
  (``RNN_model``); the others are counted in ``table.excluded``.
* Row problems, with their line: a ``Labels`` cell that is not a list of terms,
  an empty list, ``normal`` beside findings, an empty ``ImageID``.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "labels.csv").write_text("ImageID,ImageDir,PatientID,Projection,Labels\\n"
    ...     "20536686640136348236148679891455886468_k6ga29.png,0,839860488694292331637988235681460987,PA,"
    ...     "\\"['pleural effusion', ' cardiomegaly']\\"\\n")
    >>> table = load_padchest(folder / "labels.csv", classes=["cardiomegaly"])
    >>> table.labels().tolist(), table.frame.loc[0, "view"]
    ([[1]], 'PA')
"""
from __future__ import annotations

import ast
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.demographics import log_unreadable, published_demographics
from tfmed.data.sources.base import (SourceKind, chosen_labels, counted_skips, excluded_frame, label_frame,
                                     read_csv_rows, row_values, with_fixes)
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

IMAGE, FOLDER, PATIENT, PROJECTION, LABELS = "ImageID", "ImageDir", "PatientID", "Projection", "Labels"
METHOD, PHYSICIAN = "MethodLabel", "Physician"
SEX, BIRTH, STUDY_DATE = "PatientSex_DICOM", "PatientBirth", "StudyDate_DICOM"
NORMAL = "normal"
FRONTAL = ("PA", "AP", "AP_horizontal")
WHAT = "the publisher's PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv of PadChest, unchanged"


def load_padchest(path: str | Path, root: str | Path | None = None, classes: list[str] | None = None,
                  frontal_only: bool = False, physician_labelled_only: bool = False) -> ImageTable:
    """Read PadChest's label CSV into a multilabel :class:`ImageTable` over the findings ``classes`` names
    (default: every finding its lists use); with ``physician_labelled_only`` only the lines whose labels a
    physician read from the report (``MethodLabel`` ``Physician``).

    Raises:
        DataSourceError: the CSV is unreadable or lacks a column, or ``classes`` names a finding no
            list here holds (or none the settings keep) or repeats one.

    Example:
        >>> load_padchest("padchest/labels.csv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: ...labels.csv: not found; ...
    """
    path = Path(path)
    needed = (IMAGE, FOLDER, PATIENT, PROJECTION, LABELS) + ((METHOD,) if physician_labelled_only else ())
    header, rows = read_csv_rows(path, needed, WHAT)
    root = Path(root) if root is not None else path.parent
    column = {name: header.index(name) for name in needed + (SEX, BIRTH, STUDY_DATE) if name in header}
    kept, found, skipped = [], Counter(), Counter()
    left_out: dict[str, Counter] = {}  # the terms of the lines each setting leaves out
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        setting = ("data.physician_labelled_only" if physician_labelled_only and value[METHOD] != PHYSICIAN else
                   "data.frontal_only" if frontal_only and value[PROJECTION] not in FRONTAL else None)
        if setting:
            left_out.setdefault(setting, Counter()).update(_terms(value[LABELS], []) or ())
        if setting == "data.physician_labelled_only":
            skipped[(f"labelled by {value[METHOD] or '(empty)'}, not by a physician "
                     "(data.physician_labelled_only is true)",
                     "none needed; set data.physician_labelled_only: false to use them too")] += 1
            continue
        if setting == "data.frontal_only":
            skipped[(f"of projection {value[PROJECTION] or '(empty)'}, not PA, AP or AP_horizontal "
                     "(data.frontal_only is true)",
                     "none needed; set data.frontal_only: false to use the other projections too")] += 1
            continue
        terms = _terms(value[LABELS], problems)
        found.update(terms or ())
        kept.append((line, value, terms, problems))
    by_count = sorted(found, key=lambda term: (-found[term], term))  # the most frequent first, ties by name
    common = ", ".join(f"{term} ({found[term]})" for term in by_count[:12])
    _refuse_left_out(classes or [], found, left_out, path, common)
    names = chosen_labels(classes, tuple(by_count), str(path),
                          f"the terms as the reports write them, in lower case; the most frequent here: {common}")
    folders: dict[str, bool] = {}
    records, unreadable = [], Counter()
    for line, value, terms, problems in kept:
        if not value[IMAGE]:
            problems.append((f"empty {IMAGE}", "write the image's file name as published"))
        folder = value[FOLDER]
        if folder not in folders:
            folders[folder] = bool(folder) and (root / folder).is_dir()
        where = root / folder if folders[folder] else root
        record = {"row": line, "image": os.path.normpath(where / value[IMAGE]) if value[IMAGE] else pd.NA,
                  "patient_id": value[PATIENT] or pd.NA, "site": pd.NA, "view": value[PROJECTION] or pd.NA,
                  "split": pd.NA, SOURCE_PROBLEMS: tuple(problems),
                  **published_demographics(value.get(SEX), _age(value.get(BIRTH), value.get(STUDY_DATE)), unreadable)}
        record.update({LABEL_PREFIX + name: pd.NA if terms is None else int(name in terms) for name in names})
        records.append(record)
    log_unreadable(path, unreadable)
    excluded = counted_skips(path, skipped, "image")
    if not records:
        raise DataSourceError(f"{path}: no image left to read" + (f" ({excluded[0]['problem']})" if excluded else ""))
    table = ImageTable(label_frame(records, names), names, "multilabel", source=str(path),
                       excluded=excluded_frame(excluded))
    return with_fixes(table, missing_fix=f"PadChest's images are read as <ImageDir>/<ImageID> under {root} "
                      "(data.root; by default the CSV's folder), or as <ImageID> in it when that folder is not "
                      "there: put the PNG file there, set data.root, or remove the row",
                      patient_fix=f"fill the row's {PATIENT} cell in {path.name} as published")


def _refuse_left_out(classes: list[str], found: Counter, left_out: dict[str, Counter], path: Path,
                     common: str) -> None:
    """Refuse the ``classes`` terms the file holds only on the lines ``left_out`` by a setting, naming it."""
    gone = [name for name in classes if name not in found and any(name in terms for terms in left_out.values())]
    if not gone:
        return
    settings = sorted(setting for setting, terms in left_out.items() if any(name in terms for name in gone))
    counts = ", ".join(str(sum(terms[name] for terms in left_out.values())) for name in gone)
    raise DataSourceError(f"data.classes names {', '.join(map(repr, gone))}, which {path} has on {counts} "
                          f"line(s), but {' and '.join(settings)} "
                          f"{'leaves' if len(settings) == 1 else 'leave'} out every line that has "
                          f"{'it' if len(gone) == 1 else 'them'}; remove {'it' if len(gone) == 1 else 'them'} "
                          f"from data.classes (the kept lines' most frequent terms: {common}), or set "
                          f"{' or '.join(settings)} to false")


def _age(birth: str | None, study_date: str | None) -> str:
    """The age at the study as the study's year less the birth year (within a year; PadChest publishes the
    birth year only), as text for :func:`published_demographics`; "" when either is missing.

    Example:
        >>> _age("1939.0", "20140915"), _age("", "20140915")
        ('75', '')
    """
    if not birth or not study_date:
        return ""
    try:
        return str(int(study_date[:4]) - int(float(birth)))
    except ValueError:
        return f"born {birth}, studied {study_date}"


def _terms(cell: str, problems: list) -> set[str] | None:
    """The findings of a ``Labels`` cell (empty for ``['normal']``), None, and a problem, when unusable."""
    fix = "keep the publisher's list, e.g. ['pleural effusion', 'cardiomegaly'] or ['normal']"
    try:
        value = ast.literal_eval(cell) if cell else None
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, list) or not all(isinstance(term, str) for term in value):
        problems.append((f"{LABELS} {cell!r} is not a list of findings", fix))
        return None
    terms = {term.strip().lower() for term in value if term.strip()}
    if not terms:
        problems.append((f"{LABELS} {cell!r} names no finding (not even {NORMAL!r})", fix))
        return None
    if NORMAL in terms and len(terms) > 1:
        problems.append((f"{LABELS} {cell!r} names {NORMAL!r} beside findings", fix))
        return None
    return terms - {NORMAL}


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_padchest(path, root=root, classes=config.classes, frontal_only=config.frontal_only,
                         physician_labelled_only=config.physician_labelled_only)


SOURCE = SourceKind("padchest", "the publisher's PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv of PadChest, "
                                "with the numbered image folders (ImageDir) beside it, or in data.root",
                    needs_folder=False, load=_load)
