"""The tfmed command line: each verb, and clear one-line errors for bad input."""
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from tfmed.run.cli import main

ROOT = Path(__file__).resolve().parent.parent
PMNIST = ROOT / "tfmed/datasets/pneumoniamnist/pneumoniamnist_trainval.npz"


def _tiny_config(tmp_path: Path, n: int = 120) -> Path:
    data = np.load(PMNIST)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, train_images=data["train_images"][:n], train_labels=data["train_labels"][:n],
             val_images=data["val_images"][:n // 2], val_labels=data["val_labels"][:n // 2])
    config = {"name": "tiny", "data": {"source": f"medmnist:{npz}"},
              "preprocess": {"image_size": 32},
              "model": {"svm": {"taps": ["middle"], "C": [1.0], "cv": 3}},
              "runs_dir": str(tmp_path / "runs")}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_help_shows_an_example_of_every_command(capsys):
    from tfmed.run.cli import _parser

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text  # the module docstring's markup stays out of the terminal
    verbs = next(action for action in _parser()._actions if action.dest == "verb").choices
    shown = set(re.findall(r"^    tfmed ([a-z-]+)", text, flags=re.MULTILINE))
    assert len(verbs) >= 14 and set(verbs) == shown


def test_backbones_lists_the_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    for name in ("efficientnet_lite0", "resnet50", "densenet121", "vgg16"):
        assert name in out


def test_validate_reports_every_bad_file_with_exit_1(tmp_path, capsys):
    for cls in ("normal", "pneumonia"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "good.png"), np.full((16, 16), 100, np.uint8))
    (tmp_path / "normal" / "empty.png").write_bytes(b"")
    (tmp_path / "pneumonia" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert main(["validate", f"folder:{tmp_path}"]) == 1
    out = capsys.readouterr().out
    assert "empty.png" in out and "broken.png" in out


def test_validate_a_clean_source_exits_0(tmp_path, capsys):
    assert main(["validate", str(_tiny_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    # an experiment YAML: also the split the run would make and its model's checks
    assert "experiment tiny: the run's checks passed (backbone, taps and weights; split train 96, val 60, " \
           "test 24; svm settings fit the binary data)" in out


@pytest.mark.parametrize("change, message", [
    ({"model": {"svm": {"taps": ["midle"], "C": [1.0], "cv": 3}}}, "unknown tap 'midle'"),
    ({"split": {"method": "patient", "val_fraction": 0.0}}, "the data have no validation split"),
    ({"split": {"method": "kfold", "folds": 70}}, "70 folds need every class in each fold"),
    ({"preprocess": {"image_size": 8}}, "tiny.yaml: preprocess.image_size: backbone 'efficientnet_lite0': "
                                        "input_shape (8, 8, 3) is below its minimum side 32"),
], ids=["tap", "no_validation", "too_many_folds", "too_small"])
def test_validate_an_experiment_runs_the_checks_a_run_makes_before_it_starts(tmp_path, capsys, change, message):
    path = _tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config.update(change)
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_validate_lists_near_identical_images_and_exits_0(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls in ("normal", "pneumonia"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), rng.integers(0, 256, (16, 16)).astype(np.uint8))
    (tmp_path / "pneumonia" / "0_again.png").write_bytes((tmp_path / "normal" / "1.png").read_bytes())
    assert main(["validate", f"folder:{tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "within 4 grey levels): 2 images in 1 groups" in out
    pair = next(line for line in out.splitlines() if line.startswith("  "))
    assert "normal/1.png" in pair and "pneumonia/0_again.png" in pair
    assert main(["validate", f"folder:{tmp_path}", "--near-duplicate-rms", "0"]) == 0
    assert "2 images in 1 groups" in capsys.readouterr().out  # an exact copy
    assert main(["validate", f"folder:{tmp_path}", "--near-duplicate-rms", "-1"]) == 2
    assert "--near-duplicate-rms is -1; give a number of grey levels >= 0" in capsys.readouterr().err
    (tmp_path / "normal" / "broken.png").write_bytes(b"")
    assert main(["validate", f"folder:{tmp_path}"]) == 1
    assert "near-identical images: looked for once the problems above are fixed" in capsys.readouterr().out


def test_validate_an_experiment_counts_copies_of_training_images_in_the_split_the_run_makes(tmp_path, capsys):
    from tfmed.config import ExperimentConfig
    from tfmed.data.near_duplicates import twins_in_train
    from tfmed.data.sources import load_source
    from tfmed.run.experiment import split_data

    data = np.load(PMNIST)
    train = data["train_images"][:120]
    val = np.concatenate([train[:12], data["val_images"][12:60]])  # 12 val images copy training images
    npz = tmp_path / "twins.npz"
    np.savez(npz, train_images=train, train_labels=data["train_labels"][:120],
             val_images=val, val_labels=np.concatenate([data["train_labels"][:12], data["val_labels"][12:60]]))
    path = tmp_path / "twins.yaml"
    path.write_text(yaml.safe_dump({"name": "twins", "data": {"source": f"medmnist:{npz}"},
                                    "preprocess": {"image_size": 32}, "runs_dir": str(tmp_path / "runs"),
                                    "model": {"svm": {"taps": ["middle"], "C": [1.0], "cv": 3}}}))
    experiment = ExperimentConfig.from_yaml(path)
    in_run = twins_in_train(split_data(experiment, load_source(experiment.data)))["val"]
    assert 0 < in_run < 12  # the carved test split took some of the copied training images
    assert main(["validate", str(path)]) == 0
    assert f"{in_run} val image(s) have a near-identical image in train" in capsys.readouterr().out


def test_bad_config_is_one_line_error_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  backbone_name: resnet\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.backbone_name" in err and "Traceback" not in err


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path)]) == 2
    assert "not a tfmed run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_run_then_predict_to_csv_then_evaluate(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    assert main(["run", str(config)]) == 0
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    image = tmp_path / "scan.png"
    cv2.imwrite(str(image), np.load(PMNIST)["val_images"][0])
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", "--model", str(run_dir), str(image), "--output", str(out_csv)]) == 0
    frame = pd.read_csv(out_csv)
    assert list(frame.columns) == ["image", "score", "threshold", "decision"]
    written = out_csv.read_bytes()
    capsys.readouterr()
    assert main(["predict", "--model", str(run_dir), str(image), "--output", str(out_csv)]) == 2
    assert "already exists; predictions never overwrite a file" in capsys.readouterr().err
    assert out_csv.read_bytes() == written
    assert main(["predict", "--model", str(run_dir), str(image), "--output", str(tmp_path / "new/a/pred.csv")]) == 0
    assert pd.read_csv(tmp_path / "new/a/pred.csv").equals(frame)
    capsys.readouterr()
    assert main(["predict", "--model", str(run_dir), str(image)]) == 0
    printed = capsys.readouterr()
    assert printed.out == frame.to_csv(index=False)  # the CSV alone: the progress lines went to stderr
    assert "[tfmed " in printed.err and f"scoring 1 image with the model of {run_dir}" in printed.err
    assert main(["predict", "--model", str(run_dir), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run_dir), "--output", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "report.html").is_file()
    assert not (tmp_path / "ev" / "excluded_rows.csv").exists()  # the run's own test split: listed by the run
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["scored_otherwise_than_the_run"] == 0
    assert evaluated["test_origin"] == json.loads((run_dir / "metrics.json").read_text())["test_origin"]
    assert "in-distribution" in evaluated["test_origin"]
    assert "in-distribution" in (tmp_path / "ev" / "report.html").read_text()
    made_by = json.loads((tmp_path / "ev" / "environment.json").read_text())
    assert made_by["model_run"] == str(run_dir.resolve()) and made_by["verified"] is True and made_by["cwd"]
    # a test image replaced since the run: its figures are no longer the run's, and the evaluation says so
    test_row = pd.read_csv(run_dir / "splits.csv").query("split == 'test'")["image"].iloc[0]
    index = int(test_row.rsplit("/", 1)[1])
    data = dict(np.load(tmp_path / "tiny.npz"))
    data["train_images"][index] = 255 - data["train_images"][index]
    np.savez(tmp_path / "tiny.npz", **data)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run_dir), "--output", str(tmp_path / "ev_changed")]) == 0
    assert "1 of 24 test images score otherwise than in the run's predictions.csv" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev_changed" / "metrics.json").read_text())["scored_otherwise_than_the_run"] == 1
    assert "their files changed since the run" in (tmp_path / "ev_changed" / "report.html").read_text()
    # other data with a file its source skips: listed, logged and in the report, not dropped silently
    classes = json.loads((run_dir / "metrics.json").read_text())["classes"]
    folder = tmp_path / "other"
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in np.flatnonzero(np.load(PMNIST)["val_labels"][:, 0] == label)[:4]:
            cv2.imwrite(str(folder / name / f"{i}.png"), np.load(PMNIST)["val_images"][i])
    (folder / classes[0] / "notes.txt").write_text("scanned on the old unit")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run_dir), "--data", f"folder:{folder}",
                 "--output", str(tmp_path / "ev2")]) == 0
    out = capsys.readouterr().out
    assert "1 warning(s):" in out and "notes.txt" in out and "not scored: 1 row skipped: " in out
    excluded = pd.read_csv(tmp_path / "ev2" / "excluded_rows.csv")
    assert excluded["image"].str.endswith("notes.txt").tolist() == [True]
    assert "Excluded rows (1)" in (tmp_path / "ev2" / "report.html").read_text()
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["counts"]["test"] == {
        classes[0]: 4, classes[1]: 4}


def test_sweep_layers_prints_bar_style_table(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    assert main(["sweep-layers", str(config), "--taps", "early", "middle"]) == 0
    out = capsys.readouterr().out
    for word in ("sensitivity", "specificity", "AUC", "early", "middle", "early+middle"):
        assert word in out
    saved = list((tmp_path / "runs" / "tiny_sweep").glob("*/layer_sweep.csv"))
    assert len(saved) == 1
    # --runs-dir, as for tfmed run: the sweep's folder, its feature cache and its stored config.yaml go there
    assert main(["sweep-layers", str(config), "--taps", "early", "middle", "--runs-dir", str(tmp_path / "mine")]) == 0
    mine = list((tmp_path / "mine" / "tiny_sweep").glob("*/layer_sweep.csv"))
    assert len(mine) == 1 and (tmp_path / "mine" / ".feature_cache").is_dir()
    assert yaml.safe_load((mine[0].parent / "config.yaml").read_text())["runs_dir"] == str(tmp_path / "mine")
    assert len(list((tmp_path / "runs" / "tiny_sweep").iterdir())) == 1  # nothing more in the config's folder
    (tmp_path / "afile").write_text("")
    assert main(["sweep-layers", str(config), "--runs-dir", str(tmp_path / "afile")]) == 2
    assert "afile" in capsys.readouterr().err


def test_sweep_layers_refuses_finetune_configs(tmp_path, capsys):
    path = _tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["model"]["mode"] = "finetune"
    del config["model"]["svm"]  # a finetune config has no SVM settings
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep-layers", str(path)]) == 2
    assert f"{path}: model.mode is 'finetune', and sweep-layers compares SVM features; set model.mode: svm" in \
        capsys.readouterr().err


def test_sweep_layers_refuses_a_kfold_experiment_before_reading_its_data(tmp_path, capsys):
    path = _tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["split"] = {"method": "kfold", "folds": 3}
    config["data"]["source"] = f"medmnist:{tmp_path / 'missing.npz'}"  # never read
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep-layers", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}: split.method is 'kfold', and sweep-layers measures each tap on the validation split" in error
    assert "split.method: patient" in error and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("section, setting", [({"tta": {"enabled": True}}, "tta.enabled"),
                                              ({"evaluation": {"recalibration": "logistic"}},
                                               "evaluation.recalibration"),
                                              ({"report": {"explain": True}}, "report.explain")])
def test_sweep_layers_refuses_settings_it_would_ignore_before_reading_the_data(tmp_path, capsys, section, setting):
    path = _tiny_config(tmp_path)
    config = {**yaml.safe_load(path.read_text()), **section}
    config["data"]["source"] = f"medmnist:{tmp_path / 'missing.npz'}"  # never read
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep-layers", str(path)]) == 2
    assert f"{setting} is set, and sweep-layers scores each tap on the validation images as they are" in \
        capsys.readouterr().err



@pytest.mark.parametrize("taps, message", [(["early", "lat"], "unknown tap 'lat' for backbone 'efficientnet_lite0'"),
                                           (["late", "late"], "taps lists a name twice: ['late', 'late']")])
def test_sweep_layers_refuses_a_misspelt_or_repeated_tap_before_reading_the_data(tmp_path, capsys, taps, message):
    path = _tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["data"]["source"] = f"medmnist:{tmp_path / 'missing.npz'}"  # never read
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep-layers", str(path), "--taps", *taps]) == 2
    error = capsys.readouterr().err
    assert message in error and "missing.npz" not in error and not (tmp_path / "runs").exists()
    assert "error: --taps: " in error  # the option's value, not the experiment's model.svm.taps


def test_sweep_layers_names_the_experiment_file_and_key_of_a_refused_setting(tmp_path, capsys):
    path = _tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["model"]["backbone"] = "efficientnet_lite9"
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep-layers", str(path)]) == 2
    assert f"error: {path}: model.backbone: unknown backbone 'efficientnet_lite9'" in capsys.readouterr().err


@pytest.mark.parametrize("data, said", [
    ({"source": "chestxray14", "path": "missing/Data_Entry_2017.csv"}, "data.source chestxray14 gives multilabel"),
    ({"source": "tbx11k", "path": "missing/TBX11K"}, "data.source tbx11k gives multiclass"),
    ({"source": "folder", "path": "missing", "task": "multiclass"}, "data.task gives multiclass"),
    ({"source": "merged", "parts": [{"source": "chexpert", "path": "missing/train.csv"},
                                    {"source": "chestxray14", "path": "missing/Data_Entry_2017.csv"}]},
     "data.source merged gives multilabel")])
def test_sweep_layers_refuses_data_that_are_not_binary_before_reading_them(tmp_path, capsys, data, said):
    path = _tiny_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["data"] = data
    path.write_text(yaml.safe_dump(config))
    assert main(["sweep-layers", str(path)]) == 2
    error = capsys.readouterr().err
    assert "sweep-layers reads sensitivity and specificity, so it needs a binary task, but " + said in error
    assert "model.svm.taps" in error and "missing" not in error and not (tmp_path / "runs").exists()

def test_ctrl_c_in_any_command_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import tfmed.run.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "backbones", interrupted)
    assert main(["backbones"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "tfmed: interrupted (Ctrl-C)\n" and "Traceback" not in captured.out


def test_a_reader_that_stops_early_ends_the_command_without_an_error(capsys, monkeypatch):
    """tfmed backbones | head -1: the rest of the listing has nowhere to go, which is no error of tfmed's."""
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["backbones"]) == 141
    assert capsys.readouterr().err == ""  # not "tfmed: error: [Errno 32] Broken pipe"


@pytest.mark.slow
def test_the_cli_keeps_tensorflow_start_up_noise_off_the_terminal():
    result = subprocess.run([sys.executable, "-m", "tfmed.run.cli", "backbones"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "efficientnet_lite0" in result.stdout
    for noise in ("absl", "cuda", "oneDNN", "I0000"):
        assert noise not in result.stderr


def test_library_code_logs_instead_of_printing(capsys, monkeypatch):
    import logging

    from tfmed.progress import LOGGER, configure_logging, log

    monkeypatch.setattr(LOGGER, "handlers", [logging.NullHandler()])
    log("quiet unless asked")
    assert capsys.readouterr().out == ""
    configure_logging()
    log("now shown")
    assert "] now shown" in capsys.readouterr().out
