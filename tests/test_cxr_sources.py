"""ChestX-ray14 and CheXpert read from the publishers' files, written here in their exact formats."""
import re

import cv2
import numpy as np
import pytest

from tfmed.config import ConfigError, DataConfig, ExperimentConfig, PreprocessConfig, SplitConfig
from tfmed.data.pipeline import make_dataset
from tfmed.data.sources import SOURCES, DataSourceError, load_source, parse_source_spec
from tfmed.data.sources.chestxray14 import FINDINGS, load_chestxray14
from tfmed.data.sources.chexpert import COMPETITION_LABELS, OBSERVATIONS, load_chexpert
from tfmed.data.splits import ensure_splits
from tfmed.data.validate import validate_table
from tfmed.progress import configure_logging

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")


def write_image(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def grey(value=100, dtype=np.uint8):
    return np.full((12, 10), value, dtype=dtype)


def nih_line(name, findings, follow_up, patient, view, age=58, sex="M"):
    return f"{name},{findings},{follow_up},{patient},{age},{sex},{view},2682,2749,0.143,0.143,"


def labels_of(*findings):
    return [int(name in findings) for name in FINDINGS]


# ---------------------------------------------------------------- ChestX-ray14
@pytest.fixture
def nih(tmp_path):
    """The download's layout: images_00N/images/ sub-folders, the CSV and both list files on top."""
    rows = [nih_line("00000001_000.png", "Cardiomegaly", 0, 1, "PA"),
            nih_line("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, "PA"),
            nih_line("00000002_000.png", "No Finding", 0, 2, "AP"),
            nih_line("00000003_000.png", "Hernia|Infiltration|Pleural_Thickening", 0, 3, "PA"),
            nih_line("00000004_000.png", "Atelectasis|Effusion|Mass|Nodule", 0, 4, "AP"),
            nih_line("00000005_000.png", "Pneumonia|Pneumothorax|Consolidation|Edema|Fibrosis", 0, 5, "PA"),
            nih_line("00000006_000.png", "No Finding", 0, 6, "PA")]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join([NIH_HEADER] + rows) + "\n")
    write_image(tmp_path / "images_001/images/00000001_000.png", grey(10))
    write_image(tmp_path / "images_001/images/00000001_001.png", grey(20))
    rgba = np.dstack([grey(30), grey(40), grey(50), grey(255)])
    write_image(tmp_path / "images_001/images/00000002_000.png", rgba)
    ramp = np.linspace(0, 60000, 120).reshape(12, 10).astype(np.uint16)
    write_image(tmp_path / "images_002/images/00000003_000.png", ramp)
    for i in (4, 5, 6):
        write_image(tmp_path / f"images_002/images/0000000{i}_000.png", grey(60 + i))
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000005_000.png\n")
    (tmp_path / "train_val_list.txt").write_text(
        "00000001_000.png\n00000001_001.png\n00000003_000.png\n00000004_000.png\n00000006_000.png\n")
    return tmp_path / "Data_Entry_2017.csv"


def test_chestxray14_reads_the_publishers_csv_unchanged(nih):
    table = load_source(parse_source_spec("chestxray14:" + str(nih)))
    frame = table.frame
    assert table.task == "multilabel" and table.classes == list(FINDINGS) and table.source == str(nih)
    assert table.labels().tolist() == [
        labels_of("Cardiomegaly"), labels_of("Cardiomegaly", "Emphysema"), labels_of(),
        labels_of("Hernia", "Infiltration", "Pleural_Thickening"),
        labels_of("Atelectasis", "Effusion", "Mass", "Nodule"),
        labels_of("Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Fibrosis"), labels_of()]
    assert frame["row"].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert frame["patient_id"].tolist() == ["1", "1", "2", "3", "4", "5", "6"]
    assert frame["view"].tolist() == ["PA", "PA", "AP", "PA", "AP", "PA", "PA"]
    assert frame["split"].tolist() == ["train", "train", "test", "train", "train", "test", "train"]
    assert frame["sex"].tolist() == ["male"] * 7 and frame["age"].tolist() == [58.0] * 7
    # found in their sub-folders (no images/ next to the CSV: the CSV's folder is searched)
    assert frame["image"].tolist()[2] == str(nih.parent / "images_001/images/00000002_000.png")
    assert frame["image"].tolist()[3] == str(nih.parent / "images_002/images/00000003_000.png")
    report = validate_table(table)
    assert report.ok and not report.warnings, report.format()


def test_chestxray14_rgba_and_16_bit_pngs_go_through_the_pipeline(nih):
    table = load_chestxray14(nih)
    batches = list(make_dataset(table, PreprocessConfig(image_size=32), training=False, batch_size=4))
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    targets = np.concatenate([np.asarray(y) for _, y in batches])
    assert images.shape == (7, 32, 32, 3) and np.isfinite(images).all()
    assert images[2].std() > 0 and images[3].max() - images[3].min() > 200  # RGBA colours, 16-bit ramp
    np.testing.assert_array_equal(targets, table.labels())


def test_chestxray14_predefined_split_carves_val_from_train_val_by_patient(tmp_path):
    rows, train_val, test = [], [], []
    for patient in range(1, 13):
        for follow_up in range(2):
            name = f"{patient:08d}_{follow_up:03d}.png"
            rows.append(nih_line(name, "Effusion" if patient % 2 else "No Finding", follow_up, patient, "PA"))
            (test if patient > 10 else train_val).append(name)
            write_image(tmp_path / "images" / name, grey())
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join([NIH_HEADER] + rows) + "\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    table = load_chestxray14(tmp_path / "Data_Entry_2017.csv")
    assert table.frame["split"].value_counts().to_dict() == {"train": 20, "test": 4}
    frame = ensure_splits(table, SplitConfig(method="predefined", val_fraction=0.2)).frame
    assert set(frame.loc[frame["split"] == "test", "patient_id"]) == {"11", "12"}
    val = set(frame.loc[frame["split"] == "val", "patient_id"])
    assert val and val <= {str(p) for p in range(1, 11)}
    assert not val & set(frame.loc[frame["split"] == "train", "patient_id"])


def test_chestxray14_from_yaml_with_images_folder_and_classes(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join([
        NIH_HEADER, nih_line("a.png", "Effusion|Mass", 0, 7, "PA"), nih_line("b.png", "Hernia", 0, 8, "AP")]) + "\n")
    for name in ("a.png", "b.png"):
        write_image(tmp_path / "images" / name, grey())
    experiment = tmp_path / "x.yaml"
    experiment.write_text(f"data:\n  source: chestxray14\n  path: {tmp_path / 'Data_Entry_2017.csv'}\n"
                          "  classes: [Mass, Effusion]\n")
    table = load_source(ExperimentConfig.from_yaml(experiment).data)
    assert table.classes == ["Mass", "Effusion"] and table.labels().tolist() == [[1, 1], [0, 0]]
    assert table.frame["image"].tolist() == [str(tmp_path / "images" / n) for n in ("a.png", "b.png")]
    assert table.frame["split"].isna().all()  # no list files: no split


def test_chestxray14_row_problems_name_the_line_and_the_fix(nih):
    lines = nih.read_text().splitlines()
    lines[1] = nih_line("00000001_000.png", "Cardiomegaly|Pneumonitis", 0, 1, "PA")
    lines[2] = nih_line("00000001_001.png", "", 1, 1, "PA")
    lines[4] = nih_line("00000003_000.png", "No Finding|Hernia", 0, 3, "PA")
    lines.append(nih_line("00000007_000.png", "Mass", 0, 7, "PA"))  # in neither list
    lines.append(nih_line("00000009_000.png", "Mass", 0, 9, "PA"))  # no such file
    lines.append("00000008_000.png,Mass,0")  # cut short
    name, labels, rest = lines[6].split(",", 2)
    lines[6] = f"{name},{labels},Effusion,{rest}"  # a ',' written for '|': every later value one column off
    nih.write_text("\n".join(lines) + "\n")
    write_image(nih.parent / "images_003/images/00000007_000.png", grey())
    write_image(nih.parent / "images_003/images/00000008_000.png", grey())
    (nih.parent / "test_list.txt").write_text("00000002_000.png\n00000005_000.png\n00000006_000.png\n")
    (nih.parent / "train_val_list.txt").write_text(
        "00000001_000.png\n00000001_001.png\n00000003_000.png\n00000004_000.png\n00000006_000.png\n"
        "00000008_000.png\n00000009_000.png\n")
    table = load_chestxray14(nih)
    assert table.frame["image"].tolist()[-2] == str(nih.parent / "00000009_000.png")  # where it was expected
    text = validate_table(table).format()
    assert ("row 2: " in text and "unknown finding 'Pneumonitis' in 'Finding Labels' 'Cardiomegaly|Pneumonitis'. "
            "Fix: write 'No Finding', or findings from Atelectasis, Cardiomegaly," in text)
    assert "row 3: " in text and "empty 'Finding Labels'. Fix: write 'No Finding', or findings from" in text
    assert ("row 5: " in text and "'No Finding' together with findings in 'Finding Labels' 'No Finding|Hernia'. "
            "Fix: keep either 'No Finding' or the findings" in text)
    assert ("row 8: " in text and "00000006_000.png is in both train_val_list.txt and test_list.txt. "
            "Fix: remove it from one of the two lists" in text)
    assert ("row 9: " in text and "00000007_000.png is in neither train_val_list.txt nor test_list.txt. "
            "Fix: add its name to one of the two lists" in text)
    assert f"row 10: {nih.parent / '00000009_000.png'}: file not found" in text
    assert ("row 11: " in text and "the line has 3 fields, the header 12; no value for 'Patient ID', "
            "'View Position', 'Patient Gender', 'Patient Age'. Fix: restore the line as published" in text)
    assert ("row 7: " in text and "the line has 13 fields, the header 12: a value holds a separator, or a field "
            "was added" in text)
    assert "row 4:" not in text and "row 6:" not in text


def test_chestxray14_ages_it_publishes_wrongly_are_read_as_unknown_and_said(nih, capsys):
    """The release lists a few ages of 148 to 414 years: the image is kept, its age unknown, and the log says so."""
    configure_logging()
    lines = nih.read_text().splitlines()
    lines[1] = nih_line("00000001_000.png", "Cardiomegaly", 0, 1, "PA", age=414, sex="F")
    lines[2] = nih_line("00000001_001.png", "Cardiomegaly", 1, 1, "PA", age=7, sex="")
    nih.write_text("\n".join(lines) + "\n")
    table = load_chestxray14(nih)
    assert table.frame["sex"].fillna("?").tolist()[:3] == ["female", "?", "male"]
    assert table.frame["age"].fillna(-1).tolist()[:3] == [-1, 7.0, 58.0]
    assert validate_table(table).ok  # no row is refused for it
    assert f"{nih}: 1 value read as unknown (age '414' is outside 0-130 years)" in capsys.readouterr().out


def test_chestxray14_file_found_twice_is_a_row_problem(nih):
    write_image(nih.parent / "copy/00000004_000.png", grey())
    text = validate_table(load_chestxray14(nih)).format()
    assert "row 6: " in text and "00000004_000.png is found 2 times under" in text and "keep one copy" in text


def test_chestxray14_images_reached_through_links_are_found_once(nih):
    # a convenience link to a folder, a link back up to the top, a file linked beside itself: one file each
    (nih.parent / "all_images").symlink_to(nih.parent / "images_001/images", target_is_directory=True)
    (nih.parent / "images_002/images/up").symlink_to(nih.parent, target_is_directory=True)
    (nih.parent / "images_002/images/00000001_000.png").symlink_to(nih.parent / "images_001/images/00000001_000.png")
    table = load_chestxray14(nih)
    assert validate_table(table).ok
    assert len(table) == 7
    write_image(nih.parent / "copy/00000004_000.png", grey())  # a real second copy is still one too many
    assert "00000004_000.png is found 2 times under" in validate_table(load_chestxray14(nih)).format()


def test_chestxray14_a_list_file_that_is_not_text_is_named(nih):
    (nih.parent / "test_list.txt").write_bytes(b"00000005_000.png\n\xff\xfe\n")
    with pytest.raises(DataSourceError, match=r"test_list.txt: not readable as text \('utf-8' codec can't decode "
                                              r"byte 0xff .*\); restore the publisher's list"):
        load_chestxray14(nih)


def test_chestxray14_header_and_folder_errors(nih, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Labels,Patient ID\na.png,Mass,1\n")
    with pytest.raises(DataSourceError, match=r"bad.csv \(line 1, the header\): no column 'View Position'. "
                                              r"Columns found: Image Index, Finding Labels, Patient ID"):
        load_chestxray14(bad)
    with pytest.raises(DataSourceError, match="data.classes names 'Pneumonitis', which ChestX-ray14 does not "
                                              "have; choose from Atelectasis, Cardiomegaly"):
        load_chestxray14(nih, classes=["Mass", "Pneumonitis"])
    with pytest.raises(DataSourceError, match="nowhere: image folder not found .* set data.root"):
        load_chestxray14(nih, root=tmp_path / "nowhere")
    with pytest.raises(DataSourceError, match=f"{nih.parent}: a folder, not a file; data.path must be the "
                                              "publisher's Data_Entry_2017.csv"):
        load_chestxray14(nih.parent)  # the download's folder instead of its CSV
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="none of the 7 images listed in .* is in this folder"):
        load_chestxray14(nih, root=tmp_path / "empty")
    (nih.parent / "test_list.txt").unlink()
    with pytest.raises(DataSourceError, match="train_val_list.txt is here but test_list.txt is not"):
        load_chestxray14(nih)


# ---------------------------------------------------------------- CheXpert
def chexpert_line(path, sex, age, side, ap_pa, **codes):
    values = [codes.get(name.replace(" ", "_"), "") for name in OBSERVATIONS]
    return ",".join([f"CheXpert-v1.0-small/{path}", sex, str(age), side, ap_pa] + values)


CODES_A = dict(Cardiomegaly="-1.0", Lung_Opacity="1.0", Edema="-1.0", Consolidation="0.0", Atelectasis="-1.0",
               Pneumothorax="0.0", Pleural_Effusion="1.0", Support_Devices="1.0")
CODES_D = dict(Edema="1", Atelectasis="-1", Cardiomegaly="0", Pleural_Effusion="-1")


@pytest.fixture
def chexpert(tmp_path):
    folder = tmp_path / "CheXpert-v1.0-small"
    rows = [chexpert_line("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", **CODES_A),
            chexpert_line("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "", **CODES_A),
            chexpert_line("train/patient00002/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA",
                          No_Finding="1.0", Pneumothorax="0.0"),
            chexpert_line("train/patient00003/study2/view1_frontal.jpg", "Female", 40, "Frontal", "AP", **CODES_D)]
    (folder).mkdir()
    (folder / "train.csv").write_text("\n".join([CHEXPERT_HEADER] + rows) + "\n")
    for row in rows:
        write_image(tmp_path / row.split(",")[0], grey(90))
    return folder / "train.csv"


def competition(path, **kwargs):
    return load_chexpert(path, classes=list(COMPETITION_LABELS), **kwargs)


def test_chexpert_reads_the_publishers_csv_unchanged(chexpert):
    table = load_source(parse_source_spec("chexpert:" + str(chexpert)))
    frame = table.frame
    assert table.task == "multilabel" and table.classes == list(OBSERVATIONS)
    #                     NF EC Ca LO LL Ed Co Pn At Px PE PO Fr SD
    assert table.labels().tolist() == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1],
                                       [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1],
                                       [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                                       [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert frame["patient_id"].tolist() == ["patient00001", "patient00001", "patient00002", "patient00003"]
    assert frame["view"].tolist() == ["Frontal AP", "Lateral", "Frontal PA", "Frontal AP"]
    assert frame["sex"].tolist() == ["female", "female", "male", "female"]
    assert frame["age"].tolist() == [68.0, 68.0, 50.0, 40.0]
    assert frame["row"].tolist() == [2, 3, 4, 5] and frame["split"].isna().all()
    top = chexpert.parent.parent  # the default root is the folder above the CSV's
    assert frame["image"].tolist()[0] == str(top / "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert table.excluded.empty
    report = validate_table(table)
    assert report.ok and not report.warnings, report.format()
    x, y = next(iter(make_dataset(table, PreprocessConfig(image_size=32), training=False)))
    assert tuple(x.shape) == (4, 32, 32, 3) and tuple(y.shape) == (4, 14)


@pytest.mark.parametrize("uncertain, expected", [
    ("zeros", [[0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0]]),
    ("ones", [[1, 1, 0, 1, 1], [1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 1, 1]]),
    ({"Atelectasis": "ones", "Edema": "ones"}, [[1, 0, 0, 1, 1], [1, 0, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 1, 0]]),
    ("ignore", [[-1, -1, 0, -1, 1], [-1, -1, 0, -1, 1], [0, 0, 0, 0, 0], [-1, 0, 0, 1, -1]]),
    ({"Atelectasis": "ignore"}, [[-1, 0, 0, 0, 1], [-1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [-1, 0, 0, 1, 0]]),
])
def test_chexpert_uncertainty_policies(chexpert, uncertain, expected):
    table = competition(chexpert, uncertain=uncertain)
    assert table.classes == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    assert table.labels().tolist() == expected


def test_chexpert_policies_from_yaml(chexpert, tmp_path):
    def data(text):
        experiment = tmp_path / "x.yaml"
        experiment.write_text(f"data:\n  source: chexpert\n  path: {chexpert}\n"
                              "  classes: [Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion]\n"
                              + text)
        return ExperimentConfig.from_yaml(experiment).data

    assert data("  uncertain: ones\n").uncertain == "ones"
    config = data("  uncertain: {Atelectasis: ones, Edema: zeros}\n  frontal_only: true\n")
    assert config.uncertain == {"Atelectasis": "ones", "Edema": "zeros"} and config.frontal_only is True
    assert load_source(config).labels().tolist() == [[1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [1, 0, 0, 1, 0]]
    saved = tmp_path / "saved.yaml"
    ExperimentConfig(data=config).to_yaml(saved)
    assert ExperimentConfig.from_yaml(saved).data == config
    assert data("  uncertain: ignore\n").uncertain == "ignore"
    config = data("  uncertain: {Atelectasis: ones, Edema: ignore}\n")
    assert load_source(config).labels().tolist() == [[1, 0, 0, -1, 1], [1, 0, 0, -1, 1], [0, 0, 0, 0, 0],
                                                     [1, 0, 0, 1, 0]]
    with pytest.raises(ConfigError, match=r"x.yaml: data.uncertain is 'U-Ignore'; use ones \(U-Ones: .*, zeros "
                                          r"\(U-Zeros: .* or ignore \(U-Ignore"):
        data("  uncertain: U-Ignore\n")
    with pytest.raises(ConfigError, match=r"data.uncertain.Edema is 'maybe'; use ones \(U-Ones"):
        data("  uncertain: {Edema: maybe}\n")
    with pytest.raises(ConfigError, match=r"data.uncertain is 'one'; use ones .* or a mapping label -> policy"):
        data("  uncertain: one\n")
    with pytest.raises(ConfigError, match="data.uncertain must be text, got 1"):
        data("  uncertain: 1\n")
    with pytest.raises(ConfigError, match="data.frontal_only must be true or false"):
        data("  frontal_only: yes please\n")


def test_chexpert_uncertain_mapping_names_known_used_labels(chexpert):
    with pytest.raises(DataSourceError, match="data.uncertain.Oedema: 'Oedema' is not a CheXpert observation; "
                                              "name one of No Finding, Enlarged Cardiomediastinum"):
        competition(chexpert, uncertain={"Oedema": "ones"})
    with pytest.raises(DataSourceError, match="data.uncertain.Fracture is set, but data.classes leaves "
                                              "'Fracture' out"):
        competition(chexpert, uncertain={"Fracture": "ones"})
    with pytest.raises(DataSourceError, match="data.classes names 'Effusion', which CheXpert does not have; "
                                              "choose from No Finding, Enlarged Cardiomediastinum"):
        load_chexpert(chexpert, classes=["Edema", "Effusion"])


def test_chexpert_frontal_only_lists_the_lateral_rows(chexpert):
    table = load_source(DataConfig(source="chexpert", path=str(chexpert), frontal_only=True))
    assert table.frame["row"].tolist() == [2, 4, 5]
    lateral = str(chexpert.parent / "train/patient00001/study1/view2_lateral.jpg")
    assert table.excluded.to_dict("records") == [
        {"image": lateral, "row": 3, "problem": "skipped: lateral view (data.frontal_only is true)",
         "fix": "none needed; set data.frontal_only: false to use lateral views too"}]
    report = validate_table(table)
    assert report.ok and [(w.row, w.image) for w in report.warnings] == [(3, lateral)]
    assert "row 3: " + lateral + ": skipped: lateral view (data.frontal_only is true)" in report.format()


def test_chexpert_row_problems_name_the_line_and_the_fix(chexpert):
    lines = chexpert.read_text().splitlines()
    lines[3] = chexpert_line("train/patient00002/study1/view1_frontal.jpg", "Male", 50, "Frontal", "PA", Edema="2")
    lines.append("CheXpert-v1.0-small/train/study9/view1_frontal.jpg,Male,50,Frontal,PA" + ",0.0" * 14)
    lines.append(chexpert_line("train/patient00004/study1/view1_frontal.jpg", "Male", 50, "Frontal-ish", "PA"))
    chexpert.write_text("\n".join(lines) + "\n")
    text = validate_table(load_chexpert(chexpert, frontal_only=True)).format()
    assert ("row 4: " in text and "unknown code '2' in column 'Edema'. Fix: write 1.0 (positive), 0.0 "
            "(negative), -1.0 (uncertain) or leave it blank (not mentioned)" in text)
    assert ("row 6: " in text and "'CheXpert-v1.0-small/train/study9/view1_frontal.jpg' has no patientNNNNN "
            "folder to take the patient from. Fix: keep the publisher's layout" in text)
    assert ("row 7: " in text and "Frontal/Lateral is 'Frontal-ish', not Frontal or Lateral, so "
            "data.frontal_only cannot tell whether to keep the row. Fix: write Frontal or Lateral" in text)
    assert "row 2:" not in text and "row 5:" not in text


def test_chexpert_header_without_path_column(chexpert):
    lines = chexpert.read_text().splitlines()
    chexpert.write_text("\n".join([lines[0].replace("Path,", "Image,", 1)] + lines[1:]) + "\n")
    with pytest.raises(DataSourceError, match=r"train.csv \(line 1, the header\): no column 'Path'. Columns "
                                              r"found: Image, Sex, .*data.path must be the publisher's train.csv "
                                              r"or valid.csv of CheXpert, unchanged"):
        load_chexpert(chexpert)


# ---------------------------------------------------------------- config
def test_settings_of_other_sources_are_refused():
    assert {"chestxray14", "chexpert"} <= set(SOURCES)
    with pytest.raises(ConfigError, match=r"data.frontal_only is true; it is set, but only data.source chexpert, "
                                          r"mimic_cxr or padchest uses it and data.source is 'manifest'; remove it"):
        DataConfig(source="manifest", path="m.csv", frontal_only=True)
    with pytest.raises(ConfigError, match="x.yaml: data.uncertain is 'ones'; it is set, but only data.source "
                                          "chexpert or mimic_cxr uses it and data.source is 'chestxray14'"):
        ExperimentConfig.from_dict({"data": {"source": "chestxray14", "path": "d.csv", "uncertain": "ones"}},
                                   where="x.yaml")
    with pytest.raises(ConfigError, match="data.label_columns is .*data.source chexpert reads the publisher's "
                                          "columns itself"):
        DataConfig(source="chexpert", path="train.csv", label_columns=["Edema"])
    with pytest.raises(ConfigError, match="data.task is 'multiclass'; data.source chestxray14 is multilabel"):
        DataConfig(source="chestxray14:Data_Entry_2017.csv", task="multiclass")
    assert DataConfig(source="chexpert:train.csv", task="multilabel", uncertain={"Edema": "ones"}).frontal_only is False


# ---------------------------------------------------------------- all publishers' CSV files
@pytest.mark.parametrize("kind, name, header", [
    ("chestxray14", "Data_Entry_2017.csv", NIH_HEADER),
    ("chexpert", "train.csv", CHEXPERT_HEADER),
    ("rsna_pneumonia", "stage_2_train_labels.csv", "patientId,x,y,width,height,Target"),
    ("siim_pneumothorax", "train-rle.csv", "ImageId, EncodedPixels"),
    ("vindr_cxr", "train.csv", "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"),
    ("padchest", "labels.csv", "ImageID,ImageDir,PatientID,Projection,Labels"),
    ("mimic_cxr", "mimic-cxr-2.0.0-chexpert.csv", "subject_id,study_id," + ",".join(OBSERVATIONS)),
], ids=lambda value: value if value in SOURCES else "")
def test_a_publishers_csv_with_a_header_and_no_row_is_refused_naming_the_file(tmp_path, kind, name, header):
    (tmp_path / "images").mkdir()
    csv = tmp_path / name
    csv.write_text(header + "\n\n")
    refusal = rf"^{re.escape(str(csv))}: no data rows \(only the header, line 1\); .*restore the file as downloaded"
    with pytest.raises(DataSourceError, match=refusal):
        load_source(parse_source_spec(f"{kind}:{csv}"))


def test_missing_images_and_list_leaks_are_fixed_in_chestxray14s_own_words(nih):
    from tfmed.data.splits import LeakageError, check_no_leakage

    (nih.parent / "images_002/images/00000004_000.png").unlink()
    text = validate_table(load_chestxray14(nih), check_images=False).format()
    assert (f"row 6: {nih.parent}/00000004_000.png: file not found. Fix: ChestX-ray14's images are looked for by "
            f"file name in {nih.parent} and its sub-folders (data.root;") in text
    assert "manifest" not in text
    # patient 1's second image moved to the test list: the lists, not a split column, are to be fixed
    (nih.parent / "test_list.txt").write_text("00000002_000.png\n00000005_000.png\n00000001_001.png\n")
    (nih.parent / "train_val_list.txt").write_text("00000001_000.png\n00000003_000.png\n00000004_000.png\n"
                                                   "00000006_000.png\n")
    with pytest.raises(LeakageError, match=r"1 \(test, train\)\. Each patient's images must be in one split: put "
                                           "each patient's images in one of train_val_list.txt and test_list.txt "
                                           r"\(beside Data_Entry_2017.csv"):
        check_no_leakage(load_chestxray14(nih))


def test_validating_an_experiment_reports_a_patient_in_two_official_lists_beside_bad_rows(nih, tmp_path, capsys):
    """All problems at once: the run would stop on the bad row, and then on the lists' leak; both are said."""
    from tfmed.run.cli import main

    (nih.parent / "images_002/images/00000004_000.png").unlink()  # a bad row
    (nih.parent / "test_list.txt").write_text("00000002_000.png\n00000005_000.png\n00000001_001.png\n")
    (nih.parent / "train_val_list.txt").write_text("00000001_000.png\n00000003_000.png\n00000004_000.png\n"
                                                   "00000006_000.png\n")
    experiment = tmp_path / "nih.yaml"
    experiment.write_text(f"name: nih\ndata: {{source: chestxray14, path: {nih}, classes: [Cardiomegaly]}}\n"
                          "split: {method: predefined}\n"
                          "model: {mode: svm, backbone: efficientnet_lite0, weights: null}\n")
    assert main(["validate", str(experiment)]) == 1
    out = capsys.readouterr().out
    assert "00000004_000.png: file not found" in out
    assert "1 (test, train). Each patient's images must be in one split" in out


def test_missing_images_of_chexpert_and_rsna_say_where_the_source_looks(chexpert, tmp_path):
    (tmp_path / "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg").unlink()
    text = validate_table(load_chexpert(chexpert), check_images=False).format()
    assert (f"file not found. Fix: CheXpert's Path values are read from {tmp_path} (data.root; by default the "
            "folder above the CSV's)") in text
    rsna = tmp_path / "rsna"
    (rsna / "stage_2_train_images").mkdir(parents=True)
    (rsna / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\nabc,,,,,0\n")
    text = validate_table(load_source(parse_source_spec(f"rsna_pneumonia:{rsna}/stage_2_train_labels.csv")),
                          check_images=False).format()
    assert (f"abc.dcm: file not found. Fix: RSNA's images are read as <patientId>.dcm from "
            f"{rsna}/stage_2_train_images (") in text


def test_chestxray14_a_blank_patient_id_is_fixed_in_the_publishers_words(nih):
    from tfmed.data.splits import SplitError

    lines = nih.read_text().splitlines()
    lines[3] = nih_line("00000002_000.png", "No Finding", 0, "", "AP")  # line 4
    nih.write_text("\n".join(lines) + "\n")
    text = validate_table(load_chestxray14(nih), need_patient_ids=True, check_images=False).format()
    assert ("row 4: " in text and "no patient id. Fix: fill the row's Patient ID cell in Data_Entry_2017.csv as "
            "published (the number its Image Index begins with, e.g. 1 for 00000001_000.png)") in text
    assert "patient_id column" not in text
    with pytest.raises(SplitError, match="Fill the row's Patient ID cell in Data_Entry_2017.csv"):
        ensure_splits(load_chestxray14(nih), SplitConfig(method="patient"))


def test_rsna_a_target_0_line_with_a_box_is_a_row_problem_with_its_line(tmp_path):
    from tfmed.data.validate import apply_validation

    (tmp_path / "stage_2_train_images").mkdir()
    for patient in "abcd":
        (tmp_path / "stage_2_train_images" / f"{patient}.dcm").touch()  # their pixels are not read here
    csv = tmp_path / "stage_2_train_labels.csv"
    csv.write_text("patientId,x,y,width,height,Target\n"
                   "a,,,,,0\n"
                   "b,,,,,0\n"
                   "b,abc,1,2,3,0\n"           # line 4: not a box, on a Target 0 line
                   "c,264.0,152.0,213.0,379.0,0\n"  # line 5: a box, on a Target 0 line
                   "d,1,2,3,4,1\n"
                   "d,1,2,3,4,1\n")            # line 7: line 6 again, which would give d its box twice
    table = load_source(parse_source_spec(f"rsna_pneumonia:{csv}"))
    report = validate_table(table, check_images=False)
    text = report.format()
    assert ("row 3: " in text and "line 4: Target 0 with a box ('abc,1,2,3'). Fix: empty x, y, width and height "
            "as published, or write Target 1 if it is an opacity's box") in text
    assert "row 5: " in text and "line 5: Target 0 with a box ('264.0,152.0,213.0,379.0')" in text
    assert ("row 6: " in text and "line 7 repeats line 6 exactly. Fix: remove the repeated line (each box is one "
            "line)") in text
    assert "row 2:" not in text
    kept = apply_validation(table, report, exclude_bad_rows=True)
    assert kept.frame["row"].tolist() == [2] and kept.excluded["row"].tolist() == [3, 5, 6]


def test_chestxray14_an_image_linked_under_its_listed_name_is_found(nih):
    # the listed name is a link to a file stored under another name: both names are indexed
    store = nih.parent / "a_store"  # walked before images_001/
    store.mkdir()
    listed = nih.parent / "images_001/images/00000001_000.png"
    listed.rename(store / "blob123.png")
    listed.symlink_to(store / "blob123.png")
    table = load_chestxray14(nih)
    assert validate_table(table).ok and len(table) == 7
