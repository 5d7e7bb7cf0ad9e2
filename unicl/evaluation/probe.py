"""One call from a model and two datasets to a linear-probe or few-shot result (what ``unicl.evaluate`` runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from unicl._checks import check_choice, check_instance, check_optional_positive_int
from unicl.evaluation.features import image_features
from unicl.evaluation.inference import DEFAULT_INFERENCE, InferenceOptions
from unicl.evaluation.logistic import DEFAULT_SEARCH, L2Search
from unicl.evaluation.names import FEATURE_KINDS, INITS
from unicl.evaluation.protocols import few_shot, linear_probe, sample_shots
from unicl.evaluation.zeroshot import build_zeroshot_classifier
from unicl.models import UniCLModel
from unicl.text.prompts import DEFAULT_TEMPLATES
from unicl.text.tokenizer import Tokenizer


@torch.no_grad()
def text_head(
    model: UniCLModel,
    tokenizer: Tokenizer,
    class_names: Sequence[str | Sequence[str]],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """``[C, D]`` zero-shot head weights for unit-norm projected image features: the class prompts' embeddings
    (`unicl.evaluation.zeroshot.build_zeroshot_classifier`) times the model's logit scale ``exp(logit_scale)``
    (clamped at ``max_logit_scale``, as in training), so ``normalize(x) @ headᵀ`` are the zero-shot logits."""
    model = model.to(device).eval()
    classifier = build_zeroshot_classifier(model, tokenizer, class_names, templates, device=torch.device(device))
    scale = model.clamped_logit_scale()
    return (classifier * scale).float()


def known_targets(dataset: Dataset) -> torch.Tensor | None:
    """``[N]`` the class id of every sample, known without reading an image, or ``None``.

    Known for a dataset with a ``targets`` list or tensor of one id per sample and no ``target_transform`` (a
    torchvision ``ImageFolder``, whose ``targets`` come from its folder names), and for a ``Subset`` of one.

    Examples:
        >>> known_targets(torch.utils.data.TensorDataset(torch.zeros(2, 3))) is None
        True
    """
    if isinstance(dataset, Subset):
        inner = known_targets(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if getattr(dataset, "target_transform", None) is not None or not isinstance(targets, (list, tuple, torch.Tensor)):
        return None
    targets = torch.as_tensor(targets)
    if targets.dim() != 1 or targets.is_floating_point() or len(targets) != len(dataset):  # type: ignore[arg-type]
        return None
    return targets.long()


def _draw_shots(
    train_dataset: Dataset, test_dataset: Dataset, shots: int, seeds: list[int], classes: int | None,
    class_names: Sequence[str] | None,
) -> tuple[Dataset, dict[int, torch.Tensor] | None]:  # fmt: skip
    """The images to encode for a few-shot run and each seed's rows among them: the union of every seed's shots,
    drawn from the class ids alone when they are known without reading images (`known_targets`), so a class with
    too few images fails before any is encoded; otherwise the whole split, sampled after encoding (``None``)."""
    pool_targets = known_targets(train_dataset)
    if pool_targets is None or len(pool_targets) == 0:  # an empty split is refused by the encoding
        return train_dataset, None
    if classes is None:  # as `few_shot` counts them: the largest class id of either split, + 1
        test_targets = known_targets(test_dataset)
        largest = [int(t.max()) for t in (pool_targets, test_targets) if t is not None and len(t)]
        classes = max(largest) + 1
    drawn = {seed: sample_shots(pool_targets, shots, seed, classes=classes, class_names=class_names)
             for seed in seeds}  # fmt: skip
    union = torch.cat(list(drawn.values())).unique()  # sorted
    rows = {seed: torch.searchsorted(union, chosen) for seed, chosen in drawn.items()}
    return Subset(train_dataset, union.tolist()), rows


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
    search: L2Search = DEFAULT_SEARCH,
    cache_dir: str | os.PathLike[str] | None = None,
    inference: InferenceOptions = DEFAULT_INFERENCE,
) -> dict[str, Any]:
    """Encode both datasets and run the linear-probe protocol (`unicl.evaluation.protocols.linear_probe`) or,
    with ``shots``, the few-shot protocol (`unicl.evaluation.protocols.few_shot`) on the features.

    Features come from `unicl.evaluation.features.image_features` (``features="backbone"``: before the projection,
    as CLIP's linear probes; ``"projected"``: the joint embedding), cached in ``cache_dir`` when given. The head is
    fitted on ``device``.

    With ``shots``, every seed's shots are drawn first from the training split's class ids (`known_targets`: a
    torchvision ``ImageFolder``'s ``targets``, which need no image read), so a class with fewer than ``shots``
    images is refused before anything is encoded, and only the union of the drawn images is encoded (and cached,
    as that subset); a dataset whose class ids are not known that way is encoded whole and sampled after. Either
    way the shots are those `unicl.evaluation.protocols.sample_shots` draws from the split's class ids.

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
        search: the λ sweep's and the fits' options (`unicl.evaluation.logistic.L2Search`).
        cache_dir: the feature cache's folder, or ``None``.
        inference: batch size, workers, device, precision (of the image tower) and progress bars
            (`unicl.evaluation.inference.InferenceOptions`); the head is fitted on the same device.

    Returns:
        The `linear_probe` (or `few_shot`) dictionary, plus ``"feature_kind"`` and ``"init"``.

    Raises:
        ValueError: a bad option (named), ``init="text"`` without projected features, class names or a tokenizer,
            more than one seed without ``shots``, a class with fewer than ``shots`` training images (before any
            image is encoded when the class ids are known), or any error of the protocols.
    """
    inference = check_instance("inference", inference, InferenceOptions)
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
    classes = len(names) if names is not None else None
    labels = [n if isinstance(n, str) else n[0] for n in names] if names is not None else None
    pool, shot_rows = train_dataset, None
    if shots is not None:
        pool, shot_rows = _draw_shots(train_dataset, test_dataset, shots, seeds, classes, labels)
    train_x, train_y = image_features(model, pool, kind=features, inference=inference, cache_dir=cache_dir)
    if shot_rows is not None:
        expected = known_targets(pool)
        if expected is None or not torch.equal(train_y, expected):
            raise ValueError("train_dataset: its targets attribute must list the class id each of its samples returns")
    test_x, test_y = image_features(model, test_dataset, kind=features, inference=inference, cache_dir=cache_dir)
    fit_device = inference.torch_device
    train_x, test_x = train_x.to(fit_device), test_x.to(fit_device)
    init_weights = None
    if init == "text" and names is not None and tokenizer is not None:  # both checked above
        init_weights = text_head(model, tokenizer, names, templates, device=fit_device)
        train_x, test_x = F.normalize(train_x, dim=-1), F.normalize(test_x, dim=-1)
    if shots is None:
        result = linear_probe(train_x, train_y, test_x, test_y, metric=metric, seed=seeds[0],
                              init_weights=init_weights, l2=l2, classes=classes, search=search)  # fmt: skip
    else:
        result = few_shot(train_x, train_y, test_x, test_y, shots=shots, seeds=seeds, metric=metric,
                          init_weights=init_weights, l2=l2, classes=classes, class_names=labels,
                          search=search, shot_rows=shot_rows)  # fmt: skip
    return {**result, "feature_kind": features, "init": init}
