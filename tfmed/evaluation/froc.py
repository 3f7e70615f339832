"""FROC analysis of scored nodule candidates, as the LUNA16 challenge scores them (Setio et al. 2017).

A candidate within a reference nodule's radius (distance < diameter / 2)
detects it; a nodule counts once, with the highest score of the candidates
that detect it, and a nodule no candidate reaches stays missed at every
threshold. Candidates within an excluded finding (``annotations_excluded.csv``:
nodules under 3 mm, non-nodules, findings of one or two readers; a missing
diameter counts as 10 mm) are ignored. Every other candidate is a false
positive. Sweeping the threshold gives sensitivity (detected / all nodules)
against the average number of false positives per scan; the competition
performance metric (CPM) is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and
8 false positives per scan (:data:`FP_RATES`). Its interval resamples scans
with replacement.

Example:
    >>> candidates = pd.DataFrame({"scan": ["a", "a", "a"], "x": [0.0, 30, 60], "y": 0.0, "z": 0.0,
    ...                            "score": [0.9, 0.8, 0.2]})
    >>> nodules = pd.DataFrame({"scan": ["a"], "x": [1.0], "y": 0.0, "z": 0.0, "diameter_mm": [6.0]})
    >>> result = froc(candidates, nodules, scans=["a"], n_resamples=0)
    >>> result["cpm"], result["detected"], result["false_positives"]
    (1.0, 1, 2)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from tfmed.evaluation.intervals import percentile_interval

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
EXCLUDED_DIAMETER_MM = 10.0
POSITION = ["x", "y", "z"]


def froc(candidates: pd.DataFrame, nodules: pd.DataFrame, scans: list, excluded: pd.DataFrame | None = None,
         n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The FROC of ``candidates`` against ``nodules`` over ``scans``: CPM (with a bootstrap interval over scans),
    sensitivity at each of :data:`FP_RATES`, and the counts.

    Args:
        candidates: columns scan, x, y, z (mm) and score, one row per scored candidate.
        nodules: the reference nodules: scan, x, y, z, diameter_mm.
        scans: every scan evaluated, with or without candidates (the false positives are per scan).
        excluded: findings whose candidates are neither hits nor false positives (same columns;
            a diameter below 0 counts as :data:`EXCLUDED_DIAMETER_MM`).
        n_resamples: bootstrap resamples of the scans for the CPM interval (0: none).

    Example:
        >>> froc(pd.DataFrame(columns=["scan", "x", "y", "z", "score"]), pd.DataFrame(
        ...     {"scan": ["a"], "x": [0.0], "y": 0.0, "z": 0.0, "diameter_mm": [5.0]}), ["a"], n_resamples=0)["cpm"]
        0.0
    """
    scans = list(dict.fromkeys(scans))
    by_scan = [_rows_by_scan(frame) for frame in (candidates, nodules, excluded)]  # one pass each, not one per scan
    entries = [_scan_entries(*(rows(scan) for rows in by_scan[:2]),
                             None if excluded is None else by_scan[2](scan)) for scan in scans]
    fps, sensitivity = _curve(entries)
    at = {rate: float(np.interp(rate, fps, sensitivity)) for rate in FP_RATES}
    cpm = float(np.mean(list(at.values())))
    result = {"cpm": cpm, "sensitivity_at_fp_per_scan": {f"{rate:g}": value for rate, value in at.items()},
              "scans": len(scans), "nodules": int(sum(e["nodules"] for e in entries)),
              "detected": int(sum(e["detected"] for e in entries)),
              "false_positives": int(sum(np.sum(e["labels"] == 0) for e in entries)),
              "ignored": int(sum(e["ignored"] for e in entries))}
    if n_resamples and scans:
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(int(n_resamples)):
            chosen = [entries[i] for i in rng.integers(0, len(entries), len(entries))]
            if sum(e["nodules"] for e in chosen):
                values.append(float(np.mean(np.interp(FP_RATES, *_curve(chosen)))))
        result["cpm_ci"] = list(percentile_interval(values, level))
        result["interval"] = f"{level:.0%} percentile bootstrap over scans ({len(values)} resamples)"
    return result


def _rows_by_scan(frame: pd.DataFrame | None):
    """A function from a scan to ``frame``'s rows of that scan (none of an absent scan), grouped once."""
    if frame is None:
        return lambda scan: None
    groups = {scan: rows for scan, rows in frame.groupby("scan", sort=False)} if len(frame) else {}
    empty = frame.iloc[:0]
    return lambda scan: groups.get(scan, empty)


def _scan_entries(candidates: pd.DataFrame, nodules: pd.DataFrame, excluded: pd.DataFrame | None) -> dict:
    """One scan's FROC entries: a score per detected nodule (label 1), per false positive (label 0)."""
    points = candidates[POSITION].to_numpy(float).reshape(-1, 3)
    scores = candidates["score"].to_numpy(float)
    hits = _within(points, nodules)
    free = ~hits.any(axis=1)
    ignored = free & _within(points, excluded).any(axis=1) if excluded is not None else np.zeros_like(free)
    false = free & ~ignored
    detected = hits.any(axis=0)
    best = [scores[hits[:, j]].max() for j in np.flatnonzero(detected)]
    return {"labels": np.r_[np.ones(len(best)), np.zeros(int(false.sum()))],
            "scores": np.r_[best, scores[false]], "nodules": len(nodules), "detected": int(detected.sum()),
            "ignored": int(ignored.sum())}


def _within(points: np.ndarray, findings: pd.DataFrame | None) -> np.ndarray:
    """(candidates, findings): whether each candidate lies within each finding's radius."""
    if findings is None or len(findings) == 0 or len(points) == 0:
        return np.zeros((len(points), 0 if findings is None else len(findings)), bool)
    centres = findings[POSITION].to_numpy(float)
    diameters = findings["diameter_mm"].to_numpy(float)
    radii = np.where(diameters < 0, EXCLUDED_DIAMETER_MM, diameters) / 2.0
    squared = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return squared < radii[None, :] ** 2


def _curve(entries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(false positives per scan, sensitivity) at every threshold, from the scans' entries."""
    labels = np.concatenate([e["labels"] for e in entries]) if entries else np.zeros(0)
    scores = np.concatenate([e["scores"] for e in entries]) if entries else np.zeros(0)
    nodules = sum(e["nodules"] for e in entries)
    detected, false = int(labels.sum()), int((labels == 0).sum())
    if nodules == 0:
        raise ValueError("FROC: no reference nodule in the scans evaluated")
    if detected == 0:
        return np.array([0.0, false / len(entries)]), np.zeros(2)
    if false == 0:
        return np.array([0.0, 0.0]), np.array([0.0, detected / nodules])
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr * false / len(entries), tpr * detected / nodules
