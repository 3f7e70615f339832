"""Volumes as data: manifests of series folders and NIfTI files with lesion centres, their validation, the
tf.data pipeline of 2-D views, both modes on views, and whole experiments on a synthetic nodule set."""
import json
import os

import nibabel
import numpy as np
import pandas as pd
import pytest
import skops.io
import tensorflow as tf
from PIL import Image

import test_explain  # noqa: F401  (registers the tiny explain_test_net backbone)
from test_volumes import write_series
from tfmed.config import (AugmentConfig, ConfigError, ExperimentConfig, FinetuneConfig, PreprocessConfig,
                          StageConfig, TTAConfig, ViewsConfig)
from tfmed.data.pipeline import ImageInputs, PipelineError, make_dataset
from tfmed.data.sources.manifest import load_manifest
from tfmed.data.table import ImageTable
from tfmed.data.validate import validate_table
from tfmed.data.volume_inputs import VolumeSampler, check_volume_rows
from tfmed.errors import TfmedError
from tfmed.explain import FlatMapWarning, gradcam
from tfmed.modes.finetune import FineTuner
from tfmed.modes.svm import FITTED_FILE, SPEC_FILE, FeatureSVM
from tfmed.run.artifact import TrainedModel
from tfmed.run.experiment import run_experiment

# A NIfTI volume of 20 x 20 x 12 voxels (i, j, k), 1 x 1 x 2 mm, as the synthetic nodule set uses.
SHAPE = (20, 20, 12)
VOXEL_MM = np.array([1.0, 1.0, 2.0])
NODULE_HU, BACKGROUND_HU = 60.0, -800.0


def write_nodule_volume(path, nodule_at=None, radius_mm=4.0, seed=0):
    """A lung-like background (HU -800 with noise) and, when ``nodule_at`` (voxel i, j, k) is given, a
    soft-tissue sphere there. Returns the LPS position (mm) of ``nodule_at`` (or of the centre)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(BACKGROUND_HU, 20.0, SHAPE).astype(np.float32)
    affine = np.diag(list(VOXEL_MM) + [1.0])
    affine[:3, 3] = [-10.0, -10.0, -12.0]
    at = np.array(nodule_at if nodule_at is not None else [s // 2 for s in SHAPE], dtype=float)
    if nodule_at is not None:
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij"), axis=-1)
        data[(((grid - at) * VOXEL_MM) ** 2).sum(-1) <= radius_mm ** 2] = NODULE_HU
    nibabel.save(nibabel.Nifti1Image(data, affine), str(path))
    ras = affine[:3, :3] @ at + affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def nodules(tmp_path_factory):
    """Twelve NIfTI volumes (six with a nodule off the volume centre) and a manifest with LPS centres."""
    folder = tmp_path_factory.mktemp("nodules")
    rng = np.random.default_rng(1)
    lines = ["path,label,patient_id,center_x,center_y,center_z"]
    for i in range(12):
        at = [10, 10, 6] + rng.integers(-3, 4, 3)
        center = write_nodule_volume(folder / f"case{i:02d}.nii.gz", at if i % 2 else None, seed=i)
        if i % 2 == 0:  # a background case is centred somewhere in the lung as well
            center = center + rng.uniform(-3, 3, 3)
        lines.append(f"case{i:02d}.nii.gz,{'nodule' if i % 2 else 'background'},p{i},"
                     + ",".join(f"{v:.3f}" for v in center))
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def views_config(**changes) -> ViewsConfig:
    return ViewsConfig(**{"enabled": True, "patch_mm": 15.0, "spacing_mm": 1.0, **changes})


def nodule_table(folder) -> ImageTable:
    return load_manifest(folder / "manifest.csv", classes=["background", "nodule"])


# ------------------------------------------------------------------------------------------ configuration

@pytest.mark.parametrize("values, message", [
    ({"augment": {"center_jitter_mm": 2.0}, "model": {"mode": "finetune"}},
     "augment.center_jitter_mm is set, but it acts on 2-D views"),
    ({"model": {"svm": {"view_fusion": "per_view"}}}, "model.svm.view_fusion is set, but it acts on 2-D views"),
    ({"views": {"planes": "ciompi9"}}, "views.planes is 'ciompi9'; it is set but views.enabled is false"),
    ({"views": {"enabled": True}, "preprocess": {"intensity": "standardize"}}, "needs train-split statistics"),
    ({"views": {"enabled": True}, "preprocess": {"intensity": "histogram"}},
     "'histogram' needs train-split statistics"),
    ({"views": {"enabled": True, "planes": "adjacent"},
      "preprocess": {"intensity": "window", "windows": [[-600, 1500], [40, 400], [400, 1800]]}},
     "takes one window"),
    ({"views": {"enabled": True, "planes": "adjacent"}, "model": {"svm": {"view_fusion": "per_view"}}},
     "'adjacent' gives one"),
    ({"views": {"enabled": True, "slice_gap_mm": 2.0}}, "only planes: adjacent uses it"),
    ({"views": {"enabled": True, "patch_mm": 5.0}}, "gives 5 pixels; a view needs at least 8"),
    ({"views": {"enabled": True}, "model": {"mode": "ensemble", "ensemble": {"members": [
        {"mode": "svm"}, {"mode": "finetune", "preprocess": {"intensity": "standardize"}}]}}},
     r"members\[1\].*preprocess.intensity 'standardize' needs train-split statistics"),
    ({"views": {"enabled": True}, "model": {"mode": "finetune"}, "augment": {"view_rotation_degrees": 200}},
     "at most 180"),
])
def test_view_settings_are_checked_where_they_are_set(values, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_dict(values)


def test_a_views_config_counts_its_views_and_pixels():
    assert views_config(planes="ciompi9").count == 9
    assert views_config(patch_mm=48.0, spacing_mm=0.75).patch_pixels == 64
    assert ViewsConfig().count == 0


# ---------------------------------------------------------------------------------------------- manifests

def test_manifest_rows_name_volumes_with_centres_series_and_header_patient_ids(tmp_path):
    write_series(tmp_path / "series_a", count=4)
    write_nodule_volume(tmp_path / "b.nii.gz")
    (tmp_path / "m.csv").write_text(
        "path,label,patient_id,center_x,center_y,center_z,center_slice,center_row,center_column,series_uid\n"
        "series_a,1,,,,,1,20.5,30,1.2.826.0.1.3680043.8.498.1\n"
        "b.nii.gz,0,pb,1.5,-2,3,,,,\n"
        "b.nii.gz,0,pb,abc,-2,3,,,,\n"
        "b.nii.gz,0,pb,1,2,,,,,\n")
    table = load_manifest(tmp_path / "m.csv")
    frame = table.frame
    assert frame["patient_id"].tolist()[:2] == ["1CT1", "pb"]  # the first from the series' DICOM header
    assert frame[["center_slice", "center_row", "center_column"]].iloc[0].tolist() == [1.0, 20.5, 30.0]
    assert frame[["center_x", "center_y", "center_z"]].iloc[1].tolist() == [1.5, -2.0, 3.0]
    assert frame["series_uid"].iloc[0] == "1.2.826.0.1.3680043.8.498.1"
    problems = [items for items in frame["source_problems"]]
    assert problems[0] == () and problems[1] == ()
    assert problems[2][0][0] == "center_x 'abc' is not a number"
    assert "gives center_x, center_y but not all of center_x, center_y, center_z" in problems[3][0][0]


# --------------------------------------------------------------------------------------------- validation

def test_volume_rows_are_read_once_and_every_problem_names_its_row(tmp_path):
    write_nodule_volume(tmp_path / "a.nii.gz")
    write_series(tmp_path / "mixed", count=3)
    write_series(tmp_path / "mixed", count=3, series="1.2.3.4", names=[f"other{i}" for i in range(3)])
    (tmp_path / "flat.png").write_bytes(b"not a volume")
    (tmp_path / "m.csv").write_text(
        "path,label,patient_id,center_x,center_y,center_z\n"
        "a.nii.gz,0,p1,0,0,0\n"          # line 2: fine
        "a.nii.gz,1,p1,,,\n"             # line 3: no centre
        "a.nii.gz,1,p1,0,0,500\n"        # line 4: centre far above the volume
        "mixed,0,p2,0,0,0\n"             # line 5: two series, none named
        "flat.png,0,p3,0,0,0\n"          # line 6: not a volume
        "a.nii.gz,0,p1,0,0,0\n")         # line 7: the same lesion as line 2
    table = load_manifest(tmp_path / "m.csv")
    report = validate_table(table, views=views_config())
    by_row = {p.row: p for p in report.problems}
    assert sorted(by_row) == [3, 4, 5, 6, 7]
    assert "no lesion centre" in by_row[3].problem and "center_slice" in by_row[3].fix
    assert "outside the volume" in by_row[4].problem or "outside" in by_row[4].problem
    assert "LPS" in by_row[4].fix
    assert "1.2.3.4" in by_row[5].problem + by_row[5].fix
    assert by_row[6].problem.startswith("not a volume")
    assert by_row[7].problem == "duplicate: the same volume and centre as row 2"
    # centred on the volume, a row needs no centre columns, and the given ones are said to be unused
    assert check_volume_rows(table.subset([1]), views_config(center="volume")) == ([], [])
    unused = validate_table(table.subset([0]), views=views_config(center="volume"))
    assert unused.ok and "centre columns center_x, center_y, center_z are not used" in unused.warnings[0].problem


# ---------------------------------------------------------------------------------------------- pipeline

def test_nan_voxels_make_a_row_problem_and_what_reading_noted_a_row_warning(tmp_path):
    write_nodule_volume(tmp_path / "a.nii.gz")
    image = nibabel.load(str(tmp_path / "a.nii.gz"))
    data = np.array(image.get_fdata(dtype=np.float32))  # a copy: nibabel keeps the array it returns
    data[0, 0, 0] = np.nan
    nibabel.save(nibabel.Nifti1Image(data, image.affine), str(tmp_path / "nan.nii.gz"))
    nibabel.save(nibabel.Nifti1Image(image.get_fdata(dtype=np.float32), None), str(tmp_path / "bare.nii.gz"))
    (tmp_path / "m.csv").write_text("path,label,patient_id\nnan.nii.gz,0,p1\nbare.nii.gz,1,p2\na.nii.gz,0,p3\n")
    report = validate_table(load_manifest(tmp_path / "m.csv"), views=views_config(center="volume"))
    assert [(p.row, p.problem) for p in report.problems] == [(2, "1 voxels are NaN or infinite")]
    assert "replace them with a value" in report.problems[0].fix
    assert [p.row for p in report.warnings] == [3]
    assert report.warnings[0].problem.startswith("no orientation in the header")
    assert f"tfmed inspect {tmp_path / 'bare.nii.gz'}" in report.warnings[0].fix


def test_volumes_validated_without_views_are_named_as_volumes_not_unknown_files(tmp_path):
    write_nodule_volume(tmp_path / "a.nii.gz")
    write_series(tmp_path / "series", count=3)
    (tmp_path / "m.csv").write_text("path,label,patient_id\na.nii.gz,0,p1\nseries,1,p2\nseries,0,p2\n")
    report = validate_table(load_manifest(tmp_path / "m.csv"))
    assert [p.row for p in report.problems] == [2, 3, 4]  # the repeated series is not called a duplicate
    assert all(p.problem.startswith("a volume (a DICOM series folder or a NIfTI") for p in report.problems)
    assert all("views: section" in p.fix for p in report.problems)


def test_the_pipeline_serves_the_preprocessed_views_of_each_volume(nodules):
    table = nodule_table(nodules).subset([1, 2])  # a nodule, then background
    preprocess = PreprocessConfig(image_size=16, intensity="window", windows=[[-300, 1000]])
    ds = make_dataset(table, preprocess, training=False, batch_size=2, volume_views=views_config())
    views, targets = next(iter(ds))
    assert views.shape == (2, 3, 16, 16, 3) and targets.numpy().ravel().tolist() == [1.0, 0.0]
    middle = views.numpy()[:, :, 8, 8, 0]
    expected_nodule = (NODULE_HU + 800) / 1000 * 255  # window [-300, 1000]: -800 -> 0, 200 -> 255
    np.testing.assert_allclose(middle[0], expected_nodule, atol=4.0)  # every view crosses the nodule centre
    assert (middle[1] < 30).all()  # background only
    again = next(iter(make_dataset(table, preprocess, training=False, batch_size=2, volume_views=views_config())))
    np.testing.assert_array_equal(again[0].numpy(), views.numpy())
    tta = ImageInputs(preprocess, tta=TTAConfig(enabled=True, shift=0.2, rotation_degrees=0.0, zoom=0.0, gamma=[]),
                      volume_views=views_config())
    shifted = tta.views()[1].arrays(table)[0]  # a test-time view moves every view of the volume
    assert shifted.shape == views.shape and not np.array_equal(shifted, views.numpy())
    assert tta.input_shape == views.shape[1:]  # what the SVM mode reads instead of building a dataset
    np.testing.assert_array_equal(tta.views()[0].arrays(table)[0], views.numpy())
    with pytest.raises(PipelineError, match="cache=True keeps every image in memory"):
        make_dataset(table, preprocess, training=False, cache=True, volume_views=views_config())


def test_a_metaimage_row_serves_the_views_of_the_same_volume_as_nifti(nodules, tmp_path):
    """LUNA16's format: SimpleITK's copy of a NIfTI volume (.mhd + .raw, LPS) gives the same views."""
    import SimpleITK as sitk

    sitk.WriteImage(sitk.ReadImage(str(nodules / "case01.nii.gz")), str(tmp_path / "case01.mhd"))
    frame = pd.read_csv(nodules / "manifest.csv").iloc[[1, 1]]
    frame["path"] = [str(nodules / "case01.nii.gz"), str(tmp_path / "case01.mhd")]
    frame.to_csv(tmp_path / "m.csv", index=False)
    table = load_manifest(tmp_path / "m.csv", classes=["background", "nodule"])
    assert validate_table(table, views=views_config()).ok
    sampler = VolumeSampler(table, views_config(planes="ciompi9"))
    nifti, metaimage = sampler.views_at(0), sampler.views_at(1)
    assert nifti.shape == (9, 15, 15, 1) and nifti.max() > 0  # the nodule (60 HU) is in the views
    np.testing.assert_allclose(metaimage, nifti, atol=1e-3)


def test_training_views_are_rotated_and_jittered_afresh_each_epoch_and_only_when_asked(nodules):
    table = nodule_table(nodules).subset([1])
    preprocess = PreprocessConfig(image_size=16, intensity="window", windows=[[-300, 1000]])
    plain = make_dataset(table, preprocess, training=True, batch_size=1, volume_views=views_config(),
                         augment=AugmentConfig())
    first, second = [next(iter(plain))[0].numpy() for _ in range(2)]
    np.testing.assert_array_equal(first, second)  # no volume augmentation asked: the same views
    moving = make_dataset(table, preprocess, training=True, batch_size=1, volume_views=views_config(),
                          augment=AugmentConfig(view_rotation_degrees=90, center_jitter_mm=2))
    epochs = [next(iter(moving))[0].numpy() for _ in range(3)]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    sampler = VolumeSampler(table, views_config(), AugmentConfig(view_rotation_degrees=90, center_jitter_mm=2))
    np.testing.assert_array_equal(sampler.views_at(0, [3, 4]), sampler.views_at(0, [3, 4]))  # seeded
    np.testing.assert_array_equal(sampler.views_at(0), VolumeSampler(table, views_config()).views_at(0))


def test_adjacent_slices_become_the_three_channels_each_windowed(tmp_path):
    data = np.zeros(SHAPE, np.float32) + (np.arange(SHAPE[2], dtype=np.float32) * 100 - 800)  # HU by slice k
    nibabel.save(nibabel.Nifti1Image(data, np.diag(list(VOXEL_MM) + [1.0])), str(tmp_path / "steps.nii.gz"))
    table = ImageTable(pd.DataFrame({"image": [str(tmp_path / "steps.nii.gz")], "label": [0]}),
                       ["a", "b"], "binary")
    preprocess = PreprocessConfig(image_size=16, intensity="window", windows=[[-300, 1000]])
    views = make_dataset(table, preprocess, training=False, volume_views=views_config(
        planes="adjacent", center="volume")).as_numpy_iterator().next()[0]
    assert views.shape == (1, 1, 16, 16, 3)
    assert ImageInputs(preprocess, volume_views=views_config(planes="adjacent", center="volume")).input_shape \
        == views.shape[1:]
    centre = (SHAPE[2] - 1) / 2  # slice 5.5: HU -250 there, the neighbours 1 slice (2 mm) away
    expected = [((centre + d) * 100 - 800 + 800) / 1000 * 255 for d in (-1, 0, 1)]
    np.testing.assert_allclose(views[0, 0, 8, 8], expected, atol=0.5)


# -------------------------------------------------------------------------------------------------- modes

def _view_arrays(nodules, planes="orthogonal"):
    table = nodule_table(nodules)
    inputs = ImageInputs(PreprocessConfig(image_size=16, intensity="window", windows=[[-300, 1000]]),
                         volume_views=views_config(planes=planes))
    return inputs.arrays(table)


def test_svm_per_view_is_the_mean_of_one_svm_per_view_and_concat_fuses_every_view(nodules, tmp_path):
    X, y = _view_arrays(nodules)
    assert X.shape == (12, 3, 16, 16, 3)
    settings = dict(backbone="explain_test_net", weights=None, taps=("late",), image_size=16, C=(1.0,), cv=2)
    concat = FeatureSVM(**settings).fit(X, y)
    assert concat.groups_ == [["view_1:late", "view_2:late", "view_3:late"]]
    single = FeatureSVM(**settings).fit(X[:, 0], y).features(X[:, 0])
    assert concat.features(X).shape[1] == 3 * single.shape[1]
    per_view = FeatureSVM(**settings, view_fusion="per_view").fit(X, y)
    assert per_view.groups_ == [["view_1:late"], ["view_2:late"], ["view_3:late"]]
    alone = [FeatureSVM(**settings).fit(X[:, v], y).predict_proba(X[:, v]) for v in range(3)]
    np.testing.assert_allclose(per_view.predict_proba(X), np.mean(alone, axis=0), atol=1e-9)
    assert set(per_view.best_params_) == {"view_1", "view_2", "view_3"}
    assert sorted(per_view.cv_results_["group"].unique()) == ["view_1", "view_2", "view_3"]
    assert per_view.report_facts()["views"] == "3 per volume, one SVM per view, probabilities averaged"
    per_view.save(tmp_path / "per_view")
    np.testing.assert_array_equal(FeatureSVM.load(tmp_path / "per_view").predict_proba(X), per_view.predict_proba(X))
    with pytest.raises(TfmedError, match="are 2 views of 16x16 with 3 channel\\(s\\) but the model was fitted on 3 views"):
        per_view.predict_proba(X[:, :2])


def test_an_svm_saved_in_format_2_still_loads(nodules, tmp_path):
    X, y = _view_arrays(nodules)
    model = FeatureSVM(backbone="explain_test_net", weights=None, taps=("late",), image_size=16, C=(1.0,),
                       cv=2).fit(X[:, 0], y)
    model.save(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / SPEC_FILE).read_text())
    spec["format"] = 2
    del spec["groups"]
    (tmp_path / "m" / SPEC_FILE).write_text(json.dumps(spec))
    skops.io.dump({"scalers": model.scalers_, "models": model.models_[0]}, tmp_path / "m" / FITTED_FILE)
    np.testing.assert_array_equal(FeatureSVM.load(tmp_path / "m").predict_proba(X[:, 0]), model.predict_proba(X[:, 0]))


def test_finetune_shares_one_backbone_across_views_and_pools_them(nodules, tmp_path):
    X, y = _view_arrays(nodules)
    config = FinetuneConfig(stages=[StageConfig(epochs=1, unfreeze=1.0)], batch_size=4, view_pooling="max")
    tuner = FineTuner("explain_test_net", "binary", 1, config=config, image_size=16, weights=None, views=3)
    tuner.fit((X, y.astype("float32")), None)
    plain = FineTuner("explain_test_net", "binary", 1, config=config, image_size=16, weights=None).build()
    assert tuner.model_.count_params() == plain.count_params()  # the views add no weights: one shared backbone
    assert tuner.model_.input_shape == (None, 3, 16, 16, 3)
    # max pooling over views: the model's score equals the head applied to the max of the per-view features
    base = tuner.backbone_model_
    pooled = np.stack([keras_pool(base, X[:, v]) for v in range(3)], axis=1).max(axis=1)
    head = tuner.model_.get_layer("predictions")
    np.testing.assert_allclose(tuner.predict(X)[:, 0], head(pooled).numpy()[:, 0], atol=1e-5)
    tuner.save(tmp_path / "ft")
    np.testing.assert_allclose(FineTuner.load(tmp_path / "ft").predict(X), tuner.predict(X), atol=1e-6)
    # explained on mosaics of its views: one map per case, over the three views side by side
    from tfmed.explain.mosaic import mosaic_model, to_mosaic

    mosaic, grid = mosaic_model(tuner.keras_model())
    np.testing.assert_allclose(mosaic.predict(to_mosaic(X, grid), verbose=0), tuner.predict(X), atol=1e-6)
    assert gradcam(mosaic, to_mosaic(X[:2], grid)).shape == (2, 16, 48)
    with pytest.raises(TfmedError, match=r"takes inputs of shape \(3, 16, 16, 3\); .* explain_table, which lays "
                                         "its views out as one mosaic"):
        gradcam(tuner, X)
    with pytest.raises(TfmedError, match=r"have shape \(12, 16, 16, 3\); the model takes \(N, 3, 16, 16, 3\) .*give "
                                         "3 views of 16 x 16 pixels per volume"):
        tuner.predict(X[:, 0])  # images, not volumes of views
    with pytest.raises(TfmedError, match=r"got shape \(3, 16, 16, 3\): one volume; add the batch axis"):
        tuner.predict(X[0])


def keras_pool(base, images):
    return tf.reduce_mean(base(images, training=False), axis=(1, 2)).numpy()


# ------------------------------------------------------------------------------------------- experiments

def _experiment(nodules, tmp_path, mode, **extra) -> ExperimentConfig:
    model = {"mode": mode, "backbone": "explain_test_net", "weights": None}
    if mode == "svm":
        model["svm"] = {"taps": ["late"], "C": [1.0], "cv": 2}
    else:
        model["finetune"] = {"stages": [{"epochs": 2, "unfreeze": 0}], "batch_size": 4}
    values = {"name": f"nodules_{mode}", "runs_dir": str(tmp_path / "runs"),
              "data": {"source": "manifest", "path": str(nodules / "manifest.csv"),
                       "classes": ["background", "nodule"]},
              "split": {"method": "patient", "test_fraction": 0.25, "val_fraction": 0.25},
              "preprocess": {"image_size": 16, "intensity": "window", "windows": [[-300, 1000]]},
              "views": {"enabled": True, "patch_mm": 15.0}, "model": model}
    for key, value in extra.items():
        values[key] = {**values.get(key, {}), **value}
    return ExperimentConfig.from_dict(values)


def test_an_svm_of_views_is_explained_in_the_view_that_carries_the_signal():
    """The SVM's TensorFlow form of fused views scores as the SVM does, and Grad-CAM of its mosaic lights
    the view where the class shows (view 5 of 9), each view's feature map in its own cell; one SVM per
    view scores as the mean of the views' probabilities."""
    from tfmed.explain.mosaic import mosaic_model, to_mosaic
    from tfmed.modes.svm_graph import svm_keras_model

    rng = np.random.default_rng(0)
    X = rng.uniform(0, 255, (24, 9, 32, 32, 3)).astype("float32")
    y = np.repeat([0, 1], 12)
    X[y == 1, 4, 8:24, 8:24] = 255.0
    svm = FeatureSVM(backbone="mobilenet_v2", weights=None, taps=("middle", "late"), image_size=32, C=(1.0,),
                     cv=3).fit(X, y)
    graph = svm_keras_model(svm)
    np.testing.assert_allclose(graph.predict(X, verbose=0)[:, 0], svm.predict_proba(X)[:, 1], atol=1e-5)
    mosaic, grid = mosaic_model(graph)
    assert (grid.rows, grid.columns) == (3, 3)
    with pytest.warns(FlatMapWarning, match=r"\(out_relu\) is 1 x 1 at each 32 x 32 px view, so a map shows which "
                                            "view the model looks at"):
        maps = gradcam(mosaic, to_mosaic(X[y == 1], grid))
    per_view = maps.reshape(-1, 3, 32, 3, 32).transpose(0, 1, 3, 2, 4).reshape(len(maps), 9, -1).mean(axis=-1)
    assert (per_view.argmax(axis=1) == 4).all()
    assert grid.locate(np.unravel_index(maps[0].argmax(), maps[0].shape))[0] == 5
    # one SVM per view: the mean of the views' calibrated probabilities, binary and multiclass
    for labels in (y, np.arange(24) % 3):
        per_view = FeatureSVM(backbone="mobilenet_v2", weights=None, taps=("middle", "late"), image_size=32,
                              C=(1.0,), cv=3, view_fusion="per_view").fit(X[:, 3:6], labels)
        graph = svm_keras_model(per_view)
        expected = per_view.predict_proba(X[:, 3:6])
        np.testing.assert_allclose(graph.predict(X[:, 3:6], verbose=0),
                                   expected[:, 1:] if expected.shape[1] == 2 else expected, atol=1e-5)
        mosaic, grid = mosaic_model(graph)
        assert gradcam(mosaic, to_mosaic(X[:2, 3:6], grid), index=1).shape == (2, 32, 96)


@pytest.mark.slow
def test_a_nodule_experiment_runs_end_to_end_in_svm_mode(nodules, tmp_path):
    from tfmed.run.cli import main

    config = _experiment(nodules, tmp_path, "svm", report={"explain": True})
    config.to_yaml(tmp_path / "nodules.yaml")
    assert main(["validate", str(tmp_path / "nodules.yaml")]) == 0  # the rows are read as volumes
    assert main(["validate", f"manifest:{nodules / 'manifest.csv'}"]) == 1  # as 2-D images they are not
    run = run_experiment(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["splits"]["test"]["youden"]["roc_auc"] == 1.0  # a bright sphere against lung: easy
    model = TrainedModel.load(run)
    assert model.views.enabled and model.views.planes == "orthogonal"
    splits = pd.read_csv(run / "splits.csv")
    test = nodule_table(nodules).subset(np.flatnonzero(splits["split"].to_numpy() == "test"))
    saved = pd.read_csv(run / "predictions.csv")
    np.testing.assert_allclose(model.predict(test), saved[saved["split"] == "test"]["score"], atol=1e-9)
    assert main(["evaluate", "--model", str(run), "--data", f"manifest:{nodules / 'manifest.csv'}"]) == 0
    _predict_scores_unlabelled_candidates(run, model, nodules, tmp_path)
    # the report explains test cases on mosaics of their three views (1 x 3 cells of 16 pixels)
    explained = pd.read_csv(run / "explanations" / "explanations.csv")
    peaked = explained.dropna(subset=["peak_view"])  # a flat map (Grad-CAM of 1 x 1 views) has no peak
    assert peaked["peak_view"].between(1, 3).all() and peaked["peak_col"].between(0, 15).all()
    # candidates may share a volume: each is named by its manifest line and centre, as predict names them
    listed = test.frame.set_index("row")
    assert {"row", "center_x", "center_y", "center_z"} <= set(explained.columns)
    np.testing.assert_allclose(listed.loc[explained["row"], "center_x"], explained["center_x"])
    flat = json.loads((run / "explanations" / "faithfulness.json").read_text())["flat_maps"]
    assert len(explained) - len(peaked) == flat
    assert "Explanations (gradcam" in (run / "report.html").read_text()
    assert np.asarray(Image.open(run / "explanations" / explained["overlay"].iloc[0])).ndim == 3


def _predict_scores_unlabelled_candidates(run, model, nodules, tmp_path):
    """``tfmed predict`` of a lesion-centred model takes a CSV of volumes and centres without labels."""
    from tfmed.run.cli import main
    from tfmed.run.predict import predict_images

    with pytest.raises(TfmedError, match="centred on lesions, and an image path gives no centre; pass one CSV"):
        predict_images(run, [str(nodules / "case01.nii.gz")])
    manifest = pd.read_csv(nodules / "manifest.csv")
    candidates = manifest.drop(columns=["label", "patient_id"]).iloc[[3, 0, 3]].reset_index(drop=True)
    candidates.loc[2, "center_z"] += 4.0   # a second candidate in the same volume
    candidates.to_csv(nodules / "candidates.csv", index=False)
    frame = predict_images(run, [str(nodules / "candidates.csv")])
    assert frame.columns.tolist()[:5] == ["row", "image", "center_x", "center_y", "center_z"]
    assert frame["row"].tolist() == [2, 3, 4] and frame["image"].map(os.path.basename).tolist() == [
        "case03.nii.gz", "case00.nii.gz", "case03.nii.gz"]
    labelled = nodule_table(nodules).subset([3, 0])
    np.testing.assert_allclose(frame["score"].iloc[:2], model.predict(labelled), atol=1e-9)  # same as evaluate's
    assert frame["score"].iloc[2] != frame["score"].iloc[0]                        # its own centre
    out = tmp_path / "scores.csv"
    assert main(["predict", "--model", str(run), str(nodules / "candidates.csv"), "--output", str(out)]) == 0
    assert len(pd.read_csv(out)) == 3
    assert len(predict_images(run, [str(nodules / "manifest.csv")])) == 12   # a labelled manifest: labels unread
    candidates.iloc[:1].drop(columns=["center_z"]).to_csv(tmp_path / "no_centre.csv", index=False)
    with pytest.raises(TfmedError, match="row 2.*lesion centre gives center_x, center_y but not all"):
        predict_images(run, [str(tmp_path / "no_centre.csv")])
    candidates.iloc[:0].to_csv(tmp_path / "none.csv", index=False)
    with pytest.raises(TfmedError, match=r"none\.csv: the manifest has no data rows \(only the header, line 1\)"):
        predict_images(run, [str(tmp_path / "none.csv")])


@pytest.mark.slow
def test_a_nodule_experiment_runs_end_to_end_in_finetune_mode_centred_on_volumes(nodules, tmp_path):
    from tfmed.run.predict import predict_images

    config = _experiment(nodules, tmp_path, "finetune", views={"planes": "ciompi9", "center": "volume"},
                         augment={"view_rotation_degrees": 45.0, "center_jitter_mm": 1.0})
    run = run_experiment(config)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"val", "test"}
    assert TrainedModel.load(run).estimator.views == 9
    frame = predict_images(run, [str(nodules / "case01.nii.gz"), str(nodules / "case02.nii.gz")])
    assert frame["image"].map(os.path.basename).tolist() == ["case01.nii.gz", "case02.nii.gz"]
    assert frame["score"].between(0, 1).all()
    # a CSV may list the volumes instead (a series_uid column names one series of a folder)
    (tmp_path / "volumes.csv").write_text(f"path\n{nodules / 'case01.nii.gz'}\n{nodules / 'case02.nii.gz'}\n")
    listed = predict_images(run, [str(tmp_path / "volumes.csv")])
    assert listed["row"].tolist() == [2, 3]
    np.testing.assert_allclose(listed["score"], frame["score"], rtol=1e-6)
    # tfmed explain of the run's test cases: mosaics of the nine views, peaks named by view
    from tfmed.run.cli import main

    assert main(["explain", "--model", str(run), "--method", "saliency", "--output", str(tmp_path / "maps")]) == 0
    explained = pd.read_csv(tmp_path / "maps" / "explanations.csv")
    faith = json.loads((tmp_path / "maps" / "faithfulness.json").read_text())
    peaks = explained["peak_view"]  # empty for a flat map
    assert len(explained) and peaks.dropna().between(1, 9).all() and peaks.isna().sum() == faith["flat_maps"]
    assert faith["method"] == "saliency" and faith["deletion_auc"] is not None


def _ensemble_members():
    svm = {"name": "features", "mode": "svm", "svm": {"taps": ["late"], "C": [1.0], "cv": 2}}
    tuned = {"name": "tuned", "mode": "finetune", "preprocess": {"image_size": 24, "intensity": "window",
                                                                  "windows": [[-600, 1500]]},
             "finetune": {"stages": [{"epochs": 2, "unfreeze": 0}], "batch_size": 4}}
    return [svm, tuned]


@pytest.mark.slow
def test_an_ensemble_of_view_models_scores_the_mean_of_its_members_and_reloads(nodules, tmp_path):
    config = _experiment(nodules, tmp_path, "svm")
    config = ExperimentConfig.from_dict({**config.to_dict(), "model": {
        "mode": "ensemble", "backbone": "explain_test_net", "weights": None,
        "ensemble": {"combine": "mean", "members": _ensemble_members()}}})
    run = run_experiment(config)
    model = TrainedModel.load(run)
    assert model.views.enabled and model.estimator.member_names == ["features", "tuned"]
    tuned = model.estimator.members[1]
    assert tuned.inputs.preprocess.image_size == 24 and tuned.estimator.views == 3   # its own size, 3 planes
    splits = pd.read_csv(run / "splits.csv")
    test = nodule_table(nodules).subset(np.flatnonzero(splits["split"].to_numpy() == "test"))
    inputs = model.inputs
    members = model.estimator.member_scores(test, inputs)
    assert {name: scores.shape for name, scores in members.items()} == {"features": (3,), "tuned": (3,)}
    combined = model.estimator.combine_scores(members)
    np.testing.assert_allclose(combined, (members["features"] + members["tuned"]) / 2)
    saved = pd.read_csv(run / "predictions.csv")
    np.testing.assert_allclose(model.predict(test), saved[saved["split"] == "test"]["score"], atol=1e-6)
    np.testing.assert_allclose(combined, saved[saved["split"] == "test"]["score"], atol=1e-6)
    member_csv = pd.read_csv(run / "member_scores.csv")
    assert {"features", "tuned"} <= set(member_csv.columns)
    assert set(json.loads((run / "metrics.json").read_text())["members"]["test"]) >= {"features", "tuned"}
    # explained member by member on mosaics of their own views (16 and 24 pixels), the maps averaged
    from tfmed.run.explain import explain_run

    out = explain_run(run, method="gradcam", per_group=1, output=tmp_path / "maps")
    trust = json.loads((out / "faithfulness.json").read_text())
    assert [member["member"] for member in trust["members"]] == ["features", "tuned"]
    peaks = pd.read_csv(out / "explanations.csv")["peak_view"]  # empty where the mean map is flat
    assert peaks.dropna().between(1, 3).all() and peaks.isna().sum() <= trust["flat_maps"]


@pytest.mark.slow
def test_tfmed_ensemble_combines_saved_view_runs_that_cut_the_same_views(nodules, tmp_path):
    from tfmed.run.cli import main
    from tfmed.run.ensemble_runs import EnsembleRunsError, ensemble_runs

    features = run_experiment(_experiment(nodules, tmp_path, "svm"))
    tuned = run_experiment(_experiment(nodules, tmp_path, "finetune"))
    out = ensemble_runs([features, tuned], tmp_path / "combined")
    model = TrainedModel.load(out)
    assert model.views == TrainedModel.load(features).views
    splits = pd.read_csv(out / "splits.csv")
    test = nodule_table(nodules).subset(np.flatnonzero(splits["split"].to_numpy() == "test"))
    expected = (TrainedModel.load(features).predict(test) + TrainedModel.load(tuned).predict(test)) / 2
    np.testing.assert_allclose(model.predict(test), expected, atol=1e-6)   # rescored from the volumes
    saved = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(saved[saved["split"] == "test"]["score"], expected, atol=1e-6)
    assert main(["evaluate", "--model", str(out), "--data", f"manifest:{nodules / 'manifest.csv'}"]) == 0
    other = run_experiment(_experiment(nodules, tmp_path, "svm", views={"planes": "ciompi9"}))
    with pytest.raises(EnsembleRunsError, match="cut different 2-D views of their volumes"):
        ensemble_runs([features, other], tmp_path / "refused")


def test_the_layer_sweep_takes_views_of_volumes(nodules):
    from tfmed.modes.sweep import sweep_layers

    X, y = _view_arrays(nodules)
    frame = sweep_layers(X[:8], y[:8], X[8:], y[8:], taps=["early", "late"], fusions=[],
                         backbone="explain_test_net", weights=None, image_size=16, C=(1.0,), cv=2)
    assert list(frame.columns) == ["early", "late"]
    assert frame.loc["AUC", "late"] == 1.0  # a bright sphere in every view: the validation split is easy


@pytest.mark.parametrize("fusion", ["concat", "per_view"])
def test_sweep_layers_of_a_views_experiment_fits_each_tap_on_every_view(nodules, tmp_path, fusion):
    from tfmed.run.sweep import sweep_experiment

    config = _experiment(nodules, tmp_path, "svm", model={"svm": {"taps": ["late"], "C": [1.0], "cv": 2,
                                                                  "view_fusion": fusion}})
    text, path = sweep_experiment(config, taps=["early", "late"])
    frame = pd.read_csv(path, index_col=0)
    assert list(frame.columns) == ["early", "late", "early+late"]
    assert frame.loc["AUC", "late"] == 1.0  # a bright sphere in every view: the validation split is easy
    assert "early+late" in text
