"""Explanations: where a model looks, for fine-tuned and features + SVM models alike.

One function per method, each returning maps (N, H, W) in [0, 1] at the
images' resolution: :func:`gradcam`, :func:`gradcam_pp`, :func:`saliency`,
:func:`smoothgrad`, :func:`integrated_gradients`, :func:`occlusion` (table
:data:`METHODS`). Trust checks: :func:`faithfulness` (deletion / insertion
curves against a random order) and :func:`sanity_check` (model randomisation).
:func:`explain_table` explains a saved run's model (an ensemble's members
averaged; a model of views of volumes on mosaics of the views, see
:mod:`tfmed.explain.mosaic`) on a table of images; :class:`ExplainEveryEpoch` saves overlays
during training.

Example:
    >>> from tfmed import explain
    >>> maps = explain.gradcam(tuner, images, index=1)  # doctest: +SKIP
"""
from tfmed.explain.callback import ExplainEveryEpoch
from tfmed.explain.faithfulness import (SanityCheckWarning, faithfulness, perturbation_curves, rank_correlation,
                                        sanity_check)
from tfmed.explain.gradcam import gradcam, gradcam_pp
from tfmed.explain.maps import normalise, peak, resize_maps
from tfmed.explain.methods import LAYER_METHODS, METHODS, explain, get_method
from tfmed.explain.occlusion import occlusion
from tfmed.explain.overlay import overlay_figure, save_overlay
from tfmed.explain.saliency import integrated_gradients, saliency, smoothgrad
from tfmed.explain.tables import explain_table
from tfmed.explain.target import ExplainError, ExplainTarget, FlatMapWarning

__all__ = ["ExplainError", "ExplainEveryEpoch", "ExplainTarget", "FlatMapWarning", "LAYER_METHODS", "METHODS",
           "explain", "explain_table", "faithfulness", "get_method", "gradcam", "gradcam_pp", "integrated_gradients",
           "normalise", "occlusion", "overlay_figure", "peak", "perturbation_curves", "rank_correlation",
           "resize_maps", "saliency", "sanity_check", "SanityCheckWarning", "save_overlay", "smoothgrad"]
