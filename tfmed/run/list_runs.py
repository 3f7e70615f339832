"""``tfmed runs``: the runs under a folder, finished or not, with their headline figures.

Example:
    >>> import tempfile
    >>> list_runs(tempfile.mkdtemp()).columns.tolist()
    ['run', 'status', 'mode', 'task', 'val_auc', 'test_auc', 'seconds']
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tfmed.run.manifest import MANIFEST_FILE, failure_reason
from tfmed.run.rundir import RunDirectoryError

COLUMNS = ["run", "status", "mode", "task", "val_auc", "test_auc", "seconds"]


def list_runs(runs_dir: str | Path = "runs", name: str | None = None) -> pd.DataFrame:
    """One row per run directory ``runs_dir/NAME/TIMESTAMP`` (only experiment ``name`` when given), oldest
    first: its status ("finished"; "failed: " and the error from ``FAILED.txt``; "incomplete" when it
    has neither a manifest nor a failure record, e.g. still running or killed), mode, task, the headline
    AUC (ROC AUC, or macro AUC) of its val and test splits, and its run time in seconds.

    Example:
        >>> list_runs("runs", name="pneumonia_mnist")  # doctest: +SKIP
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise RunDirectoryError(f"{root}: no such folder; runs are written to runs/NAME/TIMESTAMP (or the "
                                "experiment's runs_dir), so pass that folder")
    rows = []
    for config in root.glob("*/*/config.yaml"):
        run = config.parent
        if name is not None and run.parent.name != name:
            continue
        reason = failure_reason(run)
        status = f"failed: {reason}" if reason else "finished" if (run / MANIFEST_FILE).is_file() else "incomplete"
        metrics = _metrics(run) if status == "finished" else {}
        rows.append({"run": run.as_posix(), "status": status, "mode": metrics.get("mode"), "task": metrics.get("task"),
                     "val_auc": _split_auc(metrics, "val"), "test_auc": _split_auc(metrics, "test"),
                     "seconds": metrics.get("seconds")})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    order = frame["run"].map(lambda path: (Path(path).name, Path(path).parent.name))   # by time, then name
    return frame.iloc[order.sort_values().index].reset_index(drop=True) if len(frame) else frame


def _split_auc(metrics: dict, split: str) -> float | None:
    """The headline AUC of ``split`` in a run's metrics (None when it has no such split)."""
    from tfmed.evaluation.metrics import headline_auc

    figures = metrics.get("splits", {}).get(split)
    if not figures:
        return None
    if "roc_auc" not in figures and "macro_auc" not in figures:   # binary: one entry per operating point,
        figures = next(iter(figures.values()))                     # all with the same AUC
    return headline_auc(figures)


def _metrics(run: Path) -> dict:
    try:
        return json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


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
