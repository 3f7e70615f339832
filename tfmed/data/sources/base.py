"""What every source kind shares: the kind record and the helpers for class-folder layouts.

A source kind is one module in :mod:`tfmed.data.sources` that defines ``SOURCE``,
a :class:`SourceKind`; :data:`tfmed.data.sources.SOURCES` maps each kind name to it.

Example:
    >>> from tfmed.data.sources import SOURCES
    >>> SOURCES["folder"].needs_folder
    True
"""
from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.decode import SUPPORTED_EXTENSIONS, has_dicom_marker
from tfmed.data.demographics import DEMOGRAPHIC_COLUMNS
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS
from tfmed.errors import count_noun


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
        names_data_set: ``data.path`` may be a name rather than a file or folder (``tfds``'s
            ``patch_camelyon``): it is resolved against the experiment's folder only when that
            path exists, and a missing path is for ``load`` to report.

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
    names_data_set: bool = False


def class_folder_names(path: Path, classes: list[str] | None) -> list[str]:
    found = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if len(found) < 2:
            raise DataSourceError(f"{path}: found {len(found)} class folder(s) {found}; put the images "
                                  "of each class in its own sub-folder (at least two), e.g. "
                                  f"{path}/normal/ and {path}/pneumonia/, or, to score the images of one class "
                                  "alone (tfmed evaluate, recalibrate), name every class in data.classes (a YAML "
                                  "file's data: section given as --data)")
        return found
    if not set(classes) & set(found):
        raise DataSourceError(f"{path}: no sub-folder for class(es) {', '.join(classes)} listed in "
                              f"data.classes; sub-folders found: {', '.join(found) or '(none)'}")
    return list(classes)  # a listed class without a folder has no image (outside_classes says so)


def outside_classes(path: Path, names: list[str]) -> list[dict]:
    """Files not under any class folder (loose files, folders not in ``classes``): reported, not used; and each
    class of ``names`` without a folder, which then has no image (training refuses it, scoring one class of
    images, e.g. another hospital's positives, is allowed)."""
    skipped = [{"image": str(path / name), "row": None, "problem": f"skipped: no sub-folder for class {name!r} "
                "(listed in data.classes), so the class has no image",
                "fix": "add the class's folder (its name spelt as in data.classes), or leave it out of data.classes"}
               for name in names if not (path / name).is_dir()]
    for entry in sorted(path.iterdir()):
        if entry.is_file():
            skipped.append({"image": str(entry), "row": None, "problem": "skipped: file is not inside a class "
                            "folder", "fix": "move it into the folder of its class"})
        elif entry.is_dir() and entry.name not in names and not entry.name.startswith("."):
            skipped.append({"image": str(entry), "row": None, "problem": "skipped: folder is not one of "
                            f"data.classes {names}", "fix": "add the class to data.classes or move the folder"})
    return skipped


def index_files(root: Path) -> dict[str, list[str]]:
    """The paths of every file under ``root`` by name, walked once; symbolic links are followed, and a file or
    folder reached twice under one name (through a link) is listed once.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "a").mkdir(); _ = (root / "a" / "x.png").write_text("")
        >>> [path.endswith("/a/x.png") for path in index_files(root)["x.png"]]
        [True]
    """
    found: dict[str, list[str]] = {}
    folders_seen, files_seen = set(), set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in folders_seen:
            subfolders[:] = []
            continue
        folders_seen.add(real)
        subfolders.sort()
        for name in sorted(files):  # one file under two names (a link named otherwise) is found by both
            path = os.path.join(folder, name)
            if (name, os.path.realpath(path)) not in files_seen:
                files_seen.add((name, os.path.realpath(path)))
                found.setdefault(name, []).append(path)
    return found


def files_under(folder: Path, skipped: list | None = None) -> list[Path]:
    """Every file below ``folder``, sorted; symbolic links to folders are followed (each real folder read
    once, so a link back up cannot loop). Hidden folders (``.thumbs``, ``.ipynb_checkpoints``) are not
    read; each is recorded in ``skipped`` when given, so nothing is left out unsaid.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); (root / ".cache").mkdir(); (root / "p1").mkdir()
        >>> _ = (root / "p1" / "a.png").write_text(""); _ = (root / ".cache" / "b.png").write_text("")
        >>> skipped = []
        >>> [path.name for path in files_under(root, skipped)], skipped[0]["problem"]
        (['a.png'], 'skipped: hidden folder (its name starts with a dot), not read')
    """
    files, seen = [], set()
    for root, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        hidden = sorted(name for name in subfolders if name.startswith("."))
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in hidden if skipped is not None else []:
            skipped.append(skipped_file(Path(root) / name, None, "hidden folder (its name starts with a dot), "
                                        "not read", "rename the folder without the leading dot to use its images"))
        files.extend(Path(root) / name for name in names if (Path(root) / name).is_file())
    return sorted(files)


def skipped_file(path: Path, row: int | None, why: str, fix: str | None = None) -> dict:
    """The record of a file or rows a source left out (``row`` None for many rows at once)."""
    return {"image": str(path), "row": row, "problem": f"skipped: {why}",
            "fix": fix or f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)} or move it out of the folder"}


def counted_skips(path: Path, counts: dict[tuple[str, str], int], noun: str) -> list[dict]:
    """One record per reason for rows left out in bulk: ``counts`` maps (why, fix) to the rows left out.

    Example:
        >>> counted_skips(Path("labels.csv"), {("of projection L", "keep them"): 3}, "image")[0]["problem"]
        'skipped: 3 images of projection L'
    """
    return [skipped_file(path, None, f"{count_noun(count, noun)} {why}", fix)
            for (why, fix), count in sorted(counts.items())]


def excluded_frame(skipped: list[dict]) -> pd.DataFrame:
    """A table's ``excluded`` frame from the records of what its source left out."""
    return pd.DataFrame(skipped, columns=["image", "row", "problem", "fix"]) if skipped else pd.DataFrame()


def source_table(records: list[dict], skipped: list[dict], classes: list[str], task: str | None,
                 source: str) -> ImageTable:
    """The table of a class-folder source: its rows' records (:func:`single_label_frame`) and what it skipped;
    binary with two classes, multiclass with more, unless ``task`` says."""
    if not records:
        example = f"; e.g. {skipped[0]['image']}: {skipped[0]['problem']}" if skipped else ""
        fix = skipped[0]["fix"] if skipped else "put the images in the class folders"
        raise DataSourceError(f"{source}: no image to read ({len(skipped)} file(s) skipped{example}); {fix}")
    resolved = task or ("binary" if len(classes) == 2 else "multiclass")
    return ImageTable(single_label_frame(records), list(classes), resolved, source=source,
                      excluded=excluded_frame(skipped))


def class_files(path: Path, names: list[str], extensions, skipped: list, reason, fix: str | None = None):
    """Yield ``(label, class name, file, row)`` for each image under ``path/<class>``.

    Files with another extension and no DICOM marker are appended to
    ``skipped`` (with ``reason(file)``) instead, so none is dropped silently.
    Rows are numbered from 1 over everything seen.
    """
    row = 0
    for label, name in enumerate(names):
        for file in files_under(path / name, skipped):
            row += 1
            if file.suffix.lower() not in extensions and not has_dicom_marker(file):  # DICOM of any name
                skipped.append(skipped_file(file, row, reason(file), fix))
                continue
            yield label, name, file, row


# ------------------------------------------------------------------ publishers' CSV files (chestxray14, chexpert)

def two_classes(classes: list[str] | None, default: list[str], why: str) -> list[str]:
    """A binary source's class names: ``classes`` when given (two names, the negative one first), else
    ``default``; ``why`` says what the two are, for the error.

    Example:
        >>> two_classes(None, ["no_lung_opacity", "lung_opacity"], "the challenge's Target is 0 or 1")
        ['no_lung_opacity', 'lung_opacity']
    """
    if classes is not None and len(classes) != 2:
        raise DataSourceError(f"data.classes lists {len(classes)} names; {why}, so name two (the negative one "
                              f"first), e.g. {default}, or leave data.classes out")
    return list(classes or default)


def chosen_labels(classes: list[str] | None, known: tuple[str, ...], dataset: str, choices: str | None = None) -> list[str]:
    """The labels ``data.classes`` chooses from ``known`` (all of them, in their order, when None), in its order;
    a refusal names ``choices`` (default: every known label) to choose from.

    Example:
        >>> chosen_labels(["Edema", "Mass"], ("Edema", "Hernia", "Mass"), "ChestX-ray14")
        ['Edema', 'Mass']
    """
    if classes is None:
        return list(known)
    choose = f"choose from {choices or ', '.join(known)} (or leave data.classes out for all)"
    unknown = [name for name in classes if name not in known]
    if unknown:
        raise DataSourceError(f"data.classes names {', '.join(map(repr, unknown))}, which {dataset} does not "
                              f"have; {choose}")
    repeated = sorted({name for name in classes if list(classes).count(name) > 1})
    if repeated:
        raise DataSourceError(f"data.classes lists {', '.join(map(repr, repeated))} more than once; "
                              "name each label once")
    if not classes:
        raise DataSourceError(f"data.classes is empty; {choose}")
    return list(classes)


def list_lines(path: Path) -> list[tuple[int, str]]:
    """The (line number, stripped text) of each non-blank line of a publisher's list file.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "test_list.txt"
        >>> _ = path.write_text("a.png\\n\\n b.png \\n")
        >>> list_lines(path)
        [(1, 'a.png'), (3, 'b.png')]
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataSourceError(f"{path}: not readable as text ({error}); restore the publisher's list") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_csv_rows(path: Path, required: tuple[str, ...], what: str,
                  allow_empty: bool = False) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the ``(line number, fields)`` of each non-blank record of a publisher's CSV.

    A ``.gz`` file is read through gzip. Fields are stripped; ``required`` columns must be in the header (all
    missing ones are named at once). A file without a data row is refused unless ``allow_empty``.
    """
    if path.is_dir():
        raise DataSourceError(f"{path}: a folder, not a file; data.path must be {what}")
    if not path.is_file():
        raise DataSourceError(f"{path}: not found; data.path must be {what}")
    rows = []
    try:
        opened = gzip.open(path, "rt", newline="", encoding="utf-8-sig") if path.suffix == ".gz" \
            else path.open(newline="", encoding="utf-8-sig")
        with opened as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            end = reader.line_num
            for fields in reader:
                start, end = end + 1, reader.line_num
                if any(field.strip() for field in fields):
                    rows.append((start, [field.strip() for field in fields]))
    except UnicodeDecodeError as error:
        raise DataSourceError(f"{path}: not UTF-8 text ({error}); data.path must be {what}") from None
    except (OSError, EOFError) as error:  # a damaged or truncated .gz
        raise DataSourceError(f"{path}: not readable ({error}); data.path must be {what}") from None
    except csv.Error as error:
        raise DataSourceError(f"{path} (line {reader.line_num}): not a readable CSV ({error}); "
                              f"data.path must be {what}") from None
    missing = [name for name in required if name not in header]
    if missing:
        raise DataSourceError(f"{path} (line 1, the header): no column {', '.join(map(repr, missing))}. "
                              f"Columns found: {', '.join(filter(None, header)) or '(none)'}. "
                              f"data.path must be {what}.")
    if not rows and not allow_empty:
        raise DataSourceError(f"{path}: no data rows (only the header, line 1); a table without images cannot be "
                              f"used: restore the file as downloaded, with its lines (data.path must be {what})")
    return header, rows


def repeated_lines(rows: list[tuple[int, list[str]]], each: str) -> dict[int, tuple[str, str]]:
    """``{line: (problem, fix)}`` for each line of a publisher's CSV that repeats an earlier one field for field.
    Where each line is one box or mask of an image (``each``), a repeated line would add it twice.

    Example:
        >>> repeated_lines([(2, ["a", "1"]), (3, ["b", "0"]), (4, ["a", "1"])], "box")
        {4: ('line 4 repeats line 2 exactly', 'remove the repeated line (each box is one line)')}
    """
    first: dict[tuple[str, ...], int] = {}
    repeats = {}
    for line, fields in rows:
        earlier = first.setdefault(tuple(fields), line)
        if earlier != line:
            repeats[line] = (f"line {line} repeats line {earlier} exactly",
                             f"remove the repeated line (each {each} is one line)")
    return repeats


def row_values(fields: list[str], column: dict[str, int], width: int, problems: list) -> dict[str, str]:
    """The text of each named column in one record ("" where the line is too short); a line with fewer or
    more fields than the header is a row problem (with more, a separator written into a value shifts every
    value after it into the wrong column).

    Example:
        >>> problems = []
        >>> row_values(["a.png", "Atelectasis", "Effusion", "12"], {"image": 0, "labels": 1, "age": 2}, 3, problems)
        {'image': 'a.png', 'labels': 'Atelectasis', 'age': 'Effusion'}
        >>> problems[0][0]
        'the line has 4 fields, the header 3: a value holds a separator, or a field was added'
    """
    short = [name for name, index in column.items() if index >= len(fields)]
    if short:
        problems.append((f"the line has {len(fields)} fields, the header {width}; "
                         f"no value for {', '.join(map(repr, short))}",
                         "restore the line as published (one field per header column)"))
    elif len(fields) > width:
        problems.append((f"the line has {len(fields)} fields, the header {width}: a value holds a separator, or a "
                         "field was added", "restore the line as published (one field per header column; quote a "
                         "value that holds a comma)"))
    return {name: fields[index] if index < len(fields) else "" for name, index in column.items()}


def with_fixes(table: ImageTable, **fixes: str | None) -> ImageTable:
    """``table`` with the source's own fix texts (``missing_fix``, ``patient_fix``, ``split_fix``; None: not
    recorded) in its frame's attrs, which validation and splits say instead of their generic texts.

    Example:
        >>> table = ImageTable(pd.DataFrame({"image": ["a.png"], "label": [0]}), ["a", "b"], "binary")
        >>> with_fixes(table, missing_fix="put it in images/").frame.attrs
        {'missing_fix': 'put it in images/'}
    """
    table.frame.attrs.update({key: text for key, text in fixes.items() if text})
    return table


def single_label_frame(records: list[dict], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The table's frame from per-row records of one label (image, label, patient_id, row, their problems, the
    ``extra`` columns, and site, view, sex, age and split where a record has them, else empty): label Int64 where
    a row has none.

    Example:
        >>> frame = single_label_frame([{"image": "a.dcm", "label": 1, "patient_id": "p", "row": 2,
        ...                              "source_problems": ()}])
        >>> frame["label"].dtype.name, frame["split"].isna().all()
        ('int64', np.True_)
    """
    frame = pd.DataFrame(records, columns=["image", "label", "patient_id", "site", "view", *DEMOGRAPHIC_COLUMNS,
                                           "split", "row", *extra, SOURCE_PROBLEMS])
    for name in ("image", "patient_id", "site", "view", "split"):
        frame[name] = frame[name].astype("string")
    frame["label"] = frame["label"].astype("Int64") if frame["label"].isna().any() else frame["label"].astype(np.int64)
    frame["row"] = frame["row"].astype(np.int64)
    return frame


def label_frame(records: list[dict], names: list[str], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The table's frame from per-row records of several labels and the ``extra`` columns (label columns
    Int64 where a row has none; site, view, sex, age and split empty where a record has none)."""
    columns = (["image"] + [LABEL_PREFIX + name for name in names]
               + ["patient_id", "site", "view", *DEMOGRAPHIC_COLUMNS, "split", "row", *extra, SOURCE_PROBLEMS])
    frame = pd.DataFrame(records, columns=columns)
    for name in names:
        column = frame[LABEL_PREFIX + name]
        frame[LABEL_PREFIX + name] = (column.astype("Int64") if column.isna().any()
                                      else column.to_numpy(dtype=np.int64))
    for name in ("image", "patient_id", "site", "view", "split"):
        frame[name] = frame[name].astype("string")
    frame["row"] = frame["row"].astype(np.int64)
    return frame
