"""Checking an :class:`~tfmed.data.table.ImageTable` before anything trains on it.

:func:`validate_table` collects every problem at once (missing, empty and
corrupt files, unknown or empty labels, missing patient ids, duplicate rows,
images with more channels or another bit depth than the pipeline handles, and
the problems a source met while parsing, e.g. a manifest's unknown label) into
a :class:`ValidationReport`. :func:`apply_validation` then either stops with
the whole report (:class:`DataValidationError`) or drops the bad rows and
records them in ``table.excluded`` so the run can list them: nothing is
dropped silently.

Sources record parsing problems per row in the column ``source_problems``
(a tuple of ``(problem, fix)`` pairs, empty when the row is fine) and files
they skipped (e.g. ``notes.txt`` in a class folder) in ``table.excluded``
(columns image, row, problem, fix); both end up in the report.

What the native decoders print while the files are checked (e.g.
``libpng error: IDAT: incorrect data check``), and pydicom's Python warnings,
never reach the terminal: they go into the reason of the file that failed, or
into a warning for a file that decoded despite them.

Example:
    >>> import pandas as pd
    >>> from tfmed.data.table import ImageTable
    >>> table = ImageTable(pd.DataFrame({"image": ["/nonexistent/a.png"], "label": [0]}),
    ...                    classes=["normal", "pneumonia"], task="binary")
    >>> report = validate_table(table)
    >>> report.ok, report.problems[0].problem
    (False, 'file not found')
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tfmed.config import PER_IMAGE_INTENSITIES, UNKNOWN_LABEL, ViewsConfig
from tfmed.data.boxes import BOXES_COLUMN, parse_labelled_boxes
from tfmed.data.decode import (DEFAULT_MAX_PIXELS, ImageInfo, ImageReadError, decoder_messages, file_kinds,
                               python_warnings_caught, read_image_and_info)
from tfmed.data.table import ImageTable
from tfmed.data.volume_inputs import CENTER_MM, CENTER_VOXEL, check_volume_rows, is_volume_path
from tfmed.data.volumes import VOLUME_FILES
from tfmed.errors import TfmedError
from tfmed.progress import native_stderr_captured

SOURCE_PROBLEMS = "source_problems"
MISSING = "file not found"
# A source may record fix texts in its frame's attrs, said instead of the generic ones: "missing_fix" (a missing
# image: where the source looks for it), "patient_fix" (a row without patient id), and for the splits
# (tfmed.data.splits) "split_fix" (a patient in two splits) and "missing_split_fix" (rows without a split).
# How a run leaves bad rows out; commands that read rows otherwise say their own way (apply_validation's remedy).
RUN_REMEDY = "set data.exclude_bad_rows: true to leave them out (they are then listed in the run's output)"


class DataValidationError(TfmedError):
    """The data failed validation; the message is the full report.

    Attributes:
        report: the :class:`ValidationReport` (None for errors raised before one exists).
    """

    def __init__(self, message: str, report: "ValidationReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class Problem:
    """One thing wrong with one row (``row`` None: the whole table).

    Attributes:
        row: the row's number in its source (CSV line, file index).
        image: the image reference of the row.
        problem: what is wrong.
        fix: what to do about it.
        position: the row's position in the table (used to exclude it).

    Example:
        >>> Problem(3, "a.png", "file not found", "fix the path").row
        3
    """

    row: int | None
    image: str
    problem: str
    fix: str
    position: int | None = field(default=None, repr=False, compare=False)


@dataclass
class ValidationReport:
    """All problems (and warnings) found in one table.

    Attributes:
        problems: rows that cannot be used as they are.
        warnings: things skipped or noted that do not stop the run
            (e.g. non-image files found in a class folder).
        checked: number of rows checked.
        source: description of the data source.

    Example:
        >>> report = ValidationReport([Problem(2, "a.png", "file not found", "fix the path")],
        ...                           checked=5, source="demo.csv")
        >>> report.ok
        False
        >>> print(report.format().splitlines()[1])
          row 2: a.png: file not found. Fix: fix the path
    """

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    checked: int = 0
    source: str = ""
    bit_depths: Counter = field(default_factory=Counter)  # decoded files by bit depth (float files left out)

    @property
    def ok(self) -> bool:
        """True when there are no problems (warnings are allowed)."""
        return not self.problems

    @property
    def bad_positions(self) -> list[int]:
        """Sorted table positions of the rows with problems."""
        return sorted({p.position for p in self.problems if p.position is not None})

    def format(self, remedy: str = RUN_REMEDY) -> str:
        """Readable text listing every problem and warning with its fix; ``remedy`` closes the list of
        problems, saying how the command that read the rows can leave them out."""
        where = f" in {self.source}" if self.source else ""
        in_rows = [p for p in self.problems if p.position is not None]
        whole = len(self.problems) - len(in_rows)
        if self.problems:
            rows = {p.row for p in in_rows}
            places = [f"{len(rows)} row(s)"] * bool(in_rows) + ["the whole table"] * bool(whole)
            head = (f"Data validation found {len(self.problems)} problem(s) in {' and '.join(places)}"
                    f"{where} ({self.checked} rows checked):")
        else:
            head = f"Data validation passed{where} ({self.checked} rows checked)."
        lines = [head] + _collapsed(self.problems, SHOWN_PER_PROBLEM, "problem")
        if self.warnings:
            lines.append(self.warnings_text())
        if in_rows:
            lines.append(f"Fix the rows above, or {remedy}"
                         + (" (a problem of the whole table cannot be left out that way)." if whole else "."))
        elif whole:
            lines.append("Fix the problems above: they concern the whole table, so no row can be left out instead.")
        return "\n".join(lines)

    def warnings_text(self) -> str:
        """The warnings alone (rows kept but worth a look, rows a source skipped), "" when there are none.

        Runs and evaluations log this text, so that what validation noticed is seen there too.

        Example:
            >>> report = ValidationReport(warnings=[Problem(3, "a.png", "the decoder warned: bad CRC", "re-save it")])
            >>> print(report.warnings_text())
            1 warning(s):
              row 3: a.png: the decoder warned: bad CRC. Fix: re-save it
        """
        if not self.warnings:
            return ""
        return "\n".join([f"{len(self.warnings)} warning(s):"]
                         + _collapsed(self.warnings, SHOWN_PER_WARNING, "warning"))

    def to_frame(self) -> pd.DataFrame:
        """Problems and warnings as a DataFrame (columns row, image, problem, fix, severity)."""
        records = [dict(row=p.row, image=p.image, problem=p.problem, fix=p.fix, severity=severity)
                   for severity, items in (("error", self.problems), ("warning", self.warnings))
                   for p in items]
        return pd.DataFrame(records, columns=["row", "image", "problem", "fix", "severity"])


# Warnings of one kind (the same problem and fix, e.g. 30,000 skipped lateral views) shown before the rest
# are counted; every one of them stays in to_frame() and in the run's excluded rows.
TRACED_BATCH = 256  # files decoded in parallel under one capture of what decoders print (see _check_files)
SHOWN_PER_WARNING = 10
SHOWN_PER_PROBLEM = 20   # every problem stays in the report's frame (to_frame) and in excluded_rows.csv


def _collapsed(items: list[Problem], shown: int, what: str) -> list[str]:
    """One line per item, but at most ``shown`` of each kind, then a count of the rest with their rows."""
    lines, rest = [], {}
    seen = Counter()
    for item in items:
        kind = (item.problem, item.fix)
        seen[kind] += 1
        if seen[kind] <= shown:
            lines.append(_line(item))
        elif item.row is not None:
            rest.setdefault(kind, []).append(item.row)
    for (problem, _), count in seen.items():
        if count > shown:
            rows = rest.get((problem, _), [])
            where = f" (rows {', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''})" if rows else ""
            lines.append(f"  ... and {count - shown} more row(s) with the {what}: {problem}{where}")
    return lines


def _line(problem: Problem) -> str:
    where = f"row {problem.row}" if problem.row is not None else "table"
    return f"  {where}: {problem.image}: {problem.problem}. Fix: {problem.fix}"


def validate_table(table: ImageTable, *, need_patient_ids: bool = False, max_channels: int = 4,
                   allowed_bit_depths: tuple[int, ...] = (8, 16), check_images: bool = True,
                   workers: int = 4, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   views: ViewsConfig | None = None, need_two_classes: bool = False,
                   intensity: str | None = None) -> ValidationReport:
    """Check every row of ``table`` and return a report of all problems found.

    Files are decoded in a thread pool (``workers`` threads) when
    ``check_images``; otherwise only their existence is checked. Images of
    more than ``max_pixels`` pixels (None: no limit) are refused unread. In-memory
    tables are checked once, vectorised (shape, dtype, index and label range).
    With ``views`` enabled the rows are volumes: each is read once and its
    lesion centre checked (:func:`tfmed.data.volume_inputs.check_volume_rows`).
    With the experiment's ``intensity`` given, files of several bit depths under
    an intensity that scales all images alike (not per image) are warned of.

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> validate_table(load_pneumonia_mnist()).ok
        True
    """
    frame = table.frame
    report = ValidationReport(checked=len(frame), source=table.source)
    images = frame["image"].astype("string").fillna("(no image)").tolist()
    rows = [None if pd.isna(r) else int(r) for r in frame["row"].tolist()]

    def add(position: int, problem: str, fix: str) -> None:
        report.problems.append(Problem(rows[position], images[position], problem, fix, position))

    def warn(position: int | None, problem: str, fix: str) -> None:
        if position is None:  # about the whole table
            report.warnings.append(Problem(None, table.source or "(table)", problem, fix))
        else:
            report.warnings.append(Problem(rows[position], images[position], problem, fix))

    source_flagged = np.zeros(len(frame), dtype=bool)
    if SOURCE_PROBLEMS in frame.columns:
        for position, items in enumerate(frame[SOURCE_PROBLEMS].tolist()):
            for problem, fix in (items or ()):
                add(position, problem, fix)
                source_flagged[position] = True
    _check_labels(table, source_flagged, add)
    if need_patient_ids:
        patients = frame["patient_id"].astype("string").str.strip()
        missing = (patients.isna() | (patients == "")).to_numpy(dtype=bool) & ~source_flagged
        for position in np.flatnonzero(missing):  # a row the source flagged is reported already
            add(int(position), "no patient id",
                frame.attrs.get("patient_fix", "fill the patient_id column") + " (patient-level splits need "
                "it to keep each patient's images in one split)")
    if views is not None and views.enabled:
        problems, notes = check_volume_rows(table, views, workers=min(workers, 2))
        for position, problem, fix in problems:
            add(position, problem, fix)
        for position, note, fix in notes:
            warn(position, note, fix)
        given = [name for name in CENTER_MM + CENTER_VOXEL if name in frame.columns and frame[name].notna().any()]
        if views.center == "volume" and given:
            warn(None, f"views.center is 'volume', so the centre columns {', '.join(given)} are not used",
                 "set views.center: lesion to centre the views on them")
    elif table.images is None:
        read = _check_files(frame, add, warn, max_channels, allowed_bit_depths, check_images, workers, max_pixels,
                            source_flagged)
        report.bit_depths = Counter(info.bit_depth for info in read.values() if not info.float_values)
        _check_mixed_depths(report.bit_depths, intensity, warn)
        _check_window_units(read, intensity, warn)
    else:
        _check_arrays(table, report, add, max_channels, allowed_bit_depths)
    if not table.excluded.empty:
        for record in table.excluded.to_dict("records"):
            row = record.get("row")
            report.warnings.append(Problem(None if pd.isna(row) else int(row), str(record.get("image", "")),
                                           str(record.get("problem", "excluded")),
                                           str(record.get("fix", ""))))
    if need_two_classes:
        _check_two_classes(table, report)
    report.problems.sort(key=lambda p: (p.position if p.position is not None else -1))
    return report


def _check_two_classes(table: ImageTable, report: ValidationReport) -> None:
    """A whole-table problem when the usable rows hold fewer than two classes, or (multilabel) a label
    without a known positive or negative image: nothing to classify."""
    usable = np.ones(len(table.frame), dtype=bool)
    usable[report.bad_positions] = False
    if not usable.any():   # every row has its own problem, listed already
        return
    if table.task == "multilabel":
        for name, column in zip(table.classes, table.label_columns):
            values = pd.to_numeric(table.frame[column], errors="coerce")[usable]
            counts = {kind: int((values == value).sum()) for kind, value in (("positive", 1), ("negative", 0))}
            lacking = [kind for kind, count in counts.items() if count == 0]
            if lacking:
                unknown = int((values == UNKNOWN_LABEL).sum())
                report.problems.append(Problem(
                    None, table.source or "(table)",
                    f"label {name!r} has no {lacking[0]} image among the usable ones ({counts['positive']} "
                    f"positive, {counts['negative']} negative" + (f", {unknown} unknown" if unknown else "") + ")",
                    f"a classifier needs both for each label: leave {name!r} out of the labels read (a manifest's "
                    f"data.label_columns, other sources' data.classes), or add {lacking[0]} images of it"))
        return
    counts = pd.to_numeric(table.frame["label"], errors="coerce")[usable].dropna().astype(int).value_counts()
    shown = _class_counts(counts, table.classes)
    if len(counts) < 2:
        report.problems.append(Problem(None, table.source or "(table)",
                                       f"the usable images hold fewer than two classes ({shown})",
                                       "a classifier needs images of at least two classes: add the missing "
                                       "class's images, or fix the rows listed above"))
        return
    empty = [name for i, name in enumerate(table.classes) if not counts.get(i, 0)]
    if len(empty) == 1:
        report.problems.append(Problem(None, table.source or "(table)",
                                       f"class {empty[0]!r} has no image among the usable ones ({shown})",
                                       _empty_class_fix(empty[0], table.classes)))
    elif empty:  # one problem, not one per class (e.g. 100 classes up to a stray label 102)
        more = len(empty) - SHOWN_PER_PROBLEM
        named = ", ".join(map(repr, empty[:SHOWN_PER_PROBLEM])) + (f" and {more} more" if more > 0 else "")
        report.problems.append(Problem(None, table.source or "(table)",
                                       f"{len(empty)} classes have no image among the usable ones: {named} ({shown})",
                                       "a model cannot learn a class without images: add their images, remove "
                                       "their empty class folders, or leave them out of data.classes (a label far "
                                       "past the others may be a typo: correct it)"))


def _class_counts(counts: pd.Series, classes: list[str]) -> str:
    """Images per class, e.g. "4 of 'a', 0 of 'b'"; of more than 20 classes, those without images counted together.

    Example:
        >>> _class_counts(pd.Series({0: 4, 1: 2}), ["a", "b", "c"])
        "4 of 'a', 2 of 'b', 0 of 'c'"
        >>> _class_counts(pd.Series({0: 4, 25: 1}), [str(i) for i in range(26)])
        "4 of '0', 1 of '25', 0 of each of the other 24 classes"
    """
    if len(classes) <= SHOWN_PER_PROBLEM:
        return ", ".join(f"{int(counts.get(i, 0))} of {name!r}" for i, name in enumerate(classes))
    held = [f"{int(counts[i])} of {name!r}" for i, name in enumerate(classes) if counts.get(i, 0)]
    return ", ".join(held + [f"0 of each of the other {len(classes) - len(held)} classes"])


def _empty_class_fix(name: str, classes: list[str]) -> str:
    """How to mend a class without images; numbered classes 1..K without a 0 look counted from 1."""
    if name == "0" and classes == [str(i) for i in range(len(classes))]:
        return (f"the labels look counted from 1 (1..{len(classes) - 1}), and labels are read as indices "
                f"from 0: write them 0..{len(classes) - 2}, or name the classes in data.classes")
    return ("a model cannot learn a class without images: add its images, remove its empty class folder, or "
            "leave it out of data.classes")


def _check_labels(table: ImageTable, source_flagged: np.ndarray, add) -> None:
    frame = table.frame
    for column in table.label_columns:
        if column not in frame.columns:
            for position in range(len(frame)):
                if not source_flagged[position]:
                    add(position, f"no label column {column!r}", "add the label column to the source")
            return
        values = pd.to_numeric(frame[column], errors="coerce")
        missing = values.isna().to_numpy(dtype=bool)
        filled = values.fillna(0).to_numpy(dtype=np.float64)
        if table.task == "multilabel":
            bad = ~missing & ~np.isin(filled, (0.0, 1.0, float(UNKNOWN_LABEL)))
            allowed = f"0 or 1 ({UNKNOWN_LABEL} when unknown)"
        else:
            bad = ~missing & ((filled != np.round(filled)) | (filled < 0) | (filled >= len(table.classes)))
            allowed = f"an index 0..{len(table.classes) - 1} into classes {table.classes}"
        raw = frame[column].tolist()
        for position in np.flatnonzero(missing & ~source_flagged):
            add(int(position), f"empty label in column {column!r}", f"fill it with {allowed}")
        for position in np.flatnonzero(bad & ~source_flagged):
            add(int(position), f"label {raw[position]!r} in column {column!r} is not {allowed}",
                "correct the label, or list the class in data.classes")


def _check_mixed_depths(depths: Counter, intensity: str | None, warn) -> None:
    """Warn when 8- and 16-bit files meet under an intensity fitted to all images alike."""
    if intensity is None or intensity in PER_IMAGE_INTENSITIES or len(depths) < 2:
        return
    mix = " and ".join(f"{count} {depth}-bit" for depth, count in sorted(depths.items()))
    warn(None, f"the files mix bit depths ({mix}) under preprocess.intensity {intensity!r}, which scales every image "
         "alike: the lower-depth images come out nearly black beside the others",
         "use intensity minmax (each image scaled by its own range), or convert the files to one bit depth")


def _check_window_units(read: dict, intensity: str | None, warn) -> None:
    """Warn when a CT window (which reads values as Hounsfield units) meets files whose values are not (a float
    TIFF, as tfmed writes a TFDS tensor of Hounsfield units, may hold them)."""
    if intensity != "window":
        return
    others = [key for key, info in read.items() if not info.hounsfield_units and not info.float_values]
    if others:
        kinds = " and ".join(f"{count} {kind.upper()}" for kind, count in
                             sorted(Counter(read[key].kind for key in others).items()))
        warn(None, f"preprocess.intensity is 'window', which reads values as Hounsfield units, but {kinds} "
             f"file(s) hold other values (e.g. {others[0]}): a CT window turns such images nearly uniform",
             "use intensity minmax for exported or non-CT images, or point the rows at the CT's DICOM files")


def _other_site(frame: pd.DataFrame, earlier: int, position: int) -> str:
    """`` of site 'NAME'`` when the earlier row is of another site than this one (a merged table's parts are
    sites, and each part numbers its own rows), else ``""``."""
    if "site" not in frame.columns:
        return ""
    sites = frame["site"].iloc[[earlier, position]].astype("string").tolist()
    return f" of site {sites[0]!r}" if not pd.isna(sites[0]) and sites[0] != sites[1] else ""


def _check_files(frame: pd.DataFrame, add, warn, max_channels: int, allowed_bit_depths, check_images: bool,
                 workers: int, max_pixels: int | None, source_flagged: np.ndarray) -> dict:
    """Check each file; return what each readable file is (path -> :class:`ImageInfo`). A row without an image
    path that its source reported (e.g. an empty image id) is not reported again."""
    paths = frame["image"].tolist()
    keys = [None if pd.isna(p) or str(p).strip() == "" else os.path.normpath(os.path.abspath(str(p)))
            for p in paths]
    first_seen: dict[str, int] = {}
    for position, key in enumerate(keys):
        if key is None:
            if not source_flagged[position]:
                add(position, "no image path", "fill the path column")
        elif key in first_seen and not is_volume_path(key):  # a volume's rows are each told what it is
            earlier = frame["row"].iloc[first_seen[key]]
            site = _other_site(frame, first_seen[key], position)
            add(position, f"duplicate: the same image as row {earlier}{site}",
                "remove the repeated row (a duplicate counts the image twice and can leak it "
                "across splits)")
        else:
            first_seen.setdefault(key, position)
    unique = list(first_seen)

    def check(path: str, capture_messages: bool = False):
        if not check_images:
            if not os.path.exists(path):
                return ImageReadError(path, MISSING, "check the path or remove the row")
            return None
        if is_volume_path(path) and os.path.exists(path) and not _folder_without_dicom(path):
            return ImageReadError(path, f"a volume (a DICOM series folder or {VOLUME_FILES}), not a 2-D image",
                                  "volumes are classified through views cut from them: check and run them "
                                  "through an experiment YAML with a views: section (tfmed validate "
                                  "EXPERIMENT.yaml), or point the row at a 2-D image")
        try:
            return read_image_and_info(path, max_pixels, capture_messages=capture_messages)[1]
        except ImageReadError as error:
            return error

    # File descriptor 2 is one per process, so each parallel pass over a batch of files catches what the
    # decoders print as a whole; the files of a batch that printed anything are decoded again one at a time,
    # each capturing its own output, until every line is traced to its file (a warning costs one batch again,
    # not every file). Python warnings (e.g. pydicom's) are caught alike.
    outcomes: dict = {}
    untraced: Counter = Counter()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(unique), TRACED_BATCH):
            batch = unique[start:start + TRACED_BATCH]
            with native_stderr_captured() as printed, python_warnings_caught() as warned:
                outcomes.update(zip(batch, pool.map(check, batch)))
            said = Counter(decoder_messages(printed.text) + decoder_messages(warned.text))
            for path in batch:
                if not said:
                    break
                outcome = check(path, capture_messages=True)
                if outcome is not None and outcome.decoder_output:
                    outcomes[path] = outcome
                    said -= Counter(decoder_messages(outcome.decoder_output))
            untraced += said
    if untraced:  # e.g. a library's Python warning, which is shown once per process
        warn(None, "printed while the images were decoded, not traced to one file: "
             + " | ".join(untraced.elements()), "none for the rows; it is listed so that no message is lost")
    missing_fix = frame.attrs.get("missing_fix")  # where the source looks for its images, in its own words
    for key, outcome in outcomes.items():
        if missing_fix and isinstance(outcome, ImageReadError) and outcome.reason == MISSING:
            outcomes[key] = ImageReadError(key, MISSING, missing_fix)
    for position, key in enumerate(keys):
        outcome = outcomes.get(key) if key is not None else None
        if key is None or first_seen.get(key) != position or outcome is None:
            continue
        if isinstance(outcome, ImageReadError):
            add(position, outcome.reason, outcome.fix)
            continue
        if outcome.decoder_output:
            warn(position, f"the decoder warned: {' | '.join(outcome.decoder_output.splitlines())}",
                 "the pixels were read; " + ("re-export the DICOM file to mend what it warns of"
                                             if outcome.kind == "dicom" else
                                             "re-save the image (e.g. with OpenCV or Pillow) to drop the faulty data"))
        for note in outcome.notes:
            warn(position, note, "check the values (tfmed inspect FILE), or re-export the image with its rescale tags")
        if outcome.channels > max_channels:
            add(position, f"{outcome.channels} channels; at most {max_channels} are supported",
                "convert the image to grey or RGB")
        if outcome.bit_depth not in allowed_bit_depths and not (outcome.float_values and outcome.kind == "tiff"):
            add(position, f"{outcome.bit_depth}-bit {outcome.kind.upper()}; supported bit depths are "
                f"{', '.join(map(str, allowed_bit_depths))}",
                "convert the image to 8- or 16-bit integers")
        for box in _boxes_outside(frame[BOXES_COLUMN].iloc[position] if BOXES_COLUMN in frame.columns else None,
                                  outcome.width, outcome.height):
            add(position, f"box {box} lies outside the {outcome.width} x {outcome.height} image",
                "boxes are x,y,width,height in pixels of the image as displayed (EXIF orientation applied, x from "
                "its left column, y from its top row): correct or remove the box")
    # Duplicates of a bad file repeat its problem so that excluding them leaves nothing behind.
    for position, key in enumerate(keys):
        if key is not None and first_seen[key] != position and isinstance(outcomes.get(key), ImageReadError):
            add(position, outcomes[key].reason, outcomes[key].fix)
    return {key: outcome for key, outcome in outcomes.items() if isinstance(outcome, ImageInfo)}


def _folder_without_dicom(path: str) -> bool:
    """A folder holding no DICOM file: not a series, a path mistaken for an image's (read_image_and_info says what
    it holds)."""
    return os.path.isdir(path) and not file_kinds(path)["dicom"]


def _boxes_outside(text, width: int, height: int) -> list[str]:
    """The boxes of ``text`` (a row's ``boxes`` cell) that hold no pixel of a ``width`` x ``height`` image, as
    written; a malformed cell is the source's row problem, reported already.

    Example:
        >>> _boxes_outside("1,2,3,4;200,300,10,10", width=64, height=32)
        ['200,300,10,10']
    """
    try:
        boxes = parse_labelled_boxes(text)
    except ValueError:
        return []
    return [",".join(f"{v:g}" for v in box) for _, box in boxes
            if box[0] >= width or box[1] >= height or box[0] + box[2] <= 0 or box[1] + box[3] <= 0]


def _check_arrays(table: ImageTable, report: ValidationReport, add, max_channels: int,
                  allowed_bit_depths) -> None:
    images = np.asarray(table.images)
    frame = table.frame

    def table_problem(problem: str, fix: str) -> None:
        report.problems.append(Problem(None, table.source or "(in-memory images)", problem, fix))

    if images.ndim not in (3, 4):
        table_problem(f"image array has shape {images.shape}; expected (N, H, W) or (N, H, W, C)",
                      "store one 2-D (or 2-D x channels) image per entry")
    elif images.ndim == 4 and images.shape[-1] > max_channels:
        table_problem(f"images have {images.shape[-1]} channels; at most {max_channels} are supported",
                      "convert the images to grey or RGB")
    if images.dtype.kind not in "uif":
        table_problem(f"image array dtype {images.dtype} is not numeric", "store the images as integers")
    elif images.dtype.itemsize * 8 not in allowed_bit_depths and images.dtype.kind in "ui":
        table_problem(f"{images.dtype.itemsize * 8}-bit images; supported bit depths are "
                      f"{', '.join(map(str, allowed_bit_depths))}", "convert the images to uint8 or uint16")
    if "array_index" not in frame.columns:
        table_problem("no array_index column for in-memory images", "the source must index its images")
        return
    index = pd.to_numeric(frame["array_index"], errors="coerce")
    missing = index.isna().to_numpy(dtype=bool)
    values = index.fillna(-1).to_numpy(dtype=np.float64)
    bad = ~missing & ((values < 0) | (values >= len(images)) | (values != np.round(values)))
    for position in np.flatnonzero(missing):
        add(int(position), "no array_index", "the source must give every row an image index")
    for position in np.flatnonzero(bad):
        add(int(position), f"array_index {values[position]:g} outside 0..{len(images) - 1}",
            "the source must index an existing image")
    duplicated = frame["array_index"].duplicated(keep="first").to_numpy(dtype=bool) & ~missing
    if duplicated.any():
        first = {}
        for position, value in enumerate(frame["array_index"].tolist()):
            if missing[position]:
                continue
            if value in first and duplicated[position]:
                add(position, f"duplicate: the same image as row {frame['row'].iloc[first[value]]}",
                    "remove the repeated row")
            first.setdefault(value, position)


def excluded_summary(excluded: pd.DataFrame) -> str:
    """What ``table.excluded`` left out, in a few words for the log: the bad rows and files counted, the rows a
    source skips by design (``skipped: ...``, such as lateral views under ``data.frontal_only``) counted per
    reason, and each bulk skip of a source (many rows at once, no row number) named with its own count.

    Example:
        >>> excluded_summary(pd.DataFrame({"row": [3, 4, 5, None], "problem": ["file not found",
        ...     "skipped: lateral view", "skipped: lateral view", "skipped: 22 candidates of scans in subset3"]}))
        '1 bad row or file; 2 rows skipped: lateral view; 22 candidates of scans in subset3'
    """
    bulk = excluded["row"].isna() if "row" in excluded else pd.Series(False, index=excluded.index)
    problems = excluded["problem"].astype(str)
    skipped = problems.str.startswith("skipped: ") & ~bulk
    bad = int((~bulk & ~skipped).sum())
    parts = [f"{bad} bad row{'s' if bad != 1 else ''} or file{'s' if bad != 1 else ''}"] if bad else []
    for reason, count in problems[skipped].value_counts(sort=False).items():
        parts.append(f"{count} row{'s' if count != 1 else ''} {reason}")
    parts += [problem.removeprefix("skipped: ") for problem in problems[bulk]]
    return "; ".join(parts)


def apply_validation(table: ImageTable, report: ValidationReport, exclude_bad_rows: bool,
                     remedy: str = RUN_REMEDY) -> ImageTable:
    """Stop on problems, or drop the bad rows and list them in ``table.excluded``. ``remedy`` ends the
    error's report: how the calling command leaves bad rows out (a run: ``data.exclude_bad_rows``).

    Raises:
        DataValidationError: the report has problems and ``exclude_bad_rows``
            is False, or a problem concerns the whole table (it cannot be
            excluded row by row). The message is the full report.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> table = ImageTable(pd.DataFrame({"image": ["/nonexistent/a.png"], "label": [0]}),
        ...                    classes=["a", "b"], task="binary")
        >>> kept = apply_validation(table, validate_table(table), exclude_bad_rows=True)
        >>> len(kept), kept.excluded["problem"].tolist()
        (0, ['file not found'])
    """
    if report.problems and not exclude_bad_rows:
        raise DataValidationError(report.format(remedy), report)
    whole_table = [p for p in report.problems if p.position is None]
    if whole_table:
        raise DataValidationError("These problems concern the whole table and cannot be excluded "
                                  "row by row:\n" + report.format(remedy), report)
    bad = report.bad_positions
    keep = np.ones(len(table.frame), dtype=bool)
    keep[bad] = False
    frame = table.frame
    excluded = frame.iloc[bad].copy()
    by_position: dict[int, list[Problem]] = {}
    for p in report.problems:
        by_position.setdefault(p.position, []).append(p)
    excluded["problem"] = ["; ".join(p.problem for p in by_position[i]) for i in bad]
    excluded["fix"] = ["; ".join(p.fix for p in by_position[i]) for i in bad]
    excluded = excluded.drop(columns=[SOURCE_PROBLEMS], errors="ignore")
    parts = [f for f in (table.excluded, excluded) if not f.empty]
    all_excluded = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    kept = frame.loc[keep].drop(columns=[SOURCE_PROBLEMS], errors="ignore").reset_index(drop=True)
    for column in [c for c in ("label",) + tuple(c for c in kept.columns if c.startswith("label:"))
                   if c in kept.columns]:
        kept[column] = pd.to_numeric(kept[column]).astype(np.int64)
    return ImageTable(kept, list(table.classes), table.task, table.images, table.source,
                      excluded=all_excluded)
