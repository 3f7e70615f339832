"""Feature extraction across devices and workers: the feature store's shards shared between worker
processes (each computes its own, all read all), MirroredStrategy over local devices, and a
two-worker ``tfmed run`` on 127.0.0.1 that equals a one-process run."""
import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from tfmed.config import ConfigError, ExperimentConfig
from tfmed.modes import FeatureSVM
from tfmed.modes.feature_store import FeatureStore
from tfmed.modes.features import FeatureError
from tfmed.training.distribute import WorkerShare
from test_distribute import ENV, _free_ports, run_script
from test_svm import make_images, small


def features_of(start, stop):
    rows = np.arange(start, stop, dtype=np.float32)[:, None]
    return {"early": rows * [1.0, 2.0], "late": rows * [3.0, 4.0, 5.0]}


def test_workers_compute_only_their_own_shards_and_all_read_every_shard(tmp_path):
    barrier = threading.Barrier(2, timeout=30)
    stores = [FeatureStore(tmp_path, shard_rows=4) for _ in range(2)]
    calls = [[], []]
    results = [None, None]

    def worker(index):
        def compute(start, stop):
            calls[index].append(start)
            return features_of(start, stop)
        results[index] = stores[index].get_or_compute({"table": "t"}, 18, compute,
                                                      WorkerShare(index, 2, barrier.wait))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert calls == [[0, 8, 16], [4, 12]]  # shard k belongs to worker k % 2
    alone = FeatureStore(tmp_path / "alone", shard_rows=4).get_or_compute({"table": "t"}, 18, features_of)
    for result in results:
        for name in ("early", "late"):
            np.testing.assert_array_equal(result[name], alone[name])
    assert [(s.shards_computed, s.shards_read) for s in stores] == [(3, 2), (2, 3)]


def test_a_shard_another_worker_should_have_written_is_named_when_missing(tmp_path):
    store = FeatureStore(tmp_path, shard_rows=4)
    with pytest.raises(FeatureError, match=r"shard-0000000004-0000000008\.npy: worker 1 .*shared feature cache"):
        store.get_or_compute({"table": "t"}, 10, features_of, WorkerShare(0, 2, lambda: None))


def test_multiworker_settings_are_refused_where_they_cannot_work(tmp_path):
    svm = {"mode": "svm", "svm": {"strategy": "multiworker"}}
    with pytest.raises(ConfigError, match="multiworker.*k folds"):
        ExperimentConfig.from_dict({"model": svm, "split": {"method": "kfold"}})
    with pytest.raises(ConfigError, match=r"members\[0\]\.svm\.strategy.*tfmed ensemble"):
        ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": [
            {"mode": "svm", "svm": {"strategy": "multiworker"}}, {"mode": "finetune"}]}}})
    with pytest.raises(ConfigError, match="model.svm.strategy"):
        ExperimentConfig.from_dict({"model": {"mode": "svm", "svm": {"strategy": "cluster"}}})
    from tfmed.run.sweep import sweep_experiment
    with pytest.raises(ConfigError, match="sweep-layers runs in one process"):
        sweep_experiment(ExperimentConfig.from_dict({"model": svm}))
    with pytest.raises(FeatureError, match="cache_dir is None"):
        small(strategy="multiworker").extract_tables({}, None)
    with pytest.raises(FeatureError, match="strategy is 'gpus'"):
        small(strategy="gpus").fit(*make_images(12, 2))


def test_the_strategy_is_not_saved_with_the_model(tmp_path):
    X, y = make_images(24, 2, seed=1)
    model = small(strategy="cpu").fit(X, y)
    params = json.loads((model.save(tmp_path / "svm") / "feature_svm.json").read_text())["params"]
    assert params["strategy"] == "auto"
    np.testing.assert_allclose(FeatureSVM.load(tmp_path / "svm").predict_proba(X), model.predict_proba(X),
                               atol=1e-5)


@pytest.mark.slow
def test_mirrored_extraction_over_two_devices_equals_one_device():
    out = run_script("""
        import json, numpy as np
        from tfmed.training import distribute
        distribute.use_logical_cpus(2)
        import tensorflow as tf
        from test_svm import make_images, small
        X, y = make_images(21, 2, seed=4)  # 21 rows: the last batch splits unevenly over the devices
        one = small(strategy="cpu")
        two = small(strategy="mirrored")
        for model in (one, two):
            model._start_fit(["early"])
        a, b = one._blocks(X, cached=False)["early"], two._blocks(X, cached=False)["early"]
        base, _ = two._base_model()
        print(json.dumps({"diff": float(np.abs(a - b).max()), "scale": float(np.abs(a).max()),
                          "strategy": type(base.distribute_strategy).__name__,
                          "replicas": base.distribute_strategy.num_replicas_in_sync}))
    """, env={**ENV, "PYTHONPATH": "tests"})
    assert out["strategy"] == "MirroredStrategy" and out["replicas"] == 2
    assert out["scale"] > 0 and out["diff"] < 1e-4 * out["scale"]


WORKER = """
import sys
from tfmed.modes import feature_store
feature_store.SHARD_ROWS = 4
from tfmed.run.cli import main
sys.exit(main(["run", sys.argv[1]]))
"""


def write_experiment(tmp_path, strategy):
    X, y = make_images(40, 2, seed=7)
    rows = []
    for i, (image, label) in enumerate(zip(X[..., 0], y)):
        cv2.imwrite(str(tmp_path / f"x{i}.png"), np.clip(image, 0, 255).astype(np.uint8))
        rows.append({"path": f"x{i}.png", "label": int(label),
                     "split": "train" if i < 24 else "val" if i < 32 else "test"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    config = {"name": "workers", "data": {"source": "manifest", "path": str(tmp_path / "manifest.csv")},
              "split": {"method": "predefined", "test_fraction": 0.0},
              "preprocess": {"image_size": 32},
              "model": {"mode": "svm", "backbone": "efficientnet_lite0", "weights": None,
                        "svm": {"taps": ["early"], "C": [1.0], "cv": 3, "strategy": strategy}},
              "runs_dir": str(tmp_path / f"runs_{strategy}")}
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_local_workers_extract_the_features_one_process_would(tmp_path):
    config = write_experiment(tmp_path, "multiworker")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                               "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(config)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    single = subprocess.run([sys.executable, "-c", WORKER, str(write_experiment(tmp_path, "auto"))], env=ENV,
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
            assert proc.returncode == 0, outputs[-1][-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert single.returncode == 0, single.stderr[-3000:]
    # 24 train rows = 6 shards, val and test 8 rows = 2 shards each: 5 shards per worker
    assert "worker 0 of 2: 5 feature shard(s) computed here, 5 read" in outputs[0]
    assert "worker 1 of 2: 5 feature shard(s) computed here, 5 read" in outputs[1]
    assert "features written; worker 0" in outputs[1]
    runs = {name: list((tmp_path / f"runs_{name}" / "workers").iterdir()) for name in ("multiworker", "auto")}
    assert len(runs["multiworker"]) == 1 and len(runs["auto"]) == 1  # worker 1 wrote no run
    shared = sorted((tmp_path / "runs_multiworker" / ".feature_cache").rglob("shard-*.npy"))
    alone = sorted((tmp_path / "runs_auto" / ".feature_cache").rglob("shard-*.npy"))
    assert [p.relative_to(tmp_path / "runs_multiworker") for p in shared] == \
        [p.relative_to(tmp_path / "runs_auto") for p in alone] and len(shared) == 10
    for a, b in zip(shared, alone):
        np.testing.assert_allclose(np.load(a), np.load(b), rtol=1e-5, atol=1e-6)
    scores = [pd.read_csv(runs[name][0] / "predictions.csv") for name in ("multiworker", "auto")]
    np.testing.assert_allclose(scores[0]["score"], scores[1]["score"], atol=1e-6)
