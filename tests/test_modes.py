"""The mode protocol: both modes implement it, the run layer finds modes only through the table."""
import json

import numpy as np
import pytest

from tfmed.config import ConfigError, ExperimentConfig, PreprocessConfig
from tfmed.data.pipeline import ImageInputs
from tfmed.modes import MODES, Ensemble, FeatureSVM, FineTuner, Mode, get_mode, register_mode
from tfmed.run import artifact
from tfmed.run.artifact import TrainedModel


def test_the_table_holds_every_mode_under_its_config_name():
    assert MODES == {"svm": FeatureSVM, "finetune": FineTuner, "ensemble": Ensemble}
    assert isinstance(FeatureSVM(), Mode)
    assert isinstance(FineTuner("mobilenet_v2", "binary", 1, weights=None), Mode)
    assert isinstance(Ensemble.of_fitted([FeatureSVM(), FeatureSVM()], ["a", "b"], "binary"), Mode)


def test_unknown_mode_and_unregistered_names_are_refused():
    with pytest.raises(ConfigError, match="model.mode is 'tree'; allowed: ensemble, finetune, svm"):
        get_mode("tree")

    class Tree:
        name = "tree"

    with pytest.raises(TypeError, match="not among model.mode's choices"):
        register_mode(Tree)


def test_from_experiment_builds_each_mode_from_its_config_section(tmp_path):
    from tfmed.data.table import ImageTable
    import pandas as pd

    frame = pd.DataFrame({"image": ["a", "b", "c", "d"], "label": [0, 1, 1, 1], "patient_id": list("wxyz")})
    train = ImageTable(frame, ["normal", "pneumonia"], "binary")
    svm_config = ExperimentConfig.from_dict({"model": {"svm": {"taps": ["middle"], "C": [2.0]}}})
    svm = get_mode("svm").from_experiment(svm_config, train, None)
    assert svm.taps == ("middle",) and svm.C == (2.0,) and svm.task == "binary"
    ft_config = ExperimentConfig.from_dict({"balance": {"method": "class_weight"},
                                            "model": {"mode": "finetune", "backbone": "mobilenet_v2",
                                                      "weights": None}})
    tuner = get_mode("finetune").from_experiment(ft_config, train, tmp_path)
    # w_pos = N_neg / N and w_neg = N_pos / N of the train table
    assert (tuner.pos_weight, tuner.neg_weight) == pytest.approx((0.25, 0.75))
    assert tuner.classes == ["normal", "pneumonia"] and tuner.balance is None


class _Recorder:
    """A stand-in mode that records what the artifact asks of it."""

    name = "svm"
    calls = []

    def predict_table(self, table, inputs, batch_size=64):
        self.calls.append((len(table), inputs.preprocess.image_size, batch_size))
        return np.full(len(table), 0.25)

    def save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "recorder.json").write_text("{}")
        return directory

    @classmethod
    def load(cls, directory, *, trust_pickles=False):
        assert (directory / "recorder.json").is_file()
        return cls()


def test_the_artifact_saves_loads_and_predicts_through_the_mode_table(tmp_path, monkeypatch):
    import pandas as pd
    from tfmed.data.table import ImageTable

    monkeypatch.setitem(MODES, "svm", _Recorder)
    model = TrainedModel(mode="svm", task="binary", classes=["a", "b"], preprocess=PreprocessConfig(image_size=32),
                         stats=None, estimator=_Recorder(), thresholds={"youden": 0.3})
    model.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / artifact.ARTIFACT_FILE).read_text())["thresholds"] == {"youden": 0.3}
    loaded = TrainedModel.load(tmp_path / "model")
    assert isinstance(loaded.estimator, _Recorder)
    table = ImageTable(pd.DataFrame({"image": ["x", "y", "z"], "label": [0, 1, 0]}), ["a", "b"], "binary")
    scores = loaded.predict(table, batch_size=7)
    assert scores.tolist() == [0.25] * 3 and _Recorder.calls[-1] == (3, 32, 7)
    assert loaded.decide(scores).tolist() == [0, 0, 0]


def test_image_inputs_carry_preprocessing_and_statistics():
    inputs = ImageInputs(PreprocessConfig(image_size=16, intensity="standardize"), stats=None)
    with pytest.raises(ValueError, match="needs train-split statistics"):
        inputs.dataset(_tiny_table(), training=False)


def _tiny_table():
    import pandas as pd
    from tfmed.data.table import ImageTable

    images = np.zeros((2, 8, 8), np.uint8)
    frame = pd.DataFrame({"image": ["m#0", "m#1"], "array_index": [0, 1], "label": [0, 1]})
    return ImageTable(frame, ["a", "b"], "binary", images=images)
