"""Experiment configuration: dataclasses that load from and save to YAML.

Configuration is validated once, here, at the edge: an unknown key, a wrong
type or a value outside its allowed set raises :class:`ConfigError` naming the
file and the dotted key at fault. This module is the one place where allowed
values live: choices are ``Literal`` types (read them with :func:`choices`),
and every section checks its ranges when it is built, from YAML or in Python.
A setting that the chosen mode does not use is rejected, never ignored.

Example:
    >>> cfg = ExperimentConfig.from_dict({"name": "demo", "data": {"source": "pneumonia_mnist"}})
    >>> cfg.preprocess.image_size
    224
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from tfmed.errors import TfmedError

Task = Literal["binary", "multiclass", "multilabel"]
# A multilabel target that is not known for an image (CheXpert's uncertain labels under U-Ignore, a
# finding one of several merged data sets did not grade): left out of the loss, of class weights,
# of the SVM fitted for that label and of every metric of that label.
UNKNOWN_LABEL = -1
ThresholdMethod = Literal["youden", "sensitivity", "specificity", "fixed"]
Subgroup = Literal["site", "view", "sex", "age"]
RecalibrationMethod = Literal["none", "logistic", "intercept", "temperature"]
# the methods that choose a threshold from validation data ("fixed" takes it as given)
THRESHOLD_TARGET_METHODS = tuple(m for m in typing.get_args(ThresholdMethod) if m != "fixed")


class ConfigError(TfmedError):
    """A configuration value is missing, unknown or invalid."""


class UnusedSettingError(ConfigError):
    """A valid setting that the experiment would not use, so it is refused rather than ignored.

    ``key`` is its dotted place (e.g. ``model.finetune.momentum``): a saved run made before the
    refusal reads it as its default (see :meth:`ExperimentConfig.from_run`).
    """

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def choices(cls, name: str) -> tuple:
    """The allowed values of the ``Literal`` field ``name`` of config class ``cls``.

    Example:
        >>> choices(SplitConfig, "method")
        ('predefined', 'patient', 'kfold')
    """
    hint = _literal_hint(cls, name)
    if hint is None:
        raise TypeError(f"{cls.__name__}.{name} is not a field with a fixed set of choices")
    return typing.get_args(hint)


@functools.cache
def _type_hints(cls) -> dict:
    """``typing.get_type_hints(cls)``, worked out once per class (each section checks its fields on every build)."""
    return typing.get_type_hints(cls)


def _literal_hint(cls, name: str):
    """The Literal inside ``name``'s type (through Optional and list), or None."""
    hint = _type_hints(cls)[name]
    while True:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            rest = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if len(rest) != 1:
                return None
            hint = rest[0]
        elif origin is list:
            hint = typing.get_args(hint)[0]
        else:
            return hint if origin is Literal else None


MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's seed range
SEED_RANGE = f"a seed must be a whole number from 0 to {MAX_SEED}"


class _Section:
    """A config section: checks its values when built (from YAML or in Python) and on :meth:`check`.

    ``KEY`` is the section's dotted place in an experiment file, used in messages.
    """

    KEY: ClassVar[str] = ""
    # the keys its experiment file wrote (set by _build; none for a section built in Python), see set_fields
    _written: ClassVar[frozenset] = frozenset()

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the dotted key of the first invalid value."""
        for item in dataclasses.fields(self):
            if not _finite(getattr(self, item.name)):
                self._fail(item.name, "it must be a finite number, not NaN or infinity")
        for item in dataclasses.fields(self):
            if _literal_hint(type(self), item.name) is None:
                continue
            allowed = choices(type(self), item.name)
            value = getattr(self, item.name)
            for one in (value if isinstance(value, list) else [value]):
                if one is None and value is None and _optional(type(self), item.name):
                    continue
                if isinstance(one, bool) or one not in allowed:
                    self._fail(item.name, "allowed: " + ", ".join(map(str, allowed))
                               + (" (or leave it out)" if _optional(type(self), item.name) else ""))

    def _fail(self, name: str, message: str):
        raise ConfigError(f"{self.KEY}{name} is {as_written(getattr(self, name))}; {message}")

    def _unused(self, name: str, message: str):
        """Refuse setting ``name``, which this experiment would not use."""
        raise UnusedSettingError(f"{self.KEY}{name} is {as_written(getattr(self, name))}; {message}", name)

    def _check_seed(self):
        """Refuse a ``seed`` outside NumPy's range, naming the section's key."""
        if not 0 <= self.seed <= MAX_SEED:
            self._fail("seed", SEED_RANGE)


def _finite(value) -> bool:
    """Whether ``value`` holds no NaN or infinity (in lists too).

    Example:
        >>> _finite([[40.0, 400.0]]), _finite([0.1, float("nan")])
        (True, False)
    """
    if isinstance(value, float):
        return math.isfinite(value)
    return all(_finite(item) for item in value) if isinstance(value, list) else True


def _optional(cls, name: str) -> bool:
    return type(None) in typing.get_args(_type_hints(cls)[name])


@dataclass
class DataConfig(_Section):
    """Where the images come from.

    source: "pneumonia_mnist" (embedded), or a kind: "manifest", "folder",
        "medmnist", "dicom", "chestxray14" (NIH ChestX-ray14's
        Data_Entry_2017.csv), "chexpert" (CheXpert's train.csv / valid.csv),
        "mimic_cxr" (MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv.gz, with its
        metadata and split files beside it; #test keeps one split),
        "padchest" (PadChest's PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv),
        "vindr_cxr" (VinDr-CXR's train.csv of the VinBigData challenge),
        "luna16" (LUNA16's candidates.csv / candidates_V2.csv: CT scans with
        candidate centres, read through views), "rsna_pneumonia" (the RSNA
        Pneumonia Detection Challenge's stage_2_train_labels.csv),
        "siim_pneumothorax" (the SIIM-ACR Pneumothorax Segmentation
        challenge's train-rle.csv), "tbx11k"
        (the TBX11K folder: its official train and val lists, #val keeps
        one), "tfds"
        (a TensorFlow Datasets data set: data.path NAME[/CONFIG][#SPLIT] or a folder).
        A string "medmnist:PATH.npz#split" also works. "merged": several
        sources in one table, listed in parts (see below).
    path: CSV file, folder or .npz file for the non-embedded kinds (refused
        with "pneumonia_mnist", which reads no file, and with a "KIND:PATH"
        source, which names its path).
    root: folder that manifest paths are relative to (default: CSV's folder;
        chestxray14: images/ next to the CSV, else the CSV's folder, searched
        with its sub-folders; chexpert: the folder above the CSV's; mimic_cxr:
        the folder holding files/, by default the label file's). Refused by the
        kinds that read no relative paths (folder, dicom, medmnist, tbx11k, tfds).
    label_columns, patient_column: source "manifest" only: its label
        column(s) (several means multilabel) and patient column.
    filename_label_suffix: source "folder" only: labels from NAME_<label> file names.
    task: "binary" | "multiclass" | "multilabel" | None (inferred; refused
        with "pneumonia_mnist", whose task is binary).
    classes: class names in label order (optional; inferred when omitted).
    exclude_bad_rows: drop rows that fail validation (listed in the run's
        output) instead of stopping with the report.
    max_image_pixels: largest image read, in pixels (width x height, all
        frames); a larger one is a validation problem, found from its header
        without decoding it. Default 100 megapixels (a 4096 x 5120 mammogram
        is 21); null: no limit.
    uncertain: sources "chexpert" and "mimic_cxr" only: what an uncertain label (-1.0) becomes.
        "zeros" (U-Zeros, default: negative), "ones" (U-Ones: positive) or
        "ignore" (U-Ignore: unknown, left out of the loss, the class weights
        and that label's metrics) for every label, or a mapping label ->
        policy, e.g. {Atelectasis: ones, Edema: ones, Cardiomegaly: ignore}
        (labels not in it: zeros).
    frontal_only: sources "chexpert", "mimic_cxr" and "padchest" only: keep
        frontal views (mimic_cxr: ViewPosition PA or AP; padchest: Projection PA,
        AP or AP_horizontal); the others are listed as skipped in the validation
        report.
    data_dir: source "tfds" only: TFDS's data folder (default: TFDS's own,
        ~/tensorflow_datasets).
    manual_dir: source "tfds" only: the publisher's files for a builder that
        needs a manual download.
    image_feature, label_feature, patient_feature: source "tfds" only: the
        features to read (defaults: image, label (else labels), patient_id
        when present; see tfmed.data.sources.tfds).

    min_readers: source "vindr_cxr" only: how many of an image's radiologists
        must mark a finding for it to be positive (default 1: any of them; 2: a
        majority of the three).

    physician_labelled_only: source "padchest" only: keep the images whose
        findings a physician read from the report (MethodLabel Physician), not a
        model; the others are listed as skipped in the validation report.

    missing_message: a sentence added to the error when data.path is not found,
        e.g. where to download the data set and under which licence (the shipped
        recipes for public data sets carry one).

    negatives_per_positive: source "luna16" only: keep every nodule candidate
        and this many non-nodule candidates per nodule, drawn at random with a
        fixed seed (null, the default: every candidate).

    parts: source "merged" only: the sources to merge, each a data section of
        its own (source, path and that source's settings) with an optional name
        (default: its source kind) and rename (its class or label names -> the
        merged ones). Each part's name becomes its images' site where they have
        none, and prefixes its patient ids; classes then names the merged
        classes or labels (default: all, in the order first met); a merged label
        that a part does not grade is unknown for that part's images.

    patient_pattern: source "folder" only: a regular expression searched in each
        file's path below data.path ("/"-separated); the patient id is its group
        "patient", else its first group, else the whole match, e.g.
        '(person\\d+)_' for PNEUMONIA/person1_bacteria_1.jpeg. A file it does not
        match is reported.

    The publishers' sources "chestxray14", "chexpert", "mimic_cxr", "padchest",
    "vindr_cxr", "luna16", "rsna_pneumonia", "siim_pneumothorax" and "tbx11k"
    read their own columns: label_columns, patient_column and
    filename_label_suffix are refused with them; task may only be multilabel
    (chestxray14, chexpert, mimic_cxr, padchest, vindr_cxr) or binary (luna16,
    rsna_pneumonia, siim_pneumothorax), and
    tbx11k's follows from data.classes (root refused: path is its folder).
    """

    KEY: ClassVar[str] = "data."

    source: str = "pneumonia_mnist"
    path: str | None = None
    root: str | None = None
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    patient_column: str = "patient_id"
    task: Task | None = None
    classes: list[str] | None = None
    filename_label_suffix: bool = False
    patient_pattern: str | None = None
    exclude_bad_rows: bool = False
    missing_message: str | None = None
    # the same as tfmed.data.decode.DEFAULT_MAX_PIXELS (config sits below data and cannot import it)
    max_image_pixels: int | None = 100_000_000
    # "ones" | "zeros" | "ignore" | {label: policy}. Not typed with Literal: the YAML loader would then
    # refuse "ignore" and a bad mapping with a message about the whole value; check() names the cause.
    uncertain: str | dict[str, Any] = "zeros"
    frontal_only: bool = False
    data_dir: str | None = None
    manual_dir: str | None = None
    image_feature: str | None = None
    label_feature: str | None = None
    patient_feature: str | None = None
    negatives_per_positive: int | None = None
    min_readers: int = 1
    physician_labelled_only: bool = False
    parts: list["DataPartConfig"] = field(default_factory=list)

    UNCERTAIN_POLICIES: ClassVar[tuple[str, ...]] = ("ones", "zeros", "ignore")
    # settings read only by some source kinds (other kinds refuse them when set)
    SOURCE_SETTINGS: ClassVar[dict[str, tuple[str, ...]]] = {
        "uncertain": ("chexpert", "mimic_cxr"), "frontal_only": ("chexpert", "mimic_cxr", "padchest"),
        "data_dir": ("tfds",),
        "manual_dir": ("tfds",), "image_feature": ("tfds",), "label_feature": ("tfds",),
        "patient_feature": ("tfds",), "patient_pattern": ("folder",), "negatives_per_positive": ("luna16",),
        "min_readers": ("vindr_cxr",), "physician_labelled_only": ("padchest",),
        "label_columns": ("manifest",), "patient_column": ("manifest",), "filename_label_suffix": ("folder",),
        "root": ("manifest", "chestxray14", "chexpert", "mimic_cxr", "padchest", "rsna_pneumonia",
                 "siim_pneumothorax", "vindr_cxr", "luna16")}
    # the data sets shipped with tfmed (tfmed.data.sources.embedded): they read no file and no column
    EMBEDDED_SOURCES: ClassVar[tuple[str, ...]] = ("pneumonia_mnist",)
    # sources whose rows are volumes with lesion centres: they need views.enabled (views.center: lesion)
    VOLUME_SOURCES: ClassVar[tuple[str, ...]] = ("luna16",)
    # the publishers' files: their columns are known, so the manifest's column settings are refused
    PUBLISHED_SOURCES: ClassVar[tuple[str, ...]] = ("chestxray14", "chexpert", "mimic_cxr", "padchest", "vindr_cxr",
                                                    "luna16", "rsna_pneumonia", "siim_pneumothorax", "tbx11k")
    # the publishers' folders whose task follows from data.classes (two: binary, more: multiclass)
    CLASS_COUNT_SOURCES: ClassVar[tuple[str, ...]] = ("tbx11k",)
    # the publishers' multilabel and binary files
    MULTILABEL_SOURCES: ClassVar[tuple[str, ...]] = ("chestxray14", "chexpert", "mimic_cxr", "padchest",
                                                     "vindr_cxr")
    BINARY_SOURCES: ClassVar[tuple[str, ...]] = ("luna16", "rsna_pneumonia", "siim_pneumothorax")
    MERGED: ClassVar[str] = "merged"
    # what a merged data section may set besides its parts (the rest belongs in a part)
    MERGED_SETTINGS: ClassVar[tuple[str, ...]] = ("source", "parts", "classes", "exclude_bad_rows", "max_image_pixels")

    def check(self) -> None:
        super().check()
        self.path, self.root = _home_expanded(self.path), _home_expanded(self.root)
        self._check_parts()
        if self.classes is not None and len(set(self.classes)) < len(self.classes):
            twice = next(name for name in self.classes if self.classes.count(name) > 1)
            self._fail("classes", f"it lists {twice!r} twice; give each class once")
        if not self.label_columns:
            self._fail("label_columns", "list at least one label column, e.g. [label]")
        if self.max_image_pixels is not None and self.max_image_pixels <= 0:
            self._fail("max_image_pixels", "it must be a number of pixels > 0, e.g. 100000000 "
                       "(or null for no limit)")
        kind, spec, _ = self.source.partition(":")
        changed = set_fields(self)
        if spec and self.path is not None:
            self._unused("path", f"data.source {self.source!r} already names its path after the colon; remove "
                         f"data.path, or write data.source: {kind} with data.path")
        if kind in self.EMBEDDED_SOURCES:
            for name in ("path", "task", "missing_message"):
                if name in changed:
                    self._unused(name, f"data.source {kind} is shipped with tfmed, so it reads no file and its task "
                                 "is fixed; remove it (for your own MedMNIST file use data.source: medmnist with "
                                 "data.path)")
        if kind in self.PUBLISHED_SOURCES:
            for name in ("label_columns", "patient_column", "filename_label_suffix"):
                if name in changed:
                    self._unused(name, f"data.source {kind} reads the publisher's columns itself and does not "
                                 "use it; remove it (choose labels with data.classes)")
        if kind in self.MULTILABEL_SOURCES and self.task not in (None, "multilabel"):
            self._unused("task", f"data.source {kind} is multilabel; remove data.task")
        if kind in self.BINARY_SOURCES and self.task not in (None, "binary"):
            self._unused("task", f"data.source {kind} is binary; remove data.task")
        if kind in self.CLASS_COUNT_SOURCES and self.task is not None:
            self._unused("task", f"data.source {kind} is binary or multiclass by the classes data.classes names; "
                         "remove data.task")
        if kind in self.CLASS_COUNT_SOURCES and self.root is not None:
            self._unused("root", f"data.source {kind} reads the publisher's folder that data.path names; remove "
                         "data.root")
        if kind == "tfds":
            for name, instead in (("label_columns", "data.label_feature"), ("patient_column", "data.patient_feature"),
                                  ("filename_label_suffix", "data.label_feature"), ("root", "data.path")):
                if name in changed:
                    self._unused(name, f"data.source tfds reads TFDS features, not files or columns, and does not "
                                 f"use it; remove it (use {instead})")
        for name, kinds in self.SOURCE_SETTINGS.items():
            if name in changed and kind not in kinds:
                self._unused(name, f"it is set, but only data.source {_either(kinds)} uses it and "
                             f"data.source is {kind!r}; remove it")
        if self.min_readers < 1:
            self._fail("min_readers", "it must be a whole number >= 1: the radiologists who must mark a finding "
                       "(1: any of them)")
        if self.negatives_per_positive is not None and self.negatives_per_positive < 1:
            self._fail("negatives_per_positive", "it must be a whole number >= 1, e.g. 10 (or null for every "
                       "candidate)")
        if self.patient_pattern is not None:
            try:
                re.compile(self.patient_pattern)
            except re.error as error:
                self._fail("patient_pattern", f"it is not a regular expression ({error}); write e.g. "
                           "'(person\\d+)_' to take person1 from person1_bacteria_1.jpeg")
        if isinstance(self.uncertain, dict):
            for label, policy in self.uncertain.items():
                problem = self.uncertain_policy_problem(policy)
                if problem:
                    raise ConfigError(f"{self.KEY}uncertain.{label} is {policy!r}; {problem}")
        elif self.uncertain_policy_problem(self.uncertain):
            self._fail("uncertain", self.uncertain_policy_problem(self.uncertain)
                       + ", or a mapping label -> policy, e.g. {Edema: ones}")

    def _check_parts(self) -> None:
        """A merged section: two or more parts of plain sources with distinct names, and no setting of its own
        that belongs in a part; any other section: no parts."""
        if self.source != self.MERGED:
            if self.parts:
                raise ConfigError(f"{self.KEY}parts is set, but only data.source {self.MERGED} merges parts; set "
                                  f"data.source: {self.MERGED} or remove data.parts")
            return
        for name in set_fields(self):
            if name not in self.MERGED_SETTINGS:
                self._fail(name, f"data.source {self.MERGED} reads its data from data.parts; move it into the "
                           "part it concerns")
        if len(self.parts) < 2:
            raise ConfigError(f"{self.KEY}parts lists {len(self.parts)} source(s); data.source {self.MERGED} merges "
                              "two or more, e.g. [{source: chexpert, path: ...}, {source: mimic_cxr, path: ...}]")
        names = [part.part_name for part in self.parts]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"{self.KEY}parts: two parts are named {repeated[0]!r}; give each a name of its own "
                              "(name: ...), which becomes its images' site")

    def task_before_data(self) -> str | None:
        """The task that this section fixes before any data is read (None when only the data can tell):
        data.task, a publisher's multilabel or binary files, TBX11K's data.classes, or merged parts of those.

        Example:
            >>> DataConfig(source="chestxray14", path="Data_Entry_2017.csv").task_before_data()
            'multilabel'
        """
        kind = self.source.split(":")[0]
        if self.task is not None:
            return self.task
        if kind in self.MULTILABEL_SOURCES:
            return "multilabel"
        if kind in self.BINARY_SOURCES + self.EMBEDDED_SOURCES:
            return "binary"
        if kind in self.CLASS_COUNT_SOURCES:  # two classes: binary; more, or all of them (no data.classes): multiclass
            if self.classes is None or len(self.classes) > 2:
                return "multiclass"
            return "binary" if len(self.classes) == 2 else None
        if kind == self.MERGED:
            tasks = {part.task_before_data() for part in self.parts}
            if "multilabel" in tasks:  # parts of another task beside it are refused when loaded
                return "multilabel"
            if tasks <= {"binary", "multiclass"} and self.classes:  # single-label parts: the merged classes tell
                return "binary" if len(self.classes) == 2 else "multiclass"
        return None

    @classmethod
    def uncertain_policy_problem(cls, policy) -> str | None:
        """Why ``policy`` cannot be a CheXpert uncertainty policy (None when it can).

        Example:
            >>> DataConfig.uncertain_policy_problem("ones") is None
            True
        """
        if isinstance(policy, str) and policy in cls.UNCERTAIN_POLICIES:
            return None
        return ("use ones (U-Ones: uncertain counts as positive), zeros (U-Zeros: as negative) or "
                "ignore (U-Ignore: left out of the loss and the metrics)")


@dataclass
class DataPartConfig(DataConfig):
    """One source of a merged data section (``data.parts``): a data section of its own, plus

    name: the part's name (default: its source kind): its images' site where
        they have none, and the prefix of its patient ids (``nih:00000001``).
    rename: the part's class or label names -> the merged section's, e.g.
        {Effusion: Pleural Effusion} for ChestX-ray14 beside CheXpert.

    Example:
        >>> DataPartConfig(source="chexpert", path="valid.csv").part_name
        'chexpert'
    """

    KEY: ClassVar[str] = "data.parts[]."

    name: str | None = None
    rename: dict[str, str] = field(default_factory=dict)

    # settings of the merged table as a whole: set on the merged section, not on a part
    WHOLE_TABLE: ClassVar[tuple[str, ...]] = ("exclude_bad_rows", "max_image_pixels")

    def check(self) -> None:
        if self.source.partition(":")[0] in (self.MERGED,) + self.VOLUME_SOURCES:
            self._fail("source", "a part is a source of 2-D images (a merged section cannot hold another, nor "
                       "volumes with candidate centres)")
        for name in set(self.WHOLE_TABLE) & set(set_fields(self)):
            self._fail(name, "it applies to the merged table as a whole: set it on data, beside data.parts")
        super().check()

    @property
    def part_name(self) -> str:
        """The name the part goes by: ``name``, else its source kind."""
        return self.name or self.source.partition(":")[0]


@dataclass
class SplitConfig(_Section):
    """How rows are divided into train / val / test.

    method: "predefined" (use the source's split column, making missing
        splits by patient: test_fraction and val_fraction above 0 are refused
        for a split the source gives), "patient" (stratified by patient: test first, then
        val with the same class mix, rest train) or "kfold" (stratified group
        k-fold over train+val, test held out).
    final: with k-fold, the model that scores the test split: "refit" (one model
        refit on train+val) or "bag" (the k fold models kept and their scores
        averaged).
    test_sites: the sites (the data's ``site`` values, e.g. a hospital) whose
        images form the test split whole: an external test of another site than
        training. With method "patient" (val carved from the other sites) or
        "kfold" (folds over the other sites); test_fraction is then not used.
    near_duplicate_rms: images whose 16 x 16 grey fingerprints differ by at
        most this many grey levels (root mean square, 0-255) are near-identical
        (see tfmed.data.near_duplicates): splits that tfmed makes keep them
        together, and a split from the source that parts them is reported.
        null: no check.
    """

    KEY: ClassVar[str] = "split."

    method: Literal["predefined", "patient", "kfold"] = "predefined"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    folds: int = 5
    seed: int = 0
    final: Literal["refit", "bag"] = "refit"
    near_duplicate_rms: float | None = 4.0
    test_sites: list[str] = field(default_factory=list)

    def check(self) -> None:
        super().check()
        if self.near_duplicate_rms is not None and not self.near_duplicate_rms >= 0:
            self._fail("near_duplicate_rms", "it must be a number of grey levels >= 0, or null to skip the check")
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                self._fail(name, "it must be in [0, 1)")
        if self.folds < 2:
            self._fail("folds", "it must be at least 2")
        self._check_seed()
        if self.final == "bag" and self.method != "kfold":
            self._fail("final", "bagging keeps the k fold models, so it needs split.method: kfold")
        if self.test_sites and self.method == "predefined":
            self._fail("test_sites", "it makes the test split of those sites, while split.method predefined "
                       "keeps the source's split; use split.method patient or kfold")
        if self.test_sites and "test_fraction" in set_fields(self):
            self._unused("test_fraction", "it is set, but split.test_sites gives the test split (those sites' "
                         "images, whole); remove it")
        for name in ("folds", "final"):
            if self.method != "kfold" and name in set_fields(self):
                self._unused(name, f"it is set, but only split.method kfold makes folds (method is "
                             f"{self.method!r}); remove it, or set split.method: kfold")
        if self.method == "kfold" and self.val_fraction > 0 and "val_fraction" in set_fields(self):
            self._unused("val_fraction", "it is set, but split.method kfold makes no val split (train and val are "
                         "pooled into the folds, and thresholds come from their out-of-fold scores); remove it")


@dataclass
class PreprocessConfig(_Section):
    """Intensity handling and resizing, identical for training and inference.

    intensity: "minmax" (per image to [0, 255]), "minmax_dataset" (train-split
        min/max to [0, 255]), "histogram" (each image's percentiles mapped to a
        standard scale learnt on the train split, Nyul & Udupa 1999),
        "standardize" (per-channel mean/std of the train split), "mean_image"
        (subtract the train mean image), "window" (CT HU windows to [0, 255])
        or "none". Standardised and mean-subtracted images
        are then placed at ImageNet's pixel mean/std, the 0-255 scale every
        backbone's own ImageNet preprocessing expects.
    windows: [[center, width], ...]; one window is replicated to 3 channels,
        three windows become R, G, B.
    resize: "plain" or "pad" (aspect-preserving, zero padded).
    """

    KEY: ClassVar[str] = "preprocess."

    image_size: int = 224
    channels: Literal[1, 3] = 3
    intensity: Literal["minmax", "minmax_dataset", "histogram", "standardize", "mean_image", "window",
                       "none"] = "minmax"
    windows: list[list[float]] = field(default_factory=list)
    resize: Literal["plain", "pad"] = "plain"

    def check(self) -> None:
        super().check()
        if self.image_size < 8:
            self._fail("image_size", "it must be at least 8 pixels")
        if self.intensity == "window" and len(self.windows) not in (1, 3):
            self._fail("windows", "intensity 'window' needs one [center, width] window (replicated to "
                                  "3 channels) or three (R, G, B)")
        for i, window in enumerate(self.windows):
            if len(window) != 2 or window[1] <= 0:
                raise ConfigError(f"{self.KEY}windows[{i}] is {window}; write [center, width] with "
                                  "width > 0, e.g. [-600, 1500]")
        if self.windows and self.intensity != "window":
            self._unused("windows", f"only intensity 'window' reads them, and preprocess.intensity is "
                         f"{self.intensity!r}; set intensity: window or remove them")


# intensities that leave images on the 0-255 pixel scale where augmentation and test-time views act
PIXEL_SCALE_INTENSITIES = ("minmax", "minmax_dataset", "histogram", "window")
# intensities that scale each image by its own values (the others treat all images alike)
PER_IMAGE_INTENSITIES = ("minmax", "histogram")
# augmentations that clip to the 0-255 pixel scale, so only for PIXEL_SCALE_INTENSITIES
PIXEL_SCALE_AUGMENTS = ("brightness", "contrast", "gamma", "noise", "clahe")


def check_pixel_scale_augments(augment, intensity: str) -> None:
    """Refuse augmentations that clip to 0-255 where ``intensity`` leaves raw values (16-bit, Hounsfield units).

    Example:
        >>> check_pixel_scale_augments(AugmentConfig(brightness=0.1), "standardize")
        Traceback (most recent call last):
        tfmed.config.ConfigError: augment.brightness works on the 0-255 pixel scale ...
    """
    on_pixels = [name for name in PIXEL_SCALE_AUGMENTS if getattr(augment, name)]
    if augment.enabled and on_pixels and intensity not in PIXEL_SCALE_INTENSITIES:
        keys = ", ".join(f"augment.{name}" for name in on_pixels)
        raise ConfigError(f"{keys} work{'s' if len(on_pixels) == 1 else ''} on the 0-255 pixel scale (values beyond "
                          "it are clipped, so 16-bit or Hounsfield values would flatten), which preprocess.intensity "
                          f"{intensity!r} does not give before normalising; remove {keys} or use intensity "
                          f"{', '.join(PIXEL_SCALE_INTENSITIES)}")
# intensities that need no train-split statistics, so that 2-D views cut from volumes can use them
VIEW_INTENSITIES = ("window", "minmax", "none")
PlaneSet = Literal["orthogonal", "ciompi9", "adjacent"]
PLANE_COUNTS = {"orthogonal": 3, "ciompi9": 9, "adjacent": 1}


@dataclass
class ViewsConfig(_Section):
    """2.5-D views of CT/MR volumes (Ciompi et al. 2015): 2-D planes cut through a lesion.

    With ``enabled: true`` every row of the data is a volume (a DICOM series
    folder, or a NIfTI, MetaImage or NRRD file, see data_manifests/README.md) and the model sees
    2-D views of it, each going through the usual preprocessing (window,
    resize) into the ImageNet backbone.

    planes: "orthogonal" (axial, coronal, sagittal), "ciompi9" (those three
        plus the six diagonal planes of the cube) or "adjacent" (one view whose
        R, G, B channels are three neighbouring axial slices).
    center: "lesion" (the row's centre columns, in mm or voxels) or "volume"
        (the centre of the volume).
    patch_mm: side of each square view in mm.
    spacing_mm: pixel size of the views in mm; volumes are resampled to this
        isotropic spacing as the views are cut (patch_mm / spacing_mm pixels,
        then resized to preprocess.image_size).
    slice_gap_mm: distance between the adjacent slices (planes "adjacent"
        only; default: the volume's voxel spacing along the head-foot axis,
        so the three are neighbouring axial slices).

    Example:
        >>> ViewsConfig(enabled=True, patch_mm=48, spacing_mm=0.75).patch_pixels
        64
    """

    KEY: ClassVar[str] = "views."

    enabled: bool = False
    planes: PlaneSet = "orthogonal"
    center: Literal["lesion", "volume"] = "lesion"
    patch_mm: float = 50.0
    spacing_mm: float = 1.0
    slice_gap_mm: float | None = None

    def check(self) -> None:
        super().check()
        changed = [name for name in set_fields(self) if name != "enabled"]
        if not self.enabled and changed:
            self._unused(changed[0], "it is set but views.enabled is false; set views.enabled: true or remove it")
        for name in ("patch_mm", "spacing_mm"):
            if not getattr(self, name) > 0:
                self._fail(name, "it must be a length in mm > 0")
        if self.patch_pixels < 8:
            self._fail("patch_mm", f"patch_mm / spacing_mm gives {self.patch_pixels} pixels; a view needs at "
                       "least 8 (make the patch larger or the spacing finer)")
        if self.slice_gap_mm is not None:
            if self.planes != "adjacent":
                self._unused("slice_gap_mm", "only planes: adjacent uses it; remove it")
            if not self.slice_gap_mm > 0:
                self._fail("slice_gap_mm", "it must be a distance in mm > 0 (or null: the volume's slice spacing)")

    @property
    def patch_pixels(self) -> int:
        """Side of each view in pixels before the resize: patch_mm / spacing_mm, rounded."""
        return int(round(self.patch_mm / self.spacing_mm))

    @property
    def count(self) -> int:
        """How many views each volume gives (0 when views are off)."""
        return PLANE_COUNTS[self.planes] if self.enabled else 0


@dataclass
class AugmentConfig(_Section):
    """Training-only augmentation; every switch can be turned off.

    hflip is off by default: left-right flips change anatomy (heart side) in
    chest X-rays. ``gamma`` (log-gamma range), ``blur_sigma`` (pixels) and
    ``noise`` (standard deviation, 0-255 scale) imitate another scanner or
    protocol: a model that saw them in training holds up better on images from
    another hospital. The blur is applied at ``preprocess.image_size``, so an
    image upsampled from 28 to 96 px needs a sigma of about 3.4 to imitate a
    1 px blur of the original. With 2-D views of volumes (``views``),
    ``view_rotation_degrees`` turns the planes by a random angle in that range
    about the patient's cranio-caudal axis through the centre, and
    ``center_jitter_mm`` moves the centre by up to that much along each axis.
    """

    KEY: ClassVar[str] = "augment."

    enabled: bool = True
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    crop_from: int | None = None
    rotation_degrees: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    blur_sigma: float = 0.0
    noise: float = 0.0
    clahe: bool = False
    view_rotation_degrees: float = 0.0
    center_jitter_mm: float = 0.0

    def check(self) -> None:
        super().check()
        if self.view_rotation_degrees > 180:
            self._fail("view_rotation_degrees", "give a range in degrees, at most 180 (any angle)")
        for name in ("rotation_degrees", "brightness", "contrast", "gamma", "blur_sigma", "noise",
                     "view_rotation_degrees", "center_jitter_mm"):
            if getattr(self, name) < 0:
                self._fail(name, "it must be >= 0 (0 turns it off)")
        changed = [name for name in set_fields(self) if name != "enabled"]
        if not self.enabled and changed:
            self._unused(changed[0], "it is set but augment.enabled is false; set augment.enabled: true or remove it")
        on = [item.name for item in dataclasses.fields(self) if item.name != "enabled"
              and getattr(self, item.name) != item.default]
        if self.enabled and "enabled" in self._written and not on:
            self._unused("enabled", "it is true but every transform is off, so the training images are used as they "
                         "are; turn one on (e.g. rotation_degrees, gamma, noise, crop_from) or remove it")
        if self.contrast >= 1:
            self._fail("contrast", "give a contrast range below 1, e.g. 0.1 for factors 0.9-1.1")
        limits = {"rotation_degrees": (180.0, "a rotation range in degrees, at most 180 (any angle)"),
                  "brightness": (1.0, "a brightness range as a fraction of 255, at most 1, e.g. 0.1"),
                  "gamma": (1.0, "a log-gamma range in [0, 1], e.g. 0.3 for gamma 0.74-1.35"),
                  "blur_sigma": (5.0, "a blur sigma in pixels, at most 5"),
                  "noise": (64.0, "a noise standard deviation on the 0-255 scale, at most 64")}
        for name, (limit, what) in limits.items():
            if getattr(self, name) > limit:
                self._fail(name, f"give {what}")


def _one_pixel_shift(image_size: int) -> float:
    """The shift (a fraction of ``image_size``, 3 significant digits, rounded up) that moves the image 1 pixel.

    Example:
        >>> _one_pixel_shift(32), _one_pixel_shift(2048)
        (0.0313, 0.000489)
    """
    scale = 10 ** (2 - math.floor(math.log10(1 / image_size)))
    return math.ceil(scale / image_size) / scale


@dataclass
class TTAConfig(_Section):
    """Test-time augmentation: each image is scored in several fixed views and the scores averaged.

    The views are the image itself plus, for each setting that is on: shifts by
    ``shift`` of the image size left, right, up and down (4 views); rotations by
    +/- ``rotation_degrees`` (2); a central crop keeping 1 - ``zoom`` of the side,
    resized back (1); one view per ``gamma`` value (intensity curve on the 0-255
    scale); left-right and up-down flips when ``hflip`` / ``vflip`` (off by
    default: a flipped chest X-ray shows the heart on the wrong side). With
    ``dihedral`` the image is also scored in the 7 other symmetries of the
    square (quarter turns, and each of them flipped: 7 views), for images with
    no fixed orientation such as fundus photographs (a left eye is a mirrored
    right eye), histology or dermoscopy; it includes both flips.

    Example:
        >>> TTAConfig(enabled=True).view_count()
        10
    """

    KEY: ClassVar[str] = "tta."

    enabled: bool = False
    shift: float = 0.05
    rotation_degrees: float = 5.0
    zoom: float = 0.1
    gamma: list[float] = field(default_factory=lambda: [0.8, 1.25])
    hflip: bool = False
    vflip: bool = False
    dihedral: bool = False

    def check(self) -> None:
        super().check()
        for flip in ("hflip", "vflip"):
            if self.dihedral and getattr(self, flip):
                self._fail(flip, "tta.dihedral already scores both flips (and the quarter turns); remove it")
        if not 0.0 <= self.shift < 0.5:
            self._fail("shift", "it is a fraction of the image size in [0, 0.5) (0 turns shifts off)")
        if not 0.0 <= self.rotation_degrees <= 45.0:
            self._fail("rotation_degrees", "it must be in [0, 45] degrees (0 turns rotations off)")
        if not 0.0 <= self.zoom < 0.5:
            self._fail("zoom", "it is the fraction of the side cropped away, in [0, 0.5) (0: no zoom view)")
        if any(g <= 0 for g in self.gamma):
            self._fail("gamma", "every gamma must be > 0, e.g. [0.8, 1.25] (an empty list: no gamma views)")
        if 1.0 in self.gamma or len(set(self.gamma)) < len(self.gamma):
            self._fail("gamma", "a gamma of 1, or one given twice, scores an image already scored once more, so "
                       "that it weighs more in the average; give each gamma other than 1 once")
        changed = [name for name in set_fields(self) if name != "enabled"]
        if not self.enabled and changed:
            self._unused(changed[0], "it is set but tta.enabled is false; set tta.enabled: true or remove it")
        if self.enabled and self.view_count() == 1:
            self._fail("enabled", "it is true but every view is turned off, so each image is scored once as it is; "
                       "turn a view on (shift, rotation_degrees, zoom, gamma, flips) or set tta.enabled: false")

    def shift_pixels(self, image_size: int) -> int:
        """The shift views' pixels at ``image_size``; a ``shift`` that rounds to 0 pixels is refused.

        Example:
            >>> TTAConfig(enabled=True).shift_pixels(96)
            5
        """
        pixels = round(self.shift * image_size)
        if self.shift > 0 and pixels == 0:
            raise ConfigError(f"tta.shift is {self.shift:g}, which at preprocess.image_size {image_size} rounds to 0 "
                              "pixels: its 4 views would be the image itself, weighing it 5 times in the average; "
                              f"use {_one_pixel_shift(image_size):g} (1 pixel) or more, or 0 to turn shifts off")
        return pixels

    def view_count(self) -> int:
        """How many views each image is scored in (1 when TTA is off)."""
        if not self.enabled:
            return 1
        return (1 + 4 * (self.shift > 0) + 2 * (self.rotation_degrees > 0) + (self.zoom > 0)
                + len(self.gamma) + self.hflip + self.vflip + 7 * self.dihedral)


@dataclass
class BalanceConfig(_Section):
    """Class balance of the training split.

    method: "none", "oversample", "undersample" (resampling to `target` class
        mix, uniform by default, which every epoch holds exactly: undersampling
        draws no image twice in an epoch, the group that limits the mix each once) or "class_weight" (w_pos = N_neg/N,
        w_neg = N_pos/N in the loss of a binary or multilabel task; a
        multiclass task weighs each image's loss by its class's N / (K N_c)).
    """

    KEY: ClassVar[str] = "balance."

    method: Literal["none", "oversample", "undersample", "class_weight"] = "none"
    target: list[float] | None = None

    def check(self) -> None:
        super().check()
        if self.target is not None and self.method not in RESAMPLING:
            self._unused("target", "a target class mix is used only by balance.method oversample or "
                         "undersample; remove it")


# what the fine-tune's epoch logs hold (ClinicalMetrics writes the val_ figures besides Keras's own)
FINETUNE_MONITORS = ("val_auc", "val_loss", "val_sensitivity", "val_specificity", "loss", "auc")
RESAMPLING = ("oversample", "undersample")  # the balance methods that resample the training stream
GammaName = Literal["scale", "auto"]


@dataclass
class SVMConfig(_Section):
    """Feature extraction + SVM mode (Bar et al. 2015).

    view_fusion (2-D views of volumes only): "concat" fuses the features of
    every view into one vector for one SVM; "per_view" fits one SVM per view
    and averages their probabilities (Ciompi et al. 2015 compared both).
    classifier: "exact" (scikit-learn's SVC: fit time grows faster than
    n^2), "approximate" (a linear SVM on a Nystroem map of the kernel with
    nystroem_components rows, or on the features with kernel linear: fit time
    linear in n) or "auto": exact up to exact_limit training rows,
    approximate above.
    search_rows: C (and gamma) are chosen by cross-validation on at most this
    many training rows, drawn per class (whole patients when ids are known);
    with more rows the calibration uses 2 folds, so the fit stays near-linear
    in the number of images.
    strategy: where the backbone runs while features are extracted: "auto",
    "cpu", "mirrored" or "tpu" as for fine-tuning (see
    :func:`tfmed.training.distribute.strategy`), or "multiworker": every
    worker named in TF_CONFIG runs ``tfmed run`` on the same config and
    computes its share of the feature store's shards; worker 0 then fits the
    classifier and writes the run.
    fit_views: fit on every test-time view of each training image too (the
    ``tta`` views as augmented copies, so the SVM learns the variation it is
    scored over); the views of one image stay in one CV fold. Needs
    ``tta.enabled``; multiplies the training rows by the view count.
    """

    KEY: ClassVar[str] = "model.svm."

    taps: list[str] = field(default_factory=lambda: ["late"])
    pooling: Literal["avg", "max"] = "avg"
    kernel: Literal["linear", "rbf"] = "rbf"
    C: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    gamma: list[GammaName | float] = field(default_factory=lambda: ["scale"])
    cv: int = 5
    class_weight: Literal["balanced"] | None = "balanced"
    texture: bool = False
    batch_size: int = 32
    view_fusion: Literal["concat", "per_view"] = "concat"
    classifier: Literal["auto", "exact", "approximate"] = "auto"
    exact_limit: int = 10000
    nystroem_components: int = 1000
    search_rows: int = 5000
    strategy: Literal["auto", "cpu", "mirrored", "tpu", "multiworker"] = "auto"
    fit_views: bool = False

    def check(self) -> None:
        super().check()
        if not self.taps:
            self._fail("taps", "list at least one tap, e.g. [middle]")
        if self.exact_limit < 1:
            self._fail("exact_limit", "it must be a number of training rows >= 1, e.g. 10000")
        if self.nystroem_components < 2:
            self._fail("nystroem_components", "it must be at least 2, e.g. 1000")
        if self.search_rows < 10 * self.cv:
            self._fail("search_rows", f"it must be at least 10 rows per CV fold ({10 * self.cv} with cv {self.cv}), "
                       "e.g. 5000")
        changed = set_fields(self)
        if self.classifier != "auto" and "exact_limit" in changed:
            self._unused("exact_limit", f"it is read only with classifier: auto, and classifier is "
                         f"{self.classifier!r}; remove it")
        if self.kernel == "linear" and "gamma" in changed:
            self._unused("gamma", "it is the RBF kernel's width, and kernel is 'linear'; remove it or set "
                         "kernel: rbf")
        if (self.classifier == "exact" or self.kernel == "linear") and "nystroem_components" in changed:
            self._unused("nystroem_components", "it sizes the approximate RBF classifier, which "
                         f"classifier {self.classifier!r} with kernel {self.kernel!r} never uses; remove it")
        if not self.C or any(c <= 0 for c in self.C):
            self._fail("C", "give one or more numbers > 0, e.g. [0.1, 1.0, 10.0]")
        names = typing.get_args(GammaName)
        if not self.gamma or any(g not in names if isinstance(g, str) else g <= 0 for g in self.gamma):
            self._fail("gamma", f"give {' or '.join(names)} or numbers > 0")
        if self.cv < 2:
            self._fail("cv", "it must be at least 2 folds")
        if self.batch_size < 1:
            self._fail("batch_size", "it must be at least 1")


@dataclass
class StageConfig(_Section):
    """One fine-tuning stage: which backbone blocks train, for how long.

    unfreeze: a number of top blocks (0: head only), a fraction of the blocks
    in (0, 1], or "all".
    min_steps: at least this many optimizer steps (batches). When an epoch of
    the training set is too short for ``epochs`` to reach them, the stage
    runs ``ceil(min_steps / batches per epoch)`` epochs instead, so a recipe
    sized on a large set keeps its length in steps on a small one (schedules
    counted in steps, as in BiT's HyperRule, Kolesnikov et al. 2020). Early
    stopping neither ends the stage before min_steps nor restores weights from
    before them: it watches from the epoch that reaches them on.

    With early stopping, each stage ends with the weights of its own best epoch
    and the next stage starts from them; the model is the last stage's best,
    even where an earlier stage scored higher on the monitor (the last stage
    is the one the recipe chose to train most of the network).
    """

    KEY: ClassVar[str] = "model.finetune.stages[]."

    epochs: int = 5
    unfreeze: str | int | float = 0
    learning_rate: float | None = None
    lr_factor: float = 0.1
    min_steps: int | None = None

    def __post_init__(self):
        pass  # checked by its FinetuneConfig, which knows the stage's index

    def check(self) -> None:
        super().check()
        if self.epochs < 1:
            self._fail("epochs", "it must be an integer >= 1")
        if self.min_steps is not None and self.min_steps < 1:
            self._fail("min_steps", "it must be an integer >= 1, or null to run exactly `epochs`")
        value = self.unfreeze
        if isinstance(value, str):
            if value != "all":
                self._fail("unfreeze", "use a number of top blocks (e.g. 2), a fraction of the blocks "
                                       "(e.g. 0.5) or 'all'")
        elif isinstance(value, bool) or value < 0:
            self._fail("unfreeze", "use a number of top blocks >= 0, a fraction in (0, 1] or 'all'")
        elif isinstance(value, float) and value != 0.0 and not 0.0 < value <= 1.0:
            hint = f"; for {value:g} top blocks write {value:g}" if value.is_integer() else ""
            self._fail("unfreeze", f"a fraction of blocks must be in (0, 1]{hint}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            self._fail("learning_rate", "it must be > 0 (or left out to use the previous stage's rate "
                                        "times lr_factor)")
        if not self.lr_factor > 0:
            self._fail("lr_factor", "it must be > 0, e.g. 0.1")


@dataclass
class FinetuneConfig(_Section):
    """Staged fine-tuning mode.

    strategy: "auto", "cpu", "mirrored" or "tpu" (see
    :func:`tfmed.training.distribute.strategy`). Multi-worker training is not
    offered here: Keras 3.15 cannot ``fit`` under MultiWorkerMirroredStrategy;
    :func:`tfmed.training.distribute.train_multiworker` is the custom loop for it.

    view_pooling (2-D views of volumes only): one backbone is shared by every
    view, and its pooled features are combined across views by "mean" or "max".
    """

    KEY: ClassVar[str] = "model.finetune."

    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(epochs=5, unfreeze=0),
                                                               StageConfig(epochs=5, unfreeze=2)])
    learning_rate: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "plateau"] = "constant"
    loss: Literal["auto", "bce", "weighted_bce", "categorical", "focal"] = "auto"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    dropout: float = 0.2
    pooling: Literal["avg", "max"] = "avg"
    batch_size: int = 32
    early_stopping_patience: int | None = 3
    monitor: str = "val_auc"
    mixed_precision: Literal["float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16"] | None = None
    jit_compile: bool = False
    strategy: Literal["auto", "cpu", "mirrored", "tpu"] = "auto"
    view_pooling: Literal["mean", "max"] = "mean"

    def check(self) -> None:
        super().check()
        if not self.stages:
            self._fail("stages", "list at least one stage")
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, StageConfig):
                raise ConfigError(f"{self.KEY}stages[{i}] must be a StageConfig, got {stage!r}")
            try:
                stage.check()
            except ConfigError as error:
                raise ConfigError(str(error).replace("stages[].", f"stages[{i}].", 1)) from None
        ranges = {"learning_rate": (self.learning_rate > 0, "it must be > 0"),
                  "dropout": (0.0 <= self.dropout < 1.0, "it must be in [0, 1)"),
                  "batch_size": (self.batch_size >= 1, "it must be an integer >= 1"),
                  "weight_decay": (self.weight_decay >= 0, "it must be >= 0"),
                  "momentum": (0.0 <= self.momentum < 1.0, "it must be in [0, 1)"),
                  "label_smoothing": (0.0 <= self.label_smoothing < 1.0, "it must be in [0, 1)"),
                  "focal_gamma": (self.focal_gamma >= 0, "it must be >= 0")}
        for name, (ok, message) in ranges.items():
            if not ok:
                self._fail(name, message)
        if self.early_stopping_patience is not None and self.early_stopping_patience < 0:
            self._fail("early_stopping_patience", "use an integer >= 0, or null to train every epoch")
        changed = set_fields(self)
        if self.monitor not in FINETUNE_MONITORS:
            self._fail("monitor", f"the epoch logs have {_either(FINETUNE_MONITORS)} (val_ ones only with a "
                       "validation split; without one the training loss is watched)")
        if "monitor" in changed and self.early_stopping_patience is None and self.schedule != "plateau":
            self._unused("monitor", "only early stopping and schedule: plateau watch it, and early_stopping_patience "
                         "is null; set a patience or remove it")
        unused = {"momentum": (self.optimizer == "sgd", "optimizer: sgd"),
                  "focal_gamma": (self.loss == "focal", "loss: focal")}
        for name, (used, user) in unused.items():
            if name in changed and not used:
                self._unused(name, f"only {user} uses it; remove it or set that")
        if "learning_rate" in changed and self.stages and self.stages[0].learning_rate is not None:
            self._unused("learning_rate", f"the first stage gives its own learning_rate "
                         f"({self.stages[0].learning_rate!r}), and each later stage scales its previous one's; "
                         "remove one of the two")
        for i, stage in enumerate(self.stages):
            if "lr_factor" in set_fields(stage) and (i == 0 or stage.learning_rate is not None):
                why = ("the first stage starts at model.finetune.learning_rate" if i == 0
                       else "this stage gives its own learning_rate")
                raise UnusedSettingError(f"{self.KEY}stages[{i}].lr_factor is {stage.lr_factor!r}; it scales the "
                                         f"previous stage's rate, but {why}; remove it", f"stages[{i}].lr_factor")


@dataclass
class MemberConfig(_Section):
    """One member of an ensemble: a mode with its backbone and settings.

    A setting left out (null) is taken from the experiment: ``backbone``,
    ``weights`` and ``weights_dir`` from ``model``, ``preprocess``, ``augment``
    and ``balance`` from the sections of those names. Give ``preprocess`` to
    let a member see other inputs, e.g. a fine-tune at 96 px beside features
    at 224 px: in an experiment file it writes only what it changes, the rest
    comes from the experiment's ``preprocess``. A member's ``augment`` or
    ``balance`` replaces the experiment's section whole. ``seed`` (null: the
    experiment's) seeds the member's training (new head, dropout, batch order,
    augmentation; the SVM's CV folds), whatever ran before it: fine-tunes that
    differ only in seed make a seed ensemble.
    """

    KEY: ClassVar[str] = "model.ensemble.members[]."

    name: str | None = None
    mode: Literal["svm", "finetune"] = "svm"
    backbone: str | None = None
    weights: str | None = None
    weights_dir: str | None = None
    svm: SVMConfig = field(default_factory=SVMConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    preprocess: PreprocessConfig | None = None
    augment: AugmentConfig | None = None
    balance: BalanceConfig | None = None
    seed: int | None = None

    def __post_init__(self):
        pass  # checked by its ExperimentConfig, which knows the member's index and the defaults


@dataclass
class EnsembleConfig(_Section):
    """Ensemble mode: several members fitted on the same training split, their scores combined.

    combine: "mean" (average of the members' probabilities), "rank" (each
        member's score replaced by its quantile among that member's
        out-of-fold training scores, then averaged; binary and multilabel) or
        "stacking" (a logistic regression fitted on the members' out-of-fold
        training scores).
    folds: the k of the k-fold over the training split that gives the
        out-of-fold member scores "rank" and "stacking" need (each member is
        then fitted k + 1 times).
    """

    KEY: ClassVar[str] = "model.ensemble."

    members: list[MemberConfig] = field(default_factory=list)
    combine: Literal["mean", "rank", "stacking"] = "mean"
    folds: int = 5

    def check(self) -> None:
        super().check()
        if self.folds < 2:
            self._fail("folds", "it must be at least 2")
        if self.combine == "mean" and "folds" in set_fields(self):
            self._unused("folds", "only combine: rank and stacking use out-of-fold scores; remove it")


@dataclass
class ModelConfig(_Section):
    """Backbone and training mode.

    Only the section of the chosen mode may differ from its defaults: with
    ``mode: svm`` a ``model.finetune`` setting is rejected, and the other way round.
    """

    KEY: ClassVar[str] = "model."

    mode: Literal["svm", "finetune", "ensemble"] = "svm"
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    weights_dir: str | None = None
    svm: SVMConfig = field(default_factory=SVMConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)

    def check(self) -> None:
        super().check()
        if isinstance(self.weights, str) and self.weights.strip().lower() in ("none", "null"):
            self._fail("weights", "for random initialisation write weights: null (YAML's null, unquoted); "
                       "this text would be read as a weights file's path")
        if self.weights_dir is not None and self.weights != "imagenet":
            self._unused("weights_dir", f"only weights: imagenet searches it for ImageNet weight files, and weights "
                         f"is {self.weights!r}; remove it")


@dataclass
class EvaluationConfig(_Section):
    """How the operating threshold is chosen on validation, and the figures reported.

    hierarchy: {coarse class: [its fine classes]} for multiclass data, in any
        mode: the model is trained on the fine classes and also answers for the
        coarse ones, each the sum of its fine classes' probabilities (Esteva et
        al. 2017). Every data class belongs to exactly one coarse class. With
        two coarse classes the second is the positive one: a binary answer with
        its own thresholds chosen on validation, e.g. {non_tb: [healthy,
        sick_non_tb], tb: [tuberculosis]}.
    subgroups: the patient and image attributes whose groups get their own
        figures in every split holding two or more of them (site, view, sex,
        age): images, AUC with its interval and, for a binary model,
        sensitivity and specificity at the ``threshold`` point with a test of
        whether they differ between the groups. Default [site]; a named
        attribute other than site that no image of the data records is
        refused.
    age_bands: the ages in whole years where a band starts, for the age
        subgroup: [40, 60, 80] gives 0-39, 40-59, 60-79 and 80+.
    recalibration: none (default), logistic (binary, multilabel: one slope
        and intercept per label on the logit), intercept (the same with the
        slope held at 1) or temperature (any task):
        fitted on the split thresholds are chosen on (validation, or the
        pooled out-of-fold scores), applied to every score the model gives
        afterwards, thresholds chosen on the recalibrated scores. Ranks, and
        so AUCs and the decisions at the thresholds chosen on validation, stay
        as they were; a fixed threshold (0.5) then applies to recalibrated
        probabilities. See :mod:`tfmed.evaluation.recalibration`.

    Example:
        >>> EvaluationConfig(hierarchy={"benign": ["nevus"], "malignant": ["melanoma"]}).threshold
        'youden'
    """

    KEY: ClassVar[str] = "evaluation."

    threshold: ThresholdMethod = "youden"
    target_sensitivity: float = 0.95
    target_specificity: float = 0.95
    bootstrap: int = 0
    ci_level: float = 0.95
    hierarchy: dict[str, list[str]] | None = None
    subgroups: list[Subgroup] = field(default_factory=lambda: ["site"])
    age_bands: list[int] = field(default_factory=lambda: [40, 60, 80])
    recalibration: RecalibrationMethod = "none"

    def check(self) -> None:
        super().check()
        repeated = sorted({name for name in self.subgroups if self.subgroups.count(name) > 1})
        if repeated:
            self._fail("subgroups", f"it names {', '.join(repeated)} more than once; name each attribute once")
        bands = self.age_bands
        if not bands or any(b <= 0 or b > 130 for b in bands) or any(a >= b for a, b in zip(bands, bands[1:])):
            self._fail("age_bands", "list the ages where a band starts, increasing whole years in 1-130, "
                       "e.g. [40, 60, 80]")
        if "age" not in self.subgroups and "age_bands" in set_fields(self):
            self._unused("age_bands", "it is set but evaluation.subgroups does not name age; add age to "
                         "evaluation.subgroups or remove it")
        for name in ("target_sensitivity", "target_specificity", "ci_level"):
            if not 0.0 < getattr(self, name) <= 1.0 or (name == "ci_level" and getattr(self, name) == 1.0):
                self._fail(name, "it must be in (0, 1)" if name == "ci_level" else "it must be in (0, 1]")
        if self.bootstrap < 0:
            self._fail("bootstrap", "it must be >= 0 resamples (0: no bootstrap)")
        if self.hierarchy is not None and len(self.hierarchy) < 2:
            self._fail("hierarchy", "name at least two coarse classes, each with its fine classes, e.g. "
                       "{benign: [nevus], malignant: [melanoma, carcinoma]} (or remove it)")


ExplainMethod = Literal["gradcam", "gradcam_pp", "saliency", "smoothgrad", "integrated_gradients", "occlusion"]


@dataclass
class ReportConfig(_Section):
    """What ``report.html`` shows beyond the metrics and plots.

    ``explain: true`` adds an explanations section: ``explain_method`` maps (see
    :mod:`tfmed.explain`) of one true positive, false positive, false negative and
    true negative of the test split (the validation split when the run has none),
    chosen at the stored threshold (of the first class or label against the rest for
    multiclass and multilabel data), with the maps' faithfulness and sanity figures.
    Off by default: it adds seconds to a minute, depending on the model.

    Example:
        >>> ReportConfig(explain=True).explain_method
        'gradcam'
    """

    KEY: ClassVar[str] = "report."

    explain: bool = False
    explain_method: ExplainMethod = "gradcam"

    def check(self) -> None:
        super().check()
        changed = [name for name in set_fields(self) if name != "explain"]
        if not self.explain and changed:
            self._unused(changed[0], "it is set but report.explain is false; set report.explain: true or remove it")


# What each mode reads besides ``model.<mode>``: any other section left at a
# non-default value would be silently ignored, so it is rejected.
MODE_SECTIONS = {
    "svm": ("svm",),
    "finetune": ("finetune", "augment", "balance"),
    "ensemble": ("ensemble", "augment", "balance"),
}
MODEL_SECTIONS = ("svm", "finetune", "ensemble")  # the MODE_SECTIONS entries that live under model.
MODE_OPTIONAL_SECTIONS = tuple(dict.fromkeys(name for names in MODE_SECTIONS.values() for name in names))


FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_folder_name(key: str, value) -> None:
    """Names that become folder names (runs/NAME/..., members/NAME) are plain names, never paths."""
    if not isinstance(value, str) or not FOLDER_NAME.fullmatch(value):
        raise ConfigError(f"{key} is {value!r}; it names a folder, so use letters, digits, '_', '-' and '.' "
                          "(starting with a letter or digit), e.g. tb_xray")


@dataclass
class ExperimentConfig(_Section):
    """A whole experiment, as written in ``experiments/NAME.yaml``."""

    name: str = "experiment"
    seed: int = 0
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tta: TTAConfig = field(default_factory=TTAConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    runs_dir: str = "runs"

    @property
    def multiworker(self) -> bool:
        """Whether the features are extracted by every TF_CONFIG worker (``model.svm.strategy: multiworker``)."""
        return self.model.mode == "svm" and self.model.svm.strategy == "multiworker"

    def check(self) -> None:
        """Check every section, the settings that depend on each other, and the mode's unused settings."""
        for section in (self.data, self.split, self.preprocess, self.augment, self.balance, self.model,
                        self.model.svm, self.model.finetune, self.model.ensemble, self.tta, self.views,
                        self.evaluation, self.report):
            section.check()
        _check_folder_name("name", self.name)
        self.runs_dir = _home_expanded(self.runs_dir)
        self._check_seed()
        self._check_views()
        if self.tta.enabled and self.tta.gamma and self.preprocess.intensity not in PIXEL_SCALE_INTENSITIES:
            raise ConfigError(f"tta.gamma views work on the 0-255 pixel scale, which preprocess.intensity "
                              f"{self.preprocess.intensity!r} does not give before normalising; set tta.gamma: [] "
                              f"or use intensity {', '.join(PIXEL_SCALE_INTENSITIES)}")
        if self.tta.enabled:
            self.tta.shift_pixels(self.preprocess.image_size)
        check_pixel_scale_augments(self.augment, self.preprocess.intensity)
        crop = self.augment.crop_from
        if crop is not None and crop < self.preprocess.image_size:
            raise ConfigError(f"augment.crop_from ({crop}) must be at least "
                              f"preprocess.image_size ({self.preprocess.image_size})")
        for name in MODE_OPTIONAL_SECTIONS:
            if name not in MODE_SECTIONS[self.model.mode]:
                owner = self.model if name in MODEL_SECTIONS else self
                _refuse_section_the_mode_leaves(self.model.mode, name, set_fields(getattr(owner, name)))
        finetune = self.model.finetune
        if self.model.mode == "finetune" and self.split.method == "kfold" and finetune.monitor.startswith("val_") \
                and finetune.monitor != FinetuneConfig.monitor:  # the default's stand-in is logged by the fine-tune
            raise UnusedSettingError(f"model.finetune.monitor is {finetune.monitor!r}, but with split.method kfold no "
                                     "fine-tune has a validation split to watch (each watches its training loss); "
                                     "remove it", "model.finetune.monitor")
        if self.model.mode == "svm" and self.model.svm.fit_views and not self.tta.enabled:
            raise ConfigError("model.svm.fit_views fits on the test-time views of the training images, and "
                              "tta.enabled is false; set tta.enabled: true (with the views to use) or remove it")
        if self.model.mode == "ensemble":
            self._check_members()
        if self.multiworker and self.split.method == "kfold":
            raise ConfigError("model.svm.strategy 'multiworker' shares the features of the train, val and test "
                              "splits between workers, not those of k folds; use split.method predefined or "
                              "patient, or strategy auto")

    def _check_views(self) -> None:
        """Settings for 2-D views of volumes: rejected without ``views``, checked against it with."""
        kind = self.data.source.partition(":")[0]
        if kind in DataConfig.VOLUME_SOURCES and not (self.views.enabled and self.views.center == "lesion"):
            raise ConfigError(f"data.source {kind} lists CT scans with candidate centres, which a model sees "
                              "through 2-D views; set views.enabled: true with views.center: lesion (see "
                              "experiments/luna16_nodules.yaml)")
        view_settings = [("augment.", self.augment, ("view_rotation_degrees", "center_jitter_mm")),
                         ("model.svm.", self.model.svm, ("view_fusion",)),
                         ("model.finetune.", self.model.finetune, ("view_pooling",))]
        if not self.views.enabled:
            for prefix, section, names in view_settings:
                for name in names:
                    if name in set_fields(section):
                        raise UnusedSettingError(f"{prefix}{name} is set, but it acts on 2-D views of volumes and "
                                                 "views.enabled is false; remove it or configure views", prefix + name)
            return
        if self.preprocess.intensity not in VIEW_INTENSITIES:
            raise ConfigError(f"preprocess.intensity {self.preprocess.intensity!r} needs train-split "
                              "statistics of 2-D images, which views of volumes do not offer; use one of "
                              f"{', '.join(VIEW_INTENSITIES)} (window for CT)")
        if self.views.planes == "adjacent" and len(self.preprocess.windows) == 3:
            raise ConfigError("views.planes 'adjacent' puts three slices in R, G, B, so it takes one "
                              "window (applied to each slice) in preprocess.windows, not three")
        if self.views.planes == "adjacent" and self.model.svm.view_fusion != "concat":
            raise ConfigError("model.svm.view_fusion 'per_view' needs several views, but views.planes "
                              "'adjacent' gives one; use planes orthogonal or ciompi9, or remove view_fusion")

    def _check_members(self) -> None:
        members = self.model.ensemble.members
        if len(members) < 2:
            raise ConfigError("model.ensemble.members lists "
                              f"{len(members)} member(s); an ensemble needs at least 2 (e.g. an svm and "
                              "a finetune member), or use the member's mode on its own")
        for i, member in enumerate(members):
            if member.name is not None:
                _check_folder_name(f"model.ensemble.members[{i}].name", member.name)
            if member.weights is None and "weights" in member._written and self.model.weights is not None:
                raise ConfigError(f"model.ensemble.members[{i}].weights is null, which a member reads as left out: "
                                  f"it takes model.weights ({self.model.weights!r}); to start this member from "
                                  "random weights, set model.weights: null and give the members that need "
                                  "pretrained weights their own weights (e.g. imagenet)")
        names = [self.member_name(i) for i in range(len(members))]
        if len(set(names)) < len(names):
            raise ConfigError(f"model.ensemble.members have repeated names {names}; give each a "
                              "distinct name")
        used = {"augment": False, "balance": False}
        for i in range(len(members)):
            member = self.member_experiment(i)
            if member.model.mode == "svm" and member.model.svm.strategy == "multiworker":
                raise ConfigError(f"model.ensemble.members[{i}].svm.strategy is 'multiworker', which only a "
                                  "model.mode svm experiment offers; run that member as its own experiment "
                                  "and combine the runs with tfmed ensemble")
            for name in used:
                used[name] |= name in MODE_SECTIONS[member.model.mode] and getattr(members[i], name) is None
        for name, is_used in used.items():
            changed = set_fields(getattr(self, name))
            if changed and not is_used:
                raise UnusedSettingError(f"{name}.{changed[0]} is set, but no ensemble member uses the experiment's "
                                         f"{name} section; remove it or move it into a member", f"{name}.{changed[0]}")
        if "seed" in set_fields(self) and all(member.seed is not None for member in members):
            raise UnusedSettingError("seed is set, but every ensemble member names its own seed, which alone decides "
                                     "its training; remove it (or leave the seed out of a member that should take "
                                     "it)", "seed")
        for name in set(set_fields(self.model)) & {"backbone", "weights", "weights_dir"}:
            if all(getattr(member, name) is not None for member in members):
                raise UnusedSettingError(f"model.{name} is set, but every ensemble member names its own {name}; "
                                         "remove it (or leave it out of a member that should take it)",
                                         f"model.{name}")

    def model_setting(self, name: str):
        """``model.NAME`` (backbone, weights, weights_dir), or an ensemble's members' values, each once, joined.

        Example:
            >>> cfg = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": [
            ...     {"mode": "svm", "backbone": "efficientnet_lite1"}, {"mode": "svm"}]}}})
            >>> cfg.model_setting("backbone")
            'efficientnet_lite1, efficientnet_lite0'
        """
        if self.model.mode != "ensemble":
            return getattr(self.model, name)
        return ", ".join(dict.fromkeys(str(getattr(part.model, name)) for _, part in self.model_experiments()))

    def model_experiments(self) -> list[tuple[int | None, "ExperimentConfig"]]:
        """The experiments whose models a run fits: ``[(None, self)]``, or each ensemble member's
        ``(index, member_experiment(index))``.

        Example:
            >>> [index for index, _ in ExperimentConfig().model_experiments()]
            [None]
        """
        if self.model.mode != "ensemble":
            return [(None, self)]
        return [(i, self.member_experiment(i)) for i in range(len(self.model.ensemble.members))]

    def member_name(self, index: int) -> str:
        """The name of ensemble member ``index`` (given, or "MODE_BACKBONE_INDEX")."""
        member = self.model.ensemble.members[index]
        return member.name or f"{member.mode}_{member.backbone or self.model.backbone}_{index}"

    def member_experiment(self, index: int) -> "ExperimentConfig":
        """The experiment that ensemble member ``index`` stands for: this one with the member's
        model settings and the sections it overrides (checked like any experiment).

        Example:
            >>> cfg = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": [
            ...     {"mode": "svm"}, {"mode": "finetune", "preprocess": {"image_size": 96}}]}}})
            >>> cfg.member_experiment(1).model.mode, cfg.member_experiment(1).preprocess.image_size
            ('finetune', 96)
        """
        member = self.model.ensemble.members[index]
        # the experiment's augment / balance reach only members whose mode reads them
        inherited = {name: getattr(member, name) or (getattr(self, name) if name in MODE_SECTIONS[member.mode]
                                                     else type(getattr(self, name))())
                     for name in ("augment", "balance")}
        try:
            model = ModelConfig(mode=member.mode, backbone=member.backbone or self.model.backbone,
                                weights=member.weights if member.weights is not None else self.model.weights,
                                weights_dir=member.weights_dir or self.model.weights_dir,
                                svm=member.svm, finetune=member.finetune)
            return dataclasses.replace(self, model=model, preprocess=member.preprocess or self.preprocess,
                                       seed=self.seed if member.seed is None else member.seed, **inherited)
        except ConfigError as error:
            raise self.member_error(index, error) from None

    def member_error(self, index: int, error: Exception) -> ConfigError:
        """``error``, raised for ensemble member ``index``'s experiment, naming the member's keys.

        What the member writes itself is named where it is written (``model.finetune.monitor`` is
        ``model.ensemble.members[1].finetune.monitor``; ``balance.target`` too, when the member has
        its own ``balance``); a message naming none of those starts with the member.

        Example:
            >>> cfg = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": [
            ...     {"name": "a", "mode": "svm"}, {"name": "b", "mode": "finetune"}]}}})
            >>> print(cfg.member_error(1, ConfigError("model.finetune.stages[0].unfreeze is 50; use 0..9")))
            model.ensemble.members[1].finetune.stages[0].unfreeze is 50; use 0..9
            >>> print(cfg.member_error(1, ConfigError("seed is -5; a seed must be a whole number")))
            model.ensemble.members[1] (b): seed is -5; a seed must be a whole number
        """
        member = self.model.ensemble.members[index]
        key = f"model.ensemble.members[{index}]."
        own = ["model.mode", "model.svm.", "model.finetune."] + [
            f"{name}." for name in ("preprocess", "augment", "balance") if getattr(member, name) is not None] + [
            f"model.{name}" for name in ("backbone", "weights", "weights_dir") if getattr(member, name) is not None]
        pattern = "|".join(re.escape(prefix) + ("" if prefix.endswith(".") else r"\b") for prefix in own)
        message = re.sub(rf"(?<![\w.\[])(?:{pattern})",
                         lambda match: key + match.group(0).removeprefix("model."), str(error))
        if key not in message:
            message = f"model.ensemble.members[{index}] ({self.member_name(index)}): {message}"
        return ConfigError(message)

    @classmethod
    def from_dict(cls, values: dict, where: str = "config", snapshot: bool = False) -> "ExperimentConfig":
        """Build and validate a config from plain data (e.g. parsed YAML).

        A setting that the experiment would not use is refused when written, even with its default value;
        a section that lists all its settings (as a run's ``config.yaml`` does), and every section with
        ``snapshot``, counts only the settings that differ from their defaults.

        Example:
            >>> ExperimentConfig.from_dict({"split": {"method": "kfold", "val_fraction": 0.1}})
            Traceback (most recent call last):
            tfmed.config.UnusedSettingError: config: split.val_fraction is 0.1; it is set, but split.method kfold ...
        """
        try:
            values = _moved_settings(values)
            _refuse_sections_the_mode_leaves(values, snapshot, where)  # before a value there is checked
            return _build(cls, _members_inherit_preprocess(values), where, prefix="", track=not snapshot)
        except UnusedSettingError:
            raise
        except ConfigError as error:
            message = str(error)
            raise ConfigError(message if message.startswith(f"{where}: ") else f"{where}: {message}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentConfig":
        """Load ``path``; errors name the file and the key."""
        path = Path(path)
        if not path.is_file():
            shipped = sorted(p.stem for p in path.parent.glob("*.yaml") if p.is_file()) if path.parent.is_dir() else []
            here = sorted(p.stem for p in Path("experiments").glob("*.yaml")) if not shipped else []
            listing = (f" Available here: {', '.join(shipped)}." if shipped else
                       f" Available in experiments/: {', '.join(here)}." if here else
                       " The shipped ones are in the tfmed repository's experiments/ folder, which a pip-installed "
                       "tfmed does not include: run from the repository's folder, or give the file's path.")
            what = " is a folder, not an experiment file" if path.is_dir() else ": experiment file not found"
            raise ConfigError(f"{path}{what}. Experiments live in experiments/NAME.yaml.{listing}")
        return cls.from_dict(_read_mapping(path), where=str(path))

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "ExperimentConfig":
        """The ``config.yaml`` snapshot of a run. Settings that had no effect in the run and that tfmed now
        refuses as unused (:class:`UnusedSettingError`, e.g. ``split.folds`` without k-fold) are read as their
        defaults, so that runs made before the refusal still load.

        Example:
            >>> ExperimentConfig.from_run("runs/pneumonia_mnist/20261206-024326").split.method  # doctest: +SKIP
            'predefined'
        """
        path = Path(run_dir) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: not found; a run directory holds the config.yaml it was run with")
        values = _read_mapping(path)
        while True:
            try:
                return cls.from_dict(values, where=str(path), snapshot=True)
            except UnusedSettingError as error:
                values = _without_setting(values, error.key, error)

    def to_dict(self) -> dict:
        """Plain data, ready for YAML."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the config snapshot to ``path``."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


def data_section(path: str | Path) -> DataConfig:
    """The ``data:`` section of a YAML file that holds nothing else: the data ``tfmed evaluate --data FILE`` and
    ``tfmed recalibrate --data FILE`` read, scored through the run's own preprocessing, views and test-time views,
    so other sections are refused rather than ignored.

    Example:
        >>> data_section("mimic_test.yaml").frontal_only  # doctest: +SKIP
        False
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; pass a YAML file holding a data: section (source, path, ...) "
                          "or a source such as manifest:labels.csv")
    values = _read_mapping(path)
    if "data" not in values:
        raise ConfigError(f"{path} has no data: section; write the data to score under data: (source, path, ...)")
    others = sorted(set(values) - {"data"})
    if others:
        raise ConfigError(f"{path} holds {', '.join(others)} beside data:; only its data: section is read, as the "
                          "images are scored with the run's own settings (its config.yaml); keep data: alone")
    return _build(DataConfig, values["data"], str(path), prefix="data.")


def is_experiment_file(spec: str) -> bool:
    """Whether a command-line argument names an experiment's YAML file (its data section included) rather
    than a data source.

    Example:
        >>> is_experiment_file("experiments/tb_xray.yaml"), is_experiment_file("folder:data/xrays")
        (True, False)
    """
    return spec.lower().endswith((".yaml", ".yml"))


def _either(names) -> str:
    """``a``, ``a or b``, ``a, b or c``.

    Example:
        >>> _either(["chexpert", "mimic_cxr", "padchest"])
        'chexpert, mimic_cxr or padchest'
    """
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def as_written(value) -> str:
    """A setting's value as an error message shows it: as YAML writes true, false and null, else as Python
    shows it (text quoted).

    Example:
        >>> as_written(True), as_written(None), as_written("sgd"), as_written([0.5, 1])
        ('true', 'null', "'sgd'", '[0.5, 1]')
    """
    return {True: "true", False: "false"}[value] if isinstance(value, bool) else "null" if value is None \
        else repr(value)


def set_fields(section) -> list[str]:
    """The fields of ``section`` that are set: written in its experiment file (even with the default value;
    a null where the default is null counts as left out), or differing from their declared defaults.

    Example:
        >>> set_fields(ExperimentConfig.from_dict({"split": {"method": "kfold", "val_fraction": 0.0}}).split)
        ['method', 'val_fraction']
        >>> set_fields(SplitConfig(method="kfold", val_fraction=0.1))  # built in Python: by value
        ['method']
    """
    set_fields = []
    for item in dataclasses.fields(section):
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        value = getattr(section, item.name)
        if value != default or (item.name in section._written and value is not None):
            set_fields.append(item.name)
    return set_fields


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML would keep the later silently).
    A key that overrides one brought in by a merge key (``<<: *base``) is not repeated.

    Example:
        >>> yaml.load("seed: 1\\nsplit: {folds: 3}\\nseed: 2\\n", Loader=_UniqueKeyLoader)
        Traceback (most recent call last):
        tfmed.config.ConfigError: key seed is written twice (lines 1 and 3); keep one
    """

    def construct_document(self, node):
        _check_unique_keys(node, "", set())
        return super().construct_document(node)


def _check_unique_keys(node, where: str, seen: set) -> None:
    """Raise :class:`ConfigError` naming the first dotted key written twice in one mapping below ``node``."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, f"{where}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # the merged mapping is checked where it is written
            key = f"{where}.{key_node.value}" if where else str(key_node.value)
            if isinstance(key_node, yaml.ScalarNode):
                line = key_node.start_mark.line + 1
                if (key_node.tag, key_node.value) in lines:
                    raise ConfigError(f"key {key} is written twice (lines {lines[key_node.tag, key_node.value]} "
                                      f"and {line}); keep one")
                lines[key_node.tag, key_node.value] = line
            _check_unique_keys(value_node, key, seen)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error in one line: where (line and column from 1) and what.

    Example:
        >>> try:
        ...     yaml.safe_load("a: 1\\n  b: 2")
        ... except yaml.YAMLError as error:
        ...     print(_yaml_problem(error))
         at line 2, column 4: mapping values are not allowed here
    """
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if mark is None or not problem:
        return ": " + " ".join(str(error).split())
    context, begun = getattr(error, "context", None), getattr(error, "context_mark", None)
    where = f" begun at line {begun.line + 1}, column {begun.column + 1}" if context and begun is not None else ""
    return (f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
            + (f" ({context}{where})" if context else ""))


def _read_mapping(path: Path) -> dict:
    """The YAML mapping in ``path``; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text YAML file; an experiment is YAML text (e.g. "
                          "experiments/pneumonia_mnist.yaml): save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(error)}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    if values is None and not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise ConfigError(f"{path} is empty; write the experiment's settings in it (e.g. name: my_study, data: ...)")
    if not isinstance(values, dict):
        kind = {bool: "boolean", int: "number", float: "number", str: "text", list: "list"}.get(
            type(values), type(values).__name__)
        held = "null (~)" if values is None else f"a {kind} ({values!r})"
        raise ConfigError(f"{path} holds {held}, not a mapping of settings; the top level must be a mapping of keys "
                          "(e.g. name: my_study)")
    return values


def _members_inherit_preprocess(values: Any) -> Any:
    """``values`` with each ensemble member's ``preprocess`` completed from the experiment's: a member writes
    only what it changes (``{image_size: 128}``). A member choosing another ``intensity`` than ``window``
    does not inherit the experiment's ``windows``, which only that intensity reads, nor a fine-tune member its
    ``channels`` (an ImageNet backbone is fine-tuned on R, G, B).

    Example:
        >>> _members_inherit_preprocess({"preprocess": {"image_size": 96, "resize": "pad"},
        ...     "model": {"ensemble": {"members": [{"preprocess": {"image_size": 128}}]}}})["model"]
        {'ensemble': {'members': [{'preprocess': {'image_size': 128, 'resize': 'pad'}}]}}
    """
    model = values.get("model") if isinstance(values, dict) else None
    ensemble = model.get("ensemble") if isinstance(model, dict) else None
    members = ensemble.get("members") if isinstance(ensemble, dict) else None
    shared = values.get("preprocess") if isinstance(values, dict) else None
    if not isinstance(members, list) or not isinstance(shared, dict):
        return values
    values = copy.deepcopy(values)
    for member in values["model"]["ensemble"]["members"]:
        own = member.get("preprocess") if isinstance(member, dict) else None
        if own is None and isinstance(member, dict) and member.get("mode") == "finetune" and "channels" in shared:
            own = {}  # the experiment's preprocess, but R, G, B (below)
        if not isinstance(own, dict):
            continue
        inherited = dict(shared)
        if own.get("intensity", "window") != "window":
            inherited.pop("windows", None)
        if member.get("mode") == "finetune":  # a fine-tuned ImageNet backbone takes R, G, B whatever SVMs read
            inherited.pop("channels", None)
        member["preprocess"] = {**inherited, **own}
    return values


def _refuse_section_the_mode_leaves(mode: str, name: str, changed: list[str], where: str = "",
                                    member: str = "") -> None:
    """UnusedSettingError for the first of the ``changed`` settings of section ``name``, which ``mode`` does
    not use (its message starting with ``where: `` when given); ``member``: the ensemble member whose section it
    is (``model.ensemble.members[1].``)."""
    if changed:
        key = (member or ("model." if name in MODEL_SECTIONS else "")) + f"{name}.{changed[0]}"
        chooser = f"{member}mode" if member else "model.mode"
        users = [one for one, sections in MODE_SECTIONS.items() if name in sections]
        raise UnusedSettingError(f"{where}: " * bool(where) + f"{key} is set, but {chooser} {mode!r} does not use "
                                 f"it (only {' and '.join(users)} mode does); remove it, or set {chooser}", key)


def _refuse_sections_the_mode_leaves(values: Any, snapshot: bool, where: str = "") -> None:
    """Refuse a section of the experiment mapping ``values`` that its ``model.mode`` (or an ensemble member's
    ``mode``) does not use, before the section's own checks run: ``model.finetune.momentum`` in SVM mode is
    unused, whatever the optimizer. Settings count as in :func:`set_fields`: written, or (in a snapshot or a
    section written in full) not the default.

    Example:
        >>> _refuse_sections_the_mode_leaves({"model": {"finetune": {"momentum": 0.5}}}, False)
        Traceback (most recent call last):
        tfmed.config.UnusedSettingError: model.finetune.momentum is set, but model.mode 'svm' does not use it ...
    """
    model = values.get("model") if isinstance(values, dict) else None
    model = model if isinstance(model, dict) else {}
    ensemble = model.get("ensemble") if isinstance(model.get("ensemble"), dict) else {}
    members = ensemble.get("members") if isinstance(ensemble.get("members"), list) else []
    # (mode, where its sections are, the sections it may leave, the member's key)
    owners = [(model.get("mode", ModelConfig.mode), {**values, **model}, MODE_OPTIONAL_SECTIONS, "")]
    owners += [(member.get("mode", MemberConfig.mode), member, ("svm", "finetune"), f"model.ensemble.members[{i}].")
               for i, member in enumerate(members) if isinstance(member, dict)]
    for mode, sections, names, member in owners:
        if not isinstance(mode, str) or mode not in MODE_SECTIONS:
            continue  # the mode's own check names an unknown mode
        for name in names:
            written = sections.get(name)
            if name in MODE_SECTIONS[mode] or not isinstance(written, dict):
                continue  # a section that is not a mapping is named by its own check
            section = _type_hints(ModelConfig if name in MODEL_SECTIONS else ExperimentConfig)[name]
            defaults = dataclasses.asdict(section())
            by_value = snapshot or set(defaults) <= set(written)
            changed = [key for key, value in written.items() if key in defaults
                       and (value != defaults[key] if by_value else value is not None or defaults[key] is not None)]
            _refuse_section_the_mode_leaves(mode, name, changed, where, member)


def _moved_settings(values: Any) -> Any:
    """``values`` with settings an earlier tfmed kept elsewhere read where they are now, so that older
    experiments and runs (whose config.yaml lists every setting) still load: ``model.finetune.hierarchy``
    (also a member's) is ``evaluation.hierarchy``, which works in every mode.

    Example:
        >>> _moved_settings({"model": {"finetune": {"hierarchy": {"b": ["x"], "m": ["y"]}}}})
        {'model': {'finetune': {}}, 'evaluation': {'hierarchy': {'b': ['x'], 'm': ['y']}}}
    """
    model = values.get("model") if isinstance(values, dict) else None
    if not isinstance(model, dict):
        return values
    values = copy.deepcopy(values)
    model = values["model"]
    ensemble = model["ensemble"] if isinstance(model.get("ensemble"), dict) else {}
    members = ensemble["members"] if isinstance(ensemble.get("members"), list) else []
    sections = [model] + [member for member in members if isinstance(member, dict)]
    for section in sections:
        finetune = section.get("finetune")
        if not isinstance(finetune, dict) or "hierarchy" not in finetune:
            continue
        hierarchy = finetune.pop("hierarchy")
        if hierarchy is None:  # the default, written into every run's config.yaml before it moved
            continue
        evaluation = values.setdefault("evaluation", {})
        if not isinstance(evaluation, dict):
            continue  # the evaluation section's own error says what is wrong
        if evaluation.get("hierarchy") not in (None, hierarchy):
            raise ConfigError("model.finetune.hierarchy and evaluation.hierarchy differ; the hierarchy is now "
                              "evaluation.hierarchy (in every mode): keep that one only")
        evaluation["hierarchy"] = hierarchy
    return values


def _without_setting(values: dict, key: str, error: ConfigError) -> dict:
    """A copy of ``values`` without the setting at dotted ``key`` (``error`` is raised when it is absent).

    Example:
        >>> _without_setting({"model": {"finetune": {"stages": [{"epochs": 1, "lr_factor": 0.5}]}}},
        ...                  "model.finetune.stages[0].lr_factor", ConfigError("absent"))
        {'model': {'finetune': {'stages': [{'epochs': 1}]}}}
    """
    steps = [int(part) if part.isdigit() else part for part in re.split(r"\.|\[|\]\.?", key) if part]
    result = copy.deepcopy(values)
    parent = result
    try:
        for step in steps[:-1]:
            parent = parent[step]
        del parent[steps[-1]]
    except (KeyError, IndexError, TypeError):
        raise error from None
    return result


def _build(cls, values: Any, where: str, prefix: str, track: bool = True):
    """Recursively turn a mapping into dataclass ``cls``, checking keys and types. With ``track`` each
    section records the keys written (``_written``, see :func:`set_fields`) unless it lists all its fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping, "
                          f"got {type(values).__name__}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        word = (" (YAML reads an unquoted on, off, yes or no as true or false: quote the key)"
                if isinstance(unknown[0], bool) else "")
        raise ConfigError(f"{where}: unknown key {prefix}{unknown[0]!s}{word}; "
                          f"allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(hints[name], value, where, prefix + name, track)
    try:
        section = cls.__new__(cls)
        if track and not set(fields) <= set(values):  # a section written in full is a run's snapshot
            section._written = frozenset(values)
        section.__init__(**kwargs)  # checks it, with the keys written known
        return section
    except UnusedSettingError as error:
        raise UnusedSettingError(f"{where}: {_at_prefix(cls, error, prefix)}", prefix + error.key) from None
    except ConfigError as error:
        raise ConfigError(f"{where}: {_at_prefix(cls, error, prefix)}") from None


def _home_expanded(path):
    """``path`` with a leading ``~`` read as the home folder, as a shell reads it; anything else as it is.

    Example:
        >>> _home_expanded("data/x.csv"), _home_expanded(None)
        ('data/x.csv', None)
    """
    return os.path.expanduser(path) if isinstance(path, str) and path.startswith("~") else path


def _number_hint(value) -> str:
    """Why YAML read ``value`` as text where a number was meant: an exponent without YAML 1.1's dot or sign
    (``1e-3``), or quotes.

    Example:
        >>> _number_hint("1e-3"), _number_hint("0.001"), _number_hint("fast")
        (' (YAML reads 1e-3 as text: write 1.0e-3)', ' (a number in quotes is text: remove the quotes)', '')
    """
    try:
        number = float(value) if isinstance(value, str) else math.nan
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    if not re.fullmatch(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+", value.strip()):
        return " (a number in quotes is text: remove the quotes)"
    mantissa, exponent = f"{number:.6e}".split("e")
    mantissa = mantissa.rstrip("0") + ("0" if mantissa.rstrip("0").endswith(".") else "")
    return f" (YAML reads {value} as text: write {mantissa}e{int(exponent):+d})".replace("e+0)", ")")


def _at_prefix(cls, error: ConfigError, prefix: str) -> str:
    """``error``'s message with the section's usual key ``cls.KEY`` replaced by ``prefix``, where it was
    written (a member's ``model.finetune.`` is ``model.ensemble.members[1].finetune.``).

    Example:
        >>> error = ConfigError("model.finetune.monitor is 'x'")
        >>> _at_prefix(FinetuneConfig, error, "model.ensemble.members[1].finetune.")
        "model.ensemble.members[1].finetune.monitor is 'x'"
    """
    message = str(error)
    if cls.KEY and prefix and message.startswith(cls.KEY):
        return prefix + message[len(cls.KEY):]
    return message


def _convert(hint, value, where: str, key: str, track: bool = True):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None and hint is not typing.Any and type(None) not in args:
        remedy = "remove the item" if key.endswith("]") else "remove the line for its default"
        raise ConfigError(f"{where}: {key} is null, which it cannot be; {remedy}, or give a value")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key + ".", track)
    if origin is Literal:  # 1.0 equals 1, and True equals 1, but neither is the choice 1
        if isinstance(value, bool) or value not in args or type(value) is not type(args[list(args).index(value)]):
            raise ConfigError(f"{where}: {key} is {as_written(value)}; allowed: {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, key, track)
            except ConfigError as error:
                errors.append((arg, error))
        if _number_hint(value):  # "1e-3": the number's own advice, not the names'
            errors = [e for e in errors if e[0] in (int, float)] + [e for e in errors if e[0] not in (int, float)]
        raise errors[0][1] if errors else ConfigError(f"{where}: {key} is invalid")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_convert(args[0], item, where, f"{key}[{i}]", track) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        flags = [k for k in value if isinstance(k, bool) or k is None]
        if flags:
            raise ConfigError(f"{where}: {key} has the key {as_written(flags[0])}; YAML reads an unquoted on, off, "
                              "yes, no or null as true, false or null: quote the key (e.g. 'yes':)")
        return {str(k): _convert(args[1], v, where, f"{key}.{k}", track) for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}" + _number_hint(value))
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            hint_words = (f" (quote it: '{value}')" if number else " (YAML reads an unquoted yes, no, on, off, true "
                          "or false as true or false: quote the word)" if isinstance(value, bool) else "")
            raise ConfigError(f"{where}: {key} must be text, got {value!r}{hint_words}")
        return value
    return value
