"""``tfmed evaluate``: score a saved run on its own test split or on other data.

Example:
    >>> out = evaluate_run("runs/pneumonia_mnist/20261124-101500")          # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import (ConfigError, DataConfig, EvaluationConfig, ExperimentConfig, data_section,
                          is_experiment_file)
from tfmed.data.near_duplicates import copies_of
from tfmed.data.sources import SOURCES, DataSourceError, load_source, luna16, parse_source_spec, spelt_out
from tfmed.data.table import LABEL_PREFIX, ImageTable, remap_labels
from tfmed.data.validate import DataValidationError, apply_validation, excluded_summary
from tfmed.evaluation.comparison import compare_to_members
from tfmed.evaluation.froc import froc
from tfmed.evaluation.metrics import to_jsonable
from tfmed.evaluation.report import predictions_column
from tfmed.progress import log
from tfmed.run.artifact import ModelArtifactError, TrainedModel
from tfmed.run.experiment import check_subgroups, count_entries, merge_tables, scored_metrics
from tfmed.run.reporting import (coarse_sentences, member_sentences, subgroup_sentences, test_origin_note,
                                 thresholds_chosen_on, write_outputs)
from tfmed.run.rundir import (PROVENANCE_FILE, RunDirectoryError, as_reread, environment_info, json_object,
                              refuse_output_inside_runs, refuse_used_output, resolve_run_dir, run_split_tables,
                              written_whole)


def run_test_table(run_dir: Path) -> tuple[ImageTable, ExperimentConfig]:
    """The run's own test rows, re-read from its data source and ``splits.csv``."""
    return run_split_tables(run_dir, ("test",))["test"], ExperimentConfig.from_run(run_dir)


def evaluate_run(model_dir: str | Path, data: str | None = None, output: str | Path | None = None, *,
                 verify: bool = True, trust_pickles: bool = False, subgroups: list[str] | None = None) -> Path:
    """Score ``data`` (default: the run's own test split) and write metrics and a report.

    For an ensemble run, each member is scored too: ``member_scores.csv`` and, in
    ``metrics.json`` under ``members``, each member's AUC beside the ensemble's with
    the paired DeLong p-value (as ``tfmed run`` writes them for val and test).
    ``subgroups`` (site, view, sex, age) replaces the run's ``evaluation.subgroups``
    for these figures, e.g. to audit an external test set by sex and age.

    Returns the output directory (default ``RUN/evaluations/TIMESTAMP``; an ``output`` that already holds
    anything is refused, as evaluations never overwrite each other). The
    run is checked against its manifest first (see :meth:`TrainedModel.load`
    for ``verify`` and ``trust_pickles``).
    """
    run_dir = resolve_run_dir(model_dir)
    refuse_output_inside_runs(output, [run_dir], kept=("evaluations",))
    refuse_used_output(output, "evaluations")
    model = TrainedModel.load(run_dir / "model", verify=verify, trust_pickles=trust_pickles)
    config = ExperimentConfig.from_run(run_dir)
    if subgroups is not None:
        config.evaluation = subgroup_setting(config.evaluation, subgroups)
    if data is None:
        table, _ = run_test_table(run_dir)
        if len(table) == 0:
            recalibrated_from = json_object(run_dir / "metrics.json").get("recalibrated_from")
            if recalibrated_from:  # tfmed recalibrate's run: fitted on another hospital's images, all of them val
                raise ModelArtifactError(f"{run_dir} is {recalibrated_from} recalibrated on another hospital's "
                                         "images, which are its val split, and it has no test split; pass --data "
                                         "with that hospital's held-out images")
            raise ModelArtifactError(f"{run_dir} has no test split of its own (it trained on every "
                                     "non-validation image); pass --data, e.g. --data medmnist:FILE.npz#test")
        source = f"{config.data.source} (the run's own test split)"
    else:
        parsed = evaluation_data(data, config.data, model.classes if model.task == "multilabel" else None)
        table, source = read_labelled_data(data, parsed, model, config)
    table = fit_model_labels(table, model, data)
    check_data_subgroups(config.evaluation.subgroups, table, data or "the run's own test split", subgroups is not None)
    copies, copy_rows = _copies_of_run_images(run_dir, config, table)
    log(f"scoring {len(table)} images from {source}")
    scores, members = model.predict_with_members(table)
    metrics = {**scored_metrics(model, {"test": table}, {"test": scores}, config.evaluation), "source": source,
               **count_entries({"test": table}), "tta_views": model.tta.view_count()}
    notes = [f"Model from {run_dir}; {_decisions(run_dir, config, model)}."]
    if data is not None:  # metrics.json and the report file the scored images under "test", whatever they are
        notes.append(f"The split named test here is the data evaluated ({source}), not a split of the run.")
    if not verify:
        notes.append("The run's files were not checked against its manifest (--no-verify).")
    if data is None:  # the run's own test split: it scored these images itself, and said where they came from
        origin = json_object(run_dir / "metrics.json").get("test_origin")
        if origin:
            metrics["test_origin"] = origin
            notes.append(test_origin_note(origin))
        changed = images_scored_otherwise(run_dir, model, table, scores)
        metrics["scored_otherwise_than_the_run"] = len(changed)
        if changed:
            sentence = (f"{len(changed)} of {len(table)} test images score otherwise than in the run's "
                        f"predictions.csv (e.g. {changed[0]}): their files changed since the run, so these "
                        "figures are not the run's")
            log(f"warning: {sentence}")
            notes.append(sentence + ".")
    if model.recalibration is not None:
        notes.append(f"The scores are recalibrated as in that run ({model.recalibration.describe()}).")
    if copies is not None:
        metrics["near_duplicates"] = copies
    if copy_rows is not None and len(copy_rows):
        notes.append(f"{len(copy_rows)} of {len(table)} evaluated images are near-identical to images of the "
                     "run's train or val split (copies_of_run_images.csv): the figures here are not fully held out.")
    if members is not None:  # an ensemble: each member beside the combination, as in the run
        metrics["members"] = {"test": compare_to_members(model.task, table.labels(), scores, members)}
    if data is not None and parsed.source == "luna16":
        froc_metrics, sentence = luna16_froc(parsed, table, scores)
        notes.append(sentence)
        log(sentence)
        if froc_metrics is not None:
            metrics["froc"] = froc_metrics
    # the folder is made once everything is computed, and removed when writing it fails or is interrupted
    with written_whole(output, run_dir, "evaluations", "evaluation") as out:
        # what made the evaluation: the folder it started in (relative image ids are read from there), the run
        (out / "environment.json").write_text(json.dumps(
            {**environment_info(config), "model_run": str(run_dir.resolve()), "verified": verify,
             "data": data if data is not None else "the run's own test split"}, indent=2), encoding="utf-8")
        excluded = write_excluded(out, table, data) if data is not None else []  # the run lists its own
        if copy_rows is not None and len(copy_rows):
            copy_rows.to_csv(out / "copies_of_run_images.csv", index=False)
        write_outputs(out, title=f"{config.name}: evaluation of {run_dir.name}", source=source,
                      model=model, parts={"test": table}, scores={"test": scores}, metrics=metrics,
                      notes=notes + member_sentences(metrics) + subgroup_sentences(metrics) + coarse_sentences(metrics),
                      member_scores={"test": members} if members is not None else None,
                      excluded=excluded, chosen_on=_chosen_on(run_dir, config))
    return out


def _decisions(run_dir: Path, config: ExperimentConfig, model: TrainedModel) -> str:
    """Where the decisions of the run's model come from, for the evaluation's notes."""
    if model.task == "multiclass" and not model.hierarchy:
        return "each image's class is its most probable one (a multi-class model has no thresholds)"
    return f"thresholds were chosen on {_chosen_on(run_dir, config)} and are applied unchanged here"


def _chosen_on(run_dir: Path, config: ExperimentConfig) -> str:
    return thresholds_chosen_on(config, json_object(run_dir / PROVENANCE_FILE), "that run's")


def images_scored_otherwise(run_dir: Path, model: TrainedModel, table: ImageTable, scores,
                            tolerance: float = 1e-4) -> list[str]:
    """The images of the run's own test split whose scores now differ from those the run wrote in its
    ``predictions.csv`` by more than ``tolerance`` (an image file replaced since the run).

    Example:
        >>> images_scored_otherwise(run_dir, model, table, model.predict(table))  # doctest: +SKIP
        []
    """
    frame = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    frame = frame[frame["split"] == "test"]
    ids = as_reread(run_dir, frame["id"], set(table.frame["image"].astype(str)))
    recorded = dict(zip(ids, predictions_column(frame, "score", model.classes).astype(float).reshape(len(frame), -1)))
    now = np.asarray(scores, float).reshape(len(table), -1)
    return [image for image, score in zip(table.frame["image"].astype(str), now)
            if image in recorded and np.abs(recorded[image] - score).max() > tolerance]


def subgroup_setting(evaluation: EvaluationConfig, subgroups: list[str]) -> EvaluationConfig:
    """``evaluation`` with ``subgroups`` instead of its own (``tfmed evaluate --subgroups``), checked.

    Example:
        >>> subgroup_setting(EvaluationConfig(), ["sex", "age"]).subgroups
        ['sex', 'age']
        >>> subgroup_setting(EvaluationConfig(), ["race"])
        Traceback (most recent call last):
        tfmed.config.ConfigError: --subgroups is ['race']; allowed: site, view, sex, age
    """
    bands = evaluation.age_bands if "age" in subgroups else EvaluationConfig().age_bands  # the run's if used
    try:
        return dataclasses.replace(evaluation, subgroups=list(subgroups), age_bands=bands)
    except ConfigError as error:
        raise ConfigError(str(error).replace("evaluation.subgroups", "--subgroups", 1)) from None


def check_data_subgroups(subgroups: list[str], table: ImageTable, data: str, from_option: bool) -> None:
    """:func:`~tfmed.run.experiment.check_subgroups` for a command that scores ``data`` with a saved run:
    ``subgroups`` are the run's ``evaluation.subgroups`` or (``from_option``) the ``--subgroups`` given; for the
    run's own, the error names ``--subgroups`` with the attributes the data do record as the fix.

    Example:
        >>> check_data_subgroups(["site", "sex"], table_without_sex, "manifest:b.csv", False)  # doctest: +SKIP
        Traceback (most recent call last):
        tfmed.config.ConfigError: manifest:b.csv: evaluation.subgroups of the run's config.yaml names sex, but no
        image of the data records it; ... For these data, give the attributes they record with --subgroups site.
    """
    if from_option:
        check_subgroups(subgroups, table, f"{data}: --subgroups")
        return
    recorded = [name for name in subgroups if name == "site" or table.frame[name].notna().any()]
    option = f"--subgroups {','.join(recorded)}" if recorded else '--subgroups ""'
    check_subgroups(subgroups, table, f"{data}: evaluation.subgroups of the run's config.yaml",
                    fix=f"For these data, give the attributes they record with {option}.")


def read_labelled_data(data: str, parsed: DataConfig, model: TrainedModel,
                       config: ExperimentConfig) -> tuple[ImageTable, str]:
    """The images and labels ``data`` (parsed as ``parsed``) names, validated as the run's own data were, and
    the data's name for reports. Bad rows are refused, or left out (in ``table.excluded``, see
    :func:`write_excluded`) when ``data`` is a YAML file whose ``data:`` section sets ``exclude_bad_rows: true``.
    Images over the pixel limit of that section (a YAML file) or of the run (a source spec) are bad rows.

    Example:
        >>> table, source = read_labelled_data(spec, evaluation_data(spec), model, config)  # doctest: +SKIP
    """
    table = load_source(parsed)
    _refuse_several_splits(spelt_out(parsed), sorted(table.frame["split"].dropna().unique()))
    limit = parsed.max_image_pixels if is_experiment_file(data) else config.data.max_image_pixels
    report = model.validate_images(table, limit, data)
    remedy = (f"set exclude_bad_rows: true in the data: section of {data} to leave them out"
              if is_experiment_file(data) else
              f"pass --data a YAML file whose data: section names {data} (source and path) and sets "
              "exclude_bad_rows: true to leave them out")
    table = apply_validation(table, report, exclude_bad_rows=parsed.exclude_bad_rows,
                             remedy=remedy + " (they are then listed in the output's excluded_rows.csv)")
    rename = {} if is_experiment_file(data) else run_rename(parsed, config.data)
    if rename:
        table = renamed_classes(table, rename)
        log(f"{data}: classes renamed as the run's {parsed.source} part renamed them: "
            + ", ".join(f"{old} -> {new}" for old, new in rename.items()))
    if len(table) == 0 and report.problems:
        raise DataValidationError(f"{data}: every row is a bad row, so none is left to score.\n"
                                  + report.format(remedy="give other images"), report)
    named = parsed.source if parsed.path is None else f"{parsed.source}:{parsed.path}"  # a source may hold its path
    return table, (f"{named} (from {data})" if is_experiment_file(data) else data)


def _refuse_several_splits(data: DataConfig, splits: list[str]) -> None:
    """Refuse data holding several splits (a MedMNIST file's train, val and test; a manifest's split column)
    that no ``#SPLIT`` chose: every row would be scored as one test set, training images included."""
    location, kind = data.path or "", SOURCES.get(data.source)
    if len(splits) < 2 or "#" in location or kind is None:  # the embedded set and a merged table: as they are
        return
    if kind.takes_fragment:
        fix = "name the one to use: " + " or ".join(f"{data.source}:{location}#{name}" for name in splits)
    else:
        fix = ("give the rows of the one to score (e.g. a manifest of its test rows), or empty its split column "
               "to score every row")
    raise DataSourceError(f"{location} holds the splits {', '.join(splits)}, which would be read as one set of "
                          f"images; {fix}")


def write_excluded(out: Path, table: ImageTable, data: str) -> list[dict]:
    """Write the rows of ``data`` left out of ``table`` (bad rows, rows the source skips) to
    ``out/excluded_rows.csv`` and log their count; returns them as records for the report ([] when none).

    Example:
        >>> write_excluded(out, table, "manifest:site_b.csv")  # doctest: +SKIP
        [{'image': 'b/17.png', 'label': '1', 'problem': 'corrupt or truncated PNG ...', 'fix': '...'}]
    """
    if not len(table.excluded):
        return []
    table.excluded.to_csv(out / "excluded_rows.csv", index=False)
    log(f"{data}: not scored: {excluded_summary(table.excluded)} (listed in excluded_rows.csv)")
    return to_jsonable(table.excluded.astype(str).to_dict("records"))


def fit_model_labels(table: ImageTable, model: TrainedModel, data: str | None) -> ImageTable:
    """``table`` with the model's labels in the model's order: a multilabel table cut to the model's labels
    (:func:`model_labels_only`, said in the log), classes matched by name (:func:`match_classes`); data of
    another task or number of classes is refused.

    Example:
        >>> fit_model_labels(table, model, "medmnist:breastmnist.npz#test").classes  # doctest: +SKIP
        ['normal', 'malignant']
    """
    if table.task == model.task == "multilabel":
        table, left_out = model_labels_only(table, list(model.classes))
        if left_out:
            log(f"{data}: scoring the model's {len(model.classes)} labels; the data's other labels, which the "
                f"model does not predict, are left out: {', '.join(left_out)}")
    if table.task != model.task or len(table.classes) != len(model.classes):
        raise ModelArtifactError(f"{data}: the data has {table.task} labels {table.classes} but the model "
                                 f"was trained for {model.task} {model.classes}")
    return match_classes(table, list(model.classes), data)


# settings that define the labels or pick the images of a published source; a bare spec takes the run's
LABEL_SETTINGS = ("uncertain", "frontal_only", "min_readers", "physician_labelled_only")


def evaluation_data(spec: str, run_data: DataConfig | None = None, findings: list[str] | None = None) -> DataConfig:
    """The data ``tfmed evaluate --data`` names: a source spec, or a YAML file holding a ``data:`` section alone
    (as in an experiment; :func:`~tfmed.config.data_section`) that gives what a spec cannot, such as
    ``frontal_only`` or ``uncertain``. A spec takes the
    run's own label settings (:func:`run_label_settings` of ``run_data``), so an external test set's labels
    mean what the training labels meant; a YAML section sets its own. A ``manifest:`` spec for a multi-label
    model reads the model's ``findings`` as its label columns (a spec cannot set ``data.label_columns``).

    Example:
        >>> evaluation_data("mimic_cxr:mimic/mimic-cxr-2.0.0-chexpert.csv.gz#test").source
        'mimic_cxr'
        >>> evaluation_data("manifest:site_b.csv", findings=["Edema", "Effusion"]).label_columns  # doctest: +SKIP
        ['Edema', 'Effusion']
    """
    if is_experiment_file(spec):
        return data_section(spec)
    parsed = parse_source_spec(spec)
    carried = run_label_settings(parsed, run_data) if run_data is not None else {}
    if findings and parsed.source == "manifest":
        carried["label_columns"] = list(findings)
    if not carried:
        return parsed
    log(f"{spec}: read with the run's " + ", ".join(f"{name} {value!r}" for name, value in carried.items())
        + " (a YAML file's data: section given as --data sets other values)")
    return dataclasses.replace(parsed, **carried)


def run_label_settings(parsed: DataConfig, run_data: DataConfig) -> dict:
    """The run's :data:`LABEL_SETTINGS` that differ from a parsed spec's, where both sources read them. A
    merged run's come from its parts of the spec's source (else from all its parts), where they agree.

    Example:
        >>> run_label_settings(parse_source_spec("mimic_cxr:test.csv"),
        ...                    DataConfig(source="chexpert", path="train.csv", uncertain="ones", frontal_only=True))
        {'uncertain': 'ones', 'frontal_only': True}
    """
    readers = DataConfig.SOURCE_SETTINGS
    sections = run_data.parts if run_data.source == DataConfig.MERGED else [run_data]
    sections = [part for part in sections if part.source == parsed.source] or sections
    carried = {}
    for name in LABEL_SETTINGS:
        values = [getattr(part, name) for part in sections if part.source in readers[name]]
        if parsed.source in readers[name] and values and all(value == values[0] for value in values) \
                and values[0] != getattr(parsed, name):
            carried[name] = values[0]
    return carried


def run_rename(parsed: DataConfig, run_data: DataConfig) -> dict[str, str]:
    """The ``rename`` of a merged run's parts of a parsed spec's source (where they agree; {} otherwise), so
    that a collection the run merged under other class names is scored under the names the model learned.

    Example:
        >>> from tfmed.config import DataPartConfig
        >>> run_rename(parse_source_spec("chestxray14:Data_Entry_2017.csv"), DataConfig(source="merged", parts=[
        ...     DataPartConfig(source="chestxray14", path="a.csv", rename={"Effusion": "Pleural Effusion"}),
        ...     DataPartConfig(source="chexpert", path="train.csv")]))
        {'Effusion': 'Pleural Effusion'}
    """
    if run_data.source != DataConfig.MERGED:
        return {}
    renames = [part.rename for part in run_data.parts if part.source == parsed.source]
    return renames[0] if renames and all(rename == renames[0] for rename in renames) else {}


def renamed_classes(table: ImageTable, rename: dict[str, str]) -> ImageTable:
    """``table`` with the classes (labels) that ``rename`` names given its new names; others unchanged.

    Example:
        >>> table = ImageTable(pd.DataFrame({"image": ["a"], "label:Effusion": [1]}), ["Effusion"], "multilabel")
        >>> renamed_classes(table, {"Effusion": "Pleural Effusion", "Mass": "Nodule"}).classes
        ['Pleural Effusion']
    """
    classes = [rename.get(name, name) for name in table.classes]
    frame = table.frame
    if table.task == "multilabel":
        frame = frame.rename(columns={LABEL_PREFIX + old: LABEL_PREFIX + new
                                      for old, new in zip(table.classes, classes)})
    return ImageTable(frame, classes, table.task, table.images, table.source, table.excluded)


def luna16_froc(data: DataConfig, table: ImageTable, scores) -> tuple[dict | None, str]:
    """LUNA16's FROC of the scored candidates (CPM and sensitivities, see :mod:`tfmed.evaluation.froc`) with
    a sentence for the report, or None and the reason it was not computed.

    Example:
        >>> luna16_froc(parse_source_spec("luna16:LUNA16/candidates_V2.csv#9"), table, scores)  # doctest: +SKIP
        ({'cpm': 0.81, ...}, 'LUNA16 FROC over 88 scans (120 nodules, 117 reached by a candidate): CPM 0.810 ...')
    """
    if data.negatives_per_positive is not None:
        return None, (f"LUNA16 FROC not computed: data.negatives_per_positive is {data.negatives_per_positive}, so "
                      "only a sample of the non-nodule candidates was scored and false positives per scan would be "
                      "undercounted; evaluate on the luna16 source without it (every candidate)")
    path, _, subsets = data.path.partition("#")
    reference = luna16.load_reference(path, data.root, subsets)
    if reference is None:
        return None, (f"LUNA16 FROC not computed: no annotations.csv beside the subsets of {path} (nor in "
                      "evaluationScript/annotations/); put the challenge's annotations.csv there")
    frame = table.frame
    # scans whose candidates were all left out as bad rows (an unreadable scan) were not scored: not counted
    excluded = table.excluded.get("patient_id", pd.Series(dtype=object)).dropna().astype(str)
    unscored = sorted(set(excluded) & set(reference.scans) - set(frame["patient_id"].astype(str)))
    scans = [scan for scan in reference.scans if scan not in unscored]
    nodules = reference.nodules[~reference.nodules["scan"].isin(unscored)]
    if nodules.empty:
        return None, (f"LUNA16 FROC not computed: annotations.csv lists no nodule in the {len(scans)} scans "
                      "evaluated, so there is no sensitivity to measure; evaluate subsets that hold nodules")
    candidates = pd.DataFrame({"scan": frame["patient_id"].astype(str).to_numpy(),
                               "x": frame["center_x"].to_numpy(float), "y": frame["center_y"].to_numpy(float),
                               "z": frame["center_z"].to_numpy(float),
                               "score": np.asarray(scores, float).reshape(len(frame), -1)[:, -1]})
    result = froc(candidates, nodules, scans, reference.excluded)
    result["reference"] = [str(file) for file in reference.files]
    result["scans_not_scored"] = unscored
    low, high = result.get("cpm_ci", [float("nan")] * 2)
    at = result["sensitivity_at_fp_per_scan"]
    left = (f"; {len(unscored)} scan(s) of those subsets are not counted: every candidate of theirs was left out "
            "as a bad row (excluded_rows.csv)") if unscored else ""
    return result, (f"LUNA16 FROC over {result['scans']} scans ({result['nodules']} nodules, {result['detected']} "
                    f"reached by a candidate): CPM {result['cpm']:.3f} (95% CI {low:.3f}-{high:.3f}); sensitivity "
                    f"{at['1']:.3f} at 1 and {at['8']:.3f} at 8 false positives per scan{left}")


def model_labels_only(table: ImageTable, classes: list[str]) -> tuple[ImageTable, list[str]]:
    """A multilabel ``table`` cut to the labels the model predicts when the data has those and more
    (CheXpert's valid.csv holds 14 observations; a model of the five competition findings scores
    those five), and the labels left out.

    Example:
        >>> import pandas as pd
        >>> table = ImageTable(pd.DataFrame({"image": ["a"], "label:Edema": [1], "label:Fracture": [0]}),
        ...                    ["Edema", "Fracture"], "multilabel")
        >>> cut, left_out = model_labels_only(table, ["edema"])
        >>> cut.classes, left_out
        (['Edema'], ['Fracture'])
    """
    wanted = {name.lower() for name in classes}
    kept = [name for name in table.classes if name.lower() in wanted]
    if len(kept) == len(table.classes) or len(kept) != len(classes):
        return table, []   # the same labels, or not all of the model's: match_classes explains the difference
    left_out = [name for name in table.classes if name.lower() not in wanted]
    frame = table.frame.drop(columns=[LABEL_PREFIX + name for name in left_out])
    return ImageTable(frame, kept, table.task, table.images, table.source, table.excluded), left_out


def match_classes(table: ImageTable, classes: list[str], data: str | None) -> ImageTable:
    """``table`` with its labels in the order of the model's ``classes``.

    Class names that are the model's (in any order and letter case) are matched by name; data whose
    classes are only the indices "0", "1", ... (a MedMNIST file, integer labels) are taken in the
    model's order; other names are refused, so that labels are never paired with the wrong class.

    Example:
        >>> import pandas as pd
        >>> table = ImageTable(pd.DataFrame({"image": ["a", "b"], "label": [0, 1]}), ["PNEUMONIA", "NORMAL"],
        ...                    "binary")
        >>> match_classes(table, ["normal", "pneumonia"], "folder:xrays").labels().tolist()
        [1, 0]
    """
    if list(table.classes) == classes or list(table.classes) == [str(i) for i in range(len(classes))]:
        return ImageTable(table.frame, classes, table.task, table.images, table.source, table.excluded)
    position = {name.lower(): i for i, name in enumerate(classes)}
    if len(position) != len(classes) or sorted(position) != sorted(name.lower() for name in table.classes):
        raise ModelArtifactError(f"{data}: the data's classes {table.classes} are not the model's {classes}; "
                                 "name them as the model does (class folder names, data.classes or the "
                                 "label values), in any order")
    order = [position[name.lower()] for name in table.classes]   # data's class index -> the model's
    frame = table.frame.copy()
    if table.task == "multilabel":
        frame = frame.rename(columns={LABEL_PREFIX + name: LABEL_PREFIX + classes[order[j]]
                                      for j, name in enumerate(table.classes)})
    else:
        frame = remap_labels(frame, order)
    return ImageTable(frame, classes, table.task, table.images, table.source, table.excluded)


def _copies_of_run_images(run_dir: Path, config: ExperimentConfig,
                          table: ImageTable) -> tuple[dict | None, pd.DataFrame | None]:
    """What ``metrics.json`` records of rows of ``table`` that copy an image of the run's train or val
    split (None: the check is off), and those rows (``image``, ``copy_of``) when they were looked for."""
    tolerance = config.split.near_duplicate_rms
    if tolerance is None or config.views.enabled:
        return None, None
    try:
        seen = run_split_tables(run_dir, ("train", "val"))
    except (RunDirectoryError, DataSourceError) as error:
        log(f"copies of the run's images are not looked for: {error}")
        return {"rms_tolerance": tolerance, "not_checked": str(error)}, None
    rows = copies_of(merge_tables(seen["train"], seen["val"]), table, tolerance,
                     max_pixels=config.data.max_image_pixels)
    if len(rows):
        log(f"{len(rows)} of {len(table)} images are near-identical to images of the run's train or val split")
    return {"rms_tolerance": tolerance, "copies_of_run_images": len(rows)}, rows


def load_metrics(run_dir: str | Path) -> dict:
    """The ``metrics.json`` of a run or evaluation directory."""
    return json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8"))


def load_oof_predictions(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The labels and pooled out-of-fold scores of a k-fold run (its ``oof_predictions.csv``, whose cells hold
    a number or a list: one score or one row per image).

    Example:
        >>> labels, scores = load_oof_predictions("runs/tb_xray/20261205-090000")  # doctest: +SKIP
    """
    frame = pd.read_csv(Path(run_dir) / "oof_predictions.csv")
    labels = np.array([json.loads(str(label)) for label in frame["label"]])
    return labels, np.array([json.loads(str(score)) for score in frame["oof_score"]], dtype=float)
