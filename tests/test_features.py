"""Feature cache, hashing, image batches and LBP texture (tfmed.modes.features)."""
import numpy as np
import pytest
from skimage.feature import local_binary_pattern

from tfmed.modes import features as F


def _counting(value=1.0):
    calls = []

    def compute(taps):
        calls.append(list(taps))
        return {tap: np.full((3, 4), value + i, np.float32) for i, tap in enumerate(taps)}

    return compute, calls


def _parts(**changes):
    parts = {"images": np.arange(3 * 8 * 8 * 3, dtype=np.float32).reshape(3, 8, 8, 3),
             "backbone": "efficientnet_lite0", "weights": "abc", "taps": ["middle", "late"],
             "pooling": "avg", "image_size": 32, "code_version": F.FEATURE_CODE_VERSION}
    parts.update(changes)
    return parts


def test_cache_hit_returns_stored_features_without_computing(tmp_path):
    cache = F.FeatureCache(tmp_path)
    compute, calls = _counting()
    first = cache.get_or_compute(_parts(), compute)
    second = cache.get_or_compute(_parts(), compute)
    assert calls == [["middle", "late"]]
    assert (cache.hits, cache.misses) == (2, 2)
    for tap in ("middle", "late"):
        np.testing.assert_array_equal(first[tap], second[tap])
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # a new cache object on the same folder (a second run) also hits
    again = F.FeatureCache(tmp_path)
    again.get_or_compute(_parts(), compute)
    assert calls == [["middle", "late"]] and again.hits == 2


@pytest.mark.parametrize("change", [
    {"images": np.zeros((3, 8, 8, 3), np.float32)},
    {"pooling": "max"},
    {"weights": "other-weights"},
    {"image_size": 64},
    {"backbone": "resnet50"},
    {"code_version": "old"},
])
def test_any_change_of_inputs_misses(tmp_path, change):
    cache = F.FeatureCache(tmp_path)
    compute, calls = _counting()
    cache.get_or_compute(_parts(), compute)
    cache.get_or_compute(_parts(**change), compute)
    assert len(calls) == 2 and calls[1] == ["middle", "late"]


def test_one_changed_pixel_misses(tmp_path):
    cache = F.FeatureCache(tmp_path)
    compute, calls = _counting()
    cache.get_or_compute(_parts(), compute)
    images = _parts()["images"].copy()
    images[2, 4, 4, 1] += 1
    cache.get_or_compute(_parts(images=images), compute)
    assert len(calls) == 2


def test_taps_are_cached_separately(tmp_path):
    cache = F.FeatureCache(tmp_path)
    compute, calls = _counting()
    cache.get_or_compute(_parts(taps=["late"]), compute)
    out = cache.get_or_compute(_parts(taps=["middle", "late"]), compute)
    assert calls == [["late"], ["middle"]]  # only the new tap is computed
    assert list(out) == ["middle", "late"]
    np.testing.assert_array_equal(out["late"], np.full((3, 4), 1.0))


def test_damaged_cache_file_is_recomputed(tmp_path):
    cache = F.FeatureCache(tmp_path)
    compute, calls = _counting()
    cache.get_or_compute(_parts(), compute)
    cache.path(_parts(), "late").write_bytes(b"not an npz")
    out = cache.get_or_compute(_parts(), compute)
    assert calls[1] == ["late"]
    np.testing.assert_array_equal(out["late"], np.full((3, 4), 1.0))


def test_cache_needs_taps(tmp_path):
    with pytest.raises(F.FeatureError, match="taps"):
        F.FeatureCache(tmp_path).get_or_compute({"images": np.zeros(2)}, lambda taps: {})


def test_cache_reports_taps_the_function_forgot(tmp_path):
    with pytest.raises(F.FeatureError, match="late"):
        F.FeatureCache(tmp_path).get_or_compute(_parts(), lambda taps: {"middle": np.zeros((3, 2))})


def test_digest_depends_on_values_dtype_and_shape():
    a = np.arange(6, dtype=np.float32)
    assert F.digest(a) == F.digest(a.copy())
    assert F.digest(a) != F.digest(a.astype(np.float64))
    assert F.digest(a) != F.digest(a.reshape(2, 3))
    assert F.digest({"x": 1, "y": [1, 2]}) == F.digest({"y": [1, 2], "x": 1})


def test_image_batch_adds_channel_and_names_non_finite_rows():
    assert F.as_image_batch(np.zeros((2, 5, 5), np.uint8)).shape == (2, 5, 5, 1)
    bad = np.zeros((6, 5, 5, 3), np.float32)
    bad[1, 0, 0, 0] = np.nan
    bad[4, 2, 2, 2] = np.inf
    with pytest.raises(F.NonFiniteError, match=r"rows 1, 4"):
        F.as_image_batch(bad)
    with pytest.raises(F.FeatureError, match=r"shape \(2, 5, 5, 2\)"):
        F.as_image_batch(np.zeros((2, 5, 5, 2)))
    ragged = [np.zeros((5, 5, 3)), np.zeros((7, 5, 3)), np.zeros((5, 5, 3))]
    for check in (F.as_image_batch, F.as_input_batch):
        with pytest.raises(F.FeatureError, match=r"X holds images of different shapes \(\(5, 5, 3\), \(7, 5, 3\)\); "
                                                 "resize them to one size first"):
            check(ragged)


def test_feature_check_names_rows():
    block = np.ones((5, 3))
    block[3, 1] = np.inf
    with pytest.raises(F.NonFiniteError, match=r"rows 3 .*'late'"):
        F.check_finite({"late": block})


def test_resize_to_rgb_replicates_grey_and_keeps_scale():
    grey = np.zeros((2, 10, 10, 1), np.float32)
    grey[:, :, 5:] = 200.0
    out = F.resize_to_rgb(grey, 20)
    assert out.shape == (2, 20, 20, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, -1, 1] == 200.0


def test_lbp_constant_image_hand_computed_histogram():
    # 12x12 constant image, zero outside. Interior (10x10): all 8 neighbours
    # equal the centre -> 8 set bits -> uniform code 8. Edge pixels (40): 5
    # contiguous neighbours inside -> code 5. Corners (4): 3 inside -> code 3.
    hist = F.lbp_features(np.full((1, 12, 12), 90.0), P=8, R=1)
    expected = np.zeros(10)
    expected[8], expected[5], expected[3] = 100 / 144, 40 / 144, 4 / 144
    np.testing.assert_allclose(hist[0], expected, rtol=1e-6)


def test_lbp_matches_histogram_of_skimage_codes_and_separates_textures():
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    hist = F.lbp_features(noisy, P=8, R=1)
    grey = np.clip(np.rint(noisy[0].mean(axis=-1)), 0, 255).astype(np.uint8)
    codes = local_binary_pattern(grey, 8, 1, method="uniform")
    counts, _ = np.histogram(codes, bins=np.arange(11))
    np.testing.assert_allclose(hist[0], counts / counts.sum(), rtol=1e-6)
    np.testing.assert_allclose(hist.sum(axis=1), 1.0, rtol=1e-6)
    smooth = F.lbp_features(np.tile(np.linspace(0, 255, 16), (2, 16, 1)))
    # a smooth ramp has far fewer non-uniform patterns (last bin) than noise
    assert smooth[:, -1].max() < hist[:, -1].min()


def test_the_backbone_computes_features_in_float32_whatever_policy_a_script_set():
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # as a script set it for its own fine-tune
    try:
        model, _ = F.base_model("efficientnet_lite0", None, None, 36)
        pooled = F._feature_model(model, ["middle", "late"], "avg")
        assert {layer.dtype_policy.compute_dtype for layer in model.layers + pooled.layers} == {"float32"}
        features = F.backbone_features(np.full((2, 36, 36, 3), 128.0, np.float32), backbone="efficientnet_lite0",
                                       weights=None, taps=("late",), image_size=36)
        assert features["late"].dtype == np.float32
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"  # the script's, left as it was
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_images_are_downsized_by_area_averaging():
    image = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 1)).astype(np.float32)
    expected = image[0, ..., 0].reshape(16, 4, 16, 4).mean(axis=(1, 3))
    resized = F.resize_to_rgb(image, 16)
    assert resized.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(resized[0, ..., 0], expected, atol=1e-3)


def test_the_feature_cache_keeps_average_and_max_pooled_features_apart(tmp_path):
    cache = F.FeatureCache(tmp_path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1))
    pooled = {pooling: F.backbone_features(images, backbone="efficientnet_lite0", weights=None, taps=["early"],
                                           image_size=32, cache=cache, pooling=pooling)["early"]
              for pooling in ("avg", "max")}
    assert (cache.hits, cache.misses) == (0, 2) and not np.array_equal(pooled["avg"], pooled["max"])
