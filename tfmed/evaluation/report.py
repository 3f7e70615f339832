"""Run outputs: predictions CSV, metrics JSON and a self-contained HTML report.

The report is one HTML file with every plot embedded as a base64 PNG and
inline styles only, so it can be e-mailed or archived with the run and
opened anywhere without network access. All text is HTML-escaped.

Example:
    >>> import tempfile
    >>> run = tempfile.mkdtemp()
    >>> context = ReportContext(title="Pneumonia (demo)", task="binary",
    ...                         counts={"test": {"normal": 40, "pneumonia": 60}})
    >>> write_report(run, context).name
    'report.html'
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .intervals import EvaluationError
from .metrics import to_jsonable
from .plots import training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PROPORTION_LABELS = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("ppv", "PPV"),
                      ("npv", "NPV"))
EXCLUDED_SHOWN = 10  # excluded rows shown in the report per problem; the rest are counted
OUT_OF_FOLD = "out_of_fold"  # the split key of a k-fold run's pooled out-of-fold scores (thresholds, subgroups)
_PLOT_CAPTIONS = {  # {split}: the split the plots are drawn on (test, or val when a run has no test split);
    # {chosen_on}: where the thresholds were chosen (see chosen_on)
    "roc": "ROC curve ({split}) with the operating points chosen on {chosen_on}",
    "pr": "Precision-recall curve ({split})",
    "confusion": "Confusion matrix ({split})",
    "reliability": "Calibration (reliability diagram, {split})",
    "training_curves": "Training curves (dotted lines: a new fine-tuning stage begins)",
    "roc_per_class": "One-vs-rest ROC curves ({split})",
    "roc_per_label": "ROC curves per label ({split}), each on the images where its label is known",
    "subgroups": "AUC by subgroup ({split}), with intervals",
    "decision": "Decision curve ({split}): net benefit over threshold probabilities",
    "roc_coarse": "ROC curve of the coarse answer ({split}) with the operating points chosen on {chosen_on}",
    "reliability_coarse": "Calibration of the coarse answer (reliability diagram, {split})",
    "decision_coarse": "Decision curve of the coarse answer ({split}): net benefit over threshold probabilities",
}


@dataclass
class ReportContext:
    """Everything the HTML report shows; every field but title and task is optional.

    Attributes:
        title: report heading, e.g. the experiment name.
        task: "binary", "multiclass" or "multilabel".
        source: where the data came from (free text).
        counts: split -> class name -> number of images (multilabel: images known to be positive).
        images: split -> number of images (the table's last row; without it, the sum of ``counts``).
        unknown_labels: split -> label -> images whose label is unknown (multilabel).
        model: facts about the model, e.g. {"backbone": "efficientnet_lite0", "mode": "svm"}.
        metrics: split -> metrics dict from :func:`tfmed.evaluation.evaluate`.
        operating_points: point name -> :func:`binary_metrics` dict at that
            threshold on ``operating_split`` (see ``operating_point_metrics``).
        thresholds_chosen_on: where the thresholds were chosen, as report text (e.g. "the pooled
            out-of-fold scores"; see :func:`tfmed.run.reporting.thresholds_chosen_on`).
        operating_split: the split the operating points were measured on.
        plots: name -> PNG path; embedded in the given order.
        training_history: Keras History.history, drawn when no
            "training_curves" plot is given.
        stage_boundaries: epochs after which a new fine-tuning stage began.
        notes: sentences shown under "Notes" (metric notes are added).
        excluded: rows left out of the data, one dict per row (e.g. row,
            image, reason).
        created: timestamp text (default: now).

    Example:
        >>> ReportContext(title="demo", task="binary").operating_split
        'test'
    """

    title: str
    task: str
    source: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    unknown_labels: dict[str, dict[str, int]] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    operating_points: dict[str, dict] = field(default_factory=dict)
    thresholds_chosen_on: str = "the val split"
    operating_split: str = "test"
    plots: dict[str, str | Path] = field(default_factory=dict)
    training_history: dict[str, list[float]] | None = None
    stage_boundaries: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    created: str | None = None


def write_predictions(path, ids, patients, labels, scores, decisions,
                      class_names: Sequence[str] | None = None) -> Path:
    """Write one row per case: id, patient, label, score, decision.

    Binary: ``scores`` (n,) or (n, 1) give columns ``label, score,
    decision``. Multi-output scores (n, K) give ``score:<name>`` columns;
    labels and decisions that are (n, K) give ``label:<name>`` and
    ``decision:<name>`` columns (multilabel), while 1-D ones (class index,
    multiclass) stay ``label`` and ``decision``. ``patients`` may be None.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "predictions.csv"
        >>> _ = write_predictions(out, ["a", "b"], ["p1", "p2"], [0, 1], [0.2, 0.9], [0, 1])
        >>> out.read_text().splitlines()[0]
        'id,patient,label,score,decision'
    """
    ids = list(ids)
    n = len(ids)
    frame = pd.DataFrame({"id": ids})
    if patients is None:
        frame["patient"] = pd.Series([pd.NA] * n, dtype="string")
    else:
        frame["patient"] = _column(patients, n, "patients")
    score_array = np.asarray(scores, dtype=float)
    if score_array.ndim == 2 and score_array.shape[1] == 1:
        score_array = score_array[:, 0]
    names = None
    if score_array.ndim == 2:
        names = [str(c) for c in class_names] if class_names is not None else \
            [f"class_{k}" for k in range(score_array.shape[1])]
        if len(names) != score_array.shape[1]:
            raise EvaluationError(f"write_predictions: {len(names)} class names for "
                                  f"{score_array.shape[1]} score columns")
    for name, values in (("label", labels), ("score", score_array), ("decision", decisions)):
        array = np.asarray(values)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 2:
            if names is None or array.shape[1] != len(names):
                raise EvaluationError(f"write_predictions: {name}s have shape {array.shape}; with scores of "
                                      f"shape {np.shape(scores)} expected ({n},) or ({n}, {len(names or [])})")
            if array.shape[0] != n:
                raise EvaluationError(f"write_predictions: {name}s have {array.shape[0]} rows but ids has {n}")
            for k, class_name in enumerate(names):
                frame[f"{name}:{class_name}"] = array[:, k]
        else:
            frame[name] = _column(array, n, name + "s")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def predictions_column(frame: pd.DataFrame, name: str, class_names: Sequence[str]) -> np.ndarray:
    """The ``name`` ("label", "score" or "decision") column of a frame read from :func:`write_predictions`'s file.

    (n,) where the file has one such column (binary scores, class indices),
    else (n, K) from its ``name:<class>`` columns, in ``class_names`` order.

    Example:
        >>> frame = pd.DataFrame({"id": ["a"], "label": [2], "score:x": [0.1], "score:y": [0.9]})
        >>> predictions_column(frame, "score", ["y", "x"]).tolist(), predictions_column(frame, "label", []).tolist()
        ([[0.9, 0.1]], [2])
    """
    if name in frame.columns:
        return frame[name].to_numpy()
    return frame[[f"{name}:{c}" for c in class_names]].to_numpy()


def write_metrics_json(path, metrics: Mapping) -> Path:
    """Write ``metrics`` as indented JSON (numpy values unwrapped, NaN as null).

    Example:
        >>> import tempfile, pathlib, json
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "metrics.json"
        >>> json.loads(write_metrics_json(out, {"auc": np.float32(0.5)}).read_text())
        {'auc': 0.5}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        text = json.dumps(to_jsonable(metrics), indent=2, allow_nan=False)
    except TypeError as error:
        raise EvaluationError(f"write_metrics_json: {path}: metrics hold a value JSON cannot store "
                              f"({error}); convert it to numbers, text, lists or dicts") from None
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_report(run_dir, context: ReportContext) -> Path:
    """Write ``run_dir/report.html``: one self-contained page for a clinician.

    Sections: data (counts per split and class, excluded rows), model,
    discrimination (AUC with CI per split), operating points (threshold
    chosen on validation, applied unchanged to test, with sensitivity,
    specificity, PPV and NPV and their intervals), plots, training curves and
    notes.

    Example:
        >>> import tempfile
        >>> page = write_report(tempfile.mkdtemp(), ReportContext(title="demo", task="binary"))
        >>> "<h1>demo</h1>" in page.read_text()
        True
    """
    if not isinstance(context, ReportContext):
        raise EvaluationError(f"write_report: context must be a ReportContext, got {type(context).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plots = dict(context.plots)
    if context.training_history and "training_curves" not in plots:
        plots["training_curves"] = training_curves(context.training_history, run_dir / "training_curves.png",
                                                   context.stage_boundaries)
    images = {name: _embed_png(name, png) for name, png in plots.items()}
    created = context.created or datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"<h1>{_e(context.title)}</h1>",
             f"<p class='meta'>Task: <b>{_e(context.task)}</b>"
             + (f" &middot; Data: {_e(context.source)}" if context.source else "")
             + f" &middot; Created: {_e(created)}</p>"]
    parts.append(_summary(context))
    parts.append(_data_section(context))
    if context.model:
        parts.append("<h2>Model</h2>" + _key_value_table(context.model))
    parts.append(_metrics_section(context))
    if context.operating_points:
        parts.append(_operating_section(context))
    if images:
        parts.append("<h2>Plots</h2>")
    for name, data in images.items():
        caption = _PLOT_CAPTIONS.get(name, name.replace("_", " ").capitalize()).format(
            split=context.operating_split, chosen_on=context.thresholds_chosen_on)
        parts.append(f"<figure><img alt='{_e(name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{_e(caption)}</figcaption></figure>")
    parts.append(_notes_section(context))
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(context.title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")
    path = run_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


_STYLE = ("body{font-family:Helvetica,Arial,sans-serif;max-width:1050px;margin:2em auto;color:#222;"
          "line-height:1.4}h1{margin-bottom:.2em}.meta{color:#555}table{border-collapse:collapse;"
          "margin:.6em 0 1.4em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
          "th{background:#f0f3f7}td:first-child,th:first-child{text-align:left}"
          ".summary{background:#eef6ee;border-left:4px solid #3a7d44;padding:.6em 1em}"
          "figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:480px}"
          "figcaption{color:#555;font-size:.9em;max-width:480px}")


def _summary(context: ReportContext) -> str:
    split = context.operating_split if context.operating_split in context.metrics else \
        next(iter(context.metrics), None)
    if split is None:
        return ""
    metrics = context.metrics[split]
    if context.task == "binary":
        text = f"On the {split} split (n={metrics.get('n')}), ROC AUC {_auc(metrics)}."
    elif context.task == "multiclass":
        text = (f"On the {split} split (n={metrics.get('n')}), accuracy "
                f"{_pct(metrics.get('accuracy'), metrics.get('accuracy_ci'))}, "
                f"macro one-vs-rest AUC {_macro_auc(metrics)}.")
    else:
        text = (f"On the {split} split (n={metrics.get('n')}), macro AUC {_macro_auc(metrics)}, "
                f"micro AUC {_num(metrics.get('micro_auc'))}.")
    if context.operating_points:
        text += f" Operating thresholds were chosen on {_chosen_and_measured(context)}."
    return f"<p class='summary'>{_e(text)}</p>"


def _chosen_and_measured(context: ReportContext) -> str:
    """Where the operating thresholds were chosen and where they are measured; the same images are in-sample."""
    fixed = " (the fixed point is the preset 0.5, not chosen on data)" if "fixed" in context.operating_points else ""
    if context.thresholds_chosen_on == f"the {context.operating_split} split":
        return f"{context.thresholds_chosen_on}{fixed} and measured on the same images (in-sample)"
    return f"{context.thresholds_chosen_on}{fixed} and applied unchanged to the {context.operating_split} split"


def _data_section(context: ReportContext) -> str:
    parts = []
    if context.counts:
        splits = list(context.counts)
        classes: list[str] = []
        for split_counts in context.counts.values():
            classes += [str(c) for c in split_counts if str(c) not in classes]
        rows = []
        for name in classes:
            values = [int(context.counts[s].get(name, 0)) for s in splits]
            rows.append([name] + values + [sum(values)])
            if context.unknown_labels:
                unknown = [int(context.unknown_labels.get(s, {}).get(name, 0)) for s in splits]
                rows.append([f"{name}: unknown"] + unknown + [sum(unknown)])
        totals = [int(context.images[s]) if s in context.images else sum(int(v) for v in context.counts[s].values())
                  for s in splits]
        rows.append(["Images" if context.task == "multilabel" else "Total"] + totals + [sum(totals)])
        heading = "Label (images positive)" if context.task == "multilabel" else "Class"
        parts.append(_table([heading] + splits + ["All"], rows))
    if context.excluded:
        columns: list[str] = []
        for row in context.excluded:
            columns += [str(k) for k in row if str(k) not in columns]
        parts.append(f"<h3>Excluded rows ({len(context.excluded)})</h3>")
        parts.append(_table(columns, _shown_excluded(context.excluded, columns)))
    return "<h2>Data</h2>" + "".join(parts) if parts else ""


def _shown_excluded(excluded: list[dict], columns: list[str]) -> list[list]:
    """The report's rows of excluded rows: the first :data:`EXCLUDED_SHOWN` of each problem, then one row counting
    the rest (CheXpert's 32,000 lateral views are not 32,000 table rows; ``excluded_rows.csv`` lists every one).

    Example:
        >>> rows = [{"row": r, "problem": "lateral view"} for r in range(12)] + [{"row": 12, "problem": "no file"}]
        >>> [row[0] for row in _shown_excluded(rows, ["row", "problem"])][-3:]
        [9, '...', 12]
    """
    groups: dict[tuple, list[dict]] = {}
    for row in excluded:
        groups.setdefault((row.get("problem", ""), row.get("fix", "")), []).append(row)
    said = "problem" if "problem" in columns else columns[0]
    shown = []
    for (problem, _), rows in groups.items():
        shown += [[row.get(c, "") for c in columns] for row in rows[:EXCLUDED_SHOWN]]
        if len(rows) > EXCLUDED_SHOWN:
            shown.append([f"and {len(rows) - EXCLUDED_SHOWN} more row(s): {problem} (excluded_rows.csv lists every "
                          "one)" if c == said else "..." for c in columns])
    return shown


def _metrics_section(context: ReportContext) -> str:
    if not context.metrics:
        return ""
    parts = ["<h2>Discrimination and performance</h2>"]
    if context.task == "binary":
        header = ["Split", "n", "Prevalence", "ROC AUC (CI)", "PR AUC", "Threshold"] + \
                 [label for _, label in _PROPORTION_LABELS] + ["Accuracy", "F1", "Brier"]
        rows = []
        for split, m in context.metrics.items():
            ci = m.get("ci", {})
            rows.append([split, m.get("n"), _pct(m.get("prevalence")), _auc(m), _num(m.get("pr_auc")),
                         _num(m.get("threshold"))]
                        + [_pct(m.get(key), ci.get(key)) for key, _ in _PROPORTION_LABELS]
                        + [_pct(m.get("accuracy"), ci.get("accuracy")), _num(m.get("f1")),
                           _num(m.get("brier"))])
        parts.append(_table(header, rows))
    elif context.task == "multiclass":
        rows = [[split, m.get("n"), _pct(m.get("accuracy"), m.get("accuracy_ci")),
                 _pct(m.get("balanced_accuracy")), _macro_auc(m)]
                for split, m in context.metrics.items()]
        parts.append(_table(["Split", "n", "Accuracy (CI)", "Balanced accuracy", "Macro AUC (CI)"], rows))
        for split, m in context.metrics.items():
            parts.append(f"<h3>Per class ({_e(split)})</h3>")
            parts.append(_per_entry_table(m.get("per_class", {}), "Class"))
    else:
        rows = [[split, m.get("n"), _macro_auc(m), _num(m.get("micro_auc")),
                 _num(m.get("hamming_loss")), _pct(m.get("subset_accuracy"))]
                for split, m in context.metrics.items()]
        parts.append(_table(["Split", "n", "Macro AUC (CI)", "Micro AUC", "Hamming loss", "Exact match"], rows))
        for split, m in context.metrics.items():
            parts.append(f"<h3>Per label ({_e(split)})</h3>")
            parts.append(_per_entry_table(m.get("per_label", {}), "Label"))
    parts.insert(2, f"<p class='meta'>Intervals: {_ci_words(context)}.</p>")
    return "".join(parts)


def _per_entry_table(entries: Mapping[str, dict], first: str) -> str:
    header = [first, "Cases", "AUC (CI)"] + [label for _, label in _PROPORTION_LABELS]
    rows = []
    for name, m in entries.items():
        ci = m.get("ci", {})
        cases = m.get("n_positive", m.get("n"))
        rows.append([name, cases, _auc(m)] + [_pct(m.get(key), ci.get(key)) for key, _ in _PROPORTION_LABELS])
    return _table(header, rows)


def _operating_section(context: ReportContext) -> str:
    header = ["Operating point", "Threshold"] + [label + " (CI)" for _, label in _PROPORTION_LABELS] + \
             ["TP", "FP", "FN", "TN"]
    rows = []
    for name, m in context.operating_points.items():
        ci = m.get("ci", {})
        cm = m.get("confusion_matrix", {})
        rows.append([name.replace("_", " "), _num(m.get("threshold"), 4)]
                    + [_pct(m.get(k), ci.get(k)) for k, _ in _PROPORTION_LABELS]
                    + [cm.get("tp"), cm.get("fp"), cm.get("fn"), cm.get("tn")])
    intro = (f"<p>Thresholds were chosen on {_e(_chosen_and_measured(context))}, where these values were "
             f"measured (a case is called positive when its score is at or above the threshold).</p>")
    return "<h2>Operating points</h2>" + intro + _table(header, rows)


def _notes_section(context: ReportContext) -> str:
    notes = [str(n) for n in context.notes]
    for split, m in context.metrics.items():
        notes += [f"{split}: {note}" for note in m.get("notes", [])]
    said = {note for m in context.metrics.values() for note in m.get("notes", [])}
    for name, m in context.operating_points.items():  # a split's note is not repeated for each point
        notes += [f"operating point {name}: {note}" for note in m.get("notes", []) if note not in said]
    if not notes:
        return ""
    unique = list(dict.fromkeys(notes))
    return "<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in unique) + "</ul>"


def _ci_words(context: ReportContext) -> str:
    levels = {m.get("ci_level") for m in context.metrics.values() if m.get("ci_level")}
    level = f"{100 * levels.pop():g}% " if len(levels) == 1 else ""
    words = (f"{level}confidence intervals; proportions by the Wilson score method, "
             "ROC AUC by DeLong's method")
    if context.task != "binary":
        words += ", macro AUC by DeLong's structural components over all " + \
                 ("classes" if context.task == "multiclass" else "labels")
    return words + (" (each end of an AUC interval the farther of DeLong's, normal on the logit scale, "
                    "and Newcombe's score interval; an AUC of 1 or 0, of a split, class, label or subgroup, "
                    "bounded by the binormal chance of complete separation)")


def _key_value_table(values: Mapping) -> str:
    rows = [[str(k), json.dumps(to_jsonable(v)) if isinstance(v, (dict, list, tuple)) else v]
            for k, v in values.items()]
    return _table(["Item", "Value"], rows)


def _table(header: Sequence, rows: Sequence[Sequence]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _embed_png(name: str, png) -> str:
    path = Path(png)
    if not path.is_file():
        raise EvaluationError(f"write_report: plot {name!r} file {path} does not exist; "
                              "write the plot first or drop it from ReportContext.plots")
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise EvaluationError(f"write_report: plot {name!r} file {path} is not a PNG image; "
                              "save plots with tfmed.evaluation.plots (PNG)")
    return base64.b64encode(data).decode("ascii")


def _column(values, n: int, name: str) -> list:
    values = list(np.asarray(values).reshape(-1)) if not isinstance(values, (list, tuple)) else list(values)
    if len(values) != n:
        raise EvaluationError(f"write_predictions: {name} has {len(values)} entries but ids has {n}; "
                              "pass one value per case")
    return values


def value_with_interval(value, ci) -> str:
    """An AUC and its interval as report text, or the value alone when there is no interval.

    Example:
        >>> value_with_interval(0.9123, [0.87, 0.954]), value_with_interval(None, None)
        ('0.912 (0.870-0.954)', 'n/a')
    """
    if value is None or not ci or None in ci:
        return _num(value)
    return f"{_num(value)} ({_num(ci[0])}-{_num(ci[1])})"


def _auc(m: Mapping) -> str:
    return value_with_interval(m.get("roc_auc"), m.get("ci", {}).get("roc_auc"))


def _macro_auc(m: Mapping) -> str:
    return value_with_interval(m.get("macro_auc"), m.get("macro_auc_ci"))


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{float(value):.{digits}f}"


def _pct(value, ci=None) -> str:
    if value is None:
        return "n/a"
    text = f"{100 * float(value):.1f}%"
    if ci and None not in ci:
        text += f" ({100 * float(ci[0]):.1f}-{100 * float(ci[1]):.1f}%)"
    return text


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)
