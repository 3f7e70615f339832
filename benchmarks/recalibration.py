"""Benchmark: does recalibrating a run's probabilities help on images the fit did not see?

A recalibration is fitted on the validation split, so the run's own validation
figures after it are in-sample. This script measures it honestly, with no
retraining: on validation **cross-fitted** (the split cut into ``--folds``
stratified parts, each part recalibrated by a fit on the others, repeated
with ``--repeats`` seeds) and, when the run has a test split, fitted on all of
validation and measured on test. For each of none, logistic (binary) and
temperature it prints the log loss, the Brier score, the calibration slope and
intercept (binary) and the accuracy at 0.5 (binary) or of the argmax
(multiclass: temperature never changes it).

Each experiment YAML is run as shipped but with ``evaluation.recalibration:
none``, trained on all official training images as ``heldout.py`` does;
``--run DIR`` reads a finished run made without recalibration instead.

Usage:
    python benchmarks/recalibration.py [experiments/NAME.yaml ...] [--run RUN_DIR ...] [--folds 5] [--repeats 10]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from heldout import heldout_run  # noqa: E402
from tfmed.config import ExperimentConfig  # noqa: E402
from tfmed.evaluation.decision import calibration_line  # noqa: E402
from tfmed.evaluation.recalibration import Recalibration, probability_scores  # noqa: E402
from tfmed.evaluation.report import predictions_column  # noqa: E402
from tfmed.run.evaluate import load_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def split_scores(run: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of one split of a run's predictions.csv."""
    frame = pd.read_csv(run / "predictions.csv")
    frame = frame[frame["split"] == split]
    return predictions_column(frame, "label", classes).astype(int), \
        predictions_column(frame, "score", classes).astype(float)


def figures(task: str, y: np.ndarray, p: np.ndarray) -> dict:
    """Log loss, Brier, calibration line (binary) and accuracy of probabilities ``p``."""
    out = probability_scores(task, y, p)
    if task == "binary":
        line = calibration_line(y, p)
        out.update(slope=line["slope"], intercept=line["intercept"], acc_at_half=float(((p >= 0.5) == y).mean()))
    else:
        out["acc_argmax"] = float((p.argmax(axis=1) == y).mean())
    return out


def cross_fitted(task: str, method: str, y: np.ndarray, p: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each fold's scores recalibrated by a fit on the other folds."""
    out = np.array(p, dtype=float, copy=True)
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(p, y):
        out[held] = Recalibration.fit(method, task, y[fit], p[fit]).apply(p[held])
    return out


def mean_figures(rows: list[dict]) -> dict:
    return {key: float(np.mean([r[key] for r in rows])) if rows[0][key] is not None else None for key in rows[0]}


def study(run: Path, folds: int, repeats: int) -> pd.DataFrame:
    metrics = load_metrics(run)
    if "recalibration" in metrics:
        raise SystemExit(f"{run} was recalibrated; give a run made with evaluation.recalibration: none")
    task, classes = metrics["task"], metrics["classes"]
    methods = ["none", "logistic", "temperature"] if task == "binary" else ["none", "temperature"]
    y, p = split_scores(run, "val", classes)
    rows = []
    for method in methods:
        if method == "none":
            rows.append({"method": method, "measured on": "val", **figures(task, y, p)})
            continue
        repeated = [figures(task, y, cross_fitted(task, method, y, p, folds, seed)) for seed in range(repeats)]
        rows.append({"method": method, "measured on": f"val, cross-fitted ({folds} folds x {repeats})",
                     **mean_figures(repeated)})
    if "test" in metrics["splits"]:
        y_test, p_test = split_scores(run, "test", classes)
        for method in methods:
            after = p_test if method == "none" else Recalibration.fit(method, task, y, p).apply(p_test)
            rows.append({"method": method, "measured on": "test (fitted on val)", **figures(task, y_test, after)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="experiment YAMLs to run without recalibration")
    parser.add_argument("--run", action="append", default=[], help="a finished run made without recalibration")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not args.configs and not args.run:
        args.configs = ["experiments/pneumonia_mnist.yaml"]
    pd.set_option("display.width", 200)
    with tempfile.TemporaryDirectory() as scratch:
        runs = [Path(r) for r in args.run]
        for path in args.configs:
            config = ExperimentConfig.from_yaml(ROOT / path)
            config.evaluation.recalibration = "none"
            run, seconds = heldout_run(config, Path(scratch))
            print(f"{path}: trained in {seconds:.0f} s")
            runs.append(run)
        for run in runs:
            print(f"\n{run}")
            print(study(run, args.folds, args.repeats).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
