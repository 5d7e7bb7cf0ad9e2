"""One call from a model and two datasets to a linear-probe or few-shot result (what ``unicl.evaluate`` runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from unicl._checks import check_choice, check_optional_positive_int
from unicl.evaluation.features import FEATURE_KINDS, image_features
from unicl.evaluation.protocols import few_shot, linear_probe
from unicl.models import UniCLModel
from unicl.prompts import DEFAULT_TEMPLATES
from unicl.tokenizer import Tokenizer
from unicl.zeroshot import build_zeroshot_classifier

__all__ = ["INITS", "run_linear_probe", "text_head"]

#: ``"random"``: the head starts at zero with plain L2 (the name follows ELEVATER; the start is deterministic);
#: ``"text"``: it starts at, and is pulled towards, the zero-shot classifier.
INITS = ("random", "text")


@torch.no_grad()
def text_head(
    model: UniCLModel,
    tokenizer: Tokenizer,
    class_names: Sequence[str | Sequence[str]],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``[C, D]`` zero-shot head weights for unit-norm projected image features: the class prompts' embeddings
    (`unicl.zeroshot.build_zeroshot_classifier`) times the model's logit scale ``exp(logit_scale)`` (clamped at
    ``max_logit_scale``, as in training), so ``normalize(x) @ headᵀ`` are the zero-shot logits."""
    model = model.to(device).eval()
    classifier = build_zeroshot_classifier(model, tokenizer, class_names, templates, device=torch.device(device))
    scale = model.logit_scale.exp().clamp(max=model.config.max_logit_scale)
    return (classifier * scale).float()


def run_linear_probe(
    model: UniCLModel,
    train_dataset: Dataset,
    test_dataset: Dataset,
    *,
    features: str = "backbone",
    shots: int | None = None,
    seeds: Sequence[int] = (0,),
    init: str = "random",
    class_names: Sequence[str | Sequence[str]] | None = None,
    tokenizer: Tokenizer | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    metric: str = "top1",
    l2: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict[str, Any]:
    """Encode both datasets and run the linear-probe protocol (`unicl.evaluation.protocols.linear_probe`) or,
    with ``shots``, the few-shot protocol (`unicl.evaluation.protocols.few_shot`) on the features.

    Features come from `unicl.evaluation.features.image_features` (``features="backbone"``: before the projection,
    as CLIP's linear probes; ``"projected"``: the joint embedding), cached in ``cache_dir`` when given. The head is
    fitted on ``device``.

    ``init="text"`` starts the head from the zero-shot classifier (`text_head`: the class prompts' text
    embeddings times the logit scale) and centres its L2 penalty there, so the sweep's λ weighs the zero-shot
    prior against the training images. It needs ``features="projected"``: the text embeddings live in the joint
    space, not in the image tower's; and the projected features are then normalised to unit rows (train and test
    alike) so that the starting head gives exactly the zero-shot logits.

    Args:
        model: the model.
        train_dataset: ``(image, class id)`` samples to fit on (the pool of shots with ``shots``).
        test_dataset: ``(image, class id)`` samples to score.
        features: ``"backbone"`` or ``"projected"``.
        shots: ``K`` images per class per seed (few-shot); ``None``: the whole training split.
        seeds: the few-shot seeds (one run each); without ``shots``, exactly one seed (it seeds the held-out split).
        init: ``"random"`` (zeros, plain L2) or ``"text"``.
        class_names: one name (or list of synonyms) per class id; needed by ``init="text"``; default the
            dataset's ``classes`` when it has them. Their number fixes the number of classes.
        tokenizer: the model's tokenizer (``init="text"``).
        templates: prompt templates (``init="text"``).
        metric: a name of `unicl.evaluation.metrics.METRICS`.
        l2: a fixed λ instead of the sweep (needed for ``shots=1``).
        cache_dir: the feature cache's folder, or ``None``.
        batch_size: images per batch.
        workers: data-loading processes.
        device: where to run the model and fit the head.
        precision: ``"fp32"`` or ``"bf16"`` (autocast, CUDA only) for the image tower.
        progress: show progress bars on standard error.

    Returns:
        The `linear_probe` (or `few_shot`) dictionary, plus ``"feature_kind"`` and ``"init"``.

    Raises:
        ValueError: a bad option (named), ``init="text"`` without projected features, class names or a tokenizer,
            more than one seed without ``shots``, or any error of the protocols.
    """
    check_choice("features", features, FEATURE_KINDS)
    check_choice("init", init, INITS)
    check_optional_positive_int("shots", shots)
    seeds = list(seeds)
    if shots is None and len(seeds) != 1:
        raise ValueError(f"seeds: the full linear probe takes one seed (several need shots=K); got {seeds}")
    names = class_names if class_names is not None else getattr(train_dataset, "classes", None)
    if init == "text":
        if features != "projected":
            raise ValueError("init='text' needs features='projected': the text embeddings that start the head live "
                             "in the joint embedding space, not in the image tower's backbone space")  # fmt: skip
        if names is None or tokenizer is None:
            raise ValueError("init='text' needs class_names (or a dataset with classes) and a tokenizer")
    common = dict(kind=features, batch_size=batch_size, workers=workers, device=device, precision=precision,
                  progress=progress, cache_dir=cache_dir)  # fmt: skip
    train_x, train_y = image_features(model, train_dataset, **common)  # type: ignore[arg-type]
    test_x, test_y = image_features(model, test_dataset, **common)  # type: ignore[arg-type]
    fit_device = torch.device(device)
    train_x, test_x = train_x.to(fit_device), test_x.to(fit_device)
    init_weights = None
    if init == "text" and names is not None and tokenizer is not None:  # both checked above
        init_weights = text_head(model, tokenizer, names, templates, device=fit_device)
        train_x, test_x = F.normalize(train_x, dim=-1), F.normalize(test_x, dim=-1)
    classes = len(names) if names is not None else None
    if shots is None:
        result = linear_probe(train_x, train_y, test_x, test_y, metric=metric, seed=seeds[0],
                              init_weights=init_weights, l2=l2, classes=classes)  # fmt: skip
    else:
        labels = [n if isinstance(n, str) else n[0] for n in names] if names is not None else None
        result = few_shot(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds, metric=metric,
                          init_weights=init_weights, l2=l2, classes=classes, class_names=labels)  # fmt: skip
    return {**result, "feature_kind": features, "init": init}
