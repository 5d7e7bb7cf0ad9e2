"""unicl.evaluation.metrics against scikit-learn (top-k accuracy, balanced accuracy, ROC-AUC) and an independent
numpy reference (11-point mAP) on random inputs, plus the documented behaviour of ties, absent classes, single
classes and bad inputs."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    precision_recall_curve,
    roc_auc_score,
    top_k_accuracy_score,
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
from unicl.evaluation.names import DEFAULT_METRIC, METRIC_NAMES, MULTILABEL_METRIC

TOLERANCE = 1e-12


def _random(seed: int, n: int, c: int, *, levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[n, c]`` (continuous, or integers in ``[0, levels)`` for many ties) and class ids ``[n]``."""
    generator = torch.Generator().manual_seed(seed)
    if levels is None:
        scores = torch.randn(n, c, generator=generator, dtype=torch.float64)
    else:
        scores = torch.randint(levels, (n, c), generator=generator).double()
    return scores, torch.randint(c, (n,), generator=generator)


@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), c=st.integers(3, 9), k=st.integers(1, 8))
def test_top_k_accuracy_equals_scikit_learn(seed, n, c, k):
    k = min(k, c - 1)  # scikit-learn warns (and answers 1) for k >= C
    scores, targets = _random(seed, n, c)
    expected = top_k_accuracy_score(targets.numpy(), scores.numpy(), k=k, labels=np.arange(c))
    assert abs(top_k_accuracy(scores, targets, k) - expected) <= TOLERANCE
    assert abs(top_k_accuracy(scores.float(), targets, k) - expected) <= TOLERANCE


def _tie_broken_by(scores: torch.Tensor, order: tuple[int, ...]) -> np.ndarray:
    """Scores with ties broken in favour of the classes early in ``order`` (a shift far below the score gaps)."""
    preference = np.empty(len(order))
    preference[list(order)] = -np.arange(len(order)) * 1e-6
    return scores.numpy() + preference


@pytest.mark.slow
@given(seed=st.integers(0, 2**31), n=st.integers(1, 12), c=st.integers(3, 5), k=st.integers(1, 4))
def test_ties_get_the_expected_credit_of_random_tie_breaking(seed, n, c, k):
    """Averaging scikit-learn's answer over every order of tie-breaking between the classes is the expectation under
    uniformly random tie-breaking, which is what ties are documented to get."""
    k = min(k, c - 1)
    scores, targets = _random(seed, n, c, levels=2)
    orders = list(itertools.permutations(range(c)))
    labels = np.arange(c)
    top_k = np.mean([top_k_accuracy_score(targets.numpy(), _tie_broken_by(scores, o), k=k, labels=labels)
                     for o in orders])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        recall = np.mean([balanced_accuracy_score(targets.numpy(), _tie_broken_by(scores, o).argmax(1))
                          for o in orders])  # fmt: skip
    assert abs(top_k_accuracy(scores, targets, k) - top_k) <= 1e-9
    assert abs(mean_per_class_recall(scores, targets) - recall) <= 1e-9


def test_constant_scores_are_chance_not_perfect():
    targets = torch.tensor([0, 1, 2, 3, 0])
    scores = torch.zeros(5, 4)
    assert top_k_accuracy(scores, targets, 1) == 0.25
    assert top_k_accuracy(scores, targets, 2) == 0.5
    assert mean_per_class_recall(scores, targets) == 0.25


@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), c=st.integers(1, 9))
def test_mean_per_class_recall_equals_balanced_accuracy(seed, n, c):
    scores, targets = _random(seed, n, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # predicted classes absent from the targets: scikit-learn drops them too
        expected = balanced_accuracy_score(targets.numpy(), scores.argmax(1).numpy())
    assert abs(mean_per_class_recall(scores, targets) - expected) <= TOLERANCE


def test_classes_absent_from_the_targets_are_left_out_of_the_mean():
    # Class 2 never occurs: the mean is over classes 0 (recall 1) and 1 (recall 0), not a third 0 or 1.
    scores = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert mean_per_class_recall(scores, torch.tensor([0, 1])) == 0.5
    multi_hot = torch.tensor([[1, 0, 0], [1, 0, 0]])
    assert mean_average_precision_11_point(scores, multi_hot) == 1.0


def test_one_class():
    assert top_k_accuracy(torch.randn(4, 1), torch.zeros(4, dtype=torch.long), 1) == 1.0
    assert mean_per_class_recall(torch.randn(4, 1), torch.zeros(4, dtype=torch.long)) == 1.0
    # A single class present among several: its recall alone.
    assert mean_per_class_recall(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(torch.tensor([0.2, 0.9]), torch.tensor([1, 1]))


def _reference_11_point_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """Independent VOC2007 11-point AP: precision and recall of every threshold by brute force."""
    thresholds = np.unique(scores)
    precision = np.array([(positives & (scores >= t)).sum() / (scores >= t).sum() for t in thresholds])
    recall = np.array([(positives & (scores >= t)).sum() / positives.sum() for t in thresholds])
    points = []
    for level in np.arange(11) / 10:
        reached = recall >= level - 1e-12
        points.append(precision[reached].max() if reached.any() else 0.0)
    return float(np.mean(points))


def _random_multi_hot(seed: int, n: int, c: int, levels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    scores, _ = _random(seed, n, c, levels=levels)
    generator = torch.Generator().manual_seed(seed + 1)
    return scores, (torch.rand(n, c, generator=generator) < 0.4).long()


@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), c=st.integers(1, 6), ties=st.booleans())
def test_11_point_map_equals_an_independent_reference(seed, n, c, ties):
    scores, multi_hot = _random_multi_hot(seed, n, c, levels=3 if ties else None)
    present = [j for j in range(c) if multi_hot[:, j].any()]
    if not present:
        with pytest.raises(ValueError, match="at least one positive"):
            mean_average_precision_11_point(scores, multi_hot)
        return
    expected = np.mean([_reference_11_point_ap(scores[:, j].numpy(), multi_hot[:, j].numpy().astype(bool))
                        for j in present])  # fmt: skip
    assert abs(mean_average_precision_11_point(scores, multi_hot) - expected) <= TOLERANCE
    assert abs(mean_average_precision_11_point(scores, multi_hot.bool()) - expected) <= TOLERANCE


def test_11_point_map_is_not_scikit_learns_average_precision():
    """scikit-learn's ``average_precision_score`` sums precision over recall steps without interpolation: a
    different quantity (here 0.8333 against 11-point's 0.8485), which is why the reference above is our own."""
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    positives = torch.tensor([[1], [0], [1], [0]])
    ours = mean_average_precision_11_point(scores, positives)
    assert abs(ours - (6 * 1.0 + 5 * 2 / 3) / 11) <= TOLERANCE
    assert abs(average_precision_score(positives.numpy()[:, 0], scores.numpy()[:, 0]) - (1 + 2 / 3) / 2) <= TOLERANCE


@given(seed=st.integers(0, 2**31), n=st.integers(2, 60), ties=st.booleans(), two_columns=st.booleans())
def test_roc_auc_equals_scikit_learn(seed, n, ties, two_columns):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(2, (n,), generator=generator)
    targets[0], targets[1] = 0, 1  # both classes present
    scores = torch.randint(4, (n,), generator=generator).double() if ties else torch.randn(n, generator=generator)
    expected = roc_auc_score(targets.numpy(), scores.numpy())
    if two_columns:
        scores = torch.stack([-scores / 2, scores / 2], dim=1)  # column 1 minus column 0 is the 1-D score
    assert abs(roc_auc(scores, targets) - expected) <= TOLERANCE
    assert abs(roc_auc(scores, targets.bool()) - expected) <= TOLERANCE


def _elevater_11_point_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """ELEVATER's N-point rule as its evaluator states it: scikit-learn's ``precision_recall_curve`` (which ends with
    the point recall 0, precision 1), then for each level t in 1, 0.9, ..., 0 the best precision at recall >= t."""
    precision, recall, _ = precision_recall_curve(positives, scores)
    return float(np.mean([precision[recall >= t - 1e-12].max(initial=0.0) for t in np.linspace(1, 0, 11)]))


def _devkit_11_point_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """PASCAL VOC2007's devkit rule: images one at a time in (stable) score order, precision and recall after each."""
    hits = positives[np.argsort(-scores, kind="stable")].astype(np.float64)
    tp = np.cumsum(hits)
    precision, recall = tp / np.arange(1, len(hits) + 1), tp / hits.sum()
    return float(np.mean([precision[recall >= t - 1e-12].max(initial=0.0) for t in np.linspace(0, 1, 11)]))


def test_the_documented_example_against_elevaters_rule():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5]], dtype=torch.float64)
    positives = torch.tensor([[0], [1], [0], [1], [0]])
    assert abs(mean_average_precision_11_point(scores, positives) - 0.5) <= TOLERANCE
    assert round(_elevater_11_point_ap(scores[:, 0].numpy(), positives[:, 0].numpy()), 4) == 0.5455


@given(seed=st.integers(0, 2**31), n=st.integers(1, 40), ties=st.booleans())
def test_11_point_ap_is_elevaters_less_its_recall_0_point(seed, n, ties):
    """Documented: ELEVATER's AP of a class is ours plus (1 - the best precision of any threshold) / 11."""
    scores, multi_hot = _random_multi_hot(seed, n, 1, levels=3 if ties else None)
    positives = multi_hot[:, 0].numpy()
    if not positives.any():
        return
    thresholds = np.unique(scores[:, 0].numpy())
    best = max((positives & (scores[:, 0].numpy() >= t)).sum() / (scores[:, 0].numpy() >= t).sum() for t in thresholds)
    ours = mean_average_precision_11_point(scores, multi_hot)
    assert abs(_elevater_11_point_ap(scores[:, 0].numpy(), positives) - (ours + (1 - best) / 11)) <= TOLERANCE


@given(seed=st.integers(0, 2**31), n=st.integers(1, 40))
def test_11_point_ap_is_the_devkits_without_ties(seed, n):
    scores, multi_hot = _random_multi_hot(seed, n, 1, levels=None)  # continuous: no ties, almost surely
    positives = multi_hot[:, 0].numpy()
    if not positives.any():
        return
    expected = _devkit_11_point_ap(scores[:, 0].numpy(), positives)
    assert abs(mean_average_precision_11_point(scores, multi_hot) - expected) <= TOLERANCE


def test_tied_scores_are_grouped_where_the_devkit_orders_them():
    scores, positives = torch.tensor([[1.0], [1.0]]), torch.tensor([[0], [1]])
    assert mean_average_precision_11_point(scores, positives) == 0.5  # one operating point: precision 1/2
    assert _devkit_11_point_ap(np.array([1.0, 1.0]), np.array([1, 0])) == 1.0  # the positive sorted first


@pytest.mark.slow
@given(seed=st.integers(0, 2**31), n=st.integers(1, 30), c=st.integers(5, 8))
def test_the_registry_computes_each_metric(seed, n, c):
    scores, targets = _random(seed, n, c)
    labels = np.arange(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k = C (top-5 of 5 classes is 1), predicted classes absent from the targets
        expected = {
            "top1": top_k_accuracy_score(targets.numpy(), scores.numpy(), k=1, labels=labels),
            "top5": top_k_accuracy_score(targets.numpy(), scores.numpy(), k=5, labels=labels),
            "mean_per_class_recall": balanced_accuracy_score(targets.numpy(), scores.argmax(1).numpy()),
        }
    for name, value in expected.items():
        assert abs(compute_metric(name, scores, targets) - value) <= TOLERANCE, name
    binary = (targets % 2).long()
    if 0 < int(binary.sum()) < n:
        expected_auc = roc_auc_score(binary.numpy(), scores[:, 0].numpy())
        assert abs(compute_metric("roc_auc", scores[:, 0], binary) - expected_auc) <= TOLERANCE
    multi_hot = torch.nn.functional.one_hot(targets, c)
    present = [j for j in range(c) if multi_hot[:, j].any()]
    expected_map = np.mean([_reference_11_point_ap(scores[:, j].numpy(), multi_hot[:, j].numpy().astype(bool))
                            for j in present])  # fmt: skip
    assert abs(compute_metric("map_11_point", scores, multi_hot) - expected_map) <= TOLERANCE
    assert set(METRICS) == {"top1", "top5", "mean_per_class_recall", "map_11_point", "roc_auc"}


def test_metrics_do_not_depend_on_sample_order():
    scores, targets = _random(3, 50, 6, levels=3)
    permutation = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    shuffled_scores, shuffled_targets = scores[permutation], targets[permutation]
    for name in ("top1", "top5", "mean_per_class_recall"):
        difference = compute_metric(name, scores, targets) - compute_metric(name, shuffled_scores, shuffled_targets)
        assert abs(difference) <= TOLERANCE
    multi_hot = torch.nn.functional.one_hot(targets, 6)
    shuffled = mean_average_precision_11_point(shuffled_scores, multi_hot[permutation])
    assert abs(mean_average_precision_11_point(scores, multi_hot) - shuffled) <= TOLERANCE
    binary = (targets > 2).long()
    assert abs(roc_auc(scores[:, 0], binary) - roc_auc(scores[permutation, 0], binary[permutation])) <= TOLERANCE


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: compute_metric("accuracy", torch.zeros(2, 3), torch.zeros(2)), ValueError,
         r"metric must be one of top1, top5, mean_per_class_recall, map_11_point, roc_auc; got 'accuracy'"),
        (lambda: top_k_accuracy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 4), ValueError,
         r"k must be an int in \[1, 3\]"),
        (lambda: compute_metric("top5", torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), ValueError,
         r"k must be an int in \[1, 3\]"),
        (lambda: top_k_accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long)), ValueError,
         r"scores must have shape \[N, C\]; got \(3,\)"),
        (lambda: top_k_accuracy(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long)), TypeError,
         r"scores must have a floating-point dtype"),
        (lambda: top_k_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)), ValueError,
         r"at least one sample"),
        (lambda: top_k_accuracy(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, dtype=torch.long)), ValueError,
         r"scores must be finite"),
        (lambda: top_k_accuracy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), ValueError,
         r"targets must have shape \[2\]"),
        (lambda: top_k_accuracy(torch.zeros(2, 3), torch.zeros(2)), TypeError, r"targets must have an integer dtype"),
        (lambda: mean_per_class_recall(torch.zeros(2, 3), torch.tensor([0, 3])), ValueError,
         r"targets must be class ids in \[0, 3\)"),
        (lambda: mean_average_precision_11_point(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), ValueError,
         r"targets must be multi-hot of shape \[2, 3\]"),
        (lambda: mean_average_precision_11_point(torch.zeros(2, 2), torch.full((2, 2), 2)), ValueError,
         r"every entry 0 or 1"),
        (lambda: roc_auc(torch.zeros(2, 3), torch.tensor([0, 1])), ValueError, r"scores must have shape \[N\] or"),
        (lambda: roc_auc(torch.zeros(2), torch.tensor([0, 2])), ValueError, r"targets must be binary"),
        (lambda: roc_auc(torch.zeros(2), [0, 1]), TypeError, r"targets must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_bad_inputs_give_one_line(call, error, message):
    with pytest.raises(error, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


def test_the_torch_free_metric_names_are_the_registry_s_keys():
    """The command's --metric choices come from `unicl.evaluation.names` (no torch); they are the registry, in order."""
    assert tuple(METRICS) == METRIC_NAMES
    assert DEFAULT_METRIC in METRIC_NAMES and MULTILABEL_METRIC in METRIC_NAMES


def test_classification_results_report_top_k_and_the_dataset_metric_checked_against_the_data():
    scores = torch.tensor([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.8, 0.0, 0.0, 0.0],
                           [0.1, 0.0, 0.0, 0.0, 0.3, 0.6]])  # fmt: skip
    targets = torch.tensor([0, 1, 5])
    results = classification_results(scores, targets, "mean_per_class_recall")
    assert results == {"top1": 2 / 3, "top5": 1.0, "mean_per_class_recall": 2 / 3, "metric": "mean_per_class_recall",
                       "images": 3, "classes": 6}  # fmt: skip
    assert set(classification_results(scores[:, :2], torch.tensor([0, 1, 0]))) == {"top1", "metric", "images",
                                                                                     "classes"}  # fmt: skip
    multi_hot = torch.tensor([[1, 0], [0, 1], [1, 1]])
    assert classification_results(scores[:, :2], multi_hot)["metric"] == "map_11_point"
    for metric, classes, multilabel, message in [
        ("f1", 6, False, "unknown metric 'f1'"), ("top1", 2, True, "multi-label data is scored with map_11_point"),
        ("map_11_point", 6, False, "is for multi-label data"), ("roc_auc", 3, False, "this data has 3 classes"),
        ("top5", 4, False, "top5 needs at least 5 classes"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            check_metric_fits(metric, classes, multilabel)
    assert check_metric_fits("roc_auc", 2, False) == "roc_auc"
