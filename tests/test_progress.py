"""Progress lines: one per epoch during fine-tuning, per chunk during feature extraction."""
import keras
import numpy as np

import pytest

from tfmed.modes.features import CHUNK_SIZE, backbone_features
from tfmed.progress import configure_logging
from tfmed.training.callbacks import ClinicalMetrics, EpochLogger, ordered


@pytest.fixture(autouse=True)
def shown_progress():
    """Progress goes through logging; the CLI (and a user's script) shows it with configure_logging."""
    configure_logging()


def test_epoch_logger_prints_loss_and_validation_auc(capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy")
    model.fit(x, y, epochs=2, verbose=0, callbacks=ordered([EpochLogger(), ClinicalMetrics((x, y))]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "epoch" in line]
    assert len(lines) == 2
    assert lines[0].startswith("[tfmed ") and "epoch 1: loss" in lines[0] and "val_auc" in lines[0]


def test_feature_extraction_reports_progress_per_chunk(capsys):
    images = np.zeros((CHUNK_SIZE + 10, 16, 16), np.uint8)
    backbone_features(images, backbone="efficientnet_lite0", weights=None, taps=["early"], image_size=32)
    out = capsys.readouterr().out
    assert f"{CHUNK_SIZE}/{CHUNK_SIZE + 10} images" in out and f"{CHUNK_SIZE + 10}/{CHUNK_SIZE + 10}" in out


def test_long_extractions_print_about_four_lines_not_one_per_chunk(capsys):
    images = np.zeros((CHUNK_SIZE * 10, 8, 8), np.uint8)
    backbone_features(images, backbone="efficientnet_lite0", weights=None, taps=["early"], image_size=32)
    lines = [line for line in capsys.readouterr().out.splitlines() if "features:" in line]
    assert 4 <= len(lines) <= 5
    assert lines[-1].endswith(f"{CHUNK_SIZE * 10}/{CHUNK_SIZE * 10} images")


def test_a_table_extraction_logs_its_rate_only_when_it_is_long(capsys, monkeypatch):
    import time

    from tfmed.progress import Throughput

    configure_logging()
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    short = Throughput(8, "lite0 features", every_seconds=15.0)
    now[0] = 2.0
    short.advance(8)  # 8 images in 2 s: done, nothing to report
    assert "features" not in capsys.readouterr().out
    long = Throughput(100, "lite0 features", every_seconds=15.0)
    for step in range(1, 5):
        now[0] += 10.0
        long.advance(25)
    lines = [line for line in capsys.readouterr().out.splitlines() if "features" in line]
    assert [line.split("] ", 1)[1] for line in lines] == [
        "lite0 features: 50/100 images, 2.5 images/s, about 20 s left",
        "lite0 features: 100/100 images, 2.5 images/s"]
