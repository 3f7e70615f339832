"""TBX11K read from its folder, written here in the publisher's layout: the official lists, the class folders
and the radiologists' Pascal VOC boxes, scaled to the image files' pixels."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from test_experiment import shorten_fine_tunes
from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, DataConfig
from tfmed.data.boxes import parse_boxes
from tfmed.data.sources import load_source, parse_source_spec
from tfmed.data.sources.tbx11k import load_tbx11k
from tfmed.data.table import DataSourceError
from tfmed.data.validate import validate_table
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment

VOC = """<annotation><folder>tb</folder><filename>{name}.png</filename>
<size><width>{size}</width><height>{size}</height><depth>3</depth></size>{objects}</annotation>"""
EXPERIMENT = Path(__file__).parent.parent / "experiments" / "tbx11k.yaml"
BOX = """<object><name>{kind}</name><difficult>0</difficult>
<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def write_boxes(root, name, boxes, size=512):
    """A Pascal VOC box file as published: corners in the pixels of ``size``."""
    objects = "".join(BOX.format(kind=kind, x0=x0, y0=y0, x1=x1, y1=y1) for kind, x0, y0, x1, y1 in boxes)
    folder = root / "annotations" / "xml"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.xml").write_text(VOC.format(name=name, size=size, objects=objects))


def tbx11k_tree(root, train, val, size=64, seed=0):
    """A TBX11K folder: ``train`` and ``val`` list the images (``tb/tb0001.png``), written as ``size`` px PNGs,
    dark noise, each tuberculosis image with a bright 16 px square that its box file (in 512 px) marks."""
    rng = np.random.default_rng(seed)
    (root / "lists").mkdir(parents=True)
    for name, entries in (("TBX11K_train.txt", train), ("TBX11K_val.txt", val)):
        (root / "lists" / name).write_text("".join(f"{entry}\n" for entry in entries))
    for entry in train + val:
        image = rng.uniform(0, 60, (size, size)).astype(np.uint8)
        if entry.startswith("tb/"):
            x, y = (2 * int(v) for v in rng.integers(2, size // 2 - 10, 2))  # even: whole pixels at half size
            image[y:y + 16, x:x + 16] = 255
            scale = 512 / size
            write_boxes(root, entry[3:-4], [("ActiveTuberculosis", x * scale, y * scale, (x + 16) * scale,
                                             (y + 16) * scale)])
        (root / "imgs" / entry).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "imgs" / entry), image)
    return root


def test_tbx11k_reads_the_official_lists_and_scales_the_boxes(tmp_path):
    root = tbx11k_tree(tmp_path / "TBX11K", ["health/h0001.png", "tb/tb0003.png", "sick/s0004.png"],
                       ["sick/s0002.png", "tb/tb0007.png", "health/h0009.png"])
    # two boxes of tb0007, active and latent, in the 512 px frame of its box file: the image is 64 px
    write_boxes(root, "tb0007", [("ActiveTuberculosis", 64, 128, 192, 256), ("ObsoletePulmonaryTuberculosis",
                                                                              8, 16, 24, 48)])
    (root / "imgs" / "tb" / "tb1199.png").write_bytes((root / "imgs" / "tb" / "tb0003.png").read_bytes())
    with open(root / "lists" / "TBX11K_train.txt", "a") as handle:
        handle.write("tb/tb1199.png\n")  # a tuberculosis image without a box file, as published
    table = load_source(parse_source_spec(f"tbx11k:{root}"))
    frame = table.frame.set_index("patient_id")
    assert table.task == "multiclass" and table.classes == ["healthy", "sick_non_tb", "tuberculosis"]
    assert frame["label"].to_dict() == {"h0001": 0, "tb0003": 2, "s0004": 1, "tb1199": 2, "s0002": 1,
                                        "tb0007": 2, "h0009": 0}
    assert frame["split"].to_dict() == {"h0001": "train", "tb0003": "train", "s0004": "train", "tb1199": "train",
                                        "s0002": "val", "tb0007": "val", "h0009": "val"}
    assert frame.loc["tb0007", "image"] == str(root / "imgs" / "tb" / "tb0007.png")
    assert parse_boxes(frame.loc["tb0007", "boxes"]) == [(8, 16, 16, 16), (1, 2, 2, 4)]  # 512 px -> 64 px
    assert pd.isna(frame.loc["tb1199", "boxes"]) and pd.isna(frame.loc["h0001", "boxes"])
    assert validate_table(table).ok
    # one official split; two classes make a binary task, the third class's images counted, not dropped silently
    val = load_source(parse_source_spec(f"tbx11k:{root}#val"))
    assert val.frame["patient_id"].tolist() == ["s0002", "tb0007", "h0009"] and set(val.frame["split"]) == {"val"}
    binary = load_source(DataConfig(source="tbx11k", path=str(root), classes=["healthy", "tuberculosis"]))
    assert binary.task == "binary" and binary.labels().tolist() == [0, 1, 1, 1, 0]
    assert binary.excluded["problem"].tolist() == ["skipped: 2 images of class sick_non_tb, not in data.classes"]


def test_tbx11k_tuberculosis_by_kind_from_its_boxes(tmp_path):
    root = tbx11k_tree(tmp_path / "TBX11K", ["health/h0001.png", "sick/s0002.png", "tb/tb0003.png", "tb/tb0004.png",
                                             "tb/tb0005.png", "tb/tb0006.png"], ["tb/tb1199.png"])
    write_boxes(root, "tb0004", [("ObsoletePulmonaryTuberculosis", 8, 8, 64, 64)])
    write_boxes(root, "tb0005", [("ActiveTuberculosis", 8, 8, 64, 64), ("ObsoletePulmonaryTuberculosis", 80, 8, 144,
                                                                                                      64)])
    write_boxes(root, "tb0006", [("PulmonaryTuberculosis", 8, 8, 64, 64)])
    (root / "annotations" / "xml" / "tb1199.xml").unlink()  # as published: a tuberculosis image without boxes
    kinds = load_tbx11k(root, classes=["healthy", "active_tuberculosis", "latent_tuberculosis"])
    assert dict(zip(kinds.frame["patient_id"], kinds.labels().tolist())) == {"h0001": 0, "tb0003": 1, "tb0004": 2}
    assert sorted(kinds.excluded["problem"]) == [
        "skipped: 1 image of class sick_non_tb, not in data.classes",
        "skipped: 1 image with boxes of both active and latent tuberculosis",
        "skipped: 2 images without a box of active or latent tuberculosis (no box file, or boxes of uncertain kind)"]
    active = load_tbx11k(root, classes=["healthy", "active_tuberculosis"])
    assert active.task == "binary" and "skipped: 1 image of class latent_tuberculosis, not in data.classes" in \
        active.excluded["problem"].tolist()
    with pytest.raises(DataSourceError, match="data.classes names tuberculosis and its kinds"):
        load_tbx11k(root, classes=["healthy", "tuberculosis", "active_tuberculosis"])


def test_tbx11k_row_problems_name_the_list_line_or_box_file(tmp_path):
    root = tbx11k_tree(tmp_path / "TBX11K", ["health/h0001.png", "tb/tb0003.png", "test/t0001.png",
                                             "tb/tb0003.png"], ["tb/tb0005.png", "health/h0006.png"])
    write_boxes(root, "tb0005", [("Pneumonia", 1, 1, 9, 9), ("ActiveTuberculosis", 10, 10, 10, 40),
                                 ("ActiveTuberculosis", 5, "", 9, 9)])
    write_boxes(root, "h0006", [("ActiveTuberculosis", 1, 1, 9, 9)])
    (root / "annotations" / "xml" / "tb0003.xml").write_text("<annotation><object>")
    xml = root / "annotations" / "xml"
    problems = {p.problem for p in validate_table(load_tbx11k(root)).problems}
    assert {"lists/TBX11K_train.txt line 3: 'test/t0001.png' is not in health/, sick/, tb/",
            "lists/TBX11K_train.txt line 4: tb/tb0003.png is listed again (first in lists/TBX11K_train.txt line 2)",
            f"{xml / 'tb0005.xml'}: box 1 is of kind 'Pneumonia', not one of ActiveTuberculosis, "
            "ObsoletePulmonaryTuberculosis, PulmonaryTuberculosis",
            f"{xml / 'tb0005.xml'}: box 2 has no area (x 10-10, y 10-40)",
            f"{xml / 'tb0005.xml'}: box 3 has corners 5, (empty), 9, 9, not four numbers",
            f"{xml / 'h0006.xml'}: boxes of tuberculosis for an image of another class"} <= problems
    assert any(problem.startswith(f"{xml / 'tb0003.xml'}: not readable XML") for problem in problems)


def test_tbx11k_settings_and_layout_errors(tmp_path, capsys):
    root = tbx11k_tree(tmp_path / "TBX11K", ["health/h0001.png", "tb/tb0002.png"], ["sick/s0003.png"])
    with pytest.raises(DataSourceError, match="#test: not a TBX11K split with labels; write #train or #val"):
        load_source(parse_source_spec(f"tbx11k:{root}#test"))
    with pytest.raises(DataSourceError, match=r"data.classes names 'tb', which TBX11K does not have; choose from "
                                              r"healthy, sick_non_tb, tuberculosis \(the folders health, sick, tb\)"):
        load_source(DataConfig(source="tbx11k", path=str(root), classes=["tb", "healthy"]))
    with pytest.raises(DataSourceError, match="data.classes lists only 'healthy'; a classifier needs two or three"):
        load_source(DataConfig(source="tbx11k", path=str(root), classes=["healthy"]))
    with pytest.raises(DataSourceError, match="imgs/lists/TBX11K_train.txt: not found; data.path must be the TBX11K "
                                              "folder as published, .* or Kaggle's TBX11K Simplified folder, with "
                                              "data.csv and images/"):
        load_tbx11k(root / "imgs")
    with pytest.raises(ConfigError, match="data.source tbx11k is binary or multiclass by the classes"):
        DataConfig(source="tbx11k", path=str(root), task="multiclass")
    with pytest.raises(ConfigError, match="data.source tbx11k reads the publisher's folder that data.path names"):
        DataConfig(source="tbx11k", path=str(root), root="elsewhere")
    with pytest.raises(ConfigError, match="data.source tbx11k reads the publisher's columns itself"):
        DataConfig(source="tbx11k", path=str(root), filename_label_suffix=True)
    assert main(["validate", f"tbx11k:{root}"]) == 0
    assert "classes ['healthy', 'sick_non_tb', 'tuberculosis']" in capsys.readouterr().out



def test_tbx11k_refuses_a_list_without_rows_and_says_where_a_missing_image_is_read(tmp_path):
    root = tbx11k_tree(tmp_path / "TBX11K", ["health/h0001.png", "sick/s0002.png"], ["health/h0003.png"])
    (root / "imgs" / "sick" / "s0002.png").unlink()
    text = validate_table(load_tbx11k(root), check_images=False).format()
    assert (f"s0002.png: file not found. Fix: TBX11K's images are read from {root}/imgs/ by the names in lists/ "
            "(data.path is the TBX11K folder)") in text
    (root / "lists" / "TBX11K_val.txt").write_text("\n")
    with pytest.raises(DataSourceError, match=r"lists/TBX11K_val.txt: no data rows \(no image listed\); restore the "
                                              "publisher's list"):
        load_tbx11k(root)
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    (kaggle / "data.csv").write_text(KAGGLE_COLUMNS)
    with pytest.raises(DataSourceError, match=r"data.csv: no data rows \(only the header, line 1\); restore the file"):
        load_tbx11k(kaggle)


def test_tbx11k_rows_are_numbered_by_listed_line_whatever_is_kept(tmp_path):
    # the train list's lines first, then the val list's: a missing image's row points at its line
    root = tbx11k_tree(tmp_path / "TBX11K", ["health/h0001.png", "sick/s0002.png"],
                       ["sick/s0003.png", "health/h0004.png"])
    rows = {Path(image).name: row for image, row in load_tbx11k(root).frame[["image", "row"]].values}
    assert rows == {"h0001.png": 1, "s0002.png": 2, "s0003.png": 3, "h0004.png": 4}
    healthy_or_tb = load_tbx11k(root, classes=["healthy", "tuberculosis"]).frame
    assert healthy_or_tb["row"].tolist() == [1, 4]
    assert load_tbx11k(root, split="val").frame["row"].tolist() == [3, 4]


KAGGLE_COLUMNS = "fname,image_height,image_width,source,bbox,target,tb_type,image_type\n"


def kaggle_tree(root, lines, size=64):
    """Kaggle's TBX11K Simplified folder: ``lines`` are data.csv's (fname, source, bbox, tb_type, image_type), one
    per box, in the 512 px frame of its image_width and image_height; each named image written as a ``size`` px PNG."""
    (root / "images").mkdir(parents=True)
    text = KAGGLE_COLUMNS
    for fname, source, bbox, tb_type, image_type in lines:
        target = "tb" if image_type == "tb" else "no_tb"
        text += f'{fname},512,512,{source},"{bbox}",{target},{tb_type},{image_type}\n'
        cv2.imwrite(str(root / "images" / fname), np.full((size, size), 40, np.uint8))
    (root / "data.csv").write_text(text)
    return root


def test_tbx11k_reads_kaggles_simplified_copy_one_row_per_image_with_all_its_boxes(tmp_path, capsys):
    box = "{{'xmin': {}, 'ymin': {}, 'width': {}, 'height': {}}}".format
    root = kaggle_tree(tmp_path / "tbx11k-simplified", [
        ("h0001.png", "train", "none", "none", "healthy"),
        ("tb0003.png", "train", box(64, 128, 128, 128), "active_tb", "tb"),
        ("s0004.png", "val", "none", "none", "sick_but_no_tb"),
        ("tb0003.png", "train", box(8.0, 16.0, 16.0, 32.0), "latent_tb", "tb"),  # its second box: same image
        ("tb0007.png", "val", box(0, 0, 256, 256), "latent_tb", "tb"),
        ("tb1199.png", "train", "none", "none", "tb")])  # a tuberculosis image without a box, kept
    table = load_source(parse_source_spec(f"tbx11k:{root}"))
    frame = table.frame.set_index("patient_id")
    assert table.classes == ["healthy", "sick_non_tb", "tuberculosis"] and table.task == "multiclass"
    assert frame["label"].to_dict() == {"h0001": 0, "tb0003": 2, "s0004": 1, "tb0007": 2, "tb1199": 2}
    assert frame["split"].to_dict() == {"h0001": "train", "tb0003": "train", "s0004": "val", "tb0007": "val",
                                        "tb1199": "train"}
    assert frame.loc["tb0003", "image"] == str(root / "images" / "tb0003.png")
    assert parse_boxes(frame.loc["tb0003", "boxes"]) == [(8, 16, 16, 16), (1, 2, 2, 4)]  # 512 px -> 64 px
    assert pd.isna(frame.loc["tb1199", "boxes"]) and pd.isna(frame.loc["h0001", "boxes"])
    assert validate_table(table).ok
    assert load_tbx11k(root, split="val").frame["patient_id"].tolist() == ["s0004", "tb0007"]
    # the kinds, from the boxes: tb0003 has both (left out and counted), tb1199 none
    kinds = load_tbx11k(root, classes=["healthy", "active_tuberculosis", "latent_tuberculosis"])
    assert dict(zip(kinds.frame["patient_id"], kinds.labels().tolist())) == {"h0001": 0, "tb0007": 2}
    assert sorted(kinds.excluded["problem"]) == [
        "skipped: 1 image of class sick_non_tb, not in data.classes",
        "skipped: 1 image with boxes of both active and latent tuberculosis",
        "skipped: 1 image without a box of active or latent tuberculosis (no box file, or boxes of uncertain kind)"]
    assert set(kinds.excluded["image"]) == {str(root / "data.csv")}
    with pytest.raises(DataSourceError, match=r"data.csv: no image of the classes \['sick_non_tb', "
                                              r"'latent_tuberculosis'\] in #train"):
        load_tbx11k(root, classes=["sick_non_tb", "latent_tuberculosis"], split="train")
    assert main(["validate", f"tbx11k:{root}"]) == 0
    assert "classes ['healthy', 'sick_non_tb', 'tuberculosis']" in capsys.readouterr().out


def test_tbx11k_simplified_row_problems_name_the_line_of_data_csv(tmp_path):
    root = kaggle_tree(tmp_path / "tbx11k-simplified", [
        ("h0001.png", "train", "none", "none", "healty"),
        ("h0002.png", "test", "none", "none", "healthy"),
        ("tb0003.png", "train", "{'xmin': 1, 'ymin': 2}", "active_tb", "tb"),
        ("tb0004.png", "train", "{'xmin': 1, 'ymin': 2, 'width': 0, 'height': 5}", "active_tb", "tb"),
        ("tb0005.png", "val", "{'xmin': 1, 'ymin': 2, 'width': 3, 'height': 5}", "obsolete_tb", "tb"),
        ("tb0005.png", "train", "none", "none", "sick_but_no_tb"),
        ("s0006.png", "val", "{'xmin': 1, 'ymin': 2, 'width': 3, 'height': 5}", "active_tb", "sick_but_no_tb")])
    problems = {p.problem for p in validate_table(load_tbx11k(root)).problems}
    assert {"data.csv line 2: image_type 'healty' is not one of healthy, sick_but_no_tb, tb",
            "data.csv line 3: source 'test' is not one of train, val",
            "data.csv line 4: bbox \"{'xmin': 1, 'ymin': 2}\" is not {'xmin': ..., 'ymin': ..., 'width': ..., "
            "'height': ...}",
            "data.csv line 5: bbox \"{'xmin': 1, 'ymin': 2, 'width': 0, 'height': 5}\" has no area (x 1-1, y 2-7)",
            "data.csv line 6: tb_type 'obsolete_tb' of a box is not one of active_tb, latent_tb",
            "data.csv line 7: tb0005.png has image_type 'sick_but_no_tb', but data.csv line 6 says 'tb'",
            "data.csv line 7: tb0005.png has source 'train', but data.csv line 6 says 'val'",
            "data.csv line 8: boxes of tuberculosis for s0006.png, an image of type sick_but_no_tb"} <= problems
    (root / "data.csv").write_text("fname,image_type\nh0001.png,healthy\n")
    with pytest.raises(DataSourceError, match="data.csv: no column image_width, image_height, source, bbox, "
                                              "tb_type; data.path must be the TBX11K folder as published"):
        load_tbx11k(root)

@pytest.mark.slow
def test_a_tbx11k_run_measures_its_explanations_against_the_radiologists_boxes(tmp_path):
    train = [f"{folder}/{prefix}{i:04d}.png" for i in range(12) for folder, prefix in (("health", "h"), ("tb", "tb"))]
    val = [f"{folder}/{prefix}{i:04d}.png" for i in range(12, 18) for folder, prefix in (("health", "h"),
                                                                                         ("tb", "tb"))]
    root = tbx11k_tree(tmp_path / "TBX11K", train, val)
    config = tiny_svm_experiment("tbx11k_test", tmp_path, {"source": "tbx11k", "path": str(root),
                                                           "classes": ["healthy", "tuberculosis"]},
                                 {"method": "predefined", "test_fraction": 0.25}, report={"explain": True})
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert (splits["split"] == "val").sum() == 12 and (splits["split"] == "test").sum() == 6  # carved from train
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    record = json.loads((run / "explanations" / "faithfulness.json").read_text())
    boxed = explained[explained["box_fraction"].notna()]  # a flat map has boxes but no peak_in_box
    assert record["localisation"]["images_with_boxes"] == len(boxed) >= 1
    # a 16 px box of a 64 px image covers 1/16 of the 32 px input
    assert boxed["box_fraction"].tolist() == pytest.approx([1 / 16] * len(boxed))


@pytest.mark.slow
def test_the_tbx11k_experiment_answers_tuberculosis_or_not_and_is_tested_on_the_official_val_split(tmp_path):
    from tfmed.config import ExperimentConfig

    config = ExperimentConfig.from_yaml(EXPERIMENT)
    folders = (("health", "h"), ("sick", "s"), ("tb", "tb"))
    root = tbx11k_tree(tmp_path / "TBX11K", [f"{f}/{p}{i:04d}.png" for i in range(10) for f, p in folders],
                       [f"{f}/{p}{i:04d}.png" for i in range(10, 14) for f, p in folders])
    config.data.path = f"{root}#train"
    config.runs_dir, config.preprocess.image_size, config.model.weights = str(tmp_path / "runs"), 32, None
    config.split.test_fraction = config.split.val_fraction = 0.2
    shorten_fine_tunes(config, epochs=1)
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 30 and set(splits["split"]) == {"train", "val", "test"}  # the official train list only
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["tuberculosis", "sick_non_tb", "healthy"]
    assert metrics["coarse"]["classes"] == ["non_tb", "tb"] and set(metrics["coarse"]["splits"]) == {"val", "test"}
    assert set(metrics["members"]["test"]) == {"lite0_middle_late", "lite2_middle", "lite0_finetune"}
    assert (run / "explanations" / "explanations.csv").is_file()
    assert " of class tuberculosis)" in (run / "report.html").read_text()  # the first class, as classes: orders it
    # the publisher's validation split, never used for a choice, scored at the run's coarse thresholds
    assert main(["evaluate", "--model", str(run), "--data", f"tbx11k:{root}#val",
                 "--output", str(tmp_path / "official_val")]) == 0
    official = json.loads((tmp_path / "official_val" / "metrics.json").read_text())
    assert official["counts"]["test"] == {"tuberculosis": 4, "sick_non_tb": 4, "healthy": 4}
    assert official["coarse"]["thresholds"] == metrics["coarse"]["thresholds"]
    assert set(official["coarse"]["splits"]["test"]) == set(metrics["coarse"]["thresholds"])


def test_tbx11k_boxes_are_scaled_per_axis_to_a_non_square_image(tmp_path):
    """Boxes are scaled from their 512 x 512 frame to the image file's size per axis: x and width by the
    width ratio, y and height by the height ratio. Square test images hid using one ratio for both axes."""
    root = tmp_path / "TBX11K"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "TBX11K_train.txt").write_text("tb/tb0001.png\nhealth/h0001.png\n")
    (root / "lists" / "TBX11K_val.txt").write_text("tb/tb0002.png\nhealth/h0002.png\n")
    for entry in ("tb/tb0001.png", "health/h0001.png", "tb/tb0002.png", "health/h0002.png"):
        (root / "imgs" / entry).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "imgs" / entry), np.zeros((32, 64), np.uint8))  # 64 wide, 32 high
    for name in ("tb0001", "tb0002"):
        write_boxes(root, name, [("ActiveTuberculosis", 64, 128, 192, 384)])  # x 64, y 128, w 128, h 256
    frame = load_source(parse_source_spec(f"tbx11k:{root}")).frame.set_index("patient_id")
    x_scale, y_scale = 64 / 512, 32 / 512
    assert parse_boxes(frame.loc["tb0001", "boxes"]) == [(64 * x_scale, 128 * y_scale, 128 * x_scale,
                                                          256 * y_scale)]  # (8, 8, 16, 16)


def test_tbx11k_simplified_boxes_are_scaled_per_axis_to_a_non_square_image(tmp_path):
    """Kaggle's data.csv boxes (in image_width x image_height = 512 x 512) are scaled per axis to the image
    file: width by the width ratio, height by the height ratio, not one for the other."""
    box = "{{'xmin': {}, 'ymin': {}, 'width': {}, 'height': {}}}".format
    root = kaggle_tree(tmp_path / "tbx11k-simplified", [
        ("h0001.png", "train", "none", "none", "healthy"),
        ("tb0003.png", "train", box(64, 128, 128, 256), "active_tb", "tb"),
        ("h0002.png", "val", "none", "none", "healthy"),
        ("tb0007.png", "val", box(0, 0, 256, 256), "latent_tb", "tb")])
    cv2.imwrite(str(root / "images" / "tb0003.png"), np.full((32, 64), 40, np.uint8))  # 64 wide, 32 high
    frame = load_source(parse_source_spec(f"tbx11k:{root}")).frame.set_index("patient_id")
    x_scale, y_scale = 64 / 512, 32 / 512
    assert parse_boxes(frame.loc["tb0003", "boxes"]) == [(64 * x_scale, 128 * y_scale, 128 * x_scale,
                                                          256 * y_scale)]  # (8, 8, 16, 16)
