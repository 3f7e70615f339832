"""``tfmed ensemble``: combine saved runs that share a split into one ensemble run.

Each run keeps its fitted model, preprocessing and test-time views; their
saved validation and test scores (``predictions.csv``) are combined by the
mean of the probabilities or by rank averaging (each member's score as a
quantile among its own validation scores). The combination may be
recalibrated on the validation split (``--recalibrate``); thresholds are chosen
again, on the combined validation scores. Stacking needs out-of-fold training
scores that saved runs do not have: use ``model.mode: ensemble`` for it.

The output is a run directory like any other (``config.yaml`` describes the
ensemble, ``model/`` holds every member), so ``tfmed evaluate`` and
``tfmed predict`` work on it.

Example:
    >>> out = ensemble_runs(["runs/pneumonia_mnist_svm/A", "runs/pneumonia_mnist_finetune/B"],
    ...                     "runs/combined")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from tfmed.config import MODE_SECTIONS, EnsembleConfig, ExperimentConfig, MemberConfig, ModelConfig, choices
from tfmed.data.pipeline import ImageInputs
from tfmed.data.table import LABEL_PREFIX, ImageTable
from tfmed.errors import TfmedError
from tfmed.evaluation.comparison import compare_to_members
from tfmed.evaluation.recalibration import RecalibrationError, check_method
from tfmed.evaluation.report import predictions_column
from tfmed.evaluation.thresholds import select_thresholds
from tfmed.modes import Ensemble
from tfmed.modes.combine import refuse_fixed_threshold_on_ranks, refuse_rank
from tfmed.progress import log
from tfmed.run.artifact import TrainedModel
from tfmed.run.evaluate import load_metrics
from tfmed.run.experiment import choose_coarse_thresholds, count_entries, recalibrate, scored_metrics
from tfmed.run.manifest import finish_run
from tfmed.run.rundir import (ENSEMBLE_RUNS_FILE, as_reread, environment_info, output_run_dir,
                              refuse_output_inside_runs, refuse_used_output, resolve_run_dir, run_split_tables,
                              run_working_dir, runs_folder_of)

SAVED_RUN_RULES = ("mean", "rank")  # stacking needs out-of-fold training scores


class EnsembleRunsError(TfmedError):
    """Saved runs cannot be combined (different splits, tasks, views or a missing validation split)."""


def ensemble_runs(run_dirs: list[str | Path], output: str | Path | None = None, combine: str = "mean", *,
                  recalibration: str = "none", verify: bool = True, trust_pickles: bool = False) -> Path:
    """Combine saved runs into a new ensemble run directory; return it.

    Args:
        run_dirs: two or more run directories made on the same split.
        output: the new directory (must not exist or be empty; default
            ``runs/ensemble/TIMESTAMP``).
        combine: "mean" or "rank".
        recalibration: "none", "logistic" or "temperature": fitted on the
            combined validation scores before the thresholds are chosen (as
            ``evaluation.recalibration``). The runs themselves must not be
            recalibrated.
        verify, trust_pickles: as in :meth:`TrainedModel.load`; each run is
            checked against its manifest before any of its files is read.
    """
    if combine not in SAVED_RUN_RULES:
        raise EnsembleRunsError(f"--combine {combine!r} is not available for saved runs; use "
                                f"{' or '.join(SAVED_RUN_RULES)} (stacking needs out-of-fold training scores: "
                                "use model.mode: ensemble with combine: stacking)")
    runs = [resolve_run_dir(path) for path in run_dirs]
    if len(runs) < 2:
        raise EnsembleRunsError("give at least two run directories to combine")
    _refuse_repeated_runs(runs)
    refuse_output_inside_runs(output, runs)
    refuse_used_output(output, "runs")  # before any work, as output_run_dir checks again when it makes it
    models = [TrainedModel.load(run / "model", verify=verify, trust_pickles=trust_pickles) for run in runs]
    configs = [ExperimentConfig.from_run(run) for run in runs]
    _check_compatible(runs, configs, models)
    if combine == "rank":  # named as typed, offering only the rules saved runs allow
        refuse_rank(models[0].task, "--combine", " or ".join(f"--combine {rule}" for rule in SAVED_RUN_RULES
                                                               if rule != "rank"))
    refuse_fixed_threshold_on_ranks(models[0].threshold_method, combine, recalibration,
                                    threshold_key="the first run's evaluation.threshold", combine_key="--combine",
                                    recalibration_key="--recalibrate")
    if recalibration != "none":
        try:
            check_method(recalibration, models[0].task)
        except RecalibrationError as error:
            raise EnsembleRunsError(f"--recalibrate: {error}") from None
    names = _member_names(runs, configs)

    tables = {split: table for split, table in run_split_tables(
        runs[0], ("val", "test"), remedy="restore the data the runs were made on").items() if len(table)}
    member_scores = {split: {name: _saved_scores(run, split, table, model)
                             for name, run, model in zip(names, runs, models)}
                     for split, table in tables.items()}
    first = models[0]
    estimator = Ensemble.of_fitted([m.estimator for m in models], names, first.task,
                                   inputs=[ImageInputs(m.preprocess, m.stats) for m in models], combine=combine)
    val_members = [member_scores["val"][name] for name in names]
    estimator.combiner.fit(val_members, tables["val"].labels())
    scores = {split: estimator.combine_scores(members) for split, members in member_scores.items()}
    config = _ensemble_config(configs, names, combine, recalibration)
    model = TrainedModel(mode=estimator.name, task=first.task, classes=list(first.classes),
                         preprocess=first.preprocess, stats=first.stats, estimator=estimator,
                         threshold_method=first.threshold_method,
                         backbone=config.model_setting("backbone"), tta=first.tta,
                         views=first.views)
    summary = None
    if recalibration != "none":
        summary, scores = recalibrate(model, recalibration, "val", {split: (table.labels(), scores[split])
                                                                    for split, table in tables.items()})
    model.thresholds = select_thresholds(model.task, tables["val"].labels(), scores["val"],
                                         config.evaluation.target_sensitivity, config.evaluation.target_specificity,
                                         model.classes)
    if first.hierarchy:
        model.hierarchy = first.hierarchy
        choose_coarse_thresholds(model, tables["val"].labels(), scores["val"], config.evaluation)
    config.description = _description(runs, combine, recalibration if model.recalibration else "none",
                                      model.thresholds, model.coarse_thresholds)  # what was fitted

    metrics = {**scored_metrics(model, tables, scores, config.evaluation), **count_entries(tables),
               "tta_views": first.tta.view_count(), "member_runs": [str(r) for r in runs],
               "members": {split: compare_to_members(model.task, table.labels(), scores[split], member_scores[split])
                           for split, table in tables.items()},
               # the runs share one split, so their near-identical images and test split's origin are the first run's
               "near_duplicates": load_metrics(runs[0]).get("near_duplicates"),
               "test_origin": load_metrics(runs[0]).get("test_origin")}
    if summary is not None:
        metrics["recalibration"] = summary
    from tfmed.run.reporting import write_run_outputs

    with output_run_dir(output, "ensemble", runs_folder_of(runs[0], configs[0].runs_dir)) as out:
        log(f"combining {len(runs)} runs ({combine}) into {out}")
        config.to_yaml(out / "config.yaml")
        # "verified": false when --no-verify read the runs without checking them against their manifests; its
        # config.yaml names the first run's data, so relative paths are read from where that run was started
        environment = {**environment_info(config), "verified": verify}
        started_in = run_working_dir(runs[0])
        if started_in is not None:
            environment.update(cwd=str(started_in), command_cwd=environment["cwd"])
        (out / "environment.json").write_text(json.dumps(environment, indent=2))
        shutil.copyfile(runs[0] / "splits.csv", out / "splits.csv")
        (out / ENSEMBLE_RUNS_FILE).write_text(json.dumps(
            {"runs": [str(r) for r in runs], "members": names, "combine": combine, "recalibration": recalibration},
            indent=2))
        model.save(out / "model")
        write_run_outputs(out, config, model, tables, scores, metrics, member_scores)
        finish_run(out)
    return out


def _split_rows(run: Path) -> pd.DataFrame:
    """A run's ``splits.csv``: each row's image, split and label(s), which runs combined must share."""
    return pd.read_csv(run / "splits.csv", usecols=lambda c: c in ("image", "split", "label")
                       or c.startswith(LABEL_PREFIX), keep_default_na=False, dtype=str)


def _check_compatible(runs: list[Path], configs: list[ExperimentConfig], models: list[TrainedModel]) -> None:
    reference = _split_rows(runs[0])
    for run, config, model in zip(runs, configs, models):
        if config.model.mode not in choices(MemberConfig, "mode"):
            raise EnsembleRunsError(f"{run} is itself a combination (model.mode {config.model.mode}); combine "
                                    "the runs it is made of, or list its members in one model.mode: ensemble "
                                    "experiment")
        if config.split.method == "kfold":
            raise EnsembleRunsError(f"{run} used split.method kfold, so it has no validation scores to choose "
                                    "thresholds on; combine runs made with a validation split")
        splits = _split_rows(run)
        if len(splits) != len(reference) or not splits.equals(reference):
            differ = _first_difference(reference, splits)
            raise EnsembleRunsError(f"{run} does not share the split of {runs[0]} ({differ}); only runs made on "
                                    "the same data with the same split can be combined")
        if (model.task, list(model.classes)) != (models[0].task, list(models[0].classes)):
            raise EnsembleRunsError(f"{run} is a {model.task} model of classes {model.classes}, but {runs[0]} "
                                    f"is {models[0].task} of {models[0].classes}")
        if model.tta != models[0].tta:
            raise EnsembleRunsError(f"{run} and {runs[0]} use different test-time augmentation (tta) settings; "
                                    "combine runs with the same tta section")
        if model.views != models[0].views:
            raise EnsembleRunsError(f"{run} and {runs[0]} cut different 2-D views of their volumes (views "
                                    "settings); combine runs with the same views section")
        if model.recalibration is not None:
            raise EnsembleRunsError(f"{run} recalibrated its probabilities (evaluation.recalibration), and the "
                                    "combination is made of the runs' models as they were trained; combine runs "
                                    "without recalibration and recalibrate the combination (--recalibrate)")
        if model.hierarchy != models[0].hierarchy:
            raise EnsembleRunsError(f"{run} and {runs[0]} group their classes differently (evaluation.hierarchy "
                                    f"{model.hierarchy} against {models[0].hierarchy}); combine runs with the same "
                                    "hierarchy")
        differing = [item.name for item in dataclasses.fields(config.evaluation) if item.name != "recalibration"
                     and getattr(config.evaluation, item.name) != getattr(configs[0].evaluation, item.name)]
        if differing:  # the combination is evaluated one way: which run's would depend on the order given
            name = differing[0]
            raise EnsembleRunsError(f"{run} and {runs[0]} are evaluated differently (evaluation.{name} "
                                    f"{getattr(config.evaluation, name)!r} against "
                                    f"{getattr(configs[0].evaluation, name)!r}); combine runs with the same "
                                    "evaluation section")


def _refuse_repeated_runs(runs: list[Path]) -> None:
    """Refuse a run given twice (by any path to it): its scores would be combined with themselves.

    Example:
        >>> _refuse_repeated_runs([Path("runs/a/1"), Path("runs/b/1"), Path("runs/a/1")])
        Traceback (most recent call last):
        tfmed.run.ensemble_runs.EnsembleRunsError: run runs/a/1 is given twice; combine different runs, each once
    """
    seen: dict[Path, Path] = {}
    for run in runs:
        first = seen.setdefault(run.resolve(), run)
        if first is not run:
            also = "" if run == first else f" (as {first} and {run})"
            raise EnsembleRunsError(f"run {first} is given twice{also}; combine different runs, each once")


def _first_difference(reference: pd.DataFrame, other: pd.DataFrame) -> str:
    """Where two runs' split rows (:func:`_split_rows`) first differ, in words.

    Example:
        >>> a = pd.DataFrame({"image": ["x.png"], "split": ["val"], "label": ["0"]})
        >>> _first_difference(a, a.assign(label=["1"]))
        'row 1: x.png in val labelled 1, against x.png in val labelled 0'
    """
    if len(reference) != len(other) or list(reference.columns) != list(other.columns):
        return (f"{len(other)} rows against {len(reference)}" if len(reference) != len(other) else
                f"label columns {list(other.columns[2:])} against {list(reference.columns[2:])}")
    row = int(np.flatnonzero((reference.to_numpy() != other.to_numpy()).any(axis=1))[0])

    def described(frame):
        labels = ", ".join(frame.iloc[row][name] for name in frame.columns if name not in ("image", "split"))
        return f"{frame.iloc[row]['image']} in {frame.iloc[row]['split']} labelled {labels}"
    return f"row {row + 1}: {described(other)}, against {described(reference)}"


def _member_names(runs: list[Path], configs: list[ExperimentConfig]) -> list[str]:
    names = [config.name for config in configs]
    if len(set(names)) < len(names):
        names = [f"{config.name}_{run.name}" for config, run in zip(configs, runs)]
    return names


def _saved_scores(run: Path, split: str, table: ImageTable, model: TrainedModel) -> np.ndarray:
    """The run's saved scores of ``split``, in the table's row order."""
    frame = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    frame = frame[frame["split"] == split]
    ids = table.frame["image"].astype(str)
    frame = frame.set_index(pd.Index(as_reread(run, frame["id"], set(ids))))
    missing = [i for i in ids if i not in frame.index]
    if missing:
        raise EnsembleRunsError(f"{run}/predictions.csv has no {split} score for {missing[0]} "
                                f"({len(missing)} missing); was the run finished?")
    return predictions_column(frame.loc[ids], "score", model.classes).astype(np.float64)


def _description(runs: list[Path], combine: str, recalibration: str, thresholds: dict, coarse: dict) -> str:
    """``config.yaml``'s description of the combination: its runs and what was fitted on their validation scores
    (``thresholds`` and ``coarse`` thresholds: the model's, once chosen).

    Example:
        >>> _description([Path("runs/a/1"), Path("runs/b/1")], "rank", "none", {"youden": 0.4}, {}).split("; ")[1]
        'fitted on their validation scores: the rank references and the thresholds.'
    """
    fitted = [name for name, made in (("the rank references", combine == "rank"),
                                      (f"the {recalibration} recalibration", recalibration != "none"),
                                      ("the thresholds", bool(thresholds)),
                                      ("the coarse thresholds", bool(coarse))) if made]
    what = f"{', '.join(fitted[:-1])} and {fitted[-1]}" if len(fitted) > 1 else "".join(fitted) or "nothing"
    return (f"Ensemble ({combine}) of saved runs {', '.join(map(str, runs))}, combined with tfmed ensemble; "
            f"fitted on their validation scores: {what}.")


def _ensemble_config(configs: list[ExperimentConfig], names: list[str], combine: str,
                     recalibration: str) -> ExperimentConfig:
    """An experiment that describes the combination (each run as a member with its own preprocessing); its
    description is :func:`_description`'s, once the combination is fitted."""
    first = configs[0]
    members = [MemberConfig(name=name, mode=c.model.mode, seed=c.seed, backbone=c.model.backbone,
                            weights=c.model.weights, weights_dir=c.model.weights_dir, svm=c.model.svm,
                            finetune=c.model.finetune, preprocess=c.preprocess,
                            augment=c.augment if "augment" in MODE_SECTIONS[c.model.mode] else None,
                            balance=c.balance if "balance" in MODE_SECTIONS[c.model.mode] else None)
               for name, c in zip(names, configs)]
    # the members name their backbones; a member's weights left null take the model's (the first run's)
    model = ModelConfig(mode="ensemble", weights=first.model.weights, weights_dir=first.model.weights_dir,
                        ensemble=EnsembleConfig(members=members, combine=combine))
    # each member keeps its run's seed, so the combination's own is left at its default
    return dataclasses.replace(first, name=f"{first.name}_ensemble", description="", model=model, seed=0,
                               augment=type(first.augment)(), balance=type(first.balance)(),
                               evaluation=dataclasses.replace(first.evaluation, recalibration=recalibration))
