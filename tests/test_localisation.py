"""Finding boxes (manifest column, RSNA Pneumonia source) and saliency maps measured against them: the pointing
game and the energy inside the boxes, with the boxes resized exactly as their images were."""
import json

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, ExperimentConfig
from tfmed.data.boxes import BOX_FORMAT, box_mask, format_boxes, parse_boxes, parse_labelled_boxes
from tfmed.data.sources import load_source, parse_source_spec
from tfmed.data.sources.manifest import load_manifest
from tfmed.data.sources.rsna_pneumonia import HEADER
from tfmed.data.validate import SOURCE_PROBLEMS
from tfmed.data.table import ImageTable
from tfmed.explain.localisation import box_localisation, localisation, summary
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment

PATIENT = "00436515-870c-4b36-a041-de91049b9ab{}"


def test_boxes_parse_and_cover_the_pixels_whose_centres_they_hold():
    assert parse_boxes("264,152,213,379; 562.5,152,256,453") == [(264, 152, 213, 379), (562.5, 152, 256, 453)]
    assert parse_boxes(None) == [] and parse_boxes(float("nan")) == []
    for text, message in (("1,2,3", "not four numbers"), ("1,2,0,4", "has no area"), ("a,b,c,d", "not four")):
        with pytest.raises(ValueError, match=message):
            parse_boxes(text)
    mask = box_mask([(1, 1, 2, 2), (3.5, 0, 1, 1)], height=4, width=5)
    assert mask.astype(int).tolist() == [[0, 0, 0, 1, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_the_pointing_game_and_the_energy_in_the_boxes():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2, :2] = masks[1, :2, :2] = True  # the third image has no box
    maps = np.full((3, 4, 4), 0.1)
    maps[0, 0, 0] = 1.0    # peak in the box
    maps[1, 3, 3] = 1.0    # peak outside
    per_image = localisation(maps, masks)
    assert [row["peak_in_box"] for row in per_image] == [True, False, None]
    assert per_image[0]["energy_in_boxes"] == pytest.approx((1.0 + 0.3) / (1.0 + 1.5))
    assert per_image[1]["energy_in_boxes"] == pytest.approx(0.4 / 2.5) and per_image[1]["box_fraction"] == 0.25
    assert summary(per_image) == pytest.approx({"images_with_boxes": 2, "pointing_game": 0.5,
                                                "energy_in_boxes": (1.3 / 2.5 + 0.4 / 2.5) / 2, "box_fraction": 0.25})
    # a flat map points nowhere: its first pixel (inside the box here) is no hit, and it is left out of the means
    flat = localisation(np.concatenate([maps[:2], np.zeros((1, 4, 4))]), masks[[0, 1, 0]])
    assert flat[2] == {"peak_in_box": None, "energy_in_boxes": None, "box_fraction": 0.25}
    assert summary(flat)["pointing_game"] == 0.5 and summary(flat)["images_with_boxes"] == 3
    assert summary(localisation(np.zeros((2, 4, 4)), masks[:2]))["pointing_game"] is None


@pytest.mark.parametrize("resize, rows", [("plain", slice(0, 16)), ("pad", slice(8, 16))])
def test_boxes_are_resized_as_their_image_was(tmp_path, resize, rows):
    """A 200 x 100 image (width x height) at 32 px: stretched, or scaled to 32 x 16 and padded 8 rows above."""
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((100, 200), np.uint8))
    (tmp_path / "m.csv").write_text("path,label,patient_id,boxes\nwide.png,1,p1,\"0,0,100,50\"\nwide.png,0,p2,\n")
    table = load_manifest(tmp_path / "m.csv")
    expected = np.zeros((32, 32), bool)
    expected[rows, :16] = True
    maps = np.zeros((2, 32, 32))
    maps[:, rows.start, 3] = 1.0
    per_image = box_localisation(table, maps, resize)
    assert per_image[0] == {"peak_in_box": True, "energy_in_boxes": 1.0, "box_fraction": expected.mean()}
    assert per_image[1]["box_fraction"] is None
    maps[0] = 0.0
    maps[0, 31, 31] = 1.0
    assert box_localisation(table, maps, resize)[0]["peak_in_box"] is False
    assert box_localisation(load_manifest(tmp_path / "m.csv").subset([1]), maps[1:], resize) is None


def test_an_unnamed_box_marks_its_images_own_class_so_a_map_of_the_other_class_is_not_scored(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32), np.uint8))
    (tmp_path / "m.csv").write_text("path,label,patient_id,boxes\na.png,pneumonia,p1,\"0,0,16,16\"\n"
                                    "a.png,pneumonia,p2,\"0,0,16,16\"\na.png,normal,p3,\n")
    table = load_manifest(tmp_path / "m.csv").subset([0, 1])
    assert table.classes == ["normal", "pneumonia"]
    maps = np.zeros((2, 32, 32))
    maps[:, 2, 2] = 1.0
    # the second map explains "normal" (e.g. a missed case's): no box marks that class
    per_image = box_localisation(table, maps, "plain", ["pneumonia", "normal"])
    assert per_image[0]["peak_in_box"] is True
    assert per_image[1] == {"peak_in_box": None, "energy_in_boxes": None, "box_fraction": None}
    assert summary(per_image)["images_with_boxes"] == 1
    # whatever the order of the classes: boxed images of the first class (e.g. tuberculosis before healthy)
    first = ImageTable(table.frame.assign(label=[0, 0]), ["tuberculosis", "healthy"], "binary")
    assert summary(box_localisation(first, maps, "plain", ["tuberculosis", "tuberculosis"]))["pointing_game"] == 1.0


def test_a_box_smaller_than_a_map_pixel_keeps_the_pixel_it_lies_in(tmp_path):
    cv2.imwrite(str(tmp_path / "cxr.png"), np.zeros((1024, 1024), np.uint8))
    (tmp_path / "m.csv").write_text("path,label,patient_id,boxes\ncxr.png,1,p1,\"800,800,8,8;0,0,512,512\"\n"
                                    "cxr.png,0,p2,\n")
    table = load_manifest(tmp_path / "m.csv").subset([0])
    maps = np.zeros((1, 64, 64))
    maps[0, 50, 50] = 1.0  # the pixel holding the 8 px box (at 1/16 scale: 50-50.5)
    per_image = box_localisation(table, maps, "plain")
    assert per_image[0]["peak_in_box"] is True and per_image[0]["box_fraction"] == (32 * 32 + 1) / 64 ** 2
    alone = load_manifest(tmp_path / "m.csv").subset([0])
    alone.frame.loc[:, "boxes"] = "800,800,8,8"
    assert box_localisation(alone, maps, "plain")[0]["box_fraction"] == 1 / 64 ** 2  # not left out as unboxed


def test_a_malformed_box_in_a_manifest_is_a_row_problem(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,patient_id,boxes\na.png,1,p1,\"1,2,3\"\nb.png,0,p2,\"4,5,6,7\"\n")
    frame = load_manifest(tmp_path / "m.csv").frame
    assert frame[SOURCE_PROBLEMS].iloc[0][0] == ("box '1,2,3' is not four numbers", f"write {BOX_FORMAT}")
    assert frame["boxes"].tolist()[1] == "4,5,6,7"


def test_a_box_wholly_outside_its_image_is_a_row_problem(tmp_path):
    """Not measured as 'no box' in silence: e.g. a box written for a JPEG's stored pixels that its EXIF orientation
    turns upright; a box reaching past an edge but holding pixels of the image is kept."""
    from tfmed.data.validate import validate_table

    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((32, 64), np.uint8))  # 64 wide, 32 high
    cv2.imwrite(str(tmp_path / "other.png"), np.ones((32, 64), np.uint8))
    (tmp_path / "m.csv").write_text("path,label,patient_id,boxes\nwide.png,1,p1,\"6,37,10,10;1,1,4,4\"\n"
                                    "other.png,1,p2,\"60,28,10,10\"\n")
    report = validate_table(load_manifest(tmp_path / "m.csv"))
    assert [(problem.row, problem.problem) for problem in report.problems] == [
        (2, "box 6,37,10,10 lies outside the 64 x 32 image")]
    assert "EXIF orientation applied" in report.problems[0].fix


def test_a_box_that_names_a_label_counts_only_for_the_map_of_that_label(tmp_path):
    assert parse_labelled_boxes("Edema:1,2,3,4; 5,6,7,8") == [("Edema", (1, 2, 3, 4)), (None, (5, 6, 7, 8))]
    assert parse_boxes("Edema:1,2,3,4;Mass:5,6,7,8;9,9,9,9", label="Mass") == [(5, 6, 7, 8), (9, 9, 9, 9)]
    assert format_boxes([(1, 2, 3, 4), (5, 6, 7, 8)], ["Nodule/Mass", None]) == "Nodule/Mass:1,2,3,4;5,6,7,8"
    with pytest.raises(ValueError, match="names an empty label before ':'"):
        parse_boxes(":1,2,3,4")
    # a 200 x 100 image at 32 px (stretched): Edema boxed in its left half, Mass in its bottom-right quarter
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((100, 200), np.uint8))
    (tmp_path / "m.csv").write_text("path,Edema,Mass,patient_id,boxes\n"
                                    "wide.png,1,1,p1,\"Edema:0,0,100,100;Mass:100,50,100,50\"\n"
                                    "wide.png,0,1,p2,\"Nodule:0,0,10,10\"\n")
    table = load_manifest(tmp_path / "m.csv", label_columns=["Edema", "Mass"])
    assert table.frame[SOURCE_PROBLEMS].iloc[1][0][0] == ("a box names 'Nodule', which is none of the classes or "
                                                          "labels ['Edema', 'Mass']")
    first = table.subset([0])
    maps = np.zeros((1, 32, 32))
    maps[0, 2, 3] = 1.0  # the peak in the left half
    edema, mass = (box_localisation(first, maps, "plain", [label])[0] for label in ("Edema", "Mass"))
    assert edema == {"peak_in_box": True, "energy_in_boxes": 1.0, "box_fraction": 0.5}
    assert mass == {"peak_in_box": False, "energy_in_boxes": 0.0, "box_fraction": 0.25}
    assert box_localisation(first, maps, "plain")[0]["box_fraction"] == 0.75  # no label given: every box


# ------------------------------------------------------------------------------------------------ RSNA

def test_rsna_lines_become_one_row_per_image_with_its_boxes(tmp_path):
    (tmp_path / "stage_2_train_images").mkdir()
    (tmp_path / "stage_2_train_labels.csv").write_text(HEADER + "\n" + "\n".join([
        f"{PATIENT.format(0)},,,,,0",                      # line 2
        f"{PATIENT.format(1)},264.0,152.0,213.0,379.0,1",  # line 3
        f"{PATIENT.format(1)},562.0,152.0,256.0,453.0,1",  # line 4: the same image's second box
        f"{PATIENT.format(2)},,,,,1",                      # line 5: an opacity without its box
        f"{PATIENT.format(3)},1,2,3,4,1",                  # line 6
        f"{PATIENT.format(3)},,,,,0",                      # line 7: disagrees with line 6
        f"{PATIENT.format(4)},,,,,2"]) + "\n")             # line 8
    table = load_source(parse_source_spec(f"rsna_pneumonia:{tmp_path / 'stage_2_train_labels.csv'}"))
    frame = table.frame
    assert table.classes == ["no_lung_opacity", "lung_opacity"] and table.task == "binary"
    assert frame["row"].tolist() == [2, 3, 5, 6, 8]
    assert frame["image"].iloc[1] == str(tmp_path / "stage_2_train_images" / f"{PATIENT.format(1)}.dcm")
    assert frame["boxes"].iloc[1] == "264,152,213,379;562,152,256,453" and pd.isna(frame["boxes"].iloc[0])
    assert frame["label"].tolist()[:2] == [0, 1]
    problems = [[p[0] for p in items] for items in frame[SOURCE_PROBLEMS]]
    assert problems[:2] == [[], []]
    assert problems[2] == ["Target 1 without its box"]
    assert problems[3] == ["the image's lines disagree on Target (0, 1)"]
    assert problems[4] == ["Target '2' is not 0 or 1"]


@pytest.mark.parametrize("values, message", [
    ({"data": {"source": "rsna_pneumonia", "path": "l.csv", "label_columns": ["Target"]}},
     "reads the publisher's columns"),
    ({"data": {"source": "rsna_pneumonia", "path": "l.csv", "task": "multiclass"}}, "is binary"),
])
def test_rsna_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


def write_rsna(folder, count=24):
    """An RSNA-shaped folder of 128 x 128 DICOM chest images: every odd one a bright 32 x 32 opacity in its box."""
    rng = np.random.default_rng(0)
    (folder / "stage_2_train_images").mkdir(parents=True)
    lines = [HEADER]
    for i in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = rng.normal(400, 40, (128, 128))
        if i % 2:
            x, y = (int(v) for v in rng.integers(10, 80, 2))
            pixels[y:y + 32, x:x + 32] += 1500
            lines.append(f"{PATIENT.format(i)},{x}.0,{y}.0,32.0,32.0,1")
        else:
            lines.append(f"{PATIENT.format(i)},,,,,0")
        ds.PixelData = pixels.clip(0, 4000).astype(np.int16).tobytes()
        ds.save_as(folder / "stage_2_train_images" / f"{PATIENT.format(i)}.dcm", enforce_file_format=True)
    (folder / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    return folder / "stage_2_train_labels.csv"


@pytest.mark.slow
def test_an_rsna_run_measures_its_explanations_against_the_boxes(tmp_path):
    csv = write_rsna(tmp_path / "rsna")
    config = tiny_svm_experiment("rsna_test", tmp_path, {"source": "rsna_pneumonia", "path": str(csv)},
                                 {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
                                 report={"explain": True})
    run = run_experiment(config)
    record = json.loads((run / "explanations" / "faithfulness.json").read_text())
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    boxed = explained[explained["label"] == "lung_opacity"]
    assert record["localisation"]["images_with_boxes"] == len(boxed) >= 1
    # a 32 x 32 box of a 128 x 128 image covers 1/16 of the 32 px input, whatever the map
    assert boxed["box_fraction"].tolist() == pytest.approx([1 / 16] * len(boxed))
    assert explained.loc[explained["label"] != "lung_opacity", "peak_in_box"].isna().all()
    assert "pointing game" in (run / "report.html").read_text()
    assert main(["explain", "--model", str(run), "--output", str(tmp_path / "maps")]) == 0
    again = json.loads((tmp_path / "maps" / "faithfulness.json").read_text())
    assert again["localisation"]["box_fraction"] == pytest.approx(1 / 16)
