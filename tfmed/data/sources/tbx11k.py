"""TBX11K as published (``data.source: tbx11k``).

Liu et al., "Rethinking Computer-Aided Tuberculosis Diagnosis", CVPR 2020
(TBX11K: 11,200 chest X-rays of 512 x 512 pixels from hospitals in China,
tuberculosis areas boxed by radiologists).

``data.path`` is the ``TBX11K`` folder as published:

* ``lists/TBX11K_train.txt`` and ``lists/TBX11K_val.txt``: the official train
  (6,600 images) and validation (1,800) splits, one image per line, relative to
  ``imgs/`` (``health/h0001.png``). The test split's labels are not published,
  so ``imgs/test/`` is not read; ``#train`` or ``#val`` keeps one split.
* ``imgs/health/``, ``imgs/sick/``, ``imgs/tb/``: the folder is the class,
  :data:`CLASSES` (``healthy``, ``sick_non_tb``: sick but not tuberculosis,
  ``tuberculosis``).
  ``data.classes`` chooses two or three of them, in its order (binary or
  multiclass); the other class's images are counted in ``table.excluded``.
  Instead of ``tuberculosis`` it may name its kinds, ``active_tuberculosis``
  and ``latent_tuberculosis``: a tuberculosis image is then of the kind of its
  boxes (active, or latent: "obsolete pulmonary tuberculosis"), and one with
  boxes of both kinds, or of neither (uncertain kind, no box file), is counted
  in ``table.excluded``.
* ``annotations/xml/<name>.xml``: the radiologists' boxes of a tuberculosis
  image (Pascal VOC: active, latent or uncertain tuberculosis, corners in the
  pixels of the XML's ``size``). They go into the ``boxes`` column
  (:mod:`tfmed.data.boxes`), scaled to the image file's own size, so that
  explanations are measured against them. A tuberculosis image without a box
  file is kept, without boxes.

``data.path`` may instead be the folder of Kaggle's "TBX11K Simplified" copy
(the same train and validation images, without the test split):

* ``data.csv``: one line per box of a tuberculosis image and one per other
  image, with the columns ``fname`` (the file in ``images/``), ``image_width``
  and ``image_height`` (the pixels the box is in), ``source`` (``train`` or
  ``val``, the official split), ``bbox`` (``{'xmin': ..., 'ymin': ..., 'width':
  ..., 'height': ...}`` or ``none``), ``tb_type`` (``active_tb``, ``latent_tb``;
  ``none`` for an image without boxes) and ``image_type`` (``healthy``,
  ``sick_but_no_tb``, ``tb``: the class, as the folder is above). The lines of
  one image become one row with all its boxes, in the order of their first line.
* Reported with the line of ``data.csv``: an unknown ``image_type``,
  ``source`` or ``tb_type``, a ``bbox`` that is not such a box or has no area,
  lines of one image that disagree on its class or split, and a box for an
  image that is not a tuberculosis one.

The release has no patient ids: each image is its own ``patient_id`` (its file
name without extension), so a patient with several images could fall into two
splits that tfmed makes; the official lists are the publisher's split.

Row problems, with the list file and line: a line outside ``health/``,
``sick/`` and ``tb/``, an image listed twice, a box file that is not Pascal VOC
XML, a box of an unknown kind or without area, a box file for an image that
is not a tuberculosis one.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "lists").mkdir()
    >>> _ = (root / "lists" / "TBX11K_train.txt").write_text("health/h0001.png\\ntb/tb0003.png\\n")
    >>> _ = (root / "lists" / "TBX11K_val.txt").write_text("sick/s0002.png\\n")
    >>> table = load_tbx11k(root)
    >>> table.classes, table.labels().tolist(), table.frame["split"].tolist()
    (['healthy', 'sick_non_tb', 'tuberculosis'], [0, 2, 1], ['train', 'train', 'val'])
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from tfmed.config import DataConfig
from tfmed.data.boxes import BOXES_COLUMN, box_from_corners, format_boxes
from tfmed.data.decode import header_size
from tfmed.data.sources.base import (SourceKind, chosen_labels, counted_skips, excluded_frame, list_lines,
                                     single_label_frame, with_fixes)
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS

# the publisher's image folders -> tfmed's class names
FOLDERS = {"health": "healthy", "sick": "sick_non_tb", "tb": "tuberculosis"}
CLASSES = list(FOLDERS.values())
TUBERCULOSIS, ACTIVE, LATENT = "tuberculosis", "active_tuberculosis", "latent_tuberculosis"
# the boxes' kinds -> the tuberculosis class they make (the third kind, of uncertain type, makes none)
KINDS = {"ActiveTuberculosis": ACTIVE, "ObsoletePulmonaryTuberculosis": LATENT, "PulmonaryTuberculosis": None}
# the split lists, by tfmed's split name
LISTS = {"train": "TBX11K_train.txt", "val": "TBX11K_val.txt"}
BOX_KINDS = tuple(KINDS)
IMAGES, BOX_FOLDER = "imgs", "annotations/xml"
# Kaggle's "TBX11K Simplified": its table, its image folder, its image types (our classes) and its kinds of box
SIMPLIFIED_TABLE, SIMPLIFIED_IMAGES = "data.csv", "images"
SIMPLIFIED_TYPES = {"healthy": "healthy", "sick_but_no_tb": "sick_non_tb", "tb": TUBERCULOSIS}
SIMPLIFIED_KINDS = {"active_tb": "ActiveTuberculosis", "latent_tb": "ObsoletePulmonaryTuberculosis"}
SIMPLIFIED_COLUMNS = ("fname", "image_width", "image_height", "source", "bbox", "tb_type", "image_type")
NO_BOX = ("", "none", "nan")


def load_tbx11k(path: str | Path, classes: list[str] | None = None, split: str = "") -> ImageTable:
    """Read the TBX11K folder's official train and validation lists into a single-label :class:`ImageTable`
    with the tuberculosis boxes.

    Args:
        path: the ``TBX11K`` folder (``lists/``, ``imgs/``, ``annotations/xml/``), or the folder of Kaggle's
            TBX11K Simplified copy (``data.csv``, ``images/``).
        classes: two or three of :data:`CLASSES` (or, instead of ``tuberculosis``, its kinds ``ACTIVE`` and
            ``LATENT``), in label order (default: all three of :data:`CLASSES`).
        split: ``"train"`` or ``"val"`` to keep one official split ("" both).

    Raises:
        DataSourceError: no ``lists/`` folder or split list, an unknown split, or ``classes`` not two or three
            of :data:`CLASSES`.

    Example:
        >>> load_tbx11k("TBX11K", classes=["healthy"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.data.table.DataSourceError: data.classes lists only 'healthy'; ...
    """
    path = Path(path)
    names = _chosen(classes)
    if split and split not in LISTS:
        raise DataSourceError(f"{path}#{split}: not a TBX11K split with labels; write #train or #val (the test "
                              "split's labels are not published)")
    if (path / SIMPLIFIED_TABLE).is_file() and not (path / "lists").is_dir():
        listing, rows = path / SIMPLIFIED_TABLE, _simplified_rows(path, names, split)
    else:
        listing, rows = path / "lists", _published_rows(path, names, split)
    records: list[dict] = []
    skipped: Counter = Counter()
    for number, (record, left_out) in rows:
        if record is None:
            skipped[left_out] += 1
        else:
            record["row"] = number
            records.append(record)
    if not records:
        raise DataSourceError(f"{listing}: no image of the classes {names}{' in #' + split if split else ''}")
    frame = single_label_frame(records, (BOXES_COLUMN,))
    frame[BOXES_COLUMN] = frame[BOXES_COLUMN].astype("string")
    excluded = excluded_frame(counted_skips(listing, skipped, "image"))
    table = ImageTable(frame, names, "binary" if len(names) == 2 else "multiclass", source=str(path),
                       excluded=excluded)
    images = path / (SIMPLIFIED_IMAGES if listing.name == SIMPLIFIED_TABLE else IMAGES)
    named = f"{listing.name}{'/' if listing.name == 'lists' else ''}"
    return with_fixes(table, missing_fix=f"TBX11K's images are read from {images}/ by the names in {named} "
                      "(data.path is the TBX11K folder): restore the image as published, or remove its line")


Row = tuple[dict | None, tuple | None]  # a table row, or None and why the image is left out (see _row)


def _published_rows(path: Path, names: list[str], split: str) -> Iterator[tuple[int, Row]]:
    """The rows of the folder as published, from its split lists (see :func:`_row`), each with its number: the
    train list's lines are counted first, then the val list's, whichever split is kept."""
    seen: dict[str, str] = {}
    number = 0
    for split_name, list_name in LISTS.items():
        list_file = path / "lists" / list_name
        if not list_file.is_file():
            raise DataSourceError(f"{list_file}: not found; data.path must be the TBX11K folder as published, "
                                  f"with lists/{LISTS['train']} and lists/{LISTS['val']}, or Kaggle's TBX11K "
                                  f"Simplified folder, with {SIMPLIFIED_TABLE} and {SIMPLIFIED_IMAGES}/")
        entries = _entries(list_file)
        if split and split != split_name:
            number += len(entries)
            continue
        if not entries:
            raise DataSourceError(f"{list_file}: no data rows (no image listed); restore the publisher's list, one "
                                  f"{IMAGES}/ path per line")
        for line, entry in entries:
            number += 1
            yield number, _record(path, entry, f"lists/{list_name} line {line}", names, seen, split_name)


def _chosen(classes: list[str] | None) -> list[str]:
    names = chosen_labels(classes, tuple(CLASSES + [ACTIVE, LATENT]), "TBX11K",
                          f"{', '.join(CLASSES)} (the folders {', '.join(FOLDERS)}), or instead of "
                          f"{TUBERCULOSIS} its kinds {ACTIVE} and {LATENT}") if classes is not None else list(CLASSES)
    if len(names) < 2:
        raise DataSourceError(f"data.classes lists only {names[0]!r}; a classifier needs two or three of TBX11K's "
                              f"classes {', '.join(CLASSES)} (or leave data.classes out for all three)")
    if TUBERCULOSIS in names and {ACTIVE, LATENT} & set(names):
        raise DataSourceError(f"data.classes names {TUBERCULOSIS} and its kinds; name either {TUBERCULOSIS} or "
                              f"{ACTIVE} and/or {LATENT}")
    return names


def _entries(list_file: Path) -> list[tuple[int, str]]:
    """The (line number, image path below imgs/) of each non-blank line of a split list."""
    return [(number, line.replace("\\", "/").removeprefix(f"{IMAGES}/")) for number, line in list_lines(list_file)]


def _record(root: Path, entry: str, where: str, names: list[str], seen: dict,
            split: str) -> tuple[dict | None, tuple[str, str] | None]:
    """One row of the table from a line of a split list, or None and why the image is left out."""
    problems: list[tuple[str, str]] = []
    folder = entry.split("/")[0]
    name = FOLDERS.get(folder)
    image = root / IMAGES / entry
    boxes = _boxes(root, image, name == TUBERCULOSIS, problems) if name is not None else []
    if name is None:
        problems.append((f"{where}: {entry!r} is not in {', '.join(f'{f}/' for f in FOLDERS)}",
                         "keep the publisher's list: it names images of the labelled folders only"))
    if entry in seen:
        problems.append((f"{where}: {entry} is listed again (first in {seen[entry]})",
                         "keep the publisher's lists: each image once"))
    seen.setdefault(entry, where)
    return _row(image, split, name, boxes, names, problems)


def _row(image: Path, split: str | None, name: str | None, boxes: list[tuple[str, tuple]], names: list[str],
         problems: list) -> tuple[dict | None, tuple[str, str] | None]:
    """The table's row of an image of class ``name`` (None: unknown, a problem already) with its boxes (kind,
    box), or None and why it is left out: a class that ``names`` leaves out, or a tuberculosis image whose
    boxes do not give one kind when ``names`` asks for the kinds."""
    if name == TUBERCULOSIS and TUBERCULOSIS not in names:  # its kind, from its boxes, is the class
        kinds = {KINDS[kind] for kind, _ in boxes} - {None}
        fix = f"none needed; name the class {TUBERCULOSIS} instead of its kinds to use them"
        if len(kinds) != 1:
            return None, ("with boxes of both active and latent tuberculosis" if kinds else
                          "without a box of active or latent tuberculosis (no box file, or boxes of uncertain "
                          "kind)", fix)
        name = kinds.pop()
    if name is not None and name not in names:
        return None, (f"of class {name}, not in data.classes", "none needed; add the class to data.classes to "
                                                                "use them")
    return {"image": str(image), "label": names.index(name) if name in names else pd.NA,
            "patient_id": image.stem, "split": split,
            BOXES_COLUMN: format_boxes([box for _, box in boxes]) or pd.NA, SOURCE_PROBLEMS: tuple(problems)}, None


def _simplified_rows(path: Path, names: list[str], split: str) -> Iterator[tuple[int, Row]]:
    """The rows of Kaggle's TBX11K Simplified folder, one per image of its ``data.csv`` (whose lines are one per
    box; see :func:`_row`), each with the image's number in the order of the file's images."""
    table_file = path / SIMPLIFIED_TABLE
    try:
        lines = pd.read_csv(table_file, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataSourceError(f"{table_file}: not readable as CSV ({error}); restore the file as downloaded") from None
    missing = [column for column in SIMPLIFIED_COLUMNS if column not in lines.columns]
    if missing:
        raise DataSourceError(f"{table_file}: no column {', '.join(missing)}; data.path must be the TBX11K folder "
                              f"as published (lists/, imgs/) or Kaggle's TBX11K Simplified folder, whose data.csv "
                              f"has the columns {', '.join(SIMPLIFIED_COLUMNS)}")
    if lines.empty:
        raise DataSourceError(f"{table_file}: no data rows (only the header, line 1); restore the file as "
                              "downloaded, one line per box of a tuberculosis image and one per other image")
    images: dict[str, dict] = {}
    for number, line in enumerate(lines[list(SIMPLIFIED_COLUMNS)].itertuples(index=False), start=2):
        where = f"{SIMPLIFIED_TABLE} line {number}"
        fname = line.fname.strip()
        image = images.setdefault(fname, {"where": where, "type": line.image_type.strip(),
                                          "source": line.source.strip(), "boxes": [], "problems": []})
        problems = image["problems"]
        for column, key in (("image_type", "type"), ("source", "source")):
            value = getattr(line, column).strip()
            if value != image[key]:
                problems.append((f"{where}: {fname} has {column} {value!r}, but {image['where']} says "
                                 f"{image[key]!r}", "restore the file as downloaded: one image, one class and split"))
        box = _simplified_box(line, where, path / SIMPLIFIED_IMAGES / fname, problems)
        if box is not None:
            image["boxes"].append(box)
    for number, (fname, image) in enumerate(images.items(), start=1):
        problems, where = image["problems"], image["where"]
        name = SIMPLIFIED_TYPES.get(image["type"])
        if name is None:
            problems.append((f"{where}: image_type {image['type']!r} is not one of {', '.join(SIMPLIFIED_TYPES)}",
                             "restore the file as downloaded"))
        elif image["boxes"] and name != TUBERCULOSIS:
            problems.append((f"{where}: boxes of tuberculosis for {fname}, an image of type {image['type']}",
                             "restore the file as downloaded: only images of type tb have boxes"))
        if image["source"] not in LISTS:
            problems.append((f"{where}: source {image['source']!r} is not one of {', '.join(LISTS)}",
                             "restore the file as downloaded"))
        elif split and image["source"] != split:
            continue
        yield number, _row(path / SIMPLIFIED_IMAGES / fname, image["source"] if image["source"] in LISTS else None,
                           name, image["boxes"], names, problems)


def _simplified_box(line, where: str, image: Path, problems: list) -> tuple[str, tuple] | None:
    """The (kind, box in the image file's pixels) of a line of Kaggle's data.csv, None for a line without a box."""
    text = line.bbox.strip()
    if text.lower() in NO_BOX:
        return None
    fix = "restore the file as downloaded"
    try:
        fields = ast.literal_eval(text)
        x, y, width, height = (float(fields[key]) for key in ("xmin", "ymin", "width", "height"))
    except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
        problems.append((f"{where}: bbox {text!r} is not {{'xmin': ..., 'ymin': ..., 'width': ..., 'height': ...}}",
                         fix))
        return None
    try:
        x, y, width, height = box_from_corners([x, y, x + width, y + height])
    except ValueError as error:
        problems.append((f"{where}: bbox {text!r} {error}", fix))
        return None
    kind = SIMPLIFIED_KINDS.get(line.tb_type.strip())
    if kind is None:
        problems.append((f"{where}: tb_type {line.tb_type.strip()!r} of a box is not one of "
                         f"{', '.join(SIMPLIFIED_KINDS)}", fix))
        return None
    scale = _scale(line.image_width, line.image_height, image)
    return kind, (x * scale[0], y * scale[1], width * scale[0], height * scale[1])


def _boxes(root: Path, image: Path, tuberculosis: bool, problems: list) -> list[tuple[str, tuple]]:
    """The image's boxes from its Pascal VOC file, each its kind and (x, y, width, height) in the image file's
    pixels."""
    xml_file = root / BOX_FOLDER / f"{image.stem}.xml"
    if not xml_file.is_file():
        return []
    if not tuberculosis:
        problems.append((f"{xml_file}: boxes of tuberculosis for an image of another class",
                         "keep the publisher's files: only images of tb/ have boxes"))
        return []
    fix = "restore the publisher's box file"
    try:
        document = ElementTree.parse(xml_file).getroot()
    except (ElementTree.ParseError, OSError) as error:
        problems.append((f"{xml_file}: not readable XML ({error})", fix))
        return []
    scale = _scale(document.findtext("size/width"), document.findtext("size/height"), image)
    boxes = []
    for number, item in enumerate(document.iter("object"), start=1):
        kind = (item.findtext("name") or "").strip()
        try:
            x, y, width, height = box_from_corners([item.findtext(f"bndbox/{key}")
                                                    for key in ("xmin", "ymin", "xmax", "ymax")])
        except ValueError as error:
            problems.append((f"{xml_file}: box {number} {error}", fix))
            continue
        if kind not in BOX_KINDS:
            problems.append((f"{xml_file}: box {number} is of kind {kind!r}, not one of {', '.join(BOX_KINDS)}", fix))
        else:
            boxes.append((kind, (x * scale[0], y * scale[1], width * scale[0], height * scale[1])))
    return boxes


def _scale(width, height, image: Path) -> tuple[float, float]:
    """From the pixels of a box's frame, ``width`` x ``height`` (texts), to the image file's (1, 1 when either is
    unknown)."""
    try:
        width, height = float(width), float(height)
    except (TypeError, ValueError):
        return 1.0, 1.0
    actual = header_size(image) if image.is_file() else None
    if actual is None or width <= 0 or height <= 0:
        return 1.0, 1.0
    return actual[0] / width, actual[1] / height


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_tbx11k(path, classes=config.classes, split=fragment)


SOURCE = SourceKind("tbx11k", "the TBX11K folder as published (lists/TBX11K_train.txt, lists/TBX11K_val.txt, "
                              "imgs/, annotations/xml/) or Kaggle's TBX11K Simplified folder (data.csv, images/)",
                    needs_folder=True, load=_load, takes_fragment=True)
