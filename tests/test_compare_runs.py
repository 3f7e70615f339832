"""tfmed compare: paired tests between saved runs (or evaluations) scored on the same cases."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfmed.evaluation.intervals import PERMUTATION_TEST
from tfmed.evaluation import delong_auc_ci, delong_test, macro_auc_test, write_predictions
from tfmed.run.cli import main
from tfmed.run.compare_runs import CompareRunsError, compare_runs

RNG = np.random.default_rng(11)


def _saved(folder: Path, task: str, classes: list, splits: dict) -> Path:
    """A directory as a run leaves it, as far as tfmed compare reads it: metrics.json and predictions.csv."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"task": task, "classes": classes, "splits": {}}))
    frames = []
    for split, (ids, labels, scores) in splits.items():
        path = write_predictions(folder / f"{split}.csv", ids, None, labels, scores,
                                 np.zeros_like(labels), classes if task != "binary" else None)
        frames.append(pd.read_csv(path).assign(split=split))
        path.unlink()
    pd.concat(frames).to_csv(folder / "predictions.csv", index=False)
    return folder


def _binary_pair(tmp_path: Path):
    ids = [f"img_{i}.png" for i in range(60)]
    y = np.array([0, 1] * 30)
    strong, weak = y * 0.5 + RNG.uniform(0, 0.6, 60), RNG.uniform(size=60)
    a = _saved(tmp_path / "a", "binary", ["normal", "pneumonia"], {"val": (ids[:20], y[:20], strong[:20]),
                                                                   "test": (ids[20:], y[20:], strong[20:])})
    b = _saved(tmp_path / "b", "binary", ["normal", "pneumonia"], {"val": (ids[:20], y[:20], weak[:20]),
                                                                   "test": (ids[20:], y[20:], weak[20:])})
    return a, b, y, strong, weak


def test_binary_runs_get_the_paired_delong_test_per_split(tmp_path, capsys):
    a, b, y, strong, weak = _binary_pair(tmp_path)
    out = tmp_path / "comparison.csv"
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"reference: {a}" in printed and "wrote" in printed
    table = pd.read_csv(out)
    assert list(table["split"]) == ["val", "test"] and list(table["n"]) == [20, 40]
    expected = delong_test(y[20:], weak[20:], strong[20:])
    test = table[table["split"] == "test"].iloc[0]
    assert test["auc"] == pytest.approx(expected["auc_a"], abs=1e-4)
    assert test["reference_auc"] == pytest.approx(expected["auc_b"], abs=1e-4)
    assert test["difference"] < -0.2 and test["p_value"] == pytest.approx(expected["p_value"], abs=1e-4)
    _, lo, hi = delong_auc_ci(y[20:], weak[20:])
    assert test["auc_ci"] == f"{lo:.3f}-{hi:.3f}"
    assert list(table["test"]) == ["delong", "delong"]
    # an existing file is never overwritten; a missing folder is made
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 2
    assert f"--output {out} already exists; comparisons never overwrite a file" in capsys.readouterr().err
    assert pd.read_csv(out).equals(table)
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "new" / "c.csv")]) == 0
    assert pd.read_csv(tmp_path / "new" / "c.csv").equals(table)


def test_rows_are_matched_by_image_not_by_position(tmp_path):
    a, b, y, strong, weak = _binary_pair(tmp_path)
    frame = pd.read_csv(b / "predictions.csv")
    frame.iloc[::-1].to_csv(b / "predictions.csv", index=False)  # same cases, reversed order
    table = compare_runs([a, b])
    expected = delong_test(y[20:], weak[20:], strong[20:])
    assert table.iloc[1]["p_value"] == pytest.approx(expected["p_value"], abs=1e-4)


def test_one_image_named_from_two_folders_is_one_case(tmp_path):
    a, b, y, strong, weak = _binary_pair(tmp_path)
    images = tmp_path / "site" / "scans"
    images.mkdir(parents=True)
    for i in range(60):
        (images / f"img_{i}.png").write_bytes(b"")
    for folder, cwd, prefix in ((a, tmp_path / "site", "scans/"), (b, tmp_path, "site/./scans/")):
        frame = pd.read_csv(folder / "predictions.csv")
        frame["id"] = prefix + frame["id"]  # the folder as typed in each evaluation's working folder
        frame.to_csv(folder / "predictions.csv", index=False)
        (folder / "environment.json").write_text(json.dumps({"cwd": str(cwd)}))
    table = compare_runs([a, b])
    expected = delong_test(y[20:], weak[20:], strong[20:])
    assert table.iloc[1]["p_value"] == pytest.approx(expected["p_value"], abs=1e-4)
    frame = pd.read_csv(b / "predictions.csv")
    frame["id"] = str(images) + "/" + frame["id"].str.rsplit("/", n=1).str[1]  # absolute, as a manifest names them
    frame.to_csv(b / "predictions.csv", index=False)
    assert compare_runs([a, b]).iloc[1]["p_value"] == pytest.approx(expected["p_value"], abs=1e-4)


def test_multiclass_and_multilabel_runs_get_the_macro_auc_test(tmp_path):
    ids = [f"c{i}" for i in range(90)]
    y = np.repeat([0, 1, 2], 30)
    good = np.eye(3)[y] * 0.5 + RNG.uniform(0, 0.6, (90, 3))
    poor = RNG.dirichlet(np.ones(3), 90)
    classes = ["grade0", "grade1", "grade2"]
    a = _saved(tmp_path / "mc_a", "multiclass", classes, {"test": (ids, y, good)})
    b = _saved(tmp_path / "mc_b", "multiclass", classes, {"test": (ids, y, poor)})
    row = compare_runs([a, b]).iloc[0]
    expected = macro_auc_test(y, poor, good)
    assert row["label"] == "macro" and row["p_value"] == pytest.approx(expected["p_value"], abs=1e-4)
    assert row["difference"] == pytest.approx(expected["diff"], abs=1e-4)
    Y = RNG.integers(0, 2, (90, 2))
    Y[:12, 1] = -1  # nodule unknown for 12 cases: its test reads the other 78
    labels = ["effusion", "nodule"]
    a = _saved(tmp_path / "ml_a", "multilabel", labels,
               {"test": (ids, Y, np.clip(Y, 0, 1) * 0.5 + RNG.uniform(0, 0.6, (90, 2)))})
    b = _saved(tmp_path / "ml_b", "multilabel", labels, {"test": (ids, Y, RNG.uniform(size=(90, 2)))})
    table = compare_runs([a, b])
    assert list(table["label"]) == ["macro", "effusion", "nodule"] and list(table["n"]) == [90, 90, 78]
    assert (table["p_value"] < 0.01).all() and (table["difference"] < 0).all()


def test_runs_on_different_cases_or_tasks_are_refused_naming_the_case(tmp_path, capsys):
    a, b, *_ = _binary_pair(tmp_path)
    frame = pd.read_csv(b / "predictions.csv")
    frame.loc[frame["id"] == "img_25.png", "id"] = "img_99.png"
    frame.to_csv(b / "predictions.csv", index=False)
    assert main(["compare", str(a), str(b)]) == 2
    error = capsys.readouterr().err
    assert "has test case img_99.png" in error and "same split" in error and "Traceback" not in error
    frame.loc[frame["id"] == "img_99.png", "id"] = "img_25.png"
    frame.loc[frame["id"] == "img_30.png", "label"] = 1 - frame.loc[frame["id"] == "img_30.png", "label"]
    frame.to_csv(b / "predictions.csv", index=False)
    with pytest.raises(CompareRunsError, match="label test case img_30.png differently"):
        compare_runs([a, b])
    other = _saved(tmp_path / "mc", "multiclass", ["x", "y", "z"],
                   {"test": (["i0", "i1"], np.array([0, 1]), np.full((2, 3), 1 / 3))})
    with pytest.raises(CompareRunsError, match="same task and classes"):
        compare_runs([a, other])
    with pytest.raises(CompareRunsError, match="at least two"):
        compare_runs([a])
    with pytest.raises(CompareRunsError, match="no metrics.json or predictions.csv"):
        compare_runs([a, tmp_path / "nothing"])


def test_a_case_listed_twice_or_no_shared_split_is_refused(tmp_path):
    a, b, *_ = _binary_pair(tmp_path)
    frame = pd.read_csv(b / "predictions.csv")
    pd.concat([frame, frame[frame["id"] == "img_20.png"]]).to_csv(b / "predictions.csv", index=False)
    with pytest.raises(CompareRunsError, match="lists test case img_20.png twice"):
        compare_runs([a, b])
    frame[frame["split"] == "val"].to_csv(b / "predictions.csv", index=False)
    assert list(compare_runs([a, b])["split"]) == ["val"]  # only the split both scored
    frame[frame["split"] == "test"].assign(split="train").to_csv(b / "predictions.csv", index=False)
    with pytest.raises(CompareRunsError, match="no split scored by all of them"):
        compare_runs([a, b])


def test_a_predictions_file_lacking_columns_or_numbers_is_refused_naming_them(tmp_path, capsys):
    a, b, *_ = _binary_pair(tmp_path)
    (b / "predictions.csv").write_text("image,score,threshold,decision\nx.png,0.1,0.5,normal\n")  # tfmed predict's
    assert main(["compare", str(a), str(b)]) == 2
    error = capsys.readouterr().err
    assert f"{b / 'predictions.csv'} has no column split, id, label" in error and "Traceback" not in error
    frame = pd.read_csv(a / "predictions.csv").assign(score="high")
    frame.to_csv(b / "predictions.csv", index=False)
    with pytest.raises(CompareRunsError, match="values that are not numbers in column score"):
        compare_runs([a, b])
    (b / "predictions.csv").write_text("")
    with pytest.raises(CompareRunsError, match="predictions.csv: not a readable CSV file"):
        compare_runs([a, b])


def test_a_run_is_checked_against_its_manifest_unless_no_verify(tmp_path, capsys):
    from tfmed.run.manifest import IncompleteRunError, write_manifest

    a, b, *_ = _binary_pair(tmp_path)
    for run in (a, b):  # runs, not evaluation directories: they have a config.yaml and a manifest
        (run / "config.yaml").write_text("name: demo\n")
        write_manifest(run)
    assert len(compare_runs([a, b])) == 2
    frame = pd.read_csv(b / "predictions.csv")
    frame.loc[frame["id"] == "img_30.png", "score"] = 0.99
    frame.to_csv(b / "predictions.csv", index=False)
    assert main(["compare", str(a), str(b)]) == 2
    assert "predictions.csv: changed since the run wrote it" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--no-verify"]) == 0
    assert "integrity check skipped (--no-verify)" in capsys.readouterr().out
    (a / "MANIFEST.sha256").unlink()  # a run that did not finish
    assert len(compare_runs([a, b], verify=False)) == 2
    with pytest.raises(IncompleteRunError, match="incomplete run"):
        compare_runs([a, b])


@pytest.mark.parametrize("content", ['{"task": "binary", classes}', "[1, 2]"])
def test_a_damaged_metrics_file_is_named(tmp_path, capsys, content):
    a, b, *_ = _binary_pair(tmp_path)
    (b / "metrics.json").write_text(content)
    assert main(["compare", str(a), str(b)]) == 2
    error = capsys.readouterr().err
    assert f"{b / 'metrics.json'}" in error and ("not valid JSON" in error or "holds no JSON object" in error)


def test_an_output_inside_a_compared_directory_is_refused(tmp_path, capsys):
    a, b, *_ = _binary_pair(tmp_path)
    before = (b / "predictions.csv").read_bytes()
    assert main(["compare", str(a), str(b), "--output", str(b / "predictions.csv")]) == 2
    error = capsys.readouterr().err
    assert f"--output {b / 'predictions.csv'}: inside the run directory {b}" in error and "outside it" in error
    assert (b / "predictions.csv").read_bytes() == before


def test_a_p_value_from_the_permutation_test_is_named_as_such(tmp_path, capsys):
    """Two cases: DeLong's variance is 0, so the p-value comes from swapping the scores; the table, the CSV and
    an ensemble's member sentences say so rather than calling it DeLong's."""
    from tfmed.evaluation.comparison import compare_to_members, comparison_sentences

    ids, y = ["a.png", "b.png"], np.array([0, 1])
    a = _saved(tmp_path / "a", "binary", ["n", "p"], {"test": (ids, y, np.array([0.2, 0.8]))})
    b = _saved(tmp_path / "b", "binary", ["n", "p"], {"test": (ids, y, np.array([0.8, 0.2]))})
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "c.csv")]) == 0
    assert "a permutation test where their variance is 0" in capsys.readouterr().out
    row = pd.read_csv(tmp_path / "c.csv").iloc[0]
    assert row["test"] == PERMUTATION_TEST and row["p_value"] == pytest.approx(0.5)
    members = compare_to_members("binary", y, np.array([0.2, 0.8]), {"b": np.array([0.8, 0.2])})
    assert members["b"]["test"] == PERMUTATION_TEST
    assert comparison_sentences(members, "test") == [
        "test: ensemble AUC 1.000 vs member b 0.000 (difference +1.000, paired permutation p = 0.5000, as DeLong's "
        "variance is 0)."]


@pytest.mark.parametrize("extra, said", [
    ({"test_origin": "carved from the training images (same collection as training: an in-distribution estimate)"},
     "test: carved from the training images (same collection as training: an in-distribution estimate)"),
    ({"source": "folder:siteB"}, "test: the data evaluated (folder:siteB)"),  # tfmed evaluate --data
    ({}, None)])
def test_the_compared_test_split_says_where_it_came_from(tmp_path, capsys, extra, said):
    """A test AUC from a split carved out of the training images is not an external test: the table says which."""
    a, b, *_ = _binary_pair(tmp_path)
    metrics = json.loads((a / "metrics.json").read_text())
    (a / "metrics.json").write_text(json.dumps({**metrics, **extra}))
    assert main(["compare", str(a), str(b)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test: ")]
    assert lines == ([said] if said else [])
