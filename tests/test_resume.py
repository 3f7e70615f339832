"""Resuming a stopped run: only with the settings and data it began with, one process at a time, and with
its first start, its command line and its whole duration kept."""
import datetime as dt
import json
import os
import shutil

import numpy as np
import pytest

import test_explain  # noqa: F401  (registers the tiny backbone explain_test_net)
from test_experiment import _tiny_medmnist
from tfmed.config import ExperimentConfig
from tfmed.errors import TfmedError
from tfmed.run import cli
from tfmed.run.experiment import resume_experiment, run_experiment
from tfmed.run.manifest import FAILED_FILE, MANIFEST_FILE, record_failure
from tfmed.run.rundir import RunDirectoryError, run_lock


@pytest.fixture
def stopped(tmp_path):
    """A tiny SVM run made to look stopped after its model was saved (no manifest, a FAILED.txt)."""
    data = _tiny_medmnist(tmp_path, n=48)
    config = ExperimentConfig.from_dict({
        "name": "stop", "data": {"source": f"medmnist:{data}"}, "preprocess": {"image_size": 32},
        "split": {"test_fraction": 0.2}, "runs_dir": str(tmp_path / "runs"),
        "model": {"mode": "svm", "backbone": "explain_test_net", "weights": None,
                  "svm": {"taps": ["middle"], "C": [1.0], "cv": 3}}})
    run = run_experiment(config)
    (run / MANIFEST_FILE).unlink()
    record_failure(run, KeyboardInterrupt())
    return run, data


def test_a_resume_refuses_an_edited_config_changed_data_and_a_second_process(stopped):
    run, data = stopped
    original = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(original.replace("learning_rate: 0.001", "learning_rate: 0.01"))
    with pytest.raises(RunDirectoryError, match="config.yaml was edited after the run started"):
        resume_experiment(run)
    (run / "config.yaml").write_text(original)

    kept = data.with_suffix(".kept")
    shutil.copy(data, kept)
    arrays = dict(np.load(data))
    arrays["train_labels"] = 1 - arrays["train_labels"]          # the same file, rows and images; labels flipped
    np.savez(data, **arrays)
    with pytest.raises(RunDirectoryError, match=r"the data \(images, labels\) or their split differ"):
        resume_experiment(run)
    shutil.copy(kept, data)

    with run_lock(run):                                           # the run is still running elsewhere
        with pytest.raises(RunDirectoryError, match="is being run by another tfmed process; process"):
            resume_experiment(run)
    assert (run / FAILED_FILE).is_file()                          # nothing was touched by the refusals


def test_a_resumed_run_keeps_its_first_start_and_command_and_counts_its_whole_time(stopped, capsys):
    run, _ = stopped
    assert "tfmed run --resume" in (run / FAILED_FILE).read_text()
    before = json.loads((run / "environment.json").read_text())
    assert len(before["config_sha256"]) == 64 and len(before["data_digest"]) == 40
    # the attempt ran 5 s, long ago: the pause and the resume's own files are not counted as its time
    began = dt.datetime.fromisoformat(before["started"]).timestamp() - 3600
    for path in run.rglob("*"):
        os.utime(path, (began + 5, began + 5))
    before["started"] = dt.datetime.fromtimestamp(began).isoformat(timespec="seconds")
    (run / "environment.json").write_text(json.dumps(before))
    os.utime(run / "environment.json", (began + 5, began + 5))
    assert cli.main(["run", "--resume", str(run)]) == 0
    assert f"resuming {run}: a fine-tune continues from its last completed epoch, an SVM fits again from the " \
        "feature store" in capsys.readouterr().out  # this run's one model is an SVM
    after = json.loads((run / "environment.json").read_text())
    assert (after["started"], after["command"]) == (before["started"], before["command"])
    assert len(after["resumed"]) == 1 and after["resumed"][0]["started"] >= before["started"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert after["seconds_before_resume"] == 5.0 and metrics["seconds"] >= 5.0
    with pytest.raises(TfmedError, match="this run finished"):
        resume_experiment(run)


def test_a_runs_folder_that_is_a_file_is_refused_before_the_data_are_read(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert cli.main(["run", "experiments/pneumonia_mnist.yaml", "--runs-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr()
    assert f"runs folder {blocker / 'sub'} lies under {blocker}, which is a file" in err.err
    assert "loading data source" not in err.out


def test_the_resumes_own_lock_is_not_counted_as_the_earlier_attempts_time(tmp_path):
    from tfmed.run.experiment import _seconds_run_before
    from tfmed.run.manifest import LOCK_FILE

    began = dt.datetime(2026, 1, 1, 10, 0, 0).timestamp()
    for name, written in (("splits.csv", began + 5), (LOCK_FILE, began + 59.99)):  # a coarse clock: a hair early
        (tmp_path / name).write_text("x")
        os.utime(tmp_path / name, (written, written))
    environment = {"started": dt.datetime.fromtimestamp(began).isoformat(timespec="seconds")}
    assert _seconds_run_before(tmp_path, environment, resumed=began + 60) == 5.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["backup/latest.weights.h5", "best_weights.npz"])
def test_a_fine_tune_stopped_as_a_backup_was_written_resumes_and_finishes(tmp_path, monkeypatch, capsys, name):
    from test_experiment import TINY
    from tfmed.modes import finetune
    from tfmed.run.manifest import check_run

    values = {"name": "cut", "runs_dir": str(tmp_path / "runs"),
              "data": {"source": f"medmnist:{_tiny_medmnist(tmp_path, n=40)}"}, "preprocess": {"image_size": 32},
              "model": {"mode": "finetune", "backbone": TINY, "weights": None,
                        "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}, {"epochs": 3, "unfreeze": 1}],
                                     "batch_size": 16, "early_stopping_patience": 3}}}
    record = finetune._HistoryRecorder.on_epoch_end

    def stop_in_stage_two(self, epoch, logs=None):
        if (self.stage, epoch) == (1, 2):  # Ctrl-C as stage 2's second epoch ends: its first is backed up
            raise KeyboardInterrupt
        return record(self, epoch, logs)

    monkeypatch.setattr(finetune._HistoryRecorder, "on_epoch_end", stop_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(ExperimentConfig.from_dict(values))
    monkeypatch.undo()
    run = next((tmp_path / "runs" / "cut").iterdir())
    bad = run / "finetune" / "stage_2" / name
    with open(bad, "r+b") as handle:  # cut short, as by a kill while an older tfmed wrote it in place
        handle.truncate(bad.stat().st_size // 2)
    assert "tfmed run --resume" in (run / FAILED_FILE).read_text()
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{bad}: cannot be read" in out and "stage 2 starts again from the end of stage 1" in out
    assert not (run / FAILED_FILE).exists()
    check_run(run, True)  # finished: every file in its manifest


def test_a_resume_accepts_files_whose_times_alone_changed_and_refuses_other_files(tmp_path, capsys):
    """A restore or a copy without -t gives the same files new modification times: not other data."""
    import cv2

    from tfmed.progress import configure_logging

    rng = np.random.default_rng(0)
    for label in ("normal", "sick"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(16):
            cv2.imwrite(str(tmp_path / "data" / label / f"{label}_{i}.png"),
                        rng.integers(0, 255, (32, 32), dtype=np.uint8) // (2 if label == "normal" else 1))
    config = ExperimentConfig.from_dict({
        "name": "times", "data": {"source": "folder", "path": str(tmp_path / "data"), "patient_pattern": "(.+)"},
        "preprocess": {"image_size": 32}, "split": {"test_fraction": 0.2}, "runs_dir": str(tmp_path / "runs"),
        "model": {"mode": "svm", "backbone": "explain_test_net", "weights": None,
                  "svm": {"taps": ["middle"], "C": [1.0], "cv": 3}}})
    run = run_experiment(config)
    (run / MANIFEST_FILE).unlink()
    record_failure(run, KeyboardInterrupt())
    files = sorted((tmp_path / "data").rglob("*.png"))
    for path in files:
        os.utime(path, ns=(0, 10**18))  # same bytes, another time
    configure_logging()
    assert resume_experiment(run) == run and (run / MANIFEST_FILE).is_file()
    assert "modification times changed since the run started" in capsys.readouterr().out
    (run / MANIFEST_FILE).unlink()
    record_failure(run, KeyboardInterrupt())
    cv2.imwrite(str(files[0]), np.zeros((40, 40), np.uint8))  # another picture under the same name
    with pytest.raises(RunDirectoryError, match=r"the data \(images, labels\) or their split differ"):
        resume_experiment(run)


@pytest.mark.parametrize("record, command", [("ensemble_runs.json", "tfmed ensemble"),
                                             ("recalibrated_from.json", "tfmed recalibrate")])
def test_a_stopped_ensemble_or_recalibration_of_saved_runs_is_not_resumed(stopped, record, command):
    """Resumed, its config.yaml trained the members again and the folder still said it combined saved runs."""
    run, _ = stopped
    (run / record).write_text("{}")
    with pytest.raises(RunDirectoryError, match=f"{command} began this folder \\({record}\\) and stopped before it "
                                                f"finished; it is not resumed: run {command} again"):
        resume_experiment(run)
    assert not (run / MANIFEST_FILE).exists()

