"""Figures for each group of patients or images in a split: by site, view, sex or age band.

A model can be accurate overall and miss more disease in one group than another (women, the old,
one hospital's scanner); an audit gives each group its own figures and tests whether the error
rates differ. :func:`subgroup_figures` gives, for each group of a split, its images, its AUC with
an interval and, for a binary model, its sensitivity and specificity at the model's threshold.
Between the groups whose value is known it tests whether sensitivity (the share of positives found,
so its complement, the missed disease) and specificity differ: Fisher's exact test for two groups,
the chi-square test of independence for more.

Example:
    >>> import numpy as np
    >>> y = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 2)
    >>> scores = np.array([.9, .8, .7, .6, .4, .3, .2, .1] + [.9, .3, .2, .1, .4, .3, .2, .1])
    >>> groups = np.array(["female"] * 8 + ["male"] * 8)
    >>> figures = subgroup_figures("binary", y, scores, groups, 0.5, "youden", ["normal", "disease"])
    >>> figures["groups"]["male"]["sensitivity"], round(figures["sensitivity_p"], 3)
    (0.25, 0.143)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency, fisher_exact

from tfmed.data.demographics import age_band

from .intervals import check_aligned
from .metrics import evaluate

UNKNOWN_GROUP = "(unknown)"
ATTRIBUTE_WORDS = {"site": "site", "view": "view", "sex": "sex", "age": "age band"}


def group_names(frame: pd.DataFrame, attribute: str, age_bands: Sequence[int]) -> np.ndarray:
    """Each row's group of ``attribute`` (a table column; ``age`` in the bands of ``age_bands``), with
    :data:`UNKNOWN_GROUP` where the value is not known.

    Example:
        >>> frame = pd.DataFrame({"age": [12.0, 70.5, None], "sex": ["female", None, "male"]})
        >>> group_names(frame, "age", [18, 65]).tolist(), group_names(frame, "sex", []).tolist()
        (['0-17', '65+', '(unknown)'], ['female', '(unknown)', 'male'])
    """
    if attribute == "age":
        values = pd.Series([age_band(age, list(age_bands)) for age in frame["age"]], dtype="string")
    else:
        values = frame[attribute].astype("string")
    return values.fillna(UNKNOWN_GROUP).to_numpy(dtype=object)


def group_counts(frame: pd.DataFrame, attribute: str, age_bands: Sequence[int]) -> dict[str, int]:
    """Images per group of ``attribute``, in reading order (see :func:`group_names`).

    Example:
        >>> group_counts(pd.DataFrame({"sex": ["male", None, "female", "male"]}), "sex", [])
        {'female': 1, 'male': 2, '(unknown)': 1}
    """
    groups = group_names(frame, attribute, age_bands).tolist()
    return {name: groups.count(name) for name in _order(groups, attribute)}


def _order(names, attribute: str) -> list[str]:
    """Groups in reading order: age bands by age, others by name; the unknown group last."""
    known = [name for name in set(names) if name != UNKNOWN_GROUP]
    key = (lambda name: int(name.split("-")[0].rstrip("+"))) if attribute == "age" else str
    return sorted(known, key=key) + ([UNKNOWN_GROUP] if UNKNOWN_GROUP in set(names) else [])


def subgroup_figures(task: str, y, scores, groups, threshold=None, threshold_name: str | None = None,
                     classes: Sequence[str] | None = None, attribute: str = "", ci_level: float = 0.95) -> dict | None:
    """The figures of each group in ``groups`` (one name per row; None with fewer than two groups).

    Returns ``{"groups": {name: figures}}``; each group's figures are ``n`` and ``auc`` with ``auc_ci``
    (macro AUC for multiclass and multilabel models) and, for a binary model, ``n_positive``,
    ``threshold`` (its name), ``sensitivity`` and ``specificity``. A binary model's result also has
    ``sensitivity_p`` and ``specificity_p`` (None when fewer than two known groups have positives,
    or negatives) and ``difference_test``, the name of the test.

    Example:
        >>> y = np.array([0, 1, 0, 1]); s = np.array([.2, .8, .6, .4])
        >>> sorted(subgroup_figures("binary", y, s, np.array(["a", "a", "b", "b"]), 0.5)["groups"])
        ['a', 'b']
    """
    for other, what in ((scores, "y and scores"), (groups, "y and groups")):
        check_aligned(y, other, f"subgroup_figures: {what}")
    groups = np.asarray(groups, dtype=object)
    names = _order(groups, attribute)
    if len(names) < 2:
        return None
    y, scores = np.asarray(y), np.asarray(scores)
    figures = {}
    for name in names:
        rows = np.flatnonzero(groups == name)
        result = evaluate(task, y[rows], scores[rows], threshold, classes, ci_level=ci_level)
        if task == "binary":
            figures[name] = {"n": result["n"], "n_positive": result["n_positive"], "auc": result["roc_auc"],
                             "auc_ci": result["ci"].get("roc_auc"),
                             "auc_ci_method": result["ci_method"].get("roc_auc"), "threshold": threshold_name,
                             "sensitivity": result["sensitivity"], "specificity": result["specificity"],
                             "confusion_matrix": result["confusion_matrix"]}
        else:
            figures[name] = {"n": result["n"], "auc": result["macro_auc"], "auc_ci": result.get("macro_auc_ci"),
                             "auc_ci_method": result["ci_method"]["macro_auc"]}
    out = {"groups": figures}
    if task == "binary":
        known = [figures[name]["confusion_matrix"] for name in names if name != UNKNOWN_GROUP]
        tables = {"sensitivity": [(m["tp"], m["fn"]) for m in known],
                  "specificity": [(m["tn"], m["fp"]) for m in known]}
        tests = {}
        for figure, counts in tables.items():
            out[f"{figure}_p"] = difference_p(counts)
            if out[f"{figure}_p"] is not None:
                tests[figure] = difference_test_name(counts)
        names = set(tests.values())
        out["difference_test"] = (names.pop() if len(names) == 1 else
                                  ", ".join(f"{test} for {figure}" for figure, test in tests.items()) or "none")
    return out


def difference_test_name(counts: Sequence[tuple[int, int]]) -> str:
    """The test :func:`difference_p` makes of these counts: Fisher's for the two groups with cases, else chi-square.

    Example:
        >>> difference_test_name([(5, 1), (0, 0), (3, 3)]), difference_test_name([(5, 1), (2, 2), (3, 3)])
        ("Fisher's exact test", 'chi-square test')
    """
    return "Fisher's exact test" if len(_groups_with_cases(counts)) == 2 else "chi-square test"


def _groups_with_cases(counts: Sequence[tuple[int, int]]) -> np.ndarray:
    """The (right, wrong) counts of the groups that have cases, as an (n, 2) table: the table tested."""
    return np.array([pair for pair in counts if sum(pair) > 0], dtype=np.int64).reshape(-1, 2)


def difference_p(counts: Sequence[tuple[int, int]]) -> float | None:
    """The p-value of the hypothesis that a proportion (right, wrong) is the same in every group:
    Fisher's exact test for two groups, the chi-square test of independence for more. Groups without
    cases are left out; None with fewer than two left; 1.0 when no group is ever wrong (or right).

    Example:
        >>> round(difference_p([(9, 1), (3, 7)]), 4), difference_p([(5, 0), (4, 0)]), difference_p([(5, 1)])
        (0.0198, 1.0, None)
    """
    table = _groups_with_cases(counts)
    if len(table) < 2:
        return None
    if (table.sum(axis=0) == 0).any():
        return 1.0
    if len(table) == 2:
        return float(fisher_exact(table).pvalue)
    return float(chi2_contingency(table).pvalue)
