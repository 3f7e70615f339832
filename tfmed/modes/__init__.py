"""tfmed.modes: the training modes (features + SVM, staged fine-tuning), found by name.

Example:
    >>> sorted(MODES)
    ['finetune', 'svm']
"""
from tfmed.modes.base import MODES, Mode, get_mode, register_mode, scores_from_probabilities
from tfmed.modes.finetune import FineTuner
from tfmed.modes.svm import FeatureSVM

__all__ = ["MODES", "FeatureSVM", "FineTuner", "Mode", "get_mode", "register_mode", "scores_from_probabilities"]
