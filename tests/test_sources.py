"""Every source kind on real files written by the tests."""
import shutil

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from tfmed.config import DataConfig
from tfmed.data.sources import DataSourceError, load_source, parse_source_spec
from tfmed.data.validate import apply_validation, validate_table
from tfmed.data.sources.embedded import DATASETS, PNEUMONIA_MNIST_FILE, load_pneumonia_mnist


def write_png(path, value=0, shape=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, dtype=np.uint8))


# ---------------------------------------------------------------- embedded
def test_pneumonia_mnist_matches_the_npz():
    table = load_source(DataConfig(source="pneumonia_mnist"))
    raw = np.load(PNEUMONIA_MNIST_FILE)
    frame = table.frame
    assert table.task == "binary" and table.classes == ["normal", "pneumonia"]
    assert (frame["split"] == "train").sum() == len(raw["train_labels"]) == 4708
    assert (frame["split"] == "val").sum() == len(raw["val_labels"]) == 524
    assert frame["patient_id"].is_unique
    val_row = frame.index[frame["image"] == "pneumoniamnist_trainval.npz#val/5"][0]
    assert frame.loc[val_row, "patient_id"] == "val-5"
    np.testing.assert_array_equal(table.images[frame.loc[val_row, "array_index"]], raw["val_images"][5])
    assert frame.loc[val_row, "label"] == raw["val_labels"][5, 0]
    np.testing.assert_array_equal(table.labels()[:4708], raw["train_labels"][:, 0])
    assert "pneumonia_mnist" in DATASETS and DATASETS["pneumonia_mnist"].load is load_pneumonia_mnist


def test_data_classes_of_the_embedded_set_in_another_order_keep_each_image_with_its_class():
    default = load_source(DataConfig(source="pneumonia_mnist"))
    swapped = load_source(DataConfig(source="pneumonia_mnist", classes=["pneumonia", "normal"]))
    assert swapped.classes == ["pneumonia", "normal"]
    named = lambda table: [table.classes[k] for k in table.labels()]  # noqa: E731
    assert named(swapped) == named(default)  # 1,349 normal images stay normal
    with pytest.raises(DataSourceError, match=r"data.classes lists \['negative', 'positive'\], but pneumonia_mnist "
                                              r".* names its classes \['normal', 'pneumonia'\]; list those names"):
        load_source(DataConfig(source="pneumonia_mnist", classes=["negative", "positive"]))


def test_embedded_dataset_licence_note_sits_beside_the_file():
    licence = (PNEUMONIA_MNIST_FILE.parent / "LICENSE").read_text()
    assert "CC BY 4.0" in licence and "Kermany" in licence and "MedMNIST" in licence


# ---------------------------------------------------------------- medmnist
@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "organ.npz"
    np.savez(path, train_images=rng.integers(0, 255, (6, 8, 8), dtype=np.uint8),
             train_labels=np.array([[0], [1], [2], [0], [1], [2]]),
             test_images=rng.integers(0, 255, (3, 8, 8), dtype=np.uint8),
             test_labels=np.array([[2], [1], [0]]))
    return path


def test_medmnist_loads_every_split(npz):
    table = load_source(parse_source_spec(f"medmnist:{npz}"))
    raw = np.load(npz)
    assert table.task == "multiclass" and table.classes == ["0", "1", "2"]
    assert table.frame["split"].tolist() == ["train"] * 6 + ["test"] * 3
    test = table.split("test")
    np.testing.assert_array_equal(test.labels(), [2, 1, 0])
    np.testing.assert_array_equal(table.images[test.frame["array_index"]], raw["test_images"])


def test_medmnist_single_split_selection_and_classes(npz):
    table = load_source(DataConfig(source="medmnist", path=f"{npz}#test", classes=["a", "b", "c"]))
    assert table.frame["split"].tolist() == ["test"] * 3
    assert table.classes == ["a", "b", "c"]
    assert table.frame["image"].tolist() == ["organ.npz#test/0", "organ.npz#test/1", "organ.npz#test/2"]
    # The same through the source string itself.
    again = load_source(DataConfig(source=f"medmnist:{npz}#test"))
    assert again.frame["image"].tolist() == table.frame["image"].tolist()


def test_medmnist_multilabel(tmp_path):
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1], [1, 1, 0]])
    path = tmp_path / "chest.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=labels)
    table = load_source(parse_source_spec(str(path)))
    assert table.task == "multilabel"
    assert list(table.frame.columns[table.frame.columns.str.startswith("label:")]) == \
        ["label:0", "label:1", "label:2"]
    np.testing.assert_array_equal(table.labels(), labels)


def test_medmnist_missing_keys_lists_keys_found(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 4, 4)), labels=np.zeros((2, 1)))
    with pytest.raises(DataSourceError, match=r"bad.npz has no .*keys found: images, labels"):
        load_source(DataConfig(source="medmnist", path=str(path)))
    with pytest.raises(DataSourceError, match=r"missing val_images, val_labels; keys found"):
        load_source(DataConfig(source="medmnist", path=f"{path}#val"))


def test_a_medmnist_3d_file_is_refused_as_volumes(tmp_path):
    path = tmp_path / "organ3d.npz"
    np.savez(path, train_images=np.zeros((3, 28, 28, 28), np.uint8), train_labels=np.array([[0], [1], [2]]))
    with pytest.raises(DataSourceError, match=r"organ3d.npz: train_images has shape \(3, 28, 28, 28\), volumes of "
                                              r"28 slices \(a MedMNIST 3-D set"):
        load_source(DataConfig(source="medmnist", path=str(path)))
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, train_images=np.zeros((3, 28, 28, 3), np.uint8), train_labels=np.array([[0], [1], [0]]))
    assert len(load_source(DataConfig(source="medmnist", path=str(rgb)))) == 3  # colour images still read


def test_medmnist_not_an_npz(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_text("not a zip")
    with pytest.raises(DataSourceError, match="broken.npz: not a readable .npz"):
        load_source(DataConfig(source="medmnist", path=str(path)))


@pytest.mark.parametrize("labels, message", [
    (np.array([0.0, 0.6, 1.9]), r"train_labels\[1\] is \[0.6\], not a whole number \(2 such value\(s\)\)"),
    (np.array([0.0, np.nan, 1.0]), r"train_labels\[1\] is \[nan\], not a whole number"),
    (np.zeros((3, 1, 1)), r"train_labels has shape \(3, 1, 1\); labels are \(N,\) or \(N, 1\)"),
    (np.array([["a"], [1], [0]], dtype=object), r"array train_labels cannot be read \(Object arrays"),
    (np.array(["0", "1", "1"]), r"train_labels holds <U1 values; labels are whole numbers"),
])
def test_medmnist_labels_that_are_not_class_numbers_are_refused(tmp_path, labels, message):
    path = tmp_path / "labels.npz"
    np.savez(path, train_images=np.zeros((3, 4, 4), np.uint8), train_labels=labels)
    with pytest.raises(DataSourceError, match=r"labels.npz: " + message):
        load_source(DataConfig(source="medmnist", path=str(path)))
    np.savez(path, train_images=np.zeros((3, 4, 4), np.uint8), train_labels=np.array([0.0, 1.0, 1.0]))
    assert load_source(DataConfig(source="medmnist", path=str(path))).labels().tolist() == [0, 1, 1]


# ---------------------------------------------------------------- spec parsing
@pytest.mark.parametrize("spec, source, path", [
    ("pneumonia_mnist", "pneumonia_mnist", None),
    ("medmnist:x/y.npz", "medmnist", "x/y.npz"),
    ("medmnist:x/y.npz#test", "medmnist", "x/y.npz#test"),
    ("manifest:m.csv", "manifest", "m.csv"),
    ("folder:imgs", "folder", "imgs"),
    ("dicom:scans", "dicom", "scans"),
    ("data/m.csv", "manifest", "data/m.csv"),
    ("data/chest.npz#val", "medmnist", "data/chest.npz#val"),
])
def test_parse_source_spec(spec, source, path):
    config = parse_source_spec(spec)
    assert (config.source, config.path) == (source, path)


def test_parse_source_spec_bare_folder(tmp_path):
    assert parse_source_spec(str(tmp_path)).source == "folder"


def test_parse_source_spec_unknown(tmp_path, monkeypatch):
    with pytest.raises(DataSourceError, match="cannot tell what kind of source"):
        parse_source_spec(str(tmp_path / "nothing.bin"))
    with pytest.raises(DataSourceError, match="names no path; write folder:PATH"):
        parse_source_spec("folder:")
    with pytest.raises(DataSourceError, match=r"'manifset' is not a kind of source \(did you mean "
                                              r"manifest:hospb/tune.csv\?\); KIND:PATH takes a KIND among manifest,"):
        parse_source_spec("manifset:hospb/tune.csv")  # not read as a file named so
    (tmp_path / "scans:2024").mkdir()  # an existing folder whose name holds a colon is still a folder
    monkeypatch.chdir(tmp_path)
    assert parse_source_spec("scans:2024").source == "folder"


def test_unknown_source_kind():
    with pytest.raises(DataSourceError, match="data.source is 'imagenet'; use one of"):
        load_source(DataConfig(source="imagenet"))


# ---------------------------------------------------------------- missing paths
def test_missing_path_names_it_and_says_what_to_put(tmp_path):
    message = "Download the Shenzhen and Montgomery sets from https://lhncbc.nlm.nih.gov/ into data/tb."
    config = DataConfig(source="folder", path=str(tmp_path / "tb"), filename_label_suffix=True,
                        missing_message=message)
    with pytest.raises(DataSourceError) as caught:
        load_source(config)
    text = str(caught.value)
    assert str(tmp_path / "tb") in text and "not found" in text
    assert "one sub-folder of images per class" in text
    assert message in text


def test_missing_path_value():
    with pytest.raises(DataSourceError, match="needs data.path: a CSV manifest"):
        load_source(DataConfig(source="manifest"))


def test_relative_paths_resolve_against_base_dir(tmp_path):
    write_png(tmp_path / "imgs" / "a.png")
    write_png(tmp_path / "imgs" / "b.png")
    (tmp_path / "m.csv").write_text("path,label,patient_id\nimgs/a.png,no,p1\nimgs/b.png,yes,p2\n")
    table = load_source(DataConfig(source="manifest", path="m.csv"), base_dir=tmp_path)
    assert table.frame["image"].tolist() == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b.png")]
    assert table.classes == ["no", "yes"] and validate_table(table).ok


def test_manifest_split_names_and_multilabel_values_are_read_in_any_case(tmp_path):
    """As data_manifests/README.md says: Train, VALIDATION, testing; Yes/no, TRUE/false, 1.0/0.0, Unknown."""
    for name in "abcdef":
        write_png(tmp_path / f"{name}.png")
    (tmp_path / "m.csv").write_text("path,effusion,nodule,patient_id,split\n"
                                    "a.png,Yes,no,p1,Train\nb.png,TRUE,false,p2,training\n"
                                    "c.png,1.0,0.0,p3,VALIDATION\nd.png,no,Unknown,p4,Valid\n"
                                    "e.png,0,1,p5,Test\nf.png,-1.0,YES,p6,TESTING\n")
    table = load_source(DataConfig(source="manifest", path="m.csv", label_columns=["effusion", "nodule"]),
                        base_dir=tmp_path)
    assert table.frame["split"].tolist() == ["train", "train", "val", "val", "test", "test"]
    assert table.labels().tolist() == [[1, 0], [1, 0], [1, 0], [0, -1], [0, 1], [-1, 1]]
    assert validate_table(table).ok


# ---------------------------------------------------------------- folders
def test_class_folders_with_skipped_file_reported(tmp_path):
    write_png(tmp_path / "pneumonia" / "p1.png", 200)
    write_png(tmp_path / "normal" / "n1.png", 10)
    write_png(tmp_path / "normal" / "n2.png", 20)
    (tmp_path / "normal" / "README.txt").write_text("notes")
    table = load_source(DataConfig(source="folder", path=str(tmp_path)))
    assert table.classes == ["normal", "pneumonia"] and table.task == "binary"
    labels = dict(zip([p.rsplit("/", 1)[1] for p in table.frame["image"]], table.frame["label"]))
    assert labels == {"n1.png": 0, "n2.png": 0, "p1.png": 1}
    report = validate_table(table)
    assert report.ok
    assert len(report.warnings) == 1 and "README.txt" in report.warnings[0].image
    assert "skipped: unsupported file type '.txt'" in report.format()


def test_a_linked_patient_folder_is_read_and_a_hidden_folder_is_named_not_read(tmp_path):
    """A symbolic link to a patient's folder (data kept elsewhere) gives its images; a link back up does
    not loop; a hidden folder (thumbnails) is listed as skipped."""
    write_png(tmp_path / "normal" / "p1" / "a.png", 10)
    write_png(tmp_path / "elsewhere" / "p2" / "b.png", 200)
    write_png(tmp_path / "elsewhere" / "p2" / "c.png", 210)
    (tmp_path / "data" / "pneumonia").mkdir(parents=True)
    shutil.move(str(tmp_path / "normal"), str(tmp_path / "data" / "normal"))
    (tmp_path / "data" / "pneumonia" / "p2").symlink_to(tmp_path / "elsewhere" / "p2", target_is_directory=True)
    (tmp_path / "data" / "pneumonia" / "p2" / "loop").symlink_to(tmp_path / "data" / "pneumonia",
                                                               target_is_directory=True)
    write_png(tmp_path / "data" / "normal" / ".thumbs" / "t.png", 10)
    table = load_source(DataConfig(source="folder", path=str(tmp_path / "data")))
    rows = sorted(zip([p.split("data/", 1)[1] for p in table.frame["image"]], table.frame["patient_id"]))
    assert rows == [("normal/p1/a.png", "p1"), ("pneumonia/p2/b.png", "p2"), ("pneumonia/p2/c.png", "p2")]
    skipped = table.excluded
    assert skipped["image"].str.endswith(".thumbs").tolist() == [True]
    assert "hidden folder" in skipped["problem"].iloc[0] and "leading dot" in skipped["fix"].iloc[0]


def test_class_folders_order_from_config_and_patient_subfolders(tmp_path):
    write_png(tmp_path / "normal" / "pat1" / "a.png")
    write_png(tmp_path / "normal" / "pat1" / "b.png")
    write_png(tmp_path / "tb" / "c.png")
    table = load_source(DataConfig(source="folder", path=str(tmp_path), classes=["tb", "normal"]))
    assert table.classes == ["tb", "normal"]
    frame = table.frame.sort_values("image")
    assert frame["label"].tolist() == [1, 1, 0]
    assert frame["patient_id"].iloc[0] == "pat1" and frame["patient_id"].iloc[1] == "pat1"
    assert frame["patient_id"].isna().iloc[2]


def test_flat_class_folders_without_patients_say_how_to_give_them(tmp_path):
    write_png(tmp_path / "NORMAL" / "IM-0115-0001.jpeg".replace(".jpeg", ".png"))
    write_png(tmp_path / "PNEUMONIA" / "person1_bacteria_1.png")
    table = load_source(DataConfig(source="folder", path=str(tmp_path)))
    problems = validate_table(table, need_patient_ids=True).problems
    assert [p.problem for p in problems] == ["no patient id"] * 2
    assert "sub-folder of its class folder" in problems[0].fix and "data.patient_pattern" in problems[0].fix
    assert validate_table(table).ok   # a split given by the source needs no patient ids


def test_a_patient_pattern_reads_patients_from_file_names_and_reports_files_it_misses(tmp_path):
    # Kermany's chest X-ray folders: person1_bacteria_1.jpeg, person1_virus_7.jpeg; NORMAL/IM-0115-0001.jpeg
    for name in ("person1_bacteria_1.png", "person1_virus_7.png", "person12_bacteria_3.png"):
        write_png(tmp_path / "PNEUMONIA" / name)
    write_png(tmp_path / "NORMAL" / "IM-0115-0001.png")
    write_png(tmp_path / "NORMAL" / "IM-0115-0002.png")
    write_png(tmp_path / "NORMAL" / "scan.png")
    config = DataConfig(source="folder", path=str(tmp_path), patient_pattern=r"(?P<patient>person\d+|IM-\d+)[_-]")
    table = load_source(config)
    patients = dict(zip(table.frame["image"].map(lambda p: p.rsplit("/", 1)[1]), table.frame["patient_id"]))
    assert {name: patients[name] for name in ("person1_bacteria_1.png", "person1_virus_7.png",
                                              "person12_bacteria_3.png", "IM-0115-0002.png")} == {
        "person1_bacteria_1.png": "person1", "person1_virus_7.png": "person1",
        "person12_bacteria_3.png": "person12", "IM-0115-0002.png": "IM-0115"}
    problems = validate_table(table, need_patient_ids=True).problems
    assert [(p.image.rsplit("/", 1)[1], p.problem) for p in problems] == [
        ("scan.png", "data.patient_pattern '(?P<patient>person\\d+|IM-\\d+)[_-]' finds no patient id in "
                     "'NORMAL/scan.png'")]   # reported even when the split needs no patient ids
    assert validate_table(table).problems == problems
    # the pattern sees the path below data.path, so a folder can be the patient too; it overrides file stems
    write_png(tmp_path / "site" / "CHNCXR_0001_0.png")
    suffix = load_source(DataConfig(source="folder", path=str(tmp_path / "site"), filename_label_suffix=True,
                                    classes=["normal", "tb"], patient_pattern=r"CHNCXR_(\d+)"))
    assert suffix.frame["patient_id"].tolist() == ["0001"]


@pytest.mark.parametrize("values, message", [
    ({"source": "folder", "path": "x", "patient_pattern": "(person"}, "data.patient_pattern is '[(]person'; "
     "it is not a regular expression"),
    ({"source": "manifest", "path": "x.csv", "patient_pattern": "(p)"}, "only data.source folder uses it"),
])
def test_a_patient_pattern_is_checked_where_it_is_set(values, message):
    from tfmed.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        DataConfig(**values)


def test_files_outside_class_folders_are_reported_not_dropped(tmp_path):
    write_png(tmp_path / "normal" / "a.png")
    write_png(tmp_path / "tb" / "b.png")
    write_png(tmp_path / "other" / "c.png")
    write_png(tmp_path / "loose.png")
    table = load_source(DataConfig(source="folder", path=str(tmp_path), classes=["normal", "tb"]))
    assert len(table) == 2
    warnings = {w.image.rsplit("/", 1)[1]: w.problem for w in validate_table(table).warnings}
    assert warnings == {"loose.png": "skipped: file is not inside a class folder",
                        "other": "skipped: folder is not one of data.classes ['normal', 'tb']"}


def test_class_folders_missing_class(tmp_path):
    write_png(tmp_path / "normal" / "a.png")
    with pytest.raises(DataSourceError, match=r"no sub-folder for class\(es\) Normal, tb listed in data.classes; "
                                              "sub-folders found: normal"):
        load_source(DataConfig(source="folder", path=str(tmp_path), classes=["Normal", "tb"]))
    # a listed class without a folder: the images of the other can be scored, and the gap is said
    table = load_source(DataConfig(source="folder", path=str(tmp_path), classes=["normal", "tb"]))
    assert table.classes == ["normal", "tb"] and table.labels().tolist() == [0]
    report = validate_table(table)
    assert [w.problem for w in report.warnings] == [
        "skipped: no sub-folder for class 'tb' (listed in data.classes), so the class has no image"]
    assert "class 'tb' has no image" not in report.format()  # scoring the one class is allowed
    assert "the usable images hold fewer than two classes" in validate_table(table, need_two_classes=True).format()
    with pytest.raises(DataSourceError, match=r"found 1 class folder\(s\) \['normal'\]; .*or, to score the images "
                                              r"of one class alone .* name every class in data.classes"):
        load_source(DataConfig(source="folder", path=str(tmp_path)))


def test_filename_suffix_labels_sites_and_patients(tmp_path):
    write_png(tmp_path / "shenzhen" / "CHNCXR_0001_0.png")
    write_png(tmp_path / "shenzhen" / "CHNCXR_0002_1.png")
    write_png(tmp_path / "montgomery" / "CXR_png" / "MCUCXR_0104_1.png")
    write_png(tmp_path / "montgomery" / "CXR_png" / "MCUCXR_0005_0.png")
    write_png(tmp_path / "montgomery" / "Thumbs_x.png")
    (tmp_path / "montgomery" / "NLM-MontgomeryCXRSet-ReadMe.pdf").write_bytes(b"%PDF")
    config = DataConfig(source="folder", path=str(tmp_path), filename_label_suffix=True,
                        classes=["normal", "tb"])
    table = load_source(config)
    frame = table.frame.set_index(table.frame["image"].map(lambda p: p.rsplit("/", 1)[1]))
    assert frame.loc["CHNCXR_0001_0.png", ["label", "patient_id", "site"]].tolist() == [0, "CHNCXR_0001", "shenzhen"]
    assert frame.loc["MCUCXR_0104_1.png", ["label", "patient_id", "site"]].tolist() == [1, "MCUCXR_0104", "montgomery"]
    report = validate_table(table)
    assert [p.image.rsplit("/", 1)[1] for p in report.problems] == ["Thumbs_x.png"]
    assert "does not end in _<label>" in report.problems[0].problem
    assert any("ReadMe.pdf" in w.image for w in report.warnings)
    kept = apply_validation(table, report, exclude_bad_rows=True)
    assert len(kept) == 4 and sorted(kept.labels().tolist()) == [0, 0, 1, 1]
    excluded = sorted(p.rsplit("/", 1)[1] for p in kept.excluded["image"])
    assert excluded == ["NLM-MontgomeryCXRSet-ReadMe.pdf", "Thumbs_x.png"]


def test_filename_suffix_label_out_of_classes(tmp_path):
    write_png(tmp_path / "site" / "X_0001_3.png")
    write_png(tmp_path / "site" / "X_0002_0.png")
    table = load_source(DataConfig(source="folder", path=str(tmp_path), filename_label_suffix=True,
                                   classes=["normal", "tb"]))
    problems = validate_table(table).problems
    assert len(problems) == 1 and "label suffix 3 is not an index" in problems[0].problem


def test_a_folder_source_without_any_image_to_read_stops_at_once(tmp_path):
    (tmp_path / "normal").mkdir()
    (tmp_path / "tb").mkdir()
    with pytest.raises(DataSourceError, match=r"no image to read \(0 file\(s\) skipped\); put the images in"):
        load_source(DataConfig(source="folder", path=str(tmp_path)))
    write_png(tmp_path / "normal" / "a.png")
    write_png(tmp_path / "tb" / "b.png")
    with pytest.raises(DataSourceError, match=r"no image to read \(2 file\(s\) skipped; e.g. .*a.png: skipped: not "
                                              r"a DICOM file .*data.source dicom reads DICOM files only: use "
                                              r"data.source folder for PNG/JPEG class folders"):
        load_source(DataConfig(source="dicom", path=str(tmp_path)))


def test_a_split_fragment_on_a_source_that_takes_none_is_named_not_called_missing(tmp_path):
    csv = tmp_path / "Data_Entry_2017.csv"
    csv.write_text("Image Index,Finding Labels\n")
    with pytest.raises(DataSourceError, match=r"Data_Entry_2017.csv#test: data.source 'chestxray14' takes no #test "
                                              "fragment .*give the path without it"):
        load_source(parse_source_spec(f"chestxray14:{csv}#test"))
    with pytest.raises(DataSourceError, match="not found"):
        load_source(parse_source_spec(f"chestxray14:{tmp_path / 'other.csv'}#test"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,patient_id,split\na.png,0,p1,test\n")
    with pytest.raises(DataSourceError, match=r"m.csv#test: data.source 'manifest' takes no #test fragment \(it "
                                              r"reads each row's split from the manifest's split column, if any\)"):
        load_source(parse_source_spec(f"manifest:{manifest}#test"))  # not "the publisher's files"


def test_folder_source_needs_a_folder(tmp_path):
    path = tmp_path / "file.png"
    write_png(path)
    with pytest.raises(DataSourceError, match="needs a folder, got a file"):
        load_source(DataConfig(source="folder", path=str(path)))


# ---------------------------------------------------------------- DICOM
def test_dicom_folder_reads_patient_and_view(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    for label, (cls, patient, view, sex, age) in enumerate([("normal", "P001", "PA", "F", "061Y"),
                                                            ("normal", "P002", None, "M", "018M"),
                                                            ("effusion", "P003", "AP", "", "")]):
        dataset = pydicom.dcmread(source)
        dataset.PatientID, dataset.PatientSex, dataset.PatientAge = patient, sex, age
        if view:
            dataset.ViewPosition = view
        (tmp_path / cls).mkdir(exist_ok=True)
        dataset.save_as(tmp_path / cls / f"{patient}.dcm")
    shutil.copy(source, tmp_path / "normal" / "IM_NOEXT")
    (tmp_path / "normal" / "notes.txt").write_text("x")
    table = load_source(parse_source_spec(f"dicom:{tmp_path}"))
    frame = table.frame.set_index(table.frame["image"].map(lambda p: p.rsplit("/", 1)[1]))
    assert table.classes == ["effusion", "normal"]
    assert frame.loc["P001.dcm", ["label", "patient_id", "view"]].tolist() == [1, "P001", "PA"]
    assert frame.loc["P003.dcm", ["label", "patient_id", "view"]].tolist() == [0, "P003", "AP"]
    assert frame["view"].isna()["P002.dcm"]
    assert frame.loc["IM_NOEXT", "patient_id"] == "1CT1"
    assert frame["sex"].fillna("?").to_dict() == {"P001.dcm": "female", "P002.dcm": "male", "P003.dcm": "?",
                                                   "IM_NOEXT": "other"}  # PatientSex, O in the sample file
    assert frame["age"].fillna(-1).to_dict() == {"P001.dcm": 61.0, "P002.dcm": 1.5, "P003.dcm": -1, "IM_NOEXT": 0.0}
    report = validate_table(table, need_patient_ids=True)
    assert report.ok and [w.image.rsplit("/", 1)[1] for w in report.warnings] == ["notes.txt"]


def test_a_scanner_export_named_by_uid_validates_and_predicts(tmp_path, capsys):
    """Files named like CT.1.3.12...16582: the tail of the UID is no extension, the DICM marker decides."""
    from tfmed.progress import configure_logging
    from tfmed.run import cli
    from tfmed.run.predict import collect_images

    names = ["CT.1.3.12.2.1107.5.1.4.30000022120808113428000016582",
             "CT.1.3.12.2.1107.5.1.4.30000022120808113428000016583", "MR.1.2.840.113619.2.55.3"]
    for cls, name in zip(("a", "a", "b"), names):
        (tmp_path / cls).mkdir(exist_ok=True)
        shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / cls / name)
    (tmp_path / "b" / "notes.v2").write_text("not an image")
    table = load_source(parse_source_spec(f"dicom:{tmp_path}"))
    assert sorted(p.rsplit("/", 1)[1] for p in table.frame["image"]) == sorted(names)
    report = validate_table(table)
    assert report.ok and report.problems == []
    assert cli.main(["validate", f"dicom:{tmp_path}"]) == 0
    assert capsys.readouterr().out.startswith("3 rows")  # notes.v2 is listed as skipped, not as a row
    configure_logging()
    assert sorted(p.name for p in collect_images([str(tmp_path)])) == sorted(names)
    said = capsys.readouterr().out  # predict names the file it skips
    assert f"{tmp_path}: 1 file skipped, not images by name" in said and "nor DICOM: b/notes.v2" in said


def test_dicom_folder_bad_header_becomes_a_problem(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "a" / "ok.dcm")
    (tmp_path / "b" / "broken.dcm").write_bytes(b"\x00" * 10)
    table = load_source(DataConfig(source="dicom", path=str(tmp_path)))
    report = validate_table(table)
    assert len(table) == 2
    assert {p.image.rsplit("/", 1)[1] for p in report.problems} == {"broken.dcm"}


def test_a_run_logs_what_validation_warned_of(tmp_path, capsys):
    """A file the source skips is not fixed by the user yet, so a run says so before it starts."""
    from tfmed.config import ExperimentConfig
    from tfmed.progress import configure_logging
    from tfmed.run.experiment import prepare_data

    rng = np.random.default_rng(0)
    for name in ("normal", "pneumonia"):
        (tmp_path / name).mkdir()
        for i in range(10):
            cv2.imwrite(str(tmp_path / name / f"{name}{i}.png"), rng.integers(0, 255, (16, 16), dtype=np.uint8))
    (tmp_path / "normal" / "notes.txt").write_text("scanned on the old unit")
    config = ExperimentConfig.from_dict({"data": {"source": "folder", "path": str(tmp_path),
                                                  "patient_pattern": r"([a-z]+\d+)\.png"}})
    configure_logging()
    table = prepare_data(config)
    assert len(table) == 20 and table.excluded["image"].str.endswith("notes.txt").tolist() == [True]
    out = capsys.readouterr().out
    assert "1 warning(s):" in out and "notes.txt: skipped: " in out


@pytest.mark.parametrize("marker", ["NA", "N/A", "NaN", "nan", "null", "None", "#N/A"])
def test_each_spreadsheet_missing_marker_reads_as_empty(tmp_path, marker):
    from tfmed.data.sources.manifest import load_manifest

    (tmp_path / "m.csv").write_text(f"path,label,patient_id\na.png,normal,{marker}\nb.png,{marker},p2\nc.png,tb,p3\n")
    table = load_manifest(tmp_path / "m.csv")
    assert table.classes == ["normal", "tb"]  # not a class of its own
    assert table.frame["patient_id"].isna().tolist() == [True, False, False]  # not a patient of its own


@pytest.mark.parametrize("label", ["2", "-1"])
def test_a_class_number_outside_the_classes_is_a_row_problem(tmp_path, label):
    from tfmed.data.sources.manifest import load_manifest

    (tmp_path / "m.csv").write_text(f"path,label,patient_id\na.png,0,p1\nb.png,{label},p2\n")
    table = load_manifest(tmp_path / "m.csv", classes=["n", "p"])
    report = validate_table(table, check_images=False)
    assert [problem.row for problem in report.problems if "label" in problem.problem] == [3]
