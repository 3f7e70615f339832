"""``tfmed runs``: the runs under a folder, finished or not, with their headline figures.

Example:
    >>> import tempfile
    >>> list_runs(tempfile.mkdtemp()).columns.tolist()
    ['run', 'status', 'mode', 'task', 'val_auc', 'test_auc', 'test_origin', 'seconds']
"""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

import pandas as pd
import yaml

from tfmed.run.manifest import (MANIFEST_FILE, RunIntegrityError, failure_reason, listed_file_problem,
                                read_manifest, strays)
from tfmed.run.rundir import SWEEP_FILE, RunDirectoryError, is_run_dir, json_object

COLUMNS = ["run", "status", "mode", "task", "val_auc", "test_auc", "test_origin", "seconds"]
SWEEP_STATUS = f"layer sweep ({SWEEP_FILE})"


def list_runs(runs_dir: str | Path = "runs", name: str | None = None) -> pd.DataFrame:
    """One row per run directory anywhere under ``runs_dir`` (``runs/NAME/TIMESTAMP``, a run written with
    ``--output``, an exported copy; only those of experiment ``name`` when given), oldest first: its status
    ("finished"; "failed: " and the error from ``FAILED.txt``; "incomplete" when it has neither a manifest nor a
    failure record, e.g. still running or killed; "damaged: " and why when its manifest, ``metrics.json`` or
    ``config.yaml`` is not what the run wrote; "layer sweep" for a ``tfmed sweep-layers`` folder), mode, task,
    the headline AUC (ROC AUC, or macro AUC) of its val and test splits, where its test split came from (the
    first clause of ``test_origin`` in ``metrics.json``: carved from the training images, the data source's own
    test split, or sites held out whole), and its run time in seconds.

    Example:
        >>> list_runs("runs", name="pneumonia_mnist")  # doctest: +SKIP
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunDirectoryError(f"{root}: no such folder; runs are written to runs/NAME/TIMESTAMP (or the "
                                "experiment's runs_dir), so pass that folder")
    rows = []
    for run in _run_dirs(root):
        if name is not None and name not in (run.parent.name, _experiment_name(run)):
            continue
        reason = failure_reason(run)
        status = (f"failed: {reason}" if reason else "finished" if (run / MANIFEST_FILE).is_file()
                  else SWEEP_STATUS if (run / SWEEP_FILE).is_file() else "incomplete")
        damage = _damage(run) if status == "finished" else None
        status = f"damaged: {damage}" if damage else status
        metrics = json_object(run / "metrics.json") if status == "finished" else {}
        rows.append({"run": run.as_posix(), "status": status, "mode": metrics.get("mode"), "task": metrics.get("task"),
                     "val_auc": _split_auc(metrics, "val"), "test_auc": _split_auc(metrics, "test"),
                     "test_origin": _test_origin(metrics),
                     "seconds": metrics.get("seconds"), "started": _started(run)})
    frame = pd.DataFrame(rows, columns=COLUMNS + ["started"])
    return frame.sort_values(["started", "run"]).drop(columns="started").reset_index(drop=True)


def _run_dirs(root: Path):
    """Each run directory under ``root`` (``root`` itself included), found by its files: ``config.yaml`` with
    ``environment.json``, a manifest, a failure record or ``model/``. The walk does not enter runs (their
    ``model/``, ``evaluations/`` ...) nor hidden folders (the feature store), so it reads a few names per run."""
    for folder, dirs, _ in os.walk(root):
        if is_run_dir(folder):
            dirs.clear()
            yield Path(folder)
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))


def _damage(run: Path) -> str | None:
    """Why a finished run's figures cannot be trusted: its manifest unreadable, ``metrics.json`` or
    ``config.yaml`` missing or changed since the run listed them, another listed file missing, or a file
    added to ``model/`` (None when they are as written; the other files' contents are hashed by ``tfmed
    evaluate`` and the commands that read them, so that the listing stays quick)."""
    try:
        entries = read_manifest(run)
    except RunIntegrityError as error:
        return f"{MANIFEST_FILE} unreadable ({str(error).rpartition('; ')[2]})"
    for name in ("metrics.json", "config.yaml"):
        problem = listed_file_problem(run, entries, name)
        if problem == "changed":
            return f"{name} changed since the run wrote it"
        if problem:  # missing, or not listed
            return f"{name} missing"
    missing = next((name for name in entries if not (run / name).is_file()), None)
    if missing:
        return f"{missing} missing"
    added = strays(run, entries)
    return f"{added[0]} added to the run (absent from {MANIFEST_FILE})" if added else None


def _experiment_name(run: Path) -> str | None:
    """The ``name`` in a run's ``config.yaml`` (None when it cannot be read)."""
    try:
        return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None


def _started(run: Path) -> str:
    """When the run started (``environment.json``), else when its ``config.yaml`` was written."""
    started = json_object(run / "environment.json").get("started")
    if isinstance(started, str):
        return started
    return dt.datetime.fromtimestamp((run / "config.yaml").stat().st_mtime).isoformat(timespec="seconds")


def _split_auc(metrics: dict, split: str) -> float | None:
    """The headline AUC of ``split`` in a run's metrics (None when it has no such split)."""
    from tfmed.evaluation.metrics import headline_auc

    figures = metrics.get("splits", {}).get(split)
    if not figures:
        return None
    if "roc_auc" not in figures and "macro_auc" not in figures:   # binary: one entry per operating point,
        figures = next(iter(figures.values()))                     # all with the same AUC
    return headline_auc(figures)


def _test_origin(metrics: dict) -> str | None:
    """Where a run's test split came from, in the first clause of its ``test_origin`` (None without a test).

    Example:
        >>> _test_origin({"splits": {"test": {}}, "test_origin": "carved from the training images (same collection)"})
        'carved from the training images'
    """
    origin = metrics.get("test_origin")
    if "test" not in metrics.get("splits", {}) or not isinstance(origin, str):
        return None
    return re.split(r" \(|:", origin, maxsplit=1)[0]


def format_runs(frame: pd.DataFrame) -> str:
    """The table :func:`list_runs` returns, as text: AUCs to 3 decimals, "-" where there is none.

    Example:
        >>> print(format_runs(pd.DataFrame(columns=COLUMNS)))
        no runs found
    """
    if not len(frame):
        return "no runs found"
    shown = frame.copy()
    for column in ("val_auc", "test_auc"):
        shown[column] = shown[column].map(lambda value: "-" if pd.isna(value) else f"{value:.3f}")
    shown["seconds"] = shown["seconds"].map(lambda value: "-" if pd.isna(value) else f"{value:.0f}")
    shown = shown.fillna("-").astype(str)
    widths = {column: max(len(column), int(shown[column].map(len).max())) for column in shown.columns}
    lines = [[column.ljust(widths[column]) for column in shown.columns]]
    lines += [[value.ljust(widths[column]) for column, value in row.items()] for _, row in shown.iterrows()]
    return "\n".join("  ".join(line).rstrip() for line in lines)
