"""``tfmed compare``: paired tests between saved runs scored on the same cases.

Each directory is a run (``runs/NAME/TIMESTAMP``) or an evaluation of one
(``tfmed evaluate --output DIR``); only its ``metrics.json`` (task, classes)
and ``predictions.csv`` are read, so no model is loaded. A run is checked
against its ``MANIFEST.sha256`` first (``verify=False``: ``--no-verify``); an
evaluation directory has no manifest and is read as it is. The first directory
is the reference. For each split that every directory scored (``val``,
``test``) the cases must be the same images with the same labels; then each
other directory is compared with the reference on those cases:

* binary: the paired DeLong test of the two AUCs;
* multiclass: the paired test of the two macro one-vs-rest AUCs
  (:func:`~tfmed.evaluation.intervals.macro_auc_test`);
* multilabel: the paired test of the macro AUCs, and one DeLong test per label.

Example:
    >>> table = compare_runs(["runs/pneumonia_mnist/A", "runs/pneumonia_mnist_finetune/B"])  # doctest: +SKIP
    >>> table[["split", "run", "auc", "reference_auc", "difference", "p_value"]]  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.errors import TfmedError
from tfmed.evaluation.comparison import paired_tests
from tfmed.evaluation.report import predictions_column
from tfmed.files import read_json
from tfmed.run.manifest import FAILED_FILE, check_run, failed_next_step, failure_reason
from tfmed.run.rundir import run_working_dir

SPLITS = ("val", "test")
COLUMNS = ["split", "run", "label", "n", "auc", "auc_ci", "reference_auc", "difference", "p_value", "test"]


class CompareRunsError(TfmedError):
    """Saved runs cannot be compared (not a run, different tasks, or different cases)."""


def compare_runs(directories: list[str | Path], verify: bool = True) -> pd.DataFrame:
    """One row per split, directory after the first and (multilabel) label: AUCs, difference, paired p.

    ``difference`` is the directory's AUC minus the reference's (the first
    directory); ``label`` is ``macro`` for the macro AUC of multiclass and
    multilabel runs, ``-`` for binary runs. ``verify``: as in :func:`~tfmed.run.manifest.check_run`, for each
    directory that is a run.
    """
    runs = [_check_directory(Path(d)) for d in directories]
    if len(runs) < 2:
        raise CompareRunsError("give at least two run (or evaluation) directories to compare")
    for run in runs:
        if (run / "config.yaml").is_file():  # a run; an evaluation directory has no manifest
            check_run(run, verify)
    infos = [read_json(run / "metrics.json", CompareRunsError) for run in runs]
    for run, info in zip(runs, infos):
        if not isinstance(info, dict):
            raise CompareRunsError(f"{run / 'metrics.json'}: holds no JSON object; restore the file as tfmed wrote "
                                   "it, or run the evaluation again")
    for run, info in zip(runs[1:], infos[1:]):
        if (info.get("task"), info.get("classes")) != (infos[0].get("task"), infos[0].get("classes")):
            raise CompareRunsError(f"{run} is a {info.get('task')} model of classes {info.get('classes')}, but "
                                   f"{runs[0]} is {infos[0].get('task')} of {infos[0].get('classes')}; only "
                                   "models of the same task and classes can be compared")
    task, classes = infos[0]["task"], [str(c) for c in infos[0]["classes"]]
    frames = [_read_predictions(run, task, classes) for run in runs]
    shared = [s for s in SPLITS if all((f["split"] == s).any() for f in frames)]
    if not shared:
        raise CompareRunsError(f"{', '.join(map(str, runs))} have no split scored by all of them "
                               f"(looked for {' and '.join(SPLITS)} in predictions.csv)")
    rows = []
    for split in shared:
        parts = [_split_rows(frame, split, run) for frame, run in zip(frames, runs)]
        labels = _labels(parts[0], classes)
        for run, part in zip(runs[1:], parts[1:]):
            part = _align(parts[0], part, split, runs[0], run)
            if not np.array_equal(_labels(part, classes), labels):
                changed = part["id"][(_labels(part, classes) != labels).reshape(len(part), -1).any(axis=1)]
                raise CompareRunsError(f"{run} and {runs[0]} label {split} case {changed.iloc[0]} differently; "
                                       "compare runs made on the same data")
            rows += _compare(split, run.as_posix(), task, classes, labels,
                             _scores(parts[0], classes), _scores(part, classes))
    return pd.DataFrame(rows, columns=COLUMNS)


def test_origin(directory: str | Path) -> str | None:
    """Where the test split of a run (or evaluation directory) came from, as its ``metrics.json`` says: the run's
    ``test_origin``, or for ``tfmed evaluate --data`` the data evaluated; None when it does not say.

    Example:
        >>> test_origin("runs/pneumonia_mnist/A")  # doctest: +SKIP
        'carved from the training images (same collection as training: an in-distribution estimate)'
    """
    info = read_json(_check_directory(Path(directory)) / "metrics.json", CompareRunsError)
    if not isinstance(info, dict):
        return None
    if info.get("test_origin"):
        return str(info["test_origin"])
    return f"the data evaluated ({info['source']})" if info.get("source") else None


def _check_directory(path: Path) -> Path:
    if path.name == "model" and (path.parent / "metrics.json").is_file():
        path = path.parent
    missing = [name for name in ("metrics.json", "predictions.csv") if not (path / name).is_file()]
    reason = failure_reason(path)
    if missing and reason is not None:
        raise CompareRunsError(f"{path}: this run stopped before it finished, with {reason} (see {FAILED_FILE}); "
                               f"{failed_next_step(path)}")
    if missing:
        raise CompareRunsError(f"{path}: no {' or '.join(missing)}; pass a run directory (runs/NAME/TIMESTAMP) "
                               "or an evaluation directory written by tfmed evaluate")
    return path


def _read_predictions(run: Path, task: str, classes: list[str]) -> pd.DataFrame:
    """``run/predictions.csv``, refused with its missing or non-numeric columns unless it has what is compared."""
    path = run / "predictions.csv"
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as error:  # pandas' ParserError and EmptyDataError are ValueErrors
        raise CompareRunsError(f"{path}: not a readable CSV file ({' '.join(str(error).split())}); restore the file "
                               "tfmed wrote") from None
    needed = ["split", "id"]
    for name in ("label", "score"):
        if task == "multilabel" or (name == "score" and task == "multiclass"):
            needed += [f"{name}:{c}" for c in classes]
        else:
            needed.append(name)
    missing = [column for column in needed if column not in frame.columns]
    wrong = [column for column in needed[2:] if column in frame.columns
             and not pd.api.types.is_numeric_dtype(frame[column])]
    if missing or wrong:
        problem = (f"has no column {', '.join(missing)}" if missing
                   else f"holds values that are not numbers in column {', '.join(wrong)}")
        raise CompareRunsError(f"{path} {problem} (a {task} run's predictions need {', '.join(needed)}); it is "
                               "not the file tfmed wrote: restore it, or score the run again with tfmed evaluate")
    frame["id"] = _located(run, frame["id"])
    return frame


def _located(run: Path, ids: pd.Series) -> pd.Series:
    """Image ids as one image is named from any folder: a relative file id joined to the folder the run or
    evaluation started in (``cwd`` of its ``environment.json``) when that file is there, paths normalised;
    other ids (``file.npz#test/5``) as they are."""
    base = run_working_dir(run)

    def locate(ref: str) -> str:
        if os.path.isabs(ref):
            return os.path.normpath(ref)
        joined = os.path.join(base, ref) if base is not None else None
        return os.path.normpath(joined) if joined is not None and os.path.isfile(joined) else ref

    return ids.astype(str).map(locate)


def _split_rows(frame: pd.DataFrame, split: str, run: Path) -> pd.DataFrame:
    part = frame[frame["split"] == split].reset_index(drop=True)
    repeated = part["id"][part["id"].duplicated()]
    if len(repeated):
        raise CompareRunsError(f"{run}/predictions.csv lists {split} case {repeated.iloc[0]} twice")
    return part


def _align(reference: pd.DataFrame, other: pd.DataFrame, split: str, reference_run: Path,
           run: Path) -> pd.DataFrame:
    """``other``'s rows in the reference's order; refused unless both hold exactly the same cases."""
    ids, other_ids = set(reference["id"]), set(other["id"])
    if ids != other_ids:
        extra = sorted(other_ids - ids)
        lacking = sorted(ids - other_ids)
        case = (f"{run} has {split} case {extra[0]} that {reference_run} does not" if extra else
                f"{run} lacks {split} case {lacking[0]} that {reference_run} has")
        raise CompareRunsError(f"{case} ({len(extra)} extra, {len(lacking)} missing); a paired test needs the "
                               "same cases in both, so compare runs made on the same split")
    return other.set_index("id").loc[reference["id"]].reset_index()


def _labels(part: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return predictions_column(part, "label", classes).astype(int)


def _scores(part: pd.DataFrame, classes: list[str]) -> np.ndarray:
    return predictions_column(part, "score", classes).astype(float)


def _compare(split: str, run: str, task: str, classes: list[str], y: np.ndarray, reference: np.ndarray,
             scores: np.ndarray) -> list[list]:
    rows = []
    for key, result in paired_tests(task, y, scores, reference).items():
        label = "-" if key == "auc" else key if key == "macro" else classes[key]
        # a multilabel label's test reads its known cases only (unknown: -1)
        n = int((y[:, key] >= 0).sum()) if task == "multilabel" and isinstance(key, (int, np.integer)) else len(y)
        if result is None:  # a single class on this split: no AUC
            rows.append([split, run, label, n, None, None, None, None, None, None])
            continue
        lo, hi = result["ci_a"]
        rows.append([split, run, label, n, round(result["auc_a"], 4), f"{lo:.3f}-{hi:.3f}",
                     round(result["auc_b"], 4), round(result["diff"], 4), round(result["p_value"], 4),
                     result["test"]])
    return rows
