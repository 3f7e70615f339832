"""Patients' sex and age read from the data, and figures for each subgroup (site, view, sex, age band) with a
test of whether sensitivity and specificity differ between the groups, in runs and in ``tfmed evaluate``."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, fisher_exact
from sklearn.metrics import roc_auc_score

from test_explain import tiny_svm_experiment  # registers the tiny explain_test_net backbone
from tfmed.config import ConfigError, ExperimentConfig
from tfmed.data.demographics import age_band, read_age, read_sex
from tfmed.data.sources.manifest import load_manifest
from tfmed.data.validate import validate_table
from tfmed.evaluation.subgroups import UNKNOWN_GROUP, difference_p, group_names, subgroup_figures
from tfmed.run.cli import main
from tfmed.run.experiment import run_experiment


@pytest.mark.parametrize("text, sex", [("F", "female"), ("m", "male"), ("Female", "female"), (" MALE ", "male"),
                                       ("O", "other"), ("", None), ("Unknown", None), ("U", None), (None, None)])
def test_sex_is_read_from_each_publishers_spelling(text, sex):
    value = read_sex(text)
    assert (pd.isna(value) if sex is None else value == sex)


@pytest.mark.parametrize("text, age", [("61", 61.0), ("61.5", 61.5), ("061Y", 61.0), ("018M", 1.5),
                                       ("026W", 26 * 7 / 365.25), ("003D", 3 / 365.25), ("", None), ("nan", None)])
def test_age_is_read_in_years_or_as_a_dicom_age(text, age):
    value = read_age(text)
    assert (pd.isna(value) if age is None else value == pytest.approx(age))


@pytest.mark.parametrize("reader, text, message", [
    (read_sex, "x", "sex 'x' is not F, M or O"), (read_age, "sixty", "age 'sixty' is not a number of years"),
    (read_age, "-2", "age '-2' is outside 0-130 years"), (read_age, "131", "outside 0-130")])
def test_values_that_name_no_sex_or_age_are_refused(reader, text, message):
    with pytest.raises(ValueError, match=message):
        reader(text)


def test_a_manifests_bad_sex_or_age_is_a_row_problem_with_its_fix(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,patient_id,sex,age\na.png,normal,p1,F,61\nb.png,tb,p2,female?,40\n"
                                    "c.png,tb,p3,M,400\nd.png,normal,p4,,\n")
    for name in "abcd":
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.zeros((8, 8), np.uint8))
    table = load_manifest(tmp_path / "m.csv")
    assert table.frame["sex"].fillna("?").tolist() == ["female", "?", "male", "?"]
    assert table.frame["age"].fillna(-1).tolist() == [61.0, 40.0, -1, -1]
    text = validate_table(table).format()
    assert ("row 3: " in text and "sex 'female?' is not F, M or O (female, male, other). Fix: write F, M or O, "
            "or leave it empty when unknown" in text)
    assert "row 4: " in text and "age '400' is outside 0-130 years. Fix: write the age in years" in text
    assert "row 2:" not in text and "row 5:" not in text  # empty is unknown, not wrong


def test_age_bands_start_at_each_edge_and_read_in_age_order():
    assert [age_band(a, [18, 65]) for a in (0, 17.99, 18, 64.9, 65, 120)] == ["0-17", "0-17", "18-64", "18-64",
                                                                              "65+", "65+"]
    frame = pd.DataFrame({"age": pd.array([70, 5, None, 30], dtype="Float64")})
    groups = group_names(frame, "age", [5, 18, 65])
    assert groups.tolist() == ["65+", "5-17", UNKNOWN_GROUP, "18-64"]
    y = np.array([0, 1, 0, 1])
    figures = subgroup_figures("multilabel", np.c_[y, 1 - y], np.c_[y * 0.5, y], groups, [0.5, 0.5], "youden",
                               ["a", "b"], "age")
    assert list(figures["groups"]) == ["5-17", "18-64", "65+", UNKNOWN_GROUP]  # by age, not as text ("18" < "5")


def test_each_groups_figures_and_the_tests_between_them_match_hand_counts():
    rng = np.random.default_rng(3)
    groups = np.array(["a"] * 40 + ["b"] * 40 + ["c"] * 30 + [UNKNOWN_GROUP] * 10, dtype=object)
    y = rng.integers(0, 2, len(groups))
    scores = np.clip(y * 0.3 + rng.uniform(0, 0.7, len(groups)) - (groups == "b") * 0.2, 0, 1)
    threshold = 0.45
    figures = subgroup_figures("binary", y, scores, groups, threshold, "youden", ["normal", "disease"])
    assert list(figures["groups"]) == ["a", "b", "c", UNKNOWN_GROUP]
    hits, negatives = [], []
    for name in ("a", "b", "c"):
        rows = groups == name
        positive, called = y[rows] == 1, scores[rows] >= threshold
        entry = figures["groups"][name]
        assert entry["n"] == rows.sum() and entry["n_positive"] == positive.sum()
        assert entry["auc"] == pytest.approx(roc_auc_score(y[rows], scores[rows]))
        assert entry["sensitivity"] == pytest.approx((called & positive).sum() / positive.sum())
        assert entry["specificity"] == pytest.approx((~called & ~positive).sum() / (~positive).sum())
        hits.append([(called & positive).sum(), (~called & positive).sum()])
        negatives.append([(~called & ~positive).sum(), (called & ~positive).sum()])
    assert figures["groups"]["b"]["sensitivity"] < figures["groups"]["a"]["sensitivity"]  # b's scores are lower
    # the unknown group has figures but is no group of the test
    assert figures["difference_test"] == "chi-square test"
    assert figures["sensitivity_p"] == pytest.approx(chi2_contingency(np.array(hits)).pvalue)
    assert figures["specificity_p"] == pytest.approx(chi2_contingency(np.array(negatives)).pvalue)
    two = subgroup_figures("binary", y[:80], scores[:80], groups[:80], threshold, "youden")
    assert two["difference_test"] == "Fisher's exact test"
    assert two["sensitivity_p"] == pytest.approx(fisher_exact(np.array(hits[:2])).pvalue)
    assert subgroup_figures("binary", y[:40], scores[:40], groups[:40], threshold) is None  # one group: nothing
    assert difference_p([(3, 0), (0, 0)]) is None  # the second group has no case
    # three groups, one of positives only: specificity is tested between the other two, and named so
    mixed = subgroup_figures("binary", np.array([1, 0, 1, 0, 1, 1]), np.array([.9, .1, .8, .7, .2, .6]),
                             np.array(["a", "a", "b", "b", "c", "c"]), 0.5)
    assert mixed["difference_test"] == "chi-square test for sensitivity, Fisher's exact test for specificity"
    classes = subgroup_figures("multiclass", y, np.c_[1 - scores, scores], groups, None, None, ["n", "d"])
    assert "difference_test" not in classes and classes["groups"]["c"]["auc"] == pytest.approx(
        roc_auc_score(y[groups == "c"], scores[groups == "c"]))


def write_patients(folder, n=72):
    """A manifest of PNGs of patients of both sexes and a range of ages (one image each); positives hold a
    bright square, fainter in the men's images, so that the model misses more of their disease."""
    rng = np.random.default_rng(1)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i in range(n):
        sex, label = "FM"[i % 2], (i // 2) % 2
        image = rng.normal(80, 12, (40, 40))
        if label:
            image[10:22, 10:22] += 110 if sex == "F" else 35
        name = f"img/{i}.png"
        cv2.imwrite(str(folder / name), image.clip(0, 255).astype(np.uint8))
        rows.append({"path": name, "label": label, "patient_id": f"p{i}", "sex": sex, "age": 20 + (i * 7) % 70})
    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


@pytest.mark.slow
def test_a_run_gives_each_sex_and_age_band_its_figures_and_evaluate_audits_other_data(tmp_path, capsys):
    csv = write_patients(tmp_path / "data")
    config = tiny_svm_experiment("audit", tmp_path, {"source": "manifest", "path": str(csv)},
                                 {"method": "patient", "test_fraction": 0.4, "val_fraction": 0.3},
                                 evaluation={"subgroups": ["site", "sex", "age"], "age_bands": [50]})
    run = run_experiment(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["subgroups"]) == {"sex", "age"}  # no site: every image is of one (unknown) site
    predictions = pd.read_csv(run / "predictions.csv")
    manifest = pd.read_csv(csv)
    manifest["image"] = [str(csv.parent / path) for path in manifest["path"]]
    rows = predictions.merge(manifest[["image", "sex", "age"]], left_on="id", right_on="image")
    test = rows[rows["split"] == "test"]
    threshold = metrics["thresholds"]["youden"]
    sexes = metrics["subgroups"]["sex"]["test"]
    counts = []
    for sex, name in (("F", "female"), ("M", "male")):
        part = test[test["sex"] == sex]
        positive, called = part["label"] == 1, part["score"] >= threshold
        entry = sexes["groups"][name]
        assert (entry["n"], entry["n_positive"]) == (len(part), positive.sum())
        assert entry["sensitivity"] == pytest.approx((called & positive).sum() / positive.sum())
        assert entry["auc"] == pytest.approx(roc_auc_score(part["label"], part["score"]))
        counts.append([(called & positive).sum(), (~called & positive).sum()])
    assert sexes["sensitivity_p"] == pytest.approx(fisher_exact(np.array(counts)).pvalue)
    bands = metrics["subgroups"]["age"]["val"]["groups"]
    val = rows[rows["split"] == "val"]
    assert {band: entry["n"] for band, entry in bands.items()} == {"0-49": (val["age"] < 50).sum(),
                                                                  "50+": (val["age"] >= 50).sum()}
    report = (run / "report.html").read_text()
    assert "test by sex: female AUC" in report and "Between the groups: sensitivity p = " in report
    assert "val by age band: 0-49 AUC" in report
    assert "alt='subgroups'" in report  # the forest plot of the test split's groups
    # two runs combined: the combination's groups, at its own thresholds chosen on validation
    combined = tmp_path / "combined"
    assert main(["ensemble", str(run), str(run_experiment(config)), "--output", str(combined)]) == 0
    together = json.loads((combined / "metrics.json").read_text())["subgroups"]["sex"]["test"]
    assert {name: entry["n"] for name, entry in together["groups"].items()} == {"female": len(test[test["sex"] == "F"]),
                                                                               "male": len(test[test["sex"] == "M"])}
    assert "test by sex: female AUC" in (combined / "report.html").read_text()
    # an external test audited by sex only, at the run's thresholds
    assert main(["evaluate", "--model", str(run), "--data", f"manifest:{csv}", "--subgroups", "sex"]) == 0
    evaluation = sorted((run / "evaluations").iterdir())[-1]
    audited = json.loads((evaluation / "metrics.json").read_text())["subgroups"]
    assert list(audited) == ["sex"] and {k: v["n"] for k, v in audited["sex"]["test"]["groups"].items()} == {
        "female": 36, "male": 36}
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data", f"manifest:{csv}", "--subgroups", "view"]) == 2
    assert "--subgroups names view, but no image of the data records it" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(run), "--subgroups", "sex,race"]) == 2
    assert "--subgroups is ['sex', 'race']; allowed: site, view, sex, age" in capsys.readouterr().err


def test_subgroup_rates_are_at_the_threshold_the_model_decides_at():
    from types import SimpleNamespace

    from tfmed.config import EvaluationConfig
    from tfmed.data.table import ImageTable
    from tfmed.run.experiment import subgroup_metrics

    labels = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.6, 0.4, 0.2, 0.5, 0.1, 0.8, 0.65, 0.55, 0.3, 0.7, 0.2])
    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(12)], "label": labels,
                          "sex": ["female"] * 6 + ["male"] * 6})
    model = SimpleNamespace(task="binary", classes=["normal", "sick"], threshold_method="high_specificity",
                            thresholds={"youden": 0.35, "high_specificity": 0.62, "fixed": 0.5})
    groups = subgroup_metrics(model, ImageTable(frame, ["normal", "sick"], "binary"), scores,
                              EvaluationConfig(subgroups=["sex"]))["sex"]["groups"]
    assert groups["female"]["sensitivity"] == pytest.approx(1 / 4)  # 0.9 of 0.9, 0.6, 0.4, 0.2 at 0.62
    assert groups["male"]["sensitivity"] == pytest.approx(2 / 4)  # at Youden's 0.35 it would be 3 / 4


def test_validate_counts_the_images_of_each_sex_and_age_band(tmp_path, capsys):
    csv = write_patients(tmp_path / "data", n=8)  # ages 20, 27, ..., 69; half women
    experiment = tmp_path / "audit.yaml"
    experiment.write_text(f"name: audit\ndata:\n  source: manifest\n  path: {csv}\nsplit:\n  method: patient\n"
                          "evaluation:\n  subgroups: [sex, age]\n  age_bands: [30, 60]\n")
    assert main(["validate", f"manifest:{csv}"]) == 0
    assert "sex: female 4, male 4\nage: 0-39 3, 40-59 3, 60-79 2\n" in capsys.readouterr().out  # default bands
    main(["validate", str(experiment)])
    assert "age: 0-29 2, 30-59 4, 60+ 2\n" in capsys.readouterr().out  # the experiment's bands


def test_a_subgroup_the_data_do_not_record_is_refused_before_a_run_starts(tmp_path):
    csv = write_patients(tmp_path / "data", n=8)
    config = tiny_svm_experiment("audit", tmp_path, {"source": "manifest", "path": str(csv)},
                                 {"method": "patient"}, evaluation={"subgroups": ["sex", "view"]})
    with pytest.raises(ConfigError, match="evaluation.subgroups names view, but no image of the data records it"):
        run_experiment(config)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("evaluation, message", [
    ({"subgroups": ["sex", "sex"]}, "names sex more than once"),
    ({"subgroups": ["ethnicity"]}, "allowed: site, view, sex, age"),
    ({"age_bands": [18, 65]}, "evaluation.subgroups does not name age"),
    ({"subgroups": ["age"], "age_bands": [65, 18]}, "increasing whole years"),
])
def test_subgroup_settings_are_checked(evaluation, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict({"evaluation": evaluation})
