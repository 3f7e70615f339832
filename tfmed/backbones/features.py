"""Pooled feature vectors from backbone taps: :func:`feature_model` and :func:`extract_features`."""
from __future__ import annotations

import contextlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfmed.backbones.registry import UnknownBackboneError, get_spec
from tfmed.errors import TfmedError

__all__ = ["FeatureInputError", "PixelRangeError", "check_pixel_range", "feature_model", "extract_features",
           "replicas_of"]


class FeatureInputError(TfmedError):
    """Bad taps, pooling or images for feature extraction."""


class PixelRangeError(FeatureInputError):
    """Images on another scale than the 0-255 that tfmed backbones take."""


# tfmed backbones take 0-255 images (each one's ImageNet preprocessing is inside the model); values this far
# outside 0-255 are another scale (16-bit, Hounsfield units), not the noise that augmentation adds.
PIXEL_MARGIN = 45.0


def check_pixel_range(images: np.ndarray, what: str = "X") -> None:
    """Refuse images on another scale than the 0-255 that tfmed backbones take: values far above 255 (16-bit,
    raw DICOM) or far below 0 (Hounsfield units), or fractional values all within [-1, 1] (images scaled to 0-1
    or -1-1), which the backbone would read as nearly black and score with confidence all the same.

    Example:
        >>> check_pixel_range(np.full((1, 4, 4, 1), 0.5))
        Traceback (most recent call last):
        tfmed.backbones.features.PixelRangeError: X holds values from 0.5 to 0.5 only: images scaled to 0-1 (or -1 to 1)? tfmed backbones take 0-255 images (their ImageNet preprocessing is inside the model): multiply by 255 (or map -1..1 to 0..255)
    """
    low, high = float(np.min(images)), float(np.max(images))
    fix = "tfmed backbones take 0-255 images (their ImageNet preprocessing is inside the model): "
    if high > 255.0 + PIXEL_MARGIN or low < -PIXEL_MARGIN:
        raise PixelRangeError(f"{what} holds values from {low:g} to {high:g}: 16-bit pixels or Hounsfield units? "
                              f"{fix}scale them to 0-255 first (e.g. min-max per image, or a CT window, "
                              "tfmed.data.transforms.intensity.window_hu), or read the files through a table "
                              "(tfmed run, make_dataset), which does")
    if -1.0 <= low and high <= 1.0 and not np.array_equal(images, np.round(images)):  # black images pass
        raise PixelRangeError(f"{what} holds values from {low:g} to {high:g} only: images scaled to 0-1 (or -1 to "
                              f"1)? {fix}multiply by 255 (or map -1..1 to 0..255)")


def _resolve_tap(model, spec, tap):
    names = {layer.name for layer in model.layers}
    if spec is not None and tap in spec.taps:
        layer_name = spec.taps[tap]
    elif tap in names:
        layer_name = tap
    else:
        known = sorted(spec.taps) if spec is not None else []
        raise FeatureInputError(f"tap {tap!r} is neither a tap of backbone {model.name!r} ({', '.join(known)}) "
                                "nor a layer name of the model")
    if layer_name not in names:
        raise FeatureInputError(f"tap {tap!r} names layer {layer_name!r}, which model {model.name!r} lacks "
                                "(was it built with tfmed.backbones.create?)")
    return model.get_layer(layer_name).output


def feature_model(backbone, taps=("late",), pooling="avg") -> keras.Model:
    """A model mapping raw 0-255 images to ``{tap: (B, C_tap) pooled feature vector}``.

    Args:
        backbone: a backbone name (built with ImageNet weights) or a model from
            :func:`tfmed.backbones.create`.
        taps: tap names of the backbone's spec (``"early"``, ``"middle"``, ``"late"``,
            ``"stage1"`` and so on) or layer names of the model.
        pooling: ``"avg"`` or ``"max"`` global pooling over the spatial axes.

    Example:
        >>> from tfmed.backbones import create
        >>> base = create("resnet50", weights=None, input_shape=(64, 64, 3))
        >>> fm = feature_model(base, taps=("middle", "late"), pooling="max")
        >>> {k: v.shape for k, v in fm.output.items()}
        {'middle': (None, 1024), 'late': (None, 2048)}
    """
    if pooling not in ("avg", "max"):
        raise FeatureInputError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    if isinstance(taps, str):
        taps = (taps,)
    taps = tuple(taps)
    if not taps or len(set(taps)) != len(taps):
        raise FeatureInputError(f"taps must be a non-empty list of distinct names, got {list(taps)!r}")
    if isinstance(backbone, str):
        from tfmed.backbones.factory import create
        backbone = create(backbone)
    if not isinstance(backbone, keras.Model):
        raise FeatureInputError(f"backbone must be a name or a keras.Model, got {type(backbone).__name__}")
    try:
        spec = get_spec(backbone.name)
    except UnknownBackboneError:
        spec = None
    pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
    outputs = {}
    for tap in taps:
        tensor = _resolve_tap(backbone, spec, tap)
        if len(tensor.shape) != 4:
            raise FeatureInputError(f"tap {tap!r} of {backbone.name!r} is not a feature map "
                                    f"(shape {tensor.shape}); pick a convolutional layer")
        outputs[tap] = pool(name=f"{tap}_{pooling}_pool")(tensor)
    return keras.Model(backbone.inputs, outputs, name=f"{backbone.name}_features")


def _as_images(images):
    if isinstance(images, tf.data.Dataset):
        spec = images.element_spec
        if isinstance(spec, tuple):
            images = images.map(lambda *e: e[0])
            spec = spec[0]
        if len(spec.shape) not in (3, 4):
            raise FeatureInputError(f"dataset elements must be images (H, W, 3) or batches (B, H, W, 3), "
                                    f"got shape {spec.shape}")
        if spec.shape[-1] is not None and spec.shape[-1] != 3:
            raise FeatureInputError(f"dataset images must have 3 (RGB) channels on 0-255, got element shape "
                                    f"{spec.shape}; repeat grey images to 3 channels first "
                                    "(dataset.map(lambda x: tf.image.grayscale_to_rgb(x)))")
        if int(images.cardinality()) == 0:
            raise FeatureInputError("the dataset of images is empty; give it at least one image")
        return images, len(spec.shape) == 3
    arr = np.asarray(images)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):
        raise FeatureInputError(f"images must be an array (N, H, W, 3) of RGB images on 0-255, got shape "
                                f"{arr.shape}: one image; add the batch axis (images[None])")
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise FeatureInputError(f"images must be an array (N, H, W, 3) of RGB images on 0-255, got shape "
                                f"{arr.shape}; repeat grey images to 3 channels first")
    return arr.astype("float32", copy=False), False


def _check_size(model, size) -> None:
    """Refuse images whose height and width differ from the fixed ones the feature model takes."""
    try:
        expected = tuple(model.inputs[0].shape[1:3])
    except (AttributeError, IndexError, TypeError):  # not a functional model: let it decide
        return
    if None in expected or None in size or tuple(int(s) for s in size) == expected:
        return
    raise FeatureInputError(f"images are {size[0]} x {size[1]} pixels but the feature model takes "
                            f"{expected[0]} x {expected[1]}; resize them (e.g. tfmed.modes.features.resize_to_rgb) "
                            f"or build the backbone with input_shape=({size[0]}, {size[1]}, 3)")


def _rows(rows, limit: int = 10) -> str:
    rows = [int(r) for r in rows]
    return ", ".join(map(str, rows[:limit])) + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def check_images(images: np.ndarray, what: str = "images") -> None:
    """Refuse an empty array of images, rows with NaN / infinite pixels (named) and images on another scale
    than 0-255 (:func:`check_pixel_range`).

    Example:
        >>> check_images(np.array([[[[0.0]]], [[[np.nan]]]]), "train images")
        Traceback (most recent call last):
        tfmed.backbones.features.FeatureInputError: train images rows 1 contain NaN or infinite pixels; fix or drop these images first
    """
    if len(images) == 0:
        raise FeatureInputError(f"{what} holds no images (shape {images.shape}); pass at least one image")
    bad = np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1))
    if bad.size:
        raise FeatureInputError(f"{what} rows {_rows(bad)} contain NaN or infinite pixels; fix or drop these "
                                "images first")
    check_pixel_range(images, what)  # PixelRangeError for 0-1 floats, 16-bit values


def replicas_of(model) -> int:
    """How many replicas Keras' ``predict`` splits each batch of ``model`` over: the replicas in sync of the
    ``tf.distribute`` strategy the model was built under (1 for the default strategy).

    Example:
        >>> from tfmed.backbones import create
        >>> replicas_of(create("resnet50", weights=None, input_shape=(64, 64, 3)))
        1
    """
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return max(1, int(getattr(strategy, "num_replicas_in_sync", 1) or 1))


def _predict_array(model, arr: np.ndarray, batch_size: int, replicas: int):
    """``model.predict`` over an array, each batch a non-empty multiple of ``replicas`` rows: a batch smaller
    than the replicas would leave a replica an empty batch, which Keras cannot run. The array is padded with
    black images up to a multiple of the replicas and their outputs dropped (inference is per image)."""
    if replicas == 1:
        return model.predict(arr, batch_size=batch_size, verbose=0)
    batch_size = -(-batch_size // replicas) * replicas
    n = len(arr)
    extra = -n % replicas
    if extra:
        arr = np.concatenate([arr, np.zeros((extra,) + arr.shape[1:], arr.dtype)])
    out = model.predict(arr, batch_size=batch_size, verbose=0)
    return {k: v[:n] for k, v in out.items()} if isinstance(out, dict) else out[:n]


_VALID = "tfmed_valid_rows"


@contextlib.contextmanager
def end_of_data_not_warned():
    """Keras' predict warns that its "input ran out of data" whenever a dataset of unknown size ends, as every
    dataset does: not shown (a dataset that yields nothing is refused by name instead)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        yield


def _predict_dataset(model, data, replicas: int):
    """``model.predict`` over a dataset of batches, each padded to a multiple of ``replicas`` rows (see
    :func:`_predict_array`); a second input marks the real rows, whose outputs alone are kept."""
    if replicas == 1:
        with end_of_data_not_warned():
            return model.predict(data.prefetch(tf.data.AUTOTUNE), verbose=0)

    def pad(images):
        n = tf.shape(images)[0]
        extra = tf.math.floormod(-n, replicas)
        images = tf.concat([images, tf.zeros(tf.concat([[extra], tf.shape(images)[1:]], 0), images.dtype)], 0)
        return (images, tf.concat([tf.ones([n]), tf.zeros([extra])], 0)),

    with model.distribute_strategy.scope():
        image = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
        valid = keras.Input((), dtype="float32")
        out = model(image)
        out = dict(out) if isinstance(out, dict) else {"output": out}
        out[_VALID] = keras.layers.Identity(name=_VALID)(valid)
        wrapper = keras.Model([image, valid], out)
    with end_of_data_not_warned():
        out = wrapper.predict(data.map(pad).prefetch(tf.data.AUTOTUNE), verbose=0)
    keep = np.asarray(out.pop(_VALID)).reshape(-1) > 0.5
    return {k: np.asarray(v)[keep] for k, v in out.items()}


def extract_features(model, images, batch_size=32) -> dict:
    """Run a feature model over images in batches; return ``{tap: float32 array (N, C_tap)}``.

    ``images`` is a NumPy array (N, H, W, 3) on the 0-255 scale, or a
    ``tf.data.Dataset`` of images, of image batches, or of (images, labels) batches.
    Runs Keras' compiled ``predict`` loop (no per-image Python). An empty array or dataset, images
    without 3 channels, or rows with NaN / infinite pixels raise :class:`FeatureInputError`, and arrays on another
    scale (0-1 floats, 16-bit values) ``PixelRangeError``. Under a
    multi-replica strategy (a model built in ``MirroredStrategy.scope()``) any number of
    images works: batches are padded to a multiple of the replicas and the padding dropped.

    Example:
        >>> from tfmed.backbones import create
        >>> fm = feature_model(create("resnet50", weights=None, input_shape=(64, 64, 3)))
        >>> extract_features(fm, np.zeros((4, 64, 64, 3), "float32"))["late"].shape
        (4, 2048)
    """
    if int(batch_size) < 1:
        raise FeatureInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    data, unbatched = _as_images(images)
    _check_size(model, tuple(data.element_spec.shape[-3:-1]) if isinstance(data, tf.data.Dataset)
                else data.shape[1:3])
    replicas = replicas_of(model)
    if isinstance(data, tf.data.Dataset):
        if unbatched:
            data = data.batch(int(batch_size))
        try:
            out = _predict_dataset(model, data, replicas)
        except UnboundLocalError:  # Keras' predict on a dataset that yields no batch (its size unknown before)
            raise FeatureInputError("the dataset of images yielded no image; give it at least one image") from None
    else:
        check_images(data)
        out = _predict_array(model, data, int(batch_size), replicas)
    if not isinstance(out, dict):
        out = {"output": out}
    return {k: np.asarray(v, dtype="float32") for k, v in out.items()}
