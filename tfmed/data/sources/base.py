"""What every source kind shares: the kind record and the helpers for class-folder layouts.

A source kind is one module in :mod:`tfmed.data.sources` that defines ``SOURCE``,
a :class:`SourceKind`; :data:`tfmed.data.sources.SOURCES` maps each kind name to it.

Example:
    >>> from tfmed.data.sources import SOURCES
    >>> SOURCES["folder"].needs_folder
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.decode import SUPPORTED_EXTENSIONS, has_dicom_marker
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS


@dataclass(frozen=True)
class SourceKind:
    """One kind of data source (``data.source: NAME``).

    Attributes:
        name: the kind's name in configs and on the command line (``NAME:PATH``).
        expects: what ``data.path`` must point at, said to the user when it is missing.
        needs_folder: ``data.path`` must be a folder (not a file).
        load: ``load(config, path, root, fragment)`` returns the :class:`ImageTable`;
            ``path`` and ``root`` are resolved, ``fragment`` is the text after ``#`` in the path.
        takes_fragment: ``data.path`` may end in ``#FRAGMENT`` (e.g. ``#test`` for one split).

    Example:
        >>> kind = SourceKind("demo", "a folder", True, lambda config, path, root, fragment: None)
        >>> kind.name
        'demo'
    """

    name: str
    expects: str
    needs_folder: bool
    load: Callable[[DataConfig, Path, "Path | None", str], ImageTable]
    takes_fragment: bool = False


def class_folder_names(path: Path, classes: list[str] | None) -> list[str]:
    found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if len(found) < 2:
            raise DataSourceError(f"{path}: found {len(found)} class folder(s) {found}; put the images "
                                  "of each class in its own sub-folder (at least two), e.g. "
                                  f"{path}/normal/ and {path}/pneumonia/")
        return found
    absent = [c for c in classes if c not in found]
    if absent:
        raise DataSourceError(f"{path}: no sub-folder for class(es) {', '.join(absent)} listed in "
                              f"data.classes; sub-folders found: {', '.join(found) or '(none)'}")
    return list(classes)


def outside_classes(path: Path, names: list[str]) -> list[dict]:
    """Files not under any class folder (loose files, folders not in ``classes``): reported, not used."""
    skipped = []
    for entry in sorted(path.iterdir()):
        if entry.is_file():
            skipped.append({"image": str(entry), "row": None, "problem": "skipped: file is not inside a class "
                            "folder", "fix": "move it into the folder of its class"})
        elif entry.is_dir() and entry.name not in names and not entry.name.startswith("."):
            skipped.append({"image": str(entry), "row": None, "problem": "skipped: folder is not one of "
                            f"data.classes {names}", "fix": "add the class to data.classes or move the folder"})
    return skipped


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def skipped_file(path: Path, row: int, why: str) -> dict:
    return {"image": str(path), "row": row, "problem": f"skipped: {why}",
            "fix": f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)} or move it out of the folder"}


def source_table(records: list[dict], skipped: list[dict], classes: list[str], task: str | None,
           source: str) -> ImageTable:
    frame = pd.DataFrame(records, columns=["image", "label", "patient_id", "site", "view", "row",
                                           SOURCE_PROBLEMS])
    for column in ("patient_id", "site", "view"):
        frame[column] = frame[column].astype("string")
    if frame["label"].isna().any():
        frame["label"] = frame["label"].astype("Int64")
    else:
        frame["label"] = frame["label"].astype(np.int64)
    frame["split"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    resolved = task or ("binary" if len(classes) == 2 else "multiclass")
    excluded = pd.DataFrame(skipped, columns=["image", "row", "problem", "fix"]) if skipped else pd.DataFrame()
    return ImageTable(frame, list(classes), resolved, source=source, excluded=excluded)


def class_files(path: Path, names: list[str], extensions, skipped: list, reason):
    """Yield ``(label, class name, file, row)`` for each image under ``path/<class>``.

    Files with another extension and no DICOM marker are appended to
    ``skipped`` (with ``reason(file)``) instead, so none is dropped silently.
    Rows are numbered from 1 over everything seen.
    """
    row = 0
    for label, name in enumerate(names):
        for file in files_under(path / name):
            row += 1
            if file.suffix.lower() not in extensions and not has_dicom_marker(file):  # DICOM of any name
                skipped.append(skipped_file(file, row, reason(file)))
                continue
            yield label, name, file, row
