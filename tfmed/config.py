"""Experiment configuration: dataclasses that load from and save to YAML.

Configuration is validated once, here, at the edge: an unknown key, a wrong
type or a value outside its allowed set raises :class:`ConfigError` naming the
file and the dotted key at fault.

Example:
    >>> cfg = ExperimentConfig.from_dict({"name": "demo", "data": {"source": "pneumonia_mnist"}})
    >>> cfg.preprocess.image_size
    224
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


@dataclass
class DataConfig:
    """Where the images come from.

    source: "pneumonia_mnist" (embedded), or a kind: "manifest", "folder",
        "medmnist", "dicom". A string "medmnist:PATH.npz#split" also works.
    path: CSV file, folder or .npz file for the non-embedded kinds.
    root: folder that manifest paths are relative to (default: CSV's folder).
    label_columns: manifest label column(s); several means multilabel.
    task: "binary" | "multiclass" | "multilabel" | None (inferred).
    classes: class names in label order (optional; inferred when omitted).
    exclude_bad_rows: drop rows that fail validation (listed in the run's
        output) instead of stopping with the report.
    """

    source: str = "pneumonia_mnist"
    path: str | None = None
    root: str | None = None
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    patient_column: str = "patient_id"
    task: str | None = None
    classes: list[str] | None = None
    filename_label_suffix: bool = False
    exclude_bad_rows: bool = False
    missing_message: str | None = None


@dataclass
class SplitConfig:
    """How rows are divided into train / val / test.

    method: "predefined" (use the source's split column, making missing
        splits by patient), "patient" (stratified by patient: test first, then
        val with the same class mix, rest train) or "kfold" (stratified group
        k-fold over train+val, test held out).
    """

    method: str = "predefined"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    folds: int = 5
    seed: int = 0


@dataclass
class PreprocessConfig:
    """Intensity handling and resizing, identical for training and inference.

    intensity: "minmax" (per image to [0, 255]), "minmax_dataset" (train-split
        min/max to [0, 255]), "standardize" (per-channel mean/std of the train
        split), "mean_image" (subtract the train mean image), "window" (CT HU
        windows to [0, 255]) or "none". Standardised and mean-subtracted images
        are then placed at ImageNet's pixel mean/std, the 0-255 scale every
        backbone's own ImageNet preprocessing expects.
    windows: [[center, width], ...]; one window is replicated to 3 channels,
        three windows become R, G, B.
    resize: "plain" or "pad" (aspect-preserving, zero padded).
    """

    image_size: int = 224
    channels: int = 3
    intensity: str = "minmax"
    windows: list[list[float]] = field(default_factory=list)
    resize: str = "plain"


@dataclass
class AugmentConfig:
    """Training-only augmentation; every switch can be turned off.

    hflip is off by default: left-right flips change anatomy (heart side) in
    chest X-rays.
    """

    enabled: bool = True
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    crop_from: int | None = None
    rotation_degrees: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    clahe: bool = False


@dataclass
class BalanceConfig:
    """Class balance of the training split.

    method: "none", "oversample", "undersample" (resampling to `target` class
        mix, uniform by default) or "class_weight" (w_pos = N_neg/N,
        w_neg = N_pos/N in the loss).
    """

    method: str = "none"
    target: list[float] | None = None


@dataclass
class SVMConfig:
    """Feature extraction + SVM mode (Bar et al. 2015)."""

    taps: list[str] = field(default_factory=lambda: ["late"])
    pooling: str = "avg"
    kernel: str = "rbf"
    C: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    gamma: list[str | float] = field(default_factory=lambda: ["scale"])
    cv: int = 5
    class_weight: str | None = "balanced"
    texture: bool = False
    batch_size: int = 32


@dataclass
class StageConfig:
    """One fine-tuning stage: which backbone blocks train, for how long."""

    epochs: int = 5
    unfreeze: str | int | float = 0
    learning_rate: float | None = None
    lr_factor: float = 0.1


@dataclass
class FinetuneConfig:
    """Staged fine-tuning mode."""

    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(epochs=5, unfreeze=0),
                                                               StageConfig(epochs=5, unfreeze=2)])
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    loss: str = "auto"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    dropout: float = 0.2
    pooling: str = "avg"
    batch_size: int = 32
    early_stopping_patience: int | None = 3
    monitor: str = "val_auc"
    mixed_precision: str | None = None
    jit_compile: bool = False
    strategy: str = "auto"
    hierarchy: dict[str, list[str]] | None = None


@dataclass
class ModelConfig:
    """Backbone and training mode."""

    mode: str = "svm"
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"
    weights_dir: str | None = None
    svm: SVMConfig = field(default_factory=SVMConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class EvaluationConfig:
    """How the operating threshold is chosen on validation."""

    threshold: str = "youden"
    target_sensitivity: float = 0.95
    target_specificity: float = 0.95
    bootstrap: int = 0
    ci_level: float = 0.95


@dataclass
class ExperimentConfig:
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
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runs_dir: str = "runs"

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "ExperimentConfig":
        """Build and validate a config from plain data (e.g. parsed YAML)."""
        config = _build(cls, values, where, prefix="")
        validate(config, where)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ExperimentConfig":
        """Load ``path``; errors name the file and the key."""
        path = Path(path)
        if not path.is_file():
            shipped = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
            listing = f" Available here: {', '.join(shipped)}." if shipped else ""
            raise ConfigError(f"{path}: experiment file not found. "
                              f"Experiments live in experiments/NAME.yaml.{listing}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        return cls.from_dict(values, where=str(path))

    def to_dict(self) -> dict:
        """Plain data, ready for YAML."""
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        """Write the config snapshot to ``path``."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")


CHOICES = {
    "split.method": ("predefined", "patient", "kfold"),
    "preprocess.intensity": ("minmax", "minmax_dataset", "standardize", "mean_image", "window", "none"),
    "preprocess.resize": ("plain", "pad"),
    "balance.method": ("none", "oversample", "undersample", "class_weight"),
    "model.mode": ("svm", "finetune"),
    "model.svm.kernel": ("linear", "rbf"),
    "model.svm.pooling": ("avg", "max"),
    "model.finetune.optimizer": ("adam", "sgd"),
    "model.finetune.schedule": ("constant", "cosine", "plateau"),
    "model.finetune.loss": ("auto", "bce", "weighted_bce", "categorical", "focal"),
    "model.finetune.pooling": ("avg", "max"),
    "evaluation.threshold": ("youden", "sensitivity", "specificity", "fixed"),
}


def validate(config: ExperimentConfig, where: str = "config") -> None:
    """Check value ranges and choices; raise ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"{where}: {key} is {value!r}; allowed: {', '.join(allowed)}")
    if config.data.task not in (None, "binary", "multiclass", "multilabel"):
        raise ConfigError(f"{where}: data.task is {config.data.task!r}; "
                          "allowed: binary, multiclass, multilabel (or leave it out)")
    for key in ("split.test_fraction", "split.val_fraction"):
        value = _get(config, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}: {key} is {value}; it must be in [0, 1)")
    if config.split.folds < 2:
        raise ConfigError(f"{where}: split.folds is {config.split.folds}; it must be at least 2")
    if config.preprocess.image_size < 8:
        raise ConfigError(f"{where}: preprocess.image_size is {config.preprocess.image_size}; "
                          "it must be at least 8 pixels")
    if config.preprocess.channels not in (1, 3):
        raise ConfigError(f"{where}: preprocess.channels is {config.preprocess.channels}; allowed: 1, 3")
    if config.preprocess.intensity == "window" and len(config.preprocess.windows) not in (1, 3):
        raise ConfigError(f"{where}: preprocess.windows needs one [center, width] window "
                          "(replicated to 3 channels) or three (R, G, B) when intensity is 'window'")
    for i, window in enumerate(config.preprocess.windows):
        if len(window) != 2 or window[1] <= 0:
            raise ConfigError(f"{where}: preprocess.windows[{i}] is {window}; "
                              "write [center, width] with width > 0, e.g. [-600, 1500]")
    crop = config.augment.crop_from
    if crop is not None and crop < config.preprocess.image_size:
        raise ConfigError(f"{where}: augment.crop_from ({crop}) must be at least "
                          f"preprocess.image_size ({config.preprocess.image_size})")
    if not config.model.finetune.stages:
        raise ConfigError(f"{where}: model.finetune.stages must list at least one stage")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _build(cls, values: Any, where: str, prefix: str):
    """Recursively turn a mapping into dataclass ``cls``, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping, "
                          f"got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {prefix}{unknown[0]!s}; "
                          f"allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _convert(hints[name], value, where, prefix + name)
    return cls(**kwargs)


def _convert(hint, value, where: str, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, key + ".")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0] if errors else ConfigError(f"{where}: {key} is invalid")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_convert(args[0], item, where, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, where, f"{key}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
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
            raise ConfigError(f"{where}: {key} must be text, got {value!r}")
        return value
    return value
