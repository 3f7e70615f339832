"""FineTuner under MirroredStrategy (two logical CPUs) with bfloat16 mixed precision.

Logical devices must be configured before TensorFlow starts, so the run is a subprocess.
"""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test trains in a fresh TensorFlow process

SCRIPT = r"""
import json
from tfmed.training import distribute
distribute.use_logical_cpus(2)
import numpy as np
import tensorflow as tf
from tfmed.config import FinetuneConfig, StageConfig
from tfmed.modes.finetune import FineTuner

config = FinetuneConfig(stages=[StageConfig(epochs=1, unfreeze=0), StageConfig(epochs=1, unfreeze=1)],
                        batch_size=8, strategy="mirrored", mixed_precision="bfloat16")
tuner = FineTuner("mobilenet_v2", "binary", 1, config=config, image_size=32, weights=None)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (48, 32, 32, 3)).astype("float32")
y = (np.arange(48) % 2).astype("float32")[:, None]
x[y[:, 0] == 1, :16] = 255.0
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(tuner.global_batch_size)
history = tuner.fit(data, data)
scores = tuner.predict(x)
print("RESULT " + json.dumps({
    "replicas": tuner.strategy_.num_replicas_in_sync, "global_batch": tuner.global_batch_size,
    "strategy": type(tuner.strategy_).__name__, "shape": list(scores.shape),
    "finite": bool(np.isfinite(scores).all()), "output_dtype": str(tuner.model_.outputs[0].dtype),
    "epochs": len(history["loss"]), "policy_after": tf.keras.mixed_precision.global_policy().name
        if hasattr(tf.keras, "mixed_precision") else ""}))
"""


def test_finetuner_trains_mirrored_over_two_cpus_in_bfloat16():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["strategy"] == "MirroredStrategy" and out["replicas"] == 2
    assert out["global_batch"] == 16  # 8 per replica x 2 replicas
    assert out["shape"] == [48, 1] and out["finite"]
    assert out["output_dtype"] == "float32"  # head kept in float32 under mixed precision
    assert out["epochs"] == 2


CALLBACK_SCRIPT = r"""
import json
from tfmed.training import distribute
distribute.use_logical_cpus(2)
import keras
import numpy as np
import tensorflow as tf
from tfmed import training as tc
from tfmed.training import freezing

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="block1_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, name="block2_conv")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(
        keras.layers.GlobalAveragePooling2D()(x)))
    freezing.freeze(model, ["block1_", "block2_"])
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy")
rng = np.random.default_rng(0)
x, y = rng.normal(size=(32, 8, 8, 1)).astype("float32"), np.arange(32) % 2
unfreeze = tc.StagedUnfreeze(["block1_", "block2_"], schedule=[(1, 1)], lr_factor=0.1)
model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[unfreeze])
print("RESULT " + json.dumps({"unfrozen": unfreeze.unfrozen_,
                              "rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))}))
"""


def test_staged_unfreeze_works_in_a_mirrored_fit():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", CALLBACK_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert out["unfrozen"] == ["block2_"] and abs(out["rate"] - 1e-4) < 1e-9


def test_finetuner_compiles_with_xla_when_asked():
    import numpy as np
    import tensorflow as tf

    from tfmed.config import FinetuneConfig, StageConfig
    from tfmed.modes.finetune import FineTuner

    config = FinetuneConfig(stages=[StageConfig(epochs=1, unfreeze=0)], batch_size=8, jit_compile=True)
    tuner = FineTuner("mobilenet_v2", "binary", 1, config=config, image_size=32, weights=None)
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = (np.arange(16) % 2).astype("float32")[:, None]
    history = tuner.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))
    assert tuner.model_.jit_compile is True
    assert np.isfinite(history["loss"]).all() and tuner.predict(x).shape == (16, 1)
