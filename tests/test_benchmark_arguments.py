"""The benchmark scripts refuse bad arguments with one line naming the option, before any work."""
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("script, arguments, message", [
    ("auc_intervals.py", ["--datasets", "0"], "--datasets is 0; simulate at least 1 data set per row"),
    ("svm_mode.py", ["--cv", "1"], "--cv must be at least 2"),
    ("svm_mode.py", ["--limit", "0"], "--limit at least 1 (or left out for every image)"),
    ("recalibration.py", ["--run", "/nowhere/run"], "--run /nowhere/run: not a finished run directory"),
    ("heldout.py", ["--folds", "1"], "--folds is 1; a k-fold needs at least 2 folds")])
def test_bad_benchmark_arguments_are_refused_naming_the_option(script, arguments, message, monkeypatch, capsys):
    """Each script's main, run as from the command line (in this process: a subprocess each paid
    TensorFlow's import), exits with status 2 and one line naming the option."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / script), *arguments])
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(script[:-3]).main()
    captured = capsys.readouterr()
    assert stopped.value.code == 2 and f"{script}: error: " in captured.err and message in captured.err, captured.err
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
