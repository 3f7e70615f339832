"""ImageNet backbones for transfer learning: one table, ImageNet weights (local, or downloaded once), tap features.

Example:
    >>> import numpy as np
    >>> from tfmed import backbones
    >>> base = backbones.create("efficientnet_lite0")          # ImageNet weights, 224 px
    >>> fm = backbones.feature_model(base, taps=("middle", "late"))
    >>> images = np.zeros((2, 224, 224, 3), "float32")          # raw 0-255 pixels
    >>> feats = backbones.extract_features(fm, images)
    >>> feats["middle"].shape, feats["late"].shape
    ((2, 192), (2, 1280))
"""
from tfmed.backbones import efficientnet_lite, keras_apps  # noqa: F401  (their entries register themselves)
from tfmed.backbones.factory import BackboneInputError, create
from tfmed.backbones.features import FeatureInputError, extract_features, feature_model
from tfmed.backbones.keras_apps import ImagenetPreprocessing
from tfmed.backbones.registry import BackboneSpec, UnknownBackboneError, get_spec, list_backbones, register
from tfmed.backbones.torch_pickle import TorchPickleError, load_legacy_state_dict
from tfmed.backbones.weights import MissingWeightsError, WeightsFileError, weights_search_dirs

list = list_backbones  # noqa: A001  (public name: tfmed.backbones.list())

__all__ = ["BackboneSpec", "BackboneInputError", "FeatureInputError", "ImagenetPreprocessing",
           "MissingWeightsError", "TorchPickleError", "UnknownBackboneError", "WeightsFileError",
           "create", "extract_features", "feature_model", "get_spec", "list", "list_backbones",
           "load_legacy_state_dict", "register", "weights_search_dirs"]
