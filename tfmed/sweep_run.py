"""``tfmed sweep-layers CONFIG``: Bar et al.'s layer table for an experiment's data.

Loads and splits the experiment's data exactly as ``tfmed run`` does, then
fits one SVM per backbone tap and per fusion on the training split and
measures each on the validation split (never on test).

Example:
    >>> table, path = sweep_experiment(ExperimentConfig.from_yaml("experiments/pneumonia_mnist.yaml"))  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from tfmed.config import ConfigError, ExperimentConfig

DEFAULT_TAPS = ("early", "middle", "late")


def sweep_experiment(config: ExperimentConfig, taps: Sequence[str] | None = None,
                     runs_dir: str | Path | None = None) -> tuple[str, Path]:
    """Run the layer sweep; return the printable table and the saved CSV path."""
    from tfmed.data.pipeline import load_arrays
    from tfmed.data.transforms import fit_statistics
    from tfmed.experiment import environment_info, log, new_run_dir, prepare_data
    from tfmed.modes.sweep import format_sweep, save_sweep, sweep_layers

    if config.model.mode != "svm":
        raise ConfigError(f"{config.name}: sweep-layers compares SVM features; set model.mode: svm")
    taps = list(taps or DEFAULT_TAPS)
    table = prepare_data(config)
    if table.task != "binary":
        raise ConfigError(f"{config.name}: sweep-layers reports sensitivity/specificity and needs a "
                          f"binary task, but the data is {table.task}")
    train, val = table.split("train"), table.split("val")
    stats = fit_statistics(train, config.preprocess) if config.preprocess.intensity in (
        "minmax_dataset", "standardize", "mean_image") else None
    x_train, y_train = load_arrays(train, config.preprocess, stats=stats)
    x_val, y_val = load_arrays(val, config.preprocess, stats=stats)
    svm = config.model.svm
    fusions = [taps[-2:]] if len(taps) >= 2 else []
    log(f"sweeping taps {taps} and fusion {fusions} of {config.model.backbone}")
    frame = sweep_layers(x_train, y_train, x_val, y_val, taps=taps, fusions=fusions,
                         backbone=config.model.backbone, weights=config.model.weights,
                         weights_dir=config.model.weights_dir, pooling=svm.pooling,
                         image_size=config.preprocess.image_size, kernel=svm.kernel, C=tuple(svm.C),
                         gamma=tuple(svm.gamma), cv=svm.cv, class_weight=svm.class_weight,
                         cache_dir=str(Path(config.runs_dir) / ".feature_cache"),
                         random_state=config.seed)
    out_dir = new_run_dir(runs_dir or config.runs_dir, f"{config.name}_sweep")
    config.to_yaml(out_dir / "config.yaml")
    pd.Series(environment_info(config)).to_json(out_dir / "environment.json", indent=2)
    path = save_sweep(frame, out_dir / "layer_sweep.csv")
    return format_sweep(frame), path
