"""An ensemble beside its members: each member's AUC and the paired DeLong test against the combination.

Binary tasks get one paired DeLong test (DeLong et al. 1988) per member, on the
same images; multiclass tasks one paired test of the macro one-vs-rest AUCs per
member (:func:`~tfmed.evaluation.intervals.macro_auc_test`, DeLong's structural
components extended to all classes); multilabel tasks one DeLong test per member
and label, and the paired test of the macro AUCs under ``macro``.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 0, 1])
    >>> combined = np.array([0.1, 0.3, 0.8, 0.9, 0.2, 0.7])
    >>> result = compare_to_members("binary", y, combined, {"a": np.array([0.1, 0.6, 0.5, 0.9, 0.2, 0.7])})
    >>> result["a"]["auc"], result["a"]["ensemble_auc"]
    (0.889, 1.0)
"""
from __future__ import annotations

import numpy as np

from tfmed.config import UNKNOWN_LABEL
from tfmed.evaluation.metrics import TASKS
from tfmed.evaluation.intervals import (PERMUTATION_TEST, EvaluationError, auc_defined, check_aligned, delong_test,
                                       macro_auc_test)


def paired_tests(task: str, y, scores_a, scores_b) -> dict:
    """The paired AUC tests a task gets for models ``a`` and ``b`` scored on the same cases, unrounded.

    Keys: ``"auc"`` (binary, DeLong), ``"macro"`` (multiclass and multilabel,
    :func:`~tfmed.evaluation.intervals.macro_auc_test`) and, for multilabel,
    each label's index (DeLong). Each value is the test's result
    (``auc_a``, ``auc_b``, ``diff``, ``p_value``, ``ci_a``, ...), or None
    where the cases hold a single class and no AUC exists.

    Example:
        >>> tests = paired_tests("binary", [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [0.2, 0.1, 0.6, 0.7])
        >>> list(tests), tests["auc"]["auc_a"], tests["auc"]["auc_b"]
        (['auc'], 0.75, 1.0)
    """
    if task not in TASKS:
        raise EvaluationError(f"paired_tests: task is {task!r}; allowed: {', '.join(TASKS)}")
    for first, second, what in ((y, scores_a, "y and scores_a"), (y, scores_b, "y and scores_b"),
                                (scores_a, scores_b, "scores_a and scores_b")):
        check_aligned(first, second, f"paired_tests: {what}")
    y = np.asarray(y)
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if task == "binary":
        return {"auc": _or_none(delong_test, y, a, b)}
    tests = {"macro": _or_none(macro_auc_test, y.astype(int), a, b)}
    if task == "multilabel":
        for j in range(y.shape[1]):   # each label on the images where it is known
            known = y[:, j] != UNKNOWN_LABEL
            tests[j] = _or_none(delong_test, y[known, j], a[known, j], b[known, j])
    return tests


def compare_to_members(task: str, y, combined, members: dict[str, np.ndarray]) -> dict:
    """Per member: its AUC, the combination's AUC, their difference and the DeLong p-value.

    ``difference`` is the combination's AUC minus the member's; a small
    ``p_value`` says the two AUCs differ beyond chance on these images. Values
    are rounded to 3 (AUC) and 4 (p) decimals; None where a split has a single
    class and no AUC exists.
    """
    out = {}
    for name, scores in members.items():
        tests = paired_tests(task, y, combined, scores)
        if task == "binary":
            out[name] = _rounded(tests["auc"], "auc", "ensemble_auc")
        elif task == "multilabel":
            macro = _rounded(tests.pop("macro"), "macro_auc", "ensemble_macro_auc")
            per_label = [_rounded(result, "auc", "ensemble_auc") for result in tests.values()]
            out[name] = {key: [entry[key] for entry in per_label] for key in per_label[0]} | {"macro": macro}
        else:
            out[name] = _rounded(tests["macro"], "macro_auc", "ensemble_macro_auc")
    return out


def comparison_sentences(comparison: dict, split: str) -> list[str]:
    """One plain sentence per member for the report.

    Example:
        >>> comparison_sentences({"a": {"auc": 0.9, "ensemble_auc": 0.95, "difference": 0.05,
        ...                             "p_value": 0.01}}, "test")
        ['test: ensemble AUC 0.950 vs member a 0.900 (difference +0.050, paired DeLong p = 0.0100).']
    """
    lines = []
    for name, entry in comparison.items():
        if "auc" in entry and not isinstance(entry["auc"], list):
            if entry["auc"] is None:
                lines.append(f"{split}: member {name}: no AUC (one class only).")
                continue
            lines.append(f"{split}: ensemble AUC {entry['ensemble_auc']:.3f} vs member {name} {entry['auc']:.3f} "
                         f"(difference {entry['difference']:+.3f}, {_p_words(entry, 'DeLong')}).")
        elif "macro_auc" in entry:
            lines.append(f"{split}: {_macro_words(entry, name)}.")
        else:
            pairs = ", ".join(f"{_text(a)}/{_text(e)} (p {_text(p, 4)}{', permutation' * (t == PERMUTATION_TEST)})"
                              for a, e, p, t in zip(entry["auc"], entry["ensemble_auc"], entry["p_value"],
                                                    entry["test"]))
            lines.append(f"{split}: member {name} vs ensemble AUC per label: {pairs} (paired DeLong p unless a "
                         f"label says permutation, taken where DeLong's variance is 0); "
                         f"{_macro_words(entry['macro'], name)}.")
    return lines


def _macro_words(entry: dict, name: str) -> str:
    if entry["macro_auc"] is None:
        return f"member {name}: no macro AUC (one class only)"
    return (f"ensemble macro AUC {entry['ensemble_macro_auc']:.3f} vs member {name} {entry['macro_auc']:.3f} "
            f"(difference {entry['difference']:+.3f}, {_p_words(entry, 'test of macro AUCs')})")


def _p_words(entry: dict, usual: str) -> str:
    """An entry's p-value and the paired test it comes from: ``usual`` (DeLong's), or the permutation test
    taken where DeLong's variance is 0 (a handful of cases).

    Example:
        >>> _p_words({"p_value": 0.5, "test": PERMUTATION_TEST}, "DeLong")
        "paired permutation p = 0.5000, as DeLong's variance is 0"
        >>> _p_words({"p_value": 0.01, "test": "delong"}, "DeLong")
        'paired DeLong p = 0.0100'
    """
    if entry.get("test") == PERMUTATION_TEST:
        return f"paired permutation p = {entry['p_value']:.4f}, as DeLong's variance is 0"
    return f"paired {usual} p = {entry['p_value']:.4f}"


def _or_none(test, y, a, b) -> dict | None:
    """``test(y, a, b)``, or None where the cases hold a single class (a multi-label ``y``: no label known
    both present and absent) and no AUC exists; any other fault of the input is raised."""
    if not auc_defined(y):
        return None
    return test(y, a, b)


def _rounded(result: dict | None, member_key: str, ensemble_key: str) -> dict:
    if result is None:
        return {member_key: None, ensemble_key: None, "difference": None, "p_value": None, "test": None}
    return {member_key: round(result["auc_b"], 3), ensemble_key: round(result["auc_a"], 3),
            "difference": round(result["diff"], 3), "p_value": round(result["p_value"], 4), "test": result["test"]}


def _text(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
