"""tfmed.modes: the training modes (features + SVM, staged fine-tuning, ensembles), found by name.

Example:
    >>> sorted(MODES)
    ['ensemble', 'finetune', 'svm']
"""
from tfmed.modes.base import MODES, MemberScoring, Mode, get_mode, register_mode, scores_from_probabilities
from tfmed.modes.ensemble import Ensemble
from tfmed.modes.finetune import FineTuner
from tfmed.modes.svm import FeatureSVM

__all__ = ["MODES", "Ensemble", "FeatureSVM", "FineTuner", "MemberScoring", "Mode", "get_mode", "register_mode",
           "scores_from_probabilities"]
