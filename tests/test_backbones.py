"""The backbone table, create(), offline weights, feature models and feature extraction."""
import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmed import backbones

# the shipped backbones: every one has ImageNet weights (tests register small nets without them, and
# which of those are registered at collection depends on which test modules were imported first)
ALL = [name for name in backbones.list() if backbones.get_spec(name).imagenet_url]
# Built in full (taps resolve, blocks partition the weights); the rest are checked as specs.
CHEAP = ["vgg16", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "inception_v3",
         "xception", "efficientnet_lite0", "convnext_tiny"]


def test_table_lists_the_literature_families():
    for name in ["vgg16", "resnet50", "resnet50_v2", "inception_v3", "densenet121", "mobilenet_v2",
                 "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b3",
                 "efficientnet_v2_b0", "convnext_tiny", "xception", "efficientnet_lite0",
                 "efficientnet_lite1", "efficientnet_lite2"]:
        assert name in ALL
    assert ALL == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_spec_is_complete(name):
    spec = backbones.get_spec(name)
    assert spec.name == name
    assert {"early", "middle", "late", "stage1", "stage2", "stage3"} <= set(spec.taps)
    assert spec.stage_taps() == [f"stage{i}" for i in range(1, len(spec.stage_taps()) + 1)]
    assert len(spec.blocks) >= 4 and len(set(spec.blocks)) == len(spec.blocks)
    assert spec.preprocessing in ("caffe", "tf", "torch", "none", "lite")
    assert spec.imagenet_file.endswith((".h5", ".pth"))
    assert spec.imagenet_url.startswith("https://")
    if spec.family == "keras":
        assert spec.imagenet_url.endswith("/" + spec.imagenet_file)
        assert spec.weights_file(include_top=True) != spec.weights_file(include_top=False)


def test_unknown_backbone_lists_the_available_ones():
    with pytest.raises(backbones.UnknownBackboneError) as err:
        backbones.get_spec("resnet5O")
    assert "resnet5O" in str(err.value) and "efficientnet_lite0" in str(err.value) and "vgg16" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name", CHEAP)
def test_built_graph_has_taps_and_blocks(name):
    spec = backbones.get_spec(name)
    size = max(spec.min_size, 32)
    model = backbones.create(name, weights=None, input_shape=(size, size, 3), trainable=True)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    for tap, layer_name in spec.taps.items():
        assert layer_name in names, f"{name}: tap {tap} -> {layer_name} missing"
    assert model.get_layer(spec.taps["late"]).output is model.output
    # Blocks partition the trainable layers and come in graph order.
    first_seen = {}
    for i, layer in enumerate(model.layers):
        if layer.trainable_weights:
            block = spec.block_of(layer.name)
            assert block is not None, f"{name}: layer {layer.name} is in no block"
            first_seen.setdefault(block, i)
    assert sorted(first_seen, key=first_seen.get) == spec.blocks
    # The block list freezes and unfreezes every weighted layer, those inside sub-models too (ConvNeXt's
    # downsampling blocks), as FineTuner's stages do
    import keras

    from tfmed.training import freezing

    everything = len(model.trainable_weights)
    batch_norm = sum(len(layer.trainable_weights) for layer in freezing.iter_layers(model)
                     if isinstance(layer, keras.layers.BatchNormalization))
    freezing.freeze(model, spec.blocks)
    assert not model.trainable_weights
    assert freezing.unfreeze_top(model, spec.blocks, 1) == spec.blocks[-1:]
    assert freezing.trainable_blocks(model, spec.blocks) == spec.blocks[-1:]
    freezing.unfreeze_top(model, spec.blocks, "all")
    assert len(model.trainable_weights) == everything - batch_norm  # all but BatchNorm's, kept frozen
    # Stage outputs shrink (or keep) their spatial size in order.
    sides = [model.get_layer(spec.taps[s]).output.shape[1] for s in spec.stage_taps()]
    assert sides == sorted(sides, reverse=True)


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in backbones.create("xception", weights=None, input_shape=(71, 71, 3)).layers]
    keras.layers.Conv2D(1, 1)  # bumps Keras' global name counters
    keras.layers.Add()
    second = [layer.name for layer in backbones.create("xception", weights=None, input_shape=(71, 71, 3)).layers]
    assert first == second and "block2_conv2d" in first


def test_create_outputs_feature_map_or_imagenet_head():
    model = backbones.create("resnet50", weights=None, input_shape=(64, 64, 3))
    assert model.output.shape == (None, 2, 2, 2048)
    assert model.trainable is False and not model.trainable_weights
    head = backbones.create("mobilenet_v3_small", weights=None, include_top=True, trainable=True)
    assert head.output.shape == (None, 1000) and head.trainable_weights
    probs = head.predict(np.random.uniform(0, 255, (2, 224, 224, 3)).astype("float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("mode,module", [("caffe", keras.applications.resnet50),
                                         ("tf", keras.applications.mobilenet_v2),
                                         ("torch", keras.applications.densenet)])
def test_in_model_preprocessing_matches_keras_preprocess_input(mode, module):
    images = np.random.uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    original = images.copy()
    ours = np.asarray(backbones.ImagenetPreprocessing(mode)(images))
    expected = module.preprocess_input(images.copy())
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(images, original)


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_shape=(64, 64, 1)), "repeat the channel"),
    (dict(input_shape=(16, 16, 3)), "minimum side 32"),
    (dict(input_shape=(64, 64, 3), include_top=True), r"include_top=True needs the ImageNet input size \(224"),
    (dict(weights=3), "weights must be 'imagenet', None or a file path"),
    (dict(input_shape=64), r"input_shape must be \(height, width, 3\) of ints, got 64 \(e.g. input_shape=\(224"),
    (dict(input_shape="64"), r"input_shape must be \(height, width, 3\)"),
    (dict(input_shape=(64, "a", 3)), r"input_shape must be \(height, width, 3\)"),
])
def test_create_rejects_bad_arguments(kwargs, match):
    with pytest.raises(backbones.BackboneInputError, match=match):
        backbones.create("resnet50", **{"weights": None, **kwargs})


@pytest.fixture
def empty_homes(tmp_path, monkeypatch):
    for var in ("HOME", "KERAS_HOME", "TFMED_WEIGHTS_DIR"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.setenv("TFMED_OFFLINE", "1")  # local lookups only: a missing file must not be downloaded
    return tmp_path


def test_missing_imagenet_weights_error_names_file_dirs_and_url(empty_homes):
    (empty_homes / "given").mkdir()
    with pytest.raises(backbones.MissingWeightsError) as err:
        backbones.create("mobilenet_v2", input_shape=(96, 96, 3), weights_dir=empty_homes / "given")
    msg = str(err.value)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    assert name in msg
    assert f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{name}" in msg
    for d in (empty_homes / "given", empty_homes / "TFMED_WEIGHTS_DIR", empty_homes / "KERAS_HOME" / "models"):
        assert str(d) in msg
    assert "weights=None" in msg and isinstance(err.value, ValueError)


def test_a_weights_dir_that_is_not_a_folder_is_refused(empty_homes, capsys):
    from tfmed.backbones.factory import check_backbone
    from tfmed.run.cli import main

    for given, what in ((empty_homes / "typo", "no such folder"), (empty_homes / "HOME" / "file", "not a folder")):
        if what == "not a folder":
            given.write_text("x")
        with pytest.raises(backbones.MissingWeightsError, match=f"weights_dir {given}: {what}; fix the path"):
            backbones.create("mobilenet_v2", input_shape=(96, 96, 3), weights_dir=given)
        with pytest.raises(backbones.MissingWeightsError, match=f"weights_dir {given}: {what}"):
            check_backbone("efficientnet_lite0", image_size=32, weights_dir=given)
        assert main(["backbones", "--weights-dir", str(given)]) == 2
        assert f"weights_dir {given}: {what}" in capsys.readouterr().err


def _save_keras_app_file(model, path):
    """Write weights the way keras.applications publishes them (legacy HDF5, by layer order)."""
    from keras.src.legacy.saving import legacy_h5_format
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_imagenet_weights_found_in_weights_dir(empty_homes):
    source = backbones.create("mobilenet_v2", weights=None, input_shape=(96, 96, 3))
    folder = empty_homes / "given"
    folder.mkdir()
    _save_keras_app_file(source, folder / backbones.get_spec("mobilenet_v2").weights_file(False, 96))
    loaded = backbones.create("mobilenet_v2", input_shape=(96, 96, 3), weights_dir=folder)
    x = np.random.uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5)


def test_imagenet_search_order_env_dir_then_keras_cache(empty_homes):
    from tfmed.backbones.weights import find_weights_file
    name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    in_keras = empty_homes / "KERAS_HOME" / "models" / name
    in_keras.parent.mkdir()
    in_keras.write_bytes(b"x")
    assert find_weights_file(name, "https://example", "resnet50") == in_keras
    in_env = empty_homes / "TFMED_WEIGHTS_DIR" / name
    in_env.write_bytes(b"x")
    assert find_weights_file(name, "https://example", "resnet50") == in_env
    given = empty_homes / "given"
    given.mkdir()
    (given / name).write_bytes(b"x")
    assert find_weights_file(name, "https://example", "resnet50", weights_dir=given) == given / name


def test_efficientnet_imagenet_file_gets_keras_input_scaling(empty_homes):
    """Keras divides EfficientNet inputs by sqrt(ImageNet std) once more when it loads these files."""
    source = backbones.create("efficientnet_b0", weights=None, input_shape=(32, 32, 3))
    mean, var = np.array([0.4, 0.5, 0.6], "float32"), np.array([0.05, 0.06, 0.07], "float32")
    norm = source.get_layer("normalization")
    norm.set_weights([mean, var, np.array(0)] if len(norm.get_weights()) == 3 else [mean, var])
    _save_keras_app_file(source, empty_homes / "given.h5")
    (empty_homes / "given").mkdir()
    (empty_homes / "given.h5").rename(empty_homes / "given" / "efficientnetb0_notop.h5")
    model = backbones.create("efficientnet_b0", input_shape=(32, 32, 3), weights_dir=empty_homes / "given")
    x = np.random.uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    out = keras.Model(model.inputs, model.get_layer("normalization").output).predict(x, verbose=0)
    std = np.array([0.229, 0.224, 0.225])
    expected = (x / 255.0 - mean) / np.sqrt(var) / np.sqrt(std)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_weights_from_a_saved_tfmed_model(tmp_path):
    source = backbones.create("vgg16", weights=None, input_shape=(32, 32, 3))
    source.save_weights(tmp_path / "mine.weights.h5")
    loaded = backbones.create("vgg16", weights=str(tmp_path / "mine.weights.h5"), input_shape=(48, 48, 3))
    for a, b in zip(loaded.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(backbones.WeightsFileError, match="does not fit backbone 'mobilenet_v3_small'"):
        backbones.create("mobilenet_v3_small", weights=tmp_path / "mine.weights.h5", input_shape=(32, 32, 3))
    with pytest.raises(backbones.WeightsFileError, match="absent.weights.h5"):
        backbones.create("vgg16", weights=tmp_path / "absent.weights.h5", input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def vgg64():
    return backbones.create("vgg16", weights=None, input_shape=(64, 64, 3))


def test_feature_model_pools_each_tap(vgg64):
    x = np.random.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    spec = backbones.get_spec("vgg16")
    taps = ("early", "middle", "late", "stage1")
    raw = keras.Model(vgg64.inputs, [vgg64.get_layer(spec.taps[t]).output for t in taps]).predict(x, verbose=0)
    avg = backbones.extract_features(backbones.feature_model(vgg64, taps=taps, pooling="avg"), x)
    mx = backbones.extract_features(backbones.feature_model(vgg64, taps=taps, pooling="max"), x)
    widths = {"early": 256, "middle": 512, "late": 512, "stage1": 64}
    for tap, maps in zip(taps, raw):
        assert avg[tap].shape == mx[tap].shape == (2, widths[tap]) and avg[tap].dtype == np.float32
        np.testing.assert_allclose(avg[tap], maps.mean(axis=(1, 2)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mx[tap], maps.max(axis=(1, 2)), rtol=1e-5, atol=1e-5)
        assert np.all(mx[tap] >= avg[tap] - 1e-5)
    assert np.any(mx["early"] > avg["early"] + 1e-3)


def test_extract_features_equals_predict_for_arrays_and_datasets(vgg64):
    fm = backbones.feature_model(vgg64, taps=("middle", "late"))
    x = np.random.uniform(0, 255, (5, 64, 64, 3)).astype("float32")
    expected = fm.predict(x, verbose=0)
    from_array = backbones.extract_features(fm, x, batch_size=2)
    labelled = tf.data.Dataset.from_tensor_slices((x, np.arange(5))).batch(3)
    from_pairs = backbones.extract_features(fm, labelled)
    from_images = backbones.extract_features(fm, tf.data.Dataset.from_tensor_slices(x), batch_size=4)
    for got in (from_array, from_pairs, from_images):
        assert set(got) == {"middle", "late"}
        for tap in got:
            np.testing.assert_allclose(got[tap], expected[tap], rtol=1e-5, atol=1e-5)


def test_feature_errors_are_clear(vgg64):
    with pytest.raises(backbones.FeatureInputError, match="tap 'stage9'.*early"):
        backbones.feature_model(vgg64, taps=("stage9",))
    with pytest.raises(backbones.FeatureInputError, match="pooling must be 'avg' or 'max'"):
        backbones.feature_model(vgg64, pooling="sum")
    fm = backbones.feature_model(vgg64, taps=("block3_conv1",))  # raw layer names work too
    assert fm.output["block3_conv1"].shape == (None, 256)
    with pytest.raises(backbones.FeatureInputError, match=r"\(N, H, W, 3\).*shape \(2, 64, 64\)"):
        backbones.extract_features(fm, np.zeros((2, 64, 64), "float32"))
    with pytest.raises(backbones.FeatureInputError, match=r"shape \(64, 64, 3\): one image; add the batch axis "
                                                           r"\(images\[None\]\)"):
        backbones.extract_features(fm, np.zeros((64, 64, 3), "float32"))
    for images in (np.zeros((2, 32, 48, 3), "float32"),
                   tf.data.Dataset.from_tensor_slices(np.zeros((2, 32, 48, 3), "float32")).batch(2)):
        with pytest.raises(backbones.FeatureInputError, match=r"images are 32 x 48 pixels but the feature model "
                                                               r"takes 64 x 64; resize them"):
            backbones.extract_features(fm, images)


def test_extract_features_refuses_empty_nan_and_off_scale_images_clearly(vgg64):
    from tfmed.backbones.features import PixelRangeError

    fm = backbones.feature_model(vgg64, taps=("early",))
    with pytest.raises(backbones.FeatureInputError, match=r"images holds no images \(shape \(0, 64, 64, 3\)\)"):
        backbones.extract_features(fm, np.zeros((0, 64, 64, 3), "float32"))
    x = np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    x[1, 3, 3, 0] = np.nan
    x[3, 0, 0, 2] = np.inf
    with pytest.raises(backbones.FeatureInputError, match="images rows 1, 3 contain NaN or infinite pixels"):
        backbones.extract_features(fm, x)
    fine = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    for scaled, match in ((fine / 255.0, "images scaled to 0-1"), ((fine * 257).astype(np.uint16), "16-bit")):
        with pytest.raises(PixelRangeError, match=match):
            backbones.extract_features(fm, scaled)


def _damaged_weights(folder):
    """An empty vgg16 file and a resnet50 file cut short, as an interrupted download or copy leaves them."""
    folder.mkdir(exist_ok=True)
    vgg = folder / backbones.get_spec("vgg16").weights_file()
    vgg.write_bytes(b"")
    resnet = folder / backbones.get_spec("resnet50").weights_file()
    whole = folder / "whole.h5"
    with h5py.File(whole, "w") as f:
        f.create_dataset("w", data=np.arange(20000, dtype="float32"))
    resnet.write_bytes(whole.read_bytes()[:30000])
    whole.unlink()
    return vgg, resnet


def test_empty_or_truncated_imagenet_file_is_named_by_listing_check_and_create(empty_homes, capsys):
    from tfmed.backbones.factory import check_backbone, imagenet_weights_status
    from tfmed.run.cli import main

    vgg, resnet = _damaged_weights(empty_homes / "given")
    given = empty_homes / "given"
    assert main(["backbones", "--weights-dir", str(given)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert f"weights: found {vgg}, but it is empty (0 bytes): delete it" in lines["vgg16"]
    assert f"weights: found {resnet}, but it is not a complete HDF5 file (30000 bytes" in lines["resnet50"]
    assert not imagenet_weights_status("vgg16", weights_dir=given).available
    for name, path, why in (("vgg16", vgg, "it is empty"), ("resnet50", resnet, "it is not a complete HDF5 file")):
        for call in (lambda: check_backbone(name, image_size=32, weights_dir=given),
                     lambda: backbones.create(name, input_shape=(32, 32, 3), weights_dir=given)):
            with pytest.raises(backbones.WeightsFileError, match=f"found {path}, but {why}.*delete it") as err:
                call()
            assert "does not fit" not in str(err.value)
        with pytest.raises(backbones.WeightsFileError, match=f"is unusable: {path}: {why}"):
            backbones.create(name, weights=path, input_shape=(32, 32, 3))


def test_create_trainable_keeps_pretrained_batchnorm_frozen_while_the_rest_trains():
    model = backbones.create("efficientnet_lite0", input_shape=(32, 32, 3), trainable=True)   # ImageNet weights
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)
    assert model.get_layer("stem_conv").trainable and model.trainable_weights
    x = keras.layers.GlobalAveragePooling2D()(model.output)
    head = keras.Model(model.input, keras.layers.Dense(1, activation="sigmoid")(x))
    head.compile(keras.optimizers.SGD(0.01), "binary_crossentropy")
    before = {layer.name: layer.moving_mean.numpy().copy() for layer in norms}
    weights = [v.numpy().copy() for v in model.trainable_weights]
    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    head.fit(images, np.array([0, 1] * 4, "float32"), epochs=1, verbose=0)
    assert all(np.array_equal(layer.moving_mean.numpy(), before[layer.name]) for layer in norms)
    assert any(not np.array_equal(v.numpy(), w) for v, w in zip(model.trainable_weights, weights))
    assert not backbones.create("efficientnet_lite0", input_shape=(32, 32, 3)).trainable_weights
    # from scratch there are no learned statistics to keep: BatchNorm trains (frozen at 0/1 it stalls training)
    scratch = backbones.create("efficientnet_lite0", weights=None, input_shape=(32, 32, 3), trainable=True)
    assert scratch.get_layer("stem_bn").trainable


def test_extract_features_checks_a_dataset_as_it_checks_arrays():
    from tfmed.backbones.features import FeatureInputError

    fm = backbones.feature_model(backbones.create("efficientnet_lite0", weights=None, input_shape=(32, 32, 3)),
                                 taps=("late",))
    empty = tf.data.Dataset.from_tensor_slices(np.zeros((0, 32, 32, 3), "float32"))
    with pytest.raises(FeatureInputError, match="empty"):
        backbones.extract_features(fm, empty.batch(4))
    filtered = tf.data.Dataset.from_tensor_slices(np.zeros((4, 32, 32, 3), "float32")).filter(lambda x: False)
    with pytest.raises(FeatureInputError, match="no image"):   # empty, its size unknown before it runs
        backbones.extract_features(fm, filtered)
    kept = tf.data.Dataset.from_tensor_slices(np.zeros((4, 32, 32, 3), "float32")).filter(lambda x: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras' "input ran out of data" at the end of a dataset of unknown size
        assert backbones.extract_features(fm, kept.batch(3))["late"].shape == (4, 1280)
    grey = tf.data.Dataset.from_tensor_slices(np.zeros((4, 32, 32, 1), "float32"))
    for data in (grey, grey.batch(2), grey.map(lambda x: (x, 0))):
        with pytest.raises(FeatureInputError, match="3 \\(RGB\\) channels.*grey"):
            backbones.extract_features(fm, data)
    rgb = tf.data.Dataset.from_tensor_slices(np.zeros((3, 32, 32, 3), "float32"))
    assert backbones.extract_features(fm, rgb)["late"].shape[0] == 3
