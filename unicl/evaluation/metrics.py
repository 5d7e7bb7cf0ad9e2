"""Classification metrics on score tensors: top-k accuracy, mean per-class recall, 11-point mAP and ROC-AUC.

Every metric takes ``scores`` (higher means more likely; logits, probabilities or similarities alike) and
``targets`` and returns a Python ``float``. The arithmetic runs in float64 on the tensors' device.

Conventions, the same everywhere:

* **Ties** never favour the model. In top-k accuracy and mean per-class recall a sample tied with other classes at
  the cut-off gets the expected credit of breaking the tie uniformly at random (so a constant score is chance, not
  100%); in mAP tied scores form one operating point of the precision-recall curve; in ROC-AUC a tied
  positive-negative pair counts one half (Mann-Whitney). None of them depends on the order of the samples or of
  the classes.
* **Classes absent from the targets** are left out of averages over classes (mean per-class recall, mAP), because
  their recall or average precision is undefined; they still compete as wrong answers in the scores.
* **Single-class inputs**: ROC-AUC needs both a positive and a negative target and raises ``ValueError`` otherwise;
  the other metrics are defined for one class (top-1 of one class is 1).

Bad shapes, dtypes, non-finite scores or targets out of range raise one line naming the argument and what was
expected.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from unicl.evaluation.names import DEFAULT_METRIC, METRIC_NAMES, MULTILABEL_METRIC, TOP_K


def _check_scores(scores: object, dims: tuple[int, ...] = (2,)) -> torch.Tensor:
    expected = " or ".join({1: "[N]", 2: "[N, C]"}[d] for d in dims)
    if not isinstance(scores, torch.Tensor):
        kind = type(scores).__name__
        raise TypeError(f"scores must be a floating-point torch.Tensor of shape {expected}; got {kind}")
    if scores.dim() not in dims:
        raise ValueError(f"scores must have shape {expected}; got {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must have a floating-point dtype; got {scores.dtype}")
    if scores.shape[0] == 0 or (scores.dim() == 2 and scores.shape[1] == 0):
        raise ValueError(f"scores must have at least one sample and one class; got shape {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite (no NaN or infinity)")
    return scores.double()


def _check_class_targets(targets: object, num_samples: int, num_classes: int) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        kind = type(targets).__name__
        raise TypeError(f"targets must be an integer torch.Tensor of shape [{num_samples}]; got {kind}")
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise TypeError(f"targets must have an integer dtype (class ids); got {targets.dtype}")
    if targets.dim() != 1 or targets.shape[0] != num_samples:
        raise ValueError(f"targets must have shape [{num_samples}] (one class id per row of scores); "
                         f"got {tuple(targets.shape)}")  # fmt: skip
    if bool(((targets < 0) | (targets >= num_classes)).any()):
        raise ValueError(f"targets must be class ids in [0, {num_classes}) (the columns of scores); "
                         f"got values from {int(targets.min())} to {int(targets.max())}")  # fmt: skip
    return targets.long()


def _check_same_device(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.device != targets.device:
        raise ValueError(f"targets must be on the scores' device {scores.device}; got {targets.device}")


def _top_k_credit(scores: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """``[N]`` expected hit of each sample under uniformly random tie-breaking: with ``g`` classes scoring strictly
    higher than the target and ``e`` others tied with it, the target's rank is uniform on ``g+1 .. g+e+1``, so the
    credit is ``clamp((k - g) / (e + 1), 0, 1)``."""
    target_scores = scores.gather(1, targets[:, None])
    greater = (scores > target_scores).sum(dim=1).double()
    tied = (scores == target_scores).sum(dim=1).double() - 1
    return ((k - greater) / (tied + 1)).clamp(0.0, 1.0)


def top_k_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose target class is among the ``k`` highest scores.

    Equals scikit-learn's ``top_k_accuracy_score`` when no score ties the target's at the cut-off; a tie there
    gets the expected credit of random tie-breaking (see the module docstring).

    Args:
        scores: ``[N, C]`` class scores.
        targets: ``[N]`` class ids in ``[0, C)``.
        k: how many of the best classes count, ``1 <= k <= C``.

    Returns:
        The accuracy in ``[0, 1]``.

    Raises:
        ValueError: bad shapes, non-finite scores, targets out of range, or ``k`` outside ``[1, C]``.

    Examples:
        >>> top_k_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
        0.5
    """
    scores = _check_scores(scores)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be an int in [1, {scores.shape[1]}] (the number of classes); got {k!r}")
    targets = _check_class_targets(targets, scores.shape[0], scores.shape[1])
    _check_same_device(scores, targets)
    return float(_top_k_credit(scores, targets, k).mean())


def mean_per_class_recall(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over the classes present in ``targets`` of each class's recall (its samples' top-1 accuracy).

    Also called balanced accuracy; equals scikit-learn's ``balanced_accuracy_score`` of the arg-max predictions when
    no score ties the arg-max (ties get random tie-breaking's expected credit). Classes that never occur in
    ``targets`` are left out of the mean.

    Args:
        scores: ``[N, C]`` class scores.
        targets: ``[N]`` class ids in ``[0, C)``.

    Returns:
        The mean recall in ``[0, 1]``.

    Examples:
        >>> mean_per_class_recall(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 0, 1]))
        0.5
    """
    scores = _check_scores(scores)
    targets = _check_class_targets(targets, scores.shape[0], scores.shape[1])
    _check_same_device(scores, targets)
    credit = _top_k_credit(scores, targets, 1)
    num_classes = scores.shape[1]
    hits = torch.zeros(num_classes, dtype=torch.float64, device=scores.device).index_add_(0, targets, credit)
    counts = torch.bincount(targets, minlength=num_classes)
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


def _check_multi_hot(targets: object, shape: torch.Size) -> torch.Tensor:
    expected = f"[{shape[0]}, {shape[1]}]"
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a multi-hot torch.Tensor of shape {expected}; got {type(targets).__name__}")
    if targets.shape != shape:
        got = tuple(targets.shape)
        raise ValueError(f"targets must be multi-hot of shape {expected} (the scores' shape); got {got}")
    if targets.is_complex() or not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("targets must be multi-hot: every entry 0 or 1 (or False/True)")
    return targets.bool()


def _average_precision_11_point(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """11-point interpolated AP of one class (tied scores grouped): the mean over recall levels
    ``t = 0, 0.1, ..., 1`` of the highest precision at any operating point with recall ``>= t`` (0 when none reaches
    ``t``). Operating points are the distinct scores (a threshold keeps every sample scoring at least it), so tied
    samples enter together."""
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores = scores[order]
    true_positives = positives[order].double().cumsum(0)
    # The last sample of each run of equal scores closes an operating point.
    last_of_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tp = true_positives[last_of_run]
    kept = torch.arange(1, len(scores) + 1, device=scores.device, dtype=torch.float64)[last_of_run]
    precision = tp / kept
    recall = tp / true_positives[-1]
    levels = torch.linspace(0, 1, 11, dtype=torch.float64, device=scores.device)
    # Round the recall grid against float error (0.3 vs 3/10 of the positives).
    reaches = recall[None, :] >= levels[:, None] - 1e-12
    best = torch.where(reaches, precision[None, :], torch.zeros((), dtype=torch.float64, device=scores.device))
    return best.max(dim=1).values.mean()


def mean_average_precision_11_point(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Multi-label mean over classes of the 11-point interpolated average precision, with tied scores grouped.

    It equals the PASCAL VOC2007 devkit's 11-point AP when no two scores tie (the devkit takes tied samples one at
    a time in its sort order), and it is not ELEVATER's evaluator, which also counts the point (recall 0,
    precision 1) that scikit-learn's ``precision_recall_curve`` appends and so is higher by
    ``(1 - best precision) / 11`` per class.

    For each class with at least one positive, samples are ranked by that class's score and the class's AP is the
    mean over recall levels ``t = 0, 0.1, ..., 1`` of the highest precision at any threshold whose recall is at
    least ``t`` (0 if no threshold reaches ``t``); the result is the mean over those classes. A threshold keeps
    every sample scoring at least it, so tied samples enter the ranking together. Classes without positives are left
    out (their AP is undefined). This is not scikit-learn's ``average_precision_score``, which sums precision over
    every recall step without interpolation.

    Args:
        scores: ``[N, C]`` class scores.
        targets: ``[N, C]`` multi-hot (0/1 or bool): which classes each sample has.

    Returns:
        The mAP in ``[0, 1]``.

    Raises:
        ValueError: bad shapes, entries other than 0/1, or no class with a positive.

    Examples:
        >>> mean_average_precision_11_point(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1, 0], [0, 1]]))
        1.0
    """
    scores = _check_scores(scores)
    positives = _check_multi_hot(targets, scores.shape)
    _check_same_device(scores, positives)
    present = positives.any(dim=0)
    if not bool(present.any()):
        raise ValueError("targets must have at least one positive (a 1) in some class for mAP")
    precisions = [_average_precision_11_point(scores[:, c], positives[:, c]) for c in present.nonzero()[:, 0].tolist()]
    return float(torch.stack(precisions).mean())


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the ROC curve of a binary task: the probability that a random positive scores above a random
    negative, a tied pair counting one half (equal to scikit-learn's ``roc_auc_score``).

    Args:
        scores: ``[N]`` scores of the positive class, or ``[N, 2]`` two-class scores (column 1 is the positive
            class; the score used is column 1 minus column 0, which ranks like the positive class's softmax
            probability).
        targets: ``[N]`` 0 (negative) or 1 (positive), integer or bool.

    Returns:
        The AUC in ``[0, 1]``.

    Raises:
        ValueError: bad shapes, targets other than 0/1, or targets of only one class (AUC undefined).

    Examples:
        >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    scores = _check_scores(scores, dims=(1, 2))
    if scores.dim() == 2:
        if scores.shape[1] != 2:
            raise ValueError(f"scores must have shape [N] or [N, 2] for roc_auc; got {tuple(scores.shape)}")
        scores = scores[:, 1] - scores[:, 0]
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor of 0/1 of shape [{len(scores)}]; got {type(targets).__name__}")
    if targets.shape != scores.shape:
        raise ValueError(f"targets must have shape [{len(scores)}] (one 0/1 per sample); got {tuple(targets.shape)}")
    if targets.is_complex() or not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("targets must be binary for roc_auc: every entry 0 or 1 (or False/True)")
    _check_same_device(scores, targets)
    positive = targets.bool()
    num_positive = int(positive.sum())
    num_negative = len(positive) - num_positive
    if num_positive == 0 or num_negative == 0:
        raise ValueError(f"targets must contain both classes for roc_auc (undefined otherwise); got only class "
                         f"{int(num_positive > 0)}")  # fmt: skip
    # Mann-Whitney U from mid-ranks: tied samples share the mean of the ranks they span.
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mid_ranks = (ends - (counts.double() - 1) / 2)[inverse]
    u = mid_ranks[positive].sum() - num_positive * (num_positive + 1) / 2
    return float(u / (num_positive * num_negative))


#: Metric name to ``fn(scores, targets) -> float``. ``top1``/``top5``/``mean_per_class_recall`` take ``[N, C]``
#: scores and ``[N]`` class ids; ``map_11_point`` ``[N, C]`` multi-hot targets; ``roc_auc`` binary targets.
#: The keys are `unicl.evaluation.names.METRIC_NAMES` (a test holds them equal, in order).
METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "top1": partial(top_k_accuracy, k=1),
    "top5": partial(top_k_accuracy, k=5),
    "mean_per_class_recall": mean_per_class_recall,
    "map_11_point": mean_average_precision_11_point,
    "roc_auc": roc_auc,
}


def compute_metric(name: str, scores: torch.Tensor, targets: torch.Tensor) -> float:
    """The metric ``name`` (a key of `METRICS`) of ``scores`` against ``targets``.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or the metric's own input errors.

    Examples:
        >>> compute_metric("top1", torch.tensor([[0.2, 0.8]]), torch.tensor([1]))
        1.0
    """
    if not isinstance(name, str) or name not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {name!r}")
    return METRICS[name](scores, targets)


def check_metric_fits(metric: str, num_classes: int, multilabel: bool) -> str:
    """Return ``metric`` if it scores data of ``num_classes`` classes (multi-label or not), else raise.

    ``map_11_point`` is for multi-label data only and multi-label data only has it; ``roc_auc`` needs exactly two
    classes; ``top5`` at least five.

    Raises:
        ValueError: an unknown metric (the message lists them) or one that does not fit the data.
    """
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
    if multilabel and metric != MULTILABEL_METRIC:
        raise ValueError(f"{metric} scores one class per image; multi-label data is scored with {MULTILABEL_METRIC}")
    if not multilabel and metric == MULTILABEL_METRIC:
        raise ValueError(
            f"{metric} is for multi-label data (a labels CSV); this data has one class per image: use top1 or "
            "mean_per_class_recall"
        )
    if metric == "roc_auc" and num_classes != 2:
        raise ValueError(f"roc_auc scores binary data (2 classes); this data has {num_classes} classes")
    if metric == "top5" and num_classes < 5:
        raise ValueError(f"top5 needs at least 5 classes; this data has {num_classes}")
    return metric


def classification_results(scores: torch.Tensor, targets: torch.Tensor, metric: str | None = None) -> dict[str, Any]:
    """The metrics every classification evaluation reports, from all of a dataset's scores.

    Args:
        scores: ``[N, C]`` class scores.
        targets: ``[N]`` class ids, or ``[N, C]`` multi-hot (multi-label data).
        metric: the dataset's metric (default ``top1``, or ``map_11_point`` for multi-label targets).

    Returns:
        Single-label: ``{"top1", "top5" (with >= 5 classes), metric (when another), "metric", "images", "classes"}``;
        multi-label: ``{"map_11_point", "metric", "images", "classes"}``.

    Raises:
        ValueError: a metric that does not fit the data (`check_metric_fits`).
    """
    multilabel = targets.dim() == 2
    num_images, num_classes = scores.shape
    if metric is None:
        metric = MULTILABEL_METRIC if multilabel else DEFAULT_METRIC
    check_metric_fits(metric, num_classes, multilabel)
    names = [metric] if multilabel else [f"top{k}" for k in TOP_K if k <= num_classes]
    names += [] if metric in names else [metric]
    results: dict[str, Any] = {name: compute_metric(name, scores, targets) for name in names}
    return {**results, "metric": metric, "images": num_images, "classes": num_classes}
