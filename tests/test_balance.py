"""Class-balanced resampling: observed class shares of many draws."""
import numpy as np
import pandas as pd
import pytest

from tfmed.config import BalanceConfig
from tfmed.data.balance import (
    NO_LABEL, BalanceError, balance_groups, balanced_dataset, epoch_length, target_mix)
from tfmed.data.table import ImageTable

KEYS_1_TO_9 = np.array([1] * 10 + [0] * 90)  # 10 positives, 90 negatives, interleaving irrelevant


def draw(ds, epochs):
    """Concatenate ``epochs`` iterations of a finite dataset (each one an epoch)."""
    out = []
    for _ in range(epochs):
        epoch = np.array([int(i) for i in ds.as_numpy_iterator()])
        out.append(epoch)
    return out


def test_oversample_reaches_half_from_one_to_nine():
    ds = balanced_dataset(KEYS_1_TO_9, BalanceConfig(method="oversample"), seed=3)
    epochs = draw(ds, 30)
    assert all(len(e) == 100 for e in epochs)                      # one epoch = len(table)
    share = KEYS_1_TO_9[np.concatenate(epochs)].mean()
    assert abs(share - 0.5) < 0.03, share                           # 3000 draws: sd 0.009
    assert all(KEYS_1_TO_9[e].sum() == 50 for e in epochs)          # every epoch half and half, not about half
    assert not np.array_equal(epochs[0], epochs[1])                 # a fresh draw each epoch
    assert np.isin(np.concatenate(epochs), np.arange(100)).all()


def test_non_uniform_target():
    ds = balanced_dataset(KEYS_1_TO_9, BalanceConfig(method="oversample", target=[0.3, 0.7]), seed=4)
    epochs = draw(ds, 30)
    share = KEYS_1_TO_9[np.concatenate(epochs)].mean()
    assert abs(share - 0.7) < 0.03, share
    assert all(KEYS_1_TO_9[e].sum() == 70 for e in epochs)


def test_undersample_epoch_length_and_share():
    ds = balanced_dataset(KEYS_1_TO_9, BalanceConfig(method="undersample"), seed=5)
    epochs = draw(ds, 100)
    assert all(len(e) == 20 for e in epochs)                        # n_classes * min_count
    assert int(ds.cardinality()) == 20                              # known, so min_steps can count batches
    share = KEYS_1_TO_9[np.concatenate(epochs)].mean()
    assert abs(share - 0.5) < 0.03, share
    # each epoch: every minority row once and as many majority rows, in a fresh order
    assert all(sorted(e[KEYS_1_TO_9[e] == 1]) == list(range(10)) and (KEYS_1_TO_9[e] == 0).sum() == 10
               for e in epochs)
    assert not np.array_equal(KEYS_1_TO_9[epochs[0]], KEYS_1_TO_9[epochs[1]])
    # the majority class is drawn from all its rows over epochs, not a fixed subset
    assert len(set(np.concatenate(epochs)[KEYS_1_TO_9[np.concatenate(epochs)] == 0])) > 80


@pytest.mark.parametrize("target", [[0.25, 0.75], [0.75, 0.25]])
def test_undersample_to_a_target_draws_no_row_twice_in_an_epoch(target):
    # KEYS_1_TO_9: group 0 holds 90 rows, group 1 holds 10
    ds = balanced_dataset(KEYS_1_TO_9, BalanceConfig(method="undersample", target=target), seed=6)
    for epoch in draw(ds, 5):
        assert len(set(epoch)) == len(epoch)  # undersampling: each row at most once
        assert abs(KEYS_1_TO_9[epoch].mean() - target[1]) < 0.1
    assert len(draw(ds, 1)[0]) == (13 if target[1] == 0.75 else 40)  # the rarest group's rows once: 10/0.75, 10/0.25


def test_same_seed_same_stream():
    a = draw(balanced_dataset(KEYS_1_TO_9, BalanceConfig("oversample"), seed=9), 1)[0]
    b = draw(balanced_dataset(KEYS_1_TO_9, BalanceConfig("oversample"), seed=9), 1)[0]
    np.testing.assert_array_equal(a, b)


def test_three_classes_uniform():
    keys = np.array([0] * 70 + [1] * 20 + [2] * 10)
    ds = balanced_dataset(keys, BalanceConfig(method="oversample"), seed=6)
    counts = np.bincount(keys[np.concatenate(draw(ds, 30))], minlength=3) / 3000
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.03)
    assert {tuple(np.bincount(keys[e], minlength=3)) for e in draw(ds, 5)} == {(34, 33, 33)}


def test_multilabel_key_is_rarest_positive_label():
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(6)],
                          "label:effusion": [1, 1, 1, 0, 0, 1],
                          "label:nodule": [0, 1, 0, 0, 1, 0],
                          "label:mass": [0, 0, 0, 0, 0, 0]})
    table = ImageTable(frame, ["effusion", "nodule", "mass"], "multilabel")
    keys, names = balance_groups(table)
    # effusion 4 rows, nodule 2: a row with both counts as nodule; no positives -> "(no label)"
    assert keys.tolist() == [0, 1, 0, 3, 1, 0]
    assert names == ["effusion", "nodule", "mass", "(no label)"]
    weights = target_mix(BalanceConfig("oversample"), names, np.bincount(keys, minlength=4))
    np.testing.assert_allclose(weights, [1 / 3, 1 / 3, 0.0, 1 / 3])   # empty group gets no share


def test_epoch_length_rules():
    assert epoch_length("oversample", [90, 10]) == 100
    assert epoch_length("undersample", [90, 10, 30]) == 30
    with pytest.raises(BalanceError, match="does not resample"):
        epoch_length("none", [90, 10])


def test_errors_name_the_problem():
    with pytest.raises(BalanceError, match="'rare' has no training rows"):
        balanced_dataset(np.zeros(10, int), BalanceConfig("oversample"), names=["common", "rare"])
    with pytest.raises(BalanceError, match="one share per group"):
        balanced_dataset(KEYS_1_TO_9, BalanceConfig("oversample", target=[0.2, 0.3, 0.5]))
    with pytest.raises(BalanceError, match="no\\s+training rows"):
        balanced_dataset(np.zeros(10, int), BalanceConfig("oversample", target=[0.5, 0.5]), names=["a", "b"])
    with pytest.raises(BalanceError, match="non-negative"):
        balanced_dataset(KEYS_1_TO_9, BalanceConfig("oversample", target=[-1.0, 2.0]))
    with pytest.raises(BalanceError, match="gives class 'normal' a share of 0, so the training stream would never"):
        balanced_dataset(KEYS_1_TO_9, BalanceConfig("oversample", target=[0, 1]), names=["normal", "sick"])
    # multilabel: the group of images with no positive label may be left out of the stream
    multilabel = balanced_dataset(np.array([0, 1, 2, 2]), BalanceConfig("oversample", target=[1, 1, 0]),
                                  names=["a", "b", NO_LABEL])
    assert set(draw(multilabel, 1)[0]) <= {0, 1}
    with pytest.raises(BalanceError, match="resampling needs"):
        balanced_dataset(KEYS_1_TO_9, BalanceConfig("class_weight"))


def test_table_mix_is_the_mix_balanced_dataset_draws_and_refuses_a_target_of_another_length():
    from tfmed.data.balance import table_mix

    table = ImageTable(pd.DataFrame({"image": list("abcd"), "label": [0, 0, 0, 1]}), ["x", "y"], "binary")
    assert table_mix(table, BalanceConfig("oversample")).tolist() == [0.5, 0.5]
    assert table_mix(table, BalanceConfig("oversample", [1, 3])).tolist() == [0.25, 0.75]
    with pytest.raises(BalanceError, match=r"balance.target has 3 values but the table has 2 balance groups"):
        table_mix(table, BalanceConfig("oversample", [1, 1, 1]))
