"""``export_run``: a plain or anonymised copy of a run directory that verifies and leaks no patient id."""
import json
import os
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from tfmed.backbones.registry import _REGISTRY, BackboneSpec, register
from tfmed.config import ExperimentConfig
from tfmed.errors import TfmedError
from tfmed.run.evaluate import evaluate_run
from tfmed.run.experiment import run_experiment
from tfmed.run.explain import explain_run
from tfmed.run.export import ExportError, export_run, pseudonym
from tfmed.run.manifest import MANIFEST_FILE, IncompleteRunError, RunIntegrityError, read_manifest, verify_run, write_manifest

IDS = [f"PAT-{k:04d}" for k in range(1, 9)] + [f"MRN{123450 + k}" for k in range(8)]
MISSING_ID = "PAT-0099"  # its one image is missing: the row lands in excluded_rows.csv and the report
TEXT = {".csv", ".json", ".yaml", ".html", ".txt", ".sha256"}
BACKBONE = "export_test_net"  # two small convolutions: the run takes seconds, and export does not care


def _tiny_backbone(x, include_top):
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(x)
    return keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block2_conv")(x)


if BACKBONE not in _REGISTRY:
    register(BackboneSpec(name=BACKBONE, builder=_tiny_backbone, preprocessing="tf", default_size=32,
                          taps={"early": "block1_conv", "middle": "block1_conv", "late": "block2_conv",
                                "stage1": "block1_conv", "stage2": "block2_conv"},
                          blocks=["block1_", "block2_"], imagenet_file="", imagenet_url="", min_size=8))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished run (with an evaluation and explanations) on images in folders named after patients."""
    base = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    rows = []
    for k, patient in enumerate(IDS):
        (base / "data" / patient).mkdir(parents=True)
        for j in range(3):
            label = (k + j) % 2
            image = rng.normal(90, 20, (32, 32))
            if label:
                image[6:20, 8:22] += 110
            path = base / "data" / patient / f"scan_{patient}_{j}.png"
            cv2.imwrite(str(path), image.clip(0, 255).astype(np.uint8))
            rows.append({"path": str(path), "label": ["normal", "tb"][label], "patient_id": patient,
                         "sex": "FM"[k % 2], "age": 60 + 3 * k})  # 6 patients of 90 or older
    rows.append({"path": str(base / "data" / MISSING_ID / "scan.png"), "label": "normal", "patient_id": MISSING_ID})
    pd.DataFrame(rows).to_csv(base / "manifest.csv", index=False)
    config = ExperimentConfig.from_dict({
        "name": "export_demo", "runs_dir": str(base / "runs"),
        "data": {"source": "manifest", "path": str(base / "manifest.csv"), "classes": ["normal", "tb"],
                 "exclude_bad_rows": True},
        "split": {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
        "preprocess": {"image_size": 32},
        "model": {"backbone": BACKBONE, "weights": None, "svm": {"taps": ["middle"], "C": [1.0], "cv": 3}}})
    run = run_experiment(config)
    if not (run / MANIFEST_FILE).is_file():
        write_manifest(run)
    explain_run(run, method="gradcam", per_group=1)
    evaluate_run(run)
    write_manifest(run)  # list the later outputs too, so that a plain copy's manifest equals this one
    return base, run


@pytest.fixture(scope="module")
def anonymised(study, tmp_path_factory):
    return export_run(study[1], tmp_path_factory.mktemp("share") / "copy", anonymise=True)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_the_source_run_names_patients_where_the_export_must_look(study):
    base, run = study
    names = [p.relative_to(run).as_posix() for p in _files(run)]
    overlays = [n for n in names if n.startswith("explanations/") and n.endswith(".png")]
    # overlays are numbered, never named after images: a file name is no place for an id to hide
    assert overlays and not any("PAT-" in n or "MRN" in n for n in overlays)
    assert any("PAT-" in line for line in (run / next(n for n in names if n.endswith("explanations.csv"))).open())
    for name in ("splits.csv", "predictions.csv", "excluded_rows.csv", "report.html"):
        assert "PAT-00" in (run / name).read_text(), name
    assert str(base) in (run / "config.yaml").read_text()


def test_the_anonymised_copy_holds_no_patient_id_and_no_absolute_path(study, anonymised):
    base, run = study
    for path in _files(anonymised):
        relative = path.relative_to(anonymised).as_posix()
        data = path.read_bytes()
        for patient in IDS + [MISSING_ID]:
            assert patient not in relative and patient.encode() not in data, (relative, patient)
        if path.suffix in TEXT and not relative.startswith("model/"):  # the model stays byte-identical
            text = data.decode("utf-8")
            assert str(base) not in text and os.getcwd() not in text, relative
    environment = json.loads((anonymised / "environment.json").read_text())
    assert environment["cwd"] == "."
    assert not any(str(a).startswith("/") for a in environment["command"])
    note = (anonymised / "ANONYMISED.txt").read_text()
    assert f"{len(IDS) + 1} patient ids" in note
    original = pd.read_csv(run / "splits.csv")
    ages = pd.read_csv(anonymised / "splits.csv")["age"]
    old = original["age"] >= 90
    assert original["age"].max() == 105 and ages.max() == 90  # a very old age names few people
    assert (ages[old] == 90).all() and ages[~old].tolist() == original.loc[~old, "age"].tolist()
    assert f"{int(old.sum())} ages of 90 years or more were written as 90" in note


def test_anonymised_ids_group_the_same_rows_and_scores_are_unchanged(study, anonymised):
    run = study[1]
    before = pd.read_csv(run / "splits.csv", dtype=str, keep_default_na=False)
    after = pd.read_csv(anonymised / "splits.csv", dtype=str, keep_default_na=False)
    pairs = set(zip(before["patient_id"], after["patient_id"]))
    assert len(pairs) == before["patient_id"].nunique() == after["patient_id"].nunique() == len(IDS)
    assert after["patient_id"].str.fullmatch(r"anon-[0-9a-f]{16}").all()
    assert after["image"].str.startswith("anon-").all()  # relative to the images' common folder
    rewritten = ["patient_id", "image", "age"]  # ages are capped (see above)
    assert before.drop(columns=rewritten).equals(after.drop(columns=rewritten))
    for name in ("predictions.csv", next(run.glob("evaluations/*/predictions.csv")).relative_to(run)):
        scores = [pd.read_csv(folder / name, dtype=str)["score"].tolist() for folder in (run, anonymised)]
        assert scores[0] == scores[1]
    explanations = pd.read_csv(next(anonymised.glob("explanations/*/explanations.csv")))
    for overlay in explanations["overlay"]:  # the CSV names the renamed overlay files
        assert next(anonymised.glob(f"explanations/*/{overlay}"), None) is not None, overlay


def test_a_given_salt_gives_the_same_hashes_and_a_random_one_does_not(study, anonymised, tmp_path):
    run = study[1]
    first = export_run(run, tmp_path / "a", anonymise=True, salt="team-secret")
    second = export_run(run, tmp_path / "b", anonymise=True, salt="team-secret")
    ids = [set(pd.read_csv(out / "splits.csv")["patient_id"]) for out in (first, second, anonymised)]
    assert ids[0] == ids[1] == {pseudonym(p, "team-secret") for p in IDS}
    assert not ids[0] & ids[2]
    assert "team-secret" not in "".join(p.read_bytes().decode("latin-1") for p in _files(first))


def test_copies_verify_and_keep_the_model_byte_for_byte(study, anonymised, tmp_path):
    run = study[1]
    plain = export_run(run, tmp_path / "plain")
    for copy in (plain, anonymised):
        verify_run(copy)
        for path in _files(run / "model"):
            assert (copy / path.relative_to(run)).read_bytes() == path.read_bytes()
    assert read_manifest(plain) == read_manifest(run)
    # a plain copy keeps the run's manifest byte for byte, and so its digest, whatever was added beside it
    source = shutil.copytree(run, tmp_path / "grown")
    (source / "evaluations" / "later.txt").write_text("an evaluation made after the manifest")
    copy = export_run(source, tmp_path / "plain2")
    assert (copy / MANIFEST_FILE).read_bytes() == (source / MANIFEST_FILE).read_bytes()
    assert verify_run(copy) == verify_run(source) and (copy / "evaluations" / "later.txt").is_file()
    assert _files(run / "model")[0].relative_to(run).as_posix() in read_manifest(anonymised)


def test_an_existing_target_or_a_folder_that_is_not_a_run_is_refused(study, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_run(study[1], tmp_path / "taken")
    with pytest.raises(TfmedError, match="not a tfmed run directory"):
        export_run(tmp_path / "taken", tmp_path / "new")
    with pytest.raises(ExportError, match="inside the run directory"):
        export_run(study[1], study[1] / "share")
    with pytest.raises(ExportError, match="salt is used only with anonymise"):
        export_run(study[1], tmp_path / "new", salt="team-secret")
    assert not (tmp_path / "new").exists() and not (study[1] / "share").exists()


def test_a_source_changed_after_its_manifest_was_written_is_refused(study, tmp_path):
    source = shutil.copytree(study[1], tmp_path / "run")
    write_manifest(source)
    with open(source / "metrics.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(RunIntegrityError, match="metrics.json: changed"):
        export_run(source, tmp_path / "out", anonymise=True)
    assert not (tmp_path / "out").exists()
    copy = export_run(source, tmp_path / "out", verify=False)  # a plain copy of the run as it is, manifest too
    with pytest.raises(RunIntegrityError, match="out/metrics.json: changed"):
        verify_run(copy)
    (source / MANIFEST_FILE).unlink()  # a run that never finished
    with pytest.raises(IncompleteRunError, match="incomplete run"):
        export_run(source, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_an_id_the_export_cannot_rewrite_removes_the_copy(study, tmp_path):
    source = shutil.copytree(study[1], tmp_path / "run")
    (source / "evaluations" / "notes.bin").write_bytes(b"\x00\xff\x00 " + IDS[3].encode() + b" \x00")
    with pytest.raises(ExportError, match=r"out/evaluations/notes.bin: still holds a patient id in its bytes"):
        export_run(source, tmp_path / "out", anonymise=True, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no copy, no partial folder


def test_numeric_ids_are_replaced_as_tokens_but_numbers_are_not(tmp_path):
    """A hand-made run whose patients are 17 and 1234: ids inside paths change, 0.17 and counts do not."""
    run = tmp_path / "runs" / "demo" / "20260101-000000"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.npy").write_bytes(b"\x93NUMPY 17 0.17")
    (run / "config.yaml").write_text(f"name: demo\ndata:\n  path: {tmp_path}/data\nrows: 1234\n")
    pd.DataFrame({"row": [2, 1234], "image": [f"{tmp_path}/data/17/scan_17.png", f"{tmp_path}/data/1234/a.png"],
                  "patient_id": [17, 1234], "score": ["0.17", "0.1234"],
                  "scores": ["[0.1234, 2e-1234]", "[0.17, 1.0]"]}).to_csv(run / "splits.csv", index=False)
    (run / "metrics.json").write_text(json.dumps({"n": 1234, "auc": 0.17, "note": "17 of 1234 at 0.1234"}))
    (run / "report.html").write_text(f"<td>17</td><td>0.17</td><td>{tmp_path}/data/17/scan_17.png</td>")
    (run / "explanations" / "t").mkdir(parents=True)
    (run / "explanations" / "t" / "003_TP_scan_17.png").write_bytes(b"\x89PNG")
    write_manifest(run)
    out = export_run(run, tmp_path / "out", anonymise=True, salt="s")
    splits = pd.read_csv(out / "splits.csv", dtype=str)
    assert splits["patient_id"].tolist() == [pseudonym("17", "s"), pseudonym("1234", "s")]
    assert splits["image"].tolist() == [f"{pseudonym('17', 's')}/scan_{pseudonym('17', 's')}.png",
                                        f"{pseudonym('1234', 's')}/a.png"]
    assert splits["row"].tolist() == ["2", "1234"] and splits["score"].tolist() == ["0.17", "0.1234"]
    assert splits["scores"].tolist() == ["[0.1234, 2e-1234]", "[0.17, 1.0]"]  # text, but numbers in it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 1234 and metrics["auc"] == 0.17
    assert metrics["note"] == f"17 of {pseudonym('1234', 's')} at 0.1234"  # a short number alone is no id
    assert (out / "report.html").read_text() == (f"<td>17</td><td>0.17</td><td>{pseudonym('17', 's')}/scan_"
                                                 f"{pseudonym('17', 's')}.png</td>")
    assert "rows: 1234" in (out / "config.yaml").read_text() and "path: ." in (out / "config.yaml").read_text()
    assert (out / "explanations" / "t" / f"003_TP_scan_{pseudonym('17', 's')}.png").is_file()
    assert (out / "model" / "weights.npy").read_bytes() == b"\x93NUMPY 17 0.17"


def test_ids_inside_file_names_are_replaced_by_what_each_row_says_and_searched_for_inside_words(tmp_path):
    """Patients 10 and 3 (short numbers, found by no search of text) and MRN40000 (glued to other letters)."""
    run = tmp_path / "runs" / "demo" / "20260101-000000"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.npy").write_bytes(b"\x93NUMPY")
    data = tmp_path / "data3"  # a 3 in the data folder's name is not patient 3's
    images = [f"{data}/10/p10_x.png", f"{data}/3/p3_x.png", f"{data}/MRN40000/IMGMRN40000x0.png"]
    (run / "config.yaml").write_text(f"name: demo\ndata:\n  path: {data}\n")
    pd.DataFrame({"image": images, "patient_id": ["10", "3", "MRN40000"], "label": [0, 1, 0]}).to_csv(
        run / "splits.csv", index=False)
    pd.DataFrame({"id": images, "score": [0.1, 0.9, 0.2]}).to_csv(run / "predictions.csv", index=False)
    (run / "run.log").write_text(f"scored {images[0]}\nskipped {images[2]} (3 of 10 done)\n")
    write_manifest(run)
    out = export_run(run, tmp_path / "out", anonymise=True, salt="s")
    h10, h3, mrn = (pseudonym(patient, "s") for patient in ("10", "3", "MRN40000"))
    expected = [f"{h10}/p{h10}_x.png", f"{h3}/p{h3}_x.png", f"{mrn}/IMG{mrn}x0.png"]
    assert pd.read_csv(out / "splits.csv")["image"].tolist() == expected
    assert pd.read_csv(out / "predictions.csv")["id"].tolist() == expected  # a table that names no patient
    assert (out / "run.log").read_text() == f"scored {expected[0]}\nskipped {expected[2]} (3 of 10 done)\n"
    assert not [p for p in _files(out) if b"MRN40000" in p.read_bytes()]
    # the search for ids left in the copy finds one glued to other letters too
    (run / "model" / "notes.txt").write_text("from IMGMRN40000x0.png")
    write_manifest(run)
    with pytest.raises(ExportError, match=r"out2/model/notes.txt: still holds a patient id in its text"):
        export_run(run, tmp_path / "out2", anonymise=True)


def test_a_file_named_after_an_image_whose_short_id_adjoins_letters_is_renamed_as_its_row_says(tmp_path):
    """Patient 16's image IMG16x12.png: its overlay 002_TN_IMG16x12.png and the table naming that overlay."""
    run = tmp_path / "runs" / "demo" / "20260101-000000"
    (run / "model").mkdir(parents=True)
    (run / "explanations").mkdir()
    (run / "model" / "weights.npy").write_bytes(b"\x93NUMPY")
    image, numbered = f"{tmp_path}/data/img/IMG16x12.png", f"{tmp_path}/data/img/16.png"
    (run / "config.yaml").write_text(f"name: demo\nbatch_size: 16\ndata:\n  path: {tmp_path}/data\n")
    pd.DataFrame({"image": [image, numbered], "patient_id": ["16", "16"], "label": [0, 1]}).to_csv(
        run / "splits.csv", index=False)
    (run / "explanations" / "002_TN_IMG16x12.png").write_bytes(b"\x89PNG")
    pd.DataFrame({"file": [image], "overlay": ["002_TN_IMG16x12.png"]}).to_csv(run / "explanations.csv",
                                                                                 index=False)
    write_manifest(run)
    out = export_run(run, tmp_path / "out", anonymise=True, salt="s")
    stem = f"IMG{pseudonym('16', 's')}x12"
    assert [p.name for p in (out / "explanations").iterdir()] == [f"002_TN_{stem}.png"]
    assert pd.read_csv(out / "explanations.csv")["overlay"].tolist() == [f"002_TN_{stem}.png"]
    assert not [p for p in _files(out) if "IMG16x12" in p.name or b"IMG16x12" in p.read_bytes()]
    assert "batch_size: 16\n" in (out / "config.yaml").read_text()  # a number is not a file name's stem


def test_dicom_series_uids_are_hashed_like_patient_ids(tmp_path):
    """A CT run's splits.csv names each volume's SeriesInstanceUID, which links the copy back to the study."""
    run = tmp_path / "runs" / "demo" / "20260101-000000"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.npy").write_bytes(b"\x93NUMPY")
    uid = "1.2.840.113619.2.55.3.604688119.971.1292415340.347"
    (run / "config.yaml").write_text(f"name: demo\ndata:\n  path: {tmp_path}/data\n")
    pd.DataFrame({"image": [f"{tmp_path}/data/ct/{uid}"], "patient_id": ["LIDC-0042"], "series_uid": [uid],
                  "label": [1]}).to_csv(run / "splits.csv", index=False)
    (run / "run.log").write_text(f"read series {uid}\n")
    write_manifest(run)
    out = export_run(run, tmp_path / "out", anonymise=True, salt="s")
    splits = pd.read_csv(out / "splits.csv", dtype=str)
    assert splits["series_uid"].tolist() == [pseudonym(uid, "s")] and splits["image"][0].endswith(pseudonym(uid, "s"))
    assert not [p for p in _files(out) if uid.encode() in p.read_bytes() or uid in p.name]
    assert "patient ids (and DICOM series UIDs)" in (out / "ANONYMISED.txt").read_text()
