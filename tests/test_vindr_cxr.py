"""VinDr-CXR read from the VinBigData challenge's train.csv, written here in its layout: one row per image,
a finding positive when enough of its three radiologists marked it, their boxes kept for the explanations."""
import json

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, DataConfig, ExperimentConfig
from tfmed.data.boxes import parse_boxes
from tfmed.data.sources import load_source, parse_source_spec
from tfmed.data.sources.vindr_cxr import FINDINGS, HEADER, load_vindr_cxr
from tfmed.data.table import DataSourceError
from tfmed.data.validate import DataValidationError, validate_table
from tfmed.run.experiment import run_experiment

A, B = "9a5094b2563a1ef3ff50dc5c7ff71345", "051132a778e61a86eb147c7c6f564dfe"


def write_csv(folder, lines):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join([HEADER] + lines) + "\n")
    return folder / "train.csv"


def test_vindr_cxr_reads_the_challenges_lines(tmp_path):
    csv = write_csv(tmp_path / "vinbigdata", [
        f"{A},Cardiomegaly,3,R10,691.0,1375.0,1653.0,1831.0",          # line 2
        f"{B},No finding,14,R8,,,,",
        f"{A},Aortic enlargement,0,R9,1264.0,743.0,1611.0,1019.0",
        f"{A},Cardiomegaly,3,R9,700.0,1380.0,1650.0,1820.0",
        f"{A},No finding,14,R11,,,,",
        f"{B},No finding,14,R9,,,,",
        f"{B},No finding,14,R10,,,,"])
    (tmp_path / "vinbigdata" / "train").mkdir()
    table = load_source(parse_source_spec(f"vindr_cxr:{csv}"))
    frame = table.frame.set_index("patient_id")
    assert table.task == "multilabel" and table.classes == list(FINDINGS)
    assert frame["row"].to_dict() == {A: 2, B: 3}  # each image's first line
    assert frame.loc[A, "image"].endswith(f"vinbigdata/train/{A}.dicom")
    labels = pd.DataFrame(table.labels(), columns=table.classes, index=frame.index)
    assert labels.loc[A].to_dict() == {name: int(name in ("Aortic enlargement", "Cardiomegaly")) for name in FINDINGS}
    assert labels.loc[B].sum() == 0
    assert parse_boxes(frame.loc[A, "boxes"]) == [(691, 1375, 962, 456), (1264, 743, 347, 276), (700, 1380, 950, 440)]
    assert parse_boxes(frame.loc[A, "boxes"], label="Aortic enlargement") == [(1264, 743, 347, 276)]  # named
    assert pd.isna(frame.loc[B, "boxes"])
    # a majority of the three: Cardiomegaly (two radiologists) stays, Aortic enlargement (one) does not
    majority = load_vindr_cxr(csv, classes=["Cardiomegaly", "Aortic enlargement"], min_readers=2)
    assert majority.labels().tolist() == [[1, 0], [0, 0]]
    assert parse_boxes(majority.frame["boxes"][0]) == [(691, 1375, 962, 456), (1264, 743, 347, 276),
                                                       (700, 1380, 950, 440)]  # the boxes of the chosen findings
    with pytest.raises(DataSourceError, match=r"data.min_readers is 4, but no image of .*train.csv was read by "
                                              r"more than 3 radiologist\(s\), so no finding could be positive; "
                                              "set it to 1-3"):
        load_vindr_cxr(csv, min_readers=4)  # not a label error for every finding
    only = load_vindr_cxr(csv, classes=["Cardiomegaly"])
    assert len(parse_boxes(only.frame["boxes"][0])) == 2  # Cardiomegaly's two boxes, not the aorta's
    assert validate_table(table).ok is False  # no DICOM file written: each image is reported, not dropped


def test_vindr_cxr_row_problems_name_the_line(tmp_path):
    csv = write_csv(tmp_path, [
        f"{A},Cardiomegaly,15,R1,1,1,5,5",             # line 2: an unknown id
        f"{A},Nodule/Mass,3,R1,1,1,5,5",               # line 3: name and id disagree
        f"{B},Pneumothorax,12,R2,,,,",                 # line 4: no box
        f"{B},Pneumothorax,12,R3,10,10,10,40",         # line 5: no width
        f"{B},No finding,14,R4,1,1,5,5",               # line 6: a box on No finding
        f"{B},No finding,14,R2,,,,",                   # line 7: R2 also marked Pneumothorax
        f"{B},ILD,5,,1,1,5,5",                         # line 8: no radiologist
        f"{B},Pneumothorax,12,R3,10,10,10,40",         # line 9: line 5 again
        ",ILD,5,R1,1,1,5,5"])                          # line 10: no image id
    reported = validate_table(load_vindr_cxr(csv)).problems
    problems = {p.problem for p in reported}
    assert [p.problem for p in reported if p.row == 10] == ["empty image_id"]  # not also "fill the path column"
    assert {"line 2: class_id '15' is not 0-14",
            "line 3: class_name 'Nodule/Mass' is not class 3's ('Cardiomegaly')",
            "line 4: the finding's box has corners (empty), (empty), (empty), (empty), not four numbers",
            "line 5: the finding's box has no area (x 10-10, y 10-40)",
            "line 6: a 'No finding' line with a box",
            "line 7: radiologist R2 gives the image both 'No finding' and a finding",
            "line 8: empty rad_id", "line 9 repeats line 5 exactly"} <= problems


def test_vindr_cxr_settings_are_checked(tmp_path):
    assert DataConfig(source="vindr_cxr", path="train.csv", min_readers=2).min_readers == 2
    with pytest.raises(ConfigError, match="data.min_readers is 0; it must be a whole number >= 1"):
        DataConfig(source="vindr_cxr", path="train.csv", min_readers=0)
    with pytest.raises(ConfigError, match="only data.source vindr_cxr uses it and data.source is 'chexpert'"):
        ExperimentConfig.from_dict({"data": {"source": "chexpert", "path": "t.csv", "min_readers": 2}})
    with pytest.raises(ConfigError, match="data.source vindr_cxr is multilabel"):
        DataConfig(source="vindr_cxr", path="train.csv", task="binary")
    with pytest.raises(ConfigError, match="data.source vindr_cxr reads the publisher's columns itself"):
        DataConfig(source="vindr_cxr", path="train.csv", patient_column="rad_id")


def write_vindr(folder, count=24, aorta=False):
    """A VinBigData-shaped folder of 128 x 128 DICOM images, three radiologists each: every odd image a
    bright 32 x 32 cardiac shadow that two of them boxed, the others found nothing. With ``aorta`` the third
    radiologist of each odd image also boxes an aortic enlargement in its bottom-left corner (16 x 16 px)."""
    rng = np.random.default_rng(0)
    (folder / "train").mkdir(parents=True)
    lines = []
    for i in range(count):
        image_id = f"{i:032x}"
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        pixels = rng.normal(400, 40, (128, 128))
        if i % 2:
            x, y = (int(v) for v in rng.integers(10, 80, 2))
            pixels[y:y + 32, x:x + 32] += 1500
            lines += [f"{image_id},Cardiomegaly,3,R{r},{x}.0,{y}.0,{x + 32}.0,{y + 32}.0" for r in (1, 2)]
            lines.append(f"{image_id},Aortic enlargement,0,R3,0,112,16,128" if aorta else
                         f"{image_id},No finding,14,R3,,,,")
        else:
            lines += [f"{image_id},No finding,14,R{r},,,," for r in (1, 2, 3)]
        ds.PixelData = pixels.clip(0, 4000).astype(np.int16).tobytes()
        ds.save_as(folder / "train" / f"{image_id}.dicom", enforce_file_format=True)
    return write_csv(folder, lines)


@pytest.mark.slow
def test_a_vindr_run_measures_its_explanations_against_the_radiologists_boxes(tmp_path):
    csv = write_vindr(tmp_path / "vinbigdata")
    config = tiny_svm_experiment("vindr_test", tmp_path, {"source": "vindr_cxr", "path": str(csv),
                                                          "classes": ["Cardiomegaly", "Aortic enlargement"]},
                                 {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
                                 report={"explain": True})
    with pytest.raises(DataValidationError, match="label 'Aortic enlargement' has no positive image among the "
                                                  r"usable ones \(0 positive, 24 negative\)"):
        run_experiment(config)  # no image has it: nothing to learn, said before anything is fitted
    config.data.classes = ["Cardiomegaly"]
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 24 and splits["label:Cardiomegaly"].sum() == 12
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    record = json.loads((run / "explanations" / "faithfulness.json").read_text())
    boxed = explained[explained["box_fraction"].notna()]  # a flat map has boxes but no peak_in_box
    assert record["localisation"]["images_with_boxes"] == len(boxed) >= 1
    # two radiologists' identical 32 x 32 boxes of a 128 x 128 image cover 1/16 of the 32 px input
    assert boxed["box_fraction"].tolist() == pytest.approx([1 / 16] * len(boxed))
    # two findings: the maps of Cardiomegaly are measured against its boxes, not the aorta's
    csv = write_vindr(tmp_path / "with_aorta", aorta=True)
    config.data.path, config.data.classes = str(csv), ["Cardiomegaly", "Aortic enlargement"]
    run = run_experiment(config)
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    boxed = explained[explained["box_fraction"].notna()]  # a flat map has boxes but no peak_in_box
    assert set(explained["explained_class"]) == {"Cardiomegaly"} and len(boxed) >= 1
    assert boxed["box_fraction"].tolist() == pytest.approx([1 / 16] * len(boxed))
