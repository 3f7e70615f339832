"""Layer sweep: which backbone taps (and fusions) give the best SVM (Bar et al. 2015).

:func:`sweep_layers` fits one :class:`~tfmed.modes.svm.FeatureSVM` per tap and
per fusion of taps on the training images and measures it on the validation
images, giving a table in the form of Bar et al.'s: one column per tap or
fusion, rows sensitivity, specificity and AUC.

Operating point: sensitivity and specificity are read at the SVM's own
decision boundary (score 0, with class-balanced weights), so no threshold is
tuned on the validation images they are measured on. AUC is
threshold-free. The features of all taps are extracted once, in a single
pass through the backbone, and shared through the feature cache (arrays,
:func:`sweep_layers`) or the feature store (tables, :func:`sweep_tables`).

Example:
    >>> table = sweep_layers(X_train, y_train, X_val, y_val, taps=["early", "middle", "late"],
    ...                      fusions=[["middle", "late"]], C=(1.0, 10.0))  # doctest: +SKIP
    >>> print(format_sweep(table))                                          # doctest: +SKIP
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score

from tfmed.modes.features import FeatureCache, FeatureError, backbone_features, check_taps
from tfmed.modes.svm import FeatureSVM

ROWS = ("sensitivity", "specificity", "AUC")


def sweep_layers(X_train, y_train, X_val, y_val, *, taps: Sequence[str],
                 fusions: Sequence[Sequence[str]] = (("middle", "late"),), groups=None,
                 **svm_params) -> pd.DataFrame:
    """Validation sensitivity/specificity/AUC of an SVM on each tap and fusion.

    Binary tasks only (the positive class is the second of the sorted
    classes, e.g. 1 or "pneumonia"). ``svm_params`` go to
    :class:`FeatureSVM` (backbone, weights, image_size, C, cv, cache_dir,
    ...); without ``cache_dir`` a temporary cache is used for the sweep.
    Columns are named by the tap, fusions by their taps joined with "+".
    :func:`sweep_tables` does the same on tables whose images stream from disk.

    Example:
        >>> df = sweep_layers(Xtr, ytr, Xva, yva, taps=["middle", "late"],
        ...                   fusions=[["middle", "late"]], weights=None)  # doctest: +SKIP
        >>> list(df.columns)                                               # doctest: +SKIP
        ['middle', 'late', 'middle+late']
    """
    configs, template, all_taps = _sweep_plan(taps, fusions, y_train, y_val, svm_params)
    with tempfile.TemporaryDirectory(prefix="tfmed-sweep-") as scratch:
        template.set_params(cache_dir=template.cache_dir or scratch)
        _fill_cache(template, all_taps, X_train, X_val)
        columns = {}
        for config in configs:
            model = _config_model(template, config)
            model.fit(X_train, y_train, groups=groups)
            columns["+".join(config)] = _binary_metrics(np.asarray(y_val) == model.classes_[1],
                                                        model.decision_function(X_val))
    return pd.DataFrame(columns, index=list(ROWS))


def sweep_tables(train, val, inputs, *, taps: Sequence[str],
                 fusions: Sequence[Sequence[str]] = (("middle", "late"),), **svm_params) -> pd.DataFrame:
    """:func:`sweep_layers` on the ``train`` and ``val`` tables (``inputs``: their
    :class:`~tfmed.data.statistics.ImageInputs`): the images stream through the pipeline and the
    backbone once, for every tap together, into the feature store of ``cache_dir`` (a temporary
    one without it), and each tap and fusion is fitted on the stored features, so memory never
    holds the images; rows of one patient stay in one CV fold when every row has a patient id.

    Example:
        >>> df = sweep_tables(table.split("train"), table.split("val"), inputs, taps=["early", "late"],
        ...                   fusions=[], cache_dir="runs/.feature_cache")  # doctest: +SKIP
    """
    configs, template, all_taps = _sweep_plan(taps, fusions, train.labels(), val.labels(), svm_params)
    with tempfile.TemporaryDirectory(prefix="tfmed-sweep-") as scratch:
        texture = any("texture" in config for config in configs) or bool(template.texture)
        every_tap = FeatureSVM(**{**template.get_params(), "cache_dir": template.cache_dir or scratch,
                                  "taps": tuple(all_taps), "texture": texture})
        every_tap._start_fit(every_tap._check_params())
        train_blocks, input_shape = every_tap._table_blocks(train, inputs)
        val_blocks, _ = every_tap._table_blocks(val, inputs)
        columns = {}
        for config in configs:
            model = _config_model(template, config)
            names = _block_names(train_blocks, list(model.taps) + (["texture"] if model.texture else []))
            model._start_fit(model._check_params())
            model._fit_table_blocks(train, {name: train_blocks[name] for name in names}, input_shape)
            scores = model._decisions(model._checked({name: val_blocks[name] for name in names}, input_shape))
            columns["+".join(config)] = _binary_metrics(val.labels() == model.classes_[1], scores)
    return pd.DataFrame(columns, index=list(ROWS))


def _block_names(blocks: dict, names: list[str]) -> list[str]:
    """The feature blocks of taps ``names``: themselves, or for views of volumes each view's
    (``view_1:middle``, ...), in the order a fit on the views makes them.

    Example:
        >>> _block_names({"view_1:late": 0, "view_2:late": 0, "view_1:middle": 0}, ["middle"])
        ['view_1:middle', 'view_2:middle']
    """
    views = sorted({key.split(":")[0] for key in blocks if key.startswith("view_")}, key=lambda v: int(v[5:]))
    return [f"{view}:{name}" for view in views for name in names] if views else names


def _sweep_plan(taps, fusions, y_train, y_val, svm_params) -> tuple[list[list[str]], FeatureSVM, list[str]]:
    """The sweep's columns (each a list of taps, "texture" allowed), the FeatureSVM they share
    settings with, and the backbone taps they need together; FeatureError for a sweep that cannot run."""
    for forbidden in ("taps", "task"):
        if forbidden in svm_params:
            raise FeatureError(f"sweep_layers sets {forbidden!r} itself; remove it from the SVM parameters")
    if svm_params.get("fit_views"):
        raise FeatureError("sweep_layers compares taps on the training and validation images as they are, "
                           "without test-time views; remove fit_views (model.svm.fit_views) for the sweep")
    template = FeatureSVM(**svm_params)
    configs, all_taps = sweep_columns(template.backbone, taps, fusions)
    classes = np.unique(np.asarray(y_train))
    if np.asarray(y_train).ndim != 1 or len(classes) != 2:
        raise FeatureError(f"sweep_layers reports sensitivity/specificity and needs a binary y_train; "
                           f"got {len(classes)} classes with shape {np.asarray(y_train).shape}")
    unknown = sorted(set(np.unique(np.asarray(y_val)).tolist()) - set(classes.tolist()), key=str)
    if unknown:
        raise FeatureError(f"y_val holds class(es) {unknown} absent from y_train {classes.tolist()}")
    return configs, template, all_taps


def sweep_columns(backbone: str, taps, fusions) -> tuple[list[list[str]], list[str]]:
    """The sweep's columns (each a list of taps, "texture" allowed) and the backbone taps they need together,
    checked without any image: FeatureError for no column, UnknownTapError for a tap ``backbone`` lacks or a
    list naming one twice.

    Example:
        >>> sweep_columns("efficientnet_lite0", ["middle", "late"], [["middle", "late"]])
        ([['middle'], ['late'], ['middle', 'late']], ['middle', 'late'])
    """
    taps = [taps] if isinstance(taps, str) else list(taps)
    fusions = [[f] if isinstance(f, str) else list(f) for f in fusions]
    configs = [[tap] for tap in taps] + fusions
    if not configs:
        raise FeatureError("sweep_layers needs at least one tap or fusion")
    all_taps = list(dict.fromkeys(tap for config in configs for tap in config if tap != "texture"))
    check_taps(backbone, all_taps)
    for names in (taps, *fusions):  # the taps given, and each fusion, name no tap twice
        backbone_taps = [tap for tap in names if tap != "texture"]
        if backbone_taps:
            check_taps(backbone, backbone_taps)
    return configs, all_taps


def _config_model(template: FeatureSVM, config: list[str]) -> FeatureSVM:
    """An unfitted FeatureSVM with ``template``'s settings on the taps (and texture) of one sweep column."""
    return FeatureSVM(**{**template.get_params(), "taps": tuple(t for t in config if t != "texture"),
                         "texture": "texture" in config or bool(template.texture)})


def _fill_cache(template: FeatureSVM, taps: list[str], *image_sets) -> None:
    """One backbone pass per image set (per view, for views of volumes) for all taps; the fits then
    read the cache."""
    cache = FeatureCache(template.cache_dir)
    for images in image_sets:
        parts = [images[:, v] for v in range(images.shape[1])] if np.ndim(images) == 5 else [images]
        for part in parts:
            backbone_features(part, backbone=template.backbone, weights=template.weights,
                              weights_dir=template.weights_dir, taps=taps, pooling=template.pooling,
                              image_size=template.image_size, batch_size=template.batch_size,
                              cache=cache, random_state=template.random_state)


def _binary_metrics(positive: np.ndarray, scores: np.ndarray) -> list[float]:
    predicted = scores > 0
    tn, fp, fn, tp = confusion_matrix(positive, predicted, labels=[False, True]).ravel()
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    auc = roc_auc_score(positive, scores) if 0 < positive.sum() < len(positive) else float("nan")
    return [float(sensitivity), float(specificity), float(auc)]


def format_sweep(df: pd.DataFrame, digits: int = 3) -> str:
    """The sweep table as aligned text, one column per tap/fusion.

    Example:
        >>> df = pd.DataFrame({"late": [0.9, 0.8, 0.93]}, index=list(ROWS))
        >>> print(format_sweep(df))
                     late
        sensitivity 0.900
        specificity 0.800
        AUC         0.930
    """
    return df.to_string(float_format=lambda v: f"{v:.{digits}f}")


def save_sweep(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the sweep table to CSV (rows sensitivity/specificity/AUC) and return the path.

    Example:
        >>> save_sweep(df, "runs/demo/layer_sweep.csv")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index_label="metric")
    return path
