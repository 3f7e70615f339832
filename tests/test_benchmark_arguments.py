"""The benchmark scripts refuse bad arguments with one line naming the option, before any work."""
import importlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Files the refusals below are given, written in the working folder of each case (nothing is trained from them).
FILES = {
    "kfold.yaml": "name: kfold\nsplit: {method: kfold, folds: 2}\n",  # trains on val: folds over train + val
    "folder.yaml": "name: folder\ndata: {source: folder, path: pngs}\n",  # not MedMNIST-style
    "grades.yaml": "name: grades\ndata: {source: medmnist, path: grades.npz}\n",  # five classes
    "broken.yaml": "name: [broken\n",
    "not_an_npz.npz": "plain text\n",
    "run/predictions.csv": "image,label,score\n",  # looks like a finished run to recalibration.py
    "run/metrics.json": '{"task": "binary"}',
    "recalibrated/predictions.csv": "image,label,score\n",  # a finished run whose scores were recalibrated
    "recalibrated/metrics.json": '{"task": "binary", "recalibration": {"method": "logistic"}}',
}


@pytest.fixture
def working_folder(tmp_path, monkeypatch):
    """A working folder outside the repository holding :data:`FILES` and two small MedMNIST-style files."""
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    images = np.zeros((10, 28, 28), np.uint8)
    grades = np.arange(10).reshape(-1, 1) % 5
    np.savez(tmp_path / "grades.npz", train_images=images, train_labels=grades, val_images=images, val_labels=grades)
    np.savez(tmp_path / "train_only.npz", train_images=images, train_labels=grades)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("script, arguments, message", [
    ("auc_intervals.py", ["--datasets", "0"], "--datasets is 0; simulate at least 1 data set per row"),
    ("svm_mode.py", ["--cv", "1"], "--cv must be at least 2"),
    ("svm_mode.py", ["--limit", "0"], "--limit at least 1 (or left out for every image)"),
    ("recalibration.py", ["--run", "/nowhere/run"], "--run /nowhere/run: not a finished run directory"),
    ("heldout.py", ["--folds", "1"], "--folds is 1; a k-fold needs at least 2 folds"),
    # a test file is looked at before anything trains
    ("heldout.py", ["--test-npz", "nope.npz"], "--test-npz nope.npz: no such file"),
    ("heldout.py", ["--test-npz", "not_an_npz.npz"], "--test-npz not_an_npz.npz: not a .npz file"),
    ("heldout.py", ["--test-npz", "train_only.npz"], "--test-npz train_only.npz has no test_images or test_labels"),
    ("heldout.py", ["folder.yaml", "--shifted-val"],
     "--shifted-val alters the validation images of a MedMNIST-style .npz"),
    # experiment files: a missing or invalid one is one line naming the path typed; a missing data file too
    ("heldout.py", ["no_such.yaml"], "no_such.yaml: experiment file not found in the working folder"),
    ("heldout.py", ["broken.yaml"], "broken.yaml: not valid YAML"),
    ("heldout.py", ["experiments/retina_mnist.yaml"],
     "experiments/retina_mnist.yaml: its data file data/retinamnist.npz is not there"),
    ("recalibration.py", ["no_such.yaml"], "no_such.yaml: experiment file not found in the working folder"),
    ("recalibration.py", ["experiments/pneumonia_mnist.yaml", "no_such.yaml"],  # all read before the first trains
     "no_such.yaml: experiment file not found"),
    ("finetune.py", ["--experiment", "no_such.yaml"], "no_such.yaml: experiment file not found in the working folder"),
    ("finetune.py", ["--experiment", "broken.yaml"], "broken.yaml: not valid YAML"),
    ("finetune.py", ["--experiment", "experiments/pneumonia_mnist_svm.yaml"],  # found in the repository
     "--experiment experiments/pneumonia_mnist_svm.yaml: model.mode is 'svm'; this benchmark needs 'finetune'"),
    # recalibration.py --another-hospital
    ("recalibration.py", ["kfold.yaml", "--another-hospital"],
     "--another-hospital scores altered copies of val, but kfold trains on val"),
    ("recalibration.py", ["grades.yaml", "--another-hospital"],
     "--another-hospital imitates a binary prevalence change (half of the positive cases left out), but "
     "grades.yaml is multiclass"),
    ("recalibration.py", ["kfold.yaml", "--run", "recalibrated"],  # refused before kfold.yaml trains
     "--run recalibrated was recalibrated; give a run made with evaluation.recalibration: none"),
    ("recalibration.py", ["--run", "run", "--another-hospital"],
     "--another-hospital trains each experiment YAML as shipped, and --run run is a finished run"),
    ("recalibration.py", ["folder.yaml", "--another-hospital"],
     "--another-hospital alters the validation images of a MedMNIST-style .npz"),
    # numbers below their minimum
    ("explain.py", ["--images", "3"], "--images is 3; the SVM's 2-fold CV needs 2 images of each of its two "
                                      "classes: give at least 4"),
    ("explain.py", ["--images", "0"], "--images is 0; "),
    ("backbones.py", ["--images", "0"], "--images is 0; the backbones are timed on that many images: give at least 1"),
    ("backbones.py", ["--rounds", "0"], "--rounds is 0; the best timed round is kept: give at least 1"),
    ("finetune.py", ["--images", "0"], "--images is 0; the throughput is timed on that many training images: "
                                       "give at least 1"),
    ("finetune.py", ["--repeats", "0"], "--repeats is 0; the fastest run is kept: give at least 1"),
    ("finetune.py", ["--epochs", "0"], "--epochs is 0; the fastest epoch is kept: give at least 1"),
    ("artifacts.py", ["--images", "0"], "--images is 0; the SVM's 5-fold CV needs 5 images of each class, "
                                        "which the first 14 training images hold: give at least 14"),
    ("artifacts.py", ["--repeats", "0"], "--repeats is 0; each load is timed as the median of that many"),
    ("volumes.py", ["--slices", "0"], "--slices is 0; the phantom CT needs a slice: give at least 1"),
    ("svm_classifiers.py", ["--cv", "1"], "--cv is 1; cross-validation needs 2 folds: give at least 2"),
    ("scale.py", ["--skip-sizes"], "--skip-sizes leaves only the --experiment run, and there is none"),
    ("scale.py", ["--experiment", "-1"], "--experiment is -1; it is a number of training images"),
])
def test_bad_benchmark_arguments_are_refused_naming_the_option(script, arguments, message, working_folder,
                                                               monkeypatch, capsys):
    """Each script's main, run as from the command line (in this process: a subprocess each paid
    TensorFlow's import) in a working folder outside the repository, exits with status 2 and one line
    naming the option (or the file), before anything is trained."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / script), *arguments])
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(script[:-3]).main()
    captured = capsys.readouterr()
    assert stopped.value.code == 2 and f"{script}: error: " in captured.err and message in captured.err, captured.err
    assert "Traceback" not in captured.err and len([line for line in captured.err.splitlines()
                                                    if "error: " in line]) == 1, captured.err
    assert captured.out == ""


def test_the_heldout_benchmark_reads_an_experiment_from_the_working_folder_first(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import heldout

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "pneumonia_mnist.yaml").write_text("name: my_own\n")
    monkeypatch.chdir(tmp_path)
    assert heldout.experiment("experiments/pneumonia_mnist.yaml").name == "my_own"
    assert heldout.experiment("experiments/pneumonia_mnist_svm.yaml").name == "pneumonia_mnist_svm"  # the repo's
    with pytest.raises(Exception, match="no_such.yaml"):
        heldout.experiment("no_such.yaml")


def test_the_heldout_benchmark_finds_a_medmnist_file_named_with_its_splits(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import heldout

    from tfmed.config import ExperimentConfig

    for data in ({"source": "medmnist", "path": "data/x.npz#train,val"}, {"source": "medmnist:data/x.npz#train"}):
        assert heldout.medmnist_file(ExperimentConfig.from_dict({"data": data})) == Path("data/x.npz")


def test_a_benchmark_ends_a_tfmed_error_or_an_os_error_in_one_line(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _common import one_line_errors

    from tfmed.errors import TfmedError

    monkeypatch.setattr(sys, "argv", ["scale.py"])
    for error in (TfmedError("data/x.npz: not found"), IsADirectoryError(21, "Is a directory", "out.csv")):
        def main(error=error):
            raise error

        with pytest.raises(SystemExit) as stopped:
            one_line_errors(main)()
        assert stopped.value.code == 2 and capsys.readouterr().err == f"scale.py: error: {error}\n"


@pytest.mark.parametrize("keep", [False, True])
def test_the_heldout_benchmark_removes_its_runs_unless_told_to_keep_them(keep, monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import heldout

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts the scratch folder

    def print_tables(args, configs, trained_on_val, scratch):
        (scratch / "runs").mkdir()
        (scratch / "runs" / "metrics.json").write_text("{}")

    monkeypatch.setattr(sys, "argv", ["heldout.py", "experiments/pneumonia_mnist.yaml"] + ["--keep-runs"] * keep)
    made = []
    monkeypatch.setattr(heldout, "print_tables", lambda *args: made.append(print_tables(*args) or args[-1]))
    heldout.main()
    printed = capsys.readouterr().out
    assert len(made) == 1 and made[0].parent == tmp_path and f"runs under {made[0]}" in printed
    assert (made[0] / "runs" / "metrics.json").is_file() == keep and made[0].exists() == keep
    assert (f"removed {made[0]}" in printed) != keep
