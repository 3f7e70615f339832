"""``tfmed sweep-layers CONFIG``: Bar et al.'s layer table for an experiment's data.

Loads and splits the experiment's data exactly as ``tfmed run`` does, then
fits one SVM per backbone tap and per fusion on the training split and
measures each on the validation split (never on test). Binary tasks only. Refused before any data
is read: a k-fold experiment (no validation split), a tap the backbone lacks or given twice, and
data whose section already says they are not binary (e.g. ChestX-ray14, multilabel). The images stream
through the backbone once, all taps together, into the runs folder's feature
store (``RUNS_DIR/.feature_cache``); a second sweep of the same data reads it back.

Example:
    >>> table, path = sweep_experiment(ExperimentConfig.from_yaml("experiments/pneumonia_mnist_svm.yaml"))  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from tfmed.config import ConfigError, ExperimentConfig
from tfmed.modes import FeatureSVM, get_mode
from tfmed.modes.features import UnknownTapError
from tfmed.modes.sweep import format_sweep, save_sweep, sweep_columns, sweep_tables
from tfmed.progress import log
from tfmed.run.experiment import in_runs_dir, prepare_data, run_inputs
from tfmed.run.rundir import SWEEP_FILE, check_runs_dir, environment_info, new_run_dir

DEFAULT_TAPS = ("early", "middle", "late")


def sweep_experiment(config: ExperimentConfig, taps: Sequence[str] | None = None,
                     runs_dir: str | Path | None = None) -> tuple[str, Path]:
    """Run the layer sweep; return the printable table and the saved CSV path (in a new folder
    ``RUNS/NAME_sweep/TIMESTAMP`` of the config's runs folder, or of ``runs_dir`` when given).

    Example:
        >>> table, path = sweep_experiment(ExperimentConfig.from_yaml("experiments/pneumonia_mnist_svm.yaml"),
        ...                                runs_dir="/tmp/sweeps")  # doctest: +SKIP
    """
    config = in_runs_dir(config, runs_dir)
    if get_mode(config.model.mode) is not FeatureSVM:
        raise ConfigError(f"{config.name}: model.mode is {config.model.mode!r}, and sweep-layers compares SVM "
                          "features; set model.mode: svm")
    if config.model.svm.strategy == "multiworker":
        raise ConfigError(f"{config.name}: model.svm.strategy is 'multiworker', and sweep-layers runs in one "
                          "process; multiworker is for tfmed run (use auto, cpu, mirrored or tpu here)")
    if config.split.method == "kfold":
        raise ConfigError(f"{config.name}: split.method is 'kfold', and sweep-layers measures each tap on the "
                          "validation split, which k-fold makes none of; sweep a copy of the experiment with "
                          "split.method: patient (or predefined) "
                          "and no split.folds, then set the chosen taps in model.svm.taps of the k-fold one")
    scoring = [name for name, used in (("tta.enabled", config.tta.enabled),
                                       ("evaluation.recalibration", config.evaluation.recalibration != "none"),
                                       ("report.explain", config.report.explain)) if used]
    if scoring:
        raise ConfigError(f"{config.name}: {scoring[0]} is set, and sweep-layers scores each tap on the validation "
                          "images as they are, recalibrating and explaining nothing; sweep a copy of the experiment "
                          "without it")
    taps = list(taps or DEFAULT_TAPS)
    fusions = [taps[-2:]] if len(taps) >= 2 else []
    try:  # the taps, before any data is read
        sweep_columns(config.model.backbone, taps, fusions)
    except UnknownTapError as error:  # a --taps value, not the experiment's model.svm.taps (which a sweep leaves)
        raise UnknownTapError(f"--taps: {error}") from None
    check_runs_dir(config.runs_dir)
    section = "data.task" if config.data.task else f"data.source {config.data.source.split(':')[0]}"
    _refuse_non_binary(config, config.data.task_before_data(), section)
    table = prepare_data(config)
    _refuse_non_binary(config, table.task, "the data")
    train, val = table.split("train"), table.split("val")
    inputs = run_inputs(config, table)
    template = FeatureSVM.from_experiment(config, train, None)
    params = {k: v for k, v in template.get_params().items() if k not in ("taps", "task")}
    log(f"sweeping taps {taps} and fusion {fusions} of {config.model.backbone}")
    frame = sweep_tables(train, val, inputs, taps=taps, fusions=fusions, **params)
    out_dir = new_run_dir(config.runs_dir, f"{config.name}_sweep")
    config.to_yaml(out_dir / "config.yaml")
    pd.Series(environment_info(config)).to_json(out_dir / "environment.json", indent=2)
    path = save_sweep(frame, out_dir / SWEEP_FILE)
    return format_sweep(frame), path


def _refuse_non_binary(config: ExperimentConfig, task: str | None, what: str) -> None:
    """ConfigError when ``task`` (None: not known yet) is not binary; ``what`` says where it comes from."""
    if task not in (None, "binary"):
        raise ConfigError(f"{config.name}: sweep-layers reads sensitivity and specificity, so it needs a binary "
                          f"task, but {what} gives {task} data; compare taps on these data by running the "
                          "experiment with each in model.svm.taps")
