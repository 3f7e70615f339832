"""Transforms against hand-computed NumPy / OpenCV results; statistics on train only."""
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tfmed.config import AugmentConfig, PreprocessConfig
from tfmed.data.pipeline import load_arrays, make_dataset
from tfmed.data.table import ImageTable
from tfmed.data.preprocessing import StatisticsError, build_augment, build_preprocess
from tfmed.data.statistics import fit_statistics, load_statistics, save_statistics
from tfmed.data.transforms import (
    CLAHE, HISTOGRAM_PERCENTILES, Compose, CTWindow, HistogramStandardize, MinMax, MinMaxRange, RandomApply,
    RandomBrightness, RandomContrast, RandomCrop, RandomFlip, RandomRot90, RandomRotation, Resize, Standardize,
    SubtractMeanImage, ToChannels, TransformError, image_landmarks, rotate, window_hu)


def t(array):
    return tf.constant(np.asarray(array, dtype=np.float32))


# ----------------------------------------------------------------- windowing
def test_window_hu_known_values():
    # mediastinum window: center 40, width 400 -> [-160, 240] maps to [0, 255]
    hu = np.array([-1000.0, -160.0, 40.0, 100.0, 240.0, 3000.0])
    expected = [0.0, 0.0, 127.5, (100 + 160) / 400 * 255, 255.0, 255.0]
    np.testing.assert_allclose(window_hu(hu, 40, 400), expected, rtol=1e-6)


def test_ct_window_one_window_replicated_and_three_stacked():
    hu = np.array([[-1000.0, -600.0], [40.0, 1000.0]], np.float32)[..., None]
    one = CTWindow([[40, 400]])(t(hu)).numpy()
    assert one.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_allclose(one[..., c], window_hu(hu[..., 0], 40, 400), atol=1e-4)
    three = CTWindow([[-600, 1500], [40, 400], [400, 1800]])(t(hu)).numpy()
    # hand-computed: lung low = -1350, mediastinum low = -160, bone low = -500
    np.testing.assert_allclose(three[0, 1], [(750 / 1500) * 255, 0.0, 0.0], atol=1e-3)  # -600 HU
    np.testing.assert_allclose(three[1, 1], [255.0, 255.0, (1500 / 1800) * 255], atol=1e-3)  # 1000 HU
    np.testing.assert_allclose(three[1, 0], [(1390 / 1500) * 255, 127.5, (540 / 1800) * 255], atol=1e-3)


@pytest.mark.parametrize("windows", [[], [[40, 400], [0, 10]], [[40, 0]], [[40]]])
def test_ct_window_rejects_bad_windows(windows):
    with pytest.raises(TransformError, match="window"):
        CTWindow(windows)


# ----------------------------------------------------------------- intensity
def test_minmax_per_image_matches_numpy():
    image = np.random.default_rng(1).uniform(-50, 3000, (5, 7, 1)).astype(np.float32)
    expected = (image - image.min()) / (image.max() - image.min()) * 255
    np.testing.assert_allclose(MinMax()(t(image)).numpy(), expected, atol=1e-3)


def test_minmax_constant_image_is_zero_not_nan():
    out = MinMax()(tf.fill((3, 3, 1), 7.0)).numpy()
    assert np.all(out == 0.0)


def test_minmax_range_scales_and_clips():
    out = MinMaxRange(100, 1100)(t([[[0.0], [100.0], [350.0], [5000.0]]])).numpy().ravel()
    np.testing.assert_allclose(out, [0.0, 0.0, 250 / 1000 * 255, 255.0], atol=1e-4)
    with pytest.raises(TransformError, match="lo < hi"):
        MinMaxRange(5, 5)


def test_standardize_per_channel():
    image = np.random.default_rng(2).normal(size=(4, 4, 3)).astype(np.float32)
    mean, std = [1.0, -2.0, 0.5], [2.0, 4.0, 0.25]
    expected = (image - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(Standardize(mean, std)(t(image)).numpy(), expected, atol=1e-5)
    with pytest.raises(TransformError, match="std"):
        Standardize([0.0], [0.0])
    with pytest.raises(TransformError, match="per channel"):
        Standardize([0.0, 1.0], [1.0])


def test_subtract_mean_image():
    image = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    mean = np.full((2, 2, 3), 2.5, np.float32)
    np.testing.assert_allclose(SubtractMeanImage(mean)(t(image)).numpy(), image - 2.5)
    with pytest.raises(TransformError, match="mean image"):
        SubtractMeanImage(np.zeros((2, 2)))


# ----------------------------------------------------------------- channels
def test_to_channels_grey_to_rgb_and_rgb_to_grey():
    grey = np.random.default_rng(3).uniform(0, 255, (5, 6, 1)).astype(np.float32)
    rgb = ToChannels(3)(t(grey)).numpy()
    assert rgb.shape == (5, 6, 3) and all(np.array_equal(rgb[..., c], grey[..., 0]) for c in range(3))
    colour = np.random.default_rng(4).uniform(0, 255, (5, 6, 3)).astype(np.float32)
    expected = cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY)  # OpenCV luma, 0.299/0.587/0.114
    np.testing.assert_allclose(ToChannels(1)(t(colour)).numpy()[..., 0], expected, atol=0.2)


def test_to_channels_with_unknown_channel_count_in_graph():
    fn = tf.function(ToChannels(3), input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    out = fn(tf.ones((4, 4, 1)))
    assert out.shape == (4, 4, 3)
    out4 = fn(tf.ones((4, 4, 4)))  # RGBA: alpha dropped
    assert out4.shape == (4, 4, 3)


# ----------------------------------------------------------------- resizing
def test_resize_plain_matches_opencv_bilinear_when_upsampling():
    image = np.random.default_rng(5).uniform(0, 255, (8, 8)).astype(np.float32)
    expected = cv2.resize(image, (16, 16), interpolation=cv2.INTER_LINEAR)
    out = Resize(16)(t(image[..., None])).numpy()[..., 0]
    # the borders differ only in edge handling; the interior is the same bilinear formula
    np.testing.assert_allclose(out[1:-1, 1:-1], expected[1:-1, 1:-1], atol=1e-3)


def test_resize_pad_geometry_tall_and_wide():
    tall = Resize(32, mode="pad")(tf.ones((40, 20, 1))).numpy()[..., 0]
    # 40x20 -> 32x16 content, (32 - 16) / 2 = 8 zero columns each side
    assert tall.shape == (32, 32)
    assert np.all(tall[:, :8] == 0) and np.all(tall[:, 24:] == 0)
    np.testing.assert_allclose(tall[:, 8:24], 1.0, atol=1e-5)
    wide = Resize(32, mode="pad")(tf.ones((10, 40, 1))).numpy()[..., 0]
    # 10x40 -> 8x32 content, 12 zero rows each side
    assert np.all(wide[:12] == 0) and np.all(wide[20:] == 0)
    np.testing.assert_allclose(wide[12:20], 1.0, atol=1e-5)


def test_resize_pad_keeps_one_row_of_a_strip_thinner_than_a_pixel_at_the_size():
    """A 10 x 1000 strip at 32 px is 0.32 rows high: one row, centred, not a failure inside TensorFlow."""
    strip = Resize(32, mode="pad")(tf.ones((10, 1000, 1))).numpy()[..., 0]
    assert strip.shape == (32, 32)
    assert np.flatnonzero(strip.sum(axis=1)).tolist() == [15]
    np.testing.assert_allclose(strip[15], 1.0, atol=1e-5)


def test_resize_antialiases_strong_shrinking():
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.float32)[..., None]  # 1-px checkerboard
    out = Resize(9)(t(board)).numpy()
    np.testing.assert_allclose(out, 127.5, atol=1.0)                 # filtered to the mean grey
    aliased = Resize(9, antialias=False)(t(board)).numpy()
    assert np.abs(aliased - 127.5).max() > 60                          # plain sampling hits black/white


def test_resize_rejects_unknown_mode():
    with pytest.raises(TransformError, match="plain"):
        Resize(32, mode="crop")


# -------------------------------------------------------------- augmentation
def _grid(n=5, c=1):
    return np.arange(n * n * c, dtype=np.float32).reshape(n, n, c)


def test_rotate_180_and_90_match_numpy():
    image = _grid(5)
    np.testing.assert_allclose(rotate(t(image), math.pi).numpy(), np.rot90(image, 2), atol=1e-3)
    # a positive angle turns the picture counter-clockwise as displayed (rows down), like np.rot90
    np.testing.assert_allclose(rotate(t(image), math.pi / 2).numpy(), np.rot90(image, 1), atol=1e-3)


def test_random_rotation_stays_within_angle():
    image = np.zeros((33, 33, 1), np.float32)
    image[16, 16:] = 255.0  # a ray from the centre to the right edge
    angles = []
    for s in range(8):
        out = RandomRotation(10)(t(image), seed=[s, 0]).numpy()[..., 0]
        columns = np.arange(20, 31)
        rows = (out[:, columns] * np.arange(33)[:, None]).sum(axis=0) / out[:, columns].sum(axis=0)
        slope = np.polyfit(columns - 16.0, rows - 16.0, 1)[0]   # centroid of the ray per column
        angles.append(np.degrees(np.arctan(slope)))
    assert np.all(np.abs(angles) <= 10.5), angles
    assert np.std(angles) > 1.0


def test_random_flip_horizontal_only():
    image = _grid(4)
    seen = set()
    for s in range(16):
        out = RandomFlip(horizontal=True)(t(image), seed=[s, 1]).numpy()
        if np.array_equal(out, image):
            seen.add("same")
        elif np.array_equal(out, image[:, ::-1]):
            seen.add("lr")
        else:
            pytest.fail("horizontal flip produced something else (an up-down flip?)")
    assert seen == {"same", "lr"}


def test_random_rot90_gives_the_four_rotations():
    image = _grid(4)
    found = set()
    for s in range(32):
        out = RandomRot90()(t(image), seed=[s, 2]).numpy()
        k = [k for k in range(4) if np.array_equal(out, np.rot90(image, k))]
        assert len(k) == 1
        found.add(k[0])
    assert found == {0, 1, 2, 3}


def test_random_crop_is_a_window_of_the_input():
    image = _grid(8)
    origins = set()
    for s in range(10):
        out = RandomCrop(5)(t(image), seed=[s, 3]).numpy()
        top, left = divmod(int(out[0, 0, 0]), 8)
        np.testing.assert_array_equal(out, image[top:top + 5, left:left + 5])
        origins.add((top, left))
    assert len(origins) > 1


def test_random_brightness_adds_one_bounded_shift():
    image = np.random.default_rng(6).uniform(60, 190, (6, 6, 1)).astype(np.float32)
    shifts = []
    for s in range(10):
        diff = RandomBrightness(0.2)(t(image), seed=[s, 4]).numpy() - image
        assert np.ptp(diff) < 1e-3 and abs(diff.mean()) <= 0.2 * 255 + 1e-3
        shifts.append(diff.mean())
    assert np.std(shifts) > 1.0


def test_random_contrast_scales_about_the_mean():
    image = np.random.default_rng(7).uniform(100, 150, (6, 6, 1)).astype(np.float32)
    out = RandomContrast(0.3)(t(image), seed=[1, 5]).numpy()
    factor = (out - image.mean()) / (image - image.mean())
    assert np.ptp(factor) < 1e-3 and 0.7 - 1e-4 <= factor.mean() <= 1.3 + 1e-4
    np.testing.assert_allclose(out.mean(), image.mean(), atol=1e-3)


def test_clahe_equals_opencv():
    rng = np.random.default_rng(8)
    grey = (rng.uniform(0, 1, (48, 48)) ** 3 * 255).astype(np.uint8)
    expected = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(grey)
    out = CLAHE(2.0, 4)(t(grey[..., None])).numpy()[..., 0]
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    rgb = np.stack([grey, grey[::-1], grey.T], axis=-1)
    out3 = CLAHE(2.0, 4)(t(rgb)).numpy()
    for c in range(3):
        expected_c = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(np.ascontiguousarray(rgb[..., c]))
        np.testing.assert_array_equal(out3[..., c], expected_c)


def test_random_apply_probabilities():
    image = t([[[1.0], [3.0]]])
    assert np.array_equal(RandomApply(MinMax(), 0.0)(image, seed=[0, 0]).numpy(), image.numpy())
    assert RandomApply(MinMax(), 1.0)(image, seed=[0, 0]).numpy().ravel().tolist() == [0.0, 255.0]


def test_compose_is_reproducible_from_its_seed():
    chain = Compose([RandomFlip(True, True), RandomRotation(20), RandomBrightness(0.1)])
    image = t(np.random.default_rng(9).uniform(0, 255, (12, 12, 1)))
    a = chain(image, seed=[5, 6]).numpy()
    b = chain(image, seed=[5, 6]).numpy()
    c = chain(image, seed=[7, 6]).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------ builders
def test_build_preprocess_order_and_output_contract():
    config = PreprocessConfig(image_size=16, channels=3, intensity="window", windows=[[40, 400]], resize="pad")
    chain = build_preprocess(config)
    assert [type(x).__name__ for x in chain] == ["CTWindow", "Resize", "ToChannels"]
    out = chain(tf.fill((20, 10, 1), 40.0)).numpy()
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 6:10], 127.5, atol=1e-3)   # content on the 0-255 scale
    assert np.all(out[:, :4] == 0)                                 # padding


def test_build_preprocess_needs_matching_statistics():
    with pytest.raises(StatisticsError, match="fit_statistics"):
        build_preprocess(PreprocessConfig(intensity="standardize"))
    stale = {"intensity": "standardize", "image_size": 64, "channels": 3, "resize": "plain",
             "mean": [0, 0, 0], "std": [1, 1, 1]}
    with pytest.raises(StatisticsError, match="image_size"):
        build_preprocess(PreprocessConfig(intensity="standardize", image_size=32), stale)
    with pytest.raises(StatisticsError, match="minmax_dataset"):
        build_preprocess(PreprocessConfig(intensity="minmax_dataset"), stale)


def test_build_augment_switches():
    assert len(build_augment(AugmentConfig(enabled=False), 32)) == 0
    default = build_augment(AugmentConfig(vflip=True), 32)
    flips = [x for x in default if isinstance(x, RandomFlip)]
    assert len(flips) == 1 and flips[0].vertical and not flips[0].horizontal  # no left-right by default
    chain = build_augment(AugmentConfig(crop_from=40, rot90=True, brightness=0.1, contrast=0.1, clahe=True), 32)
    assert [type(x).__name__ for x in chain] == ["RandomApply", "RandomCrop", "RandomRot90",  # of a 40 px image
                                                 "RandomBrightness", "RandomContrast"]
    assert chain(tf.zeros((40, 40, 3)), seed=[0, 1]).shape == (32, 32, 3)
    with pytest.raises(TransformError, match="crop_from"):
        build_augment(AugmentConfig(crop_from=16), 32)


# ---------------------------------------------------------------- statistics
def _memory_table(train, val):
    images = np.concatenate([train, val])
    n_train = len(train)
    frame = pd.DataFrame({"image": [f"mem#{i}" for i in range(len(images))],
                          "array_index": np.arange(len(images)),
                          "label": np.arange(len(images)) % 2,
                          "split": ["train"] * n_train + ["val"] * len(val)})
    return ImageTable(frame, ["a", "b"], "binary", images=images)


def test_statistics_on_train_only_and_reused_on_val(tmp_path):
    rng = np.random.default_rng(10)
    train = rng.uniform(0, 100, (6, 16, 16, 3)).astype(np.float32)
    val = rng.uniform(500, 900, (3, 16, 16, 3)).astype(np.float32)
    table = _memory_table(train, val)
    config = PreprocessConfig(image_size=16, channels=3, intensity="standardize")
    with pytest.raises(StatisticsError, match="split"):
        fit_statistics(table, config)
    stats = fit_statistics(table.split("train"), config, batch_size=4)
    np.testing.assert_allclose(stats["mean"], train.reshape(-1, 3).mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(stats["std"], train.reshape(-1, 3).std(axis=0), rtol=1e-4)

    save_statistics(stats, tmp_path)
    loaded = load_statistics(tmp_path)
    assert loaded == stats
    (x, _), = make_dataset(table.split("val"), config, training=False, batch_size=8, stats=loaded)
    z = (val - train.reshape(-1, 3).mean(axis=0)) / train.reshape(-1, 3).std(axis=0)
    # z-scores are placed at ImageNet's pixel mean/std, the scale every backbone's own preprocessing expects
    expected = z * np.array([0.229, 0.224, 0.225]) * 255 + np.array([0.485, 0.456, 0.406]) * 255
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-3, atol=1e-2)


def test_standardised_training_images_have_imagenet_pixel_statistics():
    rng = np.random.default_rng(12)
    train = rng.normal(900, 300, (8, 16, 16, 1)).astype(np.float32)  # e.g. raw 12-bit values
    table = _memory_table(train, train[:2]).split("train")
    config = PreprocessConfig(image_size=16, channels=3, intensity="standardize")
    x, _ = load_arrays(table, config, stats=fit_statistics(table, config))
    means = x.reshape(-1, 3).mean(axis=0)
    stds = x.reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(means, np.array([0.485, 0.456, 0.406]) * 255, rtol=1e-3)
    np.testing.assert_allclose(stds, np.array([0.229, 0.224, 0.225]) * 255, rtol=1e-3)


def test_minmax_dataset_and_mean_image_statistics(tmp_path):
    rng = np.random.default_rng(11)
    train = rng.uniform(-200, 1800, (5, 8, 8)).astype(np.float32)
    val = rng.uniform(-5000, 5000, (2, 8, 8)).astype(np.float32)
    table = _memory_table(train, val).split("train")
    mm = fit_statistics(table, PreprocessConfig(image_size=8, intensity="minmax_dataset"))
    assert mm["min"] == pytest.approx(train.min()) and mm["max"] == pytest.approx(train.max())

    config = PreprocessConfig(image_size=8, channels=1, intensity="mean_image")
    stats = fit_statistics(table, config, batch_size=2)
    np.testing.assert_allclose(stats["mean_image"][..., 0], train.mean(axis=0), rtol=1e-4, atol=1e-3)
    save_statistics(stats, tmp_path)
    assert (tmp_path / "mean_image.npy").is_file()
    np.testing.assert_array_equal(load_statistics(tmp_path)["mean_image"], stats["mean_image"])


# ------------------------------------------------------------------ histogram standardisation
def test_image_landmarks_match_numpy_percentiles_of_the_pixels_channel_means():
    image = np.random.default_rng(3).gamma(2.0, 30.0, (13, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(image_landmarks(t(image)).numpy(),
                               np.percentile(image.mean(axis=-1), HISTOGRAM_PERCENTILES), rtol=1e-5)


def test_a_grey_picture_saved_as_rgb_is_histogram_standardised_as_the_grey_file():
    """Landmarks pooled over R = G = B moved (1st percentile 69.66 against 69.02): the same X-ray, two scores."""
    grey = np.random.default_rng(5).gamma(2.0, 30.0, (17, 11, 1)).astype(np.float32)
    transform = HistogramStandardize(np.linspace(0, 255, len(HISTOGRAM_PERCENTILES)))
    as_grey, as_rgb = transform(t(grey)).numpy(), transform(t(np.repeat(grey, 3, axis=-1))).numpy()
    np.testing.assert_allclose(as_rgb, np.repeat(as_grey, 3, axis=-1), atol=1e-4)


def test_histogram_standardisation_maps_each_image_to_the_standard_landmarks():
    standard = np.array([0, 40, 70, 95, 115, 135, 155, 175, 200, 225, 255], np.float64)
    transform = HistogramStandardize(standard)
    base = np.random.default_rng(4).uniform(0, 1, (40, 40, 1)).astype(np.float32)
    outputs = []
    for tone in (lambda x: x * 255, lambda x: 1000 + 3000 * x ** 2.2, lambda x: np.sqrt(x) * 90 - 7):
        out = transform(t(tone(base))).numpy()
        np.testing.assert_allclose(np.percentile(out, HISTOGRAM_PERCENTILES), standard, atol=0.6)
        assert out.min() >= 0 and out.max() <= 255
        outputs.append(out)
    # three monotone tone curves of one image come out alike, where per-image min-max keeps their shapes
    assert np.abs(outputs[1] - outputs[0]).mean() < 2.0 and np.abs(outputs[2] - outputs[0]).mean() < 2.0
    minmax = [MinMax()(t(tone)).numpy() for tone in (base, base ** 2.2)]
    assert np.abs(minmax[1] - minmax[0]).mean() > 20


def test_histogram_standardisation_of_a_flat_or_background_heavy_image():
    transform = HistogramStandardize(np.linspace(0, 255, 11))
    assert np.all(transform(tf.fill((6, 6, 1), 42.0)).numpy() == 0.0)   # one value: no scale, black
    image = np.zeros((10, 10, 1), np.float32)
    image[5:] = np.linspace(10, 200, 50).reshape(5, 10, 1)               # half the image is background
    out = transform(t(image)).numpy()
    assert np.all(out[:5] == 0.0) and np.all(np.diff(out[5:].ravel()) >= 0) and out.max() == 255.0


def test_histogram_standardisation_refuses_bad_landmarks():
    with pytest.raises(TransformError, match="one standard landmark per percentile"):
        HistogramStandardize([0, 255])
    with pytest.raises(TransformError, match="never decreasing"):
        HistogramStandardize([0, 50, 40, 60, 70, 80, 90, 100, 110, 120, 255])
    with pytest.raises(TransformError, match="never decreasing"):
        HistogramStandardize(np.zeros(11))


def test_histogram_statistics_on_train_only_saved_and_applied(tmp_path):
    rng = np.random.default_rng(13)
    train = rng.uniform(0, 1, (6, 12, 12, 1)).astype(np.float32) ** 2 * 4000      # a curved tone scale
    train[0] = 7.0                                                                   # one flat image
    val = rng.uniform(0, 1, (2, 12, 12, 1)).astype(np.float32) * 90                  # another, linear
    table = _memory_table(train, val)
    config = PreprocessConfig(image_size=12, channels=1, intensity="histogram")
    with pytest.raises(StatisticsError, match="fit_statistics"):
        build_preprocess(config)
    stats = fit_statistics(table.split("train"), config, batch_size=2)
    own = np.percentile(train[1:].reshape(5, -1), stats["percentiles"], axis=1).T
    expected = ((own - own[:, :1]) / (own[:, -1:] - own[:, :1]) * 255).mean(axis=0)
    np.testing.assert_allclose(stats["landmarks"], expected, rtol=1e-4, atol=1e-3)
    assert stats["n_flat_images"] == 1 and stats["landmarks"][0] == 0 and stats["landmarks"][-1] == 255
    save_statistics(stats, tmp_path)
    loaded = load_statistics(tmp_path)
    x, _ = load_arrays(table.split("val"), config, stats=loaded)
    np.testing.assert_allclose(np.percentile(x[0], stats["percentiles"]), stats["landmarks"], atol=1.5)
    with pytest.raises(StatisticsError, match="landmarks"):
        build_preprocess(config, {"intensity": "histogram", "percentiles": stats["percentiles"]})


def test_histogram_statistics_refuse_a_train_split_of_flat_images():
    table = _memory_table(np.full((3, 8, 8), 5.0, np.float32), np.zeros((1, 8, 8), np.float32)).split("train")
    with pytest.raises(StatisticsError, match="every one of the 3 train images.*minmax"):
        fit_statistics(table, PreprocessConfig(image_size=8, intensity="histogram"))


def test_load_statistics_missing_file_names_path(tmp_path):
    with pytest.raises(StatisticsError, match="preprocess_stats.json"):
        load_statistics(tmp_path)


# ------------------------------------------------------------------ acquisition-shift augmentation
def test_random_gamma_stays_in_its_range_and_keeps_black_and_white():
    from tfmed.data.transforms import RandomGamma

    image = tf.constant(np.array([0.0, 64.0, 255.0], np.float32).reshape(1, 3, 1))
    for seed in range(20):
        out = RandomGamma(0.3)(image, seed=[seed, 1]).numpy().ravel()
        assert out[0] == 0.0 and out[2] == pytest.approx(255.0)
        gamma = np.log(out[1] / 255.0) / np.log(64.0 / 255.0)
        assert np.exp(-0.3) - 1e-4 <= gamma <= np.exp(0.3) + 1e-4


def test_random_blur_smooths_an_edge_and_keeps_the_mean():
    from tfmed.data.transforms import RandomBlur

    image = np.zeros((16, 16, 1), np.float32)
    image[:, 8:] = 255.0
    out = RandomBlur(2.0)(tf.constant(image), seed=[3, 4]).numpy()
    assert out.shape == image.shape
    assert 0 < out[8, 7, 0] < 255 and 0 < out[8, 8, 0] < 255  # the edge is no longer a step
    assert out.mean() == pytest.approx(image.mean(), rel=1e-3)
    again = RandomBlur(2.0)(tf.constant(image), seed=[3, 4]).numpy()
    assert np.array_equal(out, again)  # seeded: reproducible


def test_random_noise_has_at_most_its_standard_deviation():
    from tfmed.data.transforms import RandomNoise

    flat = tf.fill((64, 64, 1), 128.0)
    sds = [float(tf.math.reduce_std(RandomNoise(8.0)(flat, seed=[s, 0]))) for s in range(10)]
    assert max(sds) < 8.5 and max(sds) > 1.0


@pytest.mark.parametrize("key, value, message", [("gamma", 1.5, "log-gamma range"),
                                                 ("blur_sigma", 9.0, "at most 5"),
                                                 ("noise", -1.0, ">= 0")])
def test_acquisition_shift_augmentation_limits_name_the_key(key, value, message):
    from tfmed.config import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match=f"augment.{key} .*{message}"):
        ExperimentConfig.from_dict({"model": {"mode": "finetune"}, "augment": {key: value}})


def test_shrinking_to_less_than_half_the_size_is_antialiased():
    big = (np.random.default_rng(0).uniform(0, 255, (100, 100, 1)) > 128).astype(np.float32) * 255
    np.testing.assert_allclose(Resize(40)(tf.constant(big)).numpy(),
                               tf.image.resize(big, [40, 40], antialias=True).numpy(), atol=1e-3)


def test_random_intensity_changes_keep_to_what_their_docstrings_promise():
    from tfmed.data.transforms import RandomBlur, RandomGamma

    image = np.zeros((4, 4, 3), np.float32)
    image[..., 0], image[..., 1], image[..., 2] = 50, 100, 200
    image[0, 0] += 20  # some texture
    factor = float(tf.random.stateless_uniform([], tf.constant([0, 1], tf.int64), 0.5, 1.5))
    mean = image.mean(axis=(0, 1), keepdims=True)  # each channel about its own mean
    np.testing.assert_allclose(RandomContrast(0.5)(tf.constant(image), seed=[0, 1]).numpy(),
                               np.clip((image - mean) * factor + mean, 0, 255), atol=1e-3)
    bright = [float(RandomBrightness(0.5)(tf.fill((2, 2, 1), 250.0), seed=[0, s])[0, 0, 0]) for s in range(20)]
    assert max(bright) <= 255 and min(bright) < 250  # clipped to the 0-255 scale
    point = np.zeros((9, 9, 1), np.float32)
    point[4, 4] = 255
    blurred = [float(RandomBlur(2.0)(tf.constant(point), seed=[0, s])[4, 4, 0]) for s in range(20)]
    assert len(set(np.round(blurred, 3))) > 10  # a sigma drawn for each image, not the largest every time
    grey = [float(RandomGamma(0.3)(tf.fill((2, 2, 1), 128.0), seed=[0, s])[0, 0, 0]) for s in range(40)]
    assert sum(v > 128 for v in grey) > 5 and sum(v < 128 for v in grey) > 5  # brightens and darkens


def test_three_ct_windows_read_the_first_channels_hounsfield_units():
    slices = np.stack([np.full((2, 2), -1000.0), np.full((2, 2), 40.0), np.full((2, 2), 1000.0)], -1)
    windows = [[-600, 1500], [40, 400], [400, 1800]]
    expected = [np.clip((-1000.0 - (c - w / 2)) / w * 255, 0, 255) for c, w in windows]
    np.testing.assert_allclose(CTWindow(windows)(tf.constant(slices.astype(np.float32)))[0, 0].numpy(), expected,
                               atol=1e-3)


def test_clahe_augmentation_reaches_about_half_the_training_images():
    from tfmed.config import AugmentConfig
    from tfmed.data.preprocessing import build_augment

    chain = build_augment(AugmentConfig(clahe=True), 16)
    image = tf.constant(np.linspace(0, 120, 256, dtype=np.float32).reshape(16, 16, 1))
    changed = sum(bool(np.any(chain(image, seed=[0, s]).numpy() != image.numpy())) for s in range(40))
    assert 10 <= changed <= 30
