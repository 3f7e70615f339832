"""Shared test settings: quiet TensorFlow logs and deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


# tests/data holds reference files and the script that made them (it needs torch).
collect_ignore = ["data"]


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same random state (NumPy, Python, Keras/TensorFlow)."""
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
