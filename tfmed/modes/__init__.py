"""tfmed.modes: the training modes (features + SVM, staged fine-tuning)."""
from tfmed.modes.svm import FeatureSVM  # noqa: F401
from tfmed.modes.finetune import FineTuner  # noqa: F401
