"""MIMIC-CXR-JPG read from the publisher's label, metadata and split files, written here in their layout
(gzipped, columns in the publisher's order), and a CheXpert-style run scored on its official test split."""
import gzip
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, DataConfig, UNKNOWN_LABEL
from tfmed.data.sources import DataSourceError, load_source, parse_source_spec
from tfmed.data.sources.chexpert import OBSERVATIONS
from tfmed.data.sources.mimic_cxr import load_mimic_cxr
from tfmed.data.validate import validate_table
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment

# the publisher's column orders
LABEL_COLUMNS = ("Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,Lung Lesion,"
                 "Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
                 "Support Devices").split(",")
METADATA_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                   "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                   "PatientOrientationCodeSequence_CodeMeaning")


def write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def label_line(subject, study, **codes):
    """A line of mimic-cxr-2.0.0-chexpert.csv: codes by observation (spaces as underscores), blank otherwise."""
    codes = {name.replace("_", " "): code for name, code in codes.items()}
    return ",".join([str(subject), str(study)] + [codes.get(name, "") for name in LABEL_COLUMNS])


def metadata_line(dicom, subject, study, view):
    return f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},3056,2544,21800506,213014.531,CHEST (PA AND LAT),"\
           f"postero-anterior,Erect"


def mimic_tree(folder, images, labels, splits=True, absent_groups=(), pixels=None):
    """MIMIC-CXR-JPG's three CSV files (gzipped) and files/pNN/... JPEGs.

    ``images``: (dicom_id, subject, study, view, split); ``labels``: label lines; JPEGs are written for every
    image whose files/pNN folder is not in ``absent_groups``, ``pixels(dicom_id)`` giving the image."""
    folder.mkdir(parents=True, exist_ok=True)
    write_gz(folder / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id,study_id," + ",".join(LABEL_COLUMNS)] + labels)
    write_gz(folder / "mimic-cxr-2.0.0-metadata.csv.gz",
             [METADATA_HEADER] + [metadata_line(d, subject, study, view) for d, subject, study, view, _ in images])
    if splits:
        write_gz(folder / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id,study_id,subject_id,split"]
                 + [f"{d},{study},{subject},{split}" for d, subject, study, _, split in images])
    for dicom, subject, study, _, _ in images:
        group = f"p{str(subject)[:2]}"
        if group in absent_groups:
            continue
        path = folder / "files" / group / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), pixels(dicom) if pixels else np.full((12, 10), 90, np.uint8))
    return folder / "mimic-cxr-2.0.0-chexpert.csv.gz"


IMAGES = [  # dicom_id, subject, study, ViewPosition, split
    ("d1", 10000032, 50000001, "PA", "train"),
    ("d2", 10000032, 50000001, "LATERAL", "train"),
    ("d3", 10000764, 50000002, "AP", "validate"),
    ("d4", 11000011, 50000003, "PA", "test"),
    ("d5", 11000011, 50000003, "", "test"),
    ("d6", 11000011, 50000004, "PA", "test"),   # a study without a label line
    ("d7", 12000123, 50000005, "PA", "train"),  # in files/p12, not downloaded
]
LABELS = [label_line(10000032, 50000001, Edema="1.0", Atelectasis="-1.0"),
          label_line(10000764, 50000002, No_Finding="1.0"),
          label_line(11000011, 50000003, Pleural_Effusion="1.0", Cardiomegaly="0.0"),
          label_line(12000123, 50000005, Pneumothorax="1.0")]


@pytest.fixture
def mimic(tmp_path):
    return mimic_tree(tmp_path / "mimic-cxr-jpg", IMAGES, LABELS, absent_groups=("p12",))


def by_image(table):
    return table.frame.set_index(table.frame["image"].map(lambda p: p.rsplit("/", 1)[1].removesuffix(".jpg")))


def test_mimic_cxr_reads_the_publishers_files_unchanged(mimic):
    table = load_source(parse_source_spec(f"mimic_cxr:{mimic}"))
    frame = by_image(table)
    assert table.task == "multilabel" and table.classes == list(OBSERVATIONS)  # CheXpert's order, not the file's
    assert list(frame.index) == ["d1", "d2", "d3", "d4", "d5"]
    assert frame["row"].tolist() == [2, 3, 4, 5, 6]  # lines of the metadata file
    assert frame["split"].tolist() == ["train", "train", "val", "test", "test"]
    assert frame["patient_id"].tolist() == ["10000032", "10000032", "10000764", "11000011", "11000011"]
    assert frame.loc["d2", "view"] == "LATERAL" and pd.isna(frame.loc["d5", "view"])
    assert frame.loc["d4", "image"].endswith("mimic-cxr-jpg/files/p11/p11000011/s50000003/d4.jpg")
    labels = pd.DataFrame(table.labels(), columns=table.classes, index=frame.index)
    assert labels.loc["d1", "Edema"] == 1 and labels.loc["d1", "Atelectasis"] == 0  # U-Zeros by default
    assert labels.loc["d3", "No Finding"] == 1 and labels.loc["d3"].sum() == 1
    assert (labels.loc["d4"] == labels.loc["d5"]).all() and labels.loc["d4", "Pleural Effusion"] == 1
    # what is left out is counted, not dropped silently
    assert sorted(table.excluded["problem"]) == [
        "skipped: 1 image in files/p12, which is not under " + str(mimic.parent) + " (not downloaded)",
        "skipped: 1 image of studies without a line in mimic-cxr-2.0.0-chexpert.csv.gz"]
    report = validate_table(table, need_patient_ids=True)
    assert report.ok and len(report.warnings) == 2


def test_mimic_cxr_reads_the_negbio_label_file_gzipped_or_not(mimic, tmp_path):
    """The publisher's NegBio labels (same columns as the CheXpert labeller's file) are read alike, beside the
    same metadata and split files, from the .csv.gz as published or unpacked."""
    expected = load_source(parse_source_spec(f"mimic_cxr:{mimic}"))
    negbio = mimic.with_name("mimic-cxr-2.0.0-negbio.csv.gz")
    mimic.rename(negbio)
    unpacked = negbio.with_suffix("")
    unpacked.write_bytes(gzip.decompress(negbio.read_bytes()))
    for path in (negbio, unpacked):
        table = load_source(parse_source_spec(f"mimic_cxr:{path}"))
        pd.testing.assert_frame_equal(table.frame, expected.frame)
        assert f"studies without a line in {path.name}" in " ".join(table.excluded["problem"])


def test_mimic_cxr_keeps_one_official_split(mimic, tmp_path):
    table = load_source(parse_source_spec(f"mimic_cxr:{mimic}#test"))
    assert list(by_image(table).index) == ["d4", "d5"] and set(table.frame["split"]) == {"test"}
    assert sorted(table.excluded["problem"]) == [
        "skipped: 1 image of studies without a line in mimic-cxr-2.0.0-chexpert.csv.gz",
        "skipped: 1 image of the validate split, not asked for (#test)",
        "skipped: 3 images of the train split, not asked for (#test)"]
    assert list(by_image(load_mimic_cxr(mimic, split="validate")).index) == ["d3"]
    with pytest.raises(DataSourceError, match=r"#valid: not a MIMIC-CXR split; write #train, #validate or #test"):
        load_mimic_cxr(mimic, split="valid")
    # without the split file: no split, and no #SPLIT
    bare = mimic_tree(tmp_path / "bare", IMAGES[:5], LABELS, splits=False)
    assert load_mimic_cxr(bare).frame["split"].isna().all()
    with pytest.raises(DataSourceError, match=r"no mimic-cxr-2.0.0-split.csv.gz \(nor mimic-cxr-2.0.0-split.csv\) "
                                              r"beside mimic-cxr-2.0.0-chexpert.csv.gz"):
        load_mimic_cxr(bare, split="test")


def test_mimic_cxr_frontal_only_and_uncertain_policies(mimic):
    config = DataConfig(source="mimic_cxr", path=str(mimic), frontal_only=True,
                        classes=["Atelectasis", "Edema", "Pleural Effusion"], uncertain={"Atelectasis": "ignore"})
    table = load_source(config)
    frame = by_image(table)
    assert list(frame.index) == ["d1", "d3", "d4"]
    assert table.labels().tolist() == [[UNKNOWN_LABEL, 1, 0], [0, 0, 0], [0, 0, 1]]
    skipped = [p for p in table.excluded["problem"] if "ViewPosition" in p]
    assert sorted(skipped) == [
        "skipped: 1 image with ViewPosition (empty), not PA or AP (data.frontal_only is true)",
        "skipped: 1 image with ViewPosition LATERAL, not PA or AP (data.frontal_only is true)"]
    ones = load_mimic_cxr(mimic, classes=["Atelectasis"], uncertain="ones")
    assert by_image(ones).index[ones.labels()[:, 0] == 1].tolist() == ["d1", "d2"]


def test_mimic_cxr_row_problems_name_the_file_and_line(tmp_path):
    images = IMAGES[:5] + [("d1", 10000032, 50000001, "PA", "train"), ("d8", 10000764, 50000002, "PA", "test"),
                           ("d9", "", 50000002, "PA", "test")]
    labels = LABELS[:2] + [label_line(11000011, 50000003, Edema="2.0"), label_line(10000764, 50000002)]
    csv = mimic_tree(tmp_path / "m", images, labels)
    split = tmp_path / "m" / "mimic-cxr-2.0.0-split.csv.gz"  # d8 in no line of the split file
    write_gz(split, [line for line in gzip.open(split, "rt").read().splitlines() if not line.startswith("d8,")])
    (tmp_path / "m" / "files" / "p10" / "p10000764" / "s50000002" / "d3.jpg").unlink()
    report = validate_table(load_mimic_cxr(csv), need_patient_ids=True)
    problems = {(p.row, p.problem) for p in report.problems}
    assert (7, "d1 is listed twice in mimic-cxr-2.0.0-metadata.csv.gz (lines 2 and 7)") in problems
    assert (8, "d8 is in no line of mimic-cxr-2.0.0-split.csv.gz") in problems
    assert (5, "unknown code '2.0' in column 'Edema' (mimic-cxr-2.0.0-chexpert.csv.gz line 4)") in problems
    assert (4, "study 50000002 has two lines in mimic-cxr-2.0.0-chexpert.csv.gz (lines 3 and 5)") in problems
    assert (9, "dicom_id 'd9', subject_id '', study_id '50000002': an image needs all three (the subject a "
               "number)") in problems
    assert any(p.row == 4 and "not found" in p.problem and p.image.endswith("d3.jpg") for p in report.problems)


def test_mimic_cxr_fixes_name_its_split_file_and_where_images_are_read(tmp_path):
    from tfmed.data.splits import LeakageError, check_no_leakage

    images = IMAGES[:1] + [("d2", 10000032, 50000001, "PA", "test")] + IMAGES[2:4]  # subject 10000032 in two splits
    csv = mimic_tree(tmp_path / "m", images, LABELS)
    (tmp_path / "m" / "files" / "p10" / "p10000764" / "s50000002" / "d3.jpg").unlink()
    table = load_mimic_cxr(csv)
    with pytest.raises(LeakageError, match=r"10000032 \(test, train\)\. Each patient's images must be in one split: "
                                           r"restore mimic-cxr-2.0.0-split.csv.gz as published \(it keeps each "
                                           "subject_id in one split\\)"):
        check_no_leakage(table)
    text = validate_table(table, check_images=False).format()
    assert (f"d3.jpg: file not found. Fix: MIMIC-CXR-JPG's images are read as files/pNN/pSUBJECT/sSTUDY/DICOM_ID.jpg "
            f"under {tmp_path}/m (data.root;") in text


def test_mimic_cxr_files_and_settings_are_checked(mimic, tmp_path):
    with pytest.raises(DataSourceError, match=r"no files/ folder .*set data.root to the folder that holds it"):
        load_mimic_cxr(mimic, root=tmp_path)
    (mimic.parent / "mimic-cxr-2.0.0-metadata.csv.gz").rename(tmp_path / "elsewhere.csv.gz")
    with pytest.raises(DataSourceError, match=r"no mimic-cxr-2.0.0-metadata.csv.gz \(nor mimic-cxr-2.0.0-metadata"):
        load_mimic_cxr(mimic)
    broken = tmp_path / "broken" / "mimic-cxr-2.0.0-chexpert.csv.gz"
    broken.parent.mkdir()
    broken.write_text("subject_id,study_id\n")  # named .gz, not gzipped
    with pytest.raises(DataSourceError, match=r"chexpert.csv.gz: not readable \(Not a gzipped file"):
        load_mimic_cxr(broken)
    with pytest.raises(DataSourceError, match=r"'Lung Nodule', which MIMIC-CXR does not have"):
        load_mimic_cxr(mimic, classes=["Lung Nodule"])
    with pytest.raises(ConfigError, match="data.source mimic_cxr reads the publisher's columns itself"):
        DataConfig(source="mimic_cxr", path=str(mimic), label_columns=["Edema"])
    with pytest.raises(ConfigError, match="data.source mimic_cxr is multilabel"):
        DataConfig(source="mimic_cxr", path=str(mimic), task="binary")


def test_the_documented_command_scoring_a_chexpert_run_on_mimic_turns_its_subgroups_off():
    """experiments/chexpert.yaml reports subgroups by sex and age, which MIMIC-CXR-JPG does not record, so that
    evaluate refuses them: the README's and the experiment's command for MIMIC's test split say --subgroups ""."""
    import re
    import shlex
    from pathlib import Path

    from tfmed.config import ExperimentConfig
    from tfmed.run.cli import _parser

    top = Path(__file__).parent.parent
    experiment = ExperimentConfig.from_yaml(top / "experiments" / "chexpert.yaml")
    assert {"sex", "age"} & set(experiment.evaluation.subgroups)
    readme = (top / "README.md").read_text()
    documented = re.findall(r"`(tfmed evaluate --model RUN --data mimic_cxr:[^`]*#test[^`]*)`", readme)
    described = re.findall(r"(tfmed evaluate --model RUN --data\s+mimic_cxr:\S+#test(?: --subgroups \S+)?)",
                           experiment.description)
    assert documented and described
    for command in documented + described:
        args = _parser().parse_args(shlex.split(command)[1:])
        assert args.data.startswith("mimic_cxr:") and args.subgroups == [], command


@pytest.mark.slow
def test_a_model_is_scored_on_the_official_test_split(tmp_path):
    """Train on the official train split (val from validate) and score the test split with tfmed evaluate."""
    rng = np.random.default_rng(0)
    images, labels, edema = [], [], {}
    for i in range(48):
        subject, study, split = 10000000 + i, 50000000 + i, ("train", "validate", "test")[i % 3]
        edema[f"d{i}"] = i % 2
        images.append((f"d{i}", subject, study, "PA", split))
        labels.append(label_line(subject, study, Edema=f"{i % 2}.0", Cardiomegaly=f"{i // 2 % 2}.0"))

    def pixels(dicom):  # Edema shows as a bright block; Cardiomegaly does not show
        image = rng.integers(0, 60, (32, 32), dtype=np.uint8)
        image[8:24, 8:24] += 150 * edema[dicom]
        return image

    images.append(("lateral", 10000002, 50000002, "LATERAL", "test"))  # beside d2 of the test split
    edema["lateral"] = 0  # its study's label
    csv = mimic_tree(tmp_path / "mimic", images, labels, pixels=pixels)
    config = tiny_svm_experiment("mimic_test", tmp_path, {"source": "mimic_cxr", "path": str(csv),
                                                          "classes": ["Edema", "Cardiomegaly"]},
                                 {"method": "predefined", "test_fraction": 0.0})
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert splits.groupby("split").size().to_dict() == {"test": 17, "train": 16, "val": 16}
    assert main(["evaluate", "--model", str(run), "--data", f"mimic_cxr:{csv}#test"]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    result = json.loads((evaluation / "metrics.json").read_text())
    assert result["images"]["test"] == 17
    assert result["splits"]["test"]["youden"]["per_label"]["Edema"]["roc_auc"] > 0.9  # the bright block is easy
    assert sorted(pd.read_csv(evaluation / "excluded_rows.csv")["problem"]) == [
        "skipped: 16 images of the train split, not asked for (#test)",
        "skipped: 16 images of the validate split, not asked for (#test)"]
    # settings a source string cannot give come from a YAML file's data section
    frontal = tmp_path / "mimic_test_frontal.yaml"
    frontal.write_text(f"data:\n  source: mimic_cxr\n  path: {csv}#test\n  frontal_only: true\n")
    assert main(["evaluate", "--model", str(run), "--data", str(frontal)]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    assert json.loads((evaluation / "metrics.json").read_text())["images"]["test"] == 16
    assert "skipped: 1 image with ViewPosition LATERAL, not PA or AP (data.frontal_only is true)" in set(
        pd.read_csv(evaluation / "excluded_rows.csv")["problem"])
    assert f"mimic_cxr:{csv}#test (from {frontal})" in (evaluation / "report.html").read_text()
    # a source that holds its path (source: mimic_cxr:PATH) is named once, not with ':None' after it
    frontal.write_text(f"data:\n  source: mimic_cxr:{csv}#test\n  frontal_only: true\n")
    assert main(["evaluate", "--model", str(run), "--data", str(frontal)]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    assert f"mimic_cxr:{csv}#test (from {frontal})" in (evaluation / "report.html").read_text()
    assert json.loads((evaluation / "metrics.json").read_text())["images"]["test"] == 16
