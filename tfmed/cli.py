"""The ``tfmed`` command line.

    tfmed run experiments/pneumonia_mnist.yaml
    tfmed evaluate --model runs/pneumonia_mnist/TIMESTAMP [--data medmnist:PATH.npz#test]
    tfmed predict --model runs/pneumonia_mnist/TIMESTAMP image.png scans/ [--output out.csv]
    tfmed validate folder:data/my_xrays
    tfmed sweep-layers experiments/pneumonia_mnist.yaml
    tfmed backbones

Errors in the user's data or configuration print one clear message (no
traceback) and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfmed", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run an experiment YAML end to end")
    run.add_argument("config", help="experiments/NAME.yaml")
    run.add_argument("--runs-dir", default=None, help="where run directories go (default: config's runs_dir)")

    evaluate = verbs.add_parser("evaluate", help="evaluate a saved run on data")
    evaluate.add_argument("--model", required=True, help="run directory (runs/NAME/TIMESTAMP)")
    evaluate.add_argument("--data", default=None,
                          help="data source, e.g. medmnist:PATH.npz#test, folder:DIR, manifest:CSV "
                               "(default: the run's own test split)")
    evaluate.add_argument("--output", default=None, help="output directory (default: RUN/evaluations/TIMESTAMP)")

    predict = verbs.add_parser("predict", help="score new images with a saved run")
    predict.add_argument("--model", required=True, help="run directory (runs/NAME/TIMESTAMP)")
    predict.add_argument("images", nargs="+", help="PNG/JPEG/DICOM files or folders")
    predict.add_argument("--output", default=None, help="CSV file (default: print to stdout)")

    validate = verbs.add_parser("validate", help="check a data source and report every problem")
    validate.add_argument("data", help="pneumonia_mnist, medmnist:PATH.npz, manifest:CSV, folder:DIR, dicom:DIR "
                                       "or an experiment YAML")
    validate.add_argument("--need-patient-ids", action="store_true",
                          help="also require a patient id on every row")

    sweep = verbs.add_parser("sweep-layers", help="compare SVM features from each backbone tap")
    sweep.add_argument("config", help="experiments/NAME.yaml (svm mode)")
    sweep.add_argument("--taps", nargs="+", default=None, help="taps to compare (default: early middle late)")

    verbs.add_parser("backbones", help="list the available backbones")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfmed`` console script."""
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.verb](args)
    except ValueError as error:  # every tfmed data/config error is a ValueError subclass
        if not _is_user_error(error):
            raise
        print(f"tfmed: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"tfmed: error: {error}", file=sys.stderr)
        return 2


def _is_user_error(error: Exception) -> bool:
    module = type(error).__module__ or ""
    return module.startswith("tfmed")


def _cmd_run(args) -> int:
    from tfmed.config import ExperimentConfig
    from tfmed.experiment import run_experiment

    config = ExperimentConfig.from_yaml(args.config)
    run_experiment(config, runs_dir=args.runs_dir)
    return 0


def _cmd_evaluate(args) -> int:
    from tfmed.evaluate_run import evaluate_run

    output = evaluate_run(args.model, args.data, args.output)
    print(f"wrote {output}")
    return 0


def _cmd_predict(args) -> int:
    from tfmed.evaluate_run import predict_images

    frame = predict_images(args.model, args.images)
    if args.output:
        frame.to_csv(args.output, index=False)
        print(f"wrote {len(frame)} predictions to {args.output}")
    else:
        print(frame.to_csv(index=False), end="")
    return 0


def _cmd_validate(args) -> int:
    from tfmed.data.validate import validate_table

    table = _load_any_source(args.data)
    report = validate_table(table, need_patient_ids=args.need_patient_ids)
    print(f"{len(table)} rows, task {table.task}, classes {table.classes}")
    print(report.format())
    return 0 if report.ok else 1


def _load_any_source(spec: str):
    from tfmed.config import ExperimentConfig
    from tfmed.data.sources import load_source, parse_source_spec

    if spec.endswith((".yaml", ".yml")):
        return load_source(ExperimentConfig.from_yaml(spec).data)
    return load_source(parse_source_spec(spec))


def _cmd_sweep(args) -> int:
    from tfmed.config import ExperimentConfig
    from tfmed.sweep_run import sweep_experiment

    config = ExperimentConfig.from_yaml(args.config)
    table, path = sweep_experiment(config, taps=args.taps)
    print(table)
    print(f"saved {path}")
    return 0


def _cmd_backbones(args) -> int:
    from tfmed import backbones

    for name in backbones.list():
        spec = backbones.get_spec(name)
        print(f"{name:<22} {spec.default_size:>4} px  preprocessing {spec.preprocessing:<6} "
              f"taps: {', '.join(spec.taps)}")
    return 0


COMMANDS = {"run": _cmd_run, "evaluate": _cmd_evaluate, "predict": _cmd_predict,
            "validate": _cmd_validate, "sweep-layers": _cmd_sweep, "backbones": _cmd_backbones}

if __name__ == "__main__":
    sys.exit(main())
