"""Benchmark: what a recipe gives beyond the data it was tuned on.

For each experiment YAML (default: ``experiments/pneumonia_mnist.yaml``, the
shipped PneumoniaMNIST recipe; a relative path is read from the working folder,
else from the repository), the recipe is trained on ALL official training images (no
test split is carved from them), its threshold chosen on the official
validation split, and the script prints:

* val AUC (in-distribution, the split the threshold was chosen on);
* with ``--oof``: the pooled out-of-fold AUC of a k-fold over train+val
  (another in-distribution estimate, less tied to one split); a recipe that is
  itself a k-fold (``split.method: kfold``, e.g. ``retina_mnist``) trains on
  val too, so its pooled out-of-fold AUC stands in for the val AUC, and
  ``--shifted-val`` is refused for it;
* with ``--shifted-val``: a proxy for a change of acquisition, the AUC on
  copies of the validation images altered as another scanner or protocol
  might alter them (gamma 0.7 and 1.4, Gaussian blur sigma 1 px, noise sd 8
  on 0-255, a 90% central crop, contrast x0.8; in the images' own pixels): mean
  and worst; and the accuracy there of the decisions at the threshold chosen on
  the unaltered val (does the operating point survive the change?);
* with ``--test-npz FILE``: AUC with its 95% interval and accuracy on that MedMNIST-style file's
  ``test`` split (e.g. the official PneumoniaMNIST test file, which comes
  from a separate collection and is not shipped), accuracy both at the
  validation-chosen threshold and at 0.5 (MedMNIST's convention); for an ensemble, each member's
  AUC there and the paired DeLong p of the ensemble against it, and how many of the file's test
  images copy one of the run's train or val images (near-identical fingerprints, see
  ``tfmed.data.near_duplicates``);
* wall seconds of each run on this machine.

Anyone holding the official MedMNIST file can so reproduce the comparison with
published tables; without it, only in-distribution figures are printed, and
they are labelled as such.

Exit status: 0 after the tables (no goal is checked); 2 for a refused argument or a tfmed error (one line
``heldout.py: error: ...``), found before anything is trained where the arguments show it.

Usage:
    python benchmarks/heldout.py [experiments/NAME.yaml ...] [--test-npz pneumoniamnist.npz] [--oof]
                                 [--shifted-val] [--keep-runs]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _common import experiment, one_line_errors  # noqa: E402
from tfmed.config import ExperimentConfig, SplitConfig  # noqa: E402
from tfmed.data.sources import spelt_out  # noqa: E402
from tfmed.data.sources.embedded import PNEUMONIA_MNIST_FILE  # noqa: E402
from tfmed.evaluation.metrics import auc_interval, headline_auc  # noqa: E402
from tfmed.run.evaluate import evaluate_run, load_metrics  # noqa: E402
from tfmed.run.experiment import run_experiment  # noqa: E402

DEFAULT_CONFIGS = ["experiments/pneumonia_mnist.yaml"]


def auc_of(entry: dict) -> float | None:
    """The AUC in a split's metrics (binary: at any point; multiclass: macro)."""
    return headline_auc(entry.get("youden", entry))


def auc_interval_of(entry: dict) -> str:
    """The interval of :func:`auc_of` as ``lo-hi`` (DeLong; for multiclass over all classes)."""
    lo, hi = auc_interval(entry.get("youden", entry)) or (None, None)
    return "n/a" if lo is None else f"{lo:.3f}-{hi:.3f}"


def heldout_run(config: ExperimentConfig, runs_dir: Path) -> tuple[Path, float]:
    """Train on every training image, threshold on val (a k-fold recipe: its folds over train + val and
    the refit on both); return the run and its wall seconds."""
    config.split.test_fraction = 0.0
    config.runs_dir = str(runs_dir)
    started = time.time()
    run = run_experiment(config)
    return run, time.time() - started


def oof_auc(config: ExperimentConfig, runs_dir: Path, folds: int) -> tuple[float, float]:
    """Pooled out-of-fold AUC of a k-fold over train+val, and the wall seconds."""
    config.split = SplitConfig(method="kfold", folds=folds, test_fraction=0.0, seed=config.split.seed,
                               near_duplicate_rms=config.split.near_duplicate_rms)
    config.runs_dir = str(runs_dir)
    started = time.time()
    run = run_experiment(config)
    return load_metrics(run)["kfold"]["pooled_oof_auc"], time.time() - started


def decision_accuracy(predictions: pd.DataFrame) -> float:
    """The share of an evaluation's images whose decision (the run's val threshold; multiclass: the most
    probable class) is their label."""
    return float((predictions["decision"] == predictions["label"]).mean())


def test_file_figures(run: Path, test_npz: str, out: Path) -> dict:
    """AUC and accuracy (at the val threshold and at 0.5) on the file's test split; for an ensemble
    also each member's AUC and the paired DeLong p of the ensemble against it."""
    evaluation = evaluate_run(run, data=f"medmnist:{test_npz}#test", output=out)
    metrics = load_metrics(evaluation)["splits"]["test"]
    members = load_metrics(evaluation).get("members", {}).get("test", {})
    predictions = pd.read_csv(evaluation / "predictions.csv")
    figures = {"auc": auc_of(metrics), "auc 95% CI": auc_interval_of(metrics),
               "copies of train/val images": (load_metrics(evaluation).get("near_duplicates") or {})
               .get("copies_of_run_images")}
    if "score" in predictions:
        figures["acc_val_threshold"] = decision_accuracy(predictions)
        figures["acc_at_0.5"] = float(((predictions["score"] >= 0.5).astype(int) == predictions["label"]).mean())
    else:
        figures["acc_argmax"] = decision_accuracy(predictions)
    for name, entry in members.items():
        entry = entry.get("macro", entry)  # multilabel: the macro AUC's test
        figures[f"member {name} auc"] = entry.get("auc", entry.get("macro_auc"))
        figures[f"member {name} p"] = entry["p_value"]
    return figures


SHIFTS = {
    "gamma 0.7": lambda x, rng: 255.0 * (x / 255.0) ** 0.7,
    "gamma 1.4": lambda x, rng: 255.0 * (x / 255.0) ** 1.4,
    "blur 1px": lambda x, rng: cv2.GaussianBlur(x, (0, 0), 1.0),
    "noise 8": lambda x, rng: x + rng.normal(0, 8.0, x.shape),
    "crop 90%": lambda x, rng: cv2.resize(x[round(0.05 * x.shape[0]):x.shape[0] - round(0.05 * x.shape[0]),
                                            round(0.05 * x.shape[1]):x.shape[1] - round(0.05 * x.shape[1])],
                                          x.shape[1::-1], interpolation=cv2.INTER_LINEAR),
    "contrast 0.8": lambda x, rng: (x - x.mean()) * 0.8 + x.mean(),
}


def medmnist_file(config: ExperimentConfig) -> Path | None:
    """The MedMNIST-style file the experiment reads (its official validation split with it), None for another
    kind of source."""
    data = spelt_out(config.data)
    if data.source == "pneumonia_mnist":
        return PNEUMONIA_MNIST_FILE
    if data.source == "medmnist" and data.path:
        return Path(data.path.split("#")[0])
    return None


def val_npz(config: ExperimentConfig) -> Path:
    """The MedMNIST-style file holding the experiment's official validation split."""
    path = medmnist_file(config)
    if path is None:
        raise SystemExit(f"--shifted-val needs a MedMNIST-style source, not {config.data.source!r}")
    return path


def refuse_altered_val(parser: argparse.ArgumentParser, option: str, paths: list[str],
                       configs: list[ExperimentConfig]) -> None:
    """``parser.error`` when ``option`` (which scores altered copies of a MedMNIST-style file's validation
    images) is given with an experiment that trains on val (k-fold) or reads another kind of source."""
    trained_on_val = [config.name for config in configs if config.split.method == "kfold"]
    if trained_on_val:
        parser.error(f"{option} scores altered copies of val, but {', '.join(trained_on_val)} trains on val "
                     "(split.method kfold: folds over train + val, the final model refit on both); leave it out")
    for path, config in zip(paths, configs):
        if medmnist_file(config) is None:
            parser.error(f"{option} alters the validation images of a MedMNIST-style .npz (data.source "
                         f"pneumonia_mnist, medmnist with data.path, or medmnist:FILE), but {path} reads "
                         f"data.source {config.data.source!r}; leave {option} out")


def refuse_missing_files(parser: argparse.ArgumentParser, paths: list[str], configs: list[ExperimentConfig]) -> None:
    """``parser.error`` when an experiment's MedMNIST-style data file is not there (before anything trains)."""
    for path, config in zip(paths, configs):
        data = medmnist_file(config)
        if data is not None and not data.is_file():
            parser.error(f"{path}: its data file {data} is not there (a relative path is read from the working "
                         f"folder, {Path.cwd()}); run from the folder it is relative to (the repository's "
                         "experiments: the repository root) or give the file")


def refuse_bad_test_file(parser: argparse.ArgumentParser, test_npz: str) -> None:
    """``parser.error`` when ``--test-npz`` is not a MedMNIST-style .npz with a test split."""
    try:
        stored = np.load(test_npz, allow_pickle=False)
        names = list(getattr(stored, "files", []))  # an .npy: one array, no names
        if hasattr(stored, "close"):
            stored.close()
    except FileNotFoundError:
        parser.error(f"--test-npz {test_npz}: no such file; give a MedMNIST-style .npz with a test split")
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile) as problem:
        parser.error(f"--test-npz {test_npz}: not a .npz file ({type(problem).__name__}); give a MedMNIST-style "
                     ".npz with a test split")
    missing = [name for name in ("test_images", "test_labels") if name not in names]
    if missing:
        parser.error(f"--test-npz {test_npz} has no {' or '.join(missing)} (it holds {', '.join(names) or 'nothing'})"
                     "; give a MedMNIST-style .npz with a test split")


def shifted_val_figures(run: Path, config: ExperimentConfig, out: Path) -> dict:
    """AUC and accuracy on each altered copy of the validation images, the run's model and decisions unchanged
    (accuracy at the threshold chosen on the unaltered val; multiclass: the most probable class)."""
    data = np.load(val_npz(config))
    images, labels = data["val_images"].astype(np.float64), data["val_labels"]
    figures = {}
    for name, shift in SHIFTS.items():
        rng = np.random.default_rng(0)
        altered = np.stack([shift(image, rng) for image in images]).clip(0, 255).round().astype(np.uint8)
        path = out / f"val_{name.replace(' ', '_').replace('%', '')}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, test_images=altered, test_labels=labels)
        evaluation = evaluate_run(run, data=f"medmnist:{path}#test", output=path.with_suffix(""))
        predictions = pd.read_csv(evaluation / "predictions.csv")
        figures[name] = {"auc": auc_of(load_metrics(evaluation)["splits"]["test"]),
                         "acc": decision_accuracy(predictions)}
    return figures


@one_line_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--test-npz", default=None, help="MedMNIST-style .npz with a test split")
    parser.add_argument("--oof", action="store_true", help="also run a k-fold over train+val")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shifted-val", action="store_true", help="also score altered copies of val")
    parser.add_argument("--keep-runs", action="store_true",
                        help="keep the runs (100-300 MB each) under the printed scratch folder; by default they "
                             "are removed once the tables are printed")
    args = parser.parse_args()
    if args.folds < 2:
        parser.error(f"--folds is {args.folds}; a k-fold needs at least 2 folds")
    configs = [experiment(path) for path in args.configs]
    trained_on_val = [config.name for config in configs if config.split.method == "kfold"]
    if args.shifted_val:
        refuse_altered_val(parser, "--shifted-val", args.configs, configs)
    refuse_missing_files(parser, args.configs, configs)
    if args.test_npz:
        refuse_bad_test_file(parser, args.test_npz)
    scratch = Path(tempfile.mkdtemp(prefix="tfmed-heldout-"))
    print(f"machine: {os.cpu_count()} CPU cores; runs under {scratch}")
    try:
        print_tables(args, configs, trained_on_val, scratch)
    finally:
        if not args.keep_runs:
            shutil.rmtree(scratch, ignore_errors=True)
            print(f"removed {scratch} (--keep-runs keeps the runs)")


def print_tables(args, configs: list[ExperimentConfig], trained_on_val: list[str], scratch: Path) -> None:
    """Train each recipe under ``scratch`` and print its row, then the summary of all."""
    rows = []
    for path, config in zip(args.configs, configs):
        run, seconds = heldout_run(config, scratch / "runs")
        metrics = load_metrics(run)
        if config.name in trained_on_val:  # the recipe is itself a k-fold over train + val: no val split to score
            row = {"recipe": config.name,
                   f"{config.split.folds}-fold OOF AUC (in-distribution)": metrics["kfold"]["pooled_oof_auc"]}
        else:
            row = {"recipe": config.name, "val AUC (in-distribution)": auc_of(metrics["splits"]["val"])}
        row["run s"] = round(seconds)
        if args.oof and config.name not in trained_on_val:
            auc, oof_seconds = oof_auc(experiment(path), scratch / "oof", args.folds)
            row.update({f"{args.folds}-fold OOF AUC (in-distribution)": auc, "k-fold s": round(oof_seconds)})
        if args.shifted_val:
            shifted = shifted_val_figures(run, config, scratch / f"shifted_{config.name}")
            print(f"{config.name} on altered copies of val:\n{pd.DataFrame(shifted).T.round(4).to_string()}")
            for figure in ("auc", "acc"):
                values = {name: entry[figure] for name, entry in shifted.items()}
                row.update({f"shifted val {figure.upper()} mean": float(np.mean(list(values.values()))),
                            f"shifted val {figure.upper()} worst": min(values.values()),
                            f"worst {figure.upper()} shift": min(values, key=values.get)})
        if args.test_npz:
            figures = test_file_figures(run, args.test_npz, scratch / f"test_{config.name}")
            row.update({f"{Path(args.test_npz).name} test {k}": v for k, v in figures.items()})
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    print("\nSummary (val and out-of-fold figures come from the training collection; only a separate test "
          "file measures a change of hospital):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
