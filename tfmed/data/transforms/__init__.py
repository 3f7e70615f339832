"""Image transforms: small composable callables on float32 tensors (H, W, C).

Each transform does one job and works inside ``tf.data.Dataset.map`` (native
TensorFlow ops; only :class:`CLAHE` calls OpenCV through ``tf.numpy_function``).
Deterministic transforms take ``image``; random (augmentation) transforms take
``image, seed`` where ``seed`` is a shape-[2] integer tensor, so a pipeline is
reproducible from one seed (``tf.random.stateless_*`` ops). :class:`Compose`
chains them and splits one seed among its random members.

The modules: :mod:`~tfmed.data.transforms.base` (the protocol, composition,
channels), :mod:`~tfmed.data.transforms.intensity` and
:mod:`~tfmed.data.transforms.spatial`. Which chain a config gives is decided in
:mod:`tfmed.data.preprocessing`.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> chain = Compose([CTWindow([[40, 400]]), Resize(4)])
    >>> hu = tf.constant(np.full((8, 8, 1), 40.0, np.float32))
    >>> out = chain(hu)
    >>> tuple(out.shape), float(out[0, 0, 0])
    ((4, 4, 3), 127.5)
"""
from tfmed.data.transforms.base import (PIXEL_MAX, Compose, RandomApply, ToChannels, Transform,
                                        TransformError)
from tfmed.data.transforms.intensity import (CLAHE, HISTOGRAM_PERCENTILES, IMAGENET_MEAN, IMAGENET_STD, CTWindow,
                                             Gamma, HistogramStandardize, MinMax,
                                             MinMaxRange, RandomBlur, RandomBrightness, RandomContrast,
                                             RandomGamma, RandomNoise, Standardize,
                                             SubtractMeanImage, ToImagenetPixels, image_landmarks, window_hu)
from tfmed.data.transforms.spatial import (CentralZoom, Flip, RandomCrop, RandomFlip, RandomRot90,
                                           RandomRotation, Resize, Rot90, Rotate, Shift, rotate)

__all__ = ["CLAHE", "HISTOGRAM_PERCENTILES", "HistogramStandardize", "IMAGENET_MEAN", "IMAGENET_STD",
           "PIXEL_MAX", "CTWindow", "CentralZoom", "Compose", "Flip", "Gamma", "MinMax", "MinMaxRange",
           "RandomApply", "RandomBlur", "RandomBrightness", "RandomContrast", "RandomCrop", "RandomFlip",
           "RandomGamma", "RandomNoise", "RandomRot90", "RandomRotation", "Resize", "Rot90", "Rotate", "Shift",
           "Standardize", "SubtractMeanImage", "ToChannels", "ToImagenetPixels", "Transform", "TransformError",
           "image_landmarks", "rotate", "window_hu"]
