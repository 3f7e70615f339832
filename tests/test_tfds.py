"""TensorFlow Datasets: the ``tfds`` source (TFDS's own mock data and data sets written with TFDS's own
writer) and ``tfmed export-tfds`` round trips (a manifest of 16-bit PNGs with patients and splits, a
multilabel manifest mixing grey and colour, CT in Hounsfield units)."""
import shutil

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
import tensorflow_datasets as tfds
import yaml
from pydicom.data import get_testdata_file

from tfmed.config import ConfigError, DataConfig, ExperimentConfig, PreprocessConfig
from tfmed.data.decode import read_image
from tfmed.data.pipeline import make_dataset, raw_dataset
from tfmed.data.sources import load_source, parse_source_spec
from tfmed.data.sources import tfds as tfds_source
from tfmed.data.table import DataSourceError
from tfmed.data.tfds_export import export_tfds
from tfmed.data.validate import DataValidationError, validate_table
from tfmed.run.cli import main

tfds.display_progress_bar(False)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "cache"))
    # TFDS's mock data replaces download_and_prepare, so "preparing" a builder fetches nothing here
    monkeypatch.delenv("TFMED_OFFLINE", raising=False)
    return tmp_path / "cache"


def mocked(num_examples=10):
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


def store(tmp_path, name, features, splits):
    """A prepared TFDS data set written with TFDS's own writer; returns its version folder."""
    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=tfds.features.FeaturesDict(features),
        split_datasets={split: list(enumerate(examples)) for split, examples in splits.items()},
        data_dir=tmp_path / "tfds_data", disable_shuffling=True)
    return str(builder.data_dir)


# ------------------------------------------------------------------ the tfds source

def test_a_registered_builder_streams_into_a_table_of_files_and_the_pipeline(cache):
    with mocked(12):
        table = load_source(parse_source_spec("tfds:patch_camelyon#train+test"))
    assert len(table) == 24 and table.task == "binary" and table.classes == ["0", "1"]
    assert table.frame["split"].tolist() == ["train"] * 12 + ["test"] * 12
    assert table.frame["patient_id"].tolist()[:2] == ["train-0", "train-1"]  # no patient feature: one each
    first = table.frame.loc[0, "image"]
    assert first.startswith(str(cache)) and read_image(first).shape == (96, 96, 3)
    assert validate_table(table).ok
    images, targets = next(iter(make_dataset(table, PreprocessConfig(image_size=32), training=False,
                                             batch_size=8)))
    assert images.shape == (8, 32, 32, 3) and targets.shape[0] == 8


def test_slices_of_one_split_never_share_a_made_up_patient_id(cache):
    with mocked(10):
        table = load_source(parse_source_spec("tfds:patch_camelyon#train[:50%]+train[50%:]"))
    ids = table.frame["patient_id"].tolist()  # each example its own patient, named by the slice as written
    assert len(set(ids)) == len(ids) and ids[0] == "train[:50%]-0" and "train[50%:]-0" in ids


@pytest.mark.parametrize("splits, shared", [("train[:60%]+train[50%:]", "5 to 5"), ("test+test[2:4]", "2 to 3"),
                                             ("train[:3]+test+train[-8:]", "2 to 2")])
def test_splits_that_share_examples_are_refused(splits, shared, tmp_path, cache):
    image = np.zeros((6, 6, 3), np.uint8)
    examples = [{"image": image, "label": i % 2} for i in range(10)]
    folder = store(tmp_path, "shared", {"image": tfds.features.Image(shape=(6, 6, 3)),
                                        "label": tfds.features.ClassLabel(names=["no", "yes"])},
                   {"train": examples, "test": examples})
    with pytest.raises(DataSourceError, match=rf"share examples {shared} of '(train|test)'.* would be "
                                              r"read twice"):
        load_source(parse_source_spec(f"tfds:{folder}#{splits}"))
    assert len(load_source(parse_source_spec(f"tfds:{folder}#train[:50%]+train[50%:]+test"))) == 20


def test_a_second_load_reads_the_cached_split_without_tfds(monkeypatch):
    with mocked(5):
        first = load_source(parse_source_spec("tfds:patch_camelyon#test"))

        def refuse(*args, **kwargs):
            raise AssertionError("the split was read from TFDS again")
        monkeypatch.setattr(tfds_source, "_write_split", refuse)
        second = load_source(parse_source_spec("tfds:patch_camelyon#test"))
        pd.testing.assert_frame_equal(first.frame, second.frame)
        monkeypatch.setattr(tfds_source, "CACHE_LAYOUT", "an older layout")  # a split cached by an older tfmed
        with pytest.raises(AssertionError, match="the split was read from TFDS again"):
            load_source(parse_source_spec("tfds:patch_camelyon#test"))


def test_an_interrupted_read_is_never_reused(monkeypatch, cache):
    original = tfds_source._write_image
    calls = []

    def dies_on_the_third(value, folder, index, raw, where):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(value, folder, index, raw, where)
    monkeypatch.setattr(tfds_source, "_write_image", dies_on_the_third)
    with mocked(6), pytest.raises(KeyboardInterrupt):
        load_source(parse_source_spec("tfds:patch_camelyon#train"))
    assert not list(cache.rglob(tfds_source.EXAMPLES_FILE))  # nothing complete was left behind
    monkeypatch.setattr(tfds_source, "_write_image", original)
    with mocked(6):
        table = load_source(parse_source_spec("tfds:patch_camelyon#train"))
    assert len(table) == 6 and all(read_image(path).shape == (96, 96, 3) for path in table.frame["image"])


def test_features_other_than_the_defaults_are_named_in_the_config(tmp_path):
    image = np.arange(64, dtype=np.uint16).reshape(8, 8, 1) * 1000  # 16-bit values survive
    folder = store(tmp_path, "scans", {
        "scan": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint16),
        "finding": tfds.features.ClassLabel(names=["benign", "malignant", "normal"]),
        "subject": tfds.features.Text()},
        {"train": [{"scan": image, "finding": 1, "subject": "p1"}, {"scan": image, "finding": 2, "subject": "p1"}]})
    with pytest.raises(DataSourceError, match=r"no feature 'image'.*data.image_feature.*scan"):
        load_source(DataConfig(source="tfds", path=folder))
    table = load_source(DataConfig(source="tfds", path=folder, image_feature="scan", label_feature="finding",
                                   patient_feature="subject"))
    assert table.task == "multiclass" and table.classes == ["benign", "malignant", "normal"]
    assert table.labels().tolist() == [1, 2] and table.frame["patient_id"].tolist() == ["p1", "p1"]
    assert np.array_equal(read_image(table.frame.loc[0, "image"]), image.astype(np.float32))
    with pytest.raises(DataSourceError, match="data.patient_feature is 'patient'.*subject"):
        load_source(DataConfig(source="tfds", path=folder, image_feature="scan", label_feature="finding",
                               patient_feature="patient"))


def test_multilabel_tensors_and_label_lists(tmp_path):
    image = np.zeros((6, 6, 3), np.uint8)
    hot = store(tmp_path, "hot", {"image": tfds.features.Image(shape=(6, 6, 3)),
                                  "label": tfds.features.Tensor(shape=(3,), dtype=np.int64)},
                {"train": [{"image": image, "label": np.array([1, 0, 1])}, {"image": image, "label": np.zeros(3, np.int64)}]})
    table = load_source(DataConfig(source="tfds", path=hot, classes=["Edema", "Mass", "Nodule"]))
    assert table.task == "multilabel" and table.labels().tolist() == [[1, 0, 1], [0, 0, 0]]
    with pytest.raises(DataSourceError, match="data.classes has 2 names but label feature 'label'.* has 3"):
        load_source(DataConfig(source="tfds", path=hot, classes=["Edema", "Mass"]))
    codes = store(tmp_path, "codes", {"image": tfds.features.Image(shape=(6, 6, 3)),
                                      "label": tfds.features.Sequence(tfds.features.ClassLabel(
                                          names=["uncertain", "positive", "negative"]))},
                  {"train": [{"image": image, "label": [1, 2]}, {"image": image, "label": [2, 2, 0]}]})
    with pytest.raises(DataSourceError, match=r"example 1: the label sequence \[2, 2, 0\] repeats a class"):
        load_source(DataConfig(source="tfds", path=codes))


def test_unknown_labels_beside_the_positive_ones_read_as_minus_one(tmp_path):
    image = np.zeros((6, 6, 3), np.uint8)
    labels = tfds.features.Sequence(tfds.features.ClassLabel(names=["Edema", "Mass"]))
    folder = store(tmp_path, "merged", {"image": tfds.features.Image(shape=(6, 6, 3)), "labels": labels,
                                        "unknown_labels": labels},
                   {"train": [{"image": image, "labels": [0], "unknown_labels": [1]},
                              {"image": image, "labels": [0], "unknown_labels": [0]}]})
    table = load_source(DataConfig(source="tfds", path=folder))
    assert table.labels()[0].tolist() == [1, -1]
    problems = validate_table(table).problems
    assert [(p.row, p.problem) for p in problems] == [(1, "label 'Edema' is listed both as positive and as unknown")]


def test_data_classes_sets_the_order_of_the_same_names_and_refuses_other_names(tmp_path):
    image = np.zeros((4, 4, 1), np.uint8)
    truth = ["pneumonia", "normal", "normal"]
    named = store(tmp_path, "named", {"image": tfds.features.Image(shape=(4, 4, 1)),
                                      "label": tfds.features.ClassLabel(names=["pneumonia", "normal"])},
                  {"train": [{"image": image, "label": name} for name in truth]})
    table = load_source(DataConfig(source="tfds", path=named, classes=["normal", "pneumonia"]))
    assert table.classes == ["normal", "pneumonia"] and table.task == "binary"
    assert [table.classes[k] for k in table.labels()] == truth  # reordered, not renamed: pneumonia is positive
    with pytest.raises(DataSourceError, match=r"data.classes \['normal', 'covid'\] names other classes than "
                                              r"label feature 'label'.*\['pneumonia', 'normal'\]"):
        load_source(DataConfig(source="tfds", path=named, classes=["normal", "covid"]))
    unnamed = store(tmp_path, "unnamed", {"image": tfds.features.Image(shape=(4, 4, 1)),
                                          "label": tfds.features.ClassLabel(num_classes=2)},
                    {"train": [{"image": image, "label": 1}, {"image": image, "label": 0}]})
    table = load_source(DataConfig(source="tfds", path=unnamed, classes=["benign", "malignant"]))
    assert table.classes == ["benign", "malignant"] and table.labels().tolist() == [1, 0]  # indices named
    labels = tfds.features.Sequence(tfds.features.ClassLabel(names=["Edema", "Mass", "Nodule"]))
    listed = store(tmp_path, "listed", {"image": tfds.features.Image(shape=(4, 4, 1)), "labels": labels,
                                        "unknown_labels": labels},
                   {"train": [{"image": image, "labels": [0], "unknown_labels": [2]}]})
    table = load_source(DataConfig(source="tfds", path=listed, classes=["Nodule", "Edema", "Mass"]))
    assert table.classes == ["Nodule", "Edema", "Mass"] and table.labels().tolist() == [[-1, 1, 0]]


def test_a_data_set_prepared_again_in_the_same_folder_is_read_afresh(tmp_path):
    features = {"image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(names=["a", "b"])}
    image = np.zeros((4, 4, 1), np.uint8)
    folder = store(tmp_path, "study", features, {"train": [{"image": image, "label": 0}] * 2})
    assert load_source(DataConfig(source="tfds", path=folder)).labels().tolist() == [0, 0]
    shutil.rmtree(folder)  # the study is fixed and exported again to the same folder
    assert store(tmp_path, "study", features, {"train": [{"image": image + 9, "label": 1}] * 3}) == folder
    table = load_source(DataConfig(source="tfds", path=folder))
    assert table.labels().tolist() == [1, 1, 1] and read_image(table.frame.loc[0, "image"]).max() == 9


def test_bad_names_splits_and_settings_are_refused_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match="TFDS has no data set 'no_such_set'.*tfds:NAME"):
        load_source(parse_source_spec("tfds:no_such_set"))
    folder = store(tmp_path, "tiny", {"image": tfds.features.Image(shape=(4, 4, 1)),
                                      "label": tfds.features.ClassLabel(names=["a", "b"])},
                   {"train": [{"image": np.zeros((4, 4, 1), np.uint8), "label": 0}]})
    with pytest.raises(DataSourceError, match="cannot read split 'tset'.*its splits are train"):
        load_source(parse_source_spec(f"tfds:{folder}#tset"))
    with pytest.raises(DataSourceError, match="data.data_dir and data.manual_dir set, but data.path .* is the folder "
                                              "of a prepared data set, which is read as it is"):
        load_source(DataConfig(source="tfds", path=str(folder), data_dir="/nowhere", manual_dir="/nowhere"))
    def no_network(self, *args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: https://zenodo.org/record/2546921")

    with monkeypatch.context() as patched:
        patched.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
        with pytest.raises(DataSourceError, match=r"preparing it failed \(ConnectionError: Max retries.*tfds build "
                                                  r"patch_camelyon .*\$TFMED_OFFLINE=1 says so at once"):
            load_source(DataConfig(source="tfds", path="patch_camelyon", data_dir=str(tmp_path / "empty")))
    monkeypatch.setenv("TFMED_OFFLINE", "1")
    with pytest.raises(DataSourceError, match=r"not prepared in .*downloading is off.*tfds build patch_camelyon"):
        load_source(DataConfig(source="tfds", path="patch_camelyon", data_dir=str(tmp_path / "empty")))
    with pytest.raises(DataSourceError, match="not a prepared TFDS data set"):
        load_source(DataConfig(source="tfds", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.data_dir.*only data.source tfds uses it"):
        DataConfig(source="manifest", path="m.csv", data_dir="/data/tfds").check()
    with pytest.raises(ConfigError, match="data.label_columns.*use data.label_feature"):
        DataConfig(source="tfds", path="patch_camelyon", label_columns=["finding"]).check()


# ------------------------------------------------------------------ export-tfds round trips

def write_manifest(tmp_path, rows, name="manifest.csv"):
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def test_a_manifest_of_16_bit_pngs_round_trips_through_tfds(tmp_path, caplog):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        image = rng.integers(0, 4096, (12, 10), dtype=np.uint16)  # 12-bit detector values
        cv2.imwrite(str(tmp_path / f"x{i}.png"), image)
        rows.append({"path": f"x{i}.png", "label": i % 2, "patient_id": f"p{i // 2}", "site": f"s{i % 3}",
                     "view": "PA", "split": ["train", "val", "test"][i % 3], "boxes": f"1,2,{i + 3},4" if i % 2 else "",
                     "sex": "FM "[i % 3], "age": "" if i == 4 else 30.5 + i})
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "exports" / "chest_v1"
    assert main(["export-tfds", f"manifest:{manifest}", str(out), "--version", "1.2.0"]) == 0
    assert not [r for r in caplog.records if "Variant folder" in r.getMessage()]  # TFDS on tfmed's own folders
    builder = tfds.builder_from_directory(str(out))
    assert builder.name == "manifest" and str(builder.version) == "1.2.0"
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == \
        {"train": 3, "validation": 3, "test": 3}
    validation = list(tfds.as_numpy(builder.as_dataset(split="validation")))
    assert [example["source_image"] for example in validation] == [b"x1.png", b"x4.png", b"x7.png"]
    assert np.array_equal(validation[0]["image"][..., 0], cv2.imread(str(tmp_path / "x1.png"), cv2.IMREAD_UNCHANGED))
    assert validation[0]["image"].dtype == np.uint16

    source = load_source(parse_source_spec(f"manifest:{manifest}"))
    source = source.subset(np.concatenate([np.flatnonzero(source.frame["split"] == s)
                                           for s in ("train", "val", "test")]))  # TFDS keeps each split's order
    back = load_source(parse_source_spec(f"tfds:{out}#train+validation+test"))
    for column in ("patient_id", "site", "view", "split", "boxes", "sex", "age"):  # boxes, sex and age too
        assert back.frame[column].astype(str).tolist() == source.frame[column].astype(str).tolist()
    assert back.frame["sex"].notna().sum() == 6 and back.frame["age"].notna().sum() == 8
    assert back.frame["boxes"].notna().sum() == 4
    assert back.labels().tolist() == source.labels().tolist() and back.classes == source.classes
    for mine, theirs in zip(raw_dataset(source).as_numpy_iterator(), raw_dataset(back).as_numpy_iterator()):
        assert np.array_equal(mine, theirs)


def test_a_merged_data_section_exports_without_a_name_given(tmp_path, capsys):
    for site in ("a", "b"):
        (tmp_path / site).mkdir()
        for i in range(2):
            cv2.imwrite(str(tmp_path / site / f"{i}.png"), np.full((6, 6), 50 * i, np.uint8))
        write_manifest(tmp_path / site, [{"path": f"{i}.png", "label": i, "patient_id": f"{site}{i}"}
                                         for i in range(2)])
    (tmp_path / "both.yaml").write_text(yaml.safe_dump({"data": {"source": "merged", "parts": [
        {"source": "manifest", "path": str(tmp_path / site / "manifest.csv"), "name": site} for site in "ab"]}}))
    assert main(["export-tfds", str(tmp_path / "both.yaml"), str(tmp_path / "out")]) == 0
    capsys.readouterr()
    back = load_source(DataConfig(source="tfds", path=str(tmp_path / "out")))
    assert tfds.builder_from_directory(str(tmp_path / "out")).name == "merged"
    assert sorted(back.frame["patient_id"]) == ["a:a0", "a:a1", "b:b0", "b:b1"]
    assert back.labels().tolist() == [0, 1, 0, 1]


def test_a_source_without_splits_is_split_alike_after_a_round_trip(tmp_path):
    from tfmed.config import SplitConfig
    from tfmed.data.splits import ensure_splits

    rows = []
    for i in range(40):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((6, 6), i, np.uint8))
        rows.append({"path": f"{i}.png", "label": int(i % 3 == 0), "patient_id": f"p{i // 2}"})
    manifest = write_manifest(tmp_path, rows)
    source = load_source(parse_source_spec(f"manifest:{manifest}"))
    export_tfds(source, tmp_path / "out", name="nosplit")
    back = load_source(DataConfig(source="tfds", path=str(tmp_path / "out")))
    assert back.frame["split"].isna().all()  # written as TFDS's lone train split, read as data without splits
    for config in (SplitConfig(), SplitConfig(test_fraction=0.2, val_fraction=0.2)):
        mine, theirs = (ensure_splits(table, config).frame.set_index("patient_id")["split"].sort_index()
                        for table in (source, back))
        assert mine.tolist() == theirs.tolist()


def test_multilabel_with_grey_and_colour_images(tmp_path):
    grey = np.full((8, 8), 100, np.uint8)
    colour = np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30)])  # B, G, R on disk
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    manifest = write_manifest(tmp_path, [
        {"path": "grey.png", "Edema": 1, "Mass": 0, "patient_id": "a", "boxes": "0,0,4,4"},
        {"path": "colour.png", "Edema": 1, "Mass": 1, "patient_id": "b", "boxes": ""}])
    config = DataConfig(source="manifest", path=str(manifest), label_columns=["Edema", "Mass"])
    summary = export_tfds(load_source(config), tmp_path / "out", name="findings")
    assert summary.replicated_grey == 1 and summary.splits == {"train": 2}
    assert "no predefined splits" in summary.format()
    back = load_source(DataConfig(source="tfds", path=str(tmp_path / "out")))
    assert back.task == "multilabel" and back.classes == ["Edema", "Mass"]
    assert back.labels().tolist() == [[1, 0], [1, 1]]
    assert back.frame["boxes"].fillna("").tolist() == ["0,0,4,4", ""]
    images = list(raw_dataset(back).as_numpy_iterator())
    assert images[0].shape == (8, 8, 3) and np.all(images[0] == 100)
    assert images[1][0, 0].tolist() == [30, 20, 10]  # RGB, as tfmed reads the original


def test_ct_in_hounsfield_units_round_trips_as_float(tmp_path):
    for patient, label in (("a", "nodule"), ("b", "clear")):
        (tmp_path / "ct" / label).mkdir(parents=True)
        dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        dataset.PatientID = patient
        dataset.save_as(tmp_path / "ct" / label / f"{patient}.dcm")
    source = load_source(parse_source_spec(f"dicom:{tmp_path / 'ct'}"))
    summary = export_tfds(source, tmp_path / "out", name="ct_small")
    assert summary.image_feature == "Tensor float32 (128, 128, 1)"
    back = load_source(DataConfig(source="tfds", path=str(tmp_path / "out")))
    assert validate_table(back).ok
    original = next(raw_dataset(source).as_numpy_iterator())
    assert original.min() < 0  # Hounsfield units: air and fat are negative
    assert np.array_equal(next(raw_dataset(back).as_numpy_iterator()), original)
    assert back.frame["patient_id"].tolist() == source.frame["patient_id"].tolist()


def test_an_export_refuses_what_it_cannot_write_faithfully(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4), np.uint8))
    manifest = write_manifest(tmp_path, [{"path": "a.png", "label": 0, "split": "train"},
                                         {"path": "gone.png", "label": 1, "split": "val"}])
    table = load_source(parse_source_spec(f"manifest:{manifest}"))
    with pytest.raises(DataValidationError, match="gone.png.*file not found") as refused:
        export_tfds(table, tmp_path / "out", name="study")
    assert "remove them from the source before exporting it" in str(refused.value)
    assert "exclude_bad_rows" not in str(refused.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    # an export leaves no row out: a data section asking for that is refused, not ignored
    (tmp_path / "leave_out.yaml").write_text(f"data:\n  source: manifest\n  path: {manifest}\n"
                                             "  exclude_bad_rows: true\n")
    assert main(["export-tfds", str(tmp_path / "leave_out.yaml"), str(tmp_path / "out")]) == 2
    assert "exclude_bad_rows is true, but export-tfds exports every row" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    cv2.imwrite(str(tmp_path / "b.png"), np.ones((4, 4), np.uint8))
    partial = write_manifest(tmp_path, [{"path": "a.png", "label": 0, "split": "train"},
                                        {"path": "b.png", "label": 1, "split": ""}], name="partial.csv")
    with pytest.raises(DataSourceError, match="1 row.* have no split while others do"):
        export_tfds(load_source(parse_source_spec(f"manifest:{partial}")), tmp_path / "out", name="study")
    with pytest.raises(DataSourceError, match="TFDS names are lower-case.*'my_study'"):
        export_tfds(table, tmp_path / "out", name="My Study")
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataSourceError, match="exists; exports never overwrite"):
        export_tfds(table, tmp_path / "taken", name="study")


def test_an_experiment_trains_on_a_tfds_data_set(tmp_path):
    rows = []
    for i in range(16):
        cv2.imwrite(str(tmp_path / f"x{i}.png"), np.full((16, 16), 40 + 150 * (i % 2), np.uint8))
        rows.append({"path": f"x{i}.png", "label": i % 2, "patient_id": f"p{i}"})
    export_tfds(load_source(parse_source_spec(f"manifest:{write_manifest(tmp_path, rows)}")),
                tmp_path / "study", name="study")
    config = ExperimentConfig.from_dict({
        "name": "tfds_study", "data": {"source": "tfds", "path": str(tmp_path / "study")},
        "split": {"method": "predefined", "test_fraction": 0.25, "val_fraction": 0.25},
        "preprocess": {"image_size": 32}, "runs_dir": str(tmp_path / "runs"),
        "model": {"mode": "svm", "backbone": "efficientnet_lite0", "weights": None,
                  "svm": {"taps": ["late"], "C": [1.0], "cv": 2}}})
    from tfmed.run.experiment import run_experiment

    run = run_experiment(config)
    predictions = pd.read_csv(run / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"}  # carved by patient from the export's one split
    assert predictions["id"].str.contains("tfds").all()  # the rows are the cached TFDS files
    assert predictions["patient"].str.fullmatch(r"p\d+").all()  # the patients written by the export
