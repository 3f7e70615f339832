"""tfmed.modes: the training modes (features + SVM, staged fine-tuning)."""
from tfmed.modes.svm import FeatureSVM  # noqa: F401
