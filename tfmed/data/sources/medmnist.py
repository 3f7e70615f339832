"""MedMNIST-format ``.npz`` files (``data.source: medmnist``).

``data.path`` may end in ``#test`` (or ``#train,val``) to load only those splits.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.sources.base import SourceKind
from tfmed.data.table import LABEL_PREFIX, SPLITS, DataSourceError, ImageTable


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
        split_images = _array(archive, path, f"{split}_images")
        split_labels = _labels(_array(archive, path, f"{split}_labels"), path, f"{split}_labels")
        if split_images.ndim == 4 and split_images.shape[-1] > 4:  # (N, D, H, W): MedMNIST's 3-D sets
            raise DataSourceError(f"{path}: {split}_images has shape {split_images.shape}, volumes of "
                                  f"{split_images.shape[1]} slices (a MedMNIST 3-D set, such as OrganMNIST3D), and "
                                  "the medmnist source reads 2-D images (N, H, W) or (N, H, W, C); save each volume "
                                  "as NIfTI and classify 2-D views of it (views: in the experiment)")
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


def _array(archive, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except (OSError, ValueError, zipfile.BadZipFile) as error:  # e.g. an array of Python objects
        raise DataSourceError(f"{path}: array {key} cannot be read ({error}); save it as a numeric array with "
                              "numpy.savez") from None


def _labels(labels: np.ndarray, path: Path, key: str) -> np.ndarray:
    """``labels`` as (N, L) whole numbers, or a DataSourceError naming ``key`` and the first bad entry."""
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise DataSourceError(f"{path}: {key} has shape {labels.shape}; labels are (N,) or (N, 1) class numbers, "
                              "or (N, L) 0/1 columns of a multilabel task")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        if not np.issubdtype(labels.dtype, np.floating):
            raise DataSourceError(f"{path}: {key} holds {labels.dtype} values; labels are whole numbers")
        bad = np.argwhere(~np.isfinite(labels) | (labels != np.round(labels)))
        if len(bad):
            row = int(bad[0][0])
            raise DataSourceError(f"{path}: {key}[{row}] is {labels[row].tolist()}, not a whole number "
                                  f"({len(bad)} such value(s)); labels are class numbers 0, 1, ... (or 0/1 per "
                                  "label of a multilabel task)")
    return labels


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_medmnist(path, classes=config.classes, task=config.task,
                         splits=fragment.split(",") if fragment else None)


SOURCE = SourceKind("medmnist", "a MedMNIST .npz file with {split}_images and {split}_labels arrays",
                    needs_folder=False, load=_load, takes_fragment=True)
