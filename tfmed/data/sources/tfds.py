"""TensorFlow Datasets (``data.source: tfds``; on the command line ``tfds:NAME[/CONFIG][#SPLIT]``).

``data.path`` names a TFDS data set in one of two ways:

* a registered builder, ``NAME`` or ``NAME/CONFIG`` (``patch_camelyon``,
  ``curated_breast_imaging_ddsm/patches``), looked up in ``data.data_dir``
  (default: TFDS's own, ``~/tensorflow_datasets``). A builder that is not
  prepared yet is prepared once: downloaded where the machine is online, or
  built from the publisher's files in ``data.manual_dir`` for builders that
  need a manual download (``chexpert``, ``diabetic_retinopathy_detection``).
  With ``$TFMED_OFFLINE`` set nothing is downloaded.
* a folder holding a prepared data set (the version folder with
  ``dataset_info.json``), such as one written by ``tfmed export-tfds``.

``#SPLIT`` is a TFDS split, or several joined by ``+`` (``test``,
``train[:10%]``, ``train+validation``); without it every split of the data
set is read. TFDS ``train`` becomes tfmed's ``train``, ``validation`` (or
``val``, ``valid``) ``val``, ``test`` ``test``; the rows of any other split
have no predefined split, nor have those of a data set whose only split is
``train`` (TFDS's form for data without splits, as ``tfmed export-tfds``
writes them), so they are split as the source they came from was.

Features (settings ``data.image_feature``, ``data.label_feature``,
``data.patient_feature``):

* image: ``image`` by default, else the data set's only ``Image`` feature.
  Image features are kept as stored (PNG or JPEG, 8 or 16 bits); a
  ``Tensor`` feature (H, W) or (H, W, C) is written as PNG (integers up to
  16 bits) or as 32-bit float TIFF.
* label: ``label`` by default, else ``labels``. A ``ClassLabel`` gives a
  binary or multiclass task with the feature's class names; ``data.classes``
  may list the same names in another order, which the labels then follow (for
  a binary task the positive class second), or name the classes of a
  ``ClassLabel`` without names (``0``, ``1``, ...) in their order; other
  names are refused. A ``Sequence`` of ``ClassLabel`` lists
  the positive labels of a multilabel example (``data.classes`` as above); a 0/1 ``Tensor`` of shape (L,)
  is a multilabel example with the names of ``data.classes``. With a
  ``Sequence`` label, a feature ``unknown_labels`` (a ``Sequence`` of the same
  ``ClassLabel``, as ``tfmed export-tfds`` writes it) lists the labels that
  are unknown for the example; they become -1 (see ``UNKNOWN_LABEL``).
* patient: ``patient_id`` when the data set has it (``tfmed export-tfds``
  writes it). Otherwise each example is its own patient (``"train-17"``, ``"train[50%:]-3"`` of a slice):
  TFDS's public sets such as ``patch_camelyon`` carry no patient id, so no
  split of them can keep a patient's images together.
* ``site`` and ``view`` text features are read when present.

Streaming: the examples are read one at a time and each image is written as
a file into tfmed's cache (``$TFMED_CACHE_DIR``, default ``~/.cache/tfmed``,
under ``tfds/``) beside an ``examples.csv`` of labels and ids. The table's
rows name those files, so validation, splits and the tf.data pipeline are
those of any folder of images, and memory holds one example at a time. A
split's folder is written under a temporary name and renamed when complete,
so an interrupted read is never reused; later loads read ``examples.csv``.
The cache folder's name covers the names, sizes and modification times of the
prepared data set's files (``dataset_info.json``, the shards), so a data set
prepared again in the same folder is read afresh.

Example:
    >>> from tfmed.data.sources import parse_source_spec
    >>> config = parse_source_spec("tfds:curated_breast_imaging_ddsm/patches#test")
    >>> config.source, config.path
    ('tfds', 'curated_breast_imaging_ddsm/patches#test')
    >>> split_name("validation"), split_name("train[:10%]"), split_name("extra")
    ('val', 'train', None)
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from tfmed.config import UNKNOWN_LABEL, DataConfig
from tfmed.data.boxes import BOXES_COLUMN
from tfmed.data.demographics import DEMOGRAPHIC_COLUMNS, log_unreadable, published_demographics
from tfmed.data.sources.base import SourceKind, label_frame
from tfmed.data.table import LABEL_PREFIX, DataSourceError, ImageTable
from tfmed.data.validate import SOURCE_PROBLEMS
from tfmed.files import cache_folder, offline
from tfmed.progress import log

# TFDS split name -> tfmed split
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "valid": "val", "test": "test"}
EXAMPLES_FILE = "examples.csv"
UNKNOWN_FEATURE = "unknown_labels"   # the labels unknown for an example, beside its positive ones
LOG_EVERY = 5000


def split_name(tfds_split: str) -> str | None:
    """tfmed's split for a TFDS split expression (its name before any slice), None for other names.

    Example:
        >>> split_name("test[50%:]")
        'test'
    """
    return SPLIT_NAMES.get(tfds_split.split("[", 1)[0].strip())


def load_tfds(name: str, splits: list[str] | None = None, *, data_dir: str | Path | None = None,
              manual_dir: str | Path | None = None, image_feature: str | None = None,
              label_feature: str | None = None, patient_feature: str | None = None,
              classes: list[str] | None = None, task: str | None = None) -> ImageTable:
    """The examples of a TFDS data set as an :class:`ImageTable` of image files (see the module text).

    ``name`` is ``NAME``, ``NAME/CONFIG`` or a folder of a prepared data set;
    ``splits`` are TFDS splits (None: all of the data set's splits); splits or slices that share
    examples are refused.

    Example:
        >>> table = load_tfds("/data/exports/chest_study", ["test"])  # doctest: +SKIP
    """
    tfds = tfds_quietly()
    builder = _builder(tfds, name, data_dir, manual_dir)
    features = builder.info.features
    image_key = _feature_key(features, image_feature, ("image",), tfds.features.Image, "data.image_feature", name)
    label_key = _feature_key(features, label_feature, ("label", "labels"), tfds.features.ClassLabel,
                             "data.label_feature", name)
    patient_key = patient_feature or ("patient_id" if "patient_id" in features else None)
    if patient_key is not None and patient_key not in features:
        raise DataSourceError(f"data.patient_feature is {patient_key!r}, which TFDS data set {name!r} does not "
                              f"have; its features are {', '.join(features)}")
    names, resolved_task, order = _label_names(tfds, features[label_key], label_key, classes, task, name)
    unknown_key = UNKNOWN_FEATURE if _lists_unknown_labels(tfds, features, label_key) else None
    if splits is None:
        splits = list(builder.info.splits)
        if not splits:
            raise DataSourceError(f"TFDS data set {name!r} lists no splits; name one: tfds:{name}#train")
    _refuse_shared_examples(tfds, builder, splits, name)
    frames = []
    for split in splits:
        folder = _split_folder(builder, split, (image_key, label_key, patient_key, unknown_key))
        if not (folder / EXAMPLES_FILE).is_file():
            _write_split(tfds, builder, split, folder, image_key, label_key, patient_key, name, unknown_key)
        frame = pd.read_csv(folder / EXAMPLES_FILE, dtype=str, keep_default_na=False)
        frame["image"] = [str(folder / file) for file in frame["file"]]
        frame["split"] = split_name(split)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    if list(builder.info.splits) == ["train"]:  # TFDS's way of giving no split: tfmed splits it as such a source
        frame["split"] = None
    source = f"tfds:{name}#{'+'.join(splits)}"
    return ImageTable(_table_frame(frame, names, resolved_task, source, order), names, resolved_task,
                      source=source)


def _refuse_shared_examples(tfds, builder, splits: list[str], name: str) -> None:
    """Refuse splits or slices that share examples: each shared image would be read twice, as two patients."""
    seen = []
    for split in splits:
        try:
            ranges = tfds.core.ReadInstruction.from_spec(split).to_absolute(builder.info.splits)
        except Exception:  # an unknown split or a bad slice: reading it names the fault
            continue
        for part in ranges:
            start, stop = part.from_ or 0, builder.info.splits[part.splitname].num_examples if part.to is None \
                else part.to
            for other, (other_name, other_start, other_stop) in seen:
                if other_name == part.splitname and max(start, other_start) < min(stop, other_stop):
                    raise DataSourceError(
                        f"TFDS data set {name!r}: splits {other!r} and {split!r} share examples "
                        f"{max(start, other_start)} to {min(stop, other_stop) - 1} of {part.splitname!r}, which "
                        "would be read twice, as two patients; give slices that do not overlap, e.g. "
                        f"{part.splitname}[:80%]+{part.splitname}[80%:]")
            seen.append((split, (part.splitname, start, stop)))


def tfds_quietly():
    """The ``tensorflow_datasets`` module, its progress bars off (tfmed logs its own progress lines).

    Example:
        >>> tfds_quietly().__name__
        'tensorflow_datasets'
    """
    try:
        import tensorflow_datasets
    except ImportError as error:  # declared in setup.py; a broken install
        raise DataSourceError(f"data.source tfds needs the tensorflow-datasets package ({error}); "
                              "install it with pip install tensorflow-datasets") from None
    tensorflow_datasets.display_progress_bar(False)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _VariantFolderChatter) for f in absl_logger.filters):
        absl_logger.addFilter(_VariantFolderChatter())
    return tensorflow_datasets


class _VariantFolderChatter(logging.Filter):
    """Drops TFDS's warnings about folders without dataset_info.json (tfmed's own cache and export
    folders sit beside the data sets TFDS lists); every other message passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.WARNING and str(record.msg).startswith("Variant folder")
                    and "tensorflow_datasets" in record.pathname)


def _builder(tfds, name: str, data_dir, manual_dir):
    if Path(name).is_dir():
        unused = [key for key, value in (("data.data_dir", data_dir), ("data.manual_dir", manual_dir)) if value]
        if unused:
            raise DataSourceError(f"{' and '.join(unused)} set, but data.path {name} is the folder of a prepared "
                                  "data set, which is read as it is; they find or prepare a data set given by "
                                  "its TFDS name: remove them")
        try:
            return tfds.builder_from_directory(name)
        except Exception as error:  # TFDS raises several kinds for a folder that is not a data set
            raise DataSourceError(f"{name}: not a prepared TFDS data set ({type(error).__name__}: {error}); "
                                  "data.path must be a TFDS version folder holding dataset_info.json "
                                  "(as written by tfmed export-tfds) or a TFDS name") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError, or a bad NAME/CONFIG
        raise DataSourceError(f"TFDS has no data set {name!r} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0]}); write tfds:NAME[/CONFIG][#SPLIT] with a "
                              "name from tfds.list_builders(), or the folder of a prepared data set") from None
    if builder.is_prepared():
        return builder
    where = f"{builder.data_dir}"
    if offline() and manual_dir is None:
        raise DataSourceError(f"TFDS data set {name!r} is not prepared in {where}, and downloading is off "
                              "($TFMED_OFFLINE is set). Prepare it on a machine that is online (tfds build "
                              f"{name} --data_dir DIR) and set data.data_dir to DIR")
    instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    log(f"preparing TFDS data set {name} in {where} (once; without a network TFDS retries for minutes: set "
        "$TFMED_OFFLINE=1 there to be told at once)")
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None))
    except Exception as error:  # network, manual files missing: TFDS's own message says which
        manual = (f" This data set needs the publisher's files in data.manual_dir: "
                  f"{' '.join(instructions.split())[:400]}" if instructions else "")
        raise DataSourceError(f"TFDS data set {name!r} is not prepared in {where} and preparing it failed "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}).{manual} "
                              f"Or prepare it where the machine is online (tfds build {name} --data_dir DIR) "
                              "and set data.data_dir to DIR (on machines without a network, $TFMED_OFFLINE=1 "
                              "says so at once instead of after TFDS's retries).") from None
    return builder


def _feature_key(features, given: str | None, defaults: tuple[str, ...], kind, setting: str, name: str) -> str:
    if given is not None:
        if given not in features:
            raise DataSourceError(f"{setting} is {given!r}, which TFDS data set {name!r} does not have; "
                                  f"its features are {', '.join(features)}")
        return given
    for key in defaults:
        if key in features:
            return key
    of_kind = [key for key, feature in features.items() if isinstance(feature, kind)]
    if len(of_kind) == 1:
        return of_kind[0]
    raise DataSourceError(f"TFDS data set {name!r} has no feature {' or '.join(map(repr, defaults))}; name the "
                          f"one to use with {setting} (its features: {', '.join(features)})")


def _label_names(tfds, feature, key: str, classes, task, name: str) -> tuple[list[str], str, list[int] | None]:
    """Class names and task of a label feature (see the module text for the kinds read), and the table's
    class index of each stored one when ``data.classes`` lists the feature's names in another order."""
    f = tfds.features
    if isinstance(feature, f.ClassLabel):
        names, kind = list(feature.names), "single"
    elif isinstance(feature, f.Sequence) and isinstance(feature.feature, f.ClassLabel):
        names, kind = list(feature.feature.names), "multilabel"
    elif isinstance(feature, f.Tensor) and len(feature.shape) == 1 and feature.shape[0]:
        count = feature.shape[0]
        if classes is not None and len(classes) != count:
            raise DataSourceError(f"data.classes has {len(classes)} names but label feature {key!r} of TFDS data "
                                  f"set {name!r} has {count} labels; name each label once, in order")
        names, kind = list(classes) if classes is not None else [str(i) for i in range(count)], "multilabel"
    else:
        raise DataSourceError(f"label feature {key!r} of TFDS data set {name!r} is {feature!r}; tfmed reads a "
                              "ClassLabel (one class per example), a Sequence of ClassLabel (the positive "
                              "labels of a multilabel example) or a 0/1 Tensor of shape (labels,). Name another "
                              "feature with data.label_feature")
    order = None
    if classes is not None and list(classes) != names:
        if len(classes) != len(names):
            raise DataSourceError(f"data.classes lists {len(classes)} names but label feature {key!r} of TFDS "
                                  f"data set {name!r} has {len(names)}: {names}")
        if sorted(classes) == sorted(names):  # the same classes in another order: the labels follow it
            order = [list(classes).index(stored) for stored in names]
        elif names != [str(i) for i in range(len(names))]:  # only a ClassLabel without names is named here
            raise DataSourceError(f"data.classes {list(classes)} names other classes than label feature {key!r} "
                                  f"of TFDS data set {name!r}, which has {names}; list those names (in the order "
                                  "you want, for a binary task the positive class second) or leave data.classes out")
        names = list(classes)
    resolved = "multilabel" if kind == "multilabel" else ("binary" if len(names) == 2 else "multiclass")
    if task is not None and task != resolved and not (task == "multiclass" and resolved == "binary"):
        raise DataSourceError(f"data.task is {task!r}, but label feature {key!r} of TFDS data set {name!r} "
                              f"makes a {resolved} task; remove data.task")
    return names, task or resolved, order


CACHE_LAYOUT = "2"  # what a cached split holds; changed when it changes (2: a slice's made-up patient ids)


def _split_folder(builder, split: str, keys: tuple) -> Path:
    identity = "|".join([CACHE_LAYOUT, str(builder.data_dir), _prepared_files(builder), split, *map(str, keys)])
    digest = hashlib.sha1(identity.encode()).hexdigest()[:12]
    config = builder.builder_config.name if builder.builder_config else ""
    label = "-".join(filter(None, (builder.name, config, str(builder.version))))
    return cache_folder("tfds") / f"{label}-{digest}" / re.sub(r"[^A-Za-z0-9_.%+-]+", "_", split)


def _prepared_files(builder) -> str:
    """Name, size and modification time of each file of the prepared data set (dataset_info.json, shards): they
    change when the data set is prepared again in the same folder."""
    import tensorflow as tf

    folder = str(builder.data_dir)
    if not tf.io.gfile.isdir(folder):  # nothing on disk (TFDS's mock data in tests)
        return ""
    stats = [(file, tf.io.gfile.stat(f"{folder}/{file}")) for file in sorted(tf.io.gfile.listdir(folder))]
    return ";".join(f"{file}:{stat.length}:{stat.mtime_nsec}" for file, stat in stats)


def _lists_unknown_labels(tfds, features, label_key: str) -> bool:
    """Whether the data set lists each example's unknown labels beside its positive ones."""
    label, unknown = features[label_key], features[UNKNOWN_FEATURE] if UNKNOWN_FEATURE in features else None
    sequence = tfds.features.Sequence
    return (isinstance(label, sequence) and isinstance(unknown, sequence)
            and isinstance(unknown.feature, tfds.features.ClassLabel)
            and list(unknown.feature.names) == list(label.feature.names))


def _write_split(tfds, builder, split: str, folder: Path, image_key: str, label_key: str,
                 patient_key: str | None, name: str, unknown_key: str | None = None) -> None:
    features = builder.info.features
    raw = isinstance(features[image_key], tfds.features.Image)
    decoders = {image_key: tfds.decode.SkipDecoding()} if raw else None
    try:
        dataset = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
    except Exception as error:  # an unknown split name, a bad slice
        raise DataSourceError(f"TFDS data set {name!r} cannot read split {split!r} ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); its splits are "
                              f"{', '.join(builder.info.splits) or '(none listed)'}") from None
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    text = [key for key in ("site", "view", "id", "name", BOXES_COLUMN, *DEMOGRAPHIC_COLUMNS) if key in features
            and isinstance(features[key], tfds.features.Text)]
    label_feature = features[label_key]
    records = []
    log(f"reading TFDS {name} split {split} into {folder}")
    for index, example in enumerate(tfds.as_numpy(dataset)):
        where = f"TFDS data set {name!r}, split {split!r}, example {index}"
        file = _write_image(example[image_key], partial, index, raw, where)
        # without a patient feature each example is its own patient, named by the split as written: two slices of
        # one split (train[:50%], train[50%:]) never name two examples alike
        record = {"file": file, "patient_id": _text(example[patient_key]) if patient_key else f"{split}-{index}"}
        record.update({key: _text(example[key]) for key in text})
        record["labels"] = _listed_labels(example[label_key], label_feature, tfds, where)
        record["unknown"] = (_listed_labels(example[unknown_key], features[unknown_key], tfds, where)
                             if unknown_key else "")
        records.append(record)
        if (index + 1) % LOG_EVERY == 0:
            log(f"  {index + 1} examples")
    pd.DataFrame(records, columns=["file", "labels", "unknown", "patient_id", *text]).to_csv(
        partial / EXAMPLES_FILE, index=False)
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same split first: keep its folder
        shutil.rmtree(partial, ignore_errors=True)
        if not (folder / EXAMPLES_FILE).is_file():
            raise


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _write_image(value, folder: Path, index: int, raw: bool, where: str) -> str:
    if raw:  # the stored PNG / JPEG bytes
        data = bytes(value)
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg" if data.startswith(b"\xff\xd8") else None
        if suffix is None:
            raise DataSourceError(f"{where}: the image is neither PNG nor JPEG; name a decoded image feature "
                                  "with data.image_feature")
        (folder / f"{index:08d}{suffix}").write_bytes(data)
        return f"{index:08d}{suffix}"
    array = np.asarray(value)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise DataSourceError(f"{where}: the image tensor has shape {array.shape}; tfmed reads (H, W) or "
                              "(H, W, C) with 1, 3 or 4 channels")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataSourceError(f"{where}: integer image values {array.min()}..{array.max()} do not fit 16 bits")
        array, suffix = array.astype(np.uint8 if array.dtype == np.uint8 else np.uint16), ".png"
    else:
        array, suffix = array.astype(np.float32), ".tiff"
    if array.ndim == 3 and array.shape[-1] >= 3:  # OpenCV writes BGR(A)
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if array.shape[-1] == 3 else cv2.COLOR_RGBA2BGRA)
    cv2.imwrite(str(folder / f"{index:08d}{suffix}"), array)
    return f"{index:08d}{suffix}"


def _listed_labels(value, feature, tfds, where: str) -> str:
    """The example's label as stored in examples.csv: the class index, or the listed labels (positive, or
    unknown for ``unknown_labels``) joined by '|'."""
    if isinstance(feature, tfds.features.ClassLabel):
        return str(int(value))
    values = np.asarray(value).astype(np.int64).ravel()
    if isinstance(feature, tfds.features.Sequence):
        if len(set(values.tolist())) != len(values):
            raise DataSourceError(f"{where}: the label sequence {values.tolist()} repeats a class, so it is not "
                                  "a list of positive labels (a code per label, as TFDS's chexpert stores, is "
                                  "not read; for CheXpert use data.source: chexpert on the publisher's CSV)")
        return "|".join(map(str, values.tolist()))
    if not np.isin(values, (0, 1)).all():
        raise DataSourceError(f"{where}: the label tensor holds {sorted(set(values.tolist()))}; a multilabel "
                              "tensor must hold 0 or 1 per label")
    return "|".join(map(str, np.flatnonzero(values).tolist()))


def _table_frame(frame: pd.DataFrame, names: list[str], task: str, where: str,
                 order: list[int] | None = None) -> pd.DataFrame:
    records, unreadable = [], Counter()
    table_index = dict(enumerate(order)) if order else {}  # stored class index -> the table's
    for position, values in enumerate(frame.to_dict("records")):
        record = {"image": values["image"], "patient_id": values["patient_id"] or pd.NA,
                  "site": values.get("site") or pd.NA, "view": values.get("view") or pd.NA,
                  "split": values["split"] if isinstance(values["split"], str) else pd.NA,
                  "row": position, SOURCE_PROBLEMS: (),
                  **published_demographics(values.get("sex"), values.get("age"), unreadable)}
        if BOXES_COLUMN in values:  # finding boxes, as tfmed export-tfds writes them
            record[BOXES_COLUMN] = values[BOXES_COLUMN] or pd.NA
        positives = [table_index.get(int(v), int(v)) for v in values["labels"].split("|") if v != ""]
        unknown = [table_index.get(int(v), int(v)) for v in values.get("unknown", "").split("|") if v != ""]
        bad = [v for v in positives + unknown if not 0 <= v < len(names)]
        if bad:
            record[SOURCE_PROBLEMS] = ((f"label index {bad[0]} is outside the {len(names)} classes",
                                        "check the data set's label feature"),)
        both = sorted(set(positives) & set(unknown))
        if both:
            record[SOURCE_PROBLEMS] = ((f"label {names[both[0]]!r} is listed both as positive and as unknown",
                                        f"list it in {UNKNOWN_FEATURE} or in the labels, not in both"),)
        if task == "multilabel":
            record.update({LABEL_PREFIX + label: UNKNOWN_LABEL if i in unknown else int(i in positives)
                           for i, label in enumerate(names)})
        else:
            record["label"] = positives[0] if positives and not bad else pd.NA
        records.append(record)
    log_unreadable(where, unreadable)
    if task == "multilabel":
        boxes = bool(records) and BOXES_COLUMN in records[0]
        frame = label_frame(records, names, extra=(BOXES_COLUMN,) if boxes else ())
        if boxes:
            frame[BOXES_COLUMN] = frame[BOXES_COLUMN].astype("string")
        return frame
    frame = pd.DataFrame(records)
    frame["label"] = frame["label"].astype("Int64") if frame["label"].isna().any() else frame["label"].astype(np.int64)
    for column in ("image", "patient_id", "site", "view", "split", BOXES_COLUMN):
        if column in frame.columns:
            frame[column] = frame[column].astype("string")
    return frame


def _load(config: DataConfig, path: Path, root: Path | None, fragment: str) -> ImageTable:
    return load_tfds(str(path), [part for part in fragment.split("+") if part.strip()] or None,
                     data_dir=config.data_dir, manual_dir=config.manual_dir, image_feature=config.image_feature,
                     label_feature=config.label_feature, patient_feature=config.patient_feature,
                     classes=config.classes, task=config.task)


SOURCE = SourceKind("tfds", "a TFDS data set: NAME or NAME/CONFIG (in data.data_dir), or the folder of a prepared "
                            "data set such as tfmed export-tfds writes; #SPLIT picks splits",
                    needs_folder=False, load=_load, takes_fragment=True, names_data_set=True)
