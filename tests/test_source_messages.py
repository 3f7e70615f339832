"""What validation says of a source's mistakes: the right setting to change, the file at fault, no flood of lines,
and no decoder warning printed past the report."""
import shutil
import warnings

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from tfmed.data.decode import ImageReadError, read_image, read_image_and_info
from tfmed.data.sources.dicom import load_dicom_folder
from tfmed.data.sources.folders import load_suffix_folder
from tfmed.data.sources.manifest import load_manifest
from tfmed.data.table import ImageTable
from tfmed.data.validate import SHOWN_PER_PROBLEM, validate_table

# pydicom's own test file whose header says explicit VR but is encoded implicit: pydicom warns while reading it.
IMPLICIT_VR = "SC_rgb_jpeg.dcm"


def write_pngs(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        assert cv2.imwrite(str(folder / name), np.full((8, 8), 10 * i, np.uint8))


# ---------------------------------------------------------------- (5) multilabel manifest: a label without positives
def test_a_manifest_label_without_positives_is_to_be_left_out_of_data_label_columns(tmp_path):
    write_pngs(tmp_path / "images", [f"{i}.png" for i in range(8)])
    rows = [f"images/{i}.png,{i % 2},{(i // 2) % 2},0,P{i}" for i in range(8)]   # 'mass': never positive
    (tmp_path / "ml.csv").write_text("path,effusion,nodule,mass,patient_id\n" + "\n".join(rows) + "\n")
    problems = validate_table(load_manifest(tmp_path / "ml.csv", label_columns=["effusion", "nodule", "mass"]),
                              need_two_classes=True).problems
    assert [p.problem for p in problems] == [
        "label 'mass' has no positive image among the usable ones (0 positive, 8 negative)"]
    assert "leave 'mass' out of the labels read (a manifest's data.label_columns" in problems[0].fix
    # following that advice passes
    assert validate_table(load_manifest(tmp_path / "ml.csv", label_columns=["effusion", "nodule"]),
                          need_two_classes=True).ok


# ---------------------------------------------------------------- (7) label suffixes: a file without its suffix
def test_a_file_without_its_label_suffix_is_named_instead_of_making_a_hundred_classes(tmp_path):
    write_pngs(tmp_path / "shenzhen", [f"CHNCXR_{i:04d}_{i % 2}.png" for i in range(8)] + ["CHNCXR_0102.png"])
    table = load_suffix_folder(tmp_path)
    assert table.classes == ["0", "1"]          # not '0'..'102'
    report = validate_table(table, need_two_classes=True)
    assert [(p.image.endswith("CHNCXR_0102.png"), p.row) for p in report.problems] == [(True, 9)]
    assert report.problems[0].problem.startswith("its label suffix lies past the classes read from the other files' "
                                                 "suffixes (['0', '1'])")
    assert "lacks its label suffix" in report.problems[0].fix
    assert len(report.format()) < 1000


def test_labels_counted_from_one_in_suffixes_still_make_their_classes(tmp_path):
    write_pngs(tmp_path, ["a_1.png", "b_2.png", "c_1.png"])
    table = load_suffix_folder(tmp_path)
    assert table.classes == ["0", "1", "2"]      # class '0' empty: validation's "counted from 1" hint says why
    problems = validate_table(table, need_two_classes=True).problems
    assert [p.problem for p in problems] == ["class '0' has no image among the usable ones "
                                             "(0 of '0', 2 of '1', 1 of '2')"]


def test_a_suffix_past_the_classes_keeps_the_rows_patient_pattern_problem(tmp_path):
    write_pngs(tmp_path, ["x_0.png", "y_1.png", "z_5.png"])
    table = load_suffix_folder(tmp_path, classes=["normal", "tb"], patient_pattern=r"(P\d+)")
    problems = [p.problem for p in validate_table(table).problems if p.image.endswith("z_5.png")]
    assert problems == ["data.patient_pattern '(P\\d+)' finds no patient id in 'z_5.png'",
                        "label suffix 5 is not an index into classes ['normal', 'tb']"]


def test_a_suffix_one_past_the_named_classes_is_a_row_problem(tmp_path):
    """Two classes are indices 0 and 1: a file ending _2 is not read as a third class nor as the last."""
    write_pngs(tmp_path, ["x_0.png", "y_1.png", "z_2.png"])
    table = load_suffix_folder(tmp_path, classes=["normal", "tb"])
    assert table.frame["label"].isna().tolist() == [False, False, True]
    assert [p.problem for p in validate_table(table).problems] == [
        "label suffix 2 is not an index into classes ['normal', 'tb']"]


def test_many_classes_without_images_are_one_problem(tmp_path):
    write_pngs(tmp_path, ["a.png", "b.png"])
    classes = [str(i) for i in range(30)]
    table = ImageTable(pd.DataFrame({"image": [str(tmp_path / "a.png"), str(tmp_path / "b.png")], "label": [0, 1]}),
                       classes, "multiclass", source="t")
    report = validate_table(table, need_two_classes=True)
    assert len(report.problems) == 1
    named = ", ".join(repr(str(i)) for i in range(2, 2 + SHOWN_PER_PROBLEM))
    assert report.problems[0].problem == (f"28 classes have no image among the usable ones: {named} and 8 more "
                                          "(1 of '0', 1 of '1', 0 of each of the other 28 classes)")
    assert "leave them out of data.classes" in report.problems[0].fix


# ---------------------------------------------------------------- (8) a pydicom warning: traced to its file
@pytest.fixture
def dicom_classes(tmp_path):
    """Two class folders of DICOM files; b/2.dcm makes pydicom warn (explicit VR announced, implicit found)."""
    for name, source in (("a/1.dcm", "CT_small.dcm"), ("a/2.dcm", "MR_small.dcm"), ("b/1.dcm", "CT_small.dcm"),
                         ("b/2.dcm", IMPLICIT_VR)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(get_testdata_file(source), tmp_path / name)
    return tmp_path


def test_a_pydicom_warning_is_reported_with_its_file_and_not_shown(dicom_classes, capfd):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        table = load_dicom_folder(dicom_classes)
        report = validate_table(table, workers=2)
        read_image(dicom_classes / "b" / "2.dcm")       # as the near-duplicate pass reads it
    assert [str(w.message) for w in shown] == []
    assert report.ok
    assert [(w.image.endswith("2.dcm"), w.row, w.problem) for w in report.warnings] == [
        (True, 4, "the decoder warned: UserWarning: Expected explicit VR, but found implicit VR - using implicit VR "
                  "for reading")]
    assert "re-export the DICOM file" in report.warnings[0].fix
    assert "Expected explicit VR" not in capfd.readouterr().err


def test_a_dicom_files_warnings_are_in_its_info_unless_left_to_the_caller():
    path = get_testdata_file(IMPLICIT_VR)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        info = read_image_and_info(path)[1]
        assert shown == []
        assert info.decoder_output.startswith("UserWarning: Expected explicit VR")
        assert read_image_and_info(path, capture_messages=False)[1].decoder_output == ""
    assert [str(w.message) for w in shown][:1] == [
        "Expected explicit VR, but found implicit VR - using implicit VR for reading"]


def test_a_dicom_file_that_fails_quotes_what_pydicom_warned_of_instead_of_showing_it():
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError, match=r"badVR\.dcm: malformed NumberOfFrames '1A' in the header .*; the "
                                                 r"decoder said: UserWarning: Invalid value for VR IS: '1A'"):
            read_image(get_testdata_file("badVR.dcm"))
    assert shown == []


# ---------------------------------------------------------------- (10) a manifest row naming a folder
def test_a_row_naming_a_folder_of_pngs_is_a_folder_not_a_volume(tmp_path):
    write_pngs(tmp_path / "images", ["0.png", "1.png", "2.png"])
    write_pngs(tmp_path, ["n.png"])
    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "1.2.3")    # a DICOM series, files named by UID
    (tmp_path / "m.csv").write_text("path,label\nimages,normal\nn.png,normal\nseries,pneumonia\nimages/0.png,"
                                    "pneumonia\n")
    problems = validate_table(load_manifest(tmp_path / "m.csv")).problems
    assert [(p.row, p.problem) for p in problems] == [
        (2, "is a folder, not an image file (it holds 3 PNG files)"),
        (4, "a volume (a DICOM series folder or a NIfTI (.nii, .nii.gz), MetaImage (.mhd, .mha) or NRRD (.nrrd, "
            ".nhdr) file), not a 2-D image")]
    assert problems[0].fix == "give one image file per row (the path of a file in the folder, not the folder)"
