"""Evaluation library: classification metrics, image features, logistic-regression heads, linear probes and
few-shot probes (the command-line front end is `unicl.evaluate`)."""

from unicl.evaluation.metrics import (
    METRICS,
    compute_metric,
    mean_average_precision_11_point,
    mean_per_class_recall,
    roc_auc,
    top_k_accuracy,
)

__all__ = [
    "METRICS",
    "compute_metric",
    "mean_average_precision_11_point",
    "mean_per_class_recall",
    "roc_auc",
    "top_k_accuracy",
]
