"""Run an experiment end to end and write a self-contained run directory.

config -> source -> validation -> patient split -> preprocessing statistics
-> mode (features + SVM | staged fine-tuning) -> thresholds chosen on
validation -> metrics on validation and test -> run directory.

A run directory ``runs/NAME/TIMESTAMP/`` holds the config snapshot, the seed
and package versions (``environment.json``), the split of every row
(``splits.csv``), the model artifact (``model/``), ``metrics.json``,
``predictions.csv``, the plots and ``report.html``. Runs never overwrite
each other.

Example:
    >>> from tfmed.config import ExperimentConfig
    >>> config = ExperimentConfig.from_yaml("experiments/pneumonia_mnist.yaml")  # doctest: +SKIP
    >>> run_dir = run_experiment(config)                                         # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import (UNKNOWN_LABEL, ConfigError, EvaluationConfig, ExperimentConfig, UnusedSettingError,
                          set_fields)
from tfmed.data.near_duplicates import (GROUP_COLUMN, conflict_note, conflicting_labels, mark_near_duplicates,
                                        twins_in_train)
from tfmed.data.pipeline import ImageInputs
from tfmed.data.statistics import fit_inputs, refit_inputs
from tfmed.data.table import ImageTable
from tfmed.data.validate import excluded_summary
from tfmed.evaluation.comparison import compare_to_members
from tfmed.evaluation.thresholds import THRESHOLD_KEYS, select_thresholds
from tfmed.modes import Ensemble, get_mode
from tfmed.modes.combine import refuse_fixed_threshold_on_ranks
from tfmed.progress import log
from tfmed.run.artifact import TrainedModel
from tfmed.files import file_digest
from tfmed.run.manifest import FAILED_FILE, LOCK_FILE, finish_run, next_step, record_failure
from tfmed.run.rundir import (ENSEMBLE_RUNS_FILE, PROVENANCE_FILE, RunDirectoryError, check_runs_dir,
                              environment_info, json_object, new_run_dir, run_lock, run_working_dir)


def prepare_data(config: ExperimentConfig, new_run: bool = True) -> ImageTable:
    """Load, validate and split the experiment's data (stops with a full report on bad rows); ``new_run``
    False (a resume) keeps a setting refused since the run began, as :func:`check_config_fits_data` does."""
    from tfmed.data.sources import load_source
    from tfmed.data.validate import apply_validation, validate_table

    log(f"loading data source {config.data.source!r}")
    table = load_source(config.data)
    log(f"validating {len(table)} rows")
    report = validate_table(table, need_patient_ids=needs_patient_ids(config, table),
                            max_pixels=config.data.max_image_pixels, need_two_classes=True, views=config.views,
                            intensity=config.preprocess.intensity)
    if report.warnings:
        log(report.warnings_text())
    return split_data(config, apply_validation(table, report, exclude_bad_rows=config.data.exclude_bad_rows),
                      new_run)


def _refuse_unused_split_seed(config: ExperimentConfig, carved: bool) -> None:
    """A written ``split.seed`` that draws nothing (the source gives every split, and neither k-fold nor an
    ensemble's out-of-fold scores make folds) would be silently ignored: refused."""
    folds = config.split.method == "kfold" or (config.model.mode == "ensemble"
                                                and config.model.ensemble.combine != "mean")
    if "seed" in set_fields(config.split) and not carved and not folds:
        raise UnusedSettingError(f"{config.name}: split.seed is set, but the data source gives every split, so "
                                 "nothing is drawn with it; remove it (it matters where a split is carved, in "
                                 "k-fold and for the folds of rank and stacking ensembles)", "split.seed")


def needs_patient_ids(config: ExperimentConfig, table: ImageTable) -> bool:
    """Whether the experiment splits ``table`` by patient (so every row needs a patient id)."""
    return config.split.method in ("patient", "kfold") or not _has_all_splits(table)


def split_data(config: ExperimentConfig, table: ImageTable, new_run: bool = True) -> ImageTable:
    """The validated ``table`` split as the experiment asks: near-identical images grouped, the splits
    made, and k-fold checked to have every class in each fold (a ``split.seed`` that draws nothing is refused
    for a ``new_run``)."""
    from tfmed.data.splits import SplitError, check_split_classes, ensure_splits, kfold_indices

    table = _mark_near_duplicates(config, table)
    origin = test_split_origin(config, source_has_test=bool((table.frame["split"] == "test").any()))
    given = table.frame["split"].astype("string").fillna("").to_numpy()
    table = ensure_splits(table, config.split)
    if new_run:
        _refuse_unused_split_seed(config, carved=(given != table.frame["split"].astype("string").to_numpy()).any())
    check_split_classes(table, config.split, config.evaluation.hierarchy)
    if config.split.method == "kfold":  # too few patients of a class for the folds: said before any fitting
        try:
            kfold_indices(table, config.split.folds, config.split.seed)
        except SplitError as error:
            raise SplitError(f"split.folds: {error}") from None
    table.frame.attrs["test_origin"] = origin if (table.frame["split"] == "test").any() else None  # none: no test
    for split, count in twins_in_train(table).items():
        why = ("split.test_sites holds its sites' images out whole, and these copy images of a training site, so "
               "that much of the external test is not external: remove the copies from one site's data"
               if split == "test" and config.split.test_sites else "a split the data source made, kept as it is")
        log(f"{count} {split} image(s) are near-identical to training images ({why})")
    return table


def _mark_near_duplicates(config: ExperimentConfig, table: ImageTable) -> ImageTable:
    """The table with its near-identical images grouped (``split.near_duplicate_rms``)."""
    if config.split.near_duplicate_rms is None:
        return table
    if config.views.enabled:
        log("near-identical images are not looked for: the rows are volumes (views), not images")
        return table
    table = mark_near_duplicates(table, config.split.near_duplicate_rms, max_pixels=config.data.max_image_pixels)
    groups = table.frame[GROUP_COLUMN]
    if groups.notna().any():
        log(f"{int(groups.notna().sum())} images are near-identical to another ({groups.nunique()} groups, "
            f"{GROUP_COLUMN} in splits.csv)")
    conflicts = conflicting_labels(table)
    if conflicts:
        log(f"warning: {conflict_note(conflicts)}")
    return table


def near_duplicate_summary(config: ExperimentConfig, table: ImageTable) -> dict | None:
    """What ``metrics.json`` records of the near-identical images (None when the check is off).

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> from tfmed.data.near_duplicates import mark_near_duplicates
        >>> near_duplicate_summary(ExperimentConfig(), mark_near_duplicates(load_pneumonia_mnist()))
        {'rms_tolerance': 4.0, 'images': 50, 'groups': 24, 'twins_in_train': {'val': 8}, 'groups_with_different_labels': 0}
    """
    if config.split.near_duplicate_rms is None or GROUP_COLUMN not in table.frame.columns:
        return None
    groups = table.frame[GROUP_COLUMN]
    return {"rms_tolerance": config.split.near_duplicate_rms, "images": int(groups.notna().sum()),
            "groups": int(groups.nunique()), "twins_in_train": twins_in_train(table),
            "groups_with_different_labels": len(conflicting_labels(table))}


def test_split_origin(config: ExperimentConfig, source_has_test: bool) -> str:
    """Where the test split comes from, in words for the report.

    Example:
        >>> test_split_origin(ExperimentConfig(), source_has_test=False)
        'carved from the training images (same collection as training: an in-distribution estimate)'
    """
    if config.split.test_sites:
        return (f"the images of site(s) {', '.join(config.split.test_sites)}, held out whole: an external test "
                "(sites the model was not trained on)")
    if source_has_test and config.split.method != "patient":
        return "the data source's own test split"
    return "carved from the training images (same collection as training: an in-distribution estimate)"


def check_config_fits_data(config: ExperimentConfig, table: ImageTable, new_run: bool = True) -> None:
    """Settings that only make sense for some tasks, checked by the mode once the task is known (and the
    recalibration), the class hierarchy against the data's classes, and the subgroup attributes against what the
    data record; then the mode's own checks (e.g. enough training images for the SVM's folds). A run begun
    before a setting without effect was refused (``new_run`` False: a resume) keeps it."""
    check_subgroups(config.evaluation.subgroups, table, f"{config.name}: evaluation.subgroups")
    if config.evaluation.recalibration != "none":
        from tfmed.evaluation.recalibration import RecalibrationError, check_method

        try:
            check_method(config.evaluation.recalibration, table.task)
        except RecalibrationError as error:
            raise ConfigError(f"{config.name}: evaluation.recalibration: {error}") from None
    if config.evaluation.hierarchy:
        from tfmed.evaluation.hierarchy import Hierarchy, HierarchyError

        if table.task != "multiclass":
            raise ConfigError(f"{config.name}: evaluation.hierarchy sums the probabilities of fine classes into "
                              f"coarse ones and needs multiclass data, but the data is {table.task}")
        try:  # every data class in exactly one coarse class, before anything is trained
            Hierarchy(config.evaluation.hierarchy).membership(table.classes)
        except HierarchyError as error:
            raise ConfigError(f"evaluation.hierarchy: {error}") from None
    binary_answer = config.evaluation.hierarchy is not None and len(config.evaluation.hierarchy) == 2
    written = [name for name in ("threshold", "target_sensitivity", "target_specificity")
               if name in set_fields(config.evaluation)]
    if table.task == "multiclass" and written and not binary_answer and new_run:
        raise UnusedSettingError(f"{config.name}: evaluation.{written[0]} is set, but multiclass data is answered "
                                 "by the most probable class, with no threshold to choose; remove it, or give "
                                 "evaluation.hierarchy two coarse classes to threshold", f"evaluation.{written[0]}")
    if config.model.mode == "ensemble" and new_run:  # a run made before this refusal keeps its settings
        refuse_fixed_threshold_on_ranks(config.evaluation.threshold, config.model.ensemble.combine,
                                        config.evaluation.recalibration)
    if config.report.explain and new_run and config.split.method == "kfold" \
            and not (table.frame["split"] == "test").any():
        raise UnusedSettingError(f"{config.name}: report.explain draws maps of test cases, and this k-fold run has no "
                                 "test split (it scores out-of-fold only); set split.test_fraction above 0, or "
                                 "remove report.explain and run tfmed explain on images of your choice",
                                 "report.explain")
    if config.report.explain and new_run:
        _refuse_what_cannot_be_explained(config)
    if new_run:
        _refuse_a_crop_of_the_whole_image(config)
    get_mode(config.model.mode).check_experiment(config, table)


def _refuse_a_crop_of_the_whole_image(config: ExperimentConfig) -> None:
    """An ``augment.crop_from`` (the experiment's, or an ensemble member's own) that every model reading it sees at
    its own image size: a crop of the whole image, which changes nothing."""
    readers: dict[int, list] = {}  # each augment section and the models that read it
    for index, part in config.model_experiments():
        if part.augment.crop_from is not None:
            own = index is not None and part.augment is not config.augment
            readers.setdefault(id(part.augment), []).append((f"model.ensemble.members[{index}]." if own else "", part))
    for models in readers.values():
        crop = models[0][1].augment.crop_from
        if all(part.preprocess.image_size == crop for _, part in models):
            key = f"{models[0][0]}augment.crop_from"
            raise UnusedSettingError(f"{config.name}: {key} is {crop}, the image size it would crop at: a crop of "
                                     "that size from an image of that size is the whole image; give a larger size "
                                     f"(e.g. {crop + crop // 8}) or remove it", key)


def _refuse_what_cannot_be_explained(config: ExperimentConfig) -> None:
    """``report.explain`` with models whose maps cannot be drawn (an SVM of texture features), or with ensemble
    members whose maps cannot be averaged (images fitted to size differently): refused before anything is fitted."""
    parts = [(None if index is None else config.member_name(index), part) for index, part in config.model_experiments()]
    for name, part in parts:
        if part.model.svm.texture:  # a fine-tune's config sets no svm section (one written is refused)
            where = f"member {name}'s " if name is not None else ""
            raise ConfigError(f"{config.name}: report.explain draws maps through the model's gradients, and "
                              f"{where}model.svm.texture adds LBP texture features, which have none; remove "
                              "report.explain or texture")
    resized = {name: part.preprocess.resize for name, part in parts}
    if len(set(resized.values())) > 1:
        raise ConfigError(f"{config.name}: report.explain averages the members' maps pixel by pixel, and the members "
                          "fit images to their size in different ways (" + ", ".join(
                              f"{name}: preprocess.resize {how}" for name, how in resized.items())
                          + "); give them one preprocess.resize, or remove report.explain")


def _has_all_splits(table: ImageTable) -> bool:
    present = set(table.frame["split"].dropna().unique())
    return {"train", "val", "test"} <= present


def fit_model(config: ExperimentConfig, table: ImageTable, train: ImageTable, val: ImageTable | None,
              inputs: ImageInputs, run_dir: Path | None) -> TrainedModel:
    """Fit the configured mode on ``train``; ``val`` (optional) may steer training (early stopping)."""
    mode = get_mode(config.model.mode)
    estimator = mode.from_experiment(config, train, run_dir).fit_tables(train, val, inputs)
    return trained_model(config, table, inputs, estimator)


def trained_model(config: ExperimentConfig, table: ImageTable, inputs: ImageInputs, estimator) -> TrainedModel:
    """The artifact of a fitted ``estimator`` with the experiment's preprocessing and test-time views (its
    backbone: an ensemble's members' backbones, each named once)."""
    return TrainedModel(mode=estimator.name, task=table.task, classes=list(table.classes),
                        preprocess=inputs.preprocess, stats=inputs.stats, estimator=estimator,
                        threshold_method=THRESHOLD_KEYS[config.evaluation.threshold],
                        backbone=config.model_setting("backbone"), tta=config.tta, views=config.views)


def evaluate_split(model: TrainedModel, table: ImageTable, scores: np.ndarray,
                   evaluation: EvaluationConfig) -> dict:
    """Metrics of one split at every stored operating point."""
    from tfmed.evaluation.metrics import evaluate, without_probability_figures

    y = table.labels()
    if model.task == "multiclass":
        return evaluate("multiclass", y, scores, None, model.classes,
                        ci_level=evaluation.ci_level, bootstrap=evaluation.bootstrap)
    points = {name: evaluate(model.task, y, scores, threshold, model.classes,
                             ci_level=evaluation.ci_level, bootstrap=evaluation.bootstrap)
              for name, threshold in model.thresholds.items()}
    if not model.gives_probabilities:
        for entry in points.values():
            for figures in entry["per_label"].values() if model.task == "multilabel" else [entry]:
                without_probability_figures(figures)
            entry["notes"].append(RANK_NOTE)
    return points


RANK_NOTE = ("the scores are mean ranks (model.ensemble.combine: rank, or --combine rank for tfmed ensemble), not "
             "probabilities: Brier score, calibration and decision curve are left out (evaluation.recalibration, or "
             "--recalibrate for tfmed ensemble, turns them into probabilities)")


def subgroup_metrics(model: TrainedModel, table: ImageTable, scores: np.ndarray,
                     evaluation: EvaluationConfig) -> dict:
    """Each ``evaluation.subgroups`` attribute's figures in one split, for the attributes of which the split
    holds two or more groups (see :func:`~tfmed.evaluation.subgroups.subgroup_figures`); a binary model's
    at the threshold it decides at (``evaluation.threshold``).

    Example:
        >>> subgroup_metrics(model, val_table, val_scores, config.evaluation)  # doctest: +SKIP
        {'site': {'groups': {'montgomery': {'n': 14, 'auc': 0.81, ...}, 'shenzhen': {...}}, 'sensitivity_p': 0.4, ...}}
    """
    from tfmed.evaluation.subgroups import group_names, subgroup_figures

    threshold_name = model.threshold_method if model.task != "multiclass" and model.thresholds else None
    threshold = model.thresholds[threshold_name] if threshold_name else None
    figures = {}
    for attribute in evaluation.subgroups:
        groups = group_names(table.frame, attribute, evaluation.age_bands)
        result = subgroup_figures(model.task, table.labels(), scores, groups, threshold, threshold_name,
                                  model.classes, attribute, evaluation.ci_level)
        if result is not None:
            figures[attribute] = result
    return figures


def by_subgroup(split_figures: dict[str, dict]) -> dict:
    """``metrics.json``'s ``subgroups``: {attribute: {split: figures}} from {split: :func:`subgroup_metrics`}.

    Example:
        >>> by_subgroup({"val": {"sex": {"groups": {}}}, "test": {}})
        {'sex': {'val': {'groups': {}}}}
    """
    out: dict = {}
    for split, attributes in split_figures.items():
        for attribute, figures in attributes.items():
            out.setdefault(attribute, {})[split] = figures
    return out


def scored_metrics(model: TrainedModel, parts: dict[str, ImageTable], scores: dict[str, np.ndarray],
                   evaluation: EvaluationConfig) -> dict:
    """``metrics.json``'s figures for a model's scores of some splits: the model's facts and thresholds, each
    split at every stored operating point, and (when there are any) its subgroups and coarse classes.

    Example:
        >>> metrics = scored_metrics(model, {"test": table}, {"test": scores}, config.evaluation)  # doctest: +SKIP
        >>> sorted(metrics["splits"])  # doctest: +SKIP
        ['test']
    """
    metrics = {"task": model.task, "classes": model.classes, "mode": model.mode, "backbone": model.backbone,
               "thresholds": model.thresholds, "threshold_method": model.threshold_method,
               "splits": {name: evaluate_split(model, parts[name], split_scores, evaluation)
                          for name, split_scores in scores.items()}}
    groups = {name: subgroup_metrics(model, parts[name], split_scores, evaluation)
              for name, split_scores in scores.items()}
    if any(groups.values()):
        metrics["subgroups"] = by_subgroup(groups)
    if model.hierarchy:
        metrics["coarse"] = coarse_metrics(model, parts, scores, evaluation)
    return metrics


def check_subgroups(subgroups: list[str], table: ImageTable, where: str,
                    fix: str = "Remove it or use data that records it.") -> None:
    """Refuse a subgroup attribute (other than site, which many data sets lack) that no image records;
    ``fix`` ends the message.

    Example:
        >>> check_subgroups(["sex"], table_without_sex, "evaluation.subgroups")  # doctest: +SKIP
        Traceback (most recent call last):
        tfmed.config.ConfigError: evaluation.subgroups names sex, but no image of the data records it; ...
    """
    missing = [name for name in subgroups if name != "site" and table.frame[name].isna().all()]
    if missing:
        raise ConfigError(f"{where} names {' and '.join(missing)}, but no image of the data records "
                          f"{'it' if len(missing) == 1 else 'them'}; a manifest's sex, age and view columns, "
                          "ChestX-ray14, CheXpert and PadChest's CSVs and DICOM headers (PatientSex, PatientAge, "
                          f"ViewPosition: DICOM folders, SIIM-ACR) give them. {fix}")


def in_runs_dir(config: ExperimentConfig, runs_dir: str | Path | None) -> ExperimentConfig:
    """``config`` with ``runs_dir`` as its runs folder (``config`` itself for None, and never changed), so that
    the run or sweep, its feature cache and its stored config.yaml all go there.

    Example:
        >>> in_runs_dir(ExperimentConfig(), "/tmp/runs").runs_dir
        '/tmp/runs'
    """
    return config if runs_dir is None else dataclasses.replace(config, runs_dir=str(runs_dir))


def run_experiment(config: ExperimentConfig, runs_dir: str | Path | None = None) -> Path | None:
    """Run ``config`` end to end; return the new run directory (None on a worker other than worker 0
    under ``model.svm.strategy: multiworker``, see :func:`extract_across_workers`).

    Example:
        >>> run_dir = run_experiment(ExperimentConfig.from_yaml("experiments/pneumonia_mnist.yaml"))  # doctest: +SKIP
    """
    started = time.time()
    config = in_runs_dir(config, runs_dir)
    multiworker = config.multiworker
    if multiworker:
        from tfmed.training.distribute import strategy

        strategy("multiworker")  # sets up the collectives before TensorFlow runs anything else
    get_mode(config.model.mode).check_before_data(config)  # a misspelt backbone fails before the data are read
    check_runs_dir(config.runs_dir)
    table = prepare_data(config)  # fails before a run directory exists
    check_config_fits_data(config, table)
    inputs = run_inputs(config, table)
    if multiworker and not extract_across_workers(config, table, inputs).chief:
        return None
    run_dir = new_run_dir(config.runs_dir, config.name)
    log(f"run directory {run_dir}")
    with run_lock(run_dir):
        config.to_yaml(run_dir / "config.yaml")
        environment = environment_info(config)
        environment["config_sha256"] = file_digest(run_dir / "config.yaml")
        environment["data_digest"] = data_digest(table)
        environment["data_digest_without_times"] = data_digest(table, times=False)
        (run_dir / "environment.json").write_text(json.dumps(environment, indent=2))
        _fill_or_record(run_dir, config, table, inputs, started)
    return run_dir


def data_digest(table: ImageTable, times: bool = True) -> str:
    """A digest of what a run trains and is scored on: its images (paths, file sizes and, with ``times``,
    modification times; in-memory pixels), their labels and splits; a resume refuses data whose digest changed.

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> len(data_digest(load_pneumonia_mnist()))
        40
    """
    from tfmed.modes.feature_store import table_identity
    from tfmed.modes.features import digest

    frame = table.frame
    return digest({"rows": table_identity(table, times), "classes": list(table.classes),
                   "labels": np.asarray(table.labels()).tolist(),
                   "split": frame["split"].astype(str).tolist() if "split" in frame.columns else None})


def resume_experiment(run_dir: str | Path) -> Path:
    """Finish, in its own directory, a run that stopped before it was complete (killed, Ctrl-C, an error):
    its ``config.yaml`` is run again on the same data and split, and each fine-tune continues from its last
    completed epoch (its epoch backups); SVMs fit again (their features come from the feature store).
    A resumed fine-tune is not bit-identical to one never stopped (the data stream starts afresh).

    Example:
        >>> resume_experiment("runs/tb_xray/20261206-111233")  # doctest: +SKIP
        PosixPath('runs/tb_xray/20261206-111233')
    """
    from tfmed.run.manifest import MANIFEST_FILE

    started = time.time()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "splits.csv").is_file():
        raise RunDirectoryError(f"{run_dir}: not a run that stopped (it needs the config.yaml and splits.csv a run "
                                "writes first); pass the directory of the run to resume")
    for record, command in ((ENSEMBLE_RUNS_FILE, "tfmed ensemble"), (PROVENANCE_FILE, "tfmed recalibrate")):
        if (run_dir / record).is_file():  # its config.yaml would train the models it was made from saved ones
            raise RunDirectoryError(f"{run_dir}: {command} began this folder ({record}) and stopped before it "
                                    f"finished; it is not resumed: run {command} again (and remove this folder)")
    base = run_working_dir(run_dir)  # its relative paths (data, runs_dir) are read from there, as when it began
    if base is not None and base.resolve() != Path.cwd().resolve():
        log(f"resuming in {base}, the folder the run was started in")
        run_dir = run_dir.resolve()
        with contextlib.chdir(base):
            return resume_experiment(run_dir)
    with run_lock(run_dir):
        if (run_dir / MANIFEST_FILE).is_file():
            raise RunDirectoryError(f"{run_dir}: this run finished (it has its {MANIFEST_FILE}); there is nothing "
                                    "to resume (tfmed run CONFIG makes a new run)")
        environment = json_object(run_dir / "environment.json")
        if environment.get("config_sha256") not in (None, file_digest(run_dir / "config.yaml")):
            raise RunDirectoryError(f"{run_dir}: config.yaml was edited after the run started; a resumed run "
                                    "finishes with the settings it began with, so undo the edit, or run the edited "
                                    f"settings as a new run (tfmed run {run_dir / 'config.yaml'})")
        config = ExperimentConfig.from_run(run_dir)
        if config.multiworker:
            raise ConfigError(f"{run_dir}: a run under model.svm.strategy multiworker is not resumed; run it again")
        get_mode(config.model.mode).check_before_data(config)
        table = prepare_data(config, new_run=False)
        check_config_fits_data(config, table, new_run=False)
        _check_same_data(run_dir, environment, table)
        inputs = run_inputs(config, table)
        earlier = _record_resume(run_dir, environment, started)
        (run_dir / FAILED_FILE).unlink(missing_ok=True)
        log(f"resuming {run_dir}: a fine-tune continues from its last completed epoch, an SVM fits again from the "
            "feature store")
        _fill_or_record(run_dir, config, table, inputs, started - earlier)
    return run_dir


def _check_same_data(run_dir: Path, environment: dict, table: ImageTable) -> None:
    """Refuse to resume on other data than the run began with: its splits.csv and, for runs that recorded it,
    the data's digest (images, labels, split); files whose modification times alone changed are taken as the same,
    with a warning."""
    recorded = pd.read_csv(run_dir / "splits.csv", usecols=["image", "split"], keep_default_na=False)
    now = table.frame[["image", "split"]].astype(str).reset_index(drop=True)
    same_rows = recorded.astype(str).equals(now)
    if same_rows and environment.get("data_digest") in (None, data_digest(table)):
        return
    if same_rows and environment.get("data_digest_without_times") == data_digest(table, times=False):
        log("warning: the image files' modification times changed since the run started (a copy or a restore "
            "that did not keep them), but not their names, sizes, labels or split: resuming on them. If their "
            "contents changed, stop and run the experiment anew instead")
        return
    raise RunDirectoryError(f"{run_dir}: the data (images, labels) or their split differ from those the run "
                            "started on; a resumed run must train on the same data, so run the experiment anew "
                            "instead")


def _record_resume(run_dir: Path, environment: dict, resumed: float) -> float:
    """Add this resume (begun at time ``resumed``) to the run's environment.json (its first start and command
    stay); return the seconds the earlier attempts ran."""
    earlier = _seconds_run_before(run_dir, environment, resumed)
    environment.setdefault("resumed", []).append(
        {"started": dt.datetime.now().isoformat(timespec="seconds"), "command": sys.argv, "cwd": os.getcwd()})
    environment["seconds_before_resume"] = round(earlier, 1)
    (run_dir / "environment.json").write_text(json.dumps(environment, indent=2))
    return earlier


def _seconds_run_before(run_dir: Path, environment: dict, resumed: float) -> float:
    """The seconds the run's earlier attempts ran: each from its start to the last file it wrote (a killed
    attempt leaves no end time; files written since the resume began at ``resumed``, such as its lock, are not
    the attempt's), so that ``metrics.json``'s seconds count the whole run, not the last part nor the pause."""
    attempts = [environment.get("started")] + [entry.get("started") for entry in environment.get("resumed", [])]
    try:
        last_start = dt.datetime.fromisoformat(attempts[-1]).timestamp()
    except (TypeError, ValueError):
        return float(environment.get("seconds_before_resume", 0.0))
    last_write = max((mtime for path in run_dir.rglob("*") if path.is_file() and path.name != LOCK_FILE
                      and (mtime := path.stat().st_mtime) < resumed), default=last_start)
    return float(environment.get("seconds_before_resume", 0.0)) + max(0.0, last_write - last_start)


def run_inputs(config: ExperimentConfig, table: ImageTable) -> ImageInputs:
    """The inputs of ``config`` for ``table``, their statistics fitted on its train split (a run fits them
    before its directory exists, so that training images no statistic can be learnt from leave no run).

    Example:
        >>> run_inputs(config, table).preprocess.image_size  # doctest: +SKIP
        96
    """
    return fit_inputs(config.preprocess, table.split("train"), config.tta, config.views)


def _fill_or_record(run_dir: Path, config: ExperimentConfig, table: ImageTable, inputs: ImageInputs,
                    started: float) -> None:
    """:func:`fill_run_dir`; when it stops (also Ctrl-C) the directory's ``FAILED.txt`` says why."""
    try:
        fill_run_dir(run_dir, config, table, inputs, started)
    except BaseException as error:  # also Ctrl-C: the directory says why it is incomplete
        try:
            record_failure(run_dir, error)
            log(f"the run stopped; {run_dir / FAILED_FILE} says why. {next_step(run_dir, error)}")
        except OSError as note_error:  # e.g. a full disk: the run's own error is the one to raise
            log(f"the run stopped, and {run_dir / FAILED_FILE} could not be written: {note_error}")
        raise


def fill_run_dir(run_dir: Path, config: ExperimentConfig, table: ImageTable, inputs: ImageInputs,
                 started: float) -> None:
    """Fit, score and evaluate ``config`` on ``table`` (its images read through ``inputs``) and write
    everything into ``run_dir``."""
    import keras

    keras.utils.set_random_seed(config.seed)
    splits_frame = table.frame.drop(columns=["array_index"], errors="ignore")
    splits_frame.to_csv(run_dir / "splits.csv", index=False)
    if len(table.excluded):
        table.excluded.to_csv(run_dir / "excluded_rows.csv", index=False)
        log(f"left out of the data: {excluded_summary(table.excluded)} (listed in excluded_rows.csv)")

    train, val, test = table.split("train"), table.split("val"), table.split("test")
    fold_summary = None
    if config.split.method == "kfold":
        fold_summary, fold_models, oof = run_folds(config, table, inputs)
        train = merge_tables(train, val)
        if config.split.final == "bag":
            log(f"keeping the {len(fold_models)} fold models; their mean scores the test split")
            model = trained_model(config, table, inputs, Ensemble.of_fitted(
                [m.estimator for m in fold_models], [f"fold_{k + 1}" for k in range(len(fold_models))], table.task,
                [None if m.stats is None else ImageInputs(m.preprocess, m.stats) for m in fold_models]))
        else:  # refit on train+val, so no rows are left for early stopping
            model = fit_model(config, table, train, None, refit_inputs(inputs, train), run_dir)
    else:
        model = fit_model(config, table, train, val, inputs, run_dir)

    # With k-fold validation is not held out any more (it is part of the folds): thresholds
    # then come from the pooled out-of-fold scores instead.
    parts = {"test": test} if fold_summary is not None else {"val": val, "test": test}
    views = f" in {config.tta.view_count()} test-time views" if config.tta.enabled else ""
    log(f"scoring {', '.join(name for name, part in parts.items() if len(part))} split(s){views}")
    scores, member_scores = {}, {}
    for name, part in parts.items():
        if len(part):
            scores[name], members = model.predict_with_members(part)
            if members is not None:
                member_scores[name] = members
    # thresholds (and a recalibration) are fitted on validation, or on the pooled out-of-fold scores
    from tfmed.run.reporting import OUT_OF_FOLD, write_run_outputs

    chosen_on = "val" if fold_summary is None else OUT_OF_FOLD
    fit_labels, fit_scores = (val.labels(), scores["val"]) if fold_summary is None else (train.labels(), oof)
    recalibration = None
    if config.evaluation.recalibration != "none":
        scored = {chosen_on: (fit_labels, fit_scores),
                  **{name: (parts[name].labels(), s) for name, s in scores.items() if name != chosen_on}}
        recalibration, after = recalibrate(model, config.evaluation.recalibration, chosen_on, scored)
        fit_scores, scores = after[chosen_on], {name: after[name] for name in scores}
    if fold_summary is not None:
        write_oof_predictions(run_dir / "oof_predictions.csv", train, oof,
                              fit_scores if recalibration and recalibration["applied"] else None)
        oof = fit_scores
    model.thresholds = select_thresholds(model.task, fit_labels, fit_scores, config.evaluation.target_sensitivity,
                                         config.evaluation.target_specificity, model.classes)
    if config.evaluation.hierarchy:
        model.hierarchy = config.evaluation.hierarchy
        choose_coarse_thresholds(model, fit_labels, fit_scores, config.evaluation)
    model.save(run_dir / "model")
    metrics = {"task": model.task, "classes": model.classes, "mode": model.mode,
               "backbone": config.model.backbone, "thresholds": model.thresholds,
               "threshold_method": model.threshold_method,
               **count_entries({name: table.split(name) for name in ("train", "val", "test")}),
               "test_origin": table.frame.attrs.get("test_origin"), "splits": {}}
    metrics["tta_views"] = config.tta.view_count()
    if recalibration is not None:
        metrics["recalibration"] = recalibration
    metrics["near_duplicates"] = near_duplicate_summary(config, table)
    for name, split_scores in scores.items():
        metrics["splits"][name] = evaluate_split(model, parts[name], split_scores, config.evaluation)
    groups = {name: subgroup_metrics(model, parts[name], split_scores, config.evaluation)
              for name, split_scores in scores.items()}
    if fold_summary is not None:  # each group's pooled out-of-fold figures, at the thresholds chosen on them
        groups = {OUT_OF_FOLD: subgroup_metrics(model, train, oof, config.evaluation), **groups}
    if any(groups.values()):
        metrics["subgroups"] = by_subgroup(groups)
    if member_scores:
        metrics["members"] = {name: compare_to_members(model.task, parts[name].labels(), scores[name], members)
                              for name, members in member_scores.items()}
    if fold_summary is not None:
        metrics["kfold"] = fold_summary
    if model.hierarchy:
        metrics["coarse"] = coarse_metrics(model, parts, scores, config.evaluation)
        if fold_summary is not None:
            metrics["coarse"]["out_of_fold"] = coarse_metrics(model, {"train": train}, {"train": oof},
                                                              config.evaluation)["splits"]["train"]
    metrics["seconds"] = round(time.time() - started, 1)
    write_run_outputs(run_dir, config, model, parts, scores, metrics, member_scores)
    finish_run(run_dir)
    log(f"done in {metrics['seconds']:.0f} s: {run_dir / 'report.html'}")


def recalibrate(model: TrainedModel, method: str, fitted_on: str,
                scored: dict[str, tuple]) -> tuple[dict, dict[str, np.ndarray]]:
    """Fit ``method`` (``evaluation.recalibration``) on the ``fitted_on`` entry of ``scored`` (split -> (labels,
    scores before recalibration)) and set ``model.recalibration``; return ``metrics.json``'s ``recalibration``
    (the fit and each split's log loss and Brier score before and after, in-sample on ``fitted_on``) and each
    split's recalibrated scores. Scores that cannot be recalibrated (see
    :class:`~tfmed.evaluation.recalibration.RecalibrationError`) leave the model and the scores as they are, said
    in the log and in the summary (``applied`` false, ``reason``).

    Example:
        >>> summary, scores = recalibrate(model, "logistic", "val", {"val": (y_val, s_val)})  # doctest: +SKIP
        >>> summary  # doctest: +SKIP
        {'method': 'logistic', 'fitted_on': 'val', 'applied': True, 'fit': {...}, 'figures': {'val': {...}}}
    """
    from tfmed.evaluation.recalibration import Recalibration, RecalibrationError, probability_scores

    summary: dict = {"method": method, "fitted_on": fitted_on}
    try:
        model.recalibration = Recalibration.fit(method, model.task, *scored[fitted_on], labels=list(model.classes))
        unfitted = model.recalibration.unfitted or {}
        if unfitted and model.combines_ranks:  # one label left as mean ranks beside probabilities: none is
            model.recalibration = None
            raise RecalibrationError("a rank ensemble's mean ranks become probabilities only where every label is "
                                     "recalibrated, and " + "; ".join(unfitted.values()))
    except RecalibrationError as error:
        log(f"the scores were not recalibrated ({method}): {error}")
        return {**summary, "applied": False, "reason": str(error)}, {name: s for name, (_, s) in scored.items()}
    for label, reason in (model.recalibration.unfitted or {}).items():
        log(f"label {label!r} was not recalibrated: {reason.removeprefix(f'label {label!r}: ')}")
    log(f"probabilities recalibrated on {fitted_on} ({model.recalibration.describe()})")
    after = {name: model.recalibration.apply(s) for name, (_, s) in scored.items()}
    figures = {name: {"before": probability_scores(model.task, y, s),
                      "after": probability_scores(model.task, y, after[name])}
               for name, (y, s) in scored.items() if len(y)}
    return {**summary, "applied": True, "fit": model.recalibration.to_json(), "figures": figures}, after


def extract_across_workers(config: ExperimentConfig, table: ImageTable, inputs: ImageInputs):
    """This worker's share of the SVM features of the train, val and test splits (each test-time view of
    ``inputs``), written to the feature store in ``config.runs_dir``, a folder every worker shares; return
    its ``WorkerShare``.

    Every worker named in TF_CONFIG runs the same ``tfmed run``; once all shards are written, worker 0
    fits the classifier on them and writes the run, and the others stop.
    """
    train, val, test = table.split("train"), table.split("val"), table.split("test")
    share = get_mode("svm").from_experiment(config, train, None).extract_tables(
        {"train": train, "val": val, "test": test}, inputs)
    if not share.chief:
        log(f"worker {share.index} of {share.count}: its share of the features is written; worker 0 "
            "fits the SVM and writes the run")
    return share


def choose_coarse_thresholds(model: TrainedModel, labels: np.ndarray, scores: np.ndarray,
                             evaluation: EvaluationConfig) -> None:
    """Set ``model.coarse_thresholds`` from the fine ``labels`` and ``scores`` of the split thresholds are
    chosen on (validation, or the pooled out-of-fold scores): as for a binary model when the hierarchy has two
    coarse classes, none (argmax) otherwise."""
    hierarchy = model.class_hierarchy
    model.coarse_thresholds = select_thresholds(
        hierarchy.task, hierarchy.coarse_labels(labels, fine_classes=model.classes),
        hierarchy.coarse_scores(scores, model.classes), evaluation.target_sensitivity, evaluation.target_specificity)


def coarse_metrics(model: TrainedModel, parts: dict, scores: dict, evaluation: EvaluationConfig) -> dict:
    """Figures of the coarse classes of ``model.hierarchy``, each the sum of its fine classes' probabilities
    (Esteva et al. 2017): per split, at every stored coarse threshold for two coarse classes (as
    :func:`evaluate_split` for a binary model), by argmax otherwise.

    Example:
        >>> coarse_metrics(model, {"test": test}, {"test": scores}, config.evaluation)  # doctest: +SKIP
        {'classes': ['non_tb', 'tb'], 'task': 'binary', 'fine': {...}, 'thresholds': {...}, 'splits': {...}}
    """
    from tfmed.evaluation.metrics import evaluate

    hierarchy = model.class_hierarchy
    result = {"classes": hierarchy.coarse_classes, "task": hierarchy.task, "fine": hierarchy.mapping,
              "thresholds": model.coarse_thresholds, "splits": {}}
    for name, split_scores in scores.items():
        y = hierarchy.coarse_labels(parts[name].labels(), fine_classes=model.classes)
        coarse = hierarchy.coarse_scores(split_scores, model.classes)
        if hierarchy.task == "multiclass":
            result["splits"][name] = evaluate("multiclass", y, coarse, None, hierarchy.coarse_classes,
                                              ci_level=evaluation.ci_level, bootstrap=evaluation.bootstrap)
        else:
            result["splits"][name] = {point: evaluate("binary", y, coarse, threshold, hierarchy.coarse_classes,
                                                      ci_level=evaluation.ci_level, bootstrap=evaluation.bootstrap)
                                      for point, threshold in model.coarse_thresholds.items()}
    return result


def run_folds(config: ExperimentConfig, table: ImageTable,
              inputs: ImageInputs) -> tuple[dict, list[TrainedModel], np.ndarray]:
    """Stratified group k-fold over train+val: the summary (per-fold AUC, pooled out-of-fold AUC), with
    ``split.final: bag`` the k fold models (else none), and the pooled out-of-fold scores of train+val's rows
    (train's, then val's), on which the thresholds (and any recalibration) are then chosen (written by
    :func:`write_oof_predictions`)."""
    from tfmed.data.splits import kfold_indices
    from tfmed.evaluation.metrics import auc_interval, evaluate, headline_auc

    trainval = merge_tables(table.split("train"), table.split("val"))
    oof = None
    fold_aucs, models = [], []
    for k, (fit_rows, held_rows) in enumerate(kfold_indices(trainval, config.split.folds, config.split.seed)):
        log(f"fold {k + 1}/{config.split.folds}: {len(fit_rows)} train, {len(held_rows)} held out")
        fit_part, held_part = trainval.part(fit_rows), trainval.part(held_rows)
        # the held-out fold only measures: it never drives early stopping, nor the preprocessing statistics
        model = fit_model(config, table, fit_part, None, refit_inputs(inputs, fit_part), None)
        if config.split.final == "bag":  # a refit needs none of the fold models afterwards
            models.append(model)
        held_scores = model.predict(held_part)
        if oof is None:
            oof = np.zeros((len(trainval),) + held_scores.shape[1:])
        oof[held_rows] = held_scores
        fold_aucs.append(headline_auc(evaluate(table.task, held_part.labels(), held_scores,
                                       0.5 if table.task != "multiclass" else None, table.classes)))
    y = trainval.labels()
    pooled = evaluate(table.task, y, oof, 0.5 if table.task != "multiclass" else None, table.classes,
                      ci_level=config.evaluation.ci_level)
    aucs = np.array([a for a in fold_aucs if a is not None], dtype=float)
    summary = {"folds": config.split.folds, "final": config.split.final, "fold_auc": fold_aucs,
               "auc_mean": float(aucs.mean()) if len(aucs) else None,
               "auc_sd": float(aucs.std(ddof=1)) if len(aucs) > 1 else None,
               "pooled_oof_auc": headline_auc(pooled),
               "pooled_oof_auc_ci": auc_interval(pooled)}
    return summary, models, oof


def write_oof_predictions(path: Path, table: ImageTable, oof: np.ndarray, recalibrated: np.ndarray | None) -> None:
    """``oof_predictions.csv``: each train+val row's label and out-of-fold score as its fold model gave it
    (``oof_score``) and, when the run recalibrates, the recalibrated score its thresholds were chosen on
    (``oof_score_recalibrated``)."""
    columns = {"image": table.frame["image"], "label": list(map(str, table.labels().tolist())),
               "oof_score": list(map(str, oof.tolist()))}
    if recalibrated is not None:
        columns["oof_score_recalibrated"] = list(map(str, recalibrated.tolist()))
    pd.DataFrame(columns).to_csv(path, index=False)


def merge_tables(a: ImageTable, b: ImageTable) -> ImageTable:
    """The rows of ``a`` then those of ``b`` (two parts of one source, e.g. its train and val splits).

    Example:
        >>> from tfmed.data.sources.embedded import load_pneumonia_mnist
        >>> table = load_pneumonia_mnist()
        >>> len(merge_tables(table.split("train"), table.split("val")))
        5232
    """
    frame = pd.concat([a.frame, b.frame], ignore_index=True)
    return ImageTable(frame, list(a.classes), a.task, a.images, a.source)


def count_entries(tables: dict[str, ImageTable]) -> dict:
    """The metrics' counts of each split's table: ``counts`` (images per class; per label, those known
    to be positive), ``images`` and, when a multilabel label is unknown for some images,
    ``unknown_labels`` (split -> label -> images).

    Example:
        >>> frame = pd.DataFrame({"image": ["a", "b"], "label:x": [1, -1], "label:y": [0, 1]})
        >>> count_entries({"test": ImageTable(frame, ["x", "y"], "multilabel")})
        {'counts': {'test': {'x': 1, 'y': 1}}, 'images': {'test': 2}, 'unknown_labels': {'test': {'x': 1, 'y': 0}}}
    """
    entries = {"counts": {name: table.class_counts() for name, table in tables.items()},
               "images": {name: len(table) for name, table in tables.items()}}
    unknown = {name: dict(zip(table.classes, (table.labels() == UNKNOWN_LABEL).sum(axis=0).tolist()))
               for name, table in tables.items() if table.task == "multilabel" and len(table)}
    if any(sum(per_label.values()) for per_label in unknown.values()):
        entries["unknown_labels"] = unknown
    return entries
