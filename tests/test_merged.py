"""Several sources merged into one table: labels matched by name (renamed where the collections differ), a
label one collection does not grade unknown for its images, each collection a site with its own patients,
and a whole collection held out as the external test of a run."""
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from test_cxr_sources import chexpert, nih  # noqa: F401 (the CheXpert and ChestX-ray14 fixtures)
from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from test_mimic_cxr import IMAGES, LABELS, mimic_tree
from tfmed.config import UNKNOWN_LABEL, ConfigError, ExperimentConfig
from tfmed.data.sources import DataSourceError, load_source
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment


EXPERIMENT = Path(__file__).parent.parent / "experiments" / "chest_xray_sites.yaml"


def merged(*parts, **settings):
    return ExperimentConfig.from_dict({"data": {"source": "merged", "parts": list(parts), **settings}}).data


def test_two_collections_become_one_multilabel_table(nih, tmp_path, capsys):
    mimic = mimic_tree(tmp_path / "mimic", IMAGES[:5], LABELS)
    config = merged({"source": "chestxray14", "path": str(nih), "name": "nih",
                     "rename": {"Effusion": "Pleural Effusion"}},
                    {"source": "mimic_cxr", "path": str(mimic), "name": "mimic", "frontal_only": True},
                    classes=["Edema", "Pleural Effusion", "Support Devices"])
    table = load_source(config)
    frame = table.frame
    assert table.task == "multilabel" and table.classes == ["Edema", "Pleural Effusion", "Support Devices"]
    assert frame["site"].value_counts().to_dict() == {"nih": 7, "mimic": 3}  # the lateral and the viewless left
    labels = pd.DataFrame(table.labels(), columns=table.classes)
    nih_rows, mimic_rows = (frame["site"] == "nih").to_numpy(), (frame["site"] == "mimic").to_numpy()
    # ChestX-ray14 does not grade support devices: unknown for its images, known for MIMIC's
    assert (labels.loc[nih_rows, "Support Devices"] == UNKNOWN_LABEL).all()
    assert (labels.loc[mimic_rows, "Support Devices"] != UNKNOWN_LABEL).all()
    # renamed: ChestX-ray14's Effusion is CheXpert's Pleural Effusion
    effusion = frame["image"].str.endswith("00000004_000.png").to_numpy()
    assert labels.loc[effusion, "Pleural Effusion"].tolist() == [1]
    assert labels.loc[mimic_rows, "Pleural Effusion"].tolist() == [0, 0, 1]  # d1, d3, d4
    assert labels.loc[effusion, "Edema"].tolist() == [0] and labels["Edema"].sum() == 2  # nih 5, mimic d1
    # patients of two collections never meet; each collection's own splits stay
    assert frame.loc[nih_rows, "patient_id"].str.startswith("nih:").all()
    assert set(frame.loc[mimic_rows, "patient_id"]) == {"mimic:10000032", "mimic:10000764", "mimic:11000011"}
    assert frame.loc[mimic_rows, "split"].tolist() == ["train", "val", "test"]
    assert frame.loc[effusion, "split"].tolist() == ["train"]  # train_val_list.txt
    assert table.excluded["problem"].str.startswith("skipped: mimic: 1 image with ViewPosition").sum() == 2
    # tfmed validate of such an experiment counts each collection: what split.test_sites can hold out
    experiment = tmp_path / "merged.yaml"
    experiment.write_text(yaml.safe_dump({"data": dataclasses.asdict(config)}))
    main(["validate", str(experiment)])
    assert "sites: mimic 3, nih 7" in capsys.readouterr().out



def test_rows_a_part_skips_by_design_are_counted_as_skipped_not_as_bad(chexpert, nih):
    from tfmed.data.validate import excluded_summary

    table = load_source(merged({"source": "chexpert", "path": str(chexpert), "name": "stanford", "frontal_only": True},
                               {"source": "chestxray14", "path": str(nih), "name": "nih",
                                "rename": {"Effusion": "Pleural Effusion"}},
                               classes=["Edema", "Pleural Effusion"]))
    assert table.excluded["problem"].tolist() == ["skipped: stanford: lateral view (data.frontal_only is true)"]
    assert excluded_summary(table.excluded) == "1 row skipped: stanford: lateral view (data.frontal_only is true)"

def squares(folder, classes, count, seed):
    """A folder per class of 40 x 40 PNGs, one patient each; the second class's hold a bright square."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            image = rng.normal(70, 8, (40, 40))
            if label:
                image[10:30, 10:30] += 160
            cv2.imwrite(str(folder / name / f"{name}_{i}.png"), image.clip(0, 255).astype(np.uint8))
    return folder


@pytest.mark.slow
def test_a_run_holds_one_collection_out_as_its_external_test(tmp_path):
    shenzhen = squares(tmp_path / "shenzhen", ["normal", "tb"], 16, 0)
    montgomery = squares(tmp_path / "montgomery", ["Normal", "TB"], 8, 1)  # another collection's names
    pattern = r"(\w+_\d+)\.png"
    config = tiny_svm_experiment(
        "merged_test", tmp_path,
        {"source": "merged", "parts": [
            {"source": "folder", "path": str(shenzhen), "name": "shenzhen", "patient_pattern": pattern},
            {"source": "folder", "path": str(montgomery), "name": "montgomery", "patient_pattern": pattern,
             "rename": {"Normal": "normal", "TB": "tb"}}]},
        {"method": "patient", "test_sites": ["montgomery"], "val_fraction": 0.25})
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert set(splits.loc[splits["split"] == "test", "site"]) == {"montgomery"}
    assert (splits["split"] == "test").sum() == 16 and splits["patient_id"].str.contains(":").all()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["normal", "tb"] and "external test" in metrics["test_origin"]
    assert metrics["splits"]["test"]["youden"]["roc_auc"] > 0.9  # the square shows at both hospitals
    # a copy to share names neither the parts' folders nor their patients
    assert main(["export-run", str(run), str(tmp_path / "share"), "--anonymise"]) == 0
    shared = (tmp_path / "share" / "config.yaml").read_text()
    assert str(tmp_path) not in shared and "path: shenzhen" in shared and "path: montgomery" in shared


def test_merging_errors_name_the_part_and_the_fix(tmp_path):
    folder = squares(tmp_path / "a", ["normal", "tb"], 2, 0)
    other = squares(tmp_path / "b", ["healthy", "tb"], 2, 0)
    with pytest.raises(DataSourceError, match=r"data.parts b: class 'healthy' is not among data.classes "
                                              r"\(normal, tb\); add it, or rename it"):
        load_source(merged({"source": "folder", "path": str(folder), "name": "a"},
                           {"source": "folder", "path": str(other), "name": "b"}, classes=["normal", "tb"]))
    with pytest.raises(DataSourceError, match="data.parts b: rename names 'Healthy', which it does not have"):
        load_source(merged({"source": "folder", "path": str(folder), "name": "a"},
                           {"source": "folder", "path": str(other), "name": "b", "rename": {"Healthy": "normal"}}))
    with pytest.raises(DataSourceError, match="data.parts pneumonia_mnist: .* holds its images in memory"):
        load_source(merged({"source": "folder", "path": str(folder)}, {"source": "pneumonia_mnist"}))
    csv = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a/normal/normal_0.png"], "x": [1], "y": [0]}).to_csv(csv, index=False)
    with pytest.raises(DataSourceError, match="data.parts mix single-label and multilabel data"):
        load_source(merged({"source": "folder", "path": str(folder)},
                           {"source": "manifest", "path": str(csv), "label_columns": ["x", "y"]}))


def test_a_rename_giving_two_labels_one_name_is_refused(nih, tmp_path):
    config = merged({"source": "chestxray14", "path": str(nih), "name": "nih",
                     "rename": {"Effusion": "Pleural Effusion", "Pneumothorax": "Pleural Effusion"}},
                    {"source": "mimic_cxr", "path": str(tmp_path / "absent.csv.gz"), "name": "mimic"},
                    classes=["Edema", "Pleural Effusion"])
    with pytest.raises(DataSourceError, match="data.parts nih: rename gives 'Effusion' and 'Pneumothorax' one name, "
                                              "'Pleural Effusion'; .* Rename only one of them to 'Pleural Effusion'"):
        load_source(config)


def test_the_parts_fix_texts_are_kept_and_a_part_without_a_split_is_named(nih, tmp_path):
    from tfmed.config import SplitConfig
    from tfmed.data.splits import SplitError, ensure_splits

    mimic = mimic_tree(tmp_path / "mimic", IMAGES[:5], LABELS, splits=False)  # no split file: no split
    table = load_source(merged({"source": "chestxray14", "path": str(nih), "name": "nih",
                                "rename": {"Effusion": "Pleural Effusion"}},
                               {"source": "mimic_cxr", "path": str(mimic), "name": "mimic"},
                               classes=["Edema", "Pleural Effusion"]))
    assert table.frame.attrs["missing_fix"].startswith("nih: ChestX-ray14's images are looked for by file name in")
    assert "; mimic: MIMIC-CXR-JPG's images are read as files/pNN" in table.frame.attrs["missing_fix"]
    with pytest.raises(SplitError, match=r"5 row\(s\) have no split while others do \(rows 2, 3, 4, 5, 6\): these are "
                                         "the images of data.parts mimic, which has no split of its own, while nih "
                                         "has one: give mimic a split .*or use split.method: patient"):
        ensure_splits(table, SplitConfig(method="predefined"))


def test_an_image_listed_by_two_parts_is_named_with_the_part_that_lists_it_first(nih):
    from tfmed.data.validate import validate_table

    table = load_source(merged({"source": "chestxray14", "path": str(nih), "name": "nih"},
                               {"source": "chestxray14", "path": str(nih), "name": "nih2"}))
    duplicates = [p for p in validate_table(table, check_images=False).problems if "duplicate" in p.problem]
    assert len(duplicates) == len(table) // 2  # each image of the second part, once
    assert all(p.problem == f"duplicate: the same image as row {p.row} of site 'nih'" for p in duplicates)


@pytest.mark.parametrize("data, message", [
    ({"parts": [{"source": "folder", "path": "a"}]}, "data.parts lists 1 source"),
    ({"path": "x", "parts": [{"source": "folder", "path": "a"}, {"source": "folder", "path": "b", "name": "b"}]},
     "data.path is 'x'; data.source merged reads its data from data.parts; move it into the part"),
    ({"parts": [{"source": "folder", "path": "a"}, {"source": "folder", "path": "b"}]},
     "two parts are named 'folder'"),
    ({"task": "binary", "parts": [{"source": "folder", "path": "a"}, {"source": "chexpert", "path": "b"}]},
     "data.task is 'binary'; data.source merged reads its data from data.parts"),
    ({"parts": [{"source": "folder", "path": "a", "exclude_bad_rows": True}, {"source": "chexpert", "path": "b"}]},
     "data.parts\\[0\\].exclude_bad_rows is true; it applies to the merged table as a whole"),
    ({"parts": [{"source": "luna16", "path": "a"}, {"source": "chexpert", "path": "b"}]},
     "a part is a source of 2-D images"),
])
def test_merged_settings_are_checked(data, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"data": {"source": "merged", **data}})


def test_parts_belong_to_a_merged_section():
    parts = [{"source": "folder", "path": "a"}, {"source": "chexpert", "path": "b"}]
    with pytest.raises(ConfigError, match="data.parts is set, but only data.source merged merges parts"):
        ExperimentConfig.from_dict({"data": {"source": "folder", "path": "a", "parts": parts}})
    with pytest.raises(ConfigError, match="unknown key data.rename"):  # a part's settings, not a section's
        ExperimentConfig.from_dict({"data": {"source": "folder", "path": "a", "rename": {"a": "b"}}})
    config = ExperimentConfig.from_dict({"data": {"source": "merged", "parts": parts}})
    assert [part.part_name for part in config.data.parts] == ["folder", "chexpert"]


def nih_stand_in(folder, images=30, seed=0):
    """Data_Entry_2017.csv and its PNGs: findings drawn at random among five (Effusion as NIH writes it)."""
    from test_cxr_sources import NIH_HEADER, nih_line

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    lines = [NIH_HEADER]
    for i in range(images):
        name = f"{i:08d}_000.png"
        found = [f for f in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion") if rng.random() < .4]
        lines.append(nih_line(name, "|".join(found) or "No Finding", 0, i, "PA"))
        cv2.imwrite(str(folder / "images" / name), rng.integers(0, 255, (24, 24), dtype=np.uint8))
    (folder / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    return folder / "Data_Entry_2017.csv"


@pytest.mark.slow
def test_the_chest_xray_sites_experiment_tests_on_the_third_hospital(tmp_path, capsys):
    from test_mimic_cxr import label_line
    from test_unknown_labels import _chexpert_stand_in

    config = ExperimentConfig.from_yaml(EXPERIMENT)
    rng = np.random.default_rng(1)
    images = [(f"m{i}", 10000000 + i, 50000000 + i, "PA", ("train", "validate", "test")[i % 3]) for i in range(36)]
    labels = [label_line(subject, study, **{name.replace(" ", "_"): rng.choice(["1.0", "0.0", "-1.0", ""])
                                            for name in config.data.classes})
              for _, subject, study, _, _ in images]
    mimic = mimic_tree(tmp_path / "mimic", images, labels, pixels=lambda _: rng.integers(0, 255, (24, 24),
                                                                                          dtype=np.uint8))
    stanford, nih_csv = _chexpert_stand_in(tmp_path / "chexpert", patients=20), nih_stand_in(tmp_path / "nih")
    for part, path in zip(config.data.parts, (stanford, nih_csv, f"{mimic}#test")):
        part.path = str(path)
    config.runs_dir, config.preprocess.image_size, config.model.weights = str(tmp_path / "runs"), 32, None
    for stage in config.model.finetune.stages:
        stage.epochs = 1
    config.split.val_fraction = 0.25
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert splits.groupby("site")["split"].unique().map(sorted).to_dict() == {
        "mimic": ["test"], "nih": ["train", "val"], "stanford": ["train", "val"]}
    assert (splits["site"] == "mimic").sum() == 12  # MIMIC's official test split only
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["subgroups"]["site"]["val"]["groups"]) == {"nih", "stanford"} and "external test" in metrics["test_origin"]
    # ChestX-ray14 scored on its own by the merged run: its Effusion is read as the run's Pleural Effusion
    from tfmed.progress import configure_logging
    from tfmed.run.evaluate import evaluate_run

    configure_logging()
    evaluation = evaluate_run(run, f"chestxray14:{nih_csv}", tmp_path / "nih_scored")
    assert "classes renamed as the run's chestxray14 part renamed them: Effusion -> Pleural Effusion" in \
        capsys.readouterr().out
    scored = pd.read_csv(evaluation / "predictions.csv")
    truth = pd.read_csv(nih_csv).set_index("Image Index")["Finding Labels"].str.contains("Effusion").astype(int)
    names = scored["id"].map(lambda image: Path(image).name)
    assert len(scored) == 30 and (scored["label:Pleural Effusion"].to_numpy() == truth[names].to_numpy()).all()


def test_the_chest_xray_sites_experiment_says_where_to_get_each_collection(tmp_path):
    config = ExperimentConfig.from_yaml(EXPERIMENT)
    config.runs_dir = str(tmp_path / "runs")
    config.data.parts[0].path = str(tmp_path / "absent" / "train.csv")
    with pytest.raises(DataSourceError, match="Stanford AIMI Center.*make experiment NAME=chest_xray_sites"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


def test_a_source_string_scored_by_a_merged_run_takes_the_label_settings_of_its_part():
    from tfmed.config import DataConfig, DataPartConfig
    from tfmed.data.sources import parse_source_spec
    from tfmed.run.evaluate import run_label_settings

    merged = DataConfig(source="merged", parts=[
        DataPartConfig(source="chexpert", path="train.csv", uncertain="ones", frontal_only=True),
        DataPartConfig(source="mimic_cxr", path="labels.csv", uncertain={"Edema": "ones"}, frontal_only=True)])
    assert run_label_settings(parse_source_spec("mimic_cxr:test.csv"), merged) == {
        "uncertain": {"Edema": "ones"}, "frontal_only": True}  # the mimic part's, not the chexpert part's
    assert run_label_settings(parse_source_spec("chexpert:valid.csv"), merged) == {
        "uncertain": "ones", "frontal_only": True}
    # a source no part reads: the parts' shared frontal_only; their uncertain policies differ, so none is taken
    assert run_label_settings(parse_source_spec("padchest:labels.csv"), merged) == {"frontal_only": True}
