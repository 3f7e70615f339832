"""Patient-level train / val / test splits and k-fold indices.

All splits keep each patient's images together (scikit-learn's
``StratifiedGroupKFold`` with patients as groups) and keep the class mix of
each split close to the whole table's. Near-identical images (column
``near_duplicate_group``, see :mod:`tfmed.data.near_duplicates`) join their
patients into one group, so copies of a picture stay in one split and fold.
The test patients are chosen first, then validation patients from the rest,
the remaining patients train.
:func:`check_no_leakage` runs at the end of every split function.

Multilabel tables are stratified on a proxy label per row: its rarest
positive label (or "no finding" when it has none).

Example:
    >>> import pandas as pd
    >>> from tfmed.data.table import ImageTable
    >>> frame = pd.DataFrame({"image": [f"{i}.png" for i in range(40)], "label": [i % 2 for i in range(40)],
    ...                       "patient_id": [f"p{i // 2}" for i in range(40)]})
    >>> table = patient_split(ImageTable(frame, ["a", "b"], "binary"), test_fraction=0.2, val_fraction=0.1)
    >>> table.frame["split"].value_counts().to_dict()
    {'train': 28, 'test': 8, 'val': 4}
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from tfmed.config import MAX_SEED, UNKNOWN_LABEL, SplitConfig, set_fields
from tfmed.data.near_duplicates import GROUP_COLUMN
from tfmed.data.table import SPLITS, ImageTable
from tfmed.errors import TfmedError
from tfmed.progress import log

MAX_FOLDS_FOR_FRACTION = 20


class SplitError(TfmedError):
    """A split cannot be made from this table (e.g. rows without patient id)."""


class LeakageError(SplitError):
    """A patient has images in more than one split."""


def check_no_leakage(table: ImageTable) -> None:
    """Raise :class:`LeakageError` naming every patient found in two or more splits.

    Rows without a patient id or without a split are not checked.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> frame = pd.DataFrame({"image": ["a", "b"], "label": [0, 1], "patient_id": ["p1", "p1"],
        ...                       "split": ["train", "test"]})
        >>> check_no_leakage(ImageTable(frame, ["x", "y"], "binary"))
        Traceback (most recent call last):
        tfmed.data.splits.LeakageError: 1 patient(s) appear in more than one split: p1 (test, train). ...
    """
    frame = table.frame[["patient_id", "split"]].dropna()
    splits = frame.groupby("patient_id", sort=True)["split"].agg(lambda s: sorted(set(s)))
    leaked = splits[splits.map(len) > 1]
    if len(leaked):
        shown = "; ".join(f"{patient} ({', '.join(names)})" for patient, names in leaked.items())
        fix = table.frame.attrs.get("split_fix", "fix the split column")  # a source's own words, e.g. its list files
        raise LeakageError(f"{len(leaked)} patient(s) appear in more than one split: {shown}. "
                           f"Each patient's images must be in one split: {fix}, or use "
                           "split.method: patient to split by patient.")


def patient_split(table: ImageTable, test_fraction: float = 0.2, val_fraction: float = 0.1,
                  seed: int = 0) -> ImageTable:
    """Fill the ``split`` column by patient: test first, then val, rest train.

    Fractions are of all rows; both are stratified by class and grouped by
    patient, so achieved sizes are close to, not exactly, the fractions.

    Raises:
        SplitError: rows without patient id, fractions out of range, or too
            few patients for the asked fractions.

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> split = patient_split(load_pneumonia_mnist(), 0.2, 0.1, seed=0)
        >>> sorted(split.frame["split"].unique())
        ['test', 'train', 'val']
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("val_fraction", val_fraction)
    if test_fraction + val_fraction >= 1.0:
        raise SplitError(f"test_fraction + val_fraction is {test_fraction + val_fraction}; "
                         "it must leave rows for training (sum < 1)")
    _require_patients(table, np.ones(len(table), dtype=bool), "patient split")
    split = np.full(len(table), "train", dtype=object)
    pool = np.arange(len(table))
    test = _carve(table, pool, test_fraction, seed, f"test_fraction {test_fraction}")
    split[test] = "test"
    rest = np.setdiff1d(pool, test)
    if val_fraction > 0:
        val = _carve(table, rest, val_fraction / (1.0 - test_fraction), val_seed(seed), f"val_fraction {val_fraction}")
        split[val] = "val"
    result = _with_split(table, split)
    check_no_leakage(result)
    return result


def ensure_splits(table: ImageTable, config: SplitConfig) -> ImageTable:
    """Make sure every row has a split, as ``config.method`` asks.

    * "predefined": keep the table's split column; a missing test split is
      carved out of train (``test_fraction`` of the train rows), a missing
      val split likewise (``val_fraction`` of train; when test is carved
      too, both are fractions of the train rows before carving, as with
      "patient"), by patient and stratified; a fraction (above 0) set for a
      split the table has is refused.
      No split column at all: as "patient".
    * "patient": ignore any split column and call :func:`patient_split`.
    * "kfold": keep (or carve) the test split and mark the rest "train";
      folds come from :func:`kfold_indices`.

    Example:
        >>> from tfmed.config import SplitConfig
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> table = ensure_splits(load_pneumonia_mnist(), SplitConfig(method="predefined"))
        >>> sorted(table.frame["split"].unique())
        ['test', 'train', 'val']
    """
    config.check()  # choices and ranges live in tfmed.config
    if config.test_sites:
        return site_split(table, config)
    given = table.frame["split"]
    if config.method == "patient" or (config.method == "predefined" and given.isna().all()):
        result = patient_split(table, config.test_fraction, config.val_fraction, config.seed)
        _require_validation(result.frame["split"].to_numpy())
        return result
    split = given.astype("object").to_numpy(copy=True)
    unassigned = pd.isna(split)
    if unassigned.any() and not unassigned.all():
        rows = table.frame.loc[unassigned, "row"].tolist()
        fix = table.frame.attrs.get("missing_split_fix", "fill the split column for every row, leave it empty "
                                    "everywhere, or use split.method: patient")  # e.g. a merged table's parts
        raise SplitError(f"{int(unassigned.sum())} row(s) have no split while others do (rows "
                         f"{_short(rows)}): {fix}.")
    bad = sorted({str(s) for s in split[~unassigned] if s not in SPLITS})
    if bad:
        raise SplitError(f"split values {bad} are not {', '.join(SPLITS)}")
    if unassigned.all():
        split[:] = "train"
    _refuse_fractions_of_given_splits(split, config)
    if config.method == "kfold":
        if not (split == "test").any():
            pool = np.flatnonzero(split != "test")
            _require_patients(table, np.isin(np.arange(len(split)), pool), "k-fold test split")
            split[_carve(table, pool, config.test_fraction, config.seed,
                         f"split.test_fraction {config.test_fraction}")] = "test"
        split[split == "val"] = "train"
    else:
        val_share = config.val_fraction  # of the training patients, or of all when the test split is carved too
        carve_test, carve_val = not (split == "test").any(), not (split == "val").any()
        if carve_test and carve_val and config.test_fraction + config.val_fraction >= 1.0:
            total = config.test_fraction + config.val_fraction
            raise SplitError(f"split.test_fraction + split.val_fraction is {total:g}; both split the training rows "
                             "here, so the sum must stay below 1")
        if carve_test and config.test_fraction > 0:
            pool = np.flatnonzero(split == "train")
            _require_patients(table, split == "train", "carving a test split from train")
            split[_carve(table, pool, config.test_fraction, config.seed,
                         f"split.test_fraction {config.test_fraction}")] = "test"
            val_share = config.val_fraction / (1.0 - config.test_fraction)
        if carve_val and config.val_fraction > 0:
            pool = np.flatnonzero(split == "train")
            _require_patients(table, split == "train", "carving a val split from train")
            split[_carve(table, pool, val_share, val_seed(config.seed),
                         f"split.val_fraction {config.val_fraction}")] = "val"
        _require_validation(split)
    result = _with_split(table, split)
    check_no_leakage(result)
    return result


def _refuse_fractions_of_given_splits(split: np.ndarray, config: SplitConfig) -> None:
    """A fraction set to carve a split that the data source already gives would not be used: refused (0, carve
    none, agrees with what happens), also when the experiment file writes the default value."""
    given = [("test_fraction", "test")] + ([("val_fraction", "val")] if config.method == "predefined" else [])
    for name, kept in given:
        if (split == kept).any() and getattr(config, name) > 0 and name in set_fields(config):
            raise SplitError(f"split.{name} is {getattr(config, name)}, but the data source has its own {kept} "
                             f"split, which split.method {config.method} keeps; remove split.{name} (or use "
                             "split.method patient to split afresh)")


def site_split(table: ImageTable, config: SplitConfig) -> ImageTable:
    """The images of ``config.test_sites`` as the test split (an external test), the others train and, with
    method "patient", val carved from them by patient (``val_fraction`` of them).

    Raises:
        SplitError: a named site that no row has (the sites found are listed), no row left for
            training, or a patient with images on both sides (:func:`check_no_leakage`).

    Example:
        >>> from tfmed.config import SplitConfig
        >>> site_split(table, SplitConfig(method="kfold", test_sites=["montgomery"]))  # doctest: +SKIP
    """
    sites = table.frame["site"].astype("string")
    found = sorted(set(sites.dropna().tolist()))
    missing = [name for name in config.test_sites if name not in found]
    if missing:
        raise SplitError(f"split.test_sites names {', '.join(map(repr, missing))}, which no row has; the data's "
                         f"sites are {', '.join(map(repr, found)) or '(none: the source gives no site)'}")
    test = sites.isin(config.test_sites).fillna(False).to_numpy(dtype=bool)
    if test.all():
        raise SplitError(f"every row is of split.test_sites {config.test_sites}, so none is left for training; "
                         "name fewer sites")
    split = np.where(test, "test", "train").astype(object)
    if config.method == "patient":
        pool = np.flatnonzero(~test)
        _require_patients(table, ~test, "carving a val split by patient")
        split[_carve(table, pool, config.val_fraction, val_seed(config.seed),
                         f"split.val_fraction {config.val_fraction}")] = "val"
        _require_validation(split)
    result = _with_split(table, split)
    patients = result.frame["patient_id"]
    both = sorted(set(patients[test].dropna()) & set(patients[~test].dropna()), key=str)
    if both:
        raise LeakageError(f"{len(both)} patient(s) have images at a site of split.test_sites "
                           f"({', '.join(config.test_sites)}) and at another site: {_short(both)}. An external test "
                           "must share no patient with training: correct those rows' patient ids or sites, or leave "
                           "those patients out")
    check_no_leakage(result)
    return result


def check_split_classes(table: ImageTable, config: SplitConfig, hierarchy: dict | None = None) -> None:
    """Refuse a split a model cannot be trained or given thresholds on: a class (binary, multiclass) with
    images but none in training, a multilabel label with known positives (or negatives) but none in training,
    and outside k-fold a validation split without both classes (binary), without a label's positives and
    negatives (multilabel) or, for two coarse classes of a ``hierarchy`` (``evaluation.hierarchy``),
    without an image of each, since the thresholds are chosen on it.

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"image": list("abcd"), "label": [0, 1, 0, 0], "split": ["train"] * 2 + ["val"] * 2})
        >>> check_split_classes(ImageTable(frame, ["normal", "tb"], "binary"), SplitConfig())
        Traceback (most recent call last):
        tfmed.data.splits.SplitError: the val split holds no 'tb' image (2 'normal'), and thresholds are chosen \
on it; give it images of every class (val rows of each class, or split.method: patient to carve a stratified \
one), or use split.method: kfold
    """
    split = table.frame["split"].astype("string").fillna("")
    labels = table.labels()
    if table.task != "multilabel":
        for k, name in enumerate(table.classes):
            images = split[labels == k]
            if len(images) and not (images == "train").any():
                where = ", ".join(f"{n} in {s}" for s, n in images.value_counts().sort_index().items())
                twins = [c for c in table.classes if c != name and c.lower() == name.lower()]
                twin = f"; its name differs from class {twins[0]!r} only in case: spell them the same" if twins else ""
                raise SplitError(f"class {name!r} has no training image ({where}), so no model can learn it"
                                 f"{twin}; give the training split images of it (split.test_sites may hold them "
                                 "all), or leave the class out")
    else:
        for j, name in enumerate(table.classes):
            for value, kind in ((1, "positive"), (0, "negative")):
                images = split[labels[:, j] == value]
                if len(images) and not (images == "train").any():
                    where = ", ".join(f"{n} in {s}" for s, n in images.value_counts().sort_index().items())
                    raise SplitError(f"label {name!r} has no {kind} training image ({kind} images: {where}), so no "
                                     "model can learn it; give the training split some (split.method: patient "
                                     "carves splits with each label's mix), or leave the label out of data.classes")
    if config.method == "kfold":
        return
    val = (split == "val").to_numpy()
    if table.task == "multiclass":
        _check_coarse_val(table, labels[val], hierarchy, config)
        return
    columns = [(None, labels[val])] if table.task == "binary" else [
        (name, labels[val, j][labels[val, j] != UNKNOWN_LABEL]) for j, name in enumerate(table.classes)]
    for label, values in columns:
        kinds = dict(zip(table.classes, (0, 1))) if label is None else {"positive": 1, "negative": 0}
        lacking = [kind for kind, value in kinds.items() if not (values == value).any()]
        if lacking:
            held = ", ".join(f"{int((values == value).sum())} {kind!r}" for kind, value in kinds.items() if
                             (values == value).any()) or "no image"
            what = f"no {lacking[0]!r} image" if label is None else f"no {lacking[0]} image of label {label!r}"
            remedy = ("a larger split.val_fraction, or more patients of each class" if config.method == "patient"
                      else "val rows of each class, or split.method: patient to carve a stratified one")
            raise SplitError(f"the val split holds {what} ({held}), and thresholds are chosen on it; give it "
                             f"images of every class ({remedy}), or use split.method: kfold")


def _check_coarse_val(table: ImageTable, val_labels: np.ndarray, hierarchy: dict | None, config: SplitConfig) -> None:
    """Two coarse classes (``evaluation.hierarchy``) get thresholds chosen on validation: refuse a val split
    without an image of each."""
    if not hierarchy or len(hierarchy) != 2:
        return
    held = {coarse: int(np.isin(val_labels, [table.classes.index(f) for f in fine if f in table.classes]).sum())
            for coarse, fine in hierarchy.items()}
    lacking = [coarse for coarse, count in held.items() if not count]
    if lacking:
        remedy = ("a larger split.val_fraction, or more patients of each class" if config.method == "patient"
                  else "val rows of each class, or split.method: patient to carve a stratified one")
        raise SplitError(f"the val split holds no image of coarse class {lacking[0]!r} of evaluation.hierarchy "
                         f"({', '.join(f'{n} {c!r}' for c, n in held.items())}), and the coarse thresholds are "
                         f"chosen on it; give it images of every class ({remedy}), or use split.method: kfold")


def _require_validation(split: np.ndarray) -> None:
    """Outside k-fold, thresholds and early stopping are chosen on validation images: refuse a split
    without any."""
    if not (split == "val").any():
        raise SplitError("the data have no validation split, and thresholds (and early stopping) are chosen "
                         "on validation images; set split.val_fraction above 0, give the data a val split, "
                         "or use split.method kfold")


def kfold_indices(table: ImageTable, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold over the table's non-test rows.

    Returns ``folds`` pairs ``(train_positions, val_positions)`` of row
    positions into ``table``; rows whose split is "test" are in neither, so
    the test split never takes part in cross-validation. Patients are the
    groups: a patient's rows are always in the same fold.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> frame = pd.DataFrame({"image": list("abcdefgh"), "label": [0, 1] * 4,
        ...                       "patient_id": list("aabbccdd")})
        >>> [len(v) for _, v in kfold_indices(ImageTable(frame, ["x", "y"], "binary"), folds=2)]
        [4, 4]
    """
    if folds < 2:
        raise SplitError(f"folds is {folds}; k-fold needs at least 2")
    pool = np.flatnonzero((table.frame["split"] != "test").fillna(True).to_numpy(dtype=bool))
    _require_patients(table, np.isin(np.arange(len(table)), pool), "k-fold")
    groups = split_groups(table)[pool]
    if len(np.unique(groups)) < folds:
        raise SplitError(f"{len(np.unique(groups))} patient(s) outside the test split cannot make "
                         f"{folds} folds; lower split.folds")
    labels = stratify_labels(table)[pool]
    for label in np.unique(labels) if table.task != "multilabel" else ():
        patients = len(np.unique(groups[labels == label]))
        if patients < folds:
            raise SplitError(f"{folds} folds need every class in each fold, but class {table.classes[label]!r} has "
                             f"only {patients} patient(s) outside the test split; use {max(patients, 2)} folds or "
                             "fewer, or add data")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        made = [(pool[train], pool[val]) for train, val in splitter.split(pool, labels, groups)]
    if table.task == "multilabel":
        _check_label_folds(table, made, pool, seed)
    return made


def _check_label_folds(table: ImageTable, made, pool: np.ndarray, seed: int) -> None:
    """Refuse folds whose training part lacks the positives (or negatives) of a label the pool has."""
    values = np.asarray(table.labels())
    for j, name in enumerate(table.classes):
        present = {value for value in (0, 1) if (values[pool, j] == value).any()}
        for fold, (train, _) in enumerate(made, start=1):
            lacking = sorted(present - set(values[train, j].tolist()))
            if lacking:
                kind = "positive" if lacking[0] == 1 else "negative"
                raise SplitError(f"fold {fold} of {len(made)}: its training part has no {kind} image of label "
                                 f"{name!r} (the patients who have one are all in that fold); use fewer folds, "
                                 f"another split.seed than {seed}, or leave {name!r} out of data.classes")


def training_parts(table: ImageTable, config: SplitConfig) -> list[ImageTable]:
    """The tables a run fits its model on: the train split, or with k-fold each fold's training part
    (train + val less the fold; the refit on all of train + val holds every one of them).

    Example:
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"image": list("abcdefgh"), "label": [0, 1] * 4, "split": ["train"] * 8,
        ...                       "patient_id": list("abcdefgh")})
        >>> table = ImageTable(frame, ["x", "y"], "binary")
        >>> [len(part) for part in training_parts(table, SplitConfig(method="kfold", folds=4))]
        [6, 6, 6, 6]
    """
    if config.method != "kfold":
        return [table.split("train")]
    split = table.frame["split"]
    trainval = table.subset(np.concatenate([np.flatnonzero((split == name).fillna(False).to_numpy(dtype=bool))
                                            for name in ("train", "val")]))
    return [trainval.subset(fit) for fit, _ in kfold_indices(trainval, config.folds, config.seed)]


def split_groups(table: ImageTable) -> np.ndarray:
    """The group of each row that splits keep whole: its patient, with patients joined by near-identical images.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> frame = pd.DataFrame({"image": list("abcd"), "label": [0, 1, 0, 1], "patient_id": list("pqrs"),
        ...                       "near_duplicate_group": pd.array([0, None, 0, None], dtype="Int64")})
        >>> split_groups(ImageTable(frame, ["x", "y"], "binary")).tolist()
        [0, 1, 0, 2]
    """
    patients, _ = pd.factorize(table.frame["patient_id"].astype(str))
    if GROUP_COLUMN not in table.frame.columns:
        return patients
    twins = table.frame[GROUP_COLUMN]
    marked = twins.notna().to_numpy(dtype=bool)
    # a graph of patients and near-duplicate groups; its connected parts are the split groups
    nodes = patients.max(initial=-1) + 1
    first = patients[marked]
    second = nodes + twins[marked].to_numpy(dtype=np.int64)
    size = nodes + (int(second.max()) - nodes + 1 if len(second) else 0)
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(size, size))
    _, parts = connected_components(graph, directed=False)
    _, renumbered = np.unique(parts[patients], return_inverse=True)
    return renumbered


def stratify_labels(table: ImageTable) -> np.ndarray:
    """One class per row for stratification: the label, or for multilabel the rarest positive label.

    Multilabel rows without any positive label get the class ``L`` ("no finding").

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> frame = pd.DataFrame({"image": list("abc"), "label:x": [1, 1, 0], "label:y": [1, 0, 0]})
        >>> stratify_labels(ImageTable(frame, ["x", "y"], "multilabel")).tolist()
        [1, 0, 2]
    """
    y = table.labels()
    if table.task != "multilabel":
        return y
    counts = (y == 1).sum(axis=0)   # an unknown label (-1) is not a positive one
    order = np.argsort(counts, kind="stable")  # rarest label first
    proxy = np.full(len(y), y.shape[1], dtype=np.int64)
    for label in order[::-1]:  # rarest written last, so it wins
        proxy[y[:, label] == 1] = label
    return proxy


def val_seed(seed: int) -> int:
    """The seed validation is carved with, after the test split was carved with ``seed`` (within NumPy's range).

    Example:
        >>> val_seed(0), val_seed(2**32 - 1)
        (1, 0)
    """
    return (int(seed) + 1) % (MAX_SEED + 1)


def _carve(table: ImageTable, pool: np.ndarray, fraction: float, seed: int, setting: str) -> np.ndarray:
    """Positions (from ``pool``) of about ``fraction`` of the pool's rows, whole patients, stratified;
    ``setting`` names what the user set (e.g. "split.val_fraction 0.1"), for the messages."""
    if fraction <= 0 or len(pool) == 0:
        return np.array([], dtype=np.int64)
    groups = split_groups(table)[pool]
    labels = stratify_labels(table)[pool]
    n_groups = len(np.unique(groups))
    largest = int(np.unique(labels, return_counts=True)[1].max())
    # scikit-learn needs more rows than folds in at least one class
    n_splits, take = _folds_for(fraction, min(n_groups, largest))
    if n_splits is None:
        raise SplitError(f"{setting} cannot be met: it asks for {fraction:.0%} of {n_groups} patient(s), taken "
                         f"by patient with the classes' mix, which needs at least 2 patients and 2 images of one "
                         f"class (here {n_groups} patient(s), and at most {largest} image(s) of one class). Add "
                         "patients, or set it to 0 and give the split yourself (split.method: predefined)")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        folds = [val for _, val in splitter.split(pool, labels, groups)]
    chosen = np.concatenate(_folds_with_the_mix(folds, labels, groups, take))
    achieved = len(np.unique(groups[chosen])) / n_groups
    if not fraction / 2 <= achieved <= fraction * 2:
        log(f"warning: {setting} took {len(np.unique(groups[chosen]))} of the {n_groups} patients it is taken from "
            f"({achieved:.0%}, not {fraction:.0%}): too few patients to come closer by patient with the classes' mix")
    return np.sort(pool[chosen])


def _folds_with_the_mix(folds: list[np.ndarray], labels: np.ndarray, groups: np.ndarray,
                        take: int) -> list[np.ndarray]:
    """``take`` of the ``folds`` (positions into ``labels`` / ``groups``): the first ones, unless they miss
    a class that two or more patients have, as they can when there are more folds than such patients (a
    small fraction of a small set); then folds are added one by one, each the one bringing the classes'
    shares closest to the whole's, so the carved split has the classes' mix where whole patients allow.

    Example:
        >>> labels = np.array([0, 0, 0, 0, 1, 1]); groups = np.arange(6)
        >>> folds = [np.array([0]), np.array([1]), np.array([2, 4]), np.array([3, 5])]
        >>> [fold.tolist() for fold in _folds_with_the_mix(folds, labels, groups, 1)]
        [[2, 4]]
    """
    first = folds[:take]
    classes = np.unique(labels)
    patients = np.array([len(np.unique(groups[labels == c])) for c in classes])
    shared = classes[patients >= 2]  # a class of one patient stays out of the carved split unless chance puts it in
    if np.isin(shared, labels[np.concatenate(first)]).all():
        return first
    whole = np.array([(labels == c).mean() for c in classes])
    counts = np.array([[(labels[fold] == c).sum() for c in classes] for fold in folds], dtype=float)
    chosen, total = [], np.zeros(len(classes))
    for _ in range(take):
        left = [i for i in range(len(folds)) if i not in chosen]
        distance = [np.abs((total + counts[i]) / (total + counts[i]).sum() - whole).sum() for i in left]
        chosen.append(left[int(np.argmin(distance))])
        total += counts[chosen[-1]]
    return [folds[i] for i in sorted(chosen)]


def _folds_for(fraction: float, n_groups: int) -> tuple[int | None, int]:
    """The fewest folds n (2 up to 20, or 1 / fraction for a smaller fraction; at most ``n_groups``) and
    k folds with k/n closest to fraction.

    Example:
        >>> _folds_for(0.2, 100), _folds_for(0.01, 1000)
        ((5, 1), (100, 1))
    """
    best = (None, 0, np.inf)
    most = max(MAX_FOLDS_FOR_FRACTION, int(np.ceil(1.0 / fraction - 1e-9)))
    for n in range(2, min(most, n_groups) + 1):
        k = max(1, min(n - 1, int(round(fraction * n))))
        error = abs(k / n - fraction)
        if error < best[2] - 1e-9:
            best = (n, k, error)
    return best[0], best[1]


def _require_patients(table: ImageTable, mask: np.ndarray, purpose: str) -> None:
    patients = table.frame["patient_id"].astype("string").str.strip()
    missing = mask & (patients.isna() | (patients == "")).to_numpy(dtype=bool)
    if missing.any():
        rows = table.frame.loc[missing, "row"].tolist()
        fix = table.frame.attrs.get("patient_fix", "fill the patient_id column (a manifest), use a source that "
                                    "records patients, or give each image its own id if every image is a "
                                    "different patient")
        raise SplitError(f"{purpose} needs a patient id on every row; {int(missing.sum())} row(s) have "
                         f"none (rows {_short(rows)}) in {table.source or 'the table'}. {fix[0].upper()}{fix[1:]}.")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise SplitError(f"{name} is {value}; it must be in [0, 1)")


def _short(rows: list, limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _with_split(table: ImageTable, split: np.ndarray) -> ImageTable:
    frame = table.frame.copy()
    frame["split"] = pd.Series(split, dtype="string")
    return ImageTable(frame, list(table.classes), table.task, table.images, table.source,
                      excluded=table.excluded)
