"""Staged fine-tuning of an ImageNet backbone with a small classification head.

The model is ``backbone (frozen) -> global pooling -> dropout -> Dense``.
Training runs the stages of :class:`tfmed.config.FinetuneConfig`: the first
stage usually trains the head only; each later stage unfreezes more of the
backbone's top blocks at a lower learning rate (the previous stage's rate times
``lr_factor``, 1/10 by default). BatchNormalization layers stay frozen and in
inference mode throughout, so their moving statistics never drift.

With a ``run_dir`` every epoch is backed up (``keras.callbacks.BackupAndRestore``)
and each finished stage is recorded, so a run that is killed resumes where it
stopped: in the same stage, at the epoch after the last completed one. Every
backup is written beside its place and renamed into it, so a kill as it is
written leaves the previous one whole; a stage whose backup or best-epoch file
cannot be read (cut short under an older tfmed) starts again from its start.

Example:
    >>> from tfmed.config import FinetuneConfig, StageConfig
    >>> cfg = FinetuneConfig(stages=[StageConfig(epochs=1), StageConfig(epochs=1, unfreeze=2)])
    >>> tuner = FineTuner("mobilenet_v2", "binary", 1, config=cfg, image_size=32, weights=None)
    >>> history = tuner.fit(train_ds, val_ds)          # doctest: +SKIP
    >>> history["stage_boundaries"]                    # doctest: +SKIP
    [0, 1]
    >>> tuner.predict(images).shape                    # doctest: +SKIP
    (n, 1)
"""
from __future__ import annotations

import json
import math
import shutil
import typing
from contextlib import nullcontext
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tfmed.config import (RESAMPLING, AugmentConfig, BalanceConfig, ConfigError, ExperimentConfig,
                          UNKNOWN_LABEL, FinetuneConfig, StageConfig, Task)
from tfmed.errors import TfmedError
from tfmed.files import DAMAGED, read_arrays, read_json, replace_atomically
from tfmed.modes.base import average_over_views, register_mode, scores_from_probabilities
from tfmed.progress import log
from tfmed.training.callbacks import numeric_targets
from tfmed.training.staged_unfreeze import learning_rate_of
from tfmed.training.view_layers import FoldViews, PoolViews

MODEL_FILE = "model.keras"
SPEC_FILE = "finetune.json"
STATE_FILE = "finetune_state.json"
HISTORY_FILE = "history.jsonl"
_TARGET_CHECK = "tfmed target check: "  # marks the assertion of FineTuner._target_check


class FinetuneError(TfmedError):
    """Invalid fine-tuning settings, data that does not fit the model, or an unusable run directory."""


@register_mode
class FineTuner:
    """Fine-tune a backbone in stages for binary, multiclass or multilabel classification.

    Args:
        backbone: a name known to :func:`tfmed.backbones.create`, e.g.
            ``"efficientnet_lite0"``, ``"mobilenet_v2"``, ``"resnet50"``.
        task: "binary" (one sigmoid output), "multiclass" (softmax) or
            "multilabel" (one sigmoid per label).
        num_outputs: width of the output layer (1 for binary).
        config: stages, optimiser, schedule, loss, pooling, dropout, batch size,
            early stopping, mixed precision, XLA and distribution strategy.
        image_size: input side in pixels; images are (S, S, 3) on a 0-255 scale.
        weights: backbone weights: "imagenet", None (random) or a file path.
        weights_dir: folder holding offline weight files.
        pos_weight, neg_weight: class weights for the weighted BCE loss
            (binary), passed to :func:`tfmed.training.losses.get_loss`.
        class_weights: multiclass only: one weight per class, each image's
            loss weighted by its class's (Keras ``class_weight``), e.g. from
            :func:`tfmed.training.losses.multiclass_balance_weights`.
        run_dir: folder for the epoch backups, stage records, history and
            training curves; a second ``fit`` with the same folder resumes.
        seed: random seed for weight initialisation and dropout.
        classes: class (or label) names in output order, saved with the model.
        augment: training augmentation used by :meth:`fit_tables`.
        balance: class-balanced resampling of the training stream used by
            :meth:`fit_tables` (oversample / undersample).
        views: 0 for images (B, S, S, 3); V for V 2-D views of a volume per
            example (B, V, S, S, 3), read by one shared backbone whose pooled
            features are combined across views by ``config.view_pooling``.

    Example:
        >>> from tfmed.config import FinetuneConfig, StageConfig
        >>> cfg = FinetuneConfig(stages=[StageConfig(epochs=2), StageConfig(epochs=2, unfreeze=0.25)])
        >>> tuner = FineTuner("efficientnet_lite0", "multiclass", 3, config=cfg,
        ...                   image_size=96, run_dir="runs/demo")  # doctest: +SKIP
        >>> tuner.fit(train_ds, val_ds)["val_auc"]                  # doctest: +SKIP
    """

    name = "finetune"

    def __init__(self, backbone: str, task: str, num_outputs: int, *,
                 config: FinetuneConfig | None = None, image_size: int = 224,
                 weights: str | None = "imagenet", weights_dir: str | None = None,
                 pos_weight: float | None = None, neg_weight: float | None = None,
                 class_weights: list[float] | None = None, run_dir: str | Path | None = None, seed: int = 0,
                 classes: list[str] | None = None, augment: AugmentConfig | None = None,
                 balance: BalanceConfig | None = None, views: int = 0):
        self.backbone = backbone
        self.task = task
        self.num_outputs = num_outputs
        self.config = config if config is not None else FinetuneConfig()
        self.image_size = image_size
        self.weights = weights
        self.weights_dir = weights_dir
        self.pos_weight = pos_weight
        self.neg_weight = neg_weight
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.classes = list(classes) if classes is not None else None
        self.augment = augment
        self.balance = balance
        self.views = views
        self._validate()
        self.model_: keras.Model | None = None
        self.backbone_model_: keras.Model | None = None
        self.strategy_ = None

    # ------------------------------------------------------------ mode protocol
    @classmethod
    def check_before_data(cls, config: ExperimentConfig) -> None:
        """Check the backbone, its input size, its weights and what each stage unfreezes of its blocks,
        without building it or reading data.

        Example:
            >>> from tfmed.backbones import UnknownBackboneError
            >>> try:
            ...     FineTuner.check_before_data(ExperimentConfig.from_dict({"model": {"backbone": "resnet51"}}))
            ... except UnknownBackboneError as error:
            ...     print(str(error).split(";")[0])
            unknown backbone 'resnet51'
            >>> try:
            ...     FineTuner.check_before_data(ExperimentConfig.from_dict({"model": {"mode": "finetune",
            ...         "backbone": "vgg16", "weights": None, "finetune": {"stages": [{"unfreeze": 9}]}}}))
            ... except ConfigError as error:
            ...     print(str(error).split(":")[0])
            model.finetune.stages[0].unfreeze is 9 for backbone vgg16
        """
        from tfmed.backbones.factory import check_backbone
        from tfmed.training.distribute import check_reachable
        from tfmed.training.freezing import FreezingError

        model = config.model
        check_backbone(model.backbone, model.weights, config.preprocess.image_size, model.weights_dir)
        if config.preprocess.channels != 3:
            raise ConfigError(f"preprocess.channels is {config.preprocess.channels}, but a fine-tuned ImageNet "
                              "backbone takes R, G, B images; remove it (grey images are repeated to three channels)")
        for i, stage in enumerate(model.finetune.stages):
            try:
                unfrozen_blocks(model.backbone, stage.unfreeze)
            except FreezingError as error:
                raise ConfigError(f"model.finetune.stages[{i}].unfreeze is {stage.unfreeze!r} for backbone "
                                  f"{model.backbone}: {error}") from None
        check_reachable(model.finetune.strategy, "model.finetune.strategy")

    @classmethod
    def check_experiment(cls, config: ExperimentConfig, table) -> None:
        """Settings that only fit some tasks, checked once the data's task is known, and ``balance.target``
        against the balance groups of every table the run fits on.

        Example:
            >>> FineTuner.check_experiment(ExperimentConfig(), table)  # doctest: +SKIP
        """
        from tfmed.data.balance import BalanceError, table_mix
        from tfmed.data.splits import training_parts
        from tfmed.training.losses import LossConfigError, get_loss

        if config.balance.method in RESAMPLING:  # the mix each table the run fits on is resampled to
            for part in training_parts(table, config.split):
                try:
                    table_mix(part, config.balance)
                except BalanceError as error:
                    raise ConfigError(f"{config.name}: {error}") from None
        weighted = _weighs_the_loss(config, table.task)
        loss = config.model.finetune.loss
        if loss == "weighted_bce" and config.balance.method != "class_weight":
            raise ConfigError(f"{config.name}: model.finetune.loss weighted_bce takes its weights from the training "
                              "labels under balance.method: class_weight; set that (or use loss: auto)")
        if loss == "bce" and weighted:
            raise ConfigError(f"{config.name}: model.finetune.loss bce is unweighted, so balance.method: "
                              "class_weight would be ignored; use loss auto or weighted_bce to weigh the classes, "
                              "or balance.method none")
        try:  # the loss fits the task (weights stand in for the training labels' own)
            get_loss(loss, table.task, pos_weight=1.0 if weighted else None, neg_weight=1.0 if weighted else None)
        except LossConfigError as error:
            raise ConfigError(f"{config.name}: model.finetune.loss {loss!r} does not fit the {table.task} data: "
                              f"{error}") from None

    @classmethod
    def from_experiment(cls, config: ExperimentConfig, train, run_dir: Path | None) -> "FineTuner":
        """An unfitted tuner for ``config`` and the task, classes and class counts of ``train``.

        With ``balance.method: class_weight`` the loss weights are w_pos = N_neg/N and
        w_neg = N_pos/N of ``train`` (binary, multilabel), or w_c = N / (K N_c) per class (multiclass).

        Example:
            >>> tuner = FineTuner.from_experiment(config, table.split("train"), None)  # doctest: +SKIP
        """
        from tfmed.training.losses import class_balance_weights, multiclass_balance_weights

        pos_weight = neg_weight = class_weights = None
        if _weighs_the_loss(config, train.task):
            pos_weight, neg_weight = class_balance_weights(train.labels(), train.classes)
        elif config.balance.method == "class_weight":  # multiclass: a weight per class, through Keras
            class_weights = multiclass_balance_weights(train.labels(), train.num_outputs)
        resample = config.balance if config.balance.method in RESAMPLING else None
        model = config.model
        return cls(model.backbone, train.task, train.num_outputs, config=model.finetune,
                   image_size=config.preprocess.image_size, weights=model.weights,
                   weights_dir=model.weights_dir, pos_weight=pos_weight, neg_weight=neg_weight,
                   class_weights=class_weights, run_dir=run_dir, seed=config.seed, classes=list(train.classes),
                   augment=config.augment, balance=resample, views=config.views.count)

    def fit_tables(self, train, val, inputs) -> "FineTuner":
        """Fit on the ``train`` table (augmented, resampled); ``val`` drives early stopping.

        The result depends on ``seed`` alone, not on what ran before in the process: TensorFlow's
        global seed is set to it before the training stream (shuffle, resampling, augmentation
        draws, which combine the global seed with their own) is built.

        Example:
            >>> tuner.fit_tables(table.split("train"), table.split("val"), ImageInputs(preprocess))  # doctest: +SKIP
        """
        from tfmed.training.callbacks import EpochLogger

        keras.utils.set_random_seed(self.seed)
        batch = self.global_batch_size  # per-replica batch x replicas
        train_ds = inputs.dataset(train, training=True, batch_size=batch, augment=self.augment,
                                  balance=self.balance, seed=self.seed)
        val_ds = inputs.dataset(val, training=False, batch_size=batch) if val is not None and len(val) else None
        log(f"fine-tuning {self.backbone} in {len(self.config.stages)} stage(s)")
        self.fit(train_ds, val_ds, callbacks=[EpochLogger()])
        return self

    def predict_table(self, table, inputs, batch_size: int = 64) -> np.ndarray:
        """Scores for every row of ``table``: (n,) for binary, else (n, outputs).

        Example:
            >>> tuner.predict_table(table.split("test"), inputs).shape  # doctest: +SKIP
            (942,)
        """
        return average_over_views(inputs, lambda view: scores_from_probabilities(
            self.task, self.predict(view.dataset(table, training=False, batch_size=batch_size))))

    def keras_model(self) -> keras.Model:
        """The trained Keras model (one flat graph: backbone layers, then the head).

        Example:
            >>> tuner.keras_model().get_layer("predictions").output.shape  # doctest: +SKIP
            (None, 1)
        """
        if self.model_ is None:
            raise FinetuneError("the model is not trained yet: call fit(...) or FineTuner.load(directory)")
        return self.model_

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: (S, S, 3), or (V, S, S, 3) for views of a volume."""
        image = (self.image_size, self.image_size, 3)
        return ((self.views,) if self.views else ()) + image

    def explain_models(self, inputs) -> list:
        """``[(backbone name, Keras model, inputs)]``: what :mod:`tfmed.explain` explains for this model.

        Example:
            >>> [name for name, _, _ in tuner.explain_models(inputs)]  # doctest: +SKIP
            ['efficientnet_lite0']
        """
        return [(self.backbone, self.keras_model(), inputs)]

    def report_facts(self) -> dict:
        """How views of a volume are combined, when the model reads them (the training curves are
        drawn by the report itself).

        Example:
            >>> FineTuner("mobilenet_v2", "binary", 1, weights=None).report_facts()
            {}
        """
        if not self.views:
            return {}
        return {"views": f"{self.views} per volume through one shared backbone, features pooled by "
                         f"{self.config.view_pooling}"}

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        from tfmed import backbones

        cfg = self.config
        backbones.get_spec(self.backbone)  # an unknown name raises, listing the known backbones
        if self.task not in typing.get_args(Task):
            raise FinetuneError(f"task is {self.task!r}; allowed: {', '.join(typing.get_args(Task))}")
        if isinstance(self.num_outputs, bool) or not isinstance(self.num_outputs, (int, np.integer)):
            raise FinetuneError(f"num_outputs must be an integer, got {self.num_outputs!r}")
        if self.task == "binary" and self.num_outputs != 1:
            raise FinetuneError(f"a binary task has one sigmoid output; num_outputs is {self.num_outputs}, "
                                "use 1 (or task='multiclass' for a softmax over classes)")
        if self.task == "multiclass" and self.num_outputs < 2:
            raise FinetuneError(f"a multiclass task needs at least 2 outputs, got {self.num_outputs}")
        if self.task == "multilabel" and self.num_outputs < 1:
            raise FinetuneError(f"a multilabel task needs at least 1 output, got {self.num_outputs}")
        if self.classes is not None and len(self.classes) not in (self.num_outputs, 2 if self.task == "binary" else -1):
            raise FinetuneError(f"classes lists {len(self.classes)} names ({', '.join(self.classes)}) "
                                f"but the {self.task} model has {self.num_outputs} output(s)")
        if self.class_weights is not None and (self.task != "multiclass" or len(self.class_weights) != self.num_outputs
                                               or not all(np.isfinite(w) and w > 0 for w in self.class_weights)):
            raise FinetuneError(f"class_weights {self.class_weights} must give one finite weight > 0 per class of a "
                                "multiclass model; a binary or multilabel model takes pos_weight and neg_weight")
        if isinstance(self.views, bool) or not isinstance(self.views, (int, np.integer)) or self.views < 0:
            raise FinetuneError(f"views is {self.views!r}; use 0 for images or the number of views per volume")
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 8:
            raise FinetuneError(f"image_size is {self.image_size!r}; it must be an integer of at least 8 pixels")
        if not isinstance(cfg, FinetuneConfig):
            raise FinetuneError(f"config must be a FinetuneConfig, got {type(cfg).__name__}")
        cfg.check()  # ranges and choices live in tfmed.config; re-checked here in case it was edited
        self._loss()  # loss name, task and class weights are checked here, before any model is built

    # ------------------------------------------------------------------- model
    @property
    def global_batch_size(self) -> int:
        """``config.batch_size`` times the number of replicas of the distribution strategy.

        Example:
            >>> FineTuner("mobilenet_v2", "binary", 1, weights=None).global_batch_size  # doctest: +SKIP
            32
        """
        return self.config.batch_size * self._strategy().num_replicas_in_sync

    def _strategy(self):
        if self.strategy_ is None:
            from tfmed.training import distribute
            self.strategy_ = distribute.strategy(self.config.strategy)
        return self.strategy_

    def build(self) -> keras.Model:
        """Create the backbone and head (called by :meth:`fit` when needed); returns the model.

        Example:
            >>> FineTuner("mobilenet_v2", "multiclass", 3, image_size=32, weights=None).build().output_shape  # doctest: +SKIP
            (None, 3)
        """
        from tfmed import backbones
        from tfmed.training import distribute

        keras.utils.set_random_seed(self.seed)
        # a script's global dtype policy applies unless the config names one (then restored after)
        policy = distribute.precision(self.config.mixed_precision) if self.config.mixed_precision else nullcontext()
        with policy, self._strategy().scope():
            base = backbones.create(self.backbone, weights=self.weights,
                                    input_shape=(self.image_size, self.image_size, 3),
                                    trainable=False, include_top=False,
                                    weights_dir=self.weights_dir)
            pool = (keras.layers.GlobalAveragePooling2D(name="head_pool") if self.config.pooling == "avg"
                    else keras.layers.GlobalMaxPooling2D(name="head_pool"))
            if self.views:  # one backbone shared by every view, its pooled features pooled over views
                inputs = keras.Input(self.input_shape, name="views")
                x = pool(base(FoldViews(name="fold_views")(inputs)))
                x = PoolViews(self.views, self.config.view_pooling, name="head_view_pool")(x)
            else:
                inputs = base.inputs
                x = pool(base.output)
            x = keras.layers.Dropout(self.config.dropout, name="head_dropout")(x)
            activation = "softmax" if self.task == "multiclass" else "sigmoid"
            outputs = keras.layers.Dense(self.num_outputs, activation=activation, dtype="float32",
                                         name="predictions")(x)
            model = keras.Model(inputs, outputs, name=f"{self.backbone}_finetune")
        self.backbone_model_ = base
        self.model_ = model
        return model

    def _set_trainable(self, unfreeze) -> None:
        """Freeze the whole backbone, then unfreeze its top blocks (BatchNorm stays frozen)."""
        from tfmed import backbones
        from tfmed.training import freezing

        freezing.freeze(self.backbone_model_)
        if unfrozen_blocks(self.backbone, unfreeze):
            freezing.unfreeze_top(self.backbone_model_, backbones.get_spec(self.backbone).blocks, unfreeze)
        for layer in self.model_.layers:
            if layer.name.startswith("head_") or layer.name == "predictions":
                layer.trainable = True

    def _optimizer(self, learning_rate: float):
        cfg = self.config
        if cfg.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay or None)
        if cfg.weight_decay > 0:
            return keras.optimizers.AdamW(learning_rate, weight_decay=cfg.weight_decay)
        return keras.optimizers.Adam(learning_rate)

    def _loss(self):
        from tfmed.training import losses

        return losses.get_loss(self.config.loss, self.task, pos_weight=self.pos_weight,
                               neg_weight=self.neg_weight, label_smoothing=self.config.label_smoothing,
                               gamma=self.config.focal_gamma)

    def _compile(self, learning_rate: float) -> None:
        from tfmed.training.known_labels_auc import KnownLabelsAUC

        metrics = [KnownLabelsAUC(name="auc", multi_label=self.task == "multilabel",
                                  num_labels=self.num_outputs if self.task == "multilabel" else None)]
        with self._strategy().scope():
            self.model_.compile(optimizer=self._optimizer(learning_rate), loss=self._loss(),
                                metrics=metrics, jit_compile=self.config.jit_compile)

    def stage_learning_rates(self) -> list[float]:
        """The starting learning rate of each stage.

        Stage 1 uses its own ``learning_rate`` or ``config.learning_rate``; each
        later stage its own ``learning_rate`` or the previous stage's rate times
        its ``lr_factor``.

        Example:
            >>> from tfmed.config import FinetuneConfig, StageConfig
            >>> cfg = FinetuneConfig(learning_rate=1e-3, stages=[StageConfig(), StageConfig(unfreeze=2)])
            >>> [round(r, 6) for r in FineTuner("mobilenet_v2", "binary", 1, config=cfg).stage_learning_rates()]
            [0.001, 0.0001]
        """
        rates = []
        for i, stage in enumerate(self.config.stages):
            if stage.learning_rate is not None:
                rates.append(float(stage.learning_rate))
            elif i == 0:
                rates.append(float(self.config.learning_rate))
            else:
                rates.append(rates[-1] * float(stage.lr_factor))
        return rates

    # ---------------------------------------------------------------- training
    def fit(self, train_ds, val_ds=None, callbacks: list | None = None) -> dict:
        """Run every stage of ``config.stages``; returns the merged history.

        Args:
            train_ds: batched ``tf.data.Dataset`` of (images (B,S,S,3) 0-255,
                targets (B, num_outputs)), or an ``(images, targets)`` pair of
                arrays (batched here with :attr:`global_batch_size`).
            val_ds: the same for validation; it drives early stopping on
                ``config.monitor`` (``val_auc`` from ClinicalMetrics) and the
                restoring of each stage's best weights. Without it, training
                loss is monitored instead.
            callbacks: extra Keras callbacks for every stage; they run after the
                validation metrics are written into ``logs`` and before early
                stopping reads them.

        Returns:
            ``{metric: [one value per epoch], ..., "epoch": [...], "stage": [...],
            "stage_boundaries": [first epoch of each stage]}``.

        Example:
            >>> history = tuner.fit(train_ds, val_ds)  # doctest: +SKIP
            >>> history["stage_boundaries"], len(history["loss"])  # doctest: +SKIP
            ([0, 3], 6)
        """
        keras.utils.set_random_seed(self.seed)  # before the shuffle of arrays is made: the same seed, the same fit
        train_ds = self._as_dataset(train_ds, "train_ds", training=True)
        val_ds = self._as_dataset(val_ds, "val_ds") if val_ds is not None else None
        state = self._load_state()
        if self.model_ is None:
            self.build()
        records = self._read_records()
        rates = self.stage_learning_rates()
        completed = state["completed"]
        if completed:
            # Resuming: start from the weights the last finished stage ended with.
            self._load_stage_weights(len(completed) - 1)
        start = completed[-1]["end"] if completed else 0
        batches = int(train_ds.cardinality())
        for k, stage in enumerate(self.config.stages):
            if k < len(completed):
                continue
            epochs, floor = stage_epochs(stage, batches, k)
            if epochs != stage.epochs:
                log(f"stage {k + 1}: {epochs} epochs of {batches} batches, to reach min_steps {stage.min_steps}")
            self._set_trainable(stage.unfreeze)
            self._compile(rates[k])
            self._check_resume_files(k)
            resume_epoch = self._backup_epoch(k)
            records = [r for r in records if r["stage"] < k or
                       (r["stage"] == k and resume_epoch is not None and r["epoch"] < resume_epoch)]
            self._write_records(records)
            stage_callbacks = self._stage_callbacks(k, epochs, start, rates[k], val_ds, callbacks or [],
                                                    watch_from=start + floor - 1)
            class_weight = dict(enumerate(self.class_weights)) if self.class_weights is not None else None
            try:
                self.model_.fit(train_ds, validation_data=val_ds, initial_epoch=start,
                                epochs=start + epochs, callbacks=stage_callbacks, verbose=0,
                                shuffle=False, class_weight=class_weight)
            except tf.errors.InvalidArgumentError as error:
                target_error = self._target_error(error)
                if target_error is None:
                    raise
                raise target_error from None
            # BackupAndRestore leaves the restored epoch on the model; the next
            # stage must start from its own initial epoch.
            self.model_._initial_epoch = None
            recorder = next(c for c in stage_callbacks if isinstance(c, _HistoryRecorder))
            records += recorder.records
            end = max([r["epoch"] for r in records if r["stage"] == k], default=start - 1) + 1
            completed.append({"stage": k, "start": start, "end": end, "learning_rate": rates[k]})
            if self.run_dir is not None:
                self._stage_dir(k).mkdir(parents=True, exist_ok=True)
                replace_atomically(self._stage_weights_path(k), lambda tmp: self.model_.save_weights(tmp))
                self._write_state(state)
                shutil.rmtree(self._stage_dir(k) / "backup", ignore_errors=True)
            start = end
        self.history_ = _merge(records, [c["start"] for c in completed])
        if self.run_dir is not None and records:
            from tfmed.evaluation.plots import training_curves

            curves = {k: v for k, v in self.history_.items() if k not in ("epoch", "stage", "stage_boundaries")}
            training_curves(curves, self.run_dir / "training_curves.png",
                            stage_boundaries=[b for b in self.history_["stage_boundaries"] if b > 0])
        return self.history_

    def _stage_callbacks(self, k, epochs, start, learning_rate, val_ds, extra, watch_from: int) -> list:
        cfg = self.config
        monitor = cfg.monitor if val_ds is not None or not cfg.monitor.startswith("val_") else "loss"
        watched = cfg.early_stopping_patience is not None or cfg.schedule == "plateau"
        if k == 0 and watched and monitor != cfg.monitor:
            log(f"no validation data: early stopping and the best epoch watch the training loss, not {cfg.monitor}")
        mode = "min" if monitor.endswith("loss") else "max"
        result = []
        if val_ds is not None:
            from tfmed.training.callbacks import ClinicalMetrics
            result.append(ClinicalMetrics(val_ds, task=self.task))
        result += list(extra)
        if cfg.schedule == "cosine":
            result.append(keras.callbacks.LearningRateScheduler(
                _Cosine(learning_rate, start, epochs)))
        elif cfg.schedule == "plateau":
            result.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=0.2,
                                                            patience=1, min_lr=learning_rate * 1e-3))
        stage_dir = self._stage_dir(k) if self.run_dir is not None else None
        if cfg.early_stopping_patience is not None:
            result.append(_StageEarlyStopping(monitor=monitor, mode=mode, patience=cfg.early_stopping_patience,
                                              state_dir=stage_dir, start_from_epoch=watch_from))
        result.append(_HistoryRecorder(k, self.run_dir / HISTORY_FILE if self.run_dir is not None else None))
        if stage_dir is not None:
            result.append(_AtomicBackup(str(stage_dir / "backup"), delete_checkpoint=False))
        return result

    # ---------------------------------------------------------- run directory
    def _stage_dir(self, k: int) -> Path:
        return self.run_dir / "finetune" / f"stage_{k + 1}"

    def _stage_weights_path(self, k: int) -> Path:
        return self._stage_dir(k) / "final.weights.h5"

    def _load_stage_weights(self, k: int) -> None:
        path = self._stage_weights_path(k)
        try:
            self.model_.load_weights(path)
        except Exception as error:  # a damaged file fails in many ways inside Keras / h5py
            raise FinetuneError(f"{path}: the weights finished stage {k + 1} ended with cannot be read "
                                f"({type(error).__name__}: {str(error)[:200]}); delete {self.run_dir} "
                                "to start again") from None

    def _check_resume_files(self, k: int) -> None:
        """Remove stage ``k``'s backup and best-epoch files when one of them cannot be read (cut short by a
        kill as an older tfmed wrote it, or damaged), logging it: the stage then starts again from its start."""
        if self.run_dir is None:
            return
        stage_dir = self._stage_dir(k)
        backup = stage_dir / "backup"
        for stray in [*stage_dir.glob(".tmp-*"), *backup.glob(".tmp-*")]:  # left by a kill as a file was written
            stray.unlink(missing_ok=True)
        problem = self._unreadable_backup(backup) or self._unreadable_best(stage_dir)
        if problem is None:
            return
        bad, reason = problem
        shutil.rmtree(backup, ignore_errors=True)
        for name in _StageEarlyStopping.FILES:
            (stage_dir / name).unlink(missing_ok=True)
        where = f"the end of stage {k}" if k else "its start"
        log(f"{bad}: cannot be read ({reason}); removed it and the stage's other backups: stage {k + 1} "
            f"starts again from {where}")

    def _unreadable_backup(self, backup: Path) -> tuple[Path, str] | None:
        """The backup file of ``backup`` that cannot be read, and why; the model is left as it was."""
        weights, metadata = backup / "latest.weights.h5", backup / "training_metadata.json"
        if metadata.is_file():
            try:
                int(json.loads(metadata.read_text(encoding="utf-8"))["epoch"])
            except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
                return metadata, f"{type(error).__name__}: {str(error)[:120]}"
        if not weights.is_file():
            return None
        model = self.model_
        with self._strategy().scope():
            if model.optimizer is not None and not model.optimizer.built:  # as BackupAndRestore loads it
                model.optimizer.build(model.trainable_variables)
        variables = list(model.weights) + (list(model.optimizer.variables) if model.optimizer is not None else [])
        kept = [keras.ops.convert_to_numpy(v) for v in variables]
        try:
            model.load_weights(weights)
        except Exception as error:  # a cut-short file fails in many ways inside Keras / h5py
            return weights, f"{type(error).__name__}: {(str(error).split('. ')[0].splitlines() or [''])[0][:100]}"
        finally:  # a trial load: BackupAndRestore loads the backup itself as the stage begins
            for variable, value in zip(variables, kept):
                variable.assign(value)
        return None

    def _unreadable_best(self, stage_dir: Path) -> tuple[Path, str] | None:
        """The best-epoch file of early stopping in ``stage_dir`` that cannot be read, and why."""
        state_path, weights_path = (stage_dir / name for name in _StageEarlyStopping.FILES)
        if not (state_path.is_file() and weights_path.is_file()):  # as _StageEarlyStopping reads them
            return None
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            float(state["best"]), int(state["best_epoch"]), int(state["wait"])
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
            return state_path, f"{type(error).__name__}: {str(error)[:120]}"
        try:
            stored = read_arrays(weights_path, FinetuneError)
        except FinetuneError as error:
            return weights_path, str(error).split(" (")[0].replace(f"{weights_path}: ", "")
        shapes = [tuple(w.shape) for w in self.model_.weights]
        if [tuple(stored[f"w{i}"].shape) if f"w{i}" in stored else None for i in range(len(stored))] != shapes:
            return weights_path, "it does not hold this model's weights"
        return None

    def _backup_epoch(self, k: int) -> int | None:
        if self.run_dir is None:
            return None
        path = self._stage_dir(k) / "backup" / "training_metadata.json"
        if not path.is_file():
            return None
        return int(json.loads(path.read_text())["epoch"])

    def spec(self) -> dict:
        """What defines this model and run: saved with the model and checked on resume.

        Example:
            >>> FineTuner("mobilenet_v2", "binary", 1, image_size=64, weights=None).spec()["image_size"]
            64
        """
        return {"backbone": self.backbone, "task": self.task, "num_outputs": int(self.num_outputs),
                "classes": self.classes, "image_size": int(self.image_size), "pooling": self.config.pooling,
                "views": int(self.views)}

    def _run_spec(self) -> dict:
        spec = self.spec()
        spec["stages"] = [{"epochs": s.epochs, "unfreeze": s.unfreeze,
                           **({"min_steps": s.min_steps} if s.min_steps is not None else {})}
                          for s in self.config.stages]
        spec["learning_rates"] = self.stage_learning_rates()
        if self.class_weights is not None:
            spec["class_weights"] = self.class_weights
        return spec

    def _load_state(self) -> dict:
        fresh = {"spec": self._run_spec(), "completed": []}
        if self.run_dir is None:
            return fresh
        path = self.run_dir / "finetune" / STATE_FILE
        if not path.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return fresh
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise FinetuneError(f"{path}: unreadable fine-tuning state ({error}); delete the run "
                                "directory to start again") from None
        for key, now in self._run_spec().items():
            was = state["spec"].get(key)
            if was != now:
                raise FinetuneError(f"{self.run_dir} holds a run with a different {key} (was {was!r}, now "
                                    f"{now!r}); resume with the same settings, or use a new run_dir")
        for item in state["completed"]:
            if not self._stage_weights_path(item["stage"]).is_file() and item is state["completed"][-1]:
                raise FinetuneError(f"{self._stage_weights_path(item['stage'])} is missing, so the finished "
                                    f"stage {item['stage'] + 1} cannot be restored; delete {self.run_dir} "
                                    "to start again")
        return state

    def _write_state(self, state: dict) -> None:
        path = self.run_dir / "finetune" / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
        tmp.replace(path)

    def _read_records(self) -> list[dict]:
        if self.run_dir is None or not (self.run_dir / HISTORY_FILE).is_file():
            return []
        lines = [line for line in (self.run_dir / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise FinetuneError(f"{self.run_dir / HISTORY_FILE}: line {i + 1} is not JSON; {DAMAGED}") from None
                # the last line, cut short by a kill as it was appended: its epoch had no backup yet, it runs again
        return records

    def _write_records(self, records: list[dict]) -> None:
        """Rewrite the history file with the epochs kept (drops epochs that will be re-run)."""
        if self.run_dir is None:
            return
        text = "".join(json.dumps(r) + "\n" for r in records)
        replace_atomically(self.run_dir / HISTORY_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    # -------------------------------------------------------------- inference
    def _as_dataset(self, data, name: str, training: bool = False) -> tf.data.Dataset:
        """Accept a batched dataset or an (images, targets) pair; check shapes against the model."""
        if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tf.data.Dataset):
            x = self._image_array(data[0], f"{name} images")
            if len(x) != len(data[1]):
                raise FinetuneError(f"{name}: {len(x)} images but {len(data[1])} targets")
            y = self._check_targets(data[1], name)
            if training:
                self._check_both_classes(y, name)
            data = tf.data.Dataset.from_tensor_slices((x, y))
            if training:
                data = data.shuffle(len(x), seed=self.seed)
            data = data.batch(self.global_batch_size)
        if not isinstance(data, tf.data.Dataset):
            raise FinetuneError(f"{name} must be a tf.data.Dataset of (images, targets) batches or an "
                                f"(images, targets) pair of arrays, got {type(data).__name__}")
        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise FinetuneError(f"{name} must yield (images, targets) pairs; it yields {spec}")
        images, targets = spec[0], spec[1]
        expected = self.input_shape
        if images.shape.rank != len(expected) + 1 or any(d is not None and d != e
                                                         for d, e in zip(images.shape[1:], expected)):
            raise FinetuneError(f"{name} yields images of shape {tuple(images.shape)}; the model expects "
                                f"batches of (batch, {', '.join(map(str, expected))}): set preprocess."
                                f"image_size to {self.image_size} and channels to 3, and batch the dataset")
        if targets.shape.rank != 2 or targets.shape[-1] != self.num_outputs:
            raise FinetuneError(f"{name} yields targets of shape {tuple(targets.shape)}; the {self.task} "
                                f"model expects (batch, {self.num_outputs})"
                                + (" one-hot rows" if self.task == "multiclass" else ""))
        return data.map(self._target_check(name))

    def _image_array(self, images, what: str) -> np.ndarray:
        """Images given as an array, as the model reads them: float32 (N, S, S, 3), or (N, V, S, S, 3) for
        views; grey images, (N, S, S) or (N, S, S, 1), repeated to R, G, B. One image without its batch
        axis, another size, an empty array, NaN pixels or another scale than 0-255 are refused."""
        from tfmed.backbones.features import check_images

        try:
            x = np.asarray(images, dtype=np.float32)
        except ValueError:
            raise FinetuneError(f"{what} are of different shapes; resize them to {self.image_size} x "
                                f"{self.image_size} first") from None
        expected = self.input_shape
        wanted = f"(N, {', '.join(map(str, expected))})"
        one = x.shape == expected if self.views else x.ndim == len(expected) and x.shape[-1] in (1, 3)
        if one:
            raise FinetuneError(f"{what} must be a batch {wanted}, got shape {x.shape}: one "
                                f"{'volume' if self.views else 'image'}; add the batch axis (X[None])")
        if x.ndim == len(expected):  # grey images without a channel axis
            x = x[..., np.newaxis]
        if x.ndim == len(expected) + 1 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        if x.shape[1:] != expected:
            size = f"{self.image_size} x {self.image_size}"
            raise FinetuneError(f"{what} have shape {np.shape(images)}; the model takes {wanted} (grey images "
                                "without the channel axis or with 1 channel are repeated to R, G, B): "
                                + (f"give {self.views} views of {size} pixels per volume" if self.views
                                   else f"resize them to {size}"))
        check_images(x, what)
        return x

    def _target_check(self, name: str):
        """A dataset map that stops training (see :meth:`fit`) at a batch whose targets the task cannot
        train on: not finite, outside [0, 1] (-1 marks an unknown multilabel label), or multiclass rows
        that do not sum to 1. Soft targets in [0, 1] pass."""
        task = self.task

        def check(images, targets, *rest):
            values = tf.cast(targets, tf.float32)
            known = tf.where(tf.equal(values, float(UNKNOWN_LABEL)), 0.0, values) if task == "multilabel" \
                else values
            fine = tf.reduce_all(tf.math.is_finite(values)) & tf.reduce_all((known >= 0.0) & (known <= 1.0))
            if task == "multiclass":
                fine = fine & tf.reduce_all(tf.abs(tf.reduce_sum(values, axis=-1) - 1.0) <= 1e-3)
            with tf.control_dependencies([tf.debugging.Assert(fine, [f"{_TARGET_CHECK}{name}|", values],
                                                              summarize=12)]):
                return (images, tf.identity(targets), *rest)

        return check

    def _target_error(self, error: tf.errors.InvalidArgumentError) -> FinetuneError | None:
        """The one-line error for a batch :meth:`_target_check` stopped (None for any other error)."""
        text = str(error.message)
        if _TARGET_CHECK not in text:
            return None
        name, _, values = text.split(_TARGET_CHECK, 1)[1].partition("|")
        rule = {"binary": "binary targets must be 0 or 1 (soft targets in [0, 1] pass)",
                "multiclass": f"multiclass targets must be rows of {self.num_outputs} values in [0, 1] that "
                              "sum to 1 (one-hot)",
                "multilabel": "multilabel targets must be in [0, 1], with -1 for an unknown label"}[self.task]
        shown = " ".join(values.split("[[{{")[0].lstrip("] ").split())[:200]
        return FinetuneError(f"{name} yields a batch of targets the {self.task} model cannot train on "
                             f"(the batch: {shown}); {rule} - NaN is a missing label: label or drop those images")

    def _check_both_classes(self, y: np.ndarray, name: str) -> None:
        """Refuse binary training targets of one value, or multiclass ones of one class: nothing to learn."""
        if self.task == "multilabel" or not len(y):
            return
        present = np.unique(y[:, 0] if self.task == "binary" else y.argmax(axis=1))
        if len(present) < 2:
            raise FinetuneError(f"{name}: every target is {_values(present)[0]}, one class only; a {self.task} "
                                "model needs training images of at least two classes to learn anything")

    def _check_targets(self, targets, name: str) -> np.ndarray:
        """Array targets as (n, num_outputs) float32; refuse values the task cannot train on, naming the rows.

        Binary: 0/1. Multiclass: class indices 0..K-1 (one-hot rows are accepted too). Multilabel: 0/1 with -1
        for an unknown label.
        """
        y = np.asarray(targets)
        rule = {"binary": "binary targets must be 0 or 1",
                "multiclass": f"multiclass targets must be class indices 0..{self.num_outputs - 1} (or one-hot rows)",
                "multilabel": "multilabel targets must be 0/1, with -1 for an unknown label"}[self.task]
        try:
            y = numeric_targets(y).astype(np.float64)
        except ValueError:
            bad = [i for i, value in enumerate(y.reshape(len(y), -1)) if not _numeric(value)]
            raise FinetuneError(f"{name}: targets must be numbers, got {y.dtype} values such as "
                                f"{y.reshape(len(y), -1)[bad[0]].tolist()!r} in row(s) {_rows(bad)}; {rule} "
                                "- encode the class names as numbers first") from None
        if y.ndim == 1:
            y = y[:, None]
        if self.task == "multiclass" and y.ndim == 2 and y.shape[1] == 1:
            labels = y[:, 0]
            bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)) | (labels < 0)
                                 | (labels >= self.num_outputs))
            if bad.size:
                raise FinetuneError(f"{name}: targets {_values(labels[bad])} in row(s) {_rows(bad)} are not "
                                    f"classes of the {self.num_outputs}-class model; {rule}")
            return np.eye(self.num_outputs, dtype=np.float32)[labels.astype(np.int64)]
        if y.ndim != 2:
            raise FinetuneError(f"{name}: targets must have shape (n,) or (n, {self.num_outputs}), got {y.shape}")
        allowed = (0.0, 1.0, float(UNKNOWN_LABEL)) if self.task == "multilabel" else (0.0, 1.0)
        bad = np.flatnonzero(~np.isin(y, allowed).all(axis=1))
        if bad.size:
            values = y[bad].ravel()
            raise FinetuneError(f"{name}: targets {_values(values[~np.isin(values, allowed)])} in row(s) "
                                f"{_rows(bad)} are not allowed; {rule}"
                                + (" (NaN: a missing label - label or drop those images)"
                                   if np.isnan(values).any() else ""))
        if self.task == "multiclass" and y.shape[1] == self.num_outputs:
            bad = np.flatnonzero(y.sum(axis=1) != 1)
            if bad.size:
                raise FinetuneError(f"{name}: one-hot target rows {_rows(bad)} do not have exactly one 1; {rule}")
        return y.astype(np.float32)

    def predict(self, data) -> np.ndarray:
        """Probabilities (n, num_outputs) for a dataset of images or (images, targets), or an image array.

        Example:
            >>> tuner.predict(np.zeros((2, 64, 64, 3), np.float32)).shape  # doctest: +SKIP
            (2, 1)
        """
        if self.model_ is None:
            raise FinetuneError("the model is not trained yet: call fit(...) or FineTuner.load(directory)")
        if isinstance(data, tf.data.Dataset):
            from tfmed.backbones.features import end_of_data_not_warned

            if isinstance(data.element_spec, tuple):
                data = data.map(lambda x, *rest: x)
            with end_of_data_not_warned():
                return np.asarray(self.model_.predict(data, verbose=0))
        x = self._image_array(data, "predict images")
        return np.asarray(self.model_.predict(x, batch_size=self.config.batch_size, verbose=0))

    # ----------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``model.keras`` and ``finetune.json`` (backbone, task, classes, image size, settings).

        Example:
            >>> tuner.save("runs/demo/model")  # doctest: +SKIP
        """
        if self.model_ is None:
            raise FinetuneError("nothing to save: call fit(...) first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model_.save(directory / MODEL_FILE)
        spec = self.spec()
        spec["config"] = _plain(self.config)
        if self.pos_weight is not None:  # the loss's class weights, which weighted_bce cannot be built without
            spec["loss_weights"] = {"pos": np.asarray(self.pos_weight).tolist(),
                                    "neg": np.asarray(self.neg_weight).tolist()}
        (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, trust_pickles: bool = False) -> "FineTuner":
        """Load a model written by :meth:`save`, ready for :meth:`predict`.

        The Keras file is read with ``safe_mode=True``; it never holds a pickle,
        so ``trust_pickles`` (part of every mode's ``load``) changes nothing here.

        Example:
            >>> tuner = FineTuner.load("runs/demo/model")  # doctest: +SKIP
        """
        import tfmed.backbones  # noqa: F401  (registers the backbones' custom layers)

        directory = Path(directory)
        for name in (MODEL_FILE, SPEC_FILE):
            if not (directory / name).is_file():
                raise FinetuneError(f"{directory / name} not found; point FineTuner.load at a folder "
                                    "written by FineTuner.save")
        spec = read_json(directory / SPEC_FILE, FinetuneError)
        try:
            config = _config_from_plain(spec.get("config", {}))
            # a file saved before the loss's class weights were kept: any stand in, as scoring needs no loss
            unweighted = {"pos": 1.0, "neg": 1.0} if config.loss == "weighted_bce" else {"pos": None, "neg": None}
            loss_weights = spec.get("loss_weights", unweighted)
            tuner = cls(spec["backbone"], spec["task"], spec["num_outputs"], config=config,
                        image_size=spec["image_size"], weights=None, classes=spec.get("classes"),
                        views=spec.get("views", 0), pos_weight=loss_weights["pos"], neg_weight=loss_weights["neg"])
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise FinetuneError(f"{directory / SPEC_FILE}: incomplete or damaged ({type(error).__name__}: "
                                f"{error}); {DAMAGED}") from None
        try:  # safe_mode: a Lambda layer's pickled code in the file is refused, never run
            tuner.model_ = keras.saving.load_model(directory / MODEL_FILE, compile=False, safe_mode=True)
        except Exception as error:  # a damaged or foreign file fails in many ways inside Keras / zipfile / h5py
            raise FinetuneError(f"{directory / MODEL_FILE}: not a Keras model tfmed can load "
                                f"({type(error).__name__}: {str(error)[:200]}); {DAMAGED}") from None
        return tuner


# ---------------------------------------------------------------- helpers
def _numeric(value) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _rows(rows, limit: int = 10) -> str:
    rows = [int(r) for r in rows]
    return str(rows[:limit])[:-1] + (f", ... ({len(rows)} rows)]" if len(rows) > limit else "]")


def _values(values, limit: int = 5) -> list:
    unique = list(dict.fromkeys(repr(float(v)) for v in np.asarray(values).ravel()))
    return [int(float(v)) if np.isfinite(float(v)) and float(v) == round(float(v)) else float(v)
            for v in unique[:limit]]


def stage_epochs(stage: StageConfig, batches: int, index: int = 0) -> tuple[int, int]:
    """The epochs a stage runs, and how many of them reach ``stage.min_steps`` (1 without it).

    A stage runs ``stage.epochs``, or more when ``stage.min_steps`` needs them.
    Early stopping watches the stage from the last of the epochs that reach
    ``min_steps`` on, so it neither ends the stage before them nor restores
    weights from before them. ``batches`` is the number of batches in one epoch
    of the training dataset (its ``cardinality()``; negative when unknown or
    infinite).

    Example:
        >>> stage_epochs(StageConfig(epochs=3, min_steps=150), batches=148)  # a large set: as written
        (3, 2)
        >>> stage_epochs(StageConfig(epochs=3, min_steps=150), batches=18)   # a small one: 150 steps
        (9, 9)
        >>> stage_epochs(StageConfig(epochs=3), batches=18)
        (3, 1)
    """
    if stage.min_steps is None:
        return stage.epochs, 1
    if batches < 1:
        length = {tf.data.INFINITE_CARDINALITY: "infinite", 0: "zero batches"}.get(batches, "unknown")
        raise FinetuneError(f"model.finetune.stages[{index}].min_steps needs a training dataset of known, "
                            f"finite length to count its batches, but this one's length is {length}: "
                            "give a finite dataset (no repeat(), no filter()), or leave min_steps out")
    floor = math.ceil(stage.min_steps / batches)
    return max(stage.epochs, floor), floor


def unfrozen_blocks(backbone: str, unfreeze: int | float | str) -> list[str]:
    """The block prefixes of ``backbone`` that a stage's ``unfreeze`` trains ([] for 0: the head only);
    an amount the backbone cannot take raises :class:`~tfmed.training.freezing.FreezingError`.

    Example:
        >>> unfrozen_blocks("vgg16", 2), unfrozen_blocks("vgg16", 0)
        (['block4_', 'block5_'], [])
    """
    from tfmed import backbones
    from tfmed.training.freezing import blocks_for_amount

    if unfreeze in (0, 0.0):
        return []
    return blocks_for_amount(backbones.get_spec(backbone).blocks, unfreeze)


def _weighs_the_loss(config: ExperimentConfig, task: str) -> bool:
    """Whether ``balance.method: class_weight`` weighs the loss by w_pos / w_neg (binary, multilabel);
    multiclass data take a weight per class instead, through Keras ``class_weight``."""
    return config.balance.method == "class_weight" and task != "multiclass"


def _merge(records: list[dict], boundaries: list[int]) -> dict:
    records = sorted(records, key=lambda r: r["epoch"])
    keys = []
    for record in records:
        keys += [k for k in record if k not in keys]
    history = {k: [r.get(k, float("nan")) for r in records] for k in keys}
    history["stage_boundaries"] = list(boundaries)
    return history


def _plain(config: FinetuneConfig) -> dict:
    import dataclasses
    return dataclasses.asdict(config)


def _config_from_plain(values: dict) -> FinetuneConfig:
    values = dict(values)
    stages = [StageConfig(**s) for s in values.pop("stages", [])] or None
    config = FinetuneConfig(**values)
    if stages:
        config.stages = stages
    return config


class _Cosine:
    """Epoch-level cosine decay from ``base`` to 0 over one stage."""

    def __init__(self, base: float, start: int, epochs: int):
        self.base, self.start, self.epochs = base, start, epochs

    def __call__(self, epoch, lr=None):
        return float(self.base * 0.5 * (1.0 + math.cos(math.pi * (epoch - self.start) / self.epochs)))


class _HistoryRecorder(keras.callbacks.Callback):
    """Keeps every epoch's logs (with epoch, stage and the learning rate the epoch trained at, read as it
    begins: a plateau schedule lowers the rate at an epoch's end, for the next); appends them to a file."""

    def __init__(self, stage: int, path: Path | None):
        super().__init__()
        self.stage, self.path, self.records = stage, path, []
        self.rate = None

    def on_epoch_begin(self, epoch, logs=None):
        self.rate = learning_rate_of(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": int(epoch), "stage": self.stage}
        for key, value in (logs or {}).items():
            try:
                record[key] = float(value)
            except (TypeError, ValueError):
                continue
        record["learning_rate"] = self.rate
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class _AtomicBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose weights and epoch are each written beside their place and renamed into it, so
    that a kill as an epoch's backup is written leaves the previous backup whole (Keras writes in place). The
    weights are renamed first: a kill between the two renames makes a resume train that epoch again."""

    def _save_model(self):
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        metadata = json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen})
        replace_atomically(Path(self._weights_path), lambda tmp: self.model.save_weights(tmp, overwrite=True))
        replace_atomically(Path(self._training_metadata_path), lambda tmp: Path(tmp).write_text(metadata))


class _StageEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping restoring the best weights, whose state survives a killed run; it watches from
    ``start_from_epoch`` (an absolute epoch) on."""

    def __init__(self, monitor: str, mode: str, patience: int, state_dir: Path | None, start_from_epoch: int = 0):
        super().__init__(monitor=monitor, mode=mode, patience=patience, restore_best_weights=True,
                         start_from_epoch=start_from_epoch)
        self.state_dir = state_dir

    FILES = ("best_state.json", "best_weights.npz")

    def _paths(self):
        return tuple(self.state_dir / name for name in self.FILES)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.state_dir is None:
            return
        state_path, weights_path = self._paths()
        if state_path.is_file() and weights_path.is_file():
            state = json.loads(state_path.read_text())
            self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]
            stored = read_arrays(weights_path, FinetuneError)
            self.best_weights = [stored[f"w{i}"] for i in range(len(stored))]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.state_dir is None or self.best is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state_path, weights_path = self._paths()
        if self.best_epoch == epoch:  # each file renamed into place whole: a kill leaves the previous one
            replace_atomically(weights_path, lambda tmp: np.savez(tmp, **{f"w{i}": w for i, w in
                                                                         enumerate(self.best_weights)}))
        state = json.dumps({"best": float(self.best), "best_epoch": int(self.best_epoch), "wait": int(self.wait)})
        replace_atomically(state_path, lambda tmp: Path(tmp).write_text(state))
