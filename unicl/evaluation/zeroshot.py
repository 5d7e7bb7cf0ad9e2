"""Zero-shot classification: class embeddings from prompts, logits and predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from unicl._checks import check_positive_int
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


def zeroshot_predict(image_features: torch.Tensor, classifier: torch.Tensor, top_k: int = 1) -> torch.Tensor:
    """The ``top_k`` most likely classes per image, best first: ``[B, top_k]`` (``[B]`` when ``top_k == 1``)."""
    check_positive_int("top_k", top_k)
    logits = zeroshot_logits(image_features, classifier)
    if top_k > logits.shape[1]:
        raise ValueError(f"top_k must be <= the number of classes {logits.shape[1]}; got {top_k}")
    predictions = logits.topk(top_k, dim=1).indices
    return predictions[:, 0] if top_k == 1 else predictions
