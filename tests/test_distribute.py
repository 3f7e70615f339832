"""tfmed.training.distribute. Device layouts, TF_CONFIG and the dtype policy must be set before
TensorFlow initialises, so those checks each run in a fresh subprocess."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tfmed.training import distribute

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": ""}


def run_script(code, timeout=120, env=None):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, env=env or ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mirrored_two_logical_cpus_matches_one_device_and_mixed_bfloat16_output_is_float32():
    out = run_script("""
        import json, numpy as np
        from tfmed.training import distribute
        devices = distribute.use_logical_cpus(2)
        import keras, tensorflow as tf
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 6)).astype("float32"); y = (rng.random((16, 1)) > 0.5).astype("float32")
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="relu"),
                                      keras.layers.Dense(1, activation="sigmoid", dtype="float32")])
            model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
            return model
        mirrored = distribute.strategy("mirrored")
        with mirrored.scope():
            m2 = build()
        m1 = build()
        m1.set_weights(m2.get_weights())
        l1 = m1.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        l2 = m2.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(m1.get_weights(), m2.get_weights()))
        moved = max(float(np.abs(a - b).max()) for a, b in zip(m1.get_weights(), build().get_weights()))
        try:
            distribute.use_logical_cpus(3)
            late = ""
        except distribute.StrategyError as error:
            late = str(error)
        result = {"devices": devices, "replicas": mirrored.num_replicas_in_sync, "l1": l1, "l2": l2,
                  "diff": diff, "moved": moved, "late": late, "global": distribute.global_batch_size(8, mirrored)}
        # Mixed bfloat16 in the same fresh process (saves a TensorFlow start-up).
        result["policy"] = distribute.set_mixed_precision("bfloat16")
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="head")])
        model.compile("adam", "binary_crossentropy")
        xi = rng.random((8, 8, 8, 1)).astype("float32"); yi = np.array([0, 1] * 4, "float32")
        result["loss"] = float(model.fit(xi, yi, epochs=1, verbose=0).history["loss"][0])
        result.update(output=model(xi).dtype.name, conv=model.get_layer("conv")(xi[:1]).dtype.name,
                      kernel=str(model.get_layer("conv").kernel.dtype), reset=distribute.set_mixed_precision(None),
                      after=keras.mixed_precision.global_policy().name)
        print(json.dumps(result))
    """)
    assert out["replicas"] == 2 and len(out["devices"]) == 2
    assert out["global"] == 16
    assert out["l2"] == pytest.approx(out["l1"], rel=1e-5)
    assert out["diff"] < 1e-5 < out["moved"]  # same update, and the step really changed the weights
    assert "came too late" in out["late"] and "before creating any tensor" in out["late"]
    assert out["policy"] == "mixed_bfloat16"
    assert out["conv"] == "bfloat16" and out["kernel"] == "float32"
    assert out["output"] == "float32" and np.isfinite(out["loss"])
    assert out["reset"] == "float32" == out["after"]


WORKER = """
import json, os, sys
import numpy as np
from tfmed.training import distribute
import keras, tensorflow as tf
strategy = distribute.strategy("multiworker")
def build():
    keras.utils.set_random_seed(int(os.environ["SEED"]))  # different per worker: sync must fix it
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.SGD(0.1), "binary_crossentropy")
    return model
def dataset_fn(context):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32"); y = (x[:, :1] > 0).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
    return ds.batch(context.get_per_replica_batch_size(16)).repeat()
model, history = distribute.train_multiworker(build, dataset_fn, epochs=2, steps_per_epoch=4,
                                              strategy_=strategy)
np.savez(sys.argv[1], *model.get_weights())
print(json.dumps({"loss": history["loss"], "replicas": strategy.num_replicas_in_sync}))
"""


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_custom_loop_two_local_workers_end_identical(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**ENV, "SEED": str(index + 1), "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / f"w{index}.npz")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=150)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(out["replicas"] == 2 for out in outputs)
    assert all(len(out["loss"]) == 2 and np.isfinite(out["loss"]).all() for out in outputs)
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == 4
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])


def test_a_worker_that_never_starts_is_named_before_the_wait_and_in_an_error_after_the_timeout():
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]  # nothing listens on worker 1's port
    env = {**ENV, "TFMED_WORKER_TIMEOUT": "3", "TF_CONFIG": json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 0}})}
    out = run_script("""
        import json, logging, time
        from tfmed.training import distribute
        lines = []
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())
        logging.getLogger("tfmed").addHandler(handler)
        logging.getLogger("tfmed").setLevel(logging.INFO)
        start = time.monotonic()
        try:
            distribute.strategy("multiworker")
            error = ""
        except distribute.StrategyError as caught:
            error = str(caught)
        print(json.dumps({"lines": lines, "error": error, "seconds": time.monotonic() - start}))
    """, timeout=60, env=env)
    assert len(out["lines"]) == 1  # logged before the wait: who is awaited, for how long, how to stop it
    assert f"worker 0 waits up to 3 s (TFMED_WORKER_TIMEOUT) for the other workers of TF_CONFIG to start: " \
        f"{workers[1]}." in out["lines"][0] and "kill -9" in out["lines"][0]
    assert f"not every worker of TF_CONFIG started within 3 s (worker 0 waited for {workers[1]})" in out["error"]
    assert "TFMED_WORKER_TIMEOUT" in out["error"] and out["seconds"] < 30


def test_a_bad_worker_timeout_is_refused_before_waiting(monkeypatch, caplog):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    monkeypatch.setenv("TFMED_WORKER_TIMEOUT", "soon")
    with pytest.raises(distribute.StrategyError, match="TFMED_WORKER_TIMEOUT is 'soon'; set it to the seconds"):
        distribute.strategy("multiworker")
    assert not distribute._MULTIWORKER


def test_train_multiworker_loop_matches_manual_sgd_on_default_strategy():
    import keras

    x = np.arange(8, dtype="float32").reshape(4, 2) / 8
    y = np.array([[1.0], [0.0], [1.0], [2.0]], dtype="float32")

    def build():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, kernel_initializer="ones",
                                                                        bias_initializer="zeros")])
        model.compile(keras.optimizers.SGD(0.1), "mse")
        return model

    model, history = distribute.train_multiworker(
        build, lambda context: tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1,
        strategy_=tf.distribute.get_strategy())
    w, b = np.ones((2, 1)), 0.0
    residual = x @ w + b - y
    assert history["loss"][0] == pytest.approx(float((residual ** 2).mean()), rel=1e-5)
    np.testing.assert_allclose(model.get_weights()[0], w - 0.1 * 2 * x.T @ residual / 4, rtol=1e-5)


def test_a_tpu_strategy_without_a_tpu_is_refused_before_the_data_are_read(tmp_path):
    from tfmed.config import ExperimentConfig
    from tfmed.run.experiment import run_experiment

    for mode, key in (("svm", "model.svm.strategy"), ("finetune", "model.finetune.strategy")):
        config = ExperimentConfig.from_dict({"runs_dir": str(tmp_path / "runs"), "data": {"source": "folder",
                                             "path": str(tmp_path / "no_data")},
                                             "model": {"mode": mode, "weights": None, mode: {"strategy": "tpu"}}})
        with pytest.raises(distribute.StrategyError, match=f"{key} is tpu, but no TPU is reachable"):
            run_experiment(config)  # the folder of images does not exist: it was not read
    assert not (tmp_path / "runs").exists()


def test_strategy_and_helper_errors(monkeypatch):
    with pytest.raises(distribute.StrategyError, match="unknown strategy 'gpu'"):
        distribute.strategy("gpu")
    with pytest.raises(distribute.StrategyError, match="no TPU is reachable"):
        distribute.strategy("tpu")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.StrategyError, match="needs the TF_CONFIG"):
        distribute.strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(distribute.StrategyError, match="cluster.worker"):
        distribute.strategy("multiworker")
    with pytest.raises(distribute.StrategyError, match="fp8"):
        distribute.set_mixed_precision("fp8")
    with pytest.raises(distribute.StrategyError, match="int >= 1"):
        distribute.global_batch_size(0)
    with pytest.raises(distribute.StrategyError, match="True, False or 'auto'"):
        distribute.resolve_jit_compile("yes")
    assert distribute.resolve_jit_compile("auto") is bool(tf.config.list_physical_devices("GPU"))
    assert distribute.strategy("cpu").num_replicas_in_sync == 1
    assert distribute.strategy("auto").num_replicas_in_sync == max(1, len(tf.config.list_logical_devices("GPU")))
    with pytest.raises(distribute.StrategyError, match="no loss"):
        distribute.train_multiworker(lambda: __import__("keras").Sequential(), lambda c: None, 1,
                                     strategy_=tf.distribute.get_strategy())


@pytest.mark.slow
def test_mirrored_feature_extraction_takes_any_batch_size_and_matches_one_device():
    """33 images (last batch of 1) and a single image over 2 replicas: no replica gets an empty batch."""
    out = run_script("""
        import json, numpy as np
        from tfmed.training import distribute
        distribute.use_logical_cpus(2)
        import tensorflow as tf
        from tfmed import backbones
        from tfmed.modes import FeatureSVM
        rng = np.random.default_rng(0)
        X = rng.uniform(0, 255, (33, 32, 32, 3)).astype("float32"); y = np.arange(33) % 2; X[y == 1, 8:24, 8:24] = 255
        kw = dict(weights=None, taps=("middle",), C=(1,), cv=2, image_size=32)
        cpu = FeatureSVM(strategy="cpu", **kw).fit(X, y)
        mirrored = FeatureSVM(strategy="mirrored", **kw).fit(X, y)
        res = {"feat33": float(np.abs(cpu.features(X) - mirrored.features(X)).max()),
               "feat1": float(np.abs(cpu.features(X[:1]) - mirrored.features(X[:1])).max()),
               "proba1": float(np.abs(cpu.predict_proba(X[:1]) - mirrored.predict_proba(X[:1])).max())}
        with distribute.strategy("mirrored").scope():
            fm = backbones.feature_model(backbones.create("efficientnet_lite0", weights=None, input_shape=(32, 32, 3)),
                                         taps=("early", "late"))
        plain = backbones.feature_model(backbones.create("efficientnet_lite0", weights=None, input_shape=(32, 32, 3)),
                                        taps=("early", "late"))
        plain.set_weights(fm.get_weights())
        ref = backbones.extract_features(plain, X[:5])
        runs = {"array": backbones.extract_features(fm, X[:5], batch_size=3),
                "batches": backbones.extract_features(fm, tf.data.Dataset.from_tensor_slices((X[:5], y[:5])).batch(3)),
                "one": backbones.extract_features(fm, tf.data.Dataset.from_tensor_slices(X[:1]))}
        for name, got in runs.items():
            n = len(got["late"])
            res[name] = [n, max(float(np.abs(got[k] - ref[k][:n]).max()) for k in ref)]
        res["replicas"] = backbones.features.replicas_of(fm)
        print(json.dumps(res))
    """, timeout=400)
    assert out["replicas"] == 2
    assert out["feat33"] < 1e-4 and out["feat1"] < 1e-4 and out["proba1"] < 1e-3
    assert out["array"][0] == 5 and out["batches"][0] == 5 and out["one"][0] == 1
    assert max(out["array"][1], out["batches"][1], out["one"][1]) < 1e-4


def test_train_multiworker_takes_string_losses_with_1d_labels_and_sample_weights_as_fit_does():
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")   # (B,) labels against a (B, 1) output
    w = np.array([0, 1, 2, 0, 1, 0, 3, 1], dtype="float32")

    def builder(loss):
        def build():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
            model.compile(keras.optimizers.SGD(0.0), loss)
            return model
        return build

    reference = builder("binary_crossentropy")()
    plain = reference.evaluate(x, y, batch_size=8, verbose=0)
    weighted = reference.evaluate(x, y, sample_weight=w, batch_size=8, verbose=0)
    assert weighted != pytest.approx(plain)
    strategy_ = tf.distribute.get_strategy()
    for loss in ("binary_crossentropy", keras.losses.binary_crossentropy, keras.losses.BinaryCrossentropy()):
        _, history = distribute.train_multiworker(
            builder(loss), lambda context: tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1,
            strategy_=strategy_)
        assert history["loss"][0] == pytest.approx(plain, rel=1e-5)
        _, history = distribute.train_multiworker(
            builder(loss), lambda context: tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8), epochs=1,
            strategy_=strategy_)
        assert history["loss"][0] == pytest.approx(weighted, rel=1e-5)
    with pytest.raises(distribute.StrategyError, match=r"\(x, y\) or \(x, y, sample_weight\) batches"):
        distribute.train_multiworker(builder("mse"), lambda context: tf.data.Dataset.from_tensor_slices(x).batch(8),
                                     epochs=1, strategy_=strategy_)


def test_a_tf_config_with_a_chief_is_refused_by_the_strategy_and_the_worker_share(monkeypatch):
    from unittest import mock

    cluster = {"chief": ["127.0.0.1:20001"], "worker": ["127.0.0.1:20002", "127.0.0.1:20003"]}
    for task in ("chief", "worker"):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}}))
        with pytest.raises(distribute.StrategyError, match="has chief.*workers only.*cluster.worker"):
            distribute.strategy("multiworker")   # refused before any strategy is made or waited for
        fake = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
        fake.cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        fake.num_replicas_in_sync = 3
        with pytest.raises(distribute.StrategyError, match="numbers workers only"):
            distribute.worker_share(fake)   # the chief and worker 0 would both be index 0, both the chief
    workers = {"worker": ["127.0.0.1:20002", "127.0.0.1:20003"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": workers, "task": {"type": "worker", "index": 1}}))
    fake = mock.Mock(spec=tf.distribute.MultiWorkerMirroredStrategy)
    fake.cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    fake.num_replicas_in_sync = 2
    share = distribute.worker_share(fake)
    assert (share.index, share.count, share.chief) == (1, 2, False)
