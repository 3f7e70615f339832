"""Several sources in one table (``data.source: merged``, the sources in ``data.parts``).

Each part is loaded as on its own, then:

* its class or label names go through the part's ``rename`` (e.g. ChestX-ray14's
  ``Effusion`` -> CheXpert's ``Pleural Effusion``); two of a part's names made one are refused;
* the merged classes are ``data.classes``, or every part's in the order first met.
  Single-label parts (binary, multiclass) must use only merged class names. A
  merged multilabel label that a part does not grade is unknown
  (:data:`~tfmed.config.UNKNOWN_LABEL`) for that part's images, left out of the
  loss and of that label's metrics; a part's labels outside ``data.classes``
  are left out. Both are logged;
* each image without a site gets the part's name as its site (so
  ``split.test_sites: [mimic]`` holds a whole collection out as an external
  test, and every split reports each part's figures), and each patient id
  becomes ``NAME:ID``, since two collections' ids name different people;
* the parts' splits (e.g. a publisher's test split) are kept; the fix texts the parts record for
  validation and splits (``frame.attrs``) are kept, prefixed with the part's name, and parts without a
  split beside parts with one are named for ``split.method: predefined``;
* what a part left out is kept in ``table.excluded``, its problem naming the part (after
  ``skipped: `` for rows it skips by design, so that they are still counted as skipped).

Parts must list image files: in-memory sources (an embedded or MedMNIST set)
are refused.

Example:
    >>> from tfmed.config import DataConfig, DataPartConfig
    >>> config = DataConfig(source="merged", parts=[DataPartConfig(source="folder", path="shenzhen"),
    ...                                             DataPartConfig(source="folder", path="montgomery", name="mc")])
    >>> [part.part_name for part in config.parts]
    ['folder', 'mc']
    >>> table = load_merged(config, load_source)  # doctest: +SKIP
    >>> sorted(table.frame["site"].unique())      # doctest: +SKIP
    ['folder', 'mc']
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

from tfmed.config import UNKNOWN_LABEL, DataConfig, DataPartConfig
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable, remap_labels
from tfmed.progress import log

SKIPPED = "skipped: "  # how a source's problem for rows it leaves out by design begins (excluded_summary counts them)


def load_merged(config: DataConfig, load: Callable[[DataPartConfig], ImageTable]) -> ImageTable:
    """One table of the parts of ``config`` (``data.source: merged``), each read by ``load``.

    Raises:
        DataSourceError: a part is in memory, the parts mix single-label and multilabel tasks, a
            ``rename`` names a class the part does not have, or a single-label part has a class
            ``data.classes`` does not list.
    """
    parts = []
    for part in config.parts:
        table = load(part)
        name = part.part_name
        if table.images is not None:
            raise DataSourceError(f"data.parts {name}: {table.source} holds its images in memory; a merged table "
                                  "lists image files (write the images out, e.g. as a folder per class, first)")
        unknown = sorted(set(part.rename) - set(table.classes))
        if unknown:
            raise DataSourceError(f"data.parts {name}: rename names {', '.join(map(repr, unknown))}, which it does "
                                  f"not have; its classes are {', '.join(table.classes)}")
        names = [part.rename.get(c, c) for c in table.classes]
        _refuse_shared_names(name, table.classes, names)
        parts.append((name, table, names))
    multilabel = {table.task == "multilabel" for _, table, _ in parts}
    if len(multilabel) > 1:
        tasks = ", ".join(f"{name} {table.task}" for name, table, _ in parts)
        raise DataSourceError(f"data.parts mix single-label and multilabel data ({tasks}); merge parts of one kind")
    classes = list(config.classes) if config.classes else list(dict.fromkeys(c for _, _, names in parts
                                                                             for c in names))
    is_multilabel = multilabel.pop()
    frames = [(_multilabel_frame if is_multilabel else _single_label_frame)(name, table, names, classes)
              for name, table, names in parts]
    frame = pd.concat([_renamed_people(name, frame) for (name, _, _), frame in zip(parts, frames)],
                      ignore_index=True)
    excluded = [table.excluded.assign(problem=[_part_problem(name, problem)
                                               for problem in table.excluded["problem"].astype(str)])
                for name, table, _ in parts if len(table.excluded)]
    task = "multilabel" if is_multilabel else ("binary" if len(classes) == 2 else "multiclass")
    frame.attrs = _part_fixes(parts)
    return ImageTable(frame, classes, task, source="merged: " + ", ".join(name for name, _, _ in parts),
                      excluded=pd.concat(excluded, ignore_index=True) if excluded else pd.DataFrame())


def _part_problem(name: str, problem: str) -> str:
    """A part's excluded-row problem naming the part; a skip by design keeps ``skipped: `` first.

    Example:
        >>> _part_problem("stanford", "skipped: lateral view"), _part_problem("nih", "file not found")
        ('skipped: stanford: lateral view', 'nih: file not found')
    """
    reason = problem.removeprefix(SKIPPED)
    return f"{SKIPPED if reason != problem else ''}{name}: {reason}"


def _refuse_shared_names(name: str, classes: list[str], names: list[str]) -> None:
    """Refuse a part whose ``rename`` gives two of its classes one merged name (its labels cannot be one)."""
    for merged in dict.fromkeys(names):
        sources = [old for old, new in zip(classes, names) if new == merged]
        if len(sources) > 1:
            shown = " and ".join(map(repr, sources))
            raise DataSourceError(f"data.parts {name}: rename gives {shown} one name, {merged!r}; each merged "
                                  f"label comes from one label of a part. Rename only one of them to {merged!r} "
                                  "(the other keeps its own name, or another one)")


# Fix texts a source records on its table (frame.attrs) for the generic checks of validation and splits.
PART_FIXES = ("missing_fix", "patient_fix", "split_fix")


def _part_fixes(parts: list[tuple[str, ImageTable, list[str]]]) -> dict[str, str]:
    """The fix texts of the parts' tables, each prefixed with its part's name, and the fix for parts without a
    split of their own beside parts with one (``split.method: predefined``)."""
    fixes = {}
    for key in PART_FIXES:
        texts = [f"{name}: {table.frame.attrs[key]}" for name, table, _ in parts if key in table.frame.attrs]
        if texts:
            fixes[key] = "; ".join(texts)
    given = {name: table.frame["split"].notna().any() for name, table, _ in parts}
    unsplit, split = [n for n, has in given.items() if not has], [n for n, has in given.items() if has]
    if unsplit and split:
        one = len(unsplit) == 1
        fixes["missing_split_fix"] = (
            f"these are the images of data.parts {_and(unsplit)}, which {'has' if one else 'have'} no split of "
            f"{'its' if one else 'their'} own, while {_and(split)} {'has' if len(split) == 1 else 'have'} one: give "
            f"{_and(unsplit)} a split (a source whose files set one, e.g. a manifest with a split column), or use "
            "split.method: patient to split every part afresh by patient (split.test_sites holds a whole part "
            "out as the test)")
    return fixes


def _single_label_frame(name: str, table: ImageTable, names: list[str], classes: list[str]) -> pd.DataFrame:
    outside = [c for c in names if c not in classes]
    if outside:
        raise DataSourceError(f"data.parts {name}: class {outside[0]!r} is not among data.classes "
                              f"({', '.join(classes)}); add it, or rename it to one of them (rename: "
                              f"{{{table.classes[names.index(outside[0])]}: ...}})")
    return remap_labels(table.frame, [classes.index(c) for c in names])


def _multilabel_frame(name: str, table: ImageTable, names: list[str], classes: list[str]) -> pd.DataFrame:
    frame = table.frame.rename(columns={LABEL_PREFIX + old: LABEL_PREFIX + new
                                        for old, new in zip(table.classes, names)})
    left_out = [c for c in names if c not in classes]
    ungraded = [c for c in classes if c not in names]
    if left_out:
        log(f"{name}: its labels {', '.join(left_out)} are not among data.classes and are left out")
        frame = frame.drop(columns=[LABEL_PREFIX + c for c in left_out])
    if ungraded:
        log(f"{name}: it does not grade {', '.join(ungraded)}; unknown for its {len(frame)} images (left out of "
            "the loss and of those labels' metrics)")
        for label in ungraded:
            frame[LABEL_PREFIX + label] = UNKNOWN_LABEL
    return frame


def _renamed_people(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The part's name as the site of its images without one, and as the prefix of its patient ids."""
    frame = frame.copy()
    frame["site"] = frame["site"].astype("string").fillna(name)
    patients = frame["patient_id"].astype("string")
    frame["patient_id"] = (name + ":" + patients).where(patients.notna(), pd.NA).astype("string")
    return frame


def _and(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
