"""New images scored by a saved run (tfmed predict, evaluate --data): read as the run's training images were, or
warned of where they differ."""
import json
import re
import shutil

import cv2
import numpy as np

import test_explain  # noqa: F401  (registers the tiny backbone explain_test_net)
from test_experiment import _tiny_medmnist
from tfmed.config import ExperimentConfig
from tfmed.progress import configure_logging
from tfmed.run.evaluate import evaluate_run
from tfmed.run.experiment import run_experiment
from tfmed.run.predict import predict_images


def test_files_of_another_bit_depth_than_the_training_statistics_are_warned_of(tmp_path, capsys):
    """Standardised with 8-bit training statistics, a 16-bit copy of a picture scored far from the picture."""
    data = _tiny_medmnist(tmp_path, n=48)
    config = ExperimentConfig.from_dict({
        "name": "depth", "data": {"source": f"medmnist:{data}"}, "runs_dir": str(tmp_path / "runs"),
        "preprocess": {"image_size": 32, "intensity": "standardize"}, "split": {"test_fraction": 0.2},
        "model": {"mode": "svm", "backbone": "explain_test_net", "weights": None,
                  "svm": {"taps": ["middle"], "C": [1.0], "cv": 3}}})
    run = run_experiment(config)
    images = np.load(data)["val_images"][:4]
    for i, image in enumerate(images):
        cv2.imwrite(str(tmp_path / f"eight_{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"sixteen_{i}.png"), image.astype(np.uint16) * 257)
    configure_logging()
    capsys.readouterr()
    predict_images(run, [str(tmp_path / f"eight_{i}.png") for i in range(4)])
    assert "-bit" not in capsys.readouterr().out
    predict_images(run, [str(tmp_path / f"sixteen_{i}.png") for i in range(4)])
    said = capsys.readouterr().out
    assert re.search(r"4 of the 4 files are 16-bit, but the training images held values up to [\d.]+ \(8-bit\), "
                     "and preprocess.intensity 'standardize' scales every image with the training statistics, so "
                     "these come out far too bright: convert them to 8-bit", said), said
    classes = json.loads((run / "metrics.json").read_text())["classes"]
    for k, name in enumerate(classes):  # each class an 8-bit and a 16-bit file
        (tmp_path / "mixed" / name).mkdir(parents=True)
        shutil.copy(tmp_path / f"eight_{k}.png", tmp_path / "mixed" / name / f"e{k}.png")
        shutil.copy(tmp_path / f"sixteen_{k}.png", tmp_path / "mixed" / name / f"s{k}.png")
    evaluate_run(run, data=f"folder:{tmp_path / 'mixed'}", output=tmp_path / "evaluated")
    said = capsys.readouterr().out
    assert "the files mix bit depths (2 8-bit and 2 16-bit) under preprocess.intensity 'standardize'" in said
