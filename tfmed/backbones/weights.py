"""Finding and loading backbone weights offline.

tfmed never lets Keras download: ImageNet weights are looked up, by the exact
file name Keras publishes them under, in

1. the ``weights_dir`` argument,
2. the directory named by ``$TFMED_WEIGHTS_DIR``,
3. the Keras cache ``$KERAS_HOME/models`` (default ``~/.keras/models``),

and a clear :class:`MissingWeightsError` says what to download and where to
put it when none holds the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from tfmed.errors import TfmedError

__all__ = ["MissingWeightsError", "WeightsFileError", "weights_search_dirs", "find_weights_file",
           "cache_dir", "load_into"]

# ImageNet channel standard deviations (RGB), as keras.applications.efficientnet uses them.
_IMAGENET_STDDEV_RGB = np.array([0.229, 0.224, 0.225], "float32")


class MissingWeightsError(TfmedError):
    """Pretrained weights were asked for but no local copy was found (tfmed never downloads)."""


class WeightsFileError(TfmedError):
    """A weights file exists but cannot be used for the requested model."""


def weights_search_dirs(weights_dir=None) -> list:
    """Directories searched for ImageNet weights files, in order.

    Example:
        >>> weights_search_dirs("/data/weights")[0]
        PosixPath('/data/weights')
    """
    dirs = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir).expanduser())
    if os.environ.get("TFMED_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["TFMED_WEIGHTS_DIR"]).expanduser())
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    dirs.append(Path(keras_home) / "models")
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_weights_file(file_name: str, url: str, backbone: str, weights_dir=None) -> Path:
    """Path of ``file_name`` in the first search directory holding it, else MissingWeightsError.

    Example:
        >>> name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        >>> find_weights_file(name, get_spec("resnet50").weights_url(), "resnet50")  # doctest: +SKIP
        PosixPath('/root/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5')
    """
    dirs = weights_search_dirs(weights_dir)
    for d in dirs:
        candidate = d / file_name
        if candidate.is_file():
            return candidate
    searched = "\n".join(f"  - {d}" for d in dirs)
    raise MissingWeightsError(
        f"ImageNet weights for backbone {backbone!r} not found: no file {file_name!r} in any of\n"
        f"{searched}\n"
        f"tfmed does not download. Fetch it from {url} and put it in one of those directories "
        f"(e.g. ~/.keras/models/{file_name}, or a folder passed as weights_dir= / $TFMED_WEIGHTS_DIR), "
        "or use weights=None for random initialisation.")


def cache_dir() -> Path:
    """Where converted weights are cached: ``$TFMED_CACHE_DIR`` or ``~/.cache/tfmed/weights``.

    Example:
        >>> cache_dir().name  # doctest: +SKIP
        'weights'
    """
    env = os.environ.get("TFMED_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tfmed" / "weights"


def load_into(model: keras.Model, path, backbone: str, quirk: str = "") -> None:
    """Load a weights file into a model tfmed built, with a clear error when it does not fit.

    ``.weights.h5`` / ``.keras`` files are Keras 3 weights saved from a tfmed model;
    other ``.h5`` files are keras.applications' published weights (loaded in layer
    order, as Keras does). ``quirk="efficientnet_variance"`` reproduces the extra input
    scaling Keras applies with EfficientNet's ImageNet weights.

    Example:
        >>> load_into(model, "~/weights/my_resnet.weights.h5", "resnet50")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsFileError(f"weights file for backbone {backbone!r} not found: {path} "
                               "(pass an existing file, weights='imagenet' or weights=None)")
    legacy = path.suffix == ".h5" and not path.name.endswith(".weights.h5")
    try:
        model.load_weights(str(path))
    except Exception as exc:  # Keras raises assorted types for a mismatching file
        raise WeightsFileError(
            f"weights file {path} does not fit backbone {backbone!r} as built "
            f"(include_top / architecture must match the model that saved it): {exc}") from exc
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and getattr(layer, "adapt_variance", None) is not None:
            if legacy and quirk == "efficientnet_variance":
                # Keras divides by sqrt(std) once more after Normalization when it loads these
                # files (its imagenet branch); folding that into the variance is the same map.
                layer.adapt_variance.assign(layer.adapt_variance * _IMAGENET_STDDEV_RGB)
            layer.finalize_state()
