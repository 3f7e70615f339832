"""Any tfmed source written as a TensorFlow Datasets data set (``tfmed export-tfds SOURCE OUT_DIR``).

The table is validated first (an export of a source with problems is
refused with the validation report). ``OUT_DIR`` becomes one TFDS version
folder, so that ``tfds.builder_from_directory(OUT_DIR).as_dataset(split=...)``
reads it, and ``data.source: tfds`` with ``data.path: OUT_DIR`` (or
``--data tfds:OUT_DIR#test``) brings it back into tfmed. A study's data set is
then a versioned, checksummed artefact (``--name``, ``--version``).

Features written:

* ``image``: the raw image as read by tfmed (original size and values). An
  ``Image`` feature, PNG, of ``uint8`` when every value is an integer in
  0..255, of ``uint16`` when in 0..65535; any other values (CT in Hounsfield
  units, negative or fractional) a ``float32`` ``Tensor``. The channels are
  1 or 3; when grey and colour images mix, grey ones are replicated to 3
  channels (the summary counts them). Fixed-size data sets get a fixed shape.
* ``label``: a ``ClassLabel`` with the class names (binary, multiclass), or
  ``labels``: a ``Sequence`` of ``ClassLabel``, the positive labels of each
  example (multilabel).
* ``patient_id``, ``site``, ``view``: text ("" when unknown), so that a split
  of the export is still by patient; ``source_image``: the image's path
  relative to the folder all images share (or the in-memory reference).
* ``boxes``: text, when the table has finding boxes (:mod:`tfmed.data.boxes`;
  "" for an image without), so that explanations can still be measured
  against them.
* ``sex``, ``age``: text, when the table knows some patients' sex or age
  (``female``/``male``/``other`` and years, "" when unknown), so that figures
  by subgroup can still be given.

Splits: tfmed's ``train``, ``val`` and ``test`` become TFDS ``train``,
``validation`` and ``test``. A source without predefined splits is written as
``train`` alone (TFDS's convention); tfmed reads a data set whose only split
is ``train`` as having no predefined splits, so it splits the copy by patient
exactly as it split the source.

The data set is written into a temporary folder beside ``OUT_DIR`` and
renamed when complete; ``OUT_DIR`` must not exist yet (exports never
overwrite).

Example:
    >>> [TFDS_SPLITS[name] for name in ("train", "val", "test")]
    ['train', 'validation', 'test']
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import UNKNOWN_LABEL
from tfmed.data.boxes import BOXES_COLUMN
from tfmed.data.demographics import DEMOGRAPHIC_COLUMNS
from tfmed.data.pipeline import raw_dataset
from tfmed.data.sources.tfds import UNKNOWN_FEATURE, tfds_quietly
from tfmed.data.table import DataSourceError, ImageTable
from tfmed.data.validate import apply_validation, validate_table
from tfmed.progress import log

TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass
class ExportSummary:
    """What :func:`export_tfds` wrote.

    Attributes:
        out_dir: the TFDS version folder.
        splits: examples per TFDS split.
        image_feature: e.g. ``"Image uint8 (None, None, 1)"``.
        replicated_grey: grey images written with 3 channels because colour ones were present.

    Example:
        >>> ExportSummary(Path("out"), {"train": 3}, "Image uint8 (8, 8, 1)").splits
        {'train': 3}
    """

    out_dir: Path
    splits: dict[str, int]
    image_feature: str
    replicated_grey: int = 0
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        lines = [f"wrote TFDS data set {self.out_dir} ({counts}; image: {self.image_feature})"]
        if self.replicated_grey:
            lines.append(f"{self.replicated_grey} grey image(s) written with 3 channels (the others are colour)")
        lines += self.notes
        lines.append(f"read it with tfds.builder_from_directory({str(self.out_dir)!r}).as_dataset(split=...) "
                     f"or in tfmed as data.source: tfds, data.path: {self.out_dir}")
        return "\n".join(lines)


def export_tfds(table: ImageTable, out_dir: str | Path, *, name: str, version: str = "1.0.0",
                description: str | None = None, citation: str | None = None,
                max_pixels: int | None = None) -> ExportSummary:
    """Write ``table`` as a TFDS data set in ``out_dir`` (see the module text).

    Example:
        >>> from tfmed.data.sources import load_source, parse_source_spec
        >>> table = load_source(parse_source_spec("folder:data/xrays"))  # doctest: +SKIP
        >>> export_tfds(table, "exports/xrays_v1", name="xrays", version="1.0.0")  # doctest: +SKIP
    """
    tfds = tfds_quietly()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataSourceError(f"{out_dir} exists; exports never overwrite: choose a new folder (e.g. with the "
                              "version in its name)")
    if not NAME_PATTERN.match(name):
        raise DataSourceError(f"data set name {name!r}: TFDS names are lower-case letters, digits and _, starting "
                              f"with a letter, e.g. {suggested_name(name)!r}")
    if not VERSION_PATTERN.match(version):
        raise DataSourceError(f"version {version!r}: TFDS versions are MAJOR.MINOR.PATCH, e.g. 1.0.0")
    table = apply_validation(table, validate_table(table, max_pixels=max_pixels), exclude_bad_rows=False,
                             remedy="remove them from the source before exporting it")
    unknown = table.task == "multilabel" and bool((table.labels() == UNKNOWN_LABEL).any())
    boxes = BOXES_COLUMN in table.frame.columns and bool(table.frame[BOXES_COLUMN].notna().any())
    demographics = bool(table.frame[list(DEMOGRAPHIC_COLUMNS)].notna().any().any())
    splits = _splits(table)
    dtype, shape, replicated = _image_kind(table)
    features = tfds.features.FeaturesDict({
        "image": (tfds.features.Image(shape=shape, dtype=dtype, encoding_format="png") if dtype != np.float32
                  else tfds.features.Tensor(shape=shape, dtype=np.float32, encoding="zlib")),
        **({"labels": tfds.features.Sequence(tfds.features.ClassLabel(names=table.classes))}
           if table.task == "multilabel" else {"label": tfds.features.ClassLabel(names=table.classes)}),
        # labels unknown for an example (-1 in the table), listed beside its positive ones
        **({UNKNOWN_FEATURE: tfds.features.Sequence(tfds.features.ClassLabel(names=table.classes))}
           if unknown else {}),
        "patient_id": tfds.features.Text(), "site": tfds.features.Text(), "view": tfds.features.Text(),
        **({BOXES_COLUMN: tfds.features.Text()} if boxes else {}), "source_image": tfds.features.Text(),
        **({column: tfds.features.Text() for column in DEMOGRAPHIC_COLUMNS} if demographics else {})})
    channels = shape[-1]
    sources = _relative_references(table)
    split_data = {}
    for split, rows in splits.items():
        split_data[TFDS_SPLITS[split]] = _examples(table.subset(rows), sources[rows], dtype, channels, unknown,
                                                   boxes, demographics)
    temporary = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    from tfmed import __version__

    text = description or (f"Exported by tfmed {__version__} on {date.today().isoformat()} from {table.source}: "
                           f"{len(table)} images, {table.task} task, classes {', '.join(table.classes)}.")
    log(f"writing TFDS data set {name} {version} ({len(table)} images) to {out_dir}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading and preparing ...": misleading
            builder = tfds.dataset_builders.store_as_tfds_dataset(
                name=name, version=version, features=features, split_datasets=split_data, data_dir=temporary,
                description=text, citation=citation, disable_shuffling=True)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        Path(builder.data_dir).rename(out_dir)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    kind = ("Image " if dtype != np.float32 else "Tensor ") + f"{np.dtype(dtype).name} {tuple(shape)}"
    notes = [] if table.frame["split"].notna().any() else [
        "the source has no predefined splits: every example is in 'train'; tfmed carves validation and test "
        "by patient when it reads the data set back"]
    return ExportSummary(out_dir, {TFDS_SPLITS[s]: len(rows) for s, rows in splits.items()}, kind, replicated,
                         notes)


def suggested_name(name: str) -> str:
    """A TFDS data set name made from ``name`` (lower case, ``_`` for other characters).

    Example:
        >>> suggested_name("Chest X-rays 2024")
        'chest_x_rays_2024'
    """
    cleaned = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return cleaned if cleaned[:1].isalpha() else f"data_{cleaned}"


def _splits(table: ImageTable) -> dict[str, np.ndarray]:
    split = table.frame["split"]
    missing = split.isna().to_numpy(dtype=bool)
    if missing.any() and not missing.all():
        rows = table.frame.loc[missing, "row"].head(5).tolist()
        raise DataSourceError(f"{int(missing.sum())} row(s) have no split while others do (rows {rows}...); fill "
                              "the split column for every row or leave it empty everywhere before exporting")
    if missing.all():
        return {"train": np.arange(len(table))}
    values = split.astype(str).to_numpy()
    return {name: np.flatnonzero(values == name) for name in TFDS_SPLITS if (values == name).any()}


def _image_kind(table: ImageTable):
    """The numpy dtype, TFDS shape and replicated-grey count for the images of ``table`` (one read of each)."""
    low, high, integral, shapes, grey, colour = np.inf, -np.inf, True, set(), 0, 0
    log(f"scanning {len(table)} images for their value range")
    for image in raw_dataset(table).as_numpy_iterator():
        if image.size:
            low, high = min(low, float(image.min())), max(high, float(image.max()))
            integral = integral and bool(np.all(image == np.round(image)))
        shapes.add(image.shape[:2])
        grey, colour = grey + (image.shape[-1] == 1), colour + (image.shape[-1] != 1)
    width = 3 if colour else 1
    replicated = grey if colour else 0
    if integral and low >= 0 and high <= 255:
        dtype = np.uint8
    elif integral and low >= 0 and high <= 65535:
        dtype = np.uint16
    else:
        dtype = np.float32
    size = next(iter(shapes)) if len(shapes) == 1 else (None, None)
    return dtype, (*size, width), replicated


def _relative_references(table: ImageTable) -> np.ndarray:
    images = table.frame["image"].astype(str).tolist()
    if table.images is not None:
        return np.array(images, dtype=object)
    try:
        common = os.path.commonpath([os.path.dirname(path) for path in images])
    except ValueError:  # paths on different drives
        return np.array(images, dtype=object)
    return np.array([os.path.relpath(path, common) for path in images], dtype=object)


def _examples(table: ImageTable, references: np.ndarray, dtype, channels: int, unknown: bool = False,
              boxes: bool = False, demographics: bool = False):
    """``(key, example)`` pairs of ``table``, in table order."""
    frame = table.frame
    labels = table.labels()
    columns = ("patient_id", "site", "view") + ((BOXES_COLUMN,) if boxes else ())
    texts = {column: frame[column].astype("string").fillna("").tolist() for column in columns}
    if demographics:
        texts["sex"] = frame["sex"].fillna("").tolist()
        texts["age"] = ["" if pd.isna(age) else f"{age:g}" for age in frame["age"]]
    for position, image in enumerate(raw_dataset(table).as_numpy_iterator()):
        if image.shape[-1] != channels:
            image = np.repeat(image, channels, axis=-1)
        example = {"image": image.astype(dtype), "source_image": str(references[position]),
                   **{column: values[position] for column, values in texts.items()}}
        if table.task == "multilabel":
            example["labels"] = np.flatnonzero(labels[position] == 1).astype(np.int64)
            if unknown:
                example[UNKNOWN_FEATURE] = np.flatnonzero(labels[position] == UNKNOWN_LABEL).astype(np.int64)
        else:
            example["label"] = int(labels[position])
        yield position, example
