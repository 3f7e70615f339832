"""Run an experiment end to end and write a self-contained run directory.

config -> source -> validation -> patient split -> preprocessing statistics
-> mode (features + SVM | staged fine-tuning) -> thresholds chosen on
validation -> metrics on validation and test -> run directory.

A run directory ``runs/NAME/TIMESTAMP/`` holds the config snapshot, the seed
and package versions (``environment.json``), the split of every row
(``splits.csv``), the model artifact (``model/``), ``metrics.json``,
``predictions.csv``, the plots and ``report.html``. Runs never overwrite
each other.

Example:
    >>> from tfmed.config import ExperimentConfig
    >>> config = ExperimentConfig.from_yaml("experiments/pneumonia_mnist.yaml")  # doctest: +SKIP
    >>> run_dir = run_experiment(config)                                         # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed import __version__
from tfmed.config import ConfigError, EvaluationConfig, ExperimentConfig
from tfmed.data.table import ImageTable
from tfmed.inference import TrainedModel
from tfmed.progress import log

THRESHOLD_KEYS = {"youden": "youden", "sensitivity": "high_sensitivity",
                  "specificity": "high_specificity", "fixed": "fixed"}
VERSIONED_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "scikit-learn", "scikit-image",
                      "opencv-python-headless", "pydicom", "PyYAML", "matplotlib")


def environment_info(config: ExperimentConfig) -> dict:
    """Seed, versions and command line: what is needed to reproduce a run."""
    from importlib import metadata

    versions = {"tfmed": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": config.seed, "versions": versions, "platform": platform.platform(),
            "command": sys.argv, "cwd": os.getcwd(),
            "started": dt.datetime.now().isoformat(timespec="seconds")}


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``runs_dir/name/TIMESTAMP`` (suffixed -2, -3 ... if taken); never reuses one.

    Example:
        >>> import tempfile
        >>> first = new_run_dir(tempfile.mkdtemp(), "demo")
        >>> second = new_run_dir(first.parent.parent, "demo")
        >>> first != second
        True
    """
    parent = Path(runs_dir) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {parent}")


def prepare_data(config: ExperimentConfig) -> ImageTable:
    """Load, validate and split the experiment's data (stops with a full report on bad rows)."""
    from tfmed.data.sources import load_source
    from tfmed.data.splits import ensure_splits
    from tfmed.data.validate import apply_validation, validate_table

    log(f"loading data source {config.data.source!r}")
    table = load_source(config.data)
    need_ids = config.split.method in ("patient", "kfold") or not _has_all_splits(table)
    log(f"validating {len(table)} rows")
    report = validate_table(table, need_patient_ids=need_ids)
    table = apply_validation(table, report, exclude_bad_rows=config.data.exclude_bad_rows)
    table = ensure_splits(table, config.split)
    return table


def check_config_fits_data(config: ExperimentConfig, table: ImageTable) -> None:
    """Settings that only make sense for some tasks, checked once the task is known."""
    if config.model.mode == "finetune" and config.balance.method == "class_weight" \
            and table.task == "multiclass":
        raise ConfigError(f"{config.name}: balance.method class_weight weights the binary cross-entropy "
                          "(w_pos = N_neg/N, w_neg = N_pos/N) and needs a binary or multilabel task; "
                          "for multiclass data use balance.method: oversample")
    if config.model.finetune.hierarchy and config.model.mode == "finetune" and table.task != "multiclass":
        raise ConfigError(f"{config.name}: model.finetune.hierarchy maps fine classes to coarse ones and "
                          f"needs multiclass data, but the data is {table.task}")


def _has_all_splits(table: ImageTable) -> bool:
    present = set(table.frame["split"].dropna().unique())
    return {"train", "val", "test"} <= present


def select_thresholds(task: str, y_val: np.ndarray, s_val: np.ndarray,
                      evaluation: EvaluationConfig) -> dict:
    """Operating thresholds chosen on validation data only (per label for multilabel).

    Example:
        >>> y = np.array([0, 0, 1, 1]); s = np.array([0.1, 0.4, 0.35, 0.8])
        >>> sorted(select_thresholds("binary", y, s, EvaluationConfig()))
        ['fixed', 'high_sensitivity', 'high_specificity', 'youden']
    """
    from tfmed.evaluation.thresholds import operating_points

    def pick(y, s):
        points = operating_points(y, s, targets=(evaluation.target_sensitivity,),
                                  specificity_targets=(evaluation.target_specificity,))
        return {**points, "fixed": 0.5}

    if task == "multiclass":
        return {}
    if task == "binary":
        return {k: float(v) for k, v in pick(y_val, s_val).items()}
    per_label = [pick(y_val[:, j], s_val[:, j]) for j in range(y_val.shape[1])]
    return {k: [float(p[k]) for p in per_label] for k in per_label[0]}


def fit_model(config: ExperimentConfig, table: ImageTable, train: ImageTable, val: ImageTable | None,
              stats: dict | None, run_dir: Path | None) -> TrainedModel:
    """Fit the configured mode on ``train``; ``val`` (optional) drives fine-tuning's early stopping."""
    model_cfg = config.model
    if model_cfg.mode == "svm":
        from tfmed.data.pipeline import load_arrays
        from tfmed.modes.svm import FeatureSVM

        svm = model_cfg.svm
        log(f"preprocessing {len(train)} training images at {config.preprocess.image_size} px")
        x_train, y_train = load_arrays(train, config.preprocess, stats=stats)
        estimator = FeatureSVM(
            backbone=model_cfg.backbone, weights=model_cfg.weights, weights_dir=model_cfg.weights_dir,
            taps=tuple(svm.taps), pooling=svm.pooling, image_size=config.preprocess.image_size,
            kernel=svm.kernel, C=tuple(svm.C), gamma=tuple(svm.gamma), cv=svm.cv,
            class_weight=svm.class_weight, texture=svm.texture, task=table.task,
            cache_dir=str(Path(config.runs_dir) / ".feature_cache"), batch_size=svm.batch_size,
            random_state=config.seed, preprocess=dataclasses.asdict(config.preprocess))
        groups = train.frame["patient_id"].astype(str).to_numpy() \
            if train.frame["patient_id"].notna().all() else None
        log(f"extracting {model_cfg.backbone} features {list(svm.taps)} and fitting the SVM "
            f"(C grid {svm.C}, {svm.cv}-fold CV)")
        estimator.fit(x_train, y_train, groups=groups)
    else:
        from tfmed.data.pipeline import make_dataset
        from tfmed.losses import class_balance_weights
        from tfmed.modes.finetune import FineTuner

        ft = model_cfg.finetune
        pos_weight = neg_weight = None
        if config.balance.method == "class_weight":
            pos_weight, neg_weight = class_balance_weights(train.labels())  # w_pos = N_neg/N, w_neg = N_pos/N
        balance = config.balance if config.balance.method in ("oversample", "undersample") else None
        estimator = FineTuner(model_cfg.backbone, table.task, table.num_outputs, config=ft,
                              image_size=config.preprocess.image_size, weights=model_cfg.weights,
                              weights_dir=model_cfg.weights_dir, pos_weight=pos_weight,
                              neg_weight=neg_weight, run_dir=run_dir, seed=config.seed,
                              classes=list(table.classes))
        batch = estimator.global_batch_size  # per-replica batch x replicas
        train_ds = make_dataset(train, config.preprocess, training=True, batch_size=batch,
                                augment=config.augment, balance=balance, stats=stats, seed=config.seed)
        val_ds = make_dataset(val, config.preprocess, training=False, batch_size=batch, stats=stats) \
            if val is not None and len(val) else None
        log(f"fine-tuning {model_cfg.backbone} in {len(ft.stages)} stage(s)")
        from tfmed.callbacks import EpochLogger

        estimator.fit(train_ds, val_ds, callbacks=[EpochLogger()])
    return TrainedModel(mode=model_cfg.mode, task=table.task, classes=list(table.classes),
                        preprocess=config.preprocess, stats=stats, estimator=estimator,
                        threshold_method=THRESHOLD_KEYS[config.evaluation.threshold],
                        backbone=model_cfg.backbone)


def evaluate_split(model: TrainedModel, table: ImageTable, scores: np.ndarray,
                   evaluation: EvaluationConfig) -> dict:
    """Metrics of one split at every stored operating point."""
    from tfmed.evaluation.metrics import evaluate

    y = table.labels()
    if model.task == "multiclass":
        return evaluate("multiclass", y, scores, None, model.classes,
                        ci_level=evaluation.ci_level, bootstrap=evaluation.bootstrap)
    return {name: evaluate(model.task, y, scores, threshold, model.classes,
                           ci_level=evaluation.ci_level, bootstrap=evaluation.bootstrap)
            for name, threshold in model.thresholds.items()}


def run_experiment(config: ExperimentConfig, runs_dir: str | Path | None = None) -> Path:
    """Run ``config`` end to end; return the new run directory.

    Example:
        >>> run_dir = run_experiment(ExperimentConfig.from_yaml("experiments/pneumonia_mnist.yaml"))  # doctest: +SKIP
    """
    import keras

    from tfmed.data.transforms import fit_statistics

    started = time.time()
    table = prepare_data(config)  # fails before a run directory exists
    check_config_fits_data(config, table)
    run_dir = new_run_dir(runs_dir or config.runs_dir, config.name)
    log(f"run directory {run_dir}")
    config.to_yaml(run_dir / "config.yaml")
    (run_dir / "environment.json").write_text(json.dumps(environment_info(config), indent=2))
    keras.utils.set_random_seed(config.seed)
    splits_frame = table.frame.drop(columns=["array_index"], errors="ignore")
    splits_frame.to_csv(run_dir / "splits.csv", index=False)
    if len(table.excluded):
        table.excluded.to_csv(run_dir / "excluded_rows.csv", index=False)
        log(f"{len(table.excluded)} bad rows excluded (listed in excluded_rows.csv)")

    train, val, test = table.split("train"), table.split("val"), table.split("test")
    stats = fit_statistics(train, config.preprocess) if config.preprocess.intensity in (
        "minmax_dataset", "standardize", "mean_image") else None
    fold_summary = None
    if config.split.method == "kfold":
        fold_summary = run_folds(config, table, stats, run_dir)
        train = _merge(train, val)
    # k-fold refits on train+val, so no rows are left for early stopping.
    model = fit_model(config, table, train, None if fold_summary is not None else val, stats, run_dir)

    # With k-fold the final model is refit on train+val, so validation is not held out any
    # more: thresholds then come from the pooled out-of-fold scores instead.
    parts = {"test": test} if fold_summary is not None else {"val": val, "test": test}
    log(f"scoring {', '.join(parts)} split(s)")
    scores = {name: model.predict(part) for name, part in parts.items() if len(part)}
    if fold_summary is not None:
        model.thresholds = fold_summary.pop("thresholds")
    else:
        model.thresholds = select_thresholds(model.task, val.labels(), scores["val"], config.evaluation)
    model.save(run_dir / "model")
    metrics = {"task": model.task, "classes": model.classes, "mode": model.mode,
               "backbone": config.model.backbone, "thresholds": model.thresholds,
               "threshold_method": model.threshold_method,
               "counts": split_counts(table), "splits": {}}
    for name, split_scores in scores.items():
        metrics["splits"][name] = evaluate_split(model, parts[name], split_scores, config.evaluation)
    if fold_summary is not None:
        metrics["kfold"] = fold_summary
    if config.model.finetune.hierarchy and model.task == "multiclass":
        metrics["coarse"] = coarse_metrics(config.model.finetune.hierarchy, model, parts, scores)
    metrics["seconds"] = round(time.time() - started, 1)
    from tfmed.reporting import write_run_outputs

    write_run_outputs(run_dir, config, model, parts, scores, metrics)
    log(f"done in {metrics['seconds']:.0f} s: {run_dir / 'report.html'}")
    print(summary_text(metrics), flush=True)
    return run_dir


def coarse_metrics(mapping: dict, model: TrainedModel, parts: dict, scores: dict) -> dict:
    """Coarse-class metrics from fine-class probabilities summed per coarse class (Esteva et al. 2017)."""
    from tfmed.evaluation.metrics import evaluate
    from tfmed.hierarchy import Hierarchy

    hierarchy = Hierarchy(mapping)
    result = {}
    for name, split_scores in scores.items():
        proba, coarse_classes = hierarchy.coarse_probabilities(split_scores, model.classes)
        y = hierarchy.coarse_labels(parts[name].labels(), fine_classes=model.classes)
        result[name] = evaluate("multiclass", y, proba, None, coarse_classes)
    return result


def run_folds(config: ExperimentConfig, table: ImageTable, stats: dict | None, run_dir: Path) -> dict:
    """Stratified group k-fold over train+val: per-fold metrics and pooled out-of-fold scores."""
    from tfmed.data.splits import kfold_indices
    from tfmed.evaluation.metrics import evaluate

    trainval = _merge(table.split("train"), table.split("val"))
    oof = None
    fold_aucs = []
    for k, (fit_rows, held_rows) in enumerate(kfold_indices(trainval, config.split.folds, config.split.seed)):
        log(f"fold {k + 1}/{config.split.folds}: {len(fit_rows)} train, {len(held_rows)} held out")
        fit_part, held_part = trainval.subset(fit_rows), trainval.subset(held_rows)
        # the held-out fold only measures: it never drives early stopping
        model = fit_model(config, table, fit_part, None, stats, None)
        held_scores = model.predict(held_part)
        if oof is None:
            oof = np.zeros((len(trainval),) + held_scores.shape[1:])
        oof[held_rows] = held_scores
        fold_aucs.append(_auc(evaluate(table.task, held_part.labels(), held_scores,
                                       0.5 if table.task != "multiclass" else None, table.classes)))
    y = trainval.labels()
    pooled = evaluate(table.task, y, oof, 0.5 if table.task != "multiclass" else None, table.classes)
    pd.DataFrame({"image": trainval.frame["image"], "label": list(map(str, y.tolist())),
                  "oof_score": list(map(str, oof.tolist()))}).to_csv(run_dir / "oof_predictions.csv",
                                                                      index=False)
    aucs = np.array([a for a in fold_aucs if a is not None], dtype=float)
    return {"folds": config.split.folds, "fold_auc": fold_aucs,
            "auc_mean": float(aucs.mean()) if len(aucs) else None,
            "auc_sd": float(aucs.std(ddof=1)) if len(aucs) > 1 else None,
            "pooled_oof_auc": _auc(pooled),
            "thresholds": select_thresholds(table.task, y, oof, config.evaluation)}


def _auc(metrics: dict):
    for key in ("auc", "macro_auc", "roc_auc"):
        value = metrics.get(key)
        if isinstance(value, dict):
            value = value.get("value", value.get("estimate"))
        if value is not None:
            return float(value)
    return None


def _merge(a: ImageTable, b: ImageTable) -> ImageTable:
    frame = pd.concat([a.frame, b.frame], ignore_index=True)
    return ImageTable(frame, list(a.classes), a.task, a.images, a.source)


def split_counts(table: ImageTable) -> dict:
    """Images per split and class, e.g. {"train": {"normal": 10, "pneumonia": 30}, ...}."""
    return {name: table.split(name).class_counts() for name in ("train", "val", "test")}


def summary_text(metrics: dict) -> str:
    """A short plain-text summary of the run's headline numbers."""
    from tfmed.reporting import headline_rows

    lines = [f"{'split':<6} {'point':<17} {'AUC (95% CI)':<22} {'sens':>6} {'spec':>6} {'PPV':>6} {'NPV':>6}"]
    for row in headline_rows(metrics):
        lines.append(f"{row['split']:<6} {row['point']:<17} {row['auc']:<22} {row['sensitivity']:>6} "
                     f"{row['specificity']:>6} {row['ppv']:>6} {row['npv']:>6}")
    return "\n".join(lines)
