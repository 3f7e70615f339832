"""The tf.data pipeline: reading, targets, determinism, augmentation, balancing, errors."""
import shutil

import cv2
import keras
import numpy as np
import pandas as pd
import pydicom
import pytest
import tensorflow as tf
from pydicom.data import get_testdata_file

from tfmed.config import AugmentConfig, BalanceConfig, PreprocessConfig
from tfmed.data.pipeline import ImageInputs, PipelineError, load_arrays, make_dataset, raw_dataset, targets_array
from tfmed.data.table import ImageTable
from tfmed.data.transforms import window_hu

RAW = dict(intensity="none", resize="plain")


def write_pngs(folder, n, size=(24, 24), channels=1, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    shape = size + ((channels,) if channels > 1 else ())
    paths, arrays = [], []
    for i in range(n):
        image = rng.integers(0, top + 1, shape).astype(dtype)
        path = folder / f"img_{i:03d}.png"
        assert cv2.imwrite(str(path), image)
        paths.append(str(path))
        arrays.append(image)
    return paths, arrays


def file_table(paths, labels, classes=("neg", "pos"), task="binary"):
    return ImageTable(pd.DataFrame({"image": paths, "label": labels}), list(classes), task)


def collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


# ------------------------------------------------------------------ reading
def test_eval_pass_reads_files_exactly_in_table_order(tmp_path):
    paths, arrays = write_pngs(tmp_path, 7)
    table = file_table(paths, [0, 1, 0, 1, 1, 0, 0])
    ds = make_dataset(table, PreprocessConfig(image_size=24, channels=1, **RAW), training=False, batch_size=3)
    x, y = collect(ds)
    assert x.shape == (7, 24, 24, 1) and x.dtype == np.float32
    assert ImageInputs(PreprocessConfig(image_size=24, channels=1, **RAW)).input_shape == x.shape[1:]
    np.testing.assert_array_equal(x[..., 0], np.stack(arrays).astype(np.float32))
    np.testing.assert_array_equal(y[:, 0], [0, 1, 0, 1, 1, 0, 0])


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    image = np.tile(np.array([[0, 255, 256, 1000], [4095, 30000, 65535, 12345]], dtype=np.uint16), (4, 2))
    path = tmp_path / "ct16.png"
    cv2.imwrite(str(path), image)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    x, _ = load_arrays(file_table([str(path)], [1]), PreprocessConfig(image_size=8, channels=1, **RAW))
    np.testing.assert_array_equal(x[0, ..., 0], image.astype(np.float32))


def test_png_and_jpeg_mixed_and_colour_to_grey(tmp_path):
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), colour)               # BGR on disk
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (16, 16)).astype(np.uint8), (5, 5), 2)
    cv2.imwrite(str(tmp_path / "g.jpg"), smooth, [cv2.IMWRITE_JPEG_QUALITY, 100])
    table = file_table([str(tmp_path / "c.png"), str(tmp_path / "g.jpg")], [0, 1])
    x, _ = load_arrays(table, PreprocessConfig(image_size=16, channels=1, **RAW))
    expected_grey = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY).astype(np.float32)
    np.testing.assert_allclose(x[0, ..., 0], expected_grey, atol=1.0)
    np.testing.assert_allclose(x[1, ..., 0], cv2.imread(str(tmp_path / "g.jpg"), cv2.IMREAD_GRAYSCALE),
                               atol=4.0)  # two JPEG decoders: IDCT rounding differs by a few levels


def test_alpha_dropped_and_grey_colour_mixed_with_cache(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 100            # BGR 100 everywhere, alpha 255: min-max must ignore the alpha
    rgba[0, 0, :3] = 50
    rgba[..., 3] = 255
    grey = np.full((8, 8), 100, np.uint8)
    grey[0, 0] = 50
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    table = file_table([str(tmp_path / "rgba.png"), str(tmp_path / "grey.png")], [0, 1])
    pre = PreprocessConfig(image_size=8, channels=3, intensity="minmax")
    for cache in (False, True):
        x, _ = collect(make_dataset(table, pre, training=True, cache=cache, batch_size=2))
        assert x.shape == (2, 8, 8, 3)
        for image in x:
            assert image.min() == 0.0 and image.max() == 255.0 and (image == 255.0).sum() == 63 * 3


def test_dicom_through_read_image_with_ct_window(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    dcm = tmp_path / "ct.dcm"
    shutil.copy(source, dcm)
    ds = pydicom.dcmread(source)
    hu = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    config = PreprocessConfig(image_size=hu.shape[0], channels=3, intensity="window", windows=[[40, 400]])
    x, _ = load_arrays(file_table([str(dcm)], [1]), config)
    assert x.shape == (1, 128, 128, 3)
    np.testing.assert_allclose(x[0, ..., 1], window_hu(hu, 40, 400), atol=1e-3)


def test_in_memory_table_uses_array_index():
    images = np.arange(5 * 8 * 8, dtype=np.uint8).reshape(5, 8, 8)
    frame = pd.DataFrame({"image": [f"mem#{i}" for i in (3, 0, 4)], "array_index": [3, 0, 4], "label": [1, 0, 1]})
    table = ImageTable(frame, ["a", "b"], "binary", images=images)
    x, y = load_arrays(table, PreprocessConfig(image_size=8, channels=3, **RAW))
    assert x.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(x[..., 2], images[[3, 0, 4]].astype(np.float32))
    np.testing.assert_array_equal(y, [1, 0, 1])


# ------------------------------------------------------------------ targets
def test_targets_for_the_three_tasks():
    images = np.zeros((4, 8, 8), np.uint8)
    base = {"image": list("abcd"), "array_index": range(4)}
    binary = ImageTable(pd.DataFrame({**base, "label": [0, 1, 1, 0]}), ["n", "p"], "binary", images=images)
    multi = ImageTable(pd.DataFrame({**base, "label": [2, 0, 1, 2]}), ["x", "y", "z"], "multiclass", images=images)
    ml = ImageTable(pd.DataFrame({**base, "label:a": [1, 0, 1, 0], "label:b": [1, 1, 0, 0]}), ["a", "b"],
                    "multilabel", images=images)
    config = PreprocessConfig(image_size=8)
    for table, expected in [(binary, np.array([[0], [1], [1], [0]])),
                            (multi, np.eye(3)[[2, 0, 1, 2]]),
                            (ml, np.array([[1, 1], [0, 1], [1, 0], [0, 0]]))]:
        x, y = next(iter(make_dataset(table, config, training=False, batch_size=4)))
        assert x.shape == (4, 8, 8, 3) and x.dtype == tf.float32 and y.dtype == tf.float32
        np.testing.assert_array_equal(y.numpy(), expected)


# ------------------------------------------------------- training vs evaluation
def test_augmentation_only_when_training(tmp_path):
    paths, _ = write_pngs(tmp_path, 6, size=(20, 20))
    table = file_table(paths, [0, 1] * 3)
    pre = PreprocessConfig(image_size=16, channels=1)
    aug = AugmentConfig(vflip=True, rotation_degrees=15, brightness=0.1, contrast=0.1, crop_from=20)
    evaluation = make_dataset(table, pre, training=False, augment=aug, batch_size=4)
    a, b = collect(evaluation), collect(evaluation)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[0], collect(make_dataset(table, pre, training=False))[0])  # augment ignored

    train = make_dataset(table, pre, training=True, augment=aug, batch_size=4, seed=1)
    c, d = collect(train), collect(train)
    assert c[0].shape == (6, 16, 16, 1)
    assert not np.allclose(c[0], d[0])                               # epochs differ
    again = collect(make_dataset(table, pre, training=True, augment=aug, batch_size=4, seed=1))
    np.testing.assert_array_equal(c[0], again[0])                     # reproducible from the seed


def test_a_training_crop_is_cut_from_the_original_resized_to_crop_from(tmp_path):
    noise = cv2.blur(np.random.default_rng(0).normal(128, 60, (512, 512)), (4, 4))  # detail finer than 64 px
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.clip(noise + i, 0, 255).astype(np.uint8))
    table = file_table([str(tmp_path / f"{i}.png") for i in range(4)], [0, 1, 0, 1])
    pre = PreprocessConfig(image_size=64, channels=1, intensity="none")
    train = collect(make_dataset(table, pre, training=True, augment=AugmentConfig(crop_from=80), batch_size=4))[0]
    scored = collect(make_dataset(table, pre, training=False, batch_size=4))[0]
    detail = lambda x: float(np.abs(np.diff(x[..., 0], axis=2)).mean())  # noqa: E731 (neighbouring pixels)
    # a 64 px crop of the image at 80 px holds more detail per pixel than the scored 64 px image; one cut from the
    # 64 px image enlarged to 80 px (the chain before) held about half as much
    assert train.shape == (4, 64, 64, 1) and detail(train) > detail(scored)


def test_training_without_resampling_is_a_shuffled_permutation(tmp_path):
    paths, arrays = write_pngs(tmp_path, 12, size=(8, 8))
    table = file_table(paths, list(range(2)) * 6)
    x, _ = collect(make_dataset(table, PreprocessConfig(image_size=8, channels=1, **RAW), training=True,
                                batch_size=5, seed=2))
    stored = np.stack(arrays).astype(np.float32).reshape(12, -1)
    order = [int(np.flatnonzero((stored == img.reshape(1, -1)).all(axis=1))[0]) for img in x[..., 0]]
    assert sorted(order) == list(range(12)) and order != list(range(12))


def test_balanced_training_stream_and_fit_without_steps():
    images = np.zeros((40, 8, 8), np.uint8)
    labels = np.array([1] * 4 + [0] * 36)
    images[labels == 1] = 200
    frame = pd.DataFrame({"image": [f"m#{i}" for i in range(40)], "array_index": range(40), "label": labels})
    table = ImageTable(frame, ["neg", "pos"], "binary", images=images)
    pre = PreprocessConfig(image_size=8, channels=1, **RAW)
    over = make_dataset(table, pre, training=True, balance=BalanceConfig("oversample"), batch_size=16, seed=3)
    ys = np.concatenate([collect(over)[1][:, 0] for _ in range(25)])
    assert len(ys) == 25 * 40 and abs(ys.mean() - 0.5) < 0.04
    x, y = collect(over)
    np.testing.assert_array_equal(x.mean(axis=(1, 2, 3)) == 200, y[:, 0] == 1)   # images follow their labels
    under = make_dataset(table, pre, training=True, balance=BalanceConfig("undersample"), batch_size=16)
    assert len(collect(under)[1]) == 8
    # lengths known up front: a stage's min_steps counts the batches of an epoch
    assert (int(over.cardinality()), int(under.cardinality())) == (3, 1)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    history = model.fit(over, epochs=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2


def test_cache_gives_the_same_images(tmp_path):
    paths, _ = write_pngs(tmp_path, 5, size=(12, 12))
    table = file_table(paths, [0, 1, 0, 1, 0])
    pre = PreprocessConfig(image_size=10)
    plain = collect(make_dataset(table, pre, training=False))
    cached = collect(make_dataset(table, pre, training=False, cache=True))
    np.testing.assert_allclose(plain[0], cached[0], atol=1e-4)
    train = make_dataset(table, pre, training=True, cache=True, augment=AugmentConfig(vflip=True))
    (tmp_path / "img_000.png").unlink()          # cached: the files are no longer read
    images = collect(train)[0]
    assert images.shape == (5, 10, 10, 3)
    flat = plain[0].reshape(5, -1)
    for image in images:                          # each is a cached image, maybe flipped up-down
        assert any(np.allclose(image.reshape(-1), f, atol=1e-4) or
                   np.allclose(image[::-1].reshape(-1), f, atol=1e-4) for f in flat)


def test_cached_grey_images_get_the_same_noise_in_every_channel(tmp_path):
    # cached or not, augmentation sees a grey file as grey: its noise must not colour it
    grey, _ = write_pngs(tmp_path, 4, size=(12, 12))
    table = file_table(grey, [0, 1, 0, 1])
    pre = PreprocessConfig(image_size=10)
    for cache in (False, True):
        images = collect(make_dataset(table, pre, training=True, cache=cache, seed=1,
                                      augment=AugmentConfig(noise=20.0)))[0]
        assert images.shape == (4, 10, 10, 3)
        np.testing.assert_array_equal(images[..., 0], images[..., 1])


def test_cache_keeps_grey_and_colour_files_apart(tmp_path):
    (tmp_path / "grey").mkdir()
    (tmp_path / "colour").mkdir()
    grey, _ = write_pngs(tmp_path / "grey", 2, size=(12, 12))
    colour, _ = write_pngs(tmp_path / "colour", 2, size=(12, 12), channels=3, seed=1)
    table = file_table(grey + colour, [0, 0, 1, 1])          # label 0: grey file, 1: colour file
    pre = PreprocessConfig(image_size=10)
    plain = collect(make_dataset(table, pre, training=False))[0]
    np.testing.assert_allclose(collect(make_dataset(table, pre, training=False, cache=True))[0], plain, atol=1e-4)
    noisy = collect(make_dataset(table, pre, training=True, cache=True, seed=1, augment=AugmentConfig(noise=20.0)))
    assert sorted(noisy[1].ravel().tolist()) == [0, 0, 1, 1]
    for image, label in zip(noisy[0], noisy[1].ravel()):
        channel_gap = np.abs(image[..., 0] - image[..., 1]).max()
        assert (channel_gap > 0) if label else (channel_gap == 0)


def test_load_arrays_matches_make_dataset(tmp_path):
    paths, _ = write_pngs(tmp_path, 5, size=(12, 12))
    table = file_table(paths, [0, 1, 0, 1, 0])
    pre = PreprocessConfig(image_size=12, intensity="minmax")
    x, y = load_arrays(table, pre, batch_size=2)
    np.testing.assert_array_equal(x, collect(make_dataset(table, pre, training=False))[0])
    np.testing.assert_array_equal(y, table.labels())
    assert x.shape == (5, 12, 12, 3)
    np.testing.assert_allclose(x.min(axis=(1, 2, 3)), 0.0, atol=1e-3)      # per-image min-max
    np.testing.assert_allclose(x.max(axis=(1, 2, 3)), 255.0, atol=1e-2)


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize("content", [b"", b"not a png at all", "truncated"])
def test_bad_png_error_names_the_file(tmp_path, content):
    paths, _ = write_pngs(tmp_path, 2)
    bad = tmp_path / "broken_scan.png"
    if content == "truncated":
        data = open(paths[0], "rb").read()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    ds = make_dataset(file_table([paths[0], str(bad)], [0, 1]), PreprocessConfig(image_size=16), training=False)
    with pytest.raises(tf.errors.OpError, match="broken_scan.png"):
        collect(ds)


def _written_like_validation_reads(folder):
    """Files whose names or trailing bytes TensorFlow's own decoders would misread, with what read_image gives."""
    from PIL import Image

    from tfmed.data.decode import read_image

    grey = (np.arange(16 * 24).reshape(16, 24) % 251).astype(np.uint8)
    Image.fromarray(grey).save(folder / "trailing.png")
    with open(folder / "trailing.png", "ab") as handle:
        handle.write(b"\0" * 16)                                  # bytes after IEND, as some exporters leave
    Image.fromarray(grey).save(folder / "jpeg_inside.png", format="JPEG")
    Image.fromarray(grey).save(folder / "png_inside.jpg", format="PNG")
    exif = Image.Exif()
    exif[0x0112] = 6                                               # a phone held sideways
    Image.fromarray(grey).save(folder / "turned.jpg", exif=exif, quality=100)
    names = ["trailing.png", "jpeg_inside.png", "png_inside.jpg", "turned.jpg"]
    return [str(folder / name) for name in names], [read_image(folder / name) for name in names]


def test_pipeline_reads_each_file_as_validation_does(tmp_path):
    paths, expected = _written_like_validation_reads(tmp_path)
    for path, image in zip(paths, expected):
        table = file_table([path], [0])
        read = next(iter(make_dataset(table, PreprocessConfig(image_size=16, **RAW), training=False)))[0]
        assert read.shape[1:3] == (16, 16), path
        raw = next(iter(raw_dataset(table))).numpy()
        assert raw.shape == image.shape, path                        # the turned photo upright: (24, 16)
        np.testing.assert_allclose(raw, image, atol=12, err_msg=path)  # TF and OpenCV JPEG decoders differ a little
    assert expected[3].shape[:2] == (24, 16)


def test_unreadable_dicom_error_names_the_file(tmp_path):
    bad = tmp_path / "bad_slice.dcm"
    bad.write_bytes(b"garbage")
    ds = make_dataset(file_table([str(bad)], [0]), PreprocessConfig(image_size=16), training=False)
    with pytest.raises(tf.errors.OpError, match="bad_slice.dcm"):
        collect(ds)


def test_table_errors_name_the_row():
    with pytest.raises(PipelineError, match="row 1 .*outside 0..1"):
        targets_array(file_table(["a.png", "b.png"], [0, 2]))
    images = np.zeros((2, 8, 8), np.uint8)
    table = ImageTable(pd.DataFrame({"image": ["m#0", "m#1"], "array_index": [0, 5], "label": [0, 1]}),
                       ["a", "b"], "binary", images=images)
    with pytest.raises(PipelineError, match="row 1 .*array_index 5"):
        make_dataset(table, PreprocessConfig(image_size=8), training=False)
    no_index = ImageTable(pd.DataFrame({"image": ["m#0"], "label": [0]}), ["a", "b"], "binary", images=images)
    with pytest.raises(PipelineError, match="array_index"):
        make_dataset(no_index, PreprocessConfig(image_size=8), training=False)
    with pytest.raises(PipelineError, match="batch_size"):
        make_dataset(file_table(["a.png"], [0]), PreprocessConfig(), training=False, batch_size=0)
    with pytest.raises(PipelineError, match="empty"):
        make_dataset(file_table([], []), PreprocessConfig(), training=False)
    with pytest.raises(PipelineError, match=r"preprocess must be a tfmed.config.PreprocessConfig \(for a dict "
                                            r"of settings: PreprocessConfig\(\*\*settings\)\), got dict"):
        make_dataset(file_table(["a.png"], [0]), {"image_size": 32}, training=False)
    with pytest.raises(PipelineError, match="augment must be a tfmed.config.AugmentConfig"):
        make_dataset(file_table(["a.png"], [0]), PreprocessConfig(), training=True, augment={"hflip": True})


def test_augmentations_that_clip_to_0_255_are_refused_on_raw_values(tmp_path):
    """16-bit values under `standardize` were clipped to 255 by brightness: every training image came out flat."""
    from tfmed.config import ConfigError, ExperimentConfig

    paths, _ = write_pngs(tmp_path, 2, dtype=np.uint16)
    table = file_table(paths, [0, 1])
    for intensity in ("standardize", "mean_image", "none"):
        with pytest.raises(ConfigError, match=rf"augment.brightness works on the 0-255 pixel scale.*{intensity}"):
            make_dataset(table, PreprocessConfig(image_size=8, intensity=intensity), training=True,
                         augment=AugmentConfig(brightness=0.01))
    with pytest.raises(ConfigError, match="augment.gamma, augment.noise work on the 0-255 pixel scale"):
        ExperimentConfig.from_dict({"preprocess": {"intensity": "standardize"}, "model": {"mode": "finetune"},
                                    "augment": {"gamma": 0.3, "noise": 6}})
    geometric = ExperimentConfig.from_dict({"preprocess": {"intensity": "standardize"}, "model": {"mode": "finetune"},
                                            "augment": {"rotation_degrees": 10, "blur_sigma": 1.0}})
    assert geometric.augment.rotation_degrees == 10          # rotation and blur do not clip
    make_dataset(table, PreprocessConfig(image_size=8, intensity="minmax"), training=True,
                 augment=AugmentConfig(brightness=0.01))


def test_statistics_fitted_with_another_resize_are_refused():
    from tfmed.data.preprocessing import StatisticsError, build_preprocess

    stats = {"intensity": "standardize", "image_size": 32, "channels": 3, "resize": "plain",
             "mean": [100.0, 100.0, 100.0], "std": [50.0, 50.0, 50.0]}
    build_preprocess(PreprocessConfig(image_size=32, intensity="standardize"), stats)  # the resize they were fitted by
    with pytest.raises(StatisticsError):
        build_preprocess(PreprocessConfig(image_size=32, intensity="standardize", resize="pad"), stats)


def test_training_batches_come_in_a_new_order_every_epoch():
    images = (np.arange(20, dtype=np.uint8) * 10)[:, None, None] * np.ones((20, 8, 8), np.uint8)
    table = ImageTable(pd.DataFrame({"image": [f"m#{i}" for i in range(20)], "array_index": range(20),
                                     "label": [i % 2 for i in range(20)]}), ["a", "b"], "binary", images=images)
    dataset = make_dataset(table, PreprocessConfig(image_size=8, intensity="none", channels=1), training=True,
                           batch_size=20)
    epochs = [tuple((batch[0][:, 0, 0, 0].numpy() / 10).astype(int)) for batch in (next(iter(dataset)),
                                                                                    next(iter(dataset)))]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(20)) and epochs[0] != epochs[1]
