"""The Keras training kit: clinical callbacks, staged unfreezing, the threshold layer, losses,
BatchNorm-safe freezing and distribution strategies. Usable in your own Keras scripts;
:func:`load_model` reloads a model saved there (with tfmed layers and losses) in a fresh process.

Example:
    >>> from tfmed import training
    >>> callbacks = training.ordered([training.ClinicalMetrics((x_val, y_val)),
    ...                               training.StagedUnfreeze(blocks, schedule=[(3, 2)])])  # doctest: +SKIP
"""
from tfmed.training.callbacks import (CallbackError, ClinicalMetrics, EpochLogger, ThresholdSelector,
                                      clinical_scores, ordered, select_threshold)
from tfmed.training.layers import (DecisionThreshold, ThresholdLayerError, add_threshold_layer, get_threshold,
                                   load_model, set_threshold)
from tfmed.training.staged_unfreeze import StagedUnfreeze

__all__ = ["CallbackError", "ClinicalMetrics", "DecisionThreshold", "EpochLogger", "StagedUnfreeze",
           "ThresholdLayerError", "ThresholdSelector", "add_threshold_layer", "clinical_scores", "get_threshold",
           "load_model", "ordered", "select_threshold", "set_threshold"]
