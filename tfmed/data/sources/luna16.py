"""LUNA16 as published (``data.source: luna16``): lung nodule candidates in chest CT scans.

Setio et al., "Validation, comparison, and combination of algorithms for
automatic detection of pulmonary nodules in computed tomography images: the
LUNA16 challenge", Medical Image Analysis 42, 2017.

``data.path`` is the publisher's ``candidates.csv`` or ``candidates_V2.csv``
(``seriesuid,coordX,coordY,coordZ,class``), read unchanged.

* Scans: the folders ``subset0`` ... ``subset9`` of MetaImage files
  (``<seriesuid>.mhd`` beside its ``.raw``) under ``data.root``; by default the
  CSV's folder, else the folder above it, whichever holds subset folders.
* Rows: one per candidate. ``image`` is its scan's ``.mhd`` file,
  ``center_x``, ``center_y``, ``center_z`` its ``coordX``, ``coordY``,
  ``coordZ`` (world coordinates in mm, which are LPS patient coordinates,
  those :func:`tfmed.data.volumes.read_itk` places the voxels in), ``label``
  its ``class`` (0: not a nodule, 1: a nodule; the classes are
  :data:`CLASSES` unless ``data.classes`` names two others). The rows are
  volumes with lesion centres, so an experiment reads them with
  ``views.enabled: true``.
* ``patient_id`` is the scan's ``seriesuid``: LUNA16 gives no patient ids (its
  888 scans come from LIDC-IDRI, whose 1,018 scans are of 1,010 patients), so a
  split by patient keeps each scan's candidates together.
* ``#SUBSETS`` after the path (``candidates_V2.csv#9`` or ``#subset8,subset9``)
  keeps the candidates of the scans in those subsets, e.g. to score the tenth
  subset as a test set. The others are listed in ``table.excluded``, one entry
  per subset with its count.
* ``data.negatives_per_positive: N`` keeps every nodule and N times as many
  non-nodules, drawn at random with a fixed seed (the same ones in every run):
  the full list holds about 480 non-nodules per nodule (754,975 candidates,
  1,557 nodules in ``candidates_V2.csv``). How many were left out is in
  ``table.excluded``.

Rows whose scan is not under the root are listed in ``table.excluded`` (one
entry with the count) when some subset folders are absent (not downloaded);
when all ten are there, each such row is a row problem naming the scan. A
coordinate that is not a number, a class other than 0 or 1 and an empty
``seriesuid`` are row problems with the CSV line number (the header is line 1).

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "subset0").mkdir()
    >>> _ = (root / "subset0" / "1.3.6.1.4.1.14519.5.2.1.6279.6001.1.mhd").write_text("")
    >>> _ = (root / "candidates.csv").write_text(HEADER + "\\n"
    ...     "1.3.6.1.4.1.14519.5.2.1.6279.6001.1,-56.08,-67.85,-311.92,0\\n"
    ...     "1.3.6.1.4.1.14519.5.2.1.6279.6001.1,53.21,-244.41,-245.17,1\\n")
    >>> table = load_luna16(root / "candidates.csv")
    >>> table.classes, table.labels().tolist(), table.frame.loc[1, ["center_x", "center_z"]].tolist()
    (['non_nodule', 'nodule'], [0, 1], [53.21, -245.17])
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.sources.base import (SourceKind, counted_skips, excluded_frame, read_csv_rows, row_values,
                                     single_label_frame, skipped_file, two_classes)
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS
from tfmed.data.volume_inputs import CENTER_MM
from tfmed.errors import count_noun

SERIES, CLASS, DIAMETER = "seriesuid", "class", "diameter_mm"
COORDINATES = ("coordX", "coordY", "coordZ")
HEADER = ",".join((SERIES,) + COORDINATES + (CLASS,))
CLASSES = ["non_nodule", "nodule"]
SUBSETS = tuple(f"subset{i}" for i in range(10))
SAMPLE_SEED = 0
WHAT = "the publisher's candidates.csv or candidates_V2.csv of LUNA16, unchanged"
# Where LUNA16 ships its reference nodules: beside the subsets, and in its evaluation script's folder.
ANNOTATION_PLACES = ("", "evaluationScript/annotations")


def load_luna16(path: str | Path, root: str | Path | None = None, classes: list[str] | None = None,
                subsets: str = "", negatives_per_positive: int | None = None) -> ImageTable:
    """Read LUNA16's candidate list into a binary :class:`ImageTable` of scans with lesion centres.

    Args:
        path: ``candidates.csv`` or ``candidates_V2.csv``.
        root: the folder holding ``subset0`` ... ``subset9`` (default: the CSV's folder or the one above).
        classes: names of class 0 and class 1 (default :data:`CLASSES`).
        subsets: "" for all, else the subsets to keep, e.g. "9" or "subset8,subset9".
        negatives_per_positive: keep this many non-nodules per nodule (None: all).

    Raises:
        DataSourceError: the CSV is unreadable or lacks a column (``annotations.csv``,
            which has no class, included), no subset folder is found, ``subsets``
            names an unknown or absent subset, or ``classes`` does not name two classes.

    Example:
        >>> load_luna16("LUNA16/candidates_V2.csv", subsets="10")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: ...#10: 10 is not a LUNA16 subset; write 0-9 or subset0-subset9...
    """
    path = Path(path)
    names = two_classes(classes, CLASSES, "LUNA16's class is 0 or 1")
    wanted = _subset_names(subsets, path)
    header, rows = read_csv_rows(path, (SERIES,) + COORDINATES + (CLASS,), WHAT)
    root = _root(path, root)
    scans = _scans(root)
    present = [name for name in SUBSETS if (root / name).is_dir()]
    absent = [name for name in wanted if name not in present]
    if absent:
        raise DataSourceError(f"{path}#{subsets}: no {', '.join(absent)} folder under {root} (found: "
                              f"{', '.join(present)}); download it there, or ask only for the subsets you have")
    column = {name: header.index(name) for name in (SERIES,) + COORDINATES + (CLASS,)}
    records, skipped_subsets, missing_scans = [], Counter(), set()
    skipped_missing = 0
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        uid = value[SERIES]
        subset, scan = scans.get(uid, (None, None))
        if uid and scan is None and len(present) < len(SUBSETS):
            skipped_missing += 1
            missing_scans.add(uid)
            continue
        if subset is not None and wanted and subset not in wanted:
            skipped_subsets[subset] += 1
            continue
        if not uid:
            problems.append((f"empty {SERIES}", "write the scan's SeriesInstanceUID as published"))
        elif scan is None:
            problems.append((f"scan {uid}.mhd is in none of the subset folders under {root}",
                             "put the scan (.mhd and .raw) in its subset folder as published, or remove the row"))
        record = {"row": line, "image": str(scan) if scan is not None else pd.NA, "patient_id": uid or pd.NA,
                  "label": _label(value[CLASS], problems)}
        for name, coordinate in zip(CENTER_MM, COORDINATES):
            record[name] = _number(value[coordinate], coordinate, problems)
        record[SOURCE_PROBLEMS] = tuple(problems)
        records.append(record)
    skipped = counted_skips(path, {(f"of scans in {subset}, which is not among the subsets asked for (#{subsets})",
                                    "none needed; leave out #SUBSETS to use every subset"): count
                                   for subset, count in skipped_subsets.items()}, "candidate")
    if skipped_missing:
        skipped.append(skipped_file(path, None, f"{count_noun(skipped_missing, 'candidate')} of "
                                      f"{count_noun(len(missing_scans), 'scan')} not under {root} (subset folders "
                                      f"found: {', '.join(present)})",
                                "download the other subsets into the same folder to use their candidates"))
    records, unsampled = _sample_negatives(records, negatives_per_positive)
    if unsampled:
        skipped.append(skipped_file(path, None, f"{count_noun(unsampled, 'non-nodule candidate')} not sampled "
                                      f"(data.negatives_per_positive: {negatives_per_positive}, seed {SAMPLE_SEED})",
                                "raise data.negatives_per_positive, or remove it to keep every candidate"))
    if not records:
        raise DataSourceError(f"{path}: no candidate left to read ({'; '.join(s['problem'] for s in skipped)})")
    return ImageTable(single_label_frame(records, CENTER_MM), names, "binary", source=str(path),
                      excluded=excluded_frame(skipped))


@dataclass(frozen=True)
class Reference:
    """LUNA16's reference for a FROC analysis (:func:`tfmed.evaluation.froc.froc`) of some subsets' scans.

    Attributes:
        nodules: annotations.csv's nodules of those scans (scan, x, y, z, diameter_mm).
        excluded: annotations_excluded.csv's findings of those scans (None when the file is absent).
        scans: the seriesuid of every scan in those subsets.
        files: the annotation files read.
    """

    nodules: pd.DataFrame
    excluded: pd.DataFrame | None
    scans: list[str]
    files: list[Path]


def load_reference(path: str | Path, root: str | Path | None = None, subsets: str = "") -> Reference | None:
    """The reference nodules of the scans ``load_luna16(path, root, subsets)`` reads; None without annotations.csv.

    ``annotations.csv`` and ``annotations_excluded.csv`` are looked for in the
    root, then in its ``evaluationScript/annotations`` folder (where the
    challenge's evaluation script keeps them).

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "subset0").mkdir()
        >>> _ = (root / "subset0" / "1.2.3.mhd").write_text("")
        >>> _ = (root / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\\n"
        ...                                           "1.2.3,-128.7,-175.3,-298.4,5.65\\n")
        >>> reference = load_reference(root / "candidates.csv")
        >>> reference.scans, reference.nodules["diameter_mm"].tolist(), reference.excluded
        (['1.2.3'], [5.65], None)
    """
    path = Path(path)
    root = _root(path, root)
    found = {name: next((root / place / name for place in ANNOTATION_PLACES if (root / place / name).is_file()), None)
             for name in ("annotations.csv", "annotations_excluded.csv")}
    if found["annotations.csv"] is None:
        return None
    wanted = _subset_names(subsets, path) or list(SUBSETS)
    scans = [uid for uid, (subset, _) in _scans(root).items() if subset in wanted]
    tables = {name: _findings(file, set(scans)) for name, file in found.items() if file is not None}
    return Reference(tables["annotations.csv"], tables.get("annotations_excluded.csv"), scans,
                     [file for file in found.values() if file is not None])


def _findings(path: Path, scans: set[str]) -> pd.DataFrame:
    """An annotation file's findings in ``scans``: scan, x, y, z, diameter_mm (bad values stop with the line)."""
    header, rows = read_csv_rows(path, (SERIES,) + COORDINATES + (DIAMETER,), "LUNA16's annotations.csv or "
                                 "annotations_excluded.csv, unchanged", allow_empty=True)
    column = {name: header.index(name) for name in (SERIES,) + COORDINATES + (DIAMETER,)}
    records = []
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        numbers = [_number(value[name], name, problems) for name in COORDINATES + (DIAMETER,)]
        if problems:
            raise DataSourceError(f"{path} (line {line}): {problems[0][0]}; {problems[0][1]}")
        if value[SERIES] in scans:
            records.append([value[SERIES], *numbers])
    return pd.DataFrame(records, columns=["scan", "x", "y", "z", "diameter_mm"])


def _subset_names(subsets: str, path: Path) -> list[str]:
    names = []
    for item in filter(None, (part.strip() for part in subsets.split(","))):
        match = re.fullmatch(r"(?:subset)?(\d+)", item)
        if match is None or int(match.group(1)) >= len(SUBSETS):
            raise DataSourceError(f"{path}#{subsets}: {item} is not a LUNA16 subset; write 0-9 or "
                                  "subset0-subset9, several separated by commas (e.g. #8,9)")
        names.append(SUBSETS[int(match.group(1))])
    return names


def _root(path: Path, root: str | Path | None) -> Path:
    candidates = [Path(root)] if root is not None else [path.parent, path.parent.parent]
    for folder in candidates:
        if any((folder / name).is_dir() for name in SUBSETS):
            return folder
    where = " or ".join(str(folder) for folder in candidates)
    raise DataSourceError(f"{path}: no LUNA16 subset folder (subset0 ... subset9) in {where}; put the "
                          "subsets' folders of .mhd/.raw scans beside the CSV, or set data.root to their folder")


def _scans(root: Path) -> dict[str, tuple[str, Path]]:
    """seriesuid -> (subset, .mhd file) for every scan in the subset folders under ``root``."""
    scans = {}
    for subset in SUBSETS:
        for scan in sorted((root / subset).glob("*.mhd")) if (root / subset).is_dir() else []:
            scans[scan.stem] = (subset, scan)
    return scans


def _label(code: str, problems: list):
    if code in ("0", "1"):
        return int(code)
    problems.append((f"{CLASS} {code!r} is not 0 or 1", "write 0 (not a nodule) or 1 (a nodule) as published"))
    return pd.NA


def _number(text: str, name: str, problems: list) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        problems.append((f"{name} {text!r} is not a number", f"write the candidate's {name} in mm as published"))
    return number


def _sample_negatives(records: list[dict], per_positive: int | None) -> tuple[list[dict], int]:
    """All records but the non-nodules beyond ``per_positive`` per nodule (drawn with a fixed seed); a record
    without a label (a bad class, reported with its line) is kept."""
    if per_positive is None:
        return records, 0
    labels = [None if pd.isna(record["label"]) else record["label"] for record in records]
    negatives = [i for i, label in enumerate(labels) if label == 0]
    keep = min(len(negatives), per_positive * labels.count(1))
    drawn = set(np.random.default_rng(SAMPLE_SEED).choice(negatives, size=keep, replace=False).tolist()) \
        if keep else set()
    kept = [record for i, (record, label) in enumerate(zip(records, labels)) if label != 0 or i in drawn]
    return kept, len(negatives) - keep


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_luna16(path, root=root, classes=config.classes, subsets=fragment,
                       negatives_per_positive=config.negatives_per_positive)


SOURCE = SourceKind("luna16", "the publisher's candidates.csv or candidates_V2.csv of LUNA16, beside (or one "
                              "folder below) the subset0 ... subset9 folders of .mhd/.raw scans, or with data.root "
                              "naming their folder; #SUBSETS (e.g. #8,9) keeps those subsets",
                    needs_folder=False, load=_load, takes_fragment=True)
