"""``tfmed recalibrate``: fit a saved model's probabilities and thresholds to another hospital's images.

A model taken to another hospital often keeps much of its ranking (its AUC)
but not its probabilities or its operating points, since the prevalence, the
scanners and the patients differ. Updating the model there (Steyerberg,
Clinical Prediction Models, 2019, ch. 20) refits the calibration on a sample
of that hospital's labelled images and chooses the thresholds again on them,
leaving the network and its features as they are.

:func:`recalibrate_run` scores those images with the saved model (before any
recalibration it had) or, for ``intercept``, as the run gives them, fits the
recalibration on them (:mod:`tfmed.evaluation.recalibration`), chooses the thresholds on the
recalibrated scores, and writes a new run directory: the same model with the
new recalibration and thresholds, its ``val`` split the images it was fitted
on, so its figures are in-sample. Measure it with ``tfmed evaluate --data`` on
other images of that hospital.

Example:
    >>> out = recalibrate_run("runs/pneumonia_mnist/20261205-070038", "manifest:site_b_tuning.csv",
    ...                       "runs/site_b")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tfmed.config import ExperimentConfig
from tfmed.errors import TfmedError
from tfmed.evaluation.intervals import EvaluationError
from tfmed.evaluation.recalibration import (RecalibrationError, carried_thresholds, check_method,
                                            probability_scores)
from tfmed.evaluation.thresholds import select_thresholds
from tfmed.progress import log
from tfmed.run.artifact import TrainedModel
from tfmed.run.evaluate import (check_data_subgroups, evaluation_data, fit_model_labels, read_labelled_data,
                                subgroup_setting, write_excluded)
from tfmed.run.experiment import choose_coarse_thresholds, count_entries, recalibrate, scored_metrics
from tfmed.run.manifest import finish_run
from tfmed.run.reporting import (coarse_sentences, recalibration_sentences, subgroup_sentences, thresholds_chosen_on,
                                 write_outputs)
from tfmed.run.rundir import (PROVENANCE_FILE, environment_info, json_object, output_run_dir, runs_folder_of,
                              refuse_output_inside_runs, refuse_used_output, resolve_run_dir)


class RecalibrateRunError(TfmedError):
    """A saved model cannot be recalibrated on the given images."""


def recalibrate_run(run_dir: str | Path, data: str, output: str | Path | None = None, method: str = "intercept", *,
                    keep_thresholds: bool = False, verify: bool = True, trust_pickles: bool = False,
                    subgroups: list[str] | None = None) -> Path:
    """Recalibrate the model of ``run_dir`` on the labelled images ``data`` names and choose its thresholds
    there (or keep the run's decisions); return the new run directory (``output``, or
    ``runs/NAME_recalibrated/TIMESTAMP``).

    Args:
        run_dir: a finished run (checked against its manifest first, see :meth:`TrainedModel.load`).
        data: a source spec or a YAML file with a ``data:`` section, as ``tfmed evaluate --data`` takes;
            every row is used, so name a part of the hospital's images and keep the rest for
            ``tfmed evaluate``.
        method: "intercept" (binary, multilabel: the run's own recalibration kept, one shift of the logits
            per label fitted on top, so that as many cases are predicted as occur: the fewest numbers to fit,
            the safe choice for a small sample), "logistic" (binary, multilabel: slope and intercept) or
            "temperature" (any task); the last two replace the run's own recalibration.
        keep_thresholds: instead of choosing thresholds on ``data``, carry the run's over to the new
            probabilities, so that every operating point decides each image as the run did (binary,
            multilabel; ``fixed`` stays 0.5): only the probabilities change.
        subgroups: attributes (site, view, sex, age) whose groups get their own figures, instead of the run's
            ``evaluation.subgroups`` (as ``tfmed evaluate --subgroups``), e.g. ``["site"]`` for data that do not
            record sex and age; the new run keeps them.

    Raises:
        RecalibrateRunError: the images cannot support the fit (one class only, scores that separate the
            classes completely or fall as the outcome rises), or ``method`` does not suit the model.
    """
    run = resolve_run_dir(run_dir)
    refuse_output_inside_runs(output, [run])
    refuse_used_output(output, "runs")  # before any work, as output_run_dir checks again when it makes it
    model = TrainedModel.load(run / "model", verify=verify, trust_pickles=trust_pickles)
    try:
        check_method(method, model.task)
    except RecalibrationError as error:
        raise RecalibrateRunError(f"--method: {error}") from None
    if keep_thresholds and model.task == "multiclass":
        raise RecalibrateRunError("--keep-thresholds: a multiclass model decides by its most probable class, which a "
                                  "temperature never changes, so it has no thresholds to keep; leave the option out")
    config = ExperimentConfig.from_run(run)
    if subgroups is not None:
        config.evaluation = subgroup_setting(config.evaluation, subgroups)
    parsed = evaluation_data(data, config.data, model.classes if model.task == "multilabel" else None)
    table, source = read_labelled_data(data, parsed, model, config)
    table = fit_model_labels(table, model, data)
    check_data_subgroups(config.evaluation.subgroups, table, data, subgroups is not None)
    home = model.recalibration  # the run's thresholds were chosen on these probabilities
    if method != "intercept" and home is not None:
        log(f"the run's own recalibration ({home.describe()}) is replaced by one fitted on {data}")
        model.recalibration = None  # the fit starts from the model's own scores
    previous = model.recalibration  # an intercept is fitted on top of the run's own recalibration
    log(f"scoring {len(table)} images from {source}")
    before = model.predict(table)
    summary, after = recalibrate(model, method, "val", {"val": (table.labels(), before)})
    if not summary["applied"]:
        raise RecalibrateRunError(f"{data}: {summary['reason']}; give more of the hospital's images, with both "
                                  "outcomes and some overlap between them")
    scores = after["val"]
    if home is not previous:  # "before" is the run's model as it was, its own recalibration included
        summary["figures"]["val"]["before"] = probability_scores(model.task, table.labels(), home.apply(before))
    model.recalibration = model.recalibration.after(previous)
    summary["fit"] = model.recalibration.to_json()
    summary["thresholds"] = "kept" if keep_thresholds else "chosen"
    if keep_thresholds:
        try:
            model.thresholds = carried_thresholds(model.thresholds, home, model.recalibration)
        except RecalibrationError as error:
            raise RecalibrateRunError(f"--keep-thresholds: {error}; choose thresholds on {data} instead (leave "
                                      "the option out), or fit --method intercept") from None
        where = "its thresholds carried over from that run (each image decided as the run decided it)"
    else:
        try:
            model.thresholds = select_thresholds(model.task, table.labels(), scores,
                                                 config.evaluation.target_sensitivity,
                                                 config.evaluation.target_specificity, model.classes)
        except EvaluationError as error:
            raise RecalibrateRunError(f"{data}: thresholds cannot be chosen on these images ({error}); give more "
                                      "of the hospital's images, with both outcomes of every label, or keep the "
                                      "run's thresholds with --keep-thresholds") from None
        if model.hierarchy:
            choose_coarse_thresholds(model, table.labels(), scores, config.evaluation)
        where = "its thresholds chosen on them"
    if model.task == "multiclass" and not model.hierarchy:
        where = "each image's class its most probable one (a multi-class model has no thresholds)"

    new_config = dataclasses.replace(
        config, name=f"{config.name}_recalibrated", data=parsed,
        evaluation=dataclasses.replace(config.evaluation, recalibration=method),
        description=(f"The model of {run} ({config.name}), recalibrated ({method}) on {source}, {where}; the "
                     f"network is that run's. {config.description or ''}").strip())
    provenance = {"run": str(run), "data": data, "method": method,
                  "thresholds": "kept" if keep_thresholds else "chosen"}
    if keep_thresholds:  # where the run had them from (a recalibrated run's own, or carried over to it)
        provenance["thresholds_chosen_on"] = thresholds_chosen_on(config, json_object(run / PROVENANCE_FILE))
    metrics = {**scored_metrics(model, {"val": table}, {"val": scores}, config.evaluation), "source": source,
               "recalibrated_from": str(run), **count_entries({"val": table}), "tta_views": model.tta.view_count(),
               "recalibration": summary}
    in_sample = ("the probabilities' figures are in-sample, the decisions' are not" if keep_thresholds
                 else "every figure here is in-sample")
    notes = [f"The model of {run}, recalibrated on these images ({source}), {where}: {in_sample}. Measure it with "
             "tfmed evaluate --data on other images of the same hospital."]
    with output_run_dir(output, f"{config.name}_recalibrated", runs_folder_of(run, config.runs_dir)) as out:
        log(f"writing the recalibrated model to {out}")
        new_config.to_yaml(out / "config.yaml")
        # "verified": false when --no-verify read the run without checking it against its manifest
        (out / "environment.json").write_text(json.dumps({**environment_info(new_config), "verified": verify},
                                                         indent=2))
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
        splits = table.frame.drop(columns=["array_index"], errors="ignore").assign(split="val")
        splits.to_csv(out / "splits.csv", index=False)
        excluded = write_excluded(out, table, data)
        model.save(out / "model")
        write_outputs(out, title=f"{new_config.name}", source=source, model=model, parts={"val": table},
                      scores={"val": scores}, metrics=metrics,
                      notes=notes + recalibration_sentences(metrics) + subgroup_sentences(metrics)
                      + coarse_sentences(metrics),
                      model_facts={"mode": model.mode, "backbone": model.backbone,
                                   "recalibration": model.recalibration.describe()},
                      excluded=excluded, chosen_on=thresholds_chosen_on(config, provenance))
        finish_run(out)
    return out

