"""Clinical evaluation: metrics with confidence intervals, thresholds, plots and the run report.

Nothing in this package imports TensorFlow.

Example:
    >>> from tfmed.evaluation import choose_threshold, binary_metrics
    >>> y_val, s_val = [0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9]
    >>> t = choose_threshold(y_val, s_val, "youden")
    >>> binary_metrics([0, 1, 0, 1], [0.2, 0.95, 0.3, 0.5], t)["specificity"]
    1.0
"""
from .intervals import (EvaluationError, bootstrap_ci, delong_auc_ci, delong_covariance, delong_test,
                        logit_interval, macro_auc_ci, macro_auc_covariance, macro_auc_test, newcombe_interval,
                        separation_bound, wilson_interval)
from .metrics import (binary_metrics, evaluate, multiclass_metrics, multilabel_metrics,
                      operating_point_metrics, to_jsonable)
from .plots import (confusion_plot, decision_plot, multi_decision_plot, multi_reliability_plot, multi_roc_plot,
                    pr_plot, reliability_plot, roc_plot, training_curves)
from .report import ReportContext, write_metrics_json, write_predictions, write_report
from .thresholds import (apply_threshold, choose_threshold, operating_points, per_label_thresholds,
                         select_thresholds)

__all__ = [
    "EvaluationError", "wilson_interval", "delong_auc_ci", "delong_covariance", "delong_test",
    "macro_auc_ci", "macro_auc_covariance", "macro_auc_test", "logit_interval", "newcombe_interval", "separation_bound",
    "bootstrap_ci", "binary_metrics", "multiclass_metrics", "multilabel_metrics", "evaluate",
    "operating_point_metrics", "to_jsonable", "choose_threshold", "operating_points",
    "per_label_thresholds", "select_thresholds", "apply_threshold", "roc_plot", "pr_plot", "confusion_plot",
    "reliability_plot", "training_curves", "multi_roc_plot", "decision_plot", "multi_decision_plot",
    "multi_reliability_plot", "ReportContext", "write_predictions",
    "write_report", "write_metrics_json",
]
