"""Experiment configs load, validate and report the bad key by name."""
from pathlib import Path

import pytest
import yaml

from tfmed.config import ConfigError, ExperimentConfig

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
    ({"model": {"mode": "ensemble", "ensemble": {"members": [{"name": "a/b", "mode": "svm"}, {"mode": "finetune"}]}}},
     ["model.ensemble.members[0].name is 'a/b'; it names a folder"]),
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
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        ExperimentConfig.from_yaml(listing)


def test_stage_unfreeze_accepts_count_fraction_and_all():
    config = ExperimentConfig.from_dict({"model": {"mode": "finetune", "finetune": {"stages": [
        {"epochs": 1, "unfreeze": 0}, {"epochs": 1, "unfreeze": 0.5}, {"epochs": 1, "unfreeze": "all"}]}}})
    assert [s.unfreeze for s in config.model.finetune.stages] == [0, 0.5, "all"]


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
    from tfmed.config import EvaluationConfig, PreprocessConfig, SplitConfig

    with pytest.raises(ConfigError, match=r"split.test_fraction is 1.5; it must be in \[0, 1\)"):
        SplitConfig(test_fraction=1.5)
    with pytest.raises(ConfigError, match="preprocess.intensity is 'zscore'; allowed: minmax"):
        PreprocessConfig(intensity="zscore")
    with pytest.raises(ConfigError, match="evaluation.target_sensitivity is 0.0"):
        EvaluationConfig(target_sensitivity=0.0)


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
])
def test_settings_the_mode_does_not_use_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values, where="exp.yaml")


def test_a_run_made_before_unused_split_settings_were_refused_still_loads(tmp_path):
    for split, unused, default in (({"method": "predefined", "folds": 3}, "folds", 5),
                                   ({"method": "kfold", "val_fraction": 0.3}, "val_fraction", 0.1)):
        snapshot = ExperimentConfig.from_yaml(EXPERIMENTS[0].parent / "pneumonia_mnist.yaml").to_dict()
        snapshot["split"].update(split)  # a run's config.yaml lists every setting, these with no effect
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(snapshot))
        with pytest.raises(ConfigError, match=f"split.{unused} is .*; it is set, but"):
            ExperimentConfig.from_yaml(tmp_path / "config.yaml")  # refused in an experiment
        config = ExperimentConfig.from_run(tmp_path)
        assert getattr(config.split, unused) == default and config.split.method == split["method"]
    with pytest.raises(ConfigError, match="config.yaml: not found; a run directory holds"):
        ExperimentConfig.from_run(tmp_path / "elsewhere")


def test_the_same_check_runs_for_a_config_built_in_python():
    from tfmed.config import BalanceConfig

    with pytest.raises(ConfigError, match="balance.method is set, but model.mode 'svm'"):
        ExperimentConfig(balance=BalanceConfig(method="undersample"))
