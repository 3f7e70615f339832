"""LUNA16 as published: candidate lists read as volume rows of MetaImage scans, subsets, sampled negatives,
the settings it refuses, its FROC analysis, and a nodule experiment on a LUNA16-shaped tree of synthetic scans."""
import json
import threading
import time

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, DataConfig, ExperimentConfig
from tfmed.data import volume_inputs
from tfmed.data.sources import load_source
from tfmed.data.sources.luna16 import HEADER, load_luna16, load_reference
from tfmed.data.table import DataSourceError
from tfmed.data.validate import SOURCE_PROBLEMS, validate_table
from tfmed.data.volume_inputs import RecentVolumes
from tfmed.evaluation.froc import froc
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.{}"
# A scan of 20 x 20 x 12 voxels (x, y, z) of 1 x 1 x 2 mm; world = ORIGIN + index * SPACING (LPS mm).
SPACING, ORIGIN = np.array([1.0, 1.0, 2.0]), np.array([-10.0, -10.0, -12.0])


def write_scan(path, nodules_mm=(), seed=0):
    """A lung-like scan (-800 HU with noise) as LUNA16 ships it (.mhd + .raw), a 60 HU ball at each nodule."""
    rng = np.random.default_rng(seed)
    voxels = rng.normal(-800.0, 20.0, (12, 20, 20))  # stored z, y, x
    z, y, x = np.mgrid[0:12, 0:20, 0:20]
    world = np.stack([x, y, z], axis=-1) * SPACING + ORIGIN
    for center in nodules_mm:
        voxels[np.linalg.norm(world - center, axis=-1) <= 4.0] = 60.0
    image = sitk.GetImageFromArray(voxels.astype(np.int16))
    image.SetSpacing(SPACING.tolist())
    image.SetOrigin(ORIGIN.tolist())
    sitk.WriteImage(image, str(path))


def luna_tree(folder, scans=8, subsets=2):
    """``scans`` scans spread over ``subsets`` subset folders, and candidates_V2/candidates_V2.csv: each odd
    scan one nodule and three other candidates, each even scan three non-nodule candidates."""
    rng = np.random.default_rng(3)
    lines = [HEADER]
    for i in range(scans):
        subset = folder / f"subset{i % subsets}"
        subset.mkdir(parents=True, exist_ok=True)
        nodule = rng.uniform([-3, -3, -4], [3, 3, 4])
        write_scan(subset / f"{UID.format(i)}.mhd", [nodule] if i % 2 else [], seed=i)
        if i % 2:
            lines.append(f"{UID.format(i)},{nodule[0]:.2f},{nodule[1]:.2f},{nodule[2]:.2f},1")
        for _ in range(3):
            other = rng.uniform([-8, -8, -10], [8, 8, 6])
            if i % 2:  # keep the other candidates off the nodule
                other[0] = nodule[0] + 8.0 if nodule[0] < 0 else nodule[0] - 8.0
            lines.append(f"{UID.format(i)},{other[0]:.2f},{other[1]:.2f},{other[2]:.2f},0")
    (folder / "candidates_V2").mkdir(exist_ok=True)
    (folder / "candidates_V2" / "candidates_V2.csv").write_text("\n".join(lines) + "\n")
    return folder / "candidates_V2" / "candidates_V2.csv"


def write_candidates(folder, rows, subsets=("subset0",), scans=()):
    """A candidates.csv of ``rows`` beside empty scan files ``scans`` (uid -> subset) in ``subsets``."""
    folder.mkdir(parents=True, exist_ok=True)
    for subset in subsets:
        (folder / subset).mkdir(exist_ok=True)
    for uid, subset in dict(scans).items():
        (folder / subset / f"{uid}.mhd").write_text("")
    (folder / "candidates.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return folder / "candidates.csv"


# ---------------------------------------------------------------------------------------------- the source

def test_candidates_become_volume_rows_at_their_world_coordinates(tmp_path):
    csv = write_candidates(tmp_path, [
        f"{UID.format(1)},-56.08,-67.85,-311.92,0",     # line 2
        f"{UID.format(1)},53.21,-244.41,-245.17,1",      # line 3
        f"{UID.format(2)},103.24,-121.6,-286.62,0",      # line 4
        f"{UID.format(7)},1,2,3,0",                      # line 5: a scan in a subset not downloaded
        f"{UID.format(7)},4,5,6,1",                      # line 6: the same
        f"{UID.format(2)},abc,-121.6,-286.62,2",         # line 7: two row problems
    ], subsets=("subset0", "subset3"), scans={UID.format(1): "subset0", UID.format(2): "subset3"})
    table = load_luna16(csv)
    frame = table.frame
    assert table.classes == ["non_nodule", "nodule"] and table.task == "binary"
    assert frame["row"].tolist() == [2, 3, 4, 7]
    assert frame["image"].tolist()[:3] == [str(tmp_path / "subset0" / f"{UID.format(1)}.mhd")] * 2 + [
        str(tmp_path / "subset3" / f"{UID.format(2)}.mhd")]
    assert frame[["center_x", "center_y", "center_z"]].iloc[1].tolist() == [53.21, -244.41, -245.17]
    assert frame["patient_id"].tolist()[:3] == [UID.format(1), UID.format(1), UID.format(2)]
    assert frame["label"].tolist()[:3] == [0, 1, 0]
    assert [p[0] for p in frame[SOURCE_PROBLEMS].iloc[3]] == ["class '2' is not 0 or 1",
                                                             "coordX 'abc' is not a number"]
    assert table.excluded["problem"].tolist() == [
        f"skipped: 2 candidates of 1 scan not under {tmp_path} (subset folders found: subset0, subset3)"]
    report = validate_table(table.subset([3]), check_images=False)
    assert [p.row for p in report.problems] == [7, 7]


def test_subsets_after_the_path_keep_their_scans_and_the_others_are_counted(tmp_path):
    csv = write_candidates(tmp_path, [f"{UID.format(1)},1,2,3,0", f"{UID.format(1)},1,2,4,1",
                                      f"{UID.format(2)},5,6,7,0"],
                           subsets=("subset0", "subset9"), scans={UID.format(1): "subset0", UID.format(2): "subset9"})
    table = load_source(DataConfig(source=f"luna16:{csv}#9"))
    assert table.frame["patient_id"].tolist() == [UID.format(2)]
    assert table.excluded["problem"].tolist() == [
        "skipped: 2 candidates of scans in subset0, which is not among the subsets asked for (#9)"]
    assert load_luna16(csv, subsets="subset0, 9").frame["row"].tolist() == [2, 3, 4]
    with pytest.raises(DataSourceError, match=r"#5: no subset5 folder under .* \(found: subset0, subset9\)"):
        load_luna16(csv, subsets="5")
    with pytest.raises(DataSourceError, match="12 is not a LUNA16 subset"):
        load_luna16(csv, subsets="12")


def test_negatives_are_sampled_per_nodule_with_a_fixed_seed(tmp_path):
    rows = [f"{UID.format(1)},{i},0,0,{int(i % 10 == 0)}" for i in range(40)]  # 4 nodules, 36 others
    csv = write_candidates(tmp_path, rows, scans={UID.format(1): "subset0"})
    table = load_luna16(csv, negatives_per_positive=2)
    labels = table.frame["label"].to_numpy()
    assert (labels == 1).sum() == 4 and (labels == 0).sum() == 8
    assert table.excluded["problem"].tolist() == [
        "skipped: 28 non-nodule candidates not sampled (data.negatives_per_positive: 2, seed 0)"]
    again = load_luna16(csv, negatives_per_positive=2)
    assert again.frame["row"].tolist() == table.frame["row"].tolist()  # the same candidates every run
    assert len(load_luna16(csv, negatives_per_positive=100)) == 40 and load_luna16(csv).excluded.empty


def test_sampling_keeps_a_candidate_of_a_bad_class_for_validation_to_report(tmp_path):
    rows = [f"{UID.format(1)},1,0,0,0", f"{UID.format(1)},2,0,0,0", f"{UID.format(1)},3,0,0,1",
            f"{UID.format(1)},4,0,0,2"]                  # line 5: class 2
    table = load_luna16(write_candidates(tmp_path, rows, scans={UID.format(1): "subset0"}), negatives_per_positive=1)
    assert sorted(table.frame["row"].tolist())[-2:] == [4, 5] and len(table) == 3
    assert [p[0] for p in table.frame.set_index("row").loc[5, SOURCE_PROBLEMS]] == ["class '2' is not 0 or 1"]


def test_a_missing_scan_is_a_row_problem_once_every_subset_is_there(tmp_path):
    csv = write_candidates(tmp_path, [f"{UID.format(1)},1,2,3,0", f"{UID.format(5)},1,2,3,1"],
                           subsets=[f"subset{i}" for i in range(10)], scans={UID.format(1): "subset4"})
    table = load_luna16(csv)
    assert table.excluded.empty and len(table) == 2
    assert table.frame[SOURCE_PROBLEMS].iloc[1][0][0] == (f"scan {UID.format(5)}.mhd is in none of the subset "
                                                          f"folders under {tmp_path}")


def test_the_csv_and_its_folders_are_checked_first(tmp_path):
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,5.1\n")
    with pytest.raises(DataSourceError, match=r"no column 'class'.*candidates.csv or candidates_V2.csv"):
        load_luna16(tmp_path / "annotations.csv")
    csv = write_candidates(tmp_path / "flat", [f"{UID.format(1)},1,2,3,0"], subsets=())
    with pytest.raises(DataSourceError, match="no LUNA16 subset folder .* set data.root"):
        load_luna16(csv)
    with pytest.raises(DataSourceError, match="lists 3 names"):
        load_luna16(csv, classes=["a", "b", "c"])


@pytest.mark.parametrize("values, message", [
    ({"data": {"source": "luna16", "path": "c.csv"}}, "set views.enabled: true with views.center: lesion"),
    ({"data": {"source": "luna16", "path": "c.csv"}, "views": {"enabled": True, "center": "volume"}},
     "views.center: lesion"),
    ({"data": {"source": "manifest", "path": "m.csv", "negatives_per_positive": 5}},
     "only data.source luna16 uses it"),
    ({"data": {"source": "luna16", "path": "c.csv", "negatives_per_positive": 0}, "views": {"enabled": True}},
     "whole number >= 1"),
    ({"data": {"source": "luna16", "path": "c.csv", "task": "multiclass"}, "views": {"enabled": True}},
     "is binary"),
    ({"data": {"source": "luna16", "path": "c.csv", "label_columns": ["y"]}, "views": {"enabled": True}},
     "reads the publisher's columns"),
])
def test_luna16_settings_are_checked(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


# ---------------------------------------------------------------------------------------------------- FROC

def findings(rows):
    return pd.DataFrame(rows, columns=["scan", "x", "y", "z", "diameter_mm"])


def test_froc_counts_each_nodule_once_ignores_excluded_findings_and_averages_seven_rates():
    nodules = findings([("a", 0, 0, 0, 10.0), ("a", 50, 0, 0, 6.0), ("b", 0, 0, 0, 8.0)])
    excluded = findings([("a", 100, 0, 0, -1.0)])  # no diameter: 10 mm
    candidates = pd.DataFrame([
        ("a", 1, 0, 0, 0.90), ("a", 2, 2, 0, 0.95),   # both on the first nodule: it counts once, at 0.95
        ("a", 101, 0, 0, 0.99),                         # on the excluded finding: ignored
        ("a", 200, 0, 0, 0.50), ("a", 50, 0, 4, 0.70),  # false positives (the second 4 mm from a 3 mm radius)
        ("b", 0, 0, 3, 0.30), ("b", 300, 0, 0, 0.60), ("b", 310, 0, 0, 0.20)], columns=["scan", "x", "y", "z", "score"])
    result = froc(candidates, nodules, ["a", "b"], excluded, n_resamples=0)
    assert (result["nodules"], result["detected"], result["false_positives"], result["ignored"]) == (3, 2, 4, 1)
    # 0.95 finds 1 of 3 nodules with no false positive; 0.7, 0.6 and 0.5 add 3 (1.5 per scan) before 0.3 finds a
    # second: a third up to 1.5 false positives per scan, two thirds from there
    at = result["sensitivity_at_fp_per_scan"]
    assert [at[rate] for rate in ("0.125", "1", "2", "8")] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert result["cpm"] == pytest.approx((4 / 3 + 3 * 2 / 3) / 7)
    # a third scan without candidates adds a missed nodule and lowers the false positives per scan
    more = froc(candidates, findings([*nodules.itertuples(index=False), ("c", 0, 0, 0, 5.0)]), ["a", "b", "c"],
                excluded, n_resamples=0)
    assert more["nodules"] == 4 and more["sensitivity_at_fp_per_scan"]["8"] == pytest.approx(2 / 4)
    without_false = froc(candidates.iloc[[0, 5]], nodules, ["a", "b"], n_resamples=0)
    assert without_false["cpm"] == pytest.approx(2 / 3) and without_false["false_positives"] == 0


def test_the_froc_interval_resamples_scans():
    rng = np.random.default_rng(0)
    scans = [f"s{i}" for i in range(30)]
    nodules = findings([(scan, 0, 0, 0, 8.0) for scan in scans])
    candidates = pd.DataFrame([(scan, 0, 0, 0, rng.uniform(0.3, 1)) for scan in scans]
                              + [(scan, 100 + k, 0, 0, rng.uniform(0, 0.8)) for scan in scans for k in range(3)],
                              columns=["scan", "x", "y", "z", "score"])
    result = froc(candidates, nodules, scans, n_resamples=200)
    low, high = result["cpm_ci"]
    assert 0 <= low < result["cpm"] < high <= 1
    assert froc(candidates, nodules, scans, n_resamples=200)["cpm_ci"] == [low, high]  # seeded


def test_the_reference_is_read_for_the_evaluated_subsets(tmp_path):
    csv = write_candidates(tmp_path, [f"{UID.format(1)},1,2,3,0"], subsets=("subset0", "subset1"),
                           scans={UID.format(1): "subset0", UID.format(2): "subset1"})
    assert load_reference(csv) is None  # no annotations.csv: no FROC
    annotations = tmp_path / "evaluationScript" / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                                 f"{UID.format(1)},1,2,3,5.5\n{UID.format(2)},4,5,6,7.5\n")
    reference = load_reference(csv, subsets="1")
    assert reference.scans == [UID.format(2)] and reference.excluded is None
    assert reference.nodules.values.tolist() == [[UID.format(2), 4.0, 5.0, 6.0, 7.5]]
    (tmp_path / "annotations_excluded.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                                       f"{UID.format(1)},1,2,x,-1\n")
    with pytest.raises(DataSourceError, match=r"annotations_excluded.csv \(line 2\): coordZ 'x' is not a number"):
        load_reference(csv)


# --------------------------------------------------------------------------------------- reading volumes

def test_recent_volumes_read_each_volume_once_for_consecutive_and_parallel_rows(monkeypatch):
    reads = []

    def slow_read(path, series_uid=None):
        reads.append(path)
        time.sleep(0.05)
        if path == "broken":
            raise OSError("unreadable")
        return f"volume {path}"

    monkeypatch.setattr(volume_inputs, "read_volume", slow_read)
    recent = RecentVolumes(size=2)
    threads = [threading.Thread(target=recent.get, args=(("a", None),)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads == ["a"]  # six parallel calls for one volume: one read
    assert [recent.get((key, None)) for key in "abab"] == ["volume a", "volume b"] * 2 and reads == ["a", "b"]
    recent.get(("c", None))
    recent.get(("a", None))  # "a" was the oldest of three: read again
    assert reads == ["a", "b", "c", "a"]
    for _ in range(2):
        with pytest.raises(OSError):
            recent.get(("broken", None))
    assert reads[-2:] == ["broken", "broken"]  # a failure is not kept


# ---------------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_a_luna16_nodule_experiment_runs_end_to_end(tmp_path, capsys):
    csv = luna_tree(tmp_path / "LUNA16")
    spec = f"luna16:{csv}"
    assert main(["validate", spec]) == 0  # a bare LUNA16 source is read as volumes with centres
    assert "28 rows, task binary" in capsys.readouterr().out
    config = tiny_svm_experiment(
        "luna16_test", tmp_path, {"source": "luna16", "path": str(csv), "negatives_per_positive": 2},
        {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
        preprocess={"image_size": 16, "intensity": "window", "windows": [[-300, 1000]]},
        views={"enabled": True, "patch_mm": 15.0})
    run = run_experiment(config)
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 4 + 8 and (splits["label"] == 1).sum() == 4  # 4 nodules, 2 others per nodule
    assert splits.groupby("patient_id")["split"].nunique().max() == 1  # a scan's candidates in one split
    assert "not sampled" in pd.read_csv(run / "excluded_rows.csv")["problem"].iloc[0]
    assert "left out of the data: 16 non-nodule candidates not sampled" in capsys.readouterr().out  # not "1 bad row"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["splits"]["val"]["youden"]["roc_auc"] == 1.0  # a bright ball against lung: easy
    assert main(["evaluate", "--model", str(run), "--data", f"{spec}#1"]) == 0  # the odd scans: subset1
    assert f"{spec}#1: not scored: 12 candidates of scans in subset0, which is not among" in capsys.readouterr().out
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    assert "froc" not in json.loads((evaluation / "metrics.json").read_text())
    assert "LUNA16 FROC not computed: no annotations.csv" in (evaluation / "report.html").read_text()
    # with the challenge's reference: each odd scan's nodule, 8 mm across
    nodules = pd.read_csv(csv)
    nodules = nodules[nodules["class"] == 1].drop(columns="class").assign(diameter_mm=8.0)
    nodules.to_csv(tmp_path / "LUNA16" / "annotations.csv", index=False)
    assert main(["evaluate", "--model", str(run), "--data", f"{spec}#1"]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    result = json.loads((evaluation / "metrics.json").read_text())["froc"]
    assert (result["scans"], result["nodules"], result["detected"]) == (4, 4, 4)
    assert result["false_positives"] == 12 and 0 <= result["cpm"] <= 1  # every other candidate of subset1
    assert "LUNA16 FROC over 4 scans (4 nodules, 4 reached by a candidate): CPM" in (
        evaluation / "report.html").read_text()
    # subset0's scans hold no nodule: no FROC, said why, and the evaluation is written
    assert main(["evaluate", "--model", str(run), "--data", f"{spec}#0"]) == 0
    assert "LUNA16 FROC not computed: annotations.csv lists no nodule in the 4 scans evaluated" in \
        capsys.readouterr().out
    # a sample of the candidates cannot give false positives per scan
    (tmp_path / "sampled.yaml").write_text(f"data:\n  source: luna16\n  path: {csv}#1\n  negatives_per_positive: 1\n")
    assert main(["evaluate", "--model", str(run), "--data", str(tmp_path / "sampled.yaml")]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    assert "froc" not in json.loads((evaluation / "metrics.json").read_text())
    assert "LUNA16 FROC not computed: data.negatives_per_positive is 1, so only a sample" in capsys.readouterr().out
    # a scan gone: the fix offered is a YAML that a volume source accepts, and it works
    next((tmp_path / "LUNA16" / "subset1").glob("*.raw")).unlink()
    assert main(["evaluate", "--model", str(run), "--data", f"{spec}#1"]) == 2
    assert "sets exclude_bad_rows: true to leave them out" in capsys.readouterr().err
    (tmp_path / "leave_out.yaml").write_text(f"data:\n  source: luna16\n  path: {csv}#1\n  exclude_bad_rows: true\n")
    assert main(["evaluate", "--model", str(run), "--data", str(tmp_path / "leave_out.yaml")]) == 0
    # the unreadable scan's nodule is not counted as one the model missed
    assert "1 scan(s) of those subsets are not counted: every candidate of theirs was left out as a bad row" in \
        capsys.readouterr().out
    result = json.loads((sorted((run / "evaluations").iterdir())[-1] / "metrics.json").read_text())["froc"]
    assert (result["scans"], result["nodules"], result["detected"], len(result["scans_not_scored"])) == (3, 3, 3, 1)


def test_froc_scores_a_twice_hit_nodule_at_its_higher_score():
    """A nodule hit twice counts once, at the higher score: taking the lower one (min for max) would rank the
    false positive scored between the two hits first, and the nodule would never be found at 0 FP."""
    nodules = pd.DataFrame({"scan": ["a"], "x": [0.0], "y": [0.0], "z": [0.0], "diameter_mm": [10.0]})
    candidates = pd.DataFrame({"scan": ["a"] * 3, "x": [1.0, 2.0, 100.0], "y": 0.0, "z": 0.0,
                               "score": [0.9, 0.1, 0.5]})  # hits at 0.9 and 0.1, a false positive at 0.5
    result = froc(candidates, nodules, ["a"], n_resamples=0)
    # by hand: at threshold 0.9 the one nodule is found with no false positive -> sensitivity 1 at every rate
    assert result["cpm"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in result["sensitivity_at_fp_per_scan"].values())


def test_froc_candidate_exactly_one_radius_away_is_not_a_hit():
    """The hit rule is strict, distance < diameter / 2 (LUNA16's evaluation script): a candidate exactly 3 mm
    from a 6 mm nodule's centre is a false positive, not a detection (a <= would count it)."""
    nodules = pd.DataFrame({"scan": ["a"], "x": [0.0], "y": [0.0], "z": [0.0], "diameter_mm": [6.0]})
    candidates = pd.DataFrame({"scan": ["a"], "x": [0.0], "y": [3.0], "z": [0.0], "score": [0.9]})
    result = froc(candidates, nodules, ["a"], n_resamples=0)
    assert (result["detected"], result["false_positives"]) == (0, 1)
    inside = froc(candidates.assign(y=2.999), nodules, ["a"], n_resamples=0)
    assert (inside["detected"], inside["false_positives"]) == (1, 0)


def test_row_center_in_millimetres_wins_over_the_voxel_centre():
    """A row with both center_x/y/z (mm) and center_slice/row/column uses the millimetres, as documented;
    checking the voxel columns first would silently use the other centre."""
    from tfmed.data.volumes import Volume
    volume = Volume(np.zeros((4, 5, 6), np.float32), (2.0, 1.0, 1.0), np.zeros(3), np.eye(3))
    row = {"center_x": 1.0, "center_y": 1.0, "center_z": 1.0,
           "center_slice": 3, "center_row": 4, "center_column": 5}
    got = volume_inputs.row_center(volume, row, "lesion")
    mm_only = volume_inputs.row_center(volume, {k: row[k] for k in ("center_x", "center_y", "center_z")}, "lesion")
    voxel_only = volume_inputs.row_center(
        volume, {k: row[k] for k in ("center_slice", "center_row", "center_column")}, "lesion")
    assert not np.allclose(mm_only, voxel_only)  # the two centres name different places
    np.testing.assert_allclose(got, mm_only)
