"""Benchmark: does recalibrating a run's probabilities help on images the fit did not see?

A recalibration is fitted on the validation split (a k-fold run's pooled
out-of-fold scores), so the run's own figures there after it are in-sample.
This script measures it honestly, with no retraining: on validation
**cross-fitted** (the split cut into ``--folds`` stratified parts, each part
recalibrated by a fit on the others, repeated with ``--repeats`` seeds) and, when the run has a test split,
fitted on all of validation and measured on test. For each of none, logistic and intercept
(binary) and temperature it prints the log loss, the Brier score, the calibration slope and
intercept (binary) and the accuracy at 0.5 (binary) or of the argmax
(multiclass: temperature never changes it).

Each experiment YAML is run as shipped but with ``evaluation.recalibration:
none``, trained on all official training images as ``heldout.py`` does;
``--run DIR`` reads a finished run made without recalibration instead.

``--another-hospital`` (MedMNIST-style sources) also runs each YAML as
shipped and imitates another hospital: the validation images altered as
another scanner might alter them (``heldout.py``'s gamma, blur and contrast
changes) with half of the positive cases left out (another prevalence). Each
half of those images in turn is given to ``tfmed recalibrate`` (``intercept``
and ``logistic``, and ``intercept`` with ``--keep-thresholds``) and the other
half measured with ``tfmed evaluate``,
against the shipped model measured on
the same half: log loss, Brier score, calibration intercept and slope, and
sensitivity, specificity and accuracy at the Youden threshold (chosen at home,
or at the other hospital).

It is refused, before anything is trained, with ``--run`` alone (it trains
the YAMLs), and for a YAML that reads no MedMNIST-style file, that is not
binary, or that trains on val (``split.method: kfold``: its folds cover train +
val and the final model is refit on both, so altered copies of val are no other
hospital).

Exit status: 0 after the tables (no goal is checked); 2 for a refused argument or a tfmed error (one line
``recalibration.py: error: ...``).

Usage:
    python benchmarks/recalibration.py [experiments/NAME.yaml ...] [--run RUN_DIR ...] [--folds 5] [--repeats 10]
                                       [--another-hospital]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from _common import experiment, one_line_errors  # noqa: E402
from heldout import (SHIFTS, heldout_run, medmnist_file, refuse_altered_val, refuse_missing_files,  # noqa: E402
                     val_npz)
from tfmed.config import ExperimentConfig  # noqa: E402
from tfmed.evaluation.decision import calibration_line  # noqa: E402
from tfmed.evaluation.recalibration import Recalibration, probability_scores  # noqa: E402
from tfmed.evaluation.report import predictions_column  # noqa: E402
from tfmed.run.evaluate import evaluate_run, load_metrics, load_oof_predictions  # noqa: E402
from tfmed.run.recalibrate_run import recalibrate_run  # noqa: E402


def split_scores(run: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of one split of a run's predictions.csv."""
    frame = pd.read_csv(run / "predictions.csv")
    frame = frame[frame["split"] == split]
    return predictions_column(frame, "label", classes).astype(int), \
        predictions_column(frame, "score", classes).astype(float)


def fitting_scores(run: Path, metrics: dict) -> tuple[str, np.ndarray, np.ndarray]:
    """What a recalibration of the run is fitted on (as ``tfmed`` fits it): its val split, or for a
    k-fold run the pooled out-of-fold scores; the name, labels and scores."""
    if "kfold" not in metrics:
        return ("val", *split_scores(run, "val", metrics["classes"]))
    y, scores = load_oof_predictions(run)
    return "out of fold", y.astype(int), scores


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
    metrics = load_metrics(run)  # a --run was checked unrecalibrated; the YAMLs' runs are made without
    task, classes = metrics["task"], metrics["classes"]
    methods = ["none", "logistic", "intercept", "temperature"] if task == "binary" else ["none", "temperature"]
    fitted_on, y, p = fitting_scores(run, metrics)
    rows = []
    for method in methods:
        if method == "none":
            rows.append({"method": method, "measured on": fitted_on, **figures(task, y, p)})
            continue
        repeated = [figures(task, y, cross_fitted(task, method, y, p, folds, seed)) for seed in range(repeats)]
        rows.append({"method": method, "measured on": f"{fitted_on}, cross-fitted ({folds} folds x {repeats})",
                     **mean_figures(repeated)})
    if "test" in metrics["splits"]:
        y_test, p_test = split_scores(run, "test", classes)
        for method in methods:
            after = p_test if method == "none" else Recalibration.fit(method, task, y, p).apply(p_test)
            rows.append({"method": method, "measured on": f"test (fitted on {fitted_on})",
                         **figures(task, y_test, after)})
    return pd.DataFrame(rows)


HOSPITAL_SHIFTS = ("gamma 1.4", "blur 1px", "contrast 0.8")
HOSPITAL_METHODS = ("intercept", "logistic")


def hospital_halves(config: ExperimentConfig, shift: str, folder: Path) -> list[tuple[str, str]]:
    """The altered validation images with every second positive case left out, cut into two stratified halves;
    (fit spec, measure spec) for each way round."""
    data = np.load(val_npz(config))
    labels = data["val_labels"].reshape(-1)
    positives = np.flatnonzero(labels == 1)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == 0), positives[::2]]))
    rng = np.random.default_rng(0)
    images = np.stack([SHIFTS[shift](image, rng) for image in data["val_images"][keep].astype(np.float64)])
    images, labels = images.clip(0, 255).round().astype(np.uint8), labels[keep]
    halves = next(StratifiedKFold(2, shuffle=True, random_state=0).split(images, labels))
    specs = []
    for k, rows in enumerate(halves):
        path = folder / f"{shift.replace(' ', '_')}_{k}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, test_images=images[rows], test_labels=labels[rows, None])
        specs.append(f"medmnist:{path}#test")
    return [(specs[0], specs[1]), (specs[1], specs[0])]


def measured(directory: Path, metrics_key: str = "test") -> dict:
    """An evaluation's figures at its Youden threshold, with log loss, Brier and the calibration line (the
    intercept as its size: fitted on one half and measured on the other, signed intercepts cancel in the mean)."""
    m = load_metrics(directory)["splits"][metrics_key]["youden"]
    frame = pd.read_csv(directory / "predictions.csv")
    return {**probability_scores("binary", frame["label"], frame["score"]),
            "|intercept|": abs(m["calibration_intercept"]), "slope": m["calibration_slope"],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"], "accuracy": m["accuracy"]}


def another_hospital(run: Path, config: ExperimentConfig, scratch: Path) -> pd.DataFrame:
    """The shipped model against ``tfmed recalibrate`` on each imitated hospital, measured on the half not fitted."""
    rows = []
    for shift in HOSPITAL_SHIFTS:
        updates = {f"recalibrate --method {m}": {"method": m} for m in HOSPITAL_METHODS}
        updates["recalibrate --keep-thresholds"] = {"method": "intercept", "keep_thresholds": True}
        figures = {"as shipped": [], **{name: [] for name in updates}}
        for k, (fit, measure) in enumerate(hospital_halves(config, shift, scratch / "hospital")):
            home = evaluate_run(run, data=measure, output=scratch / f"home_{shift}_{k}")
            figures["as shipped"].append(measured(home))
            for n, (name, options) in enumerate(updates.items()):
                site = recalibrate_run(run, fit, scratch / f"site_{n}_{shift}_{k}", **options)
                there = evaluate_run(site, data=measure, output=scratch / f"there_{n}_{shift}_{k}")
                figures[name].append(measured(there))
        for n, (model, values) in enumerate(figures.items()):
            rows.append({"hospital": f"{shift}, half the positives" if n == 0 else "", "model": model,
                         **mean_figures(values)})
    return pd.DataFrame(rows)


def labelled_task(config: ExperimentConfig) -> str | None:
    """The experiment's task as its YAML sets it, else as its MedMNIST-style file's validation labels show it
    (one column of two values: binary); None where neither tells (the file missing or unreadable)."""
    if config.data.task is not None:
        return config.data.task
    path = medmnist_file(config)
    try:
        with np.load(path, allow_pickle=False) as stored:
            labels = stored["val_labels"] if "val_labels" in stored.files else None
    except (TypeError, OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile):
        return None
    if labels is None:
        return None
    if labels.ndim == 2 and labels.shape[1] > 1:
        return "multilabel"
    return "binary" if len(np.unique(labels)) <= 2 else "multiclass"


def refuse_another_hospital(parser: argparse.ArgumentParser, paths: list[str], configs: list[ExperimentConfig],
                            runs: list[str]) -> None:
    """``parser.error`` for a ``--another-hospital`` study that could not run or would mislead, before training."""
    if not paths:
        parser.error(f"--another-hospital trains each experiment YAML as shipped, and --run {runs[0]} is a finished "
                     "run: give the experiment YAML(s) as well (or leave --another-hospital out)")
    refuse_altered_val(parser, "--another-hospital", paths, configs)
    for path, config in zip(paths, configs):
        task = labelled_task(config)
        if task not in ("binary", None):
            parser.error(f"--another-hospital imitates a binary prevalence change (half of the positive cases left "
                         f"out), but {path} is {task}; leave it out")


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", help="experiment YAMLs to run without recalibration")
    parser.add_argument("--run", action="append", default=[], help="a finished run made without recalibration")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--another-hospital", action="store_true",
                        help="also run each YAML as shipped and recalibrate it on imitated other hospitals")
    args = parser.parse_args()
    for run in args.run:
        missing = [name for name in ("predictions.csv", "metrics.json") if not (Path(run) / name).is_file()]
        if missing:
            parser.error(f"--run {run}: not a finished run directory (it has no {' or '.join(missing)})")
        if "recalibration" in load_metrics(Path(run)):
            parser.error(f"--run {run} was recalibrated; give a run made with evaluation.recalibration: none")
    if args.folds < 2 or args.repeats < 1:
        parser.error("--folds must be at least 2 and --repeats at least 1")
    if not args.configs and not args.run:
        args.configs = ["experiments/pneumonia_mnist.yaml"]
    configs = [experiment(path) for path in args.configs]  # every YAML read (and its data file seen) before training
    refuse_missing_files(parser, args.configs, configs)
    if args.another_hospital:
        refuse_another_hospital(parser, args.configs, configs, args.run)
    pd.set_option("display.width", 200)
    with tempfile.TemporaryDirectory() as scratch:
        runs = [Path(r) for r in args.run]
        for path, config in zip(args.configs, configs):
            config.evaluation.recalibration = "none"
            run, seconds = heldout_run(config, Path(scratch))
            print(f"{path}: trained in {seconds:.0f} s")
            runs.append(run)
        for run in runs:
            print(f"\n{run}")
            print(study(run, args.folds, args.repeats).round(4).to_string(index=False))
        for path in args.configs if args.another_hospital else []:
            config = experiment(path)
            run, seconds = heldout_run(config, Path(scratch) / "shipped")
            print(f"\n{path} as shipped (trained in {seconds:.0f} s), on imitated other hospitals "
                  "(means over the two halves):")
            print(another_hospital(run, experiment(path), Path(scratch)).round(4)
                  .to_string(index=False))


if __name__ == "__main__":
    main()
