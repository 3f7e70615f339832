"""PadChest read from the publisher's label CSV, written here in its layout (gzipped, reports quoted with
commas and line breaks, numbered image folders of 16-bit PNGs)."""
import csv
import gzip
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from tfmed.config import ConfigError, DataConfig
from tfmed.data.sources import DataSourceError, load_source, parse_source_spec
from tfmed.data.sources.padchest import load_padchest
from tfmed.data.validate import validate_table
from tfmed.run.cli import main

COLUMNS = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
           "ViewPosition_DICOM", "Projection", "MethodProjection", "Report", "MethodLabel", "Labels"]


def padchest_tree(folder, rows, folders=("0", "1"), gz=True):
    """The label CSV of ``rows`` (ImageID, ImageDir, PatientID, Projection, Labels and optionally MethodLabel,
    default Physician) and a 16-bit PNG of each image in its ImageDir folder when that folder is among
    ``folders``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("labels.csv.gz" if gz else "labels.csv")
    with (gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")) as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for image, image_dir, patient, projection, labels, *method in rows:
            writer.writerow([image, image_dir, "20140915", "st" + patient, patient, "1939", "M", "POSTEROANTERIOR",
                             projection, "Manual review of DICOM fields",
                             "silueta cardiaca aumentada,\ncon derrame pleural.", (method or ["Physician"])[0],
                             labels])
    for image, image_dir, *_ in rows:
        if image and image_dir in folders:
            (folder / image_dir).mkdir(exist_ok=True)
            cv2.imwrite(str(folder / image_dir / image), np.full((16, 12), 30000, np.uint16))
    return path


ROWS = [
    ("a.png", "0", "p1", "PA", "['pleural effusion', ' cardiomegaly']"),   # line 2 (the report spans 2 lines)
    ("b.png", "0", "p1", "L", "['normal']"),
    ("c.png", "1", "p2", "AP_horizontal", "['pneumonia', 'pleural effusion']"),
    ("d.png", "1", "p3", "PA", "['normal']"),
    ("e.png", "7", "p4", "AP", "['cardiomegaly']"),                      # folder 7 absent: a flat copy
]


def test_padchest_reads_the_publishers_csv_unchanged(tmp_path):
    csv_path = padchest_tree(tmp_path / "padchest", ROWS)
    cv2.imwrite(str(tmp_path / "padchest" / "e.png"), np.full((16, 12), 30000, np.uint16))
    table = load_source(DataConfig(source="padchest", path=str(csv_path),
                                   classes=["pleural effusion", "pneumonia", "cardiomegaly"]))
    frame = table.frame.set_index(table.frame["image"].map(lambda p: p.rsplit("/", 1)[1]))
    assert table.task == "multilabel"
    assert frame["row"].tolist() == [2, 4, 6, 8, 10]  # each record's first line
    labels = pd.DataFrame(table.labels(), columns=table.classes, index=frame.index)
    assert labels.to_dict("index") == {
        "a.png": {"pleural effusion": 1, "pneumonia": 0, "cardiomegaly": 1},
        "b.png": {"pleural effusion": 0, "pneumonia": 0, "cardiomegaly": 0},
        "c.png": {"pleural effusion": 1, "pneumonia": 1, "cardiomegaly": 0},
        "d.png": {"pleural effusion": 0, "pneumonia": 0, "cardiomegaly": 0},
        "e.png": {"pleural effusion": 0, "pneumonia": 0, "cardiomegaly": 1}}
    assert frame["patient_id"].tolist() == ["p1", "p1", "p2", "p3", "p4"]
    assert frame["sex"].tolist() == ["male"] * 5 and frame["age"].tolist() == [75.0] * 5  # 2014 less 1939
    assert frame.loc["c.png", "view"] == "AP_horizontal"
    assert frame.loc["a.png", "image"].endswith("padchest/0/a.png")
    assert frame.loc["e.png", "image"].endswith("padchest/e.png")
    assert validate_table(table, need_patient_ids=True).ok
    # by default every finding the lists use, the most frequent first
    assert load_padchest(csv_path).classes == ["cardiomegaly", "pleural effusion", "pneumonia"]


def test_padchest_frontal_only_counts_the_other_projections(tmp_path):
    csv_path = padchest_tree(tmp_path, ROWS)
    table = load_source(DataConfig(source="padchest", path=str(csv_path), frontal_only=True))
    assert sorted(table.frame["view"]) == ["AP", "AP_horizontal", "PA", "PA"]
    assert table.excluded["problem"].tolist() == [
        "skipped: 1 image of projection L, not PA, AP or AP_horizontal (data.frontal_only is true)"]


def test_padchest_physician_labelled_only_counts_the_model_labelled_lines(tmp_path):
    rows = [row + (method,) for row, method in zip(ROWS, ("Physician", "RNN_model", "Physician", "RNN_model",
                                                           "Physician"))]
    csv_path = padchest_tree(tmp_path, rows)
    table = load_source(DataConfig(source="padchest", path=str(csv_path), physician_labelled_only=True))
    assert [Path(image).name for image in table.frame["image"]] == ["a.png", "c.png", "e.png"]
    assert table.excluded["problem"].tolist() == [
        "skipped: 2 images labelled by RNN_model, not by a physician (data.physician_labelled_only is true)"]
    assert len(load_padchest(csv_path)) == 5  # every line without the setting
    with pytest.raises(ConfigError, match="only data.source padchest uses it and data.source is 'chexpert'"):
        DataConfig(source="chexpert", path="train.csv", physician_labelled_only=True)


def test_padchest_classes_and_row_problems(tmp_path):
    csv_path = padchest_tree(tmp_path, ROWS + [
        ("f.png", "1", "p5", "PA", "['normal', 'pneumonia']"),   # line 12
        ("g.png", "1", "p6", "PA", "[]"),                        # line 14
        ("h.png", "1", "p7", "PA", "pleural effusion"),          # line 16
        ("", "1", "p8", "PA", "['normal']")], gz=False)          # line 18
    with pytest.raises(DataSourceError, match=r"data.classes names 'Pneumonia', which .*labels.csv does not have; "
                                              r"choose from the terms as the reports write them, in lower case; "
                                              r"the most frequent here: cardiomegaly \(2\), pleural effusion \(2\)"):
        load_padchest(csv_path, classes=["Pneumonia"])
    problems = {(p.row, p.problem) for p in validate_table(load_padchest(csv_path)).problems}
    assert {(12, "Labels \"['normal', 'pneumonia']\" names 'normal' beside findings"),
            (14, "Labels '[]' names no finding (not even 'normal')"),
            (16, "Labels 'pleural effusion' is not a list of findings"),
            (18, "empty ImageID")} <= problems


def test_padchest_settings_and_command_line(tmp_path, capsys):
    csv_path = padchest_tree(tmp_path, ROWS[:4])
    with pytest.raises(ConfigError, match="only data.source chexpert or mimic_cxr uses it and data.source is "
                                          "'padchest'"):
        DataConfig(source="padchest", path=str(csv_path), uncertain="ones")
    with pytest.raises(ConfigError, match="data.source padchest is multilabel"):
        DataConfig(source="padchest", path=str(csv_path), task="multiclass")
    # tfmed validate shows every finding with its count, to choose data.classes from
    assert main(["validate", f"padchest:{csv_path}"]) == 0
    out = capsys.readouterr().out
    assert "classes ['pleural effusion', 'cardiomegaly', 'pneumonia']" in out
    assert "labels: pleural effusion 2 positive, 0 unknown; cardiomegaly 1 positive" in out
    assert parse_source_spec(f"padchest:{csv_path}").source == "padchest"


def test_padchest_a_term_only_left_out_lines_hold_is_refused_naming_the_setting(tmp_path):
    rows = [row + (method,) for row, method in zip(ROWS, ("Physician", "Physician", "RNN_model", "Physician",
                                                           "Physician"))]
    csv_path = padchest_tree(tmp_path, rows + [("i.png", "1", "p9", "L", "['nodule']", "Physician")])
    # pneumonia is only on c.png, labelled by the model; nodule only on a lateral view
    with pytest.raises(DataSourceError, match=r"^data.classes names 'pneumonia', which .*labels.csv.gz has on 1 "
                                              r"line\(s\), but data.physician_labelled_only leaves out every line "
                                              r"that has it; remove it from data.classes \(the kept lines' most "
                                              r"frequent terms: cardiomegaly \(2\), nodule \(1\), pleural effusion "
                                              r"\(1\)\), or set data.physician_labelled_only to false$"):
        load_padchest(csv_path, classes=["cardiomegaly", "pneumonia"], physician_labelled_only=True)
    with pytest.raises(DataSourceError, match=r"names 'nodule', 'pneumonia', which .* has on 1, 1 line\(s\), but "
                                              r"data.frontal_only and data.physician_labelled_only leave out every "
                                              r"line that has them; remove them .* or set data.frontal_only or "
                                              r"data.physician_labelled_only to false$"):
        load_padchest(csv_path, classes=["nodule", "pneumonia"], frontal_only=True, physician_labelled_only=True)
    assert load_padchest(csv_path, classes=["nodule"]).labels().sum() == 1  # without the settings
    with pytest.raises(DataSourceError, match="names 'nodules', which .* does not have; choose from"):
        load_padchest(csv_path, classes=["nodules"], frontal_only=True)  # a misspelling: not in the file


def test_padchest_a_blank_patientid_is_fixed_in_the_publishers_words(tmp_path):
    csv_path = padchest_tree(tmp_path, ROWS[:2] + [("c.png", "1", "", "PA", "['normal']")])
    text = validate_table(load_padchest(csv_path), need_patient_ids=True).format()
    assert "row 6: " in text and "no patient id. Fix: fill the row's PatientID cell in labels.csv.gz as " \
                                 "published" in text
    assert "patient_id column" not in text
