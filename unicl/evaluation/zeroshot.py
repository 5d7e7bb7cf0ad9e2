"""Zero-shot classification: class embeddings from prompts, logits and predictions, and a dataset's zero-shot
scores and metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from unicl._checks import check_instance, check_positive_int
from unicl.evaluation.inference import DEFAULT_INFERENCE, InferenceOptions
from unicl.evaluation.metrics import classification_results
from unicl.models.model import UniCLModel
from unicl.text.prompts import DEFAULT_TEMPLATES, LabelToPrompt, Templates, class_prompts
from unicl.text.tokenizer import Tokenizer


class TextEncoder(Protocol):
    """Anything with ``encode_text(input_ids, attention_mask) -> [B, D]``."""

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def build_zeroshot_classifier(
    model: TextEncoder,
    tokenizer: Tokenizer,
    class_names: Sequence[str | Sequence[str]],
    templates: Templates = DEFAULT_TEMPLATES,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-class text embeddings: each the normalised mean of its normalised prompt embeddings.

    Every template × synonym prompt of every class is encoded in batches of ``batch_size`` under ``no_grad``. With a
    per-class mapping instead of templates (CuPL's ``{class name: [complete prompts, ...]}``, e.g. from
    `unicl.text.prompts.read_templates`), each class is the mean of its own prompts, found as
    `unicl.text.prompts.class_prompts` describes; the rest is the same.

    Args:
        model: has ``encode_text(input_ids, attention_mask)``.
        tokenizer: turns prompts into ids.
        class_names: ``C`` names, each a name or a list of synonyms (cleaned as in `LabelToPrompt`).
        templates: prompt templates with one ``{}`` each, or a mapping from class names to complete prompts.
        batch_size: prompts per forward pass.
        device: where to run the text encoder (default: the model's first parameter's device, else CPU).

    Returns:
        ``[C, D]`` float32, unit rows.

    Raises:
        ValueError: a template without exactly one ``{}``, or a mapping with no prompts for one of the classes
            (named).
    """
    check_positive_int("batch_size", batch_size)
    if isinstance(templates, Mapping):
        per_class = class_prompts(class_names, templates)
    else:
        prompts = LabelToPrompt(class_names, templates)
        per_class = [prompts.all_prompts(c) for c in range(prompts.num_classes)]
    if device is None:
        parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
        device = torch.device("cpu") if parameter is None else parameter.device
    flat = [prompt for group in per_class for prompt in group]
    embeddings = []
    for start in range(0, len(flat), batch_size):
        batch = tokenizer(flat[start : start + batch_size])
        encoded = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        embeddings.append(F.normalize(encoded.float(), dim=-1))
    flat_embeddings = torch.cat(embeddings)
    class_index = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor([len(g) for g in per_class]))
    sums = torch.zeros(len(per_class), flat_embeddings.shape[1], device=flat_embeddings.device)
    sums.index_add_(0, class_index.to(flat_embeddings.device), flat_embeddings)
    return F.normalize(sums, dim=-1)


def zeroshot_logits(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float | torch.Tensor = 100.0
) -> torch.Tensor:
    """``s · normalize(image_features) · classifierᵀ``.

    Args:
        image_features: ``[B, D]``.
        classifier: ``[C, D]`` from `build_zeroshot_classifier`.
        logit_scale: the scale ``s``.

    Returns:
        ``[B, C]`` logits.
    """
    if image_features.dim() != 2 or classifier.dim() != 2 or image_features.shape[1] != classifier.shape[1]:
        raise ValueError(
            "image_features [B, D] and classifier [C, D] must be 2-D with the same D; "
            f"got {tuple(image_features.shape)} and {tuple(classifier.shape)}"
        )
    features = F.normalize(image_features.float(), dim=-1)
    return logit_scale * features @ classifier.to(features.device, features.dtype).T


def zeroshot_probabilities(model: UniCLModel, image_features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Each image's probability of each class under ``model``'s own scale and, if it has one, bias.

    A model trained with the softmax objective (no logit bias) gives ``softmax(s · cos)`` over the classes (each row
    sums to 1); one trained with the sigmoid objective (``model.logit_bias`` set) gives ``σ(s · cos + b)`` for each
    class on its own, the probability its training objective fits (rows need not sum to 1). ``s`` is the model's
    clamped logit scale (`unicl.UniCLModel.clamped_logit_scale`), ``cos`` the cosine of the image and the class
    embedding. Computed in float32 or the features' wider dtype.

    Args:
        model: the model (its logit scale and bias).
        image_features: ``[B, D]``.
        classifier: ``[C, D]`` from `build_zeroshot_classifier`.

    Returns:
        ``[B, C]`` probabilities.

    Examples:
        >>> import torch, unicl
        >>> from unicl.evaluation.zeroshot import zeroshot_probabilities
        >>> model = unicl.create_model("unicl_tiny", init_temperature=0.1, logit_bias=-10.0)
        >>> classifier = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
        >>> probabilities = zeroshot_probabilities(model, classifier, classifier)  # each class's own embedding
        >>> [round(float(p), 4) for p in probabilities.diagonal()]  # σ(10 · 1 - 10)
        [0.5, 0.5, 0.5]
    """
    if not isinstance(model, UniCLModel):
        raise TypeError(f"model must be a unicl.UniCLModel; got {type(model).__name__}")
    if image_features.dim() != 2 or classifier.dim() != 2 or image_features.shape[1] != classifier.shape[1]:
        raise ValueError(
            "image_features [B, D] and classifier [C, D] must be 2-D with the same D; "
            f"got {tuple(image_features.shape)} and {tuple(classifier.shape)}"
        )
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    device = image_features.device
    scale = model.clamped_logit_scale().detach().to(device, dtype)
    cosines = F.normalize(image_features.to(dtype), dim=-1) @ classifier.to(device, dtype).T
    if model.logit_bias is None:
        return (scale * cosines).softmax(dim=1)
    bias = model.logit_bias.detach().to(image_features.device, dtype)
    return torch.sigmoid(scale * cosines + bias)


def zeroshot_predict(image_features: torch.Tensor, classifier: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """The ``top_k`` most likely classes per image, best first: ``[B, top_k]`` (``[B]`` when ``top_k == 1``)."""
    check_positive_int("top_k", top_k)
    logits = zeroshot_logits(image_features, classifier)
    if top_k > logits.shape[1]:
        raise ValueError(f"top_k must be <= the number of classes {logits.shape[1]}; got {top_k}")
    predictions = logits.topk(top_k, dim=1).indices
    return predictions[:, 0] if top_k == 1 else predictions


@torch.no_grad()
def zeroshot_scores(
    model: UniCLModel,
    dataset: Dataset,
    classifier: torch.Tensor,
    *,
    inference: InferenceOptions = DEFAULT_INFERENCE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot logits of every image of ``dataset`` against ``classifier`` and the images' targets.

    Args:
        model: the model (moved to ``inference.device``, put in eval mode).
        dataset: ``(image tensor, target)`` samples: a class id, or a ``[C]`` multi-hot row.
        classifier: ``[C, D]`` from `build_zeroshot_classifier`.
        inference: batch size, workers, device, precision and progress bar
            (`unicl.evaluation.inference.InferenceOptions`).

    Returns:
        ``([N, C] float32 logits 100·cos, [N] or [N, C] targets)``, on the CPU.

    Raises:
        ValueError: a dataset with no images.
        TypeError: ``inference`` that is not an `unicl.evaluation.inference.InferenceOptions`.
    """
    inference = check_instance("inference", inference, InferenceOptions)
    device = inference.torch_device
    model = model.to(device).eval()
    scores, targets = [], []
    for images, batch_targets in inference.batches(dataset, "zero-shot"):
        with inference.autocast():
            features = model.encode_image(images.to(device))
        scores.append(zeroshot_logits(features.float(), classifier).cpu())
        targets.append(torch.as_tensor(batch_targets))
    if not scores:
        raise ValueError("dataset has no images")
    return torch.cat(scores), torch.cat(targets)


@torch.no_grad()
def zeroshot_accuracy(
    model: UniCLModel,
    dataset: Dataset,
    class_names: Sequence[str | Sequence[str]],
    tokenizer: Tokenizer,
    *,
    templates: Templates = DEFAULT_TEMPLATES,
    metric: str | None = None,
    inference: InferenceOptions = DEFAULT_INFERENCE,
) -> dict[str, Any]:
    """Zero-shot classification of ``dataset`` by ``model``: top-1, top-5 and the dataset's metric.

    Every class is the normalised mean of its normalised prompt embeddings; an image's score for a class is
    ``100 · cos(image, class)``; the metrics are those of `unicl.evaluation.metrics` on all scores at once.

    Args:
        model: the model (moved to ``inference.device``, put in eval mode).
        dataset: ``(image tensor, class id)`` samples, e.g. a torchvision ``ImageFolder`` with
            `unicl.image_transform`, or ``(image tensor, [C] multi-hot)`` ones
            (`unicl.evaluation.label_files.MultiLabelImages`).
        class_names: one name (or list of synonyms) per class id.
        tokenizer: the model's tokenizer.
        templates: prompt templates (every class is the mean of its prompts), or a per-class mapping of complete
            prompts (`unicl.text.prompts.read_templates`).
        metric: the dataset's metric (see `unicl.evaluation.metrics.classification_results`; default ``top1``,
            ``map_11_point`` for multi-label data).
        inference: batch size, workers, device, precision and progress bar
            (`unicl.evaluation.inference.InferenceOptions`); the device and precision encode the class prompts and
            the images alike.

    Returns:
        ``{"top1": ..., "top5": ..., "metric": name, "images": N, "classes": C}`` (``top5`` only with at least 5
        classes; the metric's own value too when it is another; see
        `unicl.evaluation.metrics.classification_results`).

    Raises:
        ValueError: a dataset whose ``classes`` are not as many as ``class_names`` (before any image is read).
        TypeError: ``inference`` that is not an `unicl.evaluation.inference.InferenceOptions`.
    """
    inference = check_instance("inference", inference, InferenceOptions)
    dataset_classes = getattr(dataset, "classes", None)
    if dataset_classes is not None and len(dataset_classes) != len(class_names):
        raise ValueError(f"dataset has {len(dataset_classes)} classes but {len(class_names)} class names were given")
    model = model.to(inference.torch_device).eval()
    with inference.autocast():
        classifier = build_zeroshot_classifier(model, tokenizer, class_names, templates, device=inference.device)
    scores, targets = zeroshot_scores(model, dataset, classifier, inference=inference)
    return classification_results(scores, targets, metric)
