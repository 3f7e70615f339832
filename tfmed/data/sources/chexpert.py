"""CheXpert as published (``data.source: chexpert``).

Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty
Labels and Expert Comparison", AAAI 2019.

``data.path`` is the publisher's ``train.csv`` or ``valid.csv``, read
unchanged. Its header is ``Path,Sex,Age,Frontal/Lateral,AP/PA`` followed by
the 14 observations of :data:`OBSERVATIONS`.

* Images: ``Path`` (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``)
  is relative to ``data.root``, by default the folder above the CSV's folder
  (the CSV sits inside ``CheXpert-v1.0-small/``).
* Labels: a multilabel task over the 14 observations, ``No Finding``
  included, in the publisher's order; ``data.classes`` may choose some of
  them, in the order given (e.g. the five of :data:`COMPETITION_LABELS`).
* Codes: ``1.0`` positive, ``0.0`` negative, blank (not mentioned) negative,
  ``-1.0`` uncertain (``1``, ``0``, ``-1`` too). An uncertain label becomes
  what ``data.uncertain`` says: ``zeros`` (U-Zeros, the default: negative),
  ``ones`` (U-Ones: positive) or ``ignore`` (U-Ignore: unknown,
  :data:`~tfmed.config.UNKNOWN_LABEL`, left out of the loss, the class
  weights and that label's metrics), for every label or per label
  (``{Atelectasis: ones, Edema: ones}``; labels left out of the mapping use
  zeros).
* ``patient_id`` is the ``patientNNNNN`` folder of the path; ``view`` is
  ``Frontal/Lateral`` followed by ``AP/PA`` when that is given
  (``Frontal AP``, ``Frontal PA``, ``Lateral``).
* ``data.frontal_only: true`` keeps the rows whose ``Frontal/Lateral`` is
  ``Frontal``; the others are listed in ``table.excluded`` (and as warnings by
  validation), not dropped silently.
* No split is set, for ``valid.csv`` either: the publisher's validation set
  can be scored as a test set with ``tfmed evaluate --model RUN --data chexpert:PATH/valid.csv``.

Problems in the rows (a code other than those above, a path without a
``patientNNNNN`` folder, an empty path) are row problems that
:func:`tfmed.data.validate.validate_table` reports with the CSV line number
(the header is line 1); a header without a column that is read raises
:class:`~tfmed.data.table.DataSourceError` at once.

Example:
    >>> import cv2, numpy as np, tempfile, pathlib
    >>> top = pathlib.Path(tempfile.mkdtemp()); folder = top / "CheXpert-v1.0-small"
    >>> study = folder / "train" / "patient00001" / "study1"; study.mkdir(parents=True)
    >>> _ = cv2.imwrite(str(study / "view1_frontal.jpg"), np.zeros((8, 8), np.uint8))
    >>> _ = (folder / "train.csv").write_text(HEADER + "\\n"
    ...     "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,"
    ...     ",,-1.0,,,1.0,,,-1.0,0.0,,,,\\n")
    >>> table = load_chexpert(folder / "train.csv", classes=list(COMPETITION_LABELS),
    ...                       uncertain={"Atelectasis": "ones"})
    >>> table.classes, table.labels().tolist()
    (['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion'], [[1, 0, 0, 1, 0]])
    >>> table.frame.loc[0, ["patient_id", "view"]].tolist()
    ['patient00001', 'Frontal AP']
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from tfmed.config import UNKNOWN_LABEL, DataConfig
from tfmed.data.demographics import log_unreadable, published_demographics
from tfmed.data.sources.base import (SourceKind, chosen_labels, excluded_frame, label_frame, read_csv_rows,
                                     row_values, with_fixes)
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                "Pleural Other", "Fracture", "Support Devices")
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(OBSERVATIONS)
PATH, FRONTAL_LATERAL, AP_PA = "Path", "Frontal/Lateral", "AP/PA"
SEX, AGE = "Sex", "Age"
CODES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": 0}
UNCERTAIN_CODES = ("-1", "-1.0")
POLICY_VALUES = {"ones": 1, "zeros": 0, "ignore": UNKNOWN_LABEL}
DEFAULT_POLICY = "zeros"
PATIENT = re.compile(r"(?:^|/)(patient\d+)/")
WHAT = "the publisher's train.csv or valid.csv of CheXpert, unchanged"


def load_chexpert(path: str | Path, root: str | Path | None = None, classes: list[str] | None = None,
                  uncertain: str | dict[str, str] = DEFAULT_POLICY, frontal_only: bool = False) -> ImageTable:
    """Read the publisher's ``train.csv`` / ``valid.csv`` into a multilabel :class:`ImageTable`.

    Args:
        path: the CSV.
        root: folder the ``Path`` values start from (default: the folder above the CSV's).
        classes: observations to use, in this order (default: all of :data:`OBSERVATIONS`).
        uncertain: "zeros", "ones" or "ignore" for every label, or a mapping label ->
            policy (labels not in it: zeros).
        frontal_only: keep only frontal views; the others go to ``table.excluded``.

    Raises:
        DataSourceError: the CSV is unreadable or its header lacks a column that
            is read, ``classes`` names an unknown observation, or ``uncertain``
            names an unknown label or policy.

    Example:
        >>> load_chexpert("valid.csv", uncertain="unsure")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: data.uncertain is 'unsure'; use ones (U-Ones: ...
    """
    path = Path(path)
    names = chosen_labels(classes, OBSERVATIONS, "CheXpert")
    policies = uncertainty_policies(uncertain, names)
    header, rows = read_csv_rows(path, (PATH, FRONTAL_LATERAL) + tuple(names), WHAT)
    root = Path(root) if root is not None else path.parent.parent
    column = {name: header.index(name) for name in (PATH, FRONTAL_LATERAL) + tuple(names)}
    column.update({name: header.index(name) for name in (AP_PA, SEX, AGE) if name in header})
    records, excluded, unreadable = [], [], Counter()
    for line, fields in rows:
        problems: list[tuple[str, str]] = []
        value = row_values(fields, column, len(header), problems)
        image = _image(value[PATH], root, problems)
        side = value[FRONTAL_LATERAL]
        if frontal_only and side != "Frontal":
            if side == "Lateral":
                excluded.append({"image": image, "row": line,
                                 "problem": "skipped: lateral view (data.frontal_only is true)",
                                 "fix": "none needed; set data.frontal_only: false to use lateral views too"})
                continue
            problems.append((f"{FRONTAL_LATERAL} is {side!r}, not Frontal or Lateral, so data.frontal_only "
                             "cannot tell whether to keep the row", "write Frontal or Lateral as published"))
        match = PATIENT.search(value[PATH].replace("\\", "/"))
        if value[PATH] and match is None:
            problems.append((f"{PATH} {value[PATH]!r} has no patientNNNNN folder to take the patient from",
                             "keep the publisher's layout, e.g. "
                             "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"))
        record = {"row": line, "image": image, "patient_id": match.group(1) if match else pd.NA,
                  "view": " ".join(filter(None, (side, value.get(AP_PA, "")))) or pd.NA, "split": pd.NA,
                  **published_demographics(value.get(SEX), value.get(AGE), unreadable)}
        for name in names:
            record[LABEL_PREFIX + name] = observation_label(value[name], name, policies[name], problems)
        record[SOURCE_PROBLEMS] = tuple(problems)
        records.append(record)
    log_unreadable(path, unreadable)
    table = ImageTable(label_frame(records, names), names, "multilabel", source=str(path),
                       excluded=excluded_frame(excluded))
    return with_fixes(table, missing_fix=f"CheXpert's {PATH} values are read from {root} (data.root; by default "
                      "the folder above the CSV's): put the image there as published, set data.root to the folder "
                      "that holds CheXpert-v1.0-small/, or remove the row")


def uncertainty_policies(uncertain: str | dict[str, str], names: list[str]) -> dict[str, str]:
    """The policy of each label in ``names`` from ``data.uncertain`` (one policy, or label -> policy).

    Example:
        >>> uncertainty_policies({"Edema": "ones"}, ["Edema", "Cardiomegaly"])
        {'Edema': 'ones', 'Cardiomegaly': 'zeros'}
    """
    if not isinstance(uncertain, dict):
        _check_policy(uncertain, "data.uncertain")
        return {name: uncertain for name in names}
    for label, policy in uncertain.items():
        key = f"data.uncertain.{label}"
        if label not in OBSERVATIONS:
            raise DataSourceError(f"{key}: {label!r} is not a CheXpert observation; name one of "
                                  f"{', '.join(OBSERVATIONS)}")
        if label not in names:
            raise DataSourceError(f"{key} is set, but data.classes leaves {label!r} out, so it would not be "
                                  f"used; remove it or add {label!r} to data.classes")
        _check_policy(policy, key)
    return {name: uncertain.get(name, DEFAULT_POLICY) for name in names}


def _check_policy(policy, key: str) -> None:
    problem = DataConfig.uncertain_policy_problem(policy)
    if problem:
        raise DataSourceError(f"{key} is {policy!r}; {problem}")


def _image(value: str, root: Path, problems: list):
    if value == "":
        problems.append((f"empty {PATH!r}", "write the image's path as published, e.g. "
                         "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"))
        return pd.NA
    candidate = Path(value)
    return os.path.normpath(str(candidate if candidate.is_absolute() else root / candidate))


def observation_label(code: str, name: str, policy: str, problems: list):
    """The label a CheXpert-labeller code gives under ``policy`` (pd.NA, and a problem, for an unknown code).

    Example:
        >>> observation_label("-1.0", "Edema", "ones", []), observation_label("", "Edema", "ones", [])
        (1, 0)
    """
    if code in CODES:
        return CODES[code]
    if code in UNCERTAIN_CODES:
        return POLICY_VALUES[policy]
    problems.append((f"unknown code {code!r} in column {name!r}",
                     "write 1.0 (positive), 0.0 (negative), -1.0 (uncertain) or leave it blank (not mentioned)"))
    return pd.NA


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_chexpert(path, root=root, classes=config.classes, uncertain=config.uncertain,
                         frontal_only=config.frontal_only)


SOURCE = SourceKind("chexpert", "the publisher's train.csv or valid.csv of CheXpert (image paths relative to "
                                "the folder above the CSV's folder, or to data.root)",
                    needs_folder=False, load=_load)
