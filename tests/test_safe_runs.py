"""Runs that are safe to share: no pickles on load, MANIFEST.sha256 integrity, incomplete runs refused."""
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml

import test_explain  # noqa: F401  (registers the tiny backbone explain_test_net)
from test_experiment import _tiny_medmnist
from tfmed.config import ExperimentConfig
from tfmed.errors import TfmedError
from tfmed.modes import features as F
from tfmed.modes.svm import FeatureSVM, ModelMismatchError
from tfmed.run import cli
from tfmed.run.artifact import TrainedModel
from tfmed.run.evaluate import evaluate_run
from tfmed.run.experiment import run_experiment
from tfmed.run.manifest import (FAILED_FILE, MANIFEST_FILE, IncompleteRunError, RunIntegrityError, read_manifest,
                                verify_run)


class _Payload:
    """Unpickling this creates ``path``: the stand-in for code hidden in a shared file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _pickle_payload(sentinel: Path) -> bytes:
    return pickle.dumps(_Payload(sentinel))


def _config(source: str, root: Path, seed: int) -> ExperimentConfig:
    """An ensemble of an SVM and a fine-tune, so the model folder holds every kind of artifact file."""
    members = [{"name": "svm", "mode": "svm", "svm": {"taps": ["middle"], "C": [1.0], "cv": 3}},
               {"name": "tune", "mode": "finetune", "preprocess": {"intensity": "mean_image"},
                "finetune": {"stages": [{"epochs": 1, "unfreeze": 0}], "batch_size": 32}}]
    return ExperimentConfig.from_dict({
        "name": "safe", "seed": seed, "data": {"source": source}, "preprocess": {"image_size": 32},
        "split": {"test_fraction": 0.2}, "runs_dir": str(root / "runs"),
        "model": {"mode": "ensemble", "backbone": "explain_test_net", "weights": None,
                  "ensemble": {"members": members}}})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe")
    source = f"medmnist:{_tiny_medmnist(root, n=96)}"
    return run_experiment(_config(source, root, 0)), run_experiment(_config(source, root, 1))


def _model_files(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in (run / "model").rglob("*") if p.is_file())


def test_a_finished_run_lists_every_file_and_sha256sum_agrees(runs):
    run, _ = runs
    listed = read_manifest(run)
    on_disk = sorted(p.relative_to(run).as_posix() for p in run.rglob("*")
                     if p.is_file() and p.name != MANIFEST_FILE)
    assert sorted(listed) == on_disk
    assert {"model/estimator/member_0/estimator/fitted.skops", "model/estimator/member_1/estimator/model.keras",
            "model/estimator/member_1/statistics/mean_image.npy"} <= set(listed)
    checked = subprocess.run(["sha256sum", "--quiet", "-c", MANIFEST_FILE], cwd=run, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not [p for p in run.rglob("*") if p.suffix in (".joblib", ".pkl", ".pickle")]
    # readable as its neighbours are (0644 under umask 022), not private to its writer as a mkstemp file is
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {(path.stat().st_mode & 0o777) for path in (run / MANIFEST_FILE, run / "metrics.json")}
    assert modes == {0o666 & ~umask}


@pytest.mark.slow
def test_every_tampered_model_file_is_refused_and_no_payload_runs(runs, tmp_path):
    run, other = runs
    files = _model_files(run)
    sentinel = tmp_path / "payload_ran"
    swapped = 0
    for name in files:
        original = (run / name).read_bytes()
        replacements = {"a pickle payload": _pickle_payload(sentinel), "a truncated copy": original[:len(original) // 2]}
        if (other / name).read_bytes() != original:
            replacements["the file of another run"] = (other / name).read_bytes()
            swapped += 1
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(run, copy)
        try:
            for kind, content in replacements.items():
                (copy / name).write_bytes(content)
                with pytest.raises(RunIntegrityError, match=f"{name}: changed since the run wrote it"):
                    TrainedModel.load(copy)
                if kind != "the file of another run":  # unchecked, the loaders themselves refuse damage
                    with pytest.raises(TfmedError, match=Path(name).name):
                        TrainedModel.load(copy, verify=False)
                assert not sentinel.exists(), f"{kind} in {name} ran code"
        finally:
            shutil.rmtree(copy)
    assert swapped >= 4  # the weights and fitted models differ between the two runs


def test_a_one_byte_change_anywhere_is_caught_and_named(runs, tmp_path, capsys):
    copy = shutil.copytree(runs[0], tmp_path / "run")
    data = bytearray((copy / "predictions.csv").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "predictions.csv").write_bytes(bytes(data))
    with pytest.raises(RunIntegrityError, match="predictions.csv: changed"):
        verify_run(copy)
    assert cli.main(["evaluate", "--model", str(copy)]) == 2
    assert "predictions.csv: changed since the run wrote it" in capsys.readouterr().err


def test_a_missing_file_and_a_file_slipped_into_model_are_refused(runs, tmp_path):
    copy = shutil.copytree(runs[0], tmp_path / "run")
    (copy / "model" / "estimator" / "member_0" / "extra.skops").write_bytes(b"x")
    with pytest.raises(RunIntegrityError, match="extra.skops: not part of the run"):
        verify_run(copy)
    (copy / "model" / "estimator" / "member_0" / "extra.skops").unlink()
    (copy / "splits.csv").unlink()
    with pytest.raises(RunIntegrityError, match="splits.csv: listed in MANIFEST.sha256 but missing"):
        verify_run(copy)


def test_later_outputs_beside_the_model_do_not_break_the_check(runs, tmp_path):
    copy = shutil.copytree(runs[0], tmp_path / "run")
    out = evaluate_run(copy)
    assert out.parent.name == "evaluations" and (out / "metrics.json").is_file()
    verify_run(copy)


def test_a_crashed_run_is_reported_incomplete(runs, tmp_path, monkeypatch, capsys):
    import tfmed.run.reporting as reporting

    def crash(*args, **kwargs):
        raise RuntimeError("killed while writing the report")

    monkeypatch.setattr(reporting, "write_run_outputs", crash)
    config = ExperimentConfig.from_yaml(runs[0] / "config.yaml")
    config.runs_dir = str(tmp_path / "runs")
    with pytest.raises(RuntimeError, match="killed"):
        run_experiment(config)
    crashed = next((tmp_path / "runs" / "safe").iterdir())
    assert (crashed / "model" / "tfmed_model.json").is_file() and not (crashed / MANIFEST_FILE).exists()
    failed = (crashed / FAILED_FILE).read_text()
    assert failed.startswith("RuntimeError: killed while writing the report\n")
    assert "Traceback" in failed and "in crash" in failed  # where it stopped
    with pytest.raises(IncompleteRunError, match="incomplete run: it stopped with RuntimeError: killed while "
                                                 r"writing the report.*\. Finish it with tfmed run --resume .*; or "
                                                 "pass --no-verify"):
        TrainedModel.load(crashed)
    assert cli.main(["predict", "--model", str(crashed), str(tmp_path)]) == 2
    assert "stopped with RuntimeError: killed" in capsys.readouterr().err
    model = TrainedModel.load(crashed, verify=False)  # read as it is, on request
    assert model.mode == "ensemble"
    (crashed / FAILED_FILE).unlink()  # killed outright (no chance to write why): the manifest alone tells
    with pytest.raises(IncompleteRunError, match="it has no MANIFEST.sha256.*crashed or was killed.*Finish it with "
                                                 f"tfmed run --resume {crashed}, run the experiment again"):
        TrainedModel.load(crashed)


def _started_at(run: Path, when: str) -> Path:
    """``run`` with ``environment.json`` saying it started at ``when`` (ISO time)."""
    environment = json.loads((run / "environment.json").read_text())
    (run / "environment.json").write_text(json.dumps({**environment, "started": when}))
    return run


def test_tfmed_runs_lists_finished_failed_and_incomplete_runs(runs, tmp_path, capsys):
    from tfmed.run.list_runs import list_runs

    root = tmp_path / "runs"
    for run in runs:
        shutil.copytree(run, root / "safe" / run.name)
    failed = root / "other" / "29991231-235958"  # later than the real runs, whenever the suite runs
    failed.mkdir(parents=True)
    for name in ("config.yaml", "environment.json"):  # what a run writes first
        shutil.copy(runs[0] / name, failed / name)
    _started_at(failed, "2999-12-31T23:59:58")
    config = yaml.safe_load((failed / "config.yaml").read_text())
    (failed / "config.yaml").write_text(yaml.safe_dump({**config, "name": "other"}))
    (failed / FAILED_FILE).write_text("RuntimeError: out of memory in stage 2\n\ntraceback")
    running = _started_at(shutil.copytree(failed, root / "other" / "29991231-235959"), "2999-12-31T23:59:59")
    (running / FAILED_FILE).unlink()
    frame = list_runs(root)
    assert frame["run"].tolist()[-2:] == [failed.as_posix(), running.as_posix()]   # oldest first
    assert frame["status"].tolist() == ["finished", "finished", "failed: RuntimeError: out of memory in stage 2",
                                        "incomplete"]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    first = frame.iloc[0]
    assert (first["mode"], first["task"]) == ("ensemble", "binary")
    assert first["test_auc"] == metrics["splits"]["test"]["youden"]["roc_auc"]
    assert first["val_auc"] == metrics["splits"]["val"]["youden"]["roc_auc"]
    assert metrics["test_origin"].startswith(first["test_origin"] + " (")  # in-distribution or not, said beside
    assert first["test_origin"] == "carved from the training images"
    assert frame["test_origin"].iloc[-2:].isna().all()  # no figures, no origin
    assert len(list_runs(root, name="other")) == 2
    assert cli.main(["runs", str(root), "--name", "safe"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["run", "status", "mode", "task", "val_auc", "test_auc", "test_origin", "seconds"]
    assert len(printed) == 3 and re.search(rf"{first['test_auc']:.3f} +carved from the training images +\d+$",
                                           printed[1]), printed[1]
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    # a half-copied metrics.json or a garbled manifest: damaged, with no figures shown as if they were the run's
    damaged = shutil.copytree(runs[0], tmp_path / "copies" / "cut")
    (damaged / "metrics.json").write_text((runs[0] / "metrics.json").read_text()[:300])
    garbled = shutil.copytree(runs[0], tmp_path / "copies" / "garbled")
    (garbled / MANIFEST_FILE).write_text("not a manifest\n")
    # a model file lost, or one added: found without hashing every file (evaluate then names them too)
    lost = shutil.copytree(runs[0], tmp_path / "copies" / "lost")
    gone = sorted(p for p in (lost / "model").rglob("*") if p.is_file())[0]
    gone.unlink()
    added = shutil.copytree(runs[0], tmp_path / "copies" / "added")
    (added / "model" / "extra.bin").write_bytes(b"x")
    statuses = list_runs(tmp_path / "copies").set_index("run")
    assert statuses.loc[damaged.as_posix(), "status"] == "damaged: metrics.json changed since the run wrote it"
    assert statuses.loc[garbled.as_posix(), "status"] == "damaged: MANIFEST.sha256 unreadable (the manifest is damaged)"
    assert statuses.loc[lost.as_posix(), "status"] == f"damaged: {gone.relative_to(lost).as_posix()} missing"
    assert statuses.loc[added.as_posix(), "status"] == ("damaged: model/extra.bin added to the run (absent from "
                                                        "MANIFEST.sha256)")
    assert statuses[["val_auc", "test_auc"]].isna().all().all()


def test_tfmed_runs_finds_runs_wherever_they_sit_and_lists_layer_sweeps_as_such(runs, tmp_path, capsys):
    from tfmed.run.list_runs import list_runs

    root = tmp_path / "runs"
    written = _started_at(shutil.copytree(runs[0], root / "site_b"), "2001-01-01T00:00:01")  # --output runs/site_b
    deep = _started_at(shutil.copytree(runs[1], root / "team" / "2026" / "combined"), "2001-01-01T00:00:02")
    sweep = root / "safe_sweep" / "20010101-000003"  # what tfmed sweep-layers leaves
    sweep.mkdir(parents=True)
    for name in ("config.yaml", "environment.json"):
        shutil.copy(runs[0] / name, sweep / name)
    _started_at(sweep, "2001-01-01T00:00:03")
    (sweep / "layer_sweep.csv").write_text("metric,middle\nauc,0.9\n")
    hidden = root / ".feature_cache" / "x"  # the feature store is not searched
    shutil.copytree(runs[0], hidden)
    frame = list_runs(root)
    assert frame["run"].tolist() == [written.as_posix(), deep.as_posix(), sweep.as_posix()]
    assert frame["status"].tolist() == ["finished", "finished", "layer sweep (layer_sweep.csv)"]
    assert frame["test_auc"].iloc[0] == json.loads((runs[0] / "metrics.json").read_text())[
        "splits"]["test"]["youden"]["roc_auc"]
    assert len(list_runs(root, name="safe")) == 3  # the experiment named in each config.yaml
    assert list_runs(root, name="safe_sweep")["run"].tolist() == [sweep.as_posix()]  # or the folder it sits in
    assert list_runs(written)["run"].tolist() == [written.as_posix()]  # a run directory itself
    share = tmp_path / "share" / "safe"
    assert cli.main(["export-run", str(runs[0]), str(share)]) == 0
    capsys.readouterr()
    assert cli.main(["runs", str(tmp_path / "share")]) == 0
    assert f"{share.as_posix()}  finished" in capsys.readouterr().out
    assert cli.main(["evaluate", "--model", str(sweep)]) == 2
    assert "a layer sweep (layer_sweep.csv of tfmed sweep-layers), not a run" in capsys.readouterr().err


def test_a_run_killed_before_its_model_says_it_did_not_finish(runs, tmp_path, capsys):
    killed = tmp_path / "runs" / "safe" / "20261206-100553"  # SIGKILL: no FAILED.txt written
    killed.mkdir(parents=True)
    for name in ("config.yaml", "environment.json"):
        shutil.copy(runs[0] / name, killed / name)
    for command in (["evaluate", "--model", str(killed)], ["predict", "--model", str(killed), str(tmp_path)]):
        assert cli.main(command) == 2
        error = capsys.readouterr().err
        assert f"{killed}: this run did not finish (it has no model/" in error and "tfmed runs" in error
        assert f"Finish it with tfmed run --resume {killed} if it is not running" in error
        assert "not a tfmed run directory" not in error


def test_an_output_inside_a_run_it_reads_is_refused_by_every_command(runs, tmp_path, capsys):
    run, other = (shutil.copytree(r, tmp_path / name) for r, name in zip(runs, ("run", "other")))
    predictions = (run / "predictions.csv").read_bytes()
    commands = {"evaluate": ["evaluate", "--model", str(run), "--output", str(run / "model" / "ev")],
                "evaluate_beside": ["evaluate", "--model", str(run / "model"), "--output", str(run / "ev")],
                "predict": ["predict", "--model", str(run), str(tmp_path / "a.png"),
                            "--output", str(run / "predictions.csv")],
                "ensemble": ["ensemble", str(other), str(run), "--output", str(run / "combined")],
                "recalibrate": ["recalibrate", "--model", str(run), "--data", "manifest:b.csv",
                                "--output", str(run / "site_b")],
                "explain": ["explain", "--model", str(run), "--output", str(run / "model" / "maps")]}
    for command, argv in commands.items():
        assert cli.main(argv) == 2, command
        error = capsys.readouterr().err
        assert f"--output {argv[-1]}: inside the run directory" in error and "choose a path outside it" in error, \
            (command, error)
        assert not Path(argv[-1]).is_dir(), command
    assert (run / "predictions.csv").read_bytes() == predictions
    verify_run(run)
    assert cli.main(["evaluate", "--model", str(run), "--output", str(run / "evaluations" / "site_a")]) == 0
    verify_run(run)  # where tfmed evaluate itself writes: the run is left whole


def test_an_output_that_is_a_file_is_refused_naming_the_option(runs, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for output in (tmp_path / "afile", tmp_path / "afile" / "ev"):
        for argv in (["evaluate", "--model", str(runs[0]), "--output", str(output)],
                     ["ensemble", str(runs[0]), str(runs[1]), "--output", str(output)]):
            assert cli.main(argv) == 2, argv
            error = capsys.readouterr().err
            assert f"--output {output} " in error and "which is a file" in error or "is a file;" in error, error


def test_an_output_or_runs_folder_inside_a_run_the_command_does_not_read_is_refused(runs, tmp_path, capsys):
    reader, victim = (shutil.copytree(r, tmp_path / name) for r, name in zip(runs, ("reader", "victim")))
    for argv in (["compare", str(runs[0]), str(reader), "--output", str(victim / "model" / "cmp.csv")],
                 ["evaluate", "--model", str(reader), "--output", str(victim / "ev")]):
        assert cli.main(argv) == 2, argv
        assert f"--output {argv[-1]}: inside the run directory {victim}" in capsys.readouterr().err
    config = tmp_path / "tiny.yaml"
    config.write_text((reader / "config.yaml").read_text())
    assert cli.main(["run", str(config), "--runs-dir", str(victim / "more")]) == 2
    assert (f"runs folder {victim / 'more'} lies inside the run {victim}: a new run there would change that run"
            in capsys.readouterr().err)
    verify_run(victim)


@pytest.mark.parametrize("stop", [RuntimeError("out of memory in stage 2"), KeyboardInterrupt(),
                                  TfmedError("every training image is flat")], ids=["error", "ctrl_c", "refused"])
def test_a_run_that_stops_before_its_model_says_why_to_every_command(runs, tmp_path, monkeypatch, capsys, stop):
    import tfmed.run.experiment as experiment

    def fail(*args, **kwargs):
        raise stop

    monkeypatch.setattr(experiment, "fit_model", fail)
    config = ExperimentConfig.from_yaml(runs[0] / "config.yaml")
    config.runs_dir = str(tmp_path / "runs")
    with pytest.raises(type(stop)):
        run_experiment(config)
    stopped = next((tmp_path / "runs" / "safe").iterdir())
    reason = {RuntimeError: "RuntimeError: out of memory in stage 2", KeyboardInterrupt: "interrupted",
              TfmedError: "TfmedError: every training image is flat"}[type(stop)]
    failed = (stopped / FAILED_FILE).read_text()
    assert failed.startswith(reason) and not (stopped / "model").exists()
    # a resume meets tfmed's refusal again: it is offered only for the others
    resumable = not isinstance(stop, TfmedError)
    assert ("Finish it with tfmed run --resume" in failed) is resumable
    assert ("a resume on the same ones would refuse them again" in failed) is not resumable
    assert ("tfmed run --resume" in capsys.readouterr().out) is resumable
    for command in (["evaluate", "--model", str(stopped)], ["predict", "--model", str(stopped), str(tmp_path)],
                    ["compare", str(runs[0]), str(stopped)]):
        assert cli.main(command) == 2, command
        err = capsys.readouterr().err
        assert "stopped before it" in err and reason in err and "FAILED.txt" in err, (command, err)
        # and says what FAILED.txt says to do: resume it, or fix what tfmed refused
        assert (f"finish it with tfmed run --resume {stopped}" in err) is resumable, (command, err)
        assert ("a resume on the same ones would refuse them again" in err) is not resumable, (command, err)


def test_a_runs_dir_given_holds_the_run_its_feature_cache_and_config(tmp_path):
    """tfmed run --runs-dir: nothing is written to the config's own runs_dir (the feature cache went there), and
    the stored config.yaml names the folder the run is in, so that it reruns and resumes there."""
    from test_explain import tiny_svm_experiment

    config = tiny_svm_experiment("given", tmp_path, {"source": f"medmnist:{_tiny_medmnist(tmp_path)}"},
                                 {"method": "predefined"})
    given = tmp_path / "given_runs"
    run_dir = run_experiment(config, runs_dir=given)
    assert run_dir.parent == given / "given" and not (tmp_path / "runs").exists()
    assert list((given / ".feature_cache").glob("table-*"))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["runs_dir"] == str(given)
    assert config.runs_dir == str(tmp_path / "runs")  # the caller's config is left as it was


def test_ctrl_c_during_tfmed_run_prints_one_line_after_the_log_names_failed_txt(runs, tmp_path, monkeypatch, capsys):
    import tfmed.run.experiment as experiment

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "fit_model", interrupt)
    assert cli.main(["run", str(runs[0] / "config.yaml"), "--runs-dir", str(tmp_path / "runs")]) == 130
    stopped = next((tmp_path / "runs" / "safe").iterdir())
    captured = capsys.readouterr()
    assert captured.err == "tfmed: interrupted (Ctrl-C)\n"  # one line, no traceback
    assert f"the run stopped; {stopped / FAILED_FILE} says why" in captured.out
    assert (stopped / FAILED_FILE).read_text().startswith("interrupted")


def test_no_verify_is_stated_in_the_output(runs, tmp_path, capsys):
    copy = shutil.copytree(runs[0], tmp_path / "run")
    (copy / MANIFEST_FILE).unlink()
    assert cli.main(["evaluate", "--model", str(copy), "--no-verify", "--output", str(tmp_path / "ev")]) == 0
    assert "integrity check skipped (--no-verify)" in capsys.readouterr().out


def test_a_damaged_manifest_is_refused(runs, tmp_path):
    copy = shutil.copytree(runs[0], tmp_path / "run")
    (copy / MANIFEST_FILE).write_text("not a digest  ../../etc/passwd\n")
    with pytest.raises(RunIntegrityError, match="line 1: expected"):
        verify_run(copy)


# ------------------------------------------------------------------ the SVM artifact without pickle
def _images(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 255, (n, 32, 32, 1)).astype("float32")
    return X, rng


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_the_svm_artifact_round_trips_exactly_without_pickle(task, tmp_path):
    X, _ = _images(36, 0)
    y = {"binary": np.repeat([0, 1], 18), "multiclass": np.repeat(["a", "b", "c"], 12),
         "multilabel": np.column_stack([np.repeat([0, 1], 18), np.tile([0, 1], 18)])}[task]
    model = FeatureSVM(backbone="explain_test_net", weights=None, taps=("middle", "late"), image_size=32, C=(1.0,),
                       cv=3).fit(X, y)
    model.save(tmp_path / "estimator")
    assert sorted(p.name for p in (tmp_path / "estimator").iterdir()) == \
        ["backbone_weights.npz", "feature_svm.json", "fitted.skops"]
    F.clear_model_cache()
    loaded = FeatureSVM.load(tmp_path / "estimator")
    new, _ = _images(9, 5)
    np.testing.assert_array_equal(loaded.decision_function(new), model.decision_function(new))
    np.testing.assert_array_equal(loaded.predict_proba(new), model.predict_proba(new))
    assert loaded.classes_.tolist() == model.classes_.tolist() and loaded.get_params() == model.get_params()


def _fitted_binary_svm():
    X, _ = _images(24, 1)
    y = np.repeat([0, 1], 12)
    X[y == 1, 8:24, 8:24] = 255.0
    return FeatureSVM(backbone="explain_test_net", weights=None, taps=("middle",), image_size=32, C=(1.0,),
                      cv=3).fit(X, y), X


def test_a_pickle_from_tfmed_0_1_needs_trust_pickles(tmp_path):
    model, X = _fitted_binary_svm()
    base, _ = model._base_model()
    state = {name: getattr(model, name) for name in ("backbone_spec_", "task_", "classes_", "input_shape_",
                                                      "block_widths_", "scalers_", "cv_results_", "best_params_",
                                                      "best_score_", "models_")}
    state["models_"] = model.models_[0]  # 0.1 kept one flat list of calibrated SVMs
    legacy = tmp_path / "estimator"
    joblib.dump({"format": 1, "kind": "tfmed.FeatureSVM", "params": model.get_params(), "state": state,
                 "backbone_weights": base.get_weights()}, legacy)
    with pytest.raises(ModelMismatchError, match="pickle file.*--trust-pickles"):
        FeatureSVM.load(legacy)
    loaded = FeatureSVM.load(legacy, trust_pickles=True)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    sentinel = tmp_path / "payload_ran"
    legacy.write_bytes(_pickle_payload(sentinel))
    with pytest.raises(ModelMismatchError, match="--trust-pickles"):
        FeatureSVM.load(legacy)
    assert not sentinel.exists()


def test_a_fitted_file_holding_other_types_is_refused_unloaded(tmp_path):
    import os

    import skops.io

    model, _ = _fitted_binary_svm()
    model.save(tmp_path / "estimator")
    skops.io.dump({"scalers": model.scalers_, "models": [os.getcwd]}, tmp_path / "estimator" / "fitted.skops")
    with pytest.raises(ModelMismatchError, match="holds types a FeatureSVM never saves.*getcwd"):
        FeatureSVM.load(tmp_path / "estimator")


def test_export_run_on_the_command_line_writes_a_copy_that_verifies(runs, tmp_path, capsys):
    out = tmp_path / "share" / "safe"
    assert cli.main(["export-run", str(runs[0]), str(out), "--anonymise", "--salt", "team"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    verify_run(out)
    assert (out / "ANONYMISED.txt").is_file()
    assert cli.main(["export-run", str(runs[0]), str(out)]) == 2  # never over an existing folder
    assert "already exists" in capsys.readouterr().err


def test_an_evaluation_that_fails_leaves_no_folder(runs, tmp_path, monkeypatch):
    def fails(self, table):
        raise RuntimeError("scoring failed")

    monkeypatch.setattr(TrainedModel, "predict_with_members", fails)
    with pytest.raises(RuntimeError, match="scoring failed"):
        evaluate_run(runs[0], output=tmp_path / "evaluation")
    assert not (tmp_path / "evaluation").exists()  # so the same --output can be given again


def test_training_images_no_histogram_scale_can_be_learnt_from_leave_no_run(tmp_path):
    """Flat training images are refused before the run directory exists (it was made, then left FAILED)."""
    from tfmed.data.preprocessing import StatisticsError

    path = tmp_path / "flat.npz"
    np.savez(path, train_images=np.full((12, 28, 28), 90, np.uint8), train_labels=np.arange(12)[:, None] % 2,
             val_images=np.full((6, 28, 28), 90, np.uint8), val_labels=np.arange(6)[:, None] % 2)
    config = ExperimentConfig.from_dict({"name": "flat", "data": {"source": f"medmnist:{path}"},
                                         "preprocess": {"image_size": 32, "intensity": "histogram"},
                                         "runs_dir": str(tmp_path / "runs"), "model": {"mode": "svm", "svm": {"cv": 2}}})
    with pytest.raises(StatisticsError, match="every one of the .* train images has its 1st and 99th"):
        run_experiment(config)
    assert not list((tmp_path / "runs").glob("flat/*"))


def test_a_failure_record_that_cannot_be_written_whole_is_not_left_empty(tmp_path, monkeypatch):
    from tfmed.run.manifest import FAILED_FILE, failure_reason, record_failure

    write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        write_text(self, text[:3], *args, **kwargs)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        record_failure(tmp_path, RuntimeError("out of memory"))
    monkeypatch.setattr(Path, "write_text", write_text)
    assert list(tmp_path.iterdir()) == []  # neither an empty FAILED.txt nor a stray part of one
    record_failure(tmp_path, RuntimeError("out of memory"))
    assert failure_reason(tmp_path) == "RuntimeError: out of memory" and (tmp_path / FAILED_FILE).is_file()
