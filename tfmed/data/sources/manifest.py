"""CSV manifests: one row per image with its label(s), patient and split.

Schema (see ``data_manifests/README.md``): ``path`` (relative to ``root``,
default the CSV's folder; absolute paths allowed), one label column (class
names or integer indices; binary or multiclass) or several 0/1 label columns
(multilabel; ``-1`` or ``unknown`` when a finding was not graded for an
image: it is then left out of the loss and that label's metrics),
``patient_id``, and optional ``site``, ``view``, ``sex`` (F, M, O), ``age``
(years, or a DICOM age such as ``061Y``), ``split`` (train / val / test) and
``boxes`` (the finding's boxes in the image, ``x,y,width,height;...``, see
:mod:`tfmed.data.boxes`, for checking explanations). Row numbers are CSV
line numbers (the header is line 1).
A path may name a volume (a DICOM series folder, or a NIfTI, MetaImage or NRRD file) with
optional lesion centre columns and ``series_uid`` (see
:mod:`tfmed.data.volume_inputs`); an empty patient id of a series folder is
taken from its DICOM header.

Problems in the rows (unknown or empty labels, bad split values, empty paths)
do not stop loading: each row carries them in the ``source_problems`` column
and :func:`tfmed.data.validate.validate_table` reports them together with the
file checks. Problems with the header (a referenced column that does not
exist) raise :class:`ManifestError` listing all of them at once.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "m.csv").write_text("path,label,patient_id\\na.png,normal,p1\\nb.png,pneumonia,p2\\n")
    >>> table = load_manifest(folder / "m.csv", classes=["normal", "pneumonia"])
    >>> table.task, table.frame["label"].tolist(), table.frame["row"].tolist()
    ('binary', [0, 1], [2, 3])
"""
from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import UNKNOWN_LABEL, DataConfig
from tfmed.data.boxes import BOX_FORMAT, BOXES_COLUMN, format_boxes, parse_labelled_boxes
from tfmed.data.demographics import DEMOGRAPHIC_COLUMNS, read_demographics
from tfmed.data.sources.base import SourceKind
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS
from tfmed.data.volume_inputs import CENTER_MM, CENTER_VOXEL, SERIES_UID, header_patient_id

PATH_COLUMN = "path"
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
TRUE_VALUES = {"1", "1.0", "true", "yes"}
FALSE_VALUES = {"0", "0.0", "false", "no"}
UNKNOWN_VALUES = {"-1", "-1.0", "unknown"}  # a multilabel finding not graded for the image
# How spreadsheets and pandas write an empty cell: read as empty (a missing label or patient), not as a class
# or one patient shared by every such row, unless data.classes names it.
MISSING_MARKERS = {"na", "n/a", "nan", "null", "none", "#n/a"}


class ManifestError(DataSourceError):
    """A manifest cannot be read, or its header lacks columns the config refers to."""


def load_manifest(path: str | Path, root: str | Path | None = None, label_columns: list[str] | None = None,
                  patient_column: str = "patient_id", classes: list[str] | None = None,
                  task: str | None = None, labelled: bool = True) -> ImageTable:
    """Read a CSV manifest into an :class:`ImageTable` (row = CSV line number).

    Args:
        path: the CSV file.
        root: folder that relative image paths start from (default: the CSV's folder).
        label_columns: one column (binary/multiclass) or several 0/1 columns (multilabel).
        patient_column: column with patient identifiers.
        classes: class names in label order. Single label column: values
            must be one of these names (or an index into them). Several
            label columns: display names of the columns, in their order.
        task: "binary", "multiclass" or "multilabel"; inferred when None
            (one column with 2 classes -> binary, more -> multiclass,
            several columns -> multilabel).
        labelled: False for rows to score (``tfmed predict``): label columns are
            not read (a model's ``classes`` and ``task`` must be given) and every
            label is 0.

    Raises:
        ManifestError: the file is missing or unreadable, or referenced
            columns are absent (all of them are listed).

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "m.csv").write_text("path,effusion,nodule,patient_id\\na.png,1,0,p1\\n")
        >>> table = load_manifest(folder / "m.csv", label_columns=["effusion", "nodule"])
        >>> table.task, table.labels().tolist()
        ('multilabel', [[1, 0]])
    """
    path = Path(path)
    label_columns = list(label_columns or ["label"])
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found. Put a CSV there with columns "
                            f"path,{','.join(label_columns)},{patient_column}[,site,view,split] "
                            f"(see data_manifests/README.md), or fix data.path.")
    frame = _read_csv(path)
    root = Path(root) if root is not None else path.parent
    if not labelled:
        if classes is None or task is None:
            raise ManifestError("an unlabelled manifest needs the model's classes and task")
        label_columns = []  # not read, whether the file has them or not
    multilabel = len(label_columns) > 1
    header_problems = []
    if len(set(label_columns)) != len(label_columns):
        header_problems.append(f"data.label_columns lists a column twice: {label_columns}")
    missing = [c for c in [PATH_COLUMN] + label_columns if c not in frame.columns]
    if patient_column != "patient_id" and patient_column not in frame.columns:
        missing.append(patient_column)
    for column in missing:
        if column == "label" and label_columns == ["label"]:
            header_problems.append("column 'label' (the label column unless data.label_columns names others) is not in "
                                   "the header; for other label columns, e.g. one 0/1 column per label of a "
                                   "multilabel manifest, list them in data.label_columns of an experiment YAML "
                                   "(a source string on the command line cannot set it: give the YAML instead)")
        else:
            header_problems.append(f"column {column!r} (referenced by the config) is not in the header")
    if task is not None and task not in ("binary", "multiclass", "multilabel"):
        header_problems.append(f"task {task!r} is not one of binary, multiclass, multilabel")
    if labelled and task == "multilabel" and not multilabel:
        header_problems.append("task is multilabel but only one label column is given; list one 0/1 "
                               "column per label in data.label_columns")
    if task in ("binary", "multiclass") and multilabel:
        header_problems.append(f"task is {task} but {len(label_columns)} label columns are given; "
                               "use one label column, or task multilabel")
    if multilabel and classes is not None and len(classes) != len(label_columns):
        header_problems.append(f"data.classes has {len(classes)} names for {len(label_columns)} label "
                               "columns; give one name per column or leave classes out")
    separator = next((words for s, words in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars (|)"))
                      if len(frame.columns) == 1 and s in frame.columns[0]), None)
    if header_problems and separator is not None:
        header_problems = [f"the header is one column {frame.columns[0]!r}: the file is separated by "
                           f"{separator}, not commas; save it as a comma-separated CSV"]
    if header_problems:
        raise ManifestError(f"{path} (line 1, the header): " + "; ".join(header_problems)
                            + f". Columns found: {', '.join(frame.columns) or '(none)'}. "
                            "Fix the header or data.label_columns / data.patient_column.")

    problems: list[list[tuple[str, str]]] = [[] for _ in range(len(frame))]
    out = pd.DataFrame({"row": _line_numbers(path, frame)})
    out["image"] = _resolve_paths(frame[PATH_COLUMN], root, problems)
    if not labelled:
        names, resolved_task = list(classes), task   # the labels are set by ImageTable.unlabelled below
    elif multilabel:
        names = list(classes) if classes is not None else list(label_columns)
        for column, name in zip(label_columns, names):
            out[LABEL_PREFIX + name] = _binary_column(frame[column], column, problems)
        resolved_task = "multilabel"
    else:
        out["label"], names = _label_column(frame[label_columns[0]], label_columns[0], classes, problems)
        resolved_task = task or ("binary" if len(names) <= 2 else "multiclass")
        if resolved_task == "binary" and len(names) > 2:
            raise ManifestError(f"{path}: task is binary but column {label_columns[0]!r} has "
                                f"{len(names)} classes ({', '.join(names)}); use task multiclass or "
                                "fix the labels")
        if len(names) < 2:
            raise ManifestError(f"{path}: column {label_columns[0]!r} has only the class(es) "
                                f"{names}; a classifier needs at least two. List all classes in "
                                "data.classes or add rows of the other class.")
    out["patient_id"] = _text(frame[patient_column]) if patient_column in frame.columns else pd.NA
    for column in ("site", "view"):
        out[column] = _text(frame[column]) if column in frame.columns else pd.NA
    if any(column in frame.columns for column in DEMOGRAPHIC_COLUMNS):
        values = [read_demographics(frame.at[i, "sex"] if "sex" in frame.columns else "",
                                    frame.at[i, "age"] if "age" in frame.columns else "", problems[i])
                  for i in frame.index]
        for column in DEMOGRAPHIC_COLUMNS:
            out[column] = [value[column] for value in values]
    out["split"] = _split_column(frame["split"], problems) if "split" in frame.columns else pd.NA
    _volume_columns(frame, out, problems)
    if BOXES_COLUMN in frame.columns:
        out[BOXES_COLUMN] = _boxes_column(frame[BOXES_COLUMN], names, problems)
    out[SOURCE_PROBLEMS] = [tuple(items) for items in problems]
    blank = (frame.apply(lambda column: column.str.strip() == "")).all(axis=1).to_numpy(dtype=bool)
    out = out.loc[~blank].reset_index(drop=True)
    if not labelled:
        return ImageTable.unlabelled(out, names, resolved_task, source=str(path))
    return ImageTable(out, names, resolved_task, source=str(path))


def _read_csv(path: Path) -> pd.DataFrame:
    _check_field_counts(path)
    try:  # index_col=False: a comma ending every line (the check let only empty fields past) is no index
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False)
    except pd.errors.EmptyDataError:
        raise ManifestError(f"{path}: the manifest is empty. Write a header line "
                            "(path,label,patient_id,...) and one row per image.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not a readable CSV ({error}). Save it as UTF-8 CSV with a "
                            "comma separator and the same number of fields on every line.") from None
    if frame.empty:
        raise ManifestError(f"{path}: the manifest has no data rows (only the header, line 1); add one row per "
                            "image (or volume) under the header")
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.apply(lambda column: column.str.strip())


def _check_field_counts(path: Path) -> None:
    """Refuse a line with fewer fields than the header, or more that are not empty (some exports end every line
    with a comma, which is harmless), naming it: pandas would fill the missing cells, or drop the extra ones,
    silently."""
    lines = {"fewer": [], "more": []}
    fixes = {"fewer": "write every field of each line, an empty cell as nothing between two commas",
             "more": "put a value that holds a comma in double quotes, or remove the extra fields"}
    try:
        records = _records(path)
    except (OSError, UnicodeDecodeError, csv.Error):
        return  # pandas' reading names what is wrong with the file
    header = records[0][1] if records else []
    for start, record in records[1:]:
        if record and len(record) < len(header):
            lines["fewer"].append((start, len(record)))
        elif any(field.strip() for field in record[len(header):]):
            lines["more"].append((start, len(record)))
    for words, found in lines.items():
        if found:
            (line, count), others = found[0], len(found) - 1
            raise ManifestError(f"{path}: line {line} has {count} field(s), {words} than the header's "
                                f"{len(header)}" + (f" (and {others} more line(s) like it)" if others else "")
                                + f"; {fixes[words]}")


def _line_numbers(path: Path, frame: pd.DataFrame) -> np.ndarray:
    """The CSV line each row starts on: the row's index + 2 unless a quoted cell spans several lines."""
    lines = frame.index.to_numpy() + 2
    if not frame.apply(lambda column: column.str.contains("\n", regex=False)).to_numpy().any():
        return lines
    try:
        starts = [start for start, _ in _records(path)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return lines
    return np.asarray(starts[1:], dtype=np.int64) if len(starts) == len(frame) + 1 else lines


def _records(path: Path) -> list[tuple[int, list[str]]]:
    """Each CSV record of ``path`` (the header first) with the line it starts on: a quoted cell may span lines."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        records, start = [], 1
        for record in reader:
            records.append((start, record))
            start = reader.line_num + 1
    return records


def _text(values: pd.Series) -> pd.Series:
    """A text column with empty cells and missing-value markers (``NA``, ``NaN``, ``null``) as missing."""
    return values.mask(values.str.casefold().isin(MISSING_MARKERS), "").replace("", pd.NA).astype("string")


def _resolve_paths(values: pd.Series, root: Path, problems) -> list:
    images = []
    for i, value in enumerate(values.tolist()):
        if value == "":
            problems[i].append(("empty path", "write the image file's path in the path column"))
            images.append(pd.NA)
            continue
        if "\\" in value and os.sep == "/" and not (root / value).exists():
            value = value.replace("\\", "/")   # a path written on Windows
        candidate = Path(value)
        images.append(os.path.normpath(str(candidate if candidate.is_absolute() else root / candidate)))
    return images


def _label_column(values: pd.Series, column: str, classes: list[str] | None, problems):
    named = set(classes or ())
    raw = ["" if value.casefold() in MISSING_MARKERS and value not in named else value for value in values.tolist()]
    written = values.tolist()
    present = sorted({v for v in raw if v != ""})
    respelt = {}  # another spelling (case) of an inferred class -> the class
    numbered = set()  # class numbers written among inferred class names
    if classes is None:
        integers = [_as_int(v) for v in present]
        if present and all(i is not None for i in integers) and min(integers) >= 0:
            classes = [str(i) for i in range(max(integers) + 1)]
        else:  # names; a class number among them (two exports joined) is not a class of its own
            numbers = {v for v in present if _as_int(v) is not None}
            classes, respelt = _one_spelling_each([v for v in present if v not in numbers], raw)
            numbered = {v for v in numbers if _as_int(v) >= 0}
    lookup = {name: i for i, name in enumerate(classes)}
    labels = []
    for i, value in enumerate(raw):
        if value == "":
            what = "empty label" if written[i] == "" else f"missing label {written[i]!r}"
            named = f" (or list {written[i]!r} in data.classes if it is a class)" if written[i] else ""
            problems[i].append((f"{what} in column {column!r}", f"fill in one of {', '.join(classes)}{named}"))
            labels.append(pd.NA)
        elif value in respelt:
            problems[i].append((f"label {value!r} in column {column!r} differs from the class {respelt[value]!r} only "
                                "in case", f"write it {respelt[value]!r} (if the two are classes of their own, list "
                                "both in data.classes)"))
            labels.append(pd.NA)
        elif value in lookup:
            labels.append(lookup[value])
        elif value in numbered:
            problems[i].append((f"label {value!r} in column {column!r} is a class number among class names "
                                f"({', '.join(classes)})", "write the class's name, or list the classes in "
                                f"data.classes (then {value} is the class at that place, from 0)"))
            labels.append(pd.NA)
        elif _as_int(value) is not None and 0 <= _as_int(value) < len(classes):
            labels.append(_as_int(value))
        else:
            problems[i].append((f"unknown label {value!r} in column {column!r}",
                                f"use one of {', '.join(classes)} (or an index 0..{len(classes) - 1}), "
                                "or add the class to data.classes"))
            labels.append(pd.NA)
    return _int_series(labels), list(classes)


def _one_spelling_each(names: list[str], raw: list) -> tuple[list[str], dict[str, str]]:
    """Inferred class names with one spelling per name up to case (the most frequent, else the first
    in order), and each other spelling -> the kept one: "normal" beside "Normal" is a typo, not a class.

    Example:
        >>> _one_spelling_each(["Normal", "Pneumonia", "normal"], ["Normal", "normal", "Normal", "Pneumonia"])
        (['Normal', 'Pneumonia'], {'normal': 'Normal'})
    """
    counts = Counter(raw)
    kept, respelt = {}, {}
    for name in sorted(names, key=lambda n: (-counts[n], names.index(n))):
        key = name.casefold()
        if key in kept:
            respelt[name] = kept[key]
        else:
            kept[key] = name
    return [name for name in names if name not in respelt], respelt


def _binary_column(values: pd.Series, column: str, problems) -> pd.Series:
    labels = []
    for i, value in enumerate(values.tolist()):
        lowered = value.lower()
        if lowered in TRUE_VALUES:
            labels.append(1)
        elif lowered in FALSE_VALUES:
            labels.append(0)
        elif lowered in UNKNOWN_VALUES:
            labels.append(UNKNOWN_LABEL)
        else:
            what = "empty label" if value == "" else f"label {value!r}"
            problems[i].append((f"{what} in multilabel column {column!r}",
                                "write 0 or 1, or -1 (or unknown) when the finding is unknown for the image"))
            labels.append(pd.NA)
    return _int_series(labels)


def _boxes_column(values: pd.Series, names: list[str], problems) -> pd.Series:
    """Each row's finding boxes as tfmed writes them (empty: none); a malformed box, or one naming a class or
    label outside ``names``, is a row problem."""
    texts = []
    for i, value in enumerate(values.tolist()):
        try:
            boxes = parse_labelled_boxes(value)
        except ValueError as error:
            problems[i].append((str(error), f"write {BOX_FORMAT}"))
            boxes = []
        unknown = sorted({label for label, _ in boxes if label is not None and label not in names})
        if unknown:
            problems[i].append((f"a box names {', '.join(map(repr, unknown))}, which is none of the classes or "
                                f"labels {names}", "name one of them before ':' as written there, or none"))
            boxes = []
        texts.append(format_boxes([box for _, box in boxes], [label for label, _ in boxes]) if boxes else pd.NA)
    return pd.Series(texts, dtype="string")


def _split_column(values: pd.Series, problems) -> pd.Series:
    splits = []
    for i, value in enumerate(values.tolist()):
        if value == "":
            splits.append(pd.NA)
        elif value.lower() in SPLIT_NAMES:
            splits.append(SPLIT_NAMES[value.lower()])
        else:
            problems[i].append((f"split {value!r} is not train, val or test",
                                "write train, val or test, or leave the split column empty"))
            splits.append(pd.NA)
    return pd.Series(splits, dtype="string")


def _volume_columns(frame: pd.DataFrame, out: pd.DataFrame, problems) -> None:
    """Lesion centre columns (numbers, whole triples), ``series_uid``, and patient ids of DICOM series
    folders taken from their headers when the manifest leaves them empty."""
    for triple, unit in ((CENTER_MM, "mm"), (CENTER_VOXEL, "voxel index")):
        present = [name for name in triple if name in frame.columns]
        if not present:
            continue
        numbers = {name: pd.to_numeric(frame[name], errors="coerce") if name in frame.columns
                   else pd.Series(np.nan, index=frame.index) for name in triple}
        for i in range(len(frame)):
            given = [name for name in present if frame[name].iloc[i] != ""]
            bad = [name for name in given if pd.isna(numbers[name].iloc[i])]
            if bad:
                problems[i].append((f"{bad[0]} {frame[bad[0]].iloc[i]!r} is not a number",
                                    f"write the lesion centre's {unit} as a number"))
            elif given and len(given) < 3:
                problems[i].append((f"lesion centre gives {', '.join(given)} but not all of {', '.join(triple)}",
                                    f"fill all three {unit} columns, or none"))
        for name in triple:
            out[name] = numbers[name].to_numpy(dtype=float)
    if SERIES_UID in frame.columns:
        out[SERIES_UID] = _text(frame[SERIES_UID])
    missing = out["patient_id"].isna().to_numpy(dtype=bool) if "patient_id" in out else np.zeros(0, bool)
    for i in np.flatnonzero(missing):
        image = out["image"].iloc[i]
        if not pd.isna(image) and Path(image).is_dir():
            out.loc[i, "patient_id"] = header_patient_id(image)


def _int_series(values: list) -> pd.Series:
    if any(v is pd.NA for v in values):
        return pd.Series(values, dtype="Int64")
    return pd.Series(np.asarray(values, dtype=np.int64))


def _as_int(value: str) -> int | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_manifest(path, root=root, label_columns=config.label_columns,
                         patient_column=config.patient_column, classes=config.classes, task=config.task)


SOURCE = SourceKind("manifest", "a CSV manifest with columns path,label,patient_id[,site,view,split] "
                                "(see data_manifests/README.md)", needs_folder=False, load=_load)
