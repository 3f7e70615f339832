"""Every data source becomes one :class:`~tfmed.data.table.ImageTable`.

Kinds (``DataConfig.source``):

* ``"pneumonia_mnist"`` (and any other name in :data:`tfmed.datasets.DATASETS`):
  a dataset shipped inside tfmed.
* ``"medmnist"``: a MedMNIST-format ``.npz`` (``{split}_images``,
  ``{split}_labels``); ``path`` may end in ``#test`` to load only that split.
* ``"manifest"``: a CSV manifest (:mod:`tfmed.data.manifest`).
* ``"folder"``: one sub-folder per class, or with ``filename_label_suffix``
  the label taken from the file name (``CHNCXR_0001_0.png`` -> 0).
* ``"dicom"``: one sub-folder per class of DICOM files; patient id from the
  PatientID tag, view from ViewPosition.

On the command line :func:`parse_source_spec` turns ``"medmnist:x.npz#test"``,
``"manifest:m.csv"``, ``"folder:DIR"``, ``"dicom:DIR"`` or a bare path into a
:class:`~tfmed.config.DataConfig`.

Example:
    >>> table = load_source(parse_source_spec("pneumonia_mnist"))
    >>> table.classes, sorted(table.frame["split"].unique())
    (['normal', 'pneumonia'], ['train', 'val'])
"""
from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.decode import DICOM_EXTENSIONS, SUPPORTED_EXTENSIONS, has_dicom_marker
from tfmed.data.table import LABEL_PREFIX, SPLITS, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

SOURCE_KINDS = ("manifest", "folder", "medmnist", "dicom")
SUFFIX_LABEL = re.compile(r"^(?P<stem>.+)_(?P<label>\d+)$")


class DataSourceError(ValueError):
    """A data source is missing, unreadable or not in the expected layout."""


def parse_source_spec(spec: str) -> DataConfig:
    """Turn a command-line source string into a :class:`DataConfig`.

    Accepted: a dataset name (``"pneumonia_mnist"``), ``"KIND:PATH"`` with
    KIND one of manifest, folder, medmnist, dicom (``"medmnist:x.npz#test"``
    loads only that split), or a bare path (.csv -> manifest, .npz ->
    medmnist, a folder -> folder).

    Example:
        >>> parse_source_spec("medmnist:data/chest.npz#test").path
        'data/chest.npz#test'
        >>> parse_source_spec("scans/manifest.csv").source
        'manifest'
    """
    from tfmed.datasets import DATASETS

    spec = spec.strip()
    if spec in DATASETS:
        return DataConfig(source=spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCE_KINDS and rest:
        return DataConfig(source=kind, path=rest)
    if sep and kind in SOURCE_KINDS:
        raise DataSourceError(f"source {spec!r} names no path; write {kind}:PATH")
    lowered = spec.lower().split("#")[0]
    if lowered.endswith(".csv"):
        return DataConfig(source="manifest", path=spec)
    if lowered.endswith(".npz"):
        return DataConfig(source="medmnist", path=spec)
    if Path(spec).is_dir():
        return DataConfig(source="folder", path=spec)
    raise DataSourceError(
        f"cannot tell what kind of source {spec!r} is. Use a dataset name "
        f"({', '.join(DATASETS)}), KIND:PATH with KIND one of {', '.join(SOURCE_KINDS)}, "
        "a .csv manifest, a MedMNIST .npz file or an existing folder")


def load_source(config: DataConfig, base_dir: str | Path | None = None) -> ImageTable:
    """Load the source described by ``config`` into an :class:`ImageTable`.

    Relative paths in ``config`` are resolved against ``base_dir`` (e.g. the
    folder of the experiment file) when given, else the working directory.

    Raises:
        DataSourceError: unknown source kind, missing path (the message
            says what to put there and includes ``config.missing_message``),
            or a file/folder that is not in the expected layout.

    Example:
        >>> from tfmed.config import DataConfig
        >>> len(load_source(DataConfig(source="pneumonia_mnist")))
        5232
    """
    from tfmed.datasets import DATASETS

    if ":" in config.source and config.source.split(":", 1)[0] in SOURCE_KINDS:
        parsed = parse_source_spec(config.source)
        config = dataclasses.replace(config, source=parsed.source, path=parsed.path)
    if config.source in DATASETS:
        table = DATASETS[config.source].load()
        return _with_classes(table, config)
    if config.source not in SOURCE_KINDS:
        raise DataSourceError(f"data.source is {config.source!r}; use one of "
                              f"{', '.join(list(DATASETS) + list(SOURCE_KINDS))}")
    if not config.path:
        raise DataSourceError(f"data.source {config.source!r} needs data.path: "
                              + _what_to_put(config.source) + _extra(config))
    raw_path, _, split = config.path.partition("#") if config.source == "medmnist" else (config.path, "", "")
    path = Path(raw_path)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    root = Path(config.root) if config.root else None
    if root is not None and base_dir is not None and not root.is_absolute():
        root = Path(base_dir) / root
    if not path.exists():
        raise DataSourceError(f"{path}: not found. data.source {config.source!r} expects "
                              + _what_to_put(config.source) + _extra(config))
    if config.source == "manifest":
        from tfmed.data.manifest import load_manifest

        return load_manifest(path, root=root, label_columns=config.label_columns,
                             patient_column=config.patient_column, classes=config.classes,
                             task=config.task)
    if config.source == "medmnist":
        return load_medmnist(path, classes=config.classes, task=config.task,
                             splits=[split] if split else None)
    if not path.is_dir():
        raise DataSourceError(f"{path}: data.source {config.source!r} needs a folder, got a file. "
                              + _what_to_put(config.source))
    if config.source == "dicom":
        return load_dicom_folder(path, classes=config.classes, task=config.task)
    if config.filename_label_suffix:
        return load_suffix_folder(path, classes=config.classes, task=config.task)
    return load_class_folders(path, classes=config.classes, task=config.task)


def _what_to_put(kind: str) -> str:
    return {
        "manifest": "a CSV manifest with columns path,label,patient_id[,site,view,split] "
                    "(see data_manifests/README.md)",
        "medmnist": "a MedMNIST .npz file with {split}_images and {split}_labels arrays",
        "folder": "a folder with one sub-folder of images per class (or, with "
                  "data.filename_label_suffix, files named NAME_<label>.png)",
        "dicom": "a folder with one sub-folder of DICOM files per class",
    }[kind]


def _extra(config: DataConfig) -> str:
    return f". {config.missing_message}" if config.missing_message else ""


def _with_classes(table: ImageTable, config: DataConfig) -> ImageTable:
    if config.classes is not None and list(config.classes) != list(table.classes):
        if len(config.classes) != len(table.classes):
            raise DataSourceError(f"data.classes lists {len(config.classes)} names but "
                                  f"{table.source} has {len(table.classes)} classes {table.classes}")
        table.classes = list(config.classes)
    return table


def load_medmnist(path: str | Path, classes: list[str] | None = None, task: str | None = None,
                  splits: list[str] | None = None, name: str | None = None) -> ImageTable:
    """Load a MedMNIST-format ``.npz`` (keys ``{split}_images``, ``{split}_labels``).

    Labels of shape (N, 1) are binary/multiclass (classes "0", "1", ...
    unless ``classes`` is given); (N, L) with L > 1 is multilabel (ChestMNIST
    style). Each image is its own patient (MedMNIST files carry no patient
    ids): ``patient_id`` is "SPLIT-INDEX".

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
        >>> np.savez(path, train_images=np.zeros((3, 8, 8), np.uint8),
        ...          train_labels=np.array([[0], [1], [2]]))
        >>> table = load_medmnist(path)
        >>> table.task, table.classes, table.frame["image"][2]
        ('multiclass', ['0', '1', '2'], 'tiny.npz#train/2')
    """
    path = Path(path)
    name = name or path.name
    try:
        archive = np.load(path, allow_pickle=False)
        keys = sorted(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataSourceError(f"{path}: not a readable .npz file ({error}). Save the arrays with "
                              "numpy.savez as {split}_images / {split}_labels.") from None
    available = [s for s in SPLITS if f"{s}_images" in keys and f"{s}_labels" in keys]
    wanted = list(splits) if splits else available
    missing = [f"{s}_{part}" for s in wanted for part in ("images", "labels") if f"{s}_{part}" not in keys]
    if not wanted or missing:
        what = f"is missing {', '.join(missing)}" if missing else "has no {split}_images/{split}_labels pairs"
        raise DataSourceError(f"{path} {what}; keys found: {', '.join(keys) or '(none)'}. A MedMNIST "
                              f"file has train_images/train_labels (and val_, test_) arrays; "
                              f"splits must be among {', '.join(SPLITS)}.")
    images, labels, frames = [], [], []
    offset = 0
    for split in wanted:
        split_images = archive[f"{split}_images"]
        split_labels = archive[f"{split}_labels"]
        if split_labels.ndim == 1:
            split_labels = split_labels[:, None]
        if len(split_images) != len(split_labels):
            raise DataSourceError(f"{path}: {split}_images has {len(split_images)} images but "
                                  f"{split}_labels has {len(split_labels)} rows; they must match")
        if images and split_images.shape[1:] != images[0].shape[1:]:
            raise DataSourceError(f"{path}: {split}_images are {split_images.shape[1:]} but "
                                  f"{wanted[0]}_images are {images[0].shape[1:]}; all splits must "
                                  "have the same image shape")
        if labels and split_labels.shape[1] != labels[0].shape[1]:
            raise DataSourceError(f"{path}: {split}_labels has {split_labels.shape[1]} columns but "
                                  f"{wanted[0]}_labels has {labels[0].shape[1]}")
        n = len(split_images)
        index = np.arange(n)
        frames.append(pd.DataFrame({
            "image": [f"{name}#{split}/{i}" for i in index],
            "array_index": index + offset,
            "patient_id": [f"{split}-{i}" for i in index],
            "split": split,
        }))
        images.append(split_images)
        labels.append(split_labels)
        offset += n
    frame = pd.concat(frames, ignore_index=True)
    frame["row"] = np.arange(len(frame))
    frame["split"] = frame["split"].astype("string")
    frame["patient_id"] = frame["patient_id"].astype("string")
    label_array = np.concatenate(labels).astype(np.int64)
    if label_array.shape[1] > 1 or task == "multilabel":
        names = list(classes) if classes is not None else [str(i) for i in range(label_array.shape[1])]
        if len(names) != label_array.shape[1]:
            raise DataSourceError(f"{path}: data.classes has {len(names)} names but the labels have "
                                  f"{label_array.shape[1]} columns")
        for j, label_name in enumerate(names):
            frame[LABEL_PREFIX + label_name] = label_array[:, j]
        resolved_task = "multilabel"
    else:
        count = int(label_array.max()) + 1 if len(label_array) else 2
        names = list(classes) if classes is not None else [str(i) for i in range(max(count, 2))]
        frame["label"] = label_array[:, 0]
        resolved_task = task or ("binary" if len(names) == 2 else "multiclass")
    return ImageTable(frame, names, resolved_task, images=np.concatenate(images),
                      source=f"{path}" + (f"#{','.join(wanted)}" if splits else ""))


def _class_folder_names(path: Path, classes: list[str] | None) -> list[str]:
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


def _outside_classes(path: Path, names: list[str]) -> list[dict]:
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


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _skipped(path: Path, row: int, why: str) -> dict:
    return {"image": str(path), "row": row, "problem": f"skipped: {why}",
            "fix": f"convert it to one of {', '.join(SUPPORTED_EXTENSIONS)} or move it out of the folder"}


def _table(records: list[dict], skipped: list[dict], classes: list[str], task: str | None,
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


def load_class_folders(path: str | Path, classes: list[str] | None = None,
                       task: str | None = None) -> ImageTable:
    """One sub-folder per class (class order: ``classes`` or sorted folder names).

    Files are found recursively; when an image sits in a further sub-folder
    (``normal/patient7/img1.png``) that folder name is its patient id,
    otherwise the patient id is unknown. Files of unsupported types are
    listed in ``table.excluded`` (and as warnings by validation).

    Example:
        >>> import cv2, numpy as np, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("normal", "tb"):
        ...     (root / c).mkdir(); _ = cv2.imwrite(str(root / c / "a.png"), np.zeros((4, 4), np.uint8))
        >>> load_class_folders(root).frame["label"].tolist()
        [0, 1]
    """
    path = Path(path)
    names = _class_folder_names(path, classes)
    records, skipped = [], []
    for label, name, file, row in _class_files(path, names, SUPPORTED_EXTENSIONS, skipped,
                                               lambda f: f"unsupported file type {f.suffix or '(none)'!r}"):
        parts = file.relative_to(path / name).parts
        patient = parts[0] if len(parts) > 1 else pd.NA
        records.append(dict(image=str(file), label=label, patient_id=patient, site=pd.NA, view=pd.NA,
                            row=row, **{SOURCE_PROBLEMS: ()}))
    return _table(records, skipped + _outside_classes(path, names), names, task, source=str(path))


def _class_files(path: Path, names: list[str], extensions, skipped: list, reason):
    """Yield ``(label, class name, file, row)`` for each image under ``path/<class>``.

    Files with another extension and no DICOM marker are appended to
    ``skipped`` (with ``reason(file)``) instead, so none is dropped silently.
    Rows are numbered from 1 over everything seen.
    """
    row = 0
    for label, name in enumerate(names):
        for file in _files(path / name):
            row += 1
            if file.suffix.lower() not in extensions and not has_dicom_marker(file):
                skipped.append(_skipped(file, row, reason(file)))
                continue
            yield label, name, file, row


def load_suffix_folder(path: str | Path, classes: list[str] | None = None,
                       task: str | None = None) -> ImageTable:
    """Label from the integer after the last "_" of each file name, found recursively.

    This is how the NLM Shenzhen and Montgomery tuberculosis sets name
    their files (``CHNCXR_0001_0.png`` normal, ``MCUCXR_0104_1.png`` TB).
    ``site`` is the first sub-folder under ``path``; ``patient_id`` is the
    file stem without the suffix. A file without a valid suffix is kept as a
    row with a problem (validation names it).

    Example:
        >>> import cv2, numpy as np, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "shenzhen").mkdir()
        >>> _ = cv2.imwrite(str(root / "shenzhen" / "CHNCXR_0001_1.png"), np.zeros((4, 4), np.uint8))
        >>> table = load_suffix_folder(root, classes=["normal", "tb"])
        >>> row = table.frame.iloc[0]
        >>> int(row["label"]), row["patient_id"], row["site"]
        (1, 'CHNCXR_0001', 'shenzhen')
    """
    path = Path(path)
    records, skipped, found = [], [], []
    for file in _files(path):
        row = len(records) + len(skipped) + 1
        if file.suffix.lower() not in SUPPORTED_EXTENSIONS:
            skipped.append(_skipped(file, row, f"unsupported file type {file.suffix or '(none)'!r}"))
            continue
        parts = file.relative_to(path).parts
        site = parts[0] if len(parts) > 1 else pd.NA
        match = SUFFIX_LABEL.match(file.stem)
        record = dict(image=str(file), label=pd.NA, patient_id=file.stem, site=site, view=pd.NA, row=row,
                      **{SOURCE_PROBLEMS: ()})
        if match is None:
            record[SOURCE_PROBLEMS] = ((f"file name {file.name!r} does not end in _<label> "
                                          "(e.g. CHNCXR_0001_0.png)",
                                          "rename the file with its label suffix or move it out"),)
        else:
            record["label"] = int(match.group("label"))
            record["patient_id"] = match.group("stem")
            found.append(record["label"])
        records.append(record)
    if classes is None:
        count = max(found) + 1 if found else 2
        classes = [str(i) for i in range(max(count, 2))]
    for record in records:
        if record["label"] is not pd.NA and record["label"] >= len(classes):
            record[SOURCE_PROBLEMS] = ((f"label suffix {record['label']} is not an index into classes "
                                          f"{classes}", "rename the file or list the class in data.classes"),)
            record["label"] = pd.NA
    if not records:
        raise DataSourceError(f"{path}: no image files found (looked recursively for "
                              f"{', '.join(SUPPORTED_EXTENSIONS)} named NAME_<label>)")
    return _table(records, skipped, list(classes), task, source=str(path))


def load_dicom_folder(path: str | Path, classes: list[str] | None = None,
                      task: str | None = None) -> ImageTable:
    """One sub-folder per class of DICOM files (``.dcm``/``.dicom`` or no extension with the DICM marker).

    ``patient_id`` comes from PatientID, ``view`` from ViewPosition and
    ``site`` from InstitutionName when present. Headers are read without
    pixel data; a file whose header cannot be read is kept as a row with a
    problem.

    Example:
        >>> import shutil, tempfile, pathlib
        >>> from pydicom.data import get_testdata_file
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for c in ("a", "b"):
        ...     (root / c).mkdir(); _ = shutil.copy(get_testdata_file("CT_small.dcm"), root / c / "x.dcm")
        >>> load_dicom_folder(root).frame["patient_id"].tolist()
        ['1CT1', '1CT1']
    """
    import pydicom

    path = Path(path)
    names = _class_folder_names(path, classes)
    records, skipped = [], []
    for label, _, file, row in _class_files(path, names, DICOM_EXTENSIONS, skipped,
                                            lambda f: "not a DICOM file (no .dcm/.dicom extension or "
                                                      "DICM marker)"):
        record = dict(image=str(file), label=label, patient_id=pd.NA, site=pd.NA, view=pd.NA, row=row,
                      **{SOURCE_PROBLEMS: ()})
        try:
            header = pydicom.dcmread(str(file), stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types for damaged headers
            record[SOURCE_PROBLEMS] = ((f"DICOM header cannot be read ({type(error).__name__}: "
                                          f"{error})", "re-export the file or remove it"),)
        else:
            for column, keyword in (("patient_id", "PatientID"), ("view", "ViewPosition"),
                                    ("site", "InstitutionName")):
                value = str(header.get(keyword, "") or "").strip()
                if value:
                    record[column] = value
        records.append(record)
    return _table(records, skipped + _outside_classes(path, names), names, task, source=str(path))
