"""Evaluation library: classification metrics, image features, logistic-regression heads, linear probes and
few-shot probes (the command-line front end is `unicl.evaluate`)."""

from unicl.evaluation.features import FEATURE_KINDS, image_features, run_precision
from unicl.evaluation.logistic import (
    DEFAULT_L2_GRID,
    LogisticHead,
    StandardizedFeatures,
    choose_l2,
    fit_logistic_regression,
    stratified_split,
)
from unicl.evaluation.metrics import (
    METRICS,
    compute_metric,
    mean_average_precision_11_point,
    mean_per_class_recall,
    roc_auc,
    top_k_accuracy,
)
from unicl.evaluation.probe import INITS, known_targets, run_linear_probe, text_head
from unicl.evaluation.protocols import check_shots, few_shot, linear_probe, sample_shots, score_logits

__all__ = [
    "DEFAULT_L2_GRID",
    "FEATURE_KINDS",
    "INITS",
    "METRICS",
    "LogisticHead",
    "StandardizedFeatures",
    "check_shots",
    "choose_l2",
    "compute_metric",
    "few_shot",
    "fit_logistic_regression",
    "image_features",
    "known_targets",
    "linear_probe",
    "mean_average_precision_11_point",
    "mean_per_class_recall",
    "roc_auc",
    "run_linear_probe",
    "run_precision",
    "sample_shots",
    "score_logits",
    "stratified_split",
    "text_head",
    "top_k_accuracy",
]
