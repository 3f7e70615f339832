"""Evaluate or apply a saved run: ``tfmed evaluate`` and ``tfmed predict``.

Example:
    >>> out = evaluate_run("runs/pneumonia_mnist/20261124-101500")          # doctest: +SKIP
    >>> frame = predict_images("runs/pneumonia_mnist/20261124-101500", ["scan.png"])  # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import ExperimentConfig
from tfmed.data.decode import SUPPORTED_EXTENSIONS
from tfmed.data.table import ImageTable
from tfmed.inference import ModelArtifactError, TrainedModel



def _run_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.name == "model" and (path.parent / "config.yaml").is_file():
        return path.parent
    if not (path / "config.yaml").is_file() or not (path / "model").is_dir():
        raise ModelArtifactError(f"{path}: not a tfmed run directory (it needs config.yaml and model/); "
                                 "pass a directory such as runs/NAME/TIMESTAMP")
    return path


def run_test_table(run_dir: Path) -> tuple[ImageTable, ExperimentConfig]:
    """The run's own test rows, re-read from its data source and ``splits.csv``."""
    from tfmed.data.sources import load_source

    config = ExperimentConfig.from_yaml(run_dir / "config.yaml")
    table = load_source(config.data)
    splits = pd.read_csv(run_dir / "splits.csv", usecols=["image", "split"], keep_default_na=False)
    split_of = dict(zip(splits["image"], splits["split"]))
    missing = [ref for ref in splits["image"] if ref not in set(table.frame["image"])]
    if missing:
        raise ModelArtifactError(f"{run_dir}/splits.csv lists {len(missing)} image(s) the data source no "
                                 f"longer has, e.g. {missing[0]}; restore the data or pass --data")
    frame = table.frame.copy()
    frame["split"] = frame["image"].map(split_of)
    table = ImageTable(frame, table.classes, table.task, table.images, table.source)
    return table.split("test"), config


def evaluate_run(model_dir: str | Path, data: str | None = None, output: str | Path | None = None) -> Path:
    """Score ``data`` (default: the run's own test split) and write metrics and a report.

    Returns the output directory (default ``RUN/evaluations/TIMESTAMP``).
    """
    from tfmed.data.sources import load_source, parse_source_spec
    from tfmed.data.validate import apply_validation, validate_table
    from tfmed.experiment import evaluate_split, log, new_run_dir
    from tfmed.reporting import write_outputs

    run_dir = _run_dir(model_dir)
    model = TrainedModel.load(run_dir / "model")
    config = ExperimentConfig.from_yaml(run_dir / "config.yaml")
    if data is None:
        table, _ = run_test_table(run_dir)
        source = f"{config.data.source} (the run's own test split)"
    else:
        table = load_source(parse_source_spec(data))
        table = apply_validation(table, validate_table(table), exclude_bad_rows=False)
        source = data
    if table.task != model.task or len(table.classes) != len(model.classes):
        raise ModelArtifactError(f"{data}: the data has {table.task} labels {table.classes} but the model "
                                 f"was trained for {model.task} {model.classes}")
    out = Path(output) if output else new_run_dir(run_dir, "evaluations")
    out.mkdir(parents=True, exist_ok=True)
    log(f"scoring {len(table)} images from {source}")
    scores = model.predict(table)
    metrics = {"task": model.task, "classes": model.classes, "mode": model.mode,
               "backbone": model.backbone, "thresholds": model.thresholds,
               "threshold_method": model.threshold_method, "source": source,
               "counts": {"test": table.class_counts()},
               "splits": {"test": evaluate_split(model, table, scores, config.evaluation)}}
    write_outputs(out, title=f"{config.name}: evaluation of {run_dir.name}", source=source,
                  model=model, parts={"test": table}, scores={"test": scores}, metrics=metrics,
                  notes=[f"Model from {run_dir}; thresholds were chosen on that run's validation split "
                         "and are applied unchanged here."])
    return out


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files.

    Example:
        >>> collect_images([])
        []
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS)
            if not found:
                raise ModelArtifactError(f"{path}: no images ({', '.join(SUPPORTED_EXTENSIONS)}) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ModelArtifactError(f"{path}: no such file or folder")
    return files


def predict_images(model_dir: str | Path, paths: list[str]) -> pd.DataFrame:
    """Probabilities and decisions at the stored threshold for image files/folders."""
    from tfmed.data.validate import apply_validation, validate_table

    model = TrainedModel.load(_run_dir(model_dir) / "model")
    files = collect_images(paths)
    frame = pd.DataFrame({"image": [str(p.resolve()) for p in files], "row": np.arange(1, len(files) + 1)})
    if model.task == "multilabel":
        for name in model.classes:
            frame["label:" + name] = 0
    else:
        frame["label"] = 0
    table = ImageTable(frame, list(model.classes), model.task, source="predict")
    table = apply_validation(table, validate_table(table), exclude_bad_rows=False)
    scores = model.predict(table)
    decisions = model.decide(scores)
    out = pd.DataFrame({"image": frame["image"]})
    if model.task == "binary":
        out["score"] = scores
        out["threshold"] = model.threshold
        out["decision"] = [model.classes[int(d)] for d in decisions]
    elif model.task == "multiclass":
        for j, name in enumerate(model.classes):
            out[f"score:{name}"] = scores[:, j]
        out["decision"] = [model.classes[int(d)] for d in decisions]
    else:
        for j, name in enumerate(model.classes):
            out[f"score:{name}"] = scores[:, j]
            out[f"decision:{name}"] = decisions[:, j]
    return out


def load_metrics(run_dir: str | Path) -> dict:
    """The ``metrics.json`` of a run or evaluation directory."""
    return json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))
