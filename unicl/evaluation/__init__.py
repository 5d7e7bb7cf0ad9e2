"""Evaluation library: zero-shot classification, image-text retrieval, classification metrics, image features,
logistic-regression heads, linear probes, few-shot probes and suites (the command-line front end is
`unicl.evaluate`).

The names below load on first use (PEP 562), so the torch-free modules (`unicl.evaluation.names`,
`unicl.evaluation.suite`) import without torch and the command's ``--help`` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_package

if TYPE_CHECKING:
    from unicl.evaluation.features import image_features as image_features
    from unicl.evaluation.features import run_precision as run_precision
    from unicl.evaluation.inference import InferenceOptions as InferenceOptions
    from unicl.evaluation.logistic import DEFAULT_L2_GRID as DEFAULT_L2_GRID
    from unicl.evaluation.logistic import L2Search as L2Search
    from unicl.evaluation.logistic import LogisticHead as LogisticHead
    from unicl.evaluation.logistic import StandardizedFeatures as StandardizedFeatures
    from unicl.evaluation.logistic import choose_l2 as choose_l2
    from unicl.evaluation.logistic import fit_logistic_regression as fit_logistic_regression
    from unicl.evaluation.logistic import stratified_split as stratified_split
    from unicl.evaluation.metrics import METRICS as METRICS
    from unicl.evaluation.metrics import check_metric_fits as check_metric_fits
    from unicl.evaluation.metrics import classification_results as classification_results
    from unicl.evaluation.metrics import compute_metric as compute_metric
    from unicl.evaluation.metrics import mean_average_precision_11_point as mean_average_precision_11_point
    from unicl.evaluation.metrics import mean_per_class_recall as mean_per_class_recall
    from unicl.evaluation.metrics import roc_auc as roc_auc
    from unicl.evaluation.metrics import top_k_accuracy as top_k_accuracy
    from unicl.evaluation.names import FEATURE_KINDS as FEATURE_KINDS
    from unicl.evaluation.names import INITS as INITS
    from unicl.evaluation.names import METRIC_NAMES as METRIC_NAMES
    from unicl.evaluation.probe import known_targets as known_targets
    from unicl.evaluation.probe import run_linear_probe as run_linear_probe
    from unicl.evaluation.probe import text_head as text_head
    from unicl.evaluation.protocols import check_shots as check_shots
    from unicl.evaluation.protocols import few_shot as few_shot
    from unicl.evaluation.protocols import linear_probe as linear_probe
    from unicl.evaluation.protocols import sample_shots as sample_shots
    from unicl.evaluation.protocols import score_logits as score_logits
    from unicl.evaluation.retrieval import retrieval_recall as retrieval_recall
    from unicl.evaluation.zeroshot import build_zeroshot_classifier as build_zeroshot_classifier
    from unicl.evaluation.zeroshot import zeroshot_accuracy as zeroshot_accuracy
    from unicl.evaluation.zeroshot import zeroshot_probabilities as zeroshot_probabilities
    from unicl.evaluation.zeroshot import zeroshot_scores as zeroshot_scores


__getattr__, __dir__, __all__ = lazy_package(
    __name__,
    {
        "unicl.evaluation.features": ["image_features", "run_precision"],
        "unicl.evaluation.inference": ["InferenceOptions"],
        "unicl.evaluation.logistic": [
            "DEFAULT_L2_GRID",
            "L2Search",
            "LogisticHead",
            "StandardizedFeatures",
            "choose_l2",
            "fit_logistic_regression",
            "stratified_split",
        ],
        "unicl.evaluation.metrics": [
            "METRICS",
            "check_metric_fits",
            "classification_results",
            "compute_metric",
            "mean_average_precision_11_point",
            "mean_per_class_recall",
            "roc_auc",
            "top_k_accuracy",
        ],
        "unicl.evaluation.names": ["FEATURE_KINDS", "INITS", "METRIC_NAMES"],
        "unicl.evaluation.probe": ["known_targets", "run_linear_probe", "text_head"],
        "unicl.evaluation.protocols": ["check_shots", "few_shot", "linear_probe", "sample_shots", "score_logits"],
        "unicl.evaluation.retrieval": ["retrieval_recall"],
        "unicl.evaluation.zeroshot": [
            "build_zeroshot_classifier",
            "zeroshot_accuracy",
            "zeroshot_probabilities",
            "zeroshot_scores",
        ],
    },
)
