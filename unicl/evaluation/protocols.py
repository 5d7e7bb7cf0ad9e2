"""Linear probes and few-shot probes on fixed features: the protocols, from features to a results dictionary.

Both fit a `unicl.evaluation.logistic` head (multinomial logistic regression, full-batch L-BFGS, features
standardised on the training part only) and report the test split's top-1, top-5 (with at least 5 classes) and the
chosen metric. The test features are read once, by the final head, after everything has been fitted and chosen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from unicl._checks import check_instance, check_positive_int
from unicl.evaluation.logistic import DEFAULT_SEARCH, L2Search, choose_l2, fit_logistic_regression
from unicl.evaluation.metrics import METRICS, compute_metric


def score_logits(metric: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The metric ``metric`` of ``[N, C]`` logits against ``[N]`` class ids.

    ``map_11_point`` treats each sample's class as its one positive label (one-hot targets); ``roc_auc`` needs two
    classes and ranks by the logit difference of class 1 over class 0; the others take the class ids as they are.

    Raises:
        ValueError: an unknown metric, ``roc_auc`` with other than 2 classes, or the metric's own input errors.
    """
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if metric == "map_11_point":
        return compute_metric(metric, logits, F.one_hot(targets.long(), logits.shape[1]))
    if metric == "roc_auc" and logits.shape[1] != 2:
        raise ValueError(f"metric 'roc_auc' needs a binary task (2 classes); got {logits.shape[1]} classes")
    return compute_metric(metric, logits, targets)


def _check_split(name: str, features: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or not features.is_floating_point():
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name}_features must be a floating-point tensor [N, F]; got {shape}")
    if features.shape[0] == 0:
        raise ValueError(f"{name}_features must have at least one row; got shape {tuple(features.shape)}")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1 or targets.is_floating_point():
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"{name}_targets must be integer class ids [N]; got {shape}")
    if targets.shape[0] != features.shape[0]:
        raise ValueError(f"{name}_targets must have one class id per row of {name}_features ({features.shape[0]}); "
                         f"got {targets.shape[0]}")  # fmt: skip
    if targets.shape[0] and int(targets.min()) < 0:
        raise ValueError(f"{name}_targets must be class ids >= 0; got {int(targets.min())}")
    return features, targets.long()


def _num_classes(classes: int | None, init_weights: torch.Tensor | None, *targets: torch.Tensor) -> int:
    if classes is not None:
        return check_positive_int("classes", classes)
    if init_weights is not None:
        return int(init_weights.shape[0])
    return max(int(t.max()) for t in targets) + 1


def linear_probe(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    test_targets: torch.Tensor,
    *,
    metric: str = "top1",
    seed: int = 0,
    init_weights: torch.Tensor | None = None,
    l2: float | None = None,
    classes: int | None = None,
    search: L2Search = DEFAULT_SEARCH,
) -> dict[str, Any]:
    """The linear-probe protocol: choose λ on held-out training samples, refit on all of them, score the test split.

    Exactly: (1) `unicl.evaluation.logistic.choose_l2` holds out a stratified ``search.validation_fraction`` of
    each training class (seeded by ``seed``), fits a head for each λ of ``search.grid`` on the rest, scores
    ``metric`` on the held-out part, and refines λ around the best by ``search.refine`` decades (skipped when ``l2``
    is given), each fit to gradient tolerance ``search.sweep_tolerance``; (2) a head with the chosen λ is fitted on
    the whole training split to ``search.tolerance``; (3) it scores the test split. The features are standardised
    with the statistics of the samples each head is fitted on. The fit runs on ``train_features``' device.

    Args:
        train_features: ``[N, F]`` training features.
        train_targets: ``[N]`` class ids.
        test_features: ``[M, F]`` test features.
        test_targets: ``[M]`` class ids.
        metric: a name of `unicl.evaluation.metrics.METRICS`, used to choose λ and reported.
        seed: seeds the held-out split.
        init_weights: ``[C, F]`` weights on the raw features that start the head and centre its penalty (a
            zero-shot head); default zeros (plain L2).
        l2: a fixed λ instead of the sweep.
        classes: the number of classes (default: from ``init_weights``, else the largest class id + 1).
        search: the λ sweep's and the fits' options (`unicl.evaluation.logistic.L2Search`).

    Returns:
        ``{"top1", "top5" (with >= 5 classes), <metric>, "metric", "l2", "sweep" ([[λ, held-out score], ...],
        empty when ``l2`` is given), "train", "test" (sample counts), "classes", "feature_dim", "iterations" (of the
        final fit)}``.

    Raises:
        ValueError: mismatched shapes, class ids outside ``[0, classes)``, an unknown metric, or a training split
            with no class of two samples to hold out (pass ``l2``).
        TypeError: a ``search`` that is not an `unicl.evaluation.logistic.L2Search`.

    Examples:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
        >>> y = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> linear_probe(x, y, x, y, search=L2Search(grid=(1e-2, 1.0), refine=()))["top1"]
        1.0
    """
    train_features, train_targets = _check_split("train", train_features, train_targets)
    test_features, test_targets = _check_split("test", test_features, test_targets)
    if test_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"test_features must have the training features' {train_features.shape[1]} columns; "
                         f"got {test_features.shape[1]}")  # fmt: skip
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    search = check_instance("search", search, L2Search)
    num_classes = _num_classes(classes, init_weights, train_targets, test_targets)
    if int(train_targets.max()) >= num_classes:
        raise ValueError(f"train_targets must be class ids in [0, {num_classes}); got {int(train_targets.max())}")
    if int(test_targets.max()) >= num_classes:
        raise ValueError(f"test_targets must be class ids in [0, {num_classes}); got {int(test_targets.max())}")
    device = train_features.device
    train_targets = train_targets.to(device)
    sweep: dict[float, float] = {}
    if l2 is None:
        l2, sweep = choose_l2(
            train_features, train_targets, classes=num_classes, seed=seed, search=search,
            score=lambda logits, targets: score_logits(metric, logits, targets), init=init_weights,
        )  # fmt: skip
    head = fit_logistic_regression(train_features, train_targets, l2, classes=num_classes, init=init_weights,
                                   max_iter=search.max_iter, tolerance=search.tolerance)  # fmt: skip
    with torch.no_grad():
        logits = head(test_features.to(device)).float()
    targets = test_targets.to(device)
    result: dict[str, Any] = {"top1": score_logits("top1", logits, targets)}
    if num_classes >= 5:
        result["top5"] = score_logits("top5", logits, targets)
    if metric not in result:
        result[metric] = score_logits(metric, logits, targets)
    result.update(
        metric=metric, l2=l2, sweep=[[value, score] for value, score in sweep.items()], train=len(train_targets),
        test=len(test_targets), classes=num_classes, feature_dim=train_features.shape[1], iterations=head.iterations,
    )  # fmt: skip
    return result


def _class_members(targets: torch.Tensor, classes: int) -> list[torch.Tensor]:
    """Each class's sample indices in increasing order, for class ids ``0 .. classes-1`` (others ignored)."""
    order = torch.argsort(targets, stable=True)  # stable: each class's members stay in index order
    ordered = targets[order]
    ids = torch.arange(classes)
    starts = torch.searchsorted(ordered, ids).tolist()
    ends = torch.searchsorted(ordered, ids, right=True).tolist()
    return [order[start:end] for start, end in zip(starts, ends, strict=True)]


def check_shots(
    targets: torch.Tensor | Sequence[int],
    shots: int,
    *,
    classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """Check that every class has at least ``shots`` training samples, from the class ids alone (no image needs
    reading: a torchvision ``ImageFolder``'s ``targets``), before any feature is computed.

    Args:
        targets: ``[N]`` class ids of the training samples.
        shots: ``K``, samples per class.
        classes: the number of classes (default ``len(class_names)``, else the largest class id + 1).
        class_names: one name per class id, for the error.

    Raises:
        ValueError: a bad ``shots``, or the first class with fewer than ``shots`` samples, in one line naming it
            (by ``class_names`` when given) and ``shots``.

    Examples:
        >>> check_shots([0, 0, 1], 2, class_names=["cat", "dog"])
        Traceback (most recent call last):
        ...
        ValueError: shots=2 needs 2 training images per class; class 'dog' (class 1) has 1
    """
    check_positive_int("shots", shots)
    targets = torch.as_tensor(targets).cpu().long()
    if classes is None:
        classes = len(class_names) if class_names is not None else (int(targets.max()) + 1 if len(targets) else 0)
    in_range = targets[(targets >= 0) & (targets < classes)]
    counts = torch.bincount(in_range, minlength=classes)
    short = (counts < shots).nonzero()
    if len(short):
        c = int(short[0, 0])
        name = f"{class_names[c]!r} (class {c})" if class_names is not None and c < len(class_names) else f"{c}"
        raise ValueError(f"shots={shots} needs {shots} training images per class; class {name} has {int(counts[c])}")


def sample_shots(
    targets: torch.Tensor, shots: int, seed: int, *, classes: int, class_names: Sequence[str] | None = None
) -> torch.Tensor:
    """``shots`` sample indices per class, drawn without replacement by a CPU generator seeded with ``seed``.

    Classes are visited in increasing order, each drawing one permutation of its samples (in index order) and
    keeping its first ``shots``; the result is sorted. The counts are checked first (`check_shots`).

    Raises:
        ValueError: a class with fewer than ``shots`` samples (named, by ``class_names`` when given).

    Examples:
        >>> sample_shots(torch.tensor([0, 0, 1, 1, 1]), 1, 0, classes=2).shape
        torch.Size([2])
    """
    targets = targets.cpu().long()
    check_shots(targets, shots, classes=classes, class_names=class_names)
    generator = torch.Generator().manual_seed(seed)
    chosen = [members[torch.randperm(len(members), generator=generator)[:shots]]
              for members in _class_members(targets, classes)]  # fmt: skip
    return torch.cat(chosen).sort().values


def _check_shot_rows(
    shot_rows: Mapping[int, torch.Tensor], seeds: Sequence[int], targets: torch.Tensor, shots: int, classes: int
) -> None:
    for seed in seeds:
        rows = shot_rows.get(seed)
        if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.is_floating_point():
            raise ValueError(f"shot_rows must map every seed to a tensor of row indices; seed {seed} has {rows!r}")
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(targets)):
            raise ValueError(f"shot_rows[{seed}] must index the {len(targets)} training rows")
        counts = torch.bincount(targets[rows.to(targets.device)].cpu(), minlength=classes)
        if len(rows.unique()) != len(rows) or not bool((counts == shots).all()):
            raise ValueError(f"shot_rows[{seed}] must pick {shots} distinct rows of each of the {classes} classes")


def few_shot(
    train_features: torch.Tensor,
    train_targets: torch.Tensor,
    test_features: torch.Tensor,
    test_targets: torch.Tensor,
    *,
    shots: int,
    seeds: Sequence[int] = (0, 1, 2),
    metric: str = "top1",
    init_weights: torch.Tensor | None = None,
    l2: float | None = None,
    classes: int | None = None,
    class_names: Sequence[str] | None = None,
    search: L2Search = DEFAULT_SEARCH,
    shot_rows: Mapping[int, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The few-shot protocol: a `linear_probe` per seed on ``shots`` training samples per class; mean and spread.

    Exactly, for each seed ``s``: `sample_shots` draws ``shots`` samples of every class from the training split
    with a generator seeded by ``s``; `linear_probe` runs on those ``shots · C`` samples alone with ``seed=s``, so
    the sweep's held-out part is drawn from the K-shot samples (never from the rest of the training split, and
    never from the test split); the full test split is scored. The summary is the mean and the population standard
    deviation (``ddof = 0``; 0 for one seed) of every reported score over the seeds. With ``shots = 1`` nothing can
    be held out: pass ``l2``.

    Args:
        train_features: ``[N, F]`` training features (the pool the shots are drawn from).
        train_targets: ``[N]`` class ids.
        test_features: ``[M, F]`` test features.
        test_targets: ``[M]`` class ids.
        shots: ``K``, training samples per class.
        seeds: one run per seed.
        metric: as in `linear_probe`.
        init_weights: as in `linear_probe` (e.g. a zero-shot head).
        l2: a fixed λ instead of the sweep.
        classes: the number of classes (default: from ``init_weights``, else the largest class id + 1).
        class_names: names for the error about a class with fewer than ``shots`` samples.
        search: as in `linear_probe`.
        shot_rows: ``{seed: [K · C] row indices}`` into ``train_features``, when the shots were drawn before the
            features were computed (`unicl.evaluation.probe.run_linear_probe` draws them from the dataset's class
            ids and encodes only those images, so ``train_features`` holds just their union); each must pick
            ``shots`` distinct rows of every class. Default: `sample_shots` of ``train_targets`` for each seed.

    Returns:
        ``{"shots", "seeds", "metric", "runs" (one `linear_probe` result per seed, with "seed"), "mean" and "std"
        ({score name: value} over the seeds)}``.

    Raises:
        ValueError: as `linear_probe`, no seeds, or a class with fewer than ``shots`` training samples.

    Examples:
        >>> x = torch.arange(12.0)[:, None]
        >>> y = (x[:, 0] >= 6).long()
        >>> result = few_shot(x, y, x, y, shots=3, seeds=[0, 1], search=L2Search(grid=(1e-2,), refine=()))
        >>> mean, std = result["mean"], result["std"]
        >>> mean["top1"], std["top1"]
        (1.0, 0.0)
    """
    train_features, train_targets = _check_split("train", train_features, train_targets)
    _check_split("test", test_features, test_targets)
    check_positive_int("shots", shots)
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints; got {seeds!r}")
    num_classes = _num_classes(classes, init_weights, train_targets, test_targets)
    runs = []
    if shot_rows is not None:
        _check_shot_rows(shot_rows, seeds, train_targets, shots, num_classes)
    for seed in seeds:
        if shot_rows is None:
            chosen = sample_shots(train_targets, shots, seed, classes=num_classes, class_names=class_names)
        else:
            chosen = shot_rows[seed].long()
        chosen = chosen.to(train_features.device)
        run = linear_probe(
            train_features[chosen], train_targets.to(train_features.device)[chosen], test_features, test_targets,
            metric=metric, seed=seed, init_weights=init_weights, l2=l2, classes=num_classes, search=search,
        )  # fmt: skip
        runs.append({"seed": seed, **run})
    names = [name for name in ("top1", "top5", metric) if name in runs[0]]
    names = list(dict.fromkeys(names))
    mean = {name: sum(run[name] for run in runs) / len(runs) for name in names}
    std = {name: math.sqrt(sum((run[name] - mean[name]) ** 2 for run in runs) / len(runs)) for name in names}
    return {"shots": shots, "seeds": seeds, "metric": metric, "runs": runs, "mean": mean, "std": std}
