"""The ``tfmed`` command line.

    tfmed run experiments/pneumonia_mnist.yaml
    tfmed evaluate --model runs/pneumonia_mnist/TIMESTAMP [--data medmnist:PATH.npz#test]
    tfmed predict --model runs/pneumonia_mnist/TIMESTAMP image.png scans/ [--output out.csv]
    tfmed ensemble runs/pneumonia_mnist_svm/A runs/pneumonia_mnist_finetune/B --output runs/combined
    tfmed recalibrate --model runs/pneumonia_mnist/TIMESTAMP --data manifest:site_b_tuning.csv [--keep-thresholds]
    tfmed compare runs/pneumonia_mnist/A runs/pneumonia_mnist_finetune/B [--output comparison.csv]
    tfmed explain --model runs/pneumonia_mnist/TIMESTAMP [images ...] [--method gradcam] [--output DIR]
    tfmed export-run runs/pneumonia_mnist/TIMESTAMP share/pmnist --anonymise
    tfmed validate folder:data/my_xrays
    tfmed export-tfds folder:data/my_xrays exports/my_xrays_1.0.0 --version 1.0.0
    tfmed inspect scans/ct_series/ [--series UID]   (or a .nii(.gz)/.mhd/.nrrd file, or one image)
    tfmed sweep-layers experiments/pneumonia_mnist_svm.yaml
    tfmed runs [runs/] [--name pneumonia_mnist]
    tfmed backbones

Errors in the user's data or configuration print one clear message (no
traceback) and exit with status 2; Ctrl-C prints one line and exits with 130.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import signal
import sys
import typing
from pathlib import Path

from tfmed.config import UNKNOWN_LABEL, RecalibrationMethod
from tfmed.errors import TfmedError
from tfmed.progress import configure_logging, native_stderr_captured, progress_on_stderr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
RECALIBRATIONS = typing.get_args(RecalibrationMethod)  # none first
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it
TERMINATED = 143  # stopped by SIGTERM (128 + 15): kill, timeout, a job scheduler's stop
BROKEN_PIPE = 141  # the exit status of a command whose reader stopped early (128 + SIGPIPE), as shells report it


def _parser() -> argparse.ArgumentParser:
    examples = __doc__.split("\n\n", 1)[1]  # the module's docstring without its first line
    parser = argparse.ArgumentParser(
        prog="tfmed", formatter_class=argparse.RawDescriptionHelpFormatter, epilog="examples:\n" + examples,
        description="Transfer learning for medical image classification:\nrun experiments, then evaluate, "
                    "explain and share their runs.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run an experiment YAML end to end")
    run.add_argument("config", nargs="?", default=None, help="experiments/NAME.yaml")
    run.add_argument("--runs-dir", default=None, help="where run directories go (default: config's runs_dir)")
    run.add_argument("--resume", default=None, metavar="RUN",
                     help="finish a run that stopped (killed, Ctrl-C, an error) in its own directory, each "
                          "fine-tune from its last completed epoch; no CONFIG then")

    evaluate = verbs.add_parser("evaluate", help="evaluate a saved run on data")
    evaluate.add_argument("--model", required=True, help="run directory (runs/NAME/TIMESTAMP)")
    evaluate.add_argument("--data", default=None,
                          help="data source, e.g. medmnist:PATH.npz#test, folder:DIR, manifest:CSV, or a "
                               "YAML file with a data: section for settings a source string cannot give "
                               "(default: the run's own test split)")
    evaluate.add_argument("--output", default=None, help="output directory (default: RUN/evaluations/TIMESTAMP)")
    _add_subgroups_option(evaluate)
    _add_trust_options(evaluate)

    predict = verbs.add_parser("predict", help="score new images with a saved run")
    predict.add_argument("--model", required=True, help="run directory (runs/NAME/TIMESTAMP)")
    predict.add_argument("images", nargs="+", help="PNG/JPEG/DICOM files or folders (volumes: series folders or "
                         "NIfTI/MetaImage/NRRD files; for a model of lesion-centred views, one CSV of volumes and "
                         "centres)")
    predict.add_argument("--output", default=None, help="a new CSV file, never an existing one (default: print the "
                         "CSV to stdout, with the progress lines on stderr)")
    _add_trust_options(predict)

    ensemble = verbs.add_parser("ensemble", help="combine saved runs that share a split")
    ensemble.add_argument("runs", nargs="+", help="two or more run directories (runs/NAME/TIMESTAMP)")
    ensemble.add_argument("--output", default=None,
                          help="new run directory (default: ensemble/TIMESTAMP in the first run's runs folder)")
    ensemble.add_argument("--combine", default="mean",
                          help="mean (of probabilities) or rank (averaging against each run's validation scores)")
    ensemble.add_argument("--recalibrate", default="none", choices=RECALIBRATIONS,
                          help="recalibrate the combined probabilities on the validation split before the "
                               "thresholds are chosen (as evaluation.recalibration; default none)")
    _add_trust_options(ensemble)

    recalibrate = verbs.add_parser("recalibrate", help="fit a saved model's probabilities and thresholds to "
                                                       "another hospital's labelled images (a new run)")
    recalibrate.add_argument("--model", required=True, help="run directory (runs/NAME/TIMESTAMP)")
    recalibrate.add_argument("--data", required=True,
                             help="that hospital's labelled images to fit on, as tfmed evaluate --data takes; keep "
                                  "others to measure the result with tfmed evaluate")
    recalibrate.add_argument("--method", default="intercept", choices=RECALIBRATIONS[1:],
                             help="intercept (binary, multilabel: one shift on top of the run's own recalibration; "
                                  "default), logistic (binary, multilabel) or temperature (any task)")
    recalibrate.add_argument("--keep-thresholds", action="store_true",
                             help="carry the run's thresholds over to the new probabilities, so that each operating "
                                  "point chosen on validation decides every image as the run did (binary, "
                                  "multilabel; fixed stays 0.5 on the new probabilities), instead of choosing them "
                                  "on --data")
    recalibrate.add_argument("--output", default=None,
                             help="new run directory (default: NAME_recalibrated/TIMESTAMP in the run's own runs "
                                  "folder)")
    _add_subgroups_option(recalibrate)
    _add_trust_options(recalibrate)

    compare = verbs.add_parser("compare", help="paired tests of saved runs' AUCs on the same cases")
    compare.add_argument("runs", nargs="+", help="two or more run or evaluation directories; the first is "
                                                 "the reference")
    compare.add_argument("--output", default=None,
                         help="also write the table to this CSV file (a new file, never an existing one)")
    _add_verify_option(compare)

    explain = verbs.add_parser("explain", help="explanation maps (Grad-CAM and others) of a saved run")
    explain.add_argument("--model", required=True, help="run directory (runs/NAME/TIMESTAMP)")
    explain.add_argument("images", nargs="*", help="PNG/JPEG/DICOM files or folders (default: cases of the "
                                                   "run's test split, or validation split when it has none)")
    explain.add_argument("--method", default="gradcam",
                         help="gradcam, gradcam_pp, saliency, smoothgrad, integrated_gradients or occlusion")
    explain.add_argument("--output", default=None, help="output folder (default: RUN/explanations/TIMESTAMP)")
    explain.add_argument("--index", default=None,
                         help="class / label to explain, by number (0, 1, ...) or name (default: each image's "
                              "decided class; required for multilabel, and for multiclass without images)")
    explain.add_argument("--layer", default=None, help="Grad-CAM target layer (default: the backbone's last stage)")
    explain.add_argument("--per-group", type=int, default=None,
                         help="cases per group (TP, FP, FN, TN) when no images are given (default 2)")
    _add_trust_options(explain)

    export = verbs.add_parser("export-run", help="copy a run to share it, optionally anonymised")
    export.add_argument("run", help="run directory (runs/NAME/TIMESTAMP)")
    export.add_argument("out", help="new folder for the copy (must not exist)")
    export.add_argument("--anonymise", action="store_true",
                        help="replace patient ids by salted hashes and make paths relative")
    export.add_argument("--salt", default=None,
                        help="salt of the hashes (default: random, never stored); the same salt gives the same "
                             "hashes across exports")
    _add_verify_option(export)

    tfds_export = verbs.add_parser("export-tfds", help="write a data source as a TensorFlow Datasets data set "
                                                      "(read back with tfds.builder_from_directory or tfds:OUT_DIR)")
    tfds_export.add_argument("data", help="pneumonia_mnist, medmnist:PATH.npz, manifest:CSV, folder:DIR, dicom:DIR, "
                                          "... or an experiment YAML (its data section)")
    tfds_export.add_argument("out", help="new folder for the data set (must not exist)")
    tfds_export.add_argument("--name", default=None,
                             help="the data set's TFDS name (default: from the source, e.g. pneumonia_mnist)")
    tfds_export.add_argument("--version", default="1.0.0", help="MAJOR.MINOR.PATCH (default 1.0.0)")
    tfds_export.add_argument("--description", default=None, help="default: the source, date and tfmed version")
    tfds_export.add_argument("--citation", default=None,
                             help="how to cite the data (default: the embedded data set's attribution, if any)")

    validate = verbs.add_parser("validate", help="check a data source and report every problem")
    validate.add_argument("data", help="pneumonia_mnist, medmnist:PATH.npz, manifest:CSV, folder:DIR, dicom:DIR, "
                                       "tfds:NAME or an experiment YAML (its views, for rows that are volumes)")
    validate.add_argument("--need-patient-ids", action="store_true",
                          help="also require a patient id on every row")
    validate.add_argument("--near-duplicate-rms", type=float, default=None, metavar="LEVELS",
                          help="list images whose 16 x 16 grey fingerprints differ by at most LEVELS grey levels "
                               "(default: the YAML's split.near_duplicate_rms, else 4)")

    inspect = verbs.add_parser("inspect", help="describe an image, DICOM series folder or volume file before "
                                              "configuring windows and views")
    inspect.add_argument("path", help="a folder of DICOM files, a NIfTI/MetaImage/NRRD file, or one image file")
    inspect.add_argument("--series", default=None,
                         help="SeriesInstanceUID to read when the folder holds several series")

    sweep = verbs.add_parser("sweep-layers", help="compare SVM features from each backbone tap")
    sweep.add_argument("config", help="experiments/NAME.yaml (svm mode)")
    sweep.add_argument("--taps", nargs="+", default=None, help="taps to compare (default: early middle late)")
    sweep.add_argument("--runs-dir", default=None,
                       help="where the sweep's folder goes (default: config's runs_dir), as for tfmed run")

    runs = verbs.add_parser("runs", help="list the runs under a folder: finished, failed (and why), incomplete or "
                                        "damaged (and why), with their val and test AUC")
    runs.add_argument("runs_dir", nargs="?", default="runs", help="the folder runs are written to (default: runs)")
    runs.add_argument("--name", default=None, help="only the runs of this experiment")

    listing = verbs.add_parser("backbones", help="list the available backbones and whether their ImageNet weights "
                                                 "are available now (found locally, downloadable, or not)")
    listing.add_argument("--weights-dir", default=None,
                         help="an extra folder searched first for weights files, as model.weights_dir")
    return parser


def _add_verify_option(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("--no-verify", dest="verify", action="store_false",
                      help="read the run even if its files differ from its MANIFEST.sha256 or it has none "
                           "(an incomplete run); the output says the check was skipped")


def _add_subgroups_option(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("--subgroups", default=None, type=_names,
                      help="comma-separated attributes whose groups get their own figures, among site, view, sex, "
                           "age (default: the run's evaluation.subgroups), e.g. sex,age; \"\" for none")


def _names(text: str) -> list[str]:
    """A comma-separated option as a list: ``"sex, age"`` -> ``["sex", "age"]``; ``""`` -> ``[]``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_trust_options(verb: argparse.ArgumentParser) -> None:
    _add_verify_option(verb)
    verb.add_argument("--trust-pickles", action="store_true",
                      help="allow an SVM pickle saved by tfmed 0.1; unpickling runs any code in the file, so "
                           "use it only for runs you made yourself")


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM: raised where it runs, so that every clean-up of Ctrl-C (``FAILED.txt``, an
    unfinished evaluation's folder removed) happens too."""


@contextlib.contextmanager
def sigterm_interrupts():
    """While active, SIGTERM raises :class:`Terminated` (main thread only; the earlier handler comes back after)."""
    def stop(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfmed`` console script."""
    args = _parser().parse_args(argv)
    configure_logging()
    with sigterm_interrupts():
        return _run_command(args)


def _run_command(args) -> int:
    try:
        import_tensorflow_quietly()
        return COMMANDS[args.verb](args)
    except BrokenPipeError:  # the reader of standard output stopped early (tfmed backbones | head -1): no error
        try:  # what Python would still flush at exit goes nowhere, rather than failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # a standard output without a file descriptor
            pass
        return BROKEN_PIPE
    except (TfmedError, OSError) as error:  # the user's data, config or files (a full disk, a file as folder)
        print(f"tfmed: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("tfmed: stopped (SIGTERM)", file=sys.stderr)
        return TERMINATED
    except KeyboardInterrupt:  # Ctrl-C: one line, not TensorFlow's stack (a run has logged its FAILED.txt)
        print("tfmed: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its native start-up lines (absl, oneDNN, CUDA probes) kept off the terminal.

    Those lines are written by C++ straight to file descriptor 2 while the library
    loads, whatever ``TF_CPP_MIN_LOG_LEVEL`` says; they are noise on a CPU machine.
    Python errors raised by the import still reach the user.
    """
    if "tensorflow" in sys.modules:
        return
    with native_stderr_captured():  # what it catches is dropped
        import tensorflow  # noqa: F401


def _cmd_run(args) -> int:
    from tfmed.config import ExperimentConfig
    from tfmed.run.evaluate import load_metrics
    from tfmed.run.experiment import resume_experiment, run_experiment
    from tfmed.run.reporting import summary_text

    if (args.config is None) == (args.resume is None):
        raise TfmedError("give an experiment YAML to run, or --resume RUN to finish a run that stopped (not both)")
    if args.resume is not None and args.runs_dir is not None:
        raise TfmedError("--runs-dir is not used with --resume: the run finishes in its own directory")
    if args.resume is not None:
        run_dir = resume_experiment(args.resume)
    else:  # stopped: it logs where its FAILED.txt is
        config = ExperimentConfig.from_yaml(args.config)
        with config_errors_named(args.config, config.name):
            run_dir = run_experiment(config, runs_dir=args.runs_dir)
    if run_dir is None:  # a multi-worker feature extraction, on a worker other than the first
        print("features written; worker 0 (TF_CONFIG task index 0) writes the run", flush=True)
        return 0
    print(summary_text(load_metrics(run_dir)), flush=True)
    return 0


def _cmd_evaluate(args) -> int:
    from tfmed.run.evaluate import evaluate_run

    output = evaluate_run(args.model, args.data, args.output, verify=args.verify, trust_pickles=args.trust_pickles,
                          subgroups=args.subgroups)
    print(f"wrote {output}")
    return 0


def _cmd_recalibrate(args) -> int:
    from tfmed.run.evaluate import load_metrics
    from tfmed.run.recalibrate_run import recalibrate_run
    from tfmed.run.reporting import summary_text

    out = recalibrate_run(args.model, args.data, args.output, args.method, keep_thresholds=args.keep_thresholds,
                          verify=args.verify, trust_pickles=args.trust_pickles, subgroups=args.subgroups)
    print(summary_text(load_metrics(out)), flush=True)
    print(f"wrote {out}")
    return 0


def _cmd_runs(args) -> int:
    from tfmed.run.list_runs import format_runs, list_runs

    print(format_runs(list_runs(args.runs_dir, args.name)))
    return 0


def _cmd_predict(args) -> int:
    from tfmed.run.predict import predict_images
    from tfmed.run.rundir import refuse_output_inside_runs, resolve_run_dir

    refuse_output_inside_runs(args.output, [resolve_run_dir(args.model)])
    if args.output:
        output = _new_file(args.output, "predictions")
        frame = predict_images(args.model, args.images, verify=args.verify, trust_pickles=args.trust_pickles)
        _write_new_csv(frame, output)
        print(f"wrote {len(frame)} predictions to {output}")
        return 0
    with progress_on_stderr():  # standard output carries the CSV alone
        frame = predict_images(args.model, args.images, verify=args.verify, trust_pickles=args.trust_pickles)
    print(frame.to_csv(index=False), end="")
    return 0


def _new_file(output: str, what: str) -> Path:
    """``--output`` as a path, refused before any work when it exists or its folder is a file."""
    output = Path(output)
    if output.exists() or output.is_symlink():
        raise TfmedError(f"--output {output} already exists; {what} never overwrite a file, so give a new file name")
    if output.parent.exists() and not output.parent.is_dir():
        raise TfmedError(f"--output {output}: {output.parent} is a file, not a folder; give a file in a folder")
    return output


def _write_new_csv(frame, output: Path) -> None:
    """Write ``frame`` to ``output``, a file :func:`_new_file` accepted, making its missing folders."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "x", encoding="utf-8", newline="") as file:  # "x": made by no one meanwhile
        frame.to_csv(file, index=False)


def _cmd_ensemble(args) -> int:
    from tfmed.run.ensemble_runs import ensemble_runs
    from tfmed.run.evaluate import load_metrics
    from tfmed.run.reporting import summary_text

    out = ensemble_runs(args.runs, args.output, args.combine, recalibration=args.recalibrate, verify=args.verify,
                        trust_pickles=args.trust_pickles)
    print(summary_text(load_metrics(out)), flush=True)
    print(f"wrote {out}")
    return 0


def _cmd_compare(args) -> int:
    import pandas as pd

    from tfmed.run.compare_runs import compare_runs, test_origin
    from tfmed.run.rundir import refuse_output_inside_runs

    refuse_output_inside_runs(args.output, args.runs)
    output = _new_file(args.output, "comparisons") if args.output else None
    table = compare_runs(args.runs, verify=args.verify)
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table.to_string(index=False, na_rep="n/a"))
    origin = test_origin(args.runs[0]) if (table["split"] == "test").any() else None
    if origin:
        print(f"test: {origin}")
    print(f"reference: {args.runs[0]}; difference = run AUC - reference AUC; p from the paired test the column "
          "test names (delong: DeLong's, or its extension to macro AUCs; a permutation test where their variance "
          "is 0)")
    if output:
        _write_new_csv(table, output)
        print(f"wrote {output}")
    return 0


def _cmd_explain(args) -> int:
    from tfmed.run.explain import explain_run

    out = explain_run(args.model, args.images, method=args.method, output=args.output, index=args.index,
                      layer=args.layer, per_group=args.per_group, verify=args.verify,
                      trust_pickles=args.trust_pickles)
    print(f"wrote {out}")
    return 0


def _cmd_export(args) -> int:
    from tfmed.run.export import export_run

    out = export_run(args.run, args.out, anonymise=args.anonymise, salt=args.salt, verify=args.verify)
    print(f"wrote {out}")
    return 0


def _cmd_export_tfds(args) -> int:
    from tfmed.data.sources import EMBEDDED
    from tfmed.data.tfds_export import export_tfds, suggested_name

    table, data, views = _load_any_source(args.data)
    if views is not None and views.enabled:
        raise TfmedError(f"{args.data} reads volumes (views.enabled); export-tfds writes 2-D images only")
    if data.exclude_bad_rows:
        raise TfmedError(f"{args.data}: data.exclude_bad_rows is true, but export-tfds exports every row of the "
                         "source and leaves none out; remove the setting, then repair or remove the rows that "
                         "validation names (tfmed validate lists them)")
    name = args.name or suggested_name(data.source if data.source in EMBEDDED or not data.path
                                       else Path(data.path.split("#")[0]).stem or data.source)
    citation = args.citation or (EMBEDDED[data.source].licence if data.source in EMBEDDED else None)
    summary = export_tfds(table, args.out, name=name, version=args.version, description=args.description,
                          citation=citation, max_pixels=data.max_image_pixels)
    print(summary.format())
    return 0


@contextlib.contextmanager
def config_errors_named(path, name: str):
    """Make an error about a setting, raised once the experiment file ``path`` has been read (by the mode, or
    against the data), name that file, as errors of reading the file do (instead of the experiment's ``name``):
    a message that starts with a setting's dotted key (``preprocess.channels``), an unknown backbone or tap.
    Errors about files (``data.csv: not found``) or a command-line option (``--taps: ...``) stay as they are.

    Example:
        >>> from tfmed.config import ConfigError
        >>> with config_errors_named("experiments/x.yaml", "x"):
        ...     raise ConfigError("x: evaluation.threshold is set, but ...")
        Traceback (most recent call last):
        tfmed.config.ConfigError: experiments/x.yaml: evaluation.threshold is set, but ...
    """
    from tfmed.backbones import BackboneInputError, UnknownBackboneError
    from tfmed.config import ConfigError
    from tfmed.modes.features import UnknownTapError

    keys = {UnknownBackboneError: "model.backbone: ", UnknownTapError: "model.svm.taps: ",
            BackboneInputError: "preprocess.image_size: "}  # the input size a backbone refuses
    try:
        yield
    except TfmedError as error:
        message = str(error)
        message = message[len(name) + 2:] if message.startswith(f"{name}: ") else message
        key = "" if message.startswith(("model.", "--")) else keys.get(type(error), "")  # --taps: a flag's
        if message.startswith(str(path)) or not (key or _starts_with_a_setting(message)):
            raise  # already named, or not about a setting (the data's files, say)
        raise ConfigError(f"{path}: {key}{message}") from None


def _starts_with_a_setting(message: str) -> bool:
    """Whether ``message`` starts with a setting's dotted key, e.g. ``split.folds`` (not a file, ``data.csv``).

    Example:
        >>> _starts_with_a_setting("preprocess.channels is 1"), _starts_with_a_setting("data.csv: not found")
        (True, False)
    """
    from tfmed.config import ExperimentConfig

    section, dot, rest = message.partition(".")
    owner = typing.get_type_hints(ExperimentConfig).get(section) if dot else None
    key = re.match(r"[a-z_]+", rest)
    return dataclasses.is_dataclass(owner) and key is not None and key.group() in {
        field.name for field in dataclasses.fields(owner)}


def _cmd_validate(args) -> int:
    if args.near_duplicate_rms is not None and not args.near_duplicate_rms >= 0:
        raise TfmedError(f"--near-duplicate-rms is {args.near_duplicate_rms:g}; give a number of grey levels >= 0")
    experiment = _experiment_of(args.data)
    if experiment is None:
        return _validate(args, None)
    with config_errors_named(args.data, experiment.name):
        return _validate(args, experiment)


def _validate(args, experiment) -> int:
    from tfmed.config import EvaluationConfig, SplitConfig
    from tfmed.data.validate import validate_table
    from tfmed.evaluation.subgroups import group_counts

    if experiment is not None:  # the model's names and weights, as a run checks them before its data
        from tfmed.modes import get_mode

        get_mode(experiment.model.mode).check_before_data(experiment)
    table, data, views = _load_any_source(args.data, experiment)
    need_ids = args.need_patient_ids
    if experiment is not None:  # the patient ids its split needs
        from tfmed.run.experiment import needs_patient_ids

        need_ids = need_ids or needs_patient_ids(experiment, table)
    report = validate_table(table, need_patient_ids=need_ids, max_pixels=data.max_image_pixels,
                            need_two_classes=True, views=views,
                            intensity=experiment.preprocess.intensity if experiment is not None else None)
    print(f"{len(table)} rows, task {table.task}, classes {table.classes}")
    sites = table.frame["site"].value_counts(sort=False)
    if len(sites) > 1:  # e.g. the parts of a merged section: what split.test_sites can hold out
        print("sites: " + ", ".join(f"{site} {count}" for site, count in sorted(sites.items())))
    bands = (experiment.evaluation if experiment is not None else EvaluationConfig()).age_bands
    for attribute in ("sex", "age"):  # what evaluation.subgroups can give figures by
        if table.frame[attribute].notna().any():
            print(f"{attribute}: " + ", ".join(f"{group} {count}" for group, count
                                               in group_counts(table.frame, attribute, bands).items()))
    if table.task == "multilabel":   # images per label that are positive, and those whose label is unknown
        print("labels: " + "; ".join(
            f"{name} {int((table.frame[column] == 1).sum())} positive, "
            f"{int((table.frame[column] == UNKNOWN_LABEL).sum())} unknown"
            for name, column in zip(table.classes, table.label_columns)))
    excluding = experiment is not None and experiment.data.exclude_bad_rows
    print(report.format(EXCLUDED_REMEDY) if excluding else report.format())
    leak = None
    if experiment is None:
        usable = report.ok
        leak = _split_leak(table)  # a source's own splits (a publisher's lists), checked as a run checks them
        if leak:
            print(leak)
    else:
        kept = _kept_rows(experiment, table, report)  # None: the run would stop on the problems above
        usable = kept is not None
        if usable:  # near-identical images then counted in the split the run makes
            text, table = _experiment_check(experiment, kept)
            print(text)
        elif experiment.split.method == "predefined":  # the source's own splits, which the run would keep
            leak = _split_leak(table)
            if leak:
                print(leak)
    tolerance = args.near_duplicate_rms
    if tolerance is None:
        tolerance = (experiment.split if experiment is not None else SplitConfig()).near_duplicate_rms
    if tolerance is not None and not (views is not None and views.enabled):
        if usable:
            print(_near_duplicate_text(table, tolerance, data.max_image_pixels))
        else:
            print("near-identical images: looked for once the problems above are fixed")
    return 0 if usable and not leak else 1


# how ``tfmed validate`` ends its report of bad rows when the experiment leaves them out, as its run does
EXCLUDED_REMEDY = "leave them out as the run does (data.exclude_bad_rows is true; it lists them in excluded_rows.csv)"


def _experiment_of(spec: str):
    """The experiment of a YAML given to ``tfmed validate`` (None for a source spec)."""
    from tfmed.config import ExperimentConfig, is_experiment_file

    return ExperimentConfig.from_yaml(spec) if is_experiment_file(spec) else None


def _kept_rows(experiment, table, report):
    """The rows an experiment's run goes on with: all, or those ``data.exclude_bad_rows`` keeps (the rows
    left out said); None when the run would stop on the report's problems."""
    from tfmed.data.validate import DataValidationError, apply_validation, excluded_summary

    try:
        kept = apply_validation(table, report, exclude_bad_rows=experiment.data.exclude_bad_rows)
    except DataValidationError:  # the report printed says what to fix
        return None
    if not report.ok:
        print(f"left out of the data, as the run leaves them out: {excluded_summary(kept.excluded)}; the checks "
              f"below are made on the other {len(kept)} rows")
    return kept


def _split_leak(table) -> str | None:
    """The run's leakage check of the splits a source gives its rows (e.g. a publisher's list files): its
    message when a patient is in two of them, else None."""
    from tfmed.data.splits import LeakageError, check_no_leakage

    try:
        check_no_leakage(table)
    except LeakageError as error:
        return str(error)
    return None


def _experiment_check(experiment, table):
    """What ``tfmed validate EXPERIMENT.yaml`` adds on the rows its run keeps (``table``): the split the run
    would make (k-fold feasibility included) and the mode's settings checked against the data's task; with
    the split table."""
    from tfmed.run.experiment import check_config_fits_data, run_inputs, split_data

    split = split_data(experiment, table)
    check_config_fits_data(experiment, split)
    run_inputs(experiment, split)  # statistics the training images must allow (histogram: not all flat)
    counts = ", ".join(f"{name} {int((split.frame['split'] == name).sum())}" for name in ("train", "val", "test"))
    folds = f", {experiment.split.folds} folds over train" if experiment.split.method == "kfold" else ""
    text = (f"experiment {experiment.name}: the run's checks passed (backbone, taps and weights; split "
            f"{counts}{folds}; {experiment.model.mode} settings fit the {split.task} data)")
    if experiment.evaluation.hierarchy:  # the images of each coarse class, as the run will answer for them
        images = split.frame["label"].value_counts()
        text += "\ncoarse classes: " + ", ".join(
            f"{coarse} {sum(int(images.get(split.classes.index(fine), 0)) for fine in fines)} ({' + '.join(fines)})"
            for coarse, fines in experiment.evaluation.hierarchy.items())
    return text, split


def _near_duplicate_text(table, tolerance: float, max_pixels: int | None, shown: int = 10) -> str:
    """What ``tfmed validate`` prints of a source's near-identical images: each group with the split of
    each image (when the source has splits), and how many val/test images copy a training image."""
    from tfmed.data.near_duplicates import (GROUP_COLUMN, conflict_note, conflicting_labels, mark_near_duplicates,
                                            twins_in_train)

    marked_table = mark_near_duplicates(table, tolerance, max_pixels=max_pixels)
    frame = marked_table.frame
    marked = frame.dropna(subset=[GROUP_COLUMN])
    groups = [rows for _, rows in marked.groupby(GROUP_COLUMN, sort=True)]
    groups.sort(key=lambda rows: -rows["split"].nunique())  # groups that cross splits first
    lines = [f"near-identical images (16 x 16 grey fingerprints within {tolerance:g} grey levels): "
             f"{len(marked)} images in {len(groups)} groups"]
    for rows in groups[:shown]:
        lines.append("  " + ", ".join(f"{image} ({split})" if isinstance(split, str) else str(image)
                                      for image, split in zip(rows["image"], rows["split"])))
    if len(groups) > shown:
        lines.append(f"  ... and {len(groups) - shown} more groups")
    lines += [f"{count} {split} image(s) have a near-identical image in train"
              for split, count in twins_in_train(marked_table).items()]
    conflicts = conflicting_labels(marked_table)
    if conflicts:
        lines.append(f"warning: {conflict_note(conflicts)}")
    return "\n".join(lines)


def _load_any_source(spec: str, config=None):
    """The table of a source spec or of an experiment YAML's data section (``config``, when already
    read), with that section and the experiment's views of volumes (None for a source spec)."""
    from tfmed.data.sources import load_source, parse_source_spec

    from tfmed.config import DataConfig, ViewsConfig

    config = config if config is not None else _experiment_of(spec)
    if config is not None:
        return load_source(config.data), config.data, config.views
    data = parse_source_spec(spec)
    views = ViewsConfig(enabled=True) if data.source in DataConfig.VOLUME_SOURCES else None  # centred views
    return load_source(data), data, views


def _cmd_inspect(args) -> int:
    from tfmed.data.volumes import format_inspection, inspect

    print(format_inspection(inspect(args.path, args.series)))
    return 0


def _cmd_sweep(args) -> int:
    from tfmed.config import ExperimentConfig
    from tfmed.run.sweep import sweep_experiment

    config = ExperimentConfig.from_yaml(args.config)
    with config_errors_named(args.config, config.name):
        table, path = sweep_experiment(config, taps=args.taps, runs_dir=args.runs_dir)
    print(table)
    print(f"saved {path}")
    return 0


def _cmd_backbones(args) -> int:
    from tfmed import backbones
    from tfmed.backbones.factory import imagenet_weights_status

    for name in backbones.list():
        spec = backbones.get_spec(name)
        stages = spec.stage_taps()
        others = [t for t in spec.taps if t not in stages]
        taps = ", ".join([f"stage1-{len(stages)}"] + others)
        status = imagenet_weights_status(name, weights_dir=args.weights_dir)
        print(f"{name:<22} {spec.default_size:>4} px  preprocessing {spec.preprocessing:<6} "
              f"taps: {taps:<30} weights: {status}")
    return 0


COMMANDS = {"run": _cmd_run, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "ensemble": _cmd_ensemble,
            "recalibrate": _cmd_recalibrate,
            "compare": _cmd_compare,
            "explain": _cmd_explain, "export-run": _cmd_export, "validate": _cmd_validate, "sweep-layers": _cmd_sweep,
            "backbones": _cmd_backbones, "inspect": _cmd_inspect, "export-tfds": _cmd_export_tfds,
            "runs": _cmd_runs}

if __name__ == "__main__":
    sys.exit(main())
