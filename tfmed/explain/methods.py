"""The explanation methods by name: the one table that the CLI, the report and the callback read.

Example:
    >>> sorted(METHODS)
    ['gradcam', 'gradcam_pp', 'integrated_gradients', 'occlusion', 'saliency', 'smoothgrad']
    >>> try:
    ...     get_method("lime")
    ... except ExplainError as error:
    ...     print(error)
    unknown explanation method 'lime'; allowed: gradcam, gradcam_pp, integrated_gradients, occlusion, saliency, smoothgrad
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from tfmed.explain.gradcam import gradcam, gradcam_pp
from tfmed.explain.occlusion import occlusion
from tfmed.explain.saliency import integrated_gradients, saliency, smoothgrad
from tfmed.explain.target import ExplainError

METHODS: dict[str, Callable] = {
    "gradcam": gradcam,
    "gradcam_pp": gradcam_pp,
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
}
LAYER_METHODS = ("gradcam", "gradcam_pp")  # the methods that read a target layer's activations


def get_method(name: str) -> Callable:
    """The method function registered as ``name``, or an ExplainError listing the valid names."""
    if name not in METHODS:
        raise ExplainError(f"unknown explanation method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def checked_method(name: str, layer: str | None = None) -> Callable:
    """:func:`get_method`, refusing a ``layer`` given to a method that works on the pixels and reads none.

    Example:
        >>> checked_method("occlusion", layer="conv")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        tfmed.explain.target.ExplainError: method 'occlusion' works on the pixels and takes no layer ...
    """
    function = get_method(name)
    if layer is not None and name not in LAYER_METHODS:
        raise ExplainError(f"method {name!r} works on the pixels and takes no layer (layer={layer!r}); "
                           f"a layer is read only by {', '.join(LAYER_METHODS)}")
    return function


def explain(model, images, method: str = "gradcam", *, index=None, layer: str | None = None) -> np.ndarray:
    """Maps (N, H, W) in [0, 1] by the method named ``method``; ``layer`` only for Grad-CAM and Grad-CAM++.

    Example:
        >>> explain(tuner, images, "occlusion", index=1).shape  # doctest: +SKIP
        (4, 96, 96)
    """
    function = checked_method(method, layer)
    if method in LAYER_METHODS:
        return function(model, images, index=index, layer=layer)
    return function(model, images, index=index)
