"""Near-identical images: fingerprints, groups, splits that keep them together, and the run's report."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tfmed.config import ConfigError, ExperimentConfig, SplitConfig
from tfmed.data.near_duplicates import (GROUP_COLUMN, NearDuplicateError, fingerprint, mark_near_duplicates,
                                        near_duplicate_groups, twins_in_train)
from tfmed.data.splits import kfold_indices, patient_split
from tfmed.data.table import ImageTable

ROOT = Path(__file__).resolve().parent.parent


def _picture(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random grey picture (distinct pictures differ by far more than the tolerance)."""
    noise = np.random.default_rng(seed).normal(0, 1, (8, 8))
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * 60 + 128


def test_copies_of_a_picture_share_a_fingerprint_in_any_depth_or_colour():
    picture = _picture(0).clip(0, 255)
    eight = picture.astype(np.uint8)
    sixteen = (eight.astype(np.uint16) * 257)
    colour = np.repeat(eight[..., None], 3, axis=-1)
    hounsfield = eight.astype(np.float32) * 8 - 1024
    prints = np.stack([fingerprint(x) for x in (eight, sixteen, colour, hounsfield, _picture(1))])
    rms = np.sqrt(((prints[:, None] - prints[None]) ** 2).mean(-1))
    assert rms[:4, :4].max() < 0.5  # the same picture four ways
    assert rms[4, :4].min() > 10  # another picture
    # blank images, whatever their value, have no picture to compare and join no group
    blanks = [np.full((16, 16), 40, np.uint8), np.full((16, 16), 190, np.uint8), np.zeros((16, 16), np.uint8)]
    assert np.isnan(fingerprint(blanks[0])).all()
    assert near_duplicate_groups(np.stack([fingerprint(b) for b in blanks + [eight, eight]])).tolist() == \
        [-1, -1, -1, 0, 0]
    with pytest.raises(NearDuplicateError, match=r"shape \(3, 4, 5, 6\)"):
        fingerprint(np.zeros((3, 4, 5, 6)))


def test_groups_join_copies_and_chains_and_nothing_else():
    base = [_picture(seed) for seed in range(6)]
    rng = np.random.default_rng(9)
    images = base + [base[1] + rng.normal(0, 1.5, base[1].shape),  # 6: a noisy copy of 1
                     base[3].copy(),  # 7: an exact copy of 3
                     base[3] + 2.0]  # 8: a copy of 3 two grey levels brighter (min-max scaling absorbs it)
    groups = near_duplicate_groups(np.stack([fingerprint(i.clip(0, 255)) for i in images]))
    assert groups.tolist() == [-1, 0, -1, 1, -1, -1, 0, 1, 1]
    # tolerance 0 keeps only exact copies
    exact = near_duplicate_groups(np.stack([fingerprint(i.clip(0, 255)) for i in images]), tolerance=0.0)
    assert exact[3] == exact[7] >= 0 and exact[6] == -1
    # a chain a-b-c joins a and c even when they differ by more than the tolerance
    chain = np.array([[0.0] * 256, [3.0] * 256, [6.0] * 256, [50.0] * 256])
    assert near_duplicate_groups(chain, tolerance=3.5).tolist() == [0, 0, 0, -1]
    for bad in (-1.0, float("nan"), None):
        with pytest.raises(NearDuplicateError, match="tolerance must be a number of grey levels >= 0"):
            near_duplicate_groups(chain, tolerance=bad)


def test_files_saved_twice_are_found_across_formats(tmp_path):
    paths = []
    for seed in range(5):
        path = tmp_path / f"case{seed}.png"
        cv2.imwrite(str(path), _picture(seed).clip(0, 255).astype(np.uint8))
        paths.append(path)
    copy16 = tmp_path / "case2_again_16bit.png"
    cv2.imwrite(str(copy16), cv2.imread(str(paths[2]), cv2.IMREAD_GRAYSCALE).astype(np.uint16) * 257)
    jpeg = tmp_path / "case4_again.jpg"
    cv2.imwrite(str(jpeg), cv2.imread(str(paths[4])), [cv2.IMWRITE_JPEG_QUALITY, 90])
    frame = pd.DataFrame({"image": [str(p) for p in paths + [copy16, jpeg]], "label": [0, 1, 0, 1, 0, 1, 0],
                          "patient_id": [f"p{i}" for i in range(7)]})
    marked = mark_near_duplicates(ImageTable(frame, ["a", "b"], "binary"))
    groups = marked.frame[GROUP_COLUMN]
    assert groups.isna().tolist() == [True, True, False, True, False, False, False]
    assert groups[2] == groups[5] and groups[4] == groups[6] and groups[2] != groups[4]


def _twinned_table(n: int = 60) -> ImageTable:
    """n rows, each its own patient; rows 2k and 2k+1 (k < 10) are near-identical images."""
    groups = pd.array([k // 2 if k < 20 else None for k in range(n)], dtype="Int64")
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(n)], "label": [(i // 2) % 2 for i in range(n)],
                          "patient_id": [f"p{i}" for i in range(n)], GROUP_COLUMN: groups})
    return ImageTable(frame, ["a", "b"], "binary")


def _parted(table: ImageTable, assignment: np.ndarray) -> int:
    """How many near-duplicate groups are spread over more than one value of ``assignment``."""
    frame = pd.DataFrame({"group": table.frame[GROUP_COLUMN], "part": assignment}).dropna()
    return int((frame.groupby("group")["part"].nunique() > 1).sum())


def test_splits_and_folds_keep_near_identical_images_together():
    table = _twinned_table()
    untied = ImageTable(table.frame.drop(columns=[GROUP_COLUMN]), ["a", "b"], "binary")
    seeds = range(4)
    # without the groups, random patient splits part some of the twins (so the check below can fail)
    assert sum(_parted(table, patient_split(untied, 0.3, 0.2, seed=s).frame["split"].to_numpy())
               for s in seeds) > 0
    for seed in seeds:
        split = patient_split(table, 0.3, 0.2, seed=seed).frame["split"].to_numpy()
        assert _parted(table, split) == 0 and set(split) == {"train", "val", "test"}
        fold = np.empty(len(table), dtype=np.int64)
        for k, (_, held) in enumerate(kfold_indices(table, folds=3, seed=seed)):
            fold[held] = k
        assert _parted(table, fold) == 0


def test_twins_in_train_counts_each_evaluation_split():
    table = _twinned_table(8)
    table.frame["split"] = ["train", "val", "train", "test", "val", "val", "train", "test"]
    # groups: {0, 1}: train/val; {2, 3}: train/test; {4, 5}: val/val; {6, 7}: train/test
    assert twins_in_train(table) == {"val": 1, "test": 2}
    assert twins_in_train(ImageTable(table.frame.drop(columns=[GROUP_COLUMN]), ["a", "b"], "binary")) == {}


def test_split_near_duplicate_rms_is_checked():
    with pytest.raises(ConfigError, match="split.near_duplicate_rms is -2"):
        SplitConfig(near_duplicate_rms=-2).check()
    assert ExperimentConfig.from_dict({"split": {"near_duplicate_rms": None}}).split.near_duplicate_rms is None


def test_pneumonia_mnist_val_copies_of_train_images_are_reported(tmp_path):
    """The embedded official splits share 8 images between train and val, pixel for pixel."""
    from tfmed.run.experiment import near_duplicate_summary, prepare_data

    config = ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml")
    config.split.test_fraction = 0.2  # a test split carved from train, as the tests' small runs do
    table = prepare_data(config)
    frame = table.frame
    keys = [table.images[int(i)].tobytes() for i in frame["array_index"]]
    # every flagged image has a pixel-identical partner, and every pixel-identical pair is flagged
    identical = pd.Series(keys).duplicated(keep=False).to_numpy()
    assert (frame[GROUP_COLUMN].notna().to_numpy() == identical).all()
    # the test split carved from train keeps each group's training rows whole, so only the source's
    # val split holds twins of train
    summary = near_duplicate_summary(config, table)
    marked = frame.dropna(subset=[GROUP_COLUMN])
    groups = {g: set(rows["split"].astype(str)) for g, rows in marked.groupby(GROUP_COLUMN)}
    assert not any({"test", "train"} <= parts for parts in groups.values())
    expected_val = sum(1 for g, rows in marked.groupby(GROUP_COLUMN) if "train" in groups[g]
                       for split in rows["split"].astype(str) if split == "val")
    assert summary["twins_in_train"] == {"val": expected_val} and expected_val > 0
    assert summary["images"] == int(identical.sum())


def test_the_same_picture_in_two_class_folders_is_named_with_both_labels(tmp_path, capsys):
    from tfmed.progress import configure_logging
    from tfmed.run.cli import main
    from tfmed.run.experiment import near_duplicate_summary, split_data

    for label in ("normal", "pneumonia"):
        (tmp_path / label).mkdir()
        for seed in range(4):
            picture = _picture(seed + 10 * len(label)).clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp_path / label / f"{label}{seed}.png"), picture)
    cv2.imwrite(str(tmp_path / "pneumonia" / "copied.png"), _picture(60).clip(0, 255).astype(np.uint8))  # = normal0
    assert main(["validate", f"folder:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert ("warning: 1 group of near-identical images carries different labels: " in out
            and "normal0.png (normal) and " in out and "copied.png (pneumonia)" in out), out
    configure_logging()
    data = {"source": "folder", "path": str(tmp_path), "patient_pattern": r"[^/]+$"}  # each file its own patient
    config = ExperimentConfig.from_dict({"data": data,
                                         "split": {"method": "patient", "test_fraction": 0.2, "val_fraction": 0.2}})
    from tfmed.data.sources import load_source

    table = split_data(config, load_source(config.data))
    assert "1 group of near-identical images carries different labels" in capsys.readouterr().out
    assert near_duplicate_summary(config, table)["groups_with_different_labels"] == 1


def test_a_multilabel_group_conflicts_only_on_a_label_known_both_ways():
    from tfmed.data.near_duplicates import conflicting_labels

    frame = pd.DataFrame({"image": ["a", "b", "c", "d"], "label:mass": [1, -1, 1, 0], "label:nodule": [0, 0, 1, 1],
                          GROUP_COLUMN: pd.array([0, 0, 1, 1], dtype="Int64")})
    table = ImageTable(frame, ["mass", "nodule"], "multilabel")
    # group 0: mass known positive once and unknown once: no conflict; group 1: mass 1 against 0
    assert conflicting_labels(table) == [[("c", "mass, nodule"), ("d", "nodule")]]


def test_the_fingerprint_is_the_grey_image_min_max_scaled_and_averaged_down_to_16_by_16():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.float32)
    rgb[..., 0] = 255 - rgb[..., 1]  # a red channel unlike the grey picture
    grey = rgb.mean(axis=-1)
    scaled = (grey - grey.min()) * 255 / (grey.max() - grey.min())
    expected = scaled.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel()  # 4 x 4 block means
    assert np.sqrt(np.mean((fingerprint(rgb) - expected) ** 2)) < 0.5  # well inside the 4 grey levels of a match


def test_the_pair_search_finds_exactly_the_groups_every_pair_compared_would():
    """The k-d tree over principal axes must neither miss a pair within the tolerance nor add one beyond it."""
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial.distance import pdist, squareform

    rng = np.random.default_rng(7)
    smooth = rng.normal(0, 1, (300, 4)) @ rng.normal(0, 30, (4, 256)) + 128  # low rank, as pictures are
    prints = np.vstack([smooth, smooth[:60] + rng.normal(0, 3.0, (60, 256)),  # near copies, some beyond 4 levels
                        smooth[60:70] + rng.normal(0, 1.0, (10, 256)), smooth[:5]])  # chains and exact copies
    for tolerance in (0.0, 2.0, 4.0):
        linked = squareform(pdist(prints)) <= tolerance * 16 + 1e-3
        _, component = connected_components(linked, directed=False)
        sizes = np.bincount(component)
        groups = near_duplicate_groups(prints, tolerance)
        assert np.array_equal(groups >= 0, sizes[component] > 1), tolerance
        for row in np.flatnonzero(groups >= 0):  # the same rows together
            assert np.array_equal(groups == groups[row], component == component[row])
