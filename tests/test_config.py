"""Experiment configs load, validate and report the bad key by name."""
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from tfmed.config import AugmentConfig, ConfigError, ExperimentConfig

EXPERIMENTS = sorted((Path(__file__).parent.parent / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_shipped_experiment_loads(path):
    config = ExperimentConfig.from_yaml(path)
    assert config.name == path.stem


@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "missing_message" in p.read_text()], ids=lambda p: p.stem)
def test_an_experiment_without_its_data_says_where_to_get_it(path, tmp_path):
    from tfmed.data.sources import DataSourceError, load_source

    config = ExperimentConfig.from_yaml(path)
    with pytest.raises(DataSourceError) as caught:
        load_source(config.data, base_dir=tmp_path)  # an empty folder: the data are not there
    text = " ".join(str(caught.value).split())
    first = config.data.parts[0] if config.data.source == "merged" else config.data  # a merged table's first part
    assert "not found" in text and " ".join(first.missing_message.split()) in text
    assert f"make experiment NAME={path.stem}" in text


def test_round_trip_through_yaml(tmp_path):
    config = ExperimentConfig.from_yaml(EXPERIMENTS[0])
    config.to_yaml(tmp_path / "snapshot.yaml")
    again = ExperimentConfig.from_yaml(tmp_path / "snapshot.yaml")
    assert again == config


def _write(tmp_path, values):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("values, words", [
    ({"preprocess": {"imagesize": 64}}, ["preprocess.imagesize", "image_size"]),
    ({"model": {"mode": "boosting"}}, ["model.mode", "svm", "finetune"]),
    ({"preprocess": {"image_size": "big"}}, ["preprocess.image_size", "integer"]),
    ({"preprocess": {"channels": 1.0}}, ["preprocess.channels is 1.0; allowed: 1, 3"]),
    ({"split": {"test_fraction": 1.5}}, ["split.test_fraction", "[0, 1)"]),
    ({"preprocess": {"intensity": "window", "windows": []}}, ["preprocess.windows"]),
    ({"preprocess": {"windows": [[40, -1]]}}, ["preprocess.windows[0]", "width > 0"]),
    ({"augment": {"crop_from": 100}, "preprocess": {"image_size": 224}}, ["augment.crop_from"]),
    ({"model": {"svm": {"C": "ten"}}}, ["model.svm.C"]),
    ({"data": {"task": "regression"}}, ["data.task"]),
    ({"data": {"source": "folder", "path": "x", "classes": ["normal", "tb", "normal"]}},
     ["data.classes", "lists 'normal' twice"]),
    ({"name": "../elsewhere"}, ["name is '../elsewhere'; it names a folder"]),
    ({"name": "tb xray"}, ["name is 'tb xray'"]),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm", "weights": None}, {"mode": "svm"}]}}},
     ["model.ensemble.members[0].weights is null, which a member reads as left out: it takes model.weights "
      "('imagenet')", "set model.weights: null"]),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"name": "a/b", "mode": "svm"}, {"mode": "finetune"}]}}},
     ["model.ensemble.members[0].name is 'a/b'; it names a folder"]),
    # a member's own settings are named where they are written, not as the experiment's model.finetune
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm"}, {"mode": "finetune", "finetune": {
        "monitor": "val_acc"}}]}}}, ["model.ensemble.members[1].finetune.monitor is 'val_acc'"]),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm"}, {"mode": "finetune", "finetune": {
        "stages": [{"epochs": 0}]}}]}}}, ["model.ensemble.members[1].finetune.stages[0].epochs is 0"]),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm"}, {"mode": "finetune", "finetune": {
        "focal_gamma": 1.0}}]}}}, ["model.ensemble.members[1].finetune.focal_gamma is 1.0; only loss: focal"]),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm", "svm": {"cv": 1}},
                                                             {"mode": "finetune"}]}}},
     ["model.ensemble.members[0].svm.cv"]),
])
def test_bad_keys_are_named_with_the_file(tmp_path, values, words):
    path = _write(tmp_path, values)
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_yaml(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.from_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="Available here: .*pneumonia_mnist.*tb_xray"):
        ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "tb_xrays.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        ExperimentConfig.from_yaml(bad)
    bad.write_text("name: demo\ndata:\n  source: folder\n    path: x\n")  # path indented under source
    with pytest.raises(ConfigError) as caught:
        ExperimentConfig.from_yaml(bad)
    assert str(caught.value) == f"{bad}: not valid YAML at line 4, column 9: mapping values are not allowed here"
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        ExperimentConfig.from_yaml(listing)


def test_stage_unfreeze_accepts_count_fraction_and_all():
    config = ExperimentConfig.from_dict({"model": {"mode": "finetune", "finetune": {"stages": [
        {"epochs": 1, "unfreeze": 0}, {"epochs": 1, "unfreeze": 0.5}, {"epochs": 1, "unfreeze": "all"}]}}})
    assert [s.unfreeze for s in config.model.finetune.stages] == [0, 0.5, "all"]
    for fraction, words in ((2.0, "a fraction of blocks must be in (0, 1]; for 2 top blocks write 2"),
                            (1.5, "a fraction of blocks must be in (0, 1]")):
        with pytest.raises(ConfigError, match=re.escape(f"model.finetune.stages[1].unfreeze is {fraction}; {words}")):
            ExperimentConfig.from_dict({"model": {"mode": "finetune", "finetune": {"stages": [
                {"epochs": 1}, {"epochs": 1, "unfreeze": fraction}]}}})


def test_the_readme_example_experiment_is_valid():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = ExperimentConfig.from_dict(yaml.safe_load(block))
    assert config.model.mode == "finetune" and len(config.preprocess.windows) == 3


# ----------------------------------------------- one source of allowed values
def test_choices_come_from_the_config_and_consumers_use_them():
    from tfmed.config import SVMConfig, choices
    from tfmed.modes import FeatureSVM

    assert choices(SVMConfig, "kernel") == ("linear", "rbf")
    with pytest.raises(ValueError, match="kernel is 'poly'; allowed: linear, rbf"):
        FeatureSVM(kernel="poly")._check_params()


def test_sections_built_in_python_are_range_checked():
    from tfmed.config import EvaluationConfig, FinetuneConfig, PreprocessConfig, SplitConfig

    with pytest.raises(ConfigError, match=r"split.test_fraction is 1.5; it must be in \[0, 1\)"):
        SplitConfig(test_fraction=1.5)
    with pytest.raises(ConfigError, match="preprocess.intensity is 'zscore'; allowed: minmax"):
        PreprocessConfig(intensity="zscore")
    with pytest.raises(ConfigError, match="evaluation.target_sensitivity is 0.0"):
        EvaluationConfig(target_sensitivity=0.0)
    with pytest.raises(ConfigError, match="model.finetune.monitor is 'val_acc'; the epoch logs have val_auc, "
                       "val_loss, val_sensitivity, val_specificity, loss or auc"):
        FinetuneConfig(monitor="val_acc")


@pytest.mark.parametrize("values, message", [
    ({"balance": {"method": "oversample"}}, "balance.method is set, but model.mode 'svm' does not use it"),
    ({"augment": {"rotation_degrees": 5.0}}, "augment.rotation_degrees is set, but model.mode 'svm'"),
    ({"model": {"finetune": {"epochs_typo": 1}}}, "unknown key model.finetune.epochs_typo"),
    ({"model": {"finetune": {"dropout": 0.5}}}, "model.finetune.dropout is set, but model.mode 'svm'"),
    ({"model": {"mode": "finetune", "svm": {"C": [1.0]}}}, "model.svm.C is set, but model.mode 'finetune'"),
    ({"model": {"mode": "finetune", "finetune": {"strategy": "multiworker"}}},
     "model.finetune.strategy is 'multiworker'; allowed: auto, cpu, mirrored, tpu"),
    ({"split": {"method": "predefined", "folds": 3}}, "split.folds is 3; it is set, but only split.method kfold"),
    ({"split": {"method": "patient", "folds": 10}}, "split.folds is 10; it is set, but only split.method kfold"),
    ({"split": {"method": "kfold", "val_fraction": 0.3}},
     "split.val_fraction is 0.3; it is set, but split.method kfold makes no val split"),
    ({"model": {"mode": "finetune", "finetune": {"momentum": 0.5}}},
     "model.finetune.momentum is 0.5; only optimizer: sgd uses it"),
    ({"model": {"mode": "finetune", "finetune": {"loss": "bce", "focal_gamma": 3.0}}},
     "model.finetune.focal_gamma is 3.0; only loss: focal uses it"),
    ({"model": {"mode": "finetune", "finetune": {"monitor": "val_loss", "early_stopping_patience": None}}},
     "model.finetune.monitor is 'val_loss'; only early stopping and schedule: plateau watch it"),
    ({"model": {"mode": "finetune", "finetune": {"stages": [{"epochs": 1, "lr_factor": 0.5}]}}},
     r"model.finetune.stages\[0\].lr_factor is 0.5; .* the first stage starts at model.finetune.learning_rate"),
    ({"model": {"mode": "finetune", "finetune": {"stages": [{}, {"learning_rate": 0.01, "lr_factor": 0.5}]}}},
     r"model.finetune.stages\[1\].lr_factor is 0.5; .* this stage gives its own learning_rate"),
    ({"seed": 3, "model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm", "seed": 1},
                                                                      {"mode": "finetune", "seed": 2}]}}},
     "seed is set, but every ensemble member names its own seed"),
    ({"model": {"mode": "finetune", "finetune": {"learning_rate": 0.05, "stages": [{"learning_rate": 0.001}]}}},
     r"model.finetune.learning_rate is 0.05; the first stage gives its own learning_rate \(0.001\)"),
    ({"model": {"svm": {"kernel": "linear", "gamma": [0.1]}}},
     "model.svm.gamma is \\[0.1\\]; it is the RBF kernel's width, and kernel is 'linear'"),
    ({"preprocess": {"windows": [[40, 400]]}}, "preprocess.windows is .*; only intensity 'window' reads them"),
    ({"model": {"weights": None, "weights_dir": "weights"}},
     "model.weights_dir is 'weights'; only weights: imagenet searches it .* and weights is None"),
    ({"model": {"mode": "finetune"}, "augment": {"enabled": False, "hflip": True}},
     "augment.hflip is true; it is set but augment.enabled is false"),
    ({"model": {"mode": "finetune"}, "augment": {"enabled": True}},
     "augment.enabled is true; it is true but every transform is off"),
    ({"data": {"source": "pneumonia_mnist", "path": "mine.npz"}},
     "data.path is 'mine.npz'; data.source pneumonia_mnist is shipped with tfmed, so it reads no file"),
    ({"data": {"task": "multiclass"}}, "data.task is 'multiclass'; data.source pneumonia_mnist is shipped"),
    ({"data": {"source": "medmnist:a.npz", "path": "b.npz"}},
     "data.path is 'b.npz'; data.source 'medmnist:a.npz' already names its path after the colon"),
    ({"data": {"source": "folder", "path": "x", "patient_column": "pid"}},
     "data.patient_column is 'pid'; it is set, but only data.source manifest uses it"),
    ({"data": {"source": "medmnist", "path": "x.npz", "root": "images"}},
     "data.root is 'images'; it is set, but only data.source manifest, chestxray14"),
    ({"data": {"source": "manifest", "path": "x.csv", "filename_label_suffix": True}},
     "data.filename_label_suffix is true; it is set, but only data.source folder uses it"),
])
def test_settings_the_mode_does_not_use_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values, where="exp.yaml")


def test_the_config_knows_every_shipped_data_set():
    from tfmed.config import DataConfig
    from tfmed.data.sources import EMBEDDED

    assert set(DataConfig.EMBEDDED_SOURCES) == set(EMBEDDED)


def test_a_run_made_before_unused_settings_were_refused_still_loads(tmp_path):
    for split, unused, default in (({"method": "predefined", "folds": 3}, "folds", 5),
                                   ({"method": "kfold", "val_fraction": 0.3}, "val_fraction", 0.1)):
        snapshot = ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "pneumonia_mnist.yaml").to_dict()
        snapshot["split"].update(split)  # a run's config.yaml lists every setting, these with no effect
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
        with pytest.raises(ConfigError, match=f"split.{unused} is .*; it is set, but"):
            ExperimentConfig.from_yaml(tmp_path / "config.yaml")  # refused in an experiment
        config = ExperimentConfig.from_run(tmp_path)
        assert getattr(config.split, unused) == default and config.split.method == split["method"]
    # several at once, in sections and in an ensemble member: each is read as its default
    snapshot = ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "pneumonia_mnist.yaml").to_dict()
    snapshot["data"]["patient_column"] = "pid"
    snapshot["augment"]["enabled"] = False          # with its six settings still listed
    finetune = snapshot["model"]["ensemble"]["members"][1]["finetune"]
    finetune["momentum"] = 0.5
    finetune["stages"][1]["learning_rate"] = 1e-4   # used, and so keeps this stage's lr_factor 0.5 unused
    finetune["stages"][1]["lr_factor"] = 0.5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
    with pytest.raises(ConfigError, match="augment.rotation_degrees is 5.0; it is set but augment.enabled is false"):
        ExperimentConfig.from_yaml(tmp_path / "config.yaml")  # the first of them (safe_dump sorts the keys)
    config = ExperimentConfig.from_run(tmp_path)
    member = config.model.ensemble.members[1].finetune
    assert config.data.patient_column == "patient_id" and member.momentum == 0.9
    assert member.stages[1].learning_rate == 1e-4 and member.stages[1].lr_factor == 0.1
    assert config.augment == AugmentConfig(enabled=False)
    snapshot["data"]["path"] = 3                    # an invalid value is still refused
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
    with pytest.raises(ConfigError, match="data.path must be text, got 3"):
        ExperimentConfig.from_run(tmp_path)
    with pytest.raises(ConfigError, match="config.yaml: not found; a run directory holds"):
        ExperimentConfig.from_run(tmp_path / "elsewhere")


def test_the_same_check_runs_for_a_config_built_in_python():
    from tfmed.config import BalanceConfig

    with pytest.raises(ConfigError, match="balance.method is set, but model.mode 'svm'"):
        ExperimentConfig(balance=BalanceConfig(method="undersample"))


# ------------------------------------------------ files that are no experiment, and settings that say nothing
@pytest.mark.parametrize("text, words", [
    ("", "exp.yaml is empty"), ("# name: later\n\n", "exp.yaml is empty"),
    ("false\n", "exp.yaml holds a boolean (False), not a mapping of settings"),
    ("0\n", "exp.yaml holds a number (0), not a mapping of settings"),
    ("~\n", "exp.yaml holds null (~), not a mapping of settings"),
])
def test_an_empty_file_or_one_without_a_mapping_is_refused(tmp_path, text, words):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / words}")):
        ExperimentConfig.from_yaml(path)


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "exp.yaml"
    for text, message in (
            ("seed: 7\nmodel:\n  mode: svm\npreprocess: {image_size: 64}\nmodel:\n  mode: finetune\n",
             "key model is written twice (lines 2 and 5); keep one"),
            ("model:\n  svm: {C: [1.0], cv: 3, C: [10.0]}\n", "key model.svm.C is written twice (lines 2 and 2)"),
            ("model:\n  mode: ensemble\n  ensemble:\n    members:\n      - {mode: svm}\n      - mode: finetune\n"
             "        seed: 1\n        seed: 2\n",
             "key model.ensemble.members[1].seed is written twice (lines 7 and 8)")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
            ExperimentConfig.from_yaml(path)
    # a merge key brings in a mapping whose keys may then be overridden: not a repeated key
    path.write_text("model:\n  mode: ensemble\n  ensemble:\n    members:\n"
                    "      - &svm {name: a, mode: svm, svm: {cv: 3}}\n"
                    "      - <<: *svm\n        name: b\n        svm: {cv: 4}\n")
    members = ExperimentConfig.from_yaml(path).model.ensemble.members
    assert [(m.name, m.mode, m.svm.cv) for m in members] == [("a", "svm", 3), ("b", "svm", 4)]


@pytest.mark.parametrize("text, key", [
    ("model: {svm: {C: [.nan]}}", "model.svm.C is [nan]"),
    ("model: {svm: {gamma: [.nan]}}", "model.svm.gamma is [nan]"),
    ("model: {mode: finetune}\naugment: {blur_sigma: .nan}", "augment.blur_sigma is nan"),
    ("model: {mode: finetune}\naugment: {noise: .NaN}", "augment.noise is nan"),
    ("model: {mode: finetune}\naugment: {rotation_degrees: .inf}", "augment.rotation_degrees is inf"),
    ("model: {mode: finetune}\naugment: {brightness: .inf}", "augment.brightness is inf"),
    ("preprocess: {intensity: window, windows: [[-.inf, 400]]}", "preprocess.windows is [[-inf, 400.0]]"),
    ("model: {mode: finetune, finetune: {stages: [{unfreeze: .inf}]}}", "model.finetune.stages[0].unfreeze is inf"),
    ("tta: {enabled: true, shift: .nan}", "tta.shift is nan"),
])
def test_nan_and_infinity_are_refused_in_every_number(tmp_path, text, key):
    assert_file_refused(tmp_path, text, f"{key}; it must be a finite number, not NaN or infinity")
    with pytest.raises(ConfigError, match=r"augment.noise is nan; it must be a finite number"):
        AugmentConfig(noise=float("nan"))  # built in Python too


def test_a_file_that_is_not_utf8_text_is_refused_naming_it(tmp_path):
    for name, data in (("latin1.yaml", "name: café\n".encode("latin-1")),
                       ("utf16.yaml", "name: x\n".encode("utf-16")), ("data.npz", b"PK\x03\x04\x14\x00\xff\xfe\x00")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / name} is not a UTF-8 text YAML file")):
            ExperimentConfig.from_yaml(tmp_path / name)
    (tmp_path / "bom.yaml").write_bytes("name: bom\n".encode("utf-8-sig"))  # a byte order mark is UTF-8 still
    assert ExperimentConfig.from_yaml(tmp_path / "bom.yaml").name == "bom"


def test_a_folder_named_like_an_experiment_is_said_to_be_one_and_not_listed(tmp_path, monkeypatch):
    (tmp_path / "study.yaml").mkdir()
    (tmp_path / "real.yaml").write_text("name: real\n")
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_yaml(tmp_path / "study.yaml")
    assert str(info.value) == (f"{tmp_path / 'study.yaml'} is a folder, not an experiment file. Experiments live in "
                               "experiments/NAME.yaml. Available here: real.")
    with pytest.raises(ConfigError, match=r"nope.yaml: experiment file not found\. .* Available here: real\.$"):
        ExperimentConfig.from_yaml(tmp_path / "nope.yaml")
    monkeypatch.chdir(Path(__file__).parent.parent)  # a misspelt folder in the repository: its experiments listed
    with pytest.raises(ConfigError, match=r"file not found\. .*Available in experiments/: .*pneumonia_mnist,"):
        ExperimentConfig.from_yaml("experimnts/pneumonia_mnist.yaml")
    monkeypatch.chdir(tmp_path)  # outside the repository
    with pytest.raises(ConfigError, match=r"experiment file not found\. .*a pip-installed tfmed does not include"):
        ExperimentConfig.from_yaml("experiments/pneumonia_mnist.yaml")


@pytest.mark.parametrize("values, message", [
    ({"split": {"method": "kfold", "val_fraction": 0.1}},
     "split.val_fraction is 0.1; it is set, but split.method kfold"),
    ({"split": {"method": "predefined", "folds": 5}}, "split.folds is 5; it is set, but only split.method kfold"),
    ({"split": {"method": "patient", "test_sites": ["a"], "test_fraction": 0.2}}, "split.test_fraction is 0.2; it is"),
    ({"tta": {"shift": 0.05}}, "tta.shift is 0.05; it is set but tta.enabled is false"),
    ({"views": {"enabled": False, "planes": "orthogonal"}},
     "views.planes is 'orthogonal'; it is set but views.enabled"),
    ({"report": {"explain_method": "gradcam"}}, "report.explain_method is 'gradcam'; it is set but report.explain"),
    ({"model": {"finetune": {"learning_rate": 0.001}}}, "model.finetune.learning_rate is set, but model.mode 'svm'"),
    ({"model": {"mode": "finetune"}, "augment": {"enabled": False, "hflip": False}},
     "augment.hflip is false; it is set but augment.enabled is false"),
    ({"model": {"mode": "finetune", "finetune": {"momentum": 0.9}}}, "model.finetune.momentum is 0.9; only optimizer"),
    ({"model": {"mode": "finetune", "finetune": {"stages": [{"epochs": 1, "lr_factor": 0.1}]}}},
     r"model.finetune.stages\[0\].lr_factor is 0.1; .* the first stage starts at model.finetune.learning_rate"),
    ({"model": {"svm": {"kernel": "linear", "gamma": ["scale"]}}}, "model.svm.gamma is \\['scale'\\]; it is the RBF"),
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"mode": "svm", "finetune": {"dropout": 0.2}},
                                                             {"mode": "finetune"}]}}},
     r"model.ensemble.members\[0\].finetune.dropout is set, but model.ensemble.members\[0\].mode 'svm'"),
    ({"data": {"source": "folder", "path": "x", "label_columns": ["label"]}},
     "data.label_columns is \\['label'\\]; it is set, but only data.source manifest uses it"),
])
def test_an_unused_setting_written_with_its_default_value_is_refused_too(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values, where="exp.yaml")


def test_switches_nulls_and_whole_sections_written_with_defaults_still_load(tmp_path):
    config = ExperimentConfig.from_dict({
        "data": {"task": None, "path": None}, "split": {"method": "kfold", "val_fraction": 0.0},
        "views": {"enabled": False, "slice_gap_mm": None}, "tta": {"enabled": False}, "report": {"explain": False},
        "model": {"mode": "finetune", "weights_dir": None}, "augment": {"enabled": False}})
    assert config.split.val_fraction == 0.0 and not config.views.enabled
    # a section that lists all its settings is a run's snapshot: only what differs from the default counts
    snapshot = ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "pneumonia_mnist_svm.yaml").to_dict()
    assert ExperimentConfig.from_dict(snapshot).to_dict() == snapshot
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
    assert ExperimentConfig.from_run(tmp_path).to_dict() == snapshot
    from tfmed.config import SplitConfig

    assert SplitConfig(method="kfold", val_fraction=0.1).val_fraction == 0.1  # built in Python: by value


def test_a_run_snapshot_missing_a_setting_still_loads_with_from_run(tmp_path):
    snapshot = ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "pneumonia_mnist_svm.yaml").to_dict()
    del snapshot["model"]["finetune"]["view_pooling"]  # a run made before the setting existed
    del snapshot["tta"]["dihedral"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
    with pytest.raises(ConfigError, match=r"config.yaml: model.finetune.\w+ is set, but model.mode 'svm' does not"):
        ExperimentConfig.from_yaml(tmp_path / "config.yaml")  # as an experiment, its defaults are written settings
    config = ExperimentConfig.from_run(tmp_path)
    assert config.model.finetune.view_pooling == "mean" and config.model.mode == "svm"


def test_a_section_the_mode_does_not_use_is_refused_before_its_values_are_checked(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  finetune:\n    momentum: 0.5\n")  # unused in SVM mode, whatever the optimizer
    with pytest.raises(ConfigError, match=re.escape(f"{path}: model.finetune.momentum is set, but model.mode 'svm' "
                                                    "does not use it (only finetune mode does)")):
        ExperimentConfig.from_yaml(path)
    # an SVM run made before augment was refused in SVM mode, its augment out of today's range, still loads
    snapshot = ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "pneumonia_mnist_svm.yaml").to_dict()
    snapshot["augment"]["rotation_degrees"] = 200.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
    config = ExperimentConfig.from_run(tmp_path)
    assert config.model.mode == "svm" and config.augment == AugmentConfig()
    with pytest.raises(ConfigError, match=r"augment.rotation_degrees is set, but model.mode 'svm' does not use it"):
        ExperimentConfig.from_yaml(tmp_path / "config.yaml")
    # an ensemble member's section alike, and a mode that is not a name is named as such, not a TypeError
    members = [{"mode": "svm", "finetune": {"momentum": 0.5}}, {"mode": "finetune"}]
    with pytest.raises(ConfigError, match=re.escape("model.ensemble.members[0].finetune.momentum is set, but "
                                                    "model.ensemble.members[0].mode 'svm' does not use it")):
        ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": members}}})
    with pytest.raises(ConfigError, match=re.escape("model.mode is ['svm']; allowed: svm, finetune, ensemble")):
        ExperimentConfig.from_dict({"model": {"mode": ["svm"]}})


@pytest.mark.parametrize("weights", ["none", "None"])
def test_weights_none_as_text_asks_for_yamls_null(tmp_path, weights):
    path = tmp_path / "exp.yaml"
    path.write_text(f"model:\n  weights: {weights}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: model.weights is {weights!r}; for random "
                                                    "initialisation write weights: null")):
        ExperimentConfig.from_yaml(path)
    path.write_text("model:\n  weights: null\n")
    assert ExperimentConfig.from_yaml(path).model.weights is None
    members = [{"mode": "svm", "weights": weights}, {"mode": "finetune"}]
    with pytest.raises(ConfigError, match=re.escape(f"model.ensemble.members[0].weights is {weights!r}; for random")):
        ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": members}}})


def test_a_finetune_monitor_is_refused_where_k_fold_leaves_no_validation_split_to_watch():
    values = {"split": {"method": "kfold"}, "model": {"mode": "finetune", "finetune": {
        "monitor": "val_sensitivity", "early_stopping_patience": 1}}}
    with pytest.raises(ConfigError, match=r"model.finetune.monitor is 'val_sensitivity', but with split.method kfold "
                                          "no fine-tune has a validation split to watch"):
        ExperimentConfig.from_dict(values)
    values["model"]["finetune"]["monitor"] = "loss"  # what it watches there
    ExperimentConfig.from_dict(values)
    values["model"]["finetune"]["monitor"] = "val_auc"  # the default: replaced by the training loss, as logged
    ExperimentConfig.from_dict(values)
    values["split"] = {"method": "patient"}
    values["model"]["finetune"]["monitor"] = "val_sensitivity"
    ExperimentConfig.from_dict(values)


def test_a_data_yaml_for_scoring_is_its_data_section_alone(tmp_path):
    """evaluate / recalibrate --data FILE: the data: section is read alone (a volume source needs no views:
    section, the run's own are used), and other sections, which could not act, are refused."""
    from tfmed.config import data_section
    alone = tmp_path / "luna.yaml"
    alone.write_text("data:\n  source: luna16\n  path: LUNA16/candidates_V2.csv#1\n  exclude_bad_rows: true\n")
    parsed = data_section(alone)
    assert (parsed.source, parsed.path, parsed.exclude_bad_rows) == ("luna16", "LUNA16/candidates_V2.csv#1", True)
    beside = tmp_path / "beside.yaml"
    beside.write_text("data:\n  source: luna16\n  path: c.csv\nviews: {enabled: true, center: lesion}\ntta: {}\n")
    with pytest.raises(ConfigError, match=r"beside\.yaml holds tta, views beside data:; only its data: section"):
        data_section(beside)
    nothing = tmp_path / "none.yaml"
    nothing.write_text("name: x\n")
    with pytest.raises(ConfigError, match="none.yaml has no data: section"):
        data_section(nothing)
    nothing.write_text("data:\n  source: manifest\n  path: a.csv\n  frontal_only: true\n")
    with pytest.raises(ConfigError, match=r"data\.frontal_only"):  # the section's own checks hold
        data_section(nothing)
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        data_section(tmp_path / "missing.yaml")


def test_a_number_where_text_is_expected_is_told_to_quote_it():
    with pytest.raises(ConfigError, match=r"evaluation.hierarchy.*must be text, got 0 \(quote it: '0'\)"):
        ExperimentConfig.from_dict({"evaluation": {"hierarchy": {"a": [0], "b": ["1"]}}})


@pytest.mark.parametrize("text, message", [
    ("model: {mode: finetune, finetune: {learning_rate: 1e-3}}",
     "model.finetune.learning_rate must be a number, got '1e-3' (YAML reads 1e-3 as text: write 1.0e-3)"),
    ("model: {mode: finetune, finetune: {learning_rate: '0.001'}}",
     "model.finetune.learning_rate must be a number, got '0.001' (a number in quotes is text: remove the quotes)"),
    ("model: {svm: {taps: [late, null]}}", "model.svm.taps[1] is null, which it cannot be; remove the item"),
    ("split: {method: kfold, val_fraction: null}",
     "split.val_fraction is null, which it cannot be; remove the line for its default, or give a value"),
    ("split: {method: patient, test_sites: [NO]}",
     "split.test_sites[0] must be text, got False (YAML reads an unquoted yes, no, on, off, true or false"),
    ("model: {mode: svm, 1: x, typo: y}", "unknown key model.1; allowed keys here: mode,"),
    ("on: x\nrunsdir: y", "unknown key True (YAML reads an unquoted on, off, yes or no as true or false: quote"),
    ("split: {method: patient, final: refit}", "split.final is 'refit'; it is set, but only split.method kfold"),
    ("model: {mode: finetune}\naugment: {rotation_degrees: 270}", "augment.rotation_degrees is 270.0; give a rota"),
    ("model: {mode: finetune}\naugment: {brightness: 2}", "augment.brightness is 2.0; give a brightness range"),
    ("model: {mode: finetune}\naugment: {contrast: 1.0}", "augment.contrast is 1.0; give a contrast range below 1"),
])
def test_yaml_surprises_and_out_of_range_augmentation_are_named_with_the_fix(tmp_path, text, message):
    assert_file_refused(tmp_path, text, message)


def assert_file_refused(tmp_path, text: str, message: str) -> None:
    """An experiment file holding ``text`` is refused with ``message`` after the file's name."""
    path = tmp_path / "exp.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
        ExperimentConfig.from_yaml(path)


def test_a_tilde_in_runs_dir_and_data_paths_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = ExperimentConfig.from_dict({"runs_dir": "~/runs", "data": {"source": "manifest", "path": "~/m.csv",
                                                                        "root": "~/images"}})
    assert config.runs_dir == str(tmp_path / "runs")
    assert (config.data.path, config.data.root) == (str(tmp_path / "m.csv"), str(tmp_path / "images"))
    assert dataclasses.replace(config, runs_dir="~/other").runs_dir == str(tmp_path / "other")  # --runs-dir
    from tfmed.data.sources import parse_source_spec

    assert parse_source_spec("medmnist:~/tiny.npz#test").path == str(tmp_path / "tiny.npz#test")


def test_a_number_written_as_text_gets_the_numbers_advice_even_where_names_are_allowed():
    with pytest.raises(ConfigError, match=r"model.svm.gamma\[0\] must be a number, got '1e-3' \(YAML reads 1e-3 as "
                                          r"text: write 1.0e-3\)"):
        ExperimentConfig.from_dict({"model": {"svm": {"gamma": ["1e-3"]}}})
    with pytest.raises(ConfigError, match=r"model.svm.gamma\[0\] is 'skale'; allowed: scale, auto"):
        ExperimentConfig.from_dict({"model": {"svm": {"gamma": ["skale"]}}})


def test_an_unquoted_yes_or_no_as_a_mapping_key_is_refused_not_read_as_true():
    values = yaml.safe_load("evaluation: {hierarchy: {yes: [a], no: [b]}}")
    with pytest.raises(ConfigError, match=r"evaluation.hierarchy has the key true; YAML reads an unquoted on, off, "
                                          r"yes, no or null as true, false or null: quote the key"):
        ExperimentConfig.from_dict(values)
    quoted = ExperimentConfig.from_dict(yaml.safe_load("evaluation: {hierarchy: {'yes': [a], 'no': [b]}}"))
    assert quoted.evaluation.hierarchy == {"yes": ["a"], "no": ["b"]}


def test_a_member_starts_from_random_weights_when_model_weights_is_null():
    config = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "weights": None, "ensemble": {"members": [
        {"mode": "svm"}, {"mode": "svm", "weights": "imagenet"}]}}})
    assert [config.member_experiment(i).model.weights for i in (0, 1)] == [None, "imagenet"]
    inherited = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": [
        {"mode": "svm"}, {"mode": "finetune"}]}}})
    assert [inherited.member_experiment(i).model.weights for i in (0, 1)] == ["imagenet", "imagenet"]
    # a run's config.yaml writes every member's weights, null where it was left out: it still reads as written
    assert ExperimentConfig.from_dict(inherited.to_dict()).member_experiment(0).model.weights == "imagenet"


@pytest.mark.parametrize("refused, accepted, words", [
    ({"preprocess": {"intensity": "window", "windows": [[40, 0]]}},
     {"preprocess": {"intensity": "window", "windows": [[40, 1]]}}, ["windows[0]", "width > 0"]),
    ({"model": {"mode": "svm", "svm": {"C": [0.0, 1.0]}}},
     {"model": {"mode": "svm", "svm": {"C": [0.001, 1.0]}}}, ["C", "> 0"]),
    ({"evaluation": {"subgroups": ["age"], "age_bands": [0, 60]}},
     {"evaluation": {"subgroups": ["age"], "age_bands": [1, 60]}}, ["age_bands", "1-130"]),
    ({"evaluation": {"ci_level": 1.0}}, {"evaluation": {"ci_level": 0.999}}, ["ci_level", "in (0, 1)"]),
])
def test_boundary_values_just_outside_the_allowed_range_are_refused(tmp_path, refused, accepted, words):
    """The boundary itself is refused (window width 0, an SVM C of 0, an age band starting at 0, a 100 %
    confidence interval) and the value just inside it accepted; a < for a <= let the boundary through."""
    with pytest.raises(ConfigError) as error:
        ExperimentConfig.from_yaml(_write(tmp_path, refused))
    for word in words:
        assert word in str(error.value)
    ExperimentConfig.from_yaml(_write(tmp_path, accepted))
