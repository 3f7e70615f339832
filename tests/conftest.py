"""Shared test settings: quiet TensorFlow logs and deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# No test reaches the internet: a missing weights file fails at once instead of being downloaded (the tests of
# the download path clear this and serve the files from 127.0.0.1).
os.environ.setdefault("TFMED_OFFLINE", "1")

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
