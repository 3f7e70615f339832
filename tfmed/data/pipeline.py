"""The tf.data input pipeline: read, preprocess, augment, balance, batch.

``make_dataset`` turns an :class:`~tfmed.data.table.ImageTable` into a
``tf.data.Dataset`` of ``(images, targets)`` batches for Keras:

* images float32 (B, S, S, C) from :func:`~tfmed.data.preprocessing.build_preprocess`;
* targets float32: binary (B, 1), multiclass one-hot (B, K), multilabel (B, L)
  with -1 where a label is unknown (the losses and metrics leave it out).

Reading is native TensorFlow for complete PNG files (16-bit PNGs detected
from the IHDR bit-depth byte and decoded as uint16, so their values survive)
and JPEG files without an EXIF turn, each recognised by its bytes, whatever
its name; DICOM, other formats and the files TensorFlow would read otherwise
than validation does (bytes after a PNG's end, an EXIF-turned photo) go
through ``tfmed.data.decode.read_image`` in a ``tf.numpy_function``. In-memory tables (``table.images``) are indexed by
``array_index``. A file that cannot be decoded stops iteration with an error
naming the file.

Not training: table order, no augmentation, no resampling, one pass,
deterministic; a test-time ``view`` (:mod:`tfmed.data.tta`) may be applied
where training augmentation would go. Training: shuffled every epoch,
augmented (seeded, a fresh draw each epoch), optionally class-balanced (see
:mod:`tfmed.data.balance`), always finite.

Example:
    >>> from tfmed.config import PreprocessConfig
    >>> ds = make_dataset(table, PreprocessConfig(image_size=64), training=False)  # doctest: +SKIP
    >>> images, targets = next(iter(ds))  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from tfmed.config import (UNKNOWN_LABEL, AugmentConfig, BalanceConfig, PreprocessConfig, TTAConfig, ViewsConfig,
                          check_pixel_scale_augments)
from tfmed.data import balance as balance_lib
from tfmed.data.decode import JPEG_SIGNATURE, PNG_SIGNATURE
from tfmed.data.preprocessing import build_augment, build_preprocess
from tfmed.data.transforms import Compose, ToChannels, Transform
from tfmed.data.tta import build_views
from tfmed.data.volume_inputs import VolumeSampler
from tfmed.errors import TfmedError

PNG_TRAILER = b"IEND\xaeB`\x82"  # the IEND chunk closes every complete PNG
_PNG, _JPEG, _OTHER = 0, 1, 2


class PipelineError(TfmedError):
    """The table or the arguments cannot be turned into a dataset."""


# ------------------------------------------------------------------- targets
def targets_array(table) -> np.ndarray:
    """Model targets as float32: binary (N, 1), multiclass one-hot (N, K), multilabel (N, L).

    Example:
        >>> targets_array(table).shape  # doctest: +SKIP
        (10, 1)
    """
    labels = table.labels()
    if table.task == "multilabel":
        bad = np.flatnonzero(~np.isin(labels, (0, 1, UNKNOWN_LABEL)).all(axis=1))
        if bad.size:
            _raise_row(table, bad[0], f"multilabel targets must be 0, 1 or {UNKNOWN_LABEL} (unknown)")
        return labels.astype(np.float32)
    k = len(table.classes)
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    if bad.size:
        _raise_row(table, bad[0], f"label {labels[bad[0]]} is outside 0..{k - 1} for classes {table.classes}")
    if table.task == "binary":
        if k != 2:
            raise PipelineError(f"a binary table needs 2 classes, got {table.classes}")
        return labels.astype(np.float32)[:, np.newaxis]
    return np.eye(k, dtype=np.float32)[labels]


def _raise_row(table, position: int, message: str):
    row = table.frame.iloc[int(position)]
    raise PipelineError(f"row {row['row']} ({row['image']}): {message}")


# ------------------------------------------------------------------- reading
def _file_kind(path: str) -> int:
    """Which decoder reads ``path`` in the graph, judged by the file's own bytes, not its name.

    TensorFlow's PNG and JPEG decoders take a complete PNG (signature first, IEND last) and a JPEG
    without an EXIF turn; every other file (a JPEG saved as .png, bytes after IEND, an EXIF-turned
    phone photo, TIFF, DICOM) goes through :func:`tfmed.data.decode.read_image`, the reader
    validation uses, so what validation accepted the pipeline reads alike.
    """
    from tfmed.data.decode import exif_orientation

    try:
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
            if head == PNG_SIGNATURE:
                handle.seek(0, os.SEEK_END)
                if handle.tell() < len(PNG_SIGNATURE) + len(PNG_TRAILER):
                    return _OTHER
                handle.seek(-len(PNG_TRAILER), os.SEEK_END)
                return _PNG if handle.read() == PNG_TRAILER else _OTHER
    except OSError:
        return _OTHER  # read_image names the file and the reason
    if head.startswith(JPEG_SIGNATURE) and exif_orientation(path) == 1:
        return _JPEG
    return _OTHER


def _read_with_decode(path) -> np.ndarray:
    """numpy_function body: tfmed.data.decode.read_image, errors naming the file."""
    path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
    from tfmed.data.decode import read_image_and_info

    try:  # the files were validated (size limit, decoder messages) before any pipeline reads them
        image = np.asarray(read_image_and_info(path, None, capture_messages=False)[0], dtype=np.float32)
    except Exception as error:
        raise PipelineError(f"{path}: cannot read image ({type(error).__name__}: {error}); "
                            "validate the table's files before training") from error
    if image.ndim == 2:
        image = image[..., np.newaxis]
    return image


def _checked_contents(path: tf.Tensor, signature: bytes, kind: str, trailer: bytes = b"") -> tf.Tensor:
    """File bytes, asserting (with the path in the message) the format's start and end markers."""
    contents = tf.io.read_file(path)
    ok = tf.equal(tf.strings.substr(contents, 0, len(signature)), signature)
    if trailer:
        length = tf.strings.length(contents)
        start = tf.maximum(length - len(trailer), 0)
        ok = tf.logical_and(ok, tf.equal(tf.strings.substr(contents, start, len(trailer)), trailer))
    check = tf.debugging.Assert(ok, [f"tfmed: cannot decode {kind} image (empty, truncated or not a "
                                     f"{kind} file):", path], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def _decode_png(path: tf.Tensor, channels: int) -> tf.Tensor:
    contents = _checked_contents(path, PNG_SIGNATURE, "PNG", PNG_TRAILER)
    # IHDR bit depth is byte 24; 16-bit PNGs must be decoded as uint16.
    sixteen = tf.equal(tf.strings.substr(contents, 24, 1), b"\x10")
    return tf.cond(sixteen,
                   lambda: tf.cast(tf.io.decode_png(contents, channels=channels, dtype=tf.uint16), tf.float32),
                   lambda: tf.cast(tf.io.decode_png(contents, channels=channels, dtype=tf.uint8), tf.float32))


def _decode_jpeg(path: tf.Tensor, channels: int) -> tf.Tensor:
    contents = _checked_contents(path, JPEG_SIGNATURE, "JPEG")
    return tf.cast(tf.io.decode_jpeg(contents, channels=channels), tf.float32)


def _decode_other(path: tf.Tensor) -> tf.Tensor:
    image = tf.numpy_function(_read_with_decode, [path], tf.float32, stateful=False)
    image.set_shape([None, None, None])
    return image


def _reader(table, channels: int = 0):
    """A graph function ``row position -> raw float32 (H, W, C) image`` for ``table``."""
    frame = table.frame
    if table.images is not None:
        if "array_index" not in frame.columns:
            raise PipelineError("the table holds in-memory images but has no 'array_index' column; "
                                "the source must set one row index into table.images per row")
        index = frame["array_index"]
        missing = np.flatnonzero(index.isna().to_numpy())
        if missing.size:
            _raise_row(table, missing[0], "array_index is missing for an in-memory image")
        index = index.to_numpy(dtype=np.int64)
        bad = np.flatnonzero((index < 0) | (index >= len(table.images)))
        if bad.size:
            _raise_row(table, bad[0], f"array_index {index[bad[0]]} is outside the {len(table.images)} "
                                      "in-memory images")
        if table.images.ndim not in (3, 4):
            raise PipelineError(f"table.images must be (N, H, W) or (N, H, W, C), got {table.images.shape}")
        if len(index) < len(table.images):  # a subset (e.g. one feature-store shard): copy only its images
            images, index = tf.constant(table.images[index]), np.arange(len(index))
        else:
            images = tf.constant(table.images)
        index_t = tf.constant(index)

        def read(i):
            image = tf.cast(tf.gather(images, tf.gather(index_t, i)), tf.float32)
            return image[..., tf.newaxis] if table.images.ndim == 3 else _drop_alpha(image)
        return read

    paths = frame["image"]
    missing = np.flatnonzero(paths.isna().to_numpy())
    if missing.size:
        _raise_row(table, missing[0], "the image path is missing")
    paths = paths.astype(str).tolist()
    kinds = np.array([_file_kind(p) for p in paths], dtype=np.int32)
    paths_t = tf.constant(paths)
    kinds_t = tf.constant(kinds)
    branches = {_PNG: functools.partial(_decode_png, channels=channels),
                _JPEG: functools.partial(_decode_jpeg, channels=channels), _OTHER: _decode_other}
    present = sorted(set(kinds.tolist()))

    def read(i):
        path = tf.gather(paths_t, i)
        if len(present) == 1:
            return _drop_alpha(branches[present[0]](path))
        cases = [functools.partial(branches[k], path) if k in present else _placeholder_image
                 for k in (_PNG, _JPEG, _OTHER)]
        image = tf.switch_case(tf.gather(kinds_t, i), cases)
        image.set_shape([None, None, None])
        return _drop_alpha(image)
    return read


def _placeholder_image() -> tf.Tensor:
    # Branch for a file kind absent from the table (never taken).
    return tf.zeros([1, 1, 1])


def raw_dataset(table, channels: int = 0) -> tf.data.Dataset:
    """Raw decoded images (float32, H, W, C; original sizes and values) in table order.

    ``channels`` is passed to the PNG/JPEG decoders (0 keeps the file's own).

    Example:
        >>> image = next(iter(raw_dataset(table)))  # doctest: +SKIP
    """
    if len(table) == 0:
        raise PipelineError("the table is empty: no images to read")
    read = _reader(table, channels)
    return tf.data.Dataset.range(len(table)).map(read, num_parallel_calls=tf.data.AUTOTUNE)


# ------------------------------------------------------------------ datasets
def _split_chain(chain: Compose) -> tuple[Compose, Compose]:
    """(head, tail) around the point where training augmentation goes: before
    the channel conversion and the normalisers."""
    transforms = list(chain)
    cut = next((i for i, t in enumerate(transforms)
                if isinstance(t, ToChannels) or getattr(t, "normalizer", False)), len(transforms))
    return Compose(transforms[:cut]), Compose(transforms[cut:])


def _drop_alpha(image: tf.Tensor) -> tf.Tensor:
    """Keep grey (1) or RGB (3) of a decoded image: alpha of LA/RGBA files is dropped."""
    if image.shape[-1] in (1, 3):
        return image
    keep = tf.where(tf.shape(image)[-1] >= 3, 3, 1)
    return image[..., :keep]


def make_dataset(table, preprocess: PreprocessConfig, *, training: bool, batch_size: int = 32,
                 augment: AugmentConfig | None = None, balance: BalanceConfig | None = None,
                 stats: dict | None = None, seed: int = 0, cache: bool = False,
                 view: Transform | None = None, volume_views: ViewsConfig | None = None) -> tf.data.Dataset:
    """Batches of ``(images, targets)`` for ``model.fit`` / ``predict``; with ``volume_views``,
    batches of ``(views, targets)``, views (B, V, S, S, C).

    Args:
        table: the rows to serve (one split).
        preprocess: intensity, channels, size (same for training and inference).
        training: shuffle, augment and balance when true; otherwise table order,
            deterministic, one pass.
        batch_size: images per batch (the last batch may be smaller).
        augment: training augmentation (ignored when not training).
        balance: "oversample"/"undersample" resample the training stream to
            ``balance.target`` (uniform by default); other methods do not resample.
        stats: train-split statistics from ``fit_statistics`` when the intensity needs them.
        seed: seeds shuffling, resampling and augmentation (a fresh draw each epoch), together
            with TensorFlow's global seed at the time of the call (``keras.utils.set_random_seed``;
            tfmed's fine-tuner sets it to its own seed first).
        cache: preprocess every image once, when this is called, and keep the
            result in memory (S*S*C*4 bytes per image, S being ``augment.crop_from`` for training
            with it, C 1 when every file is grey, else 3): for small data sets. Augmentation
            then works on each image with its file's channels, as it does uncached.
        view: a deterministic test-time view (see :mod:`tfmed.data.tta`) applied to
            every image where training augmentation would go; not when training.
        volume_views: the rows are volumes; each gives ``volume_views.count``
            2-D views (:class:`~tfmed.data.volume_inputs.VolumeSampler`, read
            one volume at a time), and each view is preprocessed (and augmented,
            or put in the test-time ``view``) like an image.

    Example:
        >>> ds = make_dataset(train, PreprocessConfig(image_size=224), training=True,
        ...                   augment=AugmentConfig(rotation_degrees=10),
        ...                   balance=BalanceConfig("oversample"))  # doctest: +SKIP
        >>> model.fit(ds, epochs=5)  # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PipelineError(f"batch_size must be a positive integer, got {batch_size!r}")
    for name, value, kind in (("preprocess", preprocess, PreprocessConfig), ("augment", augment, AugmentConfig),
                              ("balance", balance, BalanceConfig), ("volume_views", volume_views, ViewsConfig)):
        if not isinstance(value, kind) and (value is not None or name == "preprocess"):
            raise PipelineError(f"{name} must be a tfmed.config.{kind.__name__} (for a dict of settings: "
                                f"{kind.__name__}(**settings)), got {type(value).__name__}")
    if len(table) == 0:
        raise PipelineError("the table is empty: the split has no rows to make a dataset from")
    if training and augment is not None:
        check_pixel_scale_augments(augment, preprocess.intensity)
    if view is not None:
        if training:
            raise PipelineError("a test-time view is for scoring, not training; pass view=None with "
                                "training=True (training uses augment instead)")
        if not callable(view) or getattr(view, "random", False):
            raise PipelineError(f"view must be a deterministic transform, got {view!r}")
    # training crops (augment.crop_from) are cut from the image resized to crop_from, not from one at image_size
    crop_from = augment.crop_from if training and augment is not None and augment.enabled else None
    head, tail = _split_chain(build_preprocess(preprocess, stats, size=crop_from))
    aug = build_augment(augment, preprocess.image_size) if training else Compose([])
    targets = tf.constant(targets_array(table))
    size, channels = preprocess.image_size, preprocess.channels

    if volume_views is not None and volume_views.enabled:
        if cache:
            raise PipelineError("cache=True keeps every image in memory, which volumes must not be; "
                                "use cache=False with volume_views")
        sampled = _volume_pixels(table, volume_views, head, tail, aug, view, augment if training else None,
                                 size, channels)

        def finish_volume(i, element_seed):
            return sampled(i, element_seed), tf.gather(targets, i)

        if not training:
            no_seed = tf.zeros([2], tf.int64)
            ds = tf.data.Dataset.range(len(table)).map(lambda i: finish_volume(i, no_seed),
                                                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        indices = _training_indices(table, balance, seed)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(indices, seeds).map(finish_volume, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    if cache:
        cached, file_channels = _materialize(table, head)
        cached_t, file_channels_t = tf.constant(cached), tf.constant(file_channels)

        def pixels(i):  # each image with its file's own channels, as augmentation sees it uncached
            return tf.gather(cached_t, i)[..., :tf.gather(file_channels_t, i)]
    else:
        read = _reader(table)

        def pixels(i):
            return head(read(i))

    def finish(image, i):
        image = tf.ensure_shape(tail(image), [size, size, channels])
        return image, tf.gather(targets, i)

    if not training:
        def load_view(i):
            image = pixels(i)
            return finish(image if view is None else view(image), i)

        ds = tf.data.Dataset.range(len(table)).map(load_view, num_parallel_calls=tf.data.AUTOTUNE,
                                                   deterministic=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    indices = _training_indices(table, balance, seed)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    augmented = len(aug) > 0

    def load(i, element_seed):
        image = pixels(i)
        if augmented:
            image = aug(image, element_seed)
        return finish(image, i)

    ds = tf.data.Dataset.zip(indices, seeds).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _training_indices(table, balance: BalanceConfig | None, seed: int) -> tf.data.Dataset:
    """Row positions for one training epoch: class-balanced resampling, or a fresh shuffle."""
    if balance is not None and balance.method in balance_lib.RESAMPLING:
        keys, names = balance_lib.balance_groups(table)
        return balance_lib.balanced_dataset(keys, balance, seed=seed, names=names)
    return tf.data.Dataset.range(len(table)).shuffle(len(table), seed=seed, reshuffle_each_iteration=True)


def _volume_pixels(table, views: ViewsConfig, head: Compose, tail: Compose, aug: Compose,
                   view: Transform | None, augment: AugmentConfig | None, size: int, channels: int):
    """A graph function ``(row position, element seed) -> (V, S, S, C)`` preprocessed views of the row's volume."""
    sampler = VolumeSampler(table, views, augment)
    count, side, _, depth = sampler.shape
    augmented = len(aug) > 0

    def sample(i, element_seed):
        raw = tf.numpy_function(sampler.views_at, [i, element_seed] if augment is not None else [i],
                                tf.float32, stateful=False)
        raw.set_shape([count, side, side, depth])

        def one(pair):
            image, k = pair
            image = head(image)
            if augmented:
                image = aug(image, tf.random.experimental.stateless_fold_in(element_seed, k))
            elif view is not None:
                image = view(image)
            return tf.ensure_shape(tail(image), [size, size, channels])

        return tf.map_fn(one, (raw, tf.range(count, dtype=tf.int64)),
                         fn_output_signature=tf.TensorSpec([size, size, channels], tf.float32))
    return sample


def _materialize(table, head: Compose, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Every image through ``head``, stacked (grey ones replicated to RGB when colour files are
    among them), and each file's own channel count (1 or 3)."""
    def with_channels(image):
        image = head(image)
        return ToChannels(3)(image), tf.shape(image)[-1]

    ds = raw_dataset(table).map(with_channels, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    batches = list(ds.as_numpy_iterator())
    images = np.concatenate([b[0] for b in batches], axis=0)
    channels = np.concatenate([b[1] for b in batches], axis=0).astype(np.int32)
    return (images[..., :1] if (channels == 1).all() else images), channels


def load_arrays(table, preprocess: PreprocessConfig, stats: dict | None = None, batch_size: int = 64,
                view: Transform | None = None,
                volume_views: ViewsConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All images preprocessed (no augmentation, table order; in test-time ``view`` if given) and
    ``table.labels()``; with ``volume_views`` the views of each volume, (N, V, S, S, C).

    Example:
        >>> x, y = load_arrays(table, PreprocessConfig(image_size=64))  # doctest: +SKIP
        >>> x.shape  # doctest: +SKIP
        (10, 64, 64, 3)
    """
    ds = make_dataset(table, preprocess, training=False, batch_size=batch_size, stats=stats, view=view,
                      volume_views=volume_views)
    images = np.concatenate([batch.numpy() for batch, _ in ds], axis=0)
    return images, table.labels()


@dataclass
class ImageInputs:
    """How a table's images become model inputs: the preprocessing and the train-split statistics.

    A mode gets one to turn tables into arrays or datasets; the run's model
    artifact saves both, so that inference preprocesses exactly as training did.
    ``tta`` (test-time augmentation) lists the views to score in; :meth:`views`
    gives one input per view, each with its ``view`` transform, which
    :meth:`arrays` and :meth:`dataset` (when not training) apply.
    ``volume_views`` (enabled) means the rows are volumes, each giving several
    2-D views (see :class:`~tfmed.config.ViewsConfig`); arrays and batches
    then gain a views axis after the first.

    Example:
        >>> from tfmed.config import PreprocessConfig, TTAConfig
        >>> inputs = ImageInputs(PreprocessConfig(image_size=64))
        >>> x, y = inputs.arrays(table)                                      # doctest: +SKIP
        >>> ds = inputs.dataset(table, training=True, batch_size=16)          # doctest: +SKIP
        >>> inputs.views() == [inputs], inputs.view_count
        (True, 1)
        >>> tta = ImageInputs(PreprocessConfig(image_size=64), tta=TTAConfig(enabled=True, gamma=[2.0]))
        >>> tta.view_count, tta.views()[1].view, tta.views()[1].tta
        (9, Shift(dx=-3, dy=0), None)
    """

    preprocess: PreprocessConfig
    stats: dict | None = None
    tta: TTAConfig | None = None
    view: Transform | None = None
    volume_views: ViewsConfig | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one model input: (S, S, C), or (V, S, S, C) for the V views of a volume."""
        size, channels = self.preprocess.image_size, self.preprocess.channels
        return (size, size, channels) if self.volume_views is None else (self.volume_views.count, size, size, channels)

    @property
    def view_count(self) -> int:
        """How many test-time views :meth:`views` gives (1 without TTA)."""
        return 1 if self.tta is None else self.tta.view_count()

    def views(self) -> list["ImageInputs"]:
        """One input per test-time view (identity first), each without ``tta``; ``[self]`` without TTA."""
        if self.tta is None or not self.tta.enabled:
            return [self]
        return [dataclasses.replace(self, tta=None, view=transform)
                for _, transform in build_views(self.tta, self.preprocess.image_size)]

    def arrays(self, table, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """All images of ``table`` preprocessed (in ``view``), in table order, and their labels
        (see :func:`load_arrays`)."""
        return load_arrays(table, self.preprocess, stats=self.stats, batch_size=batch_size, view=self.view,
                           volume_views=self.volume_views)

    def dataset(self, table, *, training: bool, batch_size: int = 32, augment: AugmentConfig | None = None,
                balance: BalanceConfig | None = None, seed: int = 0) -> tf.data.Dataset:
        """Batches of ``(images, targets)`` (see :func:`make_dataset`); ``view`` applies only when not training."""
        return make_dataset(table, self.preprocess, training=training, batch_size=batch_size,
                            augment=augment, balance=balance, stats=self.stats, seed=seed,
                            view=None if training else self.view, volume_views=self.volume_views)
