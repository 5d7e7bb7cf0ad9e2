"""Evaluation library: zero-shot classification, image-text retrieval, classification metrics, image features,
logistic-regression heads, linear probes, few-shot probes and suites (the command-line front end is
`unicl.evaluate`).

The names below load on first use (PEP 562), so the torch-free modules (`unicl.evaluation.names`,
`unicl.evaluation.suite`) import without torch and the command's ``--help`` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_exports

#: The module each public name is defined in.
_PUBLIC_NAMES = {
    "FEATURE_KINDS": "unicl.evaluation.names",
    "INITS": "unicl.evaluation.names",
    "METRIC_NAMES": "unicl.evaluation.names",
    "image_features": "unicl.evaluation.features",
    "run_precision": "unicl.evaluation.features",
    "DEFAULT_L2_GRID": "unicl.evaluation.logistic",
    "LogisticHead": "unicl.evaluation.logistic",
    "StandardizedFeatures": "unicl.evaluation.logistic",
    "choose_l2": "unicl.evaluation.logistic",
    "fit_logistic_regression": "unicl.evaluation.logistic",
    "stratified_split": "unicl.evaluation.logistic",
    "METRICS": "unicl.evaluation.metrics",
    "check_metric_fits": "unicl.evaluation.metrics",
    "classification_results": "unicl.evaluation.metrics",
    "compute_metric": "unicl.evaluation.metrics",
    "mean_average_precision_11_point": "unicl.evaluation.metrics",
    "mean_per_class_recall": "unicl.evaluation.metrics",
    "roc_auc": "unicl.evaluation.metrics",
    "top_k_accuracy": "unicl.evaluation.metrics",
    "known_targets": "unicl.evaluation.probe",
    "run_linear_probe": "unicl.evaluation.probe",
    "text_head": "unicl.evaluation.probe",
    "check_shots": "unicl.evaluation.protocols",
    "few_shot": "unicl.evaluation.protocols",
    "linear_probe": "unicl.evaluation.protocols",
    "sample_shots": "unicl.evaluation.protocols",
    "score_logits": "unicl.evaluation.protocols",
    "retrieval_recall": "unicl.evaluation.retrieval",
    "build_zeroshot_classifier": "unicl.evaluation.zeroshot",
    "zeroshot_accuracy": "unicl.evaluation.zeroshot",
    "zeroshot_probabilities": "unicl.evaluation.zeroshot",
    "zeroshot_scores": "unicl.evaluation.zeroshot",
}

if TYPE_CHECKING:
    from unicl.evaluation.features import image_features, run_precision
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
        check_metric_fits,
        classification_results,
        compute_metric,
        mean_average_precision_11_point,
        mean_per_class_recall,
        roc_auc,
        top_k_accuracy,
    )
    from unicl.evaluation.names import FEATURE_KINDS, INITS, METRIC_NAMES
    from unicl.evaluation.probe import known_targets, run_linear_probe, text_head
    from unicl.evaluation.protocols import check_shots, few_shot, linear_probe, sample_shots, score_logits
    from unicl.evaluation.retrieval import retrieval_recall
    from unicl.evaluation.zeroshot import (
        build_zeroshot_classifier,
        zeroshot_accuracy,
        zeroshot_probabilities,
        zeroshot_scores,
    )


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES)

__all__ = [
    "DEFAULT_L2_GRID",
    "FEATURE_KINDS",
    "INITS",
    "METRICS",
    "METRIC_NAMES",
    "LogisticHead",
    "StandardizedFeatures",
    "build_zeroshot_classifier",
    "check_metric_fits",
    "check_shots",
    "choose_l2",
    "classification_results",
    "compute_metric",
    "few_shot",
    "fit_logistic_regression",
    "image_features",
    "known_targets",
    "linear_probe",
    "mean_average_precision_11_point",
    "mean_per_class_recall",
    "retrieval_recall",
    "roc_auc",
    "run_linear_probe",
    "run_precision",
    "sample_shots",
    "score_logits",
    "stratified_split",
    "text_head",
    "top_k_accuracy",
    "zeroshot_accuracy",
    "zeroshot_probabilities",
    "zeroshot_scores",
]
