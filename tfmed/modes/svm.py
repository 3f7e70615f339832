"""The features + SVM mode (Bar et al. 2015) as a scikit-learn estimator.

:class:`FeatureSVM` feeds images through a frozen ImageNet backbone, pools the
activations of one or more taps (e.g. a middle stage and the last stage),
optionally adds LBP texture histograms, standardises each block on the
training features and trains a support vector machine whose C (and gamma)
are chosen by cross-validated ROC AUC on the training split only.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 255, (24, 32, 32, 1)).astype("float32")
    >>> y = np.repeat([0, 1], 12)
    >>> X[y == 1, 8:24, 8:24] = 255.0
    >>> model = FeatureSVM(weights=None, taps=("middle",), image_size=32, C=(1.0,), cv=3)
    >>> model.fit(X, y).predict_proba(X).shape
    (24, 2)
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from numbers import Real
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from joblib import parallel_config
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import (GridSearchCV, GroupKFold, KFold, StratifiedGroupKFold,
                                     StratifiedKFold)
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from tfmed.config import UNKNOWN_LABEL, ConfigError, GammaName, SVMConfig, Task, choices
from tfmed.evaluation.thresholds import known_column
from tfmed.files import read_arrays, read_json
from tfmed.modes.base import average_over_views, register_mode, scores_from_probabilities
from tfmed.modes.features import (CHUNK_SIZE, FEATURE_CODE_VERSION, FeatureCache, FeatureError, UnknownTapError,
                                  as_input_batch, backbone_features, base_model, check_finite, dataset_features,
                                  check_taps, lbp_features)
from tfmed.modes.feature_store import FeatureStore, inputs_identity, table_identity
from tfmed.modes import kernel_approximation
from tfmed.modes.kernel_approximation import ApproximateKernelSVC
from tfmed.progress import Throughput, log
from tfmed.training.distribute import WorkerShare, worker_share
from tfmed.training.distribute import strategy as distribution_strategy

__all__ = ["FeatureSVM", "TooFewSamplesError", "ModelMismatchError", "FeatureError",
           "UnknownTapError"]

_STRATEGIES: dict = {}  # (strategy or None, WorkerShare) by strategy name, made once per process
ARTIFACT_FORMAT = 3  # 1 was a joblib pickle (tfmed 0.1); 2 had one classifier group, models_ not nested
READABLE_FORMATS = (2, 3)
TEXTURE = "texture"


class TooFewSamplesError(FeatureError):
    """A class has too few training samples (or patients) for the CV folds."""


class ModelMismatchError(FeatureError):
    """New data (or a loaded model) does not match what the model was fitted on."""


@register_mode
class FeatureSVM(ClassifierMixin, BaseEstimator):
    """Frozen-backbone features + SVM classifier (Bar et al. 2015).

    Parameters (stored as given; checked in ``fit``):
        backbone: registry name of the backbone (``tfmed.backbones``).
        weights: "imagenet", None (random init seeded by ``random_state``;
            this seeds the global Keras/NumPy/Python generators) or a path.
        weights_dir: a folder searched first for ImageNet weight files (see tfmed.backbones.weights).
        taps: backbone taps to pool ("early", "middle", "late", "stage3", ...);
            several are fused by concatenation.
        pooling: "avg" or "max" global pooling of each tap.
        image_size: backbone input size; images are resized to it.
        kernel: "rbf" or "linear".
        C, gamma: a value or a list of values; a list is a grid searched by
            cross-validated ROC AUC on the training data (gamma only for rbf).
        cv: number of cross-validation folds (grid search and calibration).
        class_weight: "balanced" or None, passed to ``SVC``.
        texture: add uniform-LBP histograms (scikit-image) as a feature block.
        task: "binary", "multiclass", "multilabel" or None (inferred from y).
        cache_dir: folder for the feature cache (None: no cache).
        batch_size: backbone batch size.
        random_state: seed of the CV folds (and of a random backbone).
        preprocess: the preprocessing config (a dict) that produced the
            images; stored with the model so inference can repeat it.
        view_fusion: for 2-D views of volumes (X shaped (N, V, H, W, C)):
            "concat" fuses every view's blocks for one SVM, "per_view" fits
            one SVM per view and averages their probabilities.
        classifier: "exact" (``SVC``), "approximate"
            (:class:`~tfmed.modes.kernel_approximation.ApproximateKernelSVC`,
            fit time linear in the number of images) or "auto" (exact up to
            ``exact_limit`` training images, approximate above); the choice
            made is ``classifier_``.
        exact_limit, nystroem_components: see ``classifier``.
        search_rows: the grid search sees at most this many training rows, drawn
            per class in proportion (whole patients with ``groups``; each class
            keeps at least 100 rows or all it has); with more rows than this the
            calibration is fitted on 2-fold instead of ``cv``-fold scores. This
            keeps the fit near-linear in the number of images (see
            :func:`search_sample`).
        strategy: the ``tf.distribute`` strategy the backbone runs under while
            extracting features ("auto", "cpu", "mirrored", "tpu"; see
            :func:`tfmed.training.distribute.strategy`), or "multiworker", with
            which :meth:`extract_tables` shares the feature store's shards
            among the TF_CONFIG workers. Not saved with the model: a loaded
            model extracts with "auto".

    Features: each block (tap, texture) is standardised with a
    ``StandardScaler`` fitted on the training features; when several blocks
    are fused each is scaled by 1/sqrt(width) so that every block weighs the
    same in the kernel. Views of a volume give one block per view and tap
    (``view_1:late``, ...). Multiclass is one-vs-rest, multilabel one SVM per
    label. Probabilities come from ``CalibratedClassifierCV`` (sigmoid,
    fitted on cross-validated SVM scores; the search's, the calibration's and
    one-vs-rest's fits run as threads on every core of :func:`usable_cores`, each
    the fit one core would make); ``decision_function`` returns the
    scores of the final SVM refitted on all training data and ``predict``
    thresholds them at the SVM's own boundary (0; argmax for multiclass).

    Fitted attributes: ``classes_``, ``task_``, ``best_params_``,
    ``best_score_`` (CV AUC), ``cv_results_`` (DataFrame, one row per grid
    point), ``input_shape_``, ``block_widths_``, ``backbone_spec_``,
    ``scalers_``, ``groups_`` (the block names each classifier reads: one
    group, or one per view with ``per_view``) and ``models_`` (per group, the
    calibrated SVM(s)). With several groups ``best_params_`` maps each group
    to its parameters, ``best_score_`` is their mean and ``cv_results_`` has a
    ``group`` column.

    Example:
        >>> model = FeatureSVM(taps=("stage4",), image_size=224, C=(1.0, 10.0), cv=3,
        ...                    cache_dir="runs/features")
        >>> model.get_params()["taps"]
        ('stage4',)
    """

    name = "svm"

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = "imagenet",
                 weights_dir: str | None = None, taps: Sequence[str] = ("late",), pooling: str = "avg",
                 image_size: int = 224, kernel: str = "rbf", C=(0.1, 1, 10), gamma=("scale",),
                 cv: int = 5, class_weight: str | None = "balanced", texture: bool = False,
                 task: str | None = None, cache_dir: str | None = None, batch_size: int = 32,
                 random_state: int = 0, preprocess: dict | None = None, view_fusion: str = "concat",
                 classifier: str = "auto", exact_limit: int = 10000, nystroem_components: int = 1000,
                 search_rows: int = 5000, strategy: str = "auto", fit_views: bool = False):
        self.backbone = backbone
        self.weights = weights
        self.weights_dir = weights_dir
        self.taps = taps
        self.pooling = pooling
        self.image_size = image_size
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.cv = cv
        self.class_weight = class_weight
        self.texture = texture
        self.task = task
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.random_state = random_state
        self.preprocess = preprocess
        self.view_fusion = view_fusion
        self.classifier = classifier
        self.exact_limit = exact_limit
        self.nystroem_components = nystroem_components
        self.search_rows = search_rows
        self.strategy = strategy
        self.fit_views = fit_views

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config, cache_dir: str | None = None) -> "FeatureSVM":
        """Build from an ``ExperimentConfig`` (model.*, model.svm.*, preprocess.*).

        Example:
            >>> from tfmed.config import ExperimentConfig
            >>> FeatureSVM.from_config(ExperimentConfig()).image_size
            224
        """
        svm = config.model.svm
        return cls(backbone=config.model.backbone, weights=config.model.weights,
                   weights_dir=config.model.weights_dir, taps=tuple(svm.taps), pooling=svm.pooling,
                   image_size=config.preprocess.image_size, kernel=svm.kernel, C=tuple(svm.C),
                   gamma=tuple(svm.gamma), cv=svm.cv, class_weight=svm.class_weight,
                   texture=svm.texture, task=config.data.task, cache_dir=cache_dir,
                   batch_size=svm.batch_size, random_state=config.seed,
                   preprocess=dataclasses.asdict(config.preprocess), view_fusion=svm.view_fusion,
                   classifier=svm.classifier, exact_limit=svm.exact_limit,
                   nystroem_components=svm.nystroem_components, search_rows=svm.search_rows,
                   strategy=svm.strategy, fit_views=svm.fit_views)

    # ------------------------------------------------------------------ mode protocol

    @classmethod
    def check_before_data(cls, config) -> None:
        """Check the settings, the taps, the backbone and its weights without reading data.

        Example:
            >>> from tfmed.config import ExperimentConfig
            >>> try:
            ...     FeatureSVM.check_before_data(ExperimentConfig.from_dict({"model": {"svm": {"taps": ["middel"]}}}))
            ... except UnknownTapError as error:
            ...     print(str(error).split(";")[0])
            unknown tap 'middel' for backbone 'efficientnet_lite0'
        """
        from tfmed.backbones.factory import check_backbone

        from tfmed.training.distribute import check_reachable

        cls.from_config(config)._check_params()
        check_backbone(config.model.backbone, config.model.weights, config.preprocess.image_size,
                       config.model.weights_dir)
        check_reachable(config.model.svm.strategy, "model.svm.strategy")

    @classmethod
    def check_experiment(cls, config, table) -> None:
        """Every training table of the run (see :func:`~tfmed.data.splits.training_parts`) can be spread
        over ``model.svm.cv`` folds with each class in each fold (patients kept whole); the SVM handles
        every task.

        Example:
            >>> FeatureSVM.check_experiment(ExperimentConfig(), table)  # doctest: +SKIP
        """
        from tfmed.data.splits import training_parts

        for train in training_parts(table, config.split):
            cls.check_training_table(config, train, " (a k-fold's training part)" if config.split.method == "kfold"
                                     else "")

    @classmethod
    def check_training_table(cls, config, train, within: str = "") -> None:
        """``train`` can be spread over ``model.svm.cv`` folds with each class in each fold; ``within`` says
        which training table it is in the error.

        Example:
            >>> FeatureSVM.check_training_table(ExperimentConfig(), table.split("train"))  # doctest: +SKIP
        """
        model = cls.from_config(config)
        model.set_params(task=train.task)
        try:
            model.check_folds(train)
        except TooFewSamplesError as error:
            raise ConfigError(f"{config.name}: model.svm.cv: the training split{within} is too small for the "
                              f"SVM's {model.cv}-fold cross-validation: {error}") from None

    @classmethod
    def from_experiment(cls, config, train, run_dir) -> "FeatureSVM":
        """An unfitted model for ``config``; features are cached in ``RUNS_DIR/.feature_cache``.

        Example:
            >>> from tfmed.config import ExperimentConfig
            >>> FeatureSVM.from_experiment(ExperimentConfig(), None, None).cache_dir
            'runs/.feature_cache'
        """
        model = cls.from_config(config, cache_dir=str(Path(config.runs_dir) / ".feature_cache"))
        if train is not None:
            model.set_params(task=train.task)
        return model

    def fit_tables(self, train, val, inputs) -> "FeatureSVM":
        """Fit on the ``train`` table's images; C and gamma are chosen by CV on train (``val`` is not used).

        The images stream through the pipeline and the backbone in batches: only
        their pooled features are kept, in the feature store of ``cache_dir``
        (:mod:`tfmed.modes.feature_store`), so memory never holds the training
        images. Rows of one patient stay in one CV fold when every row has a
        patient id.

        Example:
            >>> model.fit_tables(table.split("train"), None, ImageInputs(preprocess))  # doctest: +SKIP
        """
        self._start_fit(self._check_params())
        what = (f"volumes ({inputs.volume_views.count} views each)" if inputs.volume_views is not None
                else "images")
        views = self._training_views(inputs)
        in_views = f" in {len(views)} test-time views" if len(views) > 1 else ""
        log(f"{self.backbone} features {list(_as_list(self.taps))} of {len(train)} training {what}{in_views} at "
            f"{inputs.preprocess.image_size} px")
        parts = [self._table_blocks(train, view) for view in views]
        blocks = parts[0][0] if len(parts) == 1 else {  # one view: no copy of a possibly large block
            name: np.concatenate([part[name] for part, _ in parts]) for name in parts[0][0]}
        rows = len(train) * len(views)
        sample = f" on a sample of about {self.search_rows} rows" if rows > self.search_rows else ""
        log(f"fitting the SVM on {rows} rows (C grid {list(_as_list(self.C))}, {self.cv}-fold CV{sample})")
        return self._fit_table_blocks(train, blocks, parts[0][1], copies=len(views))

    def _training_views(self, inputs) -> list:
        """The inputs the training images are seen in: every test-time view with ``fit_views``, else one."""
        if not self.fit_views:
            return [inputs]
        views = inputs.views()
        if len(views) < 2:
            raise FeatureError("fit_views fits on the test-time views of the training images, and these inputs "
                               "have none; enable tta (tta.enabled: true) or set fit_views False")
        return views

    def _fit_table_blocks(self, train, blocks: dict[str, np.ndarray], input_shape: tuple,
                          copies: int = 1) -> "FeatureSVM":
        """Fit on feature ``blocks`` of the ``train`` table's rows (after :meth:`_start_fit`), ``copies``
        blocks of rows one after another (one per view); rows of one patient (or, without patient ids,
        the copies of one image) stay in one CV fold."""
        y_enc, classes, task = self._encode_targets(train.labels(), len(train))
        if task == "multilabel":  # the labels' names, so that a message names the label, not its column
            classes = np.asarray(train.classes)
        groups = _patient_groups(train)
        if copies > 1:
            groups = np.tile(groups if groups is not None else np.arange(len(train)).astype(str), copies)
            y_enc = np.concatenate([y_enc] * copies)
        return self._fit_blocks(blocks, y_enc, classes, task, groups, input_shape)

    def check_folds(self, train) -> None:
        """Raise :class:`TooFewSamplesError` when the ``train`` table cannot be spread over ``cv`` folds with
        every class (each label's positives and negatives) in each, patients kept whole, as fitting needs.

        Example:
            >>> FeatureSVM(cv=5).check_folds(table.split("train"))  # doctest: +SKIP
        """
        y_enc, classes, task = self._encode_targets(train.labels(), len(train))
        groups = _patient_groups(train)
        if task != "multilabel":  # a table's labels are class numbers: its messages name the classes
            self._splits(y_enc, groups, np.asarray(train.classes)[classes] if len(train.classes) else classes)
            return
        for j, name in enumerate(train.classes):
            known = y_enc[:, j] != UNKNOWN_LABEL
            self._splits(y_enc[known, j], None if groups is None else groups[known], np.array([0, 1]), label=name)

    def predict_table(self, table, inputs, batch_size: int = 64) -> np.ndarray:
        """Scores for every row of ``table``: (n,) positive-class probability for binary, else (n, K);
        the images stream through the backbone as in :meth:`fit_tables`.

        Example:
            >>> model.predict_table(table.split("test"), inputs).shape  # doctest: +SKIP
            (942,)
        """
        check_is_fitted(self, "models_")

        def scores(view):
            blocks, input_shape = self._table_blocks(table, view, batch_size)
            return scores_from_probabilities(self.task_, self._probabilities(self._checked(blocks, input_shape)))
        return average_over_views(inputs, scores)

    def extract_tables(self, tables: dict, inputs) -> WorkerShare:
        """Write into the feature store every feature that fitting on ``tables["train"]`` and scoring
        the other tables (in each test-time view) will read; return this process's ``WorkerShare``.

        Under ``strategy="multiworker"`` each TF_CONFIG worker computes only its own shards and
        waits for the others (see :class:`~tfmed.modes.feature_store.FeatureStore`), so the
        features of a large table are extracted once, split across machines; a later
        :meth:`fit_tables` / :meth:`predict_table` in one process reads them all. The store
        (``cache_dir``) must be a folder every worker sees.

        Example:
            >>> share = model.extract_tables({"train": train, "val": val}, inputs)  # doctest: +SKIP
            >>> share.chief  # doctest: +SKIP
            True
        """
        if self.cache_dir is None:
            raise FeatureError("extract_tables writes the feature store, and cache_dir is None; give a "
                               "cache_dir that every worker sees")
        self._start_fit(self._check_params())
        _, share = self._extraction()
        computed = read = 0
        for name, table in tables.items():
            if table is None or not len(table):
                continue
            views = self._training_views(inputs) if name == "train" else inputs.views()
            log(f"worker {share.index} of {share.count}: features of the {name} split "
                f"({len(table)} rows, {len(views)} view(s))")
            for view in views:
                self._table_blocks(table, view, share=share)
                computed, read = computed + self.last_store_.shards_computed, read + self.last_store_.shards_read
        log(f"worker {share.index} of {share.count}: {computed} feature shard(s) computed here, {read} read")
        return share

    def _extraction(self):
        """(the strategy the backbone is built under, or None for the default one; this process's WorkerShare)."""
        import tensorflow as tf

        if self.strategy not in _STRATEGIES:
            strategy = distribution_strategy(self.strategy)
            share = worker_share(strategy)
            if self.strategy == "multiworker" or strategy is tf.distribute.get_strategy():
                strategy = None  # the default strategy; or each worker runs its own backbone on its shards
            _STRATEGIES[self.strategy] = (strategy, share)
        return _STRATEGIES[self.strategy]

    def _table_blocks(self, table, inputs, batch_size: int = 64,
                      share=None) -> tuple[dict[str, np.ndarray], tuple]:
        """Feature blocks of every row of ``table`` (streamed, through the feature store; with a
        ``share``, only this worker's shards computed) and the shape of one model input. A part of a
        larger table (:meth:`~tfmed.data.table.ImageTable.part`, e.g. a k-fold's) reads its rows of
        the whole table's features, which the store then computes once for every part."""
        if table.whole is not None and self.cache_dir is not None:
            whole, rows = table.whole
            blocks, input_shape = self._table_blocks(whole, inputs, batch_size, share)
            return {name: np.asarray(block[rows]) for name, block in blocks.items()}, input_shape
        spec = self.backbone_spec_
        _, identity = self._base_model()
        progress = Throughput(len(table), f"{spec['backbone']} features")

        def compute(start: int, stop: int) -> dict[str, np.ndarray]:
            rows = table.subset(np.arange(start, stop))
            if not spec["texture"] and inputs.volume_views is None:  # 2-D images: one predict per shard
                images = inputs.dataset(rows, training=False, batch_size=self.batch_size)
                if tuple(images.element_spec[0].shape[1:3]) == (spec["image_size"],) * 2:
                    blocks = self._dataset_blocks(images)
                    progress.advance(stop - start)
                    return blocks
            parts = []
            for batch, _ in inputs.dataset(rows, training=False, batch_size=max(batch_size, CHUNK_SIZE)):
                images = as_input_batch(batch.numpy())
                parts.append(self._blocks(images, cached=False))
                progress.advance(len(images))
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

        if self.cache_dir is None:
            blocks = compute(0, len(table))
        else:
            key = {"rows": table_identity(table), "inputs": inputs_identity(inputs), "backbone": spec["backbone"],
                   "weights": identity, "taps": spec["taps"], "pooling": spec["pooling"],
                   "image_size": spec["image_size"], "texture": spec["texture"], "code_version": FEATURE_CODE_VERSION}
            store = FeatureStore(self.cache_dir)
            blocks = store.get_or_compute(key, len(table), compute, share)
            self.last_store_ = store
            if store.shards_read:
                log(f"features of {len(table)} rows: {store.shards_read} shard(s) read from the feature store, "
                    f"{store.shards_computed} computed")
        check_finite(blocks)
        return blocks, inputs.input_shape

    def keras_model(self):
        """The fitted pipeline as one Keras model (see :func:`tfmed.modes.svm_graph.svm_keras_model`):
        (S, S, 3) 0-255 images (or (V, S, S, 3) views of a volume) to calibrated probabilities,
        differentiable down to the backbone.

        Example:
            >>> model.keras_model().output.shape  # doctest: +SKIP
            (None, 1)
        """
        from tfmed.modes.svm_graph import svm_keras_model

        check_is_fitted(self, "models_")
        if getattr(self, "_keras_model", None) is None:
            self._keras_model = svm_keras_model(self)
        return self._keras_model

    def explain_models(self, inputs) -> list:
        """``[(backbone name, Keras model, inputs)]``: what :mod:`tfmed.explain` explains for this model.

        Example:
            >>> [name for name, _, _ in model.explain_models(inputs)]  # doctest: +SKIP
            ['efficientnet_lite0']
        """
        return [(self.backbone, self.keras_model(), inputs)]

    def report_facts(self) -> dict:
        """Taps, kernel and the C/gamma chosen by cross-validation, for the run report.

        Example:
            >>> FeatureSVM(taps=("middle",)).report_facts()["taps"]
            'middle'
        """
        facts = {"taps": ", ".join(_as_list(self.taps)), "kernel": self.kernel,
                 "classifier": _CLASSIFIER_WORDS[getattr(self, "classifier_", self.classifier)],
                 "best parameters": str(getattr(self, "best_params_", ""))}
        if len(getattr(self, "input_shape_", ())) == 4:
            facts["views"] = (f"{self.input_shape_[0]} per volume, "
                              + ("one SVM per view, probabilities averaged" if len(self.groups_) > 1
                                 else "features concatenated for one SVM"))
        if self.fit_views:
            facts["training rows"] = "every test-time view of each training image (model.svm.fit_views)"
        return facts

    # ------------------------------------------------------------------ fitting

    def fit(self, X, y, groups=None) -> "FeatureSVM":
        """Extract features, choose C/gamma by CV AUC, fit the final SVM(s).

        ``groups`` (e.g. patient ids, one per image) keep each group in one
        fold (``StratifiedGroupKFold``).

        Example:
            >>> model = FeatureSVM(weights=None, image_size=32, C=1.0, cv=2)  # doctest: +SKIP
            >>> model.fit(images, labels, groups=patient_ids)                 # doctest: +SKIP
        """
        taps = self._check_params()
        if self.fit_views:
            raise FeatureError("fit_views fits on the test-time views of a table's images (fit_tables); fit "
                               "on arrays takes the images as given: append augmented copies to X (with "
                               "groups keeping each image's copies together) or set fit_views False")
        X = self._input_batch(X)
        y_enc, classes, task = self._encode_targets(y, len(X))
        self._start_fit(taps)
        return self._fit_blocks(self._blocks(X), y_enc, classes, task, groups, tuple(int(d) for d in X.shape[1:]))

    def _start_fit(self, taps: list[str]) -> None:
        self.backbone_spec_ = {"backbone": self.backbone, "weights": None if self.weights is None
                               else str(self.weights), "weights_dir": self.weights_dir,
                               "taps": taps, "pooling": self.pooling,
                               "image_size": int(self.image_size), "texture": bool(self.texture),
                               "random_state": int(self.random_state),
                               "code_version": FEATURE_CODE_VERSION}
        self._weight_values = None
        self._keras_model = None

    def _fit_blocks(self, blocks: dict[str, np.ndarray], y_enc, classes, task, groups, input_shape: tuple):
        """Scalers and classifiers on feature ``blocks`` (one row per image or volume)."""
        count = len(y_enc)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape != (count,):
                raise FeatureError(f"groups has shape {groups.shape}; give one group id (e.g. patient id) "
                                   f"per image: shape ({count},)")
        _, identity = self._base_model()
        self.backbone_spec_["weights_digest"] = identity
        self.task_, self.classes_ = task, classes
        self.input_shape_ = tuple(input_shape)
        self.block_widths_ = {name: int(block.shape[1]) for name, block in blocks.items()}
        self.scalers_ = {name: StandardScaler().fit(block) for name, block in blocks.items()}
        self.groups_ = _classifier_groups(list(blocks), len(input_shape) == 4 and self.view_fusion == "per_view")
        sample = search_sample(y_enc, groups, int(self.search_rows), int(self.random_state), int(self.cv))
        self.classifier_ = (self.classifier if self.classifier != "auto"
                            else "exact" if count <= self.exact_limit else "approximate")
        self._solver = kernel_approximation.solver_for(count)  # one solver for the search, the folds and the final fit
        # libsvm releases the GIL, so the grid search's, the calibration's and one-vs-rest's fits run as threads on
        # every core: the same fits, hence the same models, as one at a time
        with parallel_config(backend="threading", n_jobs=usable_cores()):
            fitted = [self._fit_classifier(self._transform(blocks, names), y_enc, groups, classes, task, sample)
                      for names in self.groups_]
        self.models_ = [models for models, _, _, _ in fitted]
        if len(fitted) == 1:
            _, self.cv_results_, self.best_params_, self.best_score_ = fitted[0]
        else:
            names = [_group_name(names) for names in self.groups_]
            self.cv_results_ = pd.concat([results.assign(group=name) for name, (_, results, _, _)
                                          in zip(names, fitted)], ignore_index=True)
            self.best_params_ = {name: params for name, (_, _, params, _) in zip(names, fitted)}
            self.best_score_ = float(np.mean([score for _, _, _, score in fitted]))
        return self

    def _fit_classifier(self, features, y_enc, groups, classes, task, sample):
        """C (and gamma) by CV AUC on the rows ``sample``, then the calibrated SVM(s) on every row:
        (models, cv results, best params, CV AUC). On more rows than ``search_rows`` the sigmoid is
        fitted on 2-fold instead of ``cv``-fold cross-validated scores (see the class text)."""
        estimator, prefix = self._svc_template(task)
        sample_groups = None if groups is None else groups[sample]
        search = GridSearchCV(estimator, self._grid(prefix), scoring=_auc_scorer,
                              cv=self._splits(y_enc[sample], sample_groups, classes),
                              refit=False, error_score="raise")
        search.fit(features[sample], y_enc[sample])
        best_params = {k[len(prefix):]: v for k, v in search.best_params_.items()}
        best = self._svm(**best_params)
        folds = self.cv if len(sample) == len(y_enc) else 2
        if task == "binary":
            models = [_calibrated(best, self._splits(y_enc, groups, classes, folds=folds)).fit(features, y_enc)]
        elif task == "multiclass":
            splits = self._splits(y_enc, groups, classes, folds=folds)
            models = [_calibrated(OneVsRestClassifier(best), splits).fit(features, y_enc)]
        else:
            models = []
            for j in range(y_enc.shape[1]):   # each label's SVM on the images where that label is known
                known = y_enc[:, j] != UNKNOWN_LABEL
                splits = self._splits(y_enc[known, j], None if groups is None else groups[known], np.array([0, 1]),
                                      label=classes.tolist()[j], folds=folds)
                models.append(_calibrated(best, splits).fit(features[known], y_enc[known, j]))
        return models, _results_table(search.cv_results_, prefix), best_params, float(search.best_score_)

    def _check_params(self) -> list[str]:
        for name in ("kernel", "pooling", "view_fusion", "classifier", "strategy"):
            allowed = choices(SVMConfig, name)
            if getattr(self, name) not in allowed:
                raise FeatureError(f"{name} is {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        tasks = typing.get_args(Task)
        if self.task is not None and self.task not in tasks:
            raise FeatureError(f"task is {self.task!r}; allowed: {', '.join(tasks)} or None")
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise FeatureError(f"cv is {self.cv!r}; it must be an integer of at least 2 folds")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)) \
                or self.image_size < 8:
            raise FeatureError(f"image_size is {self.image_size!r}; it must be an integer >= 8")
        for name, least, example in (("exact_limit", 1, 10000), ("nystroem_components", 2, 1000),
                                     ("search_rows", 10 * int(self.cv), 5000), ("batch_size", 1, 32)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise FeatureError(f"{name} is {value!r}; it must be an integer >= {least}, e.g. {example}")
        for name in ("C", "gamma"):
            if not _as_list(getattr(self, name)):
                raise FeatureError(f"{name} is {getattr(self, name)!r}; give one value or a list of values to search")
        for value in _as_list(self.C):
            if isinstance(value, bool) or not isinstance(value, Real) or value <= 0:
                raise FeatureError(f"C holds {value!r}; every C must be a number > 0")
        gamma_names = typing.get_args(GammaName)
        for value in _as_list(self.gamma):
            if not (value in gamma_names or (isinstance(value, Real) and not isinstance(value, bool)
                                              and value > 0)):
                raise FeatureError(f"gamma holds {value!r}; allowed: {', '.join(map(repr, gamma_names))} "
                                   "or a number > 0")
        if self.class_weight is not None and self.class_weight not in choices(SVMConfig, "class_weight"):
            raise FeatureError(f"class_weight is {self.class_weight!r}; allowed: "
                               f"{', '.join(map(repr, choices(SVMConfig, 'class_weight')))} or None")
        return check_taps(self.backbone, self.taps)

    def _encode_targets(self, y, n_images: int):
        y = np.asarray(y)
        if len(y) != n_images:
            raise FeatureError(f"X has {n_images} images but y has {len(y)} labels; give one label "
                               "(or one row of 0/1 labels) per image")
        if y.ndim == 2 and y.shape[1] == 1 and self.task != "multilabel":  # one multilabel label stays 2-D
            y = y.ravel()
        one_hot = _one_hot(y)
        if one_hot and self.task in ("binary", "multiclass"):
            y = y.argmax(axis=1)  # each image's class index, as FineTuner reads one-hot rows
        elif one_hot and self.task is None:
            log(f"y's rows are one-hot ({y.shape[1]} columns): read as multilabel, one SVM per column; give "
                "task='multiclass' (or class indices, y.argmax(axis=1)) for one class per image")
        if y.ndim == 2:
            values = np.unique(y)
            allowed = [0, 1, UNKNOWN_LABEL]
            if not np.isin(values, allowed).all():
                raise FeatureError(f"a 2-D y is read as multilabel and must hold only 0/1 (-1 for an unknown "
                                   f"label), found {values[~np.isin(values, allowed)][:5].tolist()}")
            task, classes, encoded = "multilabel", np.arange(y.shape[1]), y.astype(np.int64)
        elif y.ndim == 1:
            if pd.isna(pd.Series(y)).any():
                rows = np.flatnonzero(pd.isna(pd.Series(y)).to_numpy())
                raise FeatureError(f"y has missing labels at rows {rows[:10].tolist()}; label or drop them")
            classes, encoded = np.unique(y, return_inverse=True)
            if len(classes) < 2:
                raise FeatureError(f"y holds a single class ({classes.tolist()}); an SVM needs at least two")
            task = "binary" if len(classes) == 2 else "multiclass"
        else:
            raise FeatureError(f"y must be 1-D labels or a 2-D 0/1 label matrix, got shape {y.shape}")
        if self.task is not None and self.task != task:
            raise FeatureError(f"task is {self.task!r} but y looks {task} ({len(classes)} classes/labels, "
                               f"shape {y.shape}); fix y, or set task={task!r} if the data are {task}")
        return encoded, classes, task

    def _splits(self, y, groups, classes, label=None, folds=None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``folds`` (default ``cv``) CV folds with every class in every fold, or a TooFewSamplesError."""
        folds = int(folds or self.cv)
        classes = np.asarray(classes).tolist()
        what = "" if label is None else f"label {label!r}: "
        names = {0: "negative", 1: "positive"} if label is not None else None
        multilabel = y.ndim == 2
        if not multilabel:
            counts = np.bincount(y, minlength=len(classes))
            unit = "images"
            if groups is not None:
                counts = np.array([len(np.unique(groups[y == k])) for k in range(len(classes))])
                unit = "patients/groups"
            tally = ", ".join(f"{(names or {}).get(k, classes[k])}={n}" for k, n in enumerate(counts))
            if counts.min() < folds:
                k = int(np.argmin(counts))
                name = (names or {}).get(k, classes[k])
                raise TooFewSamplesError(
                    f"{what}class {name!r} has {counts[k]} training {unit} ({tally}), fewer than "
                    f"cv={folds} folds; {_fewer_folds(int(counts[k]))}add {unit} of {name!r}")
        else:
            for j in range(y.shape[1]):
                for kind, n in (("positive", int((y[:, j] == 1).sum())), ("negative", int((y[:, j] == 0).sum()))):
                    if n < folds:
                        raise TooFewSamplesError(
                            f"label {classes[j]!r} has {n} {kind} training images, fewer than cv={folds} "
                            f"folds; {_fewer_folds(n)}add {kind} images of label {classes[j]!r}")
        if groups is not None and len(np.unique(groups)) < folds:
            raise TooFewSamplesError(f"only {len(np.unique(groups))} distinct groups for cv={folds} "
                                     "folds; use fewer folds")
        seed = int(self.random_state)
        if multilabel:
            splitter = (GroupKFold(folds, shuffle=True, random_state=seed) if groups is not None
                        else KFold(folds, shuffle=True, random_state=seed))
        elif groups is not None:
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        else:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(y)), y if not multilabel else None, groups))
        if not multilabel:
            for fold, (train, test) in enumerate(splits):
                for part, rows in (("training", train), ("held-out", test)):
                    absent = sorted(set(range(len(classes))) - set(np.unique(y[rows]).tolist()))
                    if absent:
                        name = (names or {}).get(absent[0], classes[absent[0]])
                        raise TooFewSamplesError(
                            f"{what}CV fold {fold} has no {part} images of class {name!r} (the "
                            f"patients/groups cannot be spread over cv={folds} folds); use fewer folds")
        return splits

    def _svm(self, **params):
        """An unfitted binary SVM of the kind ``classifier_`` names."""
        if self.classifier_ == "exact":
            return SVC(kernel=self.kernel, class_weight=self.class_weight, cache_size=500, **params)
        return ApproximateKernelSVC(kernel=self.kernel, class_weight=self.class_weight,
                                    n_components=int(self.nystroem_components), random_state=int(self.random_state),
                                    solver=self._solver, **params)

    def _svc_template(self, task: str):
        svc = self._svm()
        if task == "binary":
            return svc, ""
        return (OneVsRestClassifier(svc) if task == "multiclass" else KnownLabelsPerLabel(svc)), "estimator__"

    def _grid(self, prefix: str) -> dict[str, list]:
        grid = {prefix + "C": [float(c) for c in _as_list(self.C)]}
        if self.kernel == "rbf":
            grid[prefix + "gamma"] = [g if isinstance(g, str) else float(g) for g in _as_list(self.gamma)]
        return grid

    # ------------------------------------------------------------------ features

    def _backbone(self) -> dict:
        """The arguments that build this model's backbone (its saved weights, when it has them)."""
        spec = self.backbone_spec_
        return {"backbone": spec["backbone"], "weights": None if self._weight_values is not None else spec["weights"],
                "weights_dir": spec["weights_dir"], "image_size": spec["image_size"],
                "random_state": spec["random_state"], "weight_values": self._weight_values,
                "strategy": self._extraction()[0]}

    def _base_model(self):
        return base_model(**self._backbone())

    def _blocks(self, X: np.ndarray, cached: bool = True) -> dict[str, np.ndarray]:
        """Feature blocks by name: one per tap (and texture); for views (X 5-D) one per view and tap.
        ``cached``: through the feature cache of ``cache_dir`` (keyed by the images' bytes)."""
        if X.ndim == 5:
            return {f"view_{v + 1}:{name}": block for v in range(X.shape[1])
                    for name, block in self._blocks(X[:, v], cached).items()}
        spec = self.backbone_spec_
        cache = None if self.cache_dir is None or not cached else FeatureCache(self.cache_dir)
        blocks = backbone_features(X, taps=spec["taps"], pooling=spec["pooling"], batch_size=self.batch_size,
                                   cache=cache, **self._backbone())
        self.last_cache_ = cache
        if spec["texture"]:
            blocks[TEXTURE] = lbp_features(X)
        check_finite(blocks)
        return blocks

    def _dataset_blocks(self, dataset) -> dict[str, np.ndarray]:
        """Feature blocks of a dataset of 2-D image batches at the backbone's size (no texture block)."""
        spec = self.backbone_spec_
        blocks = dataset_features(dataset, taps=spec["taps"], pooling=spec["pooling"], **self._backbone())
        check_finite(blocks)
        return blocks

    def _transform(self, blocks: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
        """The standardised blocks ``names``, each scaled by 1/sqrt(width) when several are fused."""
        scale = len(names) > 1
        parts = []
        for name in names:
            standard = self.scalers_[name].transform(blocks[name])
            parts.append(standard / np.sqrt(blocks[name].shape[1]) if scale else standard)
        return np.concatenate(parts, axis=1)

    def features(self, X) -> np.ndarray:
        """The standardised (fused) feature matrix the SVM sees for images X (with one classifier
        per view: the views' matrices side by side).

        Example:
            >>> model.features(images).shape  # doctest: +SKIP
            (10, 192)
        """
        return np.concatenate(self._group_features(X), axis=1)

    def _group_features(self, X) -> list[np.ndarray]:
        """One standardised feature matrix per classifier group (see ``groups_``)."""
        check_is_fitted(self, "models_")
        X = self._input_batch(X)
        self._check_input_shape(X.shape[1:])
        return self._checked(self._blocks(X), X.shape[1:])

    @staticmethod
    def _input_batch(X) -> np.ndarray:
        """``X`` checked as images (:func:`~tfmed.modes.features.as_input_batch`); a 3-D array whose last side is
        1 or 3 is one image (H, W, C), refused, rather than H grey images of W x C pixels."""
        try:
            shape = np.shape(X)
        except ValueError:  # images of different sizes: as_input_batch names their shapes
            shape = ()
        if len(shape) == 3 and shape[-1] in (1, 3):
            raise FeatureError(f"X must be a batch of images (N, H, W, C) with C = 1 or 3, got shape {shape}: one "
                               "image; add the batch axis (X[None])")
        return as_input_batch(X)

    def _check_input_shape(self, shape) -> None:
        if tuple(shape) != tuple(self.input_shape_):
            raise ModelMismatchError(
                f"X images are {_describe(shape)} but the model was fitted on "
                f"{_describe(self.input_shape_)}; preprocess new images as in training "
                f"(the model's preprocess config: {self.preprocess})")

    def _checked(self, blocks: dict[str, np.ndarray], input_shape) -> list[np.ndarray]:
        """``blocks`` of inputs shaped ``input_shape``, checked against the fitted model and standardised per group."""
        self._check_input_shape(input_shape)
        _, identity = self._base_model()
        if identity != self.backbone_spec_["weights_digest"]:
            raise ModelMismatchError(
                f"the backbone {self.backbone_spec_['backbone']!r} now has different weights from those "
                "the model was fitted with; load the saved model (FeatureSVM.load) to restore them")
        widths = {name: int(block.shape[1]) for name, block in blocks.items()}
        if widths != self.block_widths_:
            raise ModelMismatchError(f"the feature blocks have widths {widths} but the model was fitted on "
                                     f"{self.block_widths_}; the backbone or its taps changed since fitting")
        return [self._transform(blocks, names) for names in self.groups_]

    # ------------------------------------------------------------------ prediction

    def decision_function(self, X) -> np.ndarray:
        """SVM scores: (n,) for binary, (n, classes) or (n, labels) otherwise (the mean over
        classifiers when each view has its own).

        Example:
            >>> model.decision_function(images)  # doctest: +SKIP
        """
        return self._decisions(self._group_features(X))

    def _decisions(self, group_features: list[np.ndarray]) -> np.ndarray:
        return np.mean([self._scores(models, features) for models, features
                        in zip(self.models_, group_features)], axis=0)

    def _scores(self, models: list, features: np.ndarray) -> np.ndarray:
        if self.task_ == "multilabel":
            return np.column_stack([_final_svm(m).decision_function(features) for m in models])
        return _final_svm(models[0]).decision_function(features)

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated probabilities: (n, classes); multilabel (n, labels) of P(label=1); with one
        classifier per view, the mean of the views' probabilities.

        Example:
            >>> model.predict_proba(images)[:, 1]  # doctest: +SKIP
        """
        return self._probabilities(self._group_features(X))

    def _probabilities(self, group_features: list[np.ndarray]) -> np.ndarray:
        probabilities = []
        for models, features in zip(self.models_, group_features):
            if self.task_ == "multilabel":
                probabilities.append(np.column_stack([m.predict_proba(features)[:, 1] for m in models]))
            else:
                probabilities.append(models[0].predict_proba(features))
        return np.mean(probabilities, axis=0)

    def predict(self, X) -> np.ndarray:
        """Labels at the SVM's decision boundary (score 0; argmax for multiclass).

        Example:
            >>> model.predict(images)  # doctest: +SKIP
        """
        scores = self.decision_function(X)
        if self.task_ == "binary":
            return self.classes_[(scores > 0).astype(int)]
        if self.task_ == "multiclass":
            return self.classes_[np.argmax(scores, axis=1)]
        return (scores > 0).astype(np.int64)

    def score(self, X, y, sample_weight=None) -> float:
        """Accuracy on (X, y); labels the model never saw raise ModelMismatchError.

        Example:
            >>> model.score(images, labels)  # doctest: +SKIP
        """
        check_is_fitted(self, "models_")
        if self.task_ != "multilabel" and _one_hot(np.asarray(y)):
            y = self.classes_[np.asarray(y).argmax(axis=1)]  # each image's class, as fit reads one-hot rows
        self.check_targets(y)
        return super().score(X, y, sample_weight=sample_weight)

    def check_targets(self, y) -> None:
        """Raise ModelMismatchError when y has classes/labels the model was not fitted on.

        Example:
            >>> model.check_targets(["normal", "pneumonia"])  # doctest: +SKIP
        """
        y = np.asarray(y)
        if self.task_ == "multilabel":
            if y.ndim != 2 or y.shape[1] != len(self.classes_):
                raise ModelMismatchError(f"y has shape {y.shape} but the model was fitted on "
                                         f"{len(self.classes_)} labels per image")
            return
        unknown = sorted(set(np.unique(y).tolist()) - set(self.classes_.tolist()), key=str)
        if unknown:
            raise ModelMismatchError(f"y holds class(es) {unknown[:5]} that the model was not fitted on; "
                                     f"its classes are {self.classes_.tolist()}")

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write the fitted model into the folder ``path``, without pickle.

        ``feature_svm.json`` holds the parameters (with the preprocessing
        config; without ``cache_dir``, a folder of this machine), the backbone
        spec and the cross-validation results;
        ``backbone_weights.npz`` the backbone's weight arrays;
        ``fitted.skops`` the scalers and calibrated SVMs, written with
        ``skops.io`` so that loading rebuilds them from their arrays and runs
        no code from the file.

        Example:
            >>> model.save("runs/demo/model/estimator")  # doctest: +SKIP
            PosixPath('runs/demo/model/estimator')
        """
        import skops.io

        check_is_fitted(self, "models_")
        model, _ = self._base_model()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        # the feature cache is a folder of the machine that fitted the model, and the strategy how it
        # ran there: neither is part of the model
        params = {**self.get_params(), "cache_dir": None, "strategy": "auto"}
        spec = {"format": ARTIFACT_FORMAT, "kind": "tfmed.FeatureSVM", "params": params,
                "backbone_spec": self.backbone_spec_, "task": self.task_, "classes": self.classes_.tolist(),
                "input_shape": list(self.input_shape_), "block_widths": self.block_widths_,
                "groups": self.groups_, "classifier": self.classifier_,
                "best_params": self.best_params_, "best_score": self.best_score_,
                "cv_results": json.loads(self.cv_results_.to_json(orient="split", index=False))}
        (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
        np.savez(directory / WEIGHTS_FILE, *[np.asarray(w) for w in model.get_weights()])
        skops.io.dump({"scalers": self.scalers_, "models": self.models_}, directory / FITTED_FILE)
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike, *, trust_pickles: bool = False) -> "FeatureSVM":
        """Read a model written by :meth:`save`; re-creates its feature model.

        Only the scikit-learn types in ``TRUSTED_TYPES`` are rebuilt; a file
        holding anything else is refused. A single pickle file written by
        tfmed 0.1 is read only with ``trust_pickles=True`` (unpickling runs any
        code its author put in it: use it only for files you made yourself).

        Example:
            >>> model = FeatureSVM.load("runs/demo/model/estimator")  # doctest: +SKIP
        """
        path = Path(path)
        if path.is_file():
            if not trust_pickles:
                raise ModelMismatchError(
                    f"{path}: a pickle file (the SVM format of tfmed 0.1); loading it could run any code "
                    "hidden in it. Re-fit the model with this tfmed, or load it with --trust-pickles "
                    "(trust_pickles=True) if you made the file yourself")
            return cls._load_pickled(path)
        if not (path / SPEC_FILE).is_file():
            raise FileNotFoundError(f"{path}: no saved FeatureSVM here (expected {SPEC_FILE})")
        spec = read_json(path / SPEC_FILE, ModelMismatchError)
        if not isinstance(spec, dict) or spec.get("kind") != "tfmed.FeatureSVM":
            raise ModelMismatchError(f"{path / SPEC_FILE}: not a saved FeatureSVM")
        if spec.get("format") not in READABLE_FORMATS:
            raise ModelMismatchError(f"{path / SPEC_FILE}: saved in format {spec.get('format')}, this tfmed "
                                     f"reads formats {READABLE_FORMATS}; re-fit and save the model again")
        try:
            params = {key: tuple(value) if key in ("taps", "C", "gamma") and isinstance(value, list) else value
                      for key, value in spec["params"].items()}
            model = cls(**params)
            model.backbone_spec_ = spec["backbone_spec"]
            model.task_, model.classes_ = spec["task"], np.asarray(spec["classes"])
            model.input_shape_ = tuple(spec["input_shape"])
            model.block_widths_ = spec["block_widths"]
            model.groups_ = spec["groups"] if spec["format"] >= 3 else [list(spec["block_widths"])]
            model.classifier_ = spec.get("classifier", "exact")  # saved since tfmed 0.4
            model.best_params_, model.best_score_ = spec["best_params"], spec["best_score"]
            results = spec["cv_results"]
            model.cv_results_ = pd.DataFrame(results["data"], columns=results["columns"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelMismatchError(f"{path / SPEC_FILE}: incomplete or damaged ({type(error).__name__}: "
                                     f"{error}); re-fit and save the model again") from None
        fitted = _read_fitted(path / FITTED_FILE)
        model.scalers_, model.models_ = fitted["scalers"], fitted["models"]
        if spec["format"] == 2:  # one classifier, its models not yet grouped
            model.models_ = [model.models_]
        weights = read_arrays(path / WEIGHTS_FILE, ModelMismatchError)
        model._weight_values = [weights[f"arr_{i}"] for i in range(len(weights))]
        model._check_restored(path)
        return model

    @classmethod
    def _load_pickled(cls, path: Path) -> "FeatureSVM":
        import joblib

        try:
            artifact = joblib.load(path)
        except Exception as error:  # joblib raises many types for a foreign file
            raise ModelMismatchError(f"{path}: not a saved FeatureSVM ({type(error).__name__}: {error})") \
                from None
        if not isinstance(artifact, dict) or artifact.get("kind") != "tfmed.FeatureSVM" \
                or artifact.get("format") != 1:
            raise ModelMismatchError(f"{path}: not a FeatureSVM pickle written by tfmed 0.1")
        model = cls(**artifact["params"])
        for name, value in artifact["state"].items():
            setattr(model, name, value)
        model.models_ = [model.models_]  # tfmed 0.1 had one classifier over every block
        model.classifier_ = "exact"
        model.groups_ = [list(model.block_widths_)]
        model._weight_values = artifact["backbone_weights"]
        model._check_restored(path)
        return model

    def _check_restored(self, path: Path) -> None:
        if self.backbone_spec_.get("code_version") != FEATURE_CODE_VERSION:
            raise ModelMismatchError(f"{path}: fitted with feature code version "
                                     f"{self.backbone_spec_.get('code_version')}, this tfmed has "
                                     f"{FEATURE_CODE_VERSION}; re-fit the model")
        try:
            _, identity = self._base_model()
        except ValueError as error:  # weight arrays that do not fit the backbone
            raise ModelMismatchError(f"{path}: the backbone weights do not fit {self.backbone_spec_['backbone']} "
                                     f"({error}); the file is damaged or from another model") from None
        if identity != self.backbone_spec_["weights_digest"]:
            raise ModelMismatchError(f"{path}: the restored backbone weights do not match the saved digest; "
                                     "the file is damaged or the backbone definition changed")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        return tags


SPEC_FILE = "feature_svm.json"
WEIGHTS_FILE = "backbone_weights.npz"
FITTED_FILE = "fitted.skops"
# Everything fitted.skops may hold; skops.io rebuilds these from their arrays and refuses any other type.
TRUSTED_TYPES = ("sklearn.calibration.CalibratedClassifierCV", "sklearn.calibration._CalibratedClassifier",
                 "sklearn.calibration._SigmoidCalibration", "sklearn.multiclass.OneVsRestClassifier",
                 "sklearn.preprocessing._data.StandardScaler", "sklearn.preprocessing._label.LabelBinarizer",
                 "sklearn.svm._classes.SVC", "sklearn.svm._classes.LinearSVC",
                 "sklearn.linear_model._stochastic_gradient.SGDClassifier",
                 "sklearn.kernel_approximation.Nystroem",
                 "tfmed.modes.kernel_approximation.ApproximateKernelSVC")
_CLASSIFIER_WORDS = {"exact": "exact SVC", "approximate": "linear SVM on an approximate kernel map "
                     "(fit linear in the number of images)", "auto": "auto"}


def _read_fitted(path: Path) -> dict:
    import skops.io

    try:
        unknown = [name for name in skops.io.get_untrusted_types(file=path) if name not in TRUSTED_TYPES]
        if unknown:
            raise ModelMismatchError(f"{path}: holds types a FeatureSVM never saves ({', '.join(unknown[:5])}); "
                                     "refused without loading them. Re-fit the model, or use the run it came from")
        fitted = skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except ModelMismatchError:
        raise
    except Exception as error:  # a truncated or foreign file fails in many ways inside skops/zipfile
        raise ModelMismatchError(f"{path}: not a readable fitted-SVM file ({type(error).__name__}: {error}); "
                                 "the file is damaged, re-fit and save the model again") from None
    if not isinstance(fitted, dict) or set(fitted) != {"scalers", "models"}:
        raise ModelMismatchError(f"{path}: not the scalers and SVMs of a FeatureSVM")
    return fitted


def _describe(shape) -> str:
    """One row's shape in words: "32x32 with 1 channel(s)", or "3 views of 32x32 with 3 channel(s)"."""
    *views, height, width, channels = (int(d) for d in shape)
    return (f"{views[0]} views of " if views else "") + f"{height}x{width} with {channels} channel(s)"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's or a job scheduler's share).

    Example:
        >>> usable_cores() >= 1
        True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        return os.cpu_count() or 1


def _classifier_groups(names: list[str], per_view: bool) -> list[list[str]]:
    """The block names each classifier reads: all in one group, or one group per view."""
    if not per_view:
        return [names]
    views = list(dict.fromkeys(name.split(":", 1)[0] for name in names))
    return [[name for name in names if name.split(":", 1)[0] == view] for view in views]


def _group_name(names: list[str]) -> str:
    return names[0].split(":", 1)[0]


def _patient_groups(table) -> np.ndarray | None:
    """The rows' patients, the CV's groups, when every row has one (else None: rows are independent)."""
    patients = table.frame["patient_id"]
    return patients.astype(str).to_numpy() if patients.notna().all() else None


def _fewer_folds(count: int) -> str:
    return f"use cv={count} or fewer, or " if count >= 2 else ""


def _as_list(value) -> list:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    return [value]


MIN_SEARCH_ROWS_PER_CLASS = 100


def _one_hot(y: np.ndarray) -> bool:
    """Whether ``y`` is a matrix of one-hot rows (one 1 per row, 0 elsewhere)."""
    return y.ndim == 2 and y.shape[1] > 1 and bool(np.isin(y, [0, 1]).all()) and bool((y.sum(axis=1) == 1).all())


def search_sample(y: np.ndarray, groups, limit: int, seed: int = 0, min_groups: int = 0) -> np.ndarray:
    """Sorted row numbers the C / gamma search sees: every row when there are at most ``limit``,
    otherwise about ``limit`` rows drawn per class in proportion; then each class (multilabel ``y``, 2-D: each
    label's positive and negative rows) is topped up to at least ``MIN_SEARCH_ROWS_PER_CLASS`` rows and
    ``min_groups`` patients (the search's folds), or all it has. With ``groups`` (patient ids) whole patients
    are drawn, each counted in the class of its first row for the first draw and in each class it has rows of
    for the top-ups.

    Example:
        >>> y = np.array([0] * 900 + [1] * 100)
        >>> rows = search_sample(y, None, 500)
        >>> len(rows), int(y[rows].sum())
        (550, 100)
        >>> len(search_sample(y, None, 5000))
        1000
    """
    count = len(y)
    if count <= limit:
        return np.arange(count)
    rng = np.random.default_rng(seed)
    units, unit_of_row = np.unique(np.arange(count) if groups is None else np.asarray(groups), return_inverse=True)
    first_row = np.full(len(units), count)
    np.minimum.at(first_row, unit_of_row, np.arange(count))
    strata = np.zeros(count, int) if y.ndim == 2 else np.asarray(y)
    sizes = np.bincount(unit_of_row, minlength=len(units))
    chosen = np.zeros(len(units), bool)
    for stratum in np.unique(strata):
        candidates = np.flatnonzero(strata[first_row] == stratum)
        rng.shuffle(candidates)
        rows = int(sizes[candidates].sum())
        quota = max(int(np.ceil(limit * rows / count)), min(rows, MIN_SEARCH_ROWS_PER_CLASS))
        chosen[candidates[:int(np.searchsorted(np.cumsum(sizes[candidates]), quota)) + 1]] = True
    classes = ([column == value for column in np.asarray(y).T for value in (1, 0)] if y.ndim == 2
               else [strata == value for value in np.unique(strata)])
    for of_class in classes:  # a rare class's few rows and patients all reach the search
        rows_per_unit = np.bincount(unit_of_row, weights=of_class, minlength=len(units))
        held = rows_per_unit > 0
        short_rows = min(int(rows_per_unit.sum()), MIN_SEARCH_ROWS_PER_CLASS) - int(rows_per_unit[chosen].sum())
        short_units = min(int(held.sum()), min_groups) - int((held & chosen).sum())
        candidates = np.flatnonzero(held & ~chosen)
        rng.shuffle(candidates)
        take = max(int(np.searchsorted(np.cumsum(rows_per_unit[candidates]), short_rows)) + 1 if short_rows > 0
                   else 0, short_units)
        chosen[candidates[:take]] = True
    return np.flatnonzero(chosen[unit_of_row])


def _calibrated(estimator, splits) -> CalibratedClassifierCV:
    # ensemble=False: sigmoid fitted on cross-validated scores, and one
    # estimator refitted on all the data (the final SVM).
    return CalibratedClassifierCV(estimator, method="sigmoid", cv=splits, ensemble=False)


def _final_svm(calibrated: CalibratedClassifierCV):
    return calibrated.calibrated_classifiers_[0].estimator


def macro_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of SVM scores: binary; macro one-vs-rest over classes/labels.

    Classes (labels) that are absent, or present in every row, are skipped.

    Example:
        >>> macro_auc(np.array([0, 0, 1, 1]), np.array([-1.0, 0.5, 0.2, 2.0]))
        0.75
    """
    y = np.asarray(y)
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return float(roc_auc_score(y, scores))
    indicator = y if y.ndim == 2 else (y[:, None] == np.arange(scores.shape[1])).astype(int)
    aucs = []
    for k in range(scores.shape[1]):
        labels, label_scores = known_column(indicator, scores, k)   # a multilabel label counts where it is known
        if len(np.unique(labels)) == 2:
            aucs.append(roc_auc_score(labels, label_scores))
    return float(np.mean(aucs)) if aucs else float("nan")


class KnownLabelsPerLabel(ClassifierMixin, BaseEstimator):
    """One copy of ``estimator`` per label of a multilabel ``y``, each fitted on the rows where its
    label is known (not -1); ``decision_function`` gives one column per label. A label whose known
    rows hold one value (a small search fold) gets a constant score of 0, as scikit-learn's
    one-vs-rest does.

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> X = np.array([[0.], [1.], [2.], [3.]]); y = np.array([[0, 1], [0, -1], [1, 0], [1, -1]])
        >>> KnownLabelsPerLabel(LogisticRegression()).fit(X, y).decision_function(X).shape
        (4, 2)
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        y = np.asarray(y)
        self.estimators_ = []
        for j in range(y.shape[1]):
            known = y[:, j] != UNKNOWN_LABEL
            two_values = len(np.unique(y[known, j])) == 2
            self.estimators_.append(clone(self.estimator).fit(X[known], y[known, j]) if two_values else None)
        return self

    def decision_function(self, X):
        return np.column_stack([np.zeros(len(X)) if estimator is None else estimator.decision_function(X)
                                for estimator in self.estimators_])


def _auc_scorer(estimator, X, y) -> float:
    return macro_auc(y, estimator.decision_function(X))


def _results_table(results: dict, prefix: str) -> pd.DataFrame:
    table = pd.DataFrame({key[len("param_" + prefix):]: list(values) for key, values in results.items()
                          if key.startswith("param_")})
    folds = sorted(k for k in results if k.startswith("split") and k.endswith("_test_score"))
    table["mean_auc"] = results["mean_test_score"]
    table["std_auc"] = results["std_test_score"]
    for key in folds:
        table[key.replace("_test_score", "_auc")] = results[key]
    table["rank"] = results["rank_test_score"]
    table["mean_fit_time"] = results["mean_fit_time"]
    return table
