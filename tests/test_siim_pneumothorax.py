"""The SIIM-ACR Pneumothorax Segmentation challenge's mask list read as published: DICOM files in nested folders,
masks run-length encoded down the columns (relative starts in train-rle.csv; another file as its masks say),
a box around each masked region for measuring explanations."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, ExperimentConfig
from tfmed.data.sources import DataSourceError, load_source, parse_source_spec
from tfmed.data.sources.siim_pneumothorax import mask_from_rle
from tfmed.data.validate import validate_table
from tfmed.progress import configure_logging
from tfmed.run.experiment import run_experiment

UID = "1.2.276.0.7230010.3.1.4.8323329.{}.1517875163.{}"


def rle(mask, relative=True):
    """The challenge's encoding of a mask: runs of the column-major pixel order, as start and length pairs."""
    flat = np.concatenate([[0], mask.T.ravel().astype(int), [0]])
    changes = np.flatnonzero(np.diff(flat))
    starts, ends = changes[0::2], changes[1::2]
    numbers, previous = [], 0
    for start, end in zip(starts, ends):
        numbers += [start - previous if relative else start, end - start]
        previous = end if relative else 0
    return " ".join(map(str, numbers))


def rectangle(x, y, width, height, size=128):
    mask = np.zeros((size, size), bool)
    mask[y:y + height, x:x + width] = True
    return mask


def write_siim(folder, masks: dict, relative=True, name="train-rle.csv", pixels=None):
    """DICOMs of 128 x 128 pixels under dicom-images-train/<study>/<series>/<ImageId>.dcm (patient, sex, age and view
    in their headers) and the mask list: one line per mask of an image (``masks[i]``, a list), -1 for none."""
    rng = np.random.default_rng(0)
    lines = ["ImageId, EncodedPixels"]  # as published, with the space
    for i, image_masks in masks.items():
        uid = UID.format(1000 + i, i)
        place = folder / "dicom-images-train" / f"study{i}" / f"series{i}"
        place.mkdir(parents=True)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientID, ds.PatientSex, ds.PatientAge = f"pt-{i}", "FM"[i // 2 % 2], f"{30 + i:03d}Y"
        ds.ViewPosition = "PA"
        image = rng.normal(400, 40, (128, 128)) if pixels is None else pixels(i)
        for mask in image_masks:
            image[mask] += 1500
        ds.PixelData = image.clip(0, 4000).astype(np.int16).tobytes()
        ds.save_as(place / f"{uid}.dcm", enforce_file_format=True)
        lines += [f"{uid}, {rle(mask, relative)}" for mask in image_masks] or [f"{uid}, -1"]
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def test_masks_decode_down_the_columns_relative_or_absolute():
    mask = rectangle(3, 5, 4, 2, size=16) | rectangle(10, 0, 1, 16, size=16)
    assert np.array_equal(mask_from_rle(rle(mask), 16, 16, relative=True), mask)
    assert np.array_equal(mask_from_rle(rle(mask, relative=False), 16, 16, relative=False), mask)
    # the challenge's example reading: pixel k lies in column k // height, row k % height
    assert np.flatnonzero(mask_from_rle("5 1", 4, 3, relative=True).T.ravel()).tolist() == [5]
    assert mask_from_rle("5 1", 4, 3, relative=True)[1, 1]
    with pytest.raises(ValueError, match="runs past the end of the 3 x 4 image"):
        mask_from_rle("10 3", 4, 3, relative=True)
    with pytest.raises(ValueError, match="is not pairs of start and length"):
        mask_from_rle("1 2 3", 4, 3, relative=True)


@pytest.mark.parametrize("relative, name", [(True, "train-rle.csv"), (True, "stage_2_train.csv"),
                                            (False, "masks_absolute.csv")])
def test_the_mask_list_becomes_one_row_per_image_with_a_box_per_region(tmp_path, relative, name):
    two_regions = rectangle(10, 20, 30, 15) | rectangle(70, 80, 20, 25)
    csv = write_siim(tmp_path / "siim", {0: [], 1: [two_regions], 2: [rectangle(5, 5, 8, 8), rectangle(90, 40, 12, 6)],
                                         3: []}, relative=relative, name=name)
    table = load_source(parse_source_spec(f"siim_pneumothorax:{csv}"))
    frame = table.frame
    assert table.task == "binary" and table.classes == ["no_pneumothorax", "pneumothorax"]
    assert frame["label"].tolist() == [0, 1, 1, 0] and frame["row"].tolist() == [2, 3, 4, 6]
    assert frame["boxes"].fillna("").tolist() == ["", "10,20,30,15;70,80,20,25", "5,5,8,8;90,40,12,6", ""]
    assert frame["patient_id"].tolist() == ["pt-0", "pt-1", "pt-2", "pt-3"]
    assert frame["sex"].tolist() == ["female", "female", "male", "male"] and frame["age"].tolist() == [30, 31, 32, 33]
    assert frame["view"].tolist() == ["PA"] * 4
    assert frame["image"].iloc[1].endswith(f"dicom-images-train/study1/series1/{UID.format(1001, 1)}.dcm")
    assert validate_table(table, need_patient_ids=True).ok


def test_a_file_mixing_the_two_encodings_is_refused_unless_the_publishers_name_decides(tmp_path):
    csv = write_siim(tmp_path / "siim", {0: [rectangle(10, 20, 30, 15)], 1: [],
                                         2: [rectangle(5, 5, 8, 8), rectangle(90, 40, 12, 6)],
                                         3: [rectangle(40, 50, 10, 10)]})
    lines = csv.read_text().splitlines()
    lines[4] = f"{UID.format(1002, 2)}, {rle(rectangle(90, 40, 12, 6), relative=False)}"  # line 5: absolute
    lines[5] = f"{UID.format(1003, 3)}, {rle(rectangle(40, 50, 10, 10), relative=False)}"  # line 6: absolute
    other = csv.with_name("masks.csv")
    other.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataSourceError, match=r"masks.csv: 2 masks read only as relative run starts and 2 only as "
                                              r"absolute ones; keep one of the publisher's files \(train-rle.csv or "
                                              r"stage_2_train.csv\) as published$"):
        load_source(parse_source_spec(f"siim_pneumothorax:{other}"))
    # the publisher's train-rle.csv: relative starts by its name, each mask that does not read so reported
    csv.write_text(other.read_text())
    table = load_source(parse_source_spec(f"siim_pneumothorax:{csv}"))
    report = validate_table(table)
    text = report.format()
    assert "row 4: " in text and ("2.dcm: line 5: EncodedPixels '11560 6 11688 6 11816 6 11944 6 12072...' runs "
                                  "past the end of the 128 x 128 image. Fix: keep the publisher's run-length "
                                  "encoding (read here with relative run starts)") in text
    assert "row 6: " in text and ".dcm: EncodedPixels '5170 10 5298 10" in text  # its only line: the row's
    assert len(report.problems) == 2
    assert table.frame["boxes"].fillna("").tolist()[:2] == ["10,20,30,15", ""]  # the other images are usable


def test_row_problems_name_the_line_and_the_fix(tmp_path):
    csv = write_siim(tmp_path / "siim", {0: [], 1: [rectangle(10, 20, 30, 15)], 2: [], 3: [], 4: []})
    lines = csv.read_text().splitlines()
    lines[1] = lines[1] + "\n" + lines[1].replace("-1", rle(rectangle(1, 1, 2, 2)))  # -1 and a mask: line 2 and 3
    lines[3] = lines[3].split(",")[0] + ", 12 x"
    lines[4] = lines[4].split(",")[0] + ", 16300 500"
    lines[5] = lines[5].split(",")[0] + ","
    lines.append(UID.format(9999, 9) + ", -1")  # no such file
    csv.write_text("\n".join(lines) + "\n")
    twin = tmp_path / "siim" / "copy"
    twin.mkdir()
    shutil.copy(next((tmp_path / "siim").rglob(f"{UID.format(1001, 1)}.dcm")), twin)
    text = validate_table(load_source(parse_source_spec(f"siim_pneumothorax:{csv}"))).format()
    assert "row 2: " in text
    assert "listed both without pneumothorax (-1) and with a mask (lines 2 and 3). Fix: keep" in text
    assert "row 4: " in text and "is found 2 times under" in text
    assert "row 5: " in text and "EncodedPixels '12 x' is not whole numbers. Fix: keep the publisher's" in text
    assert "row 6: " in text and "EncodedPixels '16300 500' runs past the end of the 128 x 128 image" in text
    assert "row 7: " in text and "empty EncodedPixels. Fix: write -1 for an image without pneumothorax" in text
    assert "row 8: " in text and "file not found" in text


def test_train_rle_csv_is_relative_by_its_name_and_another_file_as_its_masks_say(tmp_path, capsys):
    # absolute starts 10, 138, 266 of a small mask at the left edge also read as relative ones (three regions)
    absolute = write_siim(tmp_path / "abs", {0: [rectangle(0, 10, 3, 4)], 1: []}, relative=False,
                          name="stage_2_train.csv")
    assert absolute.read_text().splitlines()[1].endswith(", 10 4 138 4 266 4")
    configure_logging()
    # stage_2_train.csv, as any file not named train-rle.csv: relative when every mask reads both ways, and said so
    assert load_source(parse_source_spec(f"siim_pneumothorax:{absolute}")).frame["boxes"].tolist()[0] != "0,10,3,4"
    assert f"{absolute}: the masks are read with relative run starts (every mask reads both ways" in \
        capsys.readouterr().out
    # ... and absolute when a mask can only be: as the challenge's stage-2 file is read whatever its encoding
    two_regions = write_siim(tmp_path / "two", {0: [rectangle(10, 20, 30, 15) | rectangle(70, 80, 20, 25)]},
                             relative=False, name="stage_2_train.csv")
    assert load_source(parse_source_spec(f"siim_pneumothorax:{two_regions}")).frame["boxes"].tolist()[0] == \
        "10,20,30,15;70,80,20,25"
    assert "read with absolute run starts" in capsys.readouterr().out
    # the publisher's train-rle.csv holding an absolute mask: that mask is reported with its row
    (tmp_path / "two" / "train-rle.csv").write_text(two_regions.read_text())
    table = load_source(parse_source_spec(f"siim_pneumothorax:{tmp_path}/two/train-rle.csv"))
    assert "row 2: " in validate_table(table).format() and "runs past the end of the 128 x 128 image" in \
        table.frame["source_problems"].tolist()[0][0][0]


def test_an_image_listed_twice_without_pneumothorax_names_both_lines(tmp_path):
    csv = write_siim(tmp_path / "siim", {0: [], 1: [], 2: [rectangle(10, 20, 30, 15)]})
    csv.write_text(csv.read_text() + f"{UID.format(1001, 1)}, -1\n")
    text = validate_table(load_source(parse_source_spec(f"siim_pneumothorax:{csv}"))).format()
    assert "the image is listed 2 times without pneumothorax (-1) (lines 3 and 5). Fix: remove the repeated" in text
    assert "with a mask" not in text


def test_siim_fixes_say_where_the_image_and_its_patient_come_from(tmp_path):
    csv = write_siim(tmp_path / "siim", {0: [], 1: [rectangle(10, 20, 30, 15)], 2: []})
    dicom = next((tmp_path / "siim").rglob(f"{UID.format(1001, 1)}.dcm"))
    header = pydicom.dcmread(dicom)
    del header.PatientID
    header.save_as(dicom)
    next((tmp_path / "siim").rglob(f"{UID.format(1002, 2)}.dcm")).unlink()
    text = validate_table(load_source(parse_source_spec(f"siim_pneumothorax:{csv}")), need_patient_ids=True,
                          check_images=False).format()
    assert ("row 3: " in text and "no patient id. Fix: SIIM-ACR takes the patient from the PatientID of the image's "
            "DICOM header, which is empty or missing here: restore the DICOM file as published") in text
    assert (f"row 4: {tmp_path}/siim/{UID.format(1002, 2)}.dcm: file not found. Fix: <ImageId>.dcm is looked for "
            f"in {tmp_path}/siim and its sub-folders") in text
    assert "patient_id column" not in text and "manifest" not in text


@pytest.mark.parametrize("values, message", [
    ({"data": {"source": "siim_pneumothorax", "path": "l.csv", "label_columns": ["x"]}}, "does not use it"),
    ({"data": {"source": "siim_pneumothorax", "path": "l.csv", "task": "multiclass"}}, "is binary"),
])
def test_siim_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


@pytest.mark.slow
def test_a_siim_run_measures_its_explanations_against_the_masked_regions(tmp_path):
    rng = np.random.default_rng(1)
    masks = {i: [rectangle(*(int(v) for v in rng.integers(10, 80, 2)), 32, 32)] if i % 2 else [] for i in range(24)}
    csv = write_siim(tmp_path / "siim", masks)
    config = tiny_svm_experiment("siim_test", tmp_path, {"source": "siim_pneumothorax", "path": str(csv)},
                                 {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
                                 report={"explain": True}, evaluation={"subgroups": ["sex"]})
    run = run_experiment(config)
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    boxed = explained[explained["label"] == "pneumothorax"]
    assert len(boxed) >= 1
    # a 32 x 32 region of a 128 x 128 image covers 1/16 of the 32 px input, whatever the map
    assert boxed["box_fraction"].tolist() == pytest.approx([1 / 16] * len(boxed))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["subgroups"]["sex"]["test"]["groups"]) == {"female", "male"}  # from the DICOM headers


@pytest.mark.slow
def test_the_siim_experiment_fine_tunes_on_the_release_and_leaves_out_its_missing_images(tmp_path):
    rng = np.random.default_rng(2)
    masks = {i: [rectangle(*(int(v) for v in rng.integers(10, 80, 2)), 32, 32)] if i % 3 == 0 else []
             for i in range(30)}
    csv = write_siim(tmp_path / "siim", masks)
    missing = UID.format(9999, 9)
    csv.write_text(csv.read_text() + f"{missing}, -1\n")  # listed, but not in the release
    config = ExperimentConfig.from_yaml(Path(__file__).parent.parent / "experiments" / "siim_pneumothorax.yaml")
    config.data.path = str(csv)
    config.runs_dir, config.preprocess.image_size, config.model.weights = str(tmp_path / "runs"), 32, None
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 30 and set(splits["split"]) == {"train", "val", "test"}
    excluded = pd.read_csv(run / "excluded_rows.csv")
    assert excluded["row"].tolist() == [32] and "file not found" in excluded.to_string()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "finetune" and metrics["classes"] == ["no_pneumothorax", "pneumothorax"]
    assert set(metrics["subgroups"]) == {"sex", "age"}  # from the DICOM headers
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    boxed = explained[explained["label"] == "pneumothorax"]
    assert len(boxed) >= 1 and boxed["box_fraction"].notna().all()  # measured against the masks' boxes


def test_a_run_ending_exactly_on_the_images_last_pixel_is_read():
    """A run that ends on the last pixel is valid (SIIM's masks often touch the image's bottom-right corner):
    runs are column-major, so on a 2 high x 3 wide image pixels 4 and 5 are the last column. One pixel more
    passes the end and is refused; a >= instead of > refused the valid run too."""
    flat = np.zeros(2 * 3, bool)
    flat[4:6] = True
    expected = flat.reshape(3, 2).T  # column-major: consecutive pixels run down a column
    np.testing.assert_array_equal(mask_from_rle("4 2", 2, 3, relative=False), expected)
    np.testing.assert_array_equal(mask_from_rle("3 1", 2, 2, relative=False), [[False, False], [False, True]])
    with pytest.raises(ValueError):
        mask_from_rle("4 3", 2, 3, relative=False)
