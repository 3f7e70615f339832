"""Every data source becomes one :class:`~tfmed.data.table.ImageTable`.

Kinds (``DataConfig.source``):

* ``"pneumonia_mnist"`` (and any other name in :data:`EMBEDDED`):
  a dataset shipped inside tfmed (:mod:`tfmed.data.sources.embedded`).
* ``"medmnist"``: a MedMNIST-format ``.npz`` (``{split}_images``,
  ``{split}_labels``); ``path`` may end in ``#test`` to load only that split.
* ``"manifest"``: a CSV manifest (:mod:`tfmed.data.sources.manifest`).
* ``"folder"``: one sub-folder per class, or with ``filename_label_suffix``
  the label taken from the file name (``CHNCXR_0001_0.png`` -> 0).
* ``"dicom"``: one sub-folder per class of DICOM files; patient id from the
  PatientID tag, view from ViewPosition.
* ``"chestxray14"``: NIH ChestX-ray14's ``Data_Entry_2017.csv`` as published,
  14 findings as a multilabel task, splits from the publisher's list files
  (:mod:`tfmed.data.sources.chestxray14`).
* ``"chexpert"``: CheXpert's ``train.csv`` / ``valid.csv`` as published, 14
  observations as a multilabel task with a policy for uncertain labels
  (:mod:`tfmed.data.sources.chexpert`).
* ``"mimic_cxr"``: MIMIC-CXR-JPG's label, metadata and split files as
  published, the same 14 observations per image; ``#test`` keeps one of the
  publisher's splits (:mod:`tfmed.data.sources.mimic_cxr`).
* ``"padchest"``: PadChest's label CSV as published, the findings
  ``data.classes`` names as a multilabel task (:mod:`tfmed.data.sources.padchest`).
* ``"vindr_cxr"``: VinDr-CXR's ``train.csv`` as published for the VinBigData
  challenge, 14 findings boxed by three radiologists per image, as a
  multilabel task with the boxes (:mod:`tfmed.data.sources.vindr_cxr`).
* ``"luna16"``: LUNA16's ``candidates.csv`` / ``candidates_V2.csv`` as published,
  lung nodule candidates in its MetaImage CT scans, as volume rows with lesion
  centres (:mod:`tfmed.data.sources.luna16`).
* ``"rsna_pneumonia"``: the RSNA Pneumonia Detection Challenge's
  ``stage_2_train_labels.csv`` as published, lung opacity or not, with the
  opacity boxes (:mod:`tfmed.data.sources.rsna_pneumonia`).
* ``"siim_pneumothorax"``: the SIIM-ACR Pneumothorax Segmentation challenge's
  ``train-rle.csv`` as published, pneumothorax or not, with a box around each
  masked region (:mod:`tfmed.data.sources.siim_pneumothorax`).
* ``"tbx11k"``: the TBX11K folder as published (or Kaggle's TBX11K Simplified
  folder), healthy, sick but not tuberculosis, and tuberculosis with the
  radiologists' boxes, from the official train and validation splits; ``#val``
  keeps one (:mod:`tfmed.data.sources.tbx11k`).
* ``"merged"``: several of the above in one table (``data.parts``), labels
  matched by name, each part a site (:mod:`tfmed.data.sources.merged`).
* ``"tfds"``: a TensorFlow Datasets data set by name (``patch_camelyon``,
  ``NAME/CONFIG``) or the folder of a prepared one (as ``tfmed export-tfds``
  writes); ``#SPLIT`` picks TFDS splits (:mod:`tfmed.data.sources.tfds`).

:data:`SOURCES` maps each kind to its module's :class:`~tfmed.data.sources.base.SourceKind`;
a new kind is one new module here and one entry in that table.

On the command line :func:`parse_source_spec` turns ``"medmnist:x.npz#test"``,
``"manifest:m.csv"``, ``"folder:DIR"``, ``"dicom:DIR"``,
``"chestxray14:Data_Entry_2017.csv"``, ``"chexpert:CheXpert-v1.0-small/valid.csv"``,
``"mimic_cxr:mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz#test"``,
``"luna16:LUNA16/candidates_V2.csv#9"``, ``"tbx11k:TBX11K#val"``, ``"tfds:patch_camelyon#test"`` or a bare path into a :class:`~tfmed.config.DataConfig`.

Example:
    >>> table = load_source(parse_source_spec("pneumonia_mnist"))
    >>> table.classes, sorted(table.frame["split"].unique())
    (['normal', 'pneumonia'], ['train', 'val'])
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path

from tfmed.config import DataConfig
from tfmed.data.sources import (chestxray14, chexpert, dicom, folders, luna16, manifest, medmnist,
                                mimic_cxr, padchest, rsna_pneumonia, siim_pneumothorax, tbx11k, tfds,
                                vindr_cxr)
from tfmed.data.sources.base import SourceKind
from tfmed.data.sources.embedded import DATASETS as EMBEDDED
from tfmed.data.sources.medmnist import load_medmnist
from tfmed.data.sources.merged import load_merged
from tfmed.data.table import DataSourceError, ImageTable, remap_labels

SOURCES: dict[str, SourceKind] = {module.SOURCE.name: module.SOURCE
                                  for module in (manifest, folders, medmnist, dicom, chestxray14, chexpert,
                                                 mimic_cxr, padchest, vindr_cxr, luna16, rsna_pneumonia,
                                                 siim_pneumothorax, tbx11k, tfds)}

__all__ = ["EMBEDDED", "SOURCES", "DataSourceError", "SourceKind", "load_medmnist", "load_source",
           "parse_source_spec"]


def parse_source_spec(spec: str) -> DataConfig:
    """Turn a command-line source string into a :class:`DataConfig`.

    Accepted: a dataset name (``"pneumonia_mnist"``), ``"KIND:PATH"`` with
    KIND one of manifest, folder, medmnist, dicom, chestxray14, chexpert, mimic_cxr, padchest, vindr_cxr,
    luna16, rsna_pneumonia, siim_pneumothorax, tbx11k, tfds (``"medmnist:x.npz#test"``, ``"mimic_cxr:...chexpert.csv.gz#test"``,
    ``"tbx11k:TBX11K#val"`` and ``"tfds:NAME#test"`` load only that split, ``"luna16:candidates_V2.csv#9"``
    one subset), or a bare path (.csv -> manifest, .npz -> medmnist, a folder -> folder). The publishers'
    files of ChestX-ray14, CheXpert, MIMIC-CXR, PadChest, VinDr-CXR, LUNA16, RSNA, SIIM-ACR and TBX11K need
    their kind:
    ``"chexpert:train.csv"``.

    Example:
        >>> parse_source_spec("medmnist:data/chest.npz#test").path
        'data/chest.npz#test'
        >>> parse_source_spec("scans/manifest.csv").source
        'manifest'
        >>> parse_source_spec("chexpert:CheXpert-v1.0-small/valid.csv").source
        'chexpert'
    """
    spec = spec.strip()
    if spec in EMBEDDED:
        return DataConfig(source=spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCES and rest:
        return DataConfig(source=kind, path=rest)
    if sep and kind in SOURCES:
        raise DataSourceError(f"source {spec!r} names no path; write {kind}:PATH")
    if sep and re.fullmatch(r"[A-Za-z]\w+", kind) and not Path(spec).exists():  # a misspelt KIND (not C:\...)
        close = difflib.get_close_matches(kind.lower(), list(SOURCES), n=1)
        hint = f" (did you mean {close[0]}:{rest}?)" if close else ""
        raise DataSourceError(f"source {spec!r}: {kind!r} is not a kind of source{hint}; KIND:PATH takes a KIND "
                              f"among {', '.join(SOURCES)}")
    lowered = spec.lower().split("#")[0]
    if lowered.endswith(".csv"):
        return DataConfig(source="manifest", path=spec)
    if lowered.endswith(".npz"):
        return DataConfig(source="medmnist", path=spec)
    if Path(spec).is_dir():
        return DataConfig(source="folder", path=spec)
    raise DataSourceError(
        f"cannot tell what kind of source {spec!r} is. Use a dataset name "
        f"({', '.join(EMBEDDED)}), KIND:PATH with KIND one of {', '.join(SOURCES)}, "
        "a .csv manifest, a MedMNIST .npz file or an existing folder")


def spelt_out(config: DataConfig) -> DataConfig:
    """``config`` with a ``data.source`` written as ``KIND:PATH`` split into ``source: KIND`` and
    ``path: PATH``, as :func:`load_source` reads it; any other source as it is.

    Example:
        >>> from tfmed.config import DataConfig
        >>> spelt = spelt_out(DataConfig(source="medmnist:data/chest.npz#test"))
        >>> spelt.source, spelt.path
        ('medmnist', 'data/chest.npz#test')
    """
    if ":" in config.source and config.source.split(":", 1)[0] in SOURCES:
        parsed = parse_source_spec(config.source)
        return dataclasses.replace(config, source=parsed.source, path=parsed.path)
    return config


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
    config = spelt_out(config)
    if config.source in EMBEDDED:
        table = EMBEDDED[config.source].load()
        return _with_classes(table, config)
    if config.source == DataConfig.MERGED:  # a table of other sources, each loaded as on its own
        return load_merged(config, lambda part: load_source(part, base_dir))
    if config.source not in SOURCES:
        raise DataSourceError(f"data.source is {config.source!r}; use one of "
                              f"{', '.join(list(EMBEDDED) + list(SOURCES) + [DataConfig.MERGED])}")
    if not config.path:
        raise DataSourceError(f"data.source {config.source!r} needs data.path: "
                              + SOURCES[config.source].expects + _extra(config))
    kind = SOURCES[config.source]
    raw_path, _, fragment = config.path.partition("#") if kind.takes_fragment else (config.path, "", "")
    path = Path(raw_path)
    if base_dir is not None and not path.is_absolute() and not (kind.names_data_set and
                                                                 not (Path(base_dir) / path).exists()):
        path = Path(base_dir) / path
    root = Path(config.root) if config.root else None
    if root is not None and base_dir is not None and not root.is_absolute():
        root = Path(base_dir) / root
    if not path.exists() and not kind.names_data_set:
        unsplit, _, fragment = str(path).rpartition("#")
        if unsplit and Path(unsplit).exists():  # a #SPLIT fragment where this kind takes none
            why = {"manifest": "it reads each row's split from the manifest's split column, if any",
                   "folder": "it gives no split: split.method makes them"}.get(
                config.source, "it reads its split from the publisher's files, if any")
            raise DataSourceError(f"{config.path}: data.source {config.source!r} takes no #{fragment} fragment "
                                  f"({why}); give the path without it")
        raise DataSourceError(f"{path}: not found. data.source {config.source!r} expects "
                              + kind.expects + _extra(config))
    if kind.needs_folder and not path.is_dir():
        raise DataSourceError(f"{path}: data.source {config.source!r} needs a folder, got a file. "
                              + kind.expects)
    return kind.load(config, path, root, fragment)


def _extra(config: DataConfig) -> str:
    return f". {config.missing_message}" if config.missing_message else ""


def _with_classes(table: ImageTable, config: DataConfig) -> ImageTable:
    """``table`` with the classes ``data.classes`` names: its own names in another order (the labels follow
    them), or names for classes that are only numbers (``0``, ``1``); other names are refused."""
    wanted, own = list(config.classes or []), list(table.classes)
    if not wanted or wanted == own:
        return table
    if len(wanted) != len(own):
        raise DataSourceError(f"data.classes lists {len(wanted)} names but {table.source} has {len(own)} classes "
                              f"{own}")
    if sorted(wanted) == sorted(own):  # the same names in another order: the labels follow their names
        table.frame = remap_labels(table.frame, [wanted.index(name) for name in own])
    elif own != [str(k) for k in range(len(own))]:
        raise DataSourceError(f"data.classes lists {wanted}, but {table.source} names its classes {own}; list "
                              "those names (in the order you want), or leave data.classes out")
    table.classes = wanted
    return table
