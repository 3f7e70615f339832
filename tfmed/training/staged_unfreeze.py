"""Unfreeze a backbone's top blocks inside one ``fit``, on a schedule or when a metric plateaus.

See :class:`StagedUnfreeze` for an example inside ``model.fit``.
"""
from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import keras

from tfmed.progress import log
from tfmed.training import freezing
from tfmed.training.callbacks import CallbackError


def _has_schedule(optimizer) -> bool:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = getattr(inner, "_learning_rate", None)
    return isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) or (
        callable(rate) and not isinstance(rate, keras.Variable))


class StagedUnfreeze(keras.callbacks.Callback):
    """Unfreeze the top backbone blocks during ``fit``, on a schedule or when a metric plateaus.

    At each change it calls :func:`tfmed.training.freezing.unfreeze_top` on the model
    (BatchNormalization of the blocks stays frozen), replaces the optimizer with a fresh
    copy of the same class and settings whose learning rate is the current
    one times ``lr_factor`` (as re-compiling would; its slot variables and
    step counter start afresh), and rebuilds the train function so the newly
    trainable weights train from the next step on - all inside one ``fit``.

    Scheduled changes happen at the start of the named epoch (0-based); an entry
    whose epoch training never reaches (at or beyond ``epochs``, or cut short by
    early stopping) is reported at the end of ``fit`` with a warning. A ``fit`` that
    starts later (``initial_epoch``, or resumed by ``BackupAndRestore``) first applies,
    in order, the entries before its first epoch that this callback has not applied to
    the model yet, as if they had run (blocks unfrozen, learning rate scaled once per
    entry), and warns which it caught up.
    With ``on_plateau=True`` a change happens at the end of an epoch after
    ``patience`` epochs without improvement of ``monitor``; successive changes
    take the next entry of ``amounts`` (default: one more block each time).

    Put ClinicalMetrics before it when monitoring ``val_auc``. Learning-rate
    schedules cannot be scaled: use ``lr_factor=1.0`` with a schedule.

    Args:
        blocks: the backbone's block prefixes, input to output.
        schedule: list of (epoch, amount) pairs; amount as in unfreeze_top.
        on_plateau: unfreeze when ``monitor`` stops improving.
        amounts: the amounts applied one after another on plateaus.
        patience: epochs without improvement before a plateau change.
        lr_factor: multiplies the learning rate at each change.
        monitor, mode, min_delta: what counts as an improvement.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(4, name="block1_dense")(inputs)
        >>> model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(x))
        >>> _ = freezing.freeze(model, ["block1_"])
        >>> model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
        >>> cb = StagedUnfreeze(["block1_"], schedule=[(1, "all")], lr_factor=0.1)
        >>> _ = model.fit(np.ones((8, 4)), np.ones(8), epochs=2, verbose=0, callbacks=[cb])
        >>> round(float(model.optimizer.learning_rate), 6), cb.unfrozen_
        (0.0001, ['block1_'])
    """

    def __init__(self, blocks: Sequence[str], schedule: Sequence[tuple[int, int | float | str]] | None = None, *,
                 on_plateau: bool = False, amounts: Sequence[int | float | str] | None = None,
                 patience: int = 2, lr_factor: float = 0.1, monitor: str = "val_auc", mode: str = "max",
                 min_delta: float = 0.0, verbose: int = 0):
        super().__init__()
        self.blocks = freezing._check_blocks(blocks)
        if not schedule and not on_plateau:
            raise CallbackError("StagedUnfreeze needs a schedule [(epoch, amount), ...] or on_plateau=True")
        self.schedule = {}
        for entry in schedule or []:
            if not isinstance(entry, (tuple, list)) or len(entry) != 2:
                raise CallbackError(f"schedule entries are (epoch, amount) pairs, got {entry!r}")
            epoch, amount = entry
            if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
                raise CallbackError(f"schedule epoch must be an int >= 0, got {epoch!r} in {entry!r}")
            if epoch in self.schedule:
                raise CallbackError(f"schedule lists epoch {epoch} twice")
            freezing.blocks_for_amount(self.blocks, amount)
            self.schedule[int(epoch)] = amount
        self.on_plateau = bool(on_plateau)
        self.amounts = list(amounts) if amounts is not None else list(range(1, len(self.blocks) + 1))
        for amount in self.amounts:
            freezing.blocks_for_amount(self.blocks, amount)
        if isinstance(lr_factor, bool) or not isinstance(lr_factor, numbers.Real) or lr_factor <= 0:
            raise CallbackError(f"lr_factor must be a number > 0, got {lr_factor!r}")
        if mode not in ("max", "min"):
            raise CallbackError(f"mode must be 'max' or 'min', got {mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
            raise CallbackError(f"patience must be an int >= 1, got {patience!r}")
        self.patience = int(patience)
        self.lr_factor = float(lr_factor)
        self.monitor = monitor
        self.mode = mode
        self.min_delta = abs(float(min_delta))
        self.verbose = verbose
        self.unfrozen_: list[str] = []
        self.changes_: list[dict] = []
        self._applied: set[int] = set()  # scheduled epochs applied to self._applied_model
        self._applied_model = None
        self._plateau_step = 0
        self._best = None
        self._wait = 0

    def on_train_begin(self, logs=None):
        self._best, self._wait = None, 0
        self._last_epoch = None
        if self._applied_model is not self.model:
            self._applied, self._applied_model = set(), self.model
        if self.lr_factor != 1.0 and _has_schedule(self.model.optimizer):
            raise CallbackError("StagedUnfreeze cannot scale a learning-rate schedule; use lr_factor=1.0 "
                                "or a constant learning rate")

    def on_epoch_begin(self, epoch, logs=None):
        first = self._last_epoch is None
        self._last_epoch = epoch
        if first:  # a fit resumed or started past scheduled epochs: catch their changes up, in order
            missed = sorted(e for e in self.schedule if e < epoch and e not in self._applied)
            if missed:
                message = (f"StagedUnfreeze: fit starts at epoch {epoch} (0-based), after the scheduled unfreeze(s) "
                           f"at epoch(s) {missed}; applying them now as if they had run")
                log(message)
                warnings.warn(message, stacklevel=2)
            for missed_epoch in missed:
                self._apply_scheduled(missed_epoch)
        if epoch in self.schedule:
            self._apply_scheduled(epoch)

    def _apply_scheduled(self, epoch: int) -> None:
        self.apply(self.schedule[epoch], epoch)
        self._applied.add(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.on_plateau and self._plateau_step < len(self.amounts):
            current = logs.get(self.monitor)
            if current is None:
                raise CallbackError(f"StagedUnfreeze monitors {self.monitor!r} but the epoch logs only have "
                                    f"{sorted(logs)}; put ClinicalMetrics before StagedUnfreeze or change monitor")
            current = float(current)
            better = self._best is None or (current > self._best + self.min_delta if self.mode == "max"
                                            else current < self._best - self.min_delta)
            if better:
                self._best, self._wait = current, 0
            else:
                self._wait += 1
                if self._wait >= self.patience:
                    amount = self.amounts[self._plateau_step]
                    self._plateau_step += 1
                    self._wait = 0
                    self.apply(amount, epoch + 1)
        logs["unfrozen_blocks"] = float(len(self.unfrozen_))

    def on_train_end(self, logs=None):
        last = getattr(self, "_last_epoch", None)
        if last is None:
            return
        missed = sorted(epoch for epoch in self.schedule if epoch > last)
        if missed:
            message = (f"StagedUnfreeze: the scheduled unfreeze(s) at epoch(s) {missed} never happened: training "
                       f"ended after epoch {last} (0-based, so fit ran {last + 1} epoch(s)); schedule epochs are "
                       f"0-based epoch starts - use epochs below {last + 1} or train for more epochs")
            log(message)
            warnings.warn(message, stacklevel=2)

    def apply(self, amount, epoch: int | None = None) -> list[str]:
        """Unfreeze ``amount`` top blocks now, scale the learning rate and rebuild training."""
        model = self.model
        self.unfrozen_ = freezing.unfreeze_top(model, self.blocks, amount)
        old = model.optimizer
        new_lr = learning_rate_of(old) * self.lr_factor if self.lr_factor != 1.0 else None
        with model.distribute_strategy.scope():
            optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(old))
            if new_lr is not None:
                optimizer.learning_rate = new_lr
            optimizer.build(model.trainable_variables)
        model.optimizer = optimizer
        model.make_train_function(force=True)
        change = {"epoch": epoch, "amount": amount, "unfrozen": list(self.unfrozen_),
                  "learning_rate": learning_rate_of(optimizer)}
        self.changes_.append(change)
        if self.verbose:
            log(f"StagedUnfreeze: epoch {epoch}: unfrozen {self.unfrozen_}, "
                f"learning rate {change['learning_rate']:.3g}")
        return self.unfrozen_


def learning_rate_of(optimizer) -> float:
    """The optimizer's learning rate as a number (a mirrored variable under a distribution strategy).

    Example:
        >>> round(learning_rate_of(keras.optimizers.SGD(0.01)), 6)
        0.01
    """
    return float(keras.ops.convert_to_tensor(optimizer.learning_rate).numpy())
