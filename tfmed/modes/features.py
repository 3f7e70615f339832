"""Backbone features for the SVM mode: extraction, an on-disk cache, LBP texture.

Feature extraction dominates the cost of the features + SVM mode (Bar et al.
2015), and the same images are usually fed through the same backbone many
times (a C grid, a layer sweep, a re-run of an experiment). :class:`FeatureCache`
stores the pooled features of each backbone tap in one ``.npz`` file per tap,
under a key that hashes everything that changes them: the image bytes (which
covers the rows, the preprocessing and the image size), the backbone name, the
backbone weights themselves, the tap, the pooling, the input size and the
version of this feature code. Any change gives a new key, so a stale file is
never read.

Example:
    >>> import numpy as np, tempfile
    >>> cache = FeatureCache(tempfile.mkdtemp())
    >>> parts = {"images": np.zeros((2, 8, 8, 3), np.float32), "taps": ["late"]}
    >>> first = cache.get_or_compute(parts, lambda taps: {t: np.ones((2, 4)) for t in taps})
    >>> again = cache.get_or_compute(parts, lambda taps: {t: np.zeros((2, 4)) for t in taps})
    >>> bool((again["late"] == 1).all()), cache.hits, cache.misses
    (True, 1, 1)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np
from skimage.feature import local_binary_pattern

from tfmed.backbones.features import check_pixel_range
from tfmed.config import SVMConfig, choices
from tfmed.errors import TfmedError
from tfmed.files import temporary_file
from tfmed.progress import log

# Bump when the way features are computed changes (resizing, pooling, ...):
# every cached file made by older code then misses.
FEATURE_CODE_VERSION = "1"

# Images are resized and fed to the backbone this many at a time, so a large
# training set at 224 px never has to sit in memory at full size.
CHUNK_SIZE = 256


class FeatureError(TfmedError):
    """Images or features that the SVM mode cannot use."""


class UnknownTapError(FeatureError):
    """A tap name that the backbone does not define."""


class NonFiniteError(FeatureError):
    """Images or features containing NaN or infinite values."""


# --------------------------------------------------------------------------- hashing

def digest(value: Any) -> str:
    """A stable hex digest of arrays, numbers, strings, lists and dicts.

    Arrays are hashed by dtype, shape and bytes, so two arrays with the same
    values give the same digest and any changed pixel gives another one.

    Example:
        >>> a = np.arange(4.0)
        >>> digest(a) == digest(a.copy()), digest(a) == digest(a + 1)
        (True, False)
    """
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(json.dumps(_canonical(value), sort_keys=True).encode("utf-8"))
    return hasher.hexdigest()


def _array_digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(f"{array.dtype.str}{array.shape}".encode("ascii"))
    hasher.update(memoryview(array).cast("B"))
    return hasher.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {"ndarray": _array_digest(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def weights_digest(model) -> str:
    """Digest of a Keras model's weight values: the identity of its weights.

    Hashing the values (not a file name) means ImageNet weights, a fine-tuned
    checkpoint and a random initialisation can never share cached features.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> len(weights_digest(model))
        40
    """
    hasher = hashlib.blake2b(digest_size=20)
    for weights in model.get_weights():
        hasher.update(_array_digest(np.asarray(weights)).encode("ascii"))
    return hasher.hexdigest()


# --------------------------------------------------------------------------- cache

class FeatureCache:
    """Pooled backbone features on disk, one ``.npz`` file per tap.

    ``get_or_compute(key_parts, compute_fn)`` reads the taps listed in
    ``key_parts["taps"]`` that are already stored and calls
    ``compute_fn(missing_taps) -> {tap: array}`` for the others, storing what
    it returns. Each tap's key is a digest of ``key_parts`` with ``taps``
    replaced by that one tap, so a run with taps ("middle", "late") reuses
    the "late" features of an earlier run with taps ("late",). ``hits`` and
    ``misses`` count taps read and taps computed.

    Example:
        >>> import numpy as np, tempfile
        >>> cache = FeatureCache(tempfile.mkdtemp())
        >>> parts = {"images": np.zeros((3, 4, 4, 3)), "backbone": "b", "taps": ["early"]}
        >>> cache.get_or_compute(parts, lambda taps: {"early": np.ones((3, 2))})["early"].shape
        (3, 2)
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(self, key_parts: dict, tap: str) -> str:
        """The file key of one tap for these key parts."""
        parts = {k: v for k, v in key_parts.items() if k != "taps"}
        parts["tap"] = tap
        return digest(parts)

    def path(self, key_parts: dict, tap: str) -> Path:
        """Where the features of ``tap`` for these key parts are stored."""
        return self.directory / f"{self.key(key_parts, tap)}.npz"

    def get_or_compute(self, key_parts: dict,
                       compute_fn: Callable[[list[str]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Features of every tap in ``key_parts["taps"]``, read or computed."""
        if "taps" not in key_parts or isinstance(key_parts["taps"], str) or not key_parts["taps"]:
            raise FeatureError("FeatureCache.get_or_compute: key_parts needs a 'taps' entry listing "
                               "the tap names, e.g. {'taps': ['late'], ...}")
        taps = list(key_parts["taps"])
        found: dict[str, np.ndarray] = {}
        for tap in taps:
            stored = self._read(self.path(key_parts, tap))
            if stored is not None:
                found[tap] = stored
        missing = [tap for tap in taps if tap not in found]
        self.hits += len(found)
        if missing:
            computed = compute_fn(missing)
            absent = [tap for tap in missing if tap not in computed]
            if absent:
                raise FeatureError(f"the feature function returned no features for tap(s) {absent}")
            self.directory.mkdir(parents=True, exist_ok=True)
            for tap in missing:
                found[tap] = np.asarray(computed[tap])
                self._write(self.path(key_parts, tap), found[tap], key_parts, tap)
            self.misses += len(missing)
        return {tap: found[tap] for tap in taps}

    @staticmethod
    def _read(path: Path) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return stored["features"]
        except (OSError, ValueError, KeyError, EOFError):
            # A truncated or foreign file: recompute and overwrite it.
            return None

    @staticmethod
    def _write(path: Path, features: np.ndarray, key_parts: dict, tap: str) -> None:
        described = {k: v for k, v in _canonical(key_parts).items() if k != "taps"}
        described["tap"] = tap
        handle, temporary = temporary_file(path.parent, suffix=".npz.part")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, features=features, meta=np.array(json.dumps(described)))
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)


# --------------------------------------------------------------------------- images

def _as_array(images, what: str) -> np.ndarray:
    """``np.asarray(images)``, or FeatureError when a sequence holds images of different sizes."""
    try:
        return np.asarray(images)
    except ValueError:
        shapes = sorted({tuple(np.shape(image)) for image in images})
        raise FeatureError(f"{what} holds images of different shapes ({', '.join(map(str, shapes[:4]))}"
                           f"{' ...' if len(shapes) > 4 else ''}); resize them to one size first (e.g. "
                           "cv2.resize), or score files through a table (tfmed run, make_dataset), which "
                           "resizes each image") from None


def as_image_batch(images: np.ndarray, what: str = "X") -> np.ndarray:
    """Check an image batch and return it as float32 (N, H, W, C), C in (1, 3).

    A 3-D array (N, H, W) is taken as grey images. Rows holding NaN or
    infinite pixels raise :class:`NonFiniteError` naming them.

    Example:
        >>> as_image_batch(np.zeros((2, 8, 8))).shape
        (2, 8, 8, 1)
    """
    array = _as_array(images, what)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise FeatureError(f"{what} must be a numeric image array, got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise FeatureError(f"{what} must be images shaped (N, H, W) or (N, H, W, C) with C = 1 or 3, "
                           f"got shape {array.shape}")
    if array.shape[0] == 0:
        raise FeatureError(f"{what} holds no images (shape {array.shape})")
    array = array.astype(np.float32, copy=False)
    bad = np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))
    if bad.size:
        raise NonFiniteError(f"{what} rows {_list_rows(bad)} contain NaN or infinite pixels; "
                             "fix or drop these images before extracting features")
    check_pixel_range(array, what)
    return array


def as_input_batch(X, what: str = "X") -> np.ndarray:
    """Images (see :func:`as_image_batch`), or views of volumes (N, V, H, W, C) checked view by view.

    Example:
        >>> as_input_batch(np.zeros((2, 3, 8, 8, 1))).shape
        (2, 3, 8, 8, 1)
    """
    array = _as_array(X, what)
    if array.ndim != 5:
        return as_image_batch(array, what)
    return np.stack([as_image_batch(array[:, v], f"{what} view {v + 1}") for v in range(array.shape[1])], axis=1)


def resize_to_rgb(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W, C) images to (N, size, size, 3) with OpenCV.

    Grey images are replicated to three channels. Downsizing uses area
    averaging, upsizing bilinear interpolation. Values keep their scale.

    Example:
        >>> resize_to_rgb(np.zeros((2, 28, 28, 1), np.float32), 56).shape
        (2, 56, 56, 3)
    """
    count, height, width, channels = images.shape
    out = np.empty((count, size, size, 3), np.float32)
    same = (height, width) == (size, size)
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    for i in range(count):
        image = images[i] if same else cv2.resize(images[i], (size, size), interpolation=interpolation)
        if image.ndim == 2:
            image = image[..., np.newaxis]
        out[i] = image if channels == 3 else np.repeat(image, 3, axis=-1)
    return out


def lbp_features(images: np.ndarray, P: int = 8, R: float = 1) -> np.ndarray:
    """Uniform local-binary-pattern histograms: a texture descriptor per image.

    Images (N, H, W) or (N, H, W, C) on the 0-255 scale are turned grey
    (channel mean), rounded to uint8 and passed to scikit-image's
    ``local_binary_pattern(method="uniform")``; each row of the result is
    the normalised histogram of the P + 2 pattern codes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> lbp_features(rng.uniform(0, 255, (3, 16, 16))).shape
        (3, 10)
    """
    array = as_image_batch(images, "images")
    grey = np.clip(np.rint(array.mean(axis=-1)), 0, 255).astype(np.uint8)
    bins = P + 2
    out = np.empty((len(grey), bins), np.float32)
    for i, image in enumerate(grey):
        codes = local_binary_pattern(image, P, R, method="uniform")
        histogram = np.bincount(codes.astype(np.int64).ravel(), minlength=bins)[:bins]
        out[i] = histogram / max(histogram.sum(), 1)
    return out


# --------------------------------------------------------------------------- backbone

_BASE_MODELS: dict[tuple, tuple[Any, str]] = {}
_FEATURE_MODELS: dict[tuple, Any] = {}


def clear_model_cache() -> None:
    """Forget the backbones kept in memory between fits (frees their memory).

    Example:
        >>> clear_model_cache()
    """
    _BASE_MODELS.clear()
    _FEATURE_MODELS.clear()


def check_taps(backbone: str, taps: Sequence[str]) -> list[str]:
    """Validate tap names against the backbone's registry entry.

    Example:
        >>> check_taps("efficientnet_lite0", ["middle", "late"])
        ['middle', 'late']
    """
    from tfmed import backbones

    if isinstance(taps, str):
        taps = [taps]
    taps = list(taps)
    if not taps:
        raise UnknownTapError("taps is empty; name at least one tap, e.g. taps=('late',)")
    known = list(backbones.get_spec(backbone).taps)
    unknown = [tap for tap in taps if tap not in known]
    if unknown:
        raise UnknownTapError(f"unknown tap {unknown[0]!r} for backbone {backbone!r}; "
                              f"allowed taps: {', '.join(known)}")
    if len(set(taps)) != len(taps):
        raise UnknownTapError(f"taps lists a name twice: {taps}")
    return taps


def base_model(backbone: str, weights, weights_dir, image_size: int, random_state: int = 0,
               weight_values: list | None = None, strategy=None):
    """The backbone (kept in memory for reuse) and the digest of its weights.

    With ``weights=None`` the random initialisation is seeded by
    ``random_state``; ``weight_values`` (from ``model.get_weights()``) replaces
    whatever weights were loaded, which is how a saved model restores its
    exact backbone. With a ``tf.distribute`` ``strategy`` (e.g. MirroredStrategy)
    the backbone is built in its scope, so that Keras' ``predict`` splits each
    batch over the strategy's devices.

    Example:
        >>> model, identity = base_model("efficientnet_lite0", None, None, 32)
        >>> model.input_shape
        (None, 32, 32, 3)
    """
    from tfmed import backbones

    weights_key = str(weights) if weights is not None else None
    values_key = None if weight_values is None else digest([np.asarray(w) for w in weight_values])
    key = (backbone, weights_key, None if weights_dir is None else str(weights_dir),
           int(image_size), int(random_state) if weights is None else None, values_key,
           None if strategy is None else id(strategy))
    if key not in _BASE_MODELS:
        import keras

        from tfmed.training.distribute import precision

        if weights is None:
            keras.utils.set_random_seed(int(random_state))
        with _scope(strategy), precision(None):  # float32 features, whatever policy a script set for a fine-tune
            model = backbones.create(backbone, weights=weights, input_shape=(image_size, image_size, 3),
                                     trainable=False, include_top=False, weights_dir=weights_dir)
        if weight_values is not None:
            model.set_weights(weight_values)
        _BASE_MODELS[key] = (model, weights_digest(model))
    return _BASE_MODELS[key]


def _scope(strategy):
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def backbone_features(images: np.ndarray, *, backbone: str, weights, weights_dir=None,
                      taps: Sequence[str] = ("late",), pooling: str = "avg", image_size: int = 224,
                      batch_size: int = 32, cache: FeatureCache | None = None, random_state: int = 0,
                      weight_values: list | None = None, strategy=None) -> dict[str, np.ndarray]:
    """Pooled features of each tap for a batch of images, through the cache.

    ``images`` (N, H, W[, C]) on the 0-255 scale are resized to
    ``image_size`` and replicated to 3 channels in chunks of
    ``CHUNK_SIZE`` before the backbone sees them; the backbone runs under
    ``strategy`` (see :func:`base_model`).

    Example:
        >>> x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 1))
        >>> out = backbone_features(x, backbone="efficientnet_lite0", weights=None,
        ...                         taps=["early"], image_size=32)
        >>> out["early"].shape[0]
        2
    """
    from tfmed import backbones

    taps = check_taps(backbone, taps)
    if pooling not in choices(SVMConfig, "pooling"):
        raise FeatureError(f"pooling is {pooling!r}; allowed: {', '.join(choices(SVMConfig, 'pooling'))}")
    array = as_image_batch(images)
    model, identity = base_model(backbone, weights, weights_dir, image_size, random_state, weight_values,
                                 strategy)

    def compute(missing: list[str]) -> dict[str, np.ndarray]:
        extractor = _feature_model(model, missing, pooling, strategy)
        parts: dict[str, list[np.ndarray]] = {tap: [] for tap in missing}
        report_every = max(1, -(-len(array) // CHUNK_SIZE) // 4)  # about four progress lines
        for start in range(0, len(array), CHUNK_SIZE):
            chunk = resize_to_rgb(array[start:start + CHUNK_SIZE], image_size)
            out = backbones.extract_features(extractor, chunk, batch_size=batch_size)
            for tap in missing:
                parts[tap].append(np.asarray(out[tap], np.float32).reshape(len(chunk), -1))
            chunk_number = start // CHUNK_SIZE + 1
            if len(array) > CHUNK_SIZE and (chunk_number % report_every == 0 or start + CHUNK_SIZE >= len(array)):
                log(f"{backbone} features: {min(start + CHUNK_SIZE, len(array))}/{len(array)} images")
        return {tap: np.concatenate(parts[tap]) for tap in missing}

    key_parts = {"images": array, "backbone": backbone, "weights": identity, "taps": taps,
                 "pooling": pooling, "image_size": int(image_size),
                 "code_version": FEATURE_CODE_VERSION}
    if cache is None:
        return compute(taps)
    return cache.get_or_compute(key_parts, compute)


def _feature_model(model, taps: Sequence[str], pooling: str, strategy=None):
    """The pooled-taps model of a backbone, kept in memory for reuse."""
    from tfmed import backbones

    from tfmed.training.distribute import precision

    key = (id(model), tuple(taps), pooling)
    if key not in _FEATURE_MODELS:
        with _scope(strategy), precision(None):  # pooled in float32 too, as the backbone computes (base_model)
            _FEATURE_MODELS[key] = backbones.feature_model(model, taps=tuple(taps), pooling=pooling)
    return _FEATURE_MODELS[key]


def dataset_features(dataset, *, backbone: str, weights, weights_dir=None, taps: Sequence[str] = ("late",),
                     pooling: str = "avg", image_size: int = 224, random_state: int = 0,
                     weight_values: list | None = None, strategy=None) -> dict[str, np.ndarray]:
    """Pooled features of each tap for a ``tf.data`` dataset of image batches (B, image_size,
    image_size, 1 or 3) on the 0-255 scale, or of (images, targets) batches, in one Keras
    ``predict`` over the whole dataset (the pipeline prepares the next batches while the backbone
    runs). The same features as :func:`backbone_features` of the same images.

    Example:
        >>> import tensorflow as tf
        >>> images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
        >>> out = dataset_features(tf.data.Dataset.from_tensor_slices(images).batch(2), backbone="efficientnet_lite0",
        ...                        weights=None, taps=["early"], image_size=32)
        >>> out["early"].shape[0]
        3
    """
    from tfmed import backbones

    taps = check_taps(backbone, taps)
    if isinstance(dataset.element_spec, tuple):
        dataset = dataset.map(_images_of)
    shape = tuple(dataset.element_spec.shape)
    if len(shape) != 4 or shape[1:3] != (image_size, image_size) or shape[3] not in (1, 3):
        raise FeatureError(f"dataset batches are {shape}; dataset_features needs "
                           f"(B, {image_size}, {image_size}, 1 or 3)")
    if shape[3] == 1:
        dataset = dataset.map(_grey_to_rgb)
    model, _ = base_model(backbone, weights, weights_dir, image_size, random_state, weight_values, strategy)
    out = backbones.extract_features(_feature_model(model, taps, pooling, strategy), dataset)
    return {tap: np.asarray(out[tap], np.float32).reshape(len(out[tap]), -1) for tap in taps}


def _images_of(images, *_):
    return images


def _grey_to_rgb(images):
    import tensorflow as tf

    return tf.repeat(images, 3, axis=-1)


def check_finite(blocks: dict[str, np.ndarray], what: str = "X") -> None:
    """Raise :class:`NonFiniteError` naming the rows whose features are NaN/inf.

    Example:
        >>> check_finite({"late": np.ones((2, 3))})
    """
    for name, block in blocks.items():
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            raise NonFiniteError(f"{what} rows {_list_rows(bad)} give NaN or infinite features "
                                 f"from {name!r}; check these images (extreme values overflow the "
                                 "backbone) or drop them")


def _list_rows(rows: Iterable[int], limit: int = 10) -> str:
    rows = [int(r) for r in rows]
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")
