"""Patient-level splits: no leakage, stratified, sized as asked, deterministic."""
import numpy as np
import pandas as pd
import pytest

from tfmed.config import ExperimentConfig, SplitConfig
from tfmed.data.splits import (LeakageError, SplitError, check_no_leakage, check_split_classes, ensure_splits,
                               kfold_indices, patient_split, stratify_labels)
from tfmed.data.table import ImageTable
from tfmed.data.sources.embedded import load_pneumonia_mnist


def make_table(n_patients=300, positive_rate=0.3, seed=0, split=None):
    """Patients with 1-4 images each; a patient's images share the patient's label."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_patients)
    patient_labels = (rng.random(n_patients) < positive_rate).astype(int)
    patients = np.repeat([f"P{i:04d}" for i in range(n_patients)], sizes)
    labels = np.repeat(patient_labels, sizes)
    frame = pd.DataFrame({"image": [f"img{i}.png" for i in range(len(labels))], "label": labels,
                          "patient_id": patients})
    if split is not None:
        frame["split"] = split(frame)
    return ImageTable(frame, ["neg", "pos"], "binary", source="synthetic")


def patient_sets(table):
    frame = table.frame
    return {name: set(frame.loc[frame["split"] == name, "patient_id"]) for name in ("train", "val", "test")}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_patient_split_properties(seed):
    table = make_table(seed=seed)
    result = patient_split(table, test_fraction=0.2, val_fraction=0.1, seed=seed)
    sets = patient_sets(result)
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) \
        and not (sets["val"] & sets["test"])
    assert set().union(*sets.values()) == set(table.frame["patient_id"])
    frame = result.frame
    overall = frame["label"].mean()
    sizes = frame["split"].value_counts(normalize=True)
    assert abs(sizes["test"] - 0.2) < 0.03 and abs(sizes["val"] - 0.1) < 0.03
    for name in ("train", "val", "test"):
        assert abs(frame.loc[frame["split"] == name, "label"].mean() - overall) < 0.05
    # Rows are untouched apart from the split column.
    pd.testing.assert_frame_equal(frame.drop(columns="split"), table.frame.drop(columns="split"))


def test_patient_split_is_deterministic_per_seed():
    table = make_table()
    first = patient_split(table, seed=7).frame["split"].tolist()
    assert patient_split(table, seed=7).frame["split"].tolist() == first
    assert patient_split(table, seed=8).frame["split"].tolist() != first


def test_the_largest_seed_the_config_accepts_carves_every_split():
    from tfmed.config import MAX_SEED, SplitConfig

    table = make_table()
    assert set(patient_split(table, seed=MAX_SEED).frame["split"]) == {"train", "val", "test"}
    assert set(ensure_splits(table, SplitConfig(method="patient", seed=MAX_SEED)).frame["split"]) == {
        "train", "val", "test"}


def test_patient_split_other_fractions():
    result = patient_split(make_table(n_patients=400), test_fraction=0.15, val_fraction=0.25, seed=0)
    sizes = result.frame["split"].value_counts(normalize=True)
    assert abs(sizes["test"] - 0.15) < 0.03 and abs(sizes["val"] - 0.25) < 0.03
    no_val = patient_split(make_table(), test_fraction=0.2, val_fraction=0.0)
    assert set(no_val.frame["split"]) == {"train", "test"}


def test_patient_split_needs_patient_ids():
    table = make_table(n_patients=20)
    table.frame.loc[[3, 5], "patient_id"] = pd.NA
    rows = table.frame.loc[[3, 5], "row"].tolist()
    with pytest.raises(SplitError, match=rf"2 row\(s\) have none \(rows {rows[0]}, {rows[1]}\) in synthetic"):
        patient_split(table)


def test_patient_split_bad_fractions_and_too_few_patients():
    with pytest.raises(SplitError, match="test_fraction is 1.5"):
        patient_split(make_table(n_patients=10), test_fraction=1.5)
    with pytest.raises(SplitError, match="sum < 1"):
        patient_split(make_table(n_patients=10), test_fraction=0.6, val_fraction=0.5)
    with pytest.raises(SplitError, match=r"test_fraction 0.2 cannot be met: it asks for 20% of 1 patient\(s\).*"
                                         r"here 1 patient\(s\).*predefined"):
        patient_split(make_table(n_patients=1))


def test_a_fraction_under_a_twentieth_is_met_not_raised_to_a_twentieth():
    table = make_table(n_patients=1000)
    for fraction in (0.01, 0.02):
        test = patient_sets(patient_split(table, test_fraction=fraction, val_fraction=0.1))["test"]
        assert abs(len(test) - 1000 * fraction) <= 3, (fraction, len(test))


def test_a_split_far_from_its_fraction_says_so(capsys):
    from tfmed.progress import configure_logging

    configure_logging()
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(4)], "label": [0, 1, 0, 1],
                          "patient_id": ["a", "b", "c", "d"]})
    result = patient_split(ImageTable(frame, ["n", "p"], "binary"), test_fraction=0.2, val_fraction=0.0).frame
    assert (result["split"] == "test").sum() == 2                 # half of 4 patients: the nearest by patient
    assert "test_fraction 0.2 took 2 of the 4 patients it is taken from (50%, not 20%)" in capsys.readouterr().out


def test_a_multilabel_label_without_positives_in_training_is_refused_naming_it():
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(8)], "label:effusion": [1, 0] * 4,
                          "label:mass": [0, 0, 0, 0, 1, 0, -1, 1],
                          "split": ["train"] * 4 + ["val"] * 2 + ["test"] * 2})
    table = ImageTable(frame, ["effusion", "mass"], "multilabel")
    with pytest.raises(SplitError, match=r"label 'mass' has no positive training image \(positive images: "
                                         r"1 in test, 1 in val\)"):
        check_split_classes(table, SplitConfig(method="predefined"))
    frame.loc[0, "label:mass"] = 1
    check_split_classes(ImageTable(frame, ["effusion", "mass"], "multilabel"), SplitConfig(method="predefined"))


def test_multilabel_split_uses_rarest_label_proxy():
    rng = np.random.default_rng(0)
    n = 600
    labels = np.stack([rng.random(n) < 0.4, rng.random(n) < 0.05, rng.random(n) < 0.2], axis=1).astype(int)
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)]})
    for j, name in enumerate(["common", "rare", "mid"]):
        frame[f"label:{name}"] = labels[:, j]
    table = ImageTable(frame, ["common", "rare", "mid"], "multilabel")
    proxy = stratify_labels(table)
    # Independent proxy: among a row's positive labels, the one with the fewest positives overall.
    counts = labels.sum(axis=0)
    expected = [min(np.flatnonzero(row), key=lambda j: counts[j]) if row.any() else 3 for row in labels]
    assert proxy.tolist() == expected
    result = patient_split(table, seed=0)
    check_no_leakage(result)
    test = result.split("test").labels()
    assert abs(test[:, 1].mean() - labels[:, 1].mean()) < 0.03
    assert test[:, 1].sum() > 0


def test_leakage_error_names_patient_and_splits():
    frame = pd.DataFrame({"image": list("abcd"), "label": [0, 1, 0, 1],
                          "patient_id": ["p1", "p1", "p2", "p3"], "split": ["train", "test", "val", "val"]})
    with pytest.raises(LeakageError, match=r"1 patient\(s\) .*p1 \(test, train\)") as caught:
        check_no_leakage(ImageTable(frame, ["x", "y"], "binary"))
    assert "p2" not in str(caught.value) and isinstance(caught.value, ValueError)


def test_ensure_splits_predefined_carves_test_from_train_of_pneumonia_mnist():
    table = load_pneumonia_mnist()
    result = ensure_splits(table, SplitConfig(method="predefined", test_fraction=0.2, seed=0))
    frame, original = result.frame, table.frame
    # val untouched, test carved only from train.
    assert (frame["split"] == "val").tolist() == (original["split"] == "val").tolist()
    assert set(original.loc[frame["split"] == "test", "split"]) == {"train"}
    n_train = (original["split"] == "train").sum()
    assert abs((frame["split"] == "test").sum() - 0.2 * n_train) <= 2
    train_rate = original.loc[original["split"] == "train", "label"].mean()
    assert abs(frame.loc[frame["split"] == "test", "label"].mean() - train_rate) < 0.01


def test_ensure_splits_predefined_fills_missing_val_and_keeps_test():
    table = make_table(split=lambda f: np.where(np.arange(len(f)) < 100, "test", "train"))
    table = ImageTable(table.frame[~table.frame["patient_id"].isin(
        table.frame.loc[99:100, "patient_id"])], table.classes, table.task)  # no patient across the cut
    result = ensure_splits(table, SplitConfig(method="predefined", val_fraction=0.1))
    assert (result.frame["split"] == "test").tolist() == (table.frame["split"] == "test").tolist()
    n_train = (table.frame["split"] == "train").sum()
    assert abs((result.frame["split"] == "val").sum() - 0.1 * n_train) < 0.03 * n_train


def test_predefined_carving_both_splits_of_a_train_only_source_sizes_them_as_patient_does():
    table = make_table(split=lambda f: np.full(len(f), "train"))
    config = SplitConfig(method="predefined", test_fraction=0.2, val_fraction=0.1)
    carved = ensure_splits(table, config).frame
    fresh = patient_split(table, 0.2, 0.1).frame
    for split, share in (("test", 0.2), ("val", 0.1)):
        assert abs((carved["split"] == split).mean() - share) < 0.02
        assert abs((carved["split"] == split).sum() - (fresh["split"] == split).sum()) <= 4
    with pytest.raises(SplitError, match=r"split.test_fraction \+ split.val_fraction is 1; both split the training"):
        ensure_splits(table, SplitConfig(method="predefined", test_fraction=0.5, val_fraction=0.5))


def test_a_fraction_for_a_split_the_source_gives_is_refused():
    def by_patient(frame):
        return np.where(frame["patient_id"] < "P0100", "test", np.where(frame["patient_id"] < "P0150", "val", "train"))

    table = make_table(split=by_patient)
    for config, name in ((SplitConfig(method="predefined", test_fraction=0.3), "test_fraction"),
                         (SplitConfig(method="predefined", val_fraction=0.2), "val_fraction"),
                         (SplitConfig(method="kfold", folds=3, test_fraction=0.3), "test_fraction")):
        with pytest.raises(SplitError, match=f"split.{name} is .*, but the data source has its own "
                           f"{name.split('_')[0]} split, which split.method {config.method} keeps"):
            ensure_splits(table, config)
    for name, default in (("test_fraction", SplitConfig.test_fraction), ("val_fraction", SplitConfig.val_fraction)):
        written = ExperimentConfig.from_dict({"split": {"method": "predefined", name: default}}).split
        with pytest.raises(SplitError, match=f"split.{name} is {default}, but the data source has its own"):
            ensure_splits(table, written)  # the default value, written in the experiment file: refused too
    kept = ensure_splits(table, SplitConfig(method="predefined", test_fraction=0.0, val_fraction=0.0))  # carve none
    assert kept.frame["split"].tolist() == table.frame["split"].tolist()
    fresh = ensure_splits(table, SplitConfig(method="patient", test_fraction=0.3))  # splits afresh: used
    assert abs((fresh.frame["split"] == "test").mean() - 0.3) < 0.05
    no_test = make_table(split=lambda frame: np.where(frame["patient_id"] < "P0050", "val", "train"))
    carved = ensure_splits(no_test, SplitConfig(method="predefined", test_fraction=0.3))  # carves the test split
    assert (carved.frame["split"] == "test").any()


@pytest.mark.parametrize("n_patients", [6, 8, 12, 16])
def test_a_few_patients_still_split_with_both_classes_everywhere(n_patients):
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(n_patients)], "label": [0, 1] * (n_patients // 2),
                          "patient_id": [f"p{i}" for i in range(n_patients)]})
    table = ImageTable(frame, ["normal", "tb"], "binary")
    # a tenth of 9-13 patients once asked scikit-learn for more folds than either class has rows
    result = ensure_splits(table, SplitConfig(method="patient", test_fraction=0.2, val_fraction=0.1)).frame
    for split in ("train", "val", "test"):
        assert sorted(set(result.loc[result["split"] == split, "label"])) == [0, 1], split


@pytest.mark.parametrize("fraction", [0.05, 0.12, 0.15])
def test_a_small_fraction_of_a_small_set_still_holds_each_class(fraction):
    # 24 patients with 1-5 images, 8 of them positive: these fractions need more folds than there are positive
    # patients, and the first folds (once the carved split) held none of them for every seed
    rows = [(f"P{p:03d}_{k}.png", int(p % 10 in (0, 3, 6)), f"P{p:03d}") for p in range(24) for k in range(1 + p % 5)]
    table = ImageTable(pd.DataFrame(rows, columns=["image", "label", "patient_id"]), ["normal", "pneumonia"], "binary")
    for seed in range(10):
        for config in (SplitConfig(method="patient", test_fraction=fraction, val_fraction=fraction, seed=seed),
                       SplitConfig(method="kfold", test_fraction=fraction, folds=3, seed=seed)):
            frame = ensure_splits(table, config).frame
            for split in ("test", "val") if config.method == "patient" else ("test",):
                assert sorted(set(frame.loc[frame["split"] == split, "label"])) == [0, 1], (config, split)
            sets = patient_sets(ImageTable(frame, table.classes, "binary"))
            assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["val"])


def test_a_val_split_without_a_class_names_the_fix_of_its_split_method():
    frame = pd.DataFrame({"image": list("abcd"), "label": [0, 1, 0, 0], "split": ["train"] * 2 + ["val"] * 2})
    table = ImageTable(frame, ["normal", "tb"], "binary")
    with pytest.raises(SplitError, match=r"holds no 'tb' image .*\(val rows of each class, or split.method: patient"):
        check_split_classes(table, SplitConfig())
    with pytest.raises(SplitError, match=r"holds no 'tb' image .*\(a larger split.val_fraction, or more patients"):
        check_split_classes(table, SplitConfig(method="patient"))


def test_two_coarse_classes_need_a_val_image_each_for_their_thresholds():
    classes = ["healthy", "sick_non_tb", "tuberculosis"]
    frame = pd.DataFrame({"image": [f"i{k}" for k in range(9)], "label": [0, 1, 2, 0, 1, 2, 0, 1, 0],
                          "split": ["train"] * 6 + ["val"] * 3})   # val: no tuberculosis image
    table = ImageTable(frame, classes, "multiclass")
    check_split_classes(table, SplitConfig())  # fine classes decide by argmax: no threshold
    two = {"non_tb": ["healthy", "sick_non_tb"], "tb": ["tuberculosis"]}
    with pytest.raises(SplitError, match=r"the val split holds no image of coarse class 'tb' of evaluation.hierarchy "
                                         r"\(3 'non_tb', 0 'tb'\), and the coarse thresholds are chosen on it"):
        check_split_classes(table, SplitConfig(), two)
    check_split_classes(table, SplitConfig(method="kfold", folds=2), two)  # thresholds from out-of-fold scores
    three = {"healthy": ["healthy"], "sick": ["sick_non_tb"], "tb": ["tuberculosis"]}
    check_split_classes(table, SplitConfig(), three)  # three coarse classes: argmax, no threshold


def test_kfold_refuses_more_folds_than_a_class_has_patients():
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(12)], "label": [0, 1] * 6,
                          "patient_id": [f"p{i}" for i in range(12)], "split": ["train"] * 12})
    table = ImageTable(frame, ["normal", "tb"], "binary")
    with pytest.raises(SplitError, match="5 folds need every class in each fold, but class 'normal' has only 4 "
                                         r"patient\(s\) outside the test split; use 4 folds or fewer"):
        kfold_indices(table.subset(~np.isin(np.arange(12), [0, 2])), 5)   # two normal patients fewer
    folds = kfold_indices(table, 4)
    assert all(sorted(set(table.frame.loc[held, "label"])) == [0, 1] for _, held in folds)


def test_kfold_refuses_a_fold_whose_training_part_lacks_a_labels_positives():
    """Multilabel: a label whose positives are one patient's leaves the fold holding that patient without any in
    its training part, which a class-weighted loss or a per-label SVM cannot fit; said before anything runs."""
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(12)], "label:common": [0, 1] * 6,
                          "label:rare": [1, 1] + [0] * 10, "patient_id": [f"p{i // 2}" for i in range(12)],
                          "split": ["train"] * 12})
    table = ImageTable(frame, ["common", "rare"], "multilabel")
    with pytest.raises(SplitError, match=r"fold \d of 3: its training part has no positive image of label 'rare' .*"
                                         "use fewer folds, another split.seed than 0, or leave 'rare' out"):
        kfold_indices(table, 3)
    frame.loc[[2, 3], "label:rare"] = 1  # a second patient with it: every training part holds one
    assert len(kfold_indices(ImageTable(frame, ["common", "rare"], "multilabel"), 3)) == 3


@pytest.mark.parametrize("method, split", [("patient", None), ("predefined", None),
                                           ("predefined", lambda f: ["train"] * len(f))])
def test_a_split_without_validation_is_refused_outside_kfold(method, split):
    table = make_table(split=split)
    with pytest.raises(SplitError, match="no validation split, and thresholds .* set split.val_fraction above 0"):
        ensure_splits(table, SplitConfig(method=method, val_fraction=0.0))
    kfold = ensure_splits(table, SplitConfig(method="kfold", val_fraction=0.0))   # folds replace it there
    assert set(kfold.frame["split"]) == {"train", "test"}


def test_ensure_splits_patient_ignores_given_splits_and_empty_column_means_patient():
    table = make_table(split=lambda f: ["train"] * len(f))
    result = ensure_splits(table, SplitConfig(method="patient", seed=3))
    assert result.frame["split"].tolist() == patient_split(table, seed=3).frame["split"].tolist()
    empty = make_table()
    assert ensure_splits(empty, SplitConfig(seed=3)).frame["split"].tolist() == \
        patient_split(empty, seed=3).frame["split"].tolist()


def test_ensure_splits_refuses_partial_split_column_and_leaky_predefined():
    partial = make_table(n_patients=20, split=lambda f: ["train"] * (len(f) - 1) + [None])
    with pytest.raises(SplitError, match=r"1 row\(s\) have no split while others do"):
        ensure_splits(partial, SplitConfig())
    leaky = make_table(n_patients=20, split=lambda f: np.where(np.arange(len(f)) % 2 == 0, "train", "val"))
    with pytest.raises(LeakageError, match="appear in more than one split"):
        ensure_splits(leaky, SplitConfig(test_fraction=0.2))


def test_split_errors_say_the_fix_a_source_records_on_its_table():
    partial = make_table(n_patients=20, split=lambda f: ["train"] * (len(f) - 1) + [None])
    partial.frame.attrs["missing_split_fix"] = "give part b a split"
    with pytest.raises(SplitError, match=r"have no split while others do \(rows \d+\): give part b a split\.$"):
        ensure_splits(partial, SplitConfig())
    leaky = make_table(n_patients=20, split=lambda f: np.where(np.arange(len(f)) % 2 == 0, "train", "test"))
    leaky.frame.attrs["split_fix"] = "restore the list files"
    with pytest.raises(LeakageError, match="must be in one split: restore the list files, or use split.method"):
        check_no_leakage(leaky)
    unnamed = make_table(n_patients=20)
    unnamed.frame.loc[3, "patient_id"] = None
    unnamed.frame.attrs["patient_fix"] = "restore the DICOM header's PatientID"
    with pytest.raises(SplitError, match=r"\(rows 3\) in synthetic\. Restore the DICOM header's PatientID\.$"):
        patient_split(unnamed)


def test_ensure_splits_kfold_and_kfold_indices():
    table = make_table(split=lambda f: np.where(np.arange(len(f)) % 3 == 0, "val", "train"))
    table.frame["patient_id"] = [f"q{i}" for i in range(len(table))]  # one image per patient
    result = ensure_splits(table, SplitConfig(method="kfold", test_fraction=0.2, seed=0))
    assert set(result.frame["split"]) == {"train", "test"}
    folds = kfold_indices(result, folds=5, seed=0)
    non_test = np.flatnonzero(result.frame["split"] == "train")
    assert len(folds) == 5
    held = np.concatenate([val for _, val in folds])
    assert sorted(held.tolist()) == non_test.tolist()  # disjoint and covering the non-test rows
    patients = result.frame["patient_id"].to_numpy()
    for train, val in folds:
        assert sorted(np.concatenate([train, val]).tolist()) == non_test.tolist()
        assert not set(patients[train]) & set(patients[val])


def test_kfold_indices_keeps_patients_together_and_skips_test_rows():
    table = make_table(n_patients=120, split=lambda f: ["train"] * (len(f) - 5) + ["test"] * 5)
    test_rows = set(range(len(table) - 5, len(table)))
    folds = kfold_indices(table, folds=4, seed=1)
    patients = table.frame["patient_id"].to_numpy()
    overall = table.frame["label"].mean()
    for train, val in folds:
        assert not set(patients[train]) & set(patients[val])
        assert not (set(train) | set(val)) & test_rows
        assert abs(table.frame["label"].to_numpy()[val].mean() - overall) < 0.08
    assert [v.tolist() for _, v in folds] == [v.tolist() for _, v in kfold_indices(table, folds=4, seed=1)]
    with pytest.raises(SplitError, match="cannot make 500 folds"):
        kfold_indices(table, folds=500)


def test_the_stratification_proxy_counts_known_positives_only():
    frame = pd.DataFrame({"image": [f"i{k}" for k in range(6)],
                          "label:a": [1, 1, 1, 0, 0, 0],        # 3 positives
                          "label:b": [1, -1, -1, -1, -1, 0]})   # 1 positive, 4 unknown
    table = ImageTable(frame, ["a", "b"], "multilabel")
    assert stratify_labels(table).tolist()[0] == 1  # row 0 stands for b, the rarer positive label
