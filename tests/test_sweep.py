"""Layer sweep in the form of Bar et al.'s table (tfmed.modes.sweep)."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score, roc_auc_score

import tfmed.backbones
from tfmed.modes import FeatureSVM
from tfmed.modes.features import FeatureError
from tfmed.modes.sweep import format_sweep, save_sweep, sweep_layers, sweep_tables

SIZE = 32
PARAMS = dict(weights=None, image_size=SIZE, C=(1.0,), cv=3, batch_size=16)


def make_images(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.uniform(0, 100, (n, SIZE, SIZE, 1)).astype(np.float32)
    X[y == 1, 4:14, 4:28] += 150.0
    X[y == 0, 18:28, 4:28] += 150.0
    return X, y


@pytest.fixture(scope="module")
def data():
    return make_images(30, 0) + make_images(16, 1)


def test_sweep_table_matches_independent_metrics(data, tmp_path, monkeypatch):
    X_train, y_train, X_val, y_val = data
    calls = []
    original = tfmed.backbones.extract_features

    def counted(model, images, batch_size=32):
        calls.append(sorted(model.output))
        return original(model, images, batch_size=batch_size)

    monkeypatch.setattr(tfmed.backbones, "extract_features", counted)
    table = sweep_layers(X_train, y_train, X_val, y_val, taps=["early", "middle"],
                         fusions=[["early", "middle"], ["middle", "texture"]],
                         cache_dir=str(tmp_path), **PARAMS)
    assert list(table.columns) == ["early", "middle", "early+middle", "middle+texture"]
    assert list(table.index) == ["sensitivity", "specificity", "AUC"]
    # one backbone pass per image set, all taps at once; the fits read the cache
    assert calls == [["early", "middle"], ["early", "middle"]]

    # an independently fitted model on one tap gives the same column
    model = FeatureSVM(taps=("middle",), cache_dir=str(tmp_path), **PARAMS).fit(X_train, y_train)
    scores = model.decision_function(X_val)
    assert table.loc["AUC", "middle"] == pytest.approx(roc_auc_score(y_val, scores))
    predicted = (scores > 0).astype(int)
    assert table.loc["sensitivity", "middle"] == pytest.approx(recall_score(y_val, predicted, pos_label=1))
    assert table.loc["specificity", "middle"] == pytest.approx(recall_score(y_val, predicted, pos_label=0))
    assert ((table >= 0) & (table <= 1)).all().all()


def test_format_and_csv(tmp_path):
    table = pd.DataFrame({"early": [0.5, 0.75, 0.8125], "middle+late": [1.0, 0.9, 0.95]},
                         index=["sensitivity", "specificity", "AUC"])
    text = format_sweep(table)
    lines = text.splitlines()
    assert lines[0].split() == ["early", "middle+late"]
    assert lines[1].split() == ["sensitivity", "0.500", "1.000"]
    assert lines[3].split() == ["AUC", "0.812", "0.950"]
    path = save_sweep(table, tmp_path / "out" / "sweep.csv")
    back = pd.read_csv(path, index_col="metric")
    pd.testing.assert_frame_equal(back, table, check_names=False)


def test_sweep_needs_binary_labels(data):
    X_train, y_train, X_val, y_val = data
    with pytest.raises(FeatureError, match="binary"):
        sweep_layers(X_train, np.arange(30) % 3, X_val, y_val, taps=["early"],
                     fusions=[], **PARAMS)


def test_sweep_rejects_unknown_taps_and_unseen_val_classes(data):
    X_train, y_train, X_val, y_val = data
    with pytest.raises(FeatureError, match="'stage42'"):
        sweep_layers(X_train, y_train, X_val, y_val, taps=["stage42"], fusions=[], **PARAMS)
    with pytest.raises(FeatureError, match=r"y_val holds class\(es\) \[5\]"):
        sweep_layers(X_train, y_train, X_val, np.where(y_val == 1, 5, 0), taps=["early"], fusions=[], **PARAMS)
    with pytest.raises(FeatureError, match="'task'"):
        sweep_layers(X_train, y_train, X_val, y_val, taps=["early"], fusions=[], task="binary", **PARAMS)



@pytest.mark.parametrize("taps, fusions", [(["middle", "middle"], []), (["middle"], [["middle", "middle"]])])
def test_sweep_refuses_a_tap_given_twice_before_any_image_goes_through_the_backbone(data, monkeypatch, taps,
                                                                                    fusions):
    X_train, y_train, X_val, y_val = data
    calls = []
    monkeypatch.setattr(tfmed.backbones, "extract_features", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(FeatureError, match=r"taps lists a name twice: \['middle', 'middle'\]"):
        sweep_layers(X_train, y_train, X_val, y_val, taps=taps, fusions=fusions, **PARAMS)
    assert calls == []

def _tables(data):
    from tfmed.config import PreprocessConfig
    from tfmed.data.pipeline import ImageInputs
    from tfmed.data.table import ImageTable

    X_train, y_train, X_val, y_val = data
    images = np.clip(np.concatenate([X_train, X_val])[..., 0], 0, 255).astype(np.uint8)
    labels = np.concatenate([y_train, y_val])
    frame = pd.DataFrame({"image": [f"mem#{i}" for i in range(len(labels))], "array_index": range(len(labels)),
                          "label": labels, "patient_id": [f"p{i}" for i in range(len(labels))],
                          "split": ["train"] * len(y_train) + ["val"] * len(y_val)})
    table = ImageTable(frame, ["0", "1"], "binary", images=images)
    return table.split("train"), table.split("val"), ImageInputs(PreprocessConfig(image_size=SIZE))


def test_sweep_of_tables_streams_every_tap_once_and_equals_the_array_sweep(data, tmp_path, monkeypatch):
    train, val, inputs = _tables(data)
    passes = []
    original = FeatureSVM._dataset_blocks

    def counted(self, dataset):
        passes.append(sorted(self.backbone_spec_["taps"]))
        return original(self, dataset)

    monkeypatch.setattr(FeatureSVM, "_dataset_blocks", counted)
    kwargs = dict(taps=["early", "middle"], fusions=[["early", "middle"]], cache_dir=str(tmp_path), **PARAMS)
    streamed = sweep_tables(train, val, inputs, **kwargs)
    assert passes == [["early", "middle"]] * 2  # train and val, all taps in one pass each
    (x_train, y_train), (x_val, y_val) = inputs.arrays(train), inputs.arrays(val)
    in_memory = sweep_layers(x_train, y_train, x_val, y_val, **{**kwargs, "cache_dir": None})
    assert list(streamed.columns) == ["early", "middle", "early+middle"]
    np.testing.assert_allclose(streamed.to_numpy(), in_memory.to_numpy(), atol=1e-3)
    assert sweep_tables(train, val, inputs, **kwargs).equals(streamed) and len(passes) == 2  # read back
