"""``tfmed predict``: score image files and folders with a saved run.

Example:
    >>> frame = predict_images("runs/pneumonia_mnist/20261124-101500", ["scan.png"])  # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.data.decode import DEFAULT_MAX_PIXELS, SUPPORTED_EXTENSIONS, image_kind
from tfmed.config import ExperimentConfig
from tfmed.data.table import ImageTable
from tfmed.data.validate import apply_validation
from tfmed.data.volume_inputs import candidate_columns
from tfmed.errors import count_noun
from tfmed.progress import log
from tfmed.run.artifact import ModelArtifactError, TrainedModel
from tfmed.run.rundir import resolve_run_dir


def collect_images(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files; the other files found in a
    folder are named in a log line, never dropped unsaid.

    Example:
        >>> collect_images([])
        []
    """
    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            every = sorted(p for p in path.rglob("*") if p.is_file())
            found = [p for p in every if image_kind(p) is not None]
            others = [p.relative_to(path).as_posix() for p in every if image_kind(p) is None]
            if others:
                shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
                log(f"{path}: {count_noun(len(others), 'file')} skipped, not images by name "
                    f"({', '.join(SUPPORTED_EXTENSIONS)}) nor DICOM: {shown}")
            if not found:
                raise ModelArtifactError(f"{path}: no images ({', '.join(SUPPORTED_EXTENSIONS)}, or DICOM files "
                                         "of any name) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ModelArtifactError(f"{path}: no such file or folder")
    return files


def image_table(model: TrainedModel, paths: list[str], max_pixels: int | None = DEFAULT_MAX_PIXELS,
                command: str = "tfmed predict") -> ImageTable:
    """A validated table of the image files/folders in ``paths`` (labels unknown, set to 0) for ``model``;
    images over ``max_pixels`` pixels are refused (the run's ``data.max_image_pixels``), as are unreadable
    ones, with a report that tells the user to leave them out of what they give ``command``.

    Example:
        >>> table = image_table(TrainedModel.load("runs/pneumonia_mnist/20261124-101500"), ["scans/"])  # doctest: +SKIP
    """
    if _volume_list(model, paths):
        table = candidate_table(model, paths)
    else:
        files = collect_volumes(model, paths) if model.views.enabled else collect_images(paths)
        frame = pd.DataFrame({"image": [str(p.resolve()) for p in files], "row": np.arange(1, len(files) + 1)})
        table = ImageTable.unlabelled(frame, list(model.classes), model.task,
                                      source=f"the images given to {command}")
    report = model.validate_images(table, max_pixels, f"the images given to {command}")
    return apply_validation(table, report, exclude_bad_rows=False,
                            remedy=f"leave those files out of the images given to {command}")


def _volume_list(model: TrainedModel, paths: list[str]) -> bool:
    """Whether ``paths`` is read as a CSV listing volumes: always for lesion-centred views, and for
    volume-centred ones when it is one CSV file (e.g. to name each folder's series)."""
    if not model.views.enabled:
        return False
    return model.views.center == "lesion" or (len(paths) == 1 and Path(paths[0]).suffix.lower() == ".csv")


def candidate_table(model: TrainedModel, paths: list[str]) -> ImageTable:
    """The volumes a model of views scores, from one CSV listing each (``path``: a DICOM series folder or a
    volume file, relative to the CSV; ``series_uid`` where a folder holds several series) with, for
    lesion-centred views, its centre (``center_x``, ``center_y``, ``center_z`` in LPS mm, or
    ``center_slice``, ``center_row``, ``center_column``); labels are not read.

    Example:
        >>> table = candidate_table(model, ["candidates.csv"])  # doctest: +SKIP
    """
    from tfmed.data.sources.manifest import load_manifest

    if len(paths) != 1 or Path(paths[0]).suffix.lower() != ".csv":
        raise ModelArtifactError(
            "this model's views are centred on lesions, and an image path gives no centre; pass one CSV "
            "listing the volumes with their centres (columns path and center_x, center_y, center_z in LPS "
            "mm, or center_slice, center_row, center_column; no label column needed), see "
            "data_manifests/README.md")
    table = load_manifest(paths[0], classes=list(model.classes), task=model.task, labelled=False)
    if not len(table):
        raise ModelArtifactError(f"{paths[0]}: lists no volumes (a header and no rows); add a row per volume to "
                                 "score")
    return table


def collect_volumes(model: TrainedModel, paths: list[str]) -> list[Path]:
    """The volumes (DICOM series folders, NIfTI/MetaImage/NRRD files) a model of volume-centred views scores.

    Example:
        >>> collect_volumes(model, ["scans/case1", "scans/case2.nii.gz"])  # doctest: +SKIP
    """
    files = [Path(item) for item in paths]
    for path in files:
        if not path.exists():
            raise ModelArtifactError(f"{path}: no such file or folder")
    return files


def run_max_pixels(run_dir: Path) -> int | None:
    """The pixel limit of the run's data (``data.max_image_pixels`` in its config.yaml).

    Example:
        >>> run_max_pixels(Path("runs/pneumonia_mnist/20261124-101500"))  # doctest: +SKIP
        100000000
    """
    return ExperimentConfig.from_run(run_dir).data.max_image_pixels


def predict_images(model_dir: str | Path, paths: list[str], *, verify: bool = True,
                   trust_pickles: bool = False) -> pd.DataFrame:
    """Probabilities and decisions at the stored threshold for image files/folders (with a class hierarchy,
    also the coarse classes' scores and decisions, see :meth:`~tfmed.run.artifact.TrainedModel.coarse_columns`).

    The run is checked against its manifest first (see :meth:`TrainedModel.load`).
    """
    run_dir = resolve_run_dir(model_dir)
    model = TrainedModel.load(run_dir / "model", verify=verify, trust_pickles=trust_pickles)
    table = image_table(model, paths, run_max_pixels(run_dir))
    frame = table.frame
    log(f"scoring {count_noun(len(table), 'image')} with the model of {run_dir}")
    scores = model.predict(table)
    decisions = model.decide(scores)
    out = pd.DataFrame({"image": frame["image"]})
    if _volume_list(model, paths):  # several candidates may share a volume: say which line and centre each is
        where = candidate_columns(frame)
        out = pd.concat([frame[where[:1]], out, frame[where[1:]]], axis=1)
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
    for name, values in model.coarse_columns(scores).items():  # a model with a class hierarchy
        out[name] = values
    return out
