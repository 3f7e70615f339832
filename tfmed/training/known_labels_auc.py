"""ROC AUC during training that leaves out unknown multilabel targets.

A target of :data:`~tfmed.config.UNKNOWN_LABEL` (-1) marks a label that is
not known for an image (CheXpert's U-Ignore). Keras's ``AUC`` would count it
as a negative; :class:`KnownLabelsAUC` gives it a sample weight of 0, so each
label's AUC is computed on the images where it is known, as the losses and
the evaluation do.

Example:
    >>> import numpy as np
    >>> metric = KnownLabelsAUC(multi_label=True, num_labels=2)
    >>> y = np.array([[1, -1], [0, 1], [1, 0], [-1, 0]], dtype="float32")
    >>> p = np.array([[.9, .9], [.2, .8], [.7, .3], [.1, .1]], dtype="float32")
    >>> _ = metric.update_state(y, p)
    >>> round(float(metric.result()), 2)   # label 0: 1.0 on rows 0-2; label 1: 1.0 on rows 1-3
    1.0
"""
from __future__ import annotations

import keras
from keras import ops

from tfmed.config import UNKNOWN_LABEL


@keras.saving.register_keras_serializable(package="tfmed")
class KnownLabelsAUC(keras.metrics.AUC):
    """``keras.metrics.AUC`` with every unknown target (-1) left out (weight 0)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        known = ops.cast(ops.not_equal(y_true, float(UNKNOWN_LABEL)), "float32")
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            known = known * (ops.expand_dims(weight, -1) if len(weight.shape) < len(known.shape) else weight)
        return super().update_state(y_true * known, y_pred, sample_weight=known)
