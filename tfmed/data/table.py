"""The common table every data source produces.

Each source (CSV manifest, class folders, MedMNIST ``.npz``, DICOM folder) is
turned into one :class:`ImageTable`; everything downstream (validation,
splits, the tf.data pipeline) reads only this table.

Example:
    >>> import numpy as np, pandas as pd
    >>> frame = pd.DataFrame({"image": ["a.png", "b.png"], "label": [0, 1],
    ...                       "patient_id": ["p1", "p2"]})
    >>> table = ImageTable(frame, classes=["normal", "pneumonia"], task="binary")
    >>> table.labels().tolist()
    [0, 1]
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tfmed.config import Task

from tfmed.errors import TfmedError

TASKS = typing.get_args(Task)
SPLITS = ("train", "val", "test")
LABEL_PREFIX = "label:"

# Columns every table carries (missing optional values are NA).
#   image       str   absolute file path, or a display reference such as
#                     "pneumoniamnist_trainval.npz#train/17" for in-memory images
#   array_index int   row into ImageTable.images (only for in-memory sources)
#   label       int   class index into ImageTable.classes (binary/multiclass)
#   label:<c>   int   0/1 per class c (multilabel only, one column per class);
#                     UNKNOWN_LABEL (-1) where the label is not known for the image
#   patient_id  str   patient identifier (NA when unknown)
#   site        str   acquisition site / source (NA when unknown)
#   view        str   view position (NA when unknown)
#   sex         str   "female" | "male" | "other" (NA when unknown; see tfmed.data.demographics)
#   age         float the patient's age in years at the image (NA when unknown)
#   split       str   "train" | "val" | "test" when the source predefines it
#   row         int   the row's number in its source (CSV line, file index),
#                     used in every error message
BASE_COLUMNS = ("image", "patient_id", "site", "view", "sex", "age", "split", "row")


class DataSourceError(TfmedError):
    """A data source is missing, unreadable or not in the expected layout."""


@dataclass
class ImageTable:
    """Images, labels and metadata of one dataset, in a pandas DataFrame.

    Attributes:
        frame: one row per image, columns as documented in this module.
        classes: class names (binary/multiclass: index = ``label`` value;
            multilabel: the label names, one ``label:<name>`` column each).
        task: "binary", "multiclass" or "multilabel".
        images: in-memory images (N, H, W) or (N, H, W, C) for array-backed
            sources, indexed by ``frame["array_index"]``; None for files.
        source: human-readable description of where the data came from.
        whole: for a table made by :meth:`part`, the table it is a part of and
            its rows' positions there (else None): features computed once
            over the whole serve each of its parts.
    """

    frame: pd.DataFrame
    classes: list[str]
    task: str
    images: np.ndarray | None = None
    source: str = ""
    excluded: pd.DataFrame = field(default_factory=pd.DataFrame)
    whole: tuple["ImageTable", np.ndarray] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        frame = self.frame.copy()
        for column in BASE_COLUMNS:
            if column not in frame.columns:
                frame[column] = pd.NA if column != "row" else np.arange(len(frame))
        frame["sex"] = frame["sex"].astype("string")
        frame["age"] = pd.to_numeric(frame["age"]).astype("Float64")
        self.frame = frame.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def label_columns(self) -> list[str]:
        """The columns holding the target(s)."""
        if self.task == "multilabel":
            return [LABEL_PREFIX + name for name in self.classes]
        return ["label"]

    @property
    def num_outputs(self) -> int:
        """Width of the model output: 1 for binary, else one per class."""
        return 1 if self.task == "binary" else len(self.classes)

    def labels(self) -> np.ndarray:
        """Targets as integers (n,) or, for multilabel, a matrix (n, L) of 0, 1 and UNKNOWN_LABEL (-1)."""
        if self.task == "multilabel":
            return self.frame[self.label_columns].to_numpy(dtype=np.int64)
        return self.frame["label"].to_numpy(dtype=np.int64)

    @classmethod
    def unlabelled(cls, frame: pd.DataFrame, classes: list[str], task: str, source: str = "") -> "ImageTable":
        """Rows to score, whose labels are not known: every label set to 0 for a model's ``classes``.

        Example:
            >>> ImageTable.unlabelled(pd.DataFrame({"image": ["a.png"]}), ["x", "y"], "multilabel").labels().tolist()
            [[0, 0]]
        """
        frame = frame.copy()
        for column in ([LABEL_PREFIX + name for name in classes] if task == "multilabel" else ["label"]):
            frame[column] = 0
        return cls(frame, list(classes), task, source=source)

    def subset(self, rows) -> "ImageTable":
        """A new table with the rows selected by a boolean mask or positions."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return ImageTable(self.frame.iloc[rows].reset_index(drop=True), list(self.classes),
                          self.task, self.images, self.source, self.excluded)

    def part(self, positions) -> "ImageTable":
        """The rows at ``positions`` as a table that knows it is part of this one (its ``whole``), as
        the parts of a k-fold over this table are: a frozen backbone's features of this table, computed
        once, then serve every part (see :meth:`tfmed.modes.svm.FeatureSVM.fit_tables`).

        Example:
            >>> table = ImageTable(pd.DataFrame({"image": ["a", "b", "c"], "label": [0, 1, 0]}), ["x", "y"], "binary")
            >>> piece = table.part([2, 0]).part([1])
            >>> piece.whole[0] is table, piece.whole[1].tolist(), piece.frame["image"].tolist()
            (True, [0], ['a'])
        """
        positions = np.asarray(positions, dtype=np.int64)
        piece = self.subset(positions)
        whole, rows = self.whole if self.whole is not None else (self, np.arange(len(self)))
        piece.whole = (whole, rows[positions])
        return piece

    def split(self, name: str) -> "ImageTable":
        """The rows whose ``split`` column equals ``name``."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return self.subset((self.frame["split"] == name).fillna(False).to_numpy(dtype=bool))

    def class_counts(self) -> dict[str, int]:
        """Number of images per class (per label for multilabel: the images known to be positive)."""
        y = self.labels()
        if self.task == "multilabel":
            return {c: int(n) for c, n in zip(self.classes, (y == 1).sum(axis=0))}
        return {c: int((y == i).sum()) for i, c in enumerate(self.classes)}


def remap_labels(frame: pd.DataFrame, order) -> pd.DataFrame:
    """A copy of ``frame`` with each single label's class index ``k`` replaced by ``order[k]`` (e.g. from one class
    list to another's positions); a label outside ``order`` is kept as it is, for validation to report.

    Example:
        >>> remap_labels(pd.DataFrame({"label": [0, 1, 7]}), [1, 0])["label"].tolist()
        [1, 0, 7]
    """
    frame = frame.copy()
    order = np.asarray(order)
    labels = pd.to_numeric(frame["label"], errors="coerce")
    known = labels.between(0, len(order) - 1)
    frame.loc[known, "label"] = order[labels[known].astype(int).to_numpy()]
    return frame
