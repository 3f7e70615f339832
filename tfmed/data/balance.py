"""Class-balanced resampling of a training table.

Rows are grouped by a balance key: the class for binary and multiclass
tables. For multilabel tables each row's key is its rarest positive label
(rarest by count in the table), and rows with no positive label form one
extra group "(no label)"; so the rare findings are drawn as often as the
common ones while every row keeps all its labels.

``balanced_dataset`` draws row indices with ``tf.data.Dataset.choose_from_datasets``
from one shuffled, repeated dataset per group, each epoch holding exactly its
share of every group (``BalanceConfig.target``, uniform by default; see
:func:`epoch_quotas`) in a fresh random order. Every epoch is finite: ``len(table)``
draws for "oversample", ``n_groups * min_count`` for "undersample", so ``model.fit``
needs no ``steps_per_epoch``.

Example:
    >>> import numpy as np
    >>> from tfmed.config import BalanceConfig
    >>> keys = np.array([0] * 9 + [1])
    >>> draws = balanced_dataset(keys, BalanceConfig(method="oversample"), seed=0)
    >>> len(list(draws))
    10
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from tfmed.config import RESAMPLING, BalanceConfig
from tfmed.errors import TfmedError

NO_LABEL = "(no label)"


class BalanceError(TfmedError):
    """The table cannot be resampled to the requested class mix."""


def balance_groups(table) -> tuple[np.ndarray, list[str]]:
    """Per-row balance key (int array) and the group names it indexes.

    Binary/multiclass: the class index. Multilabel: the rarest positive label,
    or ``len(classes)`` ("(no label)") for rows without a positive label.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> frame = pd.DataFrame({"image": list("abc"), "label:a": [1, 1, 0], "label:b": [0, 1, 0]})
        >>> keys, names = balance_groups(ImageTable(frame, ["a", "b"], "multilabel"))
        >>> keys.tolist(), names
        ([0, 1, 2], ['a', 'b', '(no label)'])
    """
    labels = table.labels()
    if table.task != "multilabel":
        return labels.astype(np.int64), list(table.classes)
    positive = labels == 1   # an unknown label (-1) is not a positive one
    counts = positive.sum(axis=0)
    # Among a row's positive labels pick the one with the smallest count.
    rank = np.where(positive, counts[np.newaxis, :], np.iinfo(np.int64).max)
    keys = np.argmin(rank, axis=1).astype(np.int64)
    keys[positive.sum(axis=1) == 0] = labels.shape[1]
    return keys, list(table.classes) + [NO_LABEL]


def table_mix(table, config: BalanceConfig) -> np.ndarray:
    """The normalised sampling weight per balance group that resampling ``table`` draws to (what
    :func:`balanced_dataset` draws for the table's :func:`balance_groups`); a target or a table that
    cannot be balanced raises BalanceError before anything is drawn.

    Example:
        >>> import pandas as pd
        >>> from tfmed.data.table import ImageTable
        >>> table = ImageTable(pd.DataFrame({"image": list("abc"), "label": [0, 0, 1]}), ["x", "y"], "binary")
        >>> table_mix(table, BalanceConfig("oversample", [1, 3])).tolist()
        [0.25, 0.75]
    """
    keys, names = balance_groups(table)
    keys, names, counts = _check(keys, config, names)
    return target_mix(config, names, counts)


def target_mix(config: BalanceConfig, names: Sequence[str], counts: Sequence[int]) -> np.ndarray:
    """Normalised sampling weight per group; checks the target against the data.

    Uniform over the non-empty groups when ``config.target`` is None. A class
    without rows is an error for binary/multiclass (it cannot be drawn).

    Example:
        >>> target_mix(BalanceConfig("oversample", [1, 3]), ["a", "b"], [5, 5]).tolist()
        [0.25, 0.75]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if config.target is None:
        weights = (counts > 0).astype(np.float64)
        if weights.sum() == 0:
            raise BalanceError("cannot balance an empty table")
        empty = [n for n, c in zip(names, counts) if c == 0 and n != NO_LABEL]
        if empty and names[-1] != NO_LABEL:
            raise BalanceError(f"class {empty[0]!r} has no training rows, so it cannot be oversampled "
                               "or undersampled; fix the split, or use balance.method 'none' or 'class_weight'")
        return weights / weights.sum()
    target = np.asarray(config.target, dtype=np.float64)
    if target.shape != (len(names),):
        raise BalanceError(f"balance.target has {target.size} values but the table has {len(names)} "
                           f"balance groups {list(names)}; give one share per group")
    if np.any(~np.isfinite(target)) or np.any(target < 0) or target.sum() <= 0:
        raise BalanceError(f"balance.target {config.target} must be non-negative shares with a positive sum")
    for name, share, count in zip(names, target, counts):
        if share == 0 and names[-1] != NO_LABEL:
            raise BalanceError(f"balance.target gives class {name!r} a share of 0, so the training stream would "
                               "never hold it and the model would learn never to predict it; give every class a "
                               "share above 0")
        if share > 0 and count == 0:
            raise BalanceError(f"balance.target asks for {share:g} of group {name!r}, which has no "
                               "training rows; set its share to 0 or fix the split")
    return target / target.sum()


def epoch_length(method: str, counts: Sequence[int], weights: Sequence[float] | None = None) -> int:
    """Draws per epoch: all rows for "oversample"; for "undersample" the most draws in which no group with a
    positive weight is drawn more often than it has rows (``groups * min_count`` for equal weights).

    Example:
        >>> epoch_length("undersample", [90, 10]), epoch_length("oversample", [90, 10])
        (20, 100)
        >>> epoch_length("undersample", [90, 10], [0.25, 0.75])  # 3 of the 90 and the 10, each once
        13
    """
    counts = np.asarray(counts, dtype=np.int64)
    if method == "oversample":
        return int(counts.sum())
    if method == "undersample":
        shares = (counts > 0 if weights is None else np.asarray(weights, dtype=np.float64)).astype(np.float64)
        used = shares > 0
        return int(np.floor(np.min(counts[used] / (shares[used] / shares[used].sum())) + 1e-9))
    raise BalanceError(f"balance.method {method!r} does not resample; allowed: {', '.join(RESAMPLING)}")


def _check(keys, config: BalanceConfig, names) -> tuple[np.ndarray, list[str], np.ndarray]:
    if config.method not in RESAMPLING:
        raise BalanceError(f"balance.method is {config.method!r}; resampling needs one of {RESAMPLING}")
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    n_groups = int(keys.max()) + 1 if keys.size else 0
    names = list(names) if names is not None else [str(i) for i in range(n_groups)]
    if keys.size and (keys.min() < 0 or keys.max() >= len(names)):
        raise BalanceError(f"balance keys must lie in [0, {len(names)}), got {keys.min()}..{keys.max()}")
    counts = np.bincount(keys, minlength=len(names))
    return keys, names, counts


def balanced_dataset(keys, config: BalanceConfig, *, seed: int = 0,
                     names: Sequence[str] | None = None) -> tf.data.Dataset:
    """A finite dataset of row indices (int64) drawn to ``config.target``'s mix.

    Each iteration (epoch) draws a fresh, seeded sample holding each group's :func:`epoch_quotas` exactly.

    Example:
        >>> keys = np.array([0] * 90 + [1] * 10)
        >>> ds = balanced_dataset(keys, BalanceConfig(method="undersample"), seed=1)
        >>> len(list(ds))
        20
    """
    keys, names, counts = _check(keys, config, names)
    weights = target_mix(config, names, counts)
    length = epoch_length(config.method, counts, weights)
    streams, used = [], []
    for group, weight in enumerate(weights):
        if weight <= 0:
            continue
        rows = np.flatnonzero(keys == group).astype(np.int64)
        streams.append(tf.data.Dataset.from_tensor_slices(rows)
                       .shuffle(len(rows), seed=seed + 1 + group, reshuffle_each_iteration=True)
                       .repeat())
        used.append(weight)
    if len(streams) == 1:
        return streams[0].take(length)
    choices = np.repeat(np.arange(len(streams), dtype=np.int64), epoch_quotas(used, length))
    order = tf.data.Dataset.from_tensor_slices(choices).shuffle(length, seed=seed, reshuffle_each_iteration=True)
    return tf.data.Dataset.choose_from_datasets(streams, order).take(length)  # take: a known, finite length


def epoch_quotas(weights: Sequence[float], length: int) -> np.ndarray:
    """Draws per group in an epoch of ``length``: the shares of ``weights``, rounded so they sum to
    ``length`` (the largest remainders rounded up, the first group first among equal ones).

    Example:
        >>> epoch_quotas([1, 1, 1], 100).tolist(), epoch_quotas([1, 3], 10).tolist()
        ([34, 33, 33], [3, 7])
    """
    exact = np.asarray(weights, dtype=np.float64) / np.sum(weights) * length
    quotas = np.floor(exact).astype(np.int64)
    remainders = exact - quotas
    quotas[np.argsort(-remainders, kind="stable")[:length - quotas.sum()]] += 1
    return quotas
