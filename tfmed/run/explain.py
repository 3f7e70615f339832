"""``tfmed explain``: where a saved run's model looks, as overlays with faithfulness and sanity figures.

Without images, the run's own test split is explained (its validation split when
it has none): a few true positives, false positives, false negatives and true
negatives at the stored threshold (the most confident of each). The output
folder (default ``RUN/explanations/TIMESTAMP``) holds one overlay PNG per image,
``overview.png`` (all of them), ``explanations.csv`` (file, group, label, score,
decision, explained class, method, the map's peak) and ``faithfulness.json``
(deletion / insertion AUC against a random order, and the model-randomisation
rank correlation; see :mod:`tfmed.explain.faithfulness`). When the data give
boxes of the finding (:mod:`tfmed.data.boxes`), each map is also measured
against its image's boxes (:mod:`tfmed.explain.localisation`). A model of views of
volumes is explained on a mosaic of each case's views (:mod:`tfmed.explain.mosaic`);
its peak is given as the view's number and the pixel in that view.

Each image's map explains the class the model decided for it, unless ``index``
names one class, by number or by name (required for multilabel models, and for
choosing the groups of a multiclass or multilabel model: TP/FP/FN/TN of that
class against the rest).

Example:
    >>> out = explain_run("runs/pneumonia_mnist/20261124-101500", method="gradcam")  # doctest: +SKIP
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import UNKNOWN_LABEL
from tfmed.data.table import ImageTable
from tfmed.data.volume_inputs import candidate_columns
from tfmed.explain import ExplainError, explain_table, peak
from tfmed.explain.methods import checked_method
from tfmed.evaluation.report import predictions_column
from tfmed.explain.localisation import box_localisation, summary
from tfmed.explain.maps import is_flat
from tfmed.explain.overlay import save_overlay, save_overlays
from tfmed.progress import log
from tfmed.run.artifact import TrainedModel
from tfmed.run.rundir import (as_reread, refuse_output_inside_runs, refuse_used_output, resolve_run_dir,
                              run_split_tables, written_whole)

def _class_list(model: TrainedModel) -> str:
    return ", ".join(f"{k} = {name}" for k, name in enumerate(model.classes))


def group_class(model: TrainedModel, index) -> int:
    """The class whose TP/FP/FN/TN groups are picked: the positive class (binary) or ``index``.

    Example:
        >>> group_class(TrainedModel("svm", "binary", ["normal", "pneumonia"], None, None, None), None)
        1
    """
    if index is not None:
        return class_number(model, index)
    if model.task == "binary":
        return 1
    raise ExplainError(f"the model is {model.task}: give --index to say which class or label to explain "
                       f"and to pick cases by ({_class_list(model)})")


def class_number(model: TrainedModel, index) -> int:
    """The class ``index`` names: its number, or its name (a string that is not a number; in another case
    too when only one class is spelt so).

    A string of digits is always a number, also where the classes are named by numbers.

    Example:
        >>> model = TrainedModel("svm", "multilabel", ["effusion", "nodule"], None, None, None)
        >>> [class_number(model, index) for index in ("nodule", "0", 1, "Nodule")]
        [1, 0, 1, 1]
    """
    text = str(index).strip()
    names = [str(name) for name in model.classes]
    folded = [name.casefold() for name in names]
    if text.lstrip("-").isdigit():
        number = int(text)
        if 0 <= number < len(names):
            return number
    elif text in names:
        return names.index(text)
    elif folded.count(text.casefold()) == 1:
        return folded.index(text.casefold())
    raise ExplainError(f"--index {index} is not a class of this model: give a class's number or name "
                       f"({_class_list(model)})")


def _hits(model: TrainedModel, labels: np.ndarray, decisions: np.ndarray, chosen: int) -> tuple:
    """(is the chosen class, is decided as the chosen class) per row."""
    if model.task == "multilabel":
        return labels[:, chosen] == 1, decisions[:, chosen] == 1
    return labels == chosen, decisions == chosen


GROUPS = ("TP", "FP", "FN", "TN")  # the cases explained: true and false positives, false and true negatives


def select_cases(model: TrainedModel, labels, scores, decisions, chosen: int, per_group: int) -> list[tuple]:
    """``(row position, group)`` of up to ``per_group`` most confident TP, FP, FN and TN cases of class ``chosen``.

    Example:
        >>> model = TrainedModel("svm", "binary", ["normal", "pneumonia"], None, None, None)
        >>> select_cases(model, np.array([0, 1, 1, 0]), np.array([.9, .8, .1, .2]), np.array([1, 1, 0, 0]), 1, 1)
        [(1, 'TP'), (0, 'FP'), (2, 'FN'), (3, 'TN')]
    """
    labels, scores, decisions = np.asarray(labels), np.asarray(scores), np.asarray(decisions)
    truth, called = _hits(model, labels, decisions, chosen)
    score = explained_scores(scores, chosen)
    # a multilabel image whose chosen label is unknown is in none of the groups
    known = labels[:, chosen] != UNKNOWN_LABEL if model.task == "multilabel" else np.ones(len(labels), bool)
    cases = []
    for group, mask, sign in zip(GROUPS, (truth & called, ~truth & called, truth & ~called, ~truth & ~called),
                                 (-1, -1, 1, 1)):
        rows = np.flatnonzero(mask & known)
        rows = rows[np.argsort(sign * score[rows], kind="stable")][:per_group]
        cases += [(int(row), group) for row in rows]
    return cases


def missing_groups(groups: list[str], split: str) -> str:
    """The sentence naming the groups (TP, FP, FN, TN) that have no case in ``split``, "" when none is missing.

    Example:
        >>> missing_groups(["TP", "FN", "TN"], "val")
        'no FP case in the val split at the stored threshold, so none is shown'
    """
    absent = [group for group in GROUPS if group not in groups]
    if not absent:
        return ""
    return f"no {' or '.join(absent)} case in the {split} split at the stored threshold, so none is shown"


def explained_scores(scores: np.ndarray, classes) -> np.ndarray:
    """The probability of the explained class of each image: a binary model's score for class 1, one
    minus it for class 0; a column of the others' (per image when ``classes`` is an array).

    Example:
        >>> explained_scores(np.array([0.9, 0.2]), 0).round(3).tolist()
        [0.1, 0.8]
    """
    scores = np.asarray(scores, np.float64)
    classes = np.broadcast_to(np.asarray(classes, np.int64), (len(scores),))
    if scores.ndim == 1:
        return np.where(classes == 0, 1.0 - scores, scores)
    return scores[np.arange(len(scores)), classes]


def explained_classes(model: TrainedModel, decisions: np.ndarray, index):
    """The class each image's map explains: ``index`` for every image, else each image's decided class.

    Example:
        >>> explained_classes(TrainedModel("svm", "binary", ["a", "b"], None, None, None), np.array([1, 0]), None).tolist()
        [1, 0]
    """
    if index is not None:
        return int(index)
    if model.task == "multilabel":
        raise ExplainError(f"a multilabel model needs --index: the label to explain ({_class_list(model)})")
    return np.asarray(decisions, np.int64)


def _class_name(model: TrainedModel, value) -> str:
    return model.classes[int(value)] if 0 <= int(value) < len(model.classes) else str(value)


def write_explanations(out: Path, model: TrainedModel, table: ImageTable, scores: np.ndarray, groups: list[str],
                       *, method: str, index=None, layer: str | None = None, labels=None, split: str | None = None,
                       steps: int = 20, seed: int = 0) -> dict:
    """Explain every row of ``table`` and write overlays, ``overview.png``, ``explanations.csv`` and
    ``faithfulness.json`` into ``out``; returns the faithfulness record (with ``overview`` and ``csv`` paths)."""
    out.mkdir(parents=True, exist_ok=True)
    decisions = model.decide(scores)
    classes = explained_classes(model, decisions, index)
    log(f"explaining {len(table)} image(s) with {method}")
    result = explain_table(model.estimator, model.inputs, table, method, index=classes, layer=layer)
    for note in result.notes:
        log(f"note: {note}")
    rows, items = [], []
    files = table.frame["image"].astype(str).tolist()
    # views of volumes: several candidates may share a volume, so say which line and centre each is
    where = table.frame[candidate_columns(table.frame)].to_dict("records") if result.grid is not None else None
    explained_score = explained_scores(scores, classes)
    for i, (file, group) in enumerate(zip(files, groups)):
        explained = classes if np.ndim(classes) == 0 else classes[i]
        score = float(explained_score[i])
        decision = decisions[i] if model.task != "multilabel" else decisions[i, explained]
        label = "" if labels is None else (labels[i] if model.task != "multilabel" else labels[i, explained])
        decided = _class_name(model, decision) if model.task != "multilabel" else str(int(decision))
        label_text = "" if labels is None else (_class_name(model, label) if model.task != "multilabel"
                                                else str(int(label)))
        # the case number, not the file name, goes into the pixels: names may identify patients
        title = (f"case {i:03d} {group}\nlabel {label_text or '?'}, P({_class_name(model, explained)}) {score:.3f} "
                 f"-> {decided}\n{method} of {_class_name(model, explained)}")
        # numbered, not named after the image: explanations.csv links each overlay to its file
        overlay = save_overlay(out / f"{i:03d}_{group or 'image'}.png", result.images[i], result.maps[i], title)
        row_peak = peak(result.maps[i])
        # views of a volume: the peak's view (numbered as views.planes orders them) and its pixel there
        location = dict(zip(("peak_row", "peak_col"), row_peak)) if result.grid is None else \
            dict(zip(("peak_view", "peak_row", "peak_col"), result.grid.locate(row_peak)))
        if is_flat(result.maps[i]):  # a flat map has no peak
            location = dict.fromkeys(location)
        rows.append({"file": file, **(where[i] if where else {}), "group": group, "label": label_text,
                     "score": round(score, 6), "decision": decided, "explained_class": _class_name(model, explained),
                     "method": method, **location, "overlay": overlay.name})
        items.append((result.images[i], result.maps[i], title))
    boxed = None if result.grid is not None else box_localisation(  # each map against the boxes of its class
        table, result.maps, result.resize, [row["explained_class"] for row in rows])
    for row, figures in zip(rows, boxed or []):
        row.update(figures)
    pd.DataFrame(rows).to_csv(out / "explanations.csv", index=False)
    overview = save_overlays(out / "overview.png", items)
    record = {"method": method, "images": len(table), "split": split}
    if result.notes:
        record["notes"] = result.notes
    if boxed is not None:
        record["localisation"] = summary(boxed)
    log("measuring faithfulness (deletion / insertion) and the model-randomisation sanity check")
    record.update(result.trust(index=classes, steps=steps, seed=seed, layer=layer))
    for note in record.get("sanity_notes", []):
        log(f"note: {note}")
    (out / "faithfulness.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    record["overview"] = str(overview)
    record["csv"] = str(out / "explanations.csv")
    return record


def _run_cases(run_dir: Path, model: TrainedModel, chosen: int, per_group: int):
    predictions = run_dir / "predictions.csv"
    if not predictions.is_file():
        raise ExplainError(f"{run_dir} has no predictions.csv (a k-fold run without a test split); "
                           "pass image files or folders to explain")
    frame = pd.read_csv(predictions, keep_default_na=False)
    split = "test" if (frame["split"] == "test").any() else "val"
    frame = frame[frame["split"] == split].reset_index(drop=True)
    table = run_split_tables(run_dir, (split,), remedy="restore the data, or give the images to explain "
                             "(tfmed explain --model RUN IMAGE ...)")[split]
    position = {ref: i for i, ref in enumerate(table.frame["image"].astype(str))}
    ids = as_reread(run_dir, frame["id"], set(position))
    unknown = [ref for ref in ids if ref not in position]
    if unknown:
        raise ExplainError(f"{predictions} lists {len(unknown)} {split} image(s) that the run's data no longer has, "
                           f"e.g. {unknown[0]}; restore the data or pass image files to explain")
    order = [position[ref] for ref in ids]
    table = table.subset(np.asarray(order))
    scores = predictions_column(frame, "score", model.classes).astype(float)
    cases = select_cases(model, table.labels(), scores, model.decide(scores), chosen, per_group)
    if not cases:
        raise ExplainError(f"the {split} split of {run_dir} has no images to explain")
    absent = missing_groups([group for _, group in cases], split)
    if absent:
        log(absent)
    rows = np.array([row for row, _ in cases])
    return split, table.subset(rows), scores[rows], [group for _, group in cases]


def explain_run(run: str | Path, images: list[str] | None = None, *, method: str = "gradcam",
                output: str | Path | None = None, index=None, layer: str | None = None, per_group: int | None = None,
                steps: int = 20, seed: int = 0, verify: bool = True, trust_pickles: bool = False) -> Path:
    """Explain a saved run's model on ``images`` (files/folders) or on cases of its own test split.

    Returns the output folder (default ``RUN/explanations/TIMESTAMP``). The run
    is checked against its manifest first (see :meth:`TrainedModel.load`). ``per_group`` (default 2)
    picks cases of the run's split, so it is refused beside ``images``.
    """
    checked_method(method, layer)
    if per_group is not None and images:
        raise ExplainError(f"--per-group ({per_group}) picks cases of the run's own split, and images were given "
                           "(each of them is explained); drop --per-group, or the images")
    per_group = 2 if per_group is None else per_group
    if per_group < 1:
        raise ExplainError(f"--per-group must be at least 1, got {per_group}")
    run_dir = resolve_run_dir(run)
    refuse_output_inside_runs(output, [run_dir], kept=("explanations",))
    refuse_used_output(output, "explanations")
    model = TrainedModel.load(run_dir / "model", verify=verify, trust_pickles=trust_pickles)
    index = None if index is None else class_number(model, index)
    if images:
        from tfmed.run.predict import image_table, run_max_pixels

        if model.task == "multilabel":
            explained_classes(model, None, index)  # refuses a missing --index before any scoring
        table = image_table(model, images, run_max_pixels(run_dir), command="tfmed explain")
        scores, groups, labels, split = model.predict(table), [""] * len(table), None, None
    else:
        chosen = group_class(model, index)
        split, table, scores, groups = _run_cases(run_dir, model, chosen, per_group)
        labels = table.labels()
    with written_whole(output, run_dir, "explanations", "explanations") as out:  # also after a refused layer
        record = write_explanations(out, model, table, scores, groups, method=method, index=index, layer=layer,
                                    labels=labels, split=split, steps=steps, seed=seed)
    log(f"wrote {record['images']} overlay(s), explanations.csv and faithfulness.json to {out}")
    return out


def explain_for_report(run_dir: Path, model: TrainedModel, parts: dict, scores: dict, method: str) -> tuple:
    """The report's explanations: one TP, FP, FN and TN of the test (or validation) split, where it has one, of
    the positive class (binary), else of the first class or label (for a multilabel model the maps are of that
    label, else of the decided class); the caption and sentence say which.

    Returns (overview PNG path, its caption naming the groups shown, a sentence with the faithfulness and
    sanity figures and the groups without a case).
    """
    split = "test" if "test" in scores else "val"
    table = parts[split]
    labels = table.labels()
    chosen = 1 if model.task == "binary" else 0  # the first class or label: data.classes puts the one to explain first
    index = None if model.task != "multilabel" else chosen
    kind = "label" if model.task == "multilabel" else "class"
    of = "" if model.task == "binary" else f" of {kind} {model.classes[chosen]}"
    cases = select_cases(model, labels, scores[split], model.decide(scores[split]), chosen, 1)
    rows, groups = np.array([row for row, _ in cases]), [group for _, group in cases]
    record = write_explanations(run_dir / "explanations", model, table.subset(rows), scores[split][rows],
                                groups, method=method, index=index, labels=table.subset(rows).labels(), split=split)
    absent = missing_groups(groups, split)
    if absent:
        log(absent)
    figure = {key: "n/a" if value is None else f"{value:.3f}" for key, value in record.items()
              if key.endswith(("_auc", "_correlation"))}
    maps = f"maps of label {model.classes[chosen]}" if index is not None else "maps of the decided class"
    sentence = (f"Explanations ({method}, {record['images']} {split} images{of}, {maps}): deletion "
                f"AUC {figure['deletion_auc']} against {figure['random_deletion_auc']} in a random order (lower is "
                f"more faithful), insertion AUC {figure['insertion_auc']} against {figure['random_insertion_auc']}, "
                f"rank correlation with the maps of a model whose top is randomised "
                f"{figure['sanity_rank_correlation']} (low passes the sanity check); {flat_words(record)}."
                + "".join(f" Note: {note}." for note in record.get("notes", [])
                                             + record.get("sanity_notes", []))
                + localisation_sentence(record.get("localisation"))
                + (f" There is {absent}." if absent else "") + " Overlays and figures: explanations/.")
    caption = f"explanations ({', '.join(group for group in GROUPS if group in groups)}{of})"
    return Path(record["overview"]), caption, sentence


def flat_words(record: dict) -> str:
    """How many flat maps (no figure can be read from them) were left out of a faithfulness ``record``; for an
    ensemble, whose member's maps they were.

    Example:
        >>> flat_words({"images": 3, "flat_maps": 2, "members": [{"member": "svm", "flat_maps": 2},
        ...                                                      {"member": "tuned", "flat_maps": 0}]})
        '2 flat map(s) left out (2 of the 3 maps of member svm)'
    """
    members = [f"{m['flat_maps']} of the {record['images']} maps of member {m['member']}"
               for m in record.get("members", []) if m["flat_maps"]]
    return f"{record['flat_maps']} flat map(s) left out" + (f" ({'; '.join(members)})" if members else "")


def localisation_sentence(figures: dict | None) -> str:
    """The report's words on the maps against the experts' boxes ("" without boxes).

    Example:
        >>> localisation_sentence({"images_with_boxes": 2, "pointing_game": 0.5, "energy_in_boxes": 0.4,
        ...                        "box_fraction": 0.1})
        ' Against the boxes of 2 images: the peak lies in a box in 50% (pointing game), and 0.400 of the map lies in the boxes against 0.100 for an even map.'
        >>> localisation_sentence({"images_with_boxes": 2, "pointing_game": None, "energy_in_boxes": None,
        ...                        "box_fraction": 0.1})[:79]
        ' Against the boxes of 2 images: the peak lies in a box in n/a (every map flat) '
    """
    if not figures or not figures["images_with_boxes"]:
        return ""
    energy = "n/a" if figures["energy_in_boxes"] is None else f"{figures['energy_in_boxes']:.3f}"
    hits = "n/a (every map flat)" if figures["pointing_game"] is None else f"{figures['pointing_game']:.0%}"
    return (f" Against the boxes of {figures['images_with_boxes']} images: the peak lies in a box in "
            f"{hits} (pointing game), and {energy} of the map lies in the boxes against "
            f"{figures['box_fraction']:.3f} for an even map.")
