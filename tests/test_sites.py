"""Sites (hospitals, scanners): a whole site held out as an external test split, and each site's figures in
a split of several sites, in metrics.json and the report."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, ExperimentConfig, SplitConfig
from tfmed.data.sources.manifest import load_manifest
from tfmed.data.splits import LeakageError, SplitError, ensure_splits
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment


def write_sites(folder, sites=("north", "south", "east"), per_site=24):
    """A manifest of PNGs from three sites: half of each site's patients with a bright square (positive);
    the east site's images are darker, as another scanner's might be."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    rows = []
    for s, site in enumerate(sites):
        for i in range(per_site):
            image = rng.normal(60 if site == "east" else 90, 10, (40, 40))
            label = i % 2
            if label:
                image[10:22, 10:22] += 120
            name = f"img/{site}_{i}.png"
            cv2.imwrite(str(folder / name), image.clip(0, 255).astype(np.uint8))
            rows.append({"path": name, "label": label, "patient_id": f"{site}{i}", "site": site})
    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


def test_a_site_held_out_is_the_whole_test_split(tmp_path):
    table = load_manifest(write_sites(tmp_path))
    split = ensure_splits(table, SplitConfig(method="patient", test_sites=["east"], val_fraction=0.25))
    frame = split.frame
    assert (frame.loc[frame["site"] == "east", "split"] == "test").all()
    assert (frame.loc[frame["site"] != "east", "split"] != "test").all()
    val = frame[frame["split"] == "val"]
    assert 8 <= len(val) <= 16 and val["label"].nunique() == 2  # a quarter of the other 48, both classes
    folds = ensure_splits(table, SplitConfig(method="kfold", test_sites=["east", "south"]))
    assert sorted(folds.frame.loc[folds.frame["split"] == "train", "site"].unique()) == ["north"]


def test_site_split_errors_name_the_sites(tmp_path):
    table = load_manifest(write_sites(tmp_path))
    with pytest.raises(SplitError, match=r"names 'west', which no row has; the data's sites are 'east', 'north', "
                                         r"'south'"):
        ensure_splits(table, SplitConfig(method="patient", test_sites=["west"]))
    with pytest.raises(SplitError, match="none is left for training"):
        ensure_splits(table, SplitConfig(method="kfold", test_sites=["east", "north", "south"]))
    frame = table.frame.copy()
    frame.loc[0, "patient_id"] = "east3"  # a north image of an east patient: the patient would be on both sides
    shared = type(table)(frame, table.classes, table.task, source=table.source)
    with pytest.raises(LeakageError, match=r"1 patient\(s\) have images at a site of split.test_sites \(east\) "
                                           r"and at another site: east3\. .* correct those rows' patient ids or sites"):
        ensure_splits(shared, SplitConfig(method="kfold", test_sites=["east"]))


@pytest.mark.parametrize("values, message", [
    ({"split": {"method": "predefined", "test_sites": ["a"]}}, "use split.method patient or kfold"),
    ({"split": {"method": "patient", "test_sites": ["a"], "test_fraction": 0.3}}, "split.test_sites gives the"),
])
def test_site_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


@pytest.mark.slow
def test_a_run_tested_on_another_site_reports_each_site(tmp_path):
    csv = write_sites(tmp_path / "data")
    config = tiny_svm_experiment("sites", tmp_path, {"source": "manifest", "path": str(csv)},
                                 {"method": "patient", "test_sites": ["east"], "val_fraction": 0.3})
    run = run_experiment(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "site(s) east, held out whole: an external test" in metrics["test_origin"]
    val = metrics["subgroups"]["site"]["val"]["groups"]
    assert set(val) == {"north", "south"} and "test" not in metrics["subgroups"]["site"]  # the test split is one site
    splits = pd.read_csv(run / "splits.csv")
    for site, figures in val.items():
        rows = splits[(splits["split"] == "val") & (splits["site"] == site)]
        assert (figures["n"], figures["n_positive"]) == (len(rows), int(rows["label"].sum()))
        assert figures["threshold"] == "youden" and 0 <= figures["auc"] <= 1
    report = (run / "report.html").read_text()
    assert "val by site: north AUC" in report and "external test" in report
    # evaluating on all three sites gives each its own figures
    assert main(["evaluate", "--model", str(run), "--data", f"manifest:{csv}"]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    tested = json.loads((evaluation / "metrics.json").read_text())["subgroups"]["site"]["test"]["groups"]
    assert {site: figures["n"] for site, figures in tested.items()} == {"east": 24, "north": 24, "south": 24}


@pytest.mark.slow
def test_a_kfold_run_reports_each_sites_out_of_fold_figures(tmp_path):
    csv = write_sites(tmp_path / "data", per_site=16)
    config = tiny_svm_experiment("sites_kfold", tmp_path, {"source": "manifest", "path": str(csv)},
                                 {"method": "kfold", "folds": 3, "test_sites": ["east"]})
    run = run_experiment(config)
    metrics = json.loads((run / "metrics.json").read_text())
    oof = metrics["subgroups"]["site"]["out_of_fold"]["groups"]
    assert {site: figures["n"] for site, figures in oof.items()} == {"north": 16, "south": 16}
    scores = pd.read_csv(run / "oof_predictions.csv")
    scores["site"] = scores["image"].map(lambda path: path.rsplit("/", 1)[1].split("_")[0])
    threshold = metrics["thresholds"]["youden"]
    for site, figures in oof.items():  # each site's figures are those of its own out-of-fold scores
        rows = scores[scores["site"] == site]
        positive = rows["label"].astype(int) == 1
        called = rows["oof_score"].astype(float) >= threshold
        assert figures["threshold"] == "youden" and figures["n_positive"] == int(positive.sum()) == 8
        assert figures["sensitivity"] == pytest.approx((called & positive).sum() / positive.sum())
        assert figures["specificity"] == pytest.approx((~called & ~positive).sum() / (~positive).sum())
    assert "pooled out-of-fold by site: north AUC" in (run / "report.html").read_text()


def test_copies_of_training_images_at_a_held_out_site_are_logged_as_such(tmp_path, capsys):
    """split.test_sites decides the test split, not the data source: the log says what the copies mean for an
    external test and what to do, rather than blaming a split the source made."""
    from tfmed.progress import configure_logging
    from tfmed.run.experiment import split_data

    manifest = write_sites(tmp_path)
    (tmp_path / "img" / "east_0.png").write_bytes((tmp_path / "img" / "north_0.png").read_bytes())
    config = ExperimentConfig.from_dict({"split": {"method": "patient", "test_sites": ["east"],
                                                   "val_fraction": 0.25}})
    configure_logging()
    table = split_data(config, load_manifest(manifest))
    assert (table.frame.loc[table.frame["site"] == "east", "split"] == "test").all()
    log = capsys.readouterr().out
    assert ("1 test image(s) are near-identical to training images (split.test_sites holds its sites' images out "
            "whole, and these copy images of a training site") in log
    assert "remove the copies from one site's data" in log and "a split the data source made" not in log


def test_the_dicom_folder_source_reads_the_site_from_institution_name(tmp_path):
    """data.source dicom takes a row's site from the DICOM InstitutionName tag (README, module doc), not from
    another tag such as StationName; a file without InstitutionName has no site."""
    import pydicom
    from pydicom.data import get_testdata_file
    from tfmed.data.sources.dicom import load_dicom_folder

    for name, hospital in (("a", "Hospital A"), ("b", "Hospital B")):
        (tmp_path / name).mkdir()
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.InstitutionName, ds.StationName = hospital, "CONSOLE1"
        ds.save_as(tmp_path / name / "x.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StationName = "CONSOLE1"
    if "InstitutionName" in ds:
        del ds.InstitutionName
    ds.save_as(tmp_path / "b" / "y.dcm", enforce_file_format=True)
    frame = load_dicom_folder(tmp_path).frame
    sites = dict(zip(frame["image"].map(lambda p: "/".join(p.split("/")[-2:])), frame["site"]))
    assert sites["a/x.dcm"] == "Hospital A" and sites["b/x.dcm"] == "Hospital B"
    assert pd.isna(sites["b/y.dcm"])
